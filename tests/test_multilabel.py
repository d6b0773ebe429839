"""Several labels per row: reading them, the objective and its thresholds, and that they
survive save, export and serve; images and texts through the same commands."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from headstart import TextClassifier, load
from headstart.classifiers.artifact import read_config
from headstart.data.check import check_path
from headstart.cli import cli
from headstart.errors import DataError, HeadstartError
from headstart.objectives import (Argmax, MultiLabel, Thresholds, best_thresholds, cross_fitted_decisions,
                                  decision_from_config, objective_from_config)
from headstart.data.textdata import read_table

from conftest import COLORS, FILLER, TINY, make_image

TOPICS = {"fruit": ["good", "great", "love"], "car": ["bad", "awful", "hate"], "sky": ["fun", "poor", "boring"]}


def topic_texts(n: int = 60, seed: int = 0) -> tuple[list[str], list[str]]:
    """Texts carrying one or two topics, each named by its words (in the tiny BERT's vocabulary)."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    names = list(TOPICS)
    for i in range(n):
        chosen = sorted(rng.choice(3, size=1 + i % 2, replace=False))
        words = [w for j in chosen for w in rng.choice(TOPICS[names[j]], 2)] + list(rng.choice(FILLER, 2))
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(";".join(names[j] for j in chosen))
    return texts, labels


def write_table(path: Path, texts, labels) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "labels"])
        w.writerows(zip(texts, labels))
    return path


@pytest.fixture(scope="module")
def multi_text(tmp_path_factory, tiny_bert):
    texts, labels = topic_texts(60)
    clf = TextClassifier(backbone=str(tiny_bert), recipe="linear-probe", batch_size=8, precision="fp32", seed=0,
                         cache=False).fit(texts, labels)
    return clf, clf.save(tmp_path_factory.mktemp("multi") / "model")


# --------------------------------------------------------------------------- reading


def test_a_separator_makes_labels_not_combined_classes(tmp_path):
    path = write_table(tmp_path / "t.csv", ["a", "b", "c", "d"], ["anger;sadness", "joy", "sadness ; joy", "anger"])
    data = read_table(path)
    assert data.classes == ["anger", "joy", "sadness"]  # never 'anger;sadness'
    assert data.labels.tolist() == [[1, 0, 1], [0, 1, 0], [0, 1, 1], [1, 0, 0]]
    single = read_table(path, multi_label=False)
    assert "anger;sadness" in single.classes and single.labels.ndim == 1
    forced = read_table(write_table(tmp_path / "u.csv", ["a", "b"], ["x", "y"]), multi_label=True)
    assert forced.labels.tolist() == [[1, 0], [0, 1]]
    piped = read_table(write_table(tmp_path / "p.csv", ["a", "b"], ["x|y", "y"]), label_sep="|")
    assert piped.classes == ["x", "y"] and piped.labels.tolist() == [[1, 1], [0, 1]]


def test_a_model_reads_new_data_as_it_learned(multi_text, tmp_path):
    clf, _ = multi_text
    path = write_table(tmp_path / "v.csv", ["good great", "bad"], ["fruit", "car"])  # no separator in any cell
    data = clf._read(path, classes=clf.classes_)
    assert data.labels.shape == (2, 3)
    with pytest.raises(DataError, match="never appear"):
        clf._read(write_table(tmp_path / "w.csv", ["good"], ["fruit;moon"]), classes=clf.classes_)


def test_check_reports_cardinality_rare_labels_and_look_alikes(tmp_path):
    texts, labels = topic_texts(40)
    labels[0] = "fruit;rare one"
    report = check_path(write_table(tmp_path / "t.csv", texts, labels), task="text")
    kinds = {f.kind: f for f in report.findings}
    assert "multi-label" in kinds and "1.5" in kinds["multi-label"].message
    assert "rare-labels" in kinds and kinds["rare-labels"].items == ["rare one (1)"]
    report = check_path(write_table(tmp_path / "s.csv", ["a", "b", "c"], ["cat, dog", "dog", "cat"]), task="text")
    assert any(f.kind == "separator-look-alike" and f.items == ["cat, dog"] for f in report.findings)


# --------------------------------------------------------------------------- the objective


