"""Run directories as a library: the options recorded in run.json and read back (including
runs started before it recorded the dataclasses), the directory's states, and the train
command's options generated from the config dataclasses."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from headstart.cli import TRAIN_OPTIONS, cli
from headstart.config import HeadConfig, ModelOptions, RunOptions, TrainConfig, option_fields
from headstart.errors import DataError, HeadstartError
from headstart.runs import RUN_FILE, RunDir, TrainOptions, _record, new_run_dir


def test_every_config_field_is_a_train_option_and_back():
    fields = option_fields()
    assert set(TRAIN_OPTIONS) | {"data"} == set(fields)
    assert len(TRAIN_OPTIONS) == len(set(TRAIN_OPTIONS))
    help_text = CliRunner().invoke(cli, ["train", "--help"], terminal_width=10_000).output
    flat = " ".join(help_text.split())
    for name in TRAIN_OPTIONS:
        meta = fields[name][1].metadata
        assert (meta.get("flag") or "--" + name.replace("_", "-")) in flat, name
        if meta.get("help"):
            assert " ".join(meta["help"].split())[:60] in flat, name
    assert "--no-refit" in flat and "--single-label" in flat and "--no-progress" in flat


def test_cli_defaults_come_from_the_dataclasses():
    options = TrainOptions.from_flat({"data": "photos"})
    assert options.run == RunOptions(data="photos")
    assert options.model == ModelOptions()
    for f in dataclasses.fields(TrainConfig):
        if f.name not in ("head", "task"):
            assert options.training[f.name] == f.default, f.name
    assert options.training["task"] is None  # the data decides
    assert options.training["pooling"] is None and options.training["dropout"] is None  # the task decides
    assert options.training["hidden"] == HeadConfig().hidden
    with pytest.raises(HeadstartError, match="unknown training option.*nope"):
        TrainOptions.from_flat({"nope": 1})


def test_run_json_records_the_dataclasses_and_reads_them_back(tmp_path):
    data = tmp_path / "photos"
    data.mkdir()
    options = TrainOptions.from_flat({"data": data, "lr": 0.01, "hidden": (8,), "cache_dir": "cache", "out": "x"})
    config = TrainConfig(task="image", lr=0.01, cache_dir="cache", head=HeadConfig(pooling="avg", hidden=(8,)))
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.write(RUN_FILE, _record(options, config))
    record = json.loads((run.path / RUN_FILE).read_text())
    assert record["format"] == "headstart-run" and record["format_version"] == 2
    assert set(record) >= {"run", "model", "training"}
    assert Path(record["run"]["data"]).is_absolute() and Path(record["training"]["cache_dir"]).is_absolute()
    assert isinstance(record["training"]["num_workers"], int)  # fixed: a resume elsewhere draws the same augmentation
    back = run.options()
    assert back.run.data == str(data.absolute()) and back.run.out == "x"
    assert back.model == options.model
    assert back.training["task"] == "image" and back.training["lr"] == 0.01 and back.training["hidden"] == (8,)
    assert back.training["pooling"] == "avg"


def test_a_run_started_by_an_older_headstart_still_resumes(tmp_path):
    """run.json once held the command line's keyword arguments."""
    args = {"data": "/data/photos", "val_data": None, "lr": 0.1, "workers": 0, "compile_": False, "no_cache": True,
            "hidden": [16], "quiet": False, "progress": None, "backbone": None, "seed": 3}
    run = RunDir(tmp_path)
    run.write(RUN_FILE, {"args": args})
    back = run.options()
    assert back.run.data == "/data/photos" and back.training["num_workers"] == 0
    assert back.training["cache"] is False and back.training["compile"] is False and back.training["hidden"] == (16,)
    assert back.training["seed"] == 3 and back.training["unknown_rate"] == 0.05  # options it predates: their defaults


@pytest.mark.parametrize("record, message", [
    ({"format": "headstart-run", "format_version": 99, "run": {}, "model": {}, "training": {}}, "newer headstart"),
    ({"format": "something else"}, "not a headstart run record"),
    ({"format": "headstart-run", "format_version": 2, "run": {}}, "damaged"),
    ({"format": "headstart-run", "format_version": 2, "run": {}, "model": {}, "training": {"lr": -1}}, "lr must be"),
])
def test_a_bad_run_record_is_a_clear_error(tmp_path, record, message):
    run = RunDir(tmp_path)
    run.write(RUN_FILE, record)
    with pytest.raises(HeadstartError, match=message):
        run.options()


def test_run_directory_states(tmp_path):
    run = new_run_dir(tmp_path / "run", "efficientnet_lite0")
    assert not run.started() and not run.resumable() and not run.finished()
    with pytest.raises(HeadstartError, match="not a headstart run directory"):
        run.require_resumable()
    run.write(RUN_FILE, {})
    assert run.started() and run.resumable()
    run.checkpoints.mkdir()
    run.model.mkdir()
    (run.model / "config.json").write_text("{}")
    assert run.has_model() and run.resumable() and not run.finished()  # saved, but the run did not end
    run.checkpoints.rmdir()
    assert run.finished() and not run.resumable()
    with pytest.raises(HeadstartError, match="already finished"):
        run.require_resumable()
    with pytest.raises(HeadstartError, match="not empty"):
        new_run_dir(run.path, "x")
    with pytest.raises(HeadstartError, match="no metrics.json"):
        run.metrics()
    (run.path / "metrics.json").write_text("[1]")
    with pytest.raises(DataError, match="not a JSON object"):
        run.metrics()
    assert run.check() is None and run.predictions(["a", "b"]) is None


def test_train_run_from_python_writes_a_whole_run(folder, tmp_path):
    """The library call behind `headstart train`: no command line, no logging set up by it."""
    import logging

    from conftest import TINY
    from headstart.runs import train_run

    logger = logging.getLogger("headstart")
    before = logger.level
    options = TrainOptions.from_flat({
        "data": folder, "out": tmp_path / "run", "backbone": TINY, "weights": "none", "recipe": "fine-tune",
        "epochs": 1, "batch_size": 8, "precision": "fp32", "num_workers": 0, "time_budget": 0, "progress": False,
    })
    trained = train_run(options)
    run = trained.run
    assert run.finished() and trained.model_dir == run.model
    assert trained.classifier.predict(sorted(folder.rglob("*.png"))[0]) in trained.classifier.classes_
    log_text = (run.path / "train.log").read_text()
    assert "fine-tune epoch 1/1" in log_text and "new run directory" in log_text  # every epoch, at INFO
    assert logger.level == before  # the caller's logging is left as it was
    assert run.metrics()["recipe"] == "fine-tune" and run.options().training["epochs"] == 1
    assert run.predictions(trained.classifier.classes_) is not None
