"""Data checks: what is wrong with a folder of images or a table of texts, before any
training time is spent on it.

A check never raises on bad data: every problem becomes a ``Finding`` (severity, kind,
one-line message, the items concerned), and data that cannot be read at all becomes an
``unusable-data`` error. Severities mean:

- ``error``: training would fail, or its validation numbers would be wrong (one class,
  an empty class, a split that cannot be made, train/validation leakage);
- ``warning``: training works but skips or misreads something (unreadable files, empty
  rows, duplicates, wrong extensions, tiny images, encoding damage, strong imbalance);
- ``info``: worth knowing, nothing to fix (ignored files, images converted on loading).

The image check reads every byte once but decodes as little as it can: each file is hashed
(streaming) and its header parsed; a JPEG is then decoded at 1/8 scale (every byte of
entropy data is still read, so truncation shows) and a PNG has its chunk checksums
verified without decompressing; other formats are decoded fully when under
``FULL_DECODE_BYTES``. ``full_decode=True`` decodes every image exactly as training does.
"""

from __future__ import annotations

import os
import re
import time
import unicodedata
import warnings
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..training.cache import file_digest
from .splits import holdout_sets
from ..errors import DataError
from .labels import class_counts, label_names
from .textdata import TextSet, read_table

if TYPE_CHECKING:
    from .imagesets import ImageSet

TINY_SIDE = 32  # px: below this on either side an image carries little for a 224 px backbone
IMBALANCE_WARNING = 10.0  # largest / smallest class size from which imbalance is a warning
FULL_DECODE_BYTES = 8 << 20  # non-JPEG/PNG images under this size are decoded fully
ITEM_CHARS = 200  # texts quoted in findings are cut to this many characters
SHOWN_ITEMS = 5  # items printed per finding in the human summary (all are in --json)
MAX_NOTE_ITEMS = 10  # duplicate pairs a training run keeps as examples (and a report lists)
LOGGED_FILES = 50  # unreadable files named in the training log (all are in check.json)

# Kinds that --strict refuses besides every error: files training would silently skip.
STRICT_KINDS = frozenset({"unreadable", "leakage"})
# Skip reasons of the scanners that are a user's housekeeping, not damage.
IGNORED_REASONS = frozenset({"hidden file", "not an image file extension", "not in a class folder"})
EMPTY_REASONS = frozenset({"empty text", "empty label"})
# What each file extension promises; Pillow calls some camera JPEGs MPO.
EXTENSION_FORMATS = {
    ".jpg": {"JPEG", "MPO"}, ".jpeg": {"JPEG", "MPO"}, ".png": {"PNG"}, ".gif": {"GIF"},
    ".bmp": {"BMP", "DIB"}, ".webp": {"WEBP"}, ".tif": {"TIFF"}, ".tiff": {"TIFF"},
}
def _load_image(path):
    from .imagesets import load_image  # the image reader, imported only when images are checked

    return load_image(path)


# Modes load_image converts to 8-bit RGB; worth a note because they are easy to get wrong.
CONVERTED_MODES = frozenset({"CMYK", "I;16", "I;16B", "I;16L", "I", "F", "P", "RGBA", "LA", "PA", "1", "YCbCr", "LAB"})


@dataclass
class Finding:
    severity: str  # "error" | "warning" | "info"
    kind: str
    message: str
    items: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"severity": self.severity, "kind": self.kind, "message": self.message, "items": list(self.items)}


