"""The DPN-92 encoder blocks, laid out so that state_dict keys equal the HPA DPN-UNet files.

Dual-path blocks carry a pair ``(residual, dense)``: every unit is pre-activation
(BatchNorm, ReLU, bias-free conv, BatchNorm eps 1e-3). Class names are the upstream
``pytorch_zoo.dpn`` names so that pickled modules map onto them one to one.
"""

from __future__ import annotations

import torch
from torch import nn

BN_EPS = 1e-3


class BnActConv2d(nn.Module):
    """BatchNorm -> ReLU -> conv (no bias)."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 groups: int = 1) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_chs, eps=BN_EPS)
        self.act = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.act(self.bn(x)))


class CatBnAct(nn.Module):
    """Concatenate a (residual, dense) pair, then BatchNorm -> ReLU."""

    def __init__(self, in_chs: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_chs, eps=BN_EPS)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x) -> torch.Tensor:
        if isinstance(x, tuple):
            x = torch.cat(x, dim=1)
        return self.act(self.bn(x))


class DualPathBlock(nn.Module):
    """One DPN unit. ``block_type``: ``proj`` (1x1 shortcut, stride 1), ``down`` (stride 2)
    or ``normal`` (the incoming pair is the shortcut)."""

    def __init__(self, in_chs: int, num_1x1_a: int, num_3x3_b: int, num_1x1_c: int, inc: int, groups: int,
                 block_type: str = "normal") -> None:
        super().__init__()
        self.num_1x1_c = num_1x1_c
        self.inc = inc
        self.b = False
        self.key_stride = 2 if block_type == "down" else 1
        self.has_proj = block_type in ("proj", "down")
        if block_type == "proj":
            self.c1x1_w_s1 = BnActConv2d(in_chs, num_1x1_c + 2 * inc, 1, stride=1)
        elif block_type == "down":
            self.c1x1_w_s2 = BnActConv2d(in_chs, num_1x1_c + 2 * inc, 1, stride=2)
        self.c1x1_a = BnActConv2d(in_chs, num_1x1_a, 1)
        self.c3x3_b = BnActConv2d(num_1x1_a, num_3x3_b, 3, stride=self.key_stride, padding=1, groups=groups)
        self.c1x1_c = BnActConv2d(num_3x3_b, num_1x1_c + inc, 1)

    def forward(self, x):
        x_in = torch.cat(x, dim=1) if isinstance(x, tuple) else x
        c = self.num_1x1_c
        if self.has_proj:
            shortcut = self.c1x1_w_s2(x_in) if self.key_stride == 2 else self.c1x1_w_s1(x_in)
            s_res, s_dense = shortcut[:, :c], shortcut[:, c:]
        else:
            s_res, s_dense = x
        out = self.c1x1_c(self.c3x3_b(self.c1x1_a(x_in)))
        return s_res + out[:, :c], torch.cat([s_dense, out[:, c:]], dim=1)


# DPN-92: num_init_features=64, k_r=96, groups=32, k_sec=(3, 4, 20, 3), inc_sec=(16, 32, 24, 128)
DPN92 = {"init": 64, "k_r": 96, "groups": 32, "k_sec": (3, 4, 20, 3), "inc_sec": (16, 32, 24, 128)}


def dpn92_stages() -> nn.ModuleList:
    """The five encoder stages as the UNet keeps them: stem, then four dual-path stages
    (the last ends with CatBnAct). Output channels of the skips: 64, 336, 704, 1552, 2688."""
    cfg = DPN92
    init, k_r, groups = cfg["init"], cfg["k_r"], cfg["groups"]
    bw_factor = 4
    stem = nn.Sequential(
        nn.Conv2d(3, init, kernel_size=7, stride=2, padding=3, bias=False),
        nn.BatchNorm2d(init, eps=BN_EPS),
        nn.ReLU(inplace=True),
    )
    stages: list[nn.Module] = [stem]
    in_chs = init
    for s, (n_blocks, inc) in enumerate(zip(cfg["k_sec"], cfg["inc_sec"])):
        bw = (64 << s) * bw_factor
        r = (k_r * bw) // (64 * bw_factor)
        blocks: list[nn.Module] = []
        if s == 0:
            blocks.append(nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        blocks.append(DualPathBlock(in_chs, r, r, bw, inc, groups, "proj" if s == 0 else "down"))
        in_chs = bw + 3 * inc
        for _ in range(n_blocks - 1):
            blocks.append(DualPathBlock(in_chs, r, r, bw, inc, groups, "normal"))
            in_chs += inc
        if s == 3:
            blocks.append(CatBnAct(in_chs))
        stages.append(nn.Sequential(*blocks))
    return nn.ModuleList(stages)
