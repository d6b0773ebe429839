"""Several labels per row: headstart's default command against a plain scikit-learn one-vs-rest
logistic regression on the same frozen MiniLM embeddings, side by side in one run, both scored
on rows neither ever saw.

The data is GoEmotions with its Ekman labels (``../shared/datasets/goemotions``: train.csv,
dev.csv). headstart trains on train.csv alone (no validation set: cross-validation, the probe
and, when the time budget allows, fine-tuning judged on a held-out fold) and its saved model,
with its saved per-label thresholds, is scored on dev.csv. The baseline fits
``LogisticRegression`` per label on standardised embeddings of the same training rows (the
embeddings headstart computed and cached), C chosen by 5-fold cross-validation on log-loss,
thresholds tuned per label on its own out-of-fold probabilities to maximise F1, then scored on
dev.csv.

    python bench/multilabel.py                         # the default 600 s budget on a CPU
    python bench/multilabel.py --time-budget 0         # no budget: fine-tuning runs its epochs
    python bench/multilabel.py --train-rows 5000       # a random part of train.csv, quicker
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "goemotions"

sys.path.insert(0, str(ROOT / "bench"))


def _baseline(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, classes, seed: int) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import KFold
    from sklearn.preprocessing import StandardScaler

    from headstart.objectives import MultiLabel, Thresholds, best_thresholds

    start = time.perf_counter()
    scaler = StandardScaler().fit(x_train)
    z, zt = scaler.transform(x_train), scaler.transform(x_test)
    folds = list(KFold(5, shuffle=True, random_state=seed).split(z))
    k = y_train.shape[1]
    chosen, oof = [], np.zeros(y_train.shape)
    for j in range(k):  # C per label by out-of-fold log-loss
        best = None
        for C in (0.001, 0.01, 0.1, 1.0):
            p = np.zeros(len(z))
            for tr, va in folds:
                p[va] = LogisticRegression(C=C, max_iter=2000).fit(z[tr], y_train[tr, j]).predict_proba(z[va])[:, 1]
            q = np.clip(p, 1e-12, 1 - 1e-12)
            loss = -np.mean(y_train[:, j] * np.log(q) + (1 - y_train[:, j]) * np.log(1 - q))
            if best is None or loss < best[0]:
                best = (loss, C, p)
        chosen.append(best[1])
        oof[:, j] = best[2]
    thresholds = best_thresholds(oof, y_train)
    probs = np.column_stack([LogisticRegression(C=C, max_iter=2000).fit(z, y_train[:, j]).predict_proba(zt)[:, 1]
                             for j, C in enumerate(chosen)])
    metrics = MultiLabel().metrics(y_test, probs, classes, Thresholds(thresholds))
    return {"metrics": metrics, "seconds": time.perf_counter() - start, "C": chosen}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--time-budget", type=float, help="headstart's --time-budget [its default: 600 s on a CPU]")
    parser.add_argument("--train-rows", type=int, help="train on this many random rows of train.csv")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if not DATA.exists():
        sys.exit(f"{DATA} is missing")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)

    from head_vs_logreg import _features

    from headstart import TextClassifier
    from headstart.data.textdata import read_table

    train = read_table(DATA / "train.csv")
    test = read_table(DATA / "dev.csv", classes=train.classes, multi_label=True)
    if args.train_rows:
        rng = np.random.default_rng(args.seed)
        train = train.subset(np.sort(rng.choice(len(train), args.train_rows, replace=False)))
    start = time.perf_counter()
    kw = {} if args.time_budget is None else {"time_budget": args.time_budget}
    clf = TextClassifier(seed=args.seed, **kw).fit(train)
    seconds = time.perf_counter() - start
    ours = clf.evaluate(test)
    x_train, x_test = _features(clf, train, "text"), _features(clf, test, "text")
    base = _baseline(x_train, train.labels, x_test, test.labels, train.classes, args.seed)
    rows = [("headstart default (" + clf.recipe_ + ")", ours, seconds),
            ("logistic regression, same embeddings", base["metrics"], base["seconds"])]
    print(f"\nGoEmotions (Ekman), {len(train)} training rows -> dev.csv ({len(test)} rows), seed {args.seed}")
    print(f"{'':40s} {'macro-F1':>9s} {'micro-F1':>9s} {'subset acc':>11s} {'mAP':>7s} {'seconds':>8s}")
    for name, m, s in rows:
        print(f"{name:40s} {m['macro_f1']:9.4f} {m['micro_f1']:9.4f} {m['accuracy']:11.4f} "
              f"{m['mean_average_precision']:7.4f} {s:8.0f}")
    print(f"headstart tried: {[{k: t.get(k) for k in ('recipe', 'accuracy', 'trained_rows', 'kept', 'skipped') if k in t} for t in clf.tried_]}")
    if args.json:
        args.json.write_text(json.dumps({"headstart": {"metrics": ours, "seconds": seconds, "tried": clf.tried_},
                                         "logreg": base}, indent=2, default=float))


if __name__ == "__main__":
    main()
