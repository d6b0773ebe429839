"""Decoding images into 8-bit RGB, one way for training, prediction, export and serving.

No torch here: the light ONNX predictor (``headstart.deploy.runtime``) and the server import it
too, so an image decodes to the same pixels whichever path predicts on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps

from ..errors import DataError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"})


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Files as given; folders searched recursively for image files, in sorted order."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and is_image_file(f))
            if not found:
                raise DataError(f"folder {str(p)!r} holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise DataError(f"input {str(p)!r} does not exist")
    return out


def to_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB: EXIF orientation applied, 16-bit and float images scaled by their value
    range (not clipped), transparency composited on white."""
    im = ImageOps.exif_transpose(im)
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        im = Image.fromarray(np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, rgba)
    return im.convert("RGB")


def load_opened(im: Image.Image, draft: int | None = None) -> Image.Image:
    """Decode an opened image into RGB. ``draft``: the short side the caller will resize to.
    A JPEG much larger than that is decoded at 1/2, 1/4 or 1/8 scale in the DCT domain
    (PIL's draft mode), never below ``draft`` pixels on a side: a 12-megapixel photo
    decodes about 10x faster and the resized result stays within a few grey levels of the
    full decode. Every prediction path passes the same ``draft``, so they agree exactly."""
    if draft and im.format == "JPEG":
        im.draft("RGB", (draft, draft))
    im.load()
    return to_rgb(im)
