from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from headstart import TextClassifier
from headstart.errors import DataError, HeadstartError, ModelDirError
from headstart.training.tokens import by_length, length_grouped, pad, tokenize
from headstart.data.textdata import read_table

from conftest import make_texts


@pytest.fixture
def texts():
    return make_texts(48, seed=0)


@pytest.fixture
def trained_text(texts, text_kwargs):
    return TextClassifier(**text_kwargs, recipe="full").fit(*texts)


def test_fits_lists_and_learns(trained_text):
    m = trained_text.val_metrics_
    assert trained_text.classes_ == ["negative", "positive"]
    assert m["n"] == 10 and m["accuracy"] >= 0.8
    phases = [r["phase"] for r in trained_text.history_]
    assert phases[:8] == ["full"] * 8 and set(phases[8:]) == {"full refit"}  # the held-out fold, then every row
    assert trained_text.predict("a great and wonderful movie") == "positive"
    assert trained_text.predict(["awful , boring plot", "i love it"]) == ["negative", "positive"]


def test_save_load_identical_predictions_without_the_source(trained_text, tmp_path, tiny_bert):
    import shutil

    out = trained_text.save(tmp_path / "model")
    names = sorted(p.name for p in out.iterdir())
    assert "config.json" in names and "model.safetensors" in names and "tokenizer.json" in names
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["task"] == "text" and cfg["head"]["pooling"] == "cls" and cfg["encoder"]["max_length"] == 64
    probe = ["great fun", "terrible , bad and boring plot !", "unknownword movie"]
    before = trained_text.predict_proba(probe)
    moved = tmp_path / "elsewhere"
    shutil.copytree(out, moved)
    loaded = TextClassifier.load(moved)
    np.testing.assert_array_equal(loaded.predict_proba(probe), before)


def test_pooling_mean_is_saved(texts, text_kwargs, tmp_path):
    clf = TextClassifier(**{**text_kwargs, "epochs": 1}, pooling="mean").fit(*texts)
    again = TextClassifier.load(clf.save(tmp_path / "m"))
    assert again.head_config.pooling == "mean" and again.model_.pooling == "mean"


def _fit_and_diff(clf, texts, monkeypatch) -> set[str]:
    """Fit, returning the encoder tensors that changed during training."""
    import headstart.classifiers.text as text_mod

    real, captured = text_mod.run_text_recipe, {}

    def spy(model, *a, **k):
        captured["before"] = {name: v.clone() for name, v in model.backbone.state_dict().items()}
        return real(model, *a, **k)

    monkeypatch.setattr(text_mod, "run_text_recipe", spy)
    clf.fit(*texts)
    after = clf.model_.backbone.state_dict()
    return {k for k in after if not torch.equal(captured["before"][k], after[k])}


def test_linear_probe_freezes_the_encoder(texts, text_kwargs, monkeypatch):
    clf = TextClassifier(**{**text_kwargs, "epochs": 3}, recipe="linear-probe")
    assert _fit_and_diff(clf, texts, monkeypatch) == set()
    assert clf.history_ == [] and clf.recipe_ == "linear-probe"


def test_fine_tune_trains_only_the_top_layer(texts, text_kwargs, monkeypatch):
    clf = TextClassifier(**{**text_kwargs, "epochs": 1, "head_epochs": 2}, recipe="fine-tune", unfreeze_blocks=1)
    changed = _fit_and_diff(clf, texts, monkeypatch)
    assert changed and all(k.startswith(("encoder.layer.1.", "pooler.")) for k in changed), sorted(changed)[:4]


