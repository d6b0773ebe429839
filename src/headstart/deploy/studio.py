"""headstart studio: make a classifier in the browser.

A local web app on the same FastAPI stack as ``headstart serve``: projects of images or
texts kept under a work directory, examples added by upload, the data check, training in a
subprocess (``headstart train``) with live progress, one at a time and the rest queued, the
run's report, trying the model, ONNX export and a zip of the model.

On disk::

    WORKDIR/projects/<id>/project.json      name, modality (image | text), created, classes, runs
    WORKDIR/projects/<id>/data/<class>/...  images
    WORKDIR/projects/<id>/data/texts.csv    texts (columns text,label)
    WORKDIR/projects/<id>/snapshots/<run>/  the data a run trained on (hard links of data/)
    WORKDIR/projects/<id>/runs/<run>/       a `headstart train --out` run directory
    WORKDIR/projects/<id>/logs/<run>.log    the training's output (its log lines and any error)

Every file is written atomically (a temporary file, then a rename), names from users are
sanitised and every path is checked to stay inside its project, and an upload is checked
whole before anything is written: a refused upload changes nothing.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at run time.

import asyncio
import csv
import hmac
import io
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unicodedata
import uuid
import zipfile
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from .. import __version__
from ..errors import DataError, HeadstartError
from ..runs import REPORT_FILE, RunDir

log = logging.getLogger("headstart.deploy.studio")

DEFAULT_PORT = 8765
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
TOKEN_COOKIE = "headstart_studio"
MODALITIES = ("image", "text")
TEXTS_FILE = "texts.csv"
STATES = ("queued", "running", "finished", "failed", "cancelled", "cut")
ACTIVE = frozenset({"queued", "running"})
_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,79}$")
_UNSAFE_CHARS = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]')
# Pillow's format names and the extension a file of that format gets when its own name does not fit it.
_FORMAT_EXTENSIONS = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "GIF": ".gif", "BMP": ".bmp", "DIB": ".bmp",
                      "WEBP": ".webp", "TIFF": ".tif"}
_TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".ndjson")


class Refused(HeadstartError):
    """A request the studio will not carry out; ``status`` is its HTTP status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    """What one request may bring. Uploads are read into memory, so ``max_upload_mb``
    bounds the memory a request takes; zip archives are checked entry by entry."""

    max_upload_mb: float = 200.0  # one request body
    max_file_mb: float = 25.0  # one image or table, also inside a zip
    max_files: int = 2000  # files in one request, entries in one zip
    max_pixels: int = 25_000_000  # one image, from its header (the same default as serve)
    max_zip_total_mb: float = 1024.0  # all of a zip's entries, uncompressed
    max_zip_ratio: float = 200.0  # uncompressed / compressed size of an entry (a zip bomb)
    max_text_chars: int = 100_000  # one text
    max_texts: int = 200_000  # texts in one project

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def max_file_bytes(self) -> int:
        return int(self.max_file_mb * 1024 * 1024)


# --------------------------------------------------------------------------- small helpers


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _write_bytes(path: Path, data: bytes) -> None:
    """Write ``path`` atomically: a reader sees the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_json(path: Path, obj: Any) -> None:
    _write_bytes(path, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def safe_name(name: str, what: str, max_chars: int = 100) -> str:
    """A user's class or file name made safe as one path component: control characters,
    separators and characters Windows refuses become ``_``, leading dots and surrounding
    spaces go (no hidden files, no ``..``). Refused when nothing is left."""
    cleaned = _UNSAFE_CHARS.sub("_", unicodedata.normalize("NFC", str(name))).strip().lstrip(".").strip()
    cleaned = cleaned[:max_chars].strip()
    if not cleaned or set(cleaned) <= {"_", "."}:
        raise Refused(422, f"{what} {str(name)!r} is not usable as a name; use letters or digits")
    return cleaned


def inside(root: Path, *parts: str) -> Path:
    """``root/parts`` when it stays inside ``root`` (no ``..``, no absolute part, no link out)."""
    path = root.joinpath(*parts).resolve()
    if not path.is_relative_to(root.resolve()):
        raise Refused(404, "not found")
    return path


def _unique(folder: Path, name: str, taken: set[str]) -> str:
    stem, suffix = os.path.splitext(name)
    candidate, n = name, 1
    while candidate in taken or (folder / candidate).exists():
        n += 1
        candidate = f"{stem}-{n}{suffix}"
    taken.add(candidate)
    return candidate


def check_image(data: bytes, name: str, limits: Limits) -> str:
    """Check that ``data`` is an image worth keeping, from its header and a structural
    check (no full decode); return the file extension its format calls for."""
    from PIL import Image, UnidentifiedImageError

    from .runtime import check_pixels, ImageTooLarge

    if not data:
        raise Refused(422, f"{name!r} is empty")
    if len(data) > limits.max_file_bytes:
        raise Refused(413, f"{name!r} is {len(data) / 2**20:.1f} MB; the limit for one file is {limits.max_file_mb:g} MB")
    try:
        with Image.open(io.BytesIO(data)) as im:
            check_pixels(im.size, limits.max_pixels)
            fmt = im.format
            im.verify()
    except ImageTooLarge as exc:
        raise Refused(413, f"{name!r} is too large: {exc}") from None
    except UnidentifiedImageError:
        raise Refused(415, f"{name!r} is not an image (or not a format that can be read: JPEG, PNG, GIF, BMP, WebP, TIFF)") from None
    except Image.DecompressionBombError:
        raise Refused(413, f"{name!r} has too many pixels (decompression bomb guard)") from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises many kinds for damaged files
        raise Refused(422, f"{name!r} is a damaged image ({exc})") from None
    if fmt not in _FORMAT_EXTENSIONS:
        raise Refused(415, f"{name!r} is a {fmt} image; use JPEG, PNG, GIF, BMP, WebP or TIFF")
    return _FORMAT_EXTENSIONS[fmt]


def image_file_name(name: str, ext: str) -> str:
    """A safe file name for an image: the user's base name, with an extension that agrees with its format."""
    from ..data.check import EXTENSION_FORMATS

    base = safe_name(os.path.basename(name.replace("\\", "/")) or "image", "file name")
    stem, suffix = os.path.splitext(base)
    fmt = next((f for f, e in _FORMAT_EXTENSIONS.items() if e == ext), None)
    if suffix.lower() in EXTENSION_FORMATS and fmt in EXTENSION_FORMATS[suffix.lower()]:
        return base
    return f"{stem or 'image'}{ext}"


