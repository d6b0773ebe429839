"""Image recipes: the frozen backbone's features, phase 2 on augmented images, predictions.

:class:`ImageBackend` gives :mod:`headstart.training.transfer` what it needs of an image model; the
recipe logic itself (probe, fine-tune, auto, protocols) is written once there.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from . import distributed
from .cache import cached_features
from ..config import TrainConfig
from ..data.imagesets import ImageDataset, ImageSet, default_num_workers, make_loader
from ..errors import DataError
from ..models.networks import ImageModel, freeze_batchnorm, set_trainable
from .loop import autocast, recipe_setup, train_loop, unfreeze
from .transfer import RecipeResult, Transfer
from ..backbones.transforms import eval_resize, eval_transform, train_transform

log = logging.getLogger("headstart")

@torch.inference_mode()
def extract_features(
    backbone: nn.Module,
    dataset: ImageDataset,
    *,
    batch_size: int,
    device: torch.device,
    precision: str,
    num_workers: int | None,
    seed: int,
    progress: bool = False,
    desc: str = "features",
) -> tuple[torch.Tensor, np.ndarray, list[tuple[int, str]]]:
    """One forward pass of the frozen backbone per item. Returns (features[n_ok, d] in fp32,
    item indices of the rows, failed (index, reason))."""
    backbone.eval()
    chunks, indices, failed = [], [], []
    loader = make_loader(dataset, batch_size, seed=seed, num_workers=num_workers)
    for x, _, idx, bad in tqdm(loader, desc=desc, leave=False, disable=not progress):
        failed.extend(bad)
        if x is None:
            continue
        x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            f = backbone(x)
        chunks.append(f.flatten(1).float().cpu())
        indices.append(idx.numpy())
    if not chunks:  # the caller decides (a process's shard may hold nothing decodable)
        return torch.empty(0, 0), np.empty(0, dtype=np.int64), failed
    return torch.cat(chunks), np.concatenate(indices), failed


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    dataset: ImageDataset,
    *,
    batch_size: int,
    device: torch.device,
    precision: str,
    num_workers: int | None,
    progress: bool = False,
) -> tuple[torch.Tensor, np.ndarray, list[tuple[int, str]]]:
    model.eval()
    chunks, indices, failed = [], [], []
    if distributed.world().enabled:  # each process its shard; gathered below
        dataset = torch.utils.data.Subset(dataset, distributed.shard(len(dataset)))
    for x, _, idx, bad in tqdm(
        make_loader(dataset, batch_size, num_workers=num_workers), desc="predict", leave=False, disable=not progress
    ):
        failed.extend(bad)
        if x is None:
            continue
        x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            chunks.append(model(x).float().cpu())
        indices.append(idx.numpy())
    if distributed.world().enabled:
        rows = torch.cat(chunks) if chunks else torch.empty(0, 0)
        return distributed.gather_rows(rows, np.concatenate(indices) if indices else np.empty(0, dtype=np.int64), failed)
    if not chunks:
        return torch.empty(0, 0), np.empty(0, dtype=np.int64), failed
    return torch.cat(chunks), np.concatenate(indices), failed


def epoch_loader(dataset: ImageDataset, cfg: TrainConfig, epoch: int) -> torch.utils.data.DataLoader:
    """This process's share of each batch of a shuffled epoch (the same shuffle on every
    process, from the seed and the epoch; no batch too small for BatchNorm)."""
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
    order = torch.randperm(len(dataset), generator=g).numpy()
    batches = distributed.even_batches(order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size))
    local = [distributed.local_part(b).tolist() for b in batches]
    seed = cfg.seed * 1_000_003 + epoch * 7919 + distributed.world().rank  # the workers' augmentation
    return make_loader(dataset, cfg.batch_size, seed=seed, num_workers=cfg.num_workers, batches=local)


class ImageBackend:
    """The items (training data, then validation images) of one image fit."""

    phase2_recipe = "fine-tune"
    prototypes = True  # auto compares nearest class means with the solved head on few photos per class

    def __init__(self, items: list, labels: np.ndarray, cfg: TrainConfig, preprocessing, *, device, precision: str,
                 loss_fn: nn.Module, progress: bool, cache_parts: dict | None, val_source: str = ""):
        self.items, self.labels, self.cfg = items, labels, cfg
        self.preprocessing = preprocessing
        self.device, self.precision, self.loss_fn = device, precision, loss_fn
        self.progress, self.cache_parts, self.val_source = progress, cache_parts, val_source
        self.eval_tf, self.draft = eval_transform(preprocessing), eval_resize(preprocessing)
        self.common = dict(batch_size=cfg.batch_size, device=device, precision=precision, num_workers=cfg.num_workers, progress=progress)
        self._failed: list[tuple[str, str]] = []

    def _note_failed(self, bad, items) -> None:
        for i, reason in bad:
            self._failed.append((str(items[i % len(items)]), reason))

    def failed(self) -> list[tuple[str, str]]:
        return list(dict.fromkeys(self._failed))

    def _cached(self, model: ImageModel, dataset: ImageDataset, desc: str, view: dict):
        """Features of the frozen backbone, from the disk cache when this exact computation
        (weights, preprocessing, precision, view, image contents) was done before."""
        cfg = self.cfg
        parts = ({**self.cache_parts, **view, "precision": self.precision, "device": self.device.type}
                 if self.cache_parts and cfg.cache else None)
        # torch.compile compiles on the first call: with every feature cached it never does
        frozen = torch.compile(model.backbone) if cfg.compile else model.backbone

        def compute():
            local = dataset
            if distributed.world().enabled:
                local = torch.utils.data.Subset(dataset, distributed.shard(len(dataset)))
            rows = distributed.gather_rows(*extract_features(frozen, local, seed=cfg.seed, desc=desc, **self.common))
            if len(rows[1]) == 0:
                raise DataError("no image could be decoded; check the files (`headstart check DATA` lists them)")
            return rows

        return cached_features(parts, cfg.cache_dir, compute, paths=dataset.paths)

    def features(self, model: ImageModel) -> tuple[torch.Tensor, np.ndarray]:
        set_trainable(model, 0)
        model.to(self.device, memory_format=torch.channels_last)
        # Evaluation views decode large JPEGs at reduced scale (never below the resize target),
        # so cached features from a full decode are never mixed with these: "decode" in the key.
        dataset = ImageDataset(self.items, self.labels, self.eval_tf, draft=self.draft)
        feats, rows, bad = self._cached(model, dataset, "features", {"view": "eval", "decode": "draft"})
        self._note_failed(bad, self.items)
        return feats, rows

    def augmented(self, model: ImageModel, rows: np.ndarray):
        cfg = self.cfg
        items = [self.items[i] for i in rows]
        aug = ImageDataset(items, self.labels[rows], train_transform(self.preprocessing, cfg.augment), views=cfg.cache_views - 1)
        workers = default_num_workers() if cfg.num_workers is None else cfg.num_workers
        view = {"view": cfg.augment, "views": cfg.cache_views - 1, "seed": cfg.seed, "workers": workers}
        feats, got, _ = self._cached(model, aug, "augmented views", view)
        return feats, np.asarray(rows)[got % len(items)]

    def train(self, model: ImageModel, train_rows: np.ndarray, eval_rows: np.ndarray | None, *, epochs: int, phase: str,
              head_trained: bool, deadline: float | None):
        cfg = self.cfg
        model.to(self.device, memory_format=torch.channels_last)
        groups = unfreeze(model, cfg, head_trained=head_trained, recipe=phase.split()[0])
        items = [self.items[i] for i in train_rows]
        train_ds = ImageDataset(items, self.labels[train_rows], train_transform(self.preprocessing, cfg.augment))
        n, size = len(train_ds), cfg.batch_size
        steps = len(distributed.even_batches(np.arange(n)[i : i + size] for i in range(0, n, size)))

        def image_batches(epoch: int):
            for x, y, _, bad in epoch_loader(train_ds, cfg, epoch):
                if epoch == 1:
                    self._note_failed(bad, items)
                # (None, None) when nothing in this batch decodes: the loop keeps in step
                yield (x.contiguous(memory_format=torch.channels_last), y) if x is not None else (None, None)

        evaluate = None
        if eval_rows is not None:
            def evaluate() -> tuple[float, float]:
                logits, ok = self.logits(model, eval_rows)
                return self.loss_fn.evaluate(torch.as_tensor(logits), torch.as_tensor(self.labels[ok]))

        def on_train_start() -> None:
            freeze_batchnorm(model.backbone, all_bn=phase.split()[0] == "fine-tune")

        if cfg.compile:
            # Compiles the training forward and backward (and evaluation) in place, keeping
            # the state_dict's keys; about 2 minutes of compilation on a CPU before the
            # first step, so it pays off on long runs only (docs/performance.md).
            model.compile()
        try:
            return train_loop(
                model, groups, image_batches, steps, evaluate, cfg=cfg, epochs=epochs, phase=phase, device=self.device,
                precision=self.precision, loss_fn=self.loss_fn, on_train_start=on_train_start, progress=self.progress,
                deadline=deadline,
            )
        finally:
            model._compiled_call_impl = None  # predict and save the plain module
            set_trainable(model, None)

    def logits(self, model: ImageModel, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        items = [self.items[i] for i in rows]
        dataset = ImageDataset(items, self.labels[rows], self.eval_tf, draft=self.draft)
        model.to(self.device, memory_format=torch.channels_last)
        logits, got, _ = predict_logits(model, dataset, **self.common)
        return logits.numpy(), np.asarray(rows)[got]


def run_image_recipe(
    model: ImageModel,
    data: ImageSet,
    val: ImageSet | None,
    cfg: TrainConfig,
    preprocessing,
    *,
    progress: bool = False,
    cache_parts: dict | None = None,
) -> RecipeResult:
    """Train an image ``model`` with ``cfg.recipe`` (a resolved config) on ``data``,
    validated on ``val`` or by the protocol of :mod:`headstart.training.transfer`. ``cache_parts``
    identify the backbone's weights for the feature cache (None: no cache)."""
    items = list(data.paths) + (list(val.paths) if val is not None else [])
    labels = np.concatenate([data.labels, val.labels]) if val is not None else data.labels
    device, precision, loss_fn = recipe_setup(model, data.labels, len(data.classes), cfg)
    model.to(memory_format=torch.channels_last)
    backend = ImageBackend(items, labels, cfg, preprocessing, device=device, precision=precision, loss_fn=loss_fn,
                           progress=progress, cache_parts=cache_parts, val_source=val.source if val is not None else "")
    transfer = Transfer(model, backend, cfg, n_data=len(data), n_val=len(val) if val is not None else 0,
                        classes=list(data.classes), loss_fn=loss_fn)
    return transfer.run()
