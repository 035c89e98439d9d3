"""Training checkpoints: atomic save, exact resume, rebuilding a model from its config alone.

A checkpoint is a plain dict that ``torch.load(..., weights_only=True)`` reads::

    {"format": "hpacli-checkpoint", "version": 1,
     "model_config": {"backbone": "densenet121-hpa", "num_classes": 19, "in_chans": 4, ...},
     "model": state_dict,
     # training state (absent in exported weights):
     "optimizer", "epoch", "batch_in_epoch", "step", "micro_in_cycle", "grads",
     "rng", "best", "train_config", "metrics"}

``load_model(path)`` rebuilds the model with ``create_backbone(config["backbone"], **rest)``
and loads the weights; ``init_from(model, path)`` loads weights from our checkpoints, plain
state_dicts or the bestfitting format into an existing model and says what did not fit.
"""

from __future__ import annotations

import os
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import InputError
from ..plaindata import to_plain

FORMAT = "hpacli-checkpoint"
VERSION = 1


# ---------------------------------------------------------------------- saving / reading
def save_checkpoint(path: str | Path, payload: dict) -> None:
    """Write ``payload`` atomically: a temp file in the same folder, then ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save({"format": FORMAT, "version": VERSION, **payload}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def read_checkpoint(path: str | Path, map_location: str = "cpu") -> Any:
    """The object in a weight file, read through :func:`hpacli.models.weightfile.load_weights`
    (byte check first, then ``weights_only=True``); one-line errors naming the file."""
    from ..models.weightfile import load_weights

    return load_weights(path, map_location=map_location)


def is_our_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == FORMAT


# ---------------------------------------------------------------------- models
def ensure_embedding(model: nn.Module) -> nn.Module:
    """Give a backbone without ``forward_with_embedding`` one (embedding = logits)."""
    if not hasattr(model, "forward_with_embedding"):

        def fwe(x, _m=model):
            out = _m(x)
            return out, out

        model.forward_with_embedding = fwe  # instance attribute: the state_dict is unchanged
    if not hasattr(model, "embedding_dim"):
        model.embedding_dim = int(getattr(model, "num_classes", 0) or 0)
    return model


def model_config_of(model: nn.Module, fallback: dict | None = None) -> dict:
    cfg = getattr(model, "config", None)
    if isinstance(cfg, dict) and cfg.get("backbone"):
        return to_plain(cfg)
    if fallback is None:
        raise InputError("the model has no `config` dict naming its backbone; pass model_config explicitly")
    return to_plain(fallback)


def _loads_files(key: str) -> bool:
    """Factory arguments that would make a backbone read or fetch files (timm's
    ``checkpoint_path``, ``pretrained_cfg`` overlays, ...): a config read from a checkpoint
    never passes them."""
    k = key.lower()
    return (k.startswith(("pretrained", "checkpoint", "weights", "hub", "hf_"))
            or k.endswith(("_path", "_file", "_url", "_uri", "_dir")) or k in ("path", "file", "url", "uri", "dir"))


def check_model_config(config: Any, source: str = "the model config") -> dict:
    """The config as a plain dict, or a one-line InputError saying what is wrong with it."""
    if not isinstance(config, dict):
        raise InputError(f"{source}: the model config is a {type(config).__name__}, not a dict")
    name = config.get("backbone")
    if not isinstance(name, str) or not name:
        raise InputError(f"{source}: the model config names no backbone (a 'backbone' string)")
    for key, value in config.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise InputError(f"{source}: the model config has a key {key!r} that is not a parameter name")
        if key != "backbone" and _loads_files(key) and value not in (None, False):
            raise InputError(f"{source}: the model config asks the backbone to load weights ({key}={value!r}); "
                             "refused (a model is rebuilt from the checkpoint's own tensors only)")
        if not _plain(value):
            raise InputError(f"{source}: the model config value of {key!r} is not plain data")
    return dict(config)


def _plain(value: Any, depth: int = 0) -> bool:
    if depth > 8:
        return False
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v, depth + 1) for k, v in value.items())
    return False


def build_model(config: dict, source: str = "the model config") -> nn.Module:
    """A fresh model from its plain config (``backbone`` name + factory keyword arguments)."""
    from ..errors import HpaError
    from ..registry import create_backbone

    cfg = check_model_config(config, source)
    name = cfg.pop("backbone")
    try:
        model = create_backbone(name, **cfg)
    except HpaError as exc:
        raise type(exc)(f"{source}: {exc}") from None
    except (TypeError, ValueError, KeyError, RuntimeError) as exc:
        raise InputError(f"{source}: backbone {name!r} cannot be built from the model config "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})") from None
    return ensure_embedding(model)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model stored in one of our checkpoints; returns ``(model, config)`` in eval mode.

    ``model.forward_with_embedding(x) -> (logits, embedding)``; ``x`` is float RGBY 0..1.
    """
    obj = read_checkpoint(path)
    if not is_our_checkpoint(obj):
        raise InputError(
            f"{path} is not an hpacli checkpoint (no model config inside); "
            "train with `hpa train-image` or load plain weights with --init-from"
        )
    if "model_config" not in obj:
        raise InputError(f"checkpoint {path} has no model config; it cannot be rebuilt (train it again)")
    config = check_model_config(obj["model_config"], f"checkpoint {path}")
    state = checked_state_dict(obj.get("model"), f"checkpoint {path}")
    model = build_model(config, f"checkpoint {path}")
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes that do not fit
        first = str(exc).strip().splitlines()
        raise InputError(f"checkpoint {path} does not fit its own model config: "
                         f"{first[-1].strip()[:200] if first else 'size mismatch'}") from None
    if missing or unexpected:
        raise InputError(f"checkpoint {path} does not fit its own model config: {_describe_keys(missing, unexpected)}")
    model.to(device).eval()
    return model, config