def zip_members(data: bytes, limits: Limits) -> list[tuple[str, str, bytes]]:
    """(class, file name, bytes) of each image in a zip of class folders
    (``class/x.jpg`` or ``top/class/x.jpg``), every entry checked before any is used:
    absolute names, ``..``, links, too many entries, entries too large, too much in all or
    compressed suspiciously well (a zip bomb) refuse the whole archive."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise Refused(422, f"the upload is not a readable zip archive ({exc})") from None
    if len(infos) > limits.max_files:
        raise Refused(413, f"the zip has {len(infos)} entries; the limit is {limits.max_files}")
    total, entries = 0, []
    for info in infos:
        name = info.filename
        parts = name.replace("\\", "/").split("/")
        if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts:
            raise Refused(422, f"the zip entry {name!r} points outside the archive's folder; nothing was added")
        if (info.external_attr >> 16) & 0o170000 == 0o120000:
            raise Refused(422, f"the zip entry {name!r} is a symbolic link; nothing was added")
        if info.is_dir():
            continue
        parts = [p for p in parts if p not in ("", ".")]
        if not parts or parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts):
            continue  # folders' metadata and hidden files (.DS_Store)
        if info.file_size > limits.max_file_bytes:
            raise Refused(413, f"the zip entry {name!r} is {info.file_size / 2**20:.1f} MB; the limit for one file is {limits.max_file_mb:g} MB")
        if info.file_size > 1 << 20 and info.file_size > limits.max_zip_ratio * max(info.compress_size, 1):
            raise Refused(413, f"the zip entry {name!r} expands {info.file_size / max(info.compress_size, 1):.0f} times; refused as a zip bomb")
        total += info.file_size
        if total > limits.max_zip_total_mb * 2**20:
            raise Refused(413, f"the zip expands to more than {limits.max_zip_total_mb:g} MB; refused")
        entries.append((info, parts))
    if not entries:
        raise Refused(422, "the zip holds no files; expected one folder per class with images in it")
    # One folder around everything (photos/cat/x.jpg) is the archive's, not a class.
    tops = {parts[0] for _, parts in entries}
    strip = len(tops) == 1 and all(len(parts) >= 3 for _, parts in entries)
    out = []
    for info, parts in entries:
        parts = parts[1:] if strip else parts
        if len(parts) < 2:
            raise Refused(422, f"the zip entry {info.filename!r} is not inside a class folder; expected class/image files")
        with archive.open(info) as f:  # the declared size may lie: read at most one byte more
            content = f.read(info.file_size + 1)
        if len(content) != info.file_size:
            raise Refused(422, f"the zip entry {info.filename!r} is not the size its header says; refused")
        out.append((parts[0], parts[-1], content))
    return out


# --------------------------------------------------------------------------- projects


class Projects:
    """The projects under ``WORKDIR/projects``: their metadata and their examples."""

    def __init__(self, workdir: str | Path, limits: Limits = Limits()):
        self.root = Path(workdir).absolute() / "projects"
        self.root.mkdir(parents=True, exist_ok=True)
        self.limits = limits
        self.lock = threading.RLock()  # metadata and data changes, one at a time

    # metadata -------------------------------------------------------------------------------

    def dir(self, pid: str) -> Path:
        if not _ID.match(pid or "") or not (self.root / pid / "project.json").is_file():
            raise Refused(404, f"no project {pid!r}")
        return self.root / pid

    def read(self, pid: str) -> dict[str, Any]:
        return json.loads((self.dir(pid) / "project.json").read_text(encoding="utf-8"))

    def update(self, pid: str, change: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
        with self.lock:
            meta = self.read(pid)
            change(meta)
            _write_json(self.dir(pid) / "project.json", meta)
            return meta

    def ids(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if _ID.match(p.name) and (p / "project.json").is_file())

    def summaries(self) -> list[dict[str, Any]]:
        out = []
        for pid in self.ids():
            try:
                meta = self.read(pid)
            except (OSError, ValueError):
                continue  # a project being deleted, or damaged by hand
            out.append({k: meta[k] for k in ("id", "name", "modality", "created")})
        return sorted(out, key=lambda m: m["created"], reverse=True)

    def create(self, name: str, modality: str) -> dict[str, Any]:
        name = (name or "").strip()
        if not name or len(name) > 200:
            raise Refused(422, "a project needs a name of 1 to 200 characters")
        if modality not in MODALITIES:
            raise Refused(422, f"modality must be image or text, not {modality!r}")
        slug = re.sub(r"[^a-z0-9]+", "-", unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower()).strip("-")[:40]
        pid = f"{slug or 'project'}-{uuid.uuid4().hex[:6]}"
        meta = {"id": pid, "name": name, "modality": modality, "created": _now(), "classes": [], "runs": []}
        with self.lock:
            tmp = Path(tempfile.mkdtemp(prefix=".new-", dir=self.root))
            (tmp / "data").mkdir()
            _write_json(tmp / "project.json", meta)
            os.replace(tmp, self.root / pid)
        return meta

    def rename(self, pid: str, name: str) -> dict[str, Any]:
        name = (name or "").strip()
        if not name or len(name) > 200:
            raise Refused(422, "a project needs a name of 1 to 200 characters")
        return self.update(pid, lambda m: m.update(name=name))

    def delete(self, pid: str) -> None:
        with self.lock:
            src = self.dir(pid)
            trash = self.root / f".deleted-{pid}-{uuid.uuid4().hex[:6]}"
            os.replace(src, trash)  # gone from the list at once, then removed
        shutil.rmtree(trash, ignore_errors=True)

    # examples ----------------------------------------------------------------------------------

    def data_dir(self, pid: str) -> Path:
        return self.dir(pid) / "data"

    def add_class(self, pid: str, name: str) -> str:
        meta = self.read(pid)
        cls = self._class_name(meta, name)
        with self.lock:
            if meta["modality"] == "image":
                (self.data_dir(pid) / cls).mkdir(exist_ok=True)
            self.update(pid, lambda m: m["classes"].append(cls) if cls not in m["classes"] else None)
        return cls

    def _class_name(self, meta: dict[str, Any], name: str) -> str:
        if meta["modality"] == "image":
            return safe_name(name, "class name")
        label = " ".join(str(name).split())  # a label is one line of text
        if not label or len(label) > 200:
            raise Refused(422, "a class name needs 1 to 200 characters")
        return label

    def remove_class(self, pid: str, cls: str) -> None:
        meta = self.read(pid)
        with self.lock:
            if meta["modality"] == "image":
                folder = inside(self.data_dir(pid), cls)
                if folder.is_dir() and folder.parent == self.data_dir(pid).resolve():
                    trash = folder.with_name(f".deleted-{uuid.uuid4().hex[:6]}")
                    os.replace(folder, trash)
                    shutil.rmtree(trash, ignore_errors=True)
            else:
                rows = self.texts(pid)
                self._write_texts(pid, [r for r in rows if r[1] != cls])
            self.update(pid, lambda m: m.update(classes=[c for c in m["classes"] if c != cls]))

    def classes(self, pid: str) -> dict[str, list]:
        """Each class with its examples: image file names, or (row, text) pairs."""
        meta = self.read(pid)
        found: dict[str, list] = {c: [] for c in meta["classes"]}
        if meta["modality"] == "image":
            data = self.data_dir(pid)
            from ..data.images import is_image_file

            for folder in sorted(p for p in data.iterdir() if p.is_dir() and not p.name.startswith(".")):
                found.setdefault(folder.name, [])
                found[folder.name] = sorted(f.relative_to(folder).as_posix() for f in folder.rglob("*")
                                            if f.is_file() and is_image_file(f))
        else:
            for i, (text, label) in enumerate(self.texts(pid)):
                found.setdefault(label, []).append((i, text))
        return found

    def add_images(self, pid: str, files: Sequence[tuple[str, str, bytes]]) -> list[str]:
        """Add ``(class, file name, bytes)`` images; every one is checked first, and one
        bad file refuses them all."""
        meta = self.read(pid)
        if meta["modality"] != "image":
            raise Refused(422, "this is a text project; add texts, or a CSV / TSV / JSON Lines table")
        if not files:
            raise Refused(422, "no image files in the upload")
        if len(files) > self.limits.max_files:
            raise Refused(413, f"{len(files)} files in one upload; the limit is {self.limits.max_files}")
        planned = []
        for cls, name, data in files:
            cls = self._class_name(meta, cls)
            ext = check_image(data, name, self.limits)
            planned.append((cls, image_file_name(name, ext), data))
        added = []
        with self.lock:
            data_dir, taken = self.data_dir(pid), set()
            for cls, name, data in planned:
                folder = data_dir / cls
                folder.mkdir(exist_ok=True)
                final = _unique(folder, name, taken)
                _write_bytes(inside(data_dir, cls, final), data)
                added.append(f"{cls}/{final}")
            new = [c for c in dict.fromkeys(c for c, _, _ in planned)]
            self.update(pid, lambda m: m["classes"].extend(c for c in new if c not in m["classes"]))
        return added

    def remove_image(self, pid: str, cls: str, name: str) -> None:
        with self.lock:
            path = inside(self.data_dir(pid), cls, name)
            if not path.is_file():
                raise Refused(404, f"no example {cls}/{name}")
            path.unlink()

    def image_path(self, pid: str, cls: str, name: str) -> Path:
        path = inside(self.data_dir(pid), cls, name)
        if not path.is_file():
            raise Refused(404, f"no example {cls}/{name}")
        return path

    def texts(self, pid: str) -> list[tuple[str, str]]:
        path = self.data_dir(pid) / TEXTS_FILE
        if not path.is_file():
            return []
        with open(path, newline="", encoding="utf-8") as f:
            return [(r["text"], r["label"]) for r in csv.DictReader(f)]

    def _write_texts(self, pid: str, rows: Sequence[tuple[str, str]]) -> None:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["text", "label"])
        writer.writerows(rows)
        _write_bytes(self.data_dir(pid) / TEXTS_FILE, buf.getvalue().encode("utf-8"))

    def add_texts(self, pid: str, pairs: Sequence[tuple[Any, Any]]) -> int:
        """Add ``(text, label)`` pairs; all are checked first. Line breaks inside a text
        are kept (the table quotes them)."""
        meta = self.read(pid)
        if meta["modality"] != "text":
            raise Refused(422, "this is an image project; add image files or a zip of class folders")
        rows = []
        for i, (text, label) in enumerate(pairs):
            if not isinstance(text, str) or not text.strip():
                raise Refused(422, f"text {i + 1} is empty")
            if len(text) > self.limits.max_text_chars:
                raise Refused(413, f"text {i + 1} has {len(text)} characters; the limit is {self.limits.max_text_chars}")
            rows.append((text.strip(), self._class_name(meta, label)))
        if not rows:
            raise Refused(422, "no text to add")
        with self.lock:
            existing = self.texts(pid)
            if len(existing) + len(rows) > self.limits.max_texts:
                raise Refused(413, f"a project holds at most {self.limits.max_texts} texts")
            self._write_texts(pid, existing + rows)
            new = list(dict.fromkeys(label for _, label in rows))
            self.update(pid, lambda m: m["classes"].extend(c for c in new if c not in m["classes"]))
        return len(rows)

    def add_table(self, pid: str, filename: str, data: bytes) -> tuple[int, list]:
        """Add the texts of a CSV / TSV / JSON Lines table (text and label columns found
        as `headstart train` finds them); returns how many were added and what was skipped."""
        from ..data.labels import label_names
        from ..data.textdata import read_table

        suffix = os.path.splitext(filename or "")[1].lower()
        if suffix not in _TABLE_SUFFIXES:
            raise Refused(415, f"{filename!r} is not a table; upload a .csv, .tsv or .jsonl file with text and label columns")
        if len(data) > self.limits.max_file_bytes:
            raise Refused(413, f"{filename!r} is {len(data) / 2**20:.1f} MB; the limit for one file is {self.limits.max_file_mb:g} MB")
        with tempfile.TemporaryDirectory(prefix="headstart-table-") as tmp:
            path = Path(tmp) / f"upload{suffix}"
            path.write_bytes(data)
            try:
                table = read_table(path)
            except DataError as exc:
                # the CLI's advice (--text-column) has no place here: the columns are renamed instead
                message = re.sub(r"Pass --(text|label)-column NAME", r"Name the \1 column '\1'", str(exc))
                raise Refused(422, message.replace(str(path), filename)) from None
        pairs = list(zip(table.texts, label_names(table.labels, table.classes)))  # "a;b" stays "a;b"
        skipped = [(where.replace(str(path), filename), why) for where, why in table.skipped]
        return self.add_texts(pid, pairs), skipped

    def remove_text(self, pid: str, index: int, text: str | None = None) -> None:
        with self.lock:
            rows = self.texts(pid)
            if not 0 <= index < len(rows) or (text is not None and rows[index][0] != text):
                raise Refused(409, "that text is no longer at that place; reload the project")
            del rows[index]
            self._write_texts(pid, rows)

    def training_data(self, pid: str) -> Path:
        """What `train` and `check` read: the class folders, or the table of texts."""
        meta = self.read(pid)
        return self.data_dir(pid) if meta["modality"] == "image" else self.data_dir(pid) / TEXTS_FILE

    def snapshot(self, pid: str, rid: str) -> Path:
        """A copy of the data as it is now, for one run: hard links (files are replaced,
        never changed in place, so a link keeps the version the run trained on)."""
        meta = self.read(pid)
        dest = self.dir(pid) / "snapshots" / rid
        with self.lock:
            tmp = dest.with_name(f".{rid}.{uuid.uuid4().hex[:6]}.tmp")
            dest.parent.mkdir(parents=True, exist_ok=True)

            def link(s, d):
                try:
                    os.link(s, d)
                except OSError:
                    shutil.copy2(s, d)

            shutil.copytree(self.data_dir(pid), tmp, copy_function=link,
                            ignore=lambda d, names: [n for n in names if n.startswith(".")])
            shutil.rmtree(dest, ignore_errors=True)  # left by a start that never began training
            os.replace(tmp, dest)
        return dest if meta["modality"] == "image" else dest / TEXTS_FILE

    # runs ----------------------------------------------------------------------------------------

    def run_dir(self, pid: str, rid: str) -> Path:
        if not _ID.match(rid or ""):
            raise Refused(404, f"no run {rid!r}")
        return self.dir(pid) / "runs" / rid

    def run(self, pid: str, rid: str) -> dict[str, Any]:
        for r in self.read(pid)["runs"]:
            if r["id"] == rid:
                return r
        raise Refused(404, f"no run {rid!r} in project {pid!r}")

    def update_run(self, pid: str, rid: str, /, **changes: Any) -> dict[str, Any]:
        def change(meta):
            for r in meta["runs"]:
                if r["id"] == rid:
                    r.update(changes)

        self.update(pid, change)
        return self.run(pid, rid)

    def log_path(self, pid: str, rid: str) -> Path:
        return self.dir(pid) / "logs" / f"{rid}.log"


# --------------------------------------------------------------------------- training


def _process_alive(pid: int, run_dir: Path) -> bool:
    """Whether ``pid`` is still the training of ``run_dir`` (Linux: its command line
    names the run directory; elsewhere, unknown is taken as no)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return os.fsencode(str(run_dir)) in cmdline


