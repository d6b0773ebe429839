"""Checkpoints of a training run, and stopping it cleanly.

Inside ``with checkpointing(directory):`` every epoch of every training phase ends with one
file, ``directory/last.pt``, replaced atomically: the phases already finished (their final
weights and history) and the state of the running one (weights, optimizer, scheduler,
gradient scaler, weight average, best weights so far, early-stopping counter, RNG states).
The step loop of contrastive tuning, which has no epochs, saves after the first step that
ends :data:`STEP_SAVE_SECONDS` after its last save.
``checkpointing(directory, resume=True)`` replays the finished phases from the file and
continues the running one after its last saved epoch (or step). Batches are drawn from seeds
that depend only on (seed, epoch), so a resumed run on a CPU ends with the same weights as one
that was never interrupted.

The file is read with ``torch.load(weights_only=True)``: tensors, numbers and strings only,
nothing in it is executed.

SIGINT and SIGTERM raise :class:`TrainingInterrupted` (never in the middle of writing a
checkpoint); the epoch (or the steps since the last save) that was running is trained again
on resume.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import random
import signal
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from . import distributed
from ..errors import HeadstartError

log = logging.getLogger("headstart")

CHECKPOINT_FILE = "last.pt"
FORMAT_VERSION = 1
# A loop of optimizer steps without epochs (contrastive tuning) saves its state after the
# first step that ends this many seconds after its last save (or its start): an interrupt loses
# at most about that much work, and a tuning of a few dozen seconds writes no more than its
# final record (the state of a small encoder and its AdamW moments is about 180 MB).
STEP_SAVE_SECONDS = 30.0


class TrainingInterrupted(BaseException):
    """SIGINT or SIGTERM arrived during training; ``signum`` says which.

    A :class:`BaseException`, as :class:`KeyboardInterrupt` is: the signal can land anywhere,
    including inside an ``except Exception`` that skips one undecodable image or one damaged
    cache entry, and such a handler must not swallow it and let the run finish as if nothing
    had been asked."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum


class NonFiniteLoss(HeadstartError):
    """The training loss became NaN or infinite."""


# ----------------------------------------------------------------------------- RNG state


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch generator states, as tensors and plain values (loadable with
    ``weights_only=True``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": _to_plain(random.getstate()),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_to_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gathered_rng_state() -> list[dict[str, Any]]:
    """The RNG states of every process of the run, by rank."""
    return distributed.all_gather(rng_state())


def set_own_rng_state(states: list[dict[str, Any]]) -> None:
    set_rng_state(states[distributed.world().rank])


def _to_plain(x: Any) -> Any:
    return [_to_plain(v) for v in x] if isinstance(x, tuple) else x


def _to_tuple(x: Any) -> Any:
    return tuple(_to_tuple(v) for v in x) if isinstance(x, list) else x


# ----------------------------------------------------------------------------- the store


class Checkpoints:
    """The checkpoint file of one run, and the position in it while training replays.

    Phases are keyed by their order in the run (``"0-head"``, ``"1-fine-tune"``): a resumed
    run calls the training loop in the same order, so each call finds its own record."""

    def __init__(self, directory: str | Path, resume: bool = False, enabled: bool = True):
        self.directory = Path(directory)
        self.enabled = enabled  # False on the ranks of a distributed run that do not write
        self.calls = 0
        self.saved = self.empty()
        self._blocking = False
        self._pending: int | None = None
        if resume:  # rank 0 reads; the other processes may run where the file is not
            self.saved = distributed.broadcast(self.read(self.directory) if distributed.world().is_main else None)
            size = distributed.world().size
            if self.saved["world_size"] != size:
                raise HeadstartError(
                    f"the checkpoint in {str(self.directory)!r} was written by {self.saved['world_size']} process(es); "
                    f"resume it with the same number (this run has {size})"
                )

    @staticmethod
    def empty() -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, "world_size": distributed.world().size, "finished": {}, "running": None}

    @property
    def path(self) -> Path:
        return self.directory / CHECKPOINT_FILE

    @staticmethod
    def read(directory: Path) -> dict[str, Any]:
        path = Path(directory) / CHECKPOINT_FILE
        if not path.is_file():
            return Checkpoints.empty()
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - damaged is damaged, whatever the cause
            raise HeadstartError(
                f"the checkpoint {str(path)!r} cannot be read: it is damaged or not a headstart checkpoint; "
                "start a new run without --resume"
            ) from None
        if not isinstance(saved, dict) or saved.get("format_version") != FORMAT_VERSION:
            raise HeadstartError(f"{str(path)!r} is not a headstart checkpoint of this version; start a new run")
        return saved

    def next_key(self, phase: str) -> str:
        key = f"{self.calls}-{phase}"
        self.calls += 1
        return key

    def finished(self, key: str) -> dict[str, Any] | None:
        return self.saved["finished"].get(key)

    def running(self, key: str) -> dict[str, Any] | None:
        running = self.saved["running"]
        return running if running is not None and running["key"] == key else None

    def last_epoch(self) -> str | None:
        """Where a resumed run would start, in words (None: nothing saved yet)."""
        running = self.saved["running"]
        if running is not None:
            return f"{running['key'].split('-', 1)[1]} {running.get('unit', 'epoch')} {running['epoch']}"
        if self.saved["finished"]:
            return f"the end of the {list(self.saved['finished'])[-1].split('-', 1)[1]} phase"
        return None

    def save_epoch(self, key: str, state: dict[str, Any]) -> None:
        self.saved["running"] = {"key": key, **state, "rng": gathered_rng_state()}
        self._write()

    def save_finished(self, key: str, module_state: dict[str, torch.Tensor], history: list[dict],
                      extra: dict[str, Any] | None = None) -> None:
        """The phase ``key`` is over: its final weights (an empty dict: not needed again), its
        history and what else replaying it must give back (``extra``)."""
        module_state = {k: v.detach().clone() for k, v in module_state.items()}  # later phases train on
        self.saved["finished"][key] = {"module": module_state, "history": history, "rng": gathered_rng_state(),
                                       **({"extra": extra} if extra is not None else {})}
        self.saved["running"] = None
        self._write()

    def _write(self) -> None:
        if not self.enabled:
            return
        with self.deferred_signals():
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".last.", suffix=".tmp", dir=self.directory)
            try:
                with os.fdopen(fd, "wb") as f:
                    torch.save(self.saved, f)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise HeadstartError(
                    f"cannot write the checkpoint to {str(self.directory)!r} ({exc.strerror or exc}); "
                    "free some space or pass another --out"
                ) from None
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise

    # ------------------------------------------------------------------------- signals

    @contextlib.contextmanager
    def deferred_signals(self) -> Iterator[None]:
        """A signal that arrives while the checkpoint is written is raised right after."""
        self._blocking = True
        try:
            yield
        finally:
            self._blocking = False
        if self._pending is not None:  # (an error in the write wins: it propagates instead)
            signum, self._pending = self._pending, None
            raise TrainingInterrupted(signum)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._blocking:
            self._pending = signum
            return
        raise TrainingInterrupted(signum)


