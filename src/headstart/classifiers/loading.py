"""Loading any headstart model directory as the classifier of its task (above the fronts,
so that no front needs to know the others)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .artifact import read_config
from .base import Classifier
from ..errors import ModelDirError


def load(path: str | Path, **kwargs: Any) -> Classifier:
    """Load any headstart model directory as the classifier of its task."""
    config = read_config(path)
    task = config.get("task")
    if task == "image":
        from .image import ImageClassifier

        return ImageClassifier._from_config(config, Path(path), **kwargs)
    if task == "text":
        from .text import TextClassifier

        return TextClassifier._from_config(config, Path(path), **kwargs)
    raise ModelDirError(f"{str(path)!r} holds a model of unknown task {task!r}; upgrade headstart")
