"""Tests with the real embedded weights and ../shared/datasets; skipped when missing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import requires_shared

pytestmark = pytest.mark.slow


def test_embedded_lite0_recognises_imagenet_daisies():
    """The positional weight mapping is right only if ImageNet predictions are: class 985 is
    'daisy' in ImageNet-1k."""
    import timm

    from headstart.backbones.image import resolve_spec, read_state_dict
    from headstart.data.imagesets import load_image, scan_folder
    from headstart.backbones.transforms import eval_transform

    root = requires_shared("flowers5")
    spec = resolve_spec("efficientnet_lite0")
    model = timm.create_model(spec.arch, pretrained=False)
    target = model.state_dict()
    model.load_state_dict(dict(zip(target, read_state_dict(spec.local_weights()).values())))
    model.eval()
    daisies = scan_folder(root).paths[:16]
    tf = eval_transform(spec.preprocessing)
    with torch.inference_mode():
        logits = model(torch.stack([tf(load_image(p)) for p in daisies]))
    assert (logits.argmax(1) == 985).float().mean() >= 0.6


def test_linear_probe_on_real_flowers(tmp_path):
    from headstart import ImageClassifier
    from headstart.data.imagesets import scan_folder, stratified_split

    root = requires_shared("flowers5")
    full = scan_folder(root)
    rng = np.random.default_rng(0)
    keep = np.concatenate([rng.choice(np.flatnonzero(full.labels == c), 30, replace=False) for c in range(5)])
    sub = full.subset(np.sort(keep))
    tr, va = stratified_split(sub.labels, 0.2, 0, sub.classes)
    clf = ImageClassifier("efficientnet_lite0", recipe="linear-probe", epochs=30).fit(sub.subset(tr), sub.subset(va))
    assert clf.val_metrics_["accuracy"] >= 0.8
    out = clf.save(tmp_path / "m")
    again = ImageClassifier.load(out)
    np.testing.assert_allclose(again.predict_proba(sub.paths[:8]), clf.predict_proba(sub.paths[:8]), atol=1e-6)
    assert any(".DS_Store" in p for p, _ in full.skipped)


def test_embedded_minilm_sentence_similarity_and_probe(tmp_path):
    """The embedded encoder loads offline and gives meaningful mean-pooled embeddings; a
    linear probe on 400 SST-2 sentences beats chance clearly."""
    from headstart import TextClassifier
    from headstart.backbones.encoders import load_encoder, resolve_encoder
    from headstart.data.textdata import read_table

    spec, path = resolve_encoder("minilm-l6")
    model, tok = load_encoder(path, "minilm-l6")
    batch = tok(["a cat sits on the mat", "a kitten is sitting on a rug", "stock markets fell sharply"], padding=True, return_tensors="pt")
    with torch.inference_mode():
        h = model(**batch).last_hidden_state
    m = batch["attention_mask"].unsqueeze(-1)
    e = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=1)
    assert float(e[0] @ e[1]) > float(e[0] @ e[2]) + 0.3

    root = requires_shared("sst2")
    train = read_table(root / "train.tsv")
    dev = read_table(root / "dev.tsv", classes=train.classes)
    clf = TextClassifier(recipe="linear-probe", epochs=30).fit(train.subset(range(400)), val=dev.subset(range(200)))
    assert clf.val_metrics_["accuracy"] >= 0.7
    again = TextClassifier.load(clf.save(tmp_path / "m"))
    probe = ["a wonderful , moving film", "dull and lifeless"]
    np.testing.assert_allclose(again.predict_proba(probe), clf.predict_proba(probe), atol=1e-6)


def test_embedded_glove_on_sst2(tmp_path):
    from headstart import TextClassifier
    from headstart.data.textdata import read_table
    from headstart.training.wordvec import load_word_vectors

    wv = load_word_vectors("glove-6b-50d", None)
    assert len(wv.words) == 400_000 and wv.dim == 50 and wv.words[:3] == ["the", ",", "."]
    root = requires_shared("sst2")
    train = read_table(root / "train.tsv")
    dev = read_table(root / "dev.tsv", classes=train.classes)
    clf = TextClassifier("glove-6b-50d", hidden=(64,), epochs=10).fit(train.subset(range(2000)), val=dev)
    assert clf.val_metrics_["accuracy"] >= 0.7 and clf.oov_["val"]["rate"] < 0.05
    probe = ["a sublime , heartfelt film", "an unbearably tedious mess"]
    again = TextClassifier.load(clf.save(tmp_path / "m"))
    np.testing.assert_array_equal(again.predict_proba(probe), clf.predict_proba(probe))


def test_compiled_feature_extraction_matches_eager(tmp_path):
    """--compile changes speed, not results (beyond float rounding)."""
    from conftest import make_folder
    from headstart import ImageClassifier

    folder = make_folder(tmp_path / "p", per_class=6)
    kw = dict(backbone="tiny-cnn", weights="none", recipe="linear-probe", epochs=2, precision="fp32", num_workers=0, seed=0)
    eager = ImageClassifier(**kw).fit(folder)
    compiled = ImageClassifier(**kw, compile=True).fit(folder)
    np.testing.assert_allclose(compiled.predict_proba(folder), eager.predict_proba(folder), atol=1e-4)


def test_compiled_fine_tuning_trains_saves_and_predicts_eager(tmp_path):
    """--compile for phase 2: the training forward and backward compile, the weights keep
    their names, and the trained model predicts and saves as a plain module."""
    from conftest import make_folder
    from headstart import ImageClassifier, load

    folder = make_folder(tmp_path / "p", per_class=6)
    kw = dict(backbone="tiny-cnn", weights="none", recipe="fine-tune", epochs=1, head_epochs=1, precision="fp32",
              num_workers=0, seed=0, unfreeze_blocks=1)
    compiled = ImageClassifier(**kw, compile=True).fit(folder)
    model = compiled.model_
    assert model._compiled_call_impl is None
    assert not any("_orig_mod" in k for k in model.state_dict())
    eager = ImageClassifier(**kw).fit(folder)
    np.testing.assert_allclose(compiled.predict_proba(folder), eager.predict_proba(folder), atol=1e-2)
    compiled.save(tmp_path / "m")
    np.testing.assert_allclose(load(tmp_path / "m").predict_proba(folder), compiled.predict_proba(folder), atol=1e-6)


def test_goemotions_is_seven_labels_not_their_combinations(tmp_path):
    """The multi-label emotion set reads as 7 labels (not the 54 label combinations its cells
    spell), and a probe on 800 comments, thresholds tuned out-of-fold, scores 400 dev
    comments it never saw well above a label-frequency guess."""
    from headstart import TextClassifier
    from headstart.data.check import check_path
    from headstart.data.textdata import read_table

    root = requires_shared("goemotions")
    report = check_path(root / "train.csv", task="text")
    assert len(report.splits["train"]["per_class"]) == 7
    assert any(f.kind == "multi-label" for f in report.findings)
    train = read_table(root / "train.csv")
    dev = read_table(root / "dev.csv", classes=train.classes, multi_label=True)
    clf = TextClassifier(recipe="linear-probe").fit(train.subset(range(800)))
    metrics = clf.evaluate(dev.subset(range(400)))
    assert metrics["objective"] == "multi-label" and metrics["macro_f1"] >= 0.3, metrics["macro_f1"]
    again = TextClassifier.load(clf.save(tmp_path / "m"))
    assert again.predict(["I am so happy for you!"]) == clf.predict(["I am so happy for you!"])