_ACTIVE: contextvars.ContextVar[Checkpoints | None] = contextvars.ContextVar("headstart_checkpoints", default=None)


def active() -> Checkpoints | None:
    return _ACTIVE.get()


def begin_phase(phase: str, module: torch.nn.Module) -> tuple[Checkpoints | None, str, dict[str, Any] | None]:
    """The active store (None outside :func:`checkpointing`), the key of the training phase
    ``phase`` that starts now, and its record when the checkpoint holds it finished: then
    ``module`` has its final weights (when the record kept them) and the RNG states are as
    they were when it ended."""
    store = active()
    key = store.next_key(phase) if store else ""
    done = store.finished(key) if store else None
    if done is not None:
        if done["module"]:
            module.load_state_dict(done["module"])
        set_own_rng_state(done["rng"])
        log.info("%s: finished in the checkpoint; skipped", phase)
    return store, key, done


def resume_running(store: Checkpoints | None, key: str, phase: str, **stateful: Any) -> dict[str, Any] | None:
    """The saved state of the running phase ``key``, if the checkpoint holds it: each of
    ``stateful`` (a module, an optimizer, a scheduler...) loaded from the entry of its name,
    the RNG states restored; None when it does not."""
    running = store.running(key) if store else None
    if running is not None:
        for name, obj in stateful.items():
            obj.load_state_dict(running[name])
        set_own_rng_state(running["rng"])
        log.info("%s: resuming after %s %d from the checkpoint", phase, running.get("unit", "epoch"), running["epoch"])
    return running


@contextlib.contextmanager
def checkpointing(
    directory: str | Path, *, resume: bool = False, handle_signals: bool = True, enabled: bool = True
) -> Iterator[Checkpoints]:
    """Checkpoint every epoch of the training inside the block into ``directory``; with
    ``resume``, continue from what is there. In the main thread, SIGINT and SIGTERM raise
    :class:`TrainingInterrupted` instead of killing the process mid-write."""
    store = Checkpoints(directory, resume=resume, enabled=enabled)
    token = _ACTIVE.set(store)
    previous: dict[int, Any] = {}
    import threading

    if handle_signals and threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, store._on_signal)
    try:
        yield store
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _ACTIVE.reset(token)
