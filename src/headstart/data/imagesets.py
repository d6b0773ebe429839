"""Image data: class folders or a CSV of ``path,label`` -> paths, integer labels, class names.

Images are read lazily, one at a time, by the DataLoader workers; a folder of 100k photos
costs a list of paths in memory, not the pixels.
"""

from __future__ import annotations

import csv
import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..errors import DataError
from .images import IMAGE_EXTENSIONS, is_image_file, load_opened, to_rgb  # noqa: F401 - part of this module's API
from .labels import class_counts, encode_multi_label, is_multi_label, split_labels
from .splits import require_two_classes, stratified_split  # noqa: F401 - part of this module's API


# A truncated JPEG must fail loudly, not decode as a grey half-image.
ImageFile.LOAD_TRUNCATED_IMAGES = False


@dataclass
class ImageSet:
    """Paths with integer labels into ``classes``, plus what was left out and why."""

    paths: list[Path]
    labels: np.ndarray
    classes: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    source: str = ""

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, index: Sequence[int] | np.ndarray) -> "ImageSet":
        index = np.asarray(index, dtype=np.int64)
        return ImageSet(
            [self.paths[i] for i in index], self.labels[index], self.classes, [], self.source
        )

    def class_counts(self) -> dict[str, int]:
        return class_counts(self.labels, self.classes)


def known_classes(found: Sequence[str], classes: Sequence[str] | None, where: str) -> list[str]:
    """The class list: ``found`` for training data; for data scored by a trained model its
    ``classes``, with any class it does not know named in the error."""
    if classes is None:
        return list(found)
    extra = sorted(set(found) - set(classes))
    if extra:
        raise DataError(f"{where} the model does not know: {', '.join(extra)}; known classes are: {', '.join(classes)}")
    return list(classes)


def _skip_reason(path: Path) -> str | None:
    """A cheap header check: catches empty files, non-images and decompression bombs
    without decoding pixels. Truncated files are caught later, at decode."""
    try:
        if path.stat().st_size == 0:
            return "empty file"
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.size  # noqa: B018 - parses the header
    except UnidentifiedImageError:
        return "not an image"
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return "too many pixels (decompression bomb guard)"
    except OSError as exc:
        return f"unreadable ({exc})"
    return None


def scan_folder(root: str | Path, classes: Sequence[str] | None = None, check: bool = True, *,
                multi_label: bool | None = None, label_sep: str = ";") -> ImageSet:
    """Read ``root/<class>/**/<image>``, or a CSV of ``path,label`` (where a label cell
    holding ``label_sep`` makes the set multi-label, see :func:`read_csv`). Hidden and
    non-image files are skipped and counted."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"data path {str(root)!r} does not exist")
    if multi_label and not root.is_file():
        raise DataError(f"several labels per image come from a CSV of path,labels (labels joined by {label_sep!r}); "
                        f"{str(root)!r} is a folder of class folders, one label per image")
    if root.is_file():
        if root.suffix.lower() in (".csv", ".tsv"):
            return read_csv(root, classes=classes, check=check, multi_label=multi_label, label_sep=label_sep)
        raise DataError(
            f"{str(root)!r} is a file; pass a folder with one sub-folder per class "
            "or a CSV with columns path,label"
        )
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(
            f"{str(root)!r} has no sub-folders; expected one sub-folder per class "
            f"(e.g. {root}/cat/*.jpg, {root}/dog/*.jpg)"
        )
    skipped: list[tuple[str, str]] = [
        (str(p), "hidden file" if p.name.startswith(".") else "not in a class folder")
        for p in sorted(root.iterdir())
        if p.is_file()
    ]
    classes = known_classes([d.name for d in class_dirs], classes, f"{str(root)!r} has class folder(s)")
    index = {c: i for i, c in enumerate(classes)}
    paths: list[Path] = []
    labels: list[int] = []
    for d in class_dirs:
        for p in sorted(d.rglob("*")):
            if not p.is_file():
                continue
            if not is_image_file(p):
                skipped.append((str(p), "hidden file" if p.name.startswith(".") else "not an image file extension"))
                continue
            reason = _skip_reason(p) if check else None
            if reason:
                skipped.append((str(p), reason))
                continue
            paths.append(p)
            labels.append(index[d.name])
    if not paths:
        raise DataError(f"no readable images found under {str(root)!r} (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return ImageSet(paths, np.asarray(labels, dtype=np.int64), list(classes), skipped, str(root))


def read_csv(path: str | Path, classes: Sequence[str] | None = None, check: bool = True, *,
             multi_label: bool | None = None, label_sep: str = ";") -> ImageSet:
    """A CSV (or TSV) with a header naming a path column and a label column; relative paths
    are resolved against the CSV's folder. A label cell holding ``label_sep`` (or
    ``multi_label=True``) makes every cell a list of labels: ``labels`` is then ``(n, K)`` 0/1."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")  # bytes: a "\r" inside a quoted label is data
    except UnicodeDecodeError as exc:
        raise DataError(f"{str(path)!r} is not UTF-8 (byte {exc.start}); save it as UTF-8") from None
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    # The csv module splits records itself: quoted fields may hold line breaks, and
    # characters such as U+2028 or \x1e that str.splitlines() would cut at are data.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    rows, linenos = [], []
    try:
        for row in reader:
            rows.append(row)
            linenos.append(reader.line_num)
    except csv.Error as exc:
        raise DataError(f"{str(path)!r} line {reader.line_num}: malformed CSV ({exc}); check the quoting") from None
    if not rows:
        raise DataError(f"{str(path)!r} is empty; expected a header line such as 'path,label'")
    header = [h.strip().lower() for h in rows[0]]
    path_col = next((header.index(c) for c in ("path", "file", "filename", "image") if c in header), None)
    label_col = next((header.index(c) for c in ("label", "labels", "class", "category") if c in header), None)
    if path_col is None or label_col is None:
        raise DataError(
            f"{str(path)!r} needs a 'path' and a 'label' column; columns are: {', '.join(rows[0])}"
        )
    entries: list[tuple[Path, str]] = []
    skipped: list[tuple[str, str]] = []
    for lineno, row in zip(linenos[1:], rows[1:]):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(path_col, label_col):
            raise DataError(f"{str(path)!r} line {lineno}: expected {len(header)} fields, found {len(row)}")
        file, label = row[path_col].strip(), row[label_col].strip()
        if not label:
            skipped.append((f"{path}:{lineno}", "empty label"))
            continue
        p = Path(file) if Path(file).is_absolute() else path.parent / file
        if not p.is_file():
            skipped.append((str(p), "file not found"))
            continue
        reason = _skip_reason(p) if check else None
        if reason:
            skipped.append((str(p), reason))
            continue
        entries.append((p, label))
    if not entries:
        raise DataError(f"no readable images listed in {str(path)!r}")
    names = [label for _, label in entries]
    if is_multi_label(names, label_sep, multi_label):
        found = sorted({n for cell in names for n in split_labels(cell, label_sep)})
        classes = known_classes(found, classes, f"{str(path)!r} has label(s)")
        return ImageSet([p for p, _ in entries], encode_multi_label(names, label_sep, classes), list(classes), skipped, str(path))
    classes = known_classes(sorted(set(names)), classes, f"{str(path)!r} has label(s)")
    index = {c: i for i, c in enumerate(classes)}
    return ImageSet(
        [p for p, _ in entries],
        np.asarray([index[label] for _, label in entries], dtype=np.int64),
        list(classes),
        skipped,
        str(path),
    )



