"""hpa pseudolabel: out-of-fold assignment, views, shards, kill + resume, CLI and info."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from hpacli.data import crops as C
from hpacli.errors import EXIT_USAGE, HpaError
from hpacli.label.pseudolabel import run_pseudolabel
from hpacli.store import Shard
from hpacli.store import pseudolabels as PL
from tests.test_crops import make_cell_store

IMG = 32  # the image models' input size
BLOCK = 8
ROOT = Path(__file__).resolve().parents[1]


def save_fold_model(path: Path, fold: int, seed: int, train_images=None) -> Path:
    """A tiny timm model saved as `hpa train-image` saves it (fold and size in train_config.extra)."""
    from hpacli.models.checkpoint import save_checkpoint
    from hpacli.models.timm_wrap import TimmClassifier

    torch.manual_seed(seed)
    model = TimmClassifier("test_resnet").eval()
    # random weights trained on nothing, unless the test says otherwise (the guard needs a record)
    extra = {"fold": fold, "img_size": IMG, "trained_on": {"images": [str(i) for i in (train_images or [])]}}
    save_checkpoint(path, {"model_config": model.config, "model": model.state_dict(), "train_config": {"extra": extra}})
    return path


def make_models(folder: Path, folds=(0, 1, 2)) -> str:
    for f in folds:
        save_fold_model(folder / f"fold{f}" / "best.pt", f, seed=100 + f)
    return str(folder / "fold*" / "best.pt")


@pytest.fixture
def setup(tmp_path):
    store, labels = make_cell_store(tmp_path, n_images=6)
    models = make_models(tmp_path / "runs")
    return store, labels, models, tmp_path


def _arrays(store, run):
    return PL.read_probs(store, run), PL.read_embeddings(store, run), PL.read_model(store, run)


def _reference(store, labels, models_glob, rows):
    """Predictions computed by hand, one cell at a time, each view on its own."""
    from hpacli.infer.models import expand_model_paths
    from hpacli.label.pseudolabel import load_fold_models
    from hpacli.store.cells import CellTable
    from hpacli.store.folds import read_image_folds

    fms = load_fold_models(expand_model_paths(models_glob))
    cells = CellTable(store)
    folds = read_image_folds(store)
    out = {}
    for r in rows:
        img = int(cells.column("image")[r])
        pix = C._resize(store.images.read_image(img), (IMG, IMG))
        lab = C.resize_nearest(labels[f"i{img}"], (IMG, IMG))
        box = C.scale_bbox(cells.column("bbox")[r], (64, 64), (IMG, IMG))
        x = torch.from_numpy(C.tile_fill(C.masked_crop(pix, lab, int(cells.column("cell_id")[r]), box), IMG))
        x = x[None].float() / 255
        per_fold = {}
        for f, fm in fms.items():
            with torch.inference_mode():
                ps = [torch.sigmoid(fm.model(v)) for v in (x, x.flip(-2), x.flip(-1), torch.rot90(x, 1, (-2, -1)))]
            per_fold[f] = torch.stack(ps).mean(0)[0].numpy()
        out[r] = (int(folds[img]), per_fold)
    return out


def test_out_of_fold_assignment_and_values(setup):
    store, labels, models, _ = setup
    from hpacli.store.cells import CellTable
    from hpacli.store.folds import read_image_folds

    summary = run_pseudolabel(store, models, run="oof", batch_size=4, device="cpu", workers=0, block=BLOCK)
    assert summary.complete
    cells = CellTable(store)
    image_fold = read_image_folds(store)[cells.column("image")]
    probs, emb, model = _arrays(store, "oof")
    # every cell of a fold image got its own fold's model; cells of the unused image none
    assert np.array_equal(model, np.where(image_fold >= 0, image_fold, -1))
    assert (image_fold == -1).any() and (model >= 0).any()
    lab = PL.labelled_mask(store, "oof")
    assert np.array_equal(lab, image_fold >= 0)
    assert np.isnan(probs[~lab]).all() and np.isfinite(probs[lab]).all()
    assert emb.dtype == np.float16 and emb.shape[1] == 96 and np.all(emb[~lab] == 0) and np.any(emb[lab] != 0)
    # values = the hand-computed 4-view average of the *own-fold* model, not another fold's
    rows = [int(np.flatnonzero(image_fold == f)[0]) for f in (0, 1, 2)]
    for r, (f, per_fold) in _reference(store, labels, models, rows).items():
        np.testing.assert_allclose(probs[r], per_fold[f], atol=1e-5)
        other = per_fold[(f + 1) % 3]
        assert np.abs(probs[r] - other).max() > 1e-3
    info = PL.run_info(store, "oof")
    assert info["views"] == ["id", "vflip", "hflip", "rot90"] and info["img_size"] == {"0": IMG, "1": IMG, "2": IMG}
    assert info["cells_table_id"] == cells.table_id and not info["stale"]
    assert PL.list_runs(store) == ["oof"]
    # iter_embeddings in chunks and by rows equals the whole
    sel = np.array([5, 1, 9])
    parts = list(PL.iter_embeddings(store, "oof", rows=sel, chunk=2))
    assert np.array_equal(np.concatenate([p[0] for p in parts]), sel)
    assert np.array_equal(np.concatenate([p[1] for p in parts]), emb[sel])


def test_a_model_that_trained_on_an_image_is_refused(setup):
    store, _, _, tmp = setup
    ids = store.images.ids()
    from hpacli.store.folds import read_image_folds

    folds = read_image_folds(store)
    # fold 0's model claims to have trained on one of fold 0's own (validation) images
    save_fold_model(tmp / "bad" / "fold0.pt", 0, seed=1, train_images=[str(ids[np.flatnonzero(folds == 0)[0]])])
    with pytest.raises(HpaError, match="leak: .*fold0.pt trained on 1 of the images it would label"):
        run_pseudolabel(store, [str(tmp / "bad" / "fold0.pt")], run="bad", device="cpu", workers=0)
    # a checkpoint that does not say what it trained on cannot be checked: refused
    from hpacli.models.checkpoint import save_checkpoint
    from hpacli.models.timm_wrap import TimmClassifier

    m = TimmClassifier("test_resnet")
    save_checkpoint(tmp / "silent.pt", {"model_config": m.config, "model": m.state_dict(),
                                        "train_config": {"extra": {"fold": 0, "img_size": IMG}}})
    with pytest.raises(HpaError, match="does not record which images it trained on"):
        run_pseudolabel(store, [str(tmp / "silent.pt")], run="bad", device="cpu", workers=0)
    save_fold_model(tmp / "twice.pt", 0, seed=2)
    with pytest.raises(HpaError, match="two models for fold 0"):
        run_pseudolabel(store, [str(tmp / "bad" / "fold0.pt"), str(tmp / "twice.pt")], device="cpu", workers=0)
    with pytest.raises(HpaError, match="no model checkpoint matches"):
        run_pseudolabel(store, [str(tmp / "nothing*.pt")], device="cpu", workers=0)


def test_shard_union_equals_unsharded_and_workers_agree(setup):
    store, _, models, _ = setup
    run_pseudolabel(store, models, run="whole", batch_size=4, device="cpu", workers=0, block=BLOCK)
    s0 = run_pseudolabel(store, models, run="sh", shard=Shard(0, 2), batch_size=4, device="cpu", workers=2,
                         block=BLOCK)
    assert not s0.complete
    part = PL.labelled_mask(store, "sh")
    assert part.any() and not np.array_equal(part, PL.labelled_mask(store, "whole"))
    s1 = run_pseudolabel(store, models, run="sh", shard=Shard(1, 2), batch_size=4, device="cpu", workers=1,
                         block=BLOCK)
    assert s1.complete
    for a, b in zip(_arrays(store, "whole"), _arrays(store, "sh")):
        np.testing.assert_array_equal(a, b)
    # a finished run is not redone; other models under the same name are refused
    again = run_pseudolabel(store, models, run="whole", device="cpu", workers=0, block=BLOCK)
    assert again.cells_labelled == 0 and again.complete
    with pytest.raises(HpaError, match="other models"):
        run_pseudolabel(store, models.replace("fold*", "fold[01]"), run="whole", device="cpu", workers=0,
                        block=BLOCK)


def test_duplicates_are_skipped(setup):
    store, _, models, _ = setup
    from hpacli.store.cells import CellTable
    from hpacli.store.dedup import write_dedup_result

    group = np.arange(6)
    group[3] = 0  # image 3 duplicates image 0 (both in fold 0)
    write_dedup_result(store, group, np.array([[0, 3]]), np.array([[1, 2, 3]]), threshold=12)
    s = run_pseudolabel(store, models, run="dd", batch_size=4, device="cpu", workers=0, block=BLOCK)
    assert s.skipped_duplicate_images == 1
    cells = CellTable(store)
    lab = PL.labelled_mask(store, "dd")
    img = cells.column("image")
    assert not lab[img == 3].any() and lab[img == 0].all()
    s = run_pseudolabel(store, models, run="keep", device="cpu", workers=0, block=BLOCK, skip_duplicates=False)
    assert PL.labelled_mask(store, "keep")[img == 3].all()


KILL_SCRIPT = """
import sys, time
sys.path.insert(0, {root!r})
import hpacli.label.pseudolabel as P
from hpacli.store import open_store
real = P.predict_views
def slow(*a, **k):
    time.sleep(0.3)
    return real(*a, **k)
