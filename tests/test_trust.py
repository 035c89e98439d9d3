"""What a user relies on without checking: stale state refused, failures recorded, options of
shards compared, lost chunks noticed, paths checked before the store changes, one-line errors."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hpacli.errors import HpaError, StoreError
from hpacli.store import begin_stage, open_store, stage_records

ROOT = Path(__file__).resolve().parents[1]


def one_line_error(res, *needles) -> str:
    """The CLI failed the way a user can act on: exit 2, one line, no traceback."""
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and res.exception is None or isinstance(res.exception, SystemExit)
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    err = [ln for ln in lines if ln.startswith("error:")]
    assert len(err) == 1, res.output
    for needle in needles:
        assert needle in err[0], err[0]
    return err[0]


def tree(path: Path) -> dict:
    """Every file under ``path`` with a digest of its bytes (the store is unchanged when equal)."""
    out = {}
    for p in sorted(Path(path).rglob("*")):
        if p.is_file() and not p.name.endswith(".lock"):
            out[p.relative_to(path).as_posix()] = hashlib.sha1(p.read_bytes()).hexdigest()
    return out


# ----------------------------------------------------------------------------- stage records
def test_begin_stage_as_context_manager_records_failure_and_done(tmp_path):
    st = open_store(tmp_path / "s.zarr", "a")
    with pytest.raises(ValueError):
        with begin_stage(st, "a", "stage-a", {"x": 1}):
            raise ValueError("bad value\nsecond line")
    rec = stage_records(st)["a"]
    assert rec["status"] == "failed" and rec["summary"]["error"] == "ValueError: bad value" and rec["finished"]
    with begin_stage(st, "b", "stage-b", {}):
        pass
    assert stage_records(st)["b"]["status"] == "done"
    with begin_stage(st, "c", "stage-c", {}) as run:
        run.finish("running", n=1)  # an explicit status is kept
    assert stage_records(st)["c"]["status"] == "running"
    with pytest.raises(KeyboardInterrupt):
        with begin_stage(st, "d", "stage-d", {}):
            raise KeyboardInterrupt
    assert stage_records(st)["d"]["summary"]["error"] == "interrupted"


@pytest.fixture
def denoise_store(tmp_path):
    """200 cells of 20 images with pseudo-labels, embeddings and 2 cell folds."""
    from hpacli.store import BlockWork
    from hpacli.store import pseudolabels as pl
    from hpacli.store.cells import CellTable
    from hpacli.store.folds import write_cell_folds

    rng = np.random.default_rng(0)
    n = 200
    st = open_store(tmp_path / "s.zarr", "a")
    write_cells(st, n, cell_id=np.tile(np.arange(1, 11), 20))
    x = rng.normal(size=(n, 8)).astype(np.float32)
    probs = rng.uniform(0, 1, size=(n, 19)).astype(np.float32)
    pl.prepare_run(st, "r", n, 8, {"cells_table_id": CellTable(st).table_id, "models": {}, "views": ["id"],
                                   "img_size": {}}, block=100)
    for s in range(0, n, 100):
        pl.write_block(st, "r", s, probs[s:s + 100], x[s:s + 100], np.zeros(100, np.int8))
    work = BlockWork(st, "labels/r", n, 100)
    for b in range(work.n_blocks):
        work.mark_done(b)
    write_cell_folds(st, np.tile(np.arange(2), n // 2).astype(np.int8))
    return st, x, probs


def write_cells(st, n, cell_id):
    from hpacli.store.cells import write_cells_table

    write_cells_table(st, {"image": np.repeat(np.arange(n // 10), 10), "cell_id": cell_id,
                           "bbox": np.zeros((n, 4)), "area": np.ones(n), "nucleus_bbox": np.zeros((n, 4)),
                           "border": np.zeros(n, bool)}, n // 10)


PARAMS = {"k": 10, "n_eig": 6}


def test_a_crash_in_denoise_is_recorded_as_failed(denoise_store, monkeypatch):
    from hpacli.label import graph_l1
    from hpacli.label.denoise import run_denoise

    st, *_ = denoise_store

    def boom(self, *a, **k):
        raise RuntimeError("solver exploded")

    monkeypatch.setattr(graph_l1.GraphL1Denoiser, "run", boom)
    with pytest.raises(RuntimeError):
        run_denoise(st, "r", params=PARAMS, recall_sample=0)
    rec = stage_records(st)["denoise/r"]
    assert rec["status"] == "failed" and "solver exploded" in rec["summary"]["error"]
    monkeypatch.undo()
    assert run_denoise(st, "r", params=PARAMS, recall_sample=0).folds_done == [0, 1]
    assert stage_records(st)["denoise/r"]["status"] == "done"


def test_cell_folds_of_a_resegmented_store_with_as_many_cells_are_refused(denoise_store, cli):
    from hpacli.label.denoise import run_denoise
    from hpacli.store import BlockWork
    from hpacli.store import pseudolabels as pl
    from hpacli.store.cells import CellTable

    st, x, probs = denoise_store
    # segmentation redone: as many cells, but other ones; pseudo-labels made again for them
    write_cells(st, 200, cell_id=np.tile(np.arange(10, 0, -1), 20))
    pl.prepare_run(st, "r", 200, 8, {"cells_table_id": CellTable(st).table_id, "models": {}, "views": ["id"],
                                     "img_size": {}}, block=100, overwrite=True)
    work = BlockWork(st, "labels/r", 200, 100)
    for s in range(0, 200, 100):
        pl.write_block(st, "r", s, probs[s:s + 100], x[s:s + 100], np.zeros(100, np.int8))
        work.mark_done(s // 100)
    before = tree(st.path)
    with pytest.raises(StoreError, match="cell folds 'default' belong to an older cells table"):
        run_denoise(st, "r", params=PARAMS, recall_sample=0)
    one_line_error(cli(["denoise", "--store", st.path, "--run", "r", "--k", "10", "-q"]), "older cells table",
                   "hpa fold --cells")
    assert tree(st.path) == before


def test_select_and_train_cell_refuse_denoised_labels_of_replaced_cell_folds(denoise_store, cli):
    from hpacli.label.denoise import run_denoise, run_select
    from hpacli.store.folds import write_cell_folds
    from hpacli.train.cell_targets import read_denoised

    st, *_ = denoise_store
    run_denoise(st, "r", params=PARAMS, recall_sample=0)
    assert run_select(st, "r", top=3).cells.size == 6
    assert read_denoised(st, "r").shape == (200, 20)
    write_cell_folds(st, np.repeat(np.arange(2), 100).astype(np.int8))  # `hpa fold --cells --seed 7`
    with pytest.raises(StoreError, match="made again since"):
        run_select(st, "r", top=3)
    with pytest.raises(StoreError, match="made again since"):
        read_denoised(st, "r")
    one_line_error(cli(["select-mitotic", "--store", st.path, "--run", "r", "--top", "3"]), "denoise --run r --overwrite")


# ----------------------------------------------------------------------------- open modes, bad names
COMMANDS_AFTER_INGEST = [
    ["segment"], ["dedup"], ["negatives"], ["fold"], ["fold", "--cells"], ["pseudolabel", "--models", "x.pt"],
    ["denoise"], ["select-mitotic"], ["predict", "--models", "x.pt"], ["info"], ["submit", "--out", "s.csv"],
    ["train-image"], ["train-cell"],
]


@pytest.mark.parametrize("args", COMMANDS_AFTER_INGEST, ids=lambda a: a[0] + ("-cells" if "--cells" in a else ""))
def test_stages_never_create_a_store_and_refuse_a_file(args, cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "typo.zarr"
    one_line_error(cli([*args, "--store", missing]), f"no store at {missing}", "hpa ingest")
    assert not missing.exists()
    afile = tmp_path / "notes.txt"
    afile.write_text("x")
    one_line_error(cli([*args, "--store", afile]), "is a file")
    assert afile.read_text() == "x"


def test_ingest_into_a_file_is_one_line(cli, tiny_dataset, tmp_path):
    afile = tmp_path / "notes.txt"
    afile.write_text("x")
    one_line_error(cli(["ingest", tiny_dataset, "--store", afile, "-q"]), "is a file")


@pytest.mark.parametrize("option", [
    ["pseudolabel", "--models", "x.pt", "--run"], ["predict", "--models", "x.pt", "--name"],
    ["select-mitotic", "--name"], ["fold", "--name"], ["denoise", "--run"], ["train-cell", "--labels"],
], ids=lambda o: o[0])
def test_names_too_long_or_not_one_folder_are_one_line(option, cli, tiny_dataset, tmp_path):
    s = tmp_path / "s.zarr"
    assert cli(["ingest", tiny_dataset, "--store", s, "-q"]).exit_code == 0
    before = tree(s)
    for name in ("x" * 300, "../escape", "a/b", ".hidden"):
        one_line_error(cli([*option, name, "--store", s]), "name")
    assert tree(s) == before


def test_child_key_limits():
    from hpacli.store.core import MAX_NAME, child_key

    assert child_key("labels", "oof-1.v2_x") == "labels/oof-1.v2_x"
    assert child_key("labels", "x" * MAX_NAME)
    for bad in ("", "x" * (MAX_NAME + 1), "a b", "é", "-x", "a\\b", "..", "x\0"):
        with pytest.raises(StoreError):
            child_key("labels", bad)


# ----------------------------------------------------------------------------- output paths first
@pytest.fixture
def segmented(tmp_path, tiny_dataset, cli):
    s = tmp_path / "s.zarr"
    assert cli(["ingest", tiny_dataset, "--store", s, "-q"]).exit_code == 0
    assert cli(["segment", "--store", s, "-q"]).exit_code == 0
    return s


def test_segment_overwrite_with_a_bad_preview_dir_keeps_the_masks(segmented, cli, tmp_path):
    afile = tmp_path / "a-file"
    afile.write_text("x")
    before = tree(segmented)
    for bad in (afile, afile / "below"):
        one_line_error(cli(["segment", "--store", segmented, "--overwrite", "--preview", "2", "--preview-dir", bad]),
                       "--preview-dir", str(afile))
    assert tree(segmented) == before


def test_submit_export_and_png_paths_checked_first(segmented, cli, tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    before = tree(segmented)
    one_line_error(cli(["submit", "--store", segmented, "--out", folder]), "is a folder")
    one_line_error(cli(["predict", "--store", segmented, "--models", "x.pt", "--export", folder, "-q"]),
                   "--export", "is a folder")
    afile = tmp_path / "a-file"
    afile.write_text("x")
    one_line_error(cli(["predict", "--store", segmented, "--models", "x.pt", "--overlays", "2",
                        "--overlay-dir", afile, "-q"]), "--overlay-dir", "is a file")
    one_line_error(cli(["negatives", "--store", segmented, "--png", folder, "-q"]), "--png", "is a folder")
    one_line_error(cli(["dedup", "--store", segmented, "--out", folder, "-q"]), "--out", "is a folder")
    one_line_error(cli(["select-mitotic", "--store", segmented, "--out", afile]), "--out", "is a file")
    assert tree(segmented) == before


def test_safe_file_name():
    from hpacli.outpaths import safe_file_name

    assert safe_file_name("abc-1_2.x", ".png") == "abc-1_2.x.png"
    names = {safe_file_name(t) for t in ("../../x", "/abs/x", "a/b", "a_b", "..", "x" * 400, "é", "", "a b")}
    assert len(names) == 9
    for n in names:
        assert "/" not in n and not n.startswith(".") and 0 < len(n) <= 120


def test_previews_and_overlays_of_hostile_ids_stay_in_their_folder(tmp_path):
    """A store made before IDs were checked, with IDs that are paths."""
    from hpacli.data.ingest import kaggle_candidates, run_ingest
    from hpacli.predict.export import write_overlays
    from hpacli.segment.stage import run_segment
    from hpacli.store import BlockWork
    from hpacli.store import predictions as P
    from hpacli.store.cells import CellTable
    from tests.datasets import make_kaggle_dataset

    data = make_kaggle_dataset(tmp_path / "data", n_train=3, n_test=0, size=64)
    st = open_store(tmp_path / "deep" / "s.zarr", "a")
    run_ingest(st, kaggle_candidates(data), data_root=data, workers=1)
    ids = np.array(["../../escaped", "/tmp/abs-escaped", "sub/dir"], dtype=object)
    st.array("images/id")[:3] = ids
    out = tmp_path / "deep" / "previews"
    res = run_segment(st, preview=3, preview_dir=out)
    assert res["previews"] == 3
    written = sorted(p.name for p in out.iterdir())
    assert len(written) == 3 and all(p.endswith(".png") for p in written)
    assert not list((tmp_path).glob("escaped*")) and not Path("/tmp/abs-escaped.png").exists()
    n = CellTable(st).n
    P.prepare(st, "p", n, {"models": []}, block=64)
    P.write_block(st, "p", 0, np.full((n, 19), 0.5, np.float32), CellTable(st).column("image"),
                  CellTable(st).column("cell_id"), CellTable(st).column("bbox"))
    work = BlockWork(st, P.name_key("p"), n, 64)
    for b in range(work.n_blocks):
        work.mark_done(b)
    paths = write_overlays(st, tmp_path / "deep" / "overlays", predictions="p", n=3)
    assert len(paths) == 3 and all(p.parent == tmp_path / "deep" / "overlays" for p in paths)


# ----------------------------------------------------------------------------- lost chunks
def test_a_lost_chunk_is_reported_by_info_check_and_refused_by_readers(segmented, cli):
    from hpacli.store import segmentation as sl
    from hpacli.store.cells import CellTable

    res = cli(["info", "--store", segmented, "--check"])
    assert res.exit_code == 0 and "no damage found" in res.output, res.output
    st = open_store(segmented, "r")
    good = sl.read_labels(st, 5)
    # delete the label chunk of image 3 and the first chunk of the image IDs
    (segmented / "segment" / "cells" / "c" / "3" / "0" / "0").unlink()
    (segmented / "images" / "id" / "c" / "0").unlink()
    err = one_line_error(cli(["info", "--store", segmented, "--check"]), "damaged")
    res = cli(["info", "--store", segmented, "--check"])
    assert "segment/cells" in res.output and "lost rows 3 " in res.output
    assert "images/id" in res.output and "lost rows 0-14" in res.output
    assert "images/id" in err or "segment/cells" in err
    with pytest.raises(StoreError, match="segment/cells has lost rows 3"):
        sl.read_labels(st, 3)
    np.testing.assert_array_equal(sl.read_labels(st, 5)[1], good[1])  # the rest still reads
    with pytest.raises(StoreError, match="images/id has lost rows 0-14"):
        st.images.ids()
    # a re-ingest must not register every image again: it refuses
    one_line_error(cli(["ingest", st.images.data_root, "--store", segmented, "-q"]), "damaged", "images/id")
    assert CellTable(st).n > 0  # columns still whole
    (segmented / "cells" / "bbox" / "c" / "0" / "0").unlink()
    with pytest.raises(StoreError, match="cells/bbox has lost rows"):
        CellTable(st).column("bbox")
    # plain `hpa info` still shows what it can
    res = cli(["info", "--store", segmented])
    assert res.exit_code == 0 and "damaged" in res.output


def test_lost_rows_follow_the_done_markers(tmp_path):
    from hpacli.store import BlockWork

    st = open_store(tmp_path / "s.zarr", "a")
    arr = st.ensure_array("job/x", (10,), "float32", (2,), encoding="t", coverage="done", fill_value=0)
    work = BlockWork(st, "job", 10, 4)
    arr[0:4] = 0.0  # an all-fill block is written too (write_empty_chunks)
    work.mark_done(0)
    assert st.lost_rows("job/x") == []
    assert sorted(p.name for p in (tmp_path / "s.zarr" / "job" / "x" / "c").iterdir()) == ["0", "1"]
    (tmp_path / "s.zarr" / "job" / "x" / "c" / "1").unlink()
    assert st.lost_rows("job/x") == [(2, 4)]
    work.mark_done(2)  # rows 8, 9 claimed but never written
    assert st.lost_rows("job/x") == [(2, 4), (8, 10)]
    # an array without a coverage stamp (sparse, or an older store) is not checked
    st.ensure_array("job/sparse", (10,), "float32", (2,), encoding="t")
    st.require_rows("job/sparse", (0, 10))


# ----------------------------------------------------------------------------- shard options
def test_segment_shards_with_other_mask_scale_are_refused(tmp_path, cli):
    from hpacli.store import segmentation as sl
    from tests.datasets import make_kaggle_dataset

    data = make_kaggle_dataset(tmp_path / "data", n_train=20, n_test=0, size=48, seed=2)  # 2 blocks of 16
    s = tmp_path / "s.zarr"
    assert cli(["ingest", data, "--store", s, "-q"]).exit_code == 0
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "hpacli.cli.app", "segment", "--store", str(s), "-q"]
    # two shards started at the same moment with different --mask-scale: exactly one runs
    procs = [subprocess.Popen([*cmd, "--shard", f"{i}/2", "--mask-scale", scale], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i, scale in enumerate(("0.5", "1"))]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 2], outs
    refused = outs[codes.index(2)]
    assert "mask_scale" in refused and "Traceback" not in refused and refused.count("error:") == 1
    winner = ("0.5", "1")[codes.index(0)]
    loser = ("0.5", "1")[codes.index(2)]
    # later shards: the other options are refused, the same ones complete the store
    one_line_error(cli(["segment", "--store", s, "--shard", f"{codes.index(2)}/2", "--mask-scale", loser, "-q"]),
                   f"mask_scale {float(winner)} (now {float(loser)})", "--overwrite")
    res = cli(["segment", "--store", s, "--shard", f"{codes.index(2)}/2", "--mask-scale", winner, "-q"])
    assert res.exit_code == 0, res.output
    st = open_store(s, "r")
    assert (sl.n_cells(st) >= 0).all()
    shapes = {tuple(x) for x in np.asarray(st.array("segment/mask_shape")[:])}
    assert shapes == {(24, 24)} if winner == "0.5" else shapes == {(48, 48)}  # one mask size in the store


def test_pseudolabel_shards_must_agree_on_folds_and_duplicates(tmp_path):
    from hpacli.label.pseudolabel import run_pseudolabel
    from hpacli.store.folds import write_image_folds
    from tests.test_crops import make_cell_store
    from tests.test_pseudolabel import make_models

    store, _ = make_cell_store(tmp_path, n_images=6)
    models = make_models(tmp_path / "runs")
    write_image_folds(store, np.array([0, 1, 2, 0, 1, -1], np.int8), name="other")
    kw = {"batch_size": 4, "device": "cpu", "workers": 0, "block": 8, "views": ("id",)}
    run_pseudolabel(store, models, run="p", shard=parse("0/2"), **kw)
    with pytest.raises(HpaError, match="skip duplicates"):
        run_pseudolabel(store, models, run="p", shard=parse("1/2"), skip_duplicates=False, **kw)
    with pytest.raises(HpaError, match="views"):
        run_pseudolabel(store, models, run="p", shard=parse("1/2"), **{**kw, "views": ("id", "hflip")})
    with pytest.raises(HpaError, match="other folds"):
        run_pseudolabel(store, models, run="p", shard=parse("1/2"), folds="other", **kw)
    assert run_pseudolabel(store, models, run="p", shard=parse("1/2"), **kw).complete


def parse(text):
    from hpacli.store import parse_shard

    return parse_shard(text)


def test_a_second_denoise_of_the_same_run_is_refused_while_one_runs(denoise_store):
    from hpacli.label.denoise import run_denoise

    st, *_ = denoise_store
    with st.lock(".hpa-denoise-r.lock"):  # as another process holds it
        with pytest.raises(StoreError, match="another `hpa denoise --run r` is running"):
            run_denoise(st, "r", params=PARAMS, recall_sample=0)
    assert run_denoise(st, "r", params=PARAMS, recall_sample=0).folds_done == [0, 1]


def test_os_errors_become_one_line():
    import errno

    from hpacli.cli.errors import message_for

    assert message_for(IsADirectoryError(errno.EISDIR, "Is a directory", "out")) == "out is a folder; give a file"
    assert "too long" in message_for(OSError(errno.ENAMETOOLONG, "File name too long", "x" * 300))
    assert "part of this path is a file" in message_for(NotADirectoryError(errno.ENOTDIR, "Not a directory", "a/b"))
    assert message_for(OSError(errno.EIO, "I/O error")) is None  # not a user's mistake: the traceback helps


def test_train_out_at_a_file_is_one_line(tmp_path, cli):
    from tests.test_train_image import _tiny_store

    st = _tiny_store(tmp_path)
    afile = tmp_path / "a-file"
    afile.write_text("x")
    res = cli(["train-image", "--store", st.path, "--out", afile, "--backbone", "resnet10t", "--img-size", "32",
               "--negatives", "all", "--epochs", "1", "--device", "cpu", "--workers", "0", "-q"])
    one_line_error(res, str(afile))
    assert afile.read_text() == "x"


def test_info_check_reports_missing_and_bad_stamps(tmp_path, cli):
    import json

    st = open_store(tmp_path / "s.zarr", "a")
    st.create_array("grp/a", (4,), "int8", (2,), encoding="t", coverage="all")[:] = 1
    st.create_array("grp/b", (4,), "int8", (2,), encoding="t", coverage="all")[:] = 1
    assert cli(["info", "--store", st.path, "--check"]).exit_code == 0
    meta_path = tmp_path / "s.zarr" / "grp" / "b" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    del meta["attributes"]["encoding"]
    meta["attributes"]["encoding_version"] = "one"
    meta_path.write_text(json.dumps(meta))
    res = cli(["info", "--store", st.path, "--check"])
    one_line_error(res, "grp/b")
    assert "no encoding stamp" in res.output and "bad encoding version" in res.output


def test_predict_shards_with_other_options_are_refused(tmp_path, cli):
    from tests.predict_store import make_truth_store
    from tests.test_predict import cell_extra, save_model

    store, _ = make_truth_store(tmp_path, n_train=1, n_test=3)
    for f in range(2):
        save_model(tmp_path / "runs" / f"fold{f}" / "best.pt", {**cell_extra(), "fold": f}, f)
    models = str(tmp_path / "runs" / "fold*" / "best.pt")
    base = ["predict", "--store", store.path, "--models", models, "--device", "cpu", "--workers", "0", "-q"]
    assert cli([*base, "--shard", "0/2", "--tta", "id"]).exit_code == 0
    before = tree(store.path)
    one_line_error(cli([*base, "--shard", "1/2", "--tta", "id,hflip"]), "other settings", "views")
    one_line_error(cli([*base, "--shard", "1/2", "--tta", "id", "--negative", "model"]), "negative")
    assert tree(store.path) == before
    assert cli([*base, "--shard", "1/2", "--tta", "id"]).exit_code == 0


def test_lost_pseudolabel_rows_are_refused_not_read_as_missing(denoise_store, cli):
    from hpacli.label.denoise import run_denoise
    from hpacli.store import pseudolabels as pl

    st, *_ = denoise_store
    assert np.isfinite(pl.read_probs(st, "r")).all()
    (st.path / "labels" / "r" / "embeddings" / "c" / "1" / "0").unlink()
    with pytest.raises(StoreError, match="labels/r/embeddings has lost rows 100-199"):
        run_denoise(st, "r", params=PARAMS, recall_sample=0)
    (st.path / "labels" / "r" / "probs" / "c" / "1" / "0").unlink()
    with pytest.raises(StoreError, match="labels/r/probs has lost rows 100-199"):
        pl.read_probs(st, "r")
    res = cli(["info", "--store", st.path, "--check"])
    one_line_error(res, "labels/r/")
    assert "labels/r/probs" in res.output and "labels/r/embeddings" in res.output
