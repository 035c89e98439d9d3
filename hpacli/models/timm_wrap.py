"""Any timm model as an hpacli backbone: RGBY in 0..1 → logits, plus the pooled embedding."""

from __future__ import annotations

import torch
from torch import nn

# the seed's RGBY statistics (images scaled to 0..1)
RGBY_MEAN = (0.074598, 0.050630, 0.050891, 0.076287)
RGBY_STD = (0.122813, 0.085745, 0.129882, 0.119411)


class Normalize(nn.Module):
    def __init__(self, mean=RGBY_MEAN, std=RGBY_STD) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        return (x - self.mean[:, :c]) / self.std[:, :c]


class TimmClassifier(nn.Module):
    def __init__(self, name: str, num_classes: int = 19, in_chans: int = 4, pretrained: bool = False, **kwargs) -> None:
        super().__init__()
        import timm

        if pretrained:
            from ..errors import HpaError

            raise HpaError(
                "hpacli never downloads weights; pass a local checkpoint with --init-from PATH instead of pretrained"
            )
        self.config = {"backbone": name, "num_classes": num_classes, "in_chans": in_chans, **kwargs}
        self.norm = Normalize()
        self.model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)
        # the pooled features the classifier reads (2 × num_features with global_pool="catavgmax")
        self.embedding_dim = int(getattr(self.model.get_classifier(), "in_features", 0) or self.model.num_features)

    def forward_with_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.model.forward_features(self.norm(x))
        emb = self.model.forward_head(feats, pre_logits=True)
        return self.model.get_classifier()(emb) if num_classes_positive(self.model) else emb, emb

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.norm(x))


def num_classes_positive(model: nn.Module) -> bool:
    return getattr(model, "num_classes", 0) > 0


def timm_model_names() -> list[str]:
    """Every timm model name (imports timm, hence torch)."""
    import timm

    return list(timm.list_models())
