"""What a model's outputs mean, and how they become answers: the objective and the decision rule.

An **objective** says what the labels of a row are and what the network learns to output:

- :class:`SingleLabel`: one class per row (labels are an ``(n,)`` array of class indices);
  softmax over the logits, cross-entropy, accuracy, a softmax temperature.
- :class:`MultiLabel`: any number of labels per row, none included (labels are an
  ``(n, K)`` 0/1 array); an independent sigmoid per label, binary cross-entropy summed over
  the labels, F1 scores and average precision, one temperature shared by the sigmoids.

A **decision rule** turns probabilities into the labels ``predict`` answers with:
:class:`Argmax` (the most likely class) or :class:`Thresholds` (every label whose probability
reaches its own threshold, tuned on held-out rows to maximise that label's F1).

Everything that trains, scores, saves, exports or serves a model asks these two instead of
assuming one label per row. Both round-trip through ``config.json`` (``"objective"``,
``"decision"``; absent means single-label and argmax, the format of every earlier model) and
the export description. No torch at import: the ONNX runtime uses the decision rules too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .evaluation.calibration import sigmoid
from .config import UNKNOWN_SCORES
from .errors import HeadstartError, ModelDirError

DEFAULT_SEPARATOR = ";"


# --------------------------------------------------------------------------- decision rules


@dataclass
class Argmax:
    """The most likely class: one label per input."""

    kind = "argmax"

    def decide(self, probs: np.ndarray, scores: np.ndarray | None = None) -> list[list[int]]:
        probs = np.atleast_2d(probs)
        return [[int(i)] for i in probs.argmax(1)] if len(probs) else []

    def to_config(self) -> dict[str, Any]:
        return {"kind": self.kind}


@dataclass
class Thresholds:
    """Every label whose probability reaches its threshold (highest score first); possibly none."""

    thresholds: np.ndarray
    kind = "thresholds"

    def decide(self, probs: np.ndarray, scores: np.ndarray | None = None) -> list[list[int]]:
        probs = np.atleast_2d(probs)
        out = []
        for row in probs:
            on = np.flatnonzero(row >= self.thresholds)
            out.append([int(i) for i in on[np.argsort(-row[on], kind="stable")]])
        return out

    def to_config(self) -> dict[str, Any]:
        return {"kind": self.kind, "thresholds": [round(float(t), 6) for t in self.thresholds]}


UNKNOWN = "unknown"


@dataclass
class Abstain:
    """The inner rule's answer, or none (``unknown``) for an input whose unknown score
    (:mod:`headstart.models.unknown`: higher is less like the training data) is over ``threshold``,
    set so that a share ``rate`` of in-scope held-out inputs is over it."""

    inner: Any
    score: str  # msp, energy or knn
    threshold: float
    rate: float
    k: int = 0  # knn: the neighbour compared with
    bank_shape: tuple = ()  # knn: the training features kept in the model (rows, features)
    kind = "abstain"

    def decide(self, probs: np.ndarray, scores: np.ndarray | None = None) -> list[list[int]]:
        answers = self.inner.decide(probs)
        if scores is None:
            return answers
        return [[] if s > self.threshold else a for a, s in zip(answers, np.atleast_1d(scores))]

    def fired(self, scores: np.ndarray) -> np.ndarray:
        return np.atleast_1d(np.asarray(scores, dtype=np.float64)) > self.threshold

    def to_config(self) -> dict[str, Any]:
        return {"kind": self.kind, "inner": self.inner.to_config(), "score": self.score,
                "threshold": float(self.threshold), "rate": float(self.rate),
                **({"k": self.k, "bank_shape": list(self.bank_shape)} if "knn" in self.score else {})}


def inner_rule(rule):
    """The rule that picks labels, under an :class:`Abstain` if there is one."""
    return rule.inner if isinstance(rule, Abstain) else rule


# Thresholds are searched over this grid of probabilities (and kept off the extremes, where a
# handful of held-out rows would decide).
THRESHOLD_GRID = np.round(np.arange(0.05, 0.951, 0.01), 2)


def best_thresholds(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per label, the threshold on the grid that maximises that label's F1 on held-out
    ``probs`` (ties: the threshold nearest 0.5). A label without a positive row keeps 0.5."""
    probs, y = np.asarray(probs, dtype=np.float64), np.asarray(y).astype(bool)
    out = np.full(probs.shape[1], 0.5)
    grid = THRESHOLD_GRID
    for k in range(probs.shape[1]):
        pos = y[:, k]
        if not pos.any():
            continue
        pred = probs[:, k][:, None] >= grid[None, :]  # (n, grid)
        tp = (pred & pos[:, None]).sum(0)
        f1 = 2 * tp / np.maximum(pred.sum(0) + pos.sum(), 1)
        best = f1.max()
        candidates = grid[np.isclose(f1, best)]
        out[k] = float(candidates[np.argmin(np.abs(candidates - 0.5))])
    return out


