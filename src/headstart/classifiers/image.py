"""``ImageClassifier``: the scikit-learn style front for image transfer learning."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
import torch
from PIL import Image

from ..backbones.image import BackboneSpec, Preprocessing, create_backbone, resolve_spec
from .base import Classifier
from ..data.imagesets import ImageDataset, ImageSet, image_files, require_two_classes, scan_folder
from ..data.images import expand_inputs
from ..errors import DataError, HeadstartError, ModelDirError
from ..objectives import announce_objective, check_separator
from ..models.networks import ImageModel, feature_dim
from ..training.image_recipe import predict_logits, run_image_recipe
from ..training.loop import resolve_device, resolve_precision, seed_everything
from ..backbones.transforms import eval_resize, eval_transform
from ..models import unknown

log = logging.getLogger("headstart")

ImageInput = Union[str, Path, Image.Image]


class ImageClassifier(Classifier):
    """A pretrained image backbone with a new head, trained by a transfer recipe.

    >>> clf = ImageClassifier(backbone="efficientnet_lite0").fit("photos/")
    >>> clf.predict("some.jpg")
    'tulip'

    Keyword arguments other than the head's (``hidden``, ``dropout``, ``pooling``) are
    :class:`~headstart.config.TrainConfig` fields (``recipe``, ``epochs``, ``lr``, ...).
    Learned attributes end in ``_``: ``classes_``, ``history_``, ``val_metrics_``,
    ``skipped_``, ``model_``.
    """

    task = "image"
    multi_label: bool | None = None
    label_sep = ";"

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        *,
        weights: str | None = None,
        hidden: Sequence[int] = (),
        dropout: float | None = None,
        pooling: str = "avg",
        multi_label: bool | None = None,
        label_sep: str = ";",
        progress: bool = False,
        **train: Any,
    ):
        super().__init__(hidden=hidden, dropout=dropout, pooling=pooling, progress=progress, **train)
        self.backbone = backbone
        self.weights = weights
        self.multi_label, self.label_sep = multi_label, check_separator(label_sep)

    def _scan(self, data: str | Path | ImageSet, classes: Sequence[str] | None = None,
              multi_label: bool | None = None) -> ImageSet:
        """A labelled set read as this model reads labels (a trained model: as it learned them)."""
        if isinstance(data, ImageSet):
            return data
        trained = classes is not None and hasattr(self, "classes_")
        multi = self.objective_.multi_label if trained else self.multi_label if multi_label is None else multi_label
        sep = (self.objective_.separator if trained and self.objective_.multi_label else None) or self.label_sep
        return scan_folder(data, classes=classes, multi_label=multi, label_sep=sep)

    # ------------------------------------------------------------------ training

    def _build(self, spec: BackboneSpec, num_classes: int, pretrained: bool) -> ImageModel:
        backbone = create_backbone(spec, self.weights, pooling=self.head_config.pooling, pretrained=pretrained)
        dim = feature_dim(backbone, spec.preprocessing.input_size)
        return ImageModel(backbone, num_classes, self.head_config, dim)

    def fit(self, data: str | Path | ImageSet, val: str | Path | ImageSet | None = None) -> "ImageClassifier":
        """Train on a class folder (or CSV of path,label). Without ``val`` every image both
        trains and validates, by stratified k-fold cross-validation (``folds``) and a refit
        on all of them (or a holdout of ``val_split``); with ``val`` that set validates."""
        cfg = self.config.resolved()
        full = self._scan(data)
        val_set = None if val is None else self._scan(val, classes=full.classes, multi_label=full.labels.ndim == 2)
        require_two_classes(full.labels, full.classes)
        self.objective_ = announce_objective(full.labels, self.label_sep, self.multi_label)
        empty = [c for c, n in full.class_counts().items() if n == 0]
        if empty:
            raise DataError(
                f"class folder(s) {', '.join(map(repr, empty))} have no training images; "
                "add images or remove the folder"
            )
        spec = resolve_spec(self.backbone)
        self.spec_, self.preprocessing_, self.classes_ = spec, spec.preprocessing, list(full.classes)
        self.skipped_ = list(full.skipped) + (list(val_set.skipped) if val_set is not None else [])
        log.info(
            "data: %d training and %d validation images in %d classes; %d files skipped",
            len(full), len(val_set) if val_set is not None else 0, len(self.classes_), len(self.skipped_),
        )
        for path, reason in self.skipped_[:20]:
            log.info("skipped %s (%s)", path, reason)
        seed_everything(cfg.seed)  # the new head's initial weights follow the seed too
        self.model_ = self._build(spec, len(self.classes_), pretrained=True)
        result = run_image_recipe(
            self.model_, full, val_set, cfg, spec.preprocessing, progress=self.progress, cache_parts=self._cache_parts(spec)
        )
        self.model_ = result.model
        self.config = cfg
        self.skipped_ += result.failed
        items = list(full.paths) + (list(val_set.paths) if val_set is not None else [])
        self._record_fit(
            result,
            {"source": full.source or str(data), "n": len(full), "per_class": full.class_counts()},
            len(self.skipped_),
            items=[str(p) for p in items],
        )
        return self

    def _cache_parts(self, spec: BackboneSpec) -> dict[str, Any] | None:
        """What identifies the frozen backbone's features, for the feature cache; None when
        its weights have no stable identity (random init)."""
        from .. import __version__
        from ..training.cache import file_digest

        if self.weights == "none":
            return None
        if self.weights:
            weights = file_digest(self.weights)
        elif spec.local_weights is not None and spec.local_weights():
            weights = file_digest(spec.local_weights())
        else:
            weights = f"timm-pretrained:{spec.name}"
        return {
            "headstart": __version__, "arch": spec.arch, "weights": weights, "pooling": self.head_config.pooling,
            "preprocessing": spec.preprocessing.to_dict(), "create_kwargs": spec.create_kwargs,
        }

    # ------------------------------------------------------------------ prediction

    def _logits(self, items: list, with_unknown: bool = False):
        """Logits of the items that decode, their rows and the failures; with
        ``with_unknown``, also the unknown scores of those rows (None: the model has none)."""
        self._check_fitted()
        device = resolve_device(self.config.device)
        precision = resolve_precision(self.config.precision, device)
        # The memory format training used: the same convolution kernels, the same numbers.
        self.model_.to(device, memory_format=torch.channels_last)
        dataset = ImageDataset(items, None, eval_transform(self.preprocessing_), draft=eval_resize(self.preprocessing_))
        net = unknown.runner(self.model_) if with_unknown else self.model_
        out, rows, failed = predict_logits(
            net, dataset, batch_size=self.config.batch_size, device=device, precision=precision,
            num_workers=self.config.num_workers if len(items) > 64 else 0, progress=self.progress,
        )
        if not with_unknown:
            return out, rows, failed
        logits, scores = unknown.split(out, self.model_)
        return logits, scores, rows, failed

    def _items(self, inputs: ImageInput | Sequence[ImageInput]) -> tuple[list, bool]:
        self._check_fitted()
        if isinstance(inputs, (str, Path, Image.Image)):
            inputs, single = [inputs], True
        else:
            single = False
        items: list = []
        for item in inputs:
            if isinstance(item, Image.Image):
                items.append(item)
            else:
                items.extend(expand_inputs([item]))
                single = single and not Path(item).is_dir()
        return items, single

    def predict_scored_items(self, items: list) -> tuple[np.ndarray, np.ndarray | None, list[str | None]]:
        """Probabilities for each item (rows of NaN where an item could not be decoded), the
        unknown score of each (None: the model has none) and the decode error of each item
        (None when it decoded)."""
        logits, scores, rows, failed = self._logits(items, with_unknown=True)
        probs = np.full((len(items), len(self.classes_)), np.nan, dtype=np.float64)
        out_scores = None if scores is None else np.full(len(items), np.nan)
        if len(rows):
            probs[rows] = self._probabilities(logits)
            if scores is not None:
                out_scores[rows] = scores
        errors: list[str | None] = [None] * len(items)
        for i, reason in failed:
            errors[i] = reason
        return probs, out_scores, errors

    def predict_proba_items(self, items: list) -> tuple[np.ndarray, list[str | None]]:
        """Probabilities for each item (rows of NaN where an item could not be decoded) and
        the decode error of each item (None when it decoded)."""
        probs, _, errors = self.predict_scored_items(items)
        return probs, errors

    def predict_scored(self, inputs: ImageInput | Sequence[ImageInput]) -> tuple[np.ndarray, np.ndarray | None]:
        """Class probabilities and unknown scores (None: the model has none)."""
        items, single = self._items(inputs)
        probs, scores, errors = self.predict_scored_items(items)
        bad = [f"{items[i]} ({e})" for i, e in enumerate(errors) if e]
        if bad:
            raise DataError(f"cannot read {len(bad)} image(s): {'; '.join(bad[:5])}")
        return (probs[0], None if scores is None else scores[:1]) if single else (probs, scores)

    def predict_proba(self, inputs: ImageInput | Sequence[ImageInput]) -> np.ndarray:
        """Class probabilities, columns in ``classes_`` order. Folders expand to their images."""
        return self.predict_scored(inputs)[0]

    def labelled_outputs(self, data: str | Path | ImageSet, labels: None = None, with_unknown: bool = False):
        """For labelled data: the images that decoded, their labels, the model's logits
        (before the temperature), and the files skipped with the reason; with
        ``with_unknown`` also the unknown scores (after the logits; None: the model has none)."""
        self._check_fitted()
        if labels is not None:
            raise HeadstartError("image data carries its labels (class folders or a CSV of path,label); pass no labels")
        dataset = self._scan(data, classes=self.classes_)
        logits, scores, rows, failed = self._logits(dataset.paths, with_unknown=True)
        skipped = [{"path": p, "reason": r} for p, r in dataset.skipped] + [
            {"path": str(dataset.paths[i]), "reason": r} for i, r in failed
        ]
        if len(rows) == 0:
            logits = torch.empty(0, len(self.classes_))
        out = [str(dataset.paths[i]) for i in rows], dataset.labels[rows], logits.numpy()
        return (*out, scores, skipped) if with_unknown else (*out, skipped)

    def unknown_inputs_scores(self, data: str | Path | Sequence) -> np.ndarray:
        """Unknown scores of images outside the classes: files, folders (searched
        recursively, whatever their names) or a CSV with a path column; unreadable ones are
        left out."""
        self._check_fitted()
        items = image_files(data) if isinstance(data, (str, Path)) else expand_inputs(list(data))
        if not items:
            raise DataError(f"{str(data)!r} holds no images to score")
        _, scores, _ = self.predict_scored_items(items)
        return scores[np.isfinite(scores)] if scores is not None else None

    # ------------------------------------------------------------------ persistence

    def _config(self) -> dict[str, Any]:
        spec = self.spec_
        return {
            "backbone": {
                "name": spec.name,
                "arch": spec.arch,
                "weights_source": str(self.weights) if self.weights else spec.weights_source,
                "licence": spec.licence,
                "create_kwargs": spec.create_kwargs,
            },
            "preprocessing": self.preprocessing_.to_dict(),
        }

    @classmethod
    def _from_config(cls, config: dict[str, Any], path: Path, **kwargs: Any) -> "ImageClassifier":
        clf = cls._init_from_config(config, path, **kwargs)
        try:
            bb = config["backbone"]
            pre = Preprocessing.from_dict(config["preprocessing"])
            spec = BackboneSpec(
                name=bb["name"], arch=bb["arch"], preprocessing=pre,
                weights_source=bb.get("weights_source", ""), licence=bb.get("licence", ""),
                create_kwargs=dict(bb.get("create_kwargs", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelDirError(f"{str(path)!r}/config.json is incomplete or malformed ({exc!r})") from None
        clf.backbone, clf.weights = spec.name, None
        clf.spec_, clf.preprocessing_ = spec, pre
        try:
            clf.model_ = clf._build(spec, len(clf.classes_), pretrained=False)
        except Exception as exc:  # noqa: BLE001
            raise ModelDirError(f"cannot build architecture {bb['arch']!r} of {str(path)!r} ({exc})") from None
        clf._load_weights(path)
        return clf
