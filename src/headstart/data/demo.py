"""The offline demo: scikit-learn's bundled handwritten digits (1,797 real scans, 8x8,
16 grey levels) written out as a class folder of PNGs, so the real folder pipeline runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_digits(root: str | Path) -> Path:
    """Write ``root/<digit>/<n>.png``; skips the work when the folder is already complete."""
    from sklearn.datasets import load_digits

    root = Path(root)
    digits = load_digits()
    if root.is_dir() and sum(1 for _ in root.rglob("*.png")) == len(digits.target):
        return root
    for i, (img, label) in enumerate(zip(digits.images, digits.target)):
        out = root / str(label) / f"{i:04d}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        # 0..16 ink intensity -> white paper, dark ink
        pixels = (255 - img * (255 / 16)).round().astype(np.uint8)
        Image.fromarray(pixels, "L").save(out)
    return root
