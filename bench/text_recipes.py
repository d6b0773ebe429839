"""Text recipes side by side on SST-2 (train -> dev) with the embedded MiniLM encoder.

    python bench/text_recipes.py [--data ../shared/datasets/sst2] [--classic-steps 150]

(a) classic Hugging Face recipe, done faithfully: every text padded to max_length 512,
    batch 16, AdamW 2e-5, linear decay, 3 epochs, [CLS]-free mean pooling as the encoder
    was trained. Three epochs at 512 tokens take hours on a CPU, so it runs the first
    --classic-steps steps, reports the dev accuracy reached there, and projects the wall
    time of the full 3 epochs from the measured time per step.
(b) headstart linear probe: frozen mean-pooled embeddings computed once, linear head.
(c) headstart default: the full recipe (dynamic padding, length-grouped batches).

Every arm runs with the same autocast precision (bf16 on CPUs with AVX-512 BF16/AMX).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from headstart import TextClassifier
from headstart.encoders import load_encoder, resolve_encoder
from headstart.evaluation import classification_metrics
from headstart.textdata import read_table
from headstart.training import autocast, resolve_device, resolve_precision, seed_everything

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "datasets" / "sst2"


class MeanPoolClassifier(torch.nn.Module):
    def __init__(self, encoder, n):
        super().__init__()
        self.encoder = encoder
        self.head = torch.nn.Linear(encoder.config.hidden_size, n)

    def forward(self, input_ids, attention_mask):
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return self.head((h * m).sum(1) / m.sum(1))


def classic(train, dev, steps_cap: int, seed: int, precision: str) -> dict:
    seed_everything(seed)
    device = resolve_device("auto")
    _, path = resolve_encoder("minilm-l6")
    encoder, tok = load_encoder(path, "minilm-l6")
    model = MeanPoolClassifier(encoder, len(train.classes)).to(device)
    enc = tok(train.texts, padding="max_length", truncation=True, max_length=512, return_tensors="pt")
    y = torch.as_tensor(train.labels)
    epochs, batch = 3, 16
    total = epochs * math.ceil(len(y) / batch)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / total))
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    model.train()
    start = time.perf_counter()
    steps = min(steps_cap, total)
    for step in range(steps):
        idx = order[(step * batch) % len(y) :][:batch]
        with autocast(device, precision):
            logits = model(enc["input_ids"][idx].to(device), enc["attention_mask"][idx].to(device))
        loss = torch.nn.functional.cross_entropy(logits.float(), y[idx].to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % 25 == 0:
            print(f"  classic step {step + 1}/{steps}: loss {loss.item():.4f}", file=sys.stderr)
    per_step = (time.perf_counter() - start) / steps
    model.eval()
    denc = tok(dev.texts, padding="max_length", truncation=True, max_length=512, return_tensors="pt")
    probs = []
    with torch.inference_mode():
        for i in range(0, len(dev.texts), 32):
            with autocast(device, precision):
                logits = model(denc["input_ids"][i : i + 32].to(device), denc["attention_mask"][i : i + 32].to(device))
            probs.append(torch.softmax(logits.float(), 1).cpu())
    m = classification_metrics(dev.labels, torch.cat(probs).numpy(), train.classes)
    m.update(steps=steps, total_steps=total, seconds_per_step=per_step, projected_seconds=per_step * total)
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--classic-steps", type=int, default=150, help="Cap on the classic recipe's steps (1,299 for 3 full epochs).")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", choices=["classic", "probe", "default"], action="append")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if not (args.data / "train.tsv").is_file():
        sys.exit(f"error: {args.data}/train.tsv not found; pass --data DIR")
    logging.basicConfig(level=logging.INFO, format="  %(message)s", stream=sys.stderr)
    train = read_table(args.data / "train.tsv")
    dev = read_table(args.data / "dev.tsv", classes=train.classes)
    precision = resolve_precision("auto", resolve_device("auto"))
    print(f"SST-2: {len(train)} train / {len(dev)} dev; precision {precision}; torch threads {torch.get_num_threads()}", file=sys.stderr)
    rows = []
    for arm in args.only or ["classic", "probe", "default"]:
        print(f"[{arm}]", file=sys.stderr)
        start = time.perf_counter()
        if arm == "classic":
            m = classic(train, dev, args.classic_steps, args.seed, precision)
            seconds = time.perf_counter() - start
            name = (f"(a) classic: pad to 512, batch 16, AdamW 2e-5; {m['steps']} of {m['total_steps']} steps "
                    f"(full 3 epochs projected: {m['projected_seconds'] / 3600:.1f} h)")
        else:
            recipe = "linear-probe" if arm == "probe" else None
            m = TextClassifier(recipe=recipe, seed=args.seed).fit(train, val=dev).val_metrics_
            seconds = time.perf_counter() - start
            name = "(b) headstart linear-probe (frozen mean-pooled embeddings)" if arm == "probe" else "(c) headstart default (full, 3 epochs)"
        rows.append({"arm": name, "accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "seconds": seconds})
        print(f"  -> dev accuracy {m['accuracy']:.4f}, {seconds:.0f}s", file=sys.stderr)
    print("| recipe | dev accuracy | macro F1 | wall time |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['arm']} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} | {r['seconds']:.0f} s |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
