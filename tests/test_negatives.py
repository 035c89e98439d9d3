"""hpa negatives: scores of hand-made cells, other cells zeroed, 2048 scale, flags, resume, CLI."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from hpacli.classes import CHANNELS
from hpacli.data.ingest import kaggle_candidates, run_ingest
from hpacli.errors import EXIT_USAGE
from hpacli.prep import negatives as mod
from hpacli.prep.negatives import cell_scores, run_negatives
from hpacli.store import open_store
from hpacli.store import segmentation as seg
from hpacli.store.negatives import read_cell_flags, read_image_flags, read_scores

S = 64  # image size (mask scale 1.0 below 1024 px)


def image_and_labels(kind: str):
    green = np.zeros((S, S), np.uint8)
    cells = np.zeros((S, S), np.uint16)
    if kind == "stained":
        # cell 1: a bright square; cell 2: a dim L around it (its bbox holds all of cell 1)
        cells[10:40, 10:40] = 1
        green[10:40, 10:40] = 200
        cells[5:50, 5:10] = 2
        cells[41:50, 5:50] = 2
        green[cells == 2] = 30
    elif kind == "dim":
        cells[20:44, 20:44] = 1
        green[20:44, 20:44] = 100
    elif kind == "positive":  # bright, but not labelled Negative
        cells[20:44, 20:44] = 1
        green[20:44, 20:44] = 220
    # kind "empty": no cells
    px = np.stack([np.full((S, S), 40, np.uint8), green, np.full((S, S), 60, np.uint8), np.full((S, S), 50, np.uint8)])
    return px, cells


KINDS = {"neg_stained": ("stained", "18"), "neg_dim": ("dim", "18"), "pos": ("positive", "0"),
         "neg_empty": ("empty", "18"), "neg_dim2": ("dim", "18")}


def make_store(tmp_path):
    root = tmp_path / "data"
    (root / "train").mkdir(parents=True)
    rows, labels = [], {}
    for image_id, (kind, label) in KINDS.items():
        px, cells = image_and_labels(kind)
        for c, name in enumerate(CHANNELS):
            Image.fromarray(px[c]).save(root / "train" / f"{image_id}_{name}.png")
        rows.append({"ID": image_id, "Label": label})
        labels[image_id] = cells
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
    st = open_store(tmp_path / "s.zarr", "a")
    run_ingest(st, kaggle_candidates(root), data_root=root, workers=1)
    n = st.images.n
    seg.ensure_layout(st, n, (S, S))
    ids = st.images.ids().tolist()
    seg.write_block(st, 0, n, {ids.index(k): (v, v) for k, v in labels.items()})
    seg.build_cells_table(st)
    return st


def scores_by_image(st):
    from hpacli.store.cells import CellTable

    cells = CellTable(st)
    ids = st.images.ids()
    scores = read_scores(st)
    out: dict[str, list[float]] = {}
    for row, i in enumerate(cells.column("image")):
        out.setdefault(str(ids[i]), []).append(float(scores[row]))
    return out


def test_cell_scores_zero_other_cells_and_use_2048_scale():
    px, cells = image_and_labels("stained")
    ids = np.array([1, 2])
    bboxes = np.array([[10, 10, 40, 40], [5, 5, 50, 50]])
    s = cell_scores(px[1], cells, ids, bboxes, reference=S)  # scale 1: exact
    np.testing.assert_allclose(s, [200.0, 30.0])
    # a 2x2 spot: at original scale the top-10 mean is diluted by zeros; at 2048 scale it is not
    green = np.zeros((1024, 1024), np.uint8)
    green[100:102, 100:102] = 200
    lab = np.zeros_like(green, dtype=np.uint16)
    lab[90:110, 90:110] = 1
    box = np.array([[90, 90, 110, 110]])
    at_1024 = cell_scores(green, lab, np.array([1]), box, reference=1024)[0]
    at_2048 = cell_scores(green, lab, np.array([1]), box)[0]
    assert at_1024 == pytest.approx(80.0)  # 4 x 200 + 6 x 0
    assert at_2048 > 150  # upscaled 2x: about 16 bright pixels
    # the same field of view imaged at 2048 and 4096 pixels scores about the same as at 1024
    for zoom in (2, 4):
        big = cell_scores(np.kron(green, np.ones((zoom, zoom), np.uint8)),
                          np.kron(lab, np.ones((zoom, zoom), np.uint16)), np.array([1]), box * zoom)[0]
        assert big == pytest.approx(at_2048, abs=30)


def test_run_negatives_flags_cells_and_images(tmp_path):
    st = make_store(tmp_path)
    summary = run_negatives(st, workers=1)
    by = scores_by_image(st)
    assert by["neg_stained"] == pytest.approx([200.0, 30.0], abs=1.0)  # other cells zeroed in the L's bbox
    assert by["neg_dim"] == pytest.approx([100.0], abs=1.0)
    assert np.isnan(by["pos"]).all()  # not a Negative image: not scored
    ids = st.images.ids().tolist()
    flags = read_image_flags(st)
    assert [ids[i] for i in np.flatnonzero(flags)] == ["neg_stained"]
    assert read_cell_flags(st).sum() == 1
    assert summary["negative_images"] == 4 and summary["without_cells"] == 1
    assert summary["scored_images"] == 3 and summary["flagged_images"] == 1 and summary["flagged_cells"] == 1


def test_threshold_rerun_reuses_scores_and_resume_after_kill(tmp_path, monkeypatch):
    st = make_store(tmp_path)
    monkeypatch.setattr(mod, "BLOCK", 1)
    calls = []
    real = mod.cell_scores

    def dying(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed on the second Negative image
        return real(*args, **kwargs)

    monkeypatch.setattr(mod, "cell_scores", dying)
    with pytest.raises(KeyboardInterrupt):
        run_negatives(st, workers=1)
    assert st.attrs("negatives")["provenance"]["status"] == "failed"
    counted = []
    monkeypatch.setattr(mod, "cell_scores", lambda *a, **k: counted.append(1) or real(*a, **k))
    run_negatives(st, workers=1)
    assert len(counted) == 2  # the first image was not scored again
    assert scores_by_image(st)["neg_dim2"] == pytest.approx([100.0], abs=1.0)
    counted.clear()
    summary = run_negatives(st, threshold=90, workers=1)
    assert counted == []  # only the flags were recomputed
    assert summary["flagged_images"] == 3


def test_unreadable_image_is_skipped(tmp_path):
    st = make_store(tmp_path)
    (tmp_path / "data" / "train" / "neg_dim_green.png").write_bytes(b"broken")
    summary = run_negatives(st, workers=1)
    assert summary["n_problems"] == 1 and summary["problems"][0]["ID"] == "neg_dim"
    assert summary["scored_images"] == 2


def test_mocked_read_labels_full(tmp_path, monkeypatch):
    """The stage reads labels only through segmentation.read_labels_full."""
    st = make_store(tmp_path)
    ids = st.images.ids().tolist()

    def fake(store, i):
        cells = np.zeros((S, S), np.uint16)
        if ids[i] == "neg_dim":
            cells[20:44, 20:44] = 1
        return cells, cells

    monkeypatch.setattr(seg, "read_labels_full", fake)
    run_negatives(st, workers=1)
    by = scores_by_image(st)
    assert by["neg_dim"] == pytest.approx([100.0], abs=1.0)
    # the fake labels of this image are empty: inside the stored bboxes everything is
    # background, which is kept, so both cells now see the bright square
    assert by["neg_stained"] == [200.0, 200.0]


def test_cli_negatives_then_fold_obvious(tmp_path):
    from typer.testing import CliRunner

    from hpacli.cli.app import build_app
    from hpacli.store.folds import read_image_folds

    st = make_store(tmp_path)
    s = str(tmp_path / "s.zarr")
    png = tmp_path / "neg.png"
    res = CliRunner().invoke(build_app(), ["negatives", "--store", s, "--png", str(png), "-q"])
    assert res.exit_code == 0, res.output
    assert "flagged" in res.output
    assert Image.open(png).size[0] > 100
    res = CliRunner().invoke(build_app(), ["fold", "--store", s, "--ignore-duplicates", "--negatives", "obvious",
                                           "--n-splits", "2"])
    assert res.exit_code == 0, res.output
    fold = read_image_folds(st)
    ids = st.images.ids().tolist()
    kept = {ids[i] for i in np.flatnonzero(fold >= 0)}
    assert kept == {"neg_stained", "pos"}
    res = CliRunner().invoke(build_app(), ["fold", "--store", s, "--cells", "--n-splits", "3", "--seed", "5"])
    assert res.exit_code == 0, res.output
    from hpacli.store.folds import read_cell_folds

    cell_fold = read_cell_folds(st)
    assert len(cell_fold) == 5 and (cell_fold >= 0).all()
    assert len(set(cell_fold[:2].tolist())) == 2  # the two cells of one image go to different folds
    res = CliRunner().invoke(build_app(), ["info", "--store", s])
    assert res.exit_code == 0, res.output
    assert "obvious negatives" in res.output and "1 of 4 Negative images flagged" in res.output
    assert "image folds 'default'" in res.output and "cell folds 'default'" in res.output
    res = CliRunner().invoke(build_app(), ["negatives", "--store", str(tmp_path / "nope.zarr")])
    assert res.exit_code == EXIT_USAGE and "no store" in res.output
