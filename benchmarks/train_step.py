"""Our training step against a bare timm loop: same model, batch, input and loss, same run.

The bare loop: forward → loss → backward → clip grad norm 1 → Adam step → zero_grad on a
float batch already in memory. Ours: ``hpacli.train.trainer.Trainer`` on an in-memory
uint8 dataset (item fetch + dihedral flip + collation + uint8→float + the step), timed
between consecutive micro-batches (epoch set-up and checkpoint writes excluded). Runs
alternate (bare, ours, bare, ours, ...) so that load from other processes hits both.
Target: median step time of ours ≤ 1.05 × bare.

Run: ``OMP_WAIT_POLICY=PASSIVE python benchmarks/train_step.py --backbone densenet121-hpa --size 128``
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from hpacli.models.build import create_model  # noqa: E402
from hpacli.registry import create_loss  # noqa: E402
from hpacli.train.data import ArrayDataset  # noqa: E402
from hpacli.train.trainer import TrainConfig, Trainer  # noqa: E402


def bare_loop(model, images_u8, targets, batch, steps, loss_fn) -> list[float]:
    opt = torch.optim.Adam(model.parameters(), lr=4e-5)
    model.train()
    x_all = torch.from_numpy(images_u8).float().div_(255.0)
    y_all = torch.from_numpy(targets)
    times = []
    t = time.perf_counter()
    for s in range(steps):
        sl = slice((s * batch) % len(x_all), (s * batch) % len(x_all) + batch)
        loss = loss_fn(model(x_all[sl]), y_all[sl])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        now = time.perf_counter()
        times.append(now - t)
        t = now
    return times[1:]  # first step warms up


def ours(model, images_u8, targets, batch, steps, loss_name) -> list[float]:
    stamps: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(
            out=tmp, epochs=1, batch_size=batch, accum=1, lr_mult=4.0, loss=loss_name, device="cpu", workers=0,
            tensorboard=False, save_minutes=0, max_steps=steps,
        )
        trainer = Trainer(model, ArrayDataset(images_u8, targets), None, cfg, callbacks=[lambda tr: stamps.append(time.perf_counter())])
        trainer.fit()
    return [b - a for a, b in zip(stamps[:-1], stamps[1:])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="densenet121-hpa")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--loss", default="focal-symmetric-lovasz-hardlog")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    n = args.batch * (args.steps + 1)
    images = rng.integers(0, 256, (n, 4, args.size, args.size), dtype=np.uint8)
    targets = (rng.random((n, 19)) < 0.2).astype(np.float32)
    loss_fn = create_loss(args.loss)
    bare_t, our_t = [], []
    for r in range(args.rounds):
        torch.manual_seed(r)
        bare_t += bare_loop(create_model(args.backbone), images, targets, args.batch, args.steps, loss_fn)
        torch.manual_seed(r)
        our_t += ours(create_model(args.backbone), images, targets, args.batch, args.steps + 1, args.loss)
    b, o = statistics.median(bare_t), statistics.median(our_t)
    print(f"{args.backbone} {args.size}px batch {args.batch}, loss {args.loss}, {args.threads} threads, "
          f"{len(bare_t)} / {len(our_t)} timed steps")
    print(f"bare timm loop : {b * 1000:8.1f} ms/step  ({args.batch / b:6.2f} img/s)")
    print(f"hpacli trainer : {o * 1000:8.1f} ms/step  ({args.batch / o:6.2f} img/s)")
    ratio = o / b
    print(f"overhead ratio : {ratio:.3f}  (target <= 1.05: {'met' if ratio <= 1.05 else 'NOT met'})")


if __name__ == "__main__":
    main()
