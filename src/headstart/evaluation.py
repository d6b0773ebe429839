"""Metrics for a labelled set: accuracy, macro F1, per-class P/R/F1/support, confusion matrix."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


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
        "per_class": {
            label: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, label in enumerate(labels)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=k).tolist(),
    }


def format_metrics(metrics: dict[str, Any]) -> str:
    """A plain-text table for the terminal."""
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
    return "\n".join(lines)
