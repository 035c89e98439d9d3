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

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..classes import N_CLASSES
from ..data.views import PSEUDOLABEL_VIEWS, check_views
from ..errors import HpaError, InputError
from ..infer.blocks import BlockLoop, close_run, on_device
from ..infer.device import resolve_device
from ..infer.forward import predict_views, use_amp
from ..infer.models import expand_model_paths, file_record
from ..progress import NullProgress, add_task
from ..store import Shard, begin_stage
from ..store.pseudolabels import BLOCK, prepare_run, run_key, write_block
from ..store.work import BlockWork
from ..summary import Summary


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
class PseudolabelSummary(Summary):
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


# ---------------------------------------------------------------------------- models


def load_fold_models(paths: list[str]) -> dict[int, FoldModel]:
    """One image model per fold, with the fold, image size and training record its
    checkpoint says (:func:`hpacli.models.checkpoint.load`)."""
    from ..models.checkpoint import load

    out: dict[int, FoldModel] = {}
    for p in paths:
        loaded = load(p, "cpu")
        info = loaded.info
        if info.fold is None or info.img_size is None:
            raise InputError(
                f"{p}: the checkpoint does not record its fold and image size; pass checkpoints written by "
                "`hpa train-image`"
            )
        fold = info.fold
        if fold in out:
            raise InputError(f"two models for fold {fold}: {out[fold].path} and {p}; pass one per fold")
        out[fold] = FoldModel(fold, str(Path(p).resolve()), info.img_size, loaded.model,
                              {**loaded.config, "folds_name": info.folds_name}, info.trained_images, info.train_folds)
    return dict(sorted(out.items()))


def embedding_dim_of(model, img_size: int) -> int:
    """The model's embedding size; a model whose embedding is only its logits is refused
    (de-noising builds its graph on the embeddings: the logits it would de-noise are no
    independent view of the cells)."""
    from ..models.build import check_outputs, describe

    if getattr(model, "hpa_embedding", None) == "logits":
        raise InputError(f"{describe(model)} has no embedding (no forward_with_embedding): pseudo-labels store an "
                         "embedding per cell for de-noising; give the backbone forward_with_embedding(x) -> "
                         "(logits, embedding) and an int embedding_dim")
    dim = getattr(model, "embedding_dim", None)
    if dim:
        return int(dim)
    return check_outputs(model, img_size)


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
    as trained on (``hpacli.models.trained_on``; a checkpoint without that record is refused).
    The second part is what catches folds redone after training."""
    from ..models.trained_on import check_no_leak, folds_identity, require_record
    from ..store.cells import CellTable

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


# ---------------------------------------------------------------------------- the stage


def run_pseudolabel(
    store,
    models,
    run: str = "default",
    shard: Shard = Shard(), batch_size: int = 16, device: str = "auto", workers: int = 2,  # the engine's
    views=PSEUDOLABEL_VIEWS,
    skip_duplicates: bool = True,
    folds: str = "default",
    block: int = BLOCK,
    overwrite: bool = False,
    progress=None,
) -> PseudolabelSummary:
    """Label every cell of every image in a fold that has a model; see the module doc."""
    from ..store.cells import CellTable

    store.require_writable()
    run_key(run)  # a bad run name is refused before anything is loaded
    views = check_views(views)
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
    amp = use_amp(dev)
    cells = CellTable(store)
    n_cells = cells.n
    cell_model, skipped = assign_models(store, fold_models, folds, skip_duplicates)

    dims = {f: embedding_dim_of(fm.model, fm.img_size) for f, fm in fold_models.items()}
    if len(set(dims.values())) > 1:
        raise InputError(f"the models' embeddings differ in size ({dims}); use models of one backbone")
    dim = next(iter(dims.values()))
    attrs = {
        "models": {str(f): file_record(fm.path) for f, fm in fold_models.items()},
        "views": list(views),
        "img_size": {str(f): fm.img_size for f, fm in fold_models.items()},
        "folds": folds,
        "skip_duplicates": bool(skip_duplicates),
    }
    key = prepare_run(store, run, n_cells, dim, attrs, block=block, overwrite=overwrite)
    params = {"models": [fm.path for fm in fold_models.values()], "views": list(views), "folds": folds,
              "skip_duplicates": skip_duplicates, "batch_size": batch_size, "shard": str(shard)}
    work = BlockWork(store, key, n_cells, block)  # another block size: refused before the stage starts
    with begin_stage(store, key, "pseudolabel", params) as stage:
        summary = PseudolabelSummary(
            run=run, cells_total=n_cells, cells_assigned=int((cell_model >= 0).sum()), blocks_total=work.n_blocks,
            skipped_duplicate_images=skipped, device=str(dev),
            folds_without_images=[f for f in fold_models if not (cell_model == f).any()],
        )
        # one crop unit per (block, fold) with cells to label; empty blocks are written at once
        loop = BlockLoop(store.path, batch_size, workers, pin_memory=dev.type == "cuda")
        for b in work.todo(shard):
            m = cell_model[b.start : b.stop]
            folds_here = sorted(set(m[m >= 0].tolist()))
            if not folds_here:
                write_block(store, run, b.start, np.full((len(b), N_CLASSES), np.nan, np.float32),
                            np.zeros((len(b), dim), np.float16), m)
                work.mark_done(b)
                summary.blocks_done += 1
                continue
            size = {f: fold_models[f].img_size for f in folds_here}
            loop.add(b, [(f, b.start + np.flatnonzero(m == f), size[f], size[f], None) for f in folds_here])
        progress = progress or NullProgress()
        task = add_task(progress, f"pseudolabel {run}", loop.n_cells, unit="cell",
                        info=f"{len(fold_models)} model(s), {len(views)} views, {dev}")

        def new_buffer(b):
            return {"probs": np.full((len(b), N_CLASSES), np.nan, np.float32),
                    "emb": np.zeros((len(b), dim), np.float32), "model": cell_model[b.start : b.stop].copy()}

        def on_batch(batch, buf):
            b = batch.block
            if len(batch.skipped):
                buf["model"][batch.skipped - b.start] = -1
                summary.cells_skipped += len(batch.skipped)
                progress.advance(task, len(batch.skipped))
            if len(batch.rows):
                probs, emb = predict_views(fold_models[batch.key].model, batch.x, views, dev, amp)
                buf["probs"][batch.rows - b.start] = probs
                buf["emb"][batch.rows - b.start] = emb
                progress.advance(task, len(batch.rows))
                summary.cells_labelled += len(batch.rows)

        def write(b, buf):
            write_block(store, run, b.start, buf["probs"], buf["emb"], buf["model"])
            summary.blocks_done += 1

        stage.summary = lambda: {**summary.as_dict(), "problems": list(loop.problems)}
        with on_device([fm.model for fm in fold_models.values()], dev):
            loop.run(work, new_buffer, on_batch, write)
        summary.problems = list(loop.problems)
        close_run(stage, summary, work)
    return summary


__all__ = ["PseudolabelSummary", "assign_models", "load_fold_models", "run_key", "run_pseudolabel"]