P.predict_views = slow
P.run_pseudolabel(open_store({store!r}, "a"), {models!r}, run="kr", batch_size=2, device="cpu", workers=0, block={block})
"""


def test_kill_and_resume_gives_the_same_arrays(setup):
    store, _, models, tmp = setup
    run_pseudolabel(store, models, run="ref", batch_size=2, device="cpu", workers=0, block=BLOCK)
    script = tmp / "kill.py"
    script.write_text(KILL_SCRIPT.format(root=str(ROOT), store=str(store.path), models=models, block=BLOCK))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    done_key = store.path / "labels" / "kr" / "_done"
    deadline = time.time() + 90
    killed_mid_run = False
    try:
        while time.time() < deadline and proc.poll() is None:
            if done_key.exists():
                work = PL.run_info(store, "kr")
                if 0 < work["blocks_done"] < work["blocks"]:
                    proc.send_signal(signal.SIGKILL)
                    killed_mid_run = True
                    break
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert killed_mid_run, proc.stderr.read().decode()[-2000:]
    partial = PL.labelled_mask(store, "kr")
    assert not np.array_equal(partial, PL.labelled_mask(store, "ref"))
    s = run_pseudolabel(store, models, run="kr", batch_size=2, device="cpu", workers=0, block=BLOCK)
    assert s.complete and 0 < s.blocks_done < s.blocks_total
    for a, b in zip(_arrays(store, "ref"), _arrays(store, "kr")):
        np.testing.assert_array_equal(a, b)


def test_cli_and_info_coverage(setup, cli):
    store, _, models, _ = setup
    res = cli(["pseudolabel", "--store", store.path, "--models", models, "--run", "c", "--workers", "0",
               "--device", "cpu", "--batch-size", "4", "--quiet"])
    assert res.exit_code == 0, res.output
    assert PL.labelled_mask(store, "c").any()
    res = cli(["info", "--store", store.path])
    assert res.exit_code == 0, res.output
    assert "pseudo-labels" in res.output and "100.0%" in res.output
    rows = PL.coverage_rows(store)
    assert {r["fold"] for r in rows} == {"0", "1", "2", "unused"}
    assert all(r["labelled"] == (0 if r["fold"] == "unused" else r["cells"]) for r in rows)
    res = cli(["pseudolabel", "--store", store.path, "--models", "nope*.pt", "--quiet"])
    assert res.exit_code == EXIT_USAGE and "no model checkpoint" in res.output
    res = cli(["pseudolabel", "--store", store.path, "--models", models, "--views", "id,spin", "--quiet"])
    assert res.exit_code == EXIT_USAGE and "unknown view" in res.output


def test_unreadable_image_is_reported_and_skipped(setup):
    store, _, models, _ = setup
    from hpacli.store.cells import CellTable
    from hpacli.store.folds import read_image_folds

    folds = read_image_folds(store)
    bad = int(np.flatnonzero(folds == 1)[0])
    store.images.paths(bad)[1].unlink()  # green channel gone after ingest
    s = run_pseudolabel(store, models, run="b", batch_size=4, device="cpu", workers=1, block=BLOCK)
    assert s.complete and s.cells_skipped > 0
    assert len(s.problems) == 1 and store.images.ids()[bad] in s.problems[0]
    img = CellTable(store).column("image")
    lab = PL.labelled_mask(store, "b")
    assert not lab[img == bad].any()
    assert lab[(img != bad) & (folds[img] >= 0)].all()
    assert np.isnan(PL.read_probs(store, "b")[img == bad]).all()


def test_models_separated_by_commas_and_repeated(setup, cli):
    """--models 'a,b' --models c is the same as the glob of a, b and c (the help says so)."""
    from hpacli.infer.models import split_model_args

    store, _, models, tmp = setup
    run_pseudolabel(store, models, run="glob", batch_size=4, device="cpu", workers=0)
    f0, f1, f2 = (str(tmp / "runs" / f"fold{f}" / "best.pt") for f in range(3))
    res = cli(["pseudolabel", "--store", store.path, "--models", f"{f0},{f1}", "--models", f2, "--run", "commas",
               "--workers", "0", "--device", "cpu", "--batch-size", "4", "--quiet"])
    assert res.exit_code == 0, res.output
    for a, b in zip(_arrays(store, "glob"), _arrays(store, "commas")):
        np.testing.assert_array_equal(a, b)
    # a file whose name holds a comma is still one path
    odd = tmp / "runs" / "a,b.pt"
    odd.write_bytes(b"")
    assert split_model_args([str(odd), f"{f0}, {f1}"]) == [str(odd), f0, f1]
