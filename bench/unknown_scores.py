"""Which unknown score: msp, energy, knn and the standardised sums energy+knn and msp+knn on
the frozen backbone's features, over many draws of held-out classes, side by side in one run.

Each draw holds some classes out of training entirely; a head is solved on the other
classes' training rows (C by 5-fold cross-validation, as headstart's probe does), and each
score's AUROC at telling the held-out classes' test rows from the kept classes' test rows is
measured. The sums are standardised on the training side as headstart does it (out-of-fold
logits, knn of each row against the others). Also, at a threshold 5% of those training-side
scores exceed: the share of held-out-class rows over it (recall) and of in-scope test rows.

Data (``../shared/datasets``): flowers5 (a seeded 30% test split; each class held out in
turn), clothing-small (train -> test; pairs of classes held out) and GoEmotions rows with one
Ekman label (12,000 training rows drawn at random, dev.csv as test; pairs held out). The
frozen features come from headstart's default backbones and feature cache.

    python bench/unknown_scores.py                         # 5 + 12 + 12 draws
    python bench/unknown_scores.py --only flowers --draws 3
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets"
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

SCORES = ["msp", "energy", "knn", "energy+knn", "msp+knn"]


def _image_clf(classes):
    from headstart import ImageClassifier
    from headstart.backbones.image import resolve_spec

    clf = ImageClassifier()
    spec = resolve_spec(clf.backbone)
    clf.spec_, clf.preprocessing_, clf.classes_ = spec, spec.preprocessing, list(classes)
    return clf


def features(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str], int]:
    """Frozen features and labels of the training and test rows, the class names and how
    many classes a draw holds out."""
    from head_vs_logreg import _features

    from headstart.data.imagesets import scan_folder

    if name == "flowers":
        full = scan_folder(DATA / "flowers5")
        x = _features(_image_clf(full.classes), full, "image")
        rng = np.random.default_rng(0)
        test = np.zeros(len(full.labels), dtype=bool)
        for c in range(len(full.classes)):
            rows = np.flatnonzero(full.labels == c)
            test[rng.choice(rows, int(round(0.3 * len(rows))), replace=False)] = True
        return x[~test], full.labels[~test], x[test], full.labels[test], list(full.classes), 1
    if name == "clothing":
        train = scan_folder(DATA / "clothing-small" / "train")
        test = scan_folder(DATA / "clothing-small" / "test", classes=train.classes)
        clf = _image_clf(train.classes)
        return (_features(clf, train, "image"), train.labels, _features(clf, test, "image"), test.labels,
                list(train.classes), 2)
    from headstart import TextClassifier
    from headstart.backbones.encoders import load_encoder, resolve_encoder
    from headstart.data.textdata import TextSet

    def rows(file):
        with open(DATA / "goemotions" / file, newline="", encoding="utf-8") as fh:
            return [(d["text"], d["labels"]) for d in csv.DictReader(fh) if ";" not in d["labels"]]

    train = rows("train.csv")
    train = [train[i] for i in np.sort(np.random.default_rng(0).choice(len(train), 12000, replace=False))]
    classes = sorted({r[1] for r in train})
    clf = TextClassifier()
    clf._spec, clf._source = resolve_encoder(clf.backbone, None)
    clf.classes_ = classes
    clf.max_length_ = clf._limit(load_encoder(clf._source, clf.backbone)[0])
    sets = [TextSet([r[0] for r in rs], np.array([classes.index(r[1]) for r in rs]), classes) for rs in (train, rows("dev.csv"))]
    return (_features(clf, sets[0], "text"), sets[0].labels, _features(clf, sets[1], "text"), sets[1].labels, classes, 2)


def draw(xtr, ytr, xte, yte, held) -> dict:
    import torch

    from headstart.models import unknown as U
    from headstart.training.solver import select_and_fit
    from headstart.data.splits import fold_count

    k = int(ytr.max()) + 1
    kept = [c for c in range(k) if c not in held]
    remap = {c: i for i, c in enumerate(kept)}
    m = np.isin(ytr, kept)
    x, y = torch.as_tensor(xtr[m]), np.array([remap[c] for c in ytr[m]])
    fit = select_and_fit(x, y, len(kept), n_folds=fold_count(y, 5), seed=0)
    kk = U.knn_k(np.bincount(y, minlength=len(kept)))
    bank = torch.nn.functional.normalize(x.float(), dim=1)

    def parts(logits, feats, exclude=None):
        logits = torch.as_tensor(logits)
        return {"msp": U.logit_scores("msp", logits).numpy(), "energy": U.logit_scores("energy", logits).numpy(),
                "knn": U.knn_scores(feats, bank, kk, exclude).numpy()}

    cal = parts(fit.oof_logits, x, np.arange(len(y)))  # held out: out-of-fold logits, each row against the others
    q_in, q_out = torch.as_tensor(xte[np.isin(yte, kept)]), torch.as_tensor(xte[np.isin(yte, held)])
    s_in, s_out = parts(fit.solution.logits(q_in), q_in), parts(fit.solution.logits(q_out), q_out)
    for kind in ("energy+knn", "msp+knn"):
        cal[kind], mix = U.standardise(cal, kind)
        for s in (s_in, s_out):
            s[kind] = sum((s[p] - mix[i, 0]) / mix[i, 1] for i, p in enumerate(U.parts(kind)))
    out = {}
    for s in SCORES:
        t = U.threshold_for(cal[s], 0.05)
        out[s] = {"auroc": U.auroc(s_in[s], s_out[s]), "recall": float((s_out[s] > t).mean()),
                  "in_scope_rejected": float((s_in[s] > t).mean())}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["flowers", "clothing", "goemotions"], action="append")
    parser.add_argument("--draws", type=int, default=12, help="held-out pairs drawn per data set [12; flowers: each class]")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = {}
    for name in args.only or ["flowers", "clothing", "goemotions"]:
        t0 = time.perf_counter()
        xtr, ytr, xte, yte, classes, n_held = features(name)
        combos = list(itertools.combinations(range(len(classes)), n_held))
        if len(combos) > args.draws:
            combos = [combos[i] for i in np.random.default_rng(0).choice(len(combos), args.draws, replace=False)]
        results[name] = []
        for held in combos:
            r = draw(xtr.astype(np.float32), ytr, xte.astype(np.float32), yte, held)
            results[name].append({"held_out": [classes[c] for c in held], **r})
            print(json.dumps({"data": name, **results[name][-1]}), flush=True)
        print(f"{name}: {len(combos)} draws in {time.perf_counter() - t0:.0f} s", flush=True)
    print()
    print(f"{'data':<11} {'draws':>5} " + " ".join(f"{s:>16}" for s in SCORES) + "   (AUROC mean, worst; recall at 5%)")
    for name, rows in results.items():
        cells = [f"{np.mean([r[s]['auroc'] for r in rows]):.3f} {min(r[s]['auroc'] for r in rows):.3f} "
                 f"{np.mean([r[s]['recall'] for r in rows]):.2f}" for s in SCORES]
        print(f"{name:<11} {len(rows):>5} " + " ".join(f"{c:>16}" for c in cells))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
