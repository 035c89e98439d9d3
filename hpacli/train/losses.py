"""Multi-label losses of the seed: focal, hard-negative log loss, symmetric Lovász hinge.

All take ``logits`` and ``targets`` shaped ``[B, C]`` and return a scalar.

- ``focal``: BCE × |t − σ(x)|^γ (γ = 2), summed over classes, averaged over the batch.
  For 0/1 targets this is the seed's focal loss (its weight σ(−x(2t−1))^γ).
- ``hardlog``: per class, all positives plus the k highest-scoring negatives,
  k = min(n_neg, n_pos + max(2, ⌊n_neg/2⌋), ⌊0.7·n_neg⌋ + 2); mean BCE over the kept
  items; averaged over classes.
- ``symmetric-lovasz``: ½[lovasz_hinge(x, y) + lovasz_hinge(−x, 1 − y)] per class over the
  batch, averaged over classes.
- ``focal-symmetric-lovasz-hardlog``: 0.5 of each.

Hard variants binarise the targets at 0.5; the ``soft-`` variants use them as they are
(BCE and focal with soft targets; Lovász with real-valued ground truth in its Jaccard
terms and hinge signs 2t − 1; hard-log ranks the items with t < 0.5 as negatives).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _prep(logits: torch.Tensor, targets: torch.Tensor, soft: bool) -> tuple[torch.Tensor, torch.Tensor]:
    logits = logits.float()
    targets = targets.to(logits.dtype)
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ in shape")
    if not soft:
        targets = (targets > 0.5).to(logits.dtype)
    return logits, targets


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, gamma: float = 2.0, soft: bool = False) -> torch.Tensor:
    x, t = _prep(logits, targets, soft)
    bce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    weight = (t - torch.sigmoid(x)).abs().pow(gamma)
    return (weight * bce).sum(dim=1).mean()


def bce_loss(logits: torch.Tensor, targets: torch.Tensor, soft: bool = False) -> torch.Tensor:
    x, t = _prep(logits, targets, soft)
    return F.binary_cross_entropy_with_logits(x, t)


def hard_log_loss(logits: torch.Tensor, targets: torch.Tensor, soft: bool = False) -> torch.Tensor:
    x, t = _prep(logits, targets, soft)
    pos = t >= 0.5
    losses = []
    for c in range(x.shape[1]):
        xc, tc, pc = x[:, c], t[:, c], pos[:, c]
        n_pos = int(pc.sum())
        n_neg = int((~pc).sum())
        k = min(n_neg, n_pos + max(2, n_neg // 2), int(0.7 * n_neg) + 2)
        keep = pc.clone()
        if k > 0:
            neg_idx = torch.nonzero(~pc, as_tuple=False).flatten()
            top = torch.topk(xc[neg_idx].detach(), k).indices
            keep[neg_idx[top]] = True
        losses.append(F.binary_cross_entropy_with_logits(xc[keep], tc[keep]))
    return torch.stack(losses).mean()


def _lovasz_grad(gt_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovász extension of the Jaccard loss w.r.t. sorted errors."""
    total = gt_sorted.sum()
    intersection = total - gt_sorted.cumsum(0)
    union = total + (1.0 - gt_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    if gt_sorted.numel() > 1:
        jaccard = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
    return jaccard


def lovasz_hinge_flat(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary Lovász hinge of one set of items (1-D logits, labels in 0..1)."""
    signs = 2.0 * labels - 1.0
    errors = 1.0 - logits * signs
    errors_sorted, perm = torch.sort(errors, descending=True)
    grad = _lovasz_grad(labels[perm])
    return torch.dot(F.relu(errors_sorted), grad)


def symmetric_lovasz_loss(logits: torch.Tensor, targets: torch.Tensor, soft: bool = False) -> torch.Tensor:
    x, t = _prep(logits, targets, soft)
    per_class = [
        0.5 * (lovasz_hinge_flat(x[:, c], t[:, c]) + lovasz_hinge_flat(-x[:, c], 1.0 - t[:, c]))
        for c in range(x.shape[1])
    ]
    return torch.stack(per_class).mean()


def focal_lovasz_hardlog_loss(logits: torch.Tensor, targets: torch.Tensor, soft: bool = False) -> torch.Tensor:
    return 0.5 * focal_loss(logits, targets, soft=soft) + 0.5 * symmetric_lovasz_loss(
        logits, targets, soft=soft
    ) + 0.5 * hard_log_loss(logits, targets, soft=soft)


class Loss:
    """A named loss callable: ``loss(logits, targets) -> scalar``."""

    def __init__(self, name: str, fn, **kwargs) -> None:
        self.name = name
        self.fn = fn
        self.kwargs = kwargs

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.fn(logits, targets, **self.kwargs)

    def __repr__(self) -> str:
        return f"Loss({self.name!r})"


# name -> (function, description); each also gets a soft- variant
BASE_LOSSES = {
    "focal": (focal_loss, "focal loss, gamma 2 (seed)"),
    "bce": (bce_loss, "binary cross-entropy, mean over items and classes"),
    "hardlog": (hard_log_loss, "hard-negative log loss (seed)"),
    "symmetric-lovasz": (symmetric_lovasz_loss, "symmetric Lovász hinge per class over the batch (seed)"),
    "focal-symmetric-lovasz-hardlog": (
        focal_lovasz_hardlog_loss,
        "0.5 focal + 0.5 symmetric Lovász + 0.5 hard log (seed default)",
    ),
}


def make_loss(name: str, **kwargs) -> Loss:
    soft = name.startswith("soft-")
    base = name[len("soft-"):] if soft else name
    fn = BASE_LOSSES[base][0]
    return Loss(name, fn, soft=soft, **kwargs)


def loss_names() -> list[str]:
    """Every loss name this module builds (``builtin/losses.py`` lists them without torch;
    a test keeps the two in step)."""
    return [*BASE_LOSSES, *(f"soft-{n}" for n in BASE_LOSSES)]
