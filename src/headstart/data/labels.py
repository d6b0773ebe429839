"""Labels from probabilities: the prediction front shared by the PyTorch classifiers and the
ONNX predictor, and label counts (no torch here)."""

from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

import numpy as np


def class_counts(labels: np.ndarray, classes: Sequence[str]) -> dict[str, int]:
    """Examples per class name, zero for classes without any (several labels per row: the
    rows carrying each label)."""
    labels = np.asarray(labels)
    if labels.ndim == 2:
        return {c: int(n) for c, n in zip(classes, labels.sum(0).tolist())}
    counts = Counter(labels.tolist())
    return {c: counts.get(i, 0) for i, c in enumerate(classes)}


def split_labels(cell: str, separator: str) -> list[str]:
    """The label names of one cell of a multi-label column, without blanks or repeats."""
    return list(dict.fromkeys(part.strip() for part in cell.split(separator) if part.strip()))


def is_multi_label(names: Sequence[str], separator: str, forced: bool | None = None) -> bool:
    """Whether a label column holds several labels per row: ``forced`` (``--multi-label`` /
    ``--single-label``) decides, else any cell holding the separator."""
    if forced is not None:
        return forced
    return any(separator in n for n in names)


def encode_multi_label(names: Sequence[str], separator: str, classes: Sequence[str]) -> np.ndarray:
    """An ``(n, K)`` 0/1 array: row i has a 1 for each label its cell names."""
    index = {c: i for i, c in enumerate(classes)}
    y = np.zeros((len(names), len(classes)), dtype=np.int64)
    for i, cell in enumerate(names):
        for name in split_labels(cell, separator):
            y[i, index[name]] = 1
    return y


def label_names(labels: np.ndarray, classes: Sequence[str], separator: str = ";") -> list[str]:
    """Each row's label as text: its class, or its labels joined by ``separator``."""
    labels = np.asarray(labels)
    if labels.ndim == 2:
        return [separator.join(classes[j] for j in np.flatnonzero(row)) for row in labels]
    return [classes[int(i)] for i in labels]


def top_k(row: np.ndarray, labels: Sequence[str], k: int) -> list[tuple[str, float]]:
    """The ``k`` most likely labels of one probability row, with their probabilities."""
    order = np.argsort(-row, kind="stable")[: max(1, k)]
    return [(labels[int(i)], float(row[i])) for i in order]


class LabelPredictions:
    """``predict`` and ``predict_top_k`` for a class with ``classes_`` and ``predict_proba``
    (and ``predict_scored`` when its rule can answer unknown)."""

    classes_: list[str]

    def predict_proba(self, inputs: Any) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def predict_scored(self, inputs: Any) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities and each input's unknown score (None: the model has none)."""
        return self.predict_proba(inputs), None

    # the decision rule (:mod:`headstart.objectives`): argmax unless the model stores another
    decision_: Any = None

    @property
    def unknown_rule_(self):
        """The rule that answers unknown (None: the model always answers with its labels)."""
        from ..objectives import Abstain

        return self.decision_ if isinstance(self.decision_, Abstain) else None

    def decide(self, probs: np.ndarray, scores: np.ndarray | None = None) -> list[list[str]]:
        """The labels the decision rule answers for each row of probabilities: one class
        (argmax), or every label over its threshold (possibly none); none for a row whose
        unknown score (when given) is over the model's threshold."""
        from ..objectives import Argmax

        rule = self.decision_ if self.decision_ is not None else Argmax()
        return [[self.classes_[i] for i in row] for row in rule.decide(np.atleast_2d(probs), scores)]

    @property
    def multi_label_(self) -> bool:
        from ..objectives import inner_rule

        return getattr(inner_rule(self.decision_), "kind", "argmax") == "thresholds"

    def predict(self, inputs: Any, unknown: bool = True) -> str | list[str] | list[list[str]]:
        """For one input its label (a string: ``"unknown"`` when the model has an unknown
        rule, ``unknown`` is true and the input is unlike its training data), or with several
        labels per input the list of labels over their thresholds; for a list of inputs, a
        list of those."""
        from ..objectives import UNKNOWN

        if unknown and self.unknown_rule_ is not None:
            probs, scores = self.predict_scored(inputs)
        else:
            probs, scores = self.predict_proba(inputs), None
        answers = self.decide(probs, scores)
        if not self.multi_label_:
            answers = [a[0] if a else UNKNOWN for a in answers]
        return answers[0] if np.ndim(probs) == 1 else answers

    def predict_top_k(self, inputs: Any, k: int = 3) -> list[list[tuple[str, float]]]:
        """The ``k`` most likely labels with their probabilities, for each input."""
        probs = np.atleast_2d(self.predict_proba(inputs))
        return [top_k(row, self.classes_, k) for row in probs]


def top_k_results(names: Sequence[str], probs: np.ndarray, labels: Sequence[str], top_k: int,
                  rule: Any = None, scores: np.ndarray | None = None) -> list[dict[str, Any]]:
    """The answer's ``results``: each input's name and its ``top_k`` labels with scores, best
    first; for a model with several labels per input (a ``rule`` of per-label thresholds)
    also ``labels``, the labels over their thresholds with their scores (possibly none); with
    unknown ``scores`` (a model that can answer unknown) also ``unknown``: the input's score,
    the model's threshold and whether the score is over it (the answer is then unknown)."""
    from ..objectives import Abstain, inner_rule

    k = min(top_k, len(labels))
    decided = rule.decide(probs) if getattr(inner_rule(rule), "kind", "argmax") == "thresholds" else None
    results = []
    for i, (name, row) in enumerate(zip(names, probs)):
        order = np.argsort(-row, kind="stable")[:k]
        result = {"input": name, "predictions": [{"label": labels[int(j)], "score": float(row[j])} for j in order]}
        if decided is not None:
            result["labels"] = [{"label": labels[j], "score": float(row[j])} for j in decided[i]]
        if scores is not None and isinstance(rule, Abstain):
            result["unknown"] = {"score": float(scores[i]), "threshold": rule.threshold,
                                 "fired": bool(scores[i] > rule.threshold)}
        results.append(result)
    return results
