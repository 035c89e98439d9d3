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

The crop geometry a later stage needs to feed the model is stored with the checkpoint in
``train_config.extra.cell_input`` (plain data); :func:`read_cell_input` reads it back and
``hpacli.train.checkpoint.load_model`` rebuilds the model.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..classes import N_CLASSES
from ..errors import HpaError, StoreError
from .trainer import TrainConfig, Trainer

TARGET_KINDS = ("soft", "denoised", "truth")
BEST_METRICS = ("bin_acc", "loss", "map", "cell_map")  # cell_map reads cell truth: an analysis, only by name
DEFAULT_BEST_METRIC = "bin_acc"  # the seed's: accuracy in 0.05 bins of the soft label
FITS = ("resize", "pad")
BIN_WIDTH = 0.05
STAGE = "train-cell"


# ---------------------------------------------------------------------------- selections / Y_opt
def _check_denoise_current(store, run: str) -> dict:
    from ..store import denoise as D
    from ..store.cells import CellTable

    info = D.info(store, run)
    made_for = info.get("cells_table_id")
    if made_for is not None and made_for != CellTable(store).table_id:
        raise StoreError(
            f"de-noised labels of {run!r} belong to an older cells table (segmentation was redone); "
            f"run `hpa denoise --run {run} --overwrite`"
        )
    return info


def read_selection(store, name: str, run: str) -> tuple[np.ndarray, np.ndarray]:
    """(cell rows int64, classes int64) of the accepted selection ``name`` of the
    de-noising run ``run`` (``hpa select-mitotic``; :mod:`hpacli.store.denoise`)."""
    from ..store import denoise as D

    _check_denoise_current(store, run)
    rows, attrs = D.read_selection(store, run, name)
    if not attrs.get("accepted"):
        raise HpaError(
            f"selection {name!r} of {run!r} is not accepted yet: review its CSV and import it with "
            f"`hpa select-mitotic --run {run} --name {name} --accept REVIEWED.csv`"
        )
    if "class" not in attrs:
        raise StoreError(f"selection {name!r} of {run!r} names no class")
    rows = np.asarray(rows, dtype=np.int64)
    return rows, np.full(len(rows), int(attrs["class"]), dtype=np.int64)


def read_denoised(store, run: str) -> np.ndarray:
    """float32 ``[C, 20]`` Y_opt of the de-noising run ``run`` (rows aligned with the cells
    table; NaN rows = not de-noised)."""
    from ..store import denoise as D

    _check_denoise_current(store, run)
    return np.asarray(D.read(store, run)["y_opt"], dtype=np.float32)


# ---------------------------------------------------------------------------- targets
@dataclass
class CellTargets:
    """Targets of every cell of the table: ``y`` float32 ``[C, 19]`` and ``has`` bool
    ``[C]`` (cells with a target); ``n_selected`` cells got 1 from the selection
    (``n_selected_skipped`` had no pseudo-label and stay out)."""

    y: np.ndarray
    has: np.ndarray
    source: str
    n_selected: int = 0
    n_selected_skipped: int = 0


def combine_targets(base: np.ndarray, has: np.ndarray, sel_rows=None, sel_classes=None,
                    image_labels: np.ndarray | None = None) -> CellTargets:
    """Pure part of :func:`assemble_targets`: copy ``base`` ``[C, ≥19]`` (first 19 columns,
    NaN rows where ``has`` is False); with ``image_labels`` (``[C, 19]`` multi-hot, each
    cell's image labels) zero the classes its image is not labelled with; then set
    ``y[row, class] = 1`` for the selected rows that have a target."""
    base = np.asarray(base, dtype=np.float32)
    if base.ndim != 2 or base.shape[1] < N_CLASSES:
        raise StoreError(f"targets must be [cells, {N_CLASSES}+], got shape {base.shape}")
    y = np.array(base[:, :N_CLASSES], dtype=np.float32, copy=True)
    has = np.asarray(has, dtype=bool) & np.isfinite(y).all(axis=1)
    y[~has] = np.nan
    if not np.all((y[has] >= 0) & (y[has] <= 1)):
        raise StoreError("targets outside 0..1: these are not probabilities")
    if image_labels is not None:
        mask = np.asarray(image_labels, dtype=np.float32)
        if mask.shape != y.shape:
            raise StoreError(f"image labels have shape {mask.shape}, targets {y.shape}")
        y[has] *= mask[has]
    n_sel = skipped = 0
    if sel_rows is not None and len(sel_rows):
        rows = np.asarray(sel_rows, dtype=np.int64)
        classes = np.broadcast_to(np.asarray(sel_classes, dtype=np.int64), rows.shape)
        if rows.min() < 0 or rows.max() >= len(y):
            raise StoreError(f"selection rows outside the cells table (0..{len(y) - 1})")
        if classes.min() < 0 or classes.max() >= N_CLASSES:
            raise StoreError(f"selection classes outside 0..{N_CLASSES - 1}")
        ok = has[rows]
        y[rows[ok], classes[ok]] = 1.0
        n_sel, skipped = int(len(np.unique(rows[ok]))), int((~ok).sum())
    return CellTargets(y, has, "", n_sel, skipped)