@dataclass
class CheckReport:
    """The result of a check: ``to_dict()`` is the JSON form, ``summary()`` the text form."""

    task: str
    splits: dict[str, dict[str, Any]]
    findings: list[Finding]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    def blocking(self) -> list[Finding]:
        """Findings that ``train --strict`` refuses: every error, plus unreadable files and leakage."""
        return [f for f in self.findings if f.severity == "error" or f.kind in STRICT_KINDS]

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "splits": self.splits, "findings": [f.to_dict() for f in self.findings], **self.extra}

    def counts(self) -> str:
        n = Counter(f.severity for f in self.findings)
        parts = [_plural(n["error"], "error"), _plural(n["warning"], "warning"), _plural(n["info"], "note")]
        return ", ".join(parts)

    def split_lines(self) -> list[str]:
        noun = "images" if self.task == "image" else "texts"
        lines = []
        for name, s in self.splits.items():
            per = ", ".join(f"{c} {n:,}" for c, n in s["per_class"].items())
            items = f"{s['items']:,} {noun if s['items'] != 1 else noun[:-1]}"
            lines.append(f"{name}: {items} in {_plural(len(s['per_class']), 'class')} ({per})")
        return lines

    def summary(self) -> str:
        """The human report: counts, lengths, each finding with a few of its items."""
        lines = self.split_lines()
        if self.extra.get("imbalance_ratio") is not None:
            lines.append(f"imbalance ratio (largest / smallest class): {self.extra['imbalance_ratio']:.2f}")
        for name, stats in self.extra.get("lengths", {}).items():
            c, w = stats["chars"], stats["words"]
            lines.append(
                f"{name} lengths: chars min {c['min']} / median {c['median']:g} / p95 {c['p95']:g} / max {c['max']}; "
                f"words min {w['min']} / median {w['median']:g} / p95 {w['p95']:g} / max {w['max']}"
            )
        for f in self.findings:
            lines.append(f"{f.severity:<8} {f.kind}: {f.message}")
            for item in f.items[:SHOWN_ITEMS]:
                lines.append(f"           {_one_line(item)}")
            if len(f.items) > SHOWN_ITEMS:
                lines.append(f"           ... and {len(f.items) - SHOWN_ITEMS} more (see --json)")
        lines.append(f"{self.counts()}" + (" - no problems found" if not self.findings else ""))
        return "\n".join(lines)

    def brief(self) -> list[str]:
        """A few log lines for the start of training: counts and each finding's message."""
        seconds = self.extra.get("seconds")
        lines = [f"check: {line}" for line in self.split_lines()]
        lines.append(f"check: {self.counts()}" + (f" ({seconds:.1f} s)" if seconds is not None else ""))
        for f in self.findings:
            lines.append(f"check: {f.severity}: {f.message}")
            if f.kind == "unreadable":  # the files training skips are always named in the log
                lines += [f"check:   {_one_line(item)}" for item in f.items[:LOGGED_FILES]]
                if len(f.items) > LOGGED_FILES:
                    lines.append(f"check:   ... and {len(f.items) - LOGGED_FILES} more")
        return lines


def _plural(n: int, word: str) -> str:
    if n == 1:
        return f"1 {word}"
    return f"{n} {word[:-1]}ies" if word.endswith("y") else f"{n} {word}{'es' if word.endswith('s') else 's'}"


def _s(n: int, verb: str) -> str:
    """The verb agreeing with a count: 1 text contains, 2 texts contain."""
    if n != 1:
        return verb
    if verb.endswith("y"):
        return verb[:-1] + "ies"
    return verb + "es" if verb.endswith(("ch", "sh", "s")) else verb + "s"


def _one_line(item: str) -> str:
    return item.replace("\r", "\\r").replace("\n", "\\n")


def _quote(text: str) -> str:
    return text if len(text) <= ITEM_CHARS else text[: ITEM_CHARS - 1] + "\u2026"


