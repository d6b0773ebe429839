"""Unknown inputs: how well headstart's default model tells inputs of classes it never saw from
inputs of its own classes, against the classic baseline (the same model's top probability),
side by side in one run.

For each data set some classes are held out of training entirely: headstart's default recipe
(``auto``, the default time budget) trains on the other classes' training rows, its unknown
rule calibrated on those alone (``--unknown-rate`` 5%, the score chosen by the library). Then
its test rows of the kept classes (in scope) and of the held-out classes (unknown) are scored:

- AUROC of the model's chosen score, of the top probability (msp, the baseline) and of energy,
  all from the same model;
- at the threshold saved in the model: the share of unknown inputs answered unknown (recall),
  the share of in-scope inputs answered unknown, and in-scope accuracy with an unknown answer
  counted wrong;
- for msp, the recall at the threshold that keeps 95% of the in-scope test rows (an oracle
  threshold, the usual way the baseline is quoted).

Data (``../shared/datasets``): clothing-small (train/test, dress and hat held out), flowers5
(a seeded 30% test split, tulip held out) and GoEmotions rows with one Ekman label (disgust
and fear held out; 8,000 training rows drawn at random, dev.csv as test).

    python bench/unknown.py                    # all three
    python bench/unknown.py --only clothing    # one
    python bench/unknown.py --json out.json
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets"
sys.path.insert(0, str(ROOT / "src"))


def _logit_scores(logits: np.ndarray) -> dict[str, np.ndarray]:
    z = logits - logits.max(1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    return {"msp": 1.0 - p.max(1), "energy": -(np.log(np.exp(z).sum(1)) + logits.max(1))}


def _measure(clf, y_in: np.ndarray, logits_in: np.ndarray, s_in: np.ndarray, logits_out: np.ndarray,
             s_out: np.ndarray, seconds: float) -> dict:
    from headstart.models.unknown import auroc

    rule = clf.unknown_rule_
    base_in, base_out = _logit_scores(logits_in), _logit_scores(logits_out)
    right = logits_in.argmax(1) == y_in
    fired_in, fired_out = s_in > rule.threshold, s_out > rule.threshold
    oracle = np.quantile(base_in["msp"], 0.95)
    return {
        "recipe": clf.recipe_, "score": rule.score, "why": clf.val_metrics_["unknown"]["why"],
        "n_in_scope": int(len(y_in)), "n_unknown": int(len(s_out)),
        "auroc": {"chosen": auroc(s_in, s_out), "msp": auroc(base_in["msp"], base_out["msp"]),
                  "energy": auroc(base_in["energy"], base_out["energy"])},
        "at_saved_threshold": {"recall": float(fired_out.mean()), "in_scope_rejected": float(fired_in.mean()),
                               "in_scope_accuracy": float((right & ~fired_in).mean())},
        "msp_oracle_95": {"recall": float((base_out["msp"] > oracle).mean()),
                          "in_scope_accuracy": float((right & (base_in["msp"] <= oracle)).mean())},
        "in_scope_accuracy_without_rejection": float(right.mean()),
        "train_seconds": round(seconds, 1),
    }


def clothing(budget):
    from headstart import ImageClassifier
    from headstart.data.imagesets import ImageSet, scan_folder

    root = DATA / "clothing-small"
    classes = sorted(os.listdir(root / "train"))
    held = ["dress", "hat"]
    kept = [c for c in classes if c not in held]
    train_all = scan_folder(root / "train", classes=classes)
    keep = np.isin(train_all.labels, [classes.index(c) for c in kept])
    train = ImageSet([p for p, k in zip(train_all.paths, keep) if k],
                     np.array([kept.index(classes[y]) for y in train_all.labels[keep]]), kept)
    test = scan_folder(root / "test", classes=classes)
    t_in = np.isin(test.labels, [classes.index(c) for c in kept])
    test_in = ImageSet([p for p, k in zip(test.paths, t_in) if k],
                       np.array([kept.index(classes[y]) for y in test.labels[t_in]]), kept)
    out_paths = [p for p, k in zip(test.paths, t_in) if not k]
    return ImageClassifier(time_budget=budget), train, test_in, out_paths, held


def flowers(budget):
    from headstart import ImageClassifier
    from headstart.data.imagesets import ImageSet, scan_folder

    full = scan_folder(DATA / "flowers5")
    held = ["tulip"]
    kept = [c for c in full.classes if c not in held]
    rng = np.random.default_rng(0)
    test_rows = np.zeros(len(full.labels), dtype=bool)
    for c in range(len(full.classes)):
        rows = np.flatnonzero(full.labels == c)
        test_rows[rng.choice(rows, int(round(0.3 * len(rows))), replace=False)] = True
    is_kept = np.isin(full.labels, [full.classes.index(c) for c in kept])

    def subset(mask):
        return ImageSet([p for p, m in zip(full.paths, mask) if m],
                        np.array([kept.index(full.classes[y]) for y in full.labels[mask]]), kept)

    out_paths = [p for p, m in zip(full.paths, test_rows & ~is_kept) if m]
    return ImageClassifier(time_budget=budget), subset(~test_rows & is_kept), subset(test_rows & is_kept), out_paths, held


def goemotions(budget):
    from headstart import TextClassifier
    from headstart.data.textdata import TextSet

    root = DATA / "goemotions"
    kept, held = ["anger", "joy", "neutral", "sadness", "surprise"], ["disgust", "fear"]

    def rows(name):
        with open(root / name, newline="", encoding="utf-8") as fh:
            return [(d["text"], d["labels"]) for d in csv.DictReader(fh) if ";" not in d["labels"]]

    train = [r for r in rows("train.csv") if r[1] in kept]
    rng = np.random.default_rng(0)
    train = [train[i] for i in np.sort(rng.choice(len(train), min(8000, len(train)), replace=False))]
    dev = rows("dev.csv")
    to_set = lambda rs: TextSet([r[0] for r in rs], np.array([kept.index(r[1]) for r in rs]), kept)  # noqa: E731
    return (TextClassifier(time_budget=budget), to_set(train), to_set([r for r in dev if r[1] in kept]),
            [r[0] for r in dev if r[1] in held], held)


SETS = {"clothing": clothing, "flowers": flowers, "goemotions": goemotions}


def run(name: str, budget) -> dict:
    clf, train, test_in, out_items, held = SETS[name](budget)
    start = time.perf_counter()
    clf.fit(train)
    seconds = time.perf_counter() - start
    _, y_in, logits_in, s_in, _ = clf.labelled_outputs(test_in, with_unknown=True)
    if clf.task == "image":
        logits_out, s_out, _, _ = clf._logits(out_items, with_unknown=True)
    else:
        logits_out, s_out = clf._logits(out_items, with_unknown=True)
    result = _measure(clf, np.asarray(y_in), np.asarray(logits_in, dtype=np.float64), s_in,
                      np.asarray(logits_out, dtype=np.float64), s_out, seconds)
    result.update(data=name, held_out=held, n_train=len(train.labels))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=sorted(SETS), action="append")
    parser.add_argument("--time-budget", type=float, default=None, help="seconds per fit [the library's default]")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    results = []
    for name in args.only or list(SETS):
        if not (DATA / {"clothing": "clothing-small", "flowers": "flowers5", "goemotions": "goemotions"}[name]).exists():
            print(f"{name}: data not present, skipped")
            continue
        results.append(run(name, args.time_budget))
        r = results[-1]
        print(json.dumps(r), flush=True)
    print()
    print(f"{'data':<11} {'recipe':<12} {'score':<7} {'AUROC':>6} {'msp':>6} {'energy':>6} | saved thr: {'recall':>6} "
          f"{'in rej':>6} {'in acc':>6} | msp@95%: {'recall':>6} {'in acc':>6}")
    for r in results:
        a, s, m = r["auroc"], r["at_saved_threshold"], r["msp_oracle_95"]
        print(f"{r['data']:<11} {r['recipe']:<12} {r['score']:<7} {a['chosen']:>6.3f} {a['msp']:>6.3f} {a['energy']:>6.3f} | "
              f"{'':>10} {s['recall']:>6.3f} {s['in_scope_rejected']:>6.3f} {s['in_scope_accuracy']:>6.3f} | "
              f"{'':>8} {m['recall']:>6.3f} {m['in_scope_accuracy']:>6.3f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
