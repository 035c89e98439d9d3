"""``densenet121-hpa``: the seed's image-level model.

DenseNet121 trunk (timm, 4 input channels) with an extra 2x2 max-pool after the stem, then
concat(global avg, global max) 2048 → BN → dropout 0.5 → FC 1024 → ReLU → BN → dropout 0.5
→ FC ``num_classes``. The embedding the pseudo-label stage stores is the FC 1024 output
before the ReLU.

State-dict names: ``trunk.*`` are timm's ``features.*`` (``trunk.conv0.weight`` ...); the
head keeps the names of the previous competition's checkpoints (``bn1``, ``fc1``, ``bn2``,
``logit``), so those load with a prefix change only (see :mod:`hpacli.models.bestfitting`).
"""

from __future__ import annotations

import torch
from torch import nn

from .timm_wrap import Normalize

NAME = "densenet121-hpa"
EMBEDDING_DIM = 1024


class DenseNetHPA(nn.Module):
    def __init__(
        self,
        num_classes: int = 19,
        in_chans: int = 4,
        dropout: float = 0.5,
        extra_pool: bool = True,
        arch: str = "densenet121",
        pretrained: bool = False,
    ) -> None:
        super().__init__()
        if pretrained:
            from ..errors import HpaError

            raise HpaError("hpacli never downloads weights; pass a local checkpoint with --init-from PATH")
        import timm

        self.config = {
            "backbone": NAME,
            "num_classes": int(num_classes),
            "in_chans": int(in_chans),
            "dropout": float(dropout),
            "extra_pool": bool(extra_pool),
            "arch": arch,
        }
        trunk_model = timm.create_model(arch, pretrained=False, num_classes=0, in_chans=in_chans)
        n_feat = int(trunk_model.num_features)
        self.norm = Normalize()
        self.trunk = trunk_model.features  # conv0, norm0(+ReLU), pool0, denseblocks, norm5(+ReLU)
        self.extra_pool = nn.MaxPool2d(kernel_size=2, stride=2) if extra_pool else nn.Identity()
        self.bn1 = nn.BatchNorm1d(2 * n_feat)
        self.drop1 = nn.Dropout(dropout)
        self.fc1 = nn.Linear(2 * n_feat, EMBEDDING_DIM)
        self.relu = nn.ReLU()
        self.bn2 = nn.BatchNorm1d(EMBEDDING_DIM)
        self.drop2 = nn.Dropout(dropout)
        self.logit = nn.Linear(EMBEDDING_DIM, num_classes)
        self.embedding_dim = EMBEDDING_DIM
        self.num_classes = int(num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        for name, layer in self.trunk.named_children():
            x = layer(x)
            if name == "pool0":
                x = self.extra_pool(x)
        return x

    def forward_with_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        pooled = torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1)
        emb = self.fc1(self.drop1(self.bn1(pooled)))
        logits = self.logit(self.drop2(self.bn2(self.relu(emb))))
        return logits, emb

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_embedding(x)[0]


def create(num_classes: int = 19, in_chans: int = 4, **kwargs) -> DenseNetHPA:
    return DenseNetHPA(num_classes=num_classes, in_chans=in_chans, **kwargs)
