"""The solved head, cross-validation and refits: the solver agrees with scikit-learn, folds
never leak, the final model sees every row, and auto keeps the better recipe."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from headstart.config import TrainConfig
from headstart.training.losses import CrossEntropy
from headstart.training.solver import fit_logistic, select_and_fit, select_on_fold_features
from headstart.data.splits import fold_count, kfold
from headstart.training import transfer
from headstart.training.transfer import Transfer


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def _blobs(n=120, d=12, k=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    centres = rng.normal(0, 1.5, (k, d))
    return (centres[y] + rng.normal(0, 1.0, (n, d))) * rng.uniform(0.5, 3, d) + rng.normal(0, 2, d), y


@pytest.mark.parametrize("C", [0.01, 1.0, 30.0])
def test_solver_matches_scikit_learn(C):
    from sklearn.linear_model import LogisticRegression

    x, y = _blobs()
    ours = fit_logistic(x, y, 3, C=C, max_iter=2000, tol=1e-8)
    mean = x.mean(0)
    std = np.sqrt(x.var(0) + 1e-2 * x.var(0).mean())  # the solver's standardisation (with its variance floor)
    sk = LogisticRegression(C=C, max_iter=10_000, tol=1e-10).fit((x - mean) / std, y)
    np.testing.assert_allclose(_softmax(ours.logits(x)), sk.predict_proba((x - mean) / std), atol=2e-4)


def test_solver_weights_classes():
    x, y = _blobs(seed=1)
    plain = fit_logistic(x, y, 3, C=0.05)
    weights = np.where(y == 0, 10.0, 1.0)
    weighted = fit_logistic(x, y, 3, C=0.05, sample_weight=weights)  # the defaults: tolerance 1e-4, as scikit-learn's
    assert (weighted.logits(x).argmax(1) == 0).sum() > (plain.logits(x).argmax(1) == 0).sum()


def test_folds_cover_every_row_once_and_never_overlap():
    y = np.repeat([0, 1, 2], [9, 5, 30])
    k = fold_count(y, 5)
    assert k == 5
    folds = kfold(y, k, seed=3)
    held = np.concatenate([va for _, va in folds])
    assert sorted(held.tolist()) == list(range(len(y)))
    for tr, va in folds:
        assert not set(tr) & set(va)
        assert set(np.unique(y[tr])) == {0, 1, 2}
    assert fold_count(np.repeat([0, 1], [2, 50]), 5) == 2
    assert [va.tolist() for _, va in kfold(y, k, seed=3)] == [va.tolist() for _, va in folds]


def test_out_of_fold_predictions_never_come_from_a_model_that_saw_the_row():
    # Each row carries its own identity feature and a random label: a model that saw a row
    # predicts its label; one that did not can only guess.
    rng = np.random.default_rng(0)
    n = 60
    y = rng.integers(0, 2, n)
    x = np.eye(n) * 10.0
    fit = select_and_fit(x, y, 2, n_folds=5, seed=0, Cs=(1e2,))
    assert (fit.solution.logits(x).argmax(1) == y).mean() == 1.0  # the refit memorised every row
    assert (fit.oof_logits.argmax(1) == y).mean() < 0.75
    # augmented views of a row (here: copies) train only folds that do not hold it out
    views = (x.copy(), np.arange(n))
    fit = select_and_fit(x, y, 2, n_folds=5, seed=0, Cs=(1e2,), augment=views)
    assert (fit.oof_logits.argmax(1) == y).mean() < 0.75


def test_cross_validation_chooses_the_regularisation_and_refits_on_every_row():
    x, y = _blobs(n=90, d=40, seed=2)
    fit = select_and_fit(x, y, 3, n_folds=3, seed=0)
    assert fit.solution.C in [p["C"] for p in fit.path]
    best = max(fit.path, key=lambda p: (p["accuracy"], -p["log_loss"]))
    assert fit.solution.C == best["C"]
    again = fit_logistic(x, y, 3, C=fit.solution.C, max_iter=2000, tol=1e-8)
    np.testing.assert_allclose(_softmax(fit.solution.logits(x)), _softmax(again.logits(x)), atol=5e-3)


def test_c_chosen_on_features_of_each_fold_is_the_usual_choice_when_the_folds_share_them():
    """Each fold may bring its own features (an encoder tuned on that fold's training part);
    with the same features in every fold the choice, the out-of-fold logits and the path are
    :func:`select_and_fit`'s."""
    x, y = _blobs(n=90, d=40, seed=3)
    folds = kfold(y, 3, 0)
    fit = select_and_fit(x, y, 3, folds=folds)
    # held-out rows in fold order: position p of the result is row order[p]
    order = np.concatenate([va for _, va in folds])
    parts, at = [], 0
    for tr, va in folds:
        parts.append((x[tr], y[tr], x[va], np.arange(at, at + len(va))))
        at += len(va)
    C, oof, path, _ = select_on_fold_features(parts, len(order), y[order], 3)
    assert C == fit.solution.C and [p["C"] for p in path] == [p["C"] for p in fit.path]
    np.testing.assert_allclose(oof, fit.oof_logits[order], atol=1e-6)
    # features that differ per fold: a fold whose held-out features are noise lowers the
    # out-of-fold accuracy it reports, and one C is still chosen from the grid
    noisy = [(a, b, np.random.default_rng(1).normal(size=c.shape), d) if i == 0 else (a, b, c, d)
             for i, (a, b, c, d) in enumerate(parts)]
    C2, oof2, path2, _ = select_on_fold_features(noisy, len(order), y[order], 3)
    assert C2 in [p["C"] for p in path2]
    assert max(p["accuracy"] for p in path2) < max(p["accuracy"] for p in path)
    with pytest.raises(ValueError, match="targets"):
        select_on_fold_features(parts, len(order) + 1, y[order], 3)


# --------------------------------------------------------------------------- the recipes, on a fake backbone


class _Model(nn.Module):
    def __init__(self, d: int, k: int):
        super().__init__()
        self.backbone = nn.Linear(d, d)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(d, k))
        self.quality = "pretrained"


