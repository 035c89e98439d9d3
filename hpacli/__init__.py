"""hpacli: the `hpa` pipeline for Human Protein Atlas single-cell classification.

The package keeps its top level import-light (no torch) so that `hpa --help` is fast.
Public functions are imported lazily on first attribute access.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

import pluggy

try:
    __version__ = version("hpacli")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

hookimpl = pluggy.HookimplMarker("hpa")

# name -> module that defines it; resolved on first use (PEP 562). The stage functions are
# what the `hpa` commands call (DEVELOPERS.md has the table).
_LAZY = {
    "open_store": "hpacli.store",
    "Store": "hpacli.store",
    "Shard": "hpacli.store",
    "create_backbone": "hpacli.registry",
    "create_segmenter": "hpacli.registry",
    "create_denoiser": "hpacli.registry",
    "create_model": "hpacli.models.build",
    "load_model": "hpacli.models.checkpoint",
    "label_cells_from_maps": "hpacli.segment.postprocess",
    "load_weights": "hpacli.models.weightfile",
    "Denoised": "hpacli.plugin_types",
    # stages
    "run_synth": "hpacli.data.synth",
    "SynthConfig": "hpacli.data.synth",
    "run_ingest": "hpacli.data.ingest",
    "kaggle_candidates": "hpacli.data.ingest",
    "public_candidates": "hpacli.data.ingest",
    "run_segment": "hpacli.segment.stage",
    "run_dedup": "hpacli.prep.dedup",
    "run_negatives": "hpacli.prep.negatives",
    "run_fold": "hpacli.prep.folds",
    "run_cell_folds": "hpacli.prep.folds",
    "run_train_image": "hpacli.train.image",
    "run_train_cell": "hpacli.train.cell",
    "run_pseudolabel": "hpacli.label.pseudolabel",
    "run_denoise": "hpacli.label.denoise",
    "run_select": "hpacli.label.denoise",
    "run_accept": "hpacli.label.denoise",
    "run_predict": "hpacli.predict.stage",
    "write_submission": "hpacli.evaluate.write",
    "evaluate_files": "hpacli.evaluate.metric",
    "evaluate_instances": "hpacli.evaluate.metric",
    "run_demo": "hpacli.demo",
    # readers of what the stages stored
    "CellTable": "hpacli.store.cells",
    "read_labels_full": "hpacli.store.segmentation",
    "truth_label_images": "hpacli.store.truth",
    "cell_truth": "hpacli.evaluate.celltruth",
}

__all__ = ["__version__", "hookimpl", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hpacli' has no attribute {name!r}")
