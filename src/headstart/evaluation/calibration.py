"""Calibration: how far a model's confidence can be trusted, and temperature scaling.

A network's softmax scores are often over-confident: of the predictions made with 90%
confidence, fewer than 90% are right. Temperature scaling (Guo et al., 2017) divides the
logits by one number ``T`` fitted on held-out data to minimise the negative log-likelihood.
It never changes which class wins, only how sure the model says it is. The expected
calibration error (ECE) measures the gap: predictions are put in 15 equal-width bins by
confidence, and the gap between each bin's accuracy and mean confidence is averaged,
weighted by the bin's size.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

log = logging.getLogger("headstart")

BINS = 15
# Below this many validation examples a fitted temperature is mostly noise.
MIN_EXAMPLES = 20
# Temperatures outside this range mean a degenerate fit, not a calibrated model.
T_MIN, T_MAX = 0.05, 20.0


def log_probs(probs: np.ndarray) -> np.ndarray:
    """Logits up to a per-row constant (softmax is unchanged by it), from probabilities."""
    return np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-300, None))


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logits / T), in float64, stable for any logits."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    if len(labels) == 0:
        return 0.0
    p = np.asarray(probs, dtype=np.float64)[np.arange(len(labels)), np.asarray(labels, dtype=np.int64)]
    return float(-np.log(np.clip(p, 1e-300, 1.0)).mean())


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> dict[str, list]:
    """Per equal-width confidence bin: count, mean confidence, accuracy (None when empty)."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    confidence = probs.max(axis=1) if len(probs) else np.empty(0)
    correct = (probs.argmax(axis=1) == labels) if len(probs) else np.empty(0, dtype=bool)
    return _binned(confidence, correct, bins)


def _binned(confidence: np.ndarray, outcome: np.ndarray, bins: int) -> dict[str, list]:
    """Per equal-width bin of ``confidence``: count, mean confidence, mean ``outcome`` (None when empty)."""
    # bin i holds confidences in (i/bins, (i+1)/bins]; a confidence of exactly 0 goes in bin 0
    index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    counts, conf, acc = [], [], []
    for b in range(bins):
        mask = index == b
        n = int(mask.sum())
        counts.append(n)
        conf.append(float(confidence[mask].mean()) if n else None)
        acc.append(float(outcome[mask].mean()) if n else None)
    return {"edges": np.linspace(0, 1, bins + 1).tolist(), "count": counts, "confidence": conf, "accuracy": acc}


def _ece(r: dict[str, list]) -> float:
    """The count-weighted mean gap between the bins' accuracy and confidence."""
    n = sum(r["count"])
    if n == 0:
        return 0.0
    return float(sum(c * abs(a - f) for c, a, f in zip(r["count"], r["accuracy"], r["confidence"]) if c) / n)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> float:
    return _ece(reliability(probs, labels, bins))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The ``T`` > 0 that minimises the NLL of softmax(logits / T): L-BFGS on log T, so T
    stays positive without constraints."""
    import torch

    z = torch.as_tensor(np.asarray(logits, dtype=np.float64))
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    if not np.isfinite(t):
        return 1.0
    return float(np.clip(t, T_MIN, T_MAX))


def summarise(logits: np.ndarray, labels: np.ndarray, temperature: float) -> dict[str, Any]:
    """ECE and NLL of ``logits`` on ``labels`` without (before) and with (after) ``temperature``."""
    before = apply_temperature(logits, 1.0)
    after = apply_temperature(logits, temperature)
    return {
        "temperature": float(temperature),
        "bins": BINS,
        "n": int(len(labels)),
        "ece_before": expected_calibration_error(before, labels),
        "ece_after": expected_calibration_error(after, labels),
        "nll_before": nll(before, labels),
        "nll_after": nll(after, labels),
    }


def calibrate(logits: np.ndarray, labels: np.ndarray) -> tuple[float, dict[str, Any]]:
    """Fit a temperature on held-out ``logits`` (or log-probabilities) and ``labels``;
    return it with a summary: ECE and NLL before and after, and why nothing was fitted when
    the data cannot support a fit (too few examples, or no mistakes at all, where the NLL
    falls without bound as T shrinks)."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    n = int(len(labels))
    mistakes = int((logits.argmax(1) != labels).sum()) if n else 0
    reason = None
    if n < MIN_EXAMPLES:
        reason = f"{n} validation examples are too few to fit a temperature (at least {MIN_EXAMPLES} needed)"
    elif mistakes == 0:
        reason = "the model makes no mistake on the validation set, so no temperature can be fitted"
    t = 1.0 if reason else fit_temperature(logits, labels)
    summary = {**summarise(logits, labels, t), "fitted": reason is None, "reason": reason}
    if reason:
        log.info("calibration: temperature not fitted: %s", reason)
    else:
        log.info(
            "calibration: temperature %.3f; ECE %.4f -> %.4f, NLL %.4f -> %.4f on the validation set",
            t, summary["ece_before"], summary["ece_after"], summary["nll_before"], summary["nll_after"],
        )
    return t, summary


