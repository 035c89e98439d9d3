"""kill -9 then re-run gives the uninterrupted result, with real processes, for the stages whose
own tests do not already do it (ingest, segment and pseudolabel have theirs).

Each test prepares a tiny store, runs the stage once uninterrupted on a copy (counting its
events: array writes, attribute updates, checkpoints, optimizer steps; see tests/killing.py),
then runs it on another copy in a child process that kills itself with SIGKILL just before
a seeded random event, runs it again to the end, and compares everything it wrote.
"""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import numpy as np
import pytest

from hpacli.store import open_store, stage_records
from tests.killing import counting, run_killed, run_stage


def _arrays(store_path: Path, keys) -> dict:
    st = open_store(store_path, "r")
    return {k: np.asarray(st.array(k)[:]) for k in keys}


def kill_and_rerun(base: Path, tmp: Path, code: str, keys, seed: int, status_keys=(), with_torch=False) -> dict:
    """Run ``code`` on two copies of the store at ``base``: once whole, once killed at a
    seeded random event and re-run; assert the arrays ``keys`` (and the outputs in OUT)
    are the same, and return some facts for the caller's own checks."""
    ref, killed = tmp / "ref.zarr", tmp / "killed.zarr"
    shutil.copytree(base, ref)
    shutil.copytree(base, killed)
    with counting() as counter:
        run_stage(code, ref, tmp / "out-ref")
    assert counter.n >= 3, "the stage wrote too little to be killed in the middle"
    kill_at = int(np.random.default_rng(seed).integers(2, counter.n))
    proc = run_killed(code, killed, tmp / "out-killed", kill_at, with_torch=with_torch)
    assert proc.returncode == -signal.SIGKILL, (kill_at, counter.n, proc.stderr[-3000:])
    run_stage(code, killed, tmp / "out-killed")
    a, b = _arrays(ref, keys), _arrays(killed, keys)
    for k in keys:
        np.testing.assert_array_equal(a[k], b[k], err_msg=f"{k} differs after kill -9 at event {kill_at}/{counter.n}")
    recs = stage_records(open_store(killed, "r"))
    for key in status_keys:
        assert recs[key]["status"] == "done", (key, recs[key])
    return {"kill_at": kill_at, "events": counter.n, "ref": ref, "killed": killed}


# ----------------------------------------------------------------------------- data stages
@pytest.fixture(scope="module")
def segmented(tmp_path_factory):
    """14 images of 64 px, every other one labelled Negative, segmented (classical)."""
    from hpacli.data.ingest import kaggle_candidates, run_ingest
    from hpacli.segment.stage import run_segment
    from tests.datasets import make_kaggle_dataset

    tmp = tmp_path_factory.mktemp("kill-data")
    data = make_kaggle_dataset(tmp / "data", n_train=12, n_test=2, size=64, seed=5)
    rows = (data / "train.csv").read_text().splitlines()
    rows[1:] = [r if i % 2 else f"{r.split(',')[0]},18" for i, r in enumerate(rows[1:])]
    (data / "train.csv").write_text("\n".join(rows) + "\n")
    st = open_store(tmp / "base.zarr", "a")
    run_ingest(st, kaggle_candidates(data, include_test=True), data_root=data, workers=1)
    run_segment(st, block_size=4)
    return tmp / "base.zarr"


DEDUP = """
import hpacli.prep.dedup as D
from hpacli.store import open_store
D.HASH_BLOCK = 3
D.run_dedup(open_store(STORE, "r+"), source="png", workers=1)
"""


def test_dedup_kill_and_rerun(segmented, tmp_path):
    keys = [f"dedup/{k}" for k in ("hashes", "ok", "group", "pairs", "distances")]
    kill_and_rerun(segmented, tmp_path, DEDUP, keys, seed=1, status_keys=("dedup",))


NEGATIVES = """
import hpacli.prep.negatives as N
from hpacli.store import open_store
N.BLOCK = 2
N.run_negatives(open_store(STORE, "r+"), workers=1)
"""


