"""``hpa demo``: the whole pipeline on a generated dataset, scored against its cell truth.

synth → ingest → segment → dedup → fold (images and cells) → train-image (every fold) →
pseudolabel → denoise → select-mitotic (auto-accepted) → train-cell → predict → submit →
evaluate. Every step is the library function the matching command calls. The closing
table compares (a) the image-level model applied to each cell with (b) the full pipeline
(cell-level model), on the synthetic test images' cell truth, and reports how many of the
mitotic-spindle cells missing from the image labels the de-noising recovered.

Settings are scaled for a 2-core CPU (small images, a small backbone, few epochs); the
same command uses a GPU when one is present. A finished step is recorded in
``DIR/demo.json`` and skipped when the demo is run again; the steps themselves resume.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .classes import MITOTIC_SPINDLE, N_CLASSES
from .errors import HpaError
from .plaindata import to_plain
from .summary import Summary


@dataclass
class DemoSettings:
    n_images: int = 300
    test_images: int = 120  # 180 train; a large test set keeps the rare class's AP from hanging on a few cells
    size: int = 128
    n_folds: int = 2
    backbone: str = "resnet18"
    img_size: int = 128
    image_epochs: int = 12
    image_batch: int = 16
    schedule: str = "constant"  # from scratch, a few hundred steps: adam10's 1e-5 base is for fine-tuning
    lr_mult: float = 200.0
    views: tuple[str, ...] = ("id", "vflip", "hflip", "rot90")
    cell_size: int = 64
    cell_epochs: int = 4
    cell_batch: int = 32
    cell_lr_mult: float = 50.0
    tta: tuple[str, ...] = ("id", "hflip")
    select_per_image: int = 2  # known spindle cells: the 2 most unusual cells of each labelled image
    select_neighbours: int = 8  # ... and the cells among their first 8 neighbours ...
    select_min_hits: int = 2  # ... at least twice
    mask_labels: bool = True
    # the demo's small dataset needs more labelled spindle images than the default rules give
    # for the image model to learn the class at all (the spindle stays missing from half of them)
    mitotic_rate: float = 0.1
    spindle_seen_p: float = 0.5
    seed: int = 0
    workers: int = 2

    @classmethod
    def quick(cls) -> DemoSettings:
        return cls(n_images=144, test_images=48, size=96, img_size=96, image_epochs=8, views=("id", "hflip"),
                   cell_size=48, cell_epochs=2, tta=("id",))


STEPS = ("synth", "ingest", "segment", "dedup", "fold", "train-image", "pseudolabel", "denoise",
         "select-mitotic", "train-cell", "predict", "submit", "evaluate")


@dataclass
class DemoResult(Summary):
    out: Path
    settings: dict
    timings: dict[str, float] = field(default_factory=dict)
    scores: dict = field(default_factory=dict)


class _Steps:
    """Runs named steps once, timing them; a finished step is skipped on the next run."""

    def __init__(self, out: Path, settings: DemoSettings, progress, log) -> None:
        self.path = out / "demo.json"
        self.state = json.loads(self.path.read_text()) if self.path.exists() else {}
        if self.state.get("settings") not in (None, to_plain(settings)):
            raise HpaError(f"{out} holds a demo made with other settings; use another --out or --force")
        self.state["settings"] = to_plain(settings)
        self.state.setdefault("done", {})
        self.progress = progress
        self.log = log
        self.task = progress.add_task("demo", total=len(STEPS), unit="step", info="")
        progress.update(self.task, completed=len(self.state["done"]))

    def run(self, name: str, fn):
        if name in self.state["done"]:
            self.log(f"[dim]{name}: done before, skipped[/]")
            return self.state["done"][name].get("result")
        self.progress.update(self.task, info=name)
        before = set(self.progress.task_ids) if hasattr(self.progress, "task_ids") else set()
        t = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - t
        for tid in (set(self.progress.task_ids) - before if before else ()):
            self.progress.remove_task(tid)
        self.state["done"][name] = {"seconds": round(seconds, 2), "result": to_plain(result)}
        self._save()
        self.progress.advance(self.task)
        self.log(f"{name}: {seconds:.1f} s")
        return self.state["done"][name]["result"]

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=1))
        tmp.replace(self.path)

    def timings(self) -> dict[str, float]:
        return {k: v["seconds"] for k, v in self.state["done"].items()}




def run_demo(out: Path, settings: DemoSettings | None = None, *, device: str = "auto", progress=None,
             log=None) -> DemoResult:
    """Run (or resume) the demo in ``out``; returns timings and the closing scores."""
    from .progress import NullProgress

    s = settings or DemoSettings()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    progress = progress or NullProgress()
    log = log or (lambda msg: None)
    steps = _Steps(out, s, progress, log)
    data, store_path, runs = out / "data", out / "hpa.zarr", out / "runs"

    from .store import open_store

    def store():
        return open_store(store_path, "a")

    def synth():
        from .data.synth import Rules, SynthConfig, run_synth

        cfg = SynthConfig(n_images=s.n_images, size=s.size, test_images=s.test_images, seed=s.seed)
        rules = Rules(mitotic_rate=s.mitotic_rate, spindle_seen_p=s.spindle_seen_p)
        return run_synth(data, cfg, force=True, workers=s.workers, progress=progress, rules=rules)

    def ingest():
        from .data.ingest import kaggle_candidates, run_ingest

        rep = run_ingest(store(), kaggle_candidates(data), data_root=data, cache_size=s.size,
                         workers=s.workers, progress=progress, params={"root": str(data), "demo": True})
        return {"added": rep.added, "problems": rep.n_problems}

    def segment():
        from .segment.stage import run_segment

        return run_segment(store(), "classical", progress=progress, preview=4, preview_dir=out / "segmentation")

    def dedup():
        from .prep.dedup import run_dedup

        return run_dedup(store(), workers=s.workers, progress=progress)

    def fold():
        from .prep.folds import run_cell_folds, run_fold

        st = store()
        a = run_fold(st, n_splits=s.n_folds, seed=s.seed)
        b = run_cell_folds(st, n_splits=3, seed=s.seed)
        return {"images": a, "cells": b}

    def train_image():
        from .train.image import run_train_image

        best = {}
        for f in range(s.n_folds):
            res = run_train_image(
                store(), f, runs / "image" / f"fold{f}", backbone=s.backbone, img_size=s.img_size, negatives="all",
                epochs=s.image_epochs, batch_size=s.image_batch, accum=1, lr_mult=s.lr_mult, schedule=s.schedule,
                workers=min(s.workers, 1), device=device, seed=s.seed + f, progress=progress, log=log,
                resume=(runs / "image" / f"fold{f}" / "last.pt").exists(),
            )
            best[f] = res
        return best

    image_models = [str(runs / "image" / f"fold{f}" / "best.pt") for f in range(s.n_folds)]

    def pseudolabel():
        from .label.pseudolabel import run_pseudolabel

        return run_pseudolabel(store(), image_models, run="oof", device=device, workers=s.workers,
                               views=s.views, batch_size=32, progress=progress)

    def denoise():
        from .label.denoise import run_denoise

        # the seed's k = 200 is for ~400,000 cells per fold; keep k about 1% of a small fold
        n_cells = _n_cells(store_path)
        k = int(min(200, max(10, n_cells // 300)))
        return run_denoise(store(), run="oof", params={"k": k}, progress=progress)

    def select():
        from .label.denoise import run_accept, run_select

        st = store()
        # the image model is too weak to point at the spindle cells of a labelled image (its
        # Y_init is flat there), so the known positives are the cells unlike the rest of their
        # image, grown by their neighbours; the Y_opt rule is off (top 0)
        sel = run_select(st, run="oof", cls=MITOTIC_SPINDLE, top=0, name="mitotic", out_dir=out / "selection",
                         known="outliers", per_image=s.select_per_image, neighbours=s.select_neighbours,
                         min_hits=s.select_min_hits)
        # the demo accepts the selection as it is; a person would review it first, in `hpa review`
        log(f"select-mitotic: a person would review these cells now: hpa review --store {store_path} --run oof")
        accepted = run_accept(st, "oof", sel.csv, name="mitotic").accepted if sel.csv is not None else 0
        return {"selected": int(len(sel.cells)), "accepted": int(accepted), "counts": sel.counts,
                "gallery": str(sel.gallery) if sel.gallery else None}

    def train_cell():
        from .train.cell import run_train_cell

        return run_train_cell(
            store(), 0, "oof", runs / "cell" / "fold0", selection="mitotic", init_from=image_models[0],
            mask_labels=s.mask_labels,
            img_size=s.cell_size, epochs=s.cell_epochs, batch_size=s.cell_batch, accum=1, lr_mult=s.cell_lr_mult, schedule=s.schedule,
            workers=min(s.workers, 1), device=device, seed=s.seed, progress=progress, log=log,
            resume=(runs / "cell" / "fold0" / "last.pt").exists(),
        )

    def predict():
        from .predict.stage import run_predict

        st = store()
        a = run_predict(st, (), name="image-model", image_model=image_models[0], tta=s.tta, device=device,
                        workers=s.workers, progress=progress)
        b = run_predict(st, [str(runs / "cell" / "fold0" / "best.pt")], name="pipeline", tta=s.tta,
                        device=device, workers=s.workers, progress=progress)
        _export(st, out)
        return {"image-model": a, "pipeline": b}

    def submit():
        from .evaluate.write import write_submission

        st = store()
        a = write_submission(st, "image-model", out / "submission_image_model.csv", workers=s.workers,
                             progress=progress)
        b = write_submission(st, "pipeline", out / "submission.csv", workers=s.workers, progress=progress)
        return {"image-model": a, "pipeline": b}

    def evaluate():
        from .evaluate.metric import evaluate_files

        scores = {}
        for name, path in (("image-model", out / "submission_image_model.csv"), ("pipeline", out / "submission.csv")):
            res = evaluate_files(data / "test_truth.csv", path)
            scores[name] = {"mAP": res.mAP, "per_class_AP": res.per_class_ap}
        scores["recovery"] = _recovery(open_store(store_path, "r"))
        (out / "scores.json").write_text(json.dumps(to_plain(scores), indent=1))
        return scores

    for name, fn in zip(STEPS, (synth, ingest, segment, dedup, fold, train_image, pseudolabel, denoise, select,
                                train_cell, predict, submit, evaluate)):
        steps.run(name, fn)
    scores = json.loads((out / "scores.json").read_text())
    return DemoResult(out=out, settings=to_plain(s), timings=steps.timings(), scores=scores)


def _n_cells(store_path: Path) -> int:
    from .store import open_store
    from .store.cells import CellTable

    return CellTable(open_store(store_path, "r")).n


def _export(store, out: Path) -> None:
    """The per-cell table and a few overlays of the pipeline's predictions."""
    try:
        from .predict.export import export_table, write_overlays
    except ImportError:  # pragma: no cover - optional
        return
    export_table(store, out / "cells.csv", predictions="pipeline")
    write_overlays(store, out / "overlays", predictions="pipeline", n=6)


