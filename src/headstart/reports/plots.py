"""The report's figures, drawn with matplotlib's Agg canvas (no display needed) as PNG bytes.

Labels are drawn as plain text: math parsing is off, so a label such as ``$5`` or
``<script>`` shows as written.
"""

from __future__ import annotations

import io
from typing import Any, Sequence

import numpy as np

DPI = 110


class _Matplotlib:
    """``rc_context`` and ``subplots`` without pyplot: figures are plain ``Figure`` objects
    drawn by the Agg canvas, so building a report never touches (or switches) the backend
    of a notebook or GUI session the caller may be in."""

    @staticmethod
    def rc_context(rc):
        import matplotlib

        return matplotlib.rc_context(rc)

    @staticmethod
    def subplots(*args, figsize, **kwargs):
        from matplotlib.figure import Figure

        fig = Figure(figsize=figsize)
        return fig, fig.subplots(*args, **kwargs)


def _plt() -> _Matplotlib:
    return _Matplotlib()


def _style():
    return {"text.parse_math": False, "font.size": 9, "axes.spines.top": False, "axes.spines.right": False}


def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return buf.getvalue()


def _short(label: str, width: int = 24) -> str:
    label = str(label).replace("\n", " ")
    return label if len(label) <= width else label[: width - 1] + "\u2026"


def learning_curves(history: Sequence[dict[str, Any]]) -> bytes:
    """Train and validation loss and accuracy per epoch, across phases, with the boundary
    between phases (frozen head, then unfrozen blocks) marked."""
    plt = _plt()
    with plt.rc_context(_style()):
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        x = np.arange(1, len(history) + 1)
        phases = [h["phase"] for h in history]
        for ax, key, title in ((axes[0], "loss", "loss"), (axes[1], "accuracy", "accuracy")):
            ax.plot(x, [h[f"train_{key}"] for h in history], marker="o", ms=3, label=f"train {key}")
            # None: a refit on every labelled row, with nothing left to validate on (a gap)
            ax.plot(x, [np.nan if h[f"val_{key}"] is None else h[f"val_{key}"] for h in history], marker="o", ms=3,
                    label=f"validation {key}")
            ax.set_xlabel("epoch (all phases)")
            ax.set_title(title)
            ax.grid(alpha=0.3)
            if key == "accuracy":
                ax.set_ylim(-0.02, 1.02)
            starts = [0] + [i for i in range(1, len(phases)) if phases[i] != phases[i - 1]]
            for j, start in enumerate(starts):
                end = starts[j + 1] if j + 1 < len(starts) else len(phases)
                if start > 0:
                    ax.axvline(start + 0.5, color="0.3", ls="--", lw=1)
                ax.text((start + end) / 2 + 0.5, 0.98, phases[start], transform=ax.get_xaxis_transform(),
                        ha="center", va="top", fontsize=8, color="0.3",
                        bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.7, "pad": 1})
            ax.legend(loc="center left", bbox_to_anchor=(0.0, -0.32), ncol=2, fontsize=8, frameon=False)
        fig.tight_layout()
        return _png(fig)


def confusion_matrix(matrix: Sequence[Sequence[int]], labels: Sequence[str], *, axes_names: tuple[str, str] = ("true", "predicted"),
                     normalised_title: str = "row-normalised (recall)") -> bytes:
    """Counts and row-normalised (recall per true class) heatmaps side by side; also the
    label co-occurrence of multi-label data (rows and columns both labels)."""
    plt = _plt()
    cm = np.asarray(matrix, dtype=np.float64)
    k = len(labels)
    rows = cm.sum(axis=1, keepdims=True)
    normalised = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    side = min(18.0, max(4.5, 0.45 * k + 1.8))
    annotate = k <= 25
    names = [_short(label) for label in labels]
    with plt.rc_context(_style()):
        fig, axes = plt.subplots(1, 2, figsize=(2 * side + 1.5, side))
        for ax, data, title, fmt in ((axes[0], cm, "counts", "{:.0f}"), (axes[1], normalised, normalised_title, "{:.2f}")):
            im = ax.imshow(data, cmap="Blues", vmin=0, vmax=max(data.max(), 1e-9) if title == "counts" else 1.0)
            ax.set_title(title)
            ax.set_xlabel(axes_names[1])
            ax.set_ylabel(axes_names[0])
            ticks = np.arange(k)
            step = max(1, k // 40)
            ax.set_xticks(ticks[::step], [names[i] for i in ticks[::step]], rotation=60, ha="right", fontsize=8)
            ax.set_yticks(ticks[::step], [names[i] for i in ticks[::step]], fontsize=8)
            if annotate:
                top = data.max() if data.size else 0
                for i in range(k):
                    for j in range(k):
                        v = data[i, j]
                        ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=7,
                                color="white" if top and v > 0.6 * top else "black")
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        fig.tight_layout()
        return _png(fig)


