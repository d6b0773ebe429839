"""The network: a pretrained backbone, a new head, and the freezing rules of the recipe."""

from __future__ import annotations

import torch
from torch import nn

from ..config import HeadConfig


class Head(nn.Module):
    """pool/flatten -> [dense, ReLU, dropout]* -> dropout -> linear to the classes."""

    def __init__(self, in_features: int, num_classes: int, cfg: HeadConfig):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for hidden in cfg.hidden:
            layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True), nn.Dropout(cfg.dropout)]
            width = hidden
        if not cfg.hidden and cfg.dropout > 0:
            layers.append(nn.Dropout(cfg.dropout))
        layers.append(nn.Linear(width, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


class ImageModel(nn.Module):
    def __init__(self, backbone: nn.Module, num_classes: int, head: HeadConfig, feature_dim: int):
        super().__init__()
        self.backbone = backbone
        self.head = Head(feature_dim, num_classes, head)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """What the head reads."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def block_groups(self) -> list[list[str]]:
        from ..backbones.image import block_groups

        return block_groups(self.backbone)


def feature_dim(backbone: nn.Module, input_size: int) -> int:
    """Width of the backbone's output, flattened (probed once with a dummy image)."""
    was_training = backbone.training
    backbone.eval()
    with torch.inference_mode():
        out = backbone(torch.zeros(1, 3, input_size, input_size))
    backbone.train(was_training)
    return int(out.flatten(1).shape[1])


def set_trainable(model: nn.Module, top_blocks: int | None) -> list[str]:
    """Freeze ``model.backbone`` except its top ``top_blocks`` blocks (None = all trainable,
    0 = frozen). ``model.head`` is always trainable. Returns the trainable backbone names."""
    groups = model.block_groups()
    if top_blocks is None:
        names = [n for g in groups for n in g]
    else:
        names = [n for g in groups[len(groups) - top_blocks :] for n in g] if top_blocks else []
    trainable = set(names)
    for name, p in model.backbone.named_parameters():
        p.requires_grad_(name in trainable)
    for p in model.head.parameters():
        p.requires_grad_(True)
    return names


def freeze_batchnorm(module: nn.Module, all_bn: bool) -> None:
    """Keep BatchNorm statistics fixed: of frozen layers always, of every layer when
    ``all_bn`` (fine-tuning on little data: running statistics from a few hundred images
    are worse than ImageNet's). Call after ``model.train()``."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            frozen = all(not p.requires_grad for p in m.parameters(recurse=False))
            if all_bn or frozen:
                m.eval()
