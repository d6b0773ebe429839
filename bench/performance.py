"""CPU performance of the image pipeline, each row side by side in one run.

    python bench/performance.py [--data ../shared/datasets/flowers5] [--rows 2,3,5]

Rows (numbers as in the project's performance targets):
  2. feature-extraction throughput of headstart (JPEG decoding and resizing in DataLoader
     workers included) vs a bare loop calling the same timm model on pre-decoded tensors with
     the same batch size and threads: the limit.
  3. bf16 vs fp32: fine-tune training throughput over a fixed number of steps, and the
     linear-probe accuracy of each on the 80/20 split (seed 0).
  5. peak resident memory of `headstart train --recipe linear-probe` on generated folders of
     1,000 and 10,000 images (each in its own process): memory grows with the batch and the
     feature matrix, not with the pixels of the data set.
Row 1 (classic vs cached linear probe) is bench/image_recipes.py; row 4 (text padding) is
bench/text_recipes.py.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from headstart import ImageClassifier
from headstart.backbones.image import create_backbone, resolve_spec
from headstart.data.imagesets import ImageDataset, load_image, scan_folder, stratified_split
from headstart.models.networks import set_trainable
from headstart.training.image_recipe import extract_features
from headstart.training.loop import autocast, resolve_precision
from headstart.backbones.transforms import eval_transform, train_transform

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "datasets" / "flowers5"


def row2(data, n: int, batch: int, precision: str) -> str:
    spec = resolve_spec("efficientnet_lite0")
    model = create_backbone(spec).eval().to(memory_format=torch.channels_last)
    tf = eval_transform(spec.preprocessing)
    paths = data.paths[:n]
    device = torch.device("cpu")
    pre = torch.stack([tf(load_image(p)) for p in paths])
    bare = []
    with torch.inference_mode():
        for _ in range(3):
            t = time.perf_counter()
            for i in range(0, n, batch):
                with autocast(device, precision):
                    model(pre[i : i + batch].contiguous(memory_format=torch.channels_last))
            bare.append(n / (time.perf_counter() - t))
    ours = []
    for _ in range(3):
        t = time.perf_counter()
        extract_features(model, ImageDataset(paths, None, tf), batch_size=batch, device=device, precision=precision,
                         num_workers=None, seed=0)
        ours.append(n / (time.perf_counter() - t))
    b, o = statistics.median(bare), statistics.median(ours)
    return (f"| 2. feature extraction, {n} flowers5 JPEGs, batch {batch}, {precision} | bare loop on decoded tensors "
            f"{b:.0f} img/s | headstart incl. decoding {o:.0f} img/s | {o / b:.2f} of the limit |")


def row3(train, val, steps: int, batch: int) -> list[str]:
    spec = resolve_spec("efficientnet_lite0")
    out = []
    rates = {}
    for precision in ("fp32", "bf16"):
        clf = ImageClassifier(precision=precision)
        model = clf._build(spec, len(train.classes), pretrained=True).to(memory_format=torch.channels_last)
        set_trainable(model, 2)
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        ds = ImageDataset(train.paths[: steps * batch], train.labels[: steps * batch], train_transform(spec.preprocessing, "light"))
        xs = [torch.stack([ds[i][0] for i in range(j, j + batch)]) for j in range(0, steps * batch, batch)]
        ys = [torch.as_tensor(train.labels[j : j + batch]) for j in range(0, steps * batch, batch)]
        t = time.perf_counter()
        for x, y in zip(xs, ys):
            with autocast(torch.device("cpu"), precision):
                loss = torch.nn.functional.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)).float(), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        rates[precision] = steps * batch / (time.perf_counter() - t)
    out.append(f"| 3a. fine-tune training (top 2 blocks), {steps} steps of {batch} | fp32 {rates['fp32']:.1f} img/s | "
               f"bf16 {rates['bf16']:.1f} img/s | bf16 {rates['bf16'] / rates['fp32']:.2f}x |")
    acc, secs = {}, {}
    for precision in ("fp32", "bf16"):
        t = time.perf_counter()
        acc[precision] = ImageClassifier(recipe="linear-probe", precision=precision, cache=False).fit(train, val).val_metrics_["accuracy"]
        secs[precision] = time.perf_counter() - t
    out.append(f"| 3b. linear probe, flowers5 80/20 seed 0 | fp32 {100 * acc['fp32']:.2f}% in {secs['fp32']:.0f} s | "
               f"bf16 {100 * acc['bf16']:.2f}% in {secs['bf16']:.0f} s | {100 * (acc['bf16'] - acc['fp32']):+.2f} points, "
               f"{secs['fp32'] / secs['bf16']:.2f}x |")
    return out


# Runs the CLI and reports its own peak RSS and its largest child's (the decoding workers).
_MEASURED = """
import atexit, resource, sys
from headstart.cli import main
atexit.register(lambda: sys.stderr.write("MAXRSS %d %d\\n" % (
    resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)))
main(sys.argv[1:])
"""


def row5(counts: list[int]) -> list[str]:
    from PIL import Image

    rows = []
    rng = np.random.default_rng(0)
    for n in counts:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "data"
            base = [np.clip(rng.normal(c, 40, (300, 400, 3)), 0, 255).astype(np.uint8) for c in (60, 120, 180, 220)]
            for i in range(n):
                d = root / f"class{i % 4}"
                d.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.roll(base[i % 4], i, axis=1)).save(d / f"{i:05d}.jpg", quality=85)
            cmd = [sys.executable, "-c", _MEASURED, "train", str(root), "--recipe", "linear-probe", "--epochs", "3",
                   "--out", str(Path(tmp) / "run"), "--quiet", "--no-cache"]
            t = time.perf_counter()
            done = subprocess.run(cmd, check=True, capture_output=True, text=True)
            seconds = time.perf_counter() - t
            main_kb, worker_kb = map(int, done.stderr.strip().splitlines()[-1].split()[1:])
            rows.append(f"| 5. peak RSS, linear probe on {n:,} generated 400x300 JPEGs | main process {main_kb / 1024:.0f} MB, "
                        f"largest DataLoader worker {worker_kb / 1024:.0f} MB | {seconds:.0f} s | |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--rows", default="2,3,5")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    full = scan_folder(args.data)
    tr, va = stratified_split(full.labels, 0.2, 0, full.classes)
    train, val = full.subset(tr), full.subset(va)
    precision = resolve_precision("auto", torch.device("cpu"))
    rows = ["| row | baseline | headstart / other | ratio |", "|---|---|---|---|"]
    wanted = set(args.rows.split(","))
    if "2" in wanted:
        rows.append(row2(full, 512, 32, precision))
        print(rows[-1], file=sys.stderr)
    if "3" in wanted:
        rows += row3(train, val, 12, 32)
        print("\n".join(rows[-2:]), file=sys.stderr)
    if "5" in wanted:
        rows += row5([1000, 10000])
    print(f"torch threads {torch.get_num_threads()}, precision auto = {precision}")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
