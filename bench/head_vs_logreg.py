"""headstart's defaults against a plain scikit-learn logistic regression on the same cached
features, side by side in one run.

For each data set (and few-shot subsamples of it) the script trains headstart's default
recipe on the training rows (no validation set given: cross-validation and a refit on every
row), then fits ``sklearn.linear_model.LogisticRegressionCV`` (C chosen by 5-fold CV, all
training rows, standardised features) on the frozen backbone's features of the very same
rows, which headstart computed and cached, and scores both on the same test rows.

    python bench/head_vs_logreg.py                       # every row (about an hour on 2 cores)
    python bench/head_vs_logreg.py --rows flowers5 sst2-8 --seeds 0 1 2
    python bench/head_vs_logreg.py --recipe linear-probe # the probe alone against the baseline

Rows: flowers5 (stratified 80/20 split, seed 0, the 20% as test), clothing-small (train ->
test), sst2 (train -> test), and NAME-8 / NAME-32: 8 or 32 training rows per class drawn with
each seed from the same training rows. Prints a table of medians over seeds, and writes JSON
with --json.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
sys.path.insert(0, str(ROOT / "src"))

from headstart.data.imagesets import ImageSet, scan_folder  # noqa: E402
from headstart.data.splits import stratified_split  # noqa: E402
from headstart.data.textdata import TextSet, read_table  # noqa: E402


def _images(name: str):
    if name == "flowers5":
        full = scan_folder(SHARED / "flowers5")
        tr, te = stratified_split(full.labels, 0.2, 0, full.classes)
        return full.subset(tr), full.subset(te)
    root = SHARED / "clothing-small"
    train = scan_folder(root / "train")
    return train, scan_folder(root / "test", classes=train.classes)


def _texts(name: str):
    root = SHARED / "sst2"
    train = read_table(root / "train.tsv")
    return train, read_table(root / "test.tsv", classes=train.classes)


def _subsample(data, per_class: int, seed: int):
    rng = np.random.default_rng(seed)
    index = np.sort(np.concatenate([rng.choice(np.flatnonzero(data.labels == c), per_class, replace=False)
                                    for c in range(len(data.classes))]))
    return data.subset(index)


def _features(clf, data, kind: str) -> np.ndarray:
    """The frozen backbone's features of ``data`` exactly as headstart's probe saw them
    (loaded from its feature cache when present)."""
    import torch

    from headstart.config import TrainConfig
    from headstart.training.loop import recipe_setup

    cfg = TrainConfig(task="image" if kind == "image" else "text", head=clf.head_config, seed=0).resolved()
    if kind == "image":
        from headstart.training.image_recipe import ImageBackend

        model = clf._build(clf.spec_, len(clf.classes_), pretrained=True)
        device, precision, loss_fn = recipe_setup(model, data.labels, len(data.classes), cfg)
        backend = ImageBackend(list(data.paths), data.labels, cfg, clf.preprocessing_, device=device, precision=precision,
                               loss_fn=loss_fn, progress=False, cache_parts=clf._cache_parts(clf.spec_))
        feats, rows = backend.features(model)
    else:
        from headstart.backbones.encoders import load_encoder
        from headstart.classifiers.text import TextModel
        from headstart.training.tokens import TokenBackend, token_items

        encoder, tokenizer = load_encoder(clf._source, clf.backbone)
        model = TextModel(encoder, len(clf.classes_), clf.head_config)
        device, precision, loss_fn = recipe_setup(model, data.labels, len(data.classes), cfg)
        ids, texts, labels, _ = token_items(tokenizer, data, None, clf.max_length_)
        backend = TokenBackend(model, ids, texts, labels, cfg, pad_id=tokenizer.pad_token_id or 0, device=device,
                               precision=precision, loss_fn=loss_fn, progress=False, cache_parts=clf._cache_parts(),
                               max_length=clf.max_length_, eval_batch=64, phase2_recipe="full")
        feats, rows = backend.features(model)
    assert len(rows) == len(data), "every item must decode for a like-for-like comparison"
    del torch
    return feats.numpy()


def _baseline(x_train, y_train, x_test, y_test) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    start = time.perf_counter()
    folds = int(max(2, min(5, np.bincount(y_train).min())))
    model = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=10, cv=folds, max_iter=2000, n_jobs=1))
    model.fit(x_train, y_train)
    return float((model.predict(x_test) == y_test).mean()), time.perf_counter() - start


def run_row(row: str, seed: int, recipe: str | None, budget: float | None = None) -> dict:
    from headstart import ImageClassifier, TextClassifier

    name, _, shots = row.rpartition("-") if row[-1].isdigit() else (row, "", "")
    kind = "text" if name == "sst2" else "image"
    train, test = (_texts if kind == "text" else _images)(name)
    if shots:
        train = _subsample(train, int(shots), seed)
    kw = {"seed": seed} | ({"recipe": recipe} if recipe else {}) | ({"time_budget": budget} if budget is not None else {})
    clf = ImageClassifier(**kw) if kind == "image" else TextClassifier(**kw)
    start = time.perf_counter()
    clf.fit(train)
    seconds = time.perf_counter() - start
    ours = clf.evaluate(test)["accuracy"]
    x_train, x_test = _features(clf, train, kind), _features(clf, test, kind)
    base, base_seconds = _baseline(x_train, train.labels, x_test, test.labels)
    return {"row": row, "seed": seed, "n_train": len(train), "n_test": len(test), "recipe": clf.recipe_, "tried": clf.tried_,
            "headstart": ours, "headstart_seconds": round(seconds, 1), "logreg": base,
            "logreg_seconds": round(base_seconds, 1), "protocol": clf.protocol_["description"],
            "val_accuracy": clf.val_metrics_["accuracy"]}


ROWS = ["flowers5", "flowers5-8", "flowers5-32", "clothing-small", "clothing-small-8", "clothing-small-32",
        "sst2", "sst2-8", "sst2-32"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", default=ROWS, choices=ROWS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--recipe", help="headstart's recipe [its default, auto]")
    parser.add_argument("--time-budget", type=float, help="headstart's --time-budget [its default]; 0 = no limit "
                        "(a loaded machine runs slower than the budget assumes)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if not SHARED.exists():
        sys.exit(f"{SHARED} is missing: the benchmark reads the shared data sets")
    logging.basicConfig(level=logging.WARNING)
    results = []
    for row in args.rows:
        for seed in (args.seeds if "-" in row else args.seeds[:1]):
            r = run_row(row, seed, args.recipe, args.time_budget)
            results.append(r)
            print(json.dumps(r), flush=True)
            if args.json:
                args.json.write_text(json.dumps(results, indent=2))
    print(f"\n{'row':<20} {'seeds':>5} {'train':>6} {'test':>5} {'headstart':>9} {'logreg':>7} {'diff':>7} "
          f"{'hs s':>6} {'lr s':>5}  recipe kept")
    for row in args.rows:
        rs = [r for r in results if r["row"] == row]
        hs, lr = statistics.median(r["headstart"] for r in rs), statistics.median(r["logreg"] for r in rs)
        print(f"{row:<20} {len(rs):>5} {rs[0]['n_train']:>6} {rs[0]['n_test']:>5} {hs:>9.4f} {lr:>7.4f} {hs - lr:>+7.4f} "
              f"{statistics.median(r['headstart_seconds'] for r in rs):>6.0f} {statistics.median(r['logreg_seconds'] for r in rs):>5.0f}"
              f"  {', '.join(sorted({r['recipe'] for r in rs}))}")


if __name__ == "__main__":
    main()
