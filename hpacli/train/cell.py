"""The cell-level training stage: ``run_train_cell(store, fold, labels_run, out, ...)``.

Composition (the facts file, "Cell-level model"):

- **Rows.** Cells of the image folds: training cells are those of images in folds ≥ 0
  other than ``fold``, validation cells those of ``fold`` (so duplicates, kept inside one
  image fold, never leak), and only cells that have a target.
- **Targets** (:func:`assemble_targets`): the stored soft pseudo-labels of ``labels_run``
  (``targets="soft"``) or the de-noised ``Y_opt`` (``targets="denoised"``, first 19
  columns); cells of an accepted ``selection`` get 1 for the selection's class (both
  from :mod:`hpacli.store.denoise`, run ``denoise_run``, by default ``labels_run``).
  ``targets="truth"`` is an analysis of synthetic data, asked for by name: the cells' true
  classes from the store's training truth (the upper bound of what the labels could teach).
- **Input** (:class:`CellCropDataset`): the masked bbox crop (other cells zeroed), tiled
  2× along the short side when it is under half the long side, zero-padded to a centred
  square and resized to ``img_size`` (``fit="resize"``); or cut from the image resized to
  ``work_size`` and padded without rescaling (``fit="pad"``: the image model's scale).
  Training draws one of the 8 dihedral flips per item from the item's seed.
- **Training** is the shared :class:`~hpacli.train.trainer.Trainer` (checkpoints, exact
  resume, AMP, torchrun, progress); the soft-target losses of :mod:`hpacli.train.losses`.
- **Validation** each epoch (:func:`cell_metrics`): focal loss on the soft targets
  (``val_loss``), accuracy in 0.05-wide bins of the soft label (``bin_acc``) and macro AP
  against the binarised targets (``map``): what real data allows. ``best.pt`` is kept by
  ``bin_acc`` (the seed's rule) unless another is named. Only when ``cell_map`` is named
  (``best_metric="cell_map"``, an analysis of synthetic data) is the store's cell truth
  read: the competition's cell-level mAP of the validation cells, computed by
  :func:`hpacli.evaluate.metric.evaluate_instances`, the code of ``hpa evaluate``.

Targets and rows live in :mod:`.cell_targets`, the dataset in :mod:`.cell_data`, the
metrics in :mod:`.metrics`. The crop geometry a later stage needs to feed the model is
stored with the checkpoint in ``train_config.extra.cell_input`` (plain data);
:func:`hpacli.models.checkpoint.read_info` reads it back (``.cell_input``) and
:func:`hpacli.models.checkpoint.load` rebuilds the model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import HpaError
from .cell_data import FITS, CellCropDataset, windowed_order
from .cell_targets import assemble_targets, cell_fold_rows
from .metrics import CellMapScorer, cell_metrics
from .trainer import TrainConfig, Trainer, TrainSummary

STAGE = "train-cell"
BEST_METRICS = ("bin_acc", "loss", "map", "cell_map")  # cell_map reads cell truth: an analysis, only by name
DEFAULT_BEST_METRIC = "bin_acc"  # the seed's: accuracy in 0.05 bins of the soft label


# ---------------------------------------------------------------------------- trainer
class CellTrainer(Trainer):
    """The shared trainer; with ``image_window`` W > 0 an epoch's order is: images shuffled,
    then cells shuffled within consecutive windows of W images (a batch then touches at most
    W images, so loader workers decode fewer images); 0 = all cells shuffled."""

    def __init__(self, *args, cell_images: np.ndarray | None = None, image_window: int = 0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.cell_images = cell_images
        self.image_window = int(image_window)

    def _epoch_items(self, epoch: int) -> list:
        if self.image_window <= 0 or self.cell_images is None:
            return super()._epoch_items(epoch)
        rng = np.random.default_rng([self.cfg.seed, epoch])
        perm = windowed_order(self.cell_images, self.image_window, rng)
        seeds = rng.integers(0, 2**62, size=len(perm))
        items = [(int(i), int(s)) for i, s in zip(perm, seeds)]
        if self.dist.active:
            per = len(items) // self.dist.world
            items = items[self.dist.rank :: self.dist.world][:per]
        keep = (len(items) // self.cfg.batch_size) * self.cfg.batch_size
        return items[:keep]


# ---------------------------------------------------------------------------- checkpoints
def cell_input_config(img_size: int, work_size: int | None, fit: str) -> dict:
    return {"size": int(img_size), "work_size": None if work_size is None else int(work_size), "fit": fit,
            "tile": "short-side-2x-under-half", "pad": "centred-square", "masked": "other-cells-zeroed"}


def _model_from_init(backbone: str | None, init_from, resume_from=None, options: dict | None = None) -> tuple:
    """(model, init report or None). Without ``backbone`` the architecture is the one of
    ``resume_from`` (a run's last.pt), else of an hpacli ``init_from`` checkpoint, else
    densenet121-hpa. Weights come from ``init_from`` unless resuming (the trainer loads
    last.pt)."""
    from ..models.checkpoint import init_from as load_init
    from ..models.checkpoint import model_from_checkpoint_or_new

    model = model_from_checkpoint_or_new(backbone, (resume_from, init_from), **(options or {}))
    report = load_init(model, init_from) if (init_from is not None and resume_from is None) else None
    return model, report


def _trained_on(store, train_rows, fold, folds_name, init_from) -> dict:
    """The images whose cells (and labels) the model trains on, plus its init's record."""
    from ..models.trained_on import make_record
    from ..store.cells import CellTable

    images = CellTable(store).column("image")[np.asarray(train_rows, dtype=np.int64)]
    return make_record(store, images, fold, folds_name, init_from)


# ---------------------------------------------------------------------------- the stage
def run_train_cell(
    store,
    fold: int,
    labels_run: str,
    out: str | Path,
    *,
    selection: str | None = None,
    targets: str = "soft",
    denoise_run: str | None = None,
    mask_labels: bool = False,
    mask_keep=(),
    rescale_in_image: bool = False,
    backbone: str | None = None,
    backbone_options: dict | None = None,
    init_from: str | Path | None = None,
    img_size: int = 512,
    work_size: int | None = None,
    fit: str = "resize",
    image_window: int = 0,
    cache_images: int = 4,
    folds_name: str = "default",
    max_truth_images: int = 500,
    val_cells: int = 0,
    progress=None,
    log=None,
    callbacks=None,
    **train_kwargs,
) -> TrainSummary:
    """Train the cell-level model on ``fold``'s training cells, validate on its validation
    cells; checkpoints and ``log.csv`` in ``out``. ``train_kwargs`` are :class:`TrainConfig`
    fields (defaults here: the seed's batch 32, accumulation 4, adam10 × 4, 5 epochs,
    ``soft-focal-symmetric-lovasz-hardlog``; ``best_metric`` ``bin_acc``, the seed's rule;
    ``cell_map``, which reads the store's cell truth, only when named). ``backbone_options``
    go to a new ``backbone``'s factory."""
    from ..models.build import check_outputs

    log = log or (lambda msg: None)
    if backbone_options and backbone is None:
        raise HpaError("backbone options need --backbone (a model taken from --init-from keeps its own)")
    if img_size < 16:
        raise HpaError("--img-size must be at least 16")
    if work_size is not None and work_size < 16:
        raise HpaError("--work-size must be at least 16")
    if fit not in FITS:
        raise HpaError(f"--fit must be one of {', '.join(FITS)}, not {fit!r}")
    if init_from is not None and not Path(init_from).exists():
        raise HpaError(f"--init-from {init_from} not found")
    best_metric = train_kwargs.get("best_metric", DEFAULT_BEST_METRIC)
    if best_metric not in BEST_METRICS:
        raise HpaError(f"--best-metric must be one of {', '.join(BEST_METRICS)}, not {best_metric!r}")
    mask_keep = tuple(sorted({int(c) for c in mask_keep}))
    tg = assemble_targets(store, labels_run, selection, targets, denoise_run, mask_labels, mask_keep,
                          rescale_in_image)
    train_rows, val_rows = cell_fold_rows(store, fold, tg.has, folds_name)
    if val_cells < 0:
        raise HpaError("--val-cells must be 0 (all) or more")
    if 0 < val_cells < len(val_rows):  # a fixed sample (same for every epoch and every resume) saves validation time
        pick = np.random.default_rng([int(train_kwargs.get("seed", 0)), int(fold)]).choice(
            len(val_rows), size=int(val_cells), replace=False)
        val_rows = np.sort(np.asarray(val_rows)[pick])
    if len(train_rows) == 0:
        raise HpaError(f"fold {fold} leaves no training cells with {targets} targets of {labels_run!r}")
    if tg.n_selected_skipped:
        log(f"{tg.n_selected_skipped} selected cell(s) have no pseudo-label and stay out")
    train_ds = CellCropDataset(store.path, train_rows, tg.y[train_rows], img_size, work_size=work_size, fit=fit,
                               augment=True, cache_images=cache_images)
    val_ds = CellCropDataset(store.path, val_rows, tg.y[val_rows], img_size, work_size=work_size, fit=fit,
                             augment=False, cache_images=cache_images)
    log(
        f"{len(train_rows)} training and {len(val_rows)} validation cells at {img_size}px ({tg.source}"
        + (f"; {tg.n_selected} selected cell(s) set to 1" if tg.n_selected else "") + ")"
    )
    scorer = None
    if best_metric == "cell_map":  # an analysis asked for by name: the only place a run reads cell truth
        scorer = CellMapScorer(store, val_rows, max_images=max_truth_images, log=log) if len(val_rows) else None
        if not (scorer is not None and scorer.available):
            raise HpaError("--best-metric cell_map needs cell-level truth for the validation images (synthetic data)")
    defaults = {"epochs": 5, "batch_size": 32, "accum": 4, "lr_mult": 4.0, "schedule": "adam10",
                "loss": "soft-focal-symmetric-lovasz-hardlog", "val_loss": "soft-focal", "best_metric": best_metric}
    kwargs = {**defaults, **train_kwargs, "best_metric": best_metric}
    cfg = TrainConfig(out=str(out), **kwargs)
    resuming = cfg.resume and (Path(out) / "last.pt").exists()
    torch.manual_seed(cfg.seed)  # new weights (a new head) the same in every process for one --seed
    model, report = _model_from_init(backbone, init_from, Path(out) / "last.pt" if resuming else None,
                                     backbone_options)
    if report is not None:
        log(report.describe())
    check_outputs(model, img_size)
    from torch import nn

    if cfg.batch_size < 2 and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise HpaError("the model has batch normalisation: --batch-size must be at least 2 (use --accum for more)")
    cfg.extra = {
        "stage": STAGE,
        "store": str(store.path),
        "fold": int(fold),
        "labels": labels_run,
        "selection": selection,
        "targets": targets,
        "init_from": str(init_from) if init_from else None,
        "img_size": int(img_size),
        "cell_input": cell_input_config(img_size, work_size, fit),
        "image_window": int(image_window),
        "n_train": int(len(train_rows)),
        "n_val": int(len(val_rows)),
        "val_cells": int(val_cells),
        "n_selected": int(tg.n_selected),
        "mask_labels": bool(mask_labels),
        "mask_keep": list(mask_keep),
        "rescale_in_image": bool(rescale_in_image),
        "best_metric": best_metric,
        "folds_name": folds_name,
        # what the out-of-fold guard of predict checks (hpacli.models.trained_on)
        "trained_on": _trained_on(store, train_rows, fold, folds_name, init_from),
    }
    trainer = CellTrainer(
        model, train_ds, val_ds, cfg, metrics_fn=cell_metrics(cfg.val_loss, scorer), progress=progress, log=log,
        callbacks=callbacks, cell_images=train_ds.image, image_window=image_window,
    )
    summary = trainer.fit()
    summary.n_train, summary.n_val, summary.n_selected = int(len(train_rows)), int(len(val_rows)), int(tg.n_selected)
    summary.cell_map_available = bool(scorer is not None and scorer.available)
    summary.read_cell_truth = bool(scorer is not None or targets == "truth")
    return summary
