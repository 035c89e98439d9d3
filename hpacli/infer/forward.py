"""A batch of cell crops through a model, averaged over test-time views.

The input is a uint8 batch ``[B, 4, S, S]`` from :class:`hpacli.data.crops.CellBatches`;
it is moved to the device once and scaled to 0..1. Each view
(:func:`hpacli.data.views.apply_view`) goes through the model in micro-batches (on CPU
large batches of big inputs fall out of the caches), the sigmoid outputs (and the
embeddings) are summed in float32 and divided by the number of views. On a GPU the
forward passes run in float16 autocast.
"""

from __future__ import annotations

import contextlib

from ..classes import N_CLASSES
from ..data.views import apply_view

# on CPU, large batches of big inputs fall out of the caches: forward in small pieces
CPU_MICRO_BATCH = 4


def use_amp(device) -> bool:
    return device.type == "cuda"


def micro_batch_for(device, batch_size: int) -> int:
    return CPU_MICRO_BATCH if device.type == "cpu" else max(1, int(batch_size))


def autocast(device, amp: bool):
    import torch

    return torch.autocast(device_type=device.type, dtype=torch.float16) if amp else contextlib.nullcontext()


def to_input(x, device):
    """uint8 ``[B, 4, S, S]`` → float 0..1 on ``device``."""
    return x.to(device, non_blocking=True).float().div_(255.0)


def _nhwc(x):
    import torch

    return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x.contiguous()


def view_average(model, x, views, micro_batch: int, embeddings: bool = False):
    """``(probs [B, 19], embeddings [B, D] or None)`` of float ``x`` on its device, each the
    mean over ``views``; call inside ``torch.inference_mode()`` and :func:`autocast`.
    Without ``embeddings`` the model's plain ``forward`` gives the logits."""
    import torch

    n = len(x)
    probs = torch.zeros((n, N_CLASSES), device=x.device)
    emb = None
    for v in views:
        xv = _nhwc(apply_view(x, v))
        for a in range(0, n, micro_batch):
            part = xv[a:a + micro_batch]
            if embeddings:
                logits, e = model.forward_with_embedding(part)
                if emb is None:
                    emb = torch.zeros((n, e.shape[1]), device=x.device)
                emb[a:a + micro_batch] += e.float()
            else:
                logits = model(part)
            probs[a:a + micro_batch] += torch.sigmoid(logits.float())
    k = float(len(views))
    return probs / k, (emb / k if emb is not None else None)


def predict_views(model, x, views, device, amp: bool, micro_batch: int | None = None):
    """Sigmoid and embedding averaged over ``views`` for uint8 ``x`` ``[B, 4, S, S]``, as
    numpy arrays (float32)."""
    import torch

    if micro_batch is None:
        micro_batch = CPU_MICRO_BATCH if device.type == "cpu" else len(x)
    with torch.inference_mode(), autocast(device, amp):
        probs, emb = view_average(model, to_input(x, device), views, max(1, int(micro_batch)), embeddings=True)
    return probs.cpu().numpy(), emb.cpu().numpy()
