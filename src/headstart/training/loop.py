"""One training loop, and the pieces every recipe builds from it (no image or text code here).

``train_loop`` reads top to bottom: for each epoch, train over batches, evaluate, keep the
best weights, stop early. The recipes themselves are in :mod:`headstart.training.transfer`.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from . import checkpoint, distributed
from ..config import TrainConfig
from ..errors import DataError, HeadstartError
from ..models.networks import set_trainable

log = logging.getLogger("headstart")


# --------------------------------------------------------------------------- devices


def resolve_device(name: str = "auto") -> torch.device:
    name = distributed.device_for(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise HeadstartError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise HeadstartError("device 'cuda' requested but no CUDA GPU is available; use --device cpu")
    return device


def cpu_has_fast_bf16() -> bool:
    """AVX-512 BF16 or AMX: bf16 matmuls and convolutions run several times faster than fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(name: str, device: torch.device) -> str:
    # `accelerate launch --mixed_precision bf16|fp16|no` chooses for an `auto` run
    launched = {"no": "fp32", "bf16": "bf16", "fp16": "fp16"}.get(os.environ.get("ACCELERATE_MIXED_PRECISION", ""))
    if name == "auto" and launched:
        name = launched
    if name == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    if name == "fp16" and device.type == "cpu":
        raise HeadstartError("fp16 autocast needs a GPU; on a CPU use --precision bf16 or fp32")
    return name


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- the loop


class OverBudget(HeadstartError):
    """A training phase cannot finish one epoch within the time budget: ``epoch_seconds`` is
    the projected length of one epoch, ``available`` the seconds that were left for it."""

    def __init__(self, message: str, epoch_seconds: float = math.inf, available: float = 0.0):
        super().__init__(message)
        self.epoch_seconds, self.available = epoch_seconds, available


def past_deadline(deadline: float | None, ahead: float = 0.0) -> bool:
    """Whether ``ahead`` more seconds from now would end after ``deadline`` (a
    ``time.perf_counter()`` value; None: no deadline), as rank 0 sees it
    (:func:`~headstart.training.distributed.agree`): each process times its own run, and one
    that stopped while another went on would leave the collectives out of step."""
    return deadline is not None and distributed.agree(time.perf_counter() + ahead > deadline)


@dataclass
class EpochRecord:
    phase: str
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float | None  # None: trained on every labelled row, nothing held out
    val_accuracy: float | None
    lr: float
    seconds: float
    examples: int = 0  # trained on in the epoch, over all processes


Batches = Callable[[int], Iterable[tuple[Any, torch.Tensor]]]


Evaluate = Callable[[], tuple[float, float]]


def to_device(x: Any, device: torch.device) -> Any:
    """A tensor, or a dict of tensors (tokenised text), on ``device``."""
    if isinstance(x, dict):
        return {k: v.to(device, non_blocking=True) for k, v in x.items()}
    return x.to(device, non_blocking=True)


def param_groups(named: Iterable[tuple[str, nn.Parameter]], lr: float, weight_decay: float) -> list[dict]:
    """Decay weights, not biases and norm parameters (1-D tensors)."""
    decay, no_decay = [], []
    for _, p in named:
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = []
    if decay:
        groups.append({"params": decay, "lr": lr, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0})
    return groups


def fused_ok(groups: list[dict]) -> bool:
    """Whether the optimizer can update every parameter in one fused kernel: floating-point
    parameters, all on the CPU or all on one CUDA device. On the CPU, PyTorch otherwise updates
    one tensor at a time; fused AdamW took 8 ms a step on MiniLM-L6's 22.7M parameters where
    that took 80 ms, a quarter of a few-shot training step (2 cores)."""
    params = [p for g in groups for p in g["params"]]
    devices = {p.device for p in params}
    return (len(devices) == 1 and next(iter(devices)).type in ("cpu", "cuda")
            and all(p.is_floating_point() for p in params))


def make_optimizer(name: str, groups: list[dict]) -> torch.optim.Optimizer:
    fused = {"fused": True} if fused_ok(groups) else {}
    if name == "adam":
        return torch.optim.Adam(groups, **fused)
    if name == "adamw":
        return torch.optim.AdamW(groups, **fused)
    return torch.optim.SGD(groups, momentum=0.9, nesterov=True, **fused)


