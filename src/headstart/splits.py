"""Validation protocols: which labelled rows judge a model, and which train it.

One module for every split headstart makes (no torch here):

- **cross-validation** (the default when no validation set is given): stratified k-fold over
  all labelled rows. Each row's out-of-fold prediction comes from a model that never saw it;
  choices (the head's regularisation, the recipe) are made on those predictions, and the
  final model is refitted on every row.
- **holdout**: a stratified fraction of the rows (``--val-split``) or one fold of the k-fold
  split, held out for early stopping and reporting.
- **given**: the user's own validation set (``--val``).

A :class:`Protocol` names the one that produced a run's numbers; reports, metrics.json and
the model card print its ``description``.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from .errors import DataError

DEFAULT_FOLDS = 5


def require_two_classes(labels: np.ndarray, classes: Sequence[str]) -> None:
    present = np.unique(labels)
    if len(present) < 2:
        raise DataError(
            f"found only one class ({classes[int(present[0])]!r}); a classifier needs examples of at least two"
        )


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a stratified train/validation split, the same for the same seed."""
    from sklearn.model_selection import train_test_split

    require_two_classes(labels, classes)
    counts = np.bincount(labels, minlength=len(classes))
    present = [i for i, n in enumerate(counts) if n > 0]
    small = [classes[i] for i, n in enumerate(counts) if 0 < n < 2]
    if small:
        raise DataError(
            f"class(es) {', '.join(map(repr, small))} have a single example; a stratified split needs "
            "at least 2 per class. Add examples, or pass a separate validation set with --val"
        )
    n_val = int(np.ceil(val_fraction * len(labels)))
    if n_val < len(present) or len(labels) - n_val < len(present):
        raise DataError(
            f"{len(labels)} examples are too few for a {val_fraction:.0%} validation split over "
            f"{len(present)} classes; add examples, change --val-split, or pass --val"
        )
    index = np.arange(len(labels))
    train, val = train_test_split(index, test_size=n_val, random_state=seed, stratify=labels)
    return np.sort(train), np.sort(val)


def fold_count(labels: np.ndarray, folds: int = DEFAULT_FOLDS) -> int:
    """``folds``, or fewer when the smallest class has fewer rows (never below 2): every
    class should appear in every fold's training part."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64))
    smallest = int(counts[counts > 0].min()) if len(counts) else 0
    return int(max(2, min(folds, smallest, len(labels))))


def kfold(labels: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold: ``folds`` pairs (training rows, held-out rows), sorted indices.
    Every row is held out exactly once; the same seed gives the same folds."""
    from sklearn.model_selection import StratifiedKFold

    labels = np.asarray(labels, dtype=np.int64)
    with warnings.catch_warnings():  # a class smaller than the fold count is legal: it just misses some folds
        warnings.simplefilter("ignore", UserWarning)
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        return [(np.sort(tr), np.sort(va)) for tr, va in splitter.split(np.zeros(len(labels)), labels)]


@dataclass
class Protocol:
    """How the reported validation numbers were produced."""

    kind: str  # "cross-validation" | "holdout" | "given"
    n: int  # rows scored
    folds: int | None = None
    fraction: float | None = None
    source: str = ""
    refit: bool = False  # the final model was refitted on every labelled row
    fold_accuracy: list[float] | None = None  # under cross-validation: the accuracy on each held-out fold

    @property
    def description(self) -> str:
        if self.kind == "cross-validation":
            text = (f"{self.folds}-fold stratified cross-validation: each of the {self.n} rows is scored by a model "
                    "trained without it (out-of-fold)")
            if self.fold_accuracy:
                acc = np.asarray(self.fold_accuracy)
                text += f"; accuracy {acc.mean():.3f} +/- {acc.std():.3f} over the folds"
        elif self.kind == "holdout":
            text = f"a stratified holdout of {self.n} rows ({self.source}), never trained on by the scoring model"
        else:
            text = f"the given validation set {self.source} ({self.n} rows), never trained on"
        if self.refit:
            text += "; the saved model was then refitted on every labelled row"
        return text

    def to_dict(self) -> dict:
        return {**asdict(self), "description": self.description}
