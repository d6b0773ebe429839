"""Few labels: headstart's default against SetFit and a plain logistic regression, side by
side in one run, on the same rows and the same embedded MiniLM encoder.

Rows: NAME-K draws K training rows per class with each seed and scores on fixed test rows.

- ``sst2-K``: SST-2 sentiment (2 classes), scored on test.tsv (1,821 rows);
- ``emotions-K``: GoEmotions rows that carry a single label (7 emotions, Ekman grouping),
  scored on 1,200 single-label rows of dev.csv;
- ``clothing-K``: clothing-small photos (10 classes), scored on test/ (372); SetFit has no
  image recipe, so the row compares headstart with the logistic regression only;
- ``own-K``: a labelled text set of your own, ``--train`` and ``--test`` (any table
  ``headstart train`` reads: text and label columns), e.g. an intent set with many classes;
  K rows per class drawn from ``--train``, scored on every row of ``--test``.

For each row and seed: headstart's default (``TextClassifier()`` / ``ImageClassifier()``,
no validation set: cross-validation, refit on every row), scikit-learn's
``LogisticRegressionCV`` on the frozen encoder's embeddings of the same rows, and SetFit 1.x
with its defaults (batch 16, 1 epoch of pairs, logistic-regression head) from the same
encoder directory. A SetFit run whose projected time (its pair count x the seconds per
step measured on 10 steps) is over ``--setfit-cap`` seconds is reported as projected, not
run. Both tools' times leave out Python's first imports of the libraries (the benchmark
loads the encoder once before timing anything). Prints medians over seeds; ``--json`` writes
every run.

    pip install -e '.[bench]'      # setfit
    python bench/fewshot.py                               # every row, seeds 0 1 2
    python bench/fewshot.py --rows sst2-8 emotions-8 --seeds 0 1 2 3 4
    python bench/fewshot.py --rows sst2-8 --backbone mpnet-base   # SetFit's usual encoder size
    python bench/fewshot.py --rows own-8 --train intents-train.csv --test intents-test.csv
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import logging
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

# the same sampling, frozen features (from headstart's cache) and baseline as head_vs_logreg
from head_vs_logreg import SHARED, _baseline, _features, _subsample, _texts, run_row  # noqa: E402

ROWS = [f"{name}-{k}" for name in ("sst2", "emotions", "clothing") for k in (8, 16, 64)]
EXTRA = [f"{name}-{k}" for name in ("sst2", "emotions", "clothing", "own") for k in (5, 10, 32, 128, 256, 512)]
EXTRA += [f"own-{k}" for k in (8, 16, 64)]
OWN: dict[str, Path] = {}  # --train and --test, for the own-K rows


def _emotions():
    """GoEmotions' single-label rows: the training rows, and 1,200 dev rows as the test set."""
    from headstart.data.textdata import TextSet

    def read(path):
        texts, labels = [], []
        for row in csv.DictReader(open(path, encoding="utf-8")):
            if ";" not in row["labels"]:
                texts.append(row["text"])
                labels.append(row["labels"])
        return texts, labels

    (train_t, train_l), (dev_t, dev_l) = read(SHARED / "goemotions" / "train.csv"), read(SHARED / "goemotions" / "dev.csv")
    classes = sorted(set(train_l))
    index = {c: i for i, c in enumerate(classes)}
    pick = np.random.default_rng(123).choice(len(dev_t), 1200, replace=False)
    return (TextSet(train_t, np.asarray([index[l] for l in train_l]), classes),
            TextSet([dev_t[i] for i in pick], np.asarray([index[dev_l[i]] for i in pick]), classes))


@functools.cache
def _own():
    """``--train`` and ``--test``, read as ``headstart train`` reads a table (once: every seed draws from them)."""
    from headstart.data.textdata import read_table

    train = read_table(OWN["train"], multi_label=False)
    return train, read_table(OWN["test"], classes=train.classes, multi_label=False)


def _check_own(rows: list[str]) -> str | None:
    """Why the own-K rows cannot be drawn from ``--train`` (None: they can), said before any run."""
    train = _own()[0]
    fewest = int(np.bincount(train.labels, minlength=len(train.classes)).min())
    too_many = [row for row in rows if row.startswith("own-") and int(row.rsplit("-", 1)[1]) > fewest]
    if too_many:
        return f"{', '.join(too_many)}: a class of --train has only {fewest} rows; draw at most {fewest} per class"
    return None


def _encoder_dir(backbone: str) -> str:
    """The directory both headstart and SetFit load the text encoder from."""
    from headstart.backbones.encoders import resolve_encoder

    return resolve_encoder(backbone)[1]


