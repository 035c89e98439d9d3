"""The hpacli store: one Zarr v3 directory with every stage's state (see core.py)."""

from .core import DEFAULT_STORE, SCHEMA_VERSION, Store, codec, open_store
from .stages import StageRun, begin_stage, claim_settings, stage_record, stage_records
from .work import Block, BlockWork, Shard, parse_shard

__all__ = [
    "DEFAULT_STORE",
    "SCHEMA_VERSION",
    "Block",
    "BlockWork",
    "Shard",
    "StageRun",
    "Store",
    "begin_stage",
    "claim_settings",
    "codec",
    "open_store",
    "parse_shard",
    "stage_record",
    "stage_records",
]
