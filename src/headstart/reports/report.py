"""Reports people look at: one self-contained HTML page per training run or evaluation.

A training run's report is rebuilt from what the run directory holds, without retraining:
``metrics.json`` (history, validation metrics, calibration, data summary and notes),
``val_predictions.csv`` (each validation item with its label and the saved model's
probabilities), ``check.json`` when the data was checked, and ``model/config.json``. The
page has learning curves, the confusion matrix, per-class precision / recall / F1, the
class distribution, reliability diagrams before and after temperature scaling, the most
confident mistakes and notes on the data. Figures are PNG files in ``plots/`` and are also
inlined in the page as base64, so the page needs no network and no other file.

Every label, text, path and message is HTML-escaped: the page shows them, never runs them.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import struct
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import __version__
from ..evaluation.calibration import apply_temperature, log_probs, reliability
from ..errors import DataError, HeadstartError
from ..data.check import MAX_NOTE_ITEMS
from ..runs import CHECK_FILE, METRICS_FILE, PREDICTIONS_FILE, REPORT_FILE, RunDir, read_json, write_json, write_predictions

log = logging.getLogger("headstart")

PLOTS_DIR = "plots"
EVAL_PREDICTIONS_FILE = "predictions.csv"
MAX_MISTAKES = {"image": 24, "text": 20}
SNIPPET = 300
THUMB = 128
FIGURES = {"learning_curves", "confusion_matrix", "per_class", "class_distribution", "calibration", "cooccurrence", "pr_curves"}


def e(value: Any) -> str:
    """HTML-escape anything shown on the page (text and attribute values)."""
    return html.escape(str(value), quote=True)


def _finding(severity: str, kind: str, message: str, items: Sequence[str] = ()) -> dict[str, Any]:
    return {"severity": severity, "kind": kind, "message": message, "items": [str(i) for i in items]}


def data_findings(metrics: dict[str, Any], check: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The data notes of a run: the findings of ``headstart check`` when it ran, then what
    training itself saw (skipped files, imbalance, small classes, truncation, unknown words,
    duplicates when no check covered them)."""
    out: list[dict[str, Any]] = []
    if check is not None:
        for f in check.get("findings", []) or []:
            if isinstance(f, dict):
                out.append(_finding(str(f.get("severity", "info")), str(f.get("kind", "")), str(f.get("message", "")),
                                    f.get("items") or []))
    data = metrics.get("data") or {}
    skipped = metrics.get("skipped") or []
    if skipped:
        out.append(_finding("warning", "skipped", f"{len(skipped)} file(s) or row(s) were skipped as unreadable or empty",
                            [f"{s.get('path')} ({s.get('reason')})" for s in skipped]))
    else:
        out.append(_finding("info", "skipped", "no file or row was skipped"))
    train = (data.get("train") or {}).get("per_class") or {}
    counts = [n for n in train.values()]
    if counts and min(counts) > 0:
        ratio = max(counts) / min(counts)
        big = max(train, key=train.get)
        small = min(train, key=train.get)
        if ratio == 1:
            out.append(_finding("info", "imbalance", f"the classes are balanced ({counts[0]} training examples each)"))
        else:
            message = (f"class imbalance ratio {ratio:.1f}: the largest class, {big}, has {train[big]} training examples, "
                       f"the smallest, {small}, {train[small]}")
            if ratio >= 3:
                message += "; consider --class-weight balanced and read per-class recall, not only accuracy"
            out.append(_finding("warning" if ratio >= 3 else "info", "imbalance", message))
    val = (data.get("val") or {}).get("per_class") or {}
    few = [c for c, n in val.items() if n < 5]
    if few:
        out.append(_finding("warning", "small-classes",
                            f"{len(few)} class(es) have fewer than 5 validation examples: their metrics rest on very few examples",
                            [f"{c} ({val[c]})" for c in few]))
    notes = metrics.get("data_notes") or {}
    tr_cut, va_cut = (data.get("train") or {}).get("truncated"), (data.get("val") or {}).get("truncated")
    if tr_cut is not None or va_cut is not None:
        limit = notes.get("max_length")
        n_tr, n_va = (data.get("train") or {}).get("n") or 0, (data.get("val") or {}).get("n") or 0
        share = ((tr_cut or 0) + (va_cut or 0)) / max(1, n_tr + n_va)
        at = " at the token limit" + (f" of {limit}" if limit else "")
        if tr_cut or va_cut:
            out.append(_finding("warning" if share > 0.05 else "info", "truncated",
                                f"{tr_cut or 0} training and {va_cut or 0} validation texts were cut{at} ({share:.1%}); "
                                "the model never saw their ends"))
        else:
            out.append(_finding("info", "truncated", f"no text was cut{at}"))
    oov = data.get("oov")
    if oov:
        for split in ("train", "val"):
            o = oov.get(split) or {}
            rate = float(o.get("rate", 0.0))
            out.append(_finding("warning" if rate > 0.1 else "info", "oov",
                                f"{split}: {rate:.2%} of {o.get('tokens', 0)} word tokens have no vector; most frequent unknown words below",
                                [f"{w} ({n})" for w, n in (o.get("top_unknown") or [])]))
    dup = notes.get("duplicates")
    if dup is not None and check is None:
        if dup.get("count"):
            out.append(_finding("warning", "duplicates",
                                f"{dup['count']} validation item(s) are exact copies of training items: validation metrics are inflated",
                                [f"{v} = {t}" for v, t in dup.get("examples", [])]))
        else:
            out.append(_finding("info", "duplicates", "no validation item is an exact copy of a training item"))
    return out


