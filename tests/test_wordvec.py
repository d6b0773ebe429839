from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from headstart import TextClassifier
from headstart.errors import DataError, HeadstartError
from headstart.training.wordvec import WORD_DEFAULTS, WordTokenizer, read_vector_file

from conftest import FILLER, NEGATIVE, POSITIVE, make_texts

UNSEEN_POSITIVE = "delightful"  # has a vector, never appears in training


def _vectors(dim: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for w in POSITIVE + [UNSEEN_POSITIVE]:
        out[w] = np.r_[1.0, rng.normal(0, 0.1, dim - 1)]
    for w in NEGATIVE:
        out[w] = np.r_[-1.0, rng.normal(0, 0.1, dim - 1)]
    for w in FILLER + [",", ".", "!", "n't"]:
        out[w] = rng.normal(0, 0.3, dim)
    return {w: v.astype(np.float32) for w, v in out.items()}


def write_vectors(path, fmt: str, vectors=None):
    vectors = vectors or _vectors()
    dim = len(next(iter(vectors.values())))
    if fmt == "word2vec-bin":
        from gensim.models import KeyedVectors

        kv = KeyedVectors(dim)
        kv.add_vectors(list(vectors), np.stack(list(vectors.values())))
        kv.save_word2vec_format(str(path), binary=True)
        return path
    lines = [f"{w} " + " ".join(f"{x:.6f}" for x in v) for w, v in vectors.items()]
    if fmt in ("word2vec", "fasttext"):
        lines.insert(0, f"{len(vectors)} {dim}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def vec_file(tmp_path):
    return write_vectors(tmp_path / "vectors.txt", "glove")


@pytest.fixture
def wv_kwargs(vec_file):
    return dict(word_vectors=str(vec_file), epochs=15, batch_size=8, lr=1e-2, seed=0, patience=0)


@pytest.mark.parametrize("fmt,name", [("glove", "v.txt"), ("word2vec", "v.w2v.txt"), ("fasttext", "v.vec"), ("word2vec-bin", "v.bin")])
def test_reads_every_format(tmp_path, fmt, name):
    wv = read_vector_file(write_vectors(tmp_path / name, fmt))
    vectors = _vectors()
    assert wv.words == list(vectors) and wv.dim == 8 and wv.lowercase
    np.testing.assert_allclose(wv.vectors[0], vectors[wv.words[0]], atol=1e-5)


def test_malformed_file_names_the_line(tmp_path):
    path = write_vectors(tmp_path / "bad.txt", "glove")
    lines = path.read_text().splitlines()
    lines[3] = lines[3].rsplit(" ", 1)[0]  # one number short
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="line 4: expected a word and 8 numbers, found 7"):
        read_vector_file(path)
    lines[3] = lines[3] + " abc"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="line 4: .* not a number"):
        read_vector_file(path)
    with pytest.raises(HeadstartError, match="does not exist"):
        read_vector_file(tmp_path / "missing.vec")


def test_tokenizer_rules_and_oov():
    tok = WordTokenizer(["do", "n't", "it", "'s", "great", "!", "u.s"], lowercase=True)
    assert tok.tokens("It's GREAT, don't!") == ["it", "'s", "great", ",", "do", "n't", "!"]
    ids = tok(["It's great zzz"])["input_ids"][0]
    assert ids == [4, 5, 6, 1]
    oov = tok.oov(["great zzz zzz qq"])
    assert oov["rate"] == 0.75 and oov["top_unknown"][0] == ("zzz", 2)


