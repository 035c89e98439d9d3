"""Channels-last (NHWC) against the default layout (NCHW) on this machine's CPU: one
training step and one inference pass of the demo's backbone (timm resnet18 with the avg+max
head, 4 channels, batch 16), the two layouts alternated in the same run. Prints the ratio.

    python benchmarks/channels_last.py [--size 128] [--threads 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch


def step_times(model, x, repeats: int, train: bool) -> list[float]:
    out = []
    opt = torch.optim.Adam(model.parameters()) if train else None
    for _ in range(repeats + 1):
        t = time.perf_counter()
        if train:
            model.train()
            opt.zero_grad()
            model(x).sum().backward()
            opt.step()
        else:
            model.eval()
            with torch.inference_mode():
                model(x)
        out.append(time.perf_counter() - t)
    return out[1:]  # the first call warms up


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--backbone", default="resnet18")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    x = torch.rand(16, 4, a.size, a.size)
    res: dict[tuple[str, str], list[float]] = {}
    for _round in range(2):  # alternate the layouts: load changes on a shared machine hit both
        for layout in ("NCHW", "NHWC"):
            model = timm.create_model(a.backbone, pretrained=False, num_classes=19, in_chans=4,
                                      global_pool="catavgmax")
            xi = x
            if layout == "NHWC":
                model = model.to(memory_format=torch.channels_last)
                xi = x.contiguous(memory_format=torch.channels_last)
            for kind in ("train", "infer"):
                res.setdefault((layout, kind), []).extend(step_times(model, xi, a.repeats, kind == "train"))
    print(f"{a.backbone}, batch 16 at {a.size}px, {a.threads} thread(s); median seconds per batch")
    print(f"{'':8s}{'NCHW':>9s}{'NHWC':>9s}{'NCHW/NHWC':>11s}")
    for kind in ("train", "infer"):
        old, new = (statistics.median(res[(lay, kind)]) for lay in ("NCHW", "NHWC"))
        print(f"{kind:8s}{old:9.3f}{new:9.3f}{old / new:10.2f}×")


if __name__ == "__main__":
    main()
