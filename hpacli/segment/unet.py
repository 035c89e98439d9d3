"""Our DPN92-UNet: the architecture of the HPA cell-segmentation networks (nuclei and
3-channel cell models), with state_dict keys and shapes equal to the official files
(``../shared/reference/hpa-dpnunet.json``).

Input: ``[B, 3, H, W]`` normalised images (see :data:`MEAN`, :data:`STD`) with H, W
multiples of 32. Output: raw logits ``[B, 3, H, W]`` (softmax outside: [unused, border,
interior]).
"""

from __future__ import annotations

import torch
from torch import nn

from .dpn import dpn92_stages

FILTERS = (64, 336, 704, 1552, 2688)
MEAN = (124 / 255, 117 / 255, 104 / 255)
STD = 1 / (0.0167 * 255)


class UnetDecoderBlock(nn.Module):
    """Nearest x2 upsampling -> 3x3 conv (bias) -> ReLU."""

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(in_chs, out_chs, 3, padding=1),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class ConvBottleneck(nn.Module):
    """3x3 conv (bias) -> ReLU, merging the upsampled path with its skip."""

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(nn.Conv2d(in_chs, out_chs, 3, padding=1), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class DPNUnet(nn.Module):
    """The HPA DPN-UNet. Registration order (and so state_dict key order) follows the
    upstream files: bottlenecks, decoder_stages, last_upsample, final, encoder_stages."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        f = FILTERS
        self.filters = list(f)
        self.bottlenecks = nn.ModuleList([ConvBottleneck(2 * f[i], f[i]) for i in reversed(range(len(f) - 1))])
        self.decoder_stages = nn.ModuleList([UnetDecoderBlock(f[i + 1], f[i]) for i in range(len(f) - 1)])
        self.last_upsample = UnetDecoderBlock(f[0], f[0])
        self.final = nn.Sequential(nn.Conv2d(f[0], num_classes, 3, padding=1))
        self.encoder_stages = dpn92_stages()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % 32 or w % 32:
            raise ValueError(f"DPNUnet input must be a multiple of 32 in size, got {h}x{w}; pad it first")
        skips = []
        for stage in self.encoder_stages:
            x = stage(x)
            skips.append(torch.cat(x, dim=1) if isinstance(x, tuple) else x)
        x = skips[-1]
        n = len(self.bottlenecks)
        for k, bottleneck in enumerate(self.bottlenecks):
            x = self.decoder_stages[n - 1 - k](x)
            x = bottleneck(torch.cat([x, skips[n - 1 - k]], dim=1))
        return self.final(self.last_upsample(x))