class FakeBackend:
    """Features are the given array; phase 2 marks the model; its logits are either the
    truth (a "good" phase 2) or noise (a "bad" one)."""

    precision = "fp32"
    device = torch.device("cpu")
    phase2_recipe = "fine-tune"

    def __init__(self, x, labels, phase2_quality: str):
        self.x, self.labels, self.quality = torch.as_tensor(x, dtype=torch.float32), labels, phase2_quality
        self.trained: list[tuple[np.ndarray, np.ndarray | None]] = []

    def failed(self):
        return []

    def features(self, model):
        return self.x, np.arange(len(self.x))

    def augmented(self, model, rows):
        return None

    def train(self, model, train_rows, eval_rows, *, epochs, phase, head_trained, deadline):
        from headstart.training.loop import EpochRecord

        self.trained.append((np.asarray(train_rows), None if eval_rows is None else np.asarray(eval_rows)))
        model.quality = self.quality
        return [EpochRecord(phase, e, 0.0, 1.0, 0.0, 1.0, 0.1, 0.0, len(train_rows)) for e in range(1, epochs + 1)]

    def logits(self, model, rows):
        rows = np.asarray(rows)
        if not hasattr(model, "quality"):  # unknown.FeaturesOf(model): what the head reads
            return self.x[rows].numpy(), rows
        k = int(self.labels.max()) + 1
        if model.quality == "good":
            return np.eye(k)[self.labels[rows]] * 5.0, rows
        if model.quality == "bad":
            return np.eye(k)[(self.labels[rows] + 1) % k] * 5.0, rows
        with torch.inference_mode():
            return model.head(self.x[rows]).numpy(), rows


