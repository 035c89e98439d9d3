"""Read the previous HPA competition's winning DenseNet121 checkpoints (bestfitting, 2018).

Format (``../shared/reference/bestfitting-densenet121-checkpoint.md``): a dict with
``state_dict`` of 1466 keys: ``backbone.features.*`` (the DenseNet121 trunk, timm names,
4-channel ``conv0``), ``backbone.classifier.*`` (an unused ImageNet head), aliases of the
trunk under ``conv1.*`` and ``encoder2..5.*``, and the head ``bn1``, ``fc1``, ``bn2``,
``logit`` with 28 classes. The 28 old classes are remapped to the 19 new ones by rows.
"""

from __future__ import annotations

from pathlib import Path

import torch

# new19[i] = old28[REMAP_28_TO_19[i]] (17 name matches; 17 <- 26 and 18 <- 27 by hand)
REMAP_28_TO_19 = (0, 1, 2, 3, 4, 5, 6, 7, 11, 12, 14, 17, 19, 21, 23, 24, 25, 26, 27)
ALIAS_PREFIXES = ("conv1.", "encoder2.", "encoder3.", "encoder4.", "encoder5.")
HEAD_PREFIXES = ("bn1.", "fc1.", "bn2.", "logit.")
TRUNK_PREFIX = "backbone.features."


def is_bestfitting_state_dict(sd: dict) -> bool:
    return any(k.startswith(TRUNK_PREFIX) for k in sd) and "logit.weight" in sd


def convert_bestfitting_state_dict(
    sd: dict, num_classes: int = 19, trunk_prefix: str = "trunk."
) -> tuple[dict, list[str]]:
    """Map a bestfitting state_dict onto ``densenet121-hpa`` names.

    Returns the new state_dict and notes in plain words (what was dropped or remapped).
    ``trunk_prefix`` is where the trunk's timm ``features.*`` children live in the target
    model (``trunk.`` for densenet121-hpa, ``model.features.`` for a plain timm densenet121).
    """
    out: dict = {}
    n_alias = n_classifier = n_other = 0
    others: list[str] = []
    for key, value in sd.items():
        if key.startswith(ALIAS_PREFIXES):
            n_alias += 1
        elif key.startswith("backbone.classifier."):
            n_classifier += 1
        elif key.startswith(TRUNK_PREFIX):
            out[trunk_prefix + key[len(TRUNK_PREFIX):]] = value
        elif key.startswith(HEAD_PREFIXES):
            out[key] = value
        else:
            n_other += 1
            others.append(key)
    notes = []
    if n_alias:
        notes.append(f"dropped {n_alias} duplicate trunk entries (conv1/encoder2-5 aliases)")
    if n_classifier:
        notes.append(f"dropped the unused ImageNet classifier ({n_classifier} tensors)")
    if n_other:
        notes.append(f"ignored {n_other} unknown entries, e.g. {', '.join(others[:3])}")
    w, b = out.get("logit.weight"), out.get("logit.bias")
    if w is not None and w.shape[0] == 28 and num_classes == 19:
        idx = torch.tensor(REMAP_28_TO_19, dtype=torch.long)
        out["logit.weight"] = w[idx].clone()
        if b is not None:
            out["logit.bias"] = b[idx].clone()
        notes.append("remapped the 28 old classes to the 19 new ones (rows 0-7, 11, 12, 14, 17, 19, 21, 23-27)")
    elif w is not None and w.shape[0] != num_classes:
        notes.append(f"the checkpoint has {w.shape[0]} classes and the model {num_classes}: its last layer is not loaded")
        out.pop("logit.weight", None)
        out.pop("logit.bias", None)
    return out, notes


def read_bestfitting(path: str | Path, num_classes: int = 19, trunk_prefix: str = "trunk.") -> tuple[dict, list[str]]:
    """Load a bestfitting ``final.pth`` (through :func:`.weightfile.load_weights`: byte check,
    then ``weights_only=True``) and convert it."""
    from ..errors import InputError
    from .weightfile import load_weights

    obj = load_weights(path, map_location="cpu")
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict) or not is_bestfitting_state_dict(sd):
        raise InputError(f"{path} is not a bestfitting DenseNet121 checkpoint (no backbone.features.* and logit.*)")
    return convert_bestfitting_state_dict(sd, num_classes=num_classes, trunk_prefix=trunk_prefix)