def _split_stats(labels: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Rows and rows per class (per label with several labels per row, with how many each row carries)."""
    stats: dict[str, Any] = {"items": int(len(labels)), "per_class": class_counts(labels, classes)}
    if labels.ndim == 2:
        per_row = labels.sum(1)
        stats["labels_per_row"] = {"mean": round(float(per_row.mean()), 4) if len(labels) else 0.0,
                                   "max": int(per_row.max()) if len(labels) else 0,
                                   "several": int((per_row > 1).sum()), "none": int((per_row == 0).sum())}
    return stats


# Label names that look as if they hold several labels joined by another separator.
_LOOK_ALIKES = (",", "|", "/", "+", " & ", " and ")
# Fewer positive rows than this and a label's threshold and scores rest on a handful of rows.
RARE_LABEL = 10


def _multilabel_findings(train, separator: str | None) -> list[Finding]:
    """Several labels per row: how many, rare labels, and names that look like several
    labels joined by something other than the separator; one label per row: cells that
    hold a separator-like character."""
    out: list[Finding] = []
    if train.labels.ndim == 2:
        stats = _split_stats(train.labels, train.classes)["labels_per_row"]
        out.append(Finding("info", "multi-label", f"several labels per row (separator {separator!r}): {len(train.classes)} labels, "
                           f"{stats['mean']:.2f} per row on average (at most {stats['max']}), {stats['several']} rows with several, "
                           f"{stats['none']} with none; pass --single-label to read each cell as one class"))
        counts = class_counts(train.labels, train.classes)
        rare = [f"{c} ({n})" for c, n in counts.items() if 0 < n < RARE_LABEL]
        if rare:
            out.append(Finding("warning", "rare-labels", f"{_plural(len(rare), 'label')} {_s(len(rare), 'have')} fewer than {RARE_LABEL} "
                               "rows: their thresholds and scores rest on a handful of examples; add examples", rare))
    look = [c for c in train.classes if any(x in c for x in _LOOK_ALIKES)]
    if look:
        sep = f"the separator {separator!r}" if separator else "';' (several labels per row)"
        out.append(Finding("warning", "separator-look-alike", f"{_plural(len(look), 'label')} {_s(len(look), 'contain')} "
                           f"{', '.join(repr(x.strip() or x) for x in _LOOK_ALIKES[:4])} or 'and': if a cell names several labels, "
                           f"join them with {sep} or pass --label-sep", look))
    return out


# ---------------------------------------------------------------------------------------
# Checks shared by both tasks: classes, imbalance, skipped entries, duplicates and leakage


def _class_findings(splits: dict[str, dict[str, Any]], noun: str, task: str) -> tuple[list[Finding], float | None]:
    findings: list[Finding] = []
    train = splits["train"]["per_class"]
    present = {c: n for c, n in train.items() if n > 0}
    if len(present) < 2:
        only = ", ".join(map(repr, present)) or "none"
        findings.append(Finding("error", "single-class", f"training data has {len(present)} class with {noun} ({only}); a classifier needs at least two"))
    val = splits.get("val")
    empty = [c for c, n in train.items() if n == 0 and (val is None or val["per_class"].get(c, 0) == 0)]
    if empty and task == "image":
        findings.append(Finding("error", "empty-class", f"{_plural(len(empty), 'class')} {'has' if len(empty) == 1 else 'have'} no readable {noun}; "
                                "add some or remove the folder", empty))
    elif val is not None:
        no_train = [c for c, n in train.items() if n == 0 and c not in empty]
        if no_train:
            findings.append(Finding("error", "empty-class", f"{_plural(len(no_train), 'class')} only in validation, none in training", no_train))
    if val is not None:
        missing = [c for c, n in val["per_class"].items() if n == 0 and train.get(c, 0) > 0]
        if missing:
            findings.append(Finding("warning", "missing-in-val", f"{_plural(len(missing), 'class')} without validation {noun}: "
                                    "their accuracy is not measured", missing))
    ratio = None
    if len(present) >= 2:
        ratio = max(present.values()) / min(present.values())
        if ratio >= IMBALANCE_WARNING:
            big, small = max(present, key=present.get), min(present, key=present.get)
            findings.append(Finding("warning", "imbalance", f"classes are imbalanced {ratio:.1f}:1 ({big!r} {present[big]} vs {small!r} "
                                    f"{present[small]}); consider --class-weight balanced and read per-class recall"))
    return findings, ratio


def _skipped_findings(skipped: Sequence[tuple[str, str]], noun: str) -> list[Finding]:
    ignored = [f"{p} ({r})" for p, r in skipped if r in IGNORED_REASONS]
    empty = [f"{p} ({r})" for p, r in skipped if r in EMPTY_REASONS]
    bad = [f"{p} ({r})" for p, r in skipped if r not in IGNORED_REASONS and r not in EMPTY_REASONS]
    findings = []
    if bad:
        findings.append(Finding("warning", "unreadable", f"{_plural(len(bad), 'file')} cannot be read and will be skipped", bad))
    if empty:
        findings.append(Finding("warning", "empty-rows", f"{_plural(len(empty), 'row')} with an empty {noun} or label will be skipped", empty))
    if ignored:
        findings.append(Finding("info", "ignored-files", f"{_plural(len(ignored), 'file')} ignored (hidden, not an image, or outside the class folders)", ignored))
    return findings


def _duplicate_findings(
    keys: dict[str, list[Any]], names: dict[str, list[str]], labels: dict[str, list[str]], noun: str,
    *, exact: bool = True,
) -> list[Finding]:
    """Duplicates within each split, label conflicts, and train/validation leakage, by key
    (a content hash, or a normalised text). ``names`` is how each item is shown."""
    findings = []
    where: dict[Any, list[tuple[str, int]]] = defaultdict(list)
    for split, ks in keys.items():
        for i, k in enumerate(ks):
            if k is not None:
                where[k].append((split, i))
    groups = [g for g in where.values() if len(g) > 1]
    show = lambda g: " = ".join(names[s][i] for s, i in g)  # noqa: E731
    within = [g for g in groups if len({s for s, _ in g}) == 1 or sum(s == "train" for s, _ in g) > 1 or sum(s == "val" for s, _ in g) > 1]
    conflicting = [g for g in groups if len({labels[s][i] for s, i in g}) > 1]
    leaking = [g for g in groups if {s for s, _ in g} >= {"train", "val"}]
    kind = "" if exact else "near-"
    if within:
        extra = sum(len(g) - 1 for g in within)
        how = "identical" if exact else "identical after ignoring case and whitespace:"
        findings.append(Finding("warning" if exact else "info", f"{kind}duplicates",
                                f"{_plural(len(within), 'group')} of {how} {noun} within a split ({_plural(extra, 'extra copy')})",
                                [show(g) for g in within]))
    if conflicting:
        findings.append(Finding("warning", f"{kind}conflicting-labels",
                                f"{_plural(len(conflicting), 'group')} of {'identical' if exact else 'near-identical'} {noun} {_s(len(conflicting), 'carry')} different labels",
                                [show(g) + " (" + ", ".join(sorted({labels[s][i] for s, i in g})) + ")" for g in conflicting]))
    if leaking:
        n_val = sum(1 for g in leaking for s, _ in g if s == "val")
        if exact:
            findings.append(Finding("error", "leakage", f"{_plural(n_val, noun[:-1] if noun.endswith('s') else noun)} in validation "
                                    f"{'is' if n_val == 1 else 'are'} identical to training {noun}: validation accuracy is inflated; remove them from one side",
                                    [show(g) for g in leaking]))
        else:
            findings.append(Finding("warning", "near-leakage", f"{_plural(n_val, 'validation item')} {_s(n_val, 'match')} training {noun} "
                                    "after ignoring case and whitespace", [show(g) for g in leaking]))
    return findings


def _with_split(full, val, val_split: float | None, seed: int):
    """The train/validation sets exactly as ``train`` makes them, plus a finding if the
    split cannot be made; skipped entries stay attached to the training side."""
    if val is not None or not val_split:
        return full, val, []
    try:
        train, val = holdout_sets(full, None, val_split, seed)
    except DataError as exc:
        if (np.asarray(list(class_counts(full.labels, full.classes).values())) > 0).sum() < 2:  # reported as single-class
            return full, None, []
        return full, None, [Finding("error", "split-impossible", str(exc))]
    train.skipped = list(full.skipped)
    train.source = val.source = full.source
    return train, val, []


# ---------------------------------------------------------------------------------------
# Images


@dataclass
class _ImageFacts:
    digest: str | None = None
    format: str | None = None
    size: tuple[int, int] | None = None
    mode: str | None = None
    rotated: bool = False
    problem: str | None = None


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation tag, read without disturbing a later ``verify()`` (a PNG's
    eXIf chunk is already in ``info`` after open; ``getexif()`` would read on)."""
    if im.format == "PNG":
        exif = Image.Exif()
        if im.info.get("exif"):
            exif.load(im.info["exif"])
        return exif.get(0x0112, 1)
    return im.getexif().get(0x0112, 1)


def _inspect_image(path: Path, full_decode: bool) -> _ImageFacts:
    """Hash one file and read as little of its pixels as proves it decodes (see the module doc)."""
    facts = _ImageFacts()
    try:
        nbytes = path.stat().st_size
        if nbytes == 0:
            facts.problem = "empty file"
            return facts
        facts.digest = file_digest(path)
        with Image.open(path) as im:
            facts.format, facts.size, facts.mode = im.format, im.size, im.mode
            facts.rotated = _orientation(im) not in (0, 1)
            if full_decode:
                _load_image(path)
            elif im.format in ("JPEG", "MPO"):
                im.draft(im.mode, (1, 1))  # 1/8-scale DCT: all entropy data read, little pixel work
                im.load()
            elif im.format == "PNG":
                im.verify()  # every chunk's CRC, through IEND, without inflating
            elif nbytes <= FULL_DECODE_BYTES:
                im.load()
    except UnidentifiedImageError:
        facts.problem = "not an image"
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        facts.problem = "too many pixels (decompression bomb guard)"
    except Exception as exc:  # noqa: BLE001 - any failure to read is a finding, never a crash
        facts.problem = f"does not decode: {exc}" if facts.format else f"unreadable: {exc}"
        if facts.format and not full_decode and _decodes(path):
            facts.problem = None  # damaged only where training does not look (a PNG cut after its pixels)
    return facts


def _decodes(path: Path) -> bool:
    """Whether training's own decoder reads the file: the judge when a cheap check fails."""
    try:
        _load_image(path)
    except Exception:  # noqa: BLE001
        return False
    return True


def _inspect_all(paths: Sequence[Path], full_decode: bool, workers: int | None) -> list[_ImageFacts]:
    if workers is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        workers = min(8, cpus)
    # Decoding and hashing release the GIL, so threads overlap disk reads and decode.
    # The filter is process-wide: set once here, not per thread.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        if workers <= 1 or len(paths) < 16:
            return [_inspect_image(p, full_decode) for p in paths]
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(lambda p: _inspect_image(p, full_decode), paths, chunksize=32))


