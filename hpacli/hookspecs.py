"""The hooks a plugin can implement.

Every hook that registers named things receives a ``register`` callback::

    register(name, factory, description="")

``factory(**kwargs)`` builds the object. ``register.family(names, factory,
description="")`` registers many names at once, listed lazily: ``names()`` (which may
import a heavy library) is called only when a name is looked up that nothing registered
by itself, or when names are listed; ``factory(name, **kwargs)`` builds one (hpacli's
timm backbones are one family, so `hpa plugins` never imports timm). hpacli's own backbones, segmenters,
denoisers and commands are registered through exactly these hooks (see
``hpacli/builtin``).

Contracts of the objects the factories return:

backbone
    ``factory(num_classes=19, in_chans=4, **kw) -> torch.nn.Module``. ``forward(x)``
    takes float RGBY images in 0..1 (the model normalises itself) shaped
    ``[B, in_chans, H, W]`` and returns logits ``[B, num_classes]``. It should also
    offer ``forward_with_embedding(x) -> (logits, embedding)`` and an int attribute
    ``embedding_dim``; hpacli wraps models that lack them (embedding = logits).
segmenter
    ``factory(**kw)`` returns an object with ``segment(images) -> list[(nuclei, cells)]``
    where ``images`` is a list of uint8 arrays ``[4, H, W]`` (RGBY) and each result is a
    pair of integer label images of the same ``H, W`` (0 = background; a nucleus
    carries its cell's id).
denoiser
    ``factory(**params)`` returns an object with
    ``denoise(embeddings, y_init, progress=None) -> y_opt`` for one denoising fold:
    ``embeddings`` ``[N, D]`` float, ``y_init`` ``[N, C]`` in 0..1, result ``[N, C]``.
loss
    ``factory(**kw) -> callable(logits, targets) -> scalar tensor``; targets may be
    soft (0..1).

Weight files: a plugin that reads weights from a path the user gives reads them with
``hpacli.load_weights(path)`` (never ``torch.load`` itself): it refuses TorchScript
archives and anything else that could run code, and fails with one line naming the file.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("hpa")


@hookspec
def register_backbones(register):
    """Register image or cell classification backbones."""


@hookspec
def register_segmenters(register):
    """Register cell segmenters."""


@hookspec
def register_denoisers(register):
    """Register label de-noisers."""


@hookspec
def register_losses(register):
    """Register training losses."""


@hookspec
def register_commands(app):
    """Add commands to the ``hpa`` Typer app (``app.command()(fn)``)."""
