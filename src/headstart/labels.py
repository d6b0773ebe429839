"""Labels from probabilities: the prediction front shared by the PyTorch classifiers and the
ONNX predictor, and label counts (no torch here)."""

from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

import numpy as np


def class_counts(labels: np.ndarray, classes: Sequence[str]) -> dict[str, int]:
    """Examples per class name, zero for classes without any."""
    counts = Counter(np.asarray(labels).tolist())
    return {c: counts.get(i, 0) for i, c in enumerate(classes)}


def top_k(row: np.ndarray, labels: Sequence[str], k: int) -> list[tuple[str, float]]:
    """The ``k`` most likely labels of one probability row, with their probabilities."""
    order = np.argsort(-row, kind="stable")[: max(1, k)]
    return [(labels[int(i)], float(row[i])) for i in order]


class LabelPredictions:
    """``predict`` and ``predict_top_k`` for a class with ``classes_`` and ``predict_proba``."""

    classes_: list[str]

    def predict_proba(self, inputs: Any) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def predict(self, inputs: Any) -> str | list[str]:
        """Label strings: one for one input, a list for a list."""
        probs = self.predict_proba(inputs)
        if probs.ndim == 1:
            return self.classes_[int(probs.argmax())]
        return [self.classes_[int(i)] for i in probs.argmax(1)]

    def predict_top_k(self, inputs: Any, k: int = 3) -> list[list[tuple[str, float]]]:
        """The ``k`` most likely labels with their probabilities, for each input."""
        probs = np.atleast_2d(self.predict_proba(inputs))
        return [top_k(row, self.classes_, k) for row in probs]
