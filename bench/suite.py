"""The performance suite: every target, each row's two sides measured in the same run, one table.

    python bench/suite.py            # the full suite (about 30 min on 2 cores)
    python bench/suite.py --quick    # smaller samples and fewer repeats (about 8 min)
    python bench/suite.py --rows 2,3 --explore   # some rows, plus the extraction variants tried

Rows:
  1. frozen-backbone training on flowers5 (80/20, seed 0): the classic Keras recipe (10 epochs
     recomputing the frozen features) vs headstart's linear probe, cold feature cache (the
     features are computed in the timed run); wall time and both accuracies.
  2. feature extraction (img/s): headstart (JPEG decoding and resizing included) vs a bare
     loop calling the same timm model on pre-decoded tensors, same batch and threads: the limit.
     2b. draft JPEG decoding on photos larger than the model input (flowers5 upscaled 3x):
     throughput against a full decode, and how close the features and a probe's accuracy stay.
  3. bf16 vs fp32 fine-tune training: throughput over a fixed number of steps (pre-decoded
     batches, the recipe's frozen BatchNorm), and the fine-tune recipe's accuracy in each.
  4. text, one SST-2 training epoch: every text padded to 512 tokens (time per step measured,
     projected to an epoch) vs headstart's default recipe (dynamic padding, length-grouped
     batches) run for one epoch.
  5. peak resident memory of `headstart train` on generated data, each size in its own
     process: a folder of 1,000 vs 10,000 images, a CSV of 10,000 vs 100,000 texts.

Repeated throughput measurements alternate the two sides and report medians. Progress goes
to stderr; the table (Markdown) to stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from headstart import ImageClassifier, TextClassifier  # noqa: E402
from headstart.backbones.image import create_backbone, resolve_spec  # noqa: E402
from headstart.data.imagesets import ImageDataset, default_num_workers, load_image, make_loader, scan_folder, stratified_split  # noqa: E402
from headstart.models.networks import freeze_batchnorm, set_trainable  # noqa: E402
from headstart.data.textdata import read_table  # noqa: E402
from headstart.training.image_recipe import extract_features  # noqa: E402
from headstart.training.loop import autocast, resolve_precision  # noqa: E402
from headstart.backbones.transforms import eval_resize, eval_transform, train_transform  # noqa: E402

SHARED = HERE.parent.parent / "shared" / "datasets"
CPU = torch.device("cpu")
BACKBONE = "efficientnet_lite0"


def say(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def alternate(fns: dict, reps: int) -> dict[str, list[float]]:
    """Seconds of each fn over ``reps`` rounds, the fns alternating within a round, so load
    from elsewhere on the machine hits every side alike."""
    out = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            out[k].append(time.perf_counter() - t)
    return out


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def row(name, baseline, ours, ratio, target, met) -> dict:
    return {"row": name, "baseline": baseline, "headstart": ours, "ratio": ratio, "target": target, "met": met}


# --------------------------------------------------------------------------- row 1


def row1(train, val, precision: str, epochs: int) -> dict:
    from image_recipes import classic_recipe

    say(f"[1] classic recipe, {epochs} epochs")
    t = time.perf_counter()
    classic = classic_recipe(train, val, BACKBONE, epochs, 0, precision)
    classic_s = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as cache:
        say("[1] headstart linear probe, cold cache")
        t = time.perf_counter()
        probe = ImageClassifier(BACKBONE, recipe="linear-probe", seed=0, cache_dir=cache).fit(train, val).val_metrics_
        probe_s = time.perf_counter() - t
        t = time.perf_counter()
        ImageClassifier(BACKBONE, recipe="linear-probe", seed=0, cache_dir=cache).fit(train, val)
        warm_s = time.perf_counter() - t
    a, b = 100 * classic["accuracy"], 100 * probe["accuracy"]
    ratio = classic_s / probe_s
    return row(
        f"1. frozen-backbone training, flowers5 ({len(train)}/{len(val)}), seed 0",
        f"classic, {epochs} epochs recomputing features: {a:.2f}% in {classic_s:.0f} s",
        f"linear probe, features computed once: {b:.2f}% in {probe_s:.0f} s (second run, disk cache: {warm_s:.0f} s)",
        f"{ratio:.1f}x faster, {b - a:+.2f} points", ">= 10x, accuracy >= classic", ratio >= 10 and b >= a,
    )


# --------------------------------------------------------------------------- row 2


def row2(paths, precision: str, reps: int, batch: int = 32, explore: bool = False) -> list[dict]:
    spec = resolve_spec(BACKBONE)
    model = create_backbone(spec).eval().to(memory_format=torch.channels_last)
    tf = eval_transform(spec.preprocessing)
    n = len(paths)
    pre = torch.stack([tf(load_image(p)) for p in paths])

    @torch.inference_mode()
    def bare():
        for i in range(0, n, batch):
            with autocast(CPU, precision):
                model(pre[i : i + batch].contiguous(memory_format=torch.channels_last))

    def ours(workers=None, draft=eval_resize(spec.preprocessing), files=paths):
        return extract_features(model, ImageDataset(files, None, tf, draft=draft), batch_size=batch, device=CPU,
                                precision=precision, num_workers=workers, seed=0)

    fns = {"bare": bare, "headstart": ours}
    if explore:
        fns.update({"workers=0": lambda: ours(0), "workers=1": lambda: ours(1), "workers=2": lambda: ours(2),
                    "workers=1, uint8 batches": lambda: _uint8_loop(model, paths, spec.preprocessing, precision, batch, 1)})
    bare()  # warm-up: first-call allocations and kernel selection
    say(f"[2] extraction, {n} images, {reps} rounds: {', '.join(fns)}")
    secs = alternate(fns, reps)
    rate = {k: n / med(v) for k, v in secs.items()}
    out = [row(
        f"2. feature extraction, {n} flowers5 JPEGs, batch {batch}, {precision}, {torch.get_num_threads()} threads, "
        f"{default_num_workers()} decode workers (median of {reps})",
        f"bare model on pre-decoded tensors: {rate['bare']:.0f} img/s",
        f"decoding and resizing included: {rate['headstart']:.0f} img/s",
        f"{rate['headstart'] / rate['bare']:.2f} of the limit", ">= 0.8", rate["headstart"] / rate["bare"] >= 0.8,
    )]
    for k in fns:
        if k not in ("bare", "headstart"):
            out.append(row(f"2x. variant: {k}", "", f"{rate[k]:.0f} img/s", f"{rate[k] / rate['bare']:.2f} of the limit", "", None))
    return out


@torch.inference_mode()
def _uint8_loop(model, paths, pre, precision, batch, workers):
    """Workers send uint8 pixels (a quarter of the bytes) and the main process normalises."""
    from torchvision import transforms as T

    tf = T.Compose([T.Resize(eval_resize(pre), interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(pre.input_size), T.PILToTensor()])
    mean = torch.tensor(pre.mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(pre.std).view(1, 3, 1, 1) * 255
    for x, _, _, _ in make_loader(ImageDataset(paths, None, tf), batch, num_workers=workers):
        x = ((x.float() - mean) / std).contiguous(memory_format=torch.channels_last)
        with autocast(CPU, precision):
            model(x)


def row2b(full, precision: str, n: int, reps: int, accuracy: bool) -> dict:
    """Photos larger than the input: flowers5 upscaled 3x (681 px, JPEG quality 90)."""
    from PIL import Image

    spec = resolve_spec(BACKBONE)
    model = create_backbone(spec).eval().to(memory_format=torch.channels_last)
    tf = eval_transform(spec.preprocessing)
    draft = eval_resize(spec.preprocessing)
    index = np.arange(len(full)) if accuracy else np.linspace(0, len(full) - 1, n).astype(int)
    with tempfile.TemporaryDirectory() as tmp:
        say(f"[2b] writing {len(index)} upscaled JPEGs")
        big = []
        for i in index:
            p = Path(tmp) / f"{i:05d}.jpg"
            im = load_image(full.paths[i])
            im.resize((im.width * 3, im.height * 3), Image.BICUBIC).save(p, quality=90)
            big.append(p)
        sample = big[:: max(1, len(big) // n)][:n]

        def run(d, files=sample):
            return extract_features(model, ImageDataset(files, None, tf, draft=d), batch_size=32, device=CPU,
                                    precision=precision, num_workers=None, seed=0)

        say(f"[2b] extraction of {len(sample)} upscaled images, full decode vs draft, {reps} rounds")
        secs = alternate({"full": lambda: run(None), "draft": lambda: run(draft)}, reps)
        a, b = run(None)[0], run(draft)[0]
        cos = torch.nn.functional.cosine_similarity(a, b, dim=1)
        cell = f"feature cosine similarity to the full decode: mean {cos.mean():.4f}, min {cos.min():.4f}"
        if accuracy:
            say("[2b] linear probes on all upscaled images, full decode vs draft")
            tr, va = stratified_split(full.labels, 0.2, 0, full.classes)
            accs = {}
            for name, d in (("full", None), ("draft", draft)):
                feats = run(d, big)[0].numpy()
                accs[name] = 100 * _probe_accuracy(feats[tr], full.labels[tr], feats[va], full.labels[va])
            cell += f"; logistic-regression probe {accs['full']:.2f}% (full) vs {accs['draft']:.2f}% (draft)"
    rf, rd = len(sample) / med(secs["full"]), len(sample) / med(secs["draft"])
    return row(
        f"2b. draft JPEG decoding, {len(sample)} flowers5 images upscaled 3x to 681 px (median of {reps})",
        f"full decode: {rf:.0f} img/s", f"draft decode: {rd:.0f} img/s; {cell}", f"{rd / rf:.2f}x", "", None,
    )


def _probe_accuracy(x_tr, y_tr, x_va, y_va) -> float:
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=2000, C=1.0).fit(x_tr, y_tr)
    return float((clf.predict(x_va) == y_va).mean())


# --------------------------------------------------------------------------- row 3


def row3(train, val, steps: int, reps: int, accuracy_epochs: int, explore: bool, batch: int = 32) -> list[dict]:
    spec = resolve_spec(BACKBONE)
    tf = train_transform(spec.preprocessing, "light")
    torch.manual_seed(0)
    xs = [torch.stack([tf(load_image(p)) for p in train.paths[j : j + batch]]) for j in range(0, steps * batch, batch)]
    ys = [torch.as_tensor(train.labels[j : j + batch]) for j in range(0, steps * batch, batch)]

    def trainer(precision: str, compiled: bool = False):
        model = ImageClassifier(BACKBONE)._build(spec, len(train.classes), pretrained=True).to(memory_format=torch.channels_last)
        set_trainable(model, 2)
        model.train()
        freeze_batchnorm(model.backbone, all_bn=True)  # as the fine-tune recipe trains
        if compiled:
            model.compile()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

        def run():
            for x, y in zip(xs, ys):
                with autocast(CPU, precision):
                    loss = torch.nn.functional.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)).float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

        return run

    fns = {"fp32": trainer("fp32"), "bf16": trainer("bf16")}
    compile_s = {}
    if explore:
        for p in ("fp32", "bf16"):
            run = trainer(p, compiled=True)
            t = time.perf_counter()
            run()  # compiles forward and backward
            compile_s[p] = time.perf_counter() - t
            fns[f"{p} compiled"] = run
    fns["fp32"]()
    fns["bf16"]()  # warm-up (the compiled ones ran once, compiling)
    say(f"[3] fine-tune training, {steps} steps of {batch}, {reps} rounds: {', '.join(fns)}")
    secs = alternate(fns, reps)
    rate = {k: steps * batch / med(v) for k, v in secs.items()}
    speed = rate["bf16"] / rate["fp32"]
    accs, wall = {}, {}
    for p in ("fp32", "bf16"):
        say(f"[3] fine-tune recipe, {accuracy_epochs} epoch(s) of phase 2, {p}")
        t = time.perf_counter()
        accs[p] = 100 * ImageClassifier(BACKBONE, recipe="fine-tune", epochs=accuracy_epochs, precision=p, seed=0,
                                        cache=False).fit(train, val).val_metrics_["accuracy"]
        wall[p] = time.perf_counter() - t
    diff = accs["bf16"] - accs["fp32"]
    out = [row(
        f"3. fine-tune training (top 2 blocks), {steps} steps of {batch} (median of {reps}); fine-tune recipe "
        f"({accuracy_epochs} epoch of phase 2) on flowers5 80/20",
        f"fp32: {rate['fp32']:.1f} img/s; {accs['fp32']:.2f}% in {wall['fp32']:.0f} s",
        f"bf16: {rate['bf16']:.1f} img/s; {accs['bf16']:.2f}% in {wall['bf16']:.0f} s",
        f"{speed:.2f}x faster, {diff:+.2f} points", ">= 1.5x, within 0.5 points", speed >= 1.5 and abs(diff) <= 0.5,
    )]
    for p, s in compile_s.items():
        k = f"{p} compiled"
        out.append(row(f"3x. variant: torch.compile, {p}", f"{rate[p]:.1f} img/s eager", f"{rate[k]:.1f} img/s after {s:.0f} s "
                       "of compilation", f"{rate[k] / rate[p]:.2f}x", "", None))
    return out


# --------------------------------------------------------------------------- row 4


def row4(data: Path, classic_steps: int, limit: int | None) -> dict:
    from text_recipes import MeanPoolClassifier
    from headstart.backbones.encoders import load_encoder, resolve_encoder

    train = read_table(data / "train.tsv")
    dev = read_table(data / "dev.tsv", classes=train.classes)
    if limit:
        train = type(train)(train.texts[:limit], train.labels[:limit], train.classes)
    precision = resolve_precision("auto", CPU)
    batch = 16
    steps_per_epoch = math.ceil(len(train.texts) / batch)
    say(f"[4] classic: {classic_steps} steps of {batch} texts padded to 512")
    _, path = resolve_encoder("minilm-l6")
    torch.manual_seed(0)
    encoder, tok = load_encoder(path, "minilm-l6")
    model = MeanPoolClassifier(encoder, len(train.classes)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.01)
    enc = tok(train.texts[: classic_steps * batch], padding="max_length", truncation=True, max_length=512, return_tensors="pt")
    y = torch.as_tensor(train.labels[: classic_steps * batch])
    per_step = []
    for i in range(classic_steps):
        s = slice(i * batch, (i + 1) * batch)
        t = time.perf_counter()
        with autocast(CPU, precision):
            logits = model(enc["input_ids"][s], enc["attention_mask"][s])
        loss = torch.nn.functional.cross_entropy(logits.float(), y[s])
        opt.zero_grad()
        loss.backward()
        opt.step()
        per_step.append(time.perf_counter() - t)
    classic_epoch = med(per_step) * steps_per_epoch
    del model, opt, enc
    say(f"[4] headstart default recipe, one epoch on {len(train.texts)} texts")
    t = time.perf_counter()
    clf = TextClassifier(epochs=1, seed=0).fit(train, val=dev)
    ours = time.perf_counter() - t
    ratio = classic_epoch / ours
    return row(
        f"4. text, one SST-2 training epoch ({len(train.texts)} texts), minilm-l6, {precision}",
        f"padded to 512: {med(per_step):.1f} s per step of {batch} (median of {classic_steps}) x {steps_per_epoch} steps "
        f"= {classic_epoch / 60:.0f} min",
        f"dynamic padding, length-grouped batches: {ours:.0f} s (incl. tokenising and evaluation; "
        f"dev {100 * clf.val_metrics_['accuracy']:.2f}%)",
        f"{ratio:.0f}x faster", ">= 3x", ratio >= 3,
    )


# --------------------------------------------------------------------------- row 5

# Reports the process's own peak RSS at exit. VmHWM belongs to the address space exec made;
# getrusage's ru_maxrss would carry over the (large) peak of this bench process, which a
# child inherits through fork and exec.
_MEASURED = """
import atexit, re, sys
from headstart.cli import main
def peak():
    status = open("/proc/self/status").read()
    sys.stderr.write("PEAK_KB %s\\n" % re.search(r"VmHWM:\\s+(\\d+)", status).group(1))
