"""The out-of-fold guard, end to end through the CLI: what a model trained on is recorded in
its checkpoint, and a pseudo-label or prediction run that would let it label cells of those
images is refused (the case that matters: `hpa fold` run again after training)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hpacli.store import open_store
from hpacli.store.folds import read_image_folds
from tests.cli_checks import ok, refused


@pytest.fixture
def trained(tmp_path, tiny_dataset, cli):
    """12 train + 3 test images, segmented, 2 image folds, a tiny image model per fold."""
    s = tmp_path / "hpa.zarr"
    ok(cli(["ingest", tiny_dataset, "--store", s, "-q"]))
    ok(cli(["segment", "--store", s, "-q"]))
    ok(cli(["fold", "--store", s, "-k", "2", "--seed", "0", "--ignore-duplicates"]))
    for f in (0, 1):
        ok(cli(["train-image", "--store", s, "--fold", f, "--out", tmp_path / "runs" / f"fold{f}",
                 "--backbone", "test_resnet", "--img-size", "32", "--negatives", "all", "--epochs", "1",
                 "--batch-size", "2", "--workers", "0", "--device", "cpu", "-q"]))
    return s, tmp_path / "runs"


def test_checkpoints_record_their_training_images_and_load_weights_only(trained):
    s, runs = trained
    st = open_store(s, "r")
    ids = st.images.ids()
    folds = read_image_folds(st)
    for f in (0, 1):
        want = sorted(ids[(folds >= 0) & (folds != f)].tolist())
        for name in ("best.pt", "last.pt"):
            ck = torch.load(runs / f"fold{f}" / name, weights_only=True)  # what we write needs no unsafe load
            rec = ck["train_config"]["extra"]["trained_on"]
            assert rec["images"] == want and rec["n_images"] == len(want) and rec["fold"] == f
            assert rec["folds"]["name"] == "default" and len(rec["folds"]["sha256"]) == 64
            assert not set(rec["images"]) & set(ids[folds == f].tolist())  # never its own fold


def test_refold_after_training_makes_pseudolabel_refuse(trained, cli):
    s, runs = trained
    models = str(runs / "fold*" / "best.pt")
    common = ["--store", s, "--models", models, "--device", "cpu", "--workers", "0", "-q"]
    ok(cli(["pseudolabel", *common, "--run", "before"]))  # the folds the models were trained with: fine
    st = open_store(s, "r")
    old = read_image_folds(st)
    ok(cli(["fold", "--store", s, "-k", "2", "--seed", "3", "--ignore-duplicates"]))
    new = read_image_folds(open_store(s, "r"))
    moved = (old >= 0) & (new >= 0) & (old != new)
    assert moved.any()  # the new folds hand some of model 0's training images to fold 0
    text = refused(cli(["pseudolabel", *common, "--run", "after"]), "leak:", "best.pt", "trained on",
                    "changed after it was trained", "hpa train-image")
    # the images named are ones that moved into the fold of a model that trained on them
    ids = st.images.ids()
    named = [i for i in ids[moved].tolist() if i in text]
    assert named
    st = open_store(s, "r")
    assert st.has("labels/before") and not st.has("labels/after")  # nothing stored for the refused run
    # the same folds again (same seed and options): accepted again
    ok(cli(["fold", "--store", s, "-k", "2", "--seed", "0", "--ignore-duplicates"]))
    assert np.array_equal(read_image_folds(open_store(s, "r")), old)
    ok(cli(["pseudolabel", *common, "--run", "again"]))


def test_predict_refuses_images_a_model_trained_on_but_predicts_test_images(trained, cli):
    s, runs = trained
    model = runs / "fold0" / "best.pt"
    common = ["--store", s, "--image-model", model, "--device", "cpu", "--workers", "0", "-q"]
    ok(cli(["predict", *common, "--name", "test"]))  # test images: never trained on
    refused(cli(["predict", *common, "--split", "train", "--name", "train"]), "leak:", str(model), "--split test")
    refused(cli(["predict", *common, "--split", "all", "--name", "all"]), "leak:", "would predict")
    st = open_store(s, "r")
    assert st.has("predictions/test") and not st.has("predictions/all") and not st.has("predictions/train")


def test_cell_models_record_their_images_and_their_inits(trained, cli, tmp_path):
    s, runs = trained
    ok(cli(["pseudolabel", "--store", s, "--models", str(runs / "fold*" / "best.pt"), "--device", "cpu",
             "--workers", "0", "--run", "oof", "-q"]))
    out = tmp_path / "cell0"
    ok(cli(["train-cell", "--store", s, "--fold", "0", "--labels", "oof", "--init-from", runs / "fold0" / "best.pt",
             "--out", out, "--img-size", "32", "--batch-size", "2", "--accum", "1", "--epochs", "1",
             "--workers", "0", "--device", "cpu", "-q"]))
    st = open_store(s, "r")
    ids, folds = st.images.ids(), read_image_folds(st)
    rec = torch.load(out / "best.pt", weights_only=True)["train_config"]["extra"]["trained_on"]
    init = torch.load(runs / "fold0" / "best.pt", weights_only=True)["train_config"]["extra"]["trained_on"]
    assert set(init["images"]) <= set(rec["images"]) and rec["inherited"] == [str(runs / "fold0" / "best.pt")]
    assert not set(rec["images"]) & set(ids[folds == 0].tolist()) and rec["fold"] == 0
    common = ["--store", s, "--models", out / "best.pt", "--device", "cpu", "--workers", "0", "-q"]
    ok(cli(["predict", *common, "--name", "cells"]))
    refused(cli(["predict", *common, "--split", "train", "--name", "leaky"]), "leak:", "cell0")