# --------------------------------------------------------------------------- images for the page


def _png_size(data: bytes) -> tuple[int, int]:
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    return struct.unpack(">II", data[16:24])


def _img(data: bytes, alt: str, cls: str = "plot") -> str:
    w, h = _png_size(data)
    src = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return f'<img class="{cls}" src="{src}" alt="{e(alt)}" width="{w}" height="{h}">'


def _thumbnail(path: str) -> bytes | None:
    import io

    from ..data.imagesets import load_image

    try:
        image = load_image(Path(path))
        image.thumbnail((THUMB, THUMB))
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue()
    except Exception:  # noqa: BLE001 - a missing or broken file is shown as such
        return None


# --------------------------------------------------------------------------- the page


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1f2328;background:#f6f8fa}
main{max-width:1180px;margin:0 auto;padding:24px}
h1{font-size:1.6em;margin:0 0 4px} h2{border-bottom:1px solid #d0d7de;padding-bottom:4px;margin-top:32px}
section{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:8px 20px 16px;margin:16px 0}
table{border-collapse:collapse;margin:8px 0;font-size:.92em} td,th{border:1px solid #d0d7de;padding:3px 8px;text-align:right}
th{background:#f6f8fa} td.l,th.l{text-align:left} .muted{color:#656d76}
img.plot{max-width:100%;height:auto;display:block;margin:8px 0}
.kv td:first-child{text-align:left;color:#656d76}
.gallery{display:flex;flex-wrap:wrap;gap:10px}
.card{border:1px solid #d0d7de;border-radius:6px;padding:6px;width:150px;font-size:.8em;background:#fff;overflow-wrap:anywhere}
.card img{display:block;margin:0 auto 4px;width:128px;height:128px;object-fit:contain;image-rendering:pixelated}
.snippet{border-left:3px solid #d0d7de;padding:4px 10px;margin:8px 0;white-space:pre-wrap;overflow-wrap:anywhere}
.true{color:#1a7f37} .pred{color:#cf222e}
.note-error{color:#cf222e} .note-warning{color:#9a6700} .note-info{color:#656d76}
li{margin:4px 0} code{font-size:.95em}
"""


def _metric(value: float, key: Sequence[str], digits: int = 4) -> str:
    """A number cell that names where in metrics.json it comes from (``data-metric``)."""
    return f'<td data-metric="{e(json.dumps(list(key), ensure_ascii=False))}">{value:.{digits}f}</td>'


def _kv(rows: Sequence[tuple[str, str]]) -> str:
    return '<table class="kv">' + "".join(f"<tr><td>{e(k)}</td><td class=\"l\">{v}</td></tr>" for k, v in rows) + "</table>"


def _multilabel_mistakes_html(task: str, items: Sequence[str], labels: np.ndarray, probs: np.ndarray, classes: Sequence[str],
                              thresholds: np.ndarray) -> str:
    """Rows whose predicted labels differ from their labels, the surest wrong decision first
    (a missed label scored near 0, or a wrong one near 1)."""
    on = probs >= thresholds
    wrong_cells = on != labels.astype(bool)
    wrong = np.flatnonzero(wrong_cells.any(1))
    if not len(wrong):
        return "<p>No mistakes on this set.</p>"
    severity = np.where(wrong_cells, np.abs(probs - labels), 0.0).max(1)
    order = wrong[np.argsort(-severity[wrong], kind="stable")][: MAX_MISTAKES[task]]
    head = (f"<p>{len(wrong)} of {len(labels)} rows have a wrong set of labels; the {len(order)} with the surest wrong "
            "decision first (scores are the saved model's probabilities; each label's threshold decides).</p>")

    def names(row: int, mask: np.ndarray) -> str:
        shown = [f"{classes[j]} ({probs[row, j]:.2f})" for j in np.flatnonzero(mask)]
        return e(", ".join(shown) or "none")

    cards = []
    for i in order:
        what = (f'<span class="true">true: {names(i, labels[i].astype(bool))}</span> &middot; '
                f'<span class="pred">predicted: {names(i, on[i])}</span>')
        if task == "image":
            thumb = _thumbnail(items[i])
            picture = _img(thumb, Path(items[i]).name, "thumb") if thumb else '<p class="muted">(file not readable now)</p>'
            cards.append(f'<div class="card">{picture}<div>{what}</div><div class="muted" title="{e(items[i])}">'
                         f'{e(Path(items[i]).name)}</div></div>')
        else:
            text = items[i] if len(items[i]) <= SNIPPET else items[i][:SNIPPET] + "\u2026"
            cards.append(f'<div class="snippet">{e(text)}<br>{what}</div>')
    return head + ('<div class="gallery">' + "".join(cards) + "</div>" if task == "image" else "".join(cards))


def _mistakes_html(task: str, items: Sequence[str], labels: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> str:
    pred = probs.argmax(axis=1)
    conf = probs.max(axis=1)
    wrong = np.flatnonzero(pred != labels)
    if not len(wrong):
        return "<p>No mistakes on this set.</p>"
    order = wrong[np.argsort(-conf[wrong], kind="stable")][: MAX_MISTAKES[task]]
    head = (f"<p>{len(wrong)} mistake(s) of {len(labels)}; the {len(order)} the model was surest of, most confident first "
            "(scores are the saved model's probabilities).</p>")
    if task == "image":
        cards = []
        for i in order:
            thumb = _thumbnail(items[i])
            picture = _img(thumb, Path(items[i]).name, "thumb") if thumb else '<p class="muted">(file not readable now)</p>'
            cards.append(
                f'<div class="card">{picture}<div class="true">true: {e(classes[labels[i]])} '
                f'({probs[i, labels[i]]:.3f})</div><div class="pred">predicted: {e(classes[pred[i]])} ({conf[i]:.3f})</div>'
                f'<div class="muted" title="{e(items[i])}">{e(Path(items[i]).name)}</div></div>'
            )
        return head + '<div class="gallery">' + "".join(cards) + "</div>"
    rows = []
    for i in order:
        text = items[i] if len(items[i]) <= SNIPPET else items[i][:SNIPPET] + "\u2026"
        rows.append(
            f'<div class="snippet">{e(text)}<br><span class="true">true: {e(classes[labels[i]])} ({probs[i, labels[i]]:.3f})</span>'
            f' &middot; <span class="pred">predicted: {e(classes[pred[i]])} ({conf[i]:.3f})</span></div>'
        )
    return head + "".join(rows)


def _notes_html(findings: Sequence[dict[str, Any]], check_ran: bool, intro: str | None = None) -> str:
    lines = []
    for f in findings:
        items = list(f.get("items") or [])
        shown = "".join(f"<li><code>{e(i)}</code></li>" for i in items[:MAX_NOTE_ITEMS])
        more = f"<li class=\"muted\">and {len(items) - MAX_NOTE_ITEMS} more</li>" if len(items) > MAX_NOTE_ITEMS else ""
        sev = f.get("severity", "info") if f.get("severity") in ("error", "warning", "info") else "info"
        lines.append(
            f'<li class="note-{sev}"><strong>{e(sev)}</strong> [{e(f.get("kind", ""))}] {e(f.get("message", ""))}'
            + (f"<ul>{shown}{more}</ul>" if items else "") + "</li>"
        )
    source = intro or ("The first notes come from <code>headstart check</code> (check.json); the rest from training."
                       if check_ran else "From training (no check.json in this run).")
    return f'<p class="muted">{source}</p><ul>' + "".join(lines) + "</ul>"


def _per_class_table(metrics: dict[str, Any], key: str, splits: dict[str, dict[str, int]]) -> str:
    labels = metrics["labels"]
    multi = metrics.get("objective") == "multi-label"
    head = "".join(f"<th>{e(name)} examples</th>" for name in splits)
    rows = []
    for label in labels:
        m = metrics["per_class"][label]
        counts = "".join(f"<td>{int(counts.get(label, 0))}</td>" for counts in splits.values())
        extra = ""
        if multi:
            ap = m.get("average_precision")
            extra = ((_metric(ap, [key, "per_class", label, "average_precision"], 3) if ap is not None else "<td></td>")
                     + _metric(m["threshold"], [key, "per_class", label, "threshold"], 2))
        rows.append(
            f'<tr><td class="l">{e(label)}</td>'
            + _metric(m["precision"], [key, "per_class", label, "precision"], 3)
            + _metric(m["recall"], [key, "per_class", label, "recall"], 3)
            + _metric(m["f1"], [key, "per_class", label, "f1"], 3) + extra
            + f'<td data-metric="{e(json.dumps([key, "per_class", label, "support"], ensure_ascii=False))}">{int(m["support"])}</td>'
            + counts + "</tr>"
        )
    more = "<th>average precision</th><th>threshold</th>" if multi else ""
    return (f'<table id="per-class-table"><tr><th class="l">{"label" if multi else "class"}</th><th>precision</th><th>recall</th>'
            f"<th>F1</th>{more}<th>support</th>{head}</tr>" + "".join(rows) + "</table>")


def _summary_table(metrics: dict[str, Any], k: str) -> str:
    """The headline numbers: accuracy, macro F1 and log loss; with several labels per row the
    F1 scores, subset accuracy, mean average precision and binary cross-entropy."""
    if metrics.get("objective") == "multi-label":
        cols = [("macro F1", "macro_f1"), ("micro F1", "micro_f1"), ("samples F1", "samples_f1"),
                ("subset accuracy", "accuracy"), ("mAP", "mean_average_precision"), ("log loss (per row)", "loss")]
    else:
        cols = [("accuracy", "accuracy"), ("macro F1", "macro_f1"), ("log loss", "loss")]
    return ("<table><tr><th>examples</th>" + "".join(f"<th>{e(name)}</th>" for name, _ in cols) + "</tr><tr>"
            f'<td data-metric="{e(json.dumps([k, "n"]))}">{int(metrics["n"])}</td>'
            + "".join(_metric(metrics[key], [k, key]) for _, key in cols) + "</tr></table>")


def render(
    *,
    title: str,
    info: Sequence[tuple[str, str]],
    task: str,
    metrics: dict[str, Any],
    metrics_key: str,
    eval_name: str,
    calibration: dict[str, Any] | None,
    calibration_key: str,
    splits: dict[str, dict[str, int]],
    figures: dict[str, bytes],
    predictions: tuple[list[str], np.ndarray, np.ndarray] | None,
    findings: Sequence[dict[str, Any]] | None,
    check_ran: bool = False,
    notes_intro: str | None = None,
    footer: str = "",
    extra: str = "",
) -> str:
    """The page. ``figures`` maps names (learning_curves, confusion_matrix, per_class,
    class_distribution, calibration) to PNG bytes; missing ones are explained."""
    k = metrics_key
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(title)}</title><style>{CSS}</style></head><body><main>",
        f"<h1>{e(title)}</h1>",
        f'<p class="muted">headstart {e(__version__)} &middot; built {e(time.strftime("%Y-%m-%d %H:%M:%S"))}</p>',
        '<section id="summary"><h2>Summary</h2>',
        _kv(info),
        f"<p>On {e(eval_name)}:</p>",
        _summary_table(metrics, k) + "</section>",
    ]
    multi = metrics.get("objective") == "multi-label"
    if extra:
        parts.append(extra)
    if "learning_curves" in figures:
        parts += ['<section id="learning-curves"><h2>Learning curves</h2>',
                  "<p>Loss and accuracy per epoch on the training and validation data; dashed lines mark where one "
                  "phase ends and the next begins (the head on the frozen backbone, then the unfrozen blocks).</p>",
                  _img(figures["learning_curves"], "learning curves"), "</section>"]
    if multi:
        parts += ['<section id="pr-curves"><h2>Precision and recall per label</h2>',
                  f"<p>Each label's precision-recall curve on {e(eval_name)}; the dot is where its decision threshold "
                  "(tuned on held-out rows to maximise that label's F1, saved with the model) operates. "
                  f"{e(metrics.get('thresholds_protocol', ''))}.</p>" if metrics.get("thresholds_protocol") else
                  f"<p>Each label's precision-recall curve on {e(eval_name)}; the dot is where the model's saved "
                  "threshold for the label operates.</p>",
                  _img(figures["pr_curves"], "precision-recall curve per label"), "</section>",
                  '<section id="cooccurrence"><h2>Label co-occurrence</h2>',
                  f"<p>Rows carrying both labels, on {e(eval_name)}; the diagonal is each label's count. The right panel "
                  "divides each row by its diagonal: how often a row with the row's label also carries the column's.</p>",
                  _img(figures["cooccurrence"], "label co-occurrence"), "</section>"]
    else:
        parts += ['<section id="confusion-matrix"><h2>Confusion matrix</h2>',
                  f"<p>Rows are the true classes, columns the predicted ones, on {e(eval_name)}. The right panel divides "
                  "each row by its total: the diagonal is each class's recall.</p>",
                  _img(figures["confusion_matrix"], "confusion matrix"), "</section>"]
    parts += ['<section id="per-class"><h2>Per-class precision, recall and F1</h2>',
              _per_class_table(metrics, k, splits), _img(figures["per_class"], "per-class precision, recall and F1"),
              "</section>",
              '<section id="class-distribution"><h2>Class distribution</h2>',
              _img(figures["class_distribution"], "class distribution"), "</section>"]
    parts.append('<section id="calibration"><h2>Calibration</h2>')
    if calibration:
        c, ck = calibration, calibration_key
        fitted = c.get("fitted")
        if fitted is None:
            lead = (f"<p>Probabilities are divided by the temperature stored with the model. Expected calibration error "
                    f"({int(c.get('bins', 15))} equal-width confidence bins) and log loss on {e(eval_name)}, without and with it:</p>")
        elif fitted:
            lead = ("<p>A temperature fitted on the validation logits divides the logits (temperature scaling): it changes "
                    "how confident the model says it is, never which class it picks. The saved model uses it. It was "
                    "fitted on the same rows these numbers are measured on, so the 'after' numbers are optimistic.</p>")
        else:
            lead = f"<p>No temperature was fitted: {e(c.get('reason') or '')}.</p>"
        parts += [lead, "<table><tr><th>temperature</th><th>ECE before</th><th>ECE after</th><th>log loss before</th><th>log loss after</th></tr><tr>",
                  _metric(c["temperature"], [ck, "temperature"]), _metric(c["ece_before"], [ck, "ece_before"]),
                  _metric(c["ece_after"], [ck, "ece_after"]), _metric(c["nll_before"], [ck, "nll_before"]),
                  _metric(c["nll_after"], [ck, "nll_after"]), "</tr></table>"]
        if "calibration" in figures:
            parts.append(_img(figures["calibration"], "reliability diagrams before and after temperature scaling"))
    else:
        parts.append("<p>Not available: this run has no calibration data (it was trained by an older headstart).</p>")
    parts.append("</section>")
    if metrics.get("unknown"):
        parts.append(_unknown_html(metrics["unknown"], figures, k))
    parts.append('<section id="mistakes"><h2>Most confident mistakes</h2>')
    if predictions is not None and multi:
        thresholds = np.asarray([metrics["per_class"][c]["threshold"] for c in metrics["labels"]])
        parts.append(_multilabel_mistakes_html(task, *predictions, metrics["labels"], thresholds))
    elif predictions is not None:
        parts.append(_mistakes_html(task, *predictions, metrics["labels"]))
    else:
        parts.append(f"<p>Not available: no {PREDICTIONS_FILE} in this run (it was trained by an older headstart).</p>")
    parts.append("</section>")
    if findings is not None:
        parts += ['<section id="data-notes"><h2>Data notes</h2>', _notes_html(findings, check_ran, notes_intro), "</section>"]
    parts += [f'<p class="muted">{footer}</p>' if footer else "", "</main></body></html>", ""]
    return "\n".join(parts)


# --------------------------------------------------------------------------- figures and files


def _figures(task_history: Sequence[dict] | None, metrics: dict[str, Any], splits: dict[str, dict[str, int]],
             calib_panels: list | None, predictions: tuple | None = None) -> dict[str, bytes]:
    from . import plots

    labels = metrics["labels"]
    figures: dict[str, bytes] = {}
    if task_history:
        figures["learning_curves"] = plots.learning_curves(task_history)
    if metrics.get("objective") == "multi-label":
        figures["cooccurrence"] = plots.confusion_matrix(metrics["cooccurrence"], labels, axes_names=("label", "also carries"),
                                                         normalised_title="share of the row label's rows")
        if predictions is not None:
            thresholds = [metrics["per_class"][c]["threshold"] for c in labels]
            figures["pr_curves"] = plots.pr_curves(predictions[1], predictions[2], labels, thresholds)
    else:
        figures["confusion_matrix"] = plots.confusion_matrix(metrics["confusion_matrix"], labels)
    figures["per_class"] = plots.per_class_scores(metrics["per_class"], labels)
    figures["class_distribution"] = plots.class_distribution(splits, labels)
    if calib_panels:
        figures["calibration"] = plots.reliability_diagrams(calib_panels)
    unknown = metrics.get("unknown") or {}
    if unknown.get("histograms"):
        figures["unknown"] = plots.unknown_scores(unknown["histograms"], unknown["threshold"], unknown["score"])
    return figures


def _unknown_html(u: dict[str, Any], figures: dict[str, bytes], k: str) -> str:
    """What the model answers for inputs unlike its training data."""
    parts = ['<section id="unknown"><h2>Unknown inputs</h2>',
             f"<p>The model answers <b>unknown</b> for an input whose <b>{e(u['score'])}</b> score is over "
             f"{u['threshold']:.4g}: the threshold a share {u['rate']:.0%} of in-scope held-out inputs exceeds "
             f"(train <code>--unknown-rate</code>; <code>predict --no-unknown</code> turns it off). "
             f"Score: {e(u.get('why', ''))}.</p>"]
    rows = []
    if "auroc" in u:
        rows += [("AUROC, unknown vs in-scope inputs", _metric(u["auroc"], [k, "unknown", "auroc"])),
                 ("unknown inputs answered unknown (recall)", f"{u['recall']:.1%} of {u['n_unknown']}"),
                 ("unknown answers that were right (precision)", f"{u['precision']:.1%}")]
    rows += [("in-scope inputs answered unknown", f"{u['in_scope_rejected']:.1%}"),
             ("in-scope accuracy, an unknown answer counted wrong", _metric(u["in_scope_accuracy"], [k, "unknown", "in_scope_accuracy"]))]
    parts.append(_kv(rows))
    if "unknown" in figures:
        parts.append(_img(figures["unknown"], "unknown score histograms with the threshold"))
    parts.append("</section>")
    return "".join(parts)


def _tried_html(tried: list[dict], head: dict) -> str:
    """What the recipe tried, what each scored on the same held-out rows and what was kept."""
    if not tried and not head:
        return ""
    parts = ['<section id="recipes"><h2>Recipes tried</h2>']
    if head.get("kind"):
        if head.get("C") is not None:
            C = head["C"]
            what = (f"C = {C:.3g}, chosen by cross-validation" if not isinstance(C, list) else
                    f"C per label = {', '.join(f'{c:.3g}' for c in C)}, each chosen by cross-validation")
        elif head.get("scale") is not None:
            what = f"cosine similarity x {head['scale']:g}, calibrated by temperature"
        else:
            what = f"{head.get('epochs')} epoch(s)"
        names = head.get("class_names")
        if names:
            tried_weights = names["weights_tried"]
            chosen = f" (of {', '.join(f'{w:g}' for w in tried_weights)}, chosen with C)" if len(tried_weights) > 1 else ""
            what += (f"; each class's name trained as one more example of its class at weight {names['weight']:g}{chosen}"
                     if names["weight"] else "; the class names were tried as training examples and left out (weight 0 "
                     "scored best)")
        parts.append(f"<p>The head: {e(head['kind'])}, {e(what)}.</p>")
    if tried:
        parts.append("<table><tr><th class=\"l\">recipe</th><th>accuracy</th><th>probe on the same rows</th>"
                     "<th>rows</th><th title=\"rows it alone gets right / rows only the probe gets right\">wins / losses</th>"
                     "<th>seconds</th><th class=\"l\">outcome</th></tr>")
        for i, t in enumerate(tried):
            if t.get("skipped"):
                parts.append(f'<tr><td class="l">{e(t.get("recipe"))}</td><td></td><td></td><td></td><td></td><td></td>'
                             f'<td class="l">not tried: {e(t["skipped"])}</td></tr>')
                continue
            probe = t.get("probe_accuracy")
            duel = f"{int(t['wins'])} / {int(t['losses'])}" if "wins" in t else ""
            parts.append(
                f'<tr><td class="l">{e(t.get("recipe"))}</td>'
                f'<td data-metric="{e(json.dumps(["tried", i, "accuracy"]))}">{float(t.get("accuracy", 0)):.4f}</td>'
                f'<td>{"" if probe is None else f"{float(probe):.4f}"}</td><td>{int(t.get("n", 0))}</td>'
                f'<td>{duel}</td>'
                f'<td>{float(t.get("seconds", 0)):.1f}</td><td class="l">{"kept" if t.get("kept") else "not kept"}</td></tr>'
            )
        parts.append("</table>")
    parts.append("</section>")
    return "\n".join(parts)


def _write_outputs(out: Path, page: str, figures: dict[str, bytes]) -> Path:
    plots_dir = out / PLOTS_DIR
    plots_dir.mkdir(parents=True, exist_ok=True)
    for name in FIGURES - set(figures):  # a figure this build cannot draw must not survive from an older one
        (plots_dir / f"{name}.png").unlink(missing_ok=True)
    for name, data in figures.items():
        tmp = plots_dir / f".{name}.png.tmp"
        tmp.write_bytes(data)
        tmp.replace(plots_dir / f"{name}.png")
    tmp = out / f".{REPORT_FILE}.tmp"
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out / REPORT_FILE)
    return out / REPORT_FILE


def _calibration_panels(probs_after: np.ndarray, labels: np.ndarray, temperature: float, after_title: str):
    """Reliability before and after the temperature, from the probabilities after it (with
    several labels per row: every (row, label) probability, before and after the shared
    temperature of the sigmoids)."""
    from ..evaluation.calibration import expected_calibration_error, label_calibration_error, label_reliability

    if np.asarray(labels).ndim == 2:
        p = np.clip(probs_after, 1e-12, 1 - 1e-12)
        before = 1.0 / (1.0 + np.exp(-np.log(p / (1 - p)) * temperature))
        return [
            ("before (T = 1), every label", label_reliability(before, labels), label_calibration_error(before, labels)),
            (f"{after_title} (T = {temperature:.3f})", label_reliability(probs_after, labels), label_calibration_error(probs_after, labels)),
        ]
    before = apply_temperature(log_probs(probs_after) * temperature, 1.0)
    return [
        ("before (T = 1)", reliability(before, labels), expected_calibration_error(before, labels)),
        (f"{after_title} (T = {temperature:.3f})", reliability(probs_after, labels), expected_calibration_error(probs_after, labels)),
    ]


def write_model_card(model_dir: Path, val_metrics: dict[str, Any] | None = None) -> Path | None:
    """(Re)write ``MODEL_DIR/README.md`` from its config; None when it is no model directory."""
    from ..classifiers.artifact import read_config
    from .card import CARD_FILE, model_card
    from ..errors import ModelDirError

    try:
        config = read_config(model_dir)
    except ModelDirError:
        return None
    tmp = model_dir / f".{CARD_FILE}.tmp"
    tmp.write_text(model_card(config, val_metrics), encoding="utf-8")
    tmp.replace(model_dir / CARD_FILE)
    return model_dir / CARD_FILE


def build_report(run_dir: str | Path) -> Path:
    """(Re)build ``RUN_DIR/report.html``, ``RUN_DIR/plots/`` and ``RUN_DIR/model/README.md``
    from what a training run left in ``run_dir``; no training, no model weights needed."""
    directory = RunDir(run_dir)
    run = directory.path
    metrics = directory.metrics()
    if "val" not in metrics or "per_class" not in (metrics.get("val") or {}):
        raise DataError(f"{str(run / METRICS_FILE)!r} has no validation metrics; was this run finished?")
    run_config = directory.config()
    model_config = directory.model_config()
    val = metrics["val"]
    classes = val["labels"]
    task = run_config.get("task") or model_config.get("task") or "image"
    data = metrics.get("data") or {}
    splits = {name: (data.get(name) or {}).get("per_class") or {} for name in ("train", "val")}
    splits = {("training" if n == "train" else "validation"): c for n, c in splits.items() if c}
    if not splits:
        splits = {"validation": {c: val["per_class"][c]["support"] for c in classes}}
    separator = (model_config.get("objective") or {}).get("separator", ";") if val.get("objective") == "multi-label" else None
    predictions = directory.predictions(classes, separator)
    calibration = metrics.get("calibration")
    panels = None
    if predictions is not None and calibration:
        panels = _calibration_panels(predictions[2], predictions[1], float(calibration["temperature"]),
                                     "after temperature scaling" if calibration.get("fitted") else "no temperature fitted")
    try:
        check = directory.check()
    except DataError as exc:
        check = None
        log.warning("%s", exc)
    findings = data_findings(metrics, check)
    if check is None and (run / CHECK_FILE).exists():
        findings.insert(0, _finding("warning", "check", f"{CHECK_FILE} exists but could not be read"))
    figures = _figures(metrics.get("history"), val, splits, panels, predictions)
    training = run_config.get("training") or model_config.get("training") or {}
    backbone = run_config.get("backbone") or (model_config.get("backbone") or model_config.get("encoder") or {}).get("name", "?")
    val_source = (data.get("val") or {}).get("source") or "the validation set"
    info = [
        ("task", e(task)),
        ("backbone", e(backbone)),
        ("recipe", e(metrics.get("recipe") or training.get("recipe", "?"))
         + (f" (asked: {e(training.get('recipe'))})" if metrics.get("recipe") and training.get("recipe") not in (None, metrics.get("recipe")) else "")),
        ("validation protocol", e((metrics.get("protocol") or {}).get("description") or val_source)),
        ("training data", e(run_config.get("data") or (data.get("train") or {}).get("source", "?"))),
        ("validation data", e(val_source)),
        ("classes", str(len(classes))),
        ("training time", f"{float(metrics.get('train_seconds', 0.0)):.1f} s, precision {e(metrics.get('precision', '?'))}"),
        ("model", f"<code>{e(run / 'model')}</code>"),
    ]
    page = render(
        extra=_tried_html(metrics.get("tried") or [], metrics.get("head") or {}),
        title=f"{backbone} {task} classifier: {run.resolve().name}", info=info, task=task, metrics=val, metrics_key="val",
        eval_name=f"the validation set ({val_source}, {val['n']} examples)", calibration=calibration,
        calibration_key="calibration", splits=splits, figures=figures, predictions=predictions, findings=findings,
        check_ran=check is not None,
        footer=f"Rebuild this page with <code>headstart report {e(run)}</code>; figures are also in {e(run / PLOTS_DIR)}/.",
    )
    path = _write_outputs(run, page, figures)
    if (run / "model").is_dir():
        write_model_card(directory.model, val)
    return path


def evaluation_report(clf, model_dir: str | Path, data: Any, out_dir: str | Path, unknown: Any = None) -> tuple[Path, dict[str, Any]]:
    """The evaluation part of a report for any labelled ``data``: metrics, confusion matrix,
    per-class scores, calibration with the model's stored temperature and the most
    confident mistakes, in ``out_dir`` (report.html, plots/, metrics.json, predictions.csv).
    Returns the page's path and the metrics."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise HeadstartError(f"report directory {str(out)!r} is a file; pass a directory path")
    if out.is_dir() and any(out.iterdir()):
        previous = out / METRICS_FILE
        ours = False
        if previous.is_file():
            try:
                ours = read_json(previous, "metrics file").get("report") == "evaluation"
            except DataError:
                ours = False
        if not ours:
            raise HeadstartError(
                f"report directory {str(out)!r} is not empty and holds no earlier evaluation report; pass another "
                "--report directory (nothing was overwritten)"
            )
    ev = clf.evaluation(data, unknown=unknown)
    items, labels, logits, probs, metrics = ev.items, ev.labels, ev.logits, ev.probs, ev.metrics
    skipped = metrics["skipped"]
    if unknown is not None:
        from ..models.unknown import histograms

        metrics["unknown"]["histograms"] = histograms({"in-scope": ev.scores, "unknown": ev.unknown_scores})
    multi = clf.objective_.multi_label
    calibration = clf.objective_.summarise(logits, labels, clf.temperature_)
    out.mkdir(parents=True, exist_ok=True)
    if clf.task == "image":
        items = [str(Path(i).absolute()) for i in items]
    thresholds = clf.decision_.thresholds if multi else None
    write_predictions(out / EVAL_PREDICTIONS_FILE, items, labels, probs, clf.classes_, thresholds,
                      clf.objective_.separator or ";")
    splits = {"evaluation": {c: metrics["per_class"][c]["support"] for c in clf.classes_}}
    panels = _calibration_panels(probs, labels, clf.temperature_, "with the model's temperature")
    figures = _figures(None, metrics, splits, panels, (items, labels, probs))
    findings = []
    if skipped:
        findings.append(_finding("warning", "skipped", f"{len(skipped)} input(s) were skipped",
                                 [f"{s['path']} ({s['reason']})" for s in skipped]))
    info = [("task", e(clf.task)), ("model", f"<code>{e(model_dir)}</code>"), ("data", f"<code>{e(data)}</code>"),
            ("classes", str(len(clf.classes_))), ("stored temperature", f"{clf.temperature_:.4f}")]
    page = render(
        title=f"evaluation of {Path(model_dir).resolve().name} on {Path(str(data)).name}", info=info, task=clf.task,
        metrics=metrics, metrics_key="metrics", eval_name=f"{data} ({metrics['n']} examples)",
        calibration={**calibration, "fitted": None}, calibration_key="calibration", splits=splits, figures=figures,
        predictions=(items, labels, probs), findings=findings or None, notes_intro="Inputs that could not be read.",
        footer=f"Rebuild with <code>headstart evaluate {e(model_dir)} {e(data)} --report {e(out)}</code>.",
    )
    record = {"report": "evaluation", "model": str(model_dir), "data": str(data), "metrics": metrics,
              "calibration": calibration, "headstart_version": __version__}
    write_json(out / METRICS_FILE, record)
    return _write_outputs(out, page, figures), metrics