def check_images(
    train: "ImageSet", val: "ImageSet | None" = None, *, full_decode: bool = False, workers: int | None = None,
    findings: Sequence[Finding] = (), separator: str | None = None,
) -> CheckReport:
    """Check a training set and an optional validation set of images (see the module doc).

    ``findings`` are prepended (e.g. a split that could not be made)."""
    start = time.perf_counter()
    sets = {"train": train} if val is None else {"train": train, "val": val}
    facts = {name: _inspect_all(s.paths, full_decode, workers) for name, s in sets.items()}
    # Counts, classes and duplicates are about the images training can use: not the unreadable.
    usable = {name: np.array([f.problem is None for f in facts[name]], dtype=bool) for name in sets}
    splits = {name: _split_stats(s.labels[usable[name]], s.classes) for name, s in sets.items()}
    out = list(findings)
    class_findings, ratio = _class_findings(splits, "images", "image")
    class_findings += _multilabel_findings(train, separator)
    out += class_findings
    skipped = list(train.skipped) + (list(val.skipped) if val is not None and val is not train else [])
    skipped += [(str(p), f.problem) for name, s in sets.items() for p, f in zip(s.paths, facts[name]) if f.problem]
    out += _skipped_findings(skipped, "image")

    wrong, tiny, converted, rotated = [], [], Counter(), 0
    for name, s in sets.items():
        for p, f in zip(s.paths, facts[name]):
            if f.format is None:
                continue
            expected = EXTENSION_FORMATS.get(p.suffix.lower())
            if expected is not None and f.format not in expected:
                wrong.append(f"{p} (a {f.format} file)")
            if f.size and min(f.size) < TINY_SIDE:
                tiny.append(f"{p} ({f.size[0]}x{f.size[1]})")
            if f.mode in CONVERTED_MODES:
                converted[f.mode] += 1
            rotated += f.rotated
    if wrong:
        out.append(Finding("warning", "wrong-extension", f"{_plural(len(wrong), 'file')} {'is' if len(wrong) == 1 else 'are'} not the format "
                           "its extension says; it is read by its content, but other tools may fail on it", wrong))
    if tiny:
        out.append(Finding("warning", "tiny-image", f"{_plural(len(tiny), 'image')} smaller than {TINY_SIDE} px on a side; "
                           "they are upscaled and carry little detail", tiny))
    if converted or rotated:
        modes = ", ".join(f"{m} {n}" for m, n in sorted(converted.items()))
        parts = [f"{sum(converted.values())} converted to 8-bit RGB on loading ({modes})"] if converted else []
        parts += [f"{rotated} turned upright by their EXIF orientation"] if rotated else []
        out.append(Finding("info", "conversions", "images " + "; ".join(parts)))

    keys = {name: [f.digest if f.problem is None else None for f in facts[name]] for name in sets}
    names = {name: [str(p) for p in s.paths] for name, s in sets.items()}
    labels = {name: label_names(s.labels, s.classes) for name, s in sets.items()}
    out += _duplicate_findings(keys, names, labels, "images")
    extra = {"imbalance_ratio": None if ratio is None else round(ratio, 4),
             "decode": "full" if full_decode else "fast", "seconds": round(time.perf_counter() - start, 3)}
    return CheckReport("image", splits, _ordered(out), extra)