def _warm_up(backbone: str, setfit: bool) -> None:
    """Import the libraries and load the encoder once, untimed, so that the first timed run of
    either tool does not pay Python's imports (about 5 s for transformers' model classes on 2
    cores) that every later run in the process skips."""
    from headstart.backbones.encoders import load_encoder

    load_encoder(_encoder_dir(backbone), backbone)
    if setfit:
        try:
            import setfit  # noqa: F401
            from sentence_transformers import SentenceTransformer

            SentenceTransformer(_encoder_dir(backbone), device="cpu")
        except ImportError:
            pass


def _setfit(train_texts, train_labels, test_texts, test_labels, seed: int, cap: float, backbone: str = "minilm-l6") -> dict:
    try:
        from datasets import Dataset
        from setfit import SetFitModel, Trainer, TrainingArguments
        from setfit.sampler import ContrastiveDataset
    except ImportError:
        return {"skipped": "setfit is not installed (pip install -e '.[bench]')"}
    import tempfile

    out = tempfile.mkdtemp(prefix="setfit-")  # SetFit's Trainer writes checkpoints; never into the working tree
    pairs = len(ContrastiveDataset(train_texts, train_labels, multilabel=False))
    steps = math.ceil(pairs / 16)
    start = time.perf_counter()
    model = SetFitModel.from_pretrained(_encoder_dir(backbone))
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
    model = SetFitModel.from_pretrained(_encoder_dir(backbone))
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


def run_text(row: str, seed: int, cap: float, setfit: bool, recipe: str | None = None, backbone: str = "minilm-l6") -> dict:
    from headstart import TextClassifier

    name, k = row.rsplit("-", 1)
    train, test = _texts(name) if name == "sst2" else _own() if name == "own" else _emotions()
    train = _subsample(train, int(k), seed)
    start = time.perf_counter()
    clf = TextClassifier(backbone, seed=seed, **({"recipe": recipe} if recipe else {})).fit(train)
    seconds = time.perf_counter() - start
    hs = clf.evaluate(test)["accuracy"]
    lr, _ = _baseline(_features(clf, train, "text"), train.labels, _features(clf, test, "text"), test.labels)
    out = {"row": row, "seed": seed, "backbone": backbone, "n_train": len(train), "n_test": len(test), "headstart": hs,
           "headstart_seconds": round(seconds, 1), "recipe": clf.recipe_, "tried": clf.tried_,
           "protocol": clf.protocol_.get("description"), "logreg": lr}
    if setfit:
        names = lambda data: [data.classes[i] for i in data.labels]  # noqa: E731
        out["setfit"] = _setfit(list(train.texts), names(train), list(test.texts), names(test), seed, cap, backbone)
    return out


def run_images(row: str, seed: int, recipe: str | None = None) -> dict:
    """The same rows as bench/head_vs_logreg.py's clothing-small-K (headstart and the
    logistic regression on its cached features)."""
    return {**run_row(f"clothing-small-{row.rsplit('-', 1)[1]}", seed, recipe), "row": row}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", default=ROWS, choices=ROWS + EXTRA)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--setfit-cap", type=float, default=900.0, help="seconds; longer SetFit runs are projected [900]")
    parser.add_argument("--no-setfit", action="store_true")
    parser.add_argument("--recipe", help="headstart's recipe [its default, auto]")
    parser.add_argument("--backbone", default="minilm-l6",
                        help="text rows: the encoder of headstart, SetFit and the baseline alike (e.g. mpnet-base, once fetched) [minilm-l6]")
    parser.add_argument("--train", type=Path, help="own-K rows: your labelled texts to draw K per class from")
    parser.add_argument("--test", type=Path, help="own-K rows: your labelled texts to score on")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    own = any(row.startswith("own-") for row in args.rows)
    if own != bool(args.train or args.test) or (own and not (args.train and args.test)):
        parser.error("own-K rows need --train and --test (tables with text and label columns), and only they take them")
    OWN.update(train=args.train, test=args.test)
    if own and (problem := _check_own(args.rows)):
        parser.error(problem)
    if not all(row.startswith("own-") for row in args.rows) and not SHARED.is_dir():
        sys.exit(f"no data sets at {SHARED}")
    logging.basicConfig(level=logging.WARNING)
    if any(not row.startswith("clothing") for row in args.rows):
        _warm_up(args.backbone, not args.no_setfit)
    results = []
    for row in args.rows:
        for seed in args.seeds:
            r = (run_images(row, seed, args.recipe) if row.startswith("clothing")
                 else run_text(row, seed, args.setfit_cap, not args.no_setfit, args.recipe, args.backbone))
            results.append(r)
            print(json.dumps(r), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print(f"\ntext encoder: {args.backbone}")
    print("| row | headstart (median) | time | logistic regression | SetFit | SetFit time | recipes kept |")
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
