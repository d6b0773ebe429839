"""Data-parallel training: 2 CPU processes (gloo) launched by torchrun, and the sharding rules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import make_folder, make_texts
from headstart import load
from headstart.training import distributed
from headstart.training.checkpoint import Checkpoints
from headstart.config import TrainConfig
from headstart.training.distributed import World
from headstart.errors import HeadstartError
from headstart.training.loop import train_loop
from headstart.training.losses import CrossEntropy

TINY_CLI = str(Path(__file__).parent / "tiny_cli.py")


def torchrun(args: list, cwd: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           TINY_CLI, *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def on_two_processes_and_one(args: list, cwd: Path) -> tuple[dict, dict]:
    """The CLI ``args`` under torchrun with 2 processes (``--out two``) and in one process
    (``--out one``): both runs' metrics, the first checked to be a 2-process cross-validation."""
    p = torchrun([*args, "--out", "two"], cwd)
    assert p.returncode == 0, p.stderr[-3000:]
    one = subprocess.run([sys.executable, TINY_CLI, *args, "--out", "one"], cwd=cwd, capture_output=True,
                         text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two_m, one_m = (json.loads((cwd / d / "metrics.json").read_text()) for d in ("two", "one"))
    assert two_m["processes"] == 2 and two_m["protocol"]["kind"] == "cross-validation"
    return two_m, one_m


def check_written_once(run: Path, n_train: int) -> dict:
    assert sorted(p.name for p in run.iterdir()) == [
        "check.json", "config.json", "metrics.json", "model", "plots", "report.html", "run.json", "train.log", "val_predictions.csv"]
    log = (run / "train.log").read_text()
    assert log.count("new run directory") == 1 and "data parallel: 2 processes (gloo)" in log
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["processes"] == 2
    # every example trained on exactly once per epoch, over both processes
    assert {r["examples"] for r in metrics["history"]} == {n_train}
    return metrics


def test_two_processes_image(tmp_path):
    make_folder(tmp_path / "train", per_class=7)  # 21 images: uneven shards and a short last batch
    make_folder(tmp_path / "val", per_class=5, seed=1)  # 15: uneven validation shards
    p = torchrun(["train", "train", "--val", "val", "--backbone", "tiny-cnn", "--weights", "none", "--recipe", "fine-tune",
                  "--epochs", "2", "--head-epochs", "2", "--batch-size", "8", "--precision", "fp32",
                  "--workers", "0", "--out", "run", "--no-cache"], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("validation accuracy:") == 1  # printed by rank 0 only
    metrics = check_written_once(tmp_path / "run", 21)
    # the validation numbers cover the whole validation set once: a single process agrees
    single = load(tmp_path / "run" / "model").evaluate(tmp_path / "val")
    assert metrics["val"]["n"] == single["n"] == 15
    assert metrics["val"]["accuracy"] == pytest.approx(single["accuracy"])
    assert metrics["val"]["confusion_matrix"] == single["confusion_matrix"]


def test_two_processes_text(tiny_bert, tmp_path):
    texts, labels = make_texts(37)
    rows = "".join(f'"{t}",{l}\n' for t, l in zip(texts, labels))
    (tmp_path / "train.csv").write_text("text,label\n" + rows)
    vt, vl = make_texts(11, seed=5)
    (tmp_path / "val.csv").write_text("text,label\n" + "".join(f'"{t}",{l}\n' for t, l in zip(vt, vl)))
    p = torchrun(["train", "train.csv", "--val", "val.csv", "--backbone", tiny_bert, "--recipe", "full", "--epochs", "2",
                  "--batch-size", "8", "--grad-accum", "2", "--precision", "fp32", "--out", "run", "--no-cache"], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    metrics = check_written_once(tmp_path / "run", 37)
    single = load(tmp_path / "run" / "model").evaluate(tmp_path / "val.csv")
    assert metrics["val"]["n"] == single["n"] == 11
    assert metrics["val"]["accuracy"] == pytest.approx(single["accuracy"])


def test_two_processes_contrastive(tiny_bert, tmp_path):
    """``auto`` tries contrastive on a few rows per class under a time budget: every process
    tunes the same encoder on the same batches and follows rank 0's budget decisions, so the
    held-out numbers and the saved model are those of a single process."""
    texts, labels = make_texts(24)
    (tmp_path / "train.csv").write_text("text,label\n" + "".join(f'"{t}",{l}\n' for t, l in zip(texts, labels)))
    args = ["train", "train.csv", "--backbone", tiny_bert, "--recipe", "auto", "--time-budget", "600",
            "--precision", "fp32", "--no-cache"]
    two_m, one_m = on_two_processes_and_one(args, tmp_path)
    tried = [[{k: e.get(k) for k in ("recipe", "accuracy", "steps", "folds", "C")} for e in m["tried"]] for m in (two_m, one_m)]
    assert "contrastive" in [e["recipe"] for e in tried[0]] and tried[0] == tried[1]
    assert two_m["val"]["accuracy"] == one_m["val"]["accuracy"]
    vt, _ = make_texts(12, seed=3)
    a, b = (load(tmp_path / d / "model").predict_proba(vt) for d in ("two", "one"))
    assert np.allclose(a, b, atol=2e-3)  # the embeddings gathered from shards: float rounding apart


def _join(rank: int, port: int) -> None:
    """Join a 2-process gloo group as ``rank`` (a 20 s timeout: a regression fails, never hangs)."""
    import datetime

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=20))
    distributed._WORLD = None
    distributed.init("cpu")


def _spawn_two(worker, tmp_path: Path) -> list[dict]:
    """``worker(rank, port, out)`` on 2 spawned processes; what each wrote to ``out/RANK.json``."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    return [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in (0, 1)]


def _tuned() -> tuple[dict, list[int]]:
    """The tiny encoder after 8 contrastive steps on 16 rows (batches of 8), and the rows it
    embedded at each step."""
    from conftest import TinyEncoder, tiny_token_backend

    torch.manual_seed(0)
    model, seen = TinyEncoder(), []
    embed = model.embed
    model.embed = lambda ids, mask: (seen.append(len(ids)), embed(ids, mask))[1]
    tiny_token_backend().contrast(model, np.arange(16), 8, checkpoints={8}, on_checkpoint=lambda step: None, deadline=None)
    return {k: v.tolist() for k, v in model.state_dict().items()}, seen


def _data_parallel_tuning(rank: int, port: int, out: str) -> None:
    _join(rank, port)
    weights, seen = _tuned()
    Path(out, f"{rank}.json").write_text(json.dumps({"weights": weights, "seen": seen}))
    distributed.finish()


def test_contrastive_tuning_is_data_parallel(tmp_path):
    """On 2 processes each embeds half of every batch, and the summed gradients make the
    same steps as one process over the whole batch: the same weights, on both."""
    ran = _spawn_two(_data_parallel_tuning, tmp_path)
    weights, seen = _tuned()
    assert seen == [8] * 8
    for r in ran:
        assert r["seen"] == [4] * 8
        for name, w in weights.items():
            assert np.allclose(r["weights"][name], w, atol=1e-6), name


def _skewed_clocks(rank: int, port: int, out: str) -> None:
    """One of two processes whose time budgets end at different moments (each measures its
    own from its start): rank 1's deadline has passed, rank 0's is far off. Runs the
    contrastive step loop and the epoch loop under them, with a collective at each checkpoint
    and epoch (as the real ones gather held-out outputs), and writes the steps and epochs it ran."""
    import time

    from conftest import TinyEncoder, tiny_token_backend

    _join(rank, port)
    deadline = time.perf_counter() + (1000.0 if rank == 0 else -1.0)
    tuned = tiny_token_backend().contrast(TinyEncoder(), np.arange(16), 8, checkpoints={2, 4, 6, 8},
                                          on_checkpoint=distributed.all_gather, deadline=deadline)
    torch.manual_seed(0)
    module, x, y = nn.Linear(6, 3), torch.randn(40, 6), torch.arange(40) % 3

    def batches(epoch):
        for i in range(0, 40, 8):
            yield x[i + rank : i + 8 : 2], y[i + rank : i + 8 : 2]

    calls: list = []

    def evaluate():  # better every epoch (nothing stops early), gathered like the real one
        calls.append(1)
        return 0.0, len(calls) + sum(distributed.all_gather(1)) / 1000

    cfg = TrainConfig(task="image", lr=0.01, patience=0, warmup_epochs=0).resolved()
    groups = [{"params": list(module.parameters()), "lr": 0.01, "weight_decay": 0.0}]
    history = train_loop(module, groups, batches, 5, evaluate, cfg=cfg, epochs=3, phase="head", device=torch.device("cpu"),
                          precision="fp32", loss_fn=CrossEntropy(), deadline=deadline)
    Path(out, f"{rank}.json").write_text(json.dumps({"steps": len(tuned.seconds), "epochs": len(history)}))
    distributed.finish()


def test_the_time_budget_decisions_are_rank_0s_on_every_process(tmp_path):
    """A process that stopped at its own deadline while the other went on would leave the
    collectives out of step (a hang, or an error after the group's timeout): every stop is
    rank 0's decision, followed by all."""
    ran = _spawn_two(_skewed_clocks, tmp_path)
    assert ran == [{"steps": 8, "epochs": 3}] * 2  # rank 0's deadline is far off: everything runs


@pytest.fixture
def rank1_of_2(monkeypatch):
    monkeypatch.setattr(distributed, "_WORLD", World(rank=1, size=2, local_rank=1))


def test_global_batches_are_dealt_out_and_never_leave_a_process_idle(rank1_of_2):
    batches = [np.arange(0, 8), np.arange(8, 16), np.arange(16, 19)]
    even = distributed.even_batches(batches)
    assert [len(b) for b in even] == [8, 11]  # 3 examples (fewer than 2 per process) joined the batch before
    assert distributed.local_part(even[1]).tolist() == [9, 11, 13, 15, 17]
    assert list(distributed.shard(5)) == [1, 3]
    with pytest.raises(HeadstartError, match="3 examples are too few to train on with 2 process"):
        distributed.even_batches([np.arange(3)])


def test_resume_needs_the_same_number_of_processes(tmp_path, monkeypatch):
    store = Checkpoints(tmp_path)
    store.save_finished("0-head", {"w": torch.zeros(1)}, [])
    monkeypatch.setattr(distributed, "_WORLD", World(rank=0, size=2))
    monkeypatch.setattr(distributed, "broadcast", lambda obj: obj)  # (no process group here)
    with pytest.raises(HeadstartError, match="written by 1 process.*same number.*has 2"):
        Checkpoints(tmp_path, resume=True)


@pytest.mark.parametrize("class_weights", [False, True])
def test_gradient_accumulation_equals_the_larger_batch(class_weights):
    """40 rows: the last accumulated group is short; with class weights the mean is weighted."""
    x, y = torch.randn(40, 6, generator=torch.Generator().manual_seed(1)), torch.arange(40) % 3
    weights = torch.tensor([0.5, 1.0, 3.0]) if class_weights else None

    def train(batch: int, accum: int) -> torch.Tensor:
        torch.manual_seed(0)
        module = nn.Linear(6, 3)
        cfg = TrainConfig(task="image", lr=0.01, grad_accum=accum, patience=0, warmup_epochs=0).resolved()

        def batches(epoch):
            for i in range(0, 40, batch):
                yield x[i : i + batch], y[i : i + batch]

        calls = []

        def evaluate():  # every epoch better than the last: the final weights are kept
            calls.append(1)
            return 0.0, float(len(calls))

        groups = [{"params": list(module.parameters()), "lr": 0.01, "weight_decay": 0.0}]
        train_loop(module, groups, batches, -(-40 // batch), evaluate, cfg=cfg, epochs=3, phase="head",
                   device=torch.device("cpu"), precision="fp32", loss_fn=CrossEntropy(weight=weights))
        return module.weight.detach().clone()

    assert torch.allclose(train(8, 2), train(16, 1), atol=1e-6)
    assert not torch.allclose(train(8, 1), train(16, 1), atol=1e-4)


def _scenario(bad: set[int], n: int, batch: int, seed: int) -> list[tuple[int, int, int]]:
    """(epoch, rank, batch) where a process's whole share of a batch is in ``bad``."""
    import torch as t

    found = []
    for epoch in (1, 2):
        order = t.randperm(n, generator=t.Generator().manual_seed(seed * 1_000_003 + epoch)).numpy()
        for rank in (0, 1):
            distributed._WORLD = World(rank=rank, size=2)
            try:
                batches = distributed.even_batches(order[i : i + batch] for i in range(0, n, batch))
                found += [(epoch, rank, k) for k, b in enumerate(batches) if set(distributed.local_part(b).tolist()) <= bad]
            finally:
                distributed._WORLD = None
    return found


def test_two_processes_stay_in_step_with_unreadable_images_and_a_one_image_validation_set(tmp_path):
    make_folder(tmp_path / "train", per_class=6)
    files = sorted((tmp_path / "train").rglob("*.png"))  # the order training indexes them in
    bad = {1, 2, 5, 7, 10, 13, 14, 16}
    for i in bad:
        files[i].write_bytes(files[i].read_bytes()[:80])  # truncated
    make_folder(tmp_path / "val", per_class=1, classes=("red",))  # fewer images than processes
    args = ["train", "train", "--val", "val", "--backbone", "tiny-cnn", "--weights", "none", "--recipe", "fine-tune",
            "--head-epochs", "1", "--epochs", "2", "--batch-size", "4", "--precision", "fp32", "--workers", "0",
            "--no-cache"]
    # seed 1: some process gets only unreadable images in a batch after its first one
    assert _scenario(bad, 18, 4, seed=1) and all(k > 0 for _, _, k in _scenario(bad, 18, 4, seed=1))
    p = torchrun([*args, "--seed", "1", "--out", "ok"], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    metrics = json.loads((tmp_path / "ok" / "metrics.json").read_text())
    assert metrics["val"]["n"] == 1 and {r["examples"] for r in metrics["history"] if r["phase"] == "fine-tune"} == {10}
    # seed 0: a process's very first batch is unreadable: a clear error on every process, no hang
    assert (1, 0, 0) in _scenario(bad, 18, 4, seed=0)
    p = torchrun([*args, "--seed", "0", "--out", "stuck"], tmp_path)
    assert p.returncode != 0 and "error: a process had no decodable image in its first batch" in p.stderr


def test_cross_validated_probe_scores_the_same_on_two_processes_as_on_one(tmp_path):
    """Features are extracted on shards and gathered; every process then solves the same head."""
    make_folder(tmp_path / "train", per_class=9)
    args = ["train", "train", "--backbone", "tiny-cnn", "--weights", "none", "--recipe", "linear-probe",
            "--folds", "3", "--precision", "fp32", "--workers", "0", "--no-cache"]
    two_m, one_m = on_two_processes_and_one(args, tmp_path)
    assert two_m["val"]["n"] == one_m["val"]["n"] == 27
    assert two_m["val"]["accuracy"] == one_m["val"]["accuracy"]
    assert two_m["val"]["confusion_matrix"] == one_m["val"]["confusion_matrix"]
    # the saved models agree on fresh images
    make_folder(tmp_path / "test", per_class=4, seed=3)
    a, b = (load(tmp_path / d / "model").evaluate(tmp_path / "test") for d in ("two", "one"))
    assert a["accuracy"] == b["accuracy"]
