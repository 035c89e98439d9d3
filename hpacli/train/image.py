"""The image-level training stage: ``run_train_image(store, fold, out, ...)``."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..errors import HpaError
from ..models.build import check_outputs, create_model
from .trainer import TrainConfig, Trainer, TrainSummary


def run_train_image(
    store,
    fold: int,
    out: str | Path,
    *,
    backbone: str = "densenet121-hpa",
    img_size: int = 1024,
    negatives: str = "obvious",
    init_from: str | Path | None = None,
    backbone_options: dict | None = None,
    folds_name: str = "default",
    source: str = "auto",
    progress=None,
    log=None,
    callbacks=None,
    **train_kwargs,
) -> TrainSummary:
    """Train the image-level model on ``fold``'s training images, validate on its validation
    images; checkpoints and log in ``out``. ``train_kwargs`` are :class:`TrainConfig` fields.
    ``backbone_options`` go to the backbone's factory (for a timm backbone e.g.
    ``{"global_pool": "catavgmax"}``: average and max pooled features side by side, the
    seed's DenseNet head, so a pattern of a few cells survives pooling)."""
    from .data import StoreImageDataset, select_image_rows

    log = log or (lambda msg: None)
    if img_size < 32:
        raise HpaError("--img-size must be at least 32")
    if init_from is not None and not Path(init_from).exists():
        raise HpaError(f"--init-from {init_from} not found")
    train_rows, val_rows, labels, dropped = select_image_rows(store, fold, negatives, folds_name)
    if len(train_rows) == 0:
        raise HpaError(f"fold {fold} leaves no training images")
    if dropped:
        log(f"left out {dropped} Negative-labelled training image(s) without obvious staining (--negatives obvious)")
    train_ds = StoreImageDataset(store.path, train_rows, labels[train_rows], img_size, augment=True, source=source)
    val_ds = StoreImageDataset(store.path, val_rows, labels[val_rows], img_size, augment=False, source=source)
    log(
        f"{len(train_rows)} training and {len(val_rows)} validation images at {img_size}px "
        f"from the {'pixel cache' if train_ds.source == 'cache' else 'PNG files'}"
    )
    import torch

    torch.manual_seed(int(train_kwargs.get("seed", 0)))  # the same initial weights in every process for one --seed
    model = create_model(backbone, **(backbone_options or {}))
    check_outputs(model, img_size)
    if int(train_kwargs.get("batch_size", 8)) < 2 and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise HpaError(f"{backbone} has batch normalisation: --batch-size must be at least 2 (use --accum for larger batches)")
    cfg = TrainConfig(out=str(out), **train_kwargs)
    if init_from is not None and not (cfg.resume and (Path(out) / "last.pt").exists()):
        from ..models.checkpoint import init_from as load_init

        report = load_init(model, init_from)
        log(report.describe())
    from ..models.trained_on import make_record

    cfg.extra = {
        "stage": "train-image",
        "store": str(store.path),
        "fold": fold,
        "folds_name": folds_name,
        "backbone": backbone,
        "backbone_options": dict(backbone_options or {}),
        "img_size": img_size,
        "negatives": negatives,
        "init_from": str(init_from) if init_from else None,
        "n_train": int(len(train_rows)),
        "n_val": int(len(val_rows)),
        # what the out-of-fold guard of pseudolabel/predict checks (hpacli.models.trained_on)
        "trained_on": make_record(store, train_rows, fold, folds_name, init_from),
    }
    trainer = Trainer(model, train_ds, val_ds, cfg, progress=progress, log=log, callbacks=callbacks)
    summary = trainer.fit()
    summary.n_train, summary.n_val, summary.source = int(len(train_rows)), int(len(val_rows)), train_ds.source
    return summary
