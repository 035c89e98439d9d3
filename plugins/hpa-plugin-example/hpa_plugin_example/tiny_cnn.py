"""A tiny CNN that follows the hpacli backbone contract (see hpacli/hookspecs.py)."""

from __future__ import annotations

import torch
from torch import nn


class TinyCNN(nn.Module):
    def __init__(self, num_classes: int = 19, in_chans: int = 4, width: int = 16) -> None:
        super().__init__()
        layers = []
        c = in_chans
        for i in range(4):
            out = width * 2**i
            layers += [nn.Conv2d(c, out, 3, stride=2, padding=1), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            c = out
        self.features = nn.Sequential(*layers)
        self.embedding_dim = c
        self.head = nn.Linear(c, num_classes)
        # plain data: hpacli stores it in checkpoints so models can be rebuilt without flags
        self.config = {"backbone": "example-tiny-cnn", "num_classes": num_classes, "in_chans": in_chans, "width": width}

    def forward_with_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.features(x).mean(dim=(2, 3))
        return self.head(emb), emb

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_embedding(x)[0]