atexit.register(peak)
main(sys.argv[1:])
"""


def _peak_rss(args: list[str], workdir: Path) -> tuple[float, float]:
    """(peak RSS in MB, seconds) of `headstart ARGS` in a fresh process."""
    out = tempfile.mkdtemp(dir=workdir)
    cmd = [sys.executable, "-c", _MEASURED, *args, "--out", str(Path(out) / "run"), "--quiet", "--no-cache"]
    t = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stderr[-2000:]}")
    kb = int(done.stderr.strip().splitlines()[-1].split()[1])
    return kb / 1024, time.perf_counter() - t


def _image_folder(root: Path, n: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    base = [np.clip(rng.normal(c, 40, (300, 400, 3)), 0, 255).astype(np.uint8) for c in (60, 120, 180, 220)]
    for i in range(n):
        d = root / f"class{i % 4}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.roll(base[i % 4], i, axis=1)).save(d / f"{i:05d}.jpg", quality=85)


def _text_csv(path: Path, n: int, data: Path) -> None:
    """``n`` rows sampled (with replacement) from SST-2's training sentences and labels."""
    import csv

    train = read_table(data / "train.tsv")
    rng = np.random.default_rng(0)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in rng.integers(0, len(train.texts), n):
            w.writerow([train.texts[i], train.classes[train.labels[i]]])


