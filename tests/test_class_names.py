"""The class names as training rows of a solved head: which names are read, how their weight is
chosen out-of-fold (0 when they mislead), that they are never scored, and that a text fit uses
them only when asked and able."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from conftest import make_texts
from headstart import TextClassifier
from headstart.data.textdata import class_name_texts
from headstart.training import transfer
from headstart.training.solver import select_and_fit, select_on_fold_features


@pytest.mark.parametrize("classes, texts", [
    (["card_arrival", "TopUpFailed", "exchange-rate.query"], ["card arrival", "Top Up Failed", "exchange rate query"]),
    (["pos", "neg"], ["pos", "neg"]),
    (["0", "1"], None),  # no letters
    (["LABEL_0", "LABEL_1"], None),  # the same once the digits are gone
    (["c1", "c2", "other"], None),
    (["card_arrival", "CardArrival"], None),
    (["anger"], None),
    (["положительный", "отрицательный"], ["положительный", "отрицательный"]),  # letters of any script
    (["正面", "负面"], ["正面", "负面"]),
    (["LABEL_١", "LABEL_٢"], None),  # digits of any script
])
def test_names_are_read_as_texts_only_when_their_letters_tell_the_classes_apart(classes, texts):
    assert class_name_texts(classes) == texts


def _few_rows(seed: int, per_class: int = 3, k: int = 4, d: int = 10):
    """Few noisy rows per class around class centres, and those centres: what a class's name
    embedded next to its examples is, a clean summary of the class."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1.0, (k, d))
    y = np.repeat(np.arange(k), per_class)
    x = centres[y] + rng.normal(0, 1.6, (len(y), d))
    return x, y, centres


def test_names_that_summarise_their_class_get_a_weight_and_help_out_of_fold():
    gains, weights = [], []
    for seed in range(6):
        x, y, centres = _few_rows(seed)
        folds = [(np.flatnonzero(np.arange(len(y)) % 3 != f), np.flatnonzero(np.arange(len(y)) % 3 == f)) for f in range(3)]
        plain = select_and_fit(x, y, 4, folds=folds)
        named = select_and_fit(x, y, 4, folds=folds, extra=(centres, np.arange(4)), extra_weights=transfer.NAME_WEIGHTS)
        assert plain.extra_weight is None and plain.extra_path is None
        assert named.extra_weight in transfer.NAME_WEIGHTS and len(named.extra_path) == len(transfer.NAME_WEIGHTS)
        assert named.oof_logits.shape == (len(y), 4)  # only the labelled rows are scored
        best = max(named.extra_path, key=lambda p: (round(p["accuracy"], 9), -p["log_loss"]))
        assert best["weight"] == named.extra_weight
        # weight 0 is the plain fit's path, so the chosen weight is never worse out-of-fold
        zero = [p for p in named.extra_path if p["weight"] == 0][0]
        assert zero["accuracy"] == pytest.approx(plain.path[[p["C"] for p in plain.path].index(zero["C"])]["accuracy"])
        weights.append(named.extra_weight)
        gains.append((named.oof_logits.argmax(1) == y).mean() - (plain.oof_logits.argmax(1) == y).mean())
    assert min(gains) >= 0 and np.mean(gains) > 0.1 and min(weights) > 0


def test_names_that_mislead_are_left_out():
    chosen = []
    for seed in range(6):
        x, y, centres = _few_rows(seed, per_class=6)
        wrong = np.roll(np.arange(4), 1)  # each name sits on another class's examples
        fit = select_and_fit(x, y, 4, n_folds=3, seed=0, extra=(centres[wrong], np.arange(4)),
                             extra_weights=transfer.NAME_WEIGHTS)
        chosen.append(fit.extra_weight)
    assert chosen.count(0.0) >= 5, chosen


def test_the_final_fit_holds_the_names_at_the_chosen_weight():
    from headstart.training.solver import fit_logistic

    x, y, centres = _few_rows(1)
    fit = select_and_fit(x, y, 4, n_folds=3, seed=0, Cs=(1.0,), extra=(centres, np.arange(4)), extra_weights=(4.0,))
    by_hand = fit_logistic(np.vstack([x, centres]), np.concatenate([y, np.arange(4)]), 4, C=1.0,
                           sample_weight=np.concatenate([np.ones(len(y)), np.full(4, 4.0)]))
    softmax = lambda z: np.exp(z - z.max(1, keepdims=True)) / np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)  # noqa: E731
    np.testing.assert_allclose(softmax(fit.solution.logits(x)), softmax(by_hand.logits(x)), atol=2e-3)
    # fit_logistic appends them itself, at the weight given; at weight 0 it leaves them out
    given = fit_logistic(x, y, 4, C=1.0, extra=(centres, np.arange(4)), extra_weight=4.0)
    np.testing.assert_allclose(given.weight, by_hand.weight, atol=1e-5)
    plain = fit_logistic(x, y, 4, C=1.0)
    np.testing.assert_allclose(fit_logistic(x, y, 4, C=1.0, extra=(centres, np.arange(4)), extra_weight=0.0).weight,
                               plain.weight)


