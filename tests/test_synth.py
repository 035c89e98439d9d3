"""hpa synth: determinism, the Kaggle layout through hpa ingest, cell truth, weak labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from hpacli.classes import MITOTIC_SPINDLE, N_CLASSES, parse_labels
from hpacli.cli.app import build_app
from hpacli.data.synth import SynthConfig, run_synth
from hpacli.errors import EXIT_USAGE, InputError, StoreError
from hpacli.io.masks import decode_mask
from hpacli.store import open_store
from hpacli.store.truth import TruthReader, read_truth, truth_label_images, write_truth

SMALL = {"n_images": 12, "size": 96, "test_images": 4, "seed": 3}


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "ds"
    run_synth(out, SynthConfig(**SMALL))
    return out


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    """The default 200 + 50 images, at 64 px to stay fast."""
    out = tmp_path_factory.mktemp("synth200") / "ds"
    run_synth(out, SynthConfig(n_images=200, size=64, seed=0))
    return out


def _invoke(*args: str):
    return CliRunner().invoke(build_app(), [str(a) for a in args])


def test_deterministic_bytes(small, tmp_path):
    again = tmp_path / "again"
    run_synth(again, SynthConfig(**SMALL), workers=2)  # in parallel: the same bytes
    a, b = _files(small), _files(again)
    assert sorted(a) == sorted(b)
    assert all(a[k] == b[k] for k in a), [k for k in a if a[k] != b[k]][:5]
    other = tmp_path / "other"
    run_synth(other, SynthConfig(**{**SMALL, "seed": 4}))
    assert (other / "train.csv").read_bytes() != a["train.csv"]


def test_layout(small):
    train = pd.read_csv(small / "train.csv", dtype=str)
    assert list(train.columns) == ["ID", "Label"] and len(train) == 12
    sub = pd.read_csv(small / "sample_submission.csv", dtype=str, keep_default_na=False)
    assert list(sub.columns) == ["ID", "ImageWidth", "ImageHeight", "PredictionString"] and len(sub) == 4
    assert (sub["PredictionString"] == "").all() and (sub["ImageWidth"] == "96").all()
    dev = pd.read_csv(small / "dev_truth.csv", dtype=str, keep_default_na=False)
    test = pd.read_csv(small / "test_truth.csv", dtype=str, keep_default_na=False)
    assert len(dev) == 4 and list(dev.columns) == list(sub.columns) and (dev["PredictionString"] != "").all()
    assert test["ID"].tolist() == sub["ID"].tolist()
    assert not set(dev["ID"]) & (set(train["ID"]) | set(sub["ID"]))  # a split of its own
    for split, ids in (("train", train["ID"]), ("test", sub["ID"]), ("dev", dev["ID"])):
        for i in ids:
            for c in ("red", "green", "blue", "yellow"):
                with Image.open(small / split / f"{i}_{c}.png") as im:
                    assert im.mode == "L" and im.size == (96, 96)
            with Image.open(small / "truth_labels" / f"{i}_cells.png") as im:
                assert im.mode.startswith("I;16") or im.mode == "I"
    meta = json.loads((small / "synth.json").read_text())
    assert meta["options"] == {"n_images": 12, "size": 96, "test_images": 4, "dev_images": 4, "bits": 8,
                               "seed": 3, "noise": 0.05, "variability": 0.3}
    assert "mitotic_rate" in meta["rules"]
    with Image.open(small / "preview.png") as im:
        assert im.mode == "RGB" and im.size[0] >= 512


def test_truth_matches_label_images(small):
    cells = pd.read_csv(small / "cells.csv", dtype={"labels": str})
    for split in ("train", "test"):
        truth = pd.read_csv(small / f"{split}_truth.csv", dtype=str, keep_default_na=False)
        assert list(truth.columns) == ["ID", "ImageWidth", "ImageHeight", "PredictionString"]
        for image_id, text in zip(truth["ID"], truth["PredictionString"]):
            lab = np.asarray(Image.open(small / "truth_labels" / f"{image_id}_cells.png")).astype(np.int64)
            nuc = np.asarray(Image.open(small / "truth_labels" / f"{image_id}_nuclei.png")).astype(np.int64)
            assert lab.max() >= 3
            assert np.all((nuc == 0) | (nuc == lab))  # a nucleus lies in its cell and carries its id
            with_nucleus = len(set(np.unique(nuc)) - {0}) / lab.max()
            assert with_nucleus > 0.75  # only border cells may lose their nucleus
            parts = text.split()
            triples = list(zip(parts[0::3], parts[1::3], parts[2::3]))
            assert all(conf == "1" for _, conf, _ in triples)
            got: dict[str, set[int]] = {}
            for label, _, mask in triples:
                got.setdefault(mask, set()).add(int(label))
            expect = cells[cells["ID"] == image_id]
            assert len(got) == len(expect) == lab.max()
            for (mask, classes), (_, row) in zip(got.items(), expect.iterrows()):
                assert np.array_equal(decode_mask(mask, 96, 96), lab == row["cell_id"])
                assert classes == set(parse_labels(row["labels"]))
                assert 1 <= len(classes) <= 3


def test_ingest_reads_layout_and_truth(small, tmp_path):
    store_path = tmp_path / "s.zarr"
    res = _invoke("ingest", small, "--store", store_path, "--quiet")
    assert res.exit_code == 0, res.output
    st = open_store(store_path)
    df = st.images.df()
    train = pd.read_csv(small / "train.csv", dtype=str)
    assert len(df) == 20 and (df["split"] == "train").sum() == 12
    assert (df["split"] == "dev").sum() == 4 and (df["split"] == "test").sum() == 4
    labels = st.images.labels()
    for i, (image_id, text) in enumerate(zip(train["ID"], train["Label"])):
        assert df["ID"].iat[i] == image_id
        assert np.flatnonzero(labels[i]).tolist() == parse_labels(text)
    truth = read_truth(st)
    assert len(truth) == 12  # training images only: the scored splits' truth stays in its files
    files = pd.read_csv(small / "train_truth.csv", dtype=str, keep_default_na=False)
    assert truth["PredictionString"].tolist() == files["PredictionString"].tolist()
    cells = pd.read_csv(small / "cells.csv", dtype={"labels": str})
    for i in (0, 11):
        lab, classes = truth_label_images(st, i)
        ref = np.asarray(Image.open(small / "truth_labels" / f"{df['ID'].iat[i]}_cells.png")).astype(np.int32)
        assert np.array_equal(lab, ref)
        rows = cells[cells["ID"] == df["ID"].iat[i]]
        assert classes == {int(k): set(parse_labels(v)) for k, v in zip(rows["cell_id"], rows["labels"])}
    # one reader for many images decodes the same; images without truth are refused
    reader = TruthReader(st)
    for i in range(12):
        lab, classes = reader.label_images(i)
        ref_lab, ref_classes = truth_label_images(st, i)
        assert np.array_equal(lab, ref_lab) and classes == ref_classes
    for bad, msg in ((12, "has no cell-level truth"), (20, "outside 0..19")):  # a dev image; past the table
        with pytest.raises(StoreError, match=msg):
            reader.label_images(bad)
    # re-running ingest adds nothing and keeps the truth
    assert _invoke("ingest", small, "--store", store_path, "--quiet").exit_code == 0
    assert read_truth(open_store(store_path))["PredictionString"].tolist() == truth["PredictionString"].tolist()


def test_write_truth_ignores_unknown_and_checks_size(small, tmp_path):
    store_path = tmp_path / "s.zarr"
    assert _invoke("ingest", small, "--store", store_path, "--quiet", "--no-test").exit_code == 0
    st = open_store(store_path, "a")
    assert len(read_truth(st)) == 12  # the test images' truth rows are ignored
    one = pd.read_csv(small / "train_truth.csv", dtype=str, keep_default_na=False).iloc[:1].copy()
    extra = one.assign(ID="not-in-store")
    assert write_truth(st, pd.concat([one, extra])) == 1
    with pytest.raises(InputError, match="size 97x96"):
        write_truth(st, one.assign(ImageWidth="97"))
    with pytest.raises(InputError, match="triples"):
        write_truth(st, one.assign(PredictionString="0 1"))


def test_every_class_and_weak_spindle(big):
    cells = pd.read_csv(big / "cells.csv", dtype={"labels": str})
    per_class = np.zeros(N_CLASSES, int)
    for text in cells["labels"]:
        per_class[parse_labels(text)] += 1
    assert (per_class > 0).all(), per_class
    train = pd.read_csv(big / "train.csv", dtype=str)
    labelled = np.zeros(N_CLASSES, int)
    for text in train["Label"]:
        labelled[parse_labels(text)] += 1
    assert (labelled > 0).all(), labelled
    assert labelled.max() > 5 * labelled.min()  # unbalanced
    # mitotic spindle: a few % of the cells, mostly missing from the image labels
    spindle_cells = cells["labels"].map(lambda t: MITOTIC_SPINDLE in parse_labels(t))
    assert 0.005 < spindle_cells.mean() < 0.06
    assert cells.loc[spindle_cells, "mitotic"].all()
    images = pd.read_csv(big / "images.csv", dtype={"Label": str, "TrueLabel": str})
    train_imgs = images[images["split"] == "train"]
    with_spindle = train_imgs[train_imgs["n_spindle"] > 0]
    dropped = with_spindle["Label"].map(lambda t: MITOTIC_SPINDLE not in parse_labels(t))
    assert len(with_spindle) >= 10 and dropped.mean() > 0.7
    # weak labels differ from the truth in both directions, but mostly agree
    true = train_imgs["TrueLabel"].map(lambda t: set(parse_labels(t)) - {18})
    weak = train_imgs["Label"].map(lambda t: set(parse_labels(t)) - {18})
    missed = sum(len(t - w) for t, w in zip(true, weak))
    extra = sum(len(w - t) for t, w in zip(true, weak))
    pairs = sum(len(t) for t in true)
    assert missed > 0 and extra > 0 and missed + extra < 0.5 * pairs
    # samples: every image of a sample has the same label, samples have at most 6 images
    assert (train_imgs.groupby("sample")["Label"].nunique() == 1).all()
    assert train_imgs.groupby("sample").size().max() <= 6
    # mixed images hold cells with different patterns
    mixed = train_imgs[train_imgs["mixed"]]
    assert len(mixed) > 20
    n_kinds = [cells[cells["ID"] == i]["labels"].nunique() for i in mixed["ID"]]
    assert np.mean(np.array(n_kinds) > 1) > 0.8


def test_16bit_through_ingest(tmp_path):
    out = tmp_path / "ds16"
    res = _invoke("synth", out, "--n-images", 3, "--size", 64, "--test-images", 1, "--bits", 16, "--quiet")
    assert res.exit_code == 0, res.output
    with Image.open(next((out / "train").glob("*_green.png"))) as im:
        assert im.mode.startswith("I;16") or im.mode == "I"
        assert np.asarray(im).max() > 255
    store_path = tmp_path / "s.zarr"
    assert _invoke("ingest", out, "--store", store_path, "--quiet").exit_code == 0
    st = open_store(store_path)
    df = st.images.df()
    assert len(df) == 5 and (df["bit_depth"] == 16).all()  # 3 train, 1 dev, 1 test
    assert len(read_truth(st)) == 3
    px = st.images.read_image(0)
    assert px.dtype == np.uint8 and px.shape == (4, 64, 64) and px.max() > 50


def test_cli_refuses_bad_options_and_existing_output(small, tmp_path):
    res = _invoke("synth", tmp_path / "a", "--size", 32)
    assert res.exit_code == EXIT_USAGE and "--size must be between 64 and 4096" in res.output
    res = _invoke("synth", tmp_path / "b", "--bits", 12)
    assert res.exit_code == EXIT_USAGE and "--bits must be 8 or 16" in res.output
    out = tmp_path / "c"
    assert _invoke("synth", out, "-n", 2, "--size", 64, "--quiet").exit_code == 0
    (out / "mine.txt").write_text("keep")
    res = _invoke("synth", out, "-n", 2, "--size", 64, "--quiet")
    assert res.exit_code == EXIT_USAGE and "--force" in res.output
    res = _invoke("synth", out, "-n", 3, "--size", 64, "--force", "--quiet")
    assert res.exit_code == 0, res.output
    assert len(pd.read_csv(out / "train.csv")) == 3 and (out / "mine.txt").read_text() == "keep"
