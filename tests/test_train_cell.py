"""hpa train-cell: targets from pseudo-labels + selection, fold rows, the crop dataset,
validation metrics (bins, cell mAP through the evaluate code), exact resume, CLI."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from hpacli.classes import N_CLASSES
from hpacli.data import crops as C
from hpacli.data import views as V
from hpacli.errors import EXIT_USAGE, HpaError, StoreError
from hpacli.models import checkpoint as MC
from hpacli.store import pseudolabels as PL
from hpacli.train import cell as TC
from hpacli.train import cell_data as TD
from hpacli.train import cell_targets as TT
from hpacli.train import metrics as TM
from tests.test_crops import make_cell_store

PL_BLOCK = 8
RUN = "pl"


# ----------------------------------------------------------------------------- fixtures
def write_pseudolabels(store, run: str, probs: np.ndarray, labelled: np.ndarray) -> None:
    """Fake `hpa pseudolabel` output written through the store module."""
    from hpacli.store.cells import CellTable
    from hpacli.store.work import BlockWork

    n = len(probs)
    attrs = {"cells_table_id": CellTable(store).table_id, "models": {}, "views": ["id"], "img_size": {}}
    key = PL.prepare_run(store, run, n, 8, attrs, block=PL_BLOCK)
    work = BlockWork(store, key, n, PL_BLOCK)
    model = np.where(labelled, 0, -1).astype(np.int8)
    for b in work.todo():
        PL.write_block(store, run, b.start, probs[b.start : b.stop], np.zeros((len(b), 8)), model[b.start : b.stop])
        work.mark_done(b)


def write_denoised(store, run: str, y_opt: np.ndarray, rows: np.ndarray) -> None:
    """Fake `hpa denoise` output for ``rows`` through the store module."""
    from hpacli.store import denoise as D
    from hpacli.store.cells import CellTable

    n = CellTable(store).n
    D.prepare(store, run, n, 2, {"cells_table_id": CellTable(store).table_id, "denoiser": "fake", "params": {},
                                 "cell_folds": "default"})
    yo = np.concatenate([y_opt, 1 - y_opt.max(axis=1, keepdims=True)], axis=1)[rows]
    D.write_fold(store, run, rows, 0, yo, yo, np.zeros((len(rows), 2), np.int64))


def write_selection(store, name: str, rows, cls: int, accepted: bool = True) -> None:
    """A reviewed selection as `hpa select-mitotic --accept` leaves it."""
    from hpacli.store import denoise as D

    if not store.has(f"denoise/{RUN}/y_opt"):
        probs = PL.read_probs(store, RUN)
        write_denoised(store, RUN, np.nan_to_num(probs), np.flatnonzero(PL.labelled_mask(store, RUN)))
    D.write_selection(store, RUN, name, np.asarray(rows), np.zeros((len(rows), 3)),
                      {"class": int(cls), "accepted": accepted})


def cell_truth(store, labels: dict, seed: int = 0) -> dict:
    """Cell-level truth = the segmentation's cells, one or two classes each; stored in the store."""
    import pandas as pd

    from hpacli.io.masks import encode_mask
    from hpacli.store.truth import write_truth

    rng = np.random.default_rng(seed)
    df = store.images.df()
    rows, classes = [], {}
    for i in range(store.images.n):
        h, w = int(df["height"].iat[i]), int(df["width"].iat[i])
        full = C.resize_nearest(labels[f"i{i}"], (h, w))
        parts = []
        for cid in np.unique(full[full > 0]):
            cs = sorted(set(rng.choice([0, 2, 5], size=int(rng.integers(1, 3))).tolist()))
            classes[(i, int(cid))] = cs
            enc = encode_mask(full == cid)
            parts += [f"{c} 1 {enc}" for c in cs]
        rows.append({"ID": df["ID"].iat[i], "ImageWidth": w, "ImageHeight": h, "PredictionString": " ".join(parts)})
    write_truth(store, pd.DataFrame(rows))
    return classes


