"""``hpa pseudolabel``: out-of-fold cell pseudo-labels and embeddings from the image-level models.

Each fold's image model labels the cells of its own validation images (the images of
that fold), so no cell is ever labelled by a model that saw its image in training. A
cell's input is its masked bbox crop (other cells zeroed) at the image model's scale,
tiled to fill the model's input square (``hpacli.data.crops``); the sigmoid outputs and
the embeddings are averaged over the test-time views (default identity, vertical flip,
horizontal flip, 90° rotation). Results go to ``labels/<run>`` (``hpacli.store.pseudolabels``).

Work is split in blocks of cells (BlockWork): ``--shard i/n`` takes every n-th block,
a killed run redoes only unfinished blocks. Loader workers cut the crops; a batch holds
cells of several images; a GPU runs in AMP (float16 autocast).
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..classes import N_CLASSES
from ..data.crops import (
    PSEUDOLABEL_VIEWS,
    CellBatches,
    CropUnit,
    TileFill,
    apply_view,
    check_views,
    make_loader,
)
from ..errors import HpaError, InputError
from ..progress import NullProgress, add_task
from ..store import Shard, begin_stage
from ..store.pseudolabels import BLOCK, prepare_run, run_key, write_block
from ..store.work import BlockWork

MAX_PROBLEMS = 1000


@dataclass
class FoldModel:
    fold: int
    path: str
    img_size: int
    model: object = None
    config: dict = field(default_factory=dict)
    train_images: list | None = None  # image ids the model trained on, when the checkpoint says
    train_folds: dict | None = None  # the fold set it was trained with ({"name", "sha256"}), when it says


@dataclass
class PseudolabelSummary:
    run: str
    cells_total: int = 0
    cells_assigned: int = 0  # cells with an out-of-fold model (whole store)
    cells_labelled: int = 0  # labelled by this call
    blocks_done: int = 0  # by this call
    blocks_total: int = 0
    complete: bool = False
    skipped_duplicate_images: int = 0
    folds_without_images: list[int] = field(default_factory=list)
    cells_skipped: int = 0  # cells of unreadable images (reported in problems)
    problems: list[str] = field(default_factory=list)
    device: str = "cpu"

    def as_dict(self) -> dict:
        return dict(self.__dict__)


# ---------------------------------------------------------------------------- models


def split_model_args(models) -> list[str]:
    """``--models`` values → one glob or path each: a value may hold several separated by
    commas (``'a.pt,b.pt'``), the option may be repeated, or both. A value that is an
    existing file as a whole is kept whole (a path with a comma in its name)."""
    if isinstance(models, (str, os.PathLike)):
        models = [models]
    out: list[str] = []
    for m in models:
        m = str(m).strip()
        if "," in m and not Path(m).exists():
            out.extend(part.strip() for part in m.split(",") if part.strip())
        elif m:
            out.append(m)
    return out


def expand_model_paths(models) -> list[str]:
    """Globs and paths (a list and/or strings with commas) → sorted existing files."""
    out: list[str] = []
    for m in split_model_args(models):
        hits = sorted(glob.glob(m)) if any(ch in m for ch in "*?[") else ([m] if Path(m).exists() else [])
        if not hits:
            raise InputError(f"no model checkpoint matches {m!r}")
        out.extend(hits)
    seen: set[str] = set()
    return [p for p in out if not (p in seen or seen.add(p))]


def _load_model(path: str, device: str = "cpu"):
    from ..train.checkpoint import load_model

    return load_model(path, device=device)


def _checkpoint_meta(path: str, config: dict) -> dict:
    """fold, img_size, folds name (and the training image ids if recorded) from the
    config that load_model returned or else from the checkpoint's training config
    (``train_config`` and its ``extra`` dict, as ``hpa train-image`` writes them)."""
    from ..train.checkpoint import read_checkpoint
    from ..train.trained_on import images_of

    keys = ("fold", "img_size", "folds_name")
    meta = {k: config.get(k) for k in keys}
    obj = read_checkpoint(path)
    obj = obj if isinstance(obj, dict) else {}
    tc = obj.get("train_config") if isinstance(obj.get("train_config"), dict) else {}
    for sub in (tc, tc.get("extra"), obj.get("config"), obj.get("model_config")):
        if isinstance(sub, dict):
            for k in keys:
                if meta[k] is None and sub.get(k) is not None:
                    meta[k] = sub[k]
    meta["train_images"] = images_of(tc.get("extra"))
    rec = (tc.get("extra") or {}).get("trained_on") if isinstance(tc.get("extra"), dict) else None
    meta["train_folds"] = rec.get("folds") if isinstance(rec, dict) and isinstance(rec.get("folds"), dict) else None
    if meta["fold"] is None or meta["img_size"] is None:
        raise InputError(
            f"{path}: the checkpoint does not record its fold and image size; pass checkpoints written by "
            "`hpa train-image`"
        )
    return meta


def load_fold_models(paths: list[str]) -> dict[int, FoldModel]:
    out: dict[int, FoldModel] = {}
    for p in paths:
        model, config = _load_model(p, "cpu")
        meta = _checkpoint_meta(p, config)
        fold = int(meta["fold"])
        if fold in out:
            raise InputError(f"two models for fold {fold}: {out[fold].path} and {p}; pass one per fold")
        out[fold] = FoldModel(fold, str(Path(p).resolve()), int(meta["img_size"]), model, config,
                              meta["train_images"], meta["train_folds"])
        out[fold].config = {**config, "folds_name": meta.get("folds_name")}
    return dict(sorted(out.items()))


def _model_record(fm: FoldModel) -> dict:
    st = os.stat(fm.path)
    return {"path": fm.path, "bytes": int(st.st_size), "mtime": int(st.st_mtime)}


def embedding_dim_of(model, img_size: int) -> int:
    dim = getattr(model, "embedding_dim", None)
    if dim:
        return int(dim)
    import torch

    with torch.inference_mode():
        _, emb = model.forward_with_embedding(torch.zeros(1, 4, img_size, img_size))
    return int(emb.shape[1])


def resolve_device(device: str = "auto"):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise HpaError(f"--device {device!r} is not a torch device (auto, cpu, cuda, cuda:1, ...)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise HpaError(f"--device {device}: no CUDA GPU is available here; use --device cpu")
    return dev


# ---------------------------------------------------------------------------- assignment


def assign_models(store, fold_models: dict[int, FoldModel], folds_name: str = "default",
                  skip_duplicates: bool = True) -> tuple[np.ndarray, int]:
    """int8 ``[C]``: the fold whose model labels each cell (-1: none), and the number of
    duplicate images skipped. Raises if any cell would get a model that trained on its
    image."""
    from ..store.cells import CellTable
    from ..store.folds import read_image_folds

    cells = CellTable(store)
    image_fold = read_image_folds(store, folds_name).astype(np.int64)
    use = np.isin(image_fold, list(fold_models))
    skipped = 0
    if skip_duplicates:
        from ..store import dedup

        if dedup.has_groups(store):
            group = dedup.read_groups(store, require_all=False)
            keep = np.zeros_like(use)
            first: dict[int, int] = {}
            for i in np.flatnonzero(image_fold >= 0):  # first member of each group that is in a fold
                first.setdefault(int(group[i]), int(i))
            keep[list(first.values())] = True
            skipped = int((use & ~keep).sum())
            use &= keep
    image_model = np.where(use, image_fold, -1).astype(np.int8)
    cell_image = cells.column("image")
    cell_model = image_model[cell_image] if len(cell_image) else np.zeros(0, dtype=np.int8)
    check_out_of_fold(store, cell_model, fold_models, image_fold, folds_name)
    return cell_model, skipped


def check_out_of_fold(store, cell_model: np.ndarray, fold_models: dict[int, FoldModel], image_fold: np.ndarray,
                      folds_name: str = "default"):
    """The leak check: a cell's model must be the model of its image's fold (the fold it
    was *validated* on), and its image must not be among the images the checkpoint records
    as trained on (``hpacli.train.trained_on``; a checkpoint without that record is refused).
    The second part is what catches folds redone after training."""
    from ..store.cells import CellTable
    from ..train.trained_on import check_no_leak, folds_identity, require_record

    cell_image = CellTable(store).column("image")
    sel = cell_model >= 0
    bad = sel & (image_fold[cell_image] != cell_model)
    if bad.any():
        raise HpaError(f"{int(bad.sum())} cell(s) would be labelled by a model of another fold (leak); not run")
    ids = store.images.ids()
    current = folds_identity(store, folds_name)
    for f, fm in fold_models.items():
        trained = require_record(fm.path, fm.train_images)
        mine = np.unique(cell_image[cell_model == f])
        was = fm.train_folds or {}
        why = (f"The folds {folds_name!r} changed after it was trained (hpa fold ran again)"
               if was.get("sha256") and was.get("sha256") != current["sha256"]
               else f"Were the folds {folds_name!r} redone after training?")
        check_no_leak(
            fm.path, trained, ids[mine].tolist(), f"label as fold {f}'s validation images",
            f"{why}: train the image models again on the current folds (hpa train-image --fold F), or make "
            "the folds they were trained with again (same hpa fold seed and options)",
        )


# ---------------------------------------------------------------------------- inference


# on CPU, large batches of big inputs fall out of the caches: forward in small pieces
CPU_MICRO_BATCH = 4


def predict_views(model, x, views, device, amp: bool, micro_batch: int | None = None):
    """Sigmoid and embedding averaged over ``views`` for uint8 ``x`` [B, 4, S, S]."""
    import torch

    if micro_batch is None:
        micro_batch = CPU_MICRO_BATCH if device.type == "cpu" else len(x)
    micro_batch = max(1, int(micro_batch))
    x = x.to(device, non_blocking=True).float().div_(255.0)
    probs = torch.zeros((len(x), N_CLASSES), device=device)
    emb = None
    ctx = torch.autocast(device_type=device.type, dtype=torch.float16) if amp else _null()
    with torch.inference_mode(), ctx:
        for v in views:
            xv = apply_view(x, v).contiguous()
            for a in range(0, len(x), micro_batch):
                logits, e = model.forward_with_embedding(xv[a : a + micro_batch])
                probs[a : a + micro_batch] += torch.sigmoid(logits.float())
                if emb is None:
                    emb = torch.zeros((len(x), e.shape[1]), device=device)
                emb[a : a + micro_batch] += e.float()
    n = float(len(views))
    return (probs / n).cpu().numpy(), (emb / n).cpu().numpy()


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# ---------------------------------------------------------------------------- the stage


def run_pseudolabel(
    store,
    models,
    run: str = "default",
    shard: Shard = Shard(),
    batch_size: int = 16,
    device: str = "auto",
    workers: int = 2,
    views=PSEUDOLABEL_VIEWS,
    skip_duplicates: bool = True,
    folds: str = "default",
    block: int = BLOCK,
    overwrite: bool = False,
    progress=None,
) -> PseudolabelSummary:
    """Label every cell of every image in a fold that has a model; see the module doc."""
    import torch

    from ..store.cells import CellTable

    store.require_writable()
    run_key(run)  # a bad run name is refused before anything is loaded
    views = check_views(tuple(views))
    if batch_size < 1:
        raise HpaError("--batch-size must be at least 1")
    paths = expand_model_paths(models)
    if not paths:
        raise InputError("no models given; pass --models 'runs/image/fold*/best.pt'")
    fold_models = load_fold_models(paths)
    for fm in fold_models.values():
        trained_on = fm.config.get("folds_name")
        if trained_on and trained_on != folds:
            raise HpaError(
                f"{fm.path} was trained on the folds {trained_on!r}, not {folds!r}: its validation images "
                f"would not match; pass --folds {trained_on}"
            )
    dev = resolve_device(device)
    amp = dev.type == "cuda"
    cells = CellTable(store)
    n_cells = cells.n
    cell_model, skipped = assign_models(store, fold_models, folds, skip_duplicates)

    dims = {f: embedding_dim_of(fm.model, fm.img_size) for f, fm in fold_models.items()}
    if len(set(dims.values())) > 1:
        raise InputError(f"the models' embeddings differ in size ({dims}); use models of one backbone")
    dim = next(iter(dims.values()))
    attrs = {
        "cells_table_id": cells.table_id,
        "models": {str(f): _model_record(fm) for f, fm in fold_models.items()},
        "views": list(views),
        "img_size": {str(f): fm.img_size for f, fm in fold_models.items()},
        "folds": folds,
        "skip_duplicates": bool(skip_duplicates),
    }
    key = prepare_run(store, run, n_cells, dim, attrs, block=block, overwrite=overwrite)
    params = {"models": [fm.path for fm in fold_models.values()], "views": list(views), "folds": folds,
              "skip_duplicates": skip_duplicates, "batch_size": batch_size, "shard": str(shard)}
    stage = begin_stage(store, key, "pseudolabel", params)
    work = BlockWork(store, key, n_cells, block)
    todo = work.todo(shard)

    summary = PseudolabelSummary(
        run=run, cells_total=n_cells, cells_assigned=int((cell_model >= 0).sum()), blocks_total=work.n_blocks,
        skipped_duplicate_images=skipped, device=str(dev),
        folds_without_images=[f for f in fold_models if not (cell_model == f).any()],
    )
    # units: one per (block, fold) with cells to label; empty blocks are written at once
    units: list[CropUnit] = []
    left: dict[int, int] = {}
    for b in todo:
        m = cell_model[b.start : b.stop]
        folds_here = sorted(set(m[m >= 0].tolist()))
        if not folds_here:
            write_block(store, run, b.start, np.full((len(b), N_CLASSES), np.nan, np.float32),
                        np.zeros((len(b), dim), np.float16), m)
            work.mark_done(b)
            summary.blocks_done += 1
            continue
        left[b.index] = len(folds_here)
        for f in folds_here:
            rows = b.start + np.flatnonzero(m == f)
            size = fold_models[f].img_size
            units.append(CropUnit(rows, work_size=size, out_size=size, tag=(b, f)))
    progress = progress or NullProgress()
    task = add_task(progress, f"pseudolabel {run}", sum(len(u.rows) for u in units), unit="cell",
                    info=f"{len(fold_models)} model(s), {len(views)} views, {dev}")
    for fm in fold_models.values():
        fm.model.to(dev).eval()
    pending: dict[int, dict] = {}
    try:
        if units:
            ds = CellBatches(store.path, units, TileFill(), batch_size)
            loader = make_loader(ds, workers=min(workers, len(units)), pin_memory=dev.type == "cuda")
            for batch in loader:
                unit = units[batch["unit"]]
                b, f = unit.tag
                buf = pending.get(b.index)
                if buf is None:
                    m = cell_model[b.start : b.stop]
                    buf = pending[b.index] = {
                        "probs": np.full((len(b), N_CLASSES), np.nan, np.float32),
                        "emb": np.zeros((len(b), dim), np.float32),
                        "model": m.copy(),
                    }
                rows = batch["rows"].numpy()
                skipped = batch["skipped"].numpy()
                if len(skipped):
                    buf["model"][skipped - b.start] = -1
                    summary.cells_skipped += len(skipped)
                    progress.advance(task, len(skipped))
                for problem in batch["problems"]:
                    if len(summary.problems) < MAX_PROBLEMS and problem not in summary.problems:
                        summary.problems.append(problem)
                if len(rows):
                    probs, emb = predict_views(fold_models[f].model, batch["x"], views, dev, amp)
                    buf["probs"][rows - b.start] = probs
                    buf["emb"][rows - b.start] = emb
                    progress.advance(task, len(rows))
                    summary.cells_labelled += len(rows)
                if batch["end"]:
                    left[b.index] -= 1
                    if left[b.index] == 0:
                        write_block(store, run, b.start, buf["probs"], buf["emb"], buf["model"])
                        work.mark_done(b)
                        summary.blocks_done += 1
                        del pending[b.index]
    except BaseException:
        stage.finish("failed", **summary.as_dict())
        raise
    finally:
        for fm in fold_models.values():
            fm.model.to("cpu")
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    summary.complete = work.all_done()
    stage.finish("done" if summary.complete else "running", **summary.as_dict())
    return summary


__all__ = ["PseudolabelSummary", "assign_models", "expand_model_paths", "split_model_args", "predict_views", "run_key", "run_pseudolabel"]
