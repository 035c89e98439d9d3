"""Multi-process training under a real ``torchrun`` (2 processes, gloo on the CPU): `hpa
train-image` and `hpa train-cell` killed with SIGKILL (the whole process group, mid-epoch)
and resumed with --resume give the weights, log and best checkpoint of an uninterrupted
2-process run. This checks DDP's exact resume: each rank's place in the epoch, each rank's
RNG (the DenseNet head's dropout), the accumulation cycle and the optimizer state."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_shards import ROOT, _env

TORCHRUN = Path(sys.executable).with_name("torchrun")
pytestmark = [pytest.mark.skipif(not TORCHRUN.exists(), reason="no torchrun beside this Python"), pytest.mark.slow]


def torchrun(args: list, **kw) -> subprocess.Popen:
    return subprocess.Popen([str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "hpacli.cli.app",
                             *map(str, args)], env=_env(), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def finish(proc: subprocess.Popen, timeout: float = 400) -> str:
    out = proc.communicate(timeout=timeout)[0]
    assert proc.returncode == 0, out[-5000:]
    return out


def _ckpt(path: Path) -> dict | None:
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception:  # not written yet
        return None


def kill_mid_epoch(args: list, out: Path, timeout: float = 400) -> dict:
    """Start the 2-process run, SIGKILL its whole process group once last.pt holds a
    position inside an epoch, and return that checkpoint."""
    proc = torchrun(args, start_new_session=True)
    deadline = time.time() + timeout
    seen = None
    while time.time() < deadline and proc.poll() is None:
        ck = _ckpt(out / "last.pt") if (out / "last.pt").exists() else None
        if ck is not None and ck["batch_in_epoch"] > 0:
            os.killpg(proc.pid, signal.SIGKILL)
            seen = ck
            break
        time.sleep(0.05)
    output = proc.communicate(timeout=60)[0]
    assert seen is not None, f"the run ended before it could be killed mid-epoch: {output[-3000:]}"
    assert proc.returncode == -signal.SIGKILL
    return seen


def same_runs(a: Path, b: Path) -> None:
    for name in ("last.pt", "best.pt"):
        wa, wb = _ckpt(a / name)["model"], _ckpt(b / name)["model"]
        for k in wa:
            assert torch.equal(wa[k], wb[k]), (name, k)
    la, lb = _ckpt(a / "last.pt"), _ckpt(b / "last.pt")
    assert la["step"] == lb["step"] and la["world_size"] == lb["world_size"] == 2
    for k, v in la["optimizer"]["state"].items():
        assert torch.equal(v["exp_avg"], lb["optimizer"]["state"][k]["exp_avg"])
    cols = ("epoch", "step", "images", "val_loss", "map")
    rows = [[tuple(r[c] for c in cols) for r in csv.DictReader(open(p / "log.csv"))] for p in (a, b)]
    assert rows[0] == rows[1]


@pytest.fixture(scope="module")
def image_store(tmp_path_factory):
    from tests.test_train_image import _tiny_store

    return _tiny_store(tmp_path_factory.mktemp("torchrun-image"), n=24).path


def test_train_image_two_processes_killed_and_resumed(image_store, tmp_path):
    # 16 training images: 4 micro-batches of 2 per process and epoch, steps of 2 (accumulation)
    args = ["train-image", "--store", image_store, "--fold", "0", "--backbone", "densenet121-hpa", "--img-size", "64",
            "--batch-size", "2", "--accum", "2", "--epochs", "2", "--lr-mult", "100", "--negatives", "all",
            "--workers", "0", "--device", "cpu", "--save-minutes", "0.0001", "--seed", "3", "-q"]
    ref, run = tmp_path / "ref", tmp_path / "run"
    finish(torchrun([*args, "--out", ref]))
    ck = kill_mid_epoch([*args, "--out", run], run)
    assert len(ck["rng_ranks"]) == 2 and ck["micro_in_cycle"] == 0
    assert not torch.equal(ck["rng_ranks"][0]["torch"], ck["rng_ranks"][1]["torch"])  # each rank its own stream
    finish(torchrun([*args, "--out", run, "--resume"]))
    same_runs(ref, run)


@pytest.fixture(scope="module")
def cell_store(tmp_path_factory):
    from hpacli.classes import N_CLASSES
    from hpacli.store.cells import CellTable
    from hpacli.store.folds import read_image_folds
    from tests.test_crops import make_cell_store
    from tests.test_train_cell import RUN, save_image_model, write_pseudolabels

    tmp = tmp_path_factory.mktemp("torchrun-cell")
    store, _ = make_cell_store(tmp / "b", n_images=12, cells_per_image=(4, 6))
    cells = CellTable(store)
    labelled = read_image_folds(store)[cells.column("image")] >= 0
    probs = np.random.default_rng(1).random((cells.n, N_CLASSES)).astype(np.float32)
    write_pseudolabels(store, RUN, probs, labelled)
    return store.path, save_image_model(tmp / "image.pt")


def test_train_cell_two_processes_killed_and_resumed(cell_store, tmp_path):
    store, init = cell_store
    args = ["train-cell", "--store", store, "--fold", "0", "--labels", "pl", "--init-from", init, "--img-size", "32",
            "--batch-size", "4", "--accum", "2", "--epochs", "2", "--lr-mult", "300", "--workers", "0",
            "--device", "cpu", "--save-minutes", "0.0001", "--seed", "3", "-q"]
    ref, run = tmp_path / "ref", tmp_path / "run"
    finish(torchrun([*args, "--out", ref]))
    kill_mid_epoch([*args, "--out", run], run)
    finish(torchrun([*args, "--out", run, "--resume"]))
    same_runs(ref, run)
