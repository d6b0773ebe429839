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
# the same module objects, so code written against them keeps working. (headstart.data,
# .backbones, .training and .evaluation are folders now: their old contents are in
# data.imagesets, backbones.image, training.loop and evaluation.metrics.)
MOVED = {
    "labels": "data.labels", "splits": "data.splits", "images": "data.images",
    "textdata": "data.textdata", "words": "data.words", "check": "data.check", "demo": "data.demo",
    "registry": "backbones.registry", "encoders": "backbones.encoders",
    "vectors": "backbones.vectors", "transforms": "backbones.transforms", "fetch": "backbones.fetch",
    "model": "models.networks", "unknown": "models.unknown",
    "transfer": "training.transfer", "solver": "training.solver",
    "losses": "training.losses", "contrastive": "training.contrastive", "tokens": "training.tokens",
    "image_recipe": "training.image_recipe", "wordvec": "training.wordvec", "checkpoint": "training.checkpoint",
    "distributed": "training.distributed", "cache": "training.cache",
    "classifier": "classifiers.base", "image": "classifiers.image", "text": "classifiers.text",
    "loading": "classifiers.loading", "artifact": "classifiers.artifact",
    "calibration": "evaluation.calibration",
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
        if prefix != __name__ or old not in MOVED:
            return None
        new = f"{__name__}.{MOVED[old]}"
        warnings.warn(f"{fullname} moved to {new}; import that", DeprecationWarning, stacklevel=2)
        module = importlib.import_module(new)
        own_spec = module.__spec__

        class Loader:
            create_module = staticmethod(lambda spec: module)
            # the import system sets __spec__ on the module it loads: give the module its own back
            exec_module = staticmethod(lambda m: setattr(m, "__spec__", own_spec))

        return importlib.util.spec_from_loader(fullname, Loader())


import sys as _sys  # noqa: E402

_sys.meta_path.append(_MovedModules)
