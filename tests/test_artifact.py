from __future__ import annotations

import json

import numpy as np
import pytest

from headstart import ImageClassifier
from headstart.errors import HeadstartError, ModelDirError


def test_save_load_identical_predictions(trained, folder, tmp_path):
    out = trained.save(tmp_path / "model")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["task"] == "image" and cfg["labels"] == ["blue", "green", "red"]
    assert cfg["preprocessing"]["input_size"] == 32 and cfg["backbone"]["arch"] == "test_efficientnet"
    loaded = ImageClassifier.load(out, precision="fp32")
    np.testing.assert_array_equal(loaded.predict_proba(folder), trained.predict_proba(folder))
    assert loaded.predict(folder) == trained.predict(folder)
    assert loaded.evaluate(folder)["accuracy"] == trained.evaluate(folder)["accuracy"]


def test_predict_single_list_and_pil(trained, folder):
    from PIL import Image

    one = sorted((folder / "red").iterdir())[0]
    assert isinstance(trained.predict(one), str)
    assert trained.predict_proba(one).shape == (3,)
    assert len(trained.predict([one, one])) == 2
    with Image.open(one) as im:
        assert trained.predict(im.copy()) == trained.predict(one)
    top = trained.predict_top_k([one], k=2)[0]
    assert len(top) == 2 and top[0][1] >= top[1][1]


def test_predict_unreadable_file_is_named(trained, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(HeadstartError, match="bad.jpg"):
        trained.predict(bad)


def test_resave_replaces_atomically_and_failure_keeps_previous(trained, tmp_path, monkeypatch):
    out = trained.save(tmp_path / "model")
    before = (out / "model.safetensors").read_bytes()
    trained.save(out)  # overwrite works
    import headstart.classifiers.artifact as artifact

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(artifact, "save_file", boom)
    with pytest.raises(ModelDirError, match="No space left on device.*intact"):
        trained.save(out)
    assert (out / "model.safetensors").read_bytes() == before
    assert ImageClassifier.load(out) is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "photos"]  # no temp dirs left behind


def test_save_refuses_to_overwrite_a_foreign_directory(trained, tmp_path):
    other = tmp_path / "docs"
    other.mkdir()
    (other / "thesis.tex").write_text("precious")
    with pytest.raises(ModelDirError, match="not a headstart model directory"):
        trained.save(other)
    assert (other / "thesis.tex").read_text() == "precious"


def test_load_errors(trained, tmp_path):
    with pytest.raises(ModelDirError, match="does not exist"):
        ImageClassifier.load(tmp_path / "nope")
    out = trained.save(tmp_path / "run" / "model")
    with pytest.raises(ModelDirError, match="under model/"):
        ImageClassifier.load(tmp_path / "run")
    (out / "model.safetensors").write_bytes(b"corrupt")
    with pytest.raises(ModelDirError, match="damaged"):
        ImageClassifier.load(out)
    cfg = json.loads((out / "config.json").read_text())
    cfg["format_version"] = 99
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelDirError, match="newer headstart"):
        ImageClassifier.load(out)
    (out / "config.json").write_text("{")
    with pytest.raises(ModelDirError, match="not valid JSON"):
        ImageClassifier.load(out)


def test_unfitted_classifier_says_so():
    with pytest.raises(HeadstartError, match="not trained yet"):
        ImageClassifier().predict("x.jpg")


def test_saved_files_follow_the_umask(trained, tmp_path):
    import os
    import stat

    out = trained.save(tmp_path / "m")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~mask
    assert stat.S_IMODE((out / "model.safetensors").stat().st_mode) == 0o666 & ~mask