def test_negatives_kill_and_rerun(segmented, tmp_path):
    keys = [f"negatives/{k}" for k in ("cell_score", "image_scored", "cell_flag", "image_flag")]
    out = kill_and_rerun(segmented, tmp_path, NEGATIVES, keys, seed=2, status_keys=("negatives",))
    assert np.isfinite(_arrays(out["ref"], ["negatives/cell_score"])["negatives/cell_score"]).sum() > 0


FOLDS = """
from hpacli.prep.folds import run_cell_folds, run_fold
from hpacli.store import open_store
st = open_store(STORE, "r+")
run_fold(st, n_splits=3, duplicates="ignore")
run_cell_folds(st, n_splits=3, name="c")
"""


def test_fold_kill_and_rerun(segmented, tmp_path):
    keys = ["folds/images/default/fold", "folds/cells/c/fold"]
    kill_and_rerun(segmented, tmp_path, FOLDS, keys, seed=3, status_keys=("folds/images/default", "folds/cells/c"))


# ----------------------------------------------------------------------------- de-noising, selection
@pytest.fixture
def labelled_cells(tmp_path):
    """300 cells with pseudo-labels, embeddings and 3 cell folds (no images needed)."""
    from hpacli.store import BlockWork
    from hpacli.store import pseudolabels as pl
    from hpacli.store.cells import CellTable, write_cells_table
    from hpacli.store.folds import write_cell_folds

    rng = np.random.default_rng(4)
    n = 300
    st = open_store(tmp_path / "base.zarr", "a")
    write_cells_table(st, {"image": np.repeat(np.arange(30), 10), "cell_id": np.tile(np.arange(1, 11), 30),
                           "bbox": np.zeros((n, 4)), "area": np.ones(n), "nucleus_bbox": np.zeros((n, 4)),
                           "border": np.zeros(n, bool)}, 30)
    centres = rng.normal(size=(6, 8)) * 3
    x = (centres[rng.integers(0, 6, n)] + rng.normal(size=(n, 8))).astype(np.float32)
    probs = rng.uniform(0, 1, size=(n, 19)).astype(np.float32)
    pl.prepare_run(st, "r", n, 8, {"cells_table_id": CellTable(st).table_id, "models": {}, "views": ["id"],
                                   "img_size": {}}, block=100)
    work = BlockWork(st, "labels/r", n, 100)
    for b in work.todo():
        pl.write_block(st, "r", b.start, probs[b.start:b.stop], x[b.start:b.stop], np.zeros(len(b), np.int8))
        work.mark_done(b)
    write_cell_folds(st, np.tile(np.arange(3), n // 3).astype(np.int8))
    return tmp_path / "base.zarr"


DENOISE = """
from hpacli.label.denoise import run_denoise, run_select
from hpacli.store import open_store
st = open_store(STORE, "r+")
run_denoise(st, "r", params={"k": 12, "n_eig": 6}, recall_sample=0)
run_select(st, "r", top=4, neighbours=5, min_hits=1, out_dir=OUT, gallery=0)
"""


def test_denoise_and_select_kill_and_rerun(labelled_cells, tmp_path):
    keys = [f"denoise/r/{k}" for k in ("y_init", "y_opt", "fold", "knn", "selections/mitotic/cells")]
    out = kill_and_rerun(labelled_cells, tmp_path, DENOISE, keys, seed=4, status_keys=("denoise/r",))
    assert (tmp_path / "out-ref" / "mitotic_r.csv").read_text() == (tmp_path / "out-killed" / "mitotic_r.csv").read_text()
    assert np.isfinite(_arrays(out["killed"], ["denoise/r/y_opt"])["denoise/r/y_opt"]).all()


# ----------------------------------------------------------------------------- predict
@pytest.fixture
def predict_base(tmp_path):
    from tests.predict_store import make_truth_store
    from tests.test_predict import cell_extra, save_model

    store, _ = make_truth_store(tmp_path / "b", n_train=1, n_test=3)
    for f in range(2):
        save_model(tmp_path / "runs" / f"fold{f}" / "best.pt", {**cell_extra(), "fold": f}, f)
    return store.path, str(tmp_path / "runs" / "fold*" / "best.pt")


PREDICT = """
from hpacli.predict.stage import run_predict
from hpacli.store import open_store
run_predict(open_store(STORE, "r+"), [{models!r}], tta="id,hflip", device="cpu", workers=0, batch_size=4, block=8)
"""


def test_predict_kill_and_rerun(predict_base, tmp_path):
    base, models = predict_base
    keys = [f"predictions/default/{k}" for k in ("probs", "image", "cell_id", "bbox")]
    out = kill_and_rerun(base, tmp_path, PREDICT.format(models=models), keys, seed=5,
                         status_keys=("predictions/default",), with_torch=True)
    from hpacli.store import predictions as P

    assert P.info(open_store(out["killed"], "r"), "default")["complete"]


# ----------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def image_store(tmp_path_factory):
    from tests.test_train_image import _tiny_store

    return _tiny_store(tmp_path_factory.mktemp("kill-train-image")).path


TRAIN_IMAGE = """
from hpacli.store import open_store
from hpacli.train.image import run_train_image
run_train_image(open_store(STORE, "r"), 0, OUT, backbone="resnet10t", img_size=32, negatives="all", batch_size=2,
                accum=2, epochs=2, lr_mult=100.0, workers=0, device="cpu", save_every=1, save_minutes=0,
                tensorboard=False, resume=True)
"""


def _weights(path: Path) -> dict:
    import torch

    return torch.load(path, weights_only=True)["model"]


def _same_runs(a: Path, b: Path) -> None:
    import csv

    import torch

    for name in ("last.pt", "best.pt"):
        wa, wb = _weights(a / name), _weights(b / name)
        for k in wa:
            assert torch.equal(wa[k], wb[k]), (name, k)
    cols = ("epoch", "step")
    rows_a = [tuple(r[c] for c in cols) for r in csv.DictReader(open(a / "log.csv"))]
    rows_b = [tuple(r[c] for c in cols) for r in csv.DictReader(open(b / "log.csv"))]
    assert rows_a == rows_b


def test_train_image_kill_and_resume(image_store, tmp_path):
    kill_and_rerun(image_store, tmp_path, TRAIN_IMAGE, [], seed=6, with_torch=True)
    _same_runs(tmp_path / "out-ref", tmp_path / "out-killed")


@pytest.fixture
def cell_store(tmp_path):
    from hpacli.classes import N_CLASSES
    from hpacli.store.cells import CellTable
    from hpacli.store.folds import read_image_folds
    from tests.test_crops import make_cell_store
    from tests.test_train_cell import RUN, save_image_model, write_pseudolabels

    store, _ = make_cell_store(tmp_path / "b", n_images=9)
    cells = CellTable(store)
    labelled = read_image_folds(store)[cells.column("image")] >= 0
    probs = np.random.default_rng(1).random((cells.n, N_CLASSES)).astype(np.float32)
    write_pseudolabels(store, RUN, probs, labelled)
    save_image_model(tmp_path / "image.pt")
    return store.path, tmp_path / "image.pt"


TRAIN_CELL = """
from hpacli.store import open_store
from hpacli.train.cell import run_train_cell
run_train_cell(open_store(STORE, "r"), 0, "pl", OUT, init_from={init!r}, img_size=32, batch_size=4, accum=3,
               epochs=2, lr_mult=300.0, workers=0, device="cpu", tensorboard=False, save_every=1, save_minutes=0,
               seed=3, resume=True)
"""


def test_train_cell_kill_and_resume(cell_store, tmp_path):
    base, init = cell_store
    kill_and_rerun(base, tmp_path, TRAIN_CELL.format(init=str(init)), [], seed=7, with_torch=True)
    _same_runs(tmp_path / "out-ref", tmp_path / "out-killed")