def test_training_on_a_cpu_attends_eagerly_then_goes_back(tiny_bert):
    """The fused attention is slow to differentiate on a CPU: training switches the encoder to
    the plain attention (the same outputs), and everything after keeps the encoder's own."""
    from types import SimpleNamespace

    from transformers import AutoModel, AutoTokenizer

    from headstart.training.tokens import CPU_EAGER_MAX_TOKENS, training_attention

    model = SimpleNamespace(backbone=AutoModel.from_pretrained(str(tiny_bert), attn_implementation="sdpa").eval())
    impl = lambda: model.backbone.config._attn_implementation  # noqa: E731
    batch = pad(tokenize(AutoTokenizer.from_pretrained(str(tiny_bert)), ["good", "a great movie , really good"], 16)[0], 0)
    with torch.no_grad():
        fused = model.backbone(**batch).last_hidden_state
        with training_attention(model, torch.device("cpu")) as attention:
            attention.batch(batch["input_ids"].shape[1])
            assert impl() == "eager"
            plain = model.backbone(**batch).last_hidden_state
            attention.batch(CPU_EAGER_MAX_TOKENS + 1)  # wider batches: the fused kernel is the faster there
            assert impl() == "sdpa"
            attention.batch(CPU_EAGER_MAX_TOKENS)
            assert impl() == "eager"
    assert impl() == "sdpa" and torch.allclose(fused, plain, atol=1e-5)
    with pytest.raises(RuntimeError), training_attention(model, "cpu") as attention:
        attention.batch(8)
        raise RuntimeError("a failed step")
    assert impl() == "sdpa"
    with training_attention(model, "cuda") as attention:  # GPUs keep the fused kernels
        attention.batch(8)
        assert impl() == "sdpa"
    with training_attention(SimpleNamespace(backbone=torch.nn.Linear(2, 2)), "cpu") as attention:  # word vectors
        attention.batch(8)


def test_a_contrastive_batch_is_embedded_in_length_sorted_parts(tiny_bert, monkeypatch):
    """Each part padded to its own longest text: every row's embedding and its gradient are
    what one padded batch gives it, in the given order, and the training attention is told
    each part's width."""
    from transformers import AutoModel, AutoTokenizer

    from headstart.training import tokens

    encoder = AutoModel.from_pretrained(str(tiny_bert), attn_implementation="eager").eval()

    def embed(input_ids, attention_mask):
        hidden = encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1)

    words = "a great movie , really good but far too long and oddly paced in parts".split()
    # 12 texts of 12 different lengths, not in length order
    seqs = tokenize(AutoTokenizer.from_pretrained(str(tiny_bert)), [" ".join(words[: 1 + (5 * i) % 14]) for i in range(12)], 32)[0]
    assert len({len(s) for s in seqs}) == 12
    widths = []
    monkeypatch.setattr(tokens, "MIN_PART_ROWS", 4)

    def grads(fn):
        encoder.zero_grad()
        z = fn()
        (z * torch.arange(1.0, 1 + len(z))[:, None]).sum().backward()  # each row weighed by its place
        return z.detach(), encoder.encoder.layer[0].attention.self.query.weight.grad.clone()

    whole = grads(lambda: embed(**pad(seqs, 0)))
    attention = type("Told", (), {"batch": lambda self, width: widths.append(width)})()
    parts = grads(lambda: tokens.embed_in_parts(embed, seqs, 0, torch.device("cpu"), "fp32", attention))
    assert torch.allclose(parts[0], whole[0], atol=1e-5) and torch.allclose(parts[1], whole[1], atol=1e-4)
    lengths = sorted(len(s) for s in seqs)
    assert widths == [lengths[3], lengths[7], lengths[11]] and max(widths) == pad(seqs, 0)["input_ids"].shape[1]
    monkeypatch.setattr(tokens, "MIN_PART_ROWS", 16)  # a batch smaller than a part: one part
    widths.clear()
    one = grads(lambda: tokens.embed_in_parts(embed, seqs, 0, torch.device("cpu"), "fp32", attention))
    assert widths == [lengths[-1]] and torch.allclose(one[0], whole[0], atol=1e-5)
    # 16 rows a part on a CPU, whole batches on a GPU (bound by kernel launches, not tokens)
    assert [tokens.part_count(n, "cpu") for n in (8, 16, 28, 32, 64)] == [1, 1, 1, 2, 4]
    assert tokens.part_count(64, "cuda") == tokens.part_count(64, torch.device("cuda", 1)) == 1


