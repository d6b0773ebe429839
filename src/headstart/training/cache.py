"""A disk cache for features of a frozen backbone (image features, text embeddings).

A second run on the same images with the same backbone, weights, preprocessing and
precision loads the features instead of recomputing them. The key is a hash of all of
those and of the *content* of every image, so a changed file or setting is never served
stale: any difference means a new key and a fresh computation.

Location: ``cache_dir`` if given, else ``$HEADSTART_CACHE_DIR``, else the user's cache
directory (``$XDG_CACHE_HOME/headstart`` or ``~/.cache/headstart``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from . import distributed

log = logging.getLogger("headstart")


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    if cache_dir:
        return Path(cache_dir)
    if os.environ.get("HEADSTART_CACHE_DIR"):
        return Path(os.environ["HEADSTART_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "headstart"


def file_digest(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def features_key(parts: dict[str, Any], paths: Sequence[str | os.PathLike] = (), texts: Sequence[str] = ()) -> str:
    """A hash of the settings, the content of every file in ``paths`` and every text."""
    h = hashlib.blake2b(digest_size=20)
    h.update(json.dumps(parts, sort_keys=True, default=str).encode())
    for p in paths:
        try:
            h.update(file_digest(p).encode())
        except OSError:
            h.update(b"unreadable")  # the extraction reports it; the key stays well defined
    for t in texts:
        h.update(hashlib.blake2b(t.encode("utf-8"), digest_size=16).digest())
    return h.hexdigest()


def directory_digest(path: str | os.PathLike) -> str:
    """The content of a model directory's weight and config files."""
    h = hashlib.blake2b(digest_size=16)
    for f in sorted(Path(path).glob("*")):
        if f.is_file() and f.suffix in (".safetensors", ".bin", ".json", ".txt", ".model"):
            h.update(f.name.encode() + file_digest(f).encode())
    return h.hexdigest()


def cached(
    root: Path | None, key: str, compute: Callable[[], tuple[torch.Tensor, np.ndarray, list]]
) -> tuple[torch.Tensor, np.ndarray, list]:
    """``compute()`` -> (features, rows, failed), loaded from ``root/key.safetensors`` when
    present, written there atomically otherwise. ``root=None`` turns caching off."""
    from safetensors.torch import load_file, save_file

    if root is None:
        return compute()
    path = root / f"{key}.safetensors"
    world = distributed.world()
    hit = None
    if world.is_main and path.is_file():
        try:
            data = load_file(str(path))
            failed = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
            log.info("loaded cached features %s", path.name)
            hit = data["features"], data["rows"].numpy(), [tuple(f) for f in failed]
        except Exception as exc:  # noqa: BLE001 - a damaged entry is recomputed, never trusted
            log.info("ignoring damaged cache entry %s (%s)", path.name, exc)
    # In a distributed run rank 0's cache decides for all (the others may be on other machines).
    hit = distributed.broadcast(hit)
    if hit is not None:
        return hit
    features, rows, failed = compute()  # in shards, gathered, when distributed
    if not world.is_main:
        return features, rows, failed
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=root, suffix=".tmp")
        os.close(fd)
        save_file({"features": features.contiguous(), "rows": torch.as_tensor(rows)}, tmp)
        path.with_suffix(".json").write_text(json.dumps([list(f) for f in failed]), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("could not write the feature cache in %s (%s); continuing without it", root, exc.strerror or exc)
    return features, rows, failed


def cached_features(
    parts: dict[str, Any] | None,
    cache_dir: str | os.PathLike | None,
    compute: Callable[[], tuple[torch.Tensor, np.ndarray, list]],
    *,
    paths: Sequence[str | os.PathLike] = (),
    texts: Sequence[str] = (),
) -> tuple[torch.Tensor, np.ndarray, list]:
    """``compute()`` through the cache under the key of ``parts`` and the inputs' contents;
    ``parts=None`` (caching off, or weights without a stable identity) just computes."""
    if parts is None:
        return compute()
    return cached(cache_root(cache_dir), features_key(parts, paths, texts), compute)
