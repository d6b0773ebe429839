"""Data-parallel training on torch.distributed, as launched by ``torchrun`` or ``accelerate launch``.

A launcher starts one process per GPU (or several on CPUs) and sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`world` joins the process group
(NCCL on GPUs, gloo on CPUs). Without a launcher everything here is a no-op, so the library
and the single-process CLI run the same code.

The rules, kept in the few places that touch data:

- ``--batch-size`` is the global batch: each global batch (the same on every rank, drawn from
  the run's seed) is dealt out ``batch[rank::world_size]``. The loss of each rank is scaled
  by its share of the global batch, so the averaged gradient is the single-process one and
  each example is trained on once per epoch. A last batch smaller than the world joins the
  one before it, so no rank is ever idle in a step.
- Frozen-backbone features and validation outputs are computed in shards ``rank::world``
  and gathered in index order: every example once, none padded or dropped.
- Rank 0 alone writes files (model directory, metrics, logs, checkpoints, cache entries).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable, Sequence, TypeVar

import numpy as np
import torch

from ..errors import DataError

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_WORLD: World | None = None


def init(device: str = "auto") -> World:
    """Join the launched job's process group (NCCL for GPU runs, gloo with ``device='cpu'``
    or without GPUs); a single process just gets ``World()``."""
    global _WORLD
    if _WORLD is not None:
        return _WORLD
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        _WORLD = World()
        return _WORLD
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and not device.startswith("cpu")
        if use_cuda:
            torch.cuda.set_device(local_rank % torch.cuda.device_count())
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    _WORLD = World(dist.get_rank(), dist.get_world_size(), local_rank)
    return _WORLD


def world() -> World:
    """This process's place in the launched job."""
    return _WORLD if _WORLD is not None else init()


def backend_name() -> str:
    """The process group's backend (gloo, nccl), or "single process"."""
    return torch.distributed.get_backend() if torch.distributed.is_initialized() else "single process"


def finish() -> None:
    """Wait for every process, then leave the process group."""
    global _WORLD
    if _WORLD is not None and _WORLD.enabled and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
        _WORLD = None


def device_for(name: str) -> str:
    """``auto`` on a GPU job means this process's GPU."""
    w = world()
    if w.enabled and name == "auto" and torch.cuda.is_available() and torch.distributed.get_backend() == "nccl":
        return f"cuda:{w.local_rank % torch.cuda.device_count()}"
    return name


# ----------------------------------------------------------------------------- collectives


def barrier() -> None:
    if world().enabled:
        torch.distributed.barrier()


def broadcast(obj: T) -> T:
    """Rank 0's ``obj`` on every rank."""
    if not world().enabled:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def agree(decision: bool) -> bool:
    """Rank 0's ``decision`` on every rank. For choices each process would otherwise make
    from its own clock (the time budget: stop here, skip a fold, no refit): the processes
    started and ran at slightly different times, and one that stopped while another went on
    would leave the collective calls out of step, each waiting on the other for ever."""
    return bool(broadcast(bool(decision)))


def all_gather(obj: Any) -> list[Any]:
    if not world().enabled:
        return [obj]
    out: list[Any] = [None] * world().size
    torch.distributed.all_gather_object(out, obj)
    return out


def all_sum(values: Sequence[float], device: torch.device) -> list[float]:
    """Element-wise sums over the ranks (float64)."""
    if not world().enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return t.tolist()


def sync_buffers(module: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm statistics) everywhere, so every rank evaluates the
    model that rank 0 saves."""
    if world().enabled:
        for b in module.buffers():
            torch.distributed.broadcast(b.data, src=0)


# ----------------------------------------------------------------------------- sharding


def shard(n: int) -> range:
    """The item indices of this rank: ``rank, rank + world, ...``."""
    w = world()
    return range(w.rank, n, w.size)


def even_batches(batches: Iterable[np.ndarray]) -> list[np.ndarray]:
    """Global batches with at least two examples for each process: a smaller one joins the
    batch before it (every process has work in every step, and BatchNorm in training mode
    never sees a batch of one)."""
    size = world().size
    out: list[np.ndarray] = []
    for b in batches:
        b = np.asarray(b)
        if len(b) < 2 * size and out:
            out[-1] = np.concatenate([out[-1], b])
        else:
            out.append(b)
    if out and len(out[-1]) < 2 * size:
        raise DataError(f"{sum(map(len, out))} examples are too few to train on with {size} process(es): at least {2 * size} are needed")
    return out


def local_part(batch: np.ndarray) -> np.ndarray:
    w = world()
    return batch[w.rank :: w.size] if w.enabled else batch


def dealt_order(batch: np.ndarray) -> np.ndarray:
    """The items of a global ``batch`` in the order :func:`gather_batch` returns their rows:
    rank 0's part (:func:`local_part`), then rank 1's, and so on."""
    size = world().size
    return np.concatenate([batch[r::size] for r in range(size)]) if size > 1 else np.asarray(batch)


def gather_batch(local: torch.Tensor, n: int) -> torch.Tensor:
    """The rows every rank computed for its :func:`local_part` of a global batch of ``n``
    items, in :func:`dealt_order`, on every rank. This rank's rows are ``local`` itself, so
    a loss over the whole batch sends gradients into this rank's share of the computation
    only; :func:`sum_gradients` then adds the ranks' shares, which gives every rank the
    gradient of the loss over the whole batch (each rank computes that same loss). The other
    ranks' rows are constants here: the same loss on every rank needs no gradient sent back."""
    w = world()
    if not w.enabled:
        return local
    sizes = [len(range(r, n, w.size)) for r in range(w.size)]
    if len(local) != sizes[w.rank]:
        raise ValueError(f"rank {w.rank} has {len(local)} rows of a batch of {n}; its part is {sizes[w.rank]}")
    width = max(sizes)
    padded = torch.cat([local.detach(), local.new_zeros((width - len(local), *local.shape[1:]))]) if len(local) < width \
        else local.detach().contiguous()
    parts = [torch.empty_like(padded) for _ in range(w.size)]
    torch.distributed.all_gather(parts, padded)
    return torch.cat([local if r == w.rank else p[:k] for r, (p, k) in enumerate(zip(parts, sizes))])


def sum_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Add up the parameters' gradients over the ranks, in one collective (see
    :func:`gather_batch`). Parameters without a gradient have none on every rank (the same
    graph everywhere) and are left alone."""
    if not world().enabled:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    at = 0
    for g in grads:
        g.copy_(flat[at : at + g.numel()].view_as(g))
        at += g.numel()


def gather_rows(rows: torch.Tensor, indices: np.ndarray, failed: list) -> tuple[torch.Tensor, np.ndarray, list]:
    """Rows computed for a shard of the items, from every rank, in item order."""
    if not world().enabled:
        return rows, indices, failed
    parts = all_gather((rows.cpu(), np.asarray(indices), list(failed)))
    parts = [p for p in parts if len(p[1])] or parts[:1]
    rows = torch.cat([p[0] for p in parts])
    indices = np.concatenate([p[1] for p in parts])
    order = np.argsort(indices, kind="stable")
    failed = sorted(f for p in parts for f in p[2])
    return rows[torch.as_tensor(order)], indices[order], failed
