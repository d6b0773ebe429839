"""headstart: transfer learning for images and text, offline by default."""

__version__ = "0.1.0"

from .backbones import BackboneSpec, Preprocessing, list_backbones, register_backbone  # noqa: E402
from .classifier import load  # noqa: E402
from .config import HeadConfig, TrainConfig  # noqa: E402
from .errors import HeadstartError  # noqa: E402
from .image import ImageClassifier  # noqa: E402

__all__ = [
    "BackboneSpec",
    "HeadConfig",
    "HeadstartError",
    "ImageClassifier",
    "Preprocessing",
    "TextClassifier",
    "TrainConfig",
    "list_backbones",
    "load",
    "register_backbone",
    "__version__",
]


def __getattr__(name: str):
    # transformers takes seconds to import: only text users pay for it.
    if name == "TextClassifier":
        from .text import TextClassifier

        return TextClassifier
    raise AttributeError(f"module 'headstart' has no attribute {name!r}")
