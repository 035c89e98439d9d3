"""Option types shared by the commands (one definition, the same help everywhere)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

StoreOpt = Annotated[
    Path,
    typer.Option("--store", "-s", help="The hpacli store (a Zarr v3 directory).", envvar="HPA_STORE"),
]
ShardOpt = Annotated[
    str | None,
    typer.Option("--shard", help="Do only shard i of n (e.g. 0/4); run n processes at once to split the work."),
]
DeviceOpt = Annotated[
    str,
    typer.Option("--device", help="Torch device: auto (GPU when present), cpu, cuda, cuda:1, ..."),
]
BatchOpt = Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Items per batch.")]
WorkersOpt = Annotated[int, typer.Option("--workers", "-j", min=0, help="Parallel worker processes/threads.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed.")]
OverwriteOpt = Annotated[
    bool, typer.Option("--overwrite", help="Discard this stage's stored results and start over.")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout instead of tables.")]

# training (hpa train-image and hpa train-cell; each command keeps its own defaults)
AccumOpt = Annotated[
    int, typer.Option("--accum", min=1, help="Micro-batches per optimizer step (effective batch = accum × batch).")
]
EpochsOpt = Annotated[int, typer.Option("--epochs", min=0, help="Epochs to train.")]
LrMultOpt = Annotated[float, typer.Option("--lr-mult", help="Multiplier of the schedule's learning rates.")]
ScheduleOpt = Annotated[str, typer.Option("--schedule", help="adam10 (the seed's), constant or cosine.")]
EpochOffsetOpt = Annotated[int, typer.Option("--epoch-offset", min=0, help="Evaluate the schedule at epoch + offset.")]

# help panels
DATA = "Data"
TRAINING = "Training"
INFERENCE = "Inference"
TOOLS = "Tools"
PANEL_ORDER = [DATA, TRAINING, INFERENCE, TOOLS]

# a plugin's own options (backbone, segmenter, denoiser): `-o key=value`, repeatable
PluginOptionsOpt = Annotated[
    list[str] | None,
    typer.Option("--option", "-o", metavar="KEY=VALUE",
                 help="An option of the chosen plugin (repeatable); the value is read as JSON when it parses "
                      "(3, 0.5, true, null, [1,2]), else as text. `hpa plugins --options KIND NAME` lists them."),
]
# the same without the short flag, for commands whose -o is --out
PluginOptionsLongOpt = Annotated[
    list[str] | None,
    typer.Option("--option", metavar="KEY=VALUE",
                 help="An option of the chosen backbone (repeatable); the value is read as JSON when it parses, "
                      "else as text."),
]