def assemble_targets(
    store, labels_run: str, selection: str | None = None, targets: str = "soft", denoise_run: str | None = None,
    mask_labels: bool = False,
) -> CellTargets:
    """The cell targets of the store: see :func:`combine_targets`. ``mask_labels`` keeps
    only the classes of each cell's image labels (weak labels miss classes but rarely add
    wrong ones, so this removes the image model's false positives from the targets)."""
    from ..store import pseudolabels as PL

    if targets not in TARGET_KINDS:
        raise HpaError(f"--targets must be one of {', '.join(TARGET_KINDS)}, not {targets!r}")
    PL.check_current(store, labels_run)
    if targets == "truth":
        return truth_targets(store, PL.labelled_mask(store, labels_run))
    if targets == "soft":
        base = PL.read_probs(store, labels_run)
        has = PL.labelled_mask(store, labels_run)
    else:
        base = read_denoised(store, denoise_run or labels_run)
        n = PL.labelled_mask(store, labels_run).shape[0]
        if base.shape[0] != n:
            raise StoreError(f"Y_opt has {base.shape[0]} rows but the cells table {n}; de-noise again")
        has = np.isfinite(base[:, :N_CLASSES]).all(axis=1) if base.ndim == 2 else np.zeros(0, bool)
    rows = classes = None
    if selection:
        rows, classes = read_selection(store, selection, denoise_run or labels_run)
    image_labels = None
    if mask_labels:
        from ..store.cells import CellTable

        image_labels = store.images.labels()[CellTable(store).column("image").astype(np.int64)]
    out = combine_targets(base, has, rows, classes, image_labels)
    out.source = (f"{targets} targets of {labels_run!r}" + (" masked by image labels" if mask_labels else "")
                  + (f" + selection {selection!r}" if selection else ""))
    return out


def truth_targets(store, labelled: np.ndarray) -> CellTargets:
    """Targets from the cell truth of the store's training images (synthetic data only): each
    pseudo-labelled cell matched to a true cell (IoU ≥ 0.5) gets that cell's classes, 0/1;
    unmatched cells stay out. An upper bound for the analysis, never a real-data rule."""
    from ..evaluate.celltruth import cell_truth
    from ..store.truth import read_has

    if not read_has(store).any():
        raise HpaError("--targets truth needs cell-level truth in the store (a dataset made by `hpa synth`)")
    truth, matched = cell_truth(store)
    has = np.asarray(labelled, dtype=bool) & matched
    y = truth.astype(np.float32)
    y[~has] = np.nan
    return CellTargets(y, has, "true cell classes (analysis upper bound)")


def cell_fold_rows(store, fold: int, has: np.ndarray, folds_name: str = "default") -> tuple[np.ndarray, np.ndarray]:
    """Training and validation rows of the cells table for ``fold`` (cells follow their
    image's fold; only cells with a target)."""
    from ..store.cells import CellTable
    from ..store.folds import read_image_folds

    cells = CellTable(store)
    image = cells.column("image").astype(np.int64)
    folds = read_image_folds(store, folds_name)
    k = int(folds.max()) + 1 if (folds >= 0).any() else 0
    if k == 0 or not 0 <= fold < k:
        raise HpaError(f"--fold {fold} is out of range: the store's folds are 0..{k - 1}")
    cf = folds[image] if len(image) else np.zeros(0, np.int8)
    has = np.asarray(has, dtype=bool)
    if len(has) != len(cf):
        raise StoreError(f"targets have {len(has)} rows but the cells table {len(cf)}")
    train = has & (cf >= 0) & (cf != fold)
    val = has & (cf == fold)
    return np.flatnonzero(train), np.flatnonzero(val)


