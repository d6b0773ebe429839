"""Contrastive fine-tuning of an encoder on a few labelled examples per class.

The ``contrastive`` recipe pulls the embeddings of same-label rows together and pushes the
rest apart, then solves a logistic-regression head on the new embeddings
(:mod:`headstart.training.solver`). It is what SetFit does with pairs, done with batches:

- **class-balanced batches** (:func:`balanced_batches`): each step draws a few classes and a
  few rows of each, every row at most once per batch; so every row of a batch has positives
  (its classmates) and negatives (the others) in the same forward pass;
- **the supervised contrastive loss** (:func:`supcon_loss`, Khosla et al., 2020) over the
  batch's cosine similarities: a batch of B rows gives B(B-1) pairs for B encoder passes,
  where SetFit's pair loss pays two passes per pair;
- **a step budget** (:func:`step_budget`) that grows with the rows (each row seen about
  :data:`PASSES` times), not with their square, and is cut to what the time budget allows.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

# Each training row takes part in about this many batches (SetFit's default draws 20
# iterations of pairs per row), with at least MIN_STEPS steps on tiny sets.
PASSES = 20
MIN_STEPS = 20
# Rows of one class in a batch: enough positives for every row, room for several classes.
PER_CLASS = 4
TEMPERATURE = 0.1


def step_budget(n_rows: int, batch_size: int) -> int:
    """Optimizer steps for ``n_rows`` training rows: linear in the rows."""
    return max(MIN_STEPS, math.ceil(PASSES * n_rows / batch_size))


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


def supcon_loss(embeddings: torch.Tensor, labels: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    """Supervised contrastive loss: for every row with a positive in the batch, the mean
    log-probability of its positives among all other rows, by cosine similarity /
    ``temperature``. A row is never its own positive or negative."""
    z = F.normalize(embeddings.float(), dim=1)
    sim = z @ z.T / temperature
    n = len(labels)
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(self_mask, float("-inf"))
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    count = positives.sum(1)
    has = count > 0
    if not has.any():
        return z.sum() * 0.0
    per_row = log_prob.masked_fill(~positives, 0.0).sum(1)[has] / count[has]
    return -per_row.mean()