def _recovery(store) -> dict:
    """Mitotic-spindle cells that the image labels missed (Y_init < 0.4 although the cell truly
    shows the spindle): how many the selection recovered, and its precision."""
    from .evaluate.celltruth import cell_truth
    from .store import denoise as layout
    from .store.cells import CellTable

    data = layout.read(store, "oof")
    fold = data["fold"]
    y_init = np.nan_to_num(data["y_init"][:, MITOTIC_SPINDLE], nan=1.0)
    truth, matched = cell_truth(store, np.unique(CellTable(store).column("image")[fold >= 0]))
    spindle = truth[:, MITOTIC_SPINDLE] & (fold >= 0)
    missing = spindle & (y_init < 0.4)
    selected, _ = layout.read_selection(store, "oof", "mitotic")
    sel = np.zeros(len(fold), dtype=bool)
    sel[np.asarray(selected, dtype=np.int64)] = True
    hits = int((sel & missing).sum())
    return {
        "spindle_cells": int(spindle.sum()),
        "missing_from_labels": int(missing.sum()),
        "selected": int(sel.sum()),
        "recovered": hits,
        "recall": hits / max(int(missing.sum()), 1),
        "precision": int((sel & truth[:, MITOTIC_SPINDLE]).sum()) / max(int(sel.sum()), 1),
        "matched_cells": int(matched.sum()),
        "n_classes": N_CLASSES,
    }
