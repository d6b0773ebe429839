"""How unlike the training data an input is: the scores behind the answer ``unknown``.

Each score is higher for an input less like what the model learned (an input of none of its
classes):

- ``msp``: 1 - the largest softmax probability (the classic baseline);
- ``energy``: -logsumexp(logits), which keeps the logits' scale that softmax discards;
- ``knn``: 1 - the cosine similarity of the input's features (what the head reads) to its
  k-th nearest training example's;
- ``energy+knn`` (``msp+knn``): both, each standardised by its mean and spread on the
  in-scope held-out rows, summed. The logits see what the classes are told apart by; the
  neighbours see how far an input is from everything trained on. Neither alone wins on every
  data set; together they are close to the better one on each (docs/benchmarks.md).

``knn`` needs training features that the held-out rows' features were not trained with: the
frozen pretrained backbone (every row against the other rows' cached features), or a tuned
model that scored held-out rows and was not refitted on them (its held-out rows against its
own training rows). A model trained on every row uses the logit score alone.

The threshold is the score that a share ``rate`` of in-scope held-out rows exceeds, so about
that share of in-scope inputs is answered ``unknown``. The score is part of the model
(:class:`UnknownScore`, with the training features and the standardisation), computed in
fp32 beside the logits, and part of the exported graph.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from ..config import UNKNOWN_SCORES as SCORES  # noqa: F401 - the names, here with the scores

log = logging.getLogger("headstart")

# the k-th neighbour: 10, at most half the smallest class (an in-scope input's k-th
# neighbour should still be of its class)
KNN_K = 10
# training features kept for knn (a seeded draw beyond this): fp16, 384-d is 15 MB. A tuned
# backbone computes them afresh with its own forward passes: fewer rows.
KNN_MAX_BANK = 20000
KNN_MAX_TUNED_BANK = 10000


def knn_k(counts: np.ndarray) -> int:
    present = counts[counts > 0]
    return int(max(1, min(KNN_K, present.min() // 2 if len(present) else 1)))


def similarities(features: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each (flattened) feature row to each row of ``bank`` (unit rows), fp32."""
    return nn.functional.normalize(features.float().flatten(1), dim=1) @ bank.float().T


def kth_distance(sims: torch.Tensor, k: int) -> torch.Tensor:
    """1 - the k-th largest similarity of each row: the knn score."""
    return 1.0 - sims.topk(k, dim=1).values[:, -1]


def knn_scores(features: torch.Tensor, bank: torch.Tensor, k: int, exclude: np.ndarray | None = None,
               chunk: int = 1024) -> torch.Tensor:
    """The knn score of each row of ``features`` against ``bank`` (unit rows), in chunks;
    ``exclude[i]`` is a bank row query ``i`` must not be compared with (itself), -1 for none."""
    k = min(k, bank.shape[0] - (1 if exclude is not None else 0))
    out = []
    for start in range(0, features.shape[0], chunk):
        sims = similarities(features[start:start + chunk], bank)
        if exclude is not None:
            ex = torch.as_tensor(exclude[start:start + chunk], dtype=torch.long)
            hit = ex >= 0
            sims[torch.nonzero(hit).flatten(), ex[hit]] = -2.0
        out.append(kth_distance(sims, max(k, 1)))
    return torch.cat(out) if out else torch.empty(0)


