"""Image-model training throughput on a GPU: img/s at 1024², batch 8, bf16, and peak memory.

Runs the real trainer (``hpacli.train.trainer.Trainer``: bf16 autocast, channels_last,
grad clip, Adam, the seed's loss) on random uint8 RGBY images held in memory (a pool of 32
repeated), so the number is the model step, not the disk. Timed between micro-batches
after ``--warmup`` steps. Prints img/s, ms/step and peak GPU memory
(``torch.cuda.max_memory_allocated``). On a machine without a GPU it runs on the CPU (use
tiny settings, e.g. ``--size 64 --steps 3``) to check the script itself.

Run: ``python benchmarks/gpu_train.py`` (defaults: densenet121-hpa, 1024², batch 8, 30 steps)
Multi-GPU: ``torchrun --nproc_per_node 8 benchmarks/gpu_train.py`` (per-process numbers, rank 0 prints).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from hpacli.models.build import create_model  # noqa: E402
from hpacli.train.data import ArrayDataset  # noqa: E402
from hpacli.train.trainer import TrainConfig, Trainer  # noqa: E402


class Pool(ArrayDataset):
    def __init__(self, images, targets, length: int) -> None:
        super().__init__(images, targets)
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, item):
        i, seed = item
        return super().__getitem__((i % len(self.targets), seed))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="densenet121-hpa")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--accum", type=int, default=1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--no-amp", action="store_true")
    ap.add_argument("--workers", type=int, default=4)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (32, 4, args.size, args.size), dtype=np.uint8)
    targets = (rng.random((32, 19)) < 0.2).astype(np.float32)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    total = args.steps + args.warmup
    ds = Pool(images, targets, total * args.batch * world)
    model = create_model(args.backbone)
    stamps: list[float] = []

    def stamp(tr) -> None:
        if tr.device.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(
            out=tmp, epochs=1, batch_size=args.batch, accum=args.accum, lr_mult=4.0, device=args.device,
            workers=args.workers, amp=not args.no_amp, tensorboard=False, save_minutes=0,
        )
        trainer = Trainer(model, ds, None, cfg, callbacks=[stamp])
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        trainer.fit()
    dt = [b - a for a, b in zip(stamps[:-1], stamps[1:])][args.warmup:]
    if int(os.environ.get("RANK", "0")) != 0:
        return
    dev = trainer.device
    step = statistics.median(dt) if dt else float("nan")
    amp = "bf16" if dev.type == "cuda" and not args.no_amp and torch.cuda.is_bf16_supported() else "fp32"
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device {name}; {args.backbone} {args.size}px batch {args.batch} {amp} channels_last={dev.type == 'cuda'}")
    print(f"  {len(dt)} timed steps: {step * 1000:.1f} ms/step median, {args.batch / step:.1f} img/s per process"
          f"{f', {args.batch * world / step:.1f} img/s total over {world}' if world > 1 else ''}")
    if dev.type == "cuda":
        print(f"  peak GPU memory {torch.cuda.max_memory_allocated(dev) / 2**30:.2f} GiB")
    else:
        import resource

        print(f"  peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (CPU run)")


if __name__ == "__main__":
    main()