def test_frozen_by_default_learns_and_reports_oov(wv_kwargs):
    texts, labels = make_texts(60)
    texts = [t + " xyzzy" for t in texts]  # a word without a vector in every text
    clf = TextClassifier(**wv_kwargs)
    original = torch.from_numpy(read_vector_file(wv_kwargs["word_vectors"]).vectors)
    clf.fit(texts, labels)
    assert torch.equal(clf.model_.backbone.weight.detach(), original)  # frozen really frozen
    assert clf.model_.unk.detach().abs().sum() > 0  # the unknown vector is learned
    assert clf.val_metrics_["accuracy"] >= 0.9
    assert clf.oov_["train"]["top_unknown"][0][0] == "xyzzy" and clf.data_summary_["oov"]["train"]["rate"] > 0
    assert clf.config.recipe == "linear-probe" and clf.sequence_encoder == WORD_DEFAULTS["sequence_encoder"]


def test_pooled_vectors_without_an_encoder_get_a_solved_head(wv_kwargs):
    clf = TextClassifier(**wv_kwargs, sequence_encoder="none").fit(*make_texts(60))
    assert clf.history_ == [] and clf.head_info_["kind"].startswith("logistic regression")
    assert clf.val_metrics_["accuracy"] >= 0.9 and clf.protocol_["kind"] == "cross-validation"


def test_full_recipe_trains_the_vectors(wv_kwargs):
    clf = TextClassifier(**{**wv_kwargs, "epochs": 2}, recipe="full").fit(*make_texts(40))
    original = torch.from_numpy(read_vector_file(wv_kwargs["word_vectors"]).vectors)
    assert not torch.equal(clf.model_.backbone.weight.detach(), original)


def test_fine_tune_recipe_is_explained(wv_kwargs):
    with pytest.raises(HeadstartError, match="no blocks to unfreeze"):
        TextClassifier(**wv_kwargs, recipe="fine-tune").fit(*make_texts(20))


@pytest.mark.parametrize("encoder,pooling", [("none", "mean+max"), ("bilstm", "mean"), ("cnn", "max")])
def test_save_load_identical_for_any_text(wv_kwargs, tmp_path, encoder, pooling):
    clf = TextClassifier(**{**wv_kwargs, "epochs": 3}, sequence_encoder=encoder, pooling=pooling, hidden_size=8)
    clf.fit(*make_texts(40))
    out = clf.save(tmp_path / "m")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["encoder"]["kind"] == "word-vectors" and cfg["encoder"]["sequence_encoder"] == encoder
    assert (out / "vocab.json").is_file()
    probe = [f"a {UNSEEN_POSITIVE} movie", "never seen words only", "bad , awful !"]
    loaded = TextClassifier.load(out)
    np.testing.assert_array_equal(loaded.predict_proba(probe), clf.predict_proba(probe))


def test_unseen_word_with_a_vector_counts(wv_kwargs):
    clf = TextClassifier(**wv_kwargs).fit(*make_texts(60))
    assert clf.predict(f"the {UNSEEN_POSITIVE} movie") == "positive"


def test_bad_options(vec_file):
    with pytest.raises(HeadstartError, match="goes on word vectors"):
        TextClassifier(sequence_encoder="bilstm")
    with pytest.raises(HeadstartError, match="does not apply to word vectors"):
        TextClassifier(word_vectors=str(vec_file), pooling="cls", epochs=1).fit(*make_texts(20))


def test_cli_word_vectors(vec_file, tmp_path, capsys):
    from test_cli import run

    texts, labels = make_texts(48)
    (tmp_path / "r.csv").write_text("text,label\n" + "\n".join(f"{t},{l}" for t, l in zip(texts, labels)) + "\n")
    code, out, err = run(capsys, "train", tmp_path / "r.csv", "--word-vectors", vec_file, "--sequence-encoder", "bilstm",
                         "--hidden-size", "8", "--epochs", "10", "--lr", "1e-2", "--batch-size", "8", "--out", tmp_path / "run", "--quiet")
    assert code == 0, err
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "oov" in metrics["data"] and metrics["val"]["accuracy"] >= 0.8
    code, out, _ = run(capsys, "predict", tmp_path / "run" / "model", f"so {UNSEEN_POSITIVE}", "--json")
    assert code == 0 and json.loads(out)["predictions"][0]["label"] == "positive"
