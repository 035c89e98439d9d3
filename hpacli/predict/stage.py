"""``hpa predict``: probabilities for every cell of the chosen images.

Each cell is predicted alone (its masked bbox crop, other cells zeroed: ``hpacli.data.crops``)
by the cell-level models (mean over the models, e.g. the folds), each averaged over the
test-time views (:mod:`hpacli.data.views`, through the shared engine :mod:`hpacli.infer`); optionally blended with an image-level model
applied to the same masked crop (tile-filled at its input scale, as in pseudo-labelling):
``p = (1 - blend) * p_cells + blend * p_image``. The Negative column is then set by the
rule ``negative``: ``max`` 1 - max over the other 18 classes (the solution's choice),
``independence`` prod(1 - p_c), ``model`` the models' own output.

Images not segmented yet are segmented first (``hpa segment``'s stage, with the store's
segmenter). Work goes in blocks of cells (BlockWork): ``--shard i/n`` takes every n-th
block, a killed run redoes only unfinished blocks. When the cells table changes (new
images), cells predicted before are carried over, not predicted again. Results:
``predictions/<name>`` (:mod:`hpacli.store.predictions`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..classes import N_CLASSES, NEGATIVE
from ..data.crops import CellInput, TileFill
from ..data.views import DEFAULT_TTA, check_tta
from ..errors import HpaError, InputError
from ..infer.blocks import BlockLoop, close_run, on_device
from ..infer.device import resolve_device
from ..infer.forward import autocast, micro_batch_for, to_input, use_amp, view_average
from ..infer.models import expand_model_paths, file_record
from ..progress import NullProgress, add_task
from ..store import Shard, begin_stage
from ..store import predictions as P
from ..store.work import BlockWork
from ..summary import Summary

NEGATIVE_RULES = ("max", "independence", "model")
SPLITS = ("test", "dev", "train", "all")


@dataclass
class ModelSpec:
    """One loaded model and the input it takes."""

    path: str
    kind: str  # "cell" or "image"
    size: int  # model input side
    work_size: int | None  # resolution the crop is cut at (None: original)
    fit: str  # cell models: "resize" | "pad"; image models: "tile"
    model: object = None
    trained_on: list | None = None  # image ids it trained on (None: the checkpoint does not say)

    @property
    def input_key(self) -> tuple:
        return (self.kind, self.size, self.work_size, self.fit)

    def record(self) -> dict:
        f = file_record(self.path)
        return {"path": self.path, "kind": self.kind, "size": self.size, "work_size": self.work_size,
                "fit": self.fit, "bytes": f["bytes"], "mtime": f["mtime"]}


@dataclass
class PredictSummary(Summary):
    name: str
    cells_total: int = 0
    cells_selected: int = 0  # cells of the chosen images
    cells_predicted: int = 0  # by this call
    cells_carried: int = 0  # kept from before a cells-table change
    cells_skipped: int = 0  # cells of unreadable images
    blocks_done: int = 0
    blocks_total: int = 0
    complete: bool = False
    images_segmented: int = 0
    problems: list[str] = field(default_factory=list)
    device: str = "cpu"


# ---------------------------------------------------------------------------- models


def load_cell_model(path: str, crop_size: int | None = None) -> ModelSpec:
    """A cell-level model (``hpa train-cell``) with the crop geometry it was trained with
    (its checkpoint's ``cell_input``: ``size``, ``work_size`` — None for the original
    resolution — and ``fit``); ``crop_size`` overrides the size (for checkpoints that do
    not record it)."""
    from ..models.checkpoint import load

    loaded = load(path, "cpu")
    info, meta = loaded.info, loaded.info.meta
    if info.stage == "train-image":
        raise InputError(f"{path} is an image-level model (hpa train-image); pass it with --image-model")
    geo = info.cell_input or {}
    size = crop_size or geo.get("size") or meta.get("crop_size") or meta.get("img_size")
    if not size:
        raise InputError(f"{path}: the checkpoint does not record its crop size; pass --crop-size")
    fit = str(geo.get("fit") or meta.get("fit") or "resize")
    if fit not in ("resize", "pad"):
        raise InputError(f"{path}: unknown crop fit {fit!r} in the checkpoint")
    work = geo.get("work_size", meta.get("work_size"))
    return ModelSpec(str(Path(path).resolve()), "cell", int(size), int(work) if work else None, fit, loaded.model,
                     info.trained_images)


def load_image_model(path: str) -> ModelSpec:
    """An image-level model (``hpa train-image``) applied to cells: the crop at its input
    scale, tile-filled to its input square (as ``hpa pseudolabel`` does)."""
    from ..models.checkpoint import load

    loaded = load(path, "cpu")
    size = loaded.info.img_size
    if not size:
        raise InputError(f"{path}: the checkpoint does not record its image size; pass one written by `hpa train-image`")
    return ModelSpec(str(Path(path).resolve()), "image", int(size), int(size), "tile", loaded.model,
                     loaded.info.trained_images)


def check_not_trained_on(store, specs, selected_images: np.ndarray) -> None:
    """HpaError when a model trained on an image whose cells it would predict (its record
    in the checkpoint, ``hpacli.models.trained_on``; models without a record are not checked)."""
    from ..models.trained_on import check_no_leak

    ids = store.images.ids()[np.asarray(selected_images, dtype=bool)].tolist()
    for s in specs:
        check_no_leak(s.path, s.trained_on, ids, "predict",
                      "Predict images no model trained on (--split test), or use models trained without them")


# ---------------------------------------------------------------------------- inference


def apply_negative(probs: np.ndarray, rule: str = "max") -> np.ndarray:
    """Set the Negative column: ``max`` 1 - max of the other classes, ``independence``
    prod(1 - p_c) over them, ``model`` unchanged. Returns a new array."""
    if rule not in NEGATIVE_RULES:
        raise HpaError(f"--negative must be one of {', '.join(NEGATIVE_RULES)}, not {rule!r}")
    out = np.array(probs, dtype=np.float32, copy=True)
    if rule == "model" or len(out) == 0:
        return out
    others = np.delete(out, NEGATIVE, axis=1)
    if rule == "max":
        out[:, NEGATIVE] = 1.0 - others.max(axis=1)
    else:
        out[:, NEGATIVE] = np.prod(1.0 - others.astype(np.float64), axis=1)
    return out


# ---------------------------------------------------------------------------- segmentation


def ensure_segmented(store, segmenter: str | None = None, segmenter_kw: dict | None = None,
                     shard: Shard = Shard(), device: str = "auto", progress=None) -> int:
    """Segment the images that are not segmented yet (the ``segment`` stage, with the
    segmenter the store was segmented with unless ``segmenter`` says otherwise); returns
    the number of images segmented. Raises when the cells table is not complete after
    (other shards still segmenting)."""
    from ..segment.stage import run_segment
    from ..store import segmentation as seg
    from ..store.cells import covers

    n = store.images.n
    if n == 0:
        raise InputError(f"the store {store.path} has no images; pass --images DIR or run `hpa ingest` first")
    counts = seg.n_cells(store)
    if not (counts == seg.NOT_DONE).any() and covers(store, n):
        return 0
    old = seg.previous_params(store)
    kw = dict(segmenter_kw or {})
    name = segmenter or old.get("segmenter") or "classical"
    if segmenter is None and not kw:
        kw = {k: v for k, v in old.items() if k not in ("segmenter", "mask_scale", "block_size")}
    mask_scale = kw.pop("mask_scale", old.get("mask_scale"))
    out = run_segment(store, segmenter=name, shard=shard, device=device, progress=progress, mask_scale=mask_scale,
                      options=kw)
    if not covers(store, n) or (seg.n_cells(store) == seg.NOT_DONE).any():
        raise HpaError(
            "segmentation of the new images is not complete yet (other shards are still segmenting); "
            "run `hpa segment` to finish it, then `hpa predict` again"
        )
    return int(out.processed)


def folder_candidates(folder) -> list:
    """Test-image candidates of a folder: a Kaggle root (its test images) or a flat folder
    of ``{ID}_{red,green,blue,yellow}.png``."""
    from ..data.ingest import Candidate, kaggle_candidates

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"--images {folder}: not a folder")
    if (folder / "test").is_dir() or (folder / "sample_submission.csv").exists():
        return [c for c in kaggle_candidates(folder, include_test=True) if c.split == "test"]
    ids = sorted(p.name[: -len("_red.png")] for p in folder.glob("*_red.png"))
    if not ids:
        raise InputError(f"--images {folder}: no {{ID}}_red.png (with green, blue, yellow) images found")
    return [Candidate(i, folder, "test", "test", None) for i in ids]


def ingest_folder(store, folder, workers: int = 2, progress=None):
    """Register a folder's images as test images (``hpa ingest``'s stage; images already
    in the store are left alone). Returns the ingest report."""
    from ..data.ingest import run_ingest

    cands = folder_candidates(folder)
    return run_ingest(store, cands, data_root=Path(folder), workers=workers, progress=progress,
                      params={"root": str(Path(folder).resolve()), "layout": "predict --images"})


def select_images(store, split: str) -> np.ndarray:
    """bool ``[N]``: images whose cells are predicted (``split``: one of SPLITS, or several
    joined by commas, e.g. ``dev,test``)."""
    parts = [p.strip() for p in str(split).split(",") if p.strip()]
    bad = [p for p in parts if p not in SPLITS]
    if not parts or bad:
        raise HpaError(f"--split must be one of {', '.join(SPLITS)} (or several joined by commas), not {split!r}")
    df = store.images.df()
    if "all" in parts:
        return np.ones(len(df), dtype=bool)
    have = df["split"].to_numpy().astype(str)
    sel = np.zeros(len(df), dtype=bool)
    for part in parts:
        hit = have == part
        if not hit.any():
            raise HpaError(f"the store has no {part} images; pass --split all (or --images DIR with test images)")
        sel |= hit
    return sel


# ---------------------------------------------------------------------------- the stage


def run_predict(
    store,
    models=(),
    name: str = "default",
    image_model=None,
    blend: float = 0.0,
    tta=DEFAULT_TTA,
    negative: str = "max",
    shard: Shard = Shard(), batch_size: int = 16, device: str = "auto", workers: int = 2,  # the engine's
    progress=None,
    *,
    split: str = "test",
    segmenter: str | None = None,
    segmenter_kw: dict | None = None,
    crop_size: int | None = None,
    block: int = P.BLOCK,
    overwrite: bool = False,
) -> PredictSummary:
    """Predict every cell of the ``split`` images; see the module doc. ``image_model``: one
    image-level checkpoint, or several (a list, a glob, commas), whose probabilities are
    averaged (e.g. every fold's model)."""
    import torch

    from ..store.cells import CellTable

    store.require_writable()
    views = check_tta(tta)
    if negative not in NEGATIVE_RULES:
        raise HpaError(f"--negative must be one of {', '.join(NEGATIVE_RULES)}, not {negative!r}")
    if batch_size < 1:
        raise HpaError("--batch-size must be at least 1")
    if not 0.0 <= float(blend) <= 1.0:
        raise HpaError("--blend must be between 0 and 1")
    P.name_key(name)
    paths = expand_model_paths(models) if models else []
    if not paths and image_model is None:
        raise InputError("no models given; pass --models 'runs/cell/fold*/best.pt' (and/or --image-model)")
    if image_model is not None and paths and blend <= 0:
        raise HpaError("--image-model needs --blend > 0 (the image model's weight)")
    if image_model is None and blend > 0:
        raise HpaError("--blend needs --image-model")
    specs = [load_cell_model(p, crop_size) for p in paths]
    image_specs = [load_image_model(p) for p in expand_model_paths(image_model)] if image_model is not None else []
    if image_model is not None and not image_specs:
        raise InputError(f"--image-model {image_model}: no such checkpoint")
    image_spec = image_specs[0] if image_specs else None
    w_image = 1.0 if not specs else (float(blend) if image_spec else 0.0)
    dev = resolve_device(device)
    amp = use_amp(dev)

    summary = PredictSummary(name=name, device=str(dev))
    chosen = select_images(store, split)
    all_specs = specs + image_specs
    check_not_trained_on(store, all_specs, chosen)  # before any work: segmenting new images takes long
    summary.images_segmented = ensure_segmented(store, segmenter, segmenter_kw, shard, device, progress)

    cells = CellTable(store)
    n_cells = cells.n
    cell_image = cells.column("image")
    cell_id = cells.column("cell_id")
    cell_bbox = cells.column("bbox")
    selected = chosen[cell_image] if n_cells else np.zeros(0, dtype=bool)
    settings = {
        "models": [s.record() for s in specs],
        "image_model": (None if not image_specs else image_specs[0].record() if len(image_specs) == 1
                        else [s.record() for s in image_specs]),
        "blend": w_image, "views": list(views), "negative": negative, "split": split,
    }
    key, carried = P.prepare(store, name, n_cells, settings, block=block, overwrite=overwrite)
    params = {**settings, "batch_size": batch_size, "shard": str(shard)}
    work = BlockWork(store, key, n_cells, block)  # another block size: refused before the stage starts
    with begin_stage(store, key, "predict", params) as stage:
        summary.cells_total = n_cells
        summary.cells_selected = int(selected.sum())
        summary.blocks_total = work.n_blocks

        def carried_probs(r: int):
            return carried.get((int(cell_image[r]), int(cell_id[r]), *map(int, cell_bbox[r]))) if carried else None

        # models that take the same input share one crop unit per block
        groups: dict[tuple, list[ModelSpec]] = {}
        for s in all_specs:
            groups.setdefault(s.input_key, []).append(s)
        transforms = {k: (TileFill() if k[0] == "image" else CellInput(fit=k[3])) for k in groups}
        first_group = next(iter(groups))

        loop = BlockLoop(store.path, batch_size, workers, pin_memory=dev.type == "cuda")
        base: dict[int, np.ndarray] = {}  # block -> probs of carried/unselected rows
        need: dict[int, np.ndarray] = {}  # block -> rows to predict
        for b in work.todo(shard):
            probs = np.full((len(b), N_CLASSES), np.nan, np.float32)
            rows = []
            for r in range(b.start, b.stop):
                if not selected[r]:
                    continue
                old = carried_probs(r)
                if old is not None:
                    probs[r - b.start] = old
                    summary.cells_carried += 1
                else:
                    rows.append(r)
            if not rows:
                P.write_block(store, name, b.start, probs, cell_image[b.start:b.stop], cell_id[b.start:b.stop],
                              cell_bbox[b.start:b.stop])
                work.mark_done(b)
                summary.blocks_done += 1
                continue
            base[b.index] = probs
            need[b.index] = np.asarray(rows, dtype=np.int64)
            loop.add(b, [(k, need[b.index], grp[0].work_size, grp[0].size, transforms[k]) for k, grp in groups.items()])

        progress = progress or NullProgress()
        task = add_task(progress, f"predict {name}", loop.n_cells, unit="cell",
                        info=f"{len(specs)} cell model(s)"
                             f"{f' + {len(image_specs)} image model(s)' if image_specs else ''}, "
                             f"{len(views)} view(s), {dev}")
        micro = micro_batch_for(dev, batch_size)

        def new_buffer(b):
            return {"cell": np.zeros((len(b), N_CLASSES), np.float64),
                    "image": np.zeros((len(b), N_CLASSES), np.float64), "skipped": np.zeros(len(b), dtype=bool)}

        def on_batch(batch, buf):
            b, k = batch.block, batch.key
            if len(batch.skipped):
                buf["skipped"][batch.skipped - b.start] = True
                summary.cells_skipped += len(batch.skipped)
                progress.advance(task, len(batch.skipped))
            if len(batch.rows):
                with torch.inference_mode(), autocast(dev, amp):
                    x = to_input(batch.x, dev)
                    for spec in groups[k]:
                        p, _ = view_average(spec.model, x, views, micro)
                        buf[spec.kind][batch.rows - b.start] += p.cpu().numpy()
                if k == first_group:  # count each cell once (first input group)
                    progress.advance(task, len(batch.rows))
                    summary.cells_predicted += len(batch.rows)

        def write(b, buf):
            _write_block(store, name, b, buf, base.pop(b.index), need.pop(b.index), len(specs), w_image, negative,
                         cell_image, cell_id, cell_bbox, len(image_specs))
            summary.blocks_done += 1

        stage.summary = lambda: {**summary.as_dict(), "problems": list(loop.problems)}
        with on_device([s.model for s in all_specs], dev):
            loop.run(work, new_buffer, on_batch, write)
        summary.problems = list(loop.problems)
        close_run(stage, summary, work)
    return summary


def _write_block(store, name, b, buf, probs, rows, n_cell_models, w_image, negative,
                 cell_image, cell_id, cell_bbox, n_image_models: int = 1) -> None:
    local = rows - b.start
    ok = local[~buf["skipped"][local]]
    p = np.zeros((len(ok), N_CLASSES), np.float64)
    if n_cell_models:
        p += (1.0 - w_image) * buf["cell"][ok] / n_cell_models
    if w_image > 0:
        p += w_image * buf["image"][ok] / max(n_image_models, 1)
    probs[ok] = apply_negative(p.astype(np.float32), negative)
    P.write_block(store, name, b.start, probs, cell_image[b.start:b.stop], cell_id[b.start:b.stop],
                  cell_bbox[b.start:b.stop])


__all__ = ["NEGATIVE_RULES", "ModelSpec", "PredictSummary", "apply_negative", "check_not_trained_on",
           "ensure_segmented", "ingest_folder", "load_cell_model", "load_image_model", "run_predict"]
