from __future__ import annotations

import json
import subprocess
import sys

import pytest

from headstart.cli import main

TINY_ARGS = ["--backbone", "tiny-cnn", "--weights", "none", "--recipe", "fine-tune", "--epochs", "1", "--head-epochs", "2",
             "--batch-size", "8", "--precision", "fp32", "--workers", "0"]


def run(capsys, *argv) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return exc.value.code, out, err


@pytest.fixture
def run_dir(folder, tmp_path, capsys):
    code, out, err = run(capsys, "train", folder, *TINY_ARGS, "--out", tmp_path / "run", "--quiet")
    assert code == 0, err
    assert "validation accuracy:" in out and "model saved to" in out
    return tmp_path / "run"


def test_train_writes_the_run_directory(run_dir):
    names = sorted(p.name for p in run_dir.iterdir())
    assert names == ["check.json", "config.json", "metrics.json", "model", "plots", "report.html", "run.json", "train.log", "val_predictions.csv"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "phase", "epoch"} <= set(metrics["history"][0])
    assert metrics["val"]["n"] == 5
    resolved = json.loads((run_dir / "config.json").read_text())
    assert resolved["training"]["recipe"] == "fine-tune" and resolved["training"]["head_epochs"] == 2
    assert resolved["training"]["epochs"] == 1 and resolved["training"]["backbone_lr"] == 1e-4
    log = (run_dir / "train.log").read_text()
    assert "head: logistic regression, C = " in log and "fine-tune epoch 1/1" in log and "fine-tune refit epoch 1/1" in log
    assert metrics["recipe"] == "fine-tune" and metrics["protocol"]["kind"] == "holdout" and metrics["protocol"]["refit"]


def test_train_refuses_a_non_empty_out(run_dir, folder, capsys):
    code, _, err = run(capsys, "train", folder, *TINY_ARGS, "--out", run_dir)
    assert code == 1 and err.startswith("error: run directory") and "nothing was overwritten" in err
    assert (run_dir / "model" / "model.safetensors").is_file()


def test_evaluate_json_and_text(run_dir, folder, capsys):
    code, out, _ = run(capsys, "evaluate", run_dir / "model", folder, "--json")
    assert code == 0
    m = json.loads(out)
    assert {"accuracy", "macro_f1", "per_class", "confusion_matrix", "labels", "n"} <= set(m)
    assert m["n"] == 24 and m["labels"] == ["blue", "green", "red"]
    assert set(m["per_class"]["red"]) == {"precision", "recall", "f1", "support"}
    code, out, _ = run(capsys, "evaluate", run_dir / "model", folder)
    assert code == 0 and "macro F1" in out and "confusion matrix" in out


def test_predict_files_and_folders(run_dir, folder, capsys):
    one = sorted((folder / "red").iterdir())[0]
    code, out, _ = run(capsys, "predict", run_dir / "model", one, folder / "blue", "--top-k", "3", "--json")
    assert code == 0
    lines = [json.loads(l) for l in out.splitlines()]
    assert len(lines) == 1 + 8
    assert lines[0]["input"] == str(one) and len(lines[0]["predictions"]) == 3
    assert abs(sum(p["score"] for p in lines[0]["predictions"]) - 1) < 1e-3
    code, out, _ = run(capsys, "predict", run_dir / "model", one)
    assert code == 0 and out.count("\n") == 1 and out.split("\t")[1].split()[0] in {"red", "green", "blue"}


def test_predict_reports_unreadable_inputs_and_fails(run_dir, folder, tmp_path, capsys):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    one = sorted((folder / "red").iterdir())[0]
    code, out, err = run(capsys, "predict", run_dir / "model", one, bad)
    assert code == 1 and str(one) in out and "broken.png" in err and "1 of 2 input(s)" in err


@pytest.mark.parametrize(
    "argv,message",
    [
        (["train", "/nonexistent/photos"], "error: data path '/nonexistent/photos' does not exist"),
        (["evaluate", "/nonexistent/model", "."], "error: model directory '/nonexistent/model' does not exist"),
        (["predict", "/nonexistent/model", "x.jpg"], "error: model directory"),
        (["train", ".", "--backbone", "nope-net", "--val-split", "0.5"], None),
    ],
)
def test_bad_input_gives_one_line_error(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, *argv)
    assert code == 1
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    if message:
        assert err.startswith(message)


def test_usage_errors_exit_2(capsys):
    code, _, err = run(capsys, "train", ".", "--recipe", "magic")
    assert code == 2 and "Invalid value for '--recipe'" in err


