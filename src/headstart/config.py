"""Small, validated configs that round-trip to JSON.

Each config checks its own fields in ``__post_init__`` so a bad value fails when it is
given, with a message naming the field, not deep inside training.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .errors import HeadstartError

RECIPES = ("linear-probe", "fine-tune", "full")
AUGMENTS = ("none", "light", "classic", "strong")
OPTIMIZERS = ("adam", "adamw", "sgd")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
POOLINGS = ("avg", "flatten")

# Epochs of the trainable phases when the user gives none: the head trains on cached
# features (seconds per epoch), the unfrozen backbone on images (minutes per epoch on a CPU).
DEFAULT_EPOCHS = {"linear-probe": 30, "fine-tune": 4, "full": 8}
DEFAULT_HEAD_EPOCHS = 20
DEFAULT_LR = {"linear-probe": 1e-3, "fine-tune": 1e-3, "full": 3e-4}


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
    """The new layers on top of the backbone: pool, [dense + ReLU + dropout]*, linear."""

    pooling: str = "avg"
    hidden: tuple[int, ...] = ()
    dropout: float = 0.2

    def __post_init__(self) -> None:
        _choice("pooling", self.pooling, POOLINGS)
        self.hidden = tuple(int(h) for h in self.hidden)
        for h in self.hidden:
            _positive("hidden layer width", h)
        if not 0.0 <= self.dropout < 1.0:
            raise HeadstartError(f"dropout must be in [0, 1); got {self.dropout}")


@dataclass
class TrainConfig(_JsonMixin):
    """How to train: the recipe and its knobs. ``None`` means "the recipe's default"."""

    recipe: str = "fine-tune"
    epochs: int | None = None
    head_epochs: int | None = None
    batch_size: int = 32
    lr: float | None = None
    finetune_lr_factor: float = 0.1
    unfreeze_blocks: int = 2
    layer_decay: float | None = None
    optimizer: str = "adamw"
    weight_decay: float = 0.01
    label_smoothing: float = 0.1
    warmup_epochs: float = 1.0
    patience: int | None = 5
    augment: str = "light"
    class_weight: str | None = None
    cache_views: int = 1
    val_split: float = 0.2
    seed: int = 0
    precision: str = "auto"
    num_workers: int | None = None
    device: str = "auto"
    head: HeadConfig = field(default_factory=HeadConfig)

    def __post_init__(self) -> None:
        if isinstance(self.head, dict):
            self.head = HeadConfig.from_dict(self.head)
        _choice("recipe", self.recipe, RECIPES)
        _choice("augment", self.augment, AUGMENTS)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("precision", self.precision, PRECISIONS)
        if self.class_weight not in (None, "balanced"):
            raise HeadstartError(f"class_weight must be None or 'balanced'; got {self.class_weight!r}")
        for name in ("epochs", "head_epochs"):
            value = getattr(self, name)
            if value is not None:
                _positive(name, value, allow_zero=(name == "head_epochs"))
        _positive("batch_size", self.batch_size)
        if self.lr is not None:
            _positive("lr", self.lr)
        if not 0.0 < self.finetune_lr_factor <= 1.0:
            raise HeadstartError(f"finetune_lr_factor must be in (0, 1]; got {self.finetune_lr_factor}")
        _positive("unfreeze_blocks", self.unfreeze_blocks)
        if self.layer_decay is not None and not 0.0 < self.layer_decay <= 1.0:
            raise HeadstartError(f"layer_decay must be in (0, 1]; got {self.layer_decay}")
        _positive("weight_decay", self.weight_decay, allow_zero=True)
        if not 0.0 <= self.label_smoothing < 1.0:
            raise HeadstartError(f"label_smoothing must be in [0, 1); got {self.label_smoothing}")
        _positive("warmup_epochs", self.warmup_epochs, allow_zero=True)
        if self.patience is not None:
            _positive("patience", self.patience)
        _positive("cache_views", self.cache_views)
        if not 0.0 < self.val_split < 1.0:
            raise HeadstartError(f"val_split must be in (0, 1); got {self.val_split}")
        if self.num_workers is not None:
            _positive("num_workers", self.num_workers, allow_zero=True)

    @property
    def resolved_epochs(self) -> int:
        return self.epochs if self.epochs is not None else DEFAULT_EPOCHS[self.recipe]

    @property
    def resolved_head_epochs(self) -> int:
        if self.recipe != "fine-tune":
            return 0
        return self.head_epochs if self.head_epochs is not None else DEFAULT_HEAD_EPOCHS

    @property
    def resolved_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.recipe]
