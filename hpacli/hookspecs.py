"""The hooks a plugin can implement, and everything hpacli needs from what they register.

Every hook that registers named things receives a ``register`` callback::

    register(name, factory, description="")

``factory(**kwargs)`` builds the object. ``register.family(names, factory,
description="")`` registers many names at once, listed lazily: ``names()`` (which may
import a heavy library) is called only when names are listed or a name is looked up that
an earlier family may hold; ``factory(name, **kwargs)`` builds one (hpacli's timm
backbones are one family, so `hpa plugins` and shell completion never import timm).
hpacli's own backbones, segmenters, denoisers, losses and commands are registered through
exactly these hooks (see ``hpacli/builtin``). A name already registered by an earlier
plugin (hpacli's built-ins come first, timm's names included) is refused and reported by
``hpa plugins``; choose your own names.

Options. Users pass a plugin's own options on the command line with ``-o key=value``
(``--option``; repeatable; the value is read as JSON when it parses — ``3``, ``0.5``,
``true``, ``null``, ``[1, 2]`` — else as text): ``hpa denoise --denoiser NAME -o k=40``,
``hpa segment --segmenter NAME -o ...``, ``hpa train-image --backbone NAME --option ...``.
They arrive as keyword arguments of the factory. hpacli checks them against the
factory's signature: an unknown key is a one-line error that lists the accepted ones (a
factory with ``**kwargs`` accepts anything). ``hpa plugins --options KIND NAME`` lists
them. Keep factories cheap to import: import torch inside them, not at module level.

Contracts of the objects the factories return (nothing else is required):

backbone
    ``factory(num_classes=19, in_chans=4, **options) -> torch.nn.Module``. ``forward(x)``
    takes float RGBY images in 0..1 (the model normalises itself) shaped
    ``[B, in_chans, H, W]`` and returns logits ``[B, num_classes]``. Optional:
    ``forward_with_embedding(x) -> (logits, embedding [B, D])`` and an int
    ``embedding_dim`` (``D``). ``hpa pseudolabel`` stores one embedding per cell for
    de-noising and refuses a backbone without ``forward_with_embedding`` (training and
    ``hpa predict`` work without). hpacli records the backbone's name, ``num_classes``,
    ``in_chans`` and the options in every checkpoint, and rebuilds the model from them
    with the same factory — so options must be plain data (numbers, strings, lists,
    dicts). The package and version that registered the backbone are recorded too: a
    checkpoint loaded without the package installed says which one to install. hpacli
    runs one forward pass on two blank images before training; a wrong output shape is a
    one-line error naming the backbone.
segmenter
    ``factory(**options)`` returns an object with ``segment(images) -> list[(nuclei,
    cells)]`` where ``images`` is a list of uint8 arrays ``[4, H, W]`` (RGBY) and each
    result is a pair of integer label images of the same ``H, W`` (0 = background; a
    nucleus carries its cell's id). If the factory takes ``device`` and ``batch_size``
    keywords, hpacli passes ``--device`` and ``--batch-size``. Optional:
    ``segment_scaled(images, shapes) -> list[(nuclei, cells)]`` with each pair at the
    given ``(h, w)`` (the stored mask resolution, e.g. a quarter of the image); without it
    hpacli brings ``segment``'s full-size labels down to that resolution.
denoiser
    ``factory(**options)`` returns an object with ``denoise(embeddings, y_init,
    progress=None)``, called once per de-noising fold:

    * ``embeddings``: ``numpy.ndarray [N, D] float32``, the fold's cells' embeddings;
    * ``y_init``: ``numpy.ndarray [N, 20] float64`` in 0..1, the 19 pseudo-label
      probabilities plus "nothing there" (1 − max);
    * ``progress``: a rich ``Progress`` (or None) to show long steps on;
    * returns ``y_opt`` ``[N, 20]``, or :class:`hpacli.Denoised` ``(y_opt, neighbours=...,
      diagnostics=...)``: an array that also carries the cells' nearest *other* cells
      (``neighbours`` int ``[N, m]``, fold positions 0..N-1, -1 = none; ``hpa
      select-mitotic --neighbours`` needs them) and plain-data ``diagnostics`` stored with
      the fold.

    Optional attributes (defaults in brackets): ``min_cells`` [1], the fewest cells a fold
    must hold (smaller folds are refused with a message); ``n_neighbours`` [0], the width
    ``m`` of the neighbour lists it returns; ``params`` [the options it was built with],
    the settings recorded in the store (a resumed run with other params is refused).
loss
    ``factory(**options) -> callable(logits, targets) -> scalar tensor``; targets may be
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
