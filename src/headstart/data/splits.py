"""Validation protocols: which labelled rows judge a model, and which train it.

One module for every split headstart makes (no torch here):

- **cross-validation** (the default when no validation set is given): stratified k-fold over
  all labelled rows. Each row's out-of-fold prediction comes from a model that never saw it;
  choices (the head's regularisation, the recipe) are made on those predictions, and the
  final model is refitted on every row.
- **holdout**: a stratified fraction of the rows (``--val-split``) or one fold of the k-fold
  split, held out for early stopping and reporting.
- **given**: the user's own validation set (``--val``).

Labels are either one class per row (an ``(n,)`` integer array) or several per row (an
``(n, K)`` 0/1 array: multi-label). For multi-label rows "stratified" means iterative
stratification (Sechidis, Tsoumakas & Vlahavas, 2011): a row's label *set* is rarely shared
by enough rows to stratify on, so each label is balanced across the parts on its own, the
rarest first (they are the ones a careless split loses from a part). Every function here
takes either form and decides by :func:`is_multilabel`; one-label input gives what it always
gave.

A :class:`Protocol` names the one that produced a run's numbers; reports, metrics.json and
the model card print its ``description``.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from ..errors import DataError

DEFAULT_FOLDS = 5


def is_multilabel(labels) -> bool:
    """Several labels per row: an ``(n, K)`` 0/1 array rather than an ``(n,)`` class index."""
    return np.ndim(labels) == 2


def require_two_classes(labels: np.ndarray, classes: Sequence[str]) -> None:
    """Something to learn: two classes, or (multi-label) rows whose label sets differ."""
    if is_multilabel(labels):
        on = np.asarray(labels) != 0
        if not on.any():
            raise DataError(
                f"no row carries any of the {len(classes)} labels; a multi-label classifier needs "
                "rows marked with at least one label. Check the label columns"
            )
        if (on == on[0]).all():
            names = ", ".join(repr(classes[k]) for k in np.flatnonzero(on[0]))
            raise DataError(
                f"every row carries exactly the same labels ({names}); there is nothing to learn. Add rows "
                "where some of these labels are absent (or others present)"
            )
        return
    present = np.unique(labels)
    if len(present) < 2:
        raise DataError(
            f"found only one class ({classes[int(present[0])]!r}); a classifier needs examples of at least two"
        )


def _iterative_stratification(on: np.ndarray, sizes: Sequence[int], seed: int) -> np.ndarray:
    """The part (0 .. len(sizes) - 1) of each row of a multi-label 0/1 matrix, part ``j``
    getting exactly ``sizes[j]`` rows.

    Sechidis et al.'s iterative stratification: take the label with the fewest positive rows
    not yet dealt, and deal each of those rows to the part that most needs that label (its
    share of the label's positives minus what it holds), ties broken by the part needing the
    most rows, then by a seeded coin. A rare label is dealt while every part can still take
    it; a common one is balanced by the many rows left. Two departures, both for sizes: a
    part that has its rows takes no more (so holdouts and folds have the sizes asked for),
    and rows without any label go last, each to the part needing the most rows.

    Integer arithmetic throughout (the needs scaled by ``n``), so ties are exact and the
    result depends on the seed alone."""
    n = len(on)
    sizes = np.asarray(sizes, dtype=np.int64)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)  # the seed also decides which of a label's rows are dealt first
    on = on[order]
    counts = on.astype(np.int64)
    totals = counts.sum(0)
    # part j's need of label l, times n: sizes[j] * totals[l] - n * held[j, l]
    need = sizes[:, None] * totals[None, :]
    room = sizes.copy()
    part = np.full(n, -1, dtype=np.int64)
    left = totals.copy()  # positive rows of each label not yet dealt

    def deal(row: int, by_label: np.ndarray | None) -> None:
        open_ = np.flatnonzero(room > 0)
        if by_label is not None:
            open_ = open_[by_label[open_] == by_label[open_].max()]
        if len(open_) > 1:
            open_ = open_[room[open_] == room[open_].max()]
        j = int(open_[rng.integers(len(open_))]) if len(open_) > 1 else int(open_[0])
        part[row] = j
        room[j] -= 1
        need[j] -= n * counts[row]
        left[:] -= counts[row]

    while left.any():
        label = int(np.flatnonzero(left == left[left > 0].min())[0])
        for row in np.flatnonzero(on[:, label] & (part < 0)):
            deal(int(row), need[:, label])
    for row in np.flatnonzero(part < 0):  # rows without a label: only the sizes matter
        deal(int(row), None)
    out = np.empty(n, dtype=np.int64)
    out[order] = part
    return out


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a stratified train/validation split, the same for the same seed.
    Multi-label: a holdout of ``ceil(val_fraction * n)`` rows by iterative stratification."""
    from sklearn.model_selection import train_test_split

    require_two_classes(labels, classes)
    if is_multilabel(labels):
        on = np.asarray(labels) != 0
        n = len(on)
        n_val = int(np.ceil(val_fraction * n))
        if n_val < 1 or n - n_val < 2:
            raise DataError(
                f"{n} examples are too few for a {val_fraction:.0%} validation split (the training part needs "
                "at least 2 rows, the validation part 1); add examples, change --val-split, or pass --val"
            )
        part = _iterative_stratification(on, [n - n_val, n_val], seed)
        return np.flatnonzero(part == 0), np.flatnonzero(part == 1)
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
    class should appear in every fold's training part. Multi-label: fewer when the rarest
    label present has fewer positive rows, so that iterative stratification can put one of
    them in every held-out part (and so several in every training part)."""
    if is_multilabel(labels):
        positives = (np.asarray(labels) != 0).sum(0)
        smallest = int(positives[positives > 0].min()) if (positives > 0).any() else 0
        return int(max(2, min(folds, smallest, len(labels))))
    counts = np.bincount(np.asarray(labels, dtype=np.int64))
    smallest = int(counts[counts > 0].min()) if len(counts) else 0
    return int(max(2, min(folds, smallest, len(labels))))


def kfold(labels: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold: ``folds`` pairs (training rows, held-out rows), sorted indices.
    Every row is held out exactly once; the same seed gives the same folds. Multi-label:
    iterative stratification, fold sizes as even as ``n`` allows (those of scikit-learn's
    KFold)."""
    if is_multilabel(labels):
        on = np.asarray(labels) != 0
        n = len(on)
        if not 2 <= folds <= n:
            raise ValueError(f"cannot split {n} rows into {folds} folds")
        sizes = np.full(folds, n // folds)
        sizes[: n % folds] += 1
        part = _iterative_stratification(on, sizes, seed)
        return [(np.flatnonzero(part != j), np.flatnonzero(part == j)) for j in range(folds)]
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
    multi_label: bool = False  # several labels per row: folds by iterative stratification, subset accuracy

    @property
    def description(self) -> str:
        if self.kind == "cross-validation":
            how = "iteratively stratified" if self.multi_label else "stratified"
            text = (f"{self.folds}-fold {how} cross-validation: each of the {self.n} rows is scored by a model "
                    "trained without it (out-of-fold)")
            if self.fold_accuracy:
                acc = np.asarray(self.fold_accuracy)
                what = "subset accuracy" if self.multi_label else "accuracy"
                text += f"; {what} {acc.mean():.3f} +/- {acc.std():.3f} over the folds"
        elif self.kind == "holdout":
            text = f"a stratified holdout of {self.n} rows ({self.source}), never trained on by the scoring model"
        else:
            text = f"the given validation set {self.source} ({self.n} rows), never trained on"
        if self.refit:
            text += "; the saved model was then refitted on every labelled row"
        return text

    def to_dict(self) -> dict:
        return {**asdict(self), "description": self.description}


# --------------------------------------------------------------------------- the plan


@dataclass
class Plan:
    """Which rows train and which judge: the protocol, and under a holdout or a given set the
    training and held-out rows, under cross-validation the folds (over the training rows)."""

    protocol: Protocol
    train_rows: np.ndarray
    eval_rows: np.ndarray | None  # None under cross-validation: every row is held out by a fold
    folds: list[tuple[np.ndarray, np.ndarray]] | None = None


def plan_validation(labels: np.ndarray, classes: Sequence[str], *, n_data: int, n_val: int, val_split: float | None,
                    folds: int, seed: int, val_source: str = "") -> Plan:
    """The protocol of a fit over ``labels`` (the data's rows, then ``n_val`` rows of a given
    validation set): the given set when there is one, else a stratified holdout of
    ``val_split``, else stratified k-fold cross-validation over the data."""
    labels = np.asarray(labels)
    data_rows = np.arange(n_data)
    multi = is_multilabel(labels)
    if n_val:
        return Plan(Protocol("given", n_val, source=val_source, multi_label=multi), data_rows,
                    np.arange(n_data, n_data + n_val))
    if val_split:
        tr, va = stratified_split(labels[data_rows], val_split, seed, classes)
        return Plan(Protocol("holdout", len(va), fraction=val_split, source=f"{val_split:.0%} stratified split, seed {seed}",
                             multi_label=multi), tr, va)
    y = labels[data_rows]
    counts = y.sum(0) if multi else np.bincount(y.astype(np.int64), minlength=len(classes))
    if counts.max() < 2:
        raise DataError(
            "every class has a single training example, so cross-validation cannot hold one out to score "
            "the model; pass --val DATA (labelled examples to score it on; one per class is enough), or add "
            "a second example to some class")
    n_folds = fold_count(y, folds)
    return Plan(Protocol("cross-validation", n_data, folds=n_folds, multi_label=multi), data_rows, None,
                kfold(y, n_folds, seed))


def holdout_sets(full, val, val_split: float | None, seed: int):
    """The training and validation sets exactly as a fit makes them from ``full`` (a data set
    with ``labels``, ``classes`` and ``subset``): ``val`` when given, else a stratified
    holdout of ``val_split`` (raises :class:`DataError` when it cannot be made), else
    ``(full, None)``: cross-validation over all of it."""
    if val is not None or not val_split:
        return full, val
    tr, va = stratified_split(full.labels, val_split, seed, full.classes)
    return full.subset(tr), full.subset(va)