def cross_fitted_decisions(probs: np.ndarray, y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """0/1 decisions for every row, each from thresholds tuned on the other folds' rows."""
    probs, y = np.asarray(probs, dtype=np.float64), np.asarray(y)
    n = len(y)
    pred = np.zeros(y.shape, dtype=np.int64)
    if n < 2:
        return (probs >= 0.5).astype(np.int64)
    parts = np.array_split(np.random.default_rng(seed).permutation(n), min(folds, n))
    for part in parts:
        rest = np.setdiff1d(np.arange(n), part)
        pred[part] = (probs[part] >= best_thresholds(probs[rest], y[rest])).astype(np.int64)
    return pred


def decision_from_config(entry: dict[str, Any] | None, k: int):
    """The decision rule stored in a config (None: argmax)."""
    if entry and entry.get("kind") == Abstain.kind:
        score, threshold, rate = entry.get("score"), entry.get("threshold"), entry.get("rate")
        if score not in UNKNOWN_SCORES or not isinstance(threshold, (int, float)) \
                or not isinstance(rate, (int, float)) or not 0 < rate < 1:
            raise ModelDirError(f"the unknown rule must name a score ({', '.join(UNKNOWN_SCORES)}), a threshold and a rate in "
                                f"(0, 1); got {entry!r}")
        k_nn, shape = entry.get("k", 0), entry.get("bank_shape", [])
        if "knn" in score and (not isinstance(k_nn, int) or k_nn < 1 or not isinstance(shape, list) or len(shape) != 2
                               or not all(isinstance(d, int) and d >= k_nn for d in shape[:1])):
            raise ModelDirError(f"the knn unknown rule needs a neighbour count k >= 1 and the shape of its training "
                                f"features; got {entry!r}")
        return Abstain(decision_from_config(entry.get("inner"), k), score, float(threshold), float(rate), int(k_nn),
                       tuple(int(d) for d in shape))
    if not entry or entry.get("kind", "argmax") == "argmax":
        return Argmax()
    if entry.get("kind") == "thresholds":
        t = np.asarray(entry.get("thresholds", []), dtype=np.float64)
        if t.shape != (k,) or not np.all(np.isfinite(t)) or np.any((t < 0) | (t > 1)):
            raise ModelDirError(f"the decision thresholds must be {k} probabilities between 0 and 1; got {entry.get('thresholds')!r}")
        return Thresholds(t)
    raise ModelDirError(f"unknown decision rule {entry.get('kind')!r}; upgrade headstart")


# --------------------------------------------------------------------------- objectives


class SingleLabel:
    """One class per row."""

    name = "single-label"
    multi_label = False
    separator = None

    def counts(self, y: np.ndarray, k: int) -> np.ndarray:
        """Rows per class."""
        return np.bincount(np.asarray(y, dtype=np.int64), minlength=k)

    def probabilities(self, logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
        from .evaluation.calibration import apply_temperature

        return apply_temperature(logits, temperature)

    def correct(self, logits: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Per row: whether the model's answer is right (the top class is the label)."""
        return np.asarray(logits).argmax(1) == np.asarray(y)

    def score(self, logits: np.ndarray, y: np.ndarray) -> float:
        """The held-out score recipes and epochs are compared by: accuracy."""
        return float(self.correct(logits, y).mean()) if len(y) else 0.0

    def class_weights(self, y: np.ndarray, k: int) -> np.ndarray:
        """``--class-weight balanced``: n / (k * rows of the class), 0 for an absent class."""
        counts = self.counts(y, k).astype(np.float64)
        return np.where(counts > 0, len(y) / (k * np.maximum(counts, 1)), 0.0)

    def loss(self, train_labels: np.ndarray, k: int, *, balanced: bool, label_smoothing: float = 0.0):
        """The training loss (summed over rows: the loop divides by their total weight)."""
        import torch

        from .training.losses import CrossEntropy

        weight = torch.tensor(self.class_weights(train_labels, k), dtype=torch.float32) if balanced else None
        return CrossEntropy(weight=weight, label_smoothing=label_smoothing)

    def calibrate(self, logits: np.ndarray, y: np.ndarray) -> tuple[float, dict]:
        from .evaluation.calibration import calibrate

        return calibrate(logits, y)

    def summarise(self, logits: np.ndarray, y: np.ndarray, temperature: float) -> dict:
        """Calibration of ``logits`` without and with a given temperature (no fitting)."""
        from .evaluation.calibration import summarise

        return summarise(logits, y, temperature)

    def fit_decision(self, probs: np.ndarray, y: np.ndarray) -> Argmax:
        return Argmax()

    def metrics(self, y: np.ndarray, probs: np.ndarray, classes: Sequence[str], decision=None) -> dict[str, Any]:
        from .evaluation.metrics import classification_metrics

        return classification_metrics(y, probs, classes)

    def held_out_metrics(self, y: np.ndarray, probs: np.ndarray, classes: Sequence[str], decision=None, *,
                         seed: int = 0) -> dict[str, Any]:
        """Metrics of held-out probabilities (argmax needs no tuning: the plain metrics)."""
        return self.metrics(y, probs, classes, decision)

    def to_config(self) -> dict[str, Any] | None:
        return None  # the format every earlier model has


class MultiLabel:
    """Any number of labels per row (an ``(n, K)`` 0/1 array), an independent sigmoid each."""

    name = "multi-label"
    multi_label = True

    def __init__(self, separator: str = DEFAULT_SEPARATOR):
        self.separator = separator

    def counts(self, y: np.ndarray, k: int) -> np.ndarray:
        """Rows carrying each label."""
        return np.asarray(y).sum(0).astype(np.int64)

    def probabilities(self, logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
        return sigmoid(np.asarray(logits, dtype=np.float64) / float(temperature))

    def correct(self, logits: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Per row: whether the set of labels with probability 0.5 or more is exactly the
        row's (the per-label thresholds are tuned after the model is chosen)."""
        return ((np.asarray(logits) >= 0) == np.asarray(y).astype(bool)).all(1)

    def score(self, logits: np.ndarray, y: np.ndarray) -> float:
        """Subset accuracy at probability 0.5."""
        return float(self.correct(logits, y).mean()) if len(y) else 0.0

    def loss(self, train_labels: np.ndarray, k: int, *, balanced: bool, label_smoothing: float = 0.0):
        """Binary cross-entropy summed over labels and rows; ``balanced`` weighs each
        label's positives by its negatives-to-positives ratio (rare labels count more)."""
        from .training.losses import BinaryCrossEntropy

        pos_weight = self.pos_weight(train_labels) if balanced else None
        return BinaryCrossEntropy(pos_weight=pos_weight, label_smoothing=label_smoothing)

    def pos_weight(self, y: np.ndarray) -> np.ndarray:
        y = np.asarray(y)
        pos = y.sum(0).astype(np.float64)
        return np.where(pos > 0, (len(y) - pos) / np.maximum(pos, 1), 1.0)

    def calibrate(self, logits: np.ndarray, y: np.ndarray) -> tuple[float, dict]:
        from .evaluation.calibration import calibrate_sigmoid

        return calibrate_sigmoid(logits, y)

    def summarise(self, logits: np.ndarray, y: np.ndarray, temperature: float) -> dict:
        from .evaluation.calibration import summarise_sigmoid

        return summarise_sigmoid(logits, y, temperature)

    def fit_decision(self, probs: np.ndarray, y: np.ndarray) -> Thresholds:
        """Per-label thresholds tuned on held-out probabilities (out-of-fold under CV)."""
        return Thresholds(best_thresholds(probs, y))

    def metrics(self, y: np.ndarray, probs: np.ndarray, classes: Sequence[str], decision=None) -> dict[str, Any]:
        from .evaluation.metrics import multilabel_metrics

        decision = decision or Thresholds(np.full(len(classes), 0.5))
        return multilabel_metrics(y, probs, classes, decision.thresholds)

    def held_out_metrics(self, y: np.ndarray, probs: np.ndarray, classes: Sequence[str], decision=None, *,
                         seed: int = 0, folds: int = 5) -> dict[str, Any]:
        """Metrics of held-out probabilities whose thresholds were tuned on those same rows,
        made honest by cross-fitting: the rows are dealt into ``folds`` parts and each part
        is decided by thresholds tuned on the other parts only. The thresholds reported (and
        saved) are the ones tuned on every row."""
        from .evaluation.metrics import multilabel_metrics

        y = np.asarray(y)
        decision = decision or self.fit_decision(probs, y)
        pred = cross_fitted_decisions(probs, y, folds, seed)
        metrics = multilabel_metrics(y, probs, classes, decision.thresholds, pred=pred)
        metrics["thresholds_protocol"] = (f"each row decided by per-label thresholds tuned on the other "
                                          f"{min(folds, len(y))}-fold parts of the held-out rows")
        return metrics

    def to_config(self) -> dict[str, Any]:
        return {"name": self.name, "separator": self.separator}


SINGLE_LABEL = SingleLabel()


def objective_for(labels: np.ndarray, separator: str = DEFAULT_SEPARATOR):
    """The objective of a label array: 2-D means several labels per row."""
    return MultiLabel(separator) if np.asarray(labels).ndim == 2 else SINGLE_LABEL


def check_separator(sep: str) -> str:
    if not isinstance(sep, str) or not sep or sep.strip() != sep or sep in (",", "\t"):
        raise HeadstartError(f"--label-sep must be a non-blank string that is not the column delimiter; got {sep!r}")
    return sep


def announce_objective(labels: np.ndarray, separator: str, forced: bool | None):
    """The objective of training labels, logged so a user sees how the label column was read."""
    import logging

    objective = objective_for(labels, separator)
    if objective.multi_label:
        y = np.asarray(labels)
        why = "--multi-label" if forced else f"label cells hold {separator!r}"
        log = logging.getLogger("headstart")
        log.info("multi-label: %s, so each row carries any of %d labels (%.2f per row on average, %d rows with "
                 "several); a sigmoid per label, thresholds tuned on held-out rows. Pass --single-label to read "
                 "each cell as one class", why, y.shape[1], y.sum(1).mean(), int((y.sum(1) > 1).sum()))
    return objective


def objective_from_config(entry: dict[str, Any] | None):
    if not entry or entry.get("name", SingleLabel.name) == SingleLabel.name:
        return SINGLE_LABEL
    if entry.get("name") == MultiLabel.name:
        sep = entry.get("separator", DEFAULT_SEPARATOR)
        if not isinstance(sep, str) or not sep:
            raise ModelDirError(f"the objective's label separator must be a non-empty string; got {sep!r}")
        return MultiLabel(sep)
    raise ModelDirError(f"unknown objective {entry.get('name')!r}; upgrade headstart")