# ---------------------------------------------------------------------------- dataset
class CellCropDataset(Dataset):
    """Cell-model inputs of cells-table ``rows`` (map-style, items ``(index, aug_seed)``).

    Each item: uint8 ``[4, S, S]`` = :class:`hpacli.data.crops.CellInput` of the cell's
    masked crop, cut from its image at ``work_size`` (None: original resolution; pixels from
    the cache when it is large enough, else the PNGs), and its float32 target. A small
    per-process LRU of decoded images (``cache_images``) bounds memory; rows grouped by
    image (validation, or ``image_window`` ordering) load each image once.
    """

    def __init__(
        self, store_path, rows, targets, img_size: int, *, work_size: int | None = None, fit: str = "resize",
        augment: bool = True, cache_images: int = 4,
    ) -> None:
        from ..data.crops import CellInput
        from ..store import open_store
        from ..store.cells import CellTable

        if fit not in FITS:
            raise HpaError(f"--fit must be one of {', '.join(FITS)}, not {fit!r}")
        self.store_path = str(store_path)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.targets = np.asarray(targets, dtype=np.float32)
        if len(self.rows) != len(self.targets):
            raise ValueError("rows and targets differ in length")
        self.img_size = int(img_size)
        self.work_size = None if work_size is None else int(work_size)
        self.augment = augment
        self.transform = CellInput(fit=fit, augment=augment)
        self._plain_transform = CellInput(fit=fit, augment=False)
        self.cache_images = max(1, int(cache_images))
        st = open_store(self.store_path, "r")
        cells = CellTable(st)
        df = st.images.df()
        self.image = cells.column("image")[self.rows].astype(np.int64)
        self.cell_id = cells.column("cell_id")[self.rows].astype(np.int64)
        self.bbox = cells.column("bbox")[self.rows].astype(np.int64)
        self.height = df["height"].to_numpy().astype(np.int64)
        self.width = df["width"].to_numpy().astype(np.int64)
        self.cache_size = st.images.cache_size
        self._store = None
        self._pid = None
        self._images: OrderedDict = OrderedDict()
        self.loads = 0  # images decoded by this process (benchmarks)

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_store"], state["_pid"], state["_images"] = None, None, OrderedDict()
        return state

    def _open(self):
        if self._store is None or self._pid != os.getpid():
            from ..store import open_store

            self._store = open_store(self.store_path, "r")
            self._pid = os.getpid()
            self._images = OrderedDict()
        return self._store

    def image_arrays(self, img: int) -> tuple[np.ndarray, np.ndarray]:
        """(pixels ``[4, h, w]``, labels ``[h, w]``) of image ``img`` at working resolution."""
        from ..data.crops import load_image

        store = self._open()
        hit = self._images.get(img)
        if hit is not None:
            self._images.move_to_end(img)
            return hit
        pair = load_image(store, img, self.work_size, int(self.height[img]), int(self.width[img]), self.cache_size)
        self.loads += 1
        self._images[img] = pair
        while len(self._images) > self.cache_images:
            self._images.popitem(last=False)
        return pair

    def crop(self, i: int, rng: np.random.Generator | None = None) -> np.ndarray:
        from ..data.crops import masked_crop, scale_bbox

        img = int(self.image[i])
        pixels, labels = self.image_arrays(img)
        box = scale_bbox(self.bbox[i], (int(self.height[img]), int(self.width[img])), labels.shape)
        crop = masked_crop(pixels, labels, int(self.cell_id[i]), box)
        if rng is None:  # evaluation: no flip
            return self._plain_transform(crop, self.img_size, None)
        return self.transform(crop, self.img_size, rng)

    def __getitem__(self, item):
        if isinstance(item, (tuple, list)):
            i, seed = int(item[0]), item[1]
        else:
            i, seed = int(item), None
        rng = np.random.default_rng(int(seed)) if (self.augment and seed is not None) else None
        x = self.crop(i, rng)
        return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(self.targets[i])