def _transfer(quality: str, recipe: str = "auto", **cfg_kw):
    rng = np.random.default_rng(0)
    k, per = 3, 30
    y = np.repeat(np.arange(k), per)
    x = np.eye(k)[y] * 1.0 + rng.normal(0, 1.2, (len(y), k))  # a probe gets most, not all, right
    cfg = TrainConfig(recipe=recipe, epochs=2, seed=0, **cfg_kw).resolved()
    backend = FakeBackend(x, y, quality)
    model = _Model(k, k)
    t = Transfer(model, backend, cfg, n_data=len(y), n_val=0, classes=["a", "b", "c"],
                 loss_fn=CrossEntropy())
    return t.run(), backend


def test_auto_keeps_fine_tuning_only_when_it_beats_the_probe_on_the_same_rows():
    good, backend = _transfer("good")
    assert good.recipe == "fine-tune" and good.model.quality == "good"
    entry = [t for t in good.tried if t["recipe"] == "fine-tune"][0]
    assert entry["kept"] and entry["accuracy"] > entry["probe_accuracy"]
    assert good.protocol.kind == "holdout"  # judged on its held-out fold, never trained on
    held_out_train, held_out = backend.trained[0]
    assert not set(held_out_train) & set(held_out)
    assert set(good.val_rows) == set(held_out)

    bad, _ = _transfer("bad")
    assert bad.recipe == "linear-probe" and bad.model.quality == "pretrained"
    assert bad.protocol.kind == "cross-validation" and len(bad.val_rows) == 90  # out-of-fold, every row
    assert len(bad.protocol.fold_accuracy) == 5 and "+/-" in bad.protocol.description  # the spread over the folds
    assert [t["kept"] for t in bad.tried] == [True, False]


def test_a_lead_within_noise_decides_nothing():
    # of the rows where only one of the two is right, one must win by more than two
    # standard deviations of a fair coin's difference
    assert transfer.against_probe({"wins": 2, "losses": 1}) == "even"  # 0.69 vs 0.62 on 13 rows: noise
    assert transfer.against_probe({"wins": 0, "losses": 0}) == "even"
    assert transfer.against_probe({"wins": 5, "losses": 2}) == "even"  # 3 < 2 sqrt(7): noise on 13 rows
    assert transfer.against_probe({"wins": 14, "losses": 4}) == "better"  # 10 > 2 sqrt(18)
    assert transfer.against_probe({"wins": 12, "losses": 6}) == "even"
    assert transfer.against_probe({"wins": 135, "losses": 100}) == "better"  # 35 > 2 sqrt(235)
    assert transfer.against_probe({"wins": 120, "losses": 100}) == "even"
    assert transfer.against_probe({"wins": 4, "losses": 14}) == "worse"
    # fine-tuning must win; contrastive (few rows per class) stays unless it clearly loses
    assert not transfer.keeps("full", {"wins": 2, "losses": 1}) and transfer.keeps("full", {"wins": 14, "losses": 4})
    assert transfer.keeps("contrastive", {"wins": 1, "losses": 2})
    assert not transfer.keeps("contrastive", {"wins": 4, "losses": 14})