def row5(image_counts: list[int], text_counts: list[int], sst2: Path) -> list[dict]:
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        peaks = []
        for n in image_counts:
            root = tmp / f"images{n}"
            say(f"[5] writing {n} JPEGs (400x300), then a linear probe on them")
            _image_folder(root, n)
            peaks.append(_peak_rss(["train", str(root), "--recipe", "linear-probe", "--epochs", "3"], tmp))
        (a, sa), (b, sb) = peaks
        out.append(row(
            "5a. peak RSS, linear probe on generated 400x300 JPEGs, batch 32",
            f"{image_counts[0]:,} images: {a:,.0f} MB ({sa:.0f} s)", f"{image_counts[1]:,} images: {b:,.0f} MB ({sb:.0f} s)",
            f"{b / a:.2f}x the memory for {image_counts[1] // image_counts[0]}x the images",
            "grows with the batch, not the data", b / a < 1.5,
        ))
        peaks = []
        for n in text_counts:
            csv_path = tmp / f"texts{n}.csv"
            say(f"[5] writing {n} texts, then a GloVe-50d model, 1 epoch")
            _text_csv(csv_path, n, sst2)
            peaks.append(_peak_rss(["train", str(csv_path), "--backbone", "glove-6b-50d", "--epochs", "1"], tmp))
        (a, sa), (b, sb) = peaks
        out.append(row(
            "5b. peak RSS, word-vector model (glove-6b-50d, 1 epoch) on a CSV of SST-2 sentences, batch 32",
            f"{text_counts[0]:,} rows: {a:,.0f} MB ({sa:.0f} s)", f"{text_counts[1]:,} rows: {b:,.0f} MB ({sb:.0f} s)",
            f"{b / a:.2f}x the memory for {text_counts[1] // text_counts[0]}x the rows",
            "grows with the batch, not the data", b / a < 1.5,
        ))
    return out


