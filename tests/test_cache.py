from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from headstart import ImageClassifier
from headstart.backbones.image import create_backbone, resolve_spec

from conftest import COLORS, make_image


@pytest.fixture
def weights_file(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    sd = create_backbone(resolve_spec("tiny-cnn"), "none").state_dict()
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


@pytest.fixture
def counted(monkeypatch):
    """Counts real feature extractions (cache misses)."""
    import headstart.training.image_recipe as training

    calls = []
    real = training.extract_features

    def spy(*a, **k):
        calls.append(k.get("desc"))
        return real(*a, **k)

    monkeypatch.setattr(training, "extract_features", spy)
    return calls


def _clf(tiny_kwargs, weights_file, **kw):
    return ImageClassifier(**{**tiny_kwargs, "weights": str(weights_file)}, recipe="linear-probe", **kw)


def test_second_run_loads_features_and_matches(folder, tiny_kwargs, weights_file, counted):
    first = _clf(tiny_kwargs, weights_file).fit(folder)
    assert counted == ["features"]  # every image once: cross-validation scores them all
    second = _clf(tiny_kwargs, weights_file).fit(folder)
    assert counted == ["features"]  # nothing recomputed
    assert first.val_metrics_ == second.val_metrics_
    np.testing.assert_array_equal(first.predict_proba(folder), second.predict_proba(folder))
    assert len(list(Path(os.environ["HEADSTART_CACHE_DIR"]).glob("*.safetensors"))) == 1


def test_changed_file_or_setting_is_never_served_stale(folder, tiny_kwargs, weights_file, counted):
    _clf(tiny_kwargs, weights_file).fit(folder)
    n = len(counted)
    victim = sorted((folder / "red").iterdir())[0]
    make_image(victim, COLORS["blue"], seed=99)  # same name, new content
    _clf(tiny_kwargs, weights_file).fit(folder)
    assert len(counted) > n
    n = len(counted)
    _clf(tiny_kwargs, weights_file, pooling="flatten").fit(folder)  # another setting
    assert len(counted) == n + 1


def test_no_cache_and_cache_dir(folder, tiny_kwargs, weights_file, counted, tmp_path):
    _clf(tiny_kwargs, weights_file, cache=False).fit(folder)
    _clf(tiny_kwargs, weights_file, cache=False).fit(folder)
    assert len(counted) == 2
    assert not list(Path(os.environ["HEADSTART_CACHE_DIR"]).glob("*"))
    _clf(tiny_kwargs, weights_file, cache_dir=str(tmp_path / "mine")).fit(folder)
    assert len(list((tmp_path / "mine").glob("*.safetensors"))) == 1


def test_random_weights_are_not_cached(folder, tiny_kwargs, counted):
    ImageClassifier(**tiny_kwargs, recipe="linear-probe").fit(folder)
    ImageClassifier(**tiny_kwargs, recipe="linear-probe").fit(folder)
    assert len(counted) == 2


def test_damaged_entry_is_recomputed(folder, tiny_kwargs, weights_file, counted):
    _clf(tiny_kwargs, weights_file).fit(folder)
    for f in Path(os.environ["HEADSTART_CACHE_DIR"]).glob("*.safetensors"):
        f.write_bytes(b"garbage")
    _clf(tiny_kwargs, weights_file).fit(folder)
    assert len(counted) == 2


def test_text_embeddings_are_cached(text_kwargs, monkeypatch):
    import headstart.training.tokens as text_mod
    from headstart import TextClassifier

    from conftest import make_texts

    calls = []
    real = text_mod.run_batches

    def spy(fn, *a, **k):
        calls.append(a[-1] if len(a) > 5 else k.get("desc", ""))
        return real(fn, *a, **k)

    monkeypatch.setattr(text_mod, "run_batches", spy)
    texts = make_texts(40)
    first = TextClassifier(**{**text_kwargs, "epochs": 3}, recipe="linear-probe").fit(*texts)
    embeds = [c for c in calls if "embeddings" in str(c)]
    assert len(embeds) == 1
    second = TextClassifier(**{**text_kwargs, "epochs": 3}, recipe="linear-probe").fit(*texts)
    assert [c for c in calls if "embeddings" in str(c)] == embeds  # served from the cache
    assert first.val_metrics_["accuracy"] == second.val_metrics_["accuracy"]
    changed = (texts[0][:-1] + ["a brand new sentence"], texts[1])
    TextClassifier(**{**text_kwargs, "epochs": 3}, recipe="linear-probe").fit(*changed)
    assert len([c for c in calls if "embeddings" in str(c)]) > 1