def check_temperature(value: Any) -> float:
    """A stored temperature as a float; ``ValueError`` unless it is a positive finite number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"temperature must be a number, got {value!r}")
    t = float(value)
    if not np.isfinite(t) or t <= 0:
        raise ValueError(f"temperature must be a positive finite number, got {value!r}")
    return t


# --------------------------------------------------------------------------- several labels per row


def sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + e^-z) in float64, without overflow for any z."""
    z = np.asarray(z, dtype=np.float64)
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    e = np.exp(z[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def label_reliability(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> dict[str, list]:
    """Reliability of independent per-label probabilities: every (row, label) cell is one
    prediction; per equal-width probability bin, the count, mean probability and the share
    of cells whose label is present (the 'accuracy' of a calibrated bin equals its probability)."""
    return _binned(np.asarray(probs, dtype=np.float64).ravel(), np.asarray(labels, dtype=np.float64).ravel(), bins)


def label_calibration_error(probs: np.ndarray, labels: np.ndarray) -> float:
    """Expected calibration error over every (row, label) probability."""
    return _ece(label_reliability(probs, labels))


def _bce(logits: np.ndarray, labels: np.ndarray, t: float) -> float:
    """Mean binary cross-entropy per row (summed over labels) of sigmoid(logits / t)."""
    z = np.asarray(logits, dtype=np.float64) / t
    y = np.asarray(labels, dtype=np.float64)
    # log(1 + e^z) - y z, stable
    return float((np.logaddexp(0.0, z) - y * z).sum(1).mean()) if len(y) else 0.0


def summarise_sigmoid(logits: np.ndarray, labels: np.ndarray, temperature: float) -> dict[str, Any]:
    """Per-label ECE and binary cross-entropy of sigmoid ``logits`` without and with ``temperature``."""
    return {
        "temperature": float(temperature), "bins": BINS, "n": int(len(labels)), "per": "label",
        "ece_before": label_calibration_error(sigmoid(logits), labels),
        "ece_after": label_calibration_error(sigmoid(np.asarray(logits, dtype=np.float64) / temperature), labels),
        "nll_before": _bce(logits, labels, 1.0), "nll_after": _bce(logits, labels, temperature),
    }


def calibrate_sigmoid(logits: np.ndarray, labels: np.ndarray) -> tuple[float, dict[str, Any]]:
    """Several labels per row: one temperature shared by every label's sigmoid, fitted on
    held-out logits to minimise the binary cross-entropy (bounded search on log T); ECE over
    every (row, label) cell before and after. Not fitted on too few rows."""
    from scipy.optimize import minimize_scalar

    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    n = int(len(labels))
    reason = None
    if n < MIN_EXAMPLES:
        reason = f"{n} validation examples are too few to fit a temperature (at least {MIN_EXAMPLES} needed)"
    elif ((logits >= 0) == labels.astype(bool)).all():
        reason = "the model makes no mistake on the validation set, so no temperature can be fitted"
    t = 1.0
    if reason is None:
        res = minimize_scalar(lambda s: _bce(logits, labels, float(np.exp(s))), bounds=(np.log(T_MIN), np.log(T_MAX)),
                              method="bounded", options={"xatol": 1e-4})
        t = float(np.exp(res.x)) if np.isfinite(res.x) else 1.0
    summary = {**summarise_sigmoid(logits, labels, t), "fitted": reason is None, "reason": reason}
    if reason:
        log.info("calibration: temperature not fitted: %s", reason)
    else:
        log.info("calibration: temperature %.3f shared by the labels' sigmoids; ECE per label %.4f -> %.4f, "
                 "binary cross-entropy %.4f -> %.4f on the validation set", t, summary["ece_before"], summary["ece_after"],
                 summary["nll_before"], summary["nll_after"])
    return t, summary