class _Adopted:
    """A training started by an earlier studio that is still running: watched by pid."""

    def __init__(self, pid: int, run_dir: Path):
        self.pid, self.run_dir, self.returncode = pid, run_dir, None

    def poll(self):
        if self.returncode is None and not _process_alive(self.pid, self.run_dir):
            self.returncode = 0 if RunDir(self.run_dir).has_model() else 1
        return self.returncode

    def wait(self, timeout: float | None = None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout)
            time.sleep(0.5)
        return self.returncode


def train_help(command: Sequence[str], env: dict[str, str]) -> str:
    try:
        return subprocess.run([*command, "train", "--help"], capture_output=True, text=True, timeout=120, env=env).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


class Trainer:
    """One training at a time in a subprocess; the rest wait in a queue, in order."""

    def __init__(self, projects: Projects, command: Sequence[str] | None = None,
                 train_args: dict[str, Sequence[str]] | None = None):
        self.projects = projects
        self.command = list(command or [sys.executable, "-m", "headstart"])
        self.train_args = {k: list(v) for k, v in (train_args or {}).items()}
        self.env = dict(os.environ)
        # The child runs the same headstart as the studio, wherever it was imported from.
        package_root = str(Path(__file__).resolve().parents[2])
        self.env["PYTHONPATH"] = os.pathsep.join([package_root, *filter(None, [self.env.get("PYTHONPATH")])])
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self.queue: deque[tuple[str, str]] = deque()
        self.current: tuple[str, str, Any] | None = None
        self.cond = threading.Condition()
        self.stopping = False
        self.cancelled: set[tuple[str, str]] = set()
        self.thread: threading.Thread | None = None
        self.budget_option: dict[str, str] | None = None  # {"unit": "seconds" | "minutes"} once known
        self.options_known = threading.Event()

    # start and stop -------------------------------------------------------------------------------

    def start(self) -> None:
        self.recover()
        self.thread = threading.Thread(target=self._work, name="headstart-studio-trainer", daemon=True)
        self.thread.start()
        threading.Thread(target=self._detect_options, name="headstart-studio-options", daemon=True).start()

    def _detect_options(self) -> None:
        text = train_help(self.command, self.env)
        match = re.search(r"--time-budget\b(.*?)(?=\n\s+--|\Z)", text, re.S)
        if match:
            self.budget_option = {"unit": "minutes" if "minute" in match.group(1).lower() else "seconds"}
        self.options_known.set()

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop the worker; a running training gets SIGTERM (it keeps a checkpoint) and its
        run is marked cut. One watched from an earlier studio is left to finish."""
        with self.cond:
            self.stopping = True
            current = self.current
            self.cond.notify_all()
        if current is not None and isinstance(current[2], _Adopted):
            return
        if current is not None:
            proc = current[2]
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait(10)
        if self.thread is not None:
            self.thread.join(timeout)

    def recover(self) -> None:
        """After a restart: a run that was running is finished (its model is there),
        still running (its process lives on: watched again) or cut; queued runs queue again."""
        queued = []
        for pid in self.projects.ids():
            try:
                meta = self.projects.read(pid)
            except (OSError, ValueError):
                continue
            for run in meta["runs"]:
                run_dir = self.projects.run_dir(pid, run["id"])
                if run["state"] == "running":
                    if run.get("pid") and _process_alive(run["pid"], run_dir) and self.current is None:
                        self.current = (pid, run["id"], _Adopted(run["pid"], run_dir))
                    elif RunDir(run_dir).has_model():
                        self._finish(pid, run["id"], 0)
                    else:
                        self.projects.update_run(pid, run["id"], state="cut", ended=_now(), pid=None,
                                                 message="the studio stopped during this training; the run was cut")
                elif run["state"] == "queued":
                    queued.append((run["created"], pid, run["id"]))
        self.queue.extend((pid, rid) for _, pid, rid in sorted(queued))

    # queue ---------------------------------------------------------------------------------------------

    def submit(self, pid: str, budget_minutes: float | None = None) -> dict[str, Any]:
        meta = self.projects.read(pid)
        rid = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:4]
        budget = None
        if budget_minutes is not None:
            if self.budget_option is None:
                raise Refused(422, "this headstart's train has no --time-budget; train without a time budget")
            if not 0 < budget_minutes <= 7 * 24 * 60:
                raise Refused(422, "the time budget is a number of minutes, more than 0")
            budget = budget_minutes
        run = {"id": rid, "state": "queued", "kind": "train", "created": _now(), "started": None, "ended": None,
               "message": "", "budget_minutes": budget, "metrics": None, "export": None, "pid": None}
        self.projects.update(pid, lambda m: m["runs"].append(run))
        with self.cond:
            self.queue.append((pid, rid))
            self.cond.notify_all()
        log.info("queued %s/%s (%s)", pid, rid, meta["modality"])
        return run

    def resume(self, pid: str, rid: str) -> dict[str, Any]:
        run = self.projects.run(pid, rid)
        run_dir = self.projects.run_dir(pid, rid)
        if run["state"] not in ("cut", "cancelled", "failed") or not RunDir(run_dir).started():
            raise Refused(409, f"run {rid} cannot be resumed (it is {run['state']}; only a cut, cancelled or failed run that started training can be)")
        if RunDir(run_dir).finished():
            raise Refused(409, f"run {rid} already finished")
        with self.cond:
            run = self.projects.update_run(pid, rid, state="queued", kind="resume", message="", ended=None)
            self.queue.append((pid, rid))
            self.cond.notify_all()
        return run

    def cancel(self, pid: str, rid: str) -> dict[str, Any]:
        with self.cond:
            if (pid, rid) in self.queue:
                self.queue.remove((pid, rid))
                return self.projects.update_run(pid, rid, state="cancelled", ended=_now(), message="cancelled before it started")
            if self.current is not None and self.current[:2] == (pid, rid):
                self.cancelled.add((pid, rid))
                _signal_group(self.current[2], signal.SIGTERM)
                return self.projects.run(pid, rid)
        raise Refused(409, f"run {rid} is not queued or running")

    def forget(self, pid: str) -> None:
        """A project is being deleted: drop its queued runs and stop its running one."""
        proc = None
        with self.cond:
            for item in [q for q in self.queue if q[0] == pid]:
                self.queue.remove(item)
            if self.current is not None and self.current[0] == pid:
                self.cancelled.add(self.current[:2])
                proc = self.current[2]
        if proc is not None:
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)

    def position(self, pid: str, rid: str) -> int | None:
        """1 for the next to start, 2 after it, ...; None when not queued."""
        with self.cond:
            for i, item in enumerate(self.queue):
                if item == (pid, rid):
                    return i + 1
        return None

    def status(self) -> dict[str, Any]:
        with self.cond:
            return {"running": list(self.current[:2]) if self.current else None,
                    "queued": [list(q) for q in self.queue]}

    # the worker ----------------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self.cond:
                while not self.stopping and self.current is None and not self.queue:
                    self.cond.wait()
                if self.stopping:
                    return
                if self.current is None:
                    pid, rid = self.queue.popleft()
                    try:
                        proc = self._launch(pid, rid)
                    except Exception as exc:  # noqa: BLE001 - a project deleted meanwhile, a disk error: the next one goes on
                        log.exception("could not start %s/%s", pid, rid)
                        try:
                            self.projects.update_run(pid, rid, state="failed", ended=_now(), message=f"could not start: {exc}")
                        except HeadstartError:
                            pass
                        continue
                    self.current = (pid, rid, proc)
                pid, rid, proc = self.current
            returncode = proc.wait()
            with self.cond:
                try:
                    if self.stopping and returncode != 0 and (pid, rid) not in self.cancelled:
                        self.projects.update_run(pid, rid, state="cut", ended=_now(), pid=None,
                                                 message="the studio stopped during this training; the run was cut")
                    else:
                        self._finish(pid, rid, returncode, cancelled=(pid, rid) in self.cancelled)
                except HeadstartError:
                    pass  # the project was deleted
                self.cancelled.discard((pid, rid))
                self.current = None
                self.cond.notify_all()

    def _launch(self, pid: str, rid: str) -> subprocess.Popen:
        meta = self.projects.read(pid)
        run = self.projects.run(pid, rid)
        run_dir = self.projects.run_dir(pid, rid)
        if run["kind"] == "resume":
            cmd = [*self.command, "train", "--resume", str(run_dir), "--no-progress"]
        else:
            data = self.projects.snapshot(pid, rid)
            run_dir.parent.mkdir(parents=True, exist_ok=True)
            cmd = [*self.command, "train", str(data), "--out", str(run_dir), "--no-progress",
                   *self.train_args.get(meta["modality"], [])]
            if run.get("budget_minutes") and self.budget_option:
                minutes = float(run["budget_minutes"])
                value = minutes if self.budget_option["unit"] == "minutes" else minutes * 60
                cmd += ["--time-budget", f"{value:g}"]
        log_path = self.projects.log_path(pid, rid)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as out:
            if run["kind"] == "resume":
                out.write(b"\n--- resumed ---\n")
            # A process group of its own: Ctrl-C in the studio's terminal does not reach it
            # unasked (the studio stops it cleanly), and a cancel reaches the whole group.
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=self.projects.dir(pid), env=self.env, start_new_session=True)
        self.projects.update_run(pid, rid, state="running", started=_now(), pid=proc.pid, message="")
        log.info("training %s/%s: %s", pid, rid, " ".join(cmd))
        return proc

    def _finish(self, pid: str, rid: str, returncode: int | None, cancelled: bool = False) -> None:
        run_dir = RunDir(self.projects.run_dir(pid, rid))
        if run_dir.finished() and returncode == 0:
            metrics = None
            try:
                val = run_dir.metrics().get("val") or {}
                metrics = {k: val.get(k) for k in ("accuracy", "macro_f1", "n")}
            except (HeadstartError, AttributeError, TypeError):
                pass
            self.projects.update_run(pid, rid, state="finished", ended=_now(), pid=None, metrics=metrics, message="")
        elif cancelled:
            kept = run_dir.checkpoints.exists()
            self.projects.update_run(pid, rid, state="cancelled", ended=_now(), pid=None,
                                     message="cancelled" + ("; the checkpoint is kept and Resume continues it" if kept else ""))
        else:
            self.projects.update_run(pid, rid, state="failed", ended=_now(), pid=None,
                                     message=_last_error(self.projects.log_path(pid, rid), returncode))


def _signal_group(proc, signum: int) -> None:
    """Signal the training's process group (where there are process groups; else the process)."""
    try:
        if hasattr(os, "killpg"):
            os.killpg(proc.pid, signum)
        else:
            os.kill(proc.pid, signal.SIGTERM if signum != getattr(signal, "SIGKILL", None) else signum)
    except (ProcessLookupError, PermissionError, OSError):
        pass


