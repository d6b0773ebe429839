"""Checkpoints, --resume, clean stops on SIGINT / SIGTERM, a non-finite loss, kills during a save."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from headstart.training import checkpoint
from headstart.training.losses import CrossEntropy
from headstart.classifiers.artifact import read_config, read_weights, save_model_dir
from headstart.training.checkpoint import Checkpoints, NonFiniteLoss, TrainingInterrupted, checkpointing
from headstart.cli import main
from headstart.config import TrainConfig
from headstart.errors import HeadstartError
from headstart.training.loop import train_loop

ARGS = ["--backbone", "tiny-cnn", "--weights", "none", "--recipe", "fine-tune", "--epochs", "3", "--head-epochs", "3",
        "--batch-size", "8", "--precision", "fp32", "--workers", "0", "--quiet", "--no-cache"]


def run(capsys, *argv) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def same_run(a: Path, b: Path) -> None:
    """Two run directories hold the same history and bit-identical weights."""
    ha = json.loads((a / "metrics.json").read_text())["history"]
    hb = json.loads((b / "metrics.json").read_text())["history"]
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(ha) == strip(hb)
    wa, wb = load_file(str(a / "model" / "model.safetensors")), load_file(str(b / "model" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def interrupt_after_save(monkeypatch, phase: str | None, epoch: int, signum: int) -> None:
    """The next run stops with ``signum`` right after its checkpoint of ``phase`` (any phase
    when None) at ``epoch`` (or step) is written; ``monkeypatch.undo`` or a new patch ends it."""
    real_save = Checkpoints.save_epoch

    def save_then_interrupt(self, key, state):
        real_save(self, key, state)
        if (phase is None or key == phase) and state["epoch"] == epoch:
            raise TrainingInterrupted(signum)

    monkeypatch.setattr(Checkpoints, "save_epoch", save_then_interrupt)


@pytest.fixture
def reference(folder, tmp_path, capsys):
    code, _, err = run(capsys, "train", folder, *ARGS, "--out", tmp_path / "reference")
    assert code == 0, err
    return tmp_path / "reference"


# the fine-tune run held out on the first fold, then its refit on every row
@pytest.mark.parametrize("phase,epoch", [("0-fine-tune", 1), ("0-fine-tune", 3), ("1-fine-tune refit", 1)])
def test_interrupted_then_resumed_equals_uninterrupted(phase, epoch, reference, folder, tmp_path, capsys, monkeypatch):
    real_save = Checkpoints.save_epoch
    interrupt_after_save(monkeypatch, phase, epoch, signal.SIGINT)
    out = tmp_path / "interrupted"
    code, _, err = run(capsys, "train", folder, *ARGS, "--out", out)
    assert code == 130
    assert "interrupted (SIGINT)" in err and f"resume with: headstart train --resume {out}" in err
    assert (out / "checkpoints" / "last.pt").is_file() and not (out / "model").exists()
    monkeypatch.setattr(Checkpoints, "save_epoch", real_save)

    code, _, err = run(capsys, "train", "--resume", out)
    assert code == 0, err
    same_run(reference, out)
    assert not (out / "checkpoints").exists()  # removed once the model is saved
    assert "resuming after epoch" in (out / "train.log").read_text()


def test_resume_errors(reference, folder, tmp_path, capsys):
    code, _, err = run(capsys, "train", "--resume", reference)
    assert code == 1 and "already finished" in err
    code, _, err = run(capsys, "train", "--resume", tmp_path)
    assert code == 1 and "not a headstart run directory" in err
    (reference / "checkpoints").mkdir()
    code, _, err = run(capsys, "train", "--resume", reference, "--lr", "0.1")
    assert code == 2 and "drop --lr" in err
    code, _, err = run(capsys, "train", "--resume", reference, "--workers", "1")  # would change augmentation
    assert code == 2 and "drop --workers" in err
    code, _, err = run(capsys, "train", "--resume", reference, "--no-refit")
    assert code == 2 and "drop --refit/--no-refit" in err
    saved = json.loads((reference / "run.json").read_text())
    assert Path(saved["run"]["data"]).is_absolute() and saved["training"]["num_workers"] == 0
    code, _, err = run(capsys, "train")
    assert code == 2 and "missing argument DATA" in err


def test_damaged_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(Exception, match="cannot be read.*without --resume"):
        Checkpoints(tmp_path, resume=True)


def _loop(batches, epochs, store_dir=None, resume=False):
    torch.manual_seed(0)
    module = nn.Linear(4, 2)
    cfg = TrainConfig(task="image", epochs=epochs, lr=0.1, patience=0).resolved()
    x, y = torch.randn(16, 4), torch.arange(16) % 2

    def evaluate():
        with torch.no_grad():
            logits = module(x)
        return float(nn.functional.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())

    groups = [{"params": list(module.parameters()), "lr": 0.1, "weight_decay": 0.0}]
    kwargs = dict(cfg=cfg, epochs=epochs, phase="head", device=torch.device("cpu"), precision="fp32", loss_fn=CrossEntropy())
    if store_dir is None:
        return module, train_loop(module, groups, batches(x, y), 2, evaluate, **kwargs)
    with checkpointing(store_dir, resume=resume, handle_signals=False):
        return module, train_loop(module, groups, batches(x, y), 2, evaluate, **kwargs)


def test_non_finite_loss_stops_and_keeps_the_best_weights(tmp_path):
    def batches(x, y):
        def epochs(epoch):
            for i in (0, 8):
                xb = x[i : i + 8].clone()
                if epoch == 3:
                    xb[0, 0] = float("nan")
                yield xb, y[i : i + 8]
        return epochs

    with pytest.raises(NonFiniteLoss, match="loss became nan in head epoch 3; lower the learning rate.*best weights so far are kept") as exc:
        _loop(batches, 5, tmp_path)
    saved = Checkpoints.read(tmp_path)["running"]
    assert saved["epoch"] == 2 and saved["best_state"] is not None
    assert "last.pt" in str(exc.value)


def test_checkpoint_file_loads_with_weights_only(tmp_path):
    def batches(x, y):
        return lambda epoch: iter([(x, y)])

    module, history = _loop(batches, 2, tmp_path)
    saved = torch.load(tmp_path / "last.pt", weights_only=True)
    assert list(saved["finished"]) == ["0-head"] and len(saved["finished"]["0-head"]["history"]) == 2
    # a finished phase is replayed, not retrained
    module2, history2 = _loop(batches, 2, tmp_path, resume=True)
    assert [r.val_loss for r in history2] == [r.val_loss for r in history]
    assert all(torch.equal(a, b) for a, b in zip(module.state_dict().values(), module2.state_dict().values()))


def test_rng_state_round_trip():
    state = checkpoint.rng_state()
    a = (torch.rand(3), __import__("numpy").random.rand(3).tolist(), __import__("random").random())
    checkpoint.set_rng_state(state)
    b = (torch.rand(3), __import__("numpy").random.rand(3).tolist(), __import__("random").random())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


# ------------------------------------------------------------------ real signals and kills

CLI = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    import conftest  # registers the tiny backbone
    from headstart.cli import main
    main()
    """
)