def warmup_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, decay: str):
    """Linear warmup, then cosine or linear decay to zero at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress)) if decay == "cosine" else 1.0 - progress

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class WeightAverage:
    """An exponential moving average of the trainable weights. Evaluation, the best-epoch
    copy and the final model use the average; training steps use the raw weights."""

    def __init__(self, module: nn.Module, decay: float):
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.shadow = [p.detach().clone().float() for p in self.params]
        self.decay, self.steps = decay, 0

    @torch.no_grad()
    def update(self) -> None:
        self.steps += 1
        # a short warm-up, so the first steps do not drag the pretrained weights along
        decay = min(self.decay, (1 + self.steps) / (10 + self.steps))
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in self.params], 1.0 - decay)

    def state_dict(self) -> dict[str, Any]:
        return {"shadow": self.shadow, "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.shadow = [s.clone() for s in state["shadow"]]
        self.steps = state["steps"]

    @contextlib.contextmanager
    def applied(self):
        backup = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, s in zip(self.params, self.shadow):
                p.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, b in zip(self.params, backup):
                    p.copy_(b)


def train_loop(
    module: nn.Module,
    groups: list[dict],
    batches: Batches,
    steps_per_epoch: int,
    evaluate: Evaluate | None,
    *,
    cfg: TrainConfig,
    epochs: int,
    phase: str,
    device: torch.device,
    precision: str,
    loss_fn: nn.Module,
    on_train_start: Callable[[], None] | None = None,
    progress: bool = False,
    deadline: float | None = None,
) -> list[EpochRecord]:
    """Train ``module`` for up to ``epochs``; restore the weights of the best validation
    epoch (highest accuracy, then lowest loss) before returning. Without ``evaluate`` (a
    refit on every labelled row: nothing is left to validate on) all ``epochs`` run and the
    last weights are kept.

    ``deadline`` (a ``time.perf_counter()`` value): no epoch starts that would end after it,
    judged by the last epoch's length; if the first epoch's first steps show that it alone
    would end after it, :class:`OverBudget` is raised before it finishes.

    Inside :func:`headstart.training.checkpoint.checkpointing`, each epoch ends with a checkpoint,
    and a resumed run skips the phases and epochs the checkpoint holds."""
    if getattr(loss_fn, "reduction", "sum") != "sum":
        raise ValueError("train_loop needs a summed loss (reduction='sum'); it divides by the examples' weight itself")
    store, phase_key, done = checkpoint.begin_phase(phase, module)
    if done is not None:  # this phase finished before the run was interrupted
        return [EpochRecord(**r) for r in done["history"]]

    optimizer = make_optimizer(cfg.optimizer, groups)
    accum = cfg.grad_accum
    updates = math.ceil(steps_per_epoch / accum)  # optimizer steps per epoch
    scheduler = warmup_schedule(optimizer, int(cfg.warmup_epochs * updates), epochs * updates, cfg.schedule)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    history: list[EpochRecord] = []
    best_key, best_state, stale = None, None, 0
    average = WeightAverage(module, cfg.ema) if cfg.ema else None
    first = 1
    running = checkpoint.resume_running(store, phase_key, phase, module=module, optimizer=optimizer, scheduler=scheduler,
                                        scaler=scaler, **({"average": average} if average is not None else {}))
    if running is not None:
        history = [EpochRecord(**r) for r in running["history"]]
        best_key, best_state, stale = tuple(running["best_key"]), running["best_state"], running["stale"]
        first = running["epoch"] + 1
        if running["stopped"]:
            first = epochs + 1  # early stopping had ended this phase

    def restore_best() -> None:
        if best_state is not None and evaluate is not None:
            module.load_state_dict(best_state)
            best = max(history, key=lambda r: (r.val_accuracy, -r.val_loss))
            log.info("%s: restored the best epoch (%d, val acc %.4f)", phase, best.epoch, best.val_accuracy)

    world = distributed.world()
    # Data parallel: gradients averaged over the processes (frozen parameters excluded).
    forward = module
    if world.enabled:
        ids = [device.index] if device.type == "cuda" else None
        unused = getattr(module, "has_unused_parameters", False)
        forward = nn.parallel.DistributedDataParallel(module, device_ids=ids, find_unused_parameters=unused)

    # The loss is a sum over examples (weighted by class weight when given); each update divides
    # the gradients by the total weight of its examples, over every process and accumulated
    # batch: the gradient of the mean over the whole group, however it was split. The loss
    # (:mod:`headstart.training.losses`, chosen by the objective) says what a row weighs and which rows are right.
    trainable = [p for g in optimizer.param_groups for p in g["params"]]

    def update(total: float) -> None:
        scaler.unscale_(optimizer)
        for p in trainable:
            if p.grad is not None:
                p.grad.div_(total)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        if average is not None:
            average.update()

    optimizer.zero_grad(set_to_none=True)  # a previous phase may have left gradients behind
    previous = None  # this process's last usable batch: stands in (with weight 0) for an unusable one
    stopped = False
    for epoch in range(first, epochs + 1):
        start = time.perf_counter()
        module.train()
        if on_train_start:
            on_train_start()
        seen, correct, loss_sum, weight_sum = 0, 0, 0.0, 0.0
        group, pending = 0.0, False
        bar = tqdm(batches(epoch), total=steps_per_epoch, desc=f"{phase} {epoch}/{epochs}", leave=False,
                   disable=not progress or not world.is_main)
        for step, (x, y) in enumerate(bar):
            if deadline is not None and epoch == first and not history and step == min(10, steps_per_epoch - 1) > 0:
                projected = start + (time.perf_counter() - start) / step * steps_per_epoch
                if past_deadline(deadline, projected - time.perf_counter()):
                    raise OverBudget(
                        f"one epoch would take about {projected - start:.0f} s, more than the time left "
                        f"({max(0.0, deadline - start):.0f} s)", projected - start, max(0.0, deadline - start),
                    )
            real = x is not None  # None: no image of this batch could be decoded
            if real:
                x, y = to_device(x, device), y.to(device, non_blocking=True)
                previous = (x, y)
            elif previous is not None:
                x, y = previous
            n = int(y.shape[0]) if real else 0
            w = loss_fn.row_weight(y) if real else 0.0
            # one small all-reduce agrees on what this step holds (no-op in one process)
            step_n, step_w, stuck = distributed.all_sum([n, w, float(x is None)], device)
            if stuck and world.enabled:
                raise DataError(
                    "a process had no decodable image in its first batch, so the processes cannot stay in step; "
                    "remove the unreadable files (`headstart check DATA` lists them) or train with --strict"
                )
            boundary = (step + 1) % accum == 0 or step + 1 == steps_per_epoch
            if x is not None:
                sync = forward.no_sync() if world.enabled and not boundary else contextlib.nullcontext()
                with sync:
                    with autocast(device, precision):
                        logits = forward(x)
                    loss = loss_fn(logits.float(), y) * (1.0 if real else 0.0)
                    hits = loss_fn.hits(logits, y) if real else 0
                    step_loss, step_hits = distributed.all_sum([loss.item(), hits], device)
                    if not math.isfinite(step_loss):
                        restore_best()
                        kept = (
                            f"; the best weights so far are kept in the checkpoint {str(store.path)!r}"
                            if store and store.enabled and best_state is not None else ""
                        )
                        raise checkpoint.NonFiniteLoss(
                            f"the training loss became {step_loss / max(step_w, 1e-12)} in {phase} epoch {epoch}; "
                            f"lower the learning rate (--lr, --backbone-lr) or check the data{kept}"
                        )
                    # DDP averages gradients over the processes: times their number, the sum
                    scaler.scale(loss * world.size).backward()
                group, pending = group + step_w, True
                seen, correct, loss_sum, weight_sum = seen + int(step_n), correct + int(step_hits), loss_sum + step_loss, weight_sum + step_w
            if boundary and pending:
                if group > 0:
                    update(group)
                group, pending = 0.0, False
            bar.set_postfix(loss=f"{loss_sum / max(weight_sum, 1e-12):.3f}")
        if pending and group > 0:  # the batches ended before the planned last step
            update(group)
        distributed.sync_buffers(module)
        with average.applied() if average is not None else contextlib.nullcontext():
            val_loss, val_acc = evaluate() if evaluate is not None else (None, None)
            score = (val_acc, -val_loss) if evaluate is not None else (0.0, 0.0)
            improved = evaluate is None or best_key is None or score > best_key
            if improved and evaluate is not None:  # copied here so an average's weights are the ones kept
                best_state = copy.deepcopy(module.state_dict())
        record = EpochRecord(
            phase, epoch, loss_sum / max(weight_sum, 1e-12), correct / max(seen, 1), val_loss, val_acc,
            optimizer.param_groups[0]["lr"], time.perf_counter() - start, seen,
        )
        history.append(record)
        checked = f" | val loss {val_loss:.4f} acc {val_acc:.4f}" if evaluate is not None else ""
        log.info(
            "%s epoch %d/%d: train loss %.4f acc %.4f%s | %.1fs",
            phase, epoch, epochs, record.train_loss, record.train_accuracy, checked, record.seconds,
            extra={"epoch_record": record},
        )
        if improved:
            best_key, stale = score, 0
        else:
            stale += 1
            stopped = bool(cfg.patience and stale >= cfg.patience and epoch < epochs)
            if stopped:
                log.info("%s: no better validation accuracy for %d epochs; stopping early", phase, stale)
        if not stopped and epoch < epochs and past_deadline(deadline, record.seconds):
            log.info("%s: another epoch would end past the time budget; stopping after epoch %d", phase, epoch)
            stopped = True
        if store is not None:
            store.save_epoch(phase_key, {
                "epoch": epoch, "module": module.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                "average": average.state_dict() if average is not None else None,
                "history": [asdict(r) for r in history], "best_key": list(best_key), "best_state": best_state,
                "stale": stale, "stopped": stopped,
            })
        if stopped:
            break
    restore_best()
    if store is not None:
        store.save_finished(phase_key, module.state_dict(), [asdict(r) for r in history])
    return history


# --------------------------------------------------------------------------- the recipe


def _tensor_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int) -> tuple[Batches, int]:
    """Shuffled batches of in-memory rows (this process's share of each), and their number."""
    cuts = [int(b[0]) for b in distributed.even_batches(np.arange(len(y))[i : i + batch_size] for i in range(0, len(y), batch_size))]

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(len(y), generator=g)
        for i, end in zip(cuts, [*cuts[1:], len(y)]):
            j = distributed.local_part(order[i:end])
            yield x[j], y[j]

    return batches, len(cuts)


def recipe_setup(model: nn.Module, train_labels: np.ndarray, num_classes: int, cfg: TrainConfig):
    """Seed, pick device and precision, move the model, build the objective's loss."""
    from ..objectives import objective_for

    objective = objective_for(train_labels)
    seed_everything(cfg.seed)
    processes = distributed.world().size
    if cfg.batch_size < 2 * processes:
        raise HeadstartError(
            f"--batch-size {cfg.batch_size} is too small for {processes} process(es): it is the global batch, "
            f"at least 2 per process ({2 * processes})"
        )
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    log.info("device %s, precision %s, recipe %s", device, precision, cfg.recipe)
    model.to(device)
    # summed, not averaged: train_loop divides by the examples' total weight per update
    loss_fn = objective.loss(train_labels, num_classes, balanced=cfg.class_weight == "balanced",
                             label_smoothing=cfg.label_smoothing).to(device)
    return device, precision, loss_fn


def train_head(
    head: nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_val: torch.Tensor | None,
    y_val: torch.Tensor | None,
    *,
    cfg: TrainConfig,
    epochs: int,
    device: torch.device,
    loss_fn: nn.Module,
    phase: str = "head",
) -> list[EpochRecord]:
    """A head with hidden layers on cached features of the frozen backbone, by minibatches;
    early-stopped on ``x_val`` (None: all ``epochs``, the last weights kept)."""
    batch = max(cfg.batch_size, 64)
    evaluate = None
    if x_val is not None:
        y_val = y_val.to(device)

        @torch.inference_mode()
        def evaluate() -> tuple[float, float]:
            head.eval()
            return loss_fn.evaluate(head(x_val.to(device)).float(), y_val)

    head.to(device)
    log.info("%s: training the head on %d cached feature vectors of width %d", phase, len(y_train), x_train.shape[1])
    batches, steps = _tensor_batches(x_train, y_train, batch, cfg.seed)
    return train_loop(
        head, param_groups(head.named_parameters(), cfg.lr, cfg.weight_decay), batches, steps,
        evaluate, cfg=cfg, epochs=epochs, phase=phase, device=device, precision="fp32", loss_fn=loss_fn,
    )


def unfreeze(model: nn.Module, cfg: TrainConfig, head_trained: bool, recipe: str | None = None) -> list[dict]:
    """Phase 2: make the top blocks (``fine-tune``) or everything (``full``; ``recipe``
    defaults to ``cfg.recipe``) trainable and return the optimizer's parameter groups: the
    head at ``lr`` (or ``backbone_lr`` when it was trained in phase 1), each unfrozen block
    at ``backbone_lr`` x ``layer_decay``^depth."""
    recipe = recipe or cfg.recipe
    groups_by_block = model.block_groups()
    top = cfg.unfreeze_blocks if recipe == "fine-tune" else None
    names = set(set_trainable(model, top))
    head_lr = cfg.backbone_lr if head_trained else cfg.lr
    groups = param_groups(model.head.named_parameters(), head_lr, cfg.weight_decay)
    blocks = [set(g) for g in groups_by_block if names.intersection(g)]
    params = dict(model.backbone.named_parameters())
    for depth, block in enumerate(reversed(blocks)):
        decay = cfg.layer_decay**depth if cfg.layer_decay else 1.0
        # in the model's order, not the set's: a resumed optimizer maps its state by position
        named = ((n, p) for n, p in params.items() if n in block)
        groups += param_groups(named, cfg.backbone_lr * decay, cfg.weight_decay)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("%s: %d trainable parameters in %d backbone blocks + head", recipe, n_trainable, len(blocks))
    return groups
