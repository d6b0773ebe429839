"""Preprocessing and augmentation built from a backbone's :class:`Preprocessing`.

Validation and prediction always use ``eval_transform``: resize the short side to
``input_size / crop_pct``, centre-crop ``input_size``, normalise.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision import transforms as T

from .image import Preprocessing


def _interp(name: str) -> T.InterpolationMode:
    return {
        "bicubic": T.InterpolationMode.BICUBIC,
        "bilinear": T.InterpolationMode.BILINEAR,
        "nearest": T.InterpolationMode.NEAREST,
    }.get(name, T.InterpolationMode.BICUBIC)


def _to_input(pre: Preprocessing) -> list:
    return [T.PILToTensor(), T.ConvertImageDtype(torch.float32), T.Normalize(pre.mean, pre.std)]


def eval_resize(pre: Preprocessing) -> int:
    """The short side ``eval_transform`` resizes to (before its centre crop); decoding
    may stop at this size (``ImageDataset(draft=...)``)."""
    return int(math.floor(pre.input_size / pre.crop_pct))


def eval_transform(pre: Preprocessing) -> T.Compose:
    resize = eval_resize(pre)
    return T.Compose(
        [T.Resize(resize, interpolation=_interp(pre.interpolation)), T.CenterCrop(pre.input_size), *_to_input(pre)]
    )


class KerasAffine(torch.nn.Module):
    """Keras ``ImageDataGenerator``'s random affine transform, faithfully.

    rotation in degrees, shifts as fractions of the size, shear in degrees (as Keras reads
    ``shear_range``), zoom sampled per axis from [1 - zoom, 1 + zoom], and ``fill_mode
    ='nearest'``: points outside the image take the nearest edge pixel.
    """

    def __init__(self, rotation: float = 40, shift: float = 0.2, shear: float = 0.2, zoom: float = 0.2):
        super().__init__()
        self.rotation, self.shift, self.shear, self.zoom = rotation, shift, shear, zoom

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        u = lambda a: (torch.rand(()) * 2 - 1).item() * a  # noqa: E731
        theta, shear = math.radians(u(self.rotation)), math.radians(u(self.shear))
        tx, ty = u(self.shift) * 2, u(self.shift) * 2  # fractions of the size, in [-1, 1] grid units
        zx, zy = 1 + u(self.zoom), 1 + u(self.zoom)
        rot = torch.tensor([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
        sh = torch.tensor([[1.0, -math.sin(shear)], [0.0, math.cos(shear)]])
        zm = torch.tensor([[zx, 0.0], [0.0, zy]])
        mat = rot @ sh @ zm
        affine = torch.cat([mat, torch.tensor([[tx], [ty]])], dim=1).unsqueeze(0)
        grid = F.affine_grid(affine, [1, *img.shape], align_corners=False)
        out = F.grid_sample(img.unsqueeze(0), grid, mode="bilinear", padding_mode="border", align_corners=False)
        return out.squeeze(0)


def train_transform(pre: Preprocessing, augment: str) -> T.Compose:
    size, interp = pre.input_size, _interp(pre.interpolation)
    if augment == "none":
        return eval_transform(pre)
    if augment == "light":
        return T.Compose(
            [T.RandomResizedCrop(size, scale=(0.35, 1.0), interpolation=interp), T.RandomHorizontalFlip(), *_to_input(pre)]
        )
    if augment == "strong":
        return T.Compose(
            [
                T.RandomResizedCrop(size, scale=(0.25, 1.0), interpolation=interp),
                T.RandomHorizontalFlip(),
                T.TrivialAugmentWide(interpolation=T.InterpolationMode.BILINEAR),
                *_to_input(pre),
            ]
        )
    if augment == "classic":
        # Keras flow_from_directory resizes the whole image to the target size, no crop.
        return T.Compose(
            [
                T.Resize((size, size), interpolation=interp),
                T.PILToTensor(),
                T.ConvertImageDtype(torch.float32),
                KerasAffine(),
                T.RandomHorizontalFlip(),
                T.Normalize(pre.mean, pre.std),
            ]
        )
    raise ValueError(f"unknown augment {augment!r}")