@pytest.mark.parametrize("recipe", ["full", "contrastive"])
def test_text_training_steps_run_eager_attention(recipe, texts, text_kwargs, monkeypatch):
    """The attention each training step of ``full`` (the epoch loop) and of ``contrastive`` (the
    tuning's steps) ran with; the saved model attends as it was loaded."""
    from headstart.classifiers.text import TextModel

    from headstart.training import tokens

    seen, rows, real = set(), [], TextModel.embed

    def embed(self, input_ids, attention_mask):
        if self.training:  # a training step (embeddings for the head and evaluations run in eval mode)
            seen.add(self.backbone.config._attn_implementation)
            rows.append(len(input_ids))
        return real(self, input_ids, attention_mask)

    monkeypatch.setattr(TextModel, "embed", embed)
    monkeypatch.setattr(tokens, "MIN_PART_ROWS", 2)  # the contrastive batches in parts of 2 or 3 rows
    clf = TextClassifier(**{**text_kwargs, "epochs": 2}, recipe=recipe).fit(*texts)
    assert seen == {"eager"}
    assert clf.model_.backbone.config._attn_implementation == "sdpa"
    if recipe == "contrastive":
        assert max(rows) <= 3 and len(rows) > clf.tried_[-1]["steps"]


def test_dynamic_padding_and_length_groups(tiny_bert):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_bert))
    ids, truncated = tokenize(tok, ["good", "the movie was really good and the plot was great"], 8)
    assert truncated == 1 and len(ids[1]) == 8 and ids[1][-1] == tok.sep_token_id
    batch = pad(ids, tok.pad_token_id)
    assert batch["input_ids"].shape == (2, 8) and batch["attention_mask"][0].tolist() == [1, 1, 1] + [0] * 5
    lengths = np.array([5, 50, 6, 49, 7, 48, 8, 47])
    groups = length_grouped(lengths, 2, np.random.default_rng(0), group=4)
    assert sorted(np.concatenate(groups).tolist()) == list(range(8))
    assert all(abs(lengths[g[0]] - lengths[g[-1]]) <= 3 for g in groups)
    assert [lengths[g].tolist() for g in by_length(lengths, 4)] == [[50, 49, 48, 47], [8, 7, 6, 5]]


def test_tokenize_in_chunks_gives_the_same_compact_ids(tiny_bert):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_bert))
    texts = ["good", "the movie was really good and the plot was great", "bad", "a long dull plot that was never great"] * 3
    whole, t1 = tokenize(tok, texts, 8)
    parts, t2 = tokenize(tok, texts, 8, chunk=5)  # chunks of 5, 5 and 2
    assert t1 == t2 == 6
    assert all(a.dtype == np.int32 for a in parts)
    assert [a.tolist() for a in parts] == [a.tolist() for a in whole] == tok(texts, truncation=True, max_length=8)["input_ids"]


def test_truncation_is_counted(text_kwargs):
    long = ["the movie was really " * 30 + "good"] * 6 + ["bad"] * 6
    clf = TextClassifier(**{**text_kwargs, "epochs": 1}, max_length=16).fit(long, ["p"] * 6 + ["n"] * 6)
    assert clf.truncated_["train"] + clf.truncated_["val"] == 6
    assert clf.data_summary_["train"]["truncated"] == clf.truncated_["train"]


