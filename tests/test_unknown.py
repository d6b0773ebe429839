"""Unknown inputs: the score, its threshold on held-out in-scope rows, and the answer
``unknown`` through predict, evaluate, save/load, export, the runtime and the server."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import conftest
from conftest import TINY, make_folder
from headstart import ImageClassifier, load
from headstart.cli import main
from headstart.errors import HeadstartError, ModelDirError
from headstart.objectives import Abstain, Argmax, decision_from_config
from headstart.models import unknown as U

CLASSES = ("red", "green", "blue", "yellow", "cyan")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    with pytest.MonkeyPatch.context() as mp:  # two more colours, for these photos only
        mp.setitem(conftest.COLORS, "yellow", (220, 220, 30))
        mp.setitem(conftest.COLORS, "cyan", (30, 220, 220))
        return make_folder(tmp_path_factory.mktemp("unknown") / "photos", per_class=10, classes=CLASSES)


@pytest.fixture(scope="module")
def noise(tmp_path_factory) -> list[Path]:
    """Out-of-distribution inputs: uniform noise, nothing like the single-colour classes."""
    root = tmp_path_factory.mktemp("noise")
    rng = np.random.default_rng(0)
    out = []
    for i in range(10):
        out.append(root / f"noise{i}.png")
        Image.fromarray(rng.integers(0, 256, (36, 40, 3), dtype=np.uint8)).save(out[-1])
    return out


def fit(photos, **kw) -> ImageClassifier:
    return ImageClassifier(backbone=TINY, weights="none", recipe="linear-probe", batch_size=8, precision="fp32",
                           num_workers=0, seed=0, **kw).fit(photos)


@pytest.fixture(scope="module")
def model(photos) -> ImageClassifier:
    return fit(photos)


# --------------------------------------------------------------------------- the scores


def test_knn_scores_never_compare_a_row_with_itself():
    bank = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]]), dim=1)
    alone = U.knn_scores(bank, bank, 1)
    assert torch.allclose(alone, torch.zeros(3), atol=1e-6)  # each row's nearest is itself
    held_out = U.knn_scores(bank, bank, 1, exclude=np.array([0, 1, 2]))
    assert torch.allclose(held_out, torch.tensor([0.2, 0.2, 0.4]), atol=1e-5)  # 1 - cos to the nearest other row


def test_threshold_keeps_the_asked_share_of_in_scope_rows():
    scores = np.arange(100, dtype=float)
    t = U.threshold_for(scores, 0.05)
    assert (scores > t).mean() == pytest.approx(0.05, abs=0.011)
    assert U.threshold_for(scores, 0.2) < t


def test_the_default_score_follows_what_the_model_allows():
    assert U.choose("auto", knn_available=True) == (U.DEFAULT_WITH_KNN, U.choose("auto", knn_available=True)[1])
    assert U.choose("auto", knn_available=False, recipe="full")[0] == U.DEFAULT_LOGITS
    assert U.choose("msp", knn_available=False) == ("msp", "asked for")
    assert U.choose("knn", knn_available=False, recipe="full")[0] == "energy"  # no held-out rows for knn
    assert U.choose("msp+knn", knn_available=False, recipe="full")[0] == "msp"


def test_a_combined_score_standardises_its_parts_on_the_held_out_rows():
    rng = np.random.default_rng(0)
    named = {"energy": rng.normal(-8, 3, 200), "knn": rng.normal(0.3, 0.05, 200)}
    scores, mix = U.standardise(named, "energy+knn")
    assert mix.shape == (2, 2) and abs(scores.mean()) < 1e-9
    np.testing.assert_allclose(mix[:, 0], [named["energy"].mean(), named["knn"].mean()])
    flat = {"energy": named["energy"], "knn": 0.3 + rng.normal(0, 1e-6, 200)}  # neighbours that barely vary
    assert U.standardise(flat, "energy+knn")[1][1, 1] == U.SPREAD_FLOOR["knn"]  # not blown up into noise
    # the module computes the same sum from features and logits
    bank = torch.nn.functional.normalize(torch.randn(30, 8), dim=1)
    module = U.UnknownScore("energy+knn", 3, bank, mix=torch.as_tensor(mix))
    feats, logits = torch.randn(5, 8), torch.randn(5, 4)
    parts = {"energy": U.logit_scores("energy", logits).numpy(), "knn": U.knn_scores(feats, bank.half(), 3).numpy()}
    expected = sum((parts[p] - mix[i, 0]) / mix[i, 1] for i, p in enumerate(("energy", "knn")))
    np.testing.assert_allclose(module(feats, logits).numpy(), expected, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- the model


def test_synthetic_out_of_distribution_inputs_are_answered_unknown(model, photos, noise):
    rule = model.unknown_rule_
    assert isinstance(rule, Abstain) and rule.rate == 0.05 and rule.score == U.DEFAULT_WITH_KNN  # a frozen backbone
    info = model.val_metrics_["unknown"]
    assert info["in_scope_rejected"] <= 0.05 + 1e-9  # the threshold sits on the held-out in-scope rows
    answers = model.predict([str(p) for p in noise])
    assert answers.count("unknown") >= 8
    assert all(a in CLASSES for a in model.predict([str(p) for p in noise], unknown=False))
    inside = model.predict([str(p) for p in sorted(photos.rglob("*.png"))])
    assert inside.count("unknown") <= 5 and sum(a in CLASSES for a in inside) >= 45
    metrics = model.evaluate(photos, unknown=[str(p) for p in noise])
    u = metrics["unknown"]
    assert u["auroc"] >= 0.95 and u["recall"] >= 0.8 and u["precision"] >= 0.8 and u["in_scope_accuracy"] >= 0.85
    assert u["n_unknown"] == 10 and u["n_in_scope"] == 50


def test_each_score_can_be_asked_for_and_round_trips(photos, noise, tmp_path):
    for score in U.SCORES:
        clf = fit(photos, unknown_score=score)
        assert clf.unknown_rule_.score == score
        path = clf.save(tmp_path / score)
        config = json.loads((path / "config.json").read_text())
        assert config["format_version"] == 2 and config["decision"]["kind"] == "abstain"
        loaded = load(path)
        assert loaded.decision_ == clf.decision_
        (_, ours), (_, theirs) = clf.predict_scored([str(p) for p in noise]), loaded.predict_scored([str(p) for p in noise])
        np.testing.assert_allclose(theirs, ours, rtol=1e-6)
        assert loaded.predict([str(p) for p in noise]) == clf.predict([str(p) for p in noise])
        if "knn" in score:  # the training features travel in the weights file, fp16
            assert tuple(loaded.model_.unknown.bank.shape) == (50, clf.model_.unknown.bank.shape[1])
        if "+" in score:  # and the standardisation of the parts
            torch.testing.assert_close(loaded.model_.unknown.mix, clf.model_.unknown.mix)


def test_no_rule_at_rate_zero_nor_with_a_class_named_unknown(photos, tmp_path):
    clf = fit(photos, unknown_rate=0)
    assert clf.unknown_rule_ is None and getattr(clf.model_, "unknown", None) is None
    assert json.loads((clf.save(tmp_path / "m") / "config.json").read_text())["format_version"] == 1
    with pytest.raises(HeadstartError, match="never answers unknown.*--unknown-rate 0.05"):
        clf.evaluate(photos, unknown=[str(next(photos.rglob("*.png")))])
    named = make_folder(tmp_path / "named", per_class=6, classes=("red", "green", "blue"))
    (named / "blue").rename(named / "unknown")
    assert fit(named).unknown_rule_ is None  # "unknown" is one of its answers already


def test_a_malformed_unknown_rule_is_refused():
    good = Abstain(Argmax(), "knn", 0.3, 0.05, 5, (40, 8)).to_config()
    assert decision_from_config(good, 3) == Abstain(Argmax(), "knn", 0.3, 0.05, 5, (40, 8))
    for bad in ({**good, "score": "vibes"}, {**good, "rate": 0}, {**good, "threshold": "high"},
                {**good, "k": 0}, {**good, "bank_shape": [3]}):
        with pytest.raises(ModelDirError, match="unknown rule"):
            decision_from_config(bad, 3)


def test_cli_predict_and_evaluate_answer_unknown(model, photos, noise, tmp_path, capsys):
    path = model.save(tmp_path / "m")

    def run(*argv):
        with pytest.raises(SystemExit) as exc:
            main([str(a) for a in argv])
        out, err = capsys.readouterr()
        assert exc.value.code == 0, err
        return out

    lines = run("predict", path, noise[0], "--json").strip().splitlines()
    answer = json.loads(lines[0])
    assert answer["unknown"]["fired"] and answer["unknown"]["threshold"] == pytest.approx(model.unknown_rule_.threshold)
    assert run("predict", path, noise[0]).split("\t")[1].startswith("unknown ")
    assert run("predict", path, noise[0], "--no-unknown").split("\t")[1].split()[0] in CLASSES
    assert "unknown" not in json.loads(run("predict", path, noise[0], "--json", "--no-unknown"))
    metrics = json.loads(run("evaluate", path, photos, "--unknown", noise[0].parent, "--json"))
    assert {"auroc", "recall", "precision", "in_scope_accuracy"} <= set(metrics["unknown"])
    text = run("evaluate", path, photos, "--unknown", noise[0].parent)
    assert "unknown (" in text and "AUROC" in text
    report = tmp_path / "report"
    run("evaluate", path, photos, "--unknown", noise[0].parent, "--report", report)
    assert 'id="unknown"' in (report / "report.html").read_text()


def test_the_server_answers_unknown_with_its_score(model, noise, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from headstart.deploy.serve import create_app

    with TestClient(create_app(load(model.save(tmp_path / "m")))) as client:
        files = [("files", (p.name, p.read_bytes(), "image/png")) for p in noise[:3]]
        results = client.post("/predict", files=files).json()["results"]
        assert all(r["unknown"]["fired"] for r in results)
        results = client.post("/predict?unknown=false", files=files).json()["results"]
        assert all("unknown" not in r for r in results)
        buf = io.BytesIO()
        Image.new("RGB", (40, 36), (220, 30, 30)).save(buf, format="PNG")
        one = client.post("/predict", files=[("files", ("red.png", buf.getvalue(), "image/png"))]).json()["results"][0]
        assert not one["unknown"]["fired"] and one["predictions"][0]["label"] == "red"


def test_knn_after_fine_tuning_only_without_a_refit(photos, noise):
    """A fine-tuned model that scored its held-out rows keeps its training rows' features for
    knn; one refitted on every row has no held-out rows for a knn threshold: energy."""
    kept = ImageClassifier(backbone=TINY, weights="none", recipe="fine-tune", epochs=2, batch_size=8, precision="fp32",
                           num_workers=0, seed=0, unknown_score="knn", val_split=0.2, refit=False).fit(photos)
    rule = kept.unknown_rule_
    assert rule.score == "knn" and rule.bank_shape[0] == 40  # the 80% it trained on
    assert kept.model_.unknown.bank.shape[0] == 40
    assert kept.predict([str(p) for p in noise]).count("unknown") >= 8
    refitted = ImageClassifier(backbone=TINY, weights="none", recipe="fine-tune", epochs=2, batch_size=8,
                               precision="fp32", num_workers=0, seed=0, unknown_score="knn", val_split=0.2).fit(photos)
    assert refitted.unknown_rule_.score == "energy" and "no held-out rows" in refitted.val_metrics_["unknown"]["why"]
    default = ImageClassifier(backbone=TINY, weights="none", recipe="fine-tune", epochs=2, batch_size=8, precision="fp32",
                              num_workers=0, seed=0, val_split=0.2).fit(photos)
    assert default.unknown_rule_.score == U.DEFAULT_LOGITS  # refitted on every row: the logit score alone


def test_text_models_score_unknown_texts_from_a_table_without_labels(tiny_bert, tmp_path, capsys):
    from conftest import make_texts

    from headstart import TextClassifier

    texts, labels = make_texts(48)
    clf = TextClassifier(backbone=str(tiny_bert), recipe="linear-probe", precision="fp32", seed=0).fit(texts, labels)
    assert clf.unknown_rule_ is not None
    probs, scores = clf.predict_scored(texts[:5])
    assert probs.shape == (5, 2) and scores.shape == (5,) and np.isfinite(scores).all()
    one_probs, one_score = clf.predict_scored(texts[0])
    assert one_probs.shape == (2,) and one_score.shape == (1,)
    assert isinstance(clf.predict(texts[0]), str)
    path = clf.save(tmp_path / "m")
    (tmp_path / "data.csv").write_text("text,label\n" + "\n".join(f"{t},{y}" for t, y in zip(texts, labels)) + "\n")
    (tmp_path / "other.csv").write_text("text\n" + "\n".join(["! . !", "the the the", "plot actors movie"]) + "\n")
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", str(path), str(tmp_path / "data.csv"), "--unknown", str(tmp_path / "other.csv"), "--json"])
    out, err = capsys.readouterr()
    assert exc.value.code == 0, err
    u = json.loads(out)["unknown"]
    assert u["n_unknown"] == 3 and u["n_in_scope"] == 48 and 0 <= u["auroc"] <= 1
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", str(path), str(tmp_path / "data.csv"), "--unknown", str(tmp_path / "missing.csv")])
    assert exc.value.code != 0 and "does not exist" in capsys.readouterr().err


def test_the_exported_graph_computes_the_combined_score(model, noise, tmp_path):
    pytest.importorskip("onnxruntime")
    from headstart.deploy.export import export_model
    from headstart.deploy.runtime import OnnxClassifier

    assert "knn" in model.unknown_rule_.score  # the bank and the standardisation are constants of the graph
    result = export_model(model.save(tmp_path / "m"), "onnx", tmp_path / "onnx", samples=8)
    assert result.parity.unknown["passed"]
    onnx = OnnxClassifier.load(result.path)
    inputs = [str(p) for p in noise]
    (_, ours), (_, theirs) = model.predict_scored(inputs), onnx.predict_scored(inputs)
    np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-4)
    assert onnx.predict(inputs) == model.predict(inputs)
