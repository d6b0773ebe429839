"""headstart: transfer learning for images and text, offline by default."""

__version__ = "0.1.0"

from .errors import HeadstartError  # noqa: E402

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

# Imported on first use: torch takes a second to import and transformers several, and the
# light ONNX predictor (headstart.runtime) must import on a machine without either.
_LAZY = {
    "BackboneSpec": "backbones",
    "Preprocessing": "backbones",
    "list_backbones": "backbones",
    "register_backbone": "backbones",
    "load": "loading",
    "HeadConfig": "config",
    "TrainConfig": "config",
    "ImageClassifier": "image",
    "TextClassifier": "text",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'headstart' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
