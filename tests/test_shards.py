"""Shards in real processes started at the same time on one store: `hpa segment`, `hpa
pseudolabel` and `hpa predict` (and the dedup hashing and negatives scoring), split by
``--shard i/n``, by torchrun's ``RANK``/``WORLD_SIZE`` (a real ``torchrun``), or by a SLURM
job array's variables, give the arrays of one unsharded run; the store's shard files have one
writer each; a kill -9 in the middle of rewriting a shard file leaves the old file whole.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hpacli.store import open_store, stage_records
from hpacli.store import segmentation as sl

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")
CLEAN = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT",
         "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_MAX", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_STEP_NUM_TASKS",
         "HPA_SHARD")


def _env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in CLEAN}
    env.update({"PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                "HPA_LOAD_PLUGINS": "", **(extra or {})})
    return env


def together(*runs: tuple[list, dict | None], timeout: float = 300) -> list[str]:
    """Start every command at once (each a list of argv and extra environment), wait for all,
    and return their outputs; every one must succeed."""
    procs = [subprocess.Popen([str(a) for a in argv], env=_env(extra), cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for argv, extra in runs]
    outs = [p.communicate(timeout=timeout)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * len(procs), "\n---\n".join(outs)[-6000:]
    assert all("Traceback" not in o for o in outs), "\n---\n".join(outs)[-6000:]
    return outs


def hpa(*args) -> list:
    return [sys.executable, "-m", "hpacli.cli.app", *args]


def arrays(store: Path, keys) -> dict:
    st = open_store(store, "r")
    return {k: np.asarray(st.array(k)[:]) for k in keys}


def assert_same(a: Path, b: Path, keys) -> None:
    x, y = arrays(a, keys), arrays(b, keys)
    for k in keys:
        np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def no_partial_files(store: Path) -> None:
    assert not [p for p in files(store) if p.name.endswith(".partial")]


# ----------------------------------------------------------------------------- segment
@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    """34 synthetic images of 128 px; 8 images per file."""
    from hpacli.data.synth import SynthConfig, run_synth

    tmp = tmp_path_factory.mktemp("shards-seg")
    run_synth(tmp / "data", SynthConfig(n_images=34, size=128, test_images=0, seed=11))
    from typer.testing import CliRunner

    from hpacli.cli.app import build_app

    res = CliRunner().invoke(build_app(), ["ingest", str(tmp / "data"), "--store", str(tmp / "base.zarr"), "-q",
                                           "--images-per-file", "8"])
    assert res.exit_code == 0, res.output
    return tmp


SEG_KEYS = [f"segment/{k}" for k in ("cells", "nuclei", "mask_shape", "n_cells")] + \
    [f"cells/{k}" for k in ("image", "cell_id", "bbox", "area", "offsets")]


def test_two_segment_shards_at_once_equal_one_run(ingested, tmp_path, cli):
    ref, both = tmp_path / "ref.zarr", tmp_path / "both.zarr"
    shutil.copytree(ingested / "base.zarr", ref)
    shutil.copytree(ingested / "base.zarr", both)
    assert cli(["segment", "--store", ref, "--block-size", "4", "-q"]).exit_code == 0
    seg = ["segment", "--store", both, "--block-size", "4", "-q", "--device", "cpu"]
    together((hpa(*seg, "--shard", "0/2"), None), (hpa(*seg, "--shard", "1/2"), None))
    assert_same(ref, both, SEG_KEYS)
    assert stage_records(open_store(both, "r"))["segment"]["status"] == "done"
    # 34 images in files of 8 (two blocks of 4): five files per mask array, each written by one process
    for name in ("cells", "nuclei"):
        assert len(files(both / "segment" / name / "c")) == 5
    assert open_store(both, "r").array("segment/cells").shards[0] == 8
    no_partial_files(both)


SLOW_WRITES = """
import sys, time
import zarr.storage._local as L
from contextlib import contextmanager
orig = L._atomic_write

class Slow:  # writes in small pieces, so that a kill lands in the middle of a file
    def __init__(self, f): self.f = f
    def write(self, data):
        view = memoryview(data).cast("B")
        for k in range(0, len(view), 512):
            self.f.write(view[k:k + 512])
            self.f.flush()
            time.sleep(0.01)
        return len(view)

@contextmanager
def slow(path, mode, exclusive=False):
    with orig(path, mode, exclusive=exclusive) as f:
        yield Slow(f) if "segment/cells/c" in str(path) else f

