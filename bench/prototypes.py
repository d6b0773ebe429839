"""Few photos per class: nearest class mean (prototypes) against the solved logistic-regression
head, on the same frozen features, side by side in one run.

For flowers5 (stratified 80/20 split, seed 0) and clothing-small (train -> test), the
embedded default backbone's features of every photo are computed once (headstart's feature
cache), then for K = 1, 5, 10 photos per class and 5 draws each: the prototype head
(headstart.training.transfer.prototype_head), the solved head (C chosen by cross-validation; with one
photo per class there is nothing to cross-validate, so C = 0.01, 0.1 and 1 are shown
instead), scored on the test photos. Prints medians over the draws.

    python bench/prototypes.py
    python bench/prototypes.py --data flowers5 --per-class 1 5 10 20 --draws 10
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from head_vs_logreg import SHARED, _features, _images, _subsample  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+", default=["flowers5", "clothing-small"], choices=["flowers5", "clothing-small"])
    parser.add_argument("--per-class", nargs="+", type=int, default=[1, 5, 10])
    parser.add_argument("--draws", type=int, default=5)
    args = parser.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"no data sets at {SHARED}")
    logging.basicConfig(level=logging.WARNING)
    import torch

    from headstart import ImageClassifier
    from headstart.training.solver import fit_logistic, select_and_fit
    from headstart.data.splits import fold_count
    from headstart.training.transfer import prototype_head

    results = defaultdict(list)
    for name in args.data:
        train, test = _images(name)
        clf = ImageClassifier(recipe="linear-probe").fit(_subsample(train, 2, 0))  # builds the backbone
        x_train, x_test = _features(clf, train, "image"), _features(clf, test, "image")
        y_train, y_test = np.asarray(train.labels), np.asarray(test.labels)
        k = len(train.classes)
        for per in args.per_class:
            for draw in range(args.draws):
                rng = np.random.default_rng(draw)
                pick = np.concatenate([rng.choice(np.flatnonzero(y_train == c), per, replace=False) for c in range(k)])
                x, y = x_train[pick], y_train[pick]
                row = {}
                w, b = prototype_head(torch.as_tensor(x), y, k)
                row["prototype"] = float(((x_test @ w.T + b).argmax(1) == y_test).mean())
                if per >= 2:
                    s = select_and_fit(x, y, k, n_folds=fold_count(y, 5), seed=0).solution
                    row["solved head"] = float(((x_test @ s.weight.T + s.bias).argmax(1) == y_test).mean())
                else:
                    for C in (0.01, 0.1, 1.0):
                        s = fit_logistic(x, y, k, C=C)
                        row[f"C={C}"] = float(((x_test @ s.weight.T + s.bias).argmax(1) == y_test).mean())
                print(json.dumps({"data": name, "per_class": per, "draw": draw, **row}), flush=True)
                for key, value in row.items():
                    results[(name, per, key)].append(value)
    print("\n| data | photos per class | head | median test accuracy | draws |\n|---|---:|---|---:|---:|")
    for (name, per, key), values in results.items():
        print(f"| {name} | {per} | {key} | {100 * statistics.median(values):.1f}% | {len(values)} |")


if __name__ == "__main__":
    main()
