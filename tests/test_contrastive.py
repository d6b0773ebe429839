"""The contrastive recipe: its batch sampler, its loss, and the recipe end to end on a tiny
encoder built here; auto tries it on few rows per class and keeps it only when it helps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import TinyEncoder, make_texts, tiny_token_backend
from headstart import TextClassifier, load
from headstart.training import contrastive
from headstart.config import TrainConfig
from headstart.training.contrastive import balanced_batches, pair_cosine_loss, passes_per_step, refit_steps, step_budget
from headstart.errors import HeadstartError


@pytest.mark.parametrize("counts", [[8, 8], [8] * 7, [8] * 77, [1, 5, 30], [2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2]])
def test_batches_respect_the_budget_and_never_repeat_a_row(counts):
    labels = np.repeat(np.arange(len(counts)), counts)
    batches = balanced_batches(labels, 32, 25, np.random.default_rng(0))
    assert len(batches) == 25
    for b in batches:
        assert len(b) <= 32 and len(set(b.tolist())) == len(b)  # no row paired with itself
        # every batch holds a positive pair and a negative
        _, per = np.unique(labels[b], return_counts=True)
        assert per.max() >= 2 and len(per) >= 2


@pytest.mark.parametrize("with_names", [False, True])
def test_fold_embeddings_solve_each_checkpoint_out_of_fold_once(with_names):
    """The folds' embeddings, kept per checkpoint step: the held-out rows in fold order, the
    head solved on them as select_on_fold_features solves it by hand, once per folds, step
    and C; a step that not every fold reached is not common."""
    from headstart.training.solver import select_on_fold_features

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 10)
    splits = [(np.setdiff1d(np.arange(30), va), va) for va in (np.arange(0, 30, 2), np.arange(1, 30, 2))]
    name_labels = np.arange(3)
    folds = contrastive.FoldEmbeddings(labels, 3, lambda y: None, name_labels if with_names else None,
                                       2.0 if with_names else None)
    parts, extras = [], []
    at = 0
    for i, (tr, va) in enumerate(splits):
        centres = rng.normal(size=(3, 6)) * 2
        x = lambda rows: torch.as_tensor(centres[labels[rows]] + rng.normal(size=(len(rows), 6)), dtype=torch.float32)  # noqa: E731
        names = (torch.as_tensor(centres, dtype=torch.float32),) if with_names else ()
        steps = {4: (x(tr), torch.as_tensor(tr), x(va), torch.as_tensor(va), *names)}
        if i == 0:
            steps[2] = steps[4]  # only the first fold reached step 2
        folds.add(steps)
        parts.append((steps[4][0], labels[tr], steps[4][2], np.arange(at, at + len(va))))
        extras.append((names[0], name_labels) if with_names else None)
        at += len(va)
    assert len(folds) == 2 and folds.steps() == [4]
    assert np.array_equal(folds.held_out(4), np.concatenate([va for _, va in splits]))
    assert folds.bounds(4).tolist() == [0, 15, 30]
    C, logits, path = folds.out_of_fold(4)
    kw = {"extras": extras, "extra_weights": [2.0]} if with_names else {}
    C2, logits2, path2, _ = select_on_fold_features(parts, at, labels[folds.held_out(4)], 3, **kw)
    assert C == C2 and np.allclose(logits, logits2) and len(path) == len(path2)
    assert folds.out_of_fold(4) is folds.out_of_fold(4)  # solved once
    other = 1e-4 if C != 1e-4 else 10.0
    at_other = folds.out_of_fold(4, C=other)
    assert at_other[0] == other and not np.allclose(at_other[1], logits)


def test_the_step_budget_grows_with_rows_not_their_square():
    # rows that one batch holds: each row is in every batch, so PASSES steps
    assert step_budget(np.repeat([0, 1], 8), 32) == contrastive.PASSES
    small, large = step_budget(np.repeat([0, 1], 500), 32), step_budget(np.repeat([0, 1], 5000), 32)
    assert small == contrastive.PASSES * 1000 / 32 and large == 10 * small
    # the sampler's real batches: 7 classes of 8 fill 28 rows of a batch of 32
    assert step_budget(np.repeat(np.arange(7), 8), 32) == contrastive.PASSES * 2


def test_the_refit_gives_each_row_as_many_batches_as_a_fold_gave_it():
    # 16 rows, 2 classes: one batch of 32 holds every row of a fold (11) and of the whole set
    fold, full = np.array([0] * 5 + [1] * 6), np.repeat([0, 1], 8)
    assert passes_per_step(fold, 32) == passes_per_step(full, 32) == 1.0
    assert refit_steps(20, fold, full, 32) == 20
    # 7 classes of 8: a batch holds 28 rows, half the set; a fold's 37 rows get 28 too,
    # so the whole set needs steps in proportion to its rows
    fold, full = np.repeat(np.arange(7), [5, 5, 5, 5, 5, 6, 6]), np.repeat(np.arange(7), 8)
    assert passes_per_step(full, 32) == pytest.approx(0.5)
    assert refit_steps(47, fold, full, 32) == round(47 * 56 / 37)
    # many classes: batches of 32 rows whatever the set's size
    fold, full = np.repeat(np.arange(77), 5), np.repeat(np.arange(77), 8)
    assert refit_steps(100, fold, full, 32) == 160


def test_the_loss_rewards_classes_that_cluster_and_weighs_both_kinds_of_pair_equally():
    y = torch.tensor([0, 0, 1, 1])
    apart = torch.tensor([[1.0, 0.0], [1.0, 0.05], [0.0, 1.0], [0.05, 1.0]])
    mixed = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.05], [0.05, 1.0]])
    assert pair_cosine_loss(apart, y) < 0.01 < 0.5 < pair_cosine_loss(mixed, y)
    # by hand: 3 rows of 2 classes, one positive pair (cos 0.6) and two negatives (cos 0, 0.8)
    z = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    expected = 0.5 * (1 - 0.6) ** 2 + 0.5 * (0.0 ** 2 + 0.8 ** 2) / 2
    assert pair_cosine_loss(z, torch.tensor([0, 0, 1])).item() == pytest.approx(expected, abs=1e-6)
    # the norm does not matter, a row is never paired with itself, and all-negative batches
    # are pushed apart only
    assert pair_cosine_loss(3 * z, torch.tensor([0, 0, 1])).item() == pytest.approx(expected, abs=1e-6)
    assert pair_cosine_loss(torch.eye(3), torch.tensor([0, 1, 2])).item() == 0.0
    g = torch.randn(6, 4, requires_grad=True)
    pair_cosine_loss(g, torch.tensor([0, 0, 1, 1, 2, 3])).backward()
    assert torch.isfinite(g.grad).all()


@pytest.fixture
def few_steps(monkeypatch):
    monkeypatch.setattr(contrastive, "PASSES", 8)


def test_the_recipe_runs_end_to_end_and_round_trips(tiny_bert, tmp_path, few_steps):
    texts, labels = make_texts(24)
    clf = TextClassifier(backbone=str(tiny_bert), recipe="contrastive", batch_size=8, backbone_lr=3e-3,
                         precision="fp32", folds=3).fit(texts, labels)
    assert clf.recipe_ == "contrastive"
    entry = [t for t in clf.tried_ if t["recipe"] == "contrastive"][0]
    planned = step_budget(np.repeat([0, 1], 8), 8)  # a fold's training part: 16 rows of 2 classes
    assert entry["kept"] and entry["folds"] == 3 and entry["steps_planned"] == planned
    assert entry["steps"] in {round(planned * f) for f in (0.25, 0.5, 0.75, 1.0)}
    # every reported row is out-of-fold: 24 rows, each scored once
    assert clf.protocol_["kind"] == "cross-validation" and clf.protocol_["n"] == 24
    # the encoder changed: the saved model is not the pretrained one with a head
    fresh = TextClassifier(backbone=str(tiny_bert), recipe="linear-probe", precision="fp32").fit(texts, labels)
    a = dict(clf.model_.backbone.named_parameters())["encoder.layer.0.attention.self.query.weight"]
    b = dict(fresh.model_.backbone.named_parameters())["encoder.layer.0.attention.self.query.weight"]
    assert not torch.equal(a, b)
    # ... but not its token-embedding matrix, which stays as pretrained
    key = "embeddings.word_embeddings.weight"
    assert torch.equal(dict(clf.model_.backbone.named_parameters())[key],
                       dict(fresh.model_.backbone.named_parameters())[key])
    assert all(p.requires_grad for p in clf.model_.backbone.parameters())  # restored after tuning
    assert {m.p for m in clf.model_.modules() if isinstance(m, torch.nn.Dropout)} == {0.1}  # as configured
    clf.save(tmp_path / "m")
    again = load(tmp_path / "m")
    vt, _ = make_texts(10, seed=4)
    np.testing.assert_allclose(again.predict_proba(vt), clf.predict_proba(vt), atol=1e-5)


def test_under_five_fold_cv_the_encoder_is_tuned_on_three_folds_and_the_probe_judged_on_the_same(tiny_bert, few_steps,
                                                                                                   monkeypatch):
    from headstart.training import transfer

    seen = {}
    real = transfer.Transfer._against_probe

    def spy(self, logits, rows, probe):
        seen["probe_rows"], seen["rows"] = np.sort(probe["rows"]), np.sort(rows)
        return real(self, logits, rows, probe)

    monkeypatch.setattr(transfer.Transfer, "_against_probe", spy)
    texts, labels = make_texts(30)
    clf = TextClassifier(backbone=str(tiny_bert), recipe="contrastive", batch_size=8, backbone_lr=3e-3,
                         precision="fp32").fit(texts, labels)
    entry = [t for t in clf.tried_ if t["recipe"] == "contrastive"][0]
    assert entry["folds"] == entry["of_folds"] == transfer.CONTRASTIVE_FOLDS == 3
    # the planned steps, the curve recorded at the checkpoints
    assert entry["steps"] == entry["steps_planned"] == max(int(k) for k in entry["curve"])
    assert len(entry["curve"]) == 4
    # every row scored once out-of-fold, the probe on the same rows, and the protocol says 3 folds
    assert clf.protocol_["kind"] == "cross-validation" and clf.protocol_["folds"] == 3 and clf.protocol_["n"] == 30
    assert len(clf.protocol_["fold_accuracy"]) == 3
    np.testing.assert_array_equal(seen["rows"], np.arange(30))
    np.testing.assert_array_equal(seen["probe_rows"], np.arange(30))
    assert "3-fold" in clf.protocol_["description"]


def test_with_a_validation_set_the_recipe_is_scored_on_it(tiny_bert, few_steps):
    texts, labels = make_texts(20)
    vt, vl = make_texts(12, seed=2)
    clf = TextClassifier(backbone=str(tiny_bert), recipe="contrastive", batch_size=8, backbone_lr=3e-3,
                         precision="fp32").fit(texts, labels, val=vt, val_labels=vl)
    assert clf.protocol_["kind"] == "given" and clf.val_metrics_["n"] == 12


def test_with_a_validation_set_and_no_refit_the_encoder_is_tuned_once(tiny_bert, few_steps, monkeypatch):
    from headstart.training.tokens import TokenBackend

    runs = []
    real = TokenBackend.contrast

    def count(self, model, rows, steps, **kw):
        runs.append((len(rows), steps))
        return real(self, model, rows, steps, **kw)

    monkeypatch.setattr(TokenBackend, "contrast", count)
    texts, labels = make_texts(20)
    vt, vl = make_texts(12, seed=2)
    clf = TextClassifier(backbone=str(tiny_bert), recipe="contrastive", batch_size=8, backbone_lr=3e-3,
                         precision="fp32").fit(texts, labels, val=vt, val_labels=vl)
    assert len(runs) == 1 and runs[0][0] == 20  # the model scored on the validation set is the saved one
    assert not clf.protocol_["refit"]
    runs.clear()
    TextClassifier(backbone=str(tiny_bert), recipe="contrastive", batch_size=8, backbone_lr=3e-3, precision="fp32",
                   refit=True).fit(texts, labels, val=vt, val_labels=vl)
    assert [n for n, _ in runs] == [20, 32]  # refit: tuned again on the data and the validation set


def test_the_saved_head_uses_the_c_chosen_on_held_out_rows(tiny_bert, few_steps, monkeypatch):
    """After contrastive tuning the training rows are separable by construction, so C is chosen
    on the folds' held-out rows, each embedded by an encoder that never saw it, and the
    saved head is solved at that C (not by a cross-validation over the tuned rows)."""
    from headstart.training import contrastive, solver, transfer

    monkeypatch.setattr(contrastive, "DEFAULT_CS", (0.001, 0.1, 10.0))  # the grid the folds' head is chosen on
    texts, labels = make_texts(24)
    clf = TextClassifier(backbone=str(tiny_bert), recipe="contrastive", batch_size=8, backbone_lr=3e-3,
                         precision="fp32", folds=3).fit(texts, labels)
    entry = [t for t in clf.tried_ if t["recipe"] == "contrastive"][0]
    assert entry["C"] in (0.001, 0.1, 10.0) and clf.head_info_["C"] == entry["C"]
    assert [p["C"] for p in clf.cv_path_][0] == 0.001 and "held-out" in clf.head_info_["kind"]
    # the head is the logistic regression at that C on the saved encoder's embeddings of every row
    from headstart.training.tokens import pad

    # plus each class's name as one more row, at the weight chosen with C on the same rows
    from headstart.data.textdata import class_name_texts
    from headstart.training.tokens import pad

    weight = entry["class_name_weight"]
    assert weight in transfer.NAME_WEIGHTS and clf.head_info_["class_names"]["weight"] == weight
    model = clf.model_.eval()

    def embed(strings):
        batch = pad(clf.tokenizer_(list(strings))["input_ids"], clf.tokenizer_.pad_token_id)
        with torch.no_grad():
            return model.embed(batch["input_ids"], batch["attention_mask"]).float()

    x, names = embed(texts), embed(class_name_texts(clf.classes_))
    with torch.no_grad():
        saved = torch.softmax(model.head(x), 1).numpy()
    y = np.asarray([clf.classes_.index(label) for label in labels])
    k = len(clf.classes_)
    expected = solver.fit_logistic(torch.cat([x, names]), np.concatenate([y, np.arange(k)]), k, C=entry["C"],
                                   sample_weight=np.concatenate([np.ones(len(y)), np.full(k, weight)])) if weight else \
        solver.fit_logistic(x, y, k, C=entry["C"])
    np.testing.assert_allclose(saved, torch.softmax(torch.as_tensor(expected.logits(x)), 1).numpy(), atol=2e-3)


@pytest.mark.parametrize("score, helps", [({"wins": 1, "losses": 1}, True), ({"wins": 1, "losses": 10}, False),
                                           ({"n": 616, "wins": 17, "losses": 28}, False)])
def test_auto_drops_contrastive_when_the_held_out_rows_favour_the_probe(tiny_bert, monkeypatch, few_steps, score, helps):
    from headstart.training import transfer

    real = transfer.Transfer.contrastive

    def rigged(self, pristine, probe):
        out = real(self, pristine, probe)
        # the probe clearly better, or not: an even score keeps contrastive (few rows per class),
        # unless the rows were enough to show its gain (n: as if 616 rows were scored)
        out["entry"].update(score)
        return out

    monkeypatch.setattr(transfer.Transfer, "contrastive", rigged)
    texts, labels = make_texts(24)
    clf = TextClassifier(backbone=str(tiny_bert), batch_size=8, precision="fp32", folds=3).fit(texts, labels)
    assert [t["recipe"] for t in clf.tried_] == ["linear-probe", "contrastive"]
    assert clf.recipe_ == ("contrastive" if helps else "linear-probe")
    assert [t["kept"] for t in clf.tried_] == ([False, True] if helps else [True, False])


@pytest.mark.parametrize("recipe, decide, score, tuned, stopped, kept", [
    ("auto", True, {"wins": 0, "losses": 10}, [16], 1, False),  # clearly worse after fold 1, all folds' rows could decide: stop
    # 1 row behind: even a 2.5% lead on the 16 rows left (0.4) would not take it over 0.3 rows net in all
    ("auto", True, {"wins": 0, "losses": 1}, [16], 1, False),
    ("auto", True, {"wins": 1, "losses": 1}, [16, 16], 2, False),  # level: 0.4 left after fold 1, 0.2 after fold 2
    ("auto", True, {"wins": 2, "losses": 1}, [16, 16, 16, 24], None, True),  # ahead: every fold, kept, the refit
    ("auto", False, {"wins": 0, "losses": 10}, [16, 16, 16], None, False),  # too few rows in all to decide: every fold is scored
    ("contrastive", True, {"wins": 0, "losses": 10}, [16, 16, 16, 24], None, True),  # asked for: never stopped, kept
])
def test_auto_stops_the_contrastive_folds_once_they_leave_it_no_chance(tiny_bert, monkeypatch, few_steps, recipe, decide,
                                                                       score, tuned, stopped, kept):
    from headstart.training import tokens, transfer

    monkeypatch.setattr(transfer, "rows_could_decide", lambda n: decide)  # as if the 24 rows were hundreds
    monkeypatch.setattr(transfer.Transfer, "_against_probe", lambda self, logits, rows, probe: {"probe_accuracy": 0.5, **score})
    tunings = []
    real_contrast = tokens.TokenBackend.contrast
    monkeypatch.setattr(tokens.TokenBackend, "contrast",
                        lambda self, model, rows, *a, **k: tunings.append(len(rows)) or real_contrast(self, model, rows, *a, **k))
    texts, labels = make_texts(24)
    clf = TextClassifier(backbone=str(tiny_bert), recipe=recipe, batch_size=8, precision="fp32", folds=3).fit(texts, labels)
    entry = [t for t in clf.tried_ if t["recipe"] == "contrastive"][0]
    assert tunings == tuned
    assert entry.get("stopped_after_fold") == stopped and entry["folds"] == (stopped or 3) and entry["of_folds"] == 3
    assert entry["n"] == 8 * (stopped or 3)  # the rows scored: those of the folds tuned
    assert clf.recipe_ == ("contrastive" if kept else "linear-probe")


def test_from_twenty_rows_per_class_auto_judges_contrastive_on_one_fold_instead_of_trying_full(tiny_bert, monkeypatch,
                                                                                                few_steps):
    from headstart.training import transfer

    monkeypatch.setattr(transfer, "AUTO_MIN_PER_CLASS", 4)  # 12 rows per class count as "enough" here
    real, tunings = transfer.Transfer.contrastive, []

    def even(self, pristine, probe):
        out = real(self, pristine, probe)
        out["entry"].update(wins=1, losses=1)
        return out

    monkeypatch.setattr(transfer.Transfer, "contrastive", even)
    from headstart.training import tokens

    real_contrast = tokens.TokenBackend.contrast
    monkeypatch.setattr(tokens.TokenBackend, "contrast",
                        lambda self, model, rows, *a, **k: tunings.append(len(rows)) or real_contrast(self, model, rows, *a, **k))
    texts, labels = make_texts(24)
    clf = TextClassifier(backbone=str(tiny_bert), batch_size=8, backbone_lr=3e-3, precision="fp32",
                         time_budget=0).fit(texts, labels)
    assert [t["recipe"] for t in clf.tried_] == ["linear-probe", "contrastive"]  # not full
    entry = clf.tried_[1]
    assert entry["kept"] and entry["folds"] == 1 and entry["of_folds"] == 3 and entry["n"] == 8
    assert tunings == [16, 24]  # fold 1's training part, then the refit on every row
    assert clf.protocol_["kind"] == "holdout" and "fold 1 of the 3-fold split" in clf.protocol_["description"]


def test_auto_does_not_try_contrastive_with_many_rows_per_class(tiny_bert, monkeypatch):
    from headstart.training import transfer

    monkeypatch.setattr(transfer, "AUTO_MIN_PER_CLASS", 4)
    monkeypatch.setattr(transfer, "AUTO_CONTRASTIVE_MAX_PER_CLASS", 11)
    called = []
    monkeypatch.setattr(transfer.Transfer, "contrastive", lambda *a: called.append(1))
    texts, labels = make_texts(24)
    TextClassifier(backbone=str(tiny_bert), batch_size=8, precision="fp32", folds=3, time_budget=1e-9).fit(texts, labels)
    assert not called


def test_the_recipe_is_for_transformer_text_only(tiny_bert):
    with pytest.raises(HeadstartError, match="contrastive recipe tunes a text encoder"):
        TrainConfig(task="image", recipe="contrastive")
    texts, labels = make_texts(12)
    with pytest.raises(HeadstartError, match="transformer"):
        TextClassifier(backbone="glove-6b-50d", recipe="contrastive").fit(texts, labels)


def test_when_the_budget_cannot_hold_the_refit_the_first_folds_encoder_is_kept(tiny_bert, monkeypatch, few_steps):
    from headstart.training import transfer

    real = transfer.Transfer.contrastive
    seen = {}

    def slow(self, pristine, probe):
        out = real(self, pristine, probe)
        out["entry"].update(wins=1, losses=1)
        out["step_seconds"] = 1e6  # the refit would take far longer than the budget left
        seen["first"] = out["first_model"]
        return out

    monkeypatch.setattr(transfer.Transfer, "contrastive", slow)
    texts, labels = make_texts(24)
    clf = TextClassifier(backbone=str(tiny_bert), batch_size=8, precision="fp32", folds=3).fit(texts, labels)
    assert clf.recipe_ == "contrastive" and clf.model_ is seen["first"]
    assert not clf.protocol_["refit"] and "refitted" not in clf.protocol_["description"]


def test_freezing_token_embeddings_needs_an_embedding_matrix():
    from headstart.training.tokens import freeze_token_embeddings

    assert not freeze_token_embeddings(torch.nn.Linear(2, 2))  # nothing to freeze, nothing frozen
    emb = torch.nn.Embedding(10, 4)
    holder = torch.nn.Module()
    holder.get_input_embeddings = lambda: emb
    assert freeze_token_embeddings(holder) and not emb.weight.requires_grad


def test_dropout_is_off_while_tuning_and_restored_after():
    from headstart.training.tokens import without_dropout

    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.1), torch.nn.Dropout(0.0), torch.nn.Dropout2d(0.3))
    changed = without_dropout(net)
    assert [p for _, p in changed] == [0.1, 0.3] and all(m.p == 0.0 for m in net if isinstance(m, torch.nn.modules.dropout._DropoutNd))
    net.train()
    x = torch.randn(3, 4)
    torch.testing.assert_close(net[:2](x), net[:2](x))  # training mode, yet deterministic
    for m, p in changed:
        m.p = p
    assert [net[1].p, net[2].p, net[3].p] == [0.1, 0.0, 0.3]


def test_the_encoder_is_tuned_without_dropout(tiny_bert, few_steps, monkeypatch):
    import torch.nn.functional as F

    real, seen = F.dropout, []

    def spy(x, p=0.5, training=True, inplace=False):
        if training:
            seen.append(p)
        return real(x, p, training, inplace)

    monkeypatch.setattr(F, "dropout", spy)
    texts, labels = make_texts(16)
    clf = TextClassifier(backbone=str(tiny_bert), recipe="contrastive", batch_size=8, backbone_lr=3e-3,
                         precision="fp32", folds=2).fit(texts, labels)
    assert seen and set(seen) == {0.0}  # every training-mode pass of the tuning, and none with dropout
    assert {m.p for m in clf.model_.modules() if isinstance(m, torch.nn.Dropout)} == {0.1}


# the first fold's tuning (its weights kept), the second's (embeddings only), the refit on every row
@pytest.mark.parametrize("phase,step", [("0-contrastive fold 1 of 3", 2), ("1-contrastive fold 2 of 3", 5),
                                        ("3-contrastive refit", 3)])
def test_an_interrupted_contrastive_tuning_resumes_where_it_stopped(phase, step, tiny_bert, tmp_path, capsys, monkeypatch,
                                                                    few_steps):
    """Interrupted after a save inside a fold's tuning or the refit, ``--resume`` replays the
    finished tunings from the checkpoint (their held-out embeddings included), continues the
    running one after its saved step, and ends where the uninterrupted run ended."""
    import json
    import signal

    from headstart.training import checkpoint
    from headstart.training.checkpoint import Checkpoints
    from test_checkpoint import interrupt_after_save, run, same_run

    monkeypatch.setattr(checkpoint, "STEP_SAVE_SECONDS", 0.0)  # a save after every step
    from headstart.training.tokens import TokenBackend

    real_contrast, real_loss, trained = TokenBackend.contrast, contrastive.pair_cosine_loss, []

    def counted(self, model, rows, steps, **kw):  # the optimizer steps each tuning trains
        trained.append(0)
        return real_contrast(self, model, rows, steps, **kw)

    def loss(*a):
        trained[-1] += 1
        return real_loss(*a)

    monkeypatch.setattr(TokenBackend, "contrast", counted)
    monkeypatch.setattr(contrastive, "pair_cosine_loss", loss)
    texts, labels = make_texts(24)
    data = tmp_path / "reviews.csv"
    data.write_text("review,sentiment\n" + "".join(f'"{t}",{l}\n' for t, l in zip(texts, labels)))
    args = ["train", data, "--backbone", tiny_bert, "--recipe", "contrastive", "--folds", "3", "--batch-size", "8",
            "--backbone-lr", "3e-3", "--precision", "fp32", "--quiet", "--no-cache"]
    code, _, err = run(capsys, *args, "--out", tmp_path / "reference")
    assert code == 0, err
    reference, trained[:] = list(trained), []
    assert len(reference) == 4  # three folds, the refit
    real_save = Checkpoints.save_epoch
    interrupt_after_save(monkeypatch, phase, step, signal.SIGTERM)
    code, _, err = run(capsys, *args, "--out", tmp_path / "run")
    assert code == 128 + signal.SIGTERM and "interrupted (SIGTERM)" in err
    assert f"{phase.split('-', 1)[1]} step {step}" in err  # where the checkpoint stands
    monkeypatch.setattr(Checkpoints, "save_epoch", real_save)
    trained.clear()
    code, _, err = run(capsys, "train", "--resume", tmp_path / "run")
    assert code == 0, err
    # the finished tunings replayed without a step, the running one continued after its saved step
    at = int(phase.split("-")[0])
    assert trained == [0] * at + [reference[at] - step] + reference[at + 1:]
    same_run(tmp_path / "reference", tmp_path / "run")
    tried = [json.loads((tmp_path / d / "metrics.json").read_text())["tried"] for d in ("reference", "run")]
    strip = lambda entries: [{k: v for k, v in e.items() if k != "seconds"} for e in entries]  # noqa: E731
    assert strip(tried[0]) == strip(tried[1])  # the held-out scores, from the replayed embeddings too


def test_under_a_deadline_the_tuning_stops_before_a_stretch_that_would_end_past_it():
    """The epoch loop's rule: at a checkpoint, the steps to the next one are not started when,
    judged by the last stretch's length, they would end after the deadline."""
    import time

    backend = tiny_token_backend()
    # no deadline: every step and checkpoint (and the first call's one-off costs paid)
    tuned = backend.contrast(TinyEncoder(), np.arange(16), 8, checkpoints={2, 4, 6, 8}, on_checkpoint=lambda s: s,
                             deadline=None)
    assert sorted(tuned.at) == [2, 4, 6, 8] and len(tuned.seconds) == 8

    def slow(step):  # each stretch takes a little over 1 s
        time.sleep(1.0)
        return step

    # after checkpoint 2 (~1 s) another stretch fits, after 4 (~2 s) none, though the deadline has not passed
    deadline = time.perf_counter() + 2.6
    model = TinyEncoder()
    tuned = backend.contrast(model, np.arange(16), 8, checkpoints={2, 4, 6, 8}, on_checkpoint=slow, deadline=deadline)
    assert sorted(tuned.at) == [2, 4] and len(tuned.seconds) == 4 and time.perf_counter() < deadline
    assert all(p.requires_grad for p in model.backbone.parameters())  # trainable again after
