"""The seed's losses against independent numpy computations on tiny inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hpacli.registry import create_loss, list_losses
from hpacli.train.losses import (
    focal_loss,
    hard_log_loss,
    lovasz_hinge_flat,
    symmetric_lovasz_loss,
)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _bce(x, t):
    p = _sigmoid(x)
    return -(t * np.log(p) + (1 - t) * np.log(1 - p))


def _case(seed=0, b=6, c=4, soft=False):
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 2, size=(b, c))
    t = rng.random((b, c)) if soft else (rng.random((b, c)) < 0.4).astype(float)
    return x, t


def _t(a):
    return torch.tensor(a, dtype=torch.float64).float()


# ---------------------------------------------------------------------- focal / bce
def test_focal_matches_seed_definition():
    x, t = _case()
    # the seed's weight: sigmoid(-x * (2t - 1)) ** gamma
    w = _sigmoid(-x * (2 * t - 1)) ** 2
    expected = (w * _bce(x, t)).sum(axis=1).mean()
    got = float(focal_loss(_t(x), _t(t)))
    assert got == pytest.approx(expected, rel=1e-5)
    assert float(create_loss("focal")(_t(x), _t(t))) == pytest.approx(expected, rel=1e-5)


def test_soft_focal_and_bce_use_soft_targets():
    x, t = _case(1, soft=True)
    p = _sigmoid(x)
    expected = (np.abs(t - p) ** 2 * _bce(x, t)).sum(axis=1).mean()
    assert float(create_loss("soft-focal")(_t(x), _t(t))) == pytest.approx(expected, rel=1e-5)
    assert float(create_loss("soft-bce")(_t(x), _t(t))) == pytest.approx(_bce(x, t).mean(), rel=1e-5)
    # the hard variant binarises at 0.5, so it differs on soft targets
    hard = (t > 0.5).astype(float)
    assert float(create_loss("bce")(_t(x), _t(t))) == pytest.approx(_bce(x, hard).mean(), rel=1e-5)
    assert float(create_loss("bce")(_t(x), _t(t))) != pytest.approx(_bce(x, t).mean(), rel=1e-3)


# ---------------------------------------------------------------------- hard-negative log loss
def _hardlog_np(x, t):
    out = []
    for c in range(x.shape[1]):
        pos = np.flatnonzero(t[:, c] >= 0.5)
        neg = np.flatnonzero(t[:, c] < 0.5)
        n_pos, n_neg = len(pos), len(neg)
        k = min(n_neg, n_pos + max(2, math.floor(0.5 * n_neg)), math.floor(0.7 * n_neg) + 2)
        hardest = neg[np.argsort(-x[neg, c])[:k]]
        kept = np.concatenate([pos, hardest])
        out.append(_bce(x[kept, c], t[kept, c]).mean())
    return float(np.mean(out))


def test_hardlog_matches_numpy():
    for seed in range(5):
        x, t = _case(seed, b=13, c=5)
        assert float(hard_log_loss(_t(x), _t(t))) == pytest.approx(_hardlog_np(x, t), rel=1e-5)


def test_hardlog_keeps_the_right_number_of_negatives():
    # 1 positive, 10 negatives: k = min(10, 1 + 5, 7 + 2) = 6; kept = 1 positive + 6 hardest negatives
    x = np.linspace(-3, 3, 11)[:, None]
    t = np.zeros((11, 1))
    t[0] = 1
    kept = np.r_[0, np.arange(5, 11)]  # the 6 highest-scoring negatives are the last 6 items
    expected = _bce(x[kept, 0], t[kept, 0]).mean()
    assert float(hard_log_loss(_t(x), _t(t))) == pytest.approx(expected, rel=1e-5)


def test_soft_hardlog():
    x, t = _case(3, b=9, c=3, soft=True)
    assert float(create_loss("soft-hardlog")(_t(x), _t(t))) == pytest.approx(_hardlog_np(x, t), rel=1e-5)


# ---------------------------------------------------------------------- Lovász
def _jaccard_loss_of_set(gt: np.ndarray, mistakes: set[int]) -> float:
    """Δ_J(M) = 1 − |gt ∖ M| / |gt ∪ M| for the set M of mispredicted items."""
    g = set(np.flatnonzero(gt).tolist())
    union = g | mistakes
    if not union:
        return 0.0
    return 1.0 - len(g - mistakes) / len(union)


def _lovasz_extension_brute(m: np.ndarray, gt: np.ndarray) -> float:
    """Lovász extension by its definition as a Choquet integral: ∫_0^∞ Δ({i: m_i ≥ τ}) dτ."""
    m = np.maximum(m, 0)
    levels = sorted(set(m.tolist()) - {0.0}, reverse=True) + [0.0]
    total = 0.0
    for hi, lo in zip(levels[:-1], levels[1:]):
        level_set = set(np.flatnonzero(m >= hi).tolist())
        total += (hi - lo) * _jaccard_loss_of_set(gt, level_set)
    return total


def _lovasz_hinge_brute(x: np.ndarray, y: np.ndarray) -> float:
    errors = 1.0 - x * (2 * y - 1)
    return _lovasz_extension_brute(errors, y)


def test_lovasz_hinge_is_the_lovasz_extension():
    rng = np.random.default_rng(0)
    for _ in range(30):
        b = int(rng.integers(1, 7))
        x = rng.normal(0, 1.5, size=b)
        y = (rng.random(b) < 0.5).astype(float)
        got = float(lovasz_hinge_flat(torch.tensor(x), torch.tensor(y)))
        assert got == pytest.approx(_lovasz_hinge_brute(x, y), abs=1e-9)


def test_symmetric_lovasz_per_class_mean():
    x, t = _case(4, b=5, c=3)
    per_class = [
        0.5 * (_lovasz_hinge_brute(x[:, c], t[:, c]) + _lovasz_hinge_brute(-x[:, c], 1 - t[:, c]))
        for c in range(3)
    ]
    assert float(symmetric_lovasz_loss(_t(x), _t(t))) == pytest.approx(np.mean(per_class), rel=1e-5)
    # perfect, confident predictions cost nothing; the inverse costs
    y = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert float(symmetric_lovasz_loss(_t(5 * (2 * y - 1)), _t(y))) == pytest.approx(0.0, abs=1e-7)
    assert float(symmetric_lovasz_loss(_t(-5 * (2 * y - 1)), _t(y))) > 1.0


def test_combined_is_half_of_each():
    x, t = _case(5, b=8, c=4)
    expected = 0.5 * (
        float(focal_loss(_t(x), _t(t))) + float(symmetric_lovasz_loss(_t(x), _t(t))) + _hardlog_np(x, t)
    )
    got = float(create_loss("focal-symmetric-lovasz-hardlog")(_t(x), _t(t)))
    assert got == pytest.approx(expected, rel=1e-5)


def test_every_registered_loss_backpropagates():
    names = list_losses()
    for base in ("focal", "hardlog", "symmetric-lovasz", "focal-symmetric-lovasz-hardlog", "bce"):
        assert base in names and f"soft-{base}" in names
    x, t = _case(6, b=6, c=19, soft=True)
    for name in names:
        logits = _t(x).requires_grad_(True)
        loss = create_loss(name)(logits, _t(t))
        loss.backward()
        assert torch.isfinite(loss) and logits.grad is not None and logits.grad.abs().sum() > 0, name
