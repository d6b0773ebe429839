"""The training losses of the objectives (:mod:`headstart.objectives`), as the training loop
asks for them: summed over rows (the loop divides by the rows' total weight), with the
per-row weight, the rows answered right, and the held-out loss and score."""

from __future__ import annotations

import torch
from torch import nn


class CrossEntropy(nn.Module):
    """Summed cross-entropy; ``hits`` counts rows whose top class is the label."""

    reduction = "sum"

    def __init__(self, weight: torch.Tensor | None = None, label_smoothing: float = 0.0):
        super().__init__()
        self.register_buffer("weight", weight)
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits, y, weight=self.weight, label_smoothing=self.label_smoothing,
                                           reduction="sum")

    def row_weight(self, y: torch.Tensor) -> float:
        return float(self.weight[y].sum()) if self.weight is not None else float(y.shape[0])

    def hits(self, logits: torch.Tensor, y: torch.Tensor) -> int:
        return int((logits.argmax(1) == y).sum())

    def evaluate(self, logits: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        """Held-out mean loss (no smoothing, no weights) and accuracy."""
        return float(nn.functional.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())


class BinaryCrossEntropy(nn.Module):
    """Binary cross-entropy summed over labels and rows (a row's loss is its labels' sum);
    ``hits`` counts rows whose every label is right at probability 0.5."""

    reduction = "sum"

    def __init__(self, pos_weight=None, label_smoothing: float = 0.0):
        super().__init__()
        pw = None if pos_weight is None else torch.as_tensor(pos_weight, dtype=torch.float32)
        self.register_buffer("pos_weight", pw)
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        target = y.float()
        if self.label_smoothing:
            target = target * (1 - self.label_smoothing) + 0.5 * self.label_smoothing
        return nn.functional.binary_cross_entropy_with_logits(logits, target, pos_weight=self.pos_weight, reduction="sum")

    def row_weight(self, y: torch.Tensor) -> float:
        return float(y.shape[0])

    def hits(self, logits: torch.Tensor, y: torch.Tensor) -> int:
        return int(((logits >= 0) == y.bool()).all(1).sum())

    def evaluate(self, logits: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        """Held-out loss per row (summed over labels) and subset accuracy at probability 0.5."""
        loss = nn.functional.binary_cross_entropy_with_logits(logits, y.float(), reduction="sum") / max(1, y.shape[0])
        return float(loss), float(((logits >= 0) == y.bool()).all(1).float().mean())
