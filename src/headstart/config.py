"""Small, validated configs that round-trip to JSON.

Each config checks its own fields in ``__post_init__`` so a bad value fails when it is
given, with a message naming the field, not deep inside training.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping, Sequence

from .errors import HeadstartError

TASKS = ("image", "text")
RECIPES = ("auto", "linear-probe", "prototype", "fine-tune", "full", "contrastive")
AUGMENTS = ("none", "light", "classic", "strong")
OPTIMIZERS = ("adam", "adamw", "sgd")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SCHEDULES = ("cosine", "linear")
POOLINGS = {"image": ("avg", "flatten"), "text": ("mean", "cls", "max", "mean+max")}
UNKNOWN_SCORES = ("msp", "energy", "knn", "energy+knn", "msp+knn")  # see headstart.models.unknown
SEQUENCE_ENCODERS = ("none", "bilstm", "cnn")
LOGGERS = ("tensorboard",)
# The export's parity check: largest allowed difference of any probability between the saved
# model and its export (`headstart export --tolerance`). fp32 kernels of PyTorch and onnxruntime
# sum in different orders; through a six-layer encoder and a calibration temperature below 1 that
# noise reached 1.02e-4 on a MiniLM text model whose answers agreed on every input, while an
# export that is wrong (pooling, normalisation, inputs) differs by far more than 1e-3.
EXPORT_TOLERANCE = 1e-3

# What a field left as None becomes, per task. Both start with the probe (a solved linear
# head on the frozen backbone); ``auto`` then tries phase 2 as the classic recipes do it:
# images the Keras one (the top blocks at a lower rate), text the Hugging Face one
# (everything at 2e-5 with linear warmup and decay, a few epochs). ``epochs`` is phase 2's
# (and a hidden-layer head's under linear-probe): a linear head is solved, not iterated.
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "image": {
        "recipe": "auto", "lr": 1e-3, "schedule": "cosine", "warmup_epochs": 1.0,
        "label_smoothing": 0.1, "augment": "light", "patience": 5, "dropout": 0.2,
        "epochs": {"auto": 4, "linear-probe": 30, "fine-tune": 4, "full": 8, "contrastive": 1, "prototype": 1},
    },
    "text": {
        "recipe": "auto", "lr": 1e-3, "backbone_lr": 2e-5, "schedule": "linear", "warmup_epochs": 0.3,
        "label_smoothing": 0.0, "augment": "none", "patience": 2, "dropout": 0.1,
        "epochs": {"auto": 3, "linear-probe": 30, "fine-tune": 3, "full": 3, "contrastive": 1, "prototype": 1},
    },
}
DEFAULT_HEAD_EPOCHS = 20


def _choice(name: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise HeadstartError(f"{name} must be one of {', '.join(options)}; got {value!r}")


def _positive(name: str, value: float | int, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise HeadstartError(f"{name} must be {bound}; got {value}")


class _JsonMixin:
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise HeadstartError(
                f"unknown {cls.__name__} field(s): {', '.join(unknown)}; "
                f"known fields are: {', '.join(sorted(known))}"
            )
        return cls(**data)


_SAME = object()


def option(default: Any = None, help: str | None = None, *, factory: Any = None, flag: str | None = None,
           off: str | None = None, choices: Sequence[str] | None = None, minimum: float | None = None,
           maximum: float | None = None, max_open: bool = False, show_default: bool = False, cli_default: Any = _SAME,
           resume_free: bool = False, file: bool = False, absolute: str | None = None, only: str | None = None) -> Any:
    """A dataclass field with what the command line needs to offer it (``cli.train``'s
    options are generated from these):

    ``help``; ``flag`` when it is not ``--field-name`` (``--no-cache`` sets ``cache`` to
    False); ``off``, the flag that sets a boolean to False (``--no-refit``); ``choices``;
    ``minimum`` / ``maximum`` (``max_open``: the maximum excluded); ``show_default``;
    ``cli_default`` when the command line's default differs (None: the task or the data
    decide); ``resume_free``: may change when a run is resumed (how it reports, not what it
    computes); ``file``: a path argument; ``absolute``: kept absolute in ``run.json``
    (``"always"``, or ``"if-exists"`` for a name that may also be a local path); ``only``:
    the one task that reads it (the other ignores it).
    """
    metadata = {k: v for k, v in dict(
        help=help, flag=flag, off=off, choices=tuple(choices) if choices else None, minimum=minimum, maximum=maximum,
        max_open=max_open, show_default=show_default, resume_free=resume_free, file=file, absolute=absolute, only=only,
    ).items() if v is not None and v is not False}
    if cli_default is not _SAME:
        metadata["cli_default"] = cli_default
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class HeadConfig(_JsonMixin):
    """The new layers on top of the backbone: pool, [dense + ReLU + dropout]*, linear.

    ``pooling``: images ``avg`` | ``flatten``; text ``mean`` (over tokens) | ``cls``.
    """

    pooling: str = option("avg", "Image avg|flatten [avg]; text mean|cls [the encoder's own]; word vectors mean|max|mean+max [cnn: max].",
                          choices=POOLINGS["image"] + POOLINGS["text"], cli_default=None)
    hidden: tuple[int, ...] = option(help="Hidden dense layer width in the head (repeat for more).", factory=tuple)
    dropout: float = option(TASK_DEFAULTS["image"]["dropout"], "Dropout in the head [image 0.2, text 0.1, word-vector CNN 0.5].", cli_default=None)

    def __post_init__(self) -> None:
        _choice("pooling", self.pooling, POOLINGS["image"] + POOLINGS["text"])
        self.hidden = tuple(int(h) for h in self.hidden)
        for h in self.hidden:
            _positive("hidden layer width", h)
        if not 0.0 <= self.dropout < 1.0:
            raise HeadstartError(f"dropout must be in [0, 1); got {self.dropout}")


@dataclass
class TrainConfig(_JsonMixin):
    """How to train: the recipe and its knobs. ``None`` means "the task's default"
    (``TASK_DEFAULTS``); :meth:`resolved` fills them in.

    ``lr`` is the new head's learning rate; ``backbone_lr`` that of the pretrained weights
    being trained (default: images ``lr / 10``, text 2e-5).

    Validation: ``val_split`` None (the default) cross-validates over ``folds`` stratified
    folds and refits on every row; a fraction holds that share out instead. ``refit``
    (default: on without a separate validation set) trains the final model on every labelled
    row. ``time_budget`` (seconds for the whole fit; 0 = no limit; default 600 on a CPU, none
    on a GPU) bounds what ``auto`` tries and the refits.

    Unknown inputs: a model with one label per row answers ``unknown`` for an input whose
    unknown score (``unknown_score``: msp, energy, knn, energy+knn, msp+knn, or auto:
    energy+knn where knn is possible, else energy; :mod:`headstart.models.unknown`) is over a
    threshold that a share ``unknown_rate`` of in-scope held-out rows exceeds (0 = never
    answer unknown).
    """

    task: str = option("image", "Inferred from DATA when omitted: a folder (or a CSV with a path column) is image, a table of texts is text.",
                       choices=TASKS, cli_default=None)
    recipe: str | None = option(None, "auto: the probe, then fine-tuning (or, with under 20 rows in a class, prototypes for images; contrastive for transformers while the smallest class has at most 256) when data and time allow, kept by a sign test on the same held-out rows. linear-probe: frozen backbone, the head solved on cached features. prototype: frozen backbone, nearest class mean (what auto tries for images when a class has under 20). fine-tune: that head, then the top blocks. full: everything. contrastive (transformer text): the encoder tuned so same-label texts embed together, then the head solved; what auto tries while the smallest class has at most 256 rows. [auto; word vectors linear-probe]",
                                choices=RECIPES)
    epochs: int | None = option(None, "Epochs of the phase that trains backbone weights [image: auto and fine-tune 4, full 8; text: 3; word vectors: 20]. A linear head is solved, so epochs do not apply to it; with --hidden they bound the head's training [30].")
    head_epochs: int | None = option(None, "Epochs bound for a head with --hidden layers before fine-tuning [20]; a linear head is solved instead.")
    batch_size: int = option(32, "Examples per optimizer step; in a distributed run, the global batch shared by all processes.", show_default=True)
    grad_accum: int = option(1, "Accumulate gradients over this many batches per optimizer step (effective batch = batch size x N).", show_default=True)
    lr: float | None = option(None, "Learning rate of the new head [1e-3].")
    backbone_lr: float | None = option(None, "Learning rate of the unfrozen pretrained weights [image lr/10, text 2e-5].")
    unfreeze_blocks: int = option(2, "fine-tune: how many top backbone blocks (text: layers) to unfreeze.", show_default=True)
    layer_decay: float | None = option(None, "Multiply the backbone LR by this per block going down.")
    optimizer: str = option("adamw", choices=OPTIMIZERS, show_default=True)
    weight_decay: float = option(0.01, show_default=True)
    label_smoothing: float | None = option(None, "[image 0.1, text 0]")
    schedule: str | None = option(None, "Decay after warmup [image cosine, text linear].", choices=SCHEDULES)
    warmup_epochs: float | None = option(None, "Linear warmup length in epochs [image 1, text 0.3].")
    patience: int | None = option(None, "Early-stopping patience in epochs, 0 = never stop early [image 5, text 2, word vectors 3].")
    augment: str | None = option(None, "Image augmentation [light]. classic = the Keras list (rotation 40, shifts 0.2, shear 0.2, zoom 0.2, flip, nearest fill).",
                                 choices=AUGMENTS, only="image")
    class_weight: str | None = option(None, "Weight the loss by inverse class frequency.", choices=("balanced",))
    ema: float | None = option(None, "Evaluate and keep an exponential moving average of the weights with this decay (e.g. 0.98).")
    class_names: bool = option(True, "Text (transformer encoders, one label per row): leave the class names out of training. By default each class's name, read as a text (card_arrival -> 'card arrival'), is one more training example of its class for the solved head, at a weight chosen out-of-fold with C (0 drops the names when they mislead); names that differ only in digits or punctuation (0/1, LABEL_0/LABEL_1) are never used.",
                               flag="--no-class-names", only="text")
    cache_views: int = option(1, "Image: feature-cache views per image for frozen phases (1 = eval view only).", show_default=True, only="image")
    cache: bool = option(True, "Compute frozen-backbone features afresh and store nothing.", flag="--no-cache")
    cache_dir: str | None = option(None, "Where frozen-backbone features (images, text embeddings) are cached, and where fetched backbones are looked for [$HEADSTART_CACHE_DIR, else ~/.cache/headstart].",
                                   absolute="always")
    compile: bool = option(False, "Image: torch.compile the frozen feature extraction and the fine-tune/full training (minutes to start on a CPU; for long runs).",
                           only="image")
    val_split: float | None = option(None, "Hold out this stratified fraction for validation instead of cross-validating (when --val is not given).")
    folds: int = option(5, "Without --val: stratified cross-validation folds that choose the head's regularisation and the recipe and score every row out-of-fold (fewer when a class is smaller).",
                        minimum=2, show_default=True)
    refit: bool | None = option(None, "Train the final model on every labelled row after validating [on without --val, off with it].", off="--no-refit")
    time_budget: float | None = option(None, "Seconds for the whole fit: auto tries fine-tuning and refits only within it [600 on a CPU, no limit on a GPU; 0 = no limit].",
                                       minimum=0)
    unknown_rate: float = option(0.05, "One label per row: the share of in-scope inputs the model may answer 'unknown' (its threshold on the unknown score is set on held-out in-scope rows); 0 = always answer with a class.",
                                 minimum=0, maximum=0.5, max_open=True, show_default=True)
    unknown_score: str = option("auto", "How unlike the training data an input is: msp (1 - top probability), energy (-logsumexp of the logits), knn (distance to the 10th nearest training example's features), or a logit score and knn together. knn needs held-out rows the model's features never trained on: a frozen backbone, or fine-tuning without a refit on every row. auto: energy+knn where knn is possible, else energy.",
                                choices=("auto",) + UNKNOWN_SCORES, show_default=True)
    seed: int = option(0, show_default=True)
    precision: str = option("auto", choices=PRECISIONS, show_default=True)
    num_workers: int | None = option(None, "Image: DataLoader workers [a quarter of the cores, at least 1].", flag="--workers", only="image")
    device: str = option("auto", show_default=True)
    head: HeadConfig = field(default_factory=HeadConfig)

    def __post_init__(self) -> None:
        if isinstance(self.head, dict):
            self.head = HeadConfig.from_dict(self.head)
        _choice("task", self.task, TASKS)
        if self.recipe is not None:
            _choice("recipe", self.recipe, RECIPES)
        if self.recipe == "contrastive" and self.task != "text":
            raise HeadstartError("the contrastive recipe tunes a text encoder; for images use auto, linear-probe, "
                                 "fine-tune or full")
        if self.recipe == "prototype" and self.head.hidden:
            raise HeadstartError("the prototype recipe is a linear head (one mean per class); drop --hidden, or use "
                                 "--recipe linear-probe for a head with hidden layers")
        if self.augment is not None:
            _choice("augment", self.augment, AUGMENTS)
        if self.schedule is not None:
            _choice("schedule", self.schedule, SCHEDULES)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("precision", self.precision, PRECISIONS)
        _choice(f"pooling for {self.task}", self.head.pooling, POOLINGS[self.task])
        if self.class_weight not in (None, "balanced"):
            raise HeadstartError(f"class_weight must be None or 'balanced'; got {self.class_weight!r}")
        for name in ("epochs", "head_epochs"):
            value = getattr(self, name)
            if value is not None:
                _positive(name, value, allow_zero=(name == "head_epochs"))
        _positive("batch_size", self.batch_size)
        _positive("grad_accum", self.grad_accum)
        for name in ("lr", "backbone_lr"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))
        _positive("unfreeze_blocks", self.unfreeze_blocks)
        if self.ema is not None and not 0.0 < self.ema < 1.0:
            raise HeadstartError(f"ema must be in (0, 1), e.g. 0.98; got {self.ema}")
        if self.layer_decay is not None and not 0.0 < self.layer_decay <= 1.0:
            raise HeadstartError(f"layer_decay must be in (0, 1]; got {self.layer_decay}")
        _positive("weight_decay", self.weight_decay, allow_zero=True)
        if self.label_smoothing is not None and not 0.0 <= self.label_smoothing < 1.0:
            raise HeadstartError(f"label_smoothing must be in [0, 1); got {self.label_smoothing}")
        if self.warmup_epochs is not None:
            _positive("warmup_epochs", self.warmup_epochs, allow_zero=True)
        if self.patience is not None:
            _positive("patience", self.patience, allow_zero=True)
        _positive("cache_views", self.cache_views)
        if self.val_split is not None and not 0.0 < self.val_split < 1.0:
            raise HeadstartError(f"val_split must be in (0, 1); got {self.val_split}")
        if self.folds < 2:
            raise HeadstartError(f"folds must be at least 2; got {self.folds}")
        if self.time_budget is not None:
            _positive("time_budget", self.time_budget, allow_zero=True)
        if not 0.0 <= self.unknown_rate < 0.5:
            raise HeadstartError(f"unknown_rate is the share of in-scope inputs answered 'unknown', in [0, 0.5) "
                                 f"(0 = never); got {self.unknown_rate}")
        _choice("unknown_score", self.unknown_score, ("auto",) + UNKNOWN_SCORES)
        if self.num_workers is not None:
            _positive("num_workers", self.num_workers, allow_zero=True)

    def resolved(self) -> "TrainConfig":
        """A copy with every task default filled in. ``patience=0`` never stops early."""
        d = TASK_DEFAULTS[self.task]
        out = dataclasses.replace(self)
        out.recipe = self.recipe or d["recipe"]
        out.epochs = self.epochs if self.epochs is not None else d["epochs"][out.recipe]
        if out.recipe not in ("fine-tune", "auto"):
            out.head_epochs = 0
        elif self.head_epochs is None:
            out.head_epochs = DEFAULT_HEAD_EPOCHS
        out.lr = self.lr if self.lr is not None else d["lr"]
        if self.backbone_lr is None:
            out.backbone_lr = d.get("backbone_lr", out.lr / 10)
        for name in ("schedule", "warmup_epochs", "label_smoothing", "augment", "patience"):
            if getattr(out, name) is None:
                setattr(out, name, d[name])
        return out


@dataclass
class ModelOptions(_JsonMixin):
    """What model a run builds, besides how it trains (:class:`TrainConfig`): the backbone,
    and how a text table's columns and labels are read. ``None`` means the task's default."""

    backbone: str | None = option(None, "Image: efficientnet_lite0 (default) or any timm name. Text: minilm-l6 (default), mpnet-base (after `headstart fetch mpnet-base`), a local Hugging Face directory or a hub id. See `headstart backbones`.",
                                  absolute="if-exists")
    weights: str | None = option(None, "Image: local .pth/.safetensors state dict for the backbone, or 'none' for random init.",
                                 absolute="if-exists")
    text_column: str | None = option(None, "Text: the column holding the texts [auto: text, sentence, review, content].")
    label_column: str | None = option(None, "Label column [auto: label, labels, category, sentiment, class].")
    multi_label: bool | None = option(None, "Several labels per row (a sigmoid per label, thresholds tuned on held-out rows) or one class per row [multi-label when a label cell holds the --label-sep].",
                                      off="--single-label")
    label_sep: str = option(";", "What joins several labels in one label cell.", show_default=True)
    max_length: int | None = option(None, "Text: token limit; longer texts are truncated and counted [the encoder's: 256 for minilm-l6, 384 for mpnet-base].")
    encoding: str | None = option(None, "Text: file encoding when not UTF-8 (e.g. latin-1).")
    word_vectors: str | None = option(None, "Text: a word-vector file (GloVe, word2vec .txt/.bin, fastText .vec) as the backbone.",
                                      file=True, absolute="always")
    sequence_encoder: str | None = option(None, "Word vectors: a small encoder between the vectors and the pooling [cnn: filters 3, 4, 5 words wide, max pooling, dropout 0.5]; none = the pooled vectors, whose head is solved.",
                                          choices=SEQUENCE_ENCODERS)
    hidden_size: int = option(128, "Word vectors: BiLSTM units per direction / CNN filters per width.", show_default=True)

    def __post_init__(self) -> None:
        if self.sequence_encoder is not None:
            _choice("sequence_encoder", self.sequence_encoder, SEQUENCE_ENCODERS)
        _positive("hidden_size", self.hidden_size)
        if self.max_length is not None and self.max_length < 2:
            raise HeadstartError(f"max_length must be at least 2; got {self.max_length}")


@dataclass
class RunOptions(_JsonMixin):
    """Where a run reads its data and writes its directory, and how it reports."""

    data: str | None = option(None, file=True, absolute="always")
    val_data: str | None = option(None, "Separate validation data (folder, CSV, TSV, JSON Lines).", flag="--val",
                                  file=True, absolute="always")
    out: str | None = option(None, "Run directory [runs/<backbone>-<time>].")
    quiet: bool = option(False, "Only warnings and the final result.", resume_free=True)
    progress: bool | None = option(None, "Progress bars [on when stderr is a terminal].", off="--no-progress", resume_free=True)
    strict: bool = option(False, "Refuse to train when the data check finds an error, an unreadable file or train/validation leakage (see `headstart check`).")
    log_to: str | None = option(None, "Also log per-epoch scalars to TensorBoard (RUN_DIR/tensorboard; needs headstart[tensorboard]).",
                                flag="--log", choices=LOGGERS, resume_free=True)

    def __post_init__(self) -> None:
        if self.log_to is not None:
            _choice("log", self.log_to, LOGGERS)


@functools.cache
def option_fields() -> Mapping[str, tuple[type, dataclasses.Field]]:
    """Every field a training run is set by, by name (the names are unique across
    :class:`RunOptions`, :class:`ModelOptions`, :class:`TrainConfig` and :class:`HeadConfig`),
    with the dataclass it belongs to. Built once; read-only."""
    out: dict[str, tuple[type, dataclasses.Field]] = {}
    for cls in (RunOptions, ModelOptions, TrainConfig, HeadConfig):
        for f in dataclasses.fields(cls):
            if f.name != "head":
                assert f.name not in out, f"option {f.name!r} is defined twice"
                out[f.name] = (cls, f)
    return MappingProxyType(out)


def command_line_default(f: dataclasses.Field) -> Any:
    """What a field is when the command line does not set it: its ``cli_default`` where the
    task or the data decide, else the dataclass default."""
    if "cli_default" in f.metadata:
        return f.metadata["cli_default"]
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
