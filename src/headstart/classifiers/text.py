"""``TextClassifier``: a pretrained BERT-family encoder with a new head, trained by the
Hugging Face recipe (or a linear probe / layer-wise fine-tune), with dynamic padding and
length-grouped batches."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .base import Classifier
from ..config import SEQUENCE_ENCODERS, TrainConfig
from ..backbones.encoders import EncoderSpec, encoder_block_groups, load_encoder, quiet_transformers, resolve_encoder
from ..errors import DataError, HeadstartError, ModelDirError
from ..models.networks import Head
from ..objectives import announce_objective, check_separator
from ..data.textdata import TextSet, class_name_texts, read_table
from ..models import unknown
from ..training.tokens import TokenBackend, run_batches, token_items, tokenize
from ..training.loop import recipe_setup, resolve_device, resolve_precision, seed_everything
from ..training.transfer import RecipeResult, Transfer

log = logging.getLogger("headstart")


class TextModel(nn.Module):
    """encoder -> mean or [CLS] pooling -> head."""

    # the encoder's own pooler (BERT's) is never used: data-parallel training must know
    has_unused_parameters = True

    def __init__(self, encoder: nn.Module, num_classes: int, head_cfg):
        super().__init__()
        if head_cfg.pooling not in ("mean", "cls"):
            raise HeadstartError(f"pooling {head_cfg.pooling!r} is for word vectors; a transformer pools with mean or cls")
        self.backbone = encoder
        self.pooling = head_cfg.pooling
        self.head = Head(encoder.config.hidden_size, num_classes, head_cfg)

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """What the head reads."""
        return self.embed(batch["input_ids"], batch["attention_mask"])

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.features(batch))

    def block_groups(self) -> list[list[str]]:
        return encoder_block_groups(self.backbone)


# --------------------------------------------------------------------------- the recipe


def run_text_recipe(
    model: TextModel, tokenizer, data: TextSet, val: TextSet | None, cfg: TrainConfig, max_length: int, *,
    progress: bool = False, cache_parts: dict | None = None,
) -> tuple[RecipeResult, dict[str, int]]:
    """Train a transformer text ``model`` with ``cfg.recipe``; ``cache_parts`` identify the
    encoder for the embedding cache of the frozen backbone (None: no cache)."""
    device, precision, loss_fn = recipe_setup(model, data.labels, len(data.classes), cfg)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids, texts, labels, truncation = token_items(tokenizer, data, val, max_length)
    single = np.asarray(data.labels).ndim == 1
    names = class_name_texts(data.classes) if cfg.class_names and single else None
    if names is not None:
        log.info("class names as training texts for the solved head (weight chosen out-of-fold): %s",
                 ", ".join(repr(n) for n in names[:5]) + (", ..." if len(names) > 5 else ""))
    elif cfg.class_names and single:
        log.info("class names not used: without digits and punctuation they do not tell the classes apart")
    backend = TokenBackend(model, ids, texts, labels, cfg, pad_id=pad_id, device=device, precision=precision, loss_fn=loss_fn,
                           progress=progress, cache_parts=cache_parts, max_length=max_length,
                           eval_batch=max(cfg.batch_size, 64), phase2_recipe="full",
                           val_source=val.source if val is not None else "",
                           name_ids=tokenize(tokenizer, names, max_length)[0] if names is not None else None)
    result = Transfer(model, backend, cfg, n_data=len(data), n_val=len(val) if val is not None else 0,
                      classes=list(data.classes), loss_fn=loss_fn).run()
    return result, truncation


# --------------------------------------------------------------------------- the front

# Position ids of these count from the padding index + 1, so 514 positions hold 512 tokens.
_POSITIONS_AFTER_PADDING = frozenset({"mpnet", "roberta", "xlm-roberta", "camembert", "longformer"})



class TextClassifier(Classifier):
    """A pretrained text encoder with a new classification head.

    >>> clf = TextClassifier().fit(texts, labels)          # or .fit("reviews.csv")
    >>> clf.predict(["This product is great!"])
    ['positive']

    ``backbone``: ``minilm-l6`` (embedded, offline), ``mpnet-base`` (once fetched with
    ``headstart fetch mpnet-base``), a local Hugging Face model directory, or a hub id. ``pooling``: ``mean`` or ``cls`` (default: the encoder's own).

    Word vectors: ``backbone="glove-6b-50d"`` (embedded) or ``word_vectors="file.vec"``
    (GloVe, word2vec text/binary, fastText), with ``sequence_encoder`` ``none`` | ``bilstm``
    | ``cnn`` and ``pooling`` ``mean`` | ``max`` | ``mean+max``; the vectors are frozen
    unless ``recipe="full"``.
    """

    task = "text"
    multi_label: bool | None = None
    label_sep = ";"

    def __init__(
        self,
        backbone: str = "minilm-l6",
        *,
        max_length: int | None = None,
        pooling: str | None = None,
        hidden: Sequence[int] = (),
        dropout: float | None = None,
        text_column: str | None = None,
        label_column: str | None = None,
        encoding: str | None = None,
        word_vectors: str | None = None,
        sequence_encoder: str | None = None,
        hidden_size: int = 128,
        multi_label: bool | None = None,
        label_sep: str = ";",
        progress: bool = False,
        **train: Any,
    ):
        from ..backbones.vectors import is_word_vectors
        from ..training.wordvec import WORD_DEFAULTS

        self.backbone = str(word_vectors) if word_vectors else backbone
        self.word_vectors = word_vectors
        self.kind = "word-vectors" if word_vectors or is_word_vectors(backbone) else "transformer"
        if self.kind == "word-vectors":
            # Kim (2014): a CNN of 3/4/5-word filters over frozen vectors, max-pooled over time
            sequence_encoder = sequence_encoder or WORD_DEFAULTS["sequence_encoder"]
            if pooling is None:
                pooling = WORD_DEFAULTS["pooling"][sequence_encoder]
            if dropout is None:
                dropout = WORD_DEFAULTS["dropout"][sequence_encoder]
        sequence_encoder = sequence_encoder or "none"
        if sequence_encoder not in SEQUENCE_ENCODERS:
            raise HeadstartError(f"sequence_encoder must be one of {', '.join(SEQUENCE_ENCODERS)}; got {sequence_encoder!r}")
        if sequence_encoder != "none" and self.kind != "word-vectors":
            raise HeadstartError("a sequence encoder (BiLSTM / CNN) goes on word vectors; pass --backbone glove-6b-50d or --word-vectors FILE")
        self.sequence_encoder, self.hidden_size = sequence_encoder, hidden_size
        self._spec, self._source = None, None
        if pooling is None:
            if self.kind == "word-vectors":
                pooling = "mean"
            else:
                self._spec, self._source = resolve_encoder(backbone, train.get("cache_dir"))
                pooling = self._spec.pooling
        super().__init__(hidden=hidden, dropout=dropout, pooling=pooling, progress=progress, **train)
        if max_length is not None and max_length < 2:
            raise HeadstartError(f"max_length must be at least 2; got {max_length}")
        self.max_length = max_length
        self.text_column, self.label_column, self.encoding = text_column, label_column, encoding
        self.multi_label, self.label_sep = multi_label, check_separator(label_sep)

    def _read(self, data: Any, labels: Sequence[Any] | None = None, classes: Sequence[str] | None = None,
              multi_label: bool | None = None) -> TextSet:
        """A labelled set; ``multi_label`` (a validation set read like its training data)
        overrides how the label column is read, as a trained model's objective does."""
        if isinstance(data, TextSet):
            return data
        trained = classes is not None and hasattr(self, "classes_")
        multi = self.objective_.multi_label if trained else self.multi_label if multi_label is None else multi_label
        sep = (self.objective_.separator if trained and self.objective_.multi_label else None) or self.label_sep
        return read_table(
            data, labels, text_column=self.text_column, label_column=self.label_column,
            encoding=self.encoding, classes=classes, multi_label=multi, label_sep=sep,
        )

    def fit(self, data: Any, labels: Sequence[Any] | None = None, *, val: Any = None, val_labels: Sequence[Any] | None = None) -> "TextClassifier":
        """Train on a CSV / TSV / JSON Lines file, a DataFrame, or ``texts, labels``. Without
        ``val`` every row both trains and validates, by stratified k-fold cross-validation
        (``folds``) and a refit on all of them (or a holdout of ``val_split``); with ``val``
        (same kinds) that set validates."""
        from ..data.splits import require_two_classes

        cfg = self._resolved()
        full = self._read(data, labels)
        val_set = None if val is None else self._read(val, val_labels, classes=full.classes,
                                                      multi_label=full.labels.ndim == 2)
        require_two_classes(full.labels, full.classes)
        self.objective_ = announce_objective(full.labels, self.label_sep, self.multi_label)
        if self._spec is None and self.kind == "transformer":
            self._spec, self._source = resolve_encoder(self.backbone, cfg.cache_dir)
        self.classes_ = list(full.classes)
        self.skipped_ = list(full.skipped) + (list(val_set.skipped) if val_set is not None else [])
        log.info(
            "data: %d training and %d validation texts, %d labels; %d rows skipped (empty text or label)",
            len(full), len(val_set) if val_set is not None else 0, len(self.classes_), len(self.skipped_),
        )
        seed_everything(cfg.seed)
        oov = None
        if self.kind == "word-vectors":
            from ..training.wordvec import WordTokenizer, WordVectorModel, load_word_vectors, run_wordvec_recipe

            vectors = load_word_vectors(None if self.word_vectors else self.backbone, self.word_vectors)
            self.vectors_source_, self.vectors_licence_ = vectors.source, vectors.licence
            self.tokenizer_ = WordTokenizer(vectors.words, vectors.lowercase)
            oov = {"train": self.tokenizer_.oov(full.texts)}
            if val_set is not None:
                oov["val"] = self.tokenizer_.oov(val_set.texts)
            for split, o in oov.items():
                log.info(
                    "%s: %.2f%% of %d word tokens have no vector; most frequent: %s", split, 100 * o["rate"], o["tokens"],
                    ", ".join(f"{w} ({n})" for w, n in o["top_unknown"][:10]) or "none",
                )
            self.max_length_ = self.max_length or 512
            self.model_ = WordVectorModel(
                torch.from_numpy(vectors.vectors), len(self.classes_), self.head_config,
                sequence_encoder=self.sequence_encoder, hidden_size=self.hidden_size,
            )
            del vectors
            result, self.truncated_ = run_wordvec_recipe(
                self.model_, self.tokenizer_, full, val_set, cfg, self.max_length_, progress=self.progress
            )
        else:
            encoder, self.tokenizer_ = load_encoder(self._source, self.backbone)
            self.max_length_ = self._limit(encoder)
            self.model_ = TextModel(encoder, len(self.classes_), self.head_config)
            result, self.truncated_ = run_text_recipe(
                self.model_, self.tokenizer_, full, val_set, cfg, self.max_length_, progress=self.progress,
                cache_parts=self._cache_parts(),
            )
        self.model_ = result.model
        self.oov_ = oov
        self.config = cfg
        items = list(full.texts) + (list(val_set.texts) if val_set is not None else [])
        self._record_fit(
            result,
            {"source": full.source, "n": len(full), "per_class": full.class_counts(), "truncated": self.truncated_["train"]},
            len(self.skipped_),
            items=items,
        )
        self.data_summary_["val"]["truncated"] = self.truncated_["val"] if val_set is not None else None
        if oov is not None:
            self.data_summary_["oov"] = oov
        return self

    def _resolved(self) -> TrainConfig:
        """Task defaults, with word vectors' own: frozen vectors (linear-probe), 20 epochs,
        patience 3, and the vectors at lr / 10 when they train."""
        cfg = self.config
        if self.kind == "word-vectors":
            import dataclasses

            if cfg.recipe == "contrastive":
                raise HeadstartError("the contrastive recipe tunes a transformer encoder; word vectors train with "
                                     "linear-probe or full (use a transformer backbone such as minilm-l6 for contrastive)")
            lr = cfg.lr if cfg.lr is not None else 1e-3
            cfg = dataclasses.replace(
                cfg, recipe=cfg.recipe or "linear-probe", epochs=cfg.epochs or 20,
                patience=3 if cfg.patience is None else cfg.patience, lr=lr,
                backbone_lr=cfg.backbone_lr if cfg.backbone_lr is not None else lr / 10,
            )
        return cfg.resolved()

    def _cache_parts(self) -> dict[str, Any]:
        """What identifies the frozen encoder's embeddings, for the feature cache."""
        from .. import __version__
        from ..training.cache import directory_digest

        source = self._source or self.backbone
        weights = directory_digest(source) if Path(source).is_dir() else f"hub:{source}"
        return {"headstart": __version__, "encoder": weights, "pooling": self.head_config.pooling}

    def _limit(self, encoder) -> int:
        """The token limit: asked for, else the encoder's own, never past its positions."""
        positions = int(getattr(encoder.config, "max_position_embeddings", 512) or 512)
        if getattr(encoder.config, "model_type", "") in _POSITIONS_AFTER_PADDING:
            positions -= int(getattr(encoder.config, "pad_token_id", 1) or 0) + 1
        wanted = self.max_length or (self._spec.max_length if self._spec else 512)
        if self.max_length and self.max_length > positions:
            raise HeadstartError(f"max_length {self.max_length} exceeds what the encoder supports ({positions})")
        return min(wanted, positions)

    # ------------------------------------------------------------------ prediction

    def _texts(self, inputs: str | Sequence[str]) -> tuple[list[str], bool]:
        self._check_fitted()
        single = isinstance(inputs, str)
        texts = [inputs] if single else [str(t) for t in inputs]
        empty = [i for i, t in enumerate(texts) if not t.strip()]
        if empty:
            which = "the text" if single else f"text {empty[0] + 1} of {len(texts)}"
            raise DataError(f"{which} is empty; there is nothing to classify")
        return texts, single

    def _logits(self, texts: list[str], with_unknown: bool = False):
        """Logits of the texts; with ``with_unknown``, (logits, unknown scores or None)."""
        device = resolve_device(self.config.device)
        # word vectors train and predict in fp32: lookups and a small LSTM gain nothing from bf16
        precision = "fp32" if self.kind == "word-vectors" else resolve_precision(self.config.precision, device)
        self.model_.to(device).eval()
        ids, _ = tokenize(self.tokenizer_, texts, self.max_length_)
        pad_id = self.tokenizer_.pad_token_id if self.tokenizer_.pad_token_id is not None else 0
        net = unknown.runner(self.model_) if with_unknown else self.model_
        out = run_batches(net, ids, pad_id, max(64, self.config.batch_size), device, precision, self.progress, "predict")
        return unknown.split(out, self.model_) if with_unknown else out

    def predict_scored(self, inputs: str | Sequence[str]) -> tuple[np.ndarray, np.ndarray | None]:
        """Class probabilities (columns in ``classes_`` order) and unknown scores (None: the
        model has none)."""
        texts, single = self._texts(inputs)
        logits, scores = self._logits(texts, with_unknown=True)
        probs = self._probabilities(logits)
        return (probs[0], None if scores is None else scores[:1]) if single else (probs, scores)

    def predict_proba(self, inputs: str | Sequence[str]) -> np.ndarray:
        """Class probabilities, columns in ``classes_`` order."""
        texts, single = self._texts(inputs)
        probs = self._probabilities(self._logits(texts))
        return probs[0] if single else probs

    def labelled_outputs(self, data: Any, labels: Sequence[Any] | None = None, with_unknown: bool = False):
        """For labelled data: the texts, their labels, the model's logits (before the
        temperature), and the rows skipped with the reason; with ``with_unknown`` also the
        unknown scores (after the logits; None: the model has none)."""
        self._check_fitted()
        dataset = self._read(data, labels, classes=self.classes_)
        logits, scores = self._logits(dataset.texts, with_unknown=True) if with_unknown else (self._logits(dataset.texts), None)
        skipped = [{"path": p, "reason": r} for p, r in dataset.skipped]
        if with_unknown:
            return list(dataset.texts), dataset.labels, logits.numpy(), scores, skipped
        return list(dataset.texts), dataset.labels, logits.numpy(), skipped

    def unknown_inputs_scores(self, data: Any) -> np.ndarray:
        """Unknown scores of inputs outside the classes: a table of texts (any labels in it
        are ignored), a DataFrame or a list of texts."""
        self._check_fitted()
        if isinstance(data, (list, tuple)):
            texts = [str(t) for t in data if str(t).strip()]
        else:
            texts = list(read_table(data, text_column=self.text_column, encoding=self.encoding, require_labels=False).texts)
        if not texts:
            raise DataError(f"{data!r} holds no text to score")
        return self._logits(texts, with_unknown=True)[1]

    # ------------------------------------------------------------------ persistence

    def _config(self) -> dict[str, Any]:
        if self.kind == "word-vectors":
            vectors = self.model_.backbone.weight
            return {
                "encoder": {
                    "kind": "word-vectors",
                    "name": self.backbone if not self.word_vectors else Path(self.word_vectors).name,
                    "weights_source": getattr(self, "vectors_source_", ""),
                    "licence": getattr(self, "vectors_licence_", ""),
                    "max_length": self.max_length_,
                    "vocab_size": int(vectors.shape[0]),
                    "dim": int(vectors.shape[1]),
                    "lowercase": self.tokenizer_.lowercase,
                    "sequence_encoder": self.sequence_encoder,
                    "hidden_size": self.hidden_size,
                },
                "columns": {"text": self.text_column, "label": self.label_column},
            }
        spec = self._spec
        return {
            "encoder": {
                "name": self.backbone,
                "weights_source": spec.weights_source if spec else "",
                "licence": spec.licence if spec else "",
                "max_length": self.max_length_,
                "model_config": self.model_.backbone.config.to_dict(),
            },
            "columns": {"text": self.text_column, "label": self.label_column},
        }

    def _write_files(self, directory: Path) -> None:
        self.tokenizer_.save_pretrained(str(directory))

    @classmethod
    def _from_config(cls, config: dict[str, Any], path: Path, **kwargs: Any) -> "TextClassifier":
        if config.get("encoder", {}).get("kind") == "word-vectors":
            return cls._from_word_vector_config(config, path, **kwargs)
        quiet_transformers()
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        clf = cls._init_from_config(config, path, **kwargs)
        clf.kind, clf.word_vectors, clf.sequence_encoder, clf.hidden_size = "transformer", None, "none", 0
        try:
            enc = config["encoder"]
            model_config = AutoConfig.for_model(**enc["model_config"])
            clf.max_length_ = int(enc["max_length"])
            clf.backbone = enc["name"]
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelDirError(f"{str(path)!r}/config.json is incomplete or malformed ({exc!r})") from None
        clf._spec = EncoderSpec(name=enc["name"], pooling=clf.head_config.pooling, max_length=clf.max_length_,
                                licence=enc.get("licence", ""), weights_source=enc.get("weights_source", ""))
        clf._source = None
        clf.max_length = clf.max_length_
        columns = config.get("columns", {})
        clf.text_column, clf.label_column, clf.encoding = columns.get("text"), columns.get("label"), None
        try:
            clf.tokenizer_ = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
        except (OSError, ValueError) as exc:
            raise ModelDirError(f"{str(path)!r} has no usable tokenizer files ({exc})") from None
        encoder = AutoModel.from_config(model_config)
        clf.model_ = TextModel(encoder, len(clf.classes_), clf.head_config)
        clf._load_weights(path)
        return clf

    @classmethod
    def _from_word_vector_config(cls, config: dict[str, Any], path: Path, **kwargs: Any) -> "TextClassifier":
        from ..training.wordvec import WordTokenizer, WordVectorModel

        clf = cls._init_from_config(config, path, **kwargs)
        try:
            enc = config["encoder"]
            clf.kind, clf.backbone, clf.word_vectors = "word-vectors", enc["name"], None
            clf.sequence_encoder, clf.hidden_size = enc["sequence_encoder"], int(enc["hidden_size"])
            clf.max_length = clf.max_length_ = int(enc["max_length"])
            shape = (int(enc["vocab_size"]), int(enc["dim"]))
            clf.vectors_source_, clf.vectors_licence_ = enc.get("weights_source", ""), enc.get("licence", "")
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelDirError(f"{str(path)!r}/config.json is incomplete or malformed ({exc!r})") from None
        columns = config.get("columns", {})
        clf.text_column, clf.label_column, clf.encoding = columns.get("text"), columns.get("label"), None
        clf._spec, clf._source = None, None
        try:
            clf.tokenizer_ = WordTokenizer.from_directory(path)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelDirError(f"{str(path)!r} has no usable vocabulary file ({exc})") from None
        clf.model_ = WordVectorModel(torch.zeros(shape), len(clf.classes_), clf.head_config,
                                     sequence_encoder=clf.sequence_encoder, hidden_size=clf.hidden_size)
        clf._load_weights(path)
        return clf