def test_fold_features_choose_the_names_weight_with_c():
    x, y, centres = _few_rows(2)
    order = np.arange(len(y))
    parts, extras, at = [], [], 0
    for f in range(3):
        tr, va = order[order % 3 != f], order[order % 3 == f]
        parts.append((x[tr], y[tr], x[va], np.arange(at, at + len(va))))
        extras.append((centres, np.arange(4)))
        at += len(va)
    held = np.concatenate([order[order % 3 == f] for f in range(3)])
    C, oof, path, weight = select_on_fold_features(parts, at, y[held], 4)
    assert weight is None
    C2, oof2, path2, weight2 = select_on_fold_features(parts, at, y[held], 4, extras=extras, extra_weights=transfer.NAME_WEIGHTS)
    assert weight2 in transfer.NAME_WEIGHTS and oof2.shape == oof.shape
    assert (oof2.argmax(1) == y[held]).mean() >= (oof.argmax(1) == y[held]).mean()
    only_zero = select_on_fold_features(parts, at, y[held], 4, extras=extras, extra_weights=(0.0,))
    assert only_zero[0] == C and only_zero[3] == 0.0
    np.testing.assert_allclose(only_zero[1], oof)


def test_extra_rows_are_for_one_label_per_row():
    x, y, centres = _few_rows(0)
    with pytest.raises(ValueError, match="one label per row"):
        select_and_fit(x, np.eye(4)[y], 4, n_folds=3, extra=(centres, np.arange(4)))


def _probe(tiny_bert, labels_as, **kw):
    texts, labels = make_texts(24)
    return TextClassifier(backbone=str(tiny_bert), recipe="linear-probe", precision="fp32", folds=3,
                          **kw).fit(texts, [labels_as[label] for label in labels])


def test_a_text_probe_trains_on_its_class_names_at_the_weight_chosen_out_of_fold(tiny_bert, caplog):
    with caplog.at_level(logging.INFO, logger="headstart"):
        clf = _probe(tiny_bert, {"positive": "great", "negative": "awful"})
    names = clf.head_info_["class_names"]
    assert names["weight"] in transfer.NAME_WEIGHTS and names["weights_tried"] == list(transfer.NAME_WEIGHTS)
    assert "class names as training texts for the solved head" in caplog.text and "'awful', 'great'" in caplog.text
    assert clf.tried_[0]["n"] == 24  # the names are never among the scored rows


@pytest.mark.parametrize("labels_as, kw", [({"positive": "1", "negative": "0"}, {}),
                                           ({"positive": "great", "negative": "awful"}, {"class_names": False})])
def test_a_text_probe_leaves_out_names_that_say_nothing_or_that_it_was_told_to(tiny_bert, caplog, labels_as, kw):
    with caplog.at_level(logging.INFO, logger="headstart"):
        clf = _probe(tiny_bert, labels_as, **kw)
    assert "class_names" not in clf.head_info_
    said = "class names not used: without digits and punctuation they do not tell the classes apart"
    assert (said in caplog.text) == (not kw)


def test_the_command_line_can_turn_the_names_off():
    from click.testing import CliRunner

    from headstart.cli import cli

    out = CliRunner().invoke(cli, ["train", "--help"]).output
    assert "--no-class-names" in out and "card_arrival" in out


@pytest.mark.parametrize("names, says", [
    ({"weight": 4.0, "weights_tried": [0.0, 1.0, 2.0, 4.0, 8.0]}, "name trained as one more example of its class at weight 4 (of 0, 1, 2, 4, 8, chosen with C)"),
    ({"weight": 0.0, "weights_tried": [0.0, 1.0, 2.0, 4.0, 8.0]}, "left out (weight 0 scored best)"),
    ({"weight": 1.0, "weights_tried": [1.0]}, "one more example of its class at weight 1."),
])
def test_the_report_says_how_the_names_trained(names, says):
    from headstart.reports.report import _tried_html

    html = _tried_html([], {"kind": "logistic regression (L-BFGS)", "C": 0.1, "class_names": names})
    assert says in html

