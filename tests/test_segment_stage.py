"""The segment stage: store round trip, exact bboxes at original resolution, shards, kill -9 resume, CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi

from hpacli.data.ingest import kaggle_candidates, run_ingest
from hpacli.errors import EXIT_USAGE
from hpacli.segment.stage import run_segment
from hpacli.store import Shard, open_store
from hpacli.store import segmentation as sl
from hpacli.store.cells import CellTable

N_TRAIN, N_TEST, SIZE = 8, 2, 128


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from hpacli.data.synth import SynthConfig, run_synth

    root = tmp_path_factory.mktemp("segdata") / "data"
    run_synth(root, SynthConfig(n_images=N_TRAIN, size=SIZE, test_images=N_TEST, dev_images=0, seed=3))
    # one blank image: segmented, no cells
    first = sorted((root / "train").glob("*_red.png"))[0].name[: -len("_red.png")]
    for c in ("red", "green", "blue", "yellow"):
        Image.fromarray(np.zeros((SIZE, SIZE), np.uint8)).save(root / "train" / f"{first}_{c}.png")
    return root


def make_store(dataset, path):
    st = open_store(path, "a")
    st.set_layout(images_per_file=4)  # files of two blocks of 2 images: shards get whole files
    run_ingest(st, kaggle_candidates(dataset, include_test=True), data_root=dataset)
    return st


def snapshot(st):
    n = st.images.n
    labels = [sl.read_labels(st, i) for i in range(n)]
    df = CellTable(st).df()
    return labels, sl.n_cells(st), df


def assert_same(a, b):
    la, ca, da = a
    lb, cb, db = b
    assert np.array_equal(ca, cb)
    for (n1, c1), (n2, c2) in zip(la, lb):
        assert np.array_equal(n1, n2) and np.array_equal(c1, c2)
    assert da.equals(db)


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory):
    st = make_store(dataset, tmp_path_factory.mktemp("ref") / "s.zarr")
    out = run_segment(st, block_size=2, mask_scale=0.5, preview=2)
    return st, out, snapshot(st)


def test_round_trip_and_cells_table(reference):
    st, out, (labels, counts, df) = reference
    n = N_TRAIN + N_TEST
    assert out["all_done"] and out["processed"] == n and out["cells_table_rows"] == len(df)
    assert (counts >= 0).all() and (counts == 0).sum() == 1  # the blank image: recorded, no cells
    assert counts.sum() == len(df) > 20
    assert len(list(Path(out["preview_dir"]).glob("*.png"))) == 2
    table = CellTable(st)
    for i in range(n):
        nuc, cells = labels[i]
        assert cells.shape == (SIZE // 2, SIZE // 2) and sl.mask_scale(st, i) == 0.5
        full_n, full_c = sl.read_labels_full(st, i)
        assert full_c.shape == (SIZE, SIZE)
        rows = df.iloc[table.rows_of(i)]
        assert list(rows["cell_id"]) == list(range(1, counts[i] + 1))
        # bbox, area, nucleus bbox and border flag equal those of the upsampled label image
        boxes = ndi.find_objects(full_c)
        nboxes = ndi.find_objects(full_n, max_label=len(boxes))
        areas = np.bincount(full_c.ravel(), minlength=len(boxes) + 1)[1:]
        for r in rows.itertuples():
            b = boxes[r.cell_id - 1]
            assert (r.r0, r.c0, r.r1, r.c1) == (b[0].start, b[1].start, b[0].stop, b[1].stop)
            assert r.area == areas[r.cell_id - 1]
            nb = nboxes[r.cell_id - 1]
            want = (-1, -1, -1, -1) if nb is None else (nb[0].start, nb[1].start, nb[0].stop, nb[1].stop)
            assert (r.nr0, r.nc0, r.nr1, r.nc1) == want
            assert r.border == (b[0].start == 0 or b[1].start == 0 or b[0].stop == SIZE or b[1].stop == SIZE)
        assert np.array_equal(full_n[full_n > 0], full_c[full_n > 0])
    # a rerun has nothing to do and keeps the table
    tid = table.table_id
    again = run_segment(st, block_size=2, mask_scale=0.5)
    assert again["processed"] == 0 and CellTable(st).table_id == tid


def test_shards_union_equals_unsharded(dataset, reference, tmp_path):
    st = make_store(dataset, tmp_path / "s.zarr")
    a = run_segment(st, shard=Shard(0, 2), block_size=2, mask_scale=0.5)
    assert not a["all_done"] and not st.has("cells/offsets")
    b = run_segment(st, shard=Shard(1, 2), block_size=2, mask_scale=0.5)
    assert b["all_done"] and a["processed"] + b["processed"] == N_TRAIN + N_TEST
    assert_same(snapshot(st), reference[2])


def test_changed_settings_need_overwrite(reference):
    from hpacli.errors import HpaError

    st = reference[0]
    with pytest.raises(HpaError, match="--overwrite"):
        run_segment(st, block_size=2, mask_scale=1.0)


SCRIPT = """
import sys, time
from hpacli.segment.stage import run_segment
from hpacli.store import open_store

class Slow:
    def add_task(self, *a, **k): return 0
    def advance(self, *a, **k): time.sleep(0.4)
    def update(self, *a, **k): pass

run_segment(open_store(sys.argv[1], "a"), block_size=2, mask_scale=0.5, progress=Slow())
"""


def test_kill_and_resume_gives_the_same_result(dataset, reference, tmp_path):
    path = tmp_path / "s.zarr"
    st = make_store(dataset, path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(path)], env=env)
    deadline = time.time() + 60
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        if path.joinpath("segment", "_done", "zarr.json").exists():
            done = sl.n_cells(open_store(path))
            if (done >= 0).sum() >= 3:
                proc.send_signal(signal.SIGKILL)
                killed_at = int((done >= 0).sum())
                break
        time.sleep(0.02)
    proc.wait(timeout=30)
    assert killed_at is not None and killed_at < N_TRAIN + N_TEST, "the run was not interrupted mid-way"
    assert not st.has("cells/offsets")
    out = run_segment(open_store(path, "a"), block_size=2, mask_scale=0.5)
    assert out["all_done"] and 0 < out["processed"] < N_TRAIN + N_TEST
    assert_same(snapshot(open_store(path)), reference[2])


def test_cli_segment(dataset, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from hpacli.cli.app import build_app

    path = tmp_path / "s.zarr"
    make_store(dataset, path)
    monkeypatch.delenv("HPA_NUCLEI_MODEL", raising=False)
    monkeypatch.delenv("HPA_CELL_MODEL", raising=False)
    runner = CliRunner()
    res = runner.invoke(build_app(), ["segment", "--store", str(path), "--segmenter", "hpa-unet", "-q"])
    assert res.exit_code == EXIT_USAGE and "--nuclei-model" in res.output
    res = runner.invoke(build_app(), ["segment", "--store", str(path), "-q", "--preview", "1",
                                      "--preview-dir", str(tmp_path / "pv")])
    assert res.exit_code == 0, res.output
    assert "segmented" in res.output and len(list((tmp_path / "pv").glob("*.png"))) == 1
    assert len(CellTable(open_store(path)).df()) > 0
