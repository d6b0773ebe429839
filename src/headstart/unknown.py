"""How unlike the training data an input is: the scores behind the answer ``unknown``.

Three scores, each higher for an input less like what the model learned (an input of none of
its classes):

- ``msp``: 1 - the largest softmax probability (the classic baseline);
- ``energy``: -logsumexp(logits), which keeps the logits' scale that softmax discards;
- ``knn``: 1 - the cosine similarity of the input's features (what the head reads) to its
  k-th nearest training example's. Used only when the backbone is the frozen pretrained one,
  so that the training examples' features are the ones a new input is compared with.

Which one a model uses is measured on its own training data (:func:`held_out_class_auroc`):
some classes are held out in turn, a head is solved on the others, and each score's AUROC at
telling the held-out classes' rows from unseen rows of the kept classes is averaged. The
threshold is the score that a share ``rate`` of in-scope held-out rows exceeds (rows the
model never trained on, or for frozen features every row against the other rows), so about
that share of in-scope inputs is answered ``unknown``.

The score is part of the model (:class:`UnknownScore`, with the training features for
``knn``), computed in fp32 beside the logits, and part of the exported graph.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from .objectives import UNKNOWN_SCORES as SCORES

log = logging.getLogger("headstart")

# the k-th neighbour: 10, at most half the smallest class (an in-scope input's k-th
# neighbour should still be of its class)
KNN_K = 10
# training features kept for knn (a seeded draw beyond this): fp16, 384-d is 15 MB. A tuned
# backbone computes them afresh (twice when the final model was refitted): fewer rows.
KNN_MAX_BANK = 20000
KNN_MAX_TUNED_BANK = 10000
# the held-out-class measurement: rounds, share of the classes held out, rows a head is solved on
ROUNDS, HELD_OUT_SHARE, MAX_FIT_ROWS = 3, 0.2, 5000


def knn_k(counts: np.ndarray) -> int:
    present = counts[counts > 0]
    return int(max(1, min(KNN_K, present.min() // 2 if len(present) else 1)))


def knn_scores(features: torch.Tensor, bank: torch.Tensor, k: int, exclude: np.ndarray | None = None,
               chunk: int = 1024) -> torch.Tensor:
    """1 - cosine similarity to the k-th nearest row of ``bank`` (unit rows), in fp32;
    ``exclude[i]`` is a bank row query ``i`` must not be compared with (itself), -1 for none."""
    bank = bank.float()
    k = min(k, bank.shape[0] - (1 if exclude is not None else 0))
    out = []
    for start in range(0, features.shape[0], chunk):
        f = nn.functional.normalize(features[start:start + chunk].float(), dim=1)
        sims = f @ bank.T
        if exclude is not None:
            ex = torch.as_tensor(exclude[start:start + chunk], dtype=torch.long)
            hit = ex >= 0
            sims[torch.nonzero(hit).flatten(), ex[hit]] = -2.0
        out.append(1.0 - sims.topk(max(k, 1), dim=1).values[:, -1])
    return torch.cat(out) if out else torch.empty(0)


def logit_scores(kind: str, logits: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    if kind == "msp":
        return 1.0 - torch.softmax(logits, dim=1).amax(1)
    if kind == "energy":
        return -torch.logsumexp(logits, dim=1)
    raise ValueError(kind)


class UnknownScore(nn.Module):
    """(features, logits) -> the unknown score per row, in fp32 whatever the autocast."""

    def __init__(self, kind: str, k: int = KNN_K, bank: torch.Tensor | None = None, bank_shape: tuple | None = None):
        super().__init__()
        self.kind, self.k = kind, int(k)
        if kind == "knn":
            if bank is None:
                bank = torch.zeros(bank_shape, dtype=torch.float16)
            self.register_buffer("bank", nn.functional.normalize(bank.float(), dim=1).half() if bank.dtype != torch.float16
                                 else bank)

    def forward(self, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        with torch.autocast(features.device.type, enabled=False):
            if self.kind == "knn":
                f = nn.functional.normalize(features.float().flatten(1), dim=1)
                sims = f @ self.bank.float().T
                return 1.0 - sims.topk(self.k, dim=1).values[:, -1]
            return logit_scores(self.kind, logits)


class FeaturesOf(nn.Module):
    """A model's features (what its head reads), flattened, as a module the batch runners run."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x) -> torch.Tensor:
        return self.model.features(x).flatten(1)