@pytest.fixture
def setup(tmp_path):
    """9 images of 64 px (folds 0,1,2 round robin, the last unused), hand-made cells,
    random soft pseudo-labels for the cells of fold images."""
    from hpacli.store.cells import CellTable
    from hpacli.store.folds import read_image_folds

    store, labels = make_cell_store(tmp_path, n_images=9)
    cells = CellTable(store)
    image_fold = read_image_folds(store)[cells.column("image")]
    rng = np.random.default_rng(1)
    probs = rng.random((cells.n, N_CLASSES)).astype(np.float32)
    labelled = image_fold >= 0
    write_pseudolabels(store, RUN, probs, labelled)
    return store, labels, probs, labelled, image_fold, tmp_path


# ----------------------------------------------------------------------------- targets
def test_combine_targets_sets_selected_classes_only():
    base = np.full((6, N_CLASSES), 0.25, dtype=np.float32)
    base[4] = np.nan  # not labelled
    has = np.array([1, 1, 1, 1, 0, 1], bool)
    has[5] = False  # labelled flag off although the row is finite
    out = TT.combine_targets(base, has, [1, 3, 4], 11)
    assert out.n_selected == 2 and out.n_selected_skipped == 1
    assert out.y[1, 11] == 1.0 and out.y[3, 11] == 1.0
    assert np.isnan(out.y[4]).all() and np.isnan(out.y[5]).all()  # no target: stays out
    assert np.array_equal(out.has, [1, 1, 1, 1, 0, 0])
    untouched = np.ones_like(out.y, bool)
    untouched[[1, 3], 11] = False
    untouched[[4, 5]] = False
    assert np.all(out.y[untouched] == 0.25)
    # 20 columns (Y_opt with the "nothing" column): the first 19 are taken
    wide = TT.combine_targets(np.full((2, 20), 0.5, np.float32), np.ones(2, bool))
    assert wide.y.shape == (2, N_CLASSES)
    with pytest.raises(StoreError, match="classes outside"):
        TT.combine_targets(base, has, [1], 19)
    with pytest.raises(StoreError, match="rows outside"):
        TT.combine_targets(base, has, [6], 11)
    with pytest.raises(StoreError, match="probabilities"):
        TT.combine_targets(base * 8, has)


def test_targets_from_store_pseudolabels_and_selection(setup):
    store, _, probs, labelled, image_fold, _ = setup
    tg = TT.assemble_targets(store, RUN)
    assert np.array_equal(tg.has, labelled)
    np.testing.assert_array_equal(tg.y[labelled], probs[labelled])
    sel_rows = [int(np.flatnonzero(labelled)[0]), int(np.flatnonzero(labelled)[3]), int(np.flatnonzero(~labelled)[0])]
    write_selection(store, "mitotic", sel_rows, 11)
    tg = TT.assemble_targets(store, RUN, selection="mitotic")
    assert tg.n_selected == 2 and tg.n_selected_skipped == 1
    expect = probs.copy()
    expect[sel_rows[:2], 11] = 1.0
    np.testing.assert_array_equal(tg.y[labelled], expect[labelled])
    # train / validation cells follow their image's fold; unlabelled cells are in neither
    train, val = TT.cell_fold_rows(store, 0, tg.has)
    assert set(image_fold[train]) == {1, 2} and set(image_fold[val]) == {0}
    assert len(train) + len(val) == labelled.sum()
    with pytest.raises(HpaError, match="out of range"):
        TT.cell_fold_rows(store, 3, tg.has)
    with pytest.raises(StoreError, match="no pseudo-labels 'nope'"):
        TT.assemble_targets(store, "nope")
    with pytest.raises(StoreError, match="no selection"):
        TT.assemble_targets(store, RUN, selection="other")
    write_selection(store, "mitotic", sel_rows, 11, accepted=False)
    with pytest.raises(HpaError, match="not accepted"):
        TT.assemble_targets(store, RUN, selection="mitotic")


def test_denoised_targets_are_y_opt(setup):
    store, _, probs, labelled, _, _ = setup
    with pytest.raises(StoreError, match="hpa denoise"):
        TT.assemble_targets(store, RUN, targets="denoised")
    rows = np.flatnonzero(labelled)[:-2]  # two labelled cells were not de-noised
    y_opt = np.clip(probs * 0.5 + 0.1, 0, 1)
    write_denoised(store, RUN, y_opt, rows)
    tg = TT.assemble_targets(store, RUN, targets="denoised")
    assert np.array_equal(np.flatnonzero(tg.has), rows)
    np.testing.assert_allclose(tg.y[rows], y_opt[rows])
    with pytest.raises(HpaError, match="soft, denoised"):
        TT.assemble_targets(store, RUN, targets="hard")