def _cli_script(tmp_path: Path) -> list[str]:
    script = tmp_path / "tinycli.py"
    script.write_text(CLI.format(tests=str(Path(__file__).parent)))
    return [sys.executable, str(script)]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_real_signal_stops_cleanly_and_resume_equals_uninterrupted(signum, folder, tmp_path, capsys):
    longer = [*ARGS, "--epochs", "30", "--patience", "0"]
    code, _, err = run(capsys, "train", folder, *longer, "--out", tmp_path / "reference")
    assert code == 0, err
    out = tmp_path / "signalled"
    args = [*_cli_script(tmp_path), "train", str(folder), *longer, "--out", str(out)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    running = None
    while time.monotonic() < deadline and proc.poll() is None:
        running = Checkpoints.read(out / "checkpoints")["running"] if (out / "checkpoints" / "last.pt").is_file() else None
        if running is not None and running["key"] == "0-fine-tune":
            break
        time.sleep(0.05)
    assert proc.poll() is None and running is not None, f"the fine-tune phase was never seen running: {running}"
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err and f"resume with: headstart train --resume {out}" in err
    done = subprocess.run([*_cli_script(tmp_path), "train", "--resume", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "resuming after epoch" in (out / "train.log").read_text()
    same_run(tmp_path / "reference", out)


def test_a_signal_during_an_image_decode_is_not_taken_for_a_broken_file(tmp_path, monkeypatch):
    """The dataset skips a file whose decode raises; a SIGINT that lands inside that decode
    must still stop the run, not be counted as one more unreadable image."""
    from PIL import Image

    from headstart.data import imagesets

    path = tmp_path / "a.png"
    Image.new("RGB", (4, 4)).save(path)
    data = imagesets.ImageDataset([path], np.zeros(1, dtype=np.int64), transform=lambda im: im)

    def decode_then_signalled(*args, **kwargs):
        signal.raise_signal(signal.SIGINT)
        raise AssertionError("the handler raises before this line")

    monkeypatch.setattr(imagesets, "load_image", decode_then_signalled)
    with checkpointing(tmp_path / "checkpoints"), pytest.raises(TrainingInterrupted) as exc:
        data[0]
    assert exc.value.signum == signal.SIGINT
    monkeypatch.undo()
    assert data[0][3] is None  # the handlers are restored; the file decodes


SAVER = textwrap.dedent(
    """
    import sys, torch
    from headstart.classifiers.artifact import save_model_dir
    path = sys.argv[1]
    i = 0
    print("ready", flush=True)
    while True:
        i += 1
        save_model_dir(path, {{"i": i}}, {{"w": torch.full((512, 1024), float(i))}},
                       extra=lambda d: (d / "tokenizer.json").write_text("x" * 100000))
    """
)


def test_sigkill_during_saves_always_leaves_a_loadable_model(tmp_path):
    model = tmp_path / "model"
    save_model_dir(model, {"i": 0}, {"w": torch.zeros(512, 1024)})
    script = tmp_path / "saver.py"
    script.write_text(SAVER.format())
    for delay in (0.05, 0.13, 0.29, 0.41, 0.67, 0.83):
        proc = subprocess.Popen([sys.executable, str(script), str(model)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        proc.kill()
        proc.wait()
        config = read_config(model)
        weights = read_weights(model)
        assert float(weights["w"][0, 0]) == config["i"]  # weights and config of the same save
    save_model_dir(model, {"i": -1}, {"w": torch.zeros(2)})  # and the next save works
    assert read_config(model)["i"] == -1


@pytest.mark.parametrize("kind", ["transformer", "word-vectors"])
def test_text_runs_resume_to_the_same_result(kind, tiny_bert, tmp_path, capsys, monkeypatch):
    from conftest import make_texts

    texts, labels = make_texts(48)
    data = tmp_path / "reviews.csv"
    data.write_text("review,sentiment\n" + "".join(f'"{t}",{l}\n' for t, l in zip(texts, labels)))
    if kind == "transformer":
        # the epoch loop (auto tries the contrastive recipe on 24 rows per class)
        backbone = ["--backbone", tiny_bert, "--recipe", "full", "--lr", "1e-2", "--backbone-lr", "3e-3"]
    else:
        vectors = tmp_path / "vectors.txt"
        words = sorted({w for t in texts for w in t.split()})
        rng = __import__("numpy").random.default_rng(0)
        vectors.write_text("".join(w + " " + " ".join(f"{v:.4f}" for v in rng.normal(size=8)) + "\n" for w in words))
        backbone = ["--word-vectors", vectors, "--sequence-encoder", "bilstm", "--hidden-size", "8"]
    args = ["train", data, *backbone, "--epochs", "4", "--patience", "0", "--batch-size", "8",
            "--precision", "fp32", "--quiet", "--no-cache"]
    code, _, err = run(capsys, *args, "--out", tmp_path / "reference")
    assert code == 0, err
    real_save = Checkpoints.save_epoch
    interrupt_after_save(monkeypatch, None, 2, signal.SIGTERM)
    code, _, err = run(capsys, *args, "--out", tmp_path / "run")
    assert code == 128 + signal.SIGTERM and "interrupted (SIGTERM)" in err
    monkeypatch.setattr(Checkpoints, "save_epoch", real_save)
    code, _, err = run(capsys, "train", "--resume", tmp_path / "run")
    assert code == 0, err
    same_run(tmp_path / "reference", tmp_path / "run")


def test_a_full_disk_during_a_checkpoint_is_a_clear_error(tmp_path, monkeypatch):
    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    store = Checkpoints(tmp_path / "checkpoints")
    with pytest.raises(HeadstartError, match=r"cannot write the checkpoint.*\(No space left on device\); free some space"):
        store.save_finished("0-head", {"w": torch.zeros(1)}, [])
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == []  # no temporary file left


def test_a_save_that_died_between_two_renames_is_put_back(tmp_path, monkeypatch):
    from headstart.classifiers import artifact

    model = tmp_path / "model"
    save_model_dir(model, {"i": 1}, {"w": torch.ones(2)})
    monkeypatch.setattr(artifact, "_exchange", lambda a, b: False)  # a system without renameat2
    real_replace = artifact.os.replace
    calls = []

    def die_after_the_first_rename(src, dst):
        calls.append((src, dst))
        real_replace(src, dst)
        if len(calls) == 1:
            raise KeyboardInterrupt  # the process "dies" with the old model aside, the new not yet in place

    monkeypatch.setattr(artifact.os, "replace", die_after_the_first_rename)
    with pytest.raises(KeyboardInterrupt):
        save_model_dir(model, {"i": 2}, {"w": torch.zeros(2)})
    monkeypatch.setattr(artifact.os, "replace", real_replace)
    assert not model.exists()
    assert read_config(model)["i"] == 1  # the previous model, put back by the load
