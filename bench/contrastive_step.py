"""A contrastive training step on a CPU with its batch embedded whole or in length-sorted
parts, side by side in one run.

The contrastive recipe draws each batch by class, not by length, so one batch padded to its
longest text computes about twice its texts' tokens. headstart embeds it in length-sorted parts
of at least ``headstart.training.tokens.MIN_PART_ROWS`` rows, each padded to its own longest
(``embed_in_parts``): the same embeddings, less padding.

Each arm is its own copy of MiniLM-L6 (token embeddings frozen, no dropout, the training
attention headstart uses on a CPU, fused AdamW, bf16 autocast), stepped on the same random
batches of SST-2 or GoEmotions training texts with the recipe's pair loss, the arms
interleaved step by step so that the machine's load falls on all of them. Prints the median
seconds of a step (forward, backward, optimizer), the tokens computed per batch against the
texts' own, and the speed-up over one padded batch (``--parts 1``; else over the first arm).

    python bench/contrastive_step.py
    python bench/contrastive_step.py --data emotions --batch 32 --parts 1 2 4 --steps 30
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cpu_attention import mean_pooled, training_copy  # noqa: E402
from head_vs_logreg import SHARED, _texts  # noqa: E402


def _corpus(name: str) -> list[str]:
    if name == "sst2":
        return list(_texts("sst2")[0].texts)
    return [row["text"] for row in csv.DictReader(open(SHARED / "goemotions" / "train.csv", encoding="utf-8"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+", choices=["sst2", "emotions"], default=["sst2", "emotions"])
    parser.add_argument("--batch", nargs="+", type=int, default=[16, 32], help="texts per step [16 32]")
    parser.add_argument("--parts", nargs="+", type=int, default=[1, 2, 4],
                        help="length-sorted parts per batch to compare; 1 is one padded batch [1 2 4]")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per arm [20]")
    args = parser.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"no data sets at {SHARED}")
    import torch

    from headstart.backbones.encoders import resolve_encoder
    from headstart.training import tokens
    from headstart.training.contrastive import pair_cosine_loss

    source = resolve_encoder("minilm-l6")[1]
    arms = {}
    for parts in args.parts:
        encoder, optimizer, tokenizer = training_copy(source, tokens.CPU_TRAINING_ATTENTION)
        arms[parts] = (encoder, optimizer)
    pad_id = tokenizer.pad_token_id or 0

    def use_parts(size: int, parts: int) -> int:
        """Set embed_in_parts to cut a batch of ``size`` rows in ``parts``; the parts it will make."""
        tokens.MIN_PART_ROWS = max(1, size // parts)
        return tokens.part_count(size, "cpu")

    def step(parts: int, seqs: list, labels) -> float:
        encoder, optimizer = arms[parts]
        encoder.train()
        use_parts(len(seqs), parts)
        start = time.perf_counter()
        z = tokens.embed_in_parts(lambda ids, mask: mean_pooled(encoder, ids, mask), seqs, pad_id, torch.device("cpu"), "bf16")
        loss = pair_cosine_loss(z, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    rng = np.random.default_rng(0)
    print(f"MiniLM-L6, bf16, {torch.get_num_threads()} threads; median seconds, {args.steps} steps per arm\n")
    print("| data | texts | parts | tokens computed / texts' tokens | step | speed-up |\n|---|---:|---:|---:|---:|---:|")
    names = {"sst2": "SST-2", "emotions": "GoEmotions"}
    for name in args.data:
        texts = _corpus(name)
        ids, _ = tokens.tokenize(tokenizer, [texts[i] for i in rng.choice(len(texts), 4000, replace=False)], 128)
        for size in args.batch:
            batches = [rng.choice(len(ids), size, replace=False) for _ in range(args.steps + 2)]
            labels = torch.as_tensor(rng.integers(0, 4, size))
            times = {parts: [] for parts in arms}
            for i, rows in enumerate(batches):
                for parts in (list(arms) if i % 2 else list(arms)[::-1]):
                    t = step(parts, [ids[r] for r in rows], labels)
                    if i >= 2:  # the first steps warm up the allocator and oneDNN
                        times[parts].append(t)

            def padding(parts: int) -> float:
                computed = real = 0
                for rows in batches:
                    lengths = np.sort([len(ids[r]) for r in rows])
                    for part in np.array_split(lengths, use_parts(size, parts)):
                        computed, real = computed + part.max() * len(part), real + part.sum()
                return computed / real

            # speed-ups against one padded batch (the first arm when 1 is not among --parts)
            base = statistics.median(times[1 if 1 in times else args.parts[0]])
            for parts, t in times.items():
                med = statistics.median(t)
                print(f"| {names[name]} | {size} | {use_parts(size, parts)} | {padding(parts):.2f} | {med:.3f} s | {base / med:.2f}x |",
                      flush=True)


if __name__ == "__main__":
    main()
