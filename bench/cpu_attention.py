"""Training steps of the embedded text encoder on a CPU with each attention implementation,
side by side in one run: PyTorch's fused ``scaled_dot_product_attention`` ("sdpa", what the
encoder loads with) and the plain matrix-product attention ("eager", what headstart trains
with on a CPU: ``headstart.training.tokens.CPU_TRAINING_ATTENTION``).

headstart uses "eager" for training batches up to ``CPU_EAGER_MAX_TOKENS`` wide; the
``--widths`` rows show why there.

Each arm is its own copy of MiniLM-L6 (token embeddings frozen, no dropout, fused AdamW, bf16
autocast), stepped on the same batches of SST-2 training sentences, the arms interleaved step
by step so that the machine's load falls on both. Prints the median seconds of a training step
(forward, backward, optimizer) and of an inference batch, and eager's speed-up over sdpa.

    python bench/cpu_attention.py
    python bench/cpu_attention.py --batch 16 --steps 10 --widths 64 128 192 256
    python bench/cpu_attention.py --batch 16 32 --steps 30 --precision fp32 --widths
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from head_vs_logreg import SHARED, _texts  # noqa: E402


def training_copy(source: str, attention: str):
    """A fresh copy of the embedded MiniLM-L6 set up as headstart trains it (token embeddings
    frozen, no dropout) attending with ``attention``, its fused AdamW, and its tokenizer."""
    import torch

    from headstart.backbones.encoders import load_encoder
    from headstart.training.tokens import freeze_token_embeddings, without_dropout

    torch.manual_seed(0)
    encoder, tokenizer = load_encoder(source, "minilm-l6")
    encoder.set_attn_implementation(attention)
    freeze_token_embeddings(encoder)
    without_dropout(encoder)
    params = [p for p in encoder.parameters() if p.requires_grad]
    return encoder, torch.optim.AdamW(params, lr=2e-5, fused=True), tokenizer


def mean_pooled(encoder, input_ids, attention_mask):
    """The encoder's mean-pooled embeddings (headstart's default pooling)."""
    hidden = encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", nargs="+", type=int, default=[16, 32], help="texts per training step [16 32]")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per arm and batch size [20]")
    parser.add_argument("--widths", nargs="*", type=int, default=[64, 128, 192, 256],
                        help="also training steps of 16 texts of exactly this many tokens (SST-2 sentences joined) [64 128 192 256]")
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    args = parser.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"no data sets at {SHARED}")
    import torch

    from headstart.backbones.encoders import resolve_encoder
    from headstart.training.tokens import CPU_TRAINING_ATTENTION, pad, tokenize

    source = resolve_encoder("minilm-l6")[1]
    arms = {}
    for name in ("sdpa", CPU_TRAINING_ATTENTION):
        encoder, optimizer, tokenizer = training_copy(source, name)
        arms[name] = (encoder, optimizer)
    texts = list(_texts("sst2")[0].texts)
    ids, _ = tokenize(tokenizer, texts, 128)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if args.precision == "bf16" else contextlib.nullcontext

    def train_step(name, batch) -> float:
        encoder, optimizer = arms[name]
        encoder.train()
        start = time.perf_counter()
        with autocast():
            z = mean_pooled(encoder, **batch)
        loss = torch.nn.functional.normalize(z.float(), dim=1).sum(0).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    def infer(name, batch) -> float:
        encoder, _ = arms[name]
        encoder.eval()
        start = time.perf_counter()
        with torch.inference_mode(), autocast():
            mean_pooled(encoder, **batch)
        return time.perf_counter() - start

    rng = np.random.default_rng(0)
    print(f"MiniLM-L6, {args.precision}, {torch.get_num_threads()} threads; median seconds, {args.steps} steps per arm\n")
    print(f"| step | tokens per batch (median) | sdpa | {CPU_TRAINING_ATTENTION} | speed-up |\n|---|---:|---:|---:|---:|")
    if args.widths:  # long texts: SST-2 sentences joined 40 at a time
        joined, _ = tokenize(tokenizer, [" ".join(texts[i : i + 40]) for i in range(0, len(texts) - 40, 40)], max(args.widths))

    def fixed(width: int) -> list:
        """16 texts of exactly ``width`` tokens, then padding on half of them from the middle on."""
        picks = [joined[i] for i in rng.choice(len(joined), 16, replace=False)]
        rows = [np.concatenate([p[: width - 1], p[-1:]]) for p in picks]
        return rows[:8] + [np.concatenate([r[: width // 2 - 1], r[-1:]]) for r in rows[8:]]

    rows = [("training", train_step, size, None) for size in args.batch] + [("training", train_step, 16, w) for w in args.widths]
    rows += [("inference", infer, 64, None)]
    for kind, fn, n, width in rows:
        batches = [pad(fixed(width) if width else [ids[i] for i in rng.choice(len(ids), n, replace=False)],
                       tokenizer.pad_token_id or 0) for _ in range(args.steps + 2)]
        times = {name: [] for name in arms}
        for i, batch in enumerate(batches):
            for name in arms:
                t = fn(name, batch)
                if i >= 2:  # the first steps warm up the allocator and oneDNN
                    times[name].append(t)
        med = {name: statistics.median(v) for name, v in times.items()}
        tokens = statistics.median(int(b["input_ids"].numel()) for b in batches)
        what = f"{kind}, {n} texts" + (f" of {width} tokens (8 padded from {width // 2})" if width else "")
        print(f"| {what} | {tokens:.0f} | {med['sdpa']:.3f} | {med[CPU_TRAINING_ATTENTION]:.3f} | "
              f"{med['sdpa'] / med[CPU_TRAINING_ATTENTION]:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