# ---------------------------------------------------------------------------------------
# Texts

# Two to four Latin-1/cp1252 characters that are the UTF-8 bytes of one character read
# with the wrong codec: 'Ã©' for 'é', 'â€™' for a right quote.
_MOJIBAKE = re.compile("[\u00c2-\u00f4][\u0080-\u00bf\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192\u02c6\u02dc\u2013\u2014"
                       "\u2018-\u201e\u2020-\u2022\u2026\u2030\u2039\u203a\u20ac\u2122]{1,3}")


def looks_mojibake(text: str) -> bool:
    """Whether ``text`` holds UTF-8 that was decoded as Latin-1 or cp1252 ('cafÃ©')."""
    for m in _MOJIBAKE.finditer(text):
        for codec in ("cp1252", "latin-1"):
            try:
                fixed = m.group().encode(codec).decode("utf-8")
            except UnicodeError:
                continue
            if len(fixed) < len(m.group()):
                return True
    return False


def _control_chars(text: str) -> bool:
    return any(unicodedata.category(ch) == "Cc" and ch not in "\t\n\r" for ch in text)


def normalise(text: str) -> str:
    """Case and whitespace folded: what near-duplicates and label variants compare."""
    return " ".join(text.split()).casefold()


def _quantiles(values: Sequence[int]) -> dict[str, float]:
    arr = np.asarray(values)
    return {"min": int(arr.min()), "median": float(np.median(arr)), "p95": float(np.percentile(arr, 95)), "max": int(arr.max())}


