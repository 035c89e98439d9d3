"""One trainer for the image- and the cell-level models.

``Trainer(model, train_ds, val_ds, cfg, model_config=..., metrics_fn=...).fit()``:

- Adam without weight decay; the learning rate is set per epoch from a named schedule
  (:mod:`hpacli.train.schedules`) × ``lr_mult``, with ``epoch_offset``.
- Gradient accumulation: each micro-batch's loss is divided by ``accum`` and ``accum``
  micro-batches make one optimizer step, so for a model without batch statistics (and a
  loss that averages over items) ``accum`` K with batch B gives the updates of batch K·B.
  An epoch's last, incomplete cycle is stepped with its gradient rescaled to a mean.
  Gradient norm clipped to ``clip_norm`` before each step.
- Data order: epoch ``e``'s order and every item's augmentation seed come from
  ``(seed, e)`` alone, so a resumed run sees exactly the batches the uninterrupted run saw.
- Checkpoints (``last.pt`` every ``save_every`` batches / ``save_minutes`` and after each
  validation; ``best.pt`` on a better ``best_metric``) hold the model, optimizer, position
  (epoch, batch, step, micro-batch within the accumulation cycle and its gradients), RNG
  states, the model config and the backbone's provider. ``resume=True`` continues from
  ``last.pt`` exactly.
- Validation every epoch (and at start with ``eval_at_start``) through ``metrics_fn(logits,
  targets) -> dict`` (default: focal loss ``val_loss`` and macro average precision ``map``,
  :mod:`hpacli.train.metrics`);
  a CSV log (``log.csv``), TensorBoard when installed, rich progress (loss, lr, img/s).
- Mixed precision (``amp``): ``auto`` is bf16 autocast on GPUs that have it, fp16 with
  gradient scaling (``torch.amp.GradScaler``; its state is in the checkpoint) on those that
  do not, and off on the CPU; ``bf16``, ``fp16`` (also on the CPU) and ``off`` choose.
  channels_last (NHWC, on GPUs and CPUs); DistributedDataParallel when launched by ``torchrun``
  (``WORLD_SIZE`` > 1, :mod:`hpacli.train.distributed`); only rank 0 writes.

Datasets take items ``(index, aug_seed)`` (see :mod:`hpacli.train.data`).
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler

from ..errors import HpaError
from ..models.build import model_config_of
from ..models.checkpoint import read_checkpoint, save_checkpoint
from ..plaindata import to_plain as plain
from ..summary import Summary
from .distributed import setup_distributed
from .metrics import default_metrics
from .rng import get_rng_state, set_rng_state
from .schedules import check_schedule, lr_at

LAST = "last.pt"
BEST = "best.pt"
LOG = "log.csv"


@dataclass
class TrainConfig:
    out: str
    epochs: int = 10
    batch_size: int = 8
    accum: int = 1
    lr_mult: float = 1.0
    base_lr: float = 1e-5
    schedule: str = "adam10"
    epoch_offset: int = 0
    loss: str = "focal-symmetric-lovasz-hardlog"
    val_loss: str = "focal"
    clip_norm: float = 1.0
    device: str = "auto"
    workers: int = 2
    amp: str | bool = "auto"  # auto | bf16 | fp16 | off (True = auto, False = off)
    channels_last: bool = True
    eval_at_start: bool = False
    best_metric: str = "map"
    max_steps: int | None = None
    seed: int = 0
    resume: bool = False
    overwrite: bool = False
    save_every: int = 0
    save_minutes: float = 10.0
    tensorboard: bool = True
    val_batch_size: int | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class TrainSummary(Summary):
    """What a training run did (``run_train_image``, ``run_train_cell``, ``Trainer.fit``)."""

    epoch: int = 0  # epochs completed
    batch_in_epoch: int = 0
    step: int = 0
    images_seen: int = 0
    best_metric: str = ""
    best_value: float | None = None
    best_epoch: int | None = None
    last: str = ""
    best: str = ""
    history: list = field(default_factory=list)
    stopped_early: bool = False
    n_train: int | None = None  # training items (images or cells)
    n_val: int | None = None
    source: str | None = None  # image model: pixels from the cache or the PNGs
    n_selected: int | None = None  # cell model: selected cells set to 1
    cell_map_available: bool | None = None  # cell model: cell_map asked for and the validation images have truth
    read_cell_truth: bool | None = None  # cell model: the run read cell truth (only analyses named as such)


AMP_MODES = ("auto", "bf16", "fp16", "off")


def resolve_amp(amp: str | bool, device: torch.device) -> str:
    """The mixed precision a run uses on ``device``: ``bf16``, ``fp16`` or ``off``."""
    mode = {True: "auto", False: "off"}.get(amp, amp) if isinstance(amp, bool) else str(amp).lower()
    if mode not in AMP_MODES:
        raise HpaError(f"--amp must be one of {', '.join(AMP_MODES)}, not {amp!r}")
    cuda = device.type == "cuda"
    bf16_ok = cuda and torch.cuda.is_bf16_supported()
    if mode == "auto":
        return ("bf16" if bf16_ok else "fp16") if cuda else "off"
    if mode == "bf16" and cuda and not bf16_ok:
        raise HpaError("this GPU has no bfloat16; use --amp fp16 (float16 with gradient scaling) or --amp off")
    return mode


class ItemSampler(Sampler):
    def __init__(self, items: list) -> None:
        self.items = items

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


def _loader(ds, items, batch_size, workers, seed, device, drop_last) -> DataLoader:
    gen = torch.Generator()
    gen.manual_seed(seed)  # keeps the global RNG untouched by loader start-up
    return DataLoader(
        ds,
        batch_size=batch_size,
        sampler=ItemSampler(items),
        num_workers=workers,
        drop_last=drop_last,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None,
        generator=gen,
    )


def _to_input(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
    if channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


# ---------------------------------------------------------------------- trainer
class Trainer:
    def __init__(
        self,
        model: nn.Module,
        train_ds,
        val_ds,
        cfg: TrainConfig,
        *,
        model_config: dict | None = None,
        metrics_fn: Callable[[np.ndarray, np.ndarray], dict] | None = None,
        loss_fn: Callable | None = None,
        progress=None,
        callbacks: list[Callable] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        from ..registry import create_loss

        check_schedule(cfg.schedule)
        if cfg.accum < 1 or cfg.batch_size < 1 or cfg.epochs < 0:
            raise HpaError("--accum, --batch-size must be ≥ 1 and --epochs ≥ 0")
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.model = model
        self.model_config = model_config_of(model, model_config)
        self.provider = getattr(model, "hpa_provider", None)
        self.train_ds = train_ds
        self.val_ds = val_ds
        self.loss_fn = loss_fn or create_loss(cfg.loss)
        self.metrics_fn = metrics_fn or default_metrics(cfg.val_loss)
        lower = cfg.best_metric in ("loss", "val_loss") or cfg.best_metric.endswith("loss")
        self.best_key = "val_loss" if cfg.best_metric == "loss" else cfg.best_metric
        self.lower_is_better = lower
        self.progress = progress
        self.callbacks = callbacks or []
        self.log = log or (lambda msg: None)
        # position
        self.epoch = 1  # 1-based epoch being trained
        self.batch_in_epoch = 0
        self.step = 0
        self.micro = 0
        self.images_seen = 0
        self.best_value: float | None = None
        self.best_epoch: int | None = None
        self.epoch_loss_sum = 0.0
        self.epoch_loss_n = 0
        self.history: list[dict] = []
        self.evaluated_at_start = False
        self.stopped_early = False

    # ------------------------------------------------------------------ helpers
    def _epoch_items(self, epoch: int) -> list:
        n = len(self.train_ds)
        rng = np.random.default_rng([self.cfg.seed, epoch])
        perm = rng.permutation(n)
        seeds = rng.integers(0, 2**62, size=n)
        items = [(int(i), int(s)) for i, s in zip(perm, seeds)]
        if self.dist.active:
            per = n // self.dist.world
            items = items[self.dist.rank :: self.dist.world][:per]
        keep = (len(items) // self.cfg.batch_size) * self.cfg.batch_size
        return items[:keep]

    def _lr(self, epoch: int) -> float:
        c = self.cfg
        return lr_at(c.schedule, epoch, c.lr_mult, c.epoch_offset, c.epochs, c.base_lr)

    def _unwrapped(self) -> nn.Module:
        return self.model

    def _autocast(self):
        if self.amp == "off":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.amp == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    # ------------------------------------------------------------------ checkpoints
    def _provider_entry(self) -> dict:
        return {"backbone_provider": plain(self.provider)} if isinstance(self.provider, dict) else {}

    def _state(self) -> dict:
        grads = None
        if self.micro > 0:
            grads = {
                name: p.grad.detach().cpu().clone()
                for name, p in self.model.named_parameters()
                if p.grad is not None
            }
        return {
            "model_config": self.model_config,
            **self._provider_entry(),
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": {"name": self.cfg.schedule, "lr_mult": self.cfg.lr_mult, "epoch_offset": self.cfg.epoch_offset},
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "step": self.step,
            "micro_in_cycle": self.micro,
            "grads": grads,
            "images_seen": self.images_seen,
            "epoch_loss": [self.epoch_loss_sum, self.epoch_loss_n],
            "rng": get_rng_state(),
            "amp": self.amp,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "best": {"metric": self.best_key, "value": self.best_value, "epoch": self.best_epoch},
            "history": self.history,
            "evaluated_at_start": self.evaluated_at_start,
            "train_config": plain(asdict(self.cfg)),
            "world_size": self.dist.world,
        }

    def save_last(self) -> None:
        state = self._state() if self.dist.main else None
        if self.dist.active:  # every rank's RNG, so that each continues its own dropout stream
            import torch.distributed as tdist

            ranks: list = [None] * self.dist.world
            tdist.all_gather_object(ranks, get_rng_state())
            if state is not None:
                state["rng_ranks"] = ranks
        if self.dist.main:
            save_checkpoint(self.out / LAST, state)
        self._last_save = time.monotonic()
        self._batch_since_save = 0

    def _save_best(self, metrics: dict) -> None:
        if self.dist.main:
            save_checkpoint(
                self.out / BEST,
                {
                    "model_config": self.model_config,
                    **self._provider_entry(),
                    "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                    "epoch": self.epoch,
                    "step": self.step,
                    "metrics": plain(metrics),
                    "best": {"metric": self.best_key, "value": self.best_value, "epoch": self.best_epoch},
                    "train_config": plain(asdict(self.cfg)),
                },
            )

    def _restore(self, ckpt: dict) -> None:
        cfg = self.cfg
        old = ckpt.get("train_config") or {}
        if int(ckpt.get("batch_in_epoch", 0)) > 0:
            for key in ("batch_size", "seed"):
                if old.get(key) != getattr(cfg, key):
                    raise HpaError(
                        f"{self.out / LAST} stopped mid-epoch with --{key.replace('_', '-')} {old.get(key)}; "
                        f"resume with the same value (not {getattr(cfg, key)})"
                    )
            if int(ckpt.get("world_size", 1)) != self.dist.world:
                raise HpaError(
                    f"{self.out / LAST} stopped mid-epoch on {ckpt.get('world_size')} process(es); resume on as many"
                )
        if int(ckpt.get("micro_in_cycle", 0)) > 0 and old.get("accum") != cfg.accum:
            raise HpaError(f"{self.out / LAST} stopped within an accumulation cycle; resume with --accum {old.get('accum')}")
        if int(ckpt.get("micro_in_cycle", 0)) > 0 and ckpt.get("amp", self.amp) != self.amp:
            raise HpaError(f"{self.out / LAST} stopped within an accumulation cycle with --amp {ckpt.get('amp')} "
                           f"(its gradients are scaled for it); resume with --amp {ckpt.get('amp')}")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.epoch = int(ckpt["epoch"])
        self.batch_in_epoch = int(ckpt["batch_in_epoch"])
        self.step = int(ckpt["step"])
        self.micro = int(ckpt["micro_in_cycle"])
        self.images_seen = int(ckpt.get("images_seen", 0))
        self.epoch_loss_sum, self.epoch_loss_n = ckpt.get("epoch_loss", [0.0, 0])
        best = ckpt.get("best") or {}
        if best.get("metric") == self.best_key:
            self.best_value, self.best_epoch = best.get("value"), best.get("epoch")
        self.history = list(ckpt.get("history") or [])
        self.evaluated_at_start = bool(ckpt.get("evaluated_at_start"))
        grads = ckpt.get("grads")
        if grads:
            for name, p in self.model.named_parameters():
                if name in grads:
                    p.grad = grads[name].to(p.device, p.dtype)
        if self.scaler.is_enabled() and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        ranks = ckpt.get("rng_ranks")
        set_rng_state(ranks[self.dist.rank] if ranks and len(ranks) == self.dist.world else ckpt["rng"])

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def predict(self, ds) -> tuple[np.ndarray, np.ndarray]:
        """Logits and targets of ``ds`` (eval mode, no augmentation; sharded over ranks)."""
        model = self._unwrapped()
        was_training = model.training
        model.eval()
        n = len(ds)
        idx = list(range(n))[self.dist.rank :: self.dist.world]
        bs = self.cfg.val_batch_size or self.cfg.batch_size
        loader = _loader(ds, [(i, None) for i in idx], bs, self.cfg.workers, self.cfg.seed, self.device, False)
        outs, tgts = [], []
        for x, y in loader:
            with self._autocast():
                logits = model(_to_input(x, self.device, self._cl))
            outs.append(logits.float().cpu())
            tgts.append(y.float())
        logits = torch.cat(outs).numpy() if outs else np.zeros((0, 0), np.float32)
        targets = torch.cat(tgts).numpy() if tgts else np.zeros((0, 0), np.float32)
        if self.dist.active:
            import torch.distributed as tdist

            gathered: list = [None] * self.dist.world
            tdist.all_gather_object(gathered, (idx, logits, targets))
            order = np.concatenate([g[0] for g in gathered]).astype(np.int64)
            logits = np.concatenate([g[1] for g in gathered if len(g[1])])
            targets = np.concatenate([g[2] for g in gathered if len(g[2])])
            inv = np.argsort(order)
            logits, targets = logits[inv], targets[inv]
        model.train(was_training)
        return logits, targets

    def validate(self, label_epoch: int) -> dict:
        if self.val_ds is None or len(self.val_ds) == 0:
            return {}
        logits, targets = self.predict(self.val_ds)
        metrics = self.metrics_fn(logits, targets)
        return {k: float(v) for k, v in metrics.items()}

    def _record(self, epoch: int, metrics: dict, train_loss: float | None, seconds: float) -> None:
        row = {
            "epoch": epoch,
            "step": self.step,
            "images": self.images_seen,
            "lr": self._lr(max(epoch, 1)),
            "train_loss": train_loss,
            **metrics,
            "seconds": round(seconds, 2),
        }
        self.history.append(plain(row))
        value = metrics.get(self.best_key)
        improved = False
        if value is not None and not math.isnan(value):
            if self.best_value is None or (value < self.best_value if self.lower_is_better else value > self.best_value):
                self.best_value, self.best_epoch = value, epoch
                improved = True
        if self.dist.main:
            self._write_csv()
            if self._tb is not None:
                for k, v in row.items():
                    if isinstance(v, (int, float)) and k not in ("epoch", "step") and v is not None:
                        self._tb.add_scalar(k, v, self.step)
                self._tb.flush()
        if improved:
            self._save_best(metrics)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        self.log(f"epoch {epoch}: {shown}" + (" (best)" if improved else ""))

    def _write_csv(self) -> None:
        keys: list[str] = []
        for row in self.history:
            keys += [k for k in row if k not in keys]
        tmp = self.out / (LOG + ".tmp")
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys)
            writer.writeheader()
            for row in self.history:
                writer.writerow(row)
        os.replace(tmp, self.out / LOG)

    # ------------------------------------------------------------------ training
    def _optimizer_step(self, scale: float = 1.0) -> None:
        params = [p for p in self.model.parameters() if p.grad is not None]
        self.scaler.unscale_(self.optimizer)  # fp16: true gradients before rescaling and clipping (else a no-op)
        if scale != 1.0:
            for p in params:
                p.grad.mul_(scale)
        if self.cfg.clip_norm and self.cfg.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, self.cfg.clip_norm)
        self.scaler.step(self.optimizer)  # fp16: skipped when a gradient is inf/NaN, and the scale shrinks
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.micro = 0

    def _set_lr(self, lr: float) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = lr

    def fit(self) -> TrainSummary:
        cfg = self.cfg
        self.dist, self.device = setup_distributed(cfg.device)
        if self.dist.active:  # each rank its own dropout stream (the weights come from rank 0 through DDP)
            torch.manual_seed(int(np.random.SeedSequence([cfg.seed, self.dist.rank]).generate_state(1)[0]))
        self._cl = cfg.channels_last  # NHWC on GPUs and CPUs (benchmarks/channels_last.py compares)
        if len(self.train_ds) < cfg.batch_size * self.dist.world:
            raise HpaError(
                f"{len(self.train_ds)} training item(s) is fewer than one batch (--batch-size {cfg.batch_size}"
                f"{' × ' + str(self.dist.world) + ' processes' if self.dist.active else ''})"
            )
        last = self.out / LAST
        if last.exists() and not cfg.resume and not cfg.overwrite:
            raise HpaError(f"{self.out} already holds a run ({LAST}); pass --resume to continue it or --overwrite")
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
            if cfg.overwrite and not cfg.resume:
                for name in (LAST, BEST, LOG):
                    (self.out / name).unlink(missing_ok=True)
        self.amp = resolve_amp(cfg.amp, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == "fp16")
        if self.amp != "off":
            self.log(f"mixed precision: {self.amp}" + (" with gradient scaling" if self.amp == "fp16" else ""))
        self.model.to(self.device)
        if self._cl:
            self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self._lr(1), weight_decay=0.0)
        resumed = False
        if cfg.resume and last.exists():
            self._restore(read_checkpoint(last, map_location="cpu"))
            resumed = True
            self.log(f"resumed from {last}: epoch {self.epoch}, batch {self.batch_in_epoch}, step {self.step}")
        elif cfg.resume:
            self.log(f"no {last} yet: starting a new run")
        self.train_model = self.model
        if self.dist.active:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = DDP(self.model, device_ids=ids)
        self._tb = None
        if cfg.tensorboard and self.dist.main:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.out / "tensorboard"))
            except Exception:  # tensorboard not installed
                self._tb = None
        self._last_save = time.monotonic()
        self._batch_since_save = 0
        t_start = time.monotonic()
        try:
            if cfg.eval_at_start and not self.evaluated_at_start and not resumed:
                metrics = self.validate(0)
                self.evaluated_at_start = True
                self._record(0, metrics, None, time.monotonic() - t_start)
            self._train_epochs()
        finally:
            if self._tb is not None:
                self._tb.close()
        return TrainSummary(
            epoch=self.epoch if self.batch_in_epoch else self.epoch - 1,
            batch_in_epoch=self.batch_in_epoch,
            step=self.step,
            images_seen=self.images_seen,
            best_metric=self.best_key,
            best_value=self.best_value,
            best_epoch=self.best_epoch,
            last=str(self.out / LAST),
            best=str(self.out / BEST),
            history=self.history,
            stopped_early=self.stopped_early,
        )

    def _train_epochs(self) -> None:
        cfg = self.cfg
        progress = self.progress
        while self.epoch <= cfg.epochs:
            epoch = self.epoch
            t0 = time.monotonic()
            lr = self._lr(epoch)
            self._set_lr(lr)
            items = self._epoch_items(epoch)
            n_batches = len(items) // cfg.batch_size
            start = self.batch_in_epoch
            loader = _loader(
                self.train_ds, items[start * cfg.batch_size :], cfg.batch_size, cfg.workers,
                cfg.seed * 1000 + epoch, self.device, True,
            )
            task = None
            if progress is not None and self.dist.main:
                task = progress.add_task(
                    f"epoch {epoch}/{cfg.epochs}", total=n_batches * cfg.batch_size * self.dist.world,
                    completed=start * cfg.batch_size * self.dist.world, unit="img", info="",
                )
            self.train_model.train()
            loss_acc = torch.zeros((), device=self.device)
            n_acc = 0
            t_rate, imgs_rate = time.monotonic(), 0
            stop = False
            for x, y in loader:
                x = _to_input(x, self.device, self._cl)
                y = y.to(self.device, non_blocking=True).float()
                last_micro = self.micro + 1 == cfg.accum or self.batch_in_epoch + 1 == n_batches
                sync = (
                    contextlib.nullcontext()
                    if (not self.dist.active or last_micro)
                    else self.train_model.no_sync()
                )
                with sync:
                    with self._autocast():
                        logits = self.train_model(x)
                    loss = self.loss_fn(logits.float(), y)
                    self.scaler.scale(loss / cfg.accum).backward()
                self.micro += 1
                self.batch_in_epoch += 1
                self._batch_since_save += 1
                self.images_seen += len(x) * self.dist.world
                loss_acc += loss.detach()
                n_acc += 1
                if self.micro == cfg.accum:
                    self._optimizer_step()
                elif self.batch_in_epoch == n_batches:  # the epoch's incomplete last cycle
                    self._optimizer_step(scale=cfg.accum / self.micro)
                imgs_rate += len(x) * self.dist.world
                if task is not None and (n_acc % 5 == 0 or self.batch_in_epoch == n_batches):
                    self.epoch_loss_sum += float(loss_acc)
                    self.epoch_loss_n += n_acc
                    loss_acc.zero_()
                    n_acc = 0
                    now = time.monotonic()
                    rate = imgs_rate / max(now - t_rate, 1e-9)
                    progress.update(
                        task, completed=self.batch_in_epoch * cfg.batch_size * self.dist.world,
                        info=f"loss {self.epoch_loss_sum / max(self.epoch_loss_n, 1):.4f}  lr {lr:.2e}  "
                        f"{rate:.1f} img/s  step {self.step}",
                    )
                for cb in self.callbacks:
                    cb(self)
                if cfg.max_steps is not None and self.step >= cfg.max_steps:
                    stop = True
                if self.batch_in_epoch < n_batches and not stop:
                    due_batches = cfg.save_every and self.batch_in_epoch % cfg.save_every == 0
                    due_time = cfg.save_minutes and time.monotonic() - self._last_save > cfg.save_minutes * 60
                    if self.dist.active:
                        # ranks hold different partial gradients within a cycle: save only at a
                        # cycle's end, when rank 0 says it is due (one tiny broadcast per cycle)
                        if self.micro == 0:
                            due_batches = self._agree(bool(due_time) or self._batch_since_save >= (cfg.save_every or 10**12))
                        else:
                            due_batches = False
                        due_time = False
                    if due_batches or due_time:
                        self._flush_loss(loss_acc, n_acc)
                        loss_acc.zero_()
                        n_acc = 0
                        self.save_last()
                if stop:
                    break
            self._flush_loss(loss_acc, n_acc)
            if task is not None:
                progress.remove_task(task)
            train_loss = self.epoch_loss_sum / self.epoch_loss_n if self.epoch_loss_n else None
            metrics = self.validate(epoch)
            if stop and self.batch_in_epoch < n_batches:
                self.stopped_early = True
                self._record(epoch, metrics, train_loss, time.monotonic() - t0)
                self.save_last()
                return
            self.epoch += 1
            self.batch_in_epoch = 0
            self.epoch_loss_sum, self.epoch_loss_n = 0.0, 0
            self._record(epoch, metrics, train_loss, time.monotonic() - t0)
            self.save_last()
            if stop:
                self.stopped_early = True
                return

    def _agree(self, flag: bool) -> bool:
        """Rank 0's decision, on every rank (one tiny broadcast)."""
        import torch.distributed as tdist

        t = torch.tensor([int(flag)], device=self.device if self.device.type == "cuda" else "cpu")
        tdist.broadcast(t, src=0)
        return bool(t.item())

    def _flush_loss(self, loss_acc: torch.Tensor, n_acc: int) -> None:
        if n_acc:
            self.epoch_loss_sum += float(loss_acc)
            self.epoch_loss_n += n_acc
