"""Pretrained word vectors (GloVe, word2vec, fastText) as a text backbone.

A word-vector model is: a word tokenizer whose lower-casing and punctuation rules match the
vectors, an embedding layer initialised from the vectors (frozen unless the recipe is
``full``) plus a learned vector for unknown words, an optional small sequence encoder
(a 1-layer BiLSTM or a Kim-style CNN), pooling (mean, max or mean+max), and the usual head.
The whole vocabulary travels inside the model directory, so a saved model gives the same
prediction for any text, words never seen in training included.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ..config import SEQUENCE_ENCODERS, TrainConfig
from ..errors import HeadstartError
from ..models.networks import Head, set_trainable
from ..data.textdata import TextSet
from .loop import param_groups, recipe_setup
from .transfer import RecipeResult, Transfer
from ..backbones.vectors import EMBEDDED_VECTORS, WordVectors, is_word_vectors, load_word_vectors, read_vector_file  # noqa: F401 - part of this module's API
from ..data.words import PAD, UNK, TOKEN, word_ids  # 0 is padding, 1 an unknown word

log = logging.getLogger("headstart")

# What word vectors get when nothing is asked: the convolutional sentence classifier of Kim
# (2014) on frozen vectors (filters 3, 4 and 5 words wide, max over time, dropout 0.5), which
# reads word order and short phrases ("how many", "not good") that pooled vectors lose.
WORD_DEFAULTS = {
    "sequence_encoder": "cnn",
    "pooling": {"cnn": "max", "bilstm": "mean+max", "none": "mean"},
    "dropout": {"cnn": 0.5, "bilstm": 0.2, "none": 0.1},
}
WORD_POOLINGS = ("mean", "max", "mean+max")
VOCAB_FILE = "vocab.json"


# --------------------------------------------------------------------------- tokenizer

# The rule lives in words.py (no torch) so the ONNX predictor splits text the same way.
_TOKEN = TOKEN


class WordTokenizer:
    """Words -> ids: 0 is padding, 1 unknown, 2.. the vectors' rows in order."""

    pad_token_id = PAD

    def __init__(self, words: Sequence[str], lowercase: bool):
        self.words = list(words)
        self.lowercase = lowercase
        self.index = {w: i + 2 for i, w in enumerate(self.words)}

    def tokens(self, text: str) -> list[str]:
        return _TOKEN.findall(text.lower() if self.lowercase else text)

    def __call__(self, texts: Sequence[str], truncation: bool = True, max_length: int | None = None) -> dict[str, list[list[int]]]:
        limit = max_length if truncation else None
        return {"input_ids": [word_ids(text, self.index, self.lowercase, limit) for text in texts]}

    def oov(self, texts: Sequence[str], top: int = 20) -> dict:
        """Share of word tokens without a vector, and the most frequent of them."""
        unknown: Counter[str] = Counter()
        total = 0
        for text in texts:
            for t in self.tokens(text):
                total += 1
                if t not in self.index:
                    unknown[t] += 1
        return {
            "rate": round(sum(unknown.values()) / max(total, 1), 6),
            "tokens": total,
            "unknown_tokens": sum(unknown.values()),
            "top_unknown": unknown.most_common(top),
        }

    def save_pretrained(self, directory: str | Path) -> None:
        with open(Path(directory) / VOCAB_FILE, "w", encoding="utf-8") as f:
            json.dump({"lowercase": self.lowercase, "words": self.words}, f, ensure_ascii=False)

    @classmethod
    def from_directory(cls, directory: str | Path) -> "WordTokenizer":
        data = json.loads((Path(directory) / VOCAB_FILE).read_text(encoding="utf-8"))
        return cls(data["words"], bool(data["lowercase"]))


# --------------------------------------------------------------------------- the model