def image_files(path: str | Path) -> list[Path]:
    """Images named by ``path``: the paths of a CSV/TSV with a path column (read as the
    training data is, its labels not needed here), else the image files of a file or of a
    folder searched recursively."""
    from .images import expand_inputs

    path = Path(path)
    if path.is_file() and path.suffix.lower() in (".csv", ".tsv"):
        return list(read_csv(path).paths)
    return expand_inputs([path])

def load_image(path: str | Path, draft: int | None = None) -> Image.Image:
    """Decode any common image into 8-bit RGB (see :mod:`headstart.data.images`)."""
    with Image.open(path) as im:
        return load_opened(im, draft)


class ImageDataset(torch.utils.data.Dataset):
    """Decodes one image per item; a file that fails to decode yields ``None`` so the
    collate function can drop it and the caller can report it. ``draft``: see
    :func:`load_image` (only for a transform that resizes the short side to ``draft``)."""

    def __init__(
        self, paths: Sequence[Path | str], labels: np.ndarray | None, transform: Callable, views: int = 1,
        draft: int | None = None,
    ):
        self.paths = list(paths)
        self.draft = draft
        self.labels = labels if labels is not None else np.full(len(self.paths), -1, dtype=np.int64)
        self.transform = transform
        self.views = views

    def __len__(self) -> int:
        return len(self.paths) * self.views

    def __getitem__(self, i: int):
        j = i % len(self.paths)
        src = self.paths[j]
        label = self.labels[j]  # a class index, or a row of 0/1 with several labels per image
        label = int(label) if np.ndim(label) == 0 else np.asarray(label, dtype=np.int64)
        try:
            image = to_rgb(src) if isinstance(src, Image.Image) else load_image(src, self.draft)
        except Exception as exc:  # noqa: BLE001 - any decode failure skips the file
            return (None, label, i, f"{type(exc).__name__}: {exc}")
        return (self.transform(image), label, i, None)


def collate(batch):
    """Stack the decodable items; report the others as (index, reason)."""
    good = [b for b in batch if b[0] is not None]
    failed = [(b[2], b[3]) for b in batch if b[0] is None]
    if good:
        x = torch.stack([b[0] for b in good])
        y = torch.as_tensor(np.asarray([b[1] for b in good], dtype=np.int64))
        idx = torch.tensor([b[2] for b in good], dtype=torch.long)
    else:
        x = y = idx = None
    return x, y, idx, failed


def default_num_workers() -> int:
    import os

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    # Decoding competes with the model for the same cores: give it about a quarter. On one
    # or two cores a worker process only takes a core from the model's threads mid-batch
    # (each parallel op waits for its slowest thread) and adds process start-up and IPC:
    # decoding in the main process between batches measured faster (docs/performance.md).
    return 0 if cpus <= 2 else min(8, max(1, cpus // 4))


def make_loader(
    dataset: ImageDataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    num_workers: int | None = None,
    batches: list[list[int]] | None = None,
) -> torch.utils.data.DataLoader:
    """Decoded, collated batches; ``batches`` (lists of item indices) replaces
    ``batch_size`` / ``shuffle`` when the caller draws them itself."""
    workers = default_num_workers() if num_workers is None else num_workers
    generator = torch.Generator().manual_seed(seed)
    sizing = {"batch_sampler": batches} if batches is not None else {"batch_size": batch_size, "shuffle": shuffle}
    return torch.utils.data.DataLoader(
        dataset,
        **sizing,
        num_workers=workers,
        collate_fn=collate,
        generator=generator,
        worker_init_fn=seed_worker,
        persistent_workers=False,
        prefetch_factor=4 if workers else None,
    )


def seed_worker(worker_id: int) -> None:
    # Each worker's augmentation RNG follows from the loader's seed: same seed, same run.
    import random

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
