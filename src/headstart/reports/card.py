"""The model card: ``README.md`` inside a model directory, written from its config.

It says what the model does, what it was trained on, how good it is on which data, how
far its confidence can be trusted, where it will fail, and how to use it, so that a model
directory handed to someone else explains itself. Everything comes from ``config.json``
(and the validation metrics when they are at hand): the card never claims more than the
directory holds. Labels and texts are HTML-escaped and their Markdown punctuation
backslash-escaped, so a label such as ``<script>`` or ``[x](javascript:alert(1))`` shows as
text wherever the Markdown is rendered.
"""

from __future__ import annotations

import html
import math
import re
from typing import Any

CARD_FILE = "README.md"
UNKNOWN_LICENCE = "see the weights' source"
# per-class tables longer than this are cut (the full table is in metrics.json)
MAX_CLASS_ROWS = 50


# Markdown punctuation that opens links, images, emphasis, code, headings, tables or escapes.
_MD_PUNCTUATION = re.compile(r"([\\`*_\[\]()!#~|<>])")
# Starts of block syntax that only count at the start of a line: lists, quotes, setext rules.
_MD_LINE_START = re.compile(r"^(\s*)([-+=])(?=\s|$|[-+=])")  # "- x", "+ x", "---", "==="
_MD_ORDERED = re.compile(r"^(\s*\d+)\.(?=\s|$)")  # "1. x" (a "1) x" is already escaped above)


def md(text: Any) -> str:
    """Text that shows as itself inside Markdown and its tables: HTML-escaped (no raw HTML,
    no entities), Markdown punctuation backslash-escaped (a label ``[x](javascript:...)``
    or ``![](https://host/p.png)`` stays text, not a link or a remote image), line breaks
    flattened, and a leading list or rule marker defused."""
    flat = " ".join(str(text).splitlines())
    escaped = _MD_PUNCTUATION.sub(r"\\\1", html.escape(flat, quote=False))
    return _MD_ORDERED.sub(r"\1\\.", _MD_LINE_START.sub(r"\1\\\2", escaped))


def backbone_info(config: dict[str, Any]) -> dict[str, str]:
    """Name, kind, weights source and licence of the pretrained part, for either task."""
    if config.get("task") == "image":
        bb = config.get("backbone", {})
        kind = f"image backbone (timm architecture {md(bb.get('arch', '?'))})"
        source = str(bb.get("weights_source") or "unknown")
        if source == "none":
            source = "none (random initialisation)"
        return {"name": str(bb.get("name", "?")), "kind": kind, "source": source,
                "licence": str(bb.get("licence") or UNKNOWN_LICENCE)}
    enc = config.get("encoder", {})
    if enc.get("kind") == "word-vectors":
        kind = f"word vectors ({md(enc.get('vocab_size', '?'))} words, {md(enc.get('dim', '?'))} dimensions)"
        if enc.get("sequence_encoder", "none") != "none":
            kind += f" + {md(enc['sequence_encoder'])} sequence encoder"
    else:
        mc = enc.get("model_config", {})
        kind = (f"transformer text encoder ({md(mc.get('model_type', '?'))}, {md(mc.get('num_hidden_layers', '?'))} layers, "
                f"{md(mc.get('hidden_size', '?'))} wide)")
    return {"name": str(enc.get("name", "?")), "kind": kind, "source": str(enc.get("weights_source") or "unknown"),
            "licence": str(enc.get("licence") or UNKNOWN_LICENCE)}


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _recipe_line(recipe: str, training: dict, phase2: dict | None = None) -> str:
    """What trained the saved model, in one line (``phase2``: the epochs it ran, when known)."""
    if recipe == "linear-probe":
        what = "the backbone frozen, the head solved on its features"
    elif recipe in ("fine-tune", "full"):
        layers = "the top blocks" if recipe == "fine-tune" else "every layer"
        if phase2:
            part = f" over {phase2['trained_rows']} training rows (what the time budget held)" if phase2.get("trained_rows") else ""
            what = f"{phase2['epochs']} epoch(s) of {layers}{part}, of {training.get('epochs', '?')} planned"
        else:
            what = f"{training.get('epochs', '?')} epoch(s) of {layers}"
    elif recipe == "prototype":
        what = "the backbone frozen, each class its mean feature direction (nearest class mean by cosine)"
    elif recipe == "contrastive":
        what = "the encoder tuned contrastively on the labelled rows, the head solved on its embeddings"
    else:
        what = "chosen on validation"
    asked = training.get("recipe")
    chosen = f" (chosen by {md(asked)})" if asked and asked != recipe else ""
    return f"- Recipe: {md(recipe)}{chosen}, {what}; seed {training.get('seed', '?')}"


def _class_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows[:MAX_CLASS_ROWS]]
    if len(rows) > MAX_CLASS_ROWS:
        lines.append(f"\n({len(rows) - MAX_CLASS_ROWS} more classes in metrics.json)")
    return lines


