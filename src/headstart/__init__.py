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
# light ONNX predictor (headstart.deploy.runtime) must import on a machine without either.
_LAZY = {
    "BackboneSpec": "backbones.image",
    "Preprocessing": "backbones.image",
    "list_backbones": "backbones.image",
    "register_backbone": "backbones.image",
    "load": "classifiers.loading",
    "HeadConfig": "config",
    "TrainConfig": "config",
    "ImageClassifier": "classifiers.image",
    "TextClassifier": "classifiers.text",
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


# Modules that moved into folders: the old names still import (with a DeprecationWarning), as
# the same module objects, so code written against them keeps working.
MOVED = {
    "labels": "data.labels", "splits": "data.splits", "images": "data.images", "data": "data.imagesets",
    "textdata": "data.textdata", "words": "data.words", "check": "data.check", "demo": "data.demo",
    "registry": "backbones.registry", "backbones": "backbones.image", "encoders": "backbones.encoders",
    "vectors": "backbones.vectors", "transforms": "backbones.transforms", "fetch": "backbones.fetch",
    "model": "models.networks", "unknown": "models.unknown",
    "training": "training.loop", "transfer": "training.transfer", "solver": "training.solver",
    "losses": "training.losses", "contrastive": "training.contrastive", "tokens": "training.tokens",
    "image_recipe": "training.image_recipe", "wordvec": "training.wordvec", "checkpoint": "training.checkpoint",
    "distributed": "training.distributed", "cache": "training.cache",
    "classifier": "classifiers.base", "image": "classifiers.image", "text": "classifiers.text",
    "loading": "classifiers.loading", "artifact": "classifiers.artifact",
    "evaluation": "evaluation.metrics", "calibration": "evaluation.calibration",
    "report": "reports.report", "plots": "reports.plots", "card": "reports.card", "tblog": "reports.tblog",
    "export": "deploy.export", "runtime": "deploy.runtime", "serve": "deploy.serve", "studio": "deploy.studio",
}


class _MovedModules:
    """Finds ``headstart.<old name>`` as the module it moved to."""

    @staticmethod
    def find_spec(fullname, path=None, target=None):
        import importlib
        import importlib.util
        import warnings

        prefix, _, old = fullname.partition(".")
        # headstart.data, .backbones, .training and .evaluation are folders now: their own
        # names find the folder; only the module names that no longer exist are redirected
        if prefix != __name__ or old not in MOVED or old in ("data", "backbones", "training", "evaluation"):
            return None
        new = f"{__name__}.{MOVED[old]}"
        warnings.warn(f"{fullname} moved to {new}; import that", DeprecationWarning, stacklevel=2)
        module = importlib.import_module(new)

        class Loader:
            create_module = staticmethod(lambda spec: module)
            exec_module = staticmethod(lambda m: None)

        return importlib.util.spec_from_loader(fullname, Loader())


import sys as _sys  # noqa: E402

_sys.meta_path.append(_MovedModules)