class WithUnknown(nn.Module):
    """A model's logits with its unknown score as one more column: ``[logits | score]``
    (what the batch runners concatenate; :func:`split` takes it apart)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x) -> torch.Tensor:
        features = self.model.features(x)
        logits = self.model.head(features)
        score = self.model.unknown(features.flatten(1), logits)
        return torch.cat([logits.float(), score.float()[:, None]], dim=1)


def runner(model: nn.Module) -> nn.Module:
    """What prediction runs: the model, with its unknown score appended when it has one."""
    return WithUnknown(model) if getattr(model, "unknown", None) is not None else model


def split(outputs: torch.Tensor, model: nn.Module) -> tuple[torch.Tensor, np.ndarray | None]:
    """(logits, unknown scores or None) of what :func:`runner` returned."""
    if getattr(model, "unknown", None) is None:
        return outputs, None
    if outputs.ndim < 2 or outputs.shape[1] == 0:  # nothing decoded
        return outputs, np.empty(0)
    return outputs[:, :-1], outputs[:, -1].double().numpy()


def attach(model: nn.Module, kind: str, k: int = KNN_K, bank: torch.Tensor | None = None,
           bank_shape: tuple | None = None) -> None:
    model.unknown = UnknownScore(kind, k, bank, bank_shape)


# --------------------------------------------------------------------------- measuring


def auroc(in_scope: np.ndarray, unknown: np.ndarray) -> float:
    """How well the score ranks unknown inputs above in-scope ones (0.5: not at all)."""
    from sklearn.metrics import roc_auc_score

    in_scope, unknown = np.asarray(in_scope, dtype=np.float64), np.asarray(unknown, dtype=np.float64)
    if not len(in_scope) or not len(unknown):
        return float("nan")
    return float(roc_auc_score(np.r_[np.zeros(len(in_scope)), np.ones(len(unknown))], np.r_[in_scope, unknown]))


def threshold_for(in_scope_scores: np.ndarray, rate: float) -> float:
    """The score above which a share ``rate`` of the in-scope held-out rows lies."""
    s = np.asarray(in_scope_scores, dtype=np.float64)
    return float(np.quantile(s, 1.0 - rate, method="higher")) if len(s) else float("inf")


def histograms(named: dict[str, np.ndarray], bins: int = 40) -> dict[str, dict[str, list]]:
    """Counts of each set's scores on shared bins (what the report plots)."""
    finite = {n: np.asarray(s, dtype=np.float64)[np.isfinite(s)] for n, s in named.items()}
    both = np.concatenate([s for s in finite.values()]) if finite else np.empty(0)
    if not len(both):
        return {}
    edges = np.histogram_bin_edges(both, bins=bins)
    return {n: {"edges": [round(float(x), 6) for x in edges], "counts": np.histogram(s, bins=edges)[0].tolist()}
            for n, s in finite.items()}


def held_out_class_auroc(x: torch.Tensor, y: np.ndarray, k: int, C: float, seed: int) -> dict[str, float]:
    """Each score's mean AUROC at telling rows of classes a head never saw from unseen rows of
    the classes it learned: over ``ROUNDS`` draws, ``HELD_OUT_SHARE`` of the classes are held
    out, a head is solved at ``C`` on half of the other classes' rows (at most
    ``MAX_FIT_ROWS``) and the rest are scored, with ``knn`` against the rows it was solved on."""
    from .solver import fit_logistic

    y = np.asarray(y)
    present = np.flatnonzero(np.bincount(y, minlength=k) >= 2)
    if len(present) < 3:
        return {}
    rng = np.random.default_rng([seed, 17])
    out: dict[str, list[float]] = {s: [] for s in SCORES}
    for _ in range(ROUNDS):
        held = rng.choice(present, max(1, int(round(HELD_OUT_SHARE * len(present)))), replace=False)
        kept = np.setdiff1d(present, held)
        fit_rows, test_rows = [], []
        for c in kept:
            rows = rng.permutation(np.flatnonzero(y == c))
            half = max(1, len(rows) // 2)
            fit_rows.append(rows[:half])
            test_rows.append(rows[half:])
        fit_rows, test_rows = np.concatenate(fit_rows), np.concatenate(test_rows)
        if len(fit_rows) > MAX_FIT_ROWS:
            fit_rows = rng.choice(fit_rows, MAX_FIT_ROWS, replace=False)
        unknown_rows = np.flatnonzero(np.isin(y, held))
        if len(unknown_rows) > len(test_rows):
            unknown_rows = rng.choice(unknown_rows, len(test_rows), replace=False)
        remap = {int(c): i for i, c in enumerate(kept)}
        solution = fit_logistic(x[torch.as_tensor(fit_rows)], np.asarray([remap[int(c)] for c in y[fit_rows]]), len(kept), C=C)
        bank = nn.functional.normalize(x[torch.as_tensor(fit_rows)].float(), dim=1)
        kk = knn_k(np.bincount(y[fit_rows], minlength=k))
        scores = {}
        for name, rows in (("in", test_rows), ("out", unknown_rows)):
            f = x[torch.as_tensor(rows)].float()
            logits = torch.as_tensor(solution.logits(f))
            scores[name] = {"msp": logit_scores("msp", logits), "energy": logit_scores("energy", logits),
                            "knn": knn_scores(f, bank, kk)}
        for s in SCORES:
            out[s].append(auroc(scores["in"][s].numpy(), scores["out"][s].numpy()))
    return {s: float(np.mean(v)) for s, v in out.items()}


def choose(measured: dict[str, float], candidates: tuple[str, ...], asked: str) -> tuple[str, str]:
    """The score to use and why: the one asked for, else the candidate with the best
    held-out-class AUROC, else energy (too few classes to measure)."""
    if asked != "auto":
        return asked, "asked for"
    usable = {s: measured[s] for s in candidates if s in measured and np.isfinite(measured[s])}
    if not usable:
        return "energy", "too few classes to hold some out: energy, the logit score without a training-set comparison"
    best = max(usable, key=lambda s: (usable[s], -SCORES.index(s)))
    return best, "the best AUROC on held-out classes of the training data"
