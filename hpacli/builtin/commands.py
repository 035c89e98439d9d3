"""The built-in commands, registered through the ``register_commands`` hook.

Each entry: (command name, module under hpacli.cli.commands, help panel). Modules are
imported at start-up but import nothing heavy until the command runs.
"""

from __future__ import annotations

from importlib import import_module

from .. import hookimpl
from ..cli.options import DATA, INFERENCE, TOOLS, TRAINING

COMMANDS: list[tuple[str, str, str]] = [
    ("ingest", "ingest", DATA),
    ("synth", "synth", DATA),
    ("dedup", "dedup", DATA),
    ("fold", "fold", DATA),
    ("negatives", "negatives", DATA),
    ("segment", "segment", INFERENCE),
    ("predict", "predict", INFERENCE),
    ("submit", "submit", INFERENCE),
    ("evaluate", "evaluate", TOOLS),
    ("info", "info", TOOLS),
    ("plugins", "plugins", TOOLS),
    ("demo", "demo", TOOLS),
    ("train-image", "train_image", TRAINING),
    ("train-cell", "train_cell", TRAINING),
    ("pseudolabel", "pseudolabel", INFERENCE),
    ("denoise", "denoise", TRAINING),
    ("select-mitotic", "select_mitotic", TRAINING),
]

del TRAINING, INFERENCE  # panels used as commands land


@hookimpl
def register_commands(app):
    for name, module, panel in COMMANDS:
        fn = import_module(f"hpacli.cli.commands.{module}").command
        app.command(name=name, rich_help_panel=panel)(fn)
