"""Checkpoints: the format, atomic save, rebuilding a model from its config alone, reading
what a checkpoint says about itself.

A checkpoint is a plain dict that ``torch.load(..., weights_only=True)`` reads::

    {"format": "hpacli-checkpoint", "version": 1,
     "model_config": {"backbone": "densenet121-hpa", "num_classes": 19, "in_chans": 4, ...},
     "model": state_dict,
     # training state (absent in exported weights):
     "optimizer", "epoch", "batch_in_epoch", "step", "micro_in_cycle", "grads",
     "rng", "best", "train_config", "metrics"}

     "backbone_provider": {"plugin", "package", "version"},  # who registered the backbone

``load_model(path)`` rebuilds the model with :func:`hpacli.models.build.create_model` from
``model_config`` and loads the weights; :func:`read_info` is the one reader of what a
checkpoint records about its training (stage, fold, image size, cell crop geometry, the
out-of-fold record); ``init_from(model, path)`` loads weights from our checkpoints, plain
state_dicts or the bestfitting format into an existing model and says what did not fit.
The trainer's own state (RNG, optimizer, position) lives in :mod:`hpacli.train`.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InputError, UnknownNameError

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
    from .weightfile import load_weights

    return load_weights(path, map_location=map_location)


def is_our_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == FORMAT


# ---------------------------------------------------------------------- model configs
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


def build_model(config: dict, source: str = "the model config", provider: dict | None = None) -> nn.Module:
    """A fresh model from its plain config (``backbone`` name + factory keyword arguments).
    ``provider`` (a checkpoint's ``backbone_provider``) names the package to install when
    the backbone is not registered."""
    from .build import create_model

    cfg = check_model_config(config, source)
    name = cfg.pop("backbone")
    try:
        return create_model(name, source=source, **cfg)
    except UnknownNameError:
        pkg = (provider or {}).get("package")
        if pkg and pkg not in ("hpacli", "?", "(runtime)"):
            ver = (provider or {}).get("version")
            raise UnknownNameError(
                f"{source}: its backbone {name!r} comes from the plugin package {pkg}"
                f"{f' {ver}' if ver and ver != '?' else ''}, which is not installed; install it "
                f"(`pip install {pkg}`, or `pipx inject hpacli {pkg}`)") from None
        raise


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model stored in one of our checkpoints; returns ``(model, config)`` in eval mode.

    ``model.forward_with_embedding(x) -> (logits, embedding)``; ``x`` is float RGBY 0..1.
    """
    loaded = load(path, device)
    return loaded.model, loaded.config


@dataclass
class CheckpointInfo:
    """What a checkpoint records about itself (the one reader of checkpoint metadata).

    ``meta`` merges the checkpoint's ``config``, its ``train_config`` and that config's
    ``extra`` (the training stage's own record, which wins); the properties read it."""

    path: str
    model_config: dict | None = None
    provider: dict | None = None
    meta: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @property
    def stage(self) -> str | None:
        return self.meta.get("stage")

    @property
    def fold(self) -> int | None:
        return None if self.meta.get("fold") is None else int(self.meta["fold"])

    @property
    def img_size(self) -> int | None:
        return None if self.meta.get("img_size") is None else int(self.meta["img_size"])

    @property
    def folds_name(self) -> str | None:
        return self.meta.get("folds_name")

    @property
    def cell_input(self) -> dict | None:
        """The crop geometry of a cell model (``size``, ``work_size``, ``fit``), or None."""
        geo = self.extra.get("cell_input")
        return dict(geo) if isinstance(geo, dict) and geo else None

    @property
    def trained_images(self) -> list[str] | None:
        """Image ids the weights have seen (:mod:`.trained_on`), None when not recorded."""
        from .trained_on import images_of

        return images_of(self.extra)

    @property
    def train_folds(self) -> dict | None:
        rec = self.extra.get("trained_on")
        return rec.get("folds") if isinstance(rec, dict) and isinstance(rec.get("folds"), dict) else None


def info_of(obj: Any, path: str | Path) -> CheckpointInfo:
    """:class:`CheckpointInfo` of an already-read checkpoint object."""
    obj = obj if isinstance(obj, dict) else {}
    tc = obj.get("train_config") if isinstance(obj.get("train_config"), dict) else {}
    extra = tc.get("extra") if isinstance(tc.get("extra"), dict) else {}
    meta: dict = {}
    for sub in (obj.get("config"), tc, extra):
        if isinstance(sub, dict):
            meta.update({k: v for k, v in sub.items() if v is not None})
    cfg = obj.get("model_config") if isinstance(obj.get("model_config"), dict) else None
    prov = obj.get("backbone_provider") if isinstance(obj.get("backbone_provider"), dict) else None
    return CheckpointInfo(str(path), cfg, prov, meta, extra)


def read_info(path: str | Path) -> CheckpointInfo:
    """What the checkpoint at ``path`` records about its training."""
    return info_of(read_checkpoint(path), path)


def read_cell_input(path: str | Path) -> dict:
    """The crop geometry a cell model was trained with: ``size``, ``work_size`` (None =
    original resolution), ``fit`` (resize | pad); a one-line error for other checkpoints."""
    geo = read_info(path).cell_input
    if not geo:
        raise InputError(f"{path} is not a cell-level model (no cell_input in its train config); "
                         "train with `hpa train-cell`")
    return geo


@dataclass
class Loaded:
    model: nn.Module
    config: dict
    info: CheckpointInfo


def load(path: str | Path, device: str | torch.device = "cpu") -> Loaded:
    """Read a checkpoint once: the rebuilt model (eval mode), its config and its info."""
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
    provider = obj.get("backbone_provider") if isinstance(obj.get("backbone_provider"), dict) else None
    model = build_model(config, f"checkpoint {path}", provider)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes that do not fit
        first = str(exc).strip().splitlines()
        raise InputError(f"checkpoint {path} does not fit its own model config: "
                         f"{first[-1].strip()[:200] if first else 'size mismatch'}") from None
    if missing or unexpected:
        raise InputError(f"checkpoint {path} does not fit its own model config: {_describe_keys(missing, unexpected)}")
    model.to(device).eval()
    return Loaded(model, config, info_of(obj, path))


def model_from_checkpoint_or_new(backbone: str | None, sources, default: str = "densenet121-hpa",
                                 **options: Any) -> nn.Module:
    """A fresh model: of ``backbone`` when given (with ``options``), else of the architecture
    recorded by the first of ``sources`` that is an hpacli checkpoint, else ``default``."""
    from .build import create_model

    if backbone is None:
        for src in sources:
            if src is None:
                continue
            ck = read_checkpoint(src)
            if is_our_checkpoint(ck):
                if ck.get("model_config") is None:
                    break
                prov = ck.get("backbone_provider") if isinstance(ck.get("backbone_provider"), dict) else None
                return build_model(ck["model_config"], f"checkpoint {src}", prov)
    return create_model(backbone or default, **options)


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
    from .bestfitting import convert_bestfitting_state_dict, is_bestfitting_state_dict

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
