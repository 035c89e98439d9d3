"""The shared trainer (accumulation, exact resume), the image datasets and `hpa train-image`."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from hpacli.data.views import dihedral  # noqa: E402
from hpacli.errors import EXIT_USAGE, HpaError  # noqa: E402
from hpacli.train.data import ArrayDataset, StoreImageDataset, select_image_rows  # noqa: E402
from hpacli.train.metrics import average_precision, macro_map  # noqa: E402
from hpacli.train.schedules import lr_at  # noqa: E402
from hpacli.train.trainer import TrainConfig, Trainer  # noqa: E402

torch.set_num_threads(1)


class TinyNet(nn.Module):
    """No batch statistics; optional dropout (exercises the RNG on resume)."""

    def __init__(self, dropout: float = 0.0, num_classes: int = 19) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 6, 3, padding=1)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(6, num_classes)
        self.embedding_dim = 6

    def forward_with_embedding(self, x):
        emb = torch.relu(self.conv(x)).mean(dim=(2, 3))
        return self.fc(self.drop(emb)), emb

    def forward(self, x):
        return self.forward_with_embedding(x)[0]


CFG = {"backbone": "tiny"}


def _data(n=16, size=8, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 4, size, size), dtype=np.uint8)
    targets = (rng.random((n, 19)) < 0.3).astype(np.float32)
    return ArrayDataset(images, targets), ArrayDataset(images[:6], targets[:6], augment=False)


def _train(tmp, dropout=0.0, callbacks=None, resume=False, **kw):
    torch.manual_seed(123)
    model = TinyNet(dropout)
    train, val = _data()
    opts = dict(
        out=str(tmp), epochs=2, batch_size=2, accum=1, schedule="constant", lr_mult=1000.0, loss="focal",
        device="cpu", workers=0, tensorboard=False, resume=resume, save_minutes=0,
    )
    opts.update(kw)
    trainer = Trainer(model, train, val, TrainConfig(**opts), model_config=CFG, callbacks=callbacks)
    trainer.fit()
    return model, trainer


def _params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------- accumulation
def test_accumulation_behaves_as_the_large_batch(tmp_path):
    big, tb = _train(tmp_path / "big", batch_size=8, accum=1)
    acc, ta = _train(tmp_path / "acc", batch_size=2, accum=4)
    small, _ = _train(tmp_path / "small", batch_size=2, accum=1)
    assert tb.step == ta.step == 4  # 16 images, 2 epochs, effective batch 8
    pb, pa, ps = _params(big), _params(acc), _params(small)
    for k in pb:
        assert torch.allclose(pb[k], pa[k], atol=1e-5), k
    # the comparison can fail: batch 2 without accumulation takes other steps
    assert any(not torch.allclose(pb[k], ps[k], atol=1e-3) for k in pb)


# ---------------------------------------------------------------------- exact resume
class Boom(Exception):
    pass


@pytest.mark.parametrize("kill_after,workers", [(5, 0), (11, 0), (5, 2)])
def test_killed_run_resumes_to_the_same_weights(tmp_path, kill_after, workers):
    kw = dict(
        dropout=0.3, accum=3, loss="focal-symmetric-lovasz-hardlog", save_every=1, lr_mult=300.0, workers=workers
    )
    ref, tr_ref = _train(tmp_path / "ref", **kw)

    seen = {"n": 0}

    def bomb(trainer):
        seen["n"] += 1
        if seen["n"] == kill_after:
            raise Boom()

    with pytest.raises(Boom):
        _train(tmp_path / "run", callbacks=[bomb], **kw)
    ck = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert ck["batch_in_epoch"] == kill_after - 1 - (8 if kill_after > 8 else 0)
    assert ck["micro_in_cycle"] > 0 and ck["grads"]  # stopped within an accumulation cycle
    resumed, tr = _train(tmp_path / "run", resume=True, **kw)
    assert tr.step == tr_ref.step
    a, b = _params(ref), _params(resumed)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows = list(csv.DictReader(open(tmp_path / "run" / "log.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]


def test_resume_without_flag_refuses_and_max_steps_stops(tmp_path):
    _train(tmp_path / "r", max_steps=3, eval_at_start=True)
    ck = torch.load(tmp_path / "r" / "last.pt", weights_only=True)
    assert ck["step"] == 3 and ck["batch_in_epoch"] == 3
    with pytest.raises(HpaError, match="--resume"):
        _train(tmp_path / "r")
    model, tr = _train(tmp_path / "r", resume=True)
    assert tr.step == 16 and tr.epoch == 3
    rows = list(csv.DictReader(open(tmp_path / "r" / "log.csv")))
    assert [r["epoch"] for r in rows] == ["0", "1", "1", "2"]
    assert (tmp_path / "r" / "best.pt").exists()


# ---------------------------------------------------------------------- pieces
def test_average_precision():
    assert average_precision([0.9, 0.8, 0.7], [1, 0, 1]) == pytest.approx((1.0 + 2 / 3) / 2)
    assert average_precision([0.5, 0.5, 0.1], [1, 0, 0]) == pytest.approx(0.5)  # tie enters together
    assert np.isnan(average_precision([0.2, 0.1], [0, 0]))
    rng = np.random.default_rng(0)
    scores, truth = rng.random(40), rng.random(40) < 0.3
    # brute force: mean over positives of precision at that positive's rank (no ties)
    order = np.argsort(-scores)
    hits = truth[order]
    prec = np.cumsum(hits) / np.arange(1, 41)
    assert average_precision(scores, truth) == pytest.approx(prec[hits].mean())
    logits = np.stack([scores, -scores, np.zeros(40)], 1)
    targets = np.stack([truth, truth, np.zeros(40)], 1)
    assert macro_map(logits, targets) == pytest.approx(
        (average_precision(scores, truth) + average_precision(-scores, truth)) / 2
    )


def test_dihedral_group():
    x = np.arange(2 * 5 * 5).reshape(2, 5, 5)
    outs = [dihedral(x, k) for k in range(8)]
    assert len({o.tobytes() for o in outs}) == 8
    assert np.array_equal(outs[0], x)
    for k in range(8):
        assert np.array_equal(dihedral(torch.from_numpy(x), k).numpy(), outs[k])
        for j in range(8):  # closed under composition
            assert any(np.array_equal(dihedral(outs[k], j), o) for o in outs)


def test_adam10_schedule():
    table = {1: 1e-5, 2: 1e-5, 3: 5e-6, 4: 5e-6, 5: 2e-6, 6: 2e-6, 7: 1e-6, 8: 1e-6, 9: 5e-7, 12: 5e-7}
    for epoch, lr in table.items():
        assert lr_at("adam10", epoch, lr_mult=4) == pytest.approx(4 * lr)
    assert lr_at("adam10", 1, lr_mult=0.3, epoch_offset=2) == pytest.approx(0.3 * 5e-6)
    assert lr_at("cosine", 1, epochs=5) == pytest.approx(1e-5) and lr_at("cosine", 5, epochs=5) < 1e-6
    with pytest.raises(HpaError, match="adam10"):
        lr_at("nope", 1)


# ---------------------------------------------------------------------- tiny store and the CLI
def _tiny_store(tmp_path: Path, n: int = 12, size: int = 64):
    from hpacli.data.ingest import kaggle_candidates, run_ingest
    from hpacli.store import open_store
    from hpacli.store.folds import write_image_folds

    root = tmp_path / "data"
    (root / "train").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        iid = f"img{i:02d}"
        for c in ("red", "green", "blue", "yellow"):
            Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(root / "train" / f"{iid}_{c}.png")
        label = "18" if i % 6 == 5 else f"{i % 4}|{(i + 1) % 19}"
        rows.append(f"{iid},{label}")
    (root / "train.csv").write_text("ID,Label\n" + "\n".join(rows) + "\n")
    st = open_store(tmp_path / "s.zarr", "a")
    run_ingest(st, kaggle_candidates(root, include_test=False), data_root=root, cache_size=size, workers=1)
    write_image_folds(st, np.array([i % 3 for i in range(n)]))
    return st


def test_store_dataset_cache_and_png_agree(tmp_path):
    st = _tiny_store(tmp_path)
    train, val, labels, dropped = select_image_rows(st, 0, negatives="all")
    assert set(val.tolist()) == {0, 3, 6, 9} and len(train) == 8 and dropped == 0
    cache = StoreImageDataset(st.path, train, labels[train], 64, source="auto")
    png = StoreImageDataset(st.path, train, labels[train], 64, source="png")
    assert cache.source == "cache" and png.source == "png"
    a, ta = cache[(0, None)]
    b, tb = png[(0, None)]
    assert a.dtype == torch.uint8 and a.shape == (4, 64, 64) and torch.equal(a, b) and torch.equal(ta, tb)
    assert torch.equal(ta, torch.from_numpy(labels[train[0]]))
    small = StoreImageDataset(st.path, train, labels[train], 32)
    assert small[(1, 7)][0].shape == (4, 32, 32)
    with pytest.raises(HpaError, match="out of range"):
        select_image_rows(st, 5, negatives="all")


def test_cli_train_image_smoke(tmp_path):
    from typer.testing import CliRunner

    from hpacli.cli.app import build_app
    from hpacli.models.checkpoint import load_model

    st = _tiny_store(tmp_path)
    out = tmp_path / "runs" / "fold0"
    args = [
        "train-image", "--store", str(st.path), "--fold", "0", "--out", str(out), "--backbone", "resnet10t",
        "--img-size", "32", "--batch-size", "2", "--accum", "2", "--epochs", "2", "--lr-mult", "100",
        "--negatives", "all", "--workers", "0", "--device", "cpu", "--eval-at-start", "--quiet",
    ]
    runner = CliRunner()
    res = runner.invoke(build_app(), args)
    assert res.exit_code == 0, res.output
    assert (out / "last.pt").exists() and (out / "best.pt").exists()
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert [r["epoch"] for r in rows] == ["0", "1", "2"] and all(r["map"] for r in rows)
    model, config = load_model(out / "best.pt")
    assert config["backbone"] == "resnet10t" and config["num_classes"] == 19
    logits, emb = model.forward_with_embedding(torch.rand(1, 4, 32, 32))
    assert logits.shape == (1, 19) and emb.shape == (1, model.embedding_dim)
    # continue for one more epoch
    res = runner.invoke(build_app(), [*args[:-2], "--epochs", "3", "--resume", "--quiet"])
    assert res.exit_code == 0, res.output
    assert [r["epoch"] for r in csv.DictReader(open(out / "log.csv"))] == ["0", "1", "2", "3"]
    # user errors are one line, EXIT_USAGE
    res = runner.invoke(build_app(), [*args[:-1]])
    assert res.exit_code == EXIT_USAGE and "--resume" in res.output
    res = runner.invoke(build_app(), [*args[:5], "--out", str(tmp_path / "x"), "--best-metric", "f1"])
    assert res.exit_code == EXIT_USAGE and "map or loss" in res.output
    # the default --negatives obvious needs the negatives stage's flags
    no_neg = [a for a in args if a not in ("--negatives", "all")]
    no_neg[no_neg.index(str(out))] = str(tmp_path / "y")
    res = runner.invoke(build_app(), no_neg)
    assert res.exit_code == EXIT_USAGE and "negatives all" in res.output


def test_negatives_obvious(tmp_path, monkeypatch):
    st = _tiny_store(tmp_path)
    labels_neg = np.flatnonzero(st.images.labels()[:, 18])
    import hpacli.train.data as data_mod

    flags = np.zeros(st.images.n, dtype=bool)
    flags[labels_neg[0]] = True
    monkeypatch.setattr(data_mod, "read_negative_flags", lambda store: flags)
    train_all, _, _, _ = select_image_rows(st, 0, negatives="all")
    train_obv, _, _, dropped = select_image_rows(st, 0, negatives="obvious")
    neg_in_train = [i for i in train_all if i in labels_neg]
    assert dropped == len([i for i in neg_in_train if not flags[i]]) and dropped > 0
    assert set(train_obv) == {i for i in train_all if i not in labels_neg or flags[i]}
