"""The built-in commands, registered through the ``register_commands`` hook.

Each entry: (command name, module under hpacli.cli.commands, help panel). Modules are
imported at start-up but import nothing heavy until the command runs.
"""

from __future__ import annotations

from importlib import import_module

from .. import hookimpl
from ..cli.options import DATA, INFERENCE, TOOLS, TRAINING

COMMANDS: list[tuple[str, str, str]] = [
    ("synth", "synth", DATA),
    ("ingest", "ingest", DATA),
    ("dedup", "dedup", DATA),
    ("negatives", "negatives", DATA),
    ("fold", "fold", DATA),
    ("train-image", "train_image", TRAINING),
    ("denoise", "denoise", TRAINING),
    ("select-mitotic", "select_mitotic", TRAINING),
    ("review", "review", TRAINING),
    ("train-cell", "train_cell", TRAINING),
    ("segment", "segment", INFERENCE),
    ("pseudolabel", "pseudolabel", INFERENCE),
    ("predict", "predict", INFERENCE),
    ("submit", "submit", INFERENCE),
    ("evaluate", "evaluate", TOOLS),
    ("info", "info", TOOLS),
    ("plugins", "plugins", TOOLS),
    ("doctor", "doctor", TOOLS),
    ("demo", "demo", TOOLS),
]


@hookimpl
def register_commands(app):
    for name, module, panel in COMMANDS:
        fn = import_module(f"hpacli.cli.commands.{module}").command
        app.command(name=name, rich_help_panel=panel)(fn)