L._atomic_write = slow
sys.argv = ["hpa", "segment", "--store", sys.argv[1], "--block-size", "4", "-q", "--device", "cpu"]
from hpacli.cli.app import main
main()
"""


def test_kill_in_the_middle_of_a_shard_file_keeps_the_old_file(ingested, tmp_path, cli):
    ref, path = tmp_path / "ref.zarr", tmp_path / "s.zarr"
    shutil.copytree(ingested / "base.zarr", ref)
    shutil.copytree(ingested / "base.zarr", path)
    assert cli(["segment", "--store", ref, "--block-size", "4", "-q"]).exit_code == 0
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITES, str(path)], env=_env(), cwd=ROOT)
    shard = path / "segment" / "cells" / "c" / "0" / "0"
    killed = None
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        # block 0 is done (its file exists) and the file is being rewritten for block 1
        partial = [p for p in shard.glob("*.partial")] if shard.is_dir() else []
        if (shard / "0").exists() and partial and partial[0].stat().st_size > 0:
            proc.send_signal(signal.SIGKILL)
            killed = partial[0]
            break
        time.sleep(0.005)
    proc.wait(timeout=60)
    assert killed is not None, "the run was not killed while rewriting a shard file"
    st = open_store(path, "r")
    assert st.lost_rows("segment/cells") == []  # the old file is whole
    done = np.asarray(st.array("segment/_done")[:])
    assert done[0] and not done[1]
    ref_cells = arrays(ref, ["segment/cells"])["segment/cells"]
    np.testing.assert_array_equal(np.asarray(st.array("segment/cells")[0:4]), ref_cells[0:4])
    assert cli(["info", "--store", path, "--check"]).exit_code == 0
    assert cli(["segment", "--store", path, "--block-size", "4", "-q"]).exit_code == 0  # resume
    assert_same(ref, path, SEG_KEYS)
    no_partial_files(path)  # the leftover of the killed write is cleared once every block is done


# ----------------------------------------------------------------------------- pseudolabel, predict
def test_two_pseudolabel_processes_from_torchrun_variables_equal_one_run(tmp_path, cli):
    from tests.test_crops import make_cell_store
    from tests.test_pseudolabel import make_models

    store, _ = make_cell_store(tmp_path / "s", n_images=8)  # 16 cells per file
    models = make_models(tmp_path / "runs")
    base = ["pseudolabel", "--models", models, "--device", "cpu", "--workers", "0", "--block-size", "4", "-q"]
    assert cli([*base, "--store", store.path, "--run", "whole"]).exit_code == 0
    # no --shard: each process takes its part from RANK / WORLD_SIZE, as under torchrun
    outs = together(*[(hpa(*base, "--store", store.path, "--run", "sh"), {"RANK": str(r), "WORLD_SIZE": "2"})
                      for r in range(2)])
    assert any("shard 0/2 (from torchrun)" in o for o in outs) and any("shard 1/2 (from torchrun)" in o for o in outs)
    keys = [f"labels/{{}}/{k}" for k in ("probs", "embeddings", "model")]
    a = arrays(store.path, [k.format("whole") for k in keys])
    b = arrays(store.path, [k.format("sh") for k in keys])
    for k in keys:
        got, want = b[k.format("sh")], a[k.format("whole")]
        # the processes batch other cells together, and CPU convolutions round by batch: values
        # agree to float32 rounding, so a float16 array (the embeddings) may differ by its last bit
        rtol = 2.0 ** -10 if want.dtype == np.float16 else 1e-7
        np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=rtol,
                                   atol=1e-5, equal_nan=True, err_msg=k)
    from hpacli.store import pseudolabels as PL

    info = PL.run_info(open_store(store.path, "r"), "sh")
    assert info["complete"] and info["blocks"] >= 4
    assert len(files(store.path / "labels" / "sh" / "probs" / "c")) == -(-info["n_cells"] // 16) >= 2


@pytest.mark.skipif(not TORCHRUN.exists(), reason="no torchrun beside this Python")
def test_predict_under_a_real_torchrun_equals_one_run(tmp_path, cli):
    from tests.predict_store import make_truth_store
    from tests.test_predict import cell_extra, save_model

    store, _ = make_truth_store(tmp_path / "b", n_train=1, n_test=3)
    for f in range(2):
        save_model(tmp_path / "runs" / f"fold{f}" / "best.pt", {**cell_extra(), "fold": f}, f)
    models = str(tmp_path / "runs" / "fold*" / "best.pt")
    base = ["predict", "--store", store.path, "--models", models, "--device", "cpu", "--workers", "0",
            "--block-size", "4", "--tta", "id,hflip", "-q"]
    assert cli([*base, "--name", "whole"]).exit_code == 0
    together(([TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "hpacli.cli.app", *base, "--name", "sh",
               "--shard", "auto"], None))
    from hpacli.store import predictions as P

    st = open_store(store.path, "r")
    info = P.info(st, "sh")
    assert info["complete"] and info["blocks"] >= 4
    np.testing.assert_allclose(P.read_probs(st, "sh"), P.read_probs(st, "whole"), atol=1e-6, equal_nan=True)
    for k in ("image", "cell_id", "bbox"):
        np.testing.assert_array_equal(np.asarray(st.array(f"predictions/sh/{k}")[:]),
                                      np.asarray(st.array(f"predictions/whole/{k}")[:]))


# ----------------------------------------------------------------------------- dedup, negatives
@pytest.fixture(scope="module")
def segmented(tmp_path_factory):
    """14 images of 64 px, every other one labelled Negative, segmented; 2 images per file."""
    from hpacli.data.ingest import kaggle_candidates, run_ingest
    from hpacli.segment.stage import run_segment
    from tests.datasets import make_kaggle_dataset

    tmp = tmp_path_factory.mktemp("shards-data")
    data = make_kaggle_dataset(tmp / "data", n_train=12, n_test=2, size=64, seed=5)
    rows = (data / "train.csv").read_text().splitlines()
    rows[1:] = [r if i % 2 else f"{r.split(',')[0]},18" for i, r in enumerate(rows[1:])]
    (data / "train.csv").write_text("\n".join(rows) + "\n")
    st = open_store(tmp / "base.zarr", "a")
    st.set_layout(images_per_file=2)
    run_ingest(st, kaggle_candidates(data, include_test=True), data_root=data, workers=1)
    run_segment(st, block_size=2)
    return tmp / "base.zarr"


STAGE = """
import sys
sys.path.insert(0, {root!r})
import hpacli.prep.dedup as D
import hpacli.prep.negatives as N
from hpacli.store import open_store, parse_shard
D.HASH_BLOCK, N.BLOCK = 2, 1
st = open_store({store!r}, "r+")
out = {{"dedup": D.run_dedup, "negatives": N.run_negatives}}[{stage!r}](st, workers=1, shard=parse_shard(None))
print("complete" if out["complete"] else "partial")
"""


@pytest.mark.parametrize("stage,keys", [
    ("dedup", ["dedup/hashes", "dedup/ok", "dedup/group", "dedup/pairs", "dedup/distances"]),
    ("negatives", ["negatives/cell_score", "negatives/image_scored", "negatives/cell_flag", "negatives/image_flag"]),
])
def test_dedup_and_negatives_split_by_a_slurm_job_array(segmented, tmp_path, stage, keys):
    ref, both = tmp_path / "ref.zarr", tmp_path / "both.zarr"
    shutil.copytree(segmented, ref)
    shutil.copytree(segmented, both)
    together(([sys.executable, "-c", STAGE.format(root=str(ROOT), store=str(ref), stage=stage)], None))
    # an array --array=1-2: tasks 1 and 2 are parts 0 and 1 of 2
    array = {"SLURM_ARRAY_TASK_COUNT": "2", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_MAX": "2"}
    outs = together(*[([sys.executable, "-c", STAGE.format(root=str(ROOT), store=str(both), stage=stage)],
                       {**array, "SLURM_ARRAY_TASK_ID": str(t)}) for t in (1, 2)])
    # the last to finish closed the stage (both may, if they end together)
    assert any("complete" in o.split() for o in outs), outs
    assert_same(ref, both, keys)
    assert stage_records(open_store(both, "r"))[stage]["status"] == "done"
    no_partial_files(both)


# ----------------------------------------------------------------------------- the pixel cache
def test_two_ingests_at_once_fill_a_sharded_pixel_cache(tmp_path):
    from tests.datasets import make_kaggle_dataset
    from tests.test_ingest import _expected_cache

    a = make_kaggle_dataset(tmp_path / "a", n_train=30, n_test=0, size=32, seed=1, prefix="a")
    b = make_kaggle_dataset(tmp_path / "b", n_train=30, n_test=0, size=32, seed=2, prefix="b")
    store = tmp_path / "s.zarr"
    ingest = ["--store", store, "-q", "--workers", "1", "--images-per-file", "8"]
    # a third ingest without a cache, at the same time: its rows are filled later by the others or the last run
    together((hpa("ingest", a, *ingest, "--cache-size", "16"), None), (hpa("ingest", b, *ingest), None))
    together((hpa("ingest", b, *ingest), None))
    t = open_store(store, "r").images
    assert t.n == 60 and t.cache_complete
    ids = t.ids().tolist()
    for i, image_id in enumerate(ids):
        folder = a if image_id.startswith("a") else b
        np.testing.assert_array_equal(t.read_cache(i), _expected_cache(folder, image_id, 16))
    assert open_store(store, "r").array("images/cache").shards[0] == 8
    assert len(files(store / "images" / "cache" / "c")) == 8  # 60 images, 8 per file
    no_partial_files(store)


def test_sharded_masks_read_like_unsharded_ones(ingested, tmp_path, cli):
    """The same segmentation with one image per file and with 8 per file."""
    one = tmp_path / "one.zarr"
    assert cli(["ingest", ingested / "data", "--store", one, "-q", "--images-per-file", "1"]).exit_code == 0
    assert cli(["segment", "--store", one, "--block-size", "1", "-q"]).exit_code == 0
    many = tmp_path / "many.zarr"
    shutil.copytree(ingested / "base.zarr", many)
    assert cli(["segment", "--store", many, "--block-size", "4", "-q"]).exit_code == 0
    st1, st8 = open_store(one, "r"), open_store(many, "r")
    assert st1.array("segment/cells").shards is None and st8.array("segment/cells").shards[0] == 8
    assert len(files(one / "segment" / "cells" / "c")) == 34
    for i in (0, 9, 33):
        for x, y in zip(sl.read_labels(st1, i), sl.read_labels(st8, i)):
            np.testing.assert_array_equal(x, y)


# ----------------------------------------------------------------------------- the launcher's environment
def test_parts_from_the_environment():
    from hpacli.errors import InputError
    from hpacli.store import Shard, parse_shard

    assert parse_shard(None, env={}) == Shard() and parse_shard("auto", env={}) == Shard()
    tr = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}
    assert parse_shard(None, env=tr) == Shard(3, 4) and parse_shard(None, env=tr).origin == "torchrun"
    assert parse_shard("1/2", env=tr) == Shard(1, 2)  # explicit wins
    assert parse_shard("0/1", env=tr) == Shard()  # the whole job on purpose
    arr = {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "1",
           "SLURM_ARRAY_TASK_MAX": "7", "SLURM_ARRAY_TASK_STEP": "2"}
    assert parse_shard(None, env=arr) == Shard(3, 4)  # --array=1-7:2 -> tasks 1,3,5,7
    with pytest.raises(InputError, match="not a regular range"):
        parse_shard(None, env={**arr, "SLURM_ARRAY_TASK_MAX": "9"})  # --array=1,3,5,9
    # srun's tasks only with --shard auto (a batch script runs as SLURM process 0 of all its tasks)
    srun = {"SLURM_PROCID": "1", "SLURM_NTASKS": "3", "SLURM_STEP_NUM_TASKS": "2"}
    assert parse_shard(None, env=srun) == Shard() and parse_shard("auto", env=srun) == Shard(1, 2)
    # an array task running torchrun: the parts multiply
    both = {**arr, **tr}
    assert parse_shard(None, env=both) == Shard(3 * 4 + 3, 16)
    assert "SLURM job array × torchrun" in parse_shard(None, env=both).describe()
    with pytest.raises(InputError, match="not a number"):
        parse_shard(None, env={"RANK": "x", "WORLD_SIZE": "2"})


def test_shards_take_whole_files(tmp_path):
    from hpacli.store import BlockWork, Shard

    st = open_store(tmp_path / "s.zarr", "a")
    work = BlockWork(st, "job", 23, 2, per_file=3)  # 12 blocks in files of 3
    parts = [[b.index for b in work.todo(Shard(i, 3))] for i in range(3)]
    assert parts == [[0, 1, 2, 9, 10, 11], [3, 4, 5], [6, 7, 8]]
    assert st.array("job/_done").chunks == (3,)
    work.mark_done(4)
    assert [b.index for b in BlockWork(st, "job", 23, 2).todo(Shard(1, 3))] == [3, 5]  # per_file kept