# --------------------------------------------------------------------------- main


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{model}, {cpus} cores, torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"bf16 autocast: {resolve_precision('auto', CPU)}, load average at the end {load:.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="Smaller samples and fewer repeats: a check, not the numbers to quote.")
    ap.add_argument("--rows", default="1,2,3,4,5", help="Which rows (2b runs with 2).")
    ap.add_argument("--explore", action="store_true", help="Also measure the variants tried (decode workers, uint8 batches, torch.compile).")
    ap.add_argument("--flowers", type=Path, default=SHARED / "flowers5")
    ap.add_argument("--sst2", type=Path, default=SHARED / "sst2")
    ap.add_argument("--json", type=Path, help="Also write the rows here.")
    args = ap.parse_args()
    for needed in (args.flowers, args.sst2 / "train.tsv"):
        if not needed.exists():
            sys.exit(f"error: {needed} not found; pass --flowers DIR and --sst2 DIR")
    logging.basicConfig(level=logging.WARNING)
    wanted = set(args.rows.split(","))
    q = args.quick
    precision = resolve_precision("auto", CPU)
    full = scan_folder(args.flowers)
    if q:  # every 8th image: the same classes, an eighth of the work
        full = full.subset(np.arange(0, len(full), 8))
    tr, va = stratified_split(full.labels, 0.2, 0, full.classes)
    train, val = full.subset(tr), full.subset(va)
    start = time.perf_counter()
    rows: list[dict] = []
    q2 = 256 if q else 1024
    todo = {  # the long row 1 last, so the others are in even if it is interrupted
        "2": lambda: row2(full.paths[:: max(1, len(full) // q2)][:q2], precision, 3 if q else 5, explore=args.explore)
        + [row2b(full, precision, 128 if q else 512, 3 if q else 5, accuracy=not q)],
        "3": lambda: row3(train, val, 6 if q else 12, 3 if q else 5, 1, args.explore),
        "4": lambda: [row4(args.sst2, 3 if q else 10, 1600 if q else None)],
        "5": lambda: row5([300, 3000] if q else [1000, 10000], [5000, 50000] if q else [10000, 100000], args.sst2),
        "1": lambda: [row1(train, val, precision, 10)],
    }
    for key, measure in todo.items():
        if key not in wanted:
            continue
        try:
            new = measure()
        except Exception as exc:  # noqa: BLE001 - one failing row must not lose the others
            new = [row(f"{key}. failed", f"{type(exc).__name__}: {exc}", "", "", "", False)]
        rows.extend(new)
        for r in new:
            say("  -> " + " | ".join(str(v) for v in r.values()))
        if args.json:
            args.json.write_text(json.dumps(sorted(rows, key=lambda r: r["row"]), indent=2))
    rows.sort(key=lambda r: r["row"])
    print(f"{'quick run (not the numbers to quote)' if q else 'full run'}: {machine()}; "
          f"{(time.perf_counter() - start) / 60:.0f} min, every row's sides measured in this one process")
    print()
    print("| row | baseline | headstart | ratio | target | met? |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        met = "" if r["met"] is None else ("yes" if r["met"] else "no")
        print(f"| {r['row']} | {r['baseline']} | {r['headstart']} | {r['ratio']} | {r['target']} | {met} |")


if __name__ == "__main__":
    main()
