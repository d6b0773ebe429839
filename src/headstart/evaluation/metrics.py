"""Metrics for a labelled set: accuracy, macro F1, per-class P/R/F1/support, confusion matrix."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def _per_class(labels: Sequence[str], precision, recall, f1, support, extra=None) -> dict[str, dict[str, Any]]:
    """Each label's precision, recall, F1 and support (plus ``extra(i)``'s entries)."""
    return {
        label: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                "support": int(support[i]), **(extra(i) if extra else {})}
        for i, label in enumerate(labels)
    }


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = probs.argmax(axis=1)
    k = list(range(len(labels)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=k, zero_division=0
    )
    present = support > 0
    # Macro F1 over the classes present in this set: a class with no examples has no F1.
    macro_f1 = float(f1[present].mean()) if present.any() else 0.0
    eps = 1e-12
    nll = float(-np.log(np.clip(probs[np.arange(len(y_true)), y_true], eps, 1.0)).mean()) if len(y_true) else 0.0
    return {
        "n": int(len(y_true)),
        "accuracy": float((y_pred == y_true).mean()) if len(y_true) else 0.0,
        "macro_f1": macro_f1,
        "loss": nll,
        "labels": list(labels),
        "per_class": _per_class(labels, precision, recall, f1, support),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=k).tolist(),
    }


def multilabel_metrics(y_true: np.ndarray, probs: np.ndarray, labels: Sequence[str], thresholds: np.ndarray,
                       pred: np.ndarray | None = None) -> dict[str, Any]:
    """Several labels per row: micro, macro and samples F1, subset accuracy, mean average
    precision (over labels with a positive row), per-label precision / recall / F1 / support /
    average precision / threshold, label cardinality, and the mean binary cross-entropy.
    ``pred`` (0/1 decisions) defaults to ``probs >= thresholds``."""
    from sklearn.metrics import average_precision_score, f1_score, precision_recall_fscore_support

    y = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    pred = (probs >= thresholds).astype(np.int64) if pred is None else np.asarray(pred, dtype=np.int64)
    n, k = y.shape if y.ndim == 2 else (0, len(labels))
    if n == 0:
        y, pred, probs = np.zeros((0, k), np.int64), np.zeros((0, k), np.int64), np.zeros((0, k))
    precision, recall, f1, support = precision_recall_fscore_support(y, pred, average=None, zero_division=0) if n else (
        np.zeros(k), np.zeros(k), np.zeros(k), np.zeros(k, np.int64))
    present = np.asarray(support) > 0
    ap = np.array([average_precision_score(y[:, j], probs[:, j]) if present[j] else np.nan for j in range(k)])
    eps = 1e-12
    p = np.clip(probs, eps, 1 - eps)
    bce = float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).sum(1).mean()) if n else 0.0
    micro = float(f1_score(y, pred, average="micro", zero_division=0)) if n else 0.0
    samples = float(f1_score(y, pred, average="samples", zero_division=0)) if n else 0.0
    return {
        "objective": "multi-label",
        "n": int(n),
        "accuracy": float((pred == y).all(1).mean()) if n else 0.0,  # subset accuracy
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "micro_f1": micro,
        "samples_f1": samples,
        "mean_average_precision": float(np.nanmean(ap)) if present.any() else 0.0,
        "loss": bce,
        "label_cardinality": float(y.sum(1).mean()) if n else 0.0,
        "predicted_cardinality": float(pred.sum(1).mean()) if n else 0.0,
        "labels": list(labels),
        "thresholds": {label: float(t) for label, t in zip(labels, thresholds)},
        # rows carrying both labels (true labels); the diagonal is each label's support
        "cooccurrence": (y.T @ y).astype(int).tolist(),
        "per_class": _per_class(labels, precision, recall, f1, support, lambda i: {
            "average_precision": None if np.isnan(ap[i]) else float(ap[i]), "threshold": float(thresholds[i])}),
    }


def summary_line(metrics: dict[str, Any]) -> str:
    """The headline numbers of a metrics dict: ``accuracy: 0.9123  macro F1: 0.9034``, or
    for several labels per row the F1 scores, subset accuracy and mean average precision."""
    if metrics.get("objective") == "multi-label":
        return (f"macro F1: {metrics['macro_f1']:.4f}  micro F1: {metrics['micro_f1']:.4f}  "
                f"subset accuracy: {metrics['accuracy']:.4f}  mAP: {metrics['mean_average_precision']:.4f}")
    return f"accuracy: {metrics['accuracy']:.4f}  macro F1: {metrics['macro_f1']:.4f}"


def format_metrics(metrics: dict[str, Any]) -> str:
    """A plain-text table for the terminal."""
    if metrics.get("objective") == "multi-label":
        return _format_multilabel(metrics)
    labels = metrics["labels"]
    width = max(12, *(len(label) for label in labels))
    lines = [
        f"n = {metrics['n']}   accuracy = {metrics['accuracy']:.4f}   macro F1 = {metrics['macro_f1']:.4f}",
        "",
        f"{'class':<{width}}  precision  recall     f1  support",
    ]
    for label in labels:
        m = metrics["per_class"][label]
        lines.append(
            f"{label:<{width}}  {m['precision']:9.3f}  {m['recall']:6.3f}  {m['f1']:5.3f}  {m['support']:7d}"
        )
    lines += ["", "confusion matrix (rows = true, columns = predicted):"]
    cell = max(5, *(len(str(v)) for row in metrics["confusion_matrix"] for v in row))
    lines.append(" " * width + "  " + " ".join(f"{i:>{cell}}" for i in range(len(labels))))
    for i, (label, row) in enumerate(zip(labels, metrics["confusion_matrix"])):
        lines.append(f"{label:<{width}}  " + " ".join(f"{v:>{cell}}" for v in row) + f"   ({i})")
    if "unknown" in metrics:
        lines += ["", format_unknown(metrics["unknown"])]
    return "\n".join(lines)


def format_unknown(u: dict[str, Any]) -> str:
    """The unknown block of ``evaluate --unknown``, in words."""
    return (f"unknown ({u['score']} score, threshold {u['threshold']:.4g}): AUROC {u['auroc']:.4f}; at the threshold "
            f"{u['recall']:.1%} of the {u['n_unknown']} unknown inputs answered unknown (precision {u['precision']:.1%}), "
            f"{u['in_scope_rejected']:.1%} of the {u['n_in_scope']} in-scope ones; in-scope accuracy "
            f"{u['in_scope_accuracy']:.4f} (an in-scope input answered unknown counts as wrong)")


def _format_multilabel(metrics: dict[str, Any]) -> str:
    labels = metrics["labels"]
    width = max(12, *(len(label) for label in labels))
    lines = [
        f"n = {metrics['n']}   {summary_line(metrics)}",
        f"samples F1 = {metrics['samples_f1']:.4f}   labels per row: {metrics['label_cardinality']:.2f} true, "
        f"{metrics['predicted_cardinality']:.2f} predicted",
        "",
        f"{'label':<{width}}  precision  recall     f1     AP  threshold  support",
    ]
    for label in labels:
        m = metrics["per_class"][label]
        ap = f"{m['average_precision']:5.3f}" if m["average_precision"] is not None else "    -"
        lines.append(f"{label:<{width}}  {m['precision']:9.3f}  {m['recall']:6.3f}  {m['f1']:5.3f}  {ap}  "
                     f"{m['threshold']:9.2f}  {m['support']:7d}")
    return "\n".join(lines)
