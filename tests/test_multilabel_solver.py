"""Multi-label heads and splits (several labels per row, ``y`` an (n, K) 0/1 array): the
sigmoid head is K independent scikit-learn logistic regressions, ``pos_weight`` moves its
label only, iterative stratification deals every label to every fold, and out-of-fold
logits never come from a model that saw the row."""

from __future__ import annotations

import numpy as np
import pytest

from headstart.errors import DataError
from headstart.training.solver import fit_logistic, select_and_fit
from headstart.data.splits import fold_count, is_multilabel, kfold, require_two_classes, stratified_split


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _multilabel(n=240, d=8, k=4, seed=0):
    """Features with unequal scales and offsets; each label a noisy linear function of them,
    with its own frequency."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, d))
    y = (z @ rng.normal(size=(k, d)).T + rng.normal(0, 1.0, (n, k)) > rng.normal(0, 1.5, k)).astype(np.int64)
    return z * rng.uniform(0.5, 3, d) + rng.normal(0, 2, d), y


def _standardised(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-2 * x.var(0).mean())  # the solver's scaler, with its floor


@pytest.mark.parametrize("C", [0.01, 1.0, 10.0])
def test_multilabel_solver_is_independent_scikit_learn_binary_fits(C):
    from sklearn.linear_model import LogisticRegression

    x, y = _multilabel()
    ours = fit_logistic(x, y, y.shape[1], C=C, max_iter=2000, tol=1e-8)
    z = _standardised(x)
    sk = np.stack([LogisticRegression(C=C, max_iter=10_000, tol=1e-10).fit(z, y[:, j]).predict_proba(z)[:, 1]
                   for j in range(y.shape[1])], 1)
    assert ours.weight.shape == (y.shape[1], x.shape[1]) and ours.bias.shape == (y.shape[1],)
    np.testing.assert_allclose(_sigmoid(ours.logits(x)), sk, atol=2e-4)


def test_pos_weight_raises_the_positives_of_its_label_only():
    x, y = _multilabel(seed=1)
    k = y.shape[1]
    plain = fit_logistic(x, y, k, C=0.1, max_iter=2000, tol=1e-8)
    pos_weight = np.array([5.0] + [1.0] * (k - 1))
    weighted = fit_logistic(x, y, k, C=0.1, pos_weight=pos_weight, max_iter=2000, tol=1e-8)
    assert (weighted.logits(x)[:, 0] > 0).sum() > (plain.logits(x)[:, 0] > 0).sum()
    # the labels are independent problems: the others do not move
    np.testing.assert_allclose(_sigmoid(weighted.logits(x)[:, 1:]), _sigmoid(plain.logits(x)[:, 1:]), atol=1e-3)
    # and through the cross-validated fit, out-of-fold as well
    a = select_and_fit(x, y, k, n_folds=3, seed=0, Cs=(0.1,))
    b = select_and_fit(x, y, k, n_folds=3, seed=0, Cs=(0.1,), pos_weight=pos_weight)
    assert (b.oof_logits[:, 0] > 0).sum() > (a.oof_logits[:, 0] > 0).sum()
    with pytest.raises(ValueError, match="pos_weight"):
        fit_logistic(x, y[:, 0], 2, C=0.1, pos_weight=np.ones(2))  # one label per row: weight classes instead


def _rare_and_common(n=103, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 5)) < np.array([0.05, 0.08, 0.15, 0.4, 0.8])).astype(np.int64)
    y[:8] = 0  # some rows with no label at all
    return y


def test_iterative_stratification_deals_every_label_to_every_fold():
    y = _rare_and_common()
    assert is_multilabel(y) and not is_multilabel(y[:, 0])
    k = fold_count(y, 5)
    assert k == min(5, int(y.sum(0).min()))
    folds = kfold(y, k, seed=3)
    assert len(folds) == k
    held = np.concatenate([va for _, va in folds])
    assert sorted(held.tolist()) == list(range(len(y)))  # every row held out exactly once
    sizes = [len(va) for _, va in folds]
    assert max(sizes) - min(sizes) <= 1  # rows without a label keep the sizes even
    for tr, va in folds:
        assert not set(tr) & set(va) and len(tr) + len(va) == len(y)
        assert (np.diff(tr) > 0).all() and (np.diff(va) > 0).all()  # sorted
        for j in np.flatnonzero(y.sum(0) >= k):
            assert y[va, j].any(), f"label {j} has {y[:, j].sum()} positives but none held out in a fold"
            assert y[tr, j].any()
    # a label is spread as evenly as its count allows
    per_fold = np.stack([y[va].sum(0) for _, va in folds])
    assert (per_fold.max(0) - per_fold.min(0) <= 2).all()
    # deterministic for a seed, different for another
    assert [va.tolist() for _, va in kfold(y, k, seed=3)] == [va.tolist() for _, va in folds]
    assert [va.tolist() for _, va in kfold(y, k, seed=4)] != [va.tolist() for _, va in folds]


def test_multilabel_holdout_is_iteratively_stratified():
    y = _rare_and_common(seed=1)
    classes = list("abcde")
    train, val = stratified_split(y, 0.2, seed=0, classes=classes)
    assert len(val) == int(np.ceil(0.2 * len(y)))
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(len(y)))
    assert (np.diff(train) > 0).all() and (np.diff(val) > 0).all()
    # each label's share of the holdout is its share of the rows, to a row
    assert (np.abs(y[val].sum(0) - 0.2 * y.sum(0)) <= 1).all()
    again = stratified_split(y, 0.2, seed=0, classes=classes)
    assert again[1].tolist() == val.tolist()
    with pytest.raises(DataError, match="too few"):
        stratified_split(np.array([[1, 0], [0, 1]]), 0.5, seed=0, classes=["a", "b"])


def test_multilabel_fold_count_follows_the_rarest_label():
    y = np.zeros((30, 3), dtype=np.int64)
    y[:3, 0] = 1
    y[:20, 1] = 1  # label 2: never present, ignored
    assert fold_count(y, 5) == 3
    y[:, 0] = 0
    y[0, 0] = 1
    assert fold_count(y, 5) == 2  # never below 2
    y[:10, 0] = 1
    assert fold_count(y, 5) == 5
    assert fold_count(np.ones((3, 2), dtype=np.int64), 5) == 3  # never above n


def test_multilabel_data_errors_name_the_problem():
    classes = ["cat", "dog", "bird"]
    with pytest.raises(DataError, match="no row carries any"):
        require_two_classes(np.zeros((6, 3), dtype=np.int64), classes)
    same = np.tile([1, 0, 1], (6, 1))
    with pytest.raises(DataError, match=r"every row carries exactly the same labels \('cat', 'bird'\)"):
        require_two_classes(same, classes)
    with pytest.raises(DataError, match="same labels"):
        stratified_split(same, 0.2, seed=0, classes=classes)
    one_label_in_some_rows = np.zeros((6, 3), dtype=np.int64)
    one_label_in_some_rows[:2, 1] = 1
    require_two_classes(one_label_in_some_rows, classes)  # dog or not: something to learn


def test_multilabel_out_of_fold_logits_come_from_models_that_did_not_see_the_row():
    # Each row carries its own identity feature and random labels: a model that saw a row
    # reproduces its labels; one that did not can only guess.
    rng = np.random.default_rng(0)
    n, k = 60, 3
    y = rng.integers(0, 2, (n, k))
    x = np.eye(n) * 10.0
    fit = select_and_fit(x, y, k, n_folds=5, seed=0, Cs=(1e2,))
    assert fit.oof_logits.shape == (n, k)
    assert ((fit.solution.logits(x) > 0) == y).all()  # the refit memorised every row
    assert ((fit.oof_logits > 0) == y).mean() < 0.75
    assert (_sigmoid(np.abs(fit.oof_logits)) < 0.9).all()  # and none of the guesses is confident
    # augmented views (copies, labelled by their source row) train only folds that do not hold it out
    fit = select_and_fit(x, y, k, n_folds=5, seed=0, Cs=(1e2,), augment=(x.copy(), np.arange(n)))
    assert ((fit.oof_logits > 0) == y).mean() < 0.75
    assert (_sigmoid(np.abs(fit.oof_logits)) < 0.9).all()


def test_multilabel_out_of_fold_logits_are_each_folds_own_fit():
    x, y = _multilabel(n=90, seed=2)
    k = y.shape[1]
    fit = select_and_fit(x, y, k, n_folds=3, seed=0, Cs=(0.1,), max_iter=2000, tol=1e-8)
    for tr, va in fit.folds:
        own = fit_logistic(x[tr], y[tr], k, C=0.1, max_iter=2000, tol=1e-8)
        np.testing.assert_allclose(_sigmoid(fit.oof_logits[va]), _sigmoid(own.logits(x[va])), atol=1e-3)


def test_multilabel_selection_takes_the_lowest_out_of_fold_log_loss():
    x, y = _multilabel(n=120, d=30, seed=3)
    k = y.shape[1]
    fit = select_and_fit(x, y, k, n_folds=3, seed=0)
    assert {"C", "log_loss", "accuracy", "micro_f1"} <= set(fit.path[0])
    # each label takes the C of its own lowest out-of-fold log-loss, and its out-of-fold logits are that C's
    z = fit.oof_logits
    for j in range(k):
        best = min(fit.path, key=lambda p: p["label_log_loss"][j])
        assert fit.solution.C[j] == best["C"]
        assert best["label_log_loss"][j] == pytest.approx(np.mean(np.logaddexp(0, z[:, j]) - y[:, j] * z[:, j]))
    # the path's totals are those of each C's out-of-fold logits: at the C every label chose alike, the same
    p = fit.path[0]
    assert p["log_loss"] == pytest.approx(np.mean(p["label_log_loss"]))
    assert {"accuracy", "micro_f1"} <= set(p)
    # the default folds are iterative stratification's
    assert [va.tolist() for _, va in fit.folds] == [va.tolist() for _, va in kfold(y, 3, 0)]


def test_each_label_gets_its_own_regularisation():
    """A label the features determine wants weak regularisation; a label that is noise wants
    the strongest on the path: one shared C would serve one of them badly."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(300, 10))
    y = np.column_stack([(x[:, 0] + 0.1 * rng.normal(size=300) > 0), rng.random(300) < 0.3]).astype(np.int64)
    fit = select_and_fit(x, y, 2, n_folds=3, seed=0)
    assert fit.solution.C[0] > fit.solution.C[1] == min(p["C"] for p in fit.path)
