"""A saved model is a directory: ``config.json`` + ``model.safetensors``.

Loading reads JSON and safetensors only, needs no training data and executes nothing the
directory contains. Saving is atomic: the directory is written next to its destination and
renamed into place, so an interrupted save leaves the previous model, never half of one.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

from ..errors import ModelDirError

FORMAT = "headstart-model"
# 2: a model whose objective or decision rule is not single-label argmax ("objective",
# "decision" in config.json); it is written only then, so earlier headstart versions refuse
# such a model instead of answering with one label. Version 1 configs are still written and read.
FORMAT_VERSION = 2
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories in one atomic step (Linux renameat2 RENAME_EXCHANGE); False
    where the system or the file system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _swap_into_place(tmp: Path, path: Path) -> None:
    """Replace the model directory ``path`` by the complete ``tmp``. Where an atomic swap
    exists, ``path`` is never missing; elsewhere the old model is renamed aside first and,
    should the process die between the two renames, :func:`read_config` puts it back."""
    if _exchange(tmp, path):
        shutil.rmtree(tmp, ignore_errors=True)  # now the old model
        return
    old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
    old.rmdir()
    os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def _recover(path: Path) -> bool:
    """Put back a model left aside by a save that died between its two renames."""
    for old in sorted(path.parent.glob(f".{path.name}.*.old"), key=lambda p: p.stat().st_mtime, reverse=True):
        if (old / CONFIG_FILE).is_file() and (old / WEIGHTS_FILE).is_file():
            try:
                os.replace(old, path)
            except OSError:
                return False
            return True
    return False


def save_model_dir(
    path: str | Path,
    config: dict[str, Any],
    state_dict: dict[str, torch.Tensor],
    extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (and whatever ``extra`` writes into
    the directory, e.g. tokenizer files) to ``path``, atomically."""
    path = Path(path)
    if not path.exists():
        _recover(path)
    if path.exists() and not path.is_dir():
        raise ModelDirError(f"cannot save a model to {str(path)!r}: it is a file; pass a directory path")
    if path.is_dir() and any(path.iterdir()) and not (path / CONFIG_FILE).is_file():
        raise ModelDirError(
            f"{str(path)!r} exists and is not a headstart model directory; "
            "choose another path so nothing in it is overwritten"
        )
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent))
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; a model directory is not
    except OSError as exc:
        raise ModelDirError(f"cannot write to {str(parent)!r}: {exc.strerror or exc}") from None
    try:
        version = FORMAT_VERSION if config.get("objective") or config.get("decision") else 1
        config = {"format": FORMAT, "format_version": version, **config}
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT})
        with open(tmp / CONFIG_FILE, "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2, ensure_ascii=False)
            f.write("\n")
        if extra is not None:
            extra(tmp)
        for file in tmp.rglob("*"):
            if file.is_file():
                os.chmod(file, 0o666 & ~_umask())
                with open(file, "rb") as f:
                    os.fsync(f.fileno())
        _fsync_dir(tmp)
        if path.exists():
            _swap_into_place(tmp, path)
        else:
            os.replace(tmp, path)
        _fsync_dir(parent)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelDirError(
            f"saving the model to {str(path)!r} failed ({exc.strerror or exc}); any previous model there is intact"
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def read_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        _recover(path)
    if not path.is_dir():
        raise ModelDirError(f"model directory {str(path)!r} does not exist")
    cfg_path = path / CONFIG_FILE
    if not cfg_path.is_file():
        hint = " (a run directory holds it under model/)" if (path / "model" / CONFIG_FILE).is_file() else ""
        raise ModelDirError(f"{str(path)!r} has no {CONFIG_FILE}; it is not a headstart model directory{hint}")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelDirError(f"{str(cfg_path)!r} is not valid JSON ({exc})") from None
    if config.get("format") != FORMAT:
        raise ModelDirError(f"{str(cfg_path)!r} is not a headstart model config (format {config.get('format')!r})")
    if int(config.get("format_version", 0)) > FORMAT_VERSION:
        raise ModelDirError(
            f"{str(path)!r} was saved by a newer headstart (format {config['format_version']}); upgrade headstart"
        )
    return config


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    weights = Path(path) / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelDirError(f"{str(Path(path))!r} has no {WEIGHTS_FILE}")
    try:
        return load_file(str(weights))
    except Exception as exc:  # noqa: BLE001 - any corruption is the same user problem
        raise ModelDirError(f"{str(weights)!r} is damaged or not a safetensors file ({exc})") from None