# ---------------------------------------------------------------------------- metrics
def bin_accuracy(probs: np.ndarray, targets: np.ndarray, width: float = BIN_WIDTH) -> float:
    """Fraction of (cell, class) entries whose prediction falls in the 0.05-wide bin of its
    soft label (bins [0, .05), [.05, .1), ..., [.95, 1]; 1.0 is in the last bin)."""
    n_bins = int(round(1.0 / width))
    p = np.clip(np.floor(np.asarray(probs, np.float64) / width + 1e-9), 0, n_bins - 1)
    t = np.clip(np.floor(np.asarray(targets, np.float64) / width + 1e-9), 0, n_bins - 1)
    return float(np.mean(p == t)) if p.size else float("nan")


def _predicted_labels(store, img: int) -> np.ndarray:
    """The segmentation's cells label image of ``img`` at original resolution."""
    from ..data import crops as C

    meta_h = int(store.images.df()["height"].iat[img])
    meta_w = int(store.images.df()["width"].iat[img])
    return C.resize_nearest(np.asarray(C.read_cell_labels(store, img)), (meta_h, meta_w))


class CellMapScorer:
    """Cell-level mAP of validation cells against the store's cell truth (``hpa evaluate``'s
    code): each validation cell of an image with truth is a detection of every class with
    the model's probability, masked by the segmentation. Label images are read once.
    ``max_images`` bounds memory (the first images with truth, in table order)."""

    def __init__(self, store, rows: np.ndarray, max_images: int = 500, log=None) -> None:
        from ..store.cells import CellTable
        from ..store.truth import read_has, truth_label_images

        self.available = False
        cells = CellTable(store)
        image = cells.column("image")[rows]
        has = read_has(store)
        imgs = [int(i) for i in np.unique(image) if has[int(i)]]
        if not imgs:
            return
        if len(imgs) > max_images:
            if log:
                log(f"cell-level mAP on the first {max_images} of {len(imgs)} validation images with truth")
            imgs = imgs[:max_images]
        ids = store.images.ids()
        cell_id = cells.column("cell_id")[rows]
        self.truth, self.pred_labels, self.members = {}, {}, {}
        for img in imgs:
            key = str(ids[img])
            self.truth[key] = truth_label_images(store, img)
            self.pred_labels[key] = _predicted_labels(store, img)
            pos = np.flatnonzero(image == img)
            self.members[key] = (pos, cell_id[pos])
        self.available = True

    def __call__(self, probs: np.ndarray) -> float:
        from ..evaluate.metric import evaluate_instances

        preds = {
            key: (self.pred_labels[key], {int(c): probs[p] for p, c in zip(pos, cid)})
            for key, (pos, cid) in self.members.items()
        }
        return float(evaluate_instances(self.truth, preds).mAP)


def cell_metrics(loss_name: str = "soft-focal", scorer: CellMapScorer | None = None):
    """``metrics(logits, targets) -> dict``: ``val_loss`` (``loss_name`` on the soft
    targets), ``bin_acc``, ``map`` (macro AP against targets ≥ 0.5) and ``cell_map`` when
    ``scorer`` has truth."""
    from ..registry import create_loss
    from .trainer import macro_map

    loss_fn = create_loss(loss_name)

    def metrics(logits: np.ndarray, targets: np.ndarray) -> dict:
        with torch.no_grad():
            loss = float(loss_fn(torch.from_numpy(logits), torch.from_numpy(targets)))
        probs = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
        out = {"val_loss": loss, "bin_acc": bin_accuracy(probs, targets), "map": macro_map(logits, targets)}
        if scorer is not None and scorer.available:
            out["cell_map"] = scorer(probs.astype(np.float32))
        return out

    return metrics


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


def windowed_order(cell_images: np.ndarray, window: int, rng: np.random.Generator) -> np.ndarray:
    """A permutation of the cell indices: images in random order, cells shuffled within
    windows of ``window`` consecutive images."""
    cell_images = np.asarray(cell_images)
    uniq, inverse = np.unique(cell_images, return_inverse=True)
    img_perm = rng.permutation(len(uniq))
    rank = np.empty(len(uniq), dtype=np.int64)
    rank[img_perm] = np.arange(len(uniq))
    win = rank[inverse] // max(1, int(window))
    noise = rng.random(len(cell_images))
    return np.lexsort((noise, win)).astype(np.int64)