def text_lengths(texts: Sequence[str]) -> dict[str, dict[str, float]]:
    """Length distribution in characters and in whitespace-separated words."""
    return {"chars": _quantiles([len(t) for t in texts]), "words": _quantiles([len(t.split()) for t in texts])}


def check_texts(train: TextSet, val: TextSet | None = None, *, findings: Sequence[Finding] = (),
                separator: str | None = None) -> CheckReport:
    """Check a training set and an optional validation set of texts (see the module doc)."""
    start = time.perf_counter()
    sets = {"train": train} if val is None else {"train": train, "val": val}
    splits = {name: _split_stats(s.labels, s.classes) for name, s in sets.items()}
    out = list(findings)
    class_findings, ratio = _class_findings(splits, "texts", "text")
    out += class_findings + _multilabel_findings(train, separator)
    skipped = list(train.skipped) + (list(val.skipped) if val is not None and val is not train else [])
    out += _skipped_findings(skipped, "text")

    variants = defaultdict(set)
    for c in train.classes:
        variants[normalise(c)].add(c)
    clash = [" = ".join(repr(c) for c in sorted(v)) for v in variants.values() if len(v) > 1]
    if clash:
        out.append(Finding("warning", "label-variants", f"{_plural(len(clash), 'group')} of labels {_s(len(clash), 'differ')} only by case or whitespace "
                           "and are trained as different classes; make them one label", clash))

    all_texts = [t for s in sets.values() for t in s.texts]
    replacement = [_quote(t) for t in all_texts if "\ufffd" in t]
    mojibake = [_quote(t) for t in all_texts if looks_mojibake(t)] + [f"label {c!r}" for c in train.classes if looks_mojibake(c)]
    control = [_quote(t) for t in all_texts if _control_chars(t)]
    if replacement:
        out.append(Finding("warning", "encoding", f"{_plural(len(replacement), 'text')} {_s(len(replacement), 'contain')} U+FFFD replacement characters: "
                           "bytes were lost when the file was made; re-export it as UTF-8", replacement))
    if mojibake:
        out.append(Finding("warning", "encoding", f"{_plural(len(mojibake), 'text')} {_s(len(mojibake), 'look')} like UTF-8 read as Latin-1 ('Ã©' for 'é'); "
                           "re-export the file as UTF-8, or read it with the right --encoding", mojibake))
    if control:
        out.append(Finding("warning", "encoding", f"{_plural(len(control), 'text')} {_s(len(control), 'contain')} control characters (NUL, escape, ...)", control))

    names = {name: [_quote(t) for t in s.texts] for name, s in sets.items()}
    labels = {name: label_names(s.labels, s.classes) for name, s in sets.items()}
    out += _duplicate_findings({n: list(s.texts) for n, s in sets.items()}, names, labels, "texts")
    # Near-duplicates: texts equal after folding case and whitespace but not byte for byte.
    variants_of = defaultdict(set)
    for s in sets.values():
        for t in s.texts:
            variants_of[normalise(t)].add(t)
    near_keys = {n: [normalise(t) if len(variants_of[normalise(t)]) > 1 else None for t in s.texts] for n, s in sets.items()}
    out += _duplicate_findings(near_keys, names, labels, "texts", exact=False)

    lengths = {name: text_lengths(s.texts) for name, s in sets.items()}
    extra = {"imbalance_ratio": None if ratio is None else round(ratio, 4), "lengths": lengths,
             "seconds": round(time.perf_counter() - start, 3)}
    return CheckReport("text", splits, _ordered(out), extra)