def test_thresholds_maximise_each_labels_f1_and_round_trip():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, (200, 2))
    probs = np.clip(0.3 * y + rng.uniform(0, 0.6, (200, 2)), 0, 1)  # positives sit higher, overlap around 0.3-0.6
    t = best_thresholds(probs, y)
    for k in range(2):
        def f1(th):
            pred = probs[:, k] >= th
            tp = (pred & (y[:, k] == 1)).sum()
            return 2 * tp / max(1, pred.sum() + y[:, k].sum())
        assert f1(t[k]) >= max(f1(th) for th in np.linspace(0.05, 0.95, 19)) - 1e-12
    rule = Thresholds(t)
    again = decision_from_config(json.loads(json.dumps(rule.to_config())), 2)
    np.testing.assert_allclose(again.thresholds, t, atol=1e-6)
    assert isinstance(decision_from_config(None, 2), Argmax)
    assert objective_from_config({"name": "multi-label", "separator": "|"}).separator == "|"


def test_cross_fitted_thresholds_never_see_the_row_they_decide():
    """Each row's decision must not depend on its own label: flipping a row's label leaves
    that row's decision unchanged (its thresholds were tuned on the other parts)."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, (60, 3))
    probs = np.clip(0.4 * y + rng.uniform(0, 0.6, (60, 3)), 0, 1)
    base = cross_fitted_decisions(probs, y, folds=5, seed=0)
    for i in rng.choice(60, 10, replace=False):
        flipped = y.copy()
        flipped[i] = 1 - flipped[i]
        assert (cross_fitted_decisions(probs, flipped, folds=5, seed=0)[i] == base[i]).all()


def test_multi_label_metrics():
    obj = MultiLabel()
    y = np.array([[1, 0], [1, 1], [0, 1], [0, 0]])
    probs = np.array([[0.9, 0.2], [0.8, 0.7], [0.3, 0.4], [0.1, 0.1]])
    m = obj.metrics(y, probs, ["a", "b"], Thresholds(np.array([0.5, 0.5])))
    assert m["accuracy"] == 0.75 and m["per_class"]["b"]["recall"] == 0.5
    assert m["micro_f1"] == pytest.approx(2 * 3 / (2 * 3 + 1)) and m["mean_average_precision"] == 1.0
    assert m["cooccurrence"] == [[2, 1], [1, 2]]


# --------------------------------------------------------------------------- a model


def test_text_model_predicts_label_sets_and_round_trips(multi_text, tmp_path):
    clf, path = multi_text
    assert clf.objective_.multi_label and clf.val_metrics_["objective"] == "multi-label"
    assert clf.val_metrics_["macro_f1"] > 0.8, clf.val_metrics_
    assert "iteratively stratified" in clf.protocol_["description"]
    config = read_config(path)
    assert config["format_version"] == 2 and config["objective"]["name"] == "multi-label"
    assert len(config["decision"]["thresholds"]) == 3
    texts, truth = topic_texts(20, seed=9)
    answers = clf.predict(texts)
    assert all(isinstance(a, list) for a in answers) and isinstance(clf.predict(texts[0]), list)
    assert np.mean([set(a) == set(t.split(";")) for a, t in zip(answers, truth)]) >= 0.7
    loaded = load(path)
    assert loaded.predict(texts) == answers
    np.testing.assert_allclose(loaded.decision_.thresholds, clf.decision_.thresholds)
    np.testing.assert_allclose(loaded.predict_proba(texts), clf.predict_proba(texts), atol=1e-6)
    metrics = loaded.evaluate(*topic_texts(30, seed=5))
    assert metrics["objective"] == "multi-label" and metrics["macro_f1"] > 0.7


def test_single_label_models_keep_format_one(trained_text, tmp_path):
    """Single-label models that never answer unknown keep format 1; the unknown rule (on by
    default) makes a format-2 config with the decision and no objective."""
    path = trained_text.save(tmp_path / "m")
    config = read_config(path)
    assert config["format_version"] == 2 and "objective" not in config and config["decision"]["kind"] == "abstain"
    trained_text.decision_ = trained_text.decision_.inner  # as trained with --unknown-rate 0
    del trained_text.model_.unknown
    path = trained_text.save(tmp_path / "m1")
    config = read_config(path)
    assert config["format_version"] == 1 and "objective" not in config and "decision" not in config
    assert isinstance(load(path).predict("good great"), str)


@pytest.fixture
def trained_text(tiny_bert):
    from conftest import make_texts

    return TextClassifier(backbone=str(tiny_bert), recipe="linear-probe", precision="fp32", cache=False).fit(*make_texts(30))


def test_one_class_recipes_refuse_several_labels(tiny_bert):
    texts, labels = topic_texts(30)
    with pytest.raises(HeadstartError, match="several labels per row"):
        TextClassifier(backbone=str(tiny_bert), recipe="contrastive", precision="fp32", cache=False).fit(texts, labels)


def test_thresholds_survive_export_and_serve(multi_text, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from headstart.deploy.export import export_model
    from headstart.deploy.runtime import OnnxClassifier
    from headstart.deploy.serve import create_app

    clf, path = multi_text
    # the tiny random encoder's features barely vary, so its solved head has large weights and
    # float rounding shows in the fourth decimal of a probability; real encoders pass the default 1e-3
    out = export_model(path, "onnx", tmp_path / "onnx", samples=8, tolerance=2e-3)
    assert out.parity.passed
    described = json.loads((out.path / "headstart-export.json").read_text())
    assert described["decision"] == read_config(path)["decision"] and described["format_version"] == 2
    onnx = OnnxClassifier.load(out.path)
    texts = ["good great love", "bad hate fun boring"]
    assert onnx.predict(texts) == clf.predict(texts)
    for model in (load(path), onnx):
        with TestClient(create_app(model, batching=False)) as client:
            answer = client.post("/predict", json={"texts": texts}).json()
        decided = [[p["label"] for p in r["labels"]] for r in answer["results"]]
        assert decided == clf.predict(texts)


# --------------------------------------------------------------------------- the commands, images and text


def test_images_with_two_labels_train_and_evaluate_through_the_cli(tmp_path):
    rows = []
    rng = np.random.default_rng(0)
    names = list(COLORS)
    for i in range(36):
        a, b = (names[j] for j in rng.choice(3, 2, replace=False))
        top, bottom = COLORS[a], COLORS[b]
        path = tmp_path / "img" / f"{i}.png"
        make_image(path, top, seed=i)
        from PIL import Image

        arr = np.asarray(Image.open(path)).copy()
        arr[arr.shape[0] // 2:] = bottom  # top half one colour, bottom half another
        Image.fromarray(arr).save(path)
        rows.append((f"img/{i}.png", f"{a};{b}"))
    with open(tmp_path / "train.csv", "w", newline="") as f:
        csv.writer(f).writerows([("path", "labels"), *rows])
    import conftest  # noqa: F401 - the tiny backbone is registered

    runner = CliRunner()
    result = runner.invoke(cli, ["train", str(tmp_path / "train.csv"), "--backbone", TINY, "--weights", "none",
                                 "--recipe", "linear-probe", "--precision", "fp32", "--workers", "0", "--no-cache",
                                 "--out", str(tmp_path / "run"), "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "macro F1:" in result.output and "subset accuracy" in result.output
    model = tmp_path / "run" / "model"
    assert read_config(model)["objective"]["name"] == "multi-label"
    report = (tmp_path / "run" / "report.html").read_text()
    assert 'id="pr-curves"' in report and 'id="cooccurrence"' in report
    result = runner.invoke(cli, ["evaluate", str(model), str(tmp_path / "train.csv"), "--json"], catch_exceptions=False)
    metrics = json.loads(result.output)
    assert metrics["objective"] == "multi-label" and set(metrics["per_class"]) == set(COLORS)
    result = runner.invoke(cli, ["predict", str(model), str(tmp_path / "img" / "0.png"), "--json"], catch_exceptions=False)
    answer = json.loads(result.output)
    assert "labels" in answer and all(p["label"] in COLORS for p in answer["labels"])


def test_a_folder_of_class_folders_cannot_be_multi_label(folder):
    from headstart.data.imagesets import scan_folder

    with pytest.raises(DataError, match="CSV of path,labels"):
        scan_folder(folder, multi_label=True)
