"""Few labels: headstart's default against SetFit and a plain logistic regression, side by
side in one run, on the same rows and the same embedded MiniLM encoder.

Rows: NAME-K draws K training rows per class with each seed and scores on fixed test rows.

- ``sst2-K``: SST-2 sentiment (2 classes), scored on test.tsv (1,821 rows);
- ``emotions-K``: GoEmotions rows that carry a single label (7 emotions, Ekman grouping),
  scored on 1,200 single-label rows of dev.csv;
- ``clothing-K``: clothing-small photos (10 classes), scored on test/ (372); SetFit has no
  image recipe, so the row compares headstart with the logistic regression only.

For each row and seed: headstart's default (``TextClassifier()`` / ``ImageClassifier()``,
no validation set: cross-validation, refit on every row), scikit-learn's
``LogisticRegressionCV`` on the frozen encoder's embeddings of the same rows, and SetFit 1.x
with its defaults (batch 16, 1 epoch of pairs, logistic-regression head) from the same
encoder directory. A SetFit run whose projected time (its pair count x the seconds per
step measured on 10 steps) is over ``--setfit-cap`` seconds is reported as projected, not
run. Prints medians over seeds; ``--json`` writes every run.

    pip install -e '.[bench]'      # setfit
    python bench/fewshot.py                               # every row, seeds 0 1 2
    python bench/fewshot.py --rows sst2-8 emotions-8 --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
sys.path.insert(0, str(ROOT / "src"))

ROWS = [f"{name}-{k}" for name in ("sst2", "emotions", "clothing") for k in (8, 16, 64)]
EXTRA = [f"{name}-{k}" for name in ("sst2", "emotions", "clothing") for k in (5, 10, 32)]


def _sst2():
    def read(path):
        rows = list(csv.reader(open(path, encoding="utf-8"), delimiter="\t"))[1:]
        return [r[1] for r in rows], [r[0] for r in rows]

    return read(SHARED / "sst2" / "train.tsv"), read(SHARED / "sst2" / "test.tsv")


def _emotions():
    def read(path):
        texts, labels = [], []
        for row in csv.DictReader(open(path, encoding="utf-8")):
            if ";" not in row["labels"]:
                texts.append(row["text"])
                labels.append(row["labels"])
        return texts, labels

    train, dev = read(SHARED / "goemotions" / "train.csv"), read(SHARED / "goemotions" / "dev.csv")
    pick = np.random.default_rng(123).choice(len(dev[0]), 1200, replace=False)
    return train, ([dev[0][i] for i in pick], [dev[1][i] for i in pick])


def _per_class(labels: list, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    return np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == c), k, replace=False) for c in sorted(set(labels))]))


def _logreg(x_train, y_train, x_test, y_test) -> float:
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = max(2, min(5, int(np.bincount(np.unique(y_train, return_inverse=True)[1]).min())))
    model = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=10, cv=folds, max_iter=2000))
    model.fit(x_train, y_train)
    return float((model.predict(x_test) == np.asarray(y_test)).mean())


def _embeddings(texts: list[str]) -> np.ndarray:
    """The frozen embedded encoder's mean-pooled embeddings, as headstart computes them."""
    import torch

    from headstart.encoders import load_encoder, resolve_encoder
    from headstart.text import TextModel
    from headstart.config import HeadConfig
    from headstart.tokens import run_batches, tokenize

    spec, source = resolve_encoder("minilm-l6")
    encoder, tokenizer = load_encoder(source, spec.name)
    model = TextModel(encoder, 2, HeadConfig(pooling="mean")).eval()
    ids, _ = tokenize(tokenizer, texts, spec.max_length)
    return run_batches(lambda b: model.embed(b["input_ids"], b["attention_mask"]), ids, tokenizer.pad_token_id or 0,
                       64, torch.device("cpu"), "bf16").numpy()