# ---------------------------------------------------------------------------- checkpoints
def cell_input_config(img_size: int, work_size: int | None, fit: str) -> dict:
    return {"size": int(img_size), "work_size": None if work_size is None else int(work_size), "fit": fit,
            "tile": "short-side-2x-under-half", "pad": "centred-square", "masked": "other-cells-zeroed"}


def read_cell_input(path: str | Path) -> dict:
    """The crop geometry a cell model was trained with (``train_config.extra.cell_input``):
    ``size``, ``work_size`` (None = original resolution), ``fit`` (resize | pad)."""
    from .checkpoint import read_checkpoint

    ck = read_checkpoint(path)
    extra = ((ck.get("train_config") or {}).get("extra") or {}) if isinstance(ck, dict) else {}
    info = extra.get("cell_input")
    if not info:
        raise HpaError(f"{path} is not a cell-level model (no cell_input in its train config); train with `hpa train-cell`")
    return dict(info)


def _model_from_init(backbone: str | None, init_from, resume_from=None) -> tuple:
    """(model, init report or None). Without ``backbone`` the architecture is the one of
    ``resume_from`` (a run's last.pt), else of an hpacli ``init_from`` checkpoint, else
    densenet121-hpa. Weights come from ``init_from`` unless resuming (the trainer loads
    last.pt)."""
    from .checkpoint import build_model, is_our_checkpoint, read_checkpoint
    from .checkpoint import init_from as load_init
    from .image import build_backbone

    config = None
    if backbone is None:
        for src in (resume_from, init_from):
            if src is None:
                continue
            ck = read_checkpoint(src)
            if is_our_checkpoint(ck):
                config = dict(ck["model_config"])
                break
    model = build_model(config) if config is not None else build_backbone(backbone or "densenet121-hpa")
    report = load_init(model, init_from) if (init_from is not None and resume_from is None) else None
    return model, report


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
    backbone: str | None = None,
    init_from: str | Path | None = None,
    img_size: int = 512,
    work_size: int | None = None,
    fit: str = "resize",
    image_window: int = 0,
    cache_images: int = 4,
    folds_name: str = "default",
    max_truth_images: int = 500,
    progress=None,
    log=None,
    callbacks=None,
    **train_kwargs,
) -> dict:
    """Train the cell-level model on ``fold``'s training cells, validate on its validation
    cells; checkpoints and ``log.csv`` in ``out``. ``train_kwargs`` are :class:`TrainConfig`
    fields (defaults here: the seed's batch 32, accumulation 4, adam10 × 4, 5 epochs,
    ``soft-focal-symmetric-lovasz-hardlog``; ``best_metric`` ``bin_acc``, the seed's rule;
    ``cell_map``, which reads the store's cell truth, only when named)."""
    log = log or (lambda msg: None)
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
    if targets == "truth" and (selection or mask_labels):
        raise HpaError("--targets truth takes neither --selection nor --mask-labels (the truth needs no help)")
    tg = assemble_targets(store, labels_run, selection, targets, denoise_run, mask_labels)
    train_rows, val_rows = cell_fold_rows(store, fold, tg.has, folds_name)
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
    model, report = _model_from_init(backbone, init_from, Path(out) / "last.pt" if resuming else None)
    if report is not None:
        log(report.describe())
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
        "n_selected": int(tg.n_selected),
        "mask_labels": bool(mask_labels),
        "best_metric": best_metric,
    }
    trainer = CellTrainer(
        model, train_ds, val_ds, cfg, metrics_fn=cell_metrics(cfg.val_loss, scorer), progress=progress, log=log,
        callbacks=callbacks, cell_images=train_ds.image, image_window=image_window,
    )
    summary = trainer.fit()
    summary.update({
        "n_train": int(len(train_rows)), "n_val": int(len(val_rows)), "n_selected": int(tg.n_selected),
        "read_cell_truth": bool(scorer is not None or targets == "truth"),
    })
    return summary