# ---------------------------------------------------------------------------------------
# Entry points


def _ordered(findings: list[Finding]) -> list[Finding]:
    rank = {"error": 0, "warning": 1, "info": 2}
    return sorted(findings, key=lambda f: rank[f.severity])


def check_sets(
    task: str, full: "ImageSet | TextSet", val: "ImageSet | TextSet | None" = None, *,
    val_split: float | None = None, seed: int = 0, full_decode: bool = False, separator: str | None = None,
) -> CheckReport:
    """Check data as ``train`` will use it: ``val``, or else the same stratified split of
    ``full`` that training makes with ``val_split`` and ``seed`` (none when ``val_split`` is 0/None)."""
    train, val, findings = _with_split(full, val, val_split, seed)
    if task == "image":
        return check_images(train, val, full_decode=full_decode, findings=findings, separator=separator)
    return check_texts(train, val, findings=findings, separator=separator)


def unusable(task: str, exc: Exception) -> CheckReport:
    """The report for data that cannot be read at all."""
    return CheckReport(task, {"train": {"items": 0, "per_class": {}}}, [Finding("error", "unusable-data", str(exc))],
                       {"imbalance_ratio": None})


def check_path(
    data: str | Path, val: str | Path | None = None, *, task: str = "image", val_split: float | None = None,
    seed: int = 0, full_decode: bool = False, text_column: str | None = None, label_column: str | None = None,
    encoding: str | None = None, multi_label: bool | None = None, label_sep: str = ";",
) -> CheckReport:
    """Read and check a folder / CSV of images or a table of texts; data that cannot be
    read gives an ``unusable-data`` error in the report instead of an exception."""
    try:
        if task == "image":
            from .imagesets import scan_folder

            full = scan_folder(data, multi_label=multi_label, label_sep=label_sep)
            val_set = scan_folder(val, classes=full.classes, multi_label=full.labels.ndim == 2, label_sep=label_sep) if val else None
        else:
            kw = dict(text_column=text_column, label_column=label_column, encoding=encoding, label_sep=label_sep)
            full = read_table(data, multi_label=multi_label, **kw)
            val_set = read_table(val, classes=full.classes, multi_label=full.labels.ndim == 2, **kw) if val else None
    except DataError as exc:
        return unusable(task, exc)
    except OSError as exc:  # a folder or table the user may not read, a vanished mount
        return unusable(task, DataError(f"cannot read {exc.filename or data}: {exc.strerror or exc}"))
    return check_sets(task, full, val_set, val_split=val_split, seed=seed, full_decode=full_decode,
                      separator=label_sep if full.labels.ndim == 2 else None)