def _unknown_line(config: dict[str, Any], what: str, k: int) -> str:
    """The limitation a model with one label per input has with inputs outside its classes."""
    rule = config.get("decision") or {}
    if rule.get("kind") != "abstain":
        return (f"- It always answers with one of its {k} labels, even for {what} that belong to none of them: "
                "it has no unknown threshold (trained with `--unknown-rate 0`, or one of its classes is named "
                "'unknown'). A low top score is the only hint.")
    return (f"- It answers `unknown` for {what} whose {md(rule['score'])} score is over {rule['threshold']:.4g}, a threshold "
            f"{rule['rate']:.0%} of in-scope held-out {what} exceed, so about that share of in-scope {what} is answered "
            "unknown too; inputs outside its classes that resemble them can still get a class. Measure both on your own "
            "data with `headstart evaluate MODEL DATA --unknown OTHER_DATA`.")


def model_card(config: dict[str, Any], val_metrics: dict[str, Any] | None = None) -> str:
    """The Markdown model card of a model directory's ``config``."""
    task = config.get("task", "?")
    labels = list(config.get("labels", []))
    bb = backbone_info(config)
    summary = config.get("summary") or {}
    data = summary.get("data") or {}
    training = config.get("training") or {}
    calib = summary.get("calibration") or {}
    temperature = float(config.get("temperature", 1.0))
    what = "images" if task == "image" else "texts"
    multi = (config.get("objective") or {}).get("name") == "multi-label"
    thresholds = (config.get("decision") or {}).get("thresholds") or []
    assigns = (f"any of {len(labels)} labels to {what} (several, or none): a sigmoid per label, and each label "
               "whose probability reaches its own threshold is answered" if multi else f"one of {len(labels)} labels to {what}")
    out = [
        f"# {md(bb['name'])} {task} classifier ({len(labels)} {'labels, several per input' if multi else 'classes'})",
        "",
        f"{'An' if task == 'image' else 'A'} {task} classifier trained with headstart {md(config.get('headstart_version', ''))} by transfer learning: "
        f"a pretrained {bb['kind']} with a new classification head. It assigns {assigns}.",
        "",
        "## Labels",
        "",
        ", ".join(md(label) for label in labels),
        "",
        "## Backbone and licence",
        "",
        f"- Pretrained part: {md(bb['name'])}, {bb['kind']}",
        f"- Weights from: {md(bb['source'])}",
        f"- Licence of the pretrained weights: {md(bb['licence'])}. The trained model is derived from them; "
        "check that licence before you distribute it.",
        _recipe_line(summary.get("recipe") or training.get("recipe", "?"), training, summary.get("phase2")),
    ]
    if task == "image" and "preprocessing" in config:
        pre = config["preprocessing"]
        out.append(f"- Input: {pre.get('input_size')} px, {pre.get('interpolation')} resize, centre crop {pre.get('crop_pct')}")
    elif task == "text":
        out.append(f"- Input: up to {config.get('encoder', {}).get('max_length', '?')} tokens; longer texts are cut")
    out += ["", "## Training data", ""]
    if data:
        for split in ("train", "val"):
            part = data.get(split) or {}
            if part:
                line = f"- {'Training' if split == 'train' else 'Validation'}: {part.get('n', '?')} {what} from {md(part.get('source', '?'))}"
                if part.get("truncated"):
                    line += f"; {part['truncated']} cut at the token limit"
                out.append(line)
        if data.get("skipped"):
            out.append(f"- {data['skipped']} input(s) skipped as unreadable or empty")
        oov = data.get("oov")
        if oov:
            val_oov = f", {_pct(oov['val']['rate'])} of validation tokens" if oov.get("val") else ""
            out.append(f"- Words without a vector: {_pct(oov['train']['rate'])} of training tokens{val_oov}")
        counts = [(label, (data.get("train") or {}).get("per_class", {}).get(label, 0),
                   (data.get("val") or {}).get("per_class", {}).get(label, 0)) for label in labels]
        if counts:
            out += ["", *_class_table(["class", "train", "validation"], [[md(c), str(t), str(v)] for c, t, v in counts])]
    else:
        out.append("Not recorded (this model was not saved from a training run).")
    out += ["", "## Metrics", ""]
    if "val_accuracy" in summary:
        n = int(summary.get("val_n") or 0)
        acc = float(summary["val_accuracy"])
        protocol = summary.get("protocol") or {}
        val_source = protocol.get("description") or (data.get("val") or {}).get("source", "the validation set")
        out.append(f"Validation protocol: {md(val_source)} ({n} {what}).")
        out.append("")
        interval = ""
        if n:
            half = 1.96 * math.sqrt(max(acc * (1 - acc), 1e-12) / n)
            interval = f" (about +/- {_pct(half)} at 95% confidence for {n} examples)"
        if multi:
            out += [f"- Macro F1: {float(summary['val_macro_f1']):.4f}"]
            if val_metrics:
                out += [f"- Micro F1: {val_metrics.get('micro_f1', 0):.4f}, samples F1: {val_metrics.get('samples_f1', 0):.4f}",
                        f"- Subset accuracy (every label right): {acc:.4f}",
                        f"- Mean average precision: {val_metrics.get('mean_average_precision', 0):.4f}",
                        f"- Thresholds: {md(val_metrics.get('thresholds_protocol', 'tuned on the validation rows'))}"]
        else:
            out += [f"- Accuracy: {acc:.4f}{interval}", f"- Macro F1: {float(summary['val_macro_f1']):.4f}"]
        if val_metrics and val_metrics.get("per_class") and multi:
            pc = val_metrics["per_class"]
            rows = [[md(c), f"{pc[c]['precision']:.3f}", f"{pc[c]['recall']:.3f}", f"{pc[c]['f1']:.3f}",
                     f"{pc[c].get('threshold', 0.5):.2f}", str(pc[c]['support'])] for c in labels if c in pc]
            out += ["", *_class_table(["label", "precision", "recall", "F1", "threshold", "support"], rows)]
        elif val_metrics and val_metrics.get("per_class"):
            pc = val_metrics["per_class"]
            rows = [[md(c), f"{pc[c]['precision']:.3f}", f"{pc[c]['recall']:.3f}", f"{pc[c]['f1']:.3f}", str(pc[c]['support'])]
                    for c in labels if c in pc]
            out += ["", *_class_table(["class", "precision", "recall", "F1", "support"], rows)]
        out += ["", "No scored row was trained on by the model that scored it, but the same rows also chose the "
                "regularisation, the recipe or the best epoch (and the temperature below), so these numbers are somewhat "
                "optimistic: measure on data the model never saw with `headstart evaluate`."]
    else:
        out.append("Not recorded: evaluate the model on labelled data with `headstart evaluate MODEL DATA`.")
    out += ["", "## Calibration", ""]
    if calib:
        if calib.get("fitted"):
            out.append(
                f"Predicted probabilities are divided by a temperature T = {temperature:.4f} fitted on the validation set "
                f"(temperature scaling). Expected calibration error ({calib.get('bins', 15)} bins) on that set: "
                f"{calib['ece_before']:.4f} before, {calib['ece_after']:.4f} after; negative log-likelihood "
                f"{calib['nll_before']:.4f} before, {calib['nll_after']:.4f} after."
            )
        else:
            out.append(
                f"No temperature fitted ({md(calib.get('reason') or 'not fitted')}); T = {temperature:.4f}. "
                f"Expected calibration error on the validation set: {calib['ece_before']:.4f}."
            )
    else:
        out.append(f"T = {temperature:.4f}" + (" (no temperature scaling)." if temperature == 1.0 else "."))
    out += [
        "",
        "## Limitations",
        "",
        (f"- Each label is decided on its own (thresholds {', '.join(f'{t:.2f}' for t in thresholds)}): an input far "
         "from the training data can still score high on some label." if multi else _unknown_line(config, what, len(labels))),
        "- It learned from the training data above: other cameras, styles, domains, languages or class "
        "balances than those can lower the accuracy without warning. Evaluate on your own data first.",
        "- The metrics come from a limited number of examples; small classes have wide error margins.",
        f"- It inherits the biases and gaps of the pretrained {bb['kind']} and of its training data.",
    ]
    if task == "text":
        out.append("- Text beyond the token limit is ignored; the default encoders and vectors were trained on English.")
    out += [
        "",
        "## How to use it",
        "",
        "```bash",
        "pip install headstart",
        "headstart predict MODEL_DIR " + ("photo.jpg folder/ --top-k 3" if task == "image" else "\"some text to classify\" --top-k 3"),
        "headstart evaluate MODEL_DIR " + ("labelled_folder/" if task == "image" else "labelled.csv") + " --report eval-report/",
        "```",
        "",
        "```python",
        "import headstart",
        "",
        "clf = headstart.load(\"MODEL_DIR\")",
        "clf.classes_                         # the labels, in column order",
        ("clf.predict([\"photo.jpg\"])           # " if task == "image" else "clf.predict([\"some text\"])           # ")
        + ("a list of labels per input (those over their thresholds)" if multi else "label strings"),
        ("clf.predict_proba([\"photo.jpg\"])     # probabilities (temperature applied)" if task == "image" else "clf.predict_proba([\"some text\"])     # probabilities (temperature applied)"),
        "```",
        "",
        "`MODEL_DIR` is this directory. Loading reads `config.json` and `model.safetensors` only (plus the "
        "tokenizer or vocabulary files of a text model): no network, no training data, no stored code run.",
        "",
    ]
    return "\n".join(out)