def class_distribution(splits: dict[str, dict[str, int]], labels: Sequence[str]) -> bytes:
    """Examples per class in each split, as grouped horizontal bars."""
    plt = _plt()
    k = len(labels)
    with plt.rc_context(_style()):
        fig, ax = plt.subplots(figsize=(7, min(20.0, max(2.4, 0.28 * k * max(1, len(splits)) / 1.5 + 1))))
        y = np.arange(k)
        height = 0.8 / max(1, len(splits))
        for i, (name, counts) in enumerate(splits.items()):
            ax.barh(y + (i - (len(splits) - 1) / 2) * height, [counts.get(c, 0) for c in labels], height, label=name)
        step = max(1, k // 60)
        ax.set_yticks(y[::step], [_short(labels[i]) for i in y[::step]], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("examples")
        ax.set_title("class distribution")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        ax.grid(axis="x", alpha=0.3)
        fig.tight_layout()
        return _png(fig)


def reliability_diagrams(panels: Sequence[tuple[str, dict[str, Any], float]]) -> bytes:
    """One reliability diagram per (title, bins from calibration.reliability, ECE):
    accuracy per confidence bin (bars) and its mean confidence (red ticks) against the
    diagonal of perfect calibration, with the share of predictions in each bin underneath."""
    plt = _plt()
    with plt.rc_context(_style()):
        fig, axes = plt.subplots(2, len(panels), figsize=(4.2 * len(panels), 5.2), squeeze=False,
                                 gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
        for col, (title, rel, ece) in enumerate(panels):
            edges = np.asarray(rel["edges"])
            centres = (edges[:-1] + edges[1:]) / 2
            width = edges[1] - edges[0]
            acc = np.array([a if a is not None else 0.0 for a in rel["accuracy"]])
            conf = np.array([c if c is not None else 0.0 for c in rel["confidence"]])
            has = np.array([n > 0 for n in rel["count"]])
            ax = axes[0, col]
            ax.bar(centres[has], acc[has], width * 0.95, color="#4c72b0", label="accuracy")
            ax.hlines(conf[has], centres[has] - width * 0.45, centres[has] + width * 0.45, colors="#c44e52", lw=2.5,
                      zorder=3, label="mean confidence")
            ax.plot([0, 1], [0, 1], ls="--", color="0.3", lw=1, label="perfect calibration")
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_ylabel("accuracy")
            ax.set_title(f"{title}: ECE {ece:.4f}")
            ax.legend(loc="upper left", fontsize=7)
            counts = np.asarray(rel["count"], dtype=np.float64)
            axes[1, col].bar(centres, counts / max(counts.sum(), 1), width * 0.95, color="0.5")
            axes[1, col].set_xlabel("confidence")
            axes[1, col].set_ylabel("share")
        fig.tight_layout()
        return _png(fig)


def per_class_scores(per_class: dict[str, dict[str, float]], labels: Sequence[str]) -> bytes:
    """Precision, recall and F1 per class as grouped horizontal bars."""
    plt = _plt()
    k = len(labels)
    with plt.rc_context(_style()):
        fig, ax = plt.subplots(figsize=(7, min(20.0, max(2.4, 0.42 * k + 1))))
        y = np.arange(k)
        for i, key in enumerate(("precision", "recall", "f1")):
            ax.barh(y + (i - 1) * 0.27, [per_class[c][key] for c in labels], 0.27, label=key)
        step = max(1, k // 60)
        ax.set_yticks(y[::step], [_short(labels[i]) for i in y[::step]], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, 1.0)
        ax.set_title("precision, recall and F1 per class")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        ax.grid(axis="x", alpha=0.3)
        fig.tight_layout()
        return _png(fig)


def pr_curves(y: np.ndarray, probs: np.ndarray, labels: Sequence[str], thresholds: Sequence[float]) -> bytes:
    """Several labels per row: each label's precision-recall curve on the held-out rows, its
    average precision, and the point its decision threshold picks."""
    from sklearn.metrics import precision_recall_curve

    plt = _plt()
    y, probs = np.asarray(y), np.asarray(probs, dtype=np.float64)
    k = len(labels)
    cols = min(4, k)
    rows = int(np.ceil(k / cols))
    with plt.rc_context(_style()):
        fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 2.7 * rows), squeeze=False)
        for j in range(rows * cols):
            ax = axes[j // cols][j % cols]
            if j >= k:
                ax.axis("off")
                continue
            ax.set_title(_short(labels[j]), fontsize=9)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.3)
            if j % cols == 0:
                ax.set_ylabel("precision")
            if j // cols == rows - 1:
                ax.set_xlabel("recall")
            if not y[:, j].any():
                ax.text(0.5, 0.5, "no positive row", ha="center", va="center", fontsize=8)
                continue
            precision, recall, _ = precision_recall_curve(y[:, j], probs[:, j])
            ax.plot(recall, precision, lw=1.2)
            on = probs[:, j] >= thresholds[j]
            tp = int((on & (y[:, j] == 1)).sum())
            p = tp / max(1, int(on.sum()))
            r = tp / max(1, int(y[:, j].sum()))
            ax.plot([r], [p], "o", color="C3", ms=5, label=f"threshold {thresholds[j]:.2f}")
            ax.legend(fontsize=7, loc="lower left", frameon=False)
        fig.tight_layout()
        return _png(fig)


def unknown_scores(histograms: dict[str, dict[str, list]], threshold: float, score: str) -> bytes:
    """The unknown score's distribution on each set of inputs (share of the set per bin, on
    shared bins) and the model's threshold: inputs to its right are answered unknown."""
    plt = _plt()
    with plt.rc_context(_style()):
        fig, ax = plt.subplots(figsize=(7, 3.0))
        for name, h in histograms.items():
            counts, edges = np.asarray(h["counts"], dtype=np.float64), np.asarray(h["edges"], dtype=np.float64)
            ax.stairs(counts / max(1.0, counts.sum()), edges, fill=True, alpha=0.45, label=f"{name} ({int(counts.sum())})")
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:.4g}")
        ax.set_xlabel(f"{score} score (higher: less like the training data)")
        ax.set_ylabel("share of the inputs")
        ax.legend(fontsize=8, frameon=False)
        fig.tight_layout()
        return _png(fig)