def test_evaluate_file_and_unknown_label(trained_text, tmp_path):
    (tmp_path / "dev.csv").write_text('review,sentiment\n"great, great fun",positive\n"awful\nbad",negative\n', encoding="utf-8")
    m = trained_text.evaluate(tmp_path / "dev.csv")
    assert m["n"] == 2 and set(m) >= {"accuracy", "macro_f1", "per_class", "confusion_matrix"}
    (tmp_path / "bad.csv").write_text("text,label\ngood,neutral\n")
    with pytest.raises(DataError, match="'neutral'.*never appear in the training data"):
        trained_text.evaluate(tmp_path / "bad.csv")


def test_empty_text_predict_is_an_error(trained_text):
    with pytest.raises(DataError, match="empty"):
        trained_text.predict(["good", "  "])


def test_unloadable_encoder_says_how_to_fix(monkeypatch, texts):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HeadstartError, match="local Hugging Face model directory"):
        TextClassifier("no-such-org/no-such-model", pooling="cls", epochs=1).fit(*texts)


def test_text_model_dir_is_not_an_image_model(trained_text, tmp_path):
    import headstart
    from headstart import ImageClassifier

    out = trained_text.save(tmp_path / "m")
    with pytest.raises(ModelDirError, match="not a 'image' model"):
        ImageClassifier.load(out)
    assert isinstance(headstart.load(out), TextClassifier)


# ----------------------------------------------------------------------------- reading tables


def test_column_detection_and_formats(tmp_path):
    (tmp_path / "a.csv").write_bytes('\ufeffReview,Stars,Sentiment\n"one, with comma",5,pos\n"two\nlines",1,neg\n'.encode("utf-8"))
    s = read_table(tmp_path / "a.csv")
    assert s.texts == ["one, with comma", "two\nlines"] and s.classes == ["neg", "pos"]
    (tmp_path / "b.tsv").write_text('label\tsentence\n1\t"quoted" start\n0\tplain\n10\tx\n2\ty\n')
    s = read_table(tmp_path / "b.tsv")
    assert s.texts[0] == '"quoted" start' and s.classes == ["0", "1", "2", "10"]
    (tmp_path / "c.jsonl").write_text('{"text": "hi", "label": 1}\n\n{"text": "", "label": 0}\n{"text": "yo", "label": 0}\n')
    s = read_table(tmp_path / "c.jsonl")
    assert s.texts == ["hi", "yo"] and s.skipped == [(str(tmp_path / "c.jsonl") + " row 2", "empty text")]


def test_column_errors_list_columns_and_flags(tmp_path):
    (tmp_path / "x.csv").write_text("body,stars\nhello,5\n")
    with pytest.raises(DataError, match="no text column found.*columns are: body, stars. Pass --text-column NAME"):
        read_table(tmp_path / "x.csv")
    with pytest.raises(DataError, match="no label column.*Pass --label-column"):
        read_table(tmp_path / "x.csv", text_column="body")
    assert read_table(tmp_path / "x.csv", text_column="body", label_column="stars").classes == ["5"]


def test_encoding_errors_and_override(tmp_path):
    (tmp_path / "l.csv").write_bytes("text,label\ncaf\xe9 bien,pos\nmal,neg\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8.*--encoding"):
        read_table(tmp_path / "l.csv")
    assert read_table(tmp_path / "l.csv", encoding="latin-1").texts[0] == "café bien"


def test_malformed_rows_are_named(tmp_path):
    (tmp_path / "m.csv").write_text("text,label\nfine,a\ntoo,many,fields\n")
    with pytest.raises(DataError, match="line 3: expected 2 fields"):
        read_table(tmp_path / "m.csv")
    (tmp_path / "j.jsonl").write_text('{"text": "a", "label": 1}\n{oops\n')
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        read_table(tmp_path / "j.jsonl")


def test_dataframe_and_list_inputs():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"content": ["a", None, "c"], "category": [1.0, 2.0, float("nan")]})
    s = read_table(df)
    assert s.texts == ["a"] and s.classes == ["1"] and len(s.skipped) == 2
    with pytest.raises(DataError, match="3 texts but 2 labels"):
        read_table(["a", "b", "c"], ["x", "y"])