def test_held_out_rows_that_could_show_the_contrastive_gain_judge_it_alone():
    # 17 vs 28 of 616 rows (77 intents of 8): within the sign test's bar (11 < 2 sqrt(45)), but
    # over 160 rows they decide: a 2.5-point lead would be 15.4 rows net, and the probe has more
    entry = {"n": 616, "wins": 17, "losses": 28}
    assert transfer.against_probe(entry) == "even" and transfer.rows_decide("contrastive", entry)
    assert not transfer.keeps("contrastive", entry) and not transfer.keeps("prototype", entry)
    assert transfer.keeps("contrastive", {"n": 616, "wins": 28, "losses": 17})  # 11 rows net: nearer 15.4 than 0
    assert not transfer.keeps("contrastive", {"n": 616, "wins": 20, "losses": 20})  # no sign of the gain
    assert not transfer.keeps("contrastive", {"n": 616, "wins": 40, "losses": 50})  # many disagreements, probe ahead
    # 17 vs 15 of 411 (CLINC150, two folds of three): 2 rows net, nearer none than the 10.3 of a
    # 2.5-point lead: the probe, where the doubt kept contrastive (91.3% on test against 93.9%)
    clinc = {"n": 411, "wins": 17, "losses": 15}
    assert transfer.against_probe(clinc) == "even" and not transfer.keeps("contrastive", clinc)
    assert not transfer.keeps("contrastive", {"n": 411, "wins": 20, "losses": 15})  # 5 rows: under 5.1
    assert transfer.keeps("contrastive", {"n": 411, "wins": 21, "losses": 15})  # 6 rows: over it
    assert transfer.keeps("contrastive", {"n": 1000, "wins": 10, "losses": 0})  # clearly better, under half of 25
    # a few dozen rows cannot show it (2.5% of 56 rows is 1.4 rows): kept unless clearly worse
    small = {"n": 56, "wins": 3, "losses": 6}
    assert not transfer.rows_decide("contrastive", small)
    assert transfer.keeps("contrastive", small) and transfer.keeps("prototype", small)
    assert not transfer.keeps("contrastive", {"n": 56, "wins": 0, "losses": 9})
    # 160 rows or fewer never decide alone, more always do
    assert not transfer.rows_could_decide(85) and not transfer.rows_could_decide(160)
    assert transfer.rows_could_decide(161) and transfer.rows_could_decide(200)
    assert transfer.keeps("contrastive", {"n": 160, "wins": 20, "losses": 25})
    assert not transfer.keeps("contrastive", {"n": 200, "wins": 20, "losses": 25})
    # fine-tuning still has to win clearly; without a comparison the doubt stands
    assert not transfer.keeps("full", {"n": 616, "wins": 28, "losses": 17})
    assert transfer.keeps("full", {"n": 616, "wins": 40, "losses": 17})
    assert not transfer.rows_decide("contrastive", {"n": 616}) and transfer.keeps("contrastive", {"n": 616})


def test_a_refit_that_does_worse_on_rows_it_trained_on_than_the_judged_model_is_discarded():
    class CollapsingRefit(FakeBackend):
        def train(self, model, train_rows, eval_rows, **kw):
            out = super().train(model, train_rows, eval_rows, **kw)
            if eval_rows is None:  # the refit on every row ends on a wrong answer for everything
                model.quality = "bad"
            return out

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 30)
    x = np.eye(3)[y] + rng.normal(0, 1.2, (len(y), 3))
    cfg = TrainConfig(recipe="auto", epochs=2, seed=0).resolved()
    backend = CollapsingRefit(x, y, "good")
    result = Transfer(_Model(3, 3), backend, cfg, n_data=len(y), n_val=0, classes=["a", "b", "c"],
                      loss_fn=CrossEntropy()).run()
    assert backend.trained[-1][1] is None  # the refit ran
    entry = [t for t in result.tried if t["recipe"] == "fine-tune"][0]
    assert entry["kept"] and entry["refit_discarded"] == 0.0
    # the model that scored the reported rows is kept, and the protocol claims no refit
    assert result.recipe == "fine-tune" and result.model.quality == "good" and not result.protocol.refit


def test_refit_trains_the_final_model_on_every_row():
    result, backend = _transfer("good", recipe="fine-tune")
    last_train, last_eval = backend.trained[-1]
    assert last_eval is None and sorted(last_train.tolist()) == list(range(90))
    assert result.protocol.refit
    _, backend = _transfer("good", recipe="fine-tune", refit=False)
    assert len(backend.trained) == 1


def test_auto_skips_phase_two_on_few_examples(monkeypatch):
    monkeypatch.setattr(transfer, "AUTO_MIN_PER_CLASS", 31)
    result, backend = _transfer("good")
    assert result.recipe == "linear-probe" and not backend.trained
    assert "30 training rows" in result.tried[1]["skipped"]


