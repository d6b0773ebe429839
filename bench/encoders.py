"""One row per text encoder and recipe, on SST-2 (one label) and GoEmotions (several labels):
test accuracy or macro-F1, training wall time, prediction throughput and model size, side
by side in one run.

    python bench/encoders.py                                  # every row below
    python bench/encoders.py --rows minilm-probe glove        # some of them
    python bench/encoders.py --datasets sst2 --rows mpnet-full
    python bench/encoders.py --train-rows 400 --rows glove minilm-probe   # a quick check

Rows: ``glove`` (GloVe-6B-50d, frozen, headstart's word-vector default: a 3/4/5-word CNN),
``minilm-probe`` / ``minilm-full`` (the embedded MiniLM-L6: frozen with the head solved, or
every layer fine-tuned), ``mpnet-probe`` / ``mpnet-full`` (all-mpnet-base-v2, which
``headstart fetch mpnet-base`` puts in the cache; rows that need it are skipped when it is
absent).

Protocol, so that no number is scored on rows that chose anything:
- SST-2: trained on train.tsv, chosen (epoch, head, thresholds) on dev.tsv, scored on
  test.tsv.
- GoEmotions: trained on train.csv less a seeded random 10% that chooses, scored on dev.csv
  (the set ships no test split).

Training time is the whole ``fit`` with the feature cache off (a first run: every text
embedded). Throughput is ``predict_proba`` over the first 512 test texts, median of 3 runs
after a warm-up, in the library's batches. Size is the saved model directory. Each finished
row is appended to ``--json`` at once, so a long run that stops keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from headstart import TextClassifier
from headstart.data.textdata import read_table

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "datasets"

ROWS = {
    "glove": ("glove-6b-50d", "GloVe-6B-50d, frozen, word CNN (default)", dict(backbone="glove-6b-50d")),
    "minilm-probe": ("minilm-l6", "MiniLM-L6, linear-probe", dict(recipe="linear-probe")),
    "minilm-full": ("minilm-l6", "MiniLM-L6, full fine-tune", dict(recipe="full")),
    "mpnet-probe": ("mpnet-base", "mpnet-base, linear-probe", dict(backbone="mpnet-base", recipe="linear-probe")),
    "mpnet-full": ("mpnet-base", "mpnet-base, full fine-tune", dict(backbone="mpnet-base", recipe="full")),
}
THROUGHPUT_TEXTS = 512
VAL_FRACTION = 0.1


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def load(name: str, seed: int):
    """(train, val, test, what the test set is) for a data set."""
    if name == "sst2":
        train = read_table(DATA / "sst2" / "train.tsv")
        return (train, read_table(DATA / "sst2" / "dev.tsv", classes=train.classes),
                read_table(DATA / "sst2" / "test.tsv", classes=train.classes), "test.tsv")
    rows = read_table(DATA / "goemotions" / "train.csv", multi_label=True)
    order = np.random.default_rng(seed).permutation(len(rows))
    cut = int(round(VAL_FRACTION * len(rows)))
    test = read_table(DATA / "goemotions" / "dev.csv", classes=rows.classes, multi_label=True)
    return rows.subset(np.sort(order[cut:])), rows.subset(np.sort(order[:cut])), test, "dev.csv"


def missing(backbone: str) -> str | None:
    """Why a registered text encoder's weights are not on this machine, with the command
    that fixes it; None when they are (or the backbone is not a registered encoder)."""
    from headstart.backbones.encoders import list_encoders

    spec = next((s for s in list_encoders() if s.name == backbone), None)
    return None if spec is None or spec.path() is not None else spec.missing()


def texts_per_second(clf, texts, runs: int = 3) -> float:
    """``predict_proba`` over ``texts`` in the library's batches: median of ``runs`` after a warm-up."""
    clf.predict_proba(texts[:64])
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        clf.predict_proba(texts)
        times.append(time.perf_counter() - t)
    return len(texts) / statistics.median(times)


def measure(key: str, data: str, train, val, test, tmp: Path, seed: int) -> dict:
    backbone, name, kwargs = ROWS[key]
    start = time.perf_counter()
    clf = TextClassifier(**kwargs, cache=False, seed=seed).fit(train, val=val)
    seconds = time.perf_counter() - start
    metrics = clf.evaluate(test)
    size = dir_size(clf.save(tmp / f"{data}-{key}"))
    return {"data": data, "row": key, "name": name, "recipe": clf.recipe_, "train_rows": len(train),
            "val_rows": len(val), "test_rows": len(test), "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
            "micro_f1": metrics.get("micro_f1"), "val": clf.val_metrics_.get("macro_f1" if data == "goemotions" else "accuracy"),
            "seconds": seconds, "mb": size / 1e6,
            "texts_per_s": texts_per_second(clf, test.texts[:THROUGHPUT_TEXTS])}


def table(results: list[dict]) -> str:
    lines = ["| data | encoder, recipe | test accuracy | test macro-F1 | training | prediction | model on disk |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in results:
        acc = f"{r['accuracy']:.4f}" + (" (subset)" if r["data"] == "goemotions" else "")
        lines.append(f"| {r['data']} | {r['name']} | {acc} | {r['macro_f1']:.4f} | {r['seconds']:,.0f} s | "
                     f"{r['texts_per_s']:,.0f} texts/s | {r['mb']:,.0f} MB |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", choices=["sst2", "goemotions"], default=["sst2", "goemotions"])
    ap.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-rows", type=int, help="Train on a seeded random part of the training rows (a quick run).")
    ap.add_argument("--json", type=Path, help="Append each finished row to this JSON Lines file.")
    args = ap.parse_args()
    for data in args.datasets:
        needed = DATA / data / ("train.tsv" if data == "sst2" else "train.csv")
        if not needed.is_file():
            sys.exit(f"error: {needed} not found; this benchmark reads ../shared/datasets")
    logging.basicConfig(level=logging.INFO, format="  %(message)s", stream=sys.stderr)
    print(f"torch threads {torch.get_num_threads()}", file=sys.stderr)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for data in args.datasets:
            train, val, test, what = load(data, args.seed)
            if args.train_rows and args.train_rows < len(train):
                train = train.subset(np.sort(np.random.default_rng(args.seed).choice(len(train), args.train_rows, replace=False)))
            print(f"[{data}] {len(train)} train / {len(val)} choose / {len(test)} scored ({what})", file=sys.stderr)
            for key in args.rows:
                why = missing(ROWS[key][0])
                if why:
                    print(f"[{data} {key}] skipped: {why}", file=sys.stderr)
                    continue
                print(f"[{data} {key}]", file=sys.stderr)
                r = measure(key, data, train, val, test, Path(tmp), args.seed)
                results.append(r)
                print(f"  -> {json.dumps(r)}", file=sys.stderr)
                if args.json:
                    with open(args.json, "a", encoding="utf-8") as f:
                        f.write(json.dumps(r) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