def test_backbones_lists_embedded(capsys):
    code, out, _ = run(capsys, "backbones", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0 and rows["efficientnet_lite0"]["offline"] is True
    assert rows["minilm-l6"]["task"] == "text" and rows["minilm-l6"]["offline"] is True
    assert rows["glove-6b-50d"]["task"] == "text" and rows["glove-6b-50d"]["offline"] is True


def test_module_entry_point_no_traceback_without_debug(tmp_path):
    cmd = [sys.executable, "-m", "headstart", "evaluate", str(tmp_path / "none"), str(tmp_path)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    assert p.returncode == 1 and p.stderr.startswith("error:") and "Traceback" not in p.stderr
    p = subprocess.run(cmd[:3] + ["--debug"] + cmd[3:], capture_output=True, text=True)
    assert p.returncode == 1 and "Traceback" in p.stderr


def test_train_from_csv_of_paths(folder, tmp_path, capsys):
    rows = ["path,label"] + [f"{p.relative_to(folder)},{p.parent.name}" for p in sorted(folder.rglob("*.png"))]
    (folder / "train.csv").write_text("\n".join(rows) + "\n")
    code, out, err = run(capsys, "train", folder / "train.csv", *TINY_ARGS, "--out", tmp_path / "r", "--quiet")
    assert code == 0, err


def test_demo_data_is_a_real_class_folder(tmp_path):
    from headstart.data.imagesets import scan_folder
    from headstart.data.demo import write_digits

    s = scan_folder(write_digits(tmp_path / "digits"))
    assert s.classes == [str(d) for d in range(10)] and len(s) == 1797 and not s.skipped


@pytest.fixture
def text_run(tiny_bert, tmp_path, capsys):
    from conftest import make_texts

    texts, labels = make_texts(48)
    rows = ["review,sentiment"] + [f'"{t}",{l}' for t, l in zip(texts, labels)]
    (tmp_path / "reviews.csv").write_text("\n".join(rows) + "\n")
    code, out, err = run(capsys, "train", tmp_path / "reviews.csv", "--backbone", tiny_bert, "--recipe", "full", "--epochs", "8",
                         "--lr", "1e-2", "--backbone-lr", "3e-3", "--batch-size", "8", "--precision", "fp32",
                         "--out", tmp_path / "run", "--quiet")
    assert code == 0, err
    return tmp_path


def test_text_train_evaluate_predict(text_run, capsys, monkeypatch):
    import io

    model = text_run / "run" / "model"
    metrics = json.loads((text_run / "run" / "metrics.json").read_text())
    assert metrics["val"]["labels"] == ["negative", "positive"] and metrics["data"]["train"]["truncated"] == 0
    code, out, _ = run(capsys, "evaluate", model, text_run / "reviews.csv", "--json")
    m = json.loads(out)
    assert code == 0 and m["n"] == 48 and m["accuracy"] >= 0.8
    code, out, _ = run(capsys, "predict", model, "a great and wonderful movie", "--top-k", "2")
    assert code == 0 and out.startswith("a great and wonderful movie\tpositive ")
    monkeypatch.setattr("sys.stdin", io.StringIO("i hate this awful plot\n\nso much fun\n"))
    code, out, _ = run(capsys, "predict", model, "-", "--json")
    lines = [json.loads(l) for l in out.splitlines()]
    assert code == 0 and [l["predictions"][0]["label"] for l in lines] == ["negative", "positive"]


def test_text_bad_inputs_give_one_line_errors(tiny_bert, tmp_path, capsys):
    (tmp_path / "x.csv").write_text("body,stars\nhello,5\n")
    code, _, err = run(capsys, "train", tmp_path / "x.csv")
    assert code == 1 and err == "error: no text column found (looked for text, sentence, review, content); columns are: body, stars. Pass --text-column NAME\n"
    (tmp_path / "one.csv").write_text("text,label\na,x\nb,x\n")
    code, _, err = run(capsys, "train", tmp_path / "one.csv", "--backbone", tiny_bert)
    assert code == 1 and "only one class ('x')" in err
    (tmp_path / "l.csv").write_bytes("text,label\ncaf\xe9,a\n".encode("latin-1"))
    code, _, err = run(capsys, "train", tmp_path / "l.csv", "--backbone", tiny_bert)
    assert code == 1 and "--encoding" in err
    assert not (tmp_path / "runs").exists()


def test_demo_command_trains_with_the_defaults(tmp_path, capsys, monkeypatch):
    """The demo path (the README's first command) on a tiny folder instead of the digits."""
    import headstart.data.demo
    from conftest import make_folder

    monkeypatch.setattr(headstart.data.demo, "write_digits", lambda root: make_folder(tmp_path / "digits", per_class=6))
    code, out, err = run(capsys, "demo", "--epochs", "1", "--out", tmp_path / "run")
    assert code == 0, err
    assert "validation accuracy:" in out
    cfg = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert cfg["backbone"]["name"] == "efficientnet_lite0" and cfg["training"]["recipe"] == "auto"
    # 6 images a class are too few to try fine-tuning: the solved head or the prototypes
    assert cfg["summary"]["recipe"] in ("linear-probe", "prototype")


def test_backbone_of_the_wrong_task_and_impossible_split_fail_before_any_run_dir(folder, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.csv").write_text("text,label\ngood,p\nbad,n\nfine,p\nawful,n\n")
    code, _, err = run(capsys, "train", tmp_path / "r.csv", "--backbone", "efficientnet_lite0")
    assert code == 1 and "is an image backbone" in err
    code, _, err = run(capsys, "train", folder, "--backbone", "minilm-l6")
    assert code == 1 and "is a text backbone" in err
    code, _, err = run(capsys, "train", tmp_path / "r.csv", "--val-split", "0.2")
    assert code == 1 and "too few for a 20% validation split" in err
    assert not (tmp_path / "runs").exists()


def test_export_tolerance_default_is_the_libraries():
    """The CLI reads the default from headstart.config (importing the exporter would load torch
    at start-up), as the exporter does: one constant."""
    from headstart.config import EXPORT_TOLERANCE
    from headstart.deploy.export import TOLERANCE

    from headstart.cli import export

    option = next(p for p in export.params if p.name == "tolerance")
    assert option.default is EXPORT_TOLERANCE and TOLERANCE is EXPORT_TOLERANCE
