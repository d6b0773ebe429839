"""Word vectors vs the transformer on SST-2 (train -> dev): accuracy, training wall time,
model size on disk, and prediction throughput, side by side in one run.

    python bench/wordvec.py [--data ../shared/datasets/sst2] [--skip-transformer]

Rows: GloVe-50d frozen with mean pooling + a 256-unit MLP head; GloVe-50d frozen with a
1-layer BiLSTM (128 per direction, mean+max pooling); the embedded transformer default
(minilm-l6, full recipe). Throughput: predict_proba over the 1,821 test sentences, batch as
the library does it, median of 3 runs, after one warm-up.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

from headstart import TextClassifier
from headstart.data.textdata import read_table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from encoders import dir_size, texts_per_second  # noqa: E402 - the same size and throughput measures

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "datasets" / "sst2"

ARMS = {
    "glove-mean-mlp": ("GloVe-50d frozen, mean pooling + MLP 256", dict(backbone="glove-6b-50d", hidden=(256,), dropout=0.3)),
    "glove-bilstm": ("GloVe-50d frozen, BiLSTM 128 + mean+max", dict(backbone="glove-6b-50d", sequence_encoder="bilstm", pooling="mean+max")),
    "transformer": ("minilm-l6 transformer, full fine-tune (default)", dict()),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--only", choices=list(ARMS), action="append")
    ap.add_argument("--skip-transformer", action="store_true")
    args = ap.parse_args()
    if not (args.data / "train.tsv").is_file():
        sys.exit(f"error: {args.data}/train.tsv not found; pass --data DIR")
    logging.basicConfig(level=logging.INFO, format="  %(message)s", stream=sys.stderr)
    train = read_table(args.data / "train.tsv")
    dev = read_table(args.data / "dev.tsv", classes=train.classes)
    test = read_table(args.data / "test.tsv", classes=train.classes)
    arms = args.only or [a for a in ARMS if not (args.skip_transformer and a == "transformer")]
    print(f"SST-2: {len(train)} train / {len(dev)} dev / {len(test)} test sentences; torch threads {torch.get_num_threads()}", file=sys.stderr)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arm in arms:
            name, kwargs = ARMS[arm]
            print(f"[{arm}]", file=sys.stderr)
            start = time.perf_counter()
            clf = TextClassifier(**kwargs).fit(train, val=dev)
            seconds = time.perf_counter() - start
            size = dir_size(clf.save(Path(tmp) / arm))
            rate = texts_per_second(clf, test.texts)
            rows.append({"arm": name, "accuracy": clf.val_metrics_["accuracy"], "seconds": seconds, "mb": size / 1e6, "rate": rate,
                         "oov": (clf.oov_ or {}).get("val", {}).get("rate")})
            print(f"  -> dev {rows[-1]['accuracy']:.4f}, train {seconds:.0f}s, {size / 1e6:.1f} MB, {rate:.0f} texts/s", file=sys.stderr)
    base = next((r["rate"] for r in rows if r["arm"].startswith("minilm")), None)
    print("| model | dev accuracy | training wall time | model on disk | prediction | vs transformer |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        ratio = f"{r['rate'] / base:.0f}x" if base else "-"
        print(f"| {r['arm']} | {r['accuracy']:.4f} | {r['seconds']:.0f} s | {r['mb']:.0f} MB | {r['rate']:,.0f} texts/s | {ratio} |")
    oov = next((r["oov"] for r in rows if r["oov"] is not None), None)
    if oov is not None:
        print(f"\nGloVe out-of-vocabulary rate on dev: {100 * oov:.2f}% of word tokens")


if __name__ == "__main__":
    main()
