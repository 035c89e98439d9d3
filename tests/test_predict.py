"""hpa predict: ensemble + TTA + blend values, negative rules, views, shards, resume,
carry-over after new images, exports, and the CLI from a folder of images to a checked submission."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from hpacli.classes import CLASS_NAMES, N_CLASSES, NEGATIVE
from hpacli.data import crops as C
from hpacli.data import views as T
from hpacli.errors import EXIT_USAGE, HpaError, StoreError
from hpacli.predict.export import TABLE_COLUMNS, export_table, prediction_frame, write_overlays
from hpacli.predict.stage import apply_negative, ingest_folder, run_predict
from hpacli.store import Shard
from hpacli.store import predictions as P
from hpacli.store.cells import CellTable
from tests.predict_store import make_truth_store, write_truth_segmentation

CROP = 32
BLOCK = 8


def cell_extra(size=CROP, work_size=None, fit="resize"):
    """What `hpa train-cell` records about its crops."""
    from hpacli.train.cell import STAGE, cell_input_config

    return {"stage": STAGE, "img_size": size, "cell_input": cell_input_config(size, work_size, fit)}


def save_model(path, extra, seed):
    from hpacli.models.checkpoint import save_checkpoint
    from hpacli.models.timm_wrap import TimmClassifier

    torch.manual_seed(seed)
    model = TimmClassifier("test_resnet").eval()
    save_checkpoint(path, {"model_config": model.config, "model": model.state_dict(), "train_config": {"extra": extra}})
    return path


@pytest.fixture
def setup(tmp_path):
    store, root = make_truth_store(tmp_path, n_train=1, n_test=3)
    for f in range(2):
        save_model(tmp_path / "runs" / f"fold{f}" / "best.pt", {**cell_extra(), "fold": f}, f)
    image = save_model(tmp_path / "image.pt", {"stage": "train-image", "img_size": CROP, "fold": 0}, 7)
    return store, root, str(tmp_path / "runs" / "fold*" / "best.pt"), str(image), tmp_path


def _predict(store, models, **kw):
    kw = {"device": "cpu", "workers": 0, "batch_size": 4, "block": BLOCK, **kw}
    return run_predict(store, models, **kw)


def _reference(store, model_paths, image_path, row, views, blend):
    """One cell by hand: its masked crop, each model and view on its own."""
    from hpacli.models.checkpoint import load_model

    cells = CellTable(store)
    img = int(cells.column("image")[row])
    pix = store.images.read_image(img)
    lab = C.read_cell_labels(store, img)
    cid = int(cells.column("cell_id")[row])
    crop = C.masked_crop(pix, lab, cid, cells.column("bbox")[row])
    x = torch.from_numpy(C.cell_model_input(crop, CROP))[None].float() / 255

    def views_mean(model, x):
        with torch.inference_mode():
            return torch.stack([torch.sigmoid(model(T.apply_view(x, v))) for v in views]).mean(0)[0].numpy()

    p_cell = np.mean([views_mean(load_model(p)[0], x) for p in model_paths], axis=0)
    pix32 = C._resize(pix, (CROP, CROP))
    lab32 = C.resize_nearest(lab, (CROP, CROP))
    box = C.scale_bbox(cells.column("bbox")[row], lab.shape, (CROP, CROP))
    xi = torch.from_numpy(C.tile_fill(C.masked_crop(pix32, lab32, cid, box), CROP))[None].float() / 255
    p_img = views_mean(load_model(image_path)[0], xi)
    return (1 - blend) * p_cell + blend * p_img, p_cell, p_img


def test_ensemble_views_and_blend_match_a_hand_computation(setup):
    store, _, models, image, tmp = setup
    views = ("id", "hflip", "rot90", "shift")
    s = _predict(store, models, image_model=image, blend=0.3, tta=views, negative="model", name="m")
    assert s.complete and s.cells_predicted == s.cells_selected > 0
    probs = P.read_probs(store, "m")
    cells = CellTable(store)
    test_img = np.flatnonzero(store.images.df()["split"] == "test")
    sel = np.isin(cells.column("image"), test_img)
    assert np.isfinite(probs[sel]).all() and np.isnan(probs[~sel]).all()  # only the test images' cells
    paths = sorted(str(p) for p in (tmp / "runs").glob("fold*/best.pt"))
    for row in np.flatnonzero(sel)[[0, -1]]:
        want, p_cell, p_img = _reference(store, paths, image, int(row), views, 0.3)
        np.testing.assert_allclose(probs[row], want, atol=1e-5)
        assert np.abs(p_cell - p_img).max() > 1e-3  # the blend is not trivial
    # image model alone (no cell models): its own probabilities
    _predict(store, [], image_model=image, tta=views, negative="model", name="img")
    row = int(np.flatnonzero(sel)[0])
    np.testing.assert_allclose(P.read_probs(store, "img")[row], _reference(store, paths, image, row, views, 1.0)[2],
                               atol=1e-5)
    # several splits at once: the dev and the test images' cells, no others
    _predict(store, [], image_model=image, tta=("id",), negative="model", name="scored", split="dev,test")
    split = store.images.df()["split"].to_numpy()[cells.column("image")]
    done = np.isfinite(P.read_probs(store, "scored")).all(axis=1)
    assert np.array_equal(done, np.isin(split, ["dev", "test"])) and (split == "dev").any()
    with pytest.raises(HpaError, match="--split must be one of"):
        _predict(store, [], image_model=image, name="bad", split="dev,nope")
    # several image models (a fold ensemble): their mean
    other = save_model(tmp / "image2.pt", {"stage": "train-image", "img_size": CROP, "fold": 1}, 8)
    _predict(store, [], image_model=f"{image},{other}", tta=views, negative="model", name="imgs")
    want = np.mean([_reference(store, paths, m, row, views, 1.0)[2] for m in (image, str(other))], axis=0)
    np.testing.assert_allclose(P.read_probs(store, "imgs")[row], want, atol=1e-5)
    assert np.abs(want - P.read_probs(store, "img")[row]).max() > 1e-3


def test_crop_geometry_comes_from_the_checkpoint(setup):
    from hpacli.models.checkpoint import load_model
    from hpacli.predict.stage import load_cell_model

    store, _, _, image, tmp = setup
    path = save_model(tmp / "pad.pt", cell_extra(CROP, 48, "pad"), 11)
    spec = load_cell_model(str(path))
    assert (spec.size, spec.work_size, spec.fit) == (CROP, 48, "pad")
    with pytest.raises(Exception, match="image-level model"):
        load_cell_model(image)
    bare = save_model(tmp / "bare.pt", {}, 12)
    with pytest.raises(Exception, match="--crop-size"):
        load_cell_model(str(bare))
    assert load_cell_model(str(bare), crop_size=24).size == 24
    _predict(store, [str(path)], tta=("id",), negative="model", name="pad")
    cells = CellTable(store)
    row = int(np.flatnonzero(np.isfinite(P.read_probs(store, "pad")).all(1))[0])
    img = int(cells.column("image")[row])
    pix = C._resize(store.images.read_image(img), (48, 48))
    lab = C.resize_nearest(C.read_cell_labels(store, img), (48, 48))
    box = C.scale_bbox(cells.column("bbox")[row], (64, 64), (48, 48))
    x = torch.from_numpy(C.cell_model_input(C.masked_crop(pix, lab, int(cells.column("cell_id")[row]), box), CROP,
                                            fit="pad"))[None].float() / 255
    with torch.inference_mode():
        want = torch.sigmoid(load_model(path)[0](x))[0].numpy()
    np.testing.assert_allclose(P.read_probs(store, "pad")[row], want, atol=1e-5)


def test_negative_rules(setup):
    p = np.array([[0.2, 0.9, 0.5] + [0.0] * 15 + [0.7]], np.float32)
    assert apply_negative(p, "max")[0, NEGATIVE] == pytest.approx(0.1)
    assert apply_negative(p, "independence")[0, NEGATIVE] == pytest.approx(0.8 * 0.1 * 0.5)
    assert apply_negative(p, "model")[0, NEGATIVE] == pytest.approx(0.7)
    assert np.array_equal(apply_negative(p, "max")[:, :NEGATIVE], p[:, :NEGATIVE])
    with pytest.raises(HpaError, match="--negative"):
        apply_negative(p, "min")
    store, _, models, _, _ = setup
    for rule in ("model", "max", "independence"):
        _predict(store, models, tta=("id",), negative=rule, name=rule)
    own = P.read_probs(store, "model")
    ok = np.isfinite(own).all(axis=1)
    others = np.delete(own[ok], NEGATIVE, axis=1)
    mx, ind = P.read_probs(store, "max")[ok], P.read_probs(store, "independence")[ok]
    np.testing.assert_allclose(mx[:, NEGATIVE], 1 - others.max(1), atol=1e-6)
    np.testing.assert_allclose(ind[:, NEGATIVE], np.prod(1 - others, axis=1), atol=1e-6)
    np.testing.assert_allclose(np.delete(mx, NEGATIVE, 1), others, atol=1e-7)
    assert np.abs(own[ok][:, NEGATIVE] - mx[:, NEGATIVE]).max() > 1e-3


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_views_invert(lib):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (2, 4, 32, 32)).astype(np.uint8)
    x = torch.from_numpy(x) if lib == "torch" else x
    as_np = (lambda a: a.numpy()) if lib == "torch" else np.asarray
    for name in T.VIEWS:
        y = T.apply_view(x, name)
        assert np.array_equal(as_np(T.invert_view(y, name)), as_np(x)), name
        if name != "id":
            assert not np.array_equal(as_np(y), as_np(x)), name
    xn = as_np(x)
    assert np.array_equal(as_np(T.apply_view(x, "hflip")), xn[..., ::-1])
    assert np.array_equal(as_np(T.apply_view(x, "vflip")), xn[..., ::-1, :])
    assert np.array_equal(as_np(T.apply_view(x, "rot90")), np.rot90(xn, 1, axes=(-2, -1)))
    # shift: exact away from the strip that left the frame
    d = 2
    back = as_np(T.invert_view(T.apply_view(x, "shift"), "shift"))
    assert np.array_equal(back[..., : 32 - d, : 32 - d], xn[..., : 32 - d, : 32 - d])
    assert (as_np(T.apply_view(x, "shift"))[..., :d, :] == 0).all()
    # zoom: a smooth image comes back close inside the border
    smooth = np.tile(np.linspace(0, 200, 32, dtype=np.float32), (1, 1, 32, 1))
    s = torch.from_numpy(smooth) if lib == "torch" else smooth
    for name in ("zoomin", "zoomout"):
        y = as_np(T.apply_view(s, name))
        assert y.shape == smooth.shape and not np.allclose(y, smooth)
        back = as_np(T.invert_view(T.apply_view(s, name), name))
        assert np.abs(back - smooth)[..., 4:-4, 4:-4].max() < 3.0, name
    with pytest.raises(HpaError, match="unknown test-time view"):
        T.check_tta("id,flop")


def test_shard_union_equals_unsharded_and_resume_after_a_crash(setup):
    store, _, models, _, _ = setup
    _predict(store, models, name="whole")
    s0 = _predict(store, models, name="sh", shard=Shard(0, 2))
    assert not s0.complete and 0 < s0.cells_predicted
    s1 = _predict(store, models, name="sh", shard=Shard(1, 2), workers=2)
    assert s1.complete and s0.cells_predicted + s1.cells_predicted == s1.cells_selected
    np.testing.assert_allclose(P.read_probs(store, "sh"), P.read_probs(store, "whole"), atol=1e-6, equal_nan=True)

    class Crash:  # a progress display that kills the run after some cells
        def __init__(self, after):
            self.after, self.n = after, 0

        def add_task(self, *a, **k):
            return 0

        def advance(self, task, n=1):
            self.n += n
            if self.n >= self.after:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _predict(store, models, name="crash", progress=Crash(12))
    info = P.info(store, "crash")
    assert 0 < info["blocks_done"] < info["blocks"] and not info["complete"]
    assert P.info(store, "crash")["provenance"]["status"] == "failed"
    s = _predict(store, models, name="crash")
    assert s.complete and 0 < s.cells_predicted < s.cells_selected  # only the unfinished blocks
    np.testing.assert_allclose(P.read_probs(store, "crash"), P.read_probs(store, "whole"), atol=1e-6, equal_nan=True)
    # nothing left: a rerun predicts nothing
    assert _predict(store, models, name="crash").cells_predicted == 0
    # other settings under the same name are refused
    with pytest.raises(StoreError, match="other settings"):
        _predict(store, models, name="whole", negative="independence")
    assert _predict(store, models, name="whole", negative="independence", overwrite=True).complete


def test_new_images_keep_earlier_predictions(tmp_path):
    from hpacli.data.synth import SynthConfig, run_synth

    store, root = make_truth_store(tmp_path, n_train=1, n_test=2)
    models = str(save_model(tmp_path / "cell.pt", cell_extra(), 3))
    _predict(store, models)
    before = prediction_frame(store)
    # a second folder of images arrives; its images get segmented, the first ones' cells are kept
    more = tmp_path / "more"
    run_synth(more, SynthConfig(n_images=1, size=64, test_images=2, seed=5), force=True)
    ingest_folder(store, more / "test", workers=1)
    n_old = len(before)
    from hpacli.store import segmentation as seg

    assert (seg.n_cells(store) == seg.NOT_DONE).sum() == 2
    write_truth_segmentation(store, more, images=[store.images.n - 2, store.images.n - 1])
    with pytest.raises(StoreError, match="older cells table"):
        prediction_frame(store)
    s = _predict(store, models)
    assert s.cells_carried == n_old and s.cells_predicted == s.cells_selected - n_old > 0
    after = prediction_frame(store)
    merged = before.merge(after, on=["image", "cell"], suffixes=("", "_new"))
    assert len(merged) == n_old
    np.testing.assert_allclose(merged[list(CLASS_NAMES)].to_numpy(),
                               merged[[f"{c}_new" for c in CLASS_NAMES]].to_numpy(), atol=1e-7)


def test_exports(setup):
    store, _, models, _, tmp = setup
    _predict(store, models, tta=("id",))
    n = export_table(store, tmp / "out" / "cells.csv")
    df = pd.read_csv(tmp / "out" / "cells.csv")
    assert list(df.columns) == list(TABLE_COLUMNS) and len(df) == n == int(P.predicted_mask(store, "default").sum())
    probs = df[list(CLASS_NAMES)].to_numpy()
    assert np.array_equal(df["top_class"].to_numpy(), probs.argmax(1))
    assert (df["top_label"] == [CLASS_NAMES[c] for c in df["top_class"]]).all()
    assert set(df["image"]) == set(store.images.df().query("split == 'test'")["ID"])
    assert (df["r1"] > df["r0"]).all() and (df["area"] > 0).all() and probs.shape[1] == N_CLASSES
    from hpacli.store.summary import summarize

    rows = summarize(store)["tables"]["predictions"]
    assert rows[0]["name"] == "default" and rows[0]["cells predicted"] == n and rows[0]["status"] == "complete"
    pngs = write_overlays(store, tmp / "ov", n=2)
    from PIL import Image

    assert len(pngs) == 2 and all(min(Image.open(p).size) >= 512 for p in pngs)
    if not _has_pyarrow():
        from hpacli.errors import InputError

        with pytest.raises(InputError, match="pyarrow"):
            export_table(store, tmp / "cells.parquet")


def _has_pyarrow() -> bool:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return False
    return True


def test_cli_from_a_folder_of_images_to_a_checked_submission(tmp_path, cli):
    from hpacli.data.synth import SynthConfig, run_synth

    data = tmp_path / "data"
    run_synth(data, SynthConfig(n_images=1, size=96, test_images=2, seed=2), force=True)
    model = save_model(tmp_path / "cell.pt", cell_extra(), 1)
    store = tmp_path / "new.zarr"
    res = cli(["predict", "--store", store, "--images", data / "test", "--models", model, "--tta", "id,vflip",
               "--export", tmp_path / "cells.csv", "--overlays", "1", "--overlay-dir", tmp_path / "ov",
               "--device", "cpu", "--workers", "0", "--quiet"])
    assert res.exit_code == 0, res.output
    assert len(pd.read_csv(tmp_path / "cells.csv")) > 0 and len(list((tmp_path / "ov").glob("*.png"))) == 1
    sub = tmp_path / "submission.csv"
    res = cli(["submit", "--store", store, "--out", sub, "--min-conf", "0.2", "--quiet"])
    assert res.exit_code == 0, res.output
    assert cli(["submit", "--check", sub, "--images", data / "sample_submission.csv"]).exit_code == 0
    res = cli(["evaluate", "--truth", data / "test_truth.csv", "--submission", sub])
    assert res.exit_code == 0, res.output
    res = cli(["predict", "--store", store, "--device", "cpu"])
    assert res.exit_code == EXIT_USAGE and "no models given" in res.output
    res = cli(["predict", "--store", store, "--models", model, "--negative", "min", "--device", "cpu"])
    assert res.exit_code == EXIT_USAGE and "--negative" in res.output


def test_cli_models_with_commas_and_export_checked_before_predicting(setup, cli, monkeypatch):
    store, _, models, _, tmp = setup
    f0, f1 = (str(tmp / "runs" / f"fold{f}" / "best.pt") for f in range(2))
    base = ["predict", "--store", store.path, "--tta", "id", "--device", "cpu", "--workers", "0", "--quiet"]
    # an unknown export format, or Parquet without pyarrow: refused before any prediction
    res = cli([*base, "--models", f"{f0},{f1}", "--export", tmp / "cells.json"])
    assert res.exit_code == EXIT_USAGE and "unknown export format .json" in res.output
    monkeypatch.setitem(__import__("sys").modules, "pyarrow", None)  # import pyarrow -> ImportError
    res = cli([*base, "--models", f"{f0},{f1}", "--export", tmp / "cells.parquet"])
    assert res.exit_code == EXIT_USAGE and "pipx inject hpacli pyarrow" in res.output
    assert P.list_names(store) == [] and not (tmp / "cells.parquet").exists()
    monkeypatch.undo()
    # 'a,b' is both models: the same probabilities as the glob
    res = cli([*base, "--models", f"{f0},{f1}", "--name", "commas", "--export", tmp / "cells.csv"])
    assert res.exit_code == 0, res.output
    _predict(store, models, name="glob", tta=("id",))
    _predict(store, f0, name="one", tta=("id",))
    commas, glob, one = (P.read_probs(store, n) for n in ("commas", "glob", "one"))
    np.testing.assert_allclose(commas, glob, atol=1e-6)  # batches differ (float rounding only)
    assert np.nanmax(np.abs(commas - one)) > 1e-3  # and it is not just the first model
    assert len(pd.read_csv(tmp / "cells.csv")) == int(P.predicted_mask(store, "commas").sum())


def test_parquet_export(setup):
    pytest.importorskip("pyarrow", reason="the parquet extra (hpacli[parquet]); .ci/run installs it")
    store, _, models, _, tmp = setup
    _predict(store, models, tta=("id",))
    n = export_table(store, tmp / "cells.parquet")
    export_table(store, tmp / "cells.csv")
    pq = pd.read_parquet(tmp / "cells.parquet")
    csv = pd.read_csv(tmp / "cells.csv")
    assert list(pq.columns) == list(TABLE_COLUMNS) and len(pq) == n == len(csv) > 0
    assert (pq["image"] == csv["image"]).all() and (pq["top_class"] == csv["top_class"]).all()
    np.testing.assert_allclose(pq[list(CLASS_NAMES)].to_numpy(), csv[list(CLASS_NAMES)].to_numpy(), rtol=1e-5)
    assert pq[CLASS_NAMES[0]].dtype == np.float32  # Parquet keeps the stored float32, CSV rounds to 6 digits