# --------------------------------------------------------------------------- notes of a training run


def _by_size(paths: Sequence) -> dict[int, list[Path]]:
    """Files grouped by size (unreadable ones left out): only files of equal size can be
    copies, so only those are hashed."""
    by_size: dict[int, list[Path]] = {}
    for p in paths:
        try:
            by_size.setdefault(os.path.getsize(p), []).append(Path(p))
        except OSError:
            continue
    return by_size


def _exact_image_duplicates(train: Sequence[Path], val: Sequence[Path]) -> list[tuple[str, str]]:
    """Validation images whose bytes equal a training image. Only files of equal size are
    hashed, so this costs a stat per file and little more."""
    by_size = _by_size(train)
    digests: dict[Path, str] = {}

    def digest(p: Path) -> str | None:
        if p not in digests:
            try:
                digests[p] = file_digest(p)
            except OSError:
                return None
        return digests[p]

    found = []
    for v in val:
        try:
            candidates = by_size.get(os.path.getsize(v), [])
        except OSError:
            continue
        dv = digest(Path(v)) if candidates else None
        for t in candidates:
            if dv is not None and digest(t) == dv:
                found.append((str(v), str(t)))
                break
    return found


def _exact_text_duplicates(train: Sequence[str], val: Sequence[str]) -> list[tuple[str, str]]:
    """Validation texts equal to a training text after trimming and case folding."""
    seen = {" ".join(t.split()).casefold(): t for t in train}
    return [(v, seen[k]) for v in val if (k := " ".join(v.split()).casefold()) in seen]


def training_notes(task: str, train_set, val_set=None, val_split: float | None = None, seed: int = 0,
                   truncated: dict[str, Any] | None = None) -> dict[str, Any]:
    """What training knows about its data beyond the data summary: exact duplicates between
    the rows that trained and the rows that validated, and the token limit texts were cut
    at (``truncated``, a text model's count). Under cross-validation every row validates and
    trains another fold's model, so any duplicate pair within the data is such a pair; with
    a holdout split, the pairs across it."""
    train_set, val_set = holdout_sets(train_set, val_set, val_split, seed)
    if val_set is None:  # cross-validation: duplicates within the data
        pairs = _within_duplicates(train_set.paths if task == "image" else train_set.texts, task)
    elif task == "image":
        pairs = _exact_image_duplicates(train_set.paths, val_set.paths)
    else:
        pairs = _exact_text_duplicates(train_set.texts, val_set.texts)
    notes: dict[str, Any] = {"duplicates": {"count": len(pairs), "examples": [list(p) for p in pairs[:MAX_NOTE_ITEMS]]}}
    if truncated:
        notes["max_length"] = truncated.get("max_length")
    return notes


def _within_duplicates(items: Sequence, task: str) -> list[tuple[str, str]]:
    """Pairs of items of one set that are exact copies (bytes for images, trimmed and
    case-folded text), each later copy paired with the first."""
    if task != "image":
        seen: dict[str, str] = {}
        pairs = []
        for t in items:
            key = " ".join(t.split()).casefold()
            if key in seen:
                pairs.append((t, seen[key]))
            else:
                seen[key] = t
        return pairs
    pairs = []
    for group in _by_size(items).values():
        if len(group) < 2:
            continue
        first: dict[str, Path] = {}
        for p in group:
            try:
                d = file_digest(p)
            except OSError:
                continue
            if d in first:
                pairs.append((str(p), str(first[d])))
            else:
                first[d] = p
    return pairs
