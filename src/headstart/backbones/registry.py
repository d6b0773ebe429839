"""A registry of specs by name, as timm's ``register_model``: image backbones and text
encoders each keep one (no torch here)."""

from __future__ import annotations

from ..errors import BackboneError


class Registry(dict):
    """Specs by name; registering a taken name is an error unless ``overwrite``."""

    def __init__(self, what: str):
        super().__init__()
        self.what = what

    def register(self, spec, *, overwrite: bool = False):
        if spec.name in self and not overwrite:
            raise BackboneError(f"a {self.what} named {spec.name!r} is already registered")
        self[spec.name] = spec
        return spec
