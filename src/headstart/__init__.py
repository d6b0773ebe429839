"""headstart: transfer learning for images and text, offline by default."""

__version__ = "0.1.0"

from .backbones import BackboneSpec, Preprocessing, list_backbones, register_backbone  # noqa: E402
from .config import HeadConfig, TrainConfig  # noqa: E402
from .errors import HeadstartError  # noqa: E402
from .image import ImageClassifier  # noqa: E402

__all__ = [
    "BackboneSpec",
    "HeadConfig",
    "HeadstartError",
    "ImageClassifier",
    "Preprocessing",
    "TrainConfig",
    "list_backbones",
    "register_backbone",
    "__version__",
]
