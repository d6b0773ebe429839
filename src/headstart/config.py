"""Small, validated configs that round-trip to JSON.

Each config checks its own fields in ``__post_init__`` so a bad value fails when it is
given, with a message naming the field, not deep inside training.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .errors import HeadstartError

TASKS = ("image", "text")
RECIPES = ("auto", "linear-probe", "prototype", "fine-tune", "full", "contrastive")
AUGMENTS = ("none", "light", "classic", "strong")
OPTIMIZERS = ("adam", "adamw", "sgd")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SCHEDULES = ("cosine", "linear")
POOLINGS = {"image": ("avg", "flatten"), "text": ("mean", "cls", "max", "mean+max")}

# What a field left as None becomes, per task. Both start with the probe (a solved linear
# head on the frozen backbone); ``auto`` then tries phase 2 as the classic recipes do it:
# images the Keras one (the top blocks at a lower rate), text the Hugging Face one
# (everything at 2e-5 with linear warmup and decay, a few epochs). ``epochs`` is phase 2's
# (and a hidden-layer head's under linear-probe): a linear head is solved, not iterated.
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "image": {
        "recipe": "auto", "lr": 1e-3, "schedule": "cosine", "warmup_epochs": 1.0,
        "label_smoothing": 0.1, "augment": "light", "patience": 5,
        "epochs": {"auto": 4, "linear-probe": 30, "fine-tune": 4, "full": 8, "contrastive": 1, "prototype": 1},
    },
    "text": {
        "recipe": "auto", "lr": 1e-3, "backbone_lr": 2e-5, "schedule": "linear", "warmup_epochs": 0.3,
        "label_smoothing": 0.0, "augment": "none", "patience": 2,
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


@dataclass
class HeadConfig(_JsonMixin):
    """The new layers on top of the backbone: pool, [dense + ReLU + dropout]*, linear.

    ``pooling``: images ``avg`` | ``flatten``; text ``mean`` (over tokens) | ``cls``.
    """

    pooling: str = "avg"
    hidden: tuple[int, ...] = ()
    dropout: float = 0.2

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
    energy+knn where knn is possible, else energy; :mod:`headstart.unknown`) is over a
    threshold that a share ``unknown_rate`` of in-scope held-out rows exceeds (0 = never
    answer unknown).
    """

    task: str = "image"
    recipe: str | None = None
    epochs: int | None = None
    head_epochs: int | None = None
    batch_size: int = 32
    grad_accum: int = 1
    lr: float | None = None
    backbone_lr: float | None = None
    unfreeze_blocks: int = 2
    layer_decay: float | None = None
    optimizer: str = "adamw"
    weight_decay: float = 0.01
    label_smoothing: float | None = None
    schedule: str | None = None
    warmup_epochs: float | None = None
    patience: int | None = None
    augment: str | None = None
    class_weight: str | None = None
    ema: float | None = None
    cache_views: int = 1
    cache: bool = True
    cache_dir: str | None = None
    compile: bool = False
    val_split: float | None = None
    folds: int = 5
    refit: bool | None = None
    time_budget: float | None = None
    unknown_rate: float = 0.05
    unknown_score: str = "auto"
    seed: int = 0
    precision: str = "auto"
    num_workers: int | None = None
    device: str = "auto"
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
        _choice("unknown_score", self.unknown_score, ("auto", "msp", "energy", "knn", "energy+knn", "msp+knn"))
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