def _setfit(train_texts, train_labels, test_texts, test_labels, seed: int, cap: float) -> dict:
    try:
        from datasets import Dataset
        from setfit import SetFitModel, Trainer, TrainingArguments
        from setfit.sampler import ContrastiveDataset
    except ImportError:
        return {"skipped": "setfit is not installed (pip install -e '.[bench]')"}
    from headstart.encoders import _minilm_path

    import tempfile

    out = tempfile.mkdtemp(prefix="setfit-")  # SetFit's Trainer writes checkpoints; never into the working tree
    pairs = len(ContrastiveDataset(train_texts, train_labels, multilabel=False))
    steps = math.ceil(pairs / 16)
    start = time.perf_counter()
    model = SetFitModel.from_pretrained(_minilm_path())
    probe_args = TrainingArguments(output_dir=out, batch_size=16, num_epochs=1, max_steps=10, seed=seed, report_to="none",
                                   save_strategy="no")
    probe_trainer = Trainer(model=model, args=probe_args,
                            train_dataset=Dataset.from_dict({"text": train_texts, "label": train_labels}))
    t0 = time.perf_counter()
    probe_trainer.train()
    per_step = (time.perf_counter() - t0) / 10
    projected = steps * per_step
    if projected > cap:
        import shutil

        shutil.rmtree(out, ignore_errors=True)
        return {"projected_seconds": round(projected, 0), "steps": steps}
    model = SetFitModel.from_pretrained(_minilm_path())
    args = TrainingArguments(output_dir=out, batch_size=16, num_epochs=1, seed=seed, report_to="none", save_strategy="no")
    start = time.perf_counter()
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_dict({"text": train_texts, "label": train_labels}))
    trainer.train()
    seconds = time.perf_counter() - start
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    pred = model.predict(test_texts)
    pred = [str(p) for p in (pred.tolist() if hasattr(pred, "tolist") else pred)]
    return {"accuracy": float(np.mean([p == t for p, t in zip(pred, test_labels)])), "seconds": round(seconds, 1),
            "steps": steps}


def run_text(row: str, seed: int, cap: float, setfit: bool, recipe: str | None = None) -> dict:
    from headstart import TextClassifier

    name, k = row.rsplit("-", 1)
    (train_t, train_l), (test_t, test_l) = _sst2() if name == "sst2" else _emotions()
    pick = _per_class(train_l, int(k), seed)
    texts, labels = [train_t[i] for i in pick], [train_l[i] for i in pick]
    start = time.perf_counter()
    clf = TextClassifier(seed=seed, **({"recipe": recipe} if recipe else {})).fit(texts, labels)
    seconds = time.perf_counter() - start
    hs = float(np.mean(np.asarray(clf.predict(test_t)) == np.asarray(test_l)))
    x = _embeddings(texts + test_t)
    lr = _logreg(x[: len(texts)], labels, x[len(texts):], test_l)
    out = {"row": row, "seed": seed, "n_train": len(texts), "n_test": len(test_t), "headstart": hs,
           "headstart_seconds": round(seconds, 1), "recipe": clf.recipe_, "tried": clf.tried_,
           "protocol": clf.protocol_.get("description"), "logreg": lr}
    if setfit:
        out["setfit"] = _setfit(texts, labels, test_t, test_l, seed, cap)
    return out


def run_images(row: str, seed: int, recipe: str | None = None) -> dict:
    """The same rows as bench/head_vs_logreg.py's clothing-small-K (headstart and the
    logistic regression on its cached features)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from head_vs_logreg import run_row

    return {**run_row(f"clothing-small-{row.rsplit('-', 1)[1]}", seed, recipe), "row": row}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", default=ROWS, choices=ROWS + EXTRA)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--setfit-cap", type=float, default=900.0, help="seconds; longer SetFit runs are projected [900]")
    parser.add_argument("--no-setfit", action="store_true")
    parser.add_argument("--recipe", help="headstart's recipe [its default, auto]")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"no data sets at {SHARED}")
    logging.basicConfig(level=logging.WARNING)
    results = []
    for row in args.rows:
        for seed in args.seeds:
            r = (run_images(row, seed, args.recipe) if row.startswith("clothing")
                 else run_text(row, seed, args.setfit_cap, not args.no_setfit, args.recipe))
            results.append(r)
            print(json.dumps(r), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print("\n| row | headstart (median) | time | logistic regression | SetFit | SetFit time | recipes kept |")
    print("|---|---|---|---|---|---|---|")
    for row in args.rows:
        rs = [r for r in results if r["row"] == row]
        med = lambda key: statistics.median(r[key] for r in rs if r.get(key) is not None)  # noqa: E731
        sf = [r["setfit"] for r in rs if isinstance(r.get("setfit"), dict)]
        sf_acc = [s["accuracy"] for s in sf if "accuracy" in s]
        sf_text = (f"{100 * statistics.median(sf_acc):.1f}%" if sf_acc else
                   f"projected {statistics.median(s['projected_seconds'] for s in sf):.0f} s" if sf and "projected_seconds" in sf[0] else "-")
        sf_time = f"{statistics.median(s['seconds'] for s in sf if 'seconds' in s):.0f} s" if sf_acc else "-"
        lr = f"{100 * med('logreg'):.1f}%" if any("logreg" in r for r in rs) else "-"
        kept = ", ".join(sorted({r["recipe"] for r in rs}))
        print(f"| {row} | {100 * med('headstart'):.1f}% | {med('headstart_seconds'):.0f} s | {lr} | {sf_text} | {sf_time} | {kept} |")


if __name__ == "__main__":
    main()