def test_the_probe_head_is_the_solution_on_every_row():
    result, _ = _transfer("bad", recipe="linear-probe")
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 30)
    x = np.eye(3)[y] * 1.0 + rng.normal(0, 1.2, (90, 3))
    C = result.head["C"]
    direct = fit_logistic(x, y, 3, C=C, max_iter=2000, tol=1e-8)
    with torch.inference_mode():
        head = result.model.head(torch.as_tensor(x, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(_softmax(head), _softmax(direct.logits(x)), atol=1e-3)


def test_auto_keeps_the_probe_when_phase_two_does_not_fit_the_time_budget(monkeypatch):
    from headstart.training.loop import OverBudget

    def too_slow(self, model, train_rows, eval_rows, *, epochs, phase, head_trained, deadline):
        assert deadline is not None  # auto passes its budget down; a named recipe trains to its end
        raise OverBudget("one epoch would take about 900 s, more than the time left (500 s)")

    monkeypatch.setattr(FakeBackend, "train", too_slow)
    result, _ = _transfer("good", time_budget=500)
    assert result.recipe == "linear-probe" and "900 s" in result.tried[1]["skipped"]
    assert result.protocol.kind == "cross-validation"


def test_the_prototype_head_ranks_classes_by_cosine_to_their_mean_direction():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6)) + 3.0
    y = rng.integers(0, 4, 40)
    w, b = transfer.prototype_head(torch.as_tensor(x), y, 4)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    means = np.stack([unit[y == c].mean(0) for c in range(4)])
    cos = unit @ (means / np.linalg.norm(means, axis=1, keepdims=True)).T
    np.testing.assert_array_equal((x @ w.T + b).argmax(1), cos.argmax(1))


class PrototypeBackend(FakeBackend):
    prototypes = True


def test_auto_on_few_rows_per_class_scores_prototypes_out_of_fold(monkeypatch):
    monkeypatch.setattr(transfer, "AUTO_MIN_PER_CLASS", 31)
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 30)
    x = np.eye(3)[y] * 1.0 + rng.normal(0, 1.2, (90, 3)) + 2.0
    cfg = TrainConfig(recipe="auto", epochs=2, seed=0).resolved()
    backend = PrototypeBackend(x, y, "good")
    t = Transfer(_Model(3, 3), backend, cfg, n_data=90, n_val=0, classes=["a", "b", "c"],
                 loss_fn=CrossEntropy())
    result = t.run()
    entry = [e for e in result.tried if e["recipe"] == "prototype"][0]
    assert entry["n"] == 90 and not backend.trained  # no phase 2 on few rows per class
    # out-of-fold: each held-out row is scored by the means of the other folds only
    xt = torch.as_tensor(x, dtype=torch.float32)
    expected = np.zeros((90, 3), dtype=np.float32)
    for tr, va in t.folds:
        w, b = transfer.prototype_head(xt[tr], y[tr], 3)
        expected[va] = xt[va].numpy() @ w.T + b
    assert entry["accuracy"] == pytest.approx(float((expected.argmax(1) == y).mean()))
    assert result.recipe == ("prototype" if transfer.keeps("prototype", entry) else "linear-probe")
    if result.recipe == "prototype":
        w, b = transfer.prototype_head(xt, y, 3)  # the saved head: the means of every row
        np.testing.assert_allclose(result.model.head[1].weight.detach().numpy(), w, rtol=1e-5)
        np.testing.assert_allclose(np.sort(result.val_logits, axis=None), np.sort(expected, axis=None), rtol=1e-5)


def test_one_label_splits_are_still_scikit_learns():
    # multi-label support left one-label rows alone: the same folds and holdout for a seed
    from sklearn.model_selection import StratifiedKFold, train_test_split

    from headstart.errors import DataError
    from headstart.data.splits import is_multilabel, require_two_classes, stratified_split

    y = np.repeat([0, 1, 2], [9, 5, 30])
    assert not is_multilabel(y)
    for seed in (0, 3):
        expected = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed).split(np.zeros(len(y)), y)
        assert [(tr.tolist(), va.tolist()) for tr, va in kfold(y, 5, seed)] == \
            [(sorted(tr.tolist()), sorted(va.tolist())) for tr, va in expected]
        train, val = train_test_split(np.arange(len(y)), test_size=9, random_state=seed, stratify=y)
        ours = stratified_split(y, 0.2, seed, ["a", "b", "c"])
        assert ours[0].tolist() == sorted(train.tolist()) and ours[1].tolist() == sorted(val.tolist())
    with pytest.raises(DataError, match="only one class"):
        require_two_classes(np.zeros(5, dtype=np.int64), ["a", "b"])


