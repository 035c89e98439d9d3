"""hpa submit --out: Kaggle format from stored predictions, checked, scored perfectly when perfect."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from hpacli.classes import N_CLASSES
from hpacli.errors import EXIT_USAGE, HpaError, InputError
from hpacli.evaluate.metric import evaluate_files
from hpacli.evaluate.submission import check_submission
from hpacli.evaluate.write import parse_classes, write_submission
from hpacli.io.masks import decode_mask
from hpacli.store import segmentation as seg
from tests.predict_store import make_truth_store, perfect_probs, put_predictions


@pytest.fixture
def truth_store(tmp_path):
    store, root = make_truth_store(tmp_path)
    return store, root, tmp_path


def _rows(path):
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def test_perfect_predictions_score_one_through_the_cli(truth_store, cli):
    store, root, tmp = truth_store
    put_predictions(store, perfect_probs(store, root))
    out = tmp / "sub" / "submission.csv"
    res = cli(["submit", "--store", store.path, "--out", out, "--quiet"])
    assert res.exit_code == 0, res.output
    assert cli(["submit", "--check", out, "--images", root / "sample_submission.csv"]).exit_code == 0
    res = cli(["evaluate", "--truth", root / "test_truth.csv", "--submission", out, "--json", "-"])
    assert res.exit_code == 0, res.output
    result = json.loads(res.output[res.output.index("{"):])
    assert result["mAP"] == pytest.approx(1.0)
    # one row per test image, in the store's order, at the original size
    df = _rows(out)
    test = store.images.df().query("split == 'test'")
    assert df["ID"].tolist() == test["ID"].tolist()
    assert (df["ImageWidth"].astype(int) == test["width"].to_numpy()).all()
    # only the true triples (min-conf drops the zeros): still perfect, and far fewer triples
    write_submission(store, out=tmp / "only.csv", min_conf=0.5, workers=0)
    assert evaluate_files(root / "test_truth.csv", tmp / "only.csv").mAP == pytest.approx(1.0)
    assert len(" ".join(_rows(tmp / "only.csv")["PredictionString"]).split()) < len(" ".join(df["PredictionString"]).split())


def test_the_dev_split_is_submitted_and_scored_on_its_own(truth_store, cli):
    store, root, tmp = truth_store
    put_predictions(store, perfect_probs(store, root))
    out = tmp / "dev.csv"
    assert cli(["submit", "--store", store.path, "--out", out, "--split", "dev", "--quiet"]).exit_code == 0
    dev = store.images.df().query("split == 'dev'")
    assert len(dev) == 3 and _rows(out)["ID"].tolist() == dev["ID"].tolist()
    assert evaluate_files(root / "dev_truth.csv", out).mAP == pytest.approx(1.0)
    assert not set(_rows(out)["ID"]) & set(_rows(root / "test_truth.csv")["ID"])


def test_every_class_gets_a_triple_per_cell_and_min_conf_and_classes_filter(truth_store):
    store, root, tmp = truth_store
    rng = np.random.default_rng(0)
    probs = rng.random((len(perfect_probs(store, root)), N_CLASSES)).astype(np.float32)
    put_predictions(store, probs)
    s = write_submission(store, out=tmp / "all.csv", workers=0)
    assert s.triples == s.cells * N_CLASSES
    s2 = write_submission(store, out=tmp / "some.csv", min_conf=0.5, classes=[0, 11], workers=0)
    from hpacli.store.cells import CellTable

    test_rows = np.isin(CellTable(store).column("image"), np.flatnonzero(store.images.df()["split"] == "test"))
    expected = int((probs[test_rows][:, [0, 11]] >= 0.5).sum())
    assert s2.triples == expected > 0
    text = " ".join(_rows(tmp / "some.csv")["PredictionString"])
    labels = set(text.split()[0::3])
    assert labels <= {"0", "11"}
    assert min(float(v) for v in text.split()[1::3]) >= 0.5
    # the parallel writer gives the same bytes as the in-process one
    write_submission(store, out=tmp / "par.csv", min_conf=0.5, classes=[0, 11], workers=2)
    assert (tmp / "par.csv").read_bytes() == (tmp / "some.csv").read_bytes()


def test_masks_are_at_the_original_size_when_stored_smaller(tmp_path):
    store, root = make_truth_store(tmp_path, size=128, n_train=1, n_test=2, mask_scale=0.5)
    assert seg.mask_scale(store, 0) == 0.5
    probs = perfect_probs(store, root)
    put_predictions(store, probs)
    out = tmp_path / "s.csv"
    write_submission(store, out=out, classes=[0], workers=0)
    df = _rows(out)
    ids = store.images.ids().tolist()
    for _, row in df.iterrows():
        assert (int(row.ImageWidth), int(row.ImageHeight)) == (128, 128)
        i = ids.index(row.ID)
        _, full = seg.read_labels_full(store, i)
        masks = row.PredictionString.split()[2::3]
        got = np.zeros((128, 128), np.int32)
        for k, m in enumerate(masks, start=1):
            got[decode_mask(m, 128, 128)] = k
        # each mask is one cell of the upsampled label image, and they cover all of its cells
        assert len(masks) == len(np.unique(full)) - 1
        assert np.array_equal(got > 0, full > 0)
    assert check_submission(out).ok


def test_missing_or_stale_predictions_are_refused_and_nothing_is_written(truth_store):
    store, root, tmp = truth_store
    probs = perfect_probs(store, root)
    from hpacli.store.cells import CellTable

    split = store.images.df()["split"].to_numpy()[CellTable(store).column("image")]
    probs[np.flatnonzero(split == "test")[-1]] = np.nan  # a test cell
    put_predictions(store, probs)
    out = tmp / "x.csv"
    with pytest.raises(HpaError, match="have no predictions"):
        write_submission(store, out=out, workers=0)
    assert not out.exists() and not list(tmp.glob(".x.csv*"))
    with pytest.raises(HpaError, match="no predictions 'other'"):
        write_submission(store, predictions="other", out=out, workers=0)
    with pytest.raises(InputError):
        parse_classes("0,19")
    assert parse_classes("11, 0,11") == [0, 11] and parse_classes(None) is None


def test_cli_without_action_is_a_clear_error(cli):
    res = cli(["submit"])
    assert res.exit_code == EXIT_USAGE and "nothing to do" in res.output


def test_run_encoder_is_byte_identical_and_rows_match_submission_row():
    from hpacli.evaluate.submission import submission_row
    from hpacli.evaluate.write import encode_label_runs, image_row
    from hpacli.io.masks import encode_label_image

    rng = np.random.default_rng(3)
    for h, w in ((7, 5), (40, 33), (64, 64)):
        lab = rng.integers(0, 6, (h, w)).astype(np.uint16)
        lab[rng.random((h, w)) < 0.5] = 0
        lab[-1, -1] = 5  # a run that ends the image
        lab[0, 0] = 2  # one that starts it
        assert encode_label_runs(lab) == encode_label_image(lab)
        assert encode_label_runs(lab, [3, 1, 9]) == encode_label_image(lab, [3, 1, 9])  # 9: absent, empty mask
    smooth = np.kron(rng.integers(0, 9, (8, 8)), np.ones((16, 16), int)).astype(np.uint16)
    assert encode_label_runs(smooth) == encode_label_image(smooth)
    ids = np.unique(smooth)[1:]
    probs = rng.random((len(ids), N_CLASSES))
    want = submission_row("x", smooth, dict(zip(ids.tolist(), probs)), classes=[0, 5, 11], min_score=0.4)
    got = image_row("x", smooth, ids, probs, classes=[0, 5, 11], min_conf=0.4)
    assert got[:4] == want and got[4] == int((probs[:, [0, 5, 11]] >= 0.4).sum())