# ----------------------------------------------------------------------------- dataset
def test_dataset_item_is_the_masked_tiled_padded_crop(setup):
    store, labels, probs, labelled, _, _ = setup
    from hpacli.store.cells import CellTable

    cells = CellTable(store)
    rows = np.flatnonzero(labelled)
    ds = TD.CellCropDataset(store.path, rows, probs[rows], 64, fit="pad", augment=False)
    bbox, cid, image = cells.column("bbox"), cells.column("cell_id"), cells.column("image")
    checked_alien = False
    for k in range(len(rows)):
        r = rows[k]
        x, y = ds[(k, None)]
        assert x.dtype == torch.uint8 and x.shape == (4, 64, 64)
        np.testing.assert_array_equal(y.numpy(), probs[r])
        # by hand: crop the original-size image, zero alien pixels, tile, pad (crops < 64: no resize)
        img = int(image[r])
        pix = store.images.read_image(img)
        lab = C.resize_nearest(labels[f"i{img}"], (64, 64))
        r0, c0, r1, c1 = bbox[r]
        crop = pix[:, r0:r1, c0:c1].copy()
        sub = lab[r0:r1, c0:c1]
        alien = (sub != 0) & (sub != cid[r])
        crop[:, alien] = 0
        h, w = crop.shape[1:]
        if h < w / 2:
            crop = np.concatenate([crop, crop], 1)
        elif w < h / 2:
            crop = np.concatenate([crop, crop], 2)
        H, W = crop.shape[1:]
        want = np.zeros((4, 64, 64), np.uint8)
        want[:, (64 - H) // 2 : (64 - H) // 2 + H, (64 - W) // 2 : (64 - W) // 2 + W] = crop
        np.testing.assert_array_equal(x.numpy(), want)
        checked_alien |= bool(alien.any())
    assert checked_alien  # the hand-made cells' boxes overlap their neighbours
    # training items: one of the 8 flips of the plain item, chosen by the item's seed alone
    aug = TD.CellCropDataset(store.path, rows, probs[rows], 64, fit="pad", augment=True)
    plain = ds[(2, None)][0]
    flips = {V.dihedral(plain, d).numpy().tobytes() for d in range(8)}
    got = {aug[(2, s)][0].numpy().tobytes() for s in range(40)}
    assert got <= flips and len(got) > 2
    assert torch.equal(aug[(2, 7)][0], aug[(2, 7)][0])
    # resize mode: 32 px output, bounded image LRU
    small = TD.CellCropDataset(store.path, rows, probs[rows], 32, augment=False, cache_images=1, cache_mb=0)
    assert small[(0, None)][0].shape == (4, 32, 32)
    for k in range(len(rows)):
        small[(k, None)]
    assert len(small._images) == 1 and small.loads == len(np.unique(image[rows]))
    # with room in the byte budget every image stays: a shuffled order loads each once
    roomy = TD.CellCropDataset(store.path, rows, probs[rows], 32, augment=False, cache_images=1)
    for k in np.random.default_rng(0).permutation(np.repeat(np.arange(len(rows)), 3)):
        roomy[(int(k), None)]
    assert roomy.loads == len(np.unique(image[rows])) == len(roomy._images) > 1


def test_windowed_order_keeps_windows_of_images():
    images = np.repeat(np.arange(10), [3, 1, 4, 2, 5, 3, 2, 1, 4, 2])
    order = TD.windowed_order(images, 3, np.random.default_rng(0))
    assert sorted(order.tolist()) == list(range(len(images)))
    seen = images[order]
    # consecutive windows hold 3 images each (the last fewer)
    firsts = []
    for img in seen:
        if img not in firsts:
            firsts.append(img)
    windows = [set(firsts[i : i + 3]) for i in range(0, 10, 3)]
    pos = 0
    for win in windows:
        n = int(np.isin(images, list(win)).sum())
        assert set(seen[pos : pos + n]) == win
        pos += n


# ----------------------------------------------------------------------------- metrics
def test_bin_accuracy_counts_predictions_in_the_labels_bin():
    t = np.array([[0.0, 0.5, 1.0, 0.32]])
    assert TM.bin_accuracy(np.array([[0.049, 0.52, 0.96, 0.34]]), t) == 1.0
    assert TM.bin_accuracy(np.array([[0.05, 0.49, 0.94, 0.31]]), t) == 0.25  # neighbouring bins miss
    assert TM.bin_accuracy(np.array([[0.0, 0.5, 1.0, 0.30]]), t) == 1.0


def test_cell_map_uses_the_evaluate_code(setup):
    store, labels, probs, labelled, image_fold, _ = setup
    truth = cell_truth(store, labels)
    from hpacli.store.cells import CellTable

    cells = CellTable(store)
    tg = TT.assemble_targets(store, RUN)
    _, val = TT.cell_fold_rows(store, 0, tg.has)
    scorer = TM.CellMapScorer(store, val)
    assert scorer.available
    image, cid = cells.column("image"), cells.column("cell_id")
    perfect = np.zeros((len(val), N_CLASSES), np.float32)
    for k, r in enumerate(val):
        perfect[k, truth[(int(image[r]), int(cid[r]))]] = 0.9
    assert scorer(perfect) == pytest.approx(1.0)
    wrong = 0.9 - perfect  # every true class scored below every false one
    assert scorer(wrong) < 0.9
    # no truth: no cell_map
    metrics = TM.cell_metrics("soft-focal", None)(np.zeros((3, N_CLASSES), np.float32), np.full((3, N_CLASSES), 0.5, np.float32))
    assert set(metrics) == {"val_loss", "bin_acc", "map"} and metrics["bin_acc"] == 1.0


# ----------------------------------------------------------------------------- training
def save_image_model(path, seed: int = 0):
    from hpacli.models.checkpoint import save_checkpoint
    from hpacli.models.timm_wrap import TimmClassifier

    torch.manual_seed(seed)
    model = TimmClassifier("test_resnet")
    save_checkpoint(path, {"model_config": model.config, "model": model.state_dict(),
                           "train_config": {"extra": {"img_size": 32}}})
    return path


class Boom(Exception):
    pass


def _train(store, tmp, out, **kw):
    init = tmp / "image.pt"
    if not init.exists():
        save_image_model(init)
    args = dict(init_from=init, img_size=32, batch_size=4, accum=3, epochs=2, lr_mult=300.0, workers=0, device="cpu",
                tensorboard=False, save_every=1, save_minutes=0, seed=3)
    args.update(kw)
    return TC.run_train_cell(store, 0, RUN, tmp / out, **args)


def _weights(path):
    return torch.load(path, weights_only=True)["model"]


@pytest.mark.parametrize("kill_after,image_window,workers", [(4, 0, 0), (7, 2, 1)])
def test_killed_and_resumed_equals_uninterrupted(setup, kill_after, image_window, workers):
    store, _, _, _, _, tmp = setup
    kw = {"image_window": image_window, "workers": workers}
    ref = _train(store, tmp, "ref", **kw)
    assert ref["step"] > 2 and [h["epoch"] for h in ref["history"]] == [1, 2]
    seen = {"n": 0}

    def bomb(trainer):
        seen["n"] += 1
        if seen["n"] == kill_after:
            raise Boom()

    with pytest.raises(Boom):
        _train(store, tmp, "run", callbacks=[bomb], **kw)
    res = _train(store, tmp, "run", resume=True, **kw)
    assert res["step"] == ref["step"]
    a, b = _weights(tmp / "ref" / "last.pt"), _weights(tmp / "run" / "last.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows = list(csv.DictReader(open(tmp / "run" / "log.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert all(r["bin_acc"] and r["val_loss"] for r in rows)


def test_val_cells_is_a_fixed_sample_of_the_validation_cells(setup):
    store, _, _, _, _, tmp = setup
    full = _train(store, tmp, "all", epochs=1)
    part = _train(store, tmp, "part", epochs=1, val_cells=3)
    again = _train(store, tmp, "again", epochs=1, val_cells=3)
    assert full.n_val > 3 and part.n_val == again.n_val == 3
    assert part["history"][0]["bin_acc"] == again["history"][0]["bin_acc"]  # the same sample each run
    extra = torch.load(tmp / "part" / "last.pt", weights_only=True)["train_config"]["extra"]
    assert extra["val_cells"] == 3 and extra["n_val"] == 3


def test_cli_train_cell_smoke(setup, cli):
    store, labels, _, labelled, _, tmp = setup
    cell_truth(store, labels)
    write_selection(store, "mitotic", [int(np.flatnonzero(labelled)[1])], 11)
    init = save_image_model(tmp / "image.pt")
    out = tmp / "runs" / "cell" / "fold0"
    args = ["train-cell", "--store", store.path, "--fold", "0", "--labels", RUN, "--selection", "mitotic",
            "--init-from", init, "--out", out, "--img-size", "32", "--batch-size", "4", "--accum", "2",
            "--epochs", "1", "--workers", "1", "--device", "cpu", "--eval-at-start", "--quiet"]
    res = cli(args)
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert [r["epoch"] for r in rows] == ["0", "1"]
    # the store holds cell truth, but the default run never reads it: no cell_map, best.pt by bin_acc
    assert all(r["bin_acc"] and r["val_loss"] for r in rows) and "cell_map" not in rows[0]
    from hpacli.models.checkpoint import load_model

    model, config = load_model(out / "best.pt")
    assert config["backbone"] == "test_resnet"
    assert MC.read_cell_input(out / "best.pt") == TC.cell_input_config(32, None, "resize")
    ck = torch.load(out / "last.pt", weights_only=True)
    extra = ck["train_config"]["extra"]
    assert extra["selection"] == "mitotic" and extra["n_selected"] == 1 and extra["stage"] == "train-cell"
    assert ck["train_config"]["loss"] == "soft-focal-symmetric-lovasz-hardlog"
    assert ck["train_config"]["best_metric"] == "bin_acc" and extra["best_metric"] == "bin_acc"
    assert torch.load(out / "best.pt", weights_only=True)["best"]["metric"] == "bin_acc"
    with torch.no_grad():
        assert model(torch.rand(2, 4, 32, 32)).shape == (2, N_CLASSES)
    # continue for one more epoch
    res = cli([*args[:-1], "--epochs", "2", "--resume", "--quiet"])
    assert res.exit_code == 0, res.output
    assert [r["epoch"] for r in csv.DictReader(open(out / "log.csv"))] == ["0", "1", "2"]
    # user errors: one line, EXIT_USAGE
    res = cli(args)
    assert res.exit_code == EXIT_USAGE and "--resume" in res.output
    res = cli([*args[:6], "missing", *args[7:12], tmp / "x", *args[13:]])
    assert res.exit_code == EXIT_USAGE and "no pseudo-labels 'missing'" in res.output
    res = cli([*args, "--targets", "hard"])
    assert res.exit_code == EXIT_USAGE and "--targets" in res.output
    res = cli([*args, "--best-metric", "auto"])
    assert res.exit_code == EXIT_USAGE and "--best-metric must be one of bin_acc" in res.output
    res = cli([*args, "--mask-keep", "11"])
    assert res.exit_code == EXIT_USAGE and "needs --mask-labels" in res.output
    res = cli([*args, "--mask-labels", "--mask-keep", "11,40"])
    assert res.exit_code == EXIT_USAGE and "--mask-keep 11,40" in res.output
    res = cli([*args, "--rescale-in-image"])
    assert res.exit_code == EXIT_USAGE and "needs --mask-labels" in res.output
    with pytest.raises(HpaError, match="not a cell-level model"):
        MC.read_cell_input(init)


def test_image_labels_mask_targets_before_the_selection():
    from hpacli.train.cell_targets import combine_targets

    base = np.full((3, 19), 0.5, dtype=np.float32)
    has = np.array([True, True, False])
    labels = np.zeros((3, 19), dtype=np.uint8)
    labels[0, [0, 5]] = 1
    labels[1, 16] = 1
    out = combine_targets(base, has, sel_rows=np.array([0]), sel_classes=np.array([11]), image_labels=labels)
    assert np.flatnonzero(out.y[0] > 0).tolist() == [0, 5, 11]  # masked, then the selection adds 11
    assert out.y[0, 11] == 1.0 and out.y[0, 0] == 0.5
    assert np.flatnonzero(out.y[1] > 0).tolist() == [16]
    assert np.isnan(out.y[2]).all()


def test_mask_keep_leaves_the_named_classes_unmasked():
    from hpacli.errors import HpaError
    from hpacli.train.cell_targets import combine_targets

    base = np.linspace(0.1, 0.9, 2 * 19, dtype=np.float32).reshape(2, 19)
    labels = np.zeros((2, 19), dtype=np.uint8)
    labels[:, 3] = 1
    out = combine_targets(base, np.ones(2, bool), image_labels=labels, mask_keep=(11,))
    assert np.flatnonzero(out.y[0] > 0).tolist() == [3, 11]  # the label's class and the kept one
    assert out.y[1, 11] == base[1, 11] and out.y[1, 3] == base[1, 3]
    assert (labels == np.eye(19, dtype=np.uint8)[[3, 3]]).all()  # the caller's labels are not changed
    with pytest.raises(HpaError, match="mask-keep"):
        combine_targets(base, np.ones(2, bool), image_labels=labels, mask_keep=(19,))


def test_rescale_in_image_divides_each_labelled_class_by_its_image_maximum():
    from hpacli.train.cell_targets import combine_targets

    # two images: cells 0-2 in image 0 (labelled 3 and 11), cells 3-5 in image 1 (labelled 3 and 7)
    base = np.zeros((6, 19), dtype=np.float32)
    base[:, 3] = [0.1, 0.4, 0.2, 0.05, 0.25, 0.5]
    base[:, 7] = [0.3, 0.3, 0.3, 0.0, 0.0, 0.0]  # image 1 labelled 7 but every cell at 0: stays 0
    base[:, 11] = [0.2, 0.1, 0.05, 0.3, 0.6, 0.1]  # kept class: not rescaled, not masked
    base[:, 5] = 0.6  # labelled nowhere: masked to 0
    has = np.array([1, 1, 1, 1, 1, 0], bool)  # cell 5 has no pseudo-label: not counted in its image's maximum
    image = np.array([0, 0, 0, 1, 1, 1])
    labels = np.zeros((6, 19), dtype=np.uint8)
    labels[:3, [3, 11]] = 1
    labels[3:, [3, 7]] = 1
    out = combine_targets(base, has, sel_rows=[1], sel_classes=[11], image_labels=labels, mask_keep=(11,),
                          image=image)
    np.testing.assert_allclose(out.y[:3, 3], [0.25, 1.0, 0.5])
    np.testing.assert_allclose(out.y[3:5, 3], [0.2, 1.0])  # 0.5 of cell 5 is not a target
    assert np.all(out.y[3:5, 7] == 0) and np.all(out.y[:3, 7] == 0)  # masked in image 0, zero in image 1
    np.testing.assert_allclose(out.y[[0, 2, 3, 4], 11], base[[0, 2, 3, 4], 11])  # kept class as it was
    assert out.y[1, 11] == 1.0  # the selection still sets 1
    assert np.all(out.y[:5, 5] == 0) and np.isnan(out.y[5]).all()
    # without image: the masked targets of before
    plain = combine_targets(base, has, image_labels=labels, mask_keep=(11,))
    np.testing.assert_allclose(plain.y[:3, 3], base[:3, 3])


def test_rescale_in_image_through_the_store_needs_mask_labels(setup):
    from hpacli.store.cells import CellTable

    store = setup[0]
    with pytest.raises(HpaError, match="needs --mask-labels"):
        TT.assemble_targets(store, RUN, rescale=True)
    out = TT.assemble_targets(store, RUN, mask_labels=True, rescale=True)
    assert "rescaled" in out.source
    image = CellTable(store).column("image").astype(np.int64)
    lab = store.images.labels()[image].astype(bool)
    y = out.y[out.has]
    # every (labelled image, labelled class) group that has a target reaches exactly 1
    for i in np.unique(image[out.has]):
        rows = out.has & (image == i)
        for c in np.flatnonzero(lab[rows][0]):
            assert out.y[rows, c].max() == pytest.approx(1.0)
    assert np.all((y >= 0) & (y <= 1))


def test_select_outlier_known_positives_from_the_store(setup, tmp_path):
    """`select-mitotic --known outliers` picks, in each image labelled with the class, the
    cell whose embedding stands apart from the rest of its image (planted here)."""
    from hpacli.label.denoise import run_select
    from hpacli.store.cells import CellTable
    from hpacli.store.work import BlockWork

    store, _, probs, labelled, _, _ = setup
    image = CellTable(store).column("image").astype(np.int64)
    img_labels = store.images.labels()
    counts = img_labels[np.unique(image[labelled])].sum(axis=0)
    cls = int(np.argmax(np.where(np.arange(N_CLASSES) == N_CLASSES - 1, 0, counts)))
    assert counts[cls] >= 2
    rng = np.random.default_rng(4)
    rare = rng.normal(size=8) * 3
    emb = np.zeros((len(image), 8))
    planted = []
    for i in np.unique(image):
        rows = np.flatnonzero(image == i)
        emb[rows] = rng.normal(size=8) * 3 + rng.normal(size=(len(rows), 8)) * 0.3
        if img_labels[i, cls] and labelled[rows].all() and len(rows) > 2:
            emb[rows[1]] = rare + rng.normal(size=8) * 0.3
            planted.append(rows[1])
    key = PL.prepare_run(store, "emb", len(image), 8, {"cells_table_id": CellTable(store).table_id, "models": {},
                                                       "views": ["id"], "img_size": {}}, block=PL_BLOCK)
    work = BlockWork(store, key, len(image), PL_BLOCK)
    model = np.where(labelled, 0, -1).astype(np.int8)
    for b in work.todo():
        PL.write_block(store, "emb", b.start, probs[b.start:b.stop], emb[b.start:b.stop], model[b.start:b.stop])
        work.mark_done(b)
    write_denoised(store, "emb", probs, np.flatnonzero(labelled))
    res = run_select(store, "emb", cls, top=0, known="outliers", name="rare", out_dir=tmp_path / "sel")
    assert sorted(res.cells.tolist()) == sorted(planted) and res.counts["known"] == len(planted)
    assert "image outliers" in res.rule and (tmp_path / "sel" / "rare_emb.csv").exists()


def test_checkpoint_choice_reads_no_truth_unless_named(setup, monkeypatch):
    """The default best.pt rule works as on real data: a store without truth trains, and with
    truth in the store nothing reads it until cell_map is asked for by name."""
    store, labels, _, _, _, tmp = setup
    res = _train(store, tmp, "plain", epochs=1)  # no truth in the store at all
    assert res["best_metric"] == "bin_acc" and not res["read_cell_truth"]
    cell_truth(store, labels)

    def no_truth(*a, **k):
        raise AssertionError("cell truth was read")

    import hpacli.evaluate.celltruth as CT
    import hpacli.store.truth as ST

    with monkeypatch.context() as m:
        for mod, name in ((ST, "truth_label_images"), (ST, "read_has"), (CT, "cell_truth")):
            m.setattr(mod, name, no_truth)
        res = _train(store, tmp, "default", epochs=1)
        assert res["best_metric"] == "bin_acc" and not res["read_cell_truth"]
        res = _train(store, tmp, "by-loss", epochs=1, best_metric="loss")
        assert res["best_metric"] == "val_loss" and torch.load(tmp / "by-loss" / "best.pt",
                                                               weights_only=True)["best"]["metric"] == "val_loss"
        with pytest.raises(AssertionError, match="cell truth was read"):
            _train(store, tmp, "named", epochs=1, best_metric="cell_map")
    res = _train(store, tmp, "named2", epochs=1, best_metric="cell_map")
    assert res["best_metric"] == "cell_map" and res["read_cell_truth"]
    assert "cell_map" in next(csv.DictReader(open(tmp / "named2" / "log.csv")))
    with pytest.raises(HpaError, match="best-metric must be one of"):
        _train(store, tmp, "bad", epochs=1, best_metric="auto")


def test_truth_targets_are_the_true_classes_of_matched_cells(setup):
    store, labels, _, labelled, _, _ = setup
    with pytest.raises(HpaError, match="needs cell-level truth"):
        TC.assemble_targets(store, RUN, targets="truth")
    classes = cell_truth(store, labels)
    tg = TC.assemble_targets(store, RUN, targets="truth")
    from hpacli.store.cells import CellTable

    cells = CellTable(store)
    image, cid = cells.column("image"), cells.column("cell_id")
    assert np.array_equal(tg.has, labelled)  # the truth's masks are the segmentation's: every cell matches
    for r in np.flatnonzero(tg.has):
        assert np.flatnonzero(tg.y[r]).tolist() == classes[(int(image[r]), int(cid[r]))]
    assert np.isnan(tg.y[~tg.has]).all()
    with pytest.raises(HpaError, match="neither --selection nor --mask-labels"):
        TC.run_train_cell(store, 0, RUN, store.path.parent / "x", targets="truth", mask_labels=True)