class WordVectorModel(nn.Module):
    """vectors (+ learned unknown vector) -> [BiLSTM | CNN] -> pooling -> head."""

    def __init__(self, vectors: torch.Tensor, num_classes: int, head_cfg, *, sequence_encoder: str = "none", hidden_size: int = 128):
        super().__init__()
        if sequence_encoder not in SEQUENCE_ENCODERS:
            raise HeadstartError(f"sequence encoder must be one of {', '.join(SEQUENCE_ENCODERS)}; got {sequence_encoder!r}")
        if head_cfg.pooling not in WORD_POOLINGS:
            raise HeadstartError(
                f"pooling {head_cfg.pooling!r} does not apply to word vectors; use one of {', '.join(WORD_POOLINGS)}"
            )
        dim = int(vectors.shape[1])
        self.backbone = nn.Embedding.from_pretrained(vectors, freeze=False)
        self.unk = nn.Parameter(torch.zeros(dim))
        self.sequence_encoder, self.pooling, self.hidden_size = sequence_encoder, head_cfg.pooling, hidden_size
        if sequence_encoder == "bilstm":
            self.encoder = nn.LSTM(dim, hidden_size, batch_first=True, bidirectional=True)
            width = 2 * hidden_size
        elif sequence_encoder == "cnn":
            self.encoder = nn.ModuleList([nn.Conv1d(dim, hidden_size, k, padding=k // 2) for k in (3, 4, 5)])
            width = 3 * hidden_size
        else:
            self.encoder = nn.Identity()
            width = dim
        self.head = Head(width * (2 if head_cfg.pooling == "mean+max" else 1), num_classes, head_cfg)

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        rows = (input_ids - 2).clamp(min=0)
        x = self.backbone(rows)
        x = torch.where((input_ids == UNK).unsqueeze(-1), self.unk.to(x.dtype).expand_as(x), x)
        mask = attention_mask.unsqueeze(-1).to(x.dtype)
        x = x * mask
        if self.sequence_encoder == "bilstm":
            lengths = attention_mask.sum(1).clamp(min=1).cpu()
            packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            out, _ = self.encoder(packed)
            x, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=input_ids.shape[1])
        elif self.sequence_encoder == "cnn":
            h = x.transpose(1, 2)
            length = input_ids.shape[1]
            x = torch.cat([torch.relu(conv(h))[..., :length] for conv in self.encoder], dim=1).transpose(1, 2)
        pooled = []
        if self.pooling in ("mean", "mean+max"):
            pooled.append((x * mask).sum(1) / mask.sum(1).clamp(min=1.0))
        if self.pooling in ("max", "mean+max"):
            pooled.append(x.masked_fill(mask == 0, float("-inf")).amax(1))
        return torch.cat(pooled, dim=1)

    def features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """What the head reads."""
        return self.embed(batch["input_ids"], batch["attention_mask"])

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.features(batch))

    def block_groups(self) -> list[list[str]]:
        return [[name for name, _ in self.backbone.named_parameters()]]


def _word_vector_backend():
    from .tokens import TokenBackend

    class WordVectorBackend(TokenBackend):
        """Phase 2 of a word-vector model: its own layers (unknown vector, sequence encoder,
        head) at ``lr``, and the vectors too (at ``backbone_lr``) when ``train_vectors``."""

        train_vectors = False
        can_contrast = False  # static vectors: nothing contrastive to tune

        def groups(self, model: nn.Module, head_trained: bool, recipe: str) -> list[dict]:
            set_trainable(model, None if self.train_vectors else 0)
            own = [(n, p) for n, p in model.named_parameters() if not n.startswith("backbone.")]
            groups = param_groups(own, self.cfg.lr, self.cfg.weight_decay)
            if self.train_vectors:
                # embeddings are not decayed: weight decay would pull every word towards zero
                groups.append({"params": list(model.backbone.parameters()), "lr": self.cfg.backbone_lr, "weight_decay": 0.0})
            return groups

    return WordVectorBackend


def run_wordvec_recipe(
    model: WordVectorModel, tokenizer: WordTokenizer, data: TextSet, val: TextSet | None, cfg: TrainConfig, max_length: int, *,
    progress: bool = False,
) -> tuple[RecipeResult, dict[str, int]]:
    """Frozen vectors with no sequence encoder are a fixed feature extractor: the probe
    solves the head on the pooled vectors. A sequence encoder (BiLSTM, CNN) is trained with
    the head on token batches, the vectors frozen (``linear-probe``) or trained too (``full``)."""
    from .tokens import token_items

    if cfg.recipe == "fine-tune":
        raise HeadstartError(
            "word vectors have no blocks to unfreeze; use --recipe linear-probe (frozen vectors, the default) "
            "or --recipe full (vectors trainable)"
        )
    if cfg.recipe == "prototype" and model.sequence_encoder != "none":
        raise HeadstartError(
            f"the prototype recipe needs fixed features; a {model.sequence_encoder} sequence encoder must be trained: "
            "pass --sequence-encoder none (pooled vectors) or use --recipe linear-probe / full"
        )
    device, _, loss_fn = recipe_setup(model, data.labels, len(data.classes), cfg)
    precision = "fp32"  # embedding lookups and a small LSTM gain nothing from bf16
    ids, texts, labels, truncation = token_items(tokenizer, data, val, max_length)
    backend = _word_vector_backend()(
        model, ids, texts, labels, cfg, pad_id=PAD, device=device, precision=precision, loss_fn=loss_fn,
        progress=progress, cache_parts=None, max_length=max_length, eval_batch=256, phase2_recipe="full",
        val_source=val.source if val is not None else "",
    )
    backend.train_vectors = cfg.recipe == "full"
    run_cfg = cfg
    if model.sequence_encoder != "none" or cfg.recipe == "full":
        # an encoder must learn: the "probe" of a BiLSTM or CNN is training it on token batches
        run_cfg = dataclasses.replace(cfg, recipe="full")
    elif cfg.recipe == "auto":
        run_cfg = dataclasses.replace(cfg, recipe="linear-probe")
    result = Transfer(model, backend, run_cfg, n_data=len(data), n_val=len(val) if val is not None else 0,
                      classes=list(data.classes), loss_fn=loss_fn).run()
    result.recipe = cfg.recipe if cfg.recipe != "auto" else run_cfg.recipe
    return result, truncation
