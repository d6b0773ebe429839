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

    from headstart.backbones import resolve_spec, read_state_dict
    from headstart.data import load_image, scan_folder
    from headstart.transforms import eval_transform

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
    from headstart.data import scan_folder, stratified_split

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
