"""Token ids and batches for every text model (transformers and word vectors): tokenising
with truncation counts, dynamic padding, length-grouped batches, inference in length order,
training on token batches, and :class:`TokenBackend`, what :mod:`headstart.training.transfer` needs of
a text model."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from . import distributed
from .cache import cached_features
from ..config import TrainConfig
from ..models.networks import set_trainable
from ..data.textdata import TextSet
from .loop import EpochRecord, autocast, train_loop, unfreeze

log = logging.getLogger("headstart")


def tokenize(tokenizer, texts: Sequence[str], max_length: int, chunk: int = 4096) -> tuple[list[np.ndarray], int]:
    """Token ids (with special tokens, truncated to ``max_length``), one int32 array per
    text, and how many texts were truncated. Only texts that reach the limit are tokenised a
    second time, to tell.

    Tokenised ``chunk`` texts at a time and kept as compact arrays: the tokenizer's Python
    lists (ids, attention masks, token types: about 1 KB per short text) never exist for the
    whole data set at once, so 100,000 rows hold about 20 MB of ids, not about 300 MB."""
    ids: list[np.ndarray] = []
    truncated = 0
    for start in range(0, len(texts), chunk):
        part = list(texts[start : start + chunk])
        seqs = tokenizer(part, truncation=True, max_length=max_length)["input_ids"]
        ids += [np.asarray(seq, dtype=np.int32) for seq in seqs]
        at_limit = [i for i, seq in enumerate(seqs) if len(seq) >= max_length]
        if at_limit:
            full = tokenizer([part[i] for i in at_limit], truncation=False)["input_ids"]
            truncated += sum(len(seq) > max_length for seq in full)
    return ids, truncated


def pad(seqs: Sequence[Sequence[int] | np.ndarray], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad to the longest sequence of this batch, not to a fixed length."""
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        input_ids[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return {"input_ids": input_ids, "attention_mask": mask}


# A contrastive batch is drawn by class, not by length, so padded to its longest text it
# computes about twice its texts' tokens (random batches of 32 SST-2 or GoEmotions training
# texts: 2.16x and 1.85x). Embedded in length-sorted parts of at least this many rows, each
# padded to its own longest (two halves of 32: 1.55x and 1.40x), a training step of MiniLM-L6
# on 32 texts took 0.398 s against 0.475 s (SST-2) and 0.313 against 0.341 s (GoEmotions);
# parts of 8 rows were slower than parts of 16, and splitting a batch of 16 in two was no
# faster (1.04x, 0.95x) (bench/contrastive_step.py, docs/performance.md). On a GPU a batch
# this small is bound by its kernel launches rather than its tokens, and stays whole.
MIN_PART_ROWS = 16


def part_count(rows: int, device) -> int:
    """How many parts :func:`embed_in_parts` embeds a batch of ``rows`` in on ``device``."""
    return max(1, rows // MIN_PART_ROWS) if torch.device(device).type == "cpu" else 1


def embed_in_parts(embed, seqs: Sequence[np.ndarray], pad_id: int, device, precision: str,
                   attention: TrainingAttention | None = None) -> torch.Tensor:
    """``embed(input_ids, attention_mask)`` of ``seqs`` in length order, on a CPU in parts of
    at least :data:`MIN_PART_ROWS` rows each padded to its own longest (one part for a smaller
    batch, and on other devices), rows back in the given order, gradients kept. Each row's
    embedding is what one padded batch gives it (the attention mask hides padding); only the
    padding computed is less. ``attention`` is told each part's width
    (:func:`training_attention`)."""
    device = torch.device(device)
    order = np.argsort([len(s) for s in seqs], kind="stable")
    parts = np.array_split(order, part_count(len(seqs), device))
    out = []
    for part in parts:
        batch = {k: v.to(device) for k, v in pad([seqs[i] for i in part], pad_id).items()}
        if attention is not None:
            attention.batch(batch["input_ids"].shape[1])
        with autocast(device, precision):
            out.append(embed(batch["input_ids"], batch["attention_mask"]))
    z = torch.cat(out)
    return z[torch.as_tensor(np.argsort(order), device=z.device)]


def length_grouped(lengths: np.ndarray, batch_size: int, rng: np.random.Generator, group: int = 50) -> list[np.ndarray]:
    """Random batches of similar length: shuffle, sort within windows of ``group`` batches,
    cut, shuffle the batches. Little padding, still random."""
    order = rng.permutation(len(lengths))
    window = batch_size * group
    batches = []
    for start in range(0, len(order), window):
        chunk = order[start : start + window]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def by_length(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Deterministic batches of similar length, for inference."""
    order = np.argsort(-lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.inference_mode()
def run_batches(fn, ids: Sequence[np.ndarray], pad_id: int, batch_size: int, device, precision, progress=False, desc="") -> torch.Tensor:
    """``fn(batch)`` over all sequences in length order; rows back in input order (fp32)."""
    mine = np.asarray(distributed.shard(len(ids)))  # all of them in a single process
    lengths = np.array([len(ids[i]) for i in mine])
    rows, done = [], []
    for index in tqdm(by_length(lengths, batch_size), desc=desc, leave=False, disable=not progress):
        index = mine[index]
        batch = {k: v.to(device) for k, v in pad([ids[i] for i in index], pad_id).items()}
        with autocast(device, precision):
            rows.append(fn(batch).float().cpu())
        done.append(index)
    if distributed.world().enabled:
        local = torch.cat(rows) if rows else torch.empty(0, 0)
        out, _, _ = distributed.gather_rows(local, np.concatenate(done) if done else np.empty(0, dtype=np.int64), [])
        return out
    out = torch.empty((len(ids), rows[0].shape[1]), dtype=torch.float32)
    out[torch.as_tensor(np.concatenate(done))] = torch.cat(rows)
    return out


def train_on_tokens(
    model: nn.Module, groups: list[dict], train_ids: Sequence[np.ndarray], y_train: torch.Tensor,
    val_ids: Sequence[np.ndarray] | None, y_val: torch.Tensor | None, pad_id: int, *, cfg: TrainConfig, device, precision: str,
    loss_fn: nn.Module, eval_batch: int, progress: bool = False, epochs: int | None = None, phase: str | None = None,
    deadline: float | None = None, attention: TrainingAttention | None = None,
) -> list[EpochRecord]:
    """``train_loop`` over length-grouped, dynamically padded token batches, validated on
    ``val_ids`` each epoch (None: no validation, the last epoch kept); ``attention`` is told
    each batch's width before the batch is trained on (:func:`training_attention`)."""
    lengths = np.array([len(s) for s in train_ids])
    steps = len(distributed.even_batches(length_grouped(lengths, cfg.batch_size, np.random.default_rng([cfg.seed, 1]))))

    def batches(epoch: int) -> Iterator[tuple[dict, torch.Tensor]]:
        rng = np.random.default_rng([cfg.seed, epoch])
        for index in distributed.even_batches(length_grouped(lengths, cfg.batch_size, rng)):
            index = distributed.local_part(index)
            batch = pad([train_ids[i] for i in index], pad_id)
            if attention is not None:
                attention.batch(batch["input_ids"].shape[1])
            yield batch, y_train[torch.as_tensor(index)]

    evaluate = None
    if val_ids is not None:
        def evaluate() -> tuple[float, float]:
            model.eval()
            return loss_fn.evaluate(run_batches(model, val_ids, pad_id, eval_batch, device, precision), y_val)

    return train_loop(
        model, groups, batches, steps, evaluate, cfg=cfg, epochs=epochs or cfg.epochs, phase=phase or cfg.recipe,
        device=device, precision=precision, loss_fn=loss_fn, progress=progress, deadline=deadline,
    )


# The attention a transformers encoder trains with on a CPU, for batches up to
# CPU_EAGER_MAX_TOKENS wide. PyTorch's fused attention (scaled_dot_product_attention's flash
# kernel, what "sdpa" runs) is fast forward but slow to differentiate there: on MiniLM-L6, 16
# texts of 56 tokens in bf16, its backward took 15.5 ms a layer against 2.2 ms forward, 30%
# of a training step. The plain matrix-product attention ("eager", the same arithmetic) made
# steps of 16 texts 1.3 to 1.5 times faster up to 128 tokens, 1.13x at 192, level at 256,
# and slower beyond with twice the memory (it keeps every attention matrix for the backward),
# so wider batches keep the fused kernel. Inference is as fast either way
# (bench/cpu_attention.py, docs/performance.md).
CPU_TRAINING_ATTENTION = "eager"
CPU_EAGER_MAX_TOKENS = 192


class TrainingAttention:
    """Which attention ``model.backbone`` trains each batch with (:func:`training_attention`)."""

    def __init__(self, model: nn.Module, device):
        encoder = getattr(model, "backbone", None)
        own = getattr(getattr(encoder, "config", None), "_attn_implementation", None)
        self.switchable = (torch.device(device).type == "cpu" and own == "sdpa" and hasattr(encoder, "set_attn_implementation")
                           and bool(getattr(encoder, "_can_set_attn_implementation", lambda: False)()))
        self.encoder, self.own = encoder, own

    def batch(self, width: int) -> None:
        """Attend with :data:`CPU_TRAINING_ATTENTION` for a batch padded to ``width`` tokens
        when it is at most :data:`CPU_EAGER_MAX_TOKENS`, else with the encoder's own."""
        if self.switchable:
            self._use(CPU_TRAINING_ATTENTION if width <= CPU_EAGER_MAX_TOKENS else self.own)

    def restore(self) -> None:
        """Back to the encoder's own attention."""
        if self.switchable:
            self._use(self.own)

    def _use(self, name: str) -> None:
        if name != self.encoder.config._attn_implementation:
            self.encoder.set_attn_implementation(name)


@contextmanager
def training_attention(model: nn.Module, device) -> Iterator[TrainingAttention]:
    """While training on a CPU, ``model.backbone`` (a transformers encoder on "sdpa"
    attention that can change it in place) attends with :data:`CPU_TRAINING_ATTENTION` in
    the batches the loop announces narrow enough (:meth:`TrainingAttention.batch`), and goes
    back to its own attention afterwards (the fitted model's embeddings, export and serving
    keep it). On a GPU, or for an encoder that cannot switch, nothing changes."""
    attention = TrainingAttention(model, device)
    try:
        yield attention
    finally:
        attention.restore()


class TokenBackend:
    """The items (training texts, then validation texts) of one transformer or word-vector
    fit, as token ids; the frozen encoder's embeddings come from the disk cache when this
    exact computation was done before."""

    can_contrast = True  # a transformer encoder tunes with the contrastive recipe

    def __init__(self, model: nn.Module, ids: list[np.ndarray], texts: list[str], labels: np.ndarray, cfg: TrainConfig, *,
                 pad_id: int, device, precision: str, loss_fn: nn.Module, progress: bool, cache_parts: dict | None,
                 max_length: int, eval_batch: int, phase2_recipe: str, val_source: str = "",
                 name_ids: list[np.ndarray] | None = None):
        self.ids, self.texts, self.labels, self.cfg = ids, texts, labels, cfg
        self.name_ids = name_ids  # the class names' token ids, one per class (None: not used)
        self.pad_id, self.device, self.precision, self.loss_fn = pad_id, device, precision, loss_fn
        self.progress, self.cache_parts, self.max_length = progress, cache_parts, max_length
        self.eval_batch, self.phase2_recipe, self.val_source = eval_batch, phase2_recipe, val_source
        self.y = torch.as_tensor(labels)

    def failed(self) -> list[tuple[str, str]]:
        return []

    def features(self, model: nn.Module) -> tuple[torch.Tensor, np.ndarray]:
        set_trainable(model, 0)

        def compute():
            out, rows = self.embed(model, np.arange(len(self.ids)), progress=self.progress, desc="embeddings")
            return out, rows, []

        cfg = self.cfg
        parts = ({**self.cache_parts, "max_length": self.max_length, "precision": self.precision, "device": self.device.type}
                 if self.cache_parts and cfg.cache else None)
        feats, rows, _ = cached_features(parts, cfg.cache_dir, compute, texts=self.texts)
        return feats, rows

    def augmented(self, model: nn.Module, rows: np.ndarray):
        return None

    def groups(self, model: nn.Module, head_trained: bool, recipe: str) -> list[dict]:
        return unfreeze(model, self.cfg, head_trained=head_trained, recipe=recipe)

    def train(self, model: nn.Module, train_rows: np.ndarray, eval_rows: np.ndarray | None, *, epochs: int, phase: str,
              head_trained: bool, deadline: float | None):
        model.to(self.device)
        groups = self.groups(model, head_trained, phase.split()[0])
        try:
            with training_attention(model, self.device) as attention:
                return train_on_tokens(
                    model, groups, [self.ids[i] for i in train_rows], self.y[torch.as_tensor(train_rows)],
                    [self.ids[i] for i in eval_rows] if eval_rows is not None else None,
                    self.y[torch.as_tensor(eval_rows)] if eval_rows is not None else None, self.pad_id,
                    cfg=self.cfg, device=self.device, precision=self.precision, loss_fn=self.loss_fn,
                    eval_batch=self.eval_batch, progress=self.progress, epochs=epochs, phase=phase, deadline=deadline,
                    attention=attention,
                )
        finally:
            set_trainable(model, None)

    def embed(self, model: nn.Module, rows: np.ndarray, progress: bool = False, desc: str = "") -> tuple[torch.Tensor, np.ndarray]:
        """Embeddings of ``rows`` by the model's (possibly tuned) encoder, never cached."""
        return self._embed_ids(model, [self.ids[i] for i in rows], progress, desc), np.asarray(rows)

    def _embed_ids(self, model: nn.Module, ids: list, progress: bool = False, desc: str = "") -> torch.Tensor:
        """The model's encoder's embeddings of token-id sequences, in eval mode."""
        model.to(self.device).eval()

        def embed(batch):
            return model.embed(batch["input_ids"], batch["attention_mask"])

        return run_batches(embed, ids, self.pad_id, self.eval_batch, self.device, self.precision, progress, desc)

    def name_features(self, model: nn.Module) -> tuple[torch.Tensor, np.ndarray] | None:
        """Each class's name embedded by the model's (possibly tuned) encoder as a text, and
        the class it names: one more training row per class for a solved head (None: the
        names are not used)."""
        if self.name_ids is None:
            return None
        return self._embed_ids(model, self.name_ids), np.arange(len(self.name_ids))

    def contrast(self, model: nn.Module, rows: np.ndarray, steps: int, *, checkpoints: set[int], on_checkpoint,
                 deadline: float | None, phase: str = "contrastive", keep_weights: bool = True) -> Contrasted:
        """Contrastive steps on the encoder (its token-embedding matrix kept as pretrained:
        :func:`freeze_token_embeddings`; no dropout: :func:`without_dropout`) over
        class-balanced batches of ``rows`` (AdamW at ``backbone_lr``, linear warmup over the
        first 10%, then linear decay to 0), each batch embedded in length-sorted parts
        (:func:`embed_in_parts`); ``on_checkpoint(step)`` after each step in
        ``checkpoints``, its value kept. On a CPU the steps attend with
        :data:`CPU_TRAINING_ATTENTION` (:func:`training_attention`). With a ``deadline``, the
        epoch loop's rule: it stops at a checkpoint when the steps to the next one, judged by
        the last stretch's length (checkpoint included), would end after it.

        On several processes the tuning is data-parallel: every process draws the same
        batches, embeds its part of each (:func:`~headstart.training.distributed.local_part`),
        takes the loss over the whole batch's gathered embeddings and adds its gradients to the
        others' (:func:`~headstart.training.distributed.gather_batch`): one process's steps for
        a share of the work each.

        Inside :func:`headstart.training.checkpoint.checkpointing` the tuning is one phase
        named ``phase``: its state is saved after the first step that ends
        :data:`~headstart.training.checkpoint.STEP_SAVE_SECONDS` after the last save, with the
        checkpoints' values, and a resumed run continues after the saved step (the batches are
        drawn up front from the seed, nothing else is random: it ends with the same weights).
        A finished tuning is replayed from its record: its weights (saved only with
        ``keep_weights``), its checkpoints' values and its times."""
        import time

        from .checkpoint import STEP_SAVE_SECONDS, begin_phase, resume_running
        from .contrastive import balanced_batches, pair_cosine_loss
        from .loop import make_optimizer, param_groups, past_deadline

        cfg = self.cfg
        model.to(self.device)
        store, key, done = begin_phase(phase, model)
        if done is not None:
            return Contrasted(**done["extra"])
        set_trainable(model, None)
        for p in model.head.parameters():
            p.requires_grad_(False)
        freeze_token_embeddings(model.backbone)
        optimizer = make_optimizer("adamw", param_groups(model.backbone.named_parameters(), cfg.backbone_lr, cfg.weight_decay))
        warmup = max(1, steps // 10)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (steps - s) / max(1, steps - warmup)))
        batches = balanced_batches(self.labels[rows], cfg.batch_size, steps, np.random.default_rng([cfg.seed, 17]))
        seconds: list[float] = []
        at: dict = {}
        first, before, stopped = 1, 0.0, False  # before: the wall seconds of the steps resumed from a save
        running = resume_running(store, key, phase, module=model, optimizer=optimizer, scheduler=schedule)
        if running is not None:
            seconds, at, before = list(running["seconds"]), dict(running["at"]), running["wall"]
            first = running["epoch"] + 1
        began = last_save = stretch = time.perf_counter()
        dropout = without_dropout(model.backbone)
        bar = tqdm(total=steps, initial=first - 1, desc="contrastive", leave=False, disable=not self.progress)
        with training_attention(model, self.device) as attention:
            try:
                for step in range(first, steps + 1):
                    start = time.perf_counter()
                    index = batches[step - 1]
                    # several processes: each embeds its part of the batch, the loss is over all of it
                    shared = len(index) >= distributed.world().size
                    mine = distributed.local_part(index) if shared else index
                    model.train()
                    z = embed_in_parts(model.embed, [self.ids[rows[i]] for i in mine], self.pad_id, self.device,
                                       self.precision, attention)
                    if shared:
                        z, index = distributed.gather_batch(z.float(), len(index)), distributed.dealt_order(index)
                    loss = pair_cosine_loss(z, torch.as_tensor(self.labels[rows[index]], device=self.device))
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if shared:
                        distributed.sum_gradients(model.backbone.parameters())
                    torch.nn.utils.clip_grad_norm_(model.backbone.parameters(), 1.0)
                    optimizer.step()
                    schedule.step()
                    seconds.append(time.perf_counter() - start)
                    bar.update()
                    if step in checkpoints:
                        at[step] = on_checkpoint(step)
                        now = time.perf_counter()
                        stopped = step < steps and past_deadline(deadline, now - stretch)
                        stretch = now
                    if store is not None and step < steps and not stopped \
                            and distributed.agree(time.perf_counter() - last_save >= STEP_SAVE_SECONDS):
                        store.save_epoch(key, {
                            "epoch": step, "unit": "step", "module": model.state_dict(), "optimizer": optimizer.state_dict(),
                            "scheduler": schedule.state_dict(), "seconds": seconds, "at": at,
                            "wall": before + time.perf_counter() - began})
                        last_save = time.perf_counter()
                    if stopped:
                        break
            finally:
                bar.close()
                for module, p in dropout:
                    module.p = p
                set_trainable(model, None)
                model.eval()
        result = Contrasted(seconds=seconds, at=at, wall=before + time.perf_counter() - began)
        if store is not None:
            store.save_finished(key, model.state_dict() if keep_weights else {}, [], extra=vars(result))
        return result

    def logits(self, model: nn.Module, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        model.to(self.device).eval()
        out = run_batches(model, [self.ids[i] for i in rows], self.pad_id, self.eval_batch, self.device, self.precision)
        return out.numpy(), np.asarray(rows)


@dataclass
class Contrasted:
    """What :meth:`TokenBackend.contrast` did: each step's seconds, ``on_checkpoint``'s value
    at each checkpoint step, and the tuning's wall time (checkpoints included), replayed as
    they were measured when the tuning is finished in a run's checkpoint."""

    seconds: list[float]
    at: dict[int, Any]
    wall: float


def freeze_token_embeddings(encoder: nn.Module) -> bool:
    """Keep the encoder's token-embedding matrix as pretrained (``requires_grad`` off; False
    when the encoder does not expose one). Tuned on a few dozen texts, only the rows of the
    words in them would move, away from the words they never contain. The matrix is about
    half of a small encoder's weights (11.7M of MiniLM-L6's 22.7M): AdamW's two moments of it
    are 94 MB not spent."""
    get = getattr(encoder, "get_input_embeddings", None)
    embeddings = get() if callable(get) else None
    weight = getattr(embeddings, "weight", None)
    if not isinstance(weight, nn.Parameter):
        return False
    weight.requires_grad_(False)
    return True


_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


def without_dropout(module: nn.Module) -> list[tuple[nn.Module, float]]:
    """Set every dropout layer of ``module`` to p = 0; returns each with its former p, to
    restore. The contrastive objective pulls the cosine similarity of two rows' embeddings to
    a target (1 or 0) and the head is then solved on embeddings computed without dropout:
    training on dropout's noisy embeddings fits a geometry the head never sees. Measured on
    19 paired draws (``bench/fewshot.py``'s SST-2 8 and 16 per class, emotions 8 per class)
    it was more accurate on 13, by 0.7 points on average."""
    changed = []
    for m in module.modules():
        if isinstance(m, _DROPOUT) and m.p:
            changed.append((m, m.p))
            m.p = 0.0
    return changed


def token_items(tokenizer, data: TextSet, val: TextSet | None, max_length: int) -> tuple[list, list[str], np.ndarray, dict]:
    """Token ids, texts and labels of the data then the validation set, and how many of each
    were cut at ``max_length``."""
    ids, cut = tokenize(tokenizer, data.texts, max_length)
    texts, labels = list(data.texts), data.labels
    val_cut = 0
    if val is not None:
        val_ids, val_cut = tokenize(tokenizer, val.texts, max_length)
        ids, texts, labels = ids + val_ids, texts + list(val.texts), np.concatenate([data.labels, val.labels])
    if cut or val_cut:
        log.info("truncated to %d tokens: %d training and %d validation texts", max_length, cut, val_cut)
    return ids, texts, labels, {"train": cut, "val": val_cut, "max_length": max_length}
