"""Contrastive fine-tuning of an encoder on a few labelled examples per class.

The ``contrastive`` recipe pulls the embeddings of same-label rows together and pushes the
rest apart, then solves a logistic-regression head on the new embeddings
(:mod:`headstart.training.solver`). It is what SetFit does with pairs, done with batches:

- **class-balanced batches** (:func:`balanced_batches`): each step draws a few classes and a
  few rows of each, every row at most once per batch; so every row of a batch has positives
  (its classmates) and negatives (the others) in the same forward pass;
- **SetFit's objective on every pair of the batch** (:func:`pair_cosine_loss`): the cosine
  similarity of two same-label rows is pulled to 1, of two different-label rows to 0 (squared
  error, the two kinds weighted equally, as SetFit balances its pairs). A batch of B rows
  gives B(B-1)/2 pairs for B encoder passes, where SetFit pays two passes per pair;
- **a step budget** (:func:`step_budget`) that grows with the rows (each row in about
  :data:`PASSES` batches), not with their square, and is cut to what the time budget allows.

Measured against the supervised contrastive loss (Khosla et al., 2020) at temperature 0.1 on
the same batches (docs/benchmarks.md): the pair objective with twice the passes per row was 2
to 4 points more accurate on a 7-class emotion set with 8 rows per class and level or better
on SST-2 with 8 and 16; the contrastive loss with more steps was not.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from . import distributed
from .solver import DEFAULT_CS, select_on_fold_features

# Each training row takes part in about this many batches. (SetFit's default pairs put each
# of 56 rows in about 96 pairs: every unique pair, the positives oversampled to the
# negatives' count.)
PASSES = 40
# Rows of one class in a batch: enough positives for every row, room for several classes.
PER_CLASS = 4


def step_budget(labels: np.ndarray, batch_size: int) -> int:
    """Optimizer steps that put each of the rows (their ``labels``) in about :data:`PASSES`
    of :func:`balanced_batches`' batches: linear in the rows once they fill more than a
    batch, :data:`PASSES` steps when one batch holds them all."""
    return math.ceil(PASSES / passes_per_step(labels, batch_size))


def passes_per_step(labels: np.ndarray, batch_size: int) -> float:
    """How many of ``labels``' rows one :func:`balanced_batches` batch holds on average, as a
    share of them: the expected number of batches a row takes part in per step."""
    labels = np.asarray(labels)
    sizes = [len(b) for b in balanced_batches(labels, batch_size, 64, np.random.default_rng(0))]
    return float(np.mean(sizes)) / len(labels)


def refit_steps(steps: int, fold_labels: np.ndarray, all_labels: np.ndarray, batch_size: int) -> int:
    """The steps on all the rows that give each row as many batches as ``steps`` gave each
    row of a fold's training part. On a set small enough for one batch to hold every row,
    that is the same number of steps; on larger sets it grows with the rows."""
    fold, full = passes_per_step(fold_labels, batch_size), passes_per_step(all_labels, batch_size)
    return max(1, round(steps * fold / full))


def balanced_batches(labels: np.ndarray, batch_size: int, steps: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``steps`` batches of row indices: up to ``batch_size // per_class`` classes, each with
    ``per_class`` rows (fewer when a class is smaller), drawn without replacement within a
    batch, so no row is ever paired with itself. Classes with a single row cannot have a
    positive and are only drawn as negatives' company, never alone."""
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    members = {c: np.flatnonzero(labels == c) for c in classes}
    # with few classes, more rows of each fill the batch (2 classes x 16 rather than 2 x 4)
    per_class = max(PER_CLASS, batch_size // max(1, len(classes)))
    n_classes = max(2, min(len(classes), batch_size // min(per_class, int(counts.max()))))
    # draw classes in proportion to their rows' share, but never only singleton classes
    weights = counts / counts.sum()
    pairable = classes[counts >= 2]
    batches = []
    for _ in range(steps):
        chosen = rng.choice(classes, size=min(n_classes, len(classes)), replace=False, p=weights)
        if not np.isin(chosen, pairable).any() and len(pairable):
            chosen[0] = rng.choice(pairable)
        rows = [rng.choice(members[c], size=min(per_class, len(members[c])), replace=False) for c in chosen]
        batches.append(np.concatenate(rows))
    return batches


def pair_cosine_loss(embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """SetFit's cosine-similarity loss over every pair of distinct rows in the batch: the
    squared distance of a same-label pair's cosine similarity to 1 and of a different-label
    pair's to 0, each kind averaged on its own and the two weighted equally (SetFit
    oversamples its positive pairs to the negatives' count). A row is never paired with
    itself; a batch with one kind of pair only learns from that kind."""
    z = F.normalize(embeddings.float(), dim=1)
    n = len(labels)
    i, j = torch.triu_indices(n, n, offset=1, device=z.device)
    cos = (z[i] * z[j]).sum(1)
    same = labels[i] == labels[j]
    parts = [((cos[same] - 1.0) ** 2).mean()] if same.any() else []
    if (~same).any():
        parts.append((cos[~same] ** 2).mean())
    if not parts:
        return z.sum() * 0.0
    return torch.stack(parts).mean()


class FoldEmbeddings:
    """What the contrastive folds' encoders made of their rows, kept per checkpoint step: the
    embeddings of each fold's training rows and held-out rows (and of the class names when
    they train with the head, each fold's embedded by its own encoder), and the head solved on
    them out-of-fold (:meth:`out_of_fold`).

    ``labels`` are every row's labels, ``k`` the classes, ``weights(y)`` the sample weights
    for training labels ``y`` (None: unweighted), ``name_labels`` the class names' labels and
    ``name_weight`` the weight the probe chose for them (None: no names)."""

    def __init__(self, labels: np.ndarray, k: int, weights, name_labels: np.ndarray | None = None,
                 name_weight: float | None = None):
        self.labels, self.k, self.weights = labels, k, weights
        self.name_labels, self.name_weight = name_labels, name_weight
        self.folds: list[dict[int, tuple]] = []
        self._solved: dict[tuple, tuple] = {}  # a stop's verdict is then the entry's score

    def add(self, at: dict[int, tuple]) -> None:
        """One fold's checkpoints: ``step -> (train embeddings, train rows, held-out embeddings,
        held-out rows[, name embeddings])``, the rows as tensors (as a run's checkpoint keeps them)."""
        self.folds.append({s: (xt, ok.numpy(), xv, okv.numpy(), names[0] if names else None)
                           for s, (xt, ok, xv, okv, *names) in at.items()})

    def __len__(self) -> int:
        return len(self.folds)

    def steps(self) -> list[int]:
        """The checkpoint steps every fold reached."""
        return sorted(set.intersection(*(set(f) for f in self.folds)))

    def held_out(self, step: int) -> np.ndarray:
        """The rows the folds held out, in :meth:`out_of_fold`'s order."""
        return np.concatenate([f[step][3] for f in self.folds])

    def bounds(self, step: int) -> np.ndarray:
        """Where each fold's held-out rows start in :meth:`held_out` (and the end)."""
        return np.cumsum([0] + [len(f[step][3]) for f in self.folds])

    def out_of_fold(self, step: int, C: float | None = None) -> tuple[float, np.ndarray, list[dict]]:
        """The head's C (chosen on the held-out rows of the folds so far, each embedded by an
        encoder that never saw them, unless given), its out-of-fold logits at ``step`` in
        :meth:`held_out`'s order, and the C path; solved once per folds, step and C. The class
        names train at the weight the probe chose: choosing it again on every checkpoint's
        path would multiply the solves, on 77 classes by minutes."""
        key = (len(self.folds), step, C)
        if key not in self._solved:
            self._solved[key] = self._solve(step, C)
        return self._solved[key]

    def _solve(self, step: int, C: float | None) -> tuple[float, np.ndarray, list[dict]]:
        parts, weights, names, at = [], [], [], 0
        for f in self.folds:
            xt, ok, xv, okv, xn = f[step]
            parts.append((xt, self.labels[ok], xv, np.arange(at, at + len(okv))))
            weights.append(self.weights(self.labels[ok]))
            names.append(None if xn is None else (xn, self.name_labels))
            at += len(okv)
        y_held = self.labels[self.held_out(step)]
        extra = {} if names[0] is None else {"extras": names, "extra_weights": [self.name_weight or 0.0]}
        C, logits, path, _ = (select_on_fold_features(parts, at, y_held, self.k, Cs=[C] if C else DEFAULT_CS,
                                                      sample_weights=None if weights[0] is None else weights, **extra)
                              if distributed.world().is_main else (None, None, None, None))
        return distributed.broadcast((C, logits, path))