def _last_error(path: Path, returncode: int | None) -> str:
    try:
        lines = [l.strip() for l in path.read_text(encoding="utf-8", errors="replace").splitlines() if l.strip()]
    except OSError:
        lines = []
    errors = [l for l in lines if l.startswith("error:")]
    line = errors[-1] if errors else (lines[-1] if lines else "")
    return f"training stopped with exit status {returncode}" + (f": {line}" if line else "")


# --------------------------------------------------------------------------- the app


def _check_findings(report: dict[str, Any], data: Path, modality: str) -> dict[str, Any]:
    """The check's report with each item as ``{"text", "links"}``: image paths shown relative
    to the data folder, each linked to its class and file name."""
    root = str(data.resolve()) + os.sep
    pattern = re.compile(re.escape(root) + r"([^" + re.escape(os.sep) + r"]+)" + re.escape(os.sep) + r"(.+?)(?= = | \(|$)")
    for finding in report.get("findings", []):
        items = []
        for item in finding.get("items", []):
            links = []
            if modality == "image":
                links = [{"class": m.group(1), "name": m.group(2).replace(os.sep, "/")} for m in pattern.finditer(item)]
                item = item.replace(root, "")
            items.append({"text": item, "links": links})
        finding["items"] = items
    return report


def create_studio_app(
    workdir: str | Path,
    *,
    token: str | None = None,
    allowed_hosts: Sequence[str] | None = None,
    limits: Limits = Limits(),
    train_command: Sequence[str] | None = None,
    train_args: dict[str, Sequence[str]] | None = None,
):
    """The studio's FastAPI app over the projects in ``workdir``.

    ``token``: every request must carry it (``Authorization: Bearer``, ``?token=`` - which
    also sets a same-site cookie for the page's own requests - or that cookie).
    ``allowed_hosts``: Host header names accepted (a guard against DNS rebinding on
    loopback); None accepts any. ``train_command`` / ``train_args``: how training is
    started (default ``python -m headstart``) and extra ``train`` options per modality.
    """
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, HTTPException, Query, Request
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
    from starlette.background import BackgroundTask
    from starlette.concurrency import run_in_threadpool
    from starlette.datastructures import UploadFile

    from .serve import model_preprocessing, parse_multipart, prepare_image, read_limited_body, static_text, top_k_results

    projects = Projects(workdir, limits)
    trainer = Trainer(projects, train_command, train_args)
    models: dict[tuple[str, str], Any] = {}  # loaded models, the latest few
    models_lock = threading.Lock()
    exporting: set[tuple[str, str]] = set()

    @asynccontextmanager
    async def lifespan(app):
        trainer.start()
        try:
            yield
        finally:
            await run_in_threadpool(trainer.shutdown)

    app = FastAPI(title="headstart studio", version=__version__, lifespan=lifespan,
                  description="Make a classifier in the browser: projects, examples, check, train, try, export.")
    app.state.projects, app.state.trainer = projects, trainer

    @app.exception_handler(Refused)
    async def refused(request: Request, exc: Refused):
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.exception_handler(HeadstartError)
    async def headstart_error(request: Request, exc: HeadstartError):
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        host = request.headers.get("host", "")
        hostname = host[1:host.index("]")] if host.startswith("[") and "]" in host else host.rsplit(":", 1)[0]
        if allowed_hosts is not None and hostname not in allowed_hosts:
            return JSONResponse({"detail": f"host {hostname!r} is not served here; open http://127.0.0.1 instead"}, status_code=403)
        origin = request.headers.get("origin")
        if request.method not in ("GET", "HEAD", "OPTIONS") and origin and origin != "null":
            from urllib.parse import urlsplit

            if urlsplit(origin).netloc != host:
                return JSONResponse({"detail": "requests from other sites are refused"}, status_code=403)
        from_query = False
        if token:
            auth = request.headers.get("authorization", "")
            supplied = auth[7:] if auth.lower().startswith("bearer ") else None
            if supplied is None and "token" in request.query_params:
                supplied, from_query = request.query_params["token"], True
            if supplied is None:
                supplied = request.cookies.get(TOKEN_COOKIE)
            if supplied is None or not hmac.compare_digest(supplied.encode(), token.encode()):
                return JSONResponse({"detail": "this studio needs its token: open the address it printed at start "
                                               "(ending in ?token=...), or send Authorization: Bearer TOKEN"},
                                    status_code=401, headers={"WWW-Authenticate": "Bearer"})
        response = await call_next(request)
        if from_query:
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    # page ---------------------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(static_text("studio.html"), headers={"Cache-Control": "no-store"})

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        kinds = {"studio.js": "text/javascript", "studio.css": "text/css"}
        if name not in kinds:
            raise HTTPException(404, "not found")
        return Response(static_text(name), media_type=kinds[name], headers={"Cache-Control": "no-store"})

    @app.get("/api/info")
    async def info() -> dict[str, Any]:
        """The version, the limits, the training queue and whether train takes a time budget."""
        return {"headstart_version": __version__, "time_budget": trainer.budget_option is not None,
                "options_known": trainer.options_known.is_set(), "queue": trainer.status(),
                "limits": {k: getattr(limits, k) for k in limits.__dataclass_fields__}}

    # projects -------------------------------------------------------------------------------------

    def describe(pid: str) -> dict[str, Any]:
        meta = projects.read(pid)
        classes = projects.classes(pid)
        if meta["modality"] == "image":
            cls_out = [{"name": c, "count": len(items), "examples": items[:500]} for c, items in classes.items()]
        else:
            cls_out = [{"name": c, "count": len(items), "examples": [{"index": i, "text": t} for i, t in items[:500]]}
                       for c, items in classes.items()]
        for run in meta["runs"]:
            run["position"] = trainer.position(pid, run["id"])
            run_dir = RunDir(projects.run_dir(pid, run["id"]))
            run["has_report"] = (run_dir.path / REPORT_FILE).is_file()
            run["has_model"] = run_dir.has_model()
            run["resumable"] = run["state"] in ("cut", "cancelled", "failed") and run_dir.resumable()
            run.pop("pid", None)
        return {**{k: meta[k] for k in ("id", "name", "modality", "created")}, "classes": cls_out,
                "runs": meta["runs"][::-1]}

    async def json_body(request: Request) -> dict[str, Any]:
        body = await read_limited_body(request, limits.max_upload_bytes, limits.max_upload_mb)
        try:
            data = json.loads(body or b"{}")
        except (ValueError, RecursionError):
            raise HTTPException(422, "the request body is not valid JSON") from None
        if not isinstance(data, dict):
            raise HTTPException(422, "expected a JSON object")
        return data

    @app.get("/api/projects")
    async def list_projects() -> dict[str, Any]:
        return {"projects": projects.summaries()}

    @app.post("/api/projects", status_code=201)
    async def create_project(request: Request) -> dict[str, Any]:
        data = await json_body(request)
        meta = projects.create(data.get("name", ""), data.get("modality", ""))
        return describe(meta["id"])

    @app.get("/api/projects/{pid}")
    async def get_project(pid: str) -> dict[str, Any]:
        return describe(pid)

    @app.patch("/api/projects/{pid}")
    async def rename_project(pid: str, request: Request) -> dict[str, Any]:
        projects.rename(pid, (await json_body(request)).get("name", ""))
        return describe(pid)

    @app.delete("/api/projects/{pid}")
    async def delete_project(pid: str) -> dict[str, Any]:
        projects.dir(pid)
        await run_in_threadpool(trainer.forget, pid)
        with models_lock:
            for key in [k for k in models if k[0] == pid]:
                del models[key]
        await run_in_threadpool(projects.delete, pid)
        return {"deleted": pid}

    # examples -------------------------------------------------------------------------------------

    @app.post("/api/projects/{pid}/classes")
    async def add_class(pid: str, request: Request) -> dict[str, Any]:
        projects.add_class(pid, (await json_body(request)).get("name", ""))
        return describe(pid)

    @app.delete("/api/projects/{pid}/classes/{cls}")
    async def remove_class(pid: str, cls: str) -> dict[str, Any]:
        projects.remove_class(pid, cls)
        return describe(pid)

    async def form(request: Request):
        body = await read_limited_body(request, limits.max_upload_bytes, limits.max_upload_mb)
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "multipart/form-data":
            raise HTTPException(415, "send the files as multipart/form-data")
        return await parse_multipart(request, body, max_files=limits.max_files, max_fields=limits.max_files + 10,
                                     max_part_size=limits.max_text_chars * 4 + 1024)

    @app.post("/api/projects/{pid}/images")
    async def upload_images(pid: str, request: Request) -> dict[str, Any]:
        """Images for one class (field ``class``), or a zip of class folders (a ``.zip`` file)."""
        data = await form(request)
        cls = data.get("class")
        files = []
        for _, value in data.multi_items():
            if isinstance(value, UploadFile):
                files.append((value.filename or "image", await value.read()))
        if not files:
            raise HTTPException(422, "no file in the upload")
        zips = [(n, b) for n, b in files if n.lower().endswith(".zip") or b[:4] == b"PK\x03\x04"]
        if zips:
            if len(files) != 1:
                raise HTTPException(422, "upload a zip on its own")
            items = await run_in_threadpool(zip_members, zips[0][1], limits)
        else:
            if not isinstance(cls, str) or not cls.strip():
                raise HTTPException(422, "say which class the images are for (field 'class')")
            items = [(cls, n, b) for n, b in files]
        added = await run_in_threadpool(projects.add_images, pid, items)
        return {"added": len(added), "files": added, "project": describe(pid)}

    @app.get("/api/projects/{pid}/images/{cls}/{name:path}")
    async def get_image(pid: str, cls: str, name: str, thumb: int = Query(0, ge=0, le=512)) -> Response:
        """An image as uploaded, or (``thumb=N``) cut down to at most N pixels a side, as a JPEG."""
        path = projects.image_path(pid, cls, name)
        if not thumb:
            return FileResponse(path, headers={"Cache-Control": "no-store"})

        def small() -> bytes:
            from .runtime import decode_image

            image = decode_image(path, max_pixels=limits.max_pixels, draft=thumb)
            image.thumbnail((thumb, thumb))
            buf = io.BytesIO()
            image.save(buf, format="JPEG", quality=85)
            return buf.getvalue()

        try:
            data = await run_in_threadpool(small)
        except DataError as exc:
            raise HTTPException(422, f"cannot read {cls}/{name}: {exc}") from None
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=60"})

    @app.delete("/api/projects/{pid}/images/{cls}/{name:path}")
    async def remove_image(pid: str, cls: str, name: str) -> dict[str, Any]:
        projects.remove_image(pid, cls, name)
        return describe(pid)

    @app.post("/api/projects/{pid}/texts")
    async def add_texts(pid: str, request: Request) -> dict[str, Any]:
        """JSON ``{"label": ..., "texts": [...]}`` or a table file (multipart field ``file``)."""
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        skipped: list = []
        if media == "multipart/form-data":
            data = await form(request)
            upload = data.get("file")
            if not isinstance(upload, UploadFile):
                raise HTTPException(422, "no table in the upload (field 'file')")
            added, skipped = await run_in_threadpool(projects.add_table, pid, upload.filename or "", await upload.read())
        else:
            data = await json_body(request)
            texts = data.get("texts")
            if not isinstance(texts, list):
                raise HTTPException(422, 'expected {"label": "...", "texts": ["...", ...]}')
            added = projects.add_texts(pid, [(t, data.get("label", "")) for t in texts])
        return {"added": added, "skipped": [{"where": w, "reason": r} for w, r in skipped[:100]],
                "skipped_count": len(skipped), "project": describe(pid)}

    @app.delete("/api/projects/{pid}/texts/{index}")
    async def remove_text(pid: str, index: int, request: Request) -> dict[str, Any]:
        text = (await json_body(request)).get("text") if request.headers.get("content-length", "0") != "0" else None
        projects.remove_text(pid, index, text)
        return describe(pid)

    @app.get("/api/projects/{pid}/check")
    async def check(pid: str) -> dict[str, Any]:
        """`headstart check` on the data as it is now (the split `train` would make)."""
        from ..data.check import check_path

        meta = projects.read(pid)
        data = projects.training_data(pid)
        if meta["modality"] == "text" and not data.is_file():
            report = {"task": "text", "splits": {}, "findings": [
                {"severity": "error", "kind": "unusable-data", "message": "no texts yet; add some to each class", "items": []}]}
        else:
            report = (await run_in_threadpool(check_path, data, task=meta["modality"])).to_dict()
        return _check_findings(report, projects.data_dir(pid), meta["modality"])

    # training -------------------------------------------------------------------------------------

    @app.post("/api/projects/{pid}/runs", status_code=201)
    async def train(pid: str, request: Request) -> dict[str, Any]:
        data = await json_body(request)
        budget = data.get("budget_minutes")
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float))):
            raise HTTPException(422, "budget_minutes must be a number")
        run = trainer.submit(pid, budget)
        return {"run": run, "project": describe(pid)}

    @app.post("/api/projects/{pid}/runs/{rid}/cancel")
    async def cancel(pid: str, rid: str) -> dict[str, Any]:
        trainer.cancel(pid, rid)
        return describe(pid)

    @app.post("/api/projects/{pid}/runs/{rid}/resume")
    async def resume(pid: str, rid: str) -> dict[str, Any]:
        trainer.resume(pid, rid)
        return describe(pid)

    @app.get("/api/projects/{pid}/runs/{rid}/events")
    async def events(pid: str, rid: str) -> StreamingResponse:
        """Server-sent events: ``log`` (lines of the training's output), ``state`` (the run's
        record, on every change), then ``end`` once the run is over and its output read."""
        projects.run(pid, rid)
        log_path = projects.log_path(pid, rid)

        async def stream():
            offset, last, partial, quiet = 0, None, b"", 0
            while True:
                try:
                    run = projects.run(pid, rid)
                except (HeadstartError, OSError, ValueError):
                    yield "event: end\ndata: {}\n\n"
                    return
                run = {**run, "position": trainer.position(pid, rid)}
                run.pop("pid", None)
                try:
                    with open(log_path, "rb") as f:
                        f.seek(offset)
                        chunk = f.read(1 << 20)
                except OSError:
                    chunk = b""
                offset += len(chunk)
                *lines, partial = (partial + chunk).split(b"\n")
                for line in lines:
                    yield f"event: log\ndata: {json.dumps(line.decode('utf-8', errors='replace'))}\n\n"
                if run != last:
                    yield f"event: state\ndata: {json.dumps(run)}\n\n"
                    last = run
                if run["state"] not in ACTIVE and not chunk:
                    if partial:
                        yield f"event: log\ndata: {json.dumps(partial.decode('utf-8', errors='replace'))}\n\n"
                    yield "event: end\ndata: {}\n\n"
                    return
                quiet = 0 if lines else quiet + 1
                if quiet and quiet % 25 == 0:  # a comment now and then keeps proxies from closing the stream
                    yield ": keep-alive\n\n"
                await asyncio.sleep(0.4)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @app.get("/api/projects/{pid}/runs/{rid}/files/{path:path}")
    async def run_file(pid: str, rid: str, path: str) -> FileResponse:
        """A file of the run directory (its report.html, plots, metrics.json, ...)."""
        projects.run(pid, rid)
        file = inside(projects.run_dir(pid, rid), path)
        if not file.is_file() or "checkpoints" in file.relative_to(projects.run_dir(pid, rid).resolve()).parts:
            raise HTTPException(404, "not found")
        return FileResponse(file, headers={"Cache-Control": "no-store"})

    def finished_model(pid: str, rid: str) -> Path:
        if projects.run(pid, rid)["state"] != "finished":
            raise Refused(409, f"run {rid} has no finished model")
        run_dir = RunDir(projects.run_dir(pid, rid))
        if not run_dir.has_model():
            raise Refused(409, f"run {rid} has no finished model")
        return run_dir.model

    def get_model(pid: str, rid: str):
        from ..classifiers.loading import load

        with models_lock:
            if (pid, rid) in models:
                return models[(pid, rid)]
            model = load(finished_model(pid, rid), device="cpu")
            while len(models) >= 2:
                models.pop(next(iter(models)))
            models[(pid, rid)] = model
            return model

    @app.post("/api/projects/{pid}/runs/{rid}/predict")
    async def predict(pid: str, rid: str, request: Request, top_k: int = Query(5, ge=1, le=100)) -> dict[str, Any]:
        """Try the model: images (multipart ``files``) or texts (JSON ``{"texts": [...]}``)."""
        import numpy as np

        model = await run_in_threadpool(get_model, pid, rid)
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if model.task == "image":
            if media != "multipart/form-data":
                raise HTTPException(415, "this model classifies images; send image files as multipart/form-data")
            data = await form(request)
            uploads = [v for _, v in data.multi_items() if isinstance(v, UploadFile)][:32]
            if not uploads:
                raise HTTPException(422, "no image in the request")
            pre = model_preprocessing(model)
            items, names = [], []
            for upload in uploads:
                name = upload.filename or "image"
                try:
                    items.append(await run_in_threadpool(prepare_image, await upload.read(), pre, limits.max_pixels))
                except DataError as exc:
                    raise HTTPException(422, f"cannot read {name!r}: {exc}") from None
                names.append(name)
        else:
            data = await json_body(request)
            texts = data.get("texts", [data["text"]] if "text" in data else [])
            if not isinstance(texts, list) or not texts or len(texts) > 32:
                raise HTTPException(422, 'send {"texts": ["...", ...]} (1 to 32 texts)')
            for t in texts:
                if not isinstance(t, str) or not t.strip():
                    raise HTTPException(422, "a text is empty; there is nothing to classify")
                if len(t) > limits.max_text_chars:
                    raise HTTPException(413, f"a text has {len(t)} characters; the limit is {limits.max_text_chars}")
            items, names = texts, texts
        probs, scores = await run_in_threadpool(lambda: model.predict_scored(items))
        probs = np.atleast_2d(probs)
        return {"task": model.task, "calibrated": float(getattr(model, "temperature_", 1.0)) != 1.0,
                "results": top_k_results(names, probs, list(model.classes_), top_k, getattr(model, "decision_", None), scores)}

    @app.post("/api/projects/{pid}/runs/{rid}/export")
    async def export(pid: str, rid: str) -> dict[str, Any]:
        """ONNX export with its parity check, beside the model (RUN/model-onnx)."""
        from .export import export_model

        model_dir = finished_model(pid, rid)
        if (pid, rid) in exporting:
            raise HTTPException(409, "this model is being exported already")
        exporting.add((pid, rid))
        try:
            result = await run_in_threadpool(export_model, model_dir, "onnx", model_dir.with_name("model-onnx"))
            summary = {"passed": result.parity.passed, "summary": result.parity.summary, "n": result.parity.n,
                       "source": result.parity.source}
        except HeadstartError as exc:
            summary = {"passed": False, "summary": str(exc)}
        finally:
            exporting.discard((pid, rid))
        projects.update_run(pid, rid, export=summary)
        return {"export": summary, "project": describe(pid)}

    @app.get("/api/projects/{pid}/runs/{rid}/download")
    async def download(pid: str, rid: str, which: str = Query("model", pattern="^(model|onnx)$")) -> FileResponse:
        """A zip of the model directory (``which=onnx``: of the ONNX export)."""
        folder = finished_model(pid, rid)
        if which == "onnx":
            folder = folder.with_name("model-onnx")
            if not folder.is_dir():
                raise HTTPException(404, "no ONNX export yet; export first")
        name = f"{projects.read(pid)['id']}-{rid}-{which}"

        def build() -> str:
            fd, tmp = tempfile.mkstemp(prefix="headstart-studio-", suffix=".zip")
            os.close(fd)
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
                for f in sorted(folder.rglob("*")):
                    if f.is_file():
                        z.write(f, f"{name}/{f.relative_to(folder).as_posix()}")
            return tmp

        tmp = await run_in_threadpool(build)
        return FileResponse(tmp, media_type="application/zip", filename=f"{name}.zip",
                            background=BackgroundTask(os.unlink, tmp))

    return app


def check_binding(host: str, token: str | None) -> None:
    """Refuse to listen beyond loopback without a token."""
    if host not in LOOPBACK_HOSTS and not token:
        raise HeadstartError(f"--host {host} makes the studio reachable from other machines; pass --token "
                             "(a long random secret) to require it on every request, or keep the default 127.0.0.1")


def studio(workdir: str | Path, host: str = "127.0.0.1", port: int = DEFAULT_PORT, *, token: str | None = None,
           ready: Callable[[str], None] | None = None) -> None:
    """Serve the studio with uvicorn until interrupted; ``ready(url)`` is called just before listening."""
    import uvicorn

    check_binding(host, token)
    allowed = None if host not in LOOPBACK_HOSTS else sorted(LOOPBACK_HOSTS)
    app = create_studio_app(workdir, token=token, allowed_hosts=allowed)
    if ready is not None:
        shown = f"[{host}]" if ":" in host else host
        ready(f"http://{shown}:{port}/" + (f"?token={token}" if token else ""))
    # Open event streams last as long as a training: on Ctrl-C they are closed after a few
    # seconds, so the shutdown (which stops the training cleanly) is not held up by them.
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=3)