def test_auto_trains_phase_two_on_the_part_of_an_epoch_the_budget_holds(monkeypatch):
    """One epoch would overrun auto's time budget: one epoch over a seeded random part of the
    training rows that fits is trained instead, held out and judged as usual; too small a part
    and phase 2 is not tried."""
    from headstart.training.loop import OverBudget

    calls = []
    original = FakeBackend.train

    def over_budget_train(self, model, train_rows, eval_rows, *, epochs, phase, head_trained, deadline):
        calls.append((len(train_rows), epochs))
        if len(calls) == 1:  # the whole epoch: 100 s projected, a 60 s budget is all that is left
            raise OverBudget("one epoch would take about 100 s", 100.0, 60.0)
        return original(self, model, train_rows, eval_rows, epochs=epochs, phase=phase, head_trained=head_trained,
                        deadline=deadline)

    monkeypatch.setattr(FakeBackend, "train", over_budget_train)
    monkeypatch.setattr(Transfer, "time_left", lambda self: 60.0)
    result, backend = _transfer("good")
    (whole, _), (part, epochs) = calls[:2]  # then the refit on every row (the fake's epochs take no time)
    # 0.8 x (60 s - the held-out rows' scoring) / 100 s of the 72 training rows of fold 1
    assert whole == 72 and epochs == 1 and 0.4 * 72 <= part < 0.48 * 72
    assert set(backend.trained[0][0]) < set(range(90)) and not set(backend.trained[0][0]) & set(backend.trained[0][1])
    entry = [t for t in result.tried if t["recipe"] == "fine-tune"][0]
    assert entry["trained_rows"] == part and result.recipe == "fine-tune"
    calls.clear()
    monkeypatch.setattr(Transfer, "time_left", lambda self: 10.0)  # under a fifth of an epoch: not tried
    result, _ = _transfer("good")
    assert len(calls) == 1 and result.recipe == "linear-probe" and "100 s" in result.tried[1]["skipped"]


def test_one_plan_for_every_protocol_and_the_sets_a_fit_makes():
    """plan_validation is what a fit uses; holdout_sets, what check, the report and the CLI
    use, gives the very same holdout rows."""
    from types import SimpleNamespace

    from headstart.errors import DataError
    from headstart.data.splits import holdout_sets, plan_validation

    y = np.repeat(np.arange(3), 10)
    classes = ["a", "b", "c"]
    cv = plan_validation(y, classes, n_data=30, n_val=0, val_split=None, folds=5, seed=0)
    assert cv.protocol.kind == "cross-validation" and cv.eval_rows is None and len(cv.folds) == 5
    assert sorted(np.concatenate([va for _, va in cv.folds]).tolist()) == list(range(30))
    held = plan_validation(y, classes, n_data=30, n_val=0, val_split=0.2, folds=5, seed=0)
    assert held.protocol.kind == "holdout" and len(held.eval_rows) == 6 and held.folds is None
    given = plan_validation(np.r_[y, [0, 1, 2]], classes, n_data=30, n_val=3, val_split=0.2, folds=5, seed=0,
                            val_source="v.csv")
    assert given.protocol.kind == "given" and given.eval_rows.tolist() == [30, 31, 32]

    class Rows(SimpleNamespace):
        def subset(self, rows):
            return Rows(labels=self.labels[rows], classes=self.classes, rows=self.rows[rows])

    full = Rows(labels=y, classes=classes, rows=np.arange(30))
    train, val = holdout_sets(full, None, 0.2, 0)
    assert val.rows.tolist() == held.eval_rows.tolist() and train.rows.tolist() == held.train_rows.tolist()
    assert holdout_sets(full, None, None, 0) == (full, None)
    with pytest.raises(DataError, match="single training example"):
        plan_validation(np.arange(3), classes, n_data=3, n_val=0, val_split=None, folds=5, seed=0)
