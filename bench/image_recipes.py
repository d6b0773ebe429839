"""Image recipes side by side on flowers5: the classic Keras recipe, a linear probe, and
headstart's default, on the same stratified 80/20 split (seed 0) and the same backbone.

    python bench/image_recipes.py [--data ../shared/datasets/flowers5] [--backbone efficientnet_lite0]

(a) classic: frozen base recomputed every batch, flatten, dense 256 ReLU, dropout 0.5,
    dense N softmax, Adam 1e-3, Keras augmentation (rotation 40, shifts 0.2, shear 0.2,
    zoom 0.2, horizontal flip, nearest fill), 10 epochs, last-epoch model (Keras' default).
(b) headstart linear probe: frozen features computed once, linear head.
(c) headstart default: fine-tune (head on cached features, then the top 2 blocks).

(b) and (c) keep the weights of their best validation epoch (early stopping), so their
numbers are selected on the same split they are reported on; for a like-for-like view the
table also gives the classic recipe's best epoch.

Every arm runs with the same autocast precision (bf16 on CPUs with AVX-512 BF16/AMX).
Prints a Markdown table: validation accuracy, macro F1 and wall time of each.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch
from torch import nn

from headstart import ImageClassifier
from headstart.backbones.image import create_backbone, resolve_spec
from headstart.data.imagesets import ImageDataset, make_loader, scan_folder, stratified_split
from headstart.evaluation.metrics import classification_metrics
from headstart.training.loop import autocast, resolve_device, resolve_precision, seed_everything
from headstart.backbones.transforms import train_transform

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "datasets" / "flowers5"


def classic_recipe(train, val, backbone_name: str, epochs: int, seed: int, precision: str) -> dict:
    seed_everything(seed)
    device = resolve_device("auto")
    spec = resolve_spec(backbone_name)
    pre = spec.preprocessing
    base = create_backbone(spec, pooling="flatten").to(device).eval()
    for p in base.parameters():
        p.requires_grad_(False)
    with torch.inference_mode():
        dim = base(torch.zeros(1, 3, pre.input_size, pre.input_size, device=device)).flatten(1).shape[1]
    k = len(train.classes)
    head = nn.Sequential(nn.Flatten(), nn.Linear(dim, 256), nn.ReLU(), nn.Dropout(0.5), nn.Linear(256, k)).to(device)
    opt = torch.optim.Adam(head.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    # Keras' flow_from_directory resizes to the target size for validation too (no crop).
    tr = ImageDataset(train.paths, train.labels, train_transform(pre, "classic"))
    va = ImageDataset(val.paths, val.labels, _keras_eval(pre))
    per_epoch = []
    for epoch in range(epochs):
        head.train()
        for x, y, _, _ in make_loader(tr, 32, shuffle=True, seed=seed + epoch):
            x = x.to(device).contiguous(memory_format=torch.channels_last)
            with torch.no_grad(), autocast(device, precision):
                f = base(x)
            loss = loss_fn(head(f.float()), y.to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
        probs, labels = _predict(base, head, va, device, precision)
        per_epoch.append(float((probs.argmax(1) == labels).mean()))
        print(f"  classic epoch {epoch + 1}/{epochs}: val acc {per_epoch[-1]:.4f}", file=sys.stderr)
    metrics = classification_metrics(labels, probs, train.classes)
    metrics["best_epoch_accuracy"] = max(per_epoch)
    return metrics


def _keras_eval(pre):
    from torchvision import transforms as T

    return T.Compose([
        T.Resize((pre.input_size, pre.input_size), interpolation=T.InterpolationMode.BICUBIC),
        T.PILToTensor(), T.ConvertImageDtype(torch.float32), T.Normalize(pre.mean, pre.std),
    ])


@torch.inference_mode()
def _predict(base, head, dataset, device, precision):
    head.eval()
    out, labels = [], []
    for x, y, _, _ in make_loader(dataset, 64):
        with autocast(device, precision):
            f = base(x.to(device).contiguous(memory_format=torch.channels_last))
        out.append(torch.softmax(head(f.float()), 1).cpu())
        labels.append(y)
    return torch.cat(out).numpy(), torch.cat(labels).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--classic-epochs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", choices=["classic", "probe", "default"], action="append")
    ap.add_argument("--json", type=Path, help="Also write the results here.")
    args = ap.parse_args()
    if not args.data.is_dir():
        sys.exit(f"error: {args.data} not found; pass --data DIR (a class folder)")
    logging.basicConfig(level=logging.INFO, format="  %(message)s", stream=sys.stderr)
    full = scan_folder(args.data)
    tr, va = stratified_split(full.labels, 0.2, args.seed, full.classes)
    train, val = full.subset(tr), full.subset(va)
    precision = resolve_precision("auto", resolve_device("auto"))
    print(f"{args.data}: {len(train)} train / {len(val)} val images, {len(full.classes)} classes, "
          f"{len(full.skipped)} skipped; backbone {args.backbone}; precision {precision}; "
          f"torch threads {torch.get_num_threads()}", file=sys.stderr)
    arms = args.only or ["classic", "probe", "default"]
    rows = []
    for arm in arms:
        print(f"[{arm}]", file=sys.stderr)
        start = time.perf_counter()
        if arm == "classic":
            m = classic_recipe(train, val, args.backbone, args.classic_epochs, args.seed, precision)
            name = (f"(a) classic Keras recipe, {args.classic_epochs} epochs, last epoch "
                    f"(its best epoch: {m['best_epoch_accuracy']:.4f})")
        else:
            recipe = "linear-probe" if arm == "probe" else "fine-tune"
            clf = ImageClassifier(args.backbone, recipe=recipe, seed=args.seed).fit(train, val)
            m = clf.val_metrics_
            name = "(b) headstart linear-probe" if arm == "probe" else "(c) headstart default (fine-tune)"
        seconds = time.perf_counter() - start
        rows.append({"arm": name, "accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "seconds": seconds})
        print(f"  -> accuracy {m['accuracy']:.4f}, {seconds:.0f}s", file=sys.stderr)
    print("| recipe | val accuracy | macro F1 | wall time |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['arm']} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} | {r['seconds']:.0f} s |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
