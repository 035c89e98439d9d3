"""Building models: a registered backbone → a checked model that carries its own recipe.

:func:`create_model` is the one way hpacli builds a classification model (the trainers, a
checkpoint being loaded, ``--init-from``): it calls the backbone's factory with
``num_classes``, ``in_chans`` and the user's options, and stamps on the result

* ``hpa_config``: the plain-data recipe ``{"backbone": name, "num_classes", "in_chans",
  **options}`` that checkpoints store, so a model is rebuilt from a checkpoint alone. A
  backbone that keeps its own ``config`` dict naming itself (the built-ins) has that one
  used; a plugin backbone needs nothing beyond what ``hookspecs.py`` says.
* ``hpa_provider``: the plugin, package and version that registered the backbone, stored
  in checkpoints so that loading one without the package installed says what to install.

and gives a backbone without ``forward_with_embedding`` one (the embedding is then the
logits; ``hpa_embedding == "logits"`` marks it, and ``hpa pseudolabel`` refuses such a
model: de-noising needs a real embedding). :func:`check_outputs` runs one forward pass
and turns a wrong output shape or a failing forward into one line naming the backbone
and its plugin.
"""

from __future__ import annotations

from typing import Any

from ..errors import HpaError, InputError
from ..plaindata import to_plain


def provider_of(backbone: str) -> dict:
    """``{"plugin", "package", "version"}`` of the plugin that registers ``backbone``."""
    from ..pm import get_manager
    from ..registry import BACKBONES

    plugin = BACKBONES.get(backbone).plugin
    info = get_manager().info.get(plugin)
    return {"plugin": plugin, "package": info.package if info else "?", "version": info.version if info else "?"}


def describe(model: Any, name: str | None = None) -> str:
    """``backbone 'x' (plugin p, package q)`` for messages."""
    cfg = getattr(model, "hpa_config", None) or {}
    name = name or cfg.get("backbone") or type(model).__name__
    prov = getattr(model, "hpa_provider", None) or {}
    if prov.get("package") and prov.get("package") != "hpacli":
        return f"backbone {name!r} (plugin {prov.get('plugin')}, package {prov.get('package')})"
    return f"backbone {name!r}"


def ensure_embedding(model):
    """Give a backbone without ``forward_with_embedding`` one (embedding = logits)."""
    if not hasattr(model, "forward_with_embedding"):

        def fwe(x, _m=model):
            out = _m(x)
            return out, out

        model.forward_with_embedding = fwe  # instance attribute: the state_dict is unchanged
        model.hpa_embedding = "logits"
    if not hasattr(model, "embedding_dim"):
        model.embedding_dim = int(getattr(model, "num_classes", 0) or 0)
    return model


def _own_config(model: Any, name: str) -> dict | None:
    cfg = getattr(model, "config", None)
    if isinstance(cfg, dict) and cfg.get("backbone") == name:
        return to_plain(cfg)
    return None


def create_model(backbone: str, num_classes: int = 19, in_chans: int = 4, *, source: str | None = None,
                 **options: Any):
    """A fresh model of the registered ``backbone`` (see the module doc). ``options`` are the
    backbone factory's own keyword arguments (``--option key=value``); unknown ones are a
    one-line error naming the accepted ones. ``source`` prefixes error messages (e.g. the
    checkpoint being loaded)."""
    from ..registry import BACKBONES

    prefix = f"{source}: " if source else ""
    try:
        BACKBONES.check_options(backbone, options, supplied=("num_classes", "in_chans"))
        model = BACKBONES.create(backbone, num_classes=int(num_classes), in_chans=int(in_chans), **options)
    except HpaError as exc:
        raise type(exc)(f"{prefix}{exc}") from None
    except (TypeError, ValueError, KeyError, RuntimeError, AttributeError) as exc:
        first = str(exc).splitlines()[0][:160] if str(exc) else ""
        raise InputError(f"{prefix}backbone {backbone!r} cannot be built with "
                         f"{_show_options(num_classes, in_chans, options)} ({type(exc).__name__}: {first})") from None
    provider = provider_of(backbone)
    try:
        from torch import nn
    except ImportError:  # pragma: no cover - torch is a dependency
        nn = None
    if nn is not None and not isinstance(model, nn.Module):
        where = f" (plugin {provider['plugin']}, package {provider['package']})" if provider["package"] != "hpacli" else ""
        raise InputError(f"{prefix}the factory of backbone {backbone!r}{where} returned a {type(model).__name__}, "
                         "not a torch.nn.Module")
    model.hpa_config = _own_config(model, backbone) or to_plain(
        {"backbone": backbone, "num_classes": int(num_classes), "in_chans": int(in_chans), **options})
    model.hpa_provider = provider
    return ensure_embedding(model)


def _show_options(num_classes, in_chans, options: dict) -> str:
    parts = [f"num_classes={num_classes}", f"in_chans={in_chans}", *(f"{k}={v!r}" for k, v in options.items())]
    return ", ".join(parts)


def model_config_of(model: Any, fallback: dict | None = None) -> dict:
    """The plain recipe stored with a model's weights: the stamp of :func:`create_model`,
    else the model's own ``config`` dict naming a backbone, else ``fallback``."""
    cfg = getattr(model, "hpa_config", None)
    if isinstance(cfg, dict) and cfg.get("backbone"):
        return to_plain(cfg)
    cfg = getattr(model, "config", None)
    if isinstance(cfg, dict) and cfg.get("backbone"):
        return to_plain(cfg)
    if fallback is None:
        raise InputError("the model was not built by hpacli.models.create_model and has no `config` dict naming "
                         "its backbone; pass model_config explicitly")
    return to_plain(fallback)


def check_outputs(model, img_size: int, num_classes: int = 19, in_chans: int = 4) -> int:
    """Run ``forward_with_embedding`` on two blank ``[2, in_chans, S, S]`` images (eval mode,
    no gradients; the model's mode is restored) and check the shapes: logits ``[2,
    num_classes]``, embedding ``[2, D]``. Returns ``D``; a failure is one line naming the
    backbone (and its plugin) and the shapes."""
    import torch

    what = describe(model)
    size = int(img_size)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            out = model.forward_with_embedding(torch.zeros(2, int(in_chans), size, size))
    except Exception as exc:  # noqa: BLE001 - any failure of foreign code becomes one line
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise InputError(f"{what} fails on a [2, {in_chans}, {size}, {size}] input: {type(exc).__name__}: {first}") \
            from None
    finally:
        model.train(was_training)
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise InputError(f"{what}: forward_with_embedding must return (logits, embedding), not {type(out).__name__}")
    logits, emb = out
    want = (2, int(num_classes))
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != want:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise InputError(f"{what} returns logits of shape {got} for a [2, {in_chans}, {size}, {size}] input; "
                         f"expected {want} (batch, classes)")
    if not isinstance(emb, torch.Tensor) or emb.ndim != 2 or emb.shape[0] != 2:
        got = tuple(emb.shape) if isinstance(emb, torch.Tensor) else type(emb).__name__
        raise InputError(f"{what} returns an embedding of shape {got}; expected (2, D): one vector per image")
    return int(emb.shape[1])


__all__ = ["check_outputs", "create_model", "describe", "ensure_embedding", "model_config_of", "provider_of"]