def checked_state_dict(sd: Any, source: str) -> dict:
    """``sd`` if it is a dict of tensors, else a one-line InputError."""
    if not isinstance(sd, dict) or not sd:
        raise InputError(f"{source} holds no weights (its 'model' entry is {type(sd).__name__}, not a state_dict)")
    bad = [k for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise InputError(f"{source}: its state_dict has entries that are not named tensors (e.g. {bad[0]!r})")
    return sd


# ---------------------------------------------------------------------- init-from
@dataclass
class InitReport:
    source: str
    kind: str  # hpacli | state_dict | bestfitting
    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        parts = [f"loaded {self.loaded} tensors from {self.source} ({self.kind} format)"]
        parts += self.notes
        if self.missing:
            parts.append(
                f"{len(self.missing)} model tensors were not in the file and keep their initial values "
                f"({_sample(self.missing)})"
            )
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} tensors in the file have no place in the model ({_sample(self.unexpected)})")
        if self.mismatched:
            parts.append(f"{len(self.mismatched)} tensors have other shapes and were skipped ({_sample(self.mismatched)})")
        if not (self.missing or self.unexpected or self.mismatched):
            parts.append("every tensor matched")
        return "; ".join(parts)


def _sample(keys: list[str], n: int = 4) -> str:
    more = f", ... {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _describe_keys(missing, unexpected) -> str:
    out = []
    if missing:
        out.append(f"missing {_sample(list(missing))}")
    if unexpected:
        out.append(f"unexpected {_sample(list(unexpected))}")
    return "; ".join(out)


def _trunk_prefix(model_keys: set[str]) -> str:
    for key in model_keys:
        if key.endswith("conv0.weight") and "denseblock" not in key:
            return key[: -len("conv0.weight")]
    return "trunk."


def init_from(model: nn.Module, path: str | Path) -> InitReport:
    """Load weights from ``path`` into ``model`` (non-strict) and report what did not fit.

    Accepts our checkpoints, plain state_dicts (also ``{"state_dict": ...}`` / ``{"model": ...}``
    and a DataParallel ``module.`` prefix) and bestfitting DenseNet121 checkpoints (28→19
    classes). A 3-channel stem loaded into a 4-channel model gets the red weights as 4th.
    """
    from ..models.bestfitting import convert_bestfitting_state_dict, is_bestfitting_state_dict

    obj = read_checkpoint(path)
    target = model.state_dict()
    notes: list[str] = []
    if is_our_checkpoint(obj):
        kind, sd = "hpacli", checked_state_dict(obj.get("model"), f"checkpoint {path}")
    else:
        sd = obj
        if isinstance(obj, dict):
            for k in ("state_dict", "model", "model_state_dict"):
                if isinstance(obj.get(k), dict):
                    sd = obj[k]
                    break
        if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise InputError(f"weight file {path} holds no state_dict (a dict of tensors)")
        if not all(isinstance(k, str) for k in sd):
            raise InputError(f"weight file {path}: its state_dict has keys that are not names")
        if is_bestfitting_state_dict(sd):
            kind = "bestfitting"
            num_classes = int(getattr(model, "num_classes", 19) or 19)
            sd, notes = convert_bestfitting_state_dict(sd, num_classes=num_classes, trunk_prefix=_trunk_prefix(set(target)))
        else:
            kind = "state_dict"
            if sd and all(k.startswith("module.") for k in sd):
                sd = {k[len("module."):]: v for k, v in sd.items()}
                notes.append("removed the DataParallel 'module.' prefix")
    report = InitReport(str(path), kind, notes=notes)
    fitting = {}
    for key, value in sd.items():
        if key not in target:
            report.unexpected.append(key)
            continue
        want = target[key]
        if value.shape != want.shape:
            if (
                value.ndim == 4 and want.ndim == 4 and value.shape[0] == want.shape[0]
                and value.shape[2:] == want.shape[2:] and value.shape[1] == 3 and want.shape[1] == 4
            ):
                value = torch.cat([value, value[:, :1]], dim=1)
                report.notes.append(f"{key}: 3-channel weights extended to 4 (yellow copied from red)")
            else:
                report.mismatched.append(f"{key} {tuple(value.shape)} vs {tuple(want.shape)}")
                continue
        fitting[key] = value.to(want.dtype)
    report.missing = [k for k in target if k not in fitting]
    model.load_state_dict(fitting, strict=False)
    report.loaded = len(fitting)
    return report


# ---------------------------------------------------------------------- RNG state as plain data
def get_rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "python": _plain_py_state(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    s = state["numpy"]
    np.random.set_state((s[0], s[1].numpy().astype(np.uint32), s[2], s[3], s[4]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state_all(state["cuda"])
        except RuntimeError:  # another GPU count than when saved
            pass


def _plain_py_state(state):
    version, internal, gauss = state
    return [version, list(internal), gauss]




plain = to_plain