def logit_scores(kind: str, logits: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    if kind == "msp":
        return 1.0 - torch.softmax(logits, dim=1).amax(1)
    if kind == "energy":
        return -torch.logsumexp(logits, dim=1)
    raise ValueError(kind)


def parts(kind: str) -> list[str]:
    """The scores a kind is made of: ``"energy+knn"`` is energy and knn, each standardised."""
    return kind.split("+")


class UnknownScore(nn.Module):
    """(features, logits) -> the unknown score per row, in fp32 whatever the autocast. A
    combined kind sums its parts, each standardised by the mean and standard deviation it
    had on the in-scope held-out rows (``mix``, one row per part)."""

    def __init__(self, kind: str, k: int = KNN_K, bank: torch.Tensor | None = None, bank_shape: tuple | None = None,
                 mix: torch.Tensor | None = None):
        super().__init__()
        self.kind, self.k = kind, int(k)
        if "knn" in parts(kind):
            if bank is None:
                bank = torch.zeros(bank_shape, dtype=torch.float16)
            self.register_buffer("bank", nn.functional.normalize(bank.float(), dim=1).half() if bank.dtype != torch.float16
                                 else bank)
        if len(parts(kind)) > 1:
            self.register_buffer("mix", torch.zeros(len(parts(kind)), 2) if mix is None else torch.as_tensor(mix).float())

    def part(self, name: str, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if name == "knn":  # one matrix product for the whole batch: the exported graph has no loop
            return kth_distance(similarities(features, self.bank), self.k)
        return logit_scores(name, logits)

    def forward(self, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        with torch.autocast(features.device.type, enabled=False):
            names = parts(self.kind)
            if len(names) == 1:
                return self.part(names[0], features, logits)
            total = torch.zeros(features.shape[0], device=features.device)
            for i, name in enumerate(names):
                total = total + (self.part(name, features, logits) - self.mix[i, 0]) / self.mix[i, 1]
            return total


# The smallest spread a part is divided by: knn compares with fp16 training features, whose
# cosine similarities are good to about 1e-3 (fp16's resolution near 1), so a smaller spread
# is rounding noise; logit scores are fp32.
SPREAD_FLOOR = {"knn": 1e-3, "msp": 1e-4, "energy": 1e-4}


def standardise(named: dict[str, np.ndarray], kind: str) -> tuple[np.ndarray, np.ndarray]:
    """A combined kind's scores from its parts' scores on the same rows, and its ``mix``
    (each part's mean and standard deviation there, at least ``SPREAD_FLOOR``: a part that
    barely varies on in-scope rows is not blown up into noise)."""
    mix = np.asarray([[np.nanmean(named[p]), max(float(np.nanstd(named[p])), SPREAD_FLOOR[p])] for p in parts(kind)])
    return sum((named[p] - mix[i, 0]) / mix[i, 1] for i, p in enumerate(parts(kind))), mix


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
        logits, score = logits_and_score(self.model, x)
        return torch.cat([logits.float(), score.float()[:, None]], dim=1)


def logits_and_score(model: nn.Module, x) -> tuple[torch.Tensor, torch.Tensor]:
    """A model's logits and unknown score from one pass through its backbone."""
    features = model.features(x)
    logits = model.head(features)
    return logits, model.unknown(features.flatten(1), logits)


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
           bank_shape: tuple | None = None, mix: np.ndarray | None = None) -> None:
    model.unknown = UnknownScore(kind, k, bank, bank_shape, None if mix is None else torch.as_tensor(mix))


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


# The default score (``unknown_score="auto"``), measured on held-out classes of three data sets
# (docs/benchmarks.md, "Unknown inputs"): with a feature-space comparison available, logits and
# neighbours together; else the logit score alone.
DEFAULT_WITH_KNN, DEFAULT_LOGITS = "energy+knn", "energy"


def choose(asked: str, *, knn_available: bool, recipe: str = "") -> tuple[str, str]:
    """The score to use and why: the one asked for (its logit part when it needs knn and the
    model cannot have it), else the default for what the model allows."""
    if asked == "auto":
        if knn_available:
            return DEFAULT_WITH_KNN, "the default: logits and nearest training features together"
        return DEFAULT_LOGITS, (f"the default without nearest training features (the {recipe} model was trained on "
                                "every row, so no held-out rows calibrate them)")
    if "knn" in parts(asked) and not knn_available:
        logit = next((p for p in parts(asked) if p != "knn"), DEFAULT_LOGITS)
        log.info("unknown: %s needs held-out rows the kept model's features never trained on, and the %s model was "
                 "trained on every row: %s instead", asked, recipe, logit)
        return logit, f"{asked} asked for, but the {recipe} model has no held-out rows for knn"
    return asked, "asked for"
