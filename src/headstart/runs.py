"""Run directories: what a training run writes, how it is read back, and :func:`train_run`,
the run itself (what ``headstart train`` does; the report and the studio read runs here).

A run directory holds::

    run.json            the options it was started with (RunOptions, ModelOptions, and the
                        TrainConfig as the classifier resolved it), for --resume
    check.json          the data check of the sets it trained and validated on
    config.json         task, data, backbone and the resolved TrainConfig
    train.log           the log
    checkpoints/        while it runs: the last epoch, for --resume (removed once it finished)
    model/              the trained model directory
    metrics.json        recipe, protocol, history, validation metrics, calibration, data notes
    val_predictions.csv one row per validation item: label, prediction, probabilities
    report.html, plots/ written by the report from the files above
    tensorboard/        with --log tensorboard
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import __version__
from .config import HeadConfig, ModelOptions, RunOptions, TrainConfig, command_line_default, option_fields
from .errors import DataError, HeadstartError
from .data.labels import label_names

log = logging.getLogger("headstart")

RUN_FILE = "run.json"
CONFIG_FILE = "config.json"
CHECK_FILE = "check.json"
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "val_predictions.csv"
LOG_FILE = "train.log"
REPORT_FILE = "report.html"
MODEL_DIR = "model"
CHECKPOINTS_DIR = "checkpoints"
RUN_FORMAT, RUN_FORMAT_VERSION = "headstart-run", 2
FIXED_COLUMNS = ["item", "label", "predicted", "confidence"]


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (a reader never sees half a file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read {what} {str(path)!r} ({exc})") from None
    if not isinstance(data, dict):
        raise DataError(f"{what} {str(path)!r} is not a JSON object")
    return data


# --------------------------------------------------------------------------- options


@dataclass
class TrainOptions:
    """Everything a run is started with: where (``run``), what model (``model``) and how it
    trains (``training``: :class:`TrainConfig` and :class:`HeadConfig` fields by name, where
    None leaves the choice to the task or the data, e.g. the task itself and the pooling)."""

    run: RunOptions
    model: ModelOptions
    training: dict[str, Any]

    @classmethod
    def from_flat(cls, values: dict[str, Any]) -> "TrainOptions":
        """From one flat mapping of option names (the command line's); missing names take
        the command line's defaults, unknown ones are refused."""
        fields = option_fields()
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise HeadstartError(f"unknown training option(s): {', '.join(unknown)}")
        parts: dict[type, dict[str, Any]] = {RunOptions: {}, ModelOptions: {}, TrainConfig: {}}
        for name, (owner, f) in fields.items():
            value = values[name] if name in values else command_line_default(f)
            parts[TrainConfig if owner is HeadConfig else owner][name] = str(value) if isinstance(value, Path) else value
        training = parts[TrainConfig]
        training["hidden"] = tuple(training.get("hidden") or ())
        return cls(RunOptions(**parts[RunOptions]), ModelOptions(**parts[ModelOptions]), training)

    def flat(self) -> dict[str, Any]:
        return {**self.run.to_dict(), **self.model.to_dict(), **self.training}


def _absolute(values: dict[str, Any]) -> dict[str, Any]:
    """Paths made absolute as their fields ask (a resume may start elsewhere)."""
    fields = option_fields()
    out = dict(values)
    for name, value in values.items():
        rule = fields[name][1].metadata.get("absolute") if name in fields else None
        if value and (rule == "always" or (rule == "if-exists" and Path(value).exists())):
            out[name] = str(Path(value).absolute())
    return out


def _record(options: TrainOptions, config: TrainConfig) -> dict[str, Any]:
    """run.json: the options, with the classifier's TrainConfig (its task and pooling
    decided) and the number of decoding workers fixed (with workers, augmentation draws its
    own random numbers: a resume on another machine must not change them)."""
    from .data.imagesets import default_num_workers

    training = config.to_dict()
    head = training.pop("head")
    if training.get("num_workers") is None:
        training["num_workers"] = default_num_workers()
    training = _absolute(training)
    return {
        "format": RUN_FORMAT, "format_version": RUN_FORMAT_VERSION, "headstart": __version__,
        "run": _absolute(options.run.to_dict()), "model": _absolute(options.model.to_dict()),
        "training": {**training, "head": head},
    }


# what the command line's keyword names were in run.json before it recorded the dataclasses
_LEGACY_NAMES = {"workers": "num_workers", "compile_": "compile"}


def _read_record(record: dict[str, Any], path: Path) -> TrainOptions:
    if "args" in record:  # a run started before run.json recorded the dataclasses
        args = {_LEGACY_NAMES.get(k, k): v for k, v in record["args"].items()}
        if "no_cache" in args:
            args["cache"] = not args.pop("no_cache")
        return TrainOptions.from_flat(args)
    if record.get("format") != RUN_FORMAT or not isinstance(record.get("format_version"), int):
        raise DataError(f"{str(path)!r} is not a headstart run record")
    if record["format_version"] > RUN_FORMAT_VERSION:
        raise DataError(f"{str(path)!r} was written by a newer headstart (run format {record['format_version']}); "
                        "resume it with that version")
    try:
        config = TrainConfig.from_dict(record["training"])
        training = {**config.to_dict(), **config.head.to_dict()}
        del training["head"]
        return TrainOptions(RunOptions.from_dict(record["run"]), ModelOptions.from_dict(record["model"]), training)
    except (KeyError, TypeError) as exc:
        raise DataError(f"{str(path)!r} is damaged ({exc}); start a new run") from None


# --------------------------------------------------------------------------- the directory


class RunDir:
    """A run directory: its files, its state and its records."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.model = self.path / MODEL_DIR
        self.checkpoints = self.path / CHECKPOINTS_DIR

    def __str__(self) -> str:
        return str(self.path)

    def started(self) -> bool:
        """Training began: the options are recorded."""
        return (self.path / RUN_FILE).is_file()

    def has_model(self) -> bool:
        return (self.model / "config.json").is_file()

    def finished(self) -> bool:
        """The model is saved and nothing is left to resume."""
        return self.has_model() and not self.checkpoints.exists()

    def resumable(self) -> bool:
        return self.started() and not self.finished()

    def require_resumable(self) -> None:
        if not self.started():
            raise HeadstartError(f"{str(self.path)!r} is not a headstart run directory (no {RUN_FILE}); "
                                 "pass the directory `train` printed")
        if self.finished():
            raise HeadstartError(f"the run in {str(self.path)!r} already finished; its model is {str(self.model)!r}")

    def options(self) -> TrainOptions:
        """The options the run was started with."""
        return _read_record(read_json(self.path / RUN_FILE, "run record"), self.path / RUN_FILE)

    def write(self, name: str, obj: Any) -> Path:
        write_json(self.path / name, obj)
        return self.path / name

    def metrics(self) -> dict[str, Any]:
        """metrics.json of a finished run."""
        path = self.path / METRICS_FILE
        if not path.is_file():
            model_dir = (self.path / "config.json").is_file() and (self.path / "model.safetensors").is_file()
            hint = " (that is a model directory; pass the run directory above it)" if model_dir else ""
            raise HeadstartError(f"{str(self.path)!r} is not a headstart run directory: it has no {METRICS_FILE}{hint}")
        return read_json(path, "metrics file")

    def config(self) -> dict[str, Any]:
        """The run's config.json ({} when absent)."""
        return read_json(self.path / CONFIG_FILE, "run config") if (self.path / CONFIG_FILE).is_file() else {}

    def model_config(self) -> dict[str, Any]:
        return read_json(self.model / "config.json", "model config") if self.has_model() else {}

    def check(self) -> dict[str, Any] | None:
        """check.json; None when absent (DataError when it cannot be read)."""
        return read_json(self.path / CHECK_FILE, "check file") if (self.path / CHECK_FILE).is_file() else None

    def predictions(self, classes: Sequence[str], separator: str | None = None):
        """val_predictions.csv read back (:func:`read_predictions`); None when absent."""
        path = self.path / PREDICTIONS_FILE
        return read_predictions(path, classes, separator) if path.is_file() else None


def new_run_dir(out: str | Path | None, name: str) -> RunDir:
    """``out`` (refused when it holds anything), else a fresh ``runs/<name>-<time>``."""
    if out:
        run = Path(out)
        if run.exists() and (not run.is_dir() or any(run.iterdir())):
            raise HeadstartError(
                f"run directory {str(run)!r} already exists and is not empty; pass another --out "
                "(nothing was overwritten)"
            )
        run.mkdir(parents=True, exist_ok=True)
        return RunDir(run)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{name.replace('/', '_')}-{stamp}"
    run, n = base, 1
    while run.exists():
        n += 1
        run = base.with_name(f"{base.name}-{n}")
    run.mkdir(parents=True)
    return RunDir(run)


# --------------------------------------------------------------------------- predictions file


def write_predictions(path: Path, items: Sequence[str], labels: np.ndarray, probs: np.ndarray, classes: Sequence[str],
                      thresholds: np.ndarray | None = None, separator: str = ";") -> None:
    """One row per item: the item (image path or text), its label, the predicted label, the
    confidence, then the probability of each class in ``classes`` order (the saved model's
    probabilities, temperature applied). With several labels per row (``thresholds``): the
    true and the predicted labels joined by ``separator``, and the highest probability."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(FIXED_COLUMNS + [f"p:{c}" for c in classes])
        if thresholds is not None:
            true = label_names(labels, classes, separator)
            pred = label_names((probs >= thresholds).astype(np.int64), classes, separator)
            for item, t, p, row in zip(items, true, pred, probs):
                w.writerow([item, t, p, f"{row.max():.10g}"] + [f"{v:.10g}" for v in row])
        else:
            pred = probs.argmax(axis=1) if len(probs) else np.empty(0, dtype=np.int64)
            for item, y, p, row in zip(items, labels, pred, probs):
                w.writerow([item, classes[int(y)], classes[int(p)], f"{row[p]:.10g}"] + [f"{v:.10g}" for v in row])
    tmp.replace(path)


def read_predictions(path: Path, classes: Sequence[str], separator: str | None = None) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Items, labels and probabilities back from :func:`write_predictions` (``separator``:
    several labels per row, read back as an ``(n, K)`` 0/1 array)."""
    index = {c: i for i, c in enumerate(classes)}
    items, labels, rows = [], [], []
    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None or header[:4] != FIXED_COLUMNS or len(header) != 4 + len(classes):
                raise DataError(f"{str(path)!r} does not hold predictions for the {len(classes)} classes of this run")
            for n, row in enumerate(reader, start=2):
                names = [x for x in row[1].split(separator) if x] if separator and len(row) > 1 else [row[1] if len(row) > 1 else None]
                if len(row) != len(header) or any(x not in index for x in names):
                    raise DataError(f"{str(path)!r} line {n} is malformed; rerun training to rewrite it")
                items.append(row[0])
                if separator:
                    hot = np.zeros(len(classes), dtype=np.int64)
                    hot[[index[x] for x in names]] = 1
                    labels.append(hot)
                else:
                    labels.append(index[row[1]])
                rows.append([float(v) for v in row[4:]])
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"cannot read {str(path)!r} ({exc})") from None
    probs = np.asarray(rows, dtype=np.float64).reshape(len(rows), len(classes))
    y = np.asarray(labels, dtype=np.int64).reshape((len(rows), len(classes)) if separator else (len(rows),))
    return items, y, probs


# --------------------------------------------------------------------------- the run


def infer_task(data: Path, backbone: str | None) -> str:
    """image or text, from the data (and a text backbone's name)."""
    from .backbones.encoders import is_encoder_name
    from .data.textdata import looks_like_text_table

    if data.is_dir():
        return "image"
    if backbone and is_encoder_name(backbone):
        return "text"
    if data.suffix.lower() in (".csv", ".tsv"):
        with open(data, newline="", encoding="utf-8-sig", errors="replace") as f:
            header = [h.strip().lower() for h in next(csv.reader(f, delimiter="\t" if data.suffix.lower() == ".tsv" else ","), [])]
        return "image" if {"path", "file", "filename", "image"} & set(header) else "text"
    if looks_like_text_table(data):
        return "text"
    raise DataError(
        f"cannot tell the task of {str(data)!r}: pass a folder of class sub-folders (images), "
        "a CSV / TSV / JSON Lines file, or --task"
    )


def check_before_training(task: str, data: Path, train_set, val_set, val_split: float | None, seed: int, strict: bool,
                          separator: str | None = None):
    """The data check on the sets training will use; with ``strict``, a blocking finding
    stops the run before any directory is made. An empty class always does: training
    would refuse it anyway."""
    from .data.check import check_sets

    report = check_sets(task, train_set, val_set, val_split=None if val_set is not None else val_split, seed=seed,
                        separator=separator)
    fatal = [f for f in report.findings if f.kind == "empty-class"]
    blocking = fatal or (report.blocking() if strict else [])
    if blocking:
        first = blocking[0]
        shown = f" ({', '.join(first.items[:3])}{', ...' if len(first.items) > 3 else ''})" if first.items else ""
        prefix = "" if fatal else f"--strict: the data check found {len(blocking)} problem(s); "
        raise DataError(f"{prefix}{first.message}{shown}; run `headstart check {data}` for details (nothing was trained)")
    return report


class RunInterrupted(Exception):
    """SIGINT or SIGTERM stopped the run; its checkpoint holds ``where`` (None: nothing had been
    saved) and ``headstart train --resume RUN`` continues it."""

    def __init__(self, run: RunDir, signum: int, where: str | None):
        super().__init__(f"run {run} interrupted by signal {signum}")
        self.run, self.signum, self.where = run, signum, where


@dataclass
class Trained:
    """What :func:`train_run` made."""

    run: RunDir
    classifier: Any
    model_dir: Path


def _classifier(task: str, model: ModelOptions, training: dict[str, Any], progress: bool):
    """The front for ``task`` with these options; options only the other task reads are
    left out, and None leaves the pooling and dropout to the front."""
    fields = option_fields()
    kwargs = {k: v for k, v in training.items()
              if k != "task" and fields[k][1].metadata.get("only", task) == task
              and not (k in ("pooling", "dropout") and v is None)}
    if task == "image":
        from .classifiers.image import ImageClassifier

        return ImageClassifier(model.backbone or "efficientnet_lite0", weights=model.weights, multi_label=model.multi_label,
                               label_sep=model.label_sep, progress=progress, **kwargs)
    from .classifiers.text import TextClassifier

    if model.weights:
        raise HeadstartError("--weights is for image backbones; for text pass a model directory as --backbone")
    return TextClassifier(model.backbone or "minilm-l6", max_length=model.max_length, text_column=model.text_column,
                          label_column=model.label_column, encoding=model.encoding, word_vectors=model.word_vectors,
                          sequence_encoder=model.sequence_encoder, hidden_size=model.hidden_size,
                          multi_label=model.multi_label, label_sep=model.label_sep, progress=progress, **kwargs)


def _check_backbone_task(task: str, backbone: str | None, data: Path) -> None:
    from .backbones.image import is_image_backbone
    from .backbones.encoders import is_encoder_name

    if backbone and task == "text" and not is_encoder_name(backbone) and is_image_backbone(backbone):
        raise HeadstartError(f"{backbone!r} is an image backbone but {str(data)!r} is text; use --backbone minilm-l6, glove-6b-50d, or a Hugging Face model directory")
    if backbone and task == "image" and is_encoder_name(backbone):
        raise HeadstartError(f"{backbone!r} is a text backbone but {str(data)!r} holds images; use --backbone efficientnet_lite0 or a timm model name")


def train_run(options: TrainOptions, resume: RunDir | None = None) -> Trained | None:
    """Check the data, make the run directory (or continue ``resume`` from its last
    checkpoint, with its own options), train, and write the model, metrics.json and
    val_predictions.csv. Under torchrun every process calls this; only the first writes, and
    the others get None. Raises :class:`RunInterrupted` on SIGINT / SIGTERM."""
    from .training import distributed
    from .training.checkpoint import TrainingInterrupted, checkpointing
    from .data.splits import holdout_sets, require_two_classes

    run_opts, model, training = options.run, options.model, dict(options.training)
    world = distributed.init(training["device"])  # launched by torchrun / accelerate launch: one process of many
    if run_opts.data is None:
        raise HeadstartError("no training data given")
    data = Path(run_opts.data)
    val_data = Path(run_opts.val_data) if run_opts.val_data else None
    if not data.exists():
        raise DataError(f"data path {str(data)!r} does not exist")
    task = training["task"] = training.get("task") or ("text" if model.word_vectors else infer_task(data, model.backbone))
    _check_backbone_task(task, model.backbone, data)
    progress = sys.stderr.isatty() if run_opts.progress is None else run_opts.progress
    # Check the data and the backbone before a run directory is made for them.
    clf = _classifier(task, model, training, progress)
    if task == "image":
        from .backbones.image import resolve_spec

        train_set = clf._scan(data)
        val_set = clf._scan(val_data, classes=train_set.classes, multi_label=train_set.labels.ndim == 2) if val_data else None
        resolve_spec(clf.backbone)
        fit = lambda: clf.fit(train_set, val_set)  # noqa: E731
    else:
        train_set = clf._read(data)
        val_set = clf._read(val_data, classes=train_set.classes, multi_label=train_set.labels.ndim == 2) if val_data else None
        fit = lambda: clf.fit(train_set, val=val_set)  # noqa: E731
    cfg = clf.config
    require_two_classes(train_set.labels, train_set.classes)
    holdout_sets(train_set, val_set, cfg.val_split, cfg.seed)  # a split that cannot be made fails before any directory is made
    check = check_before_training(task, data, train_set, val_set, cfg.val_split, cfg.seed, run_opts.strict,
                                  model.label_sep if train_set.labels.ndim == 2 else None)
    if run_opts.log_to == "tensorboard":
        from .reports.tblog import summary_writer_class

        summary_writer_class()  # a missing package fails before any run directory is made
    run = resume
    if run is None:  # made by rank 0 alone, its name shared with the other processes
        made: RunDir | str = ""
        if world.is_main:
            try:
                made = new_run_dir(run_opts.out, Path(clf.backbone).stem if task == "text" else clf.backbone)
            except HeadstartError as exc:
                made = str(exc)
        made = distributed.broadcast(made)
        if not isinstance(made, RunDir):
            raise HeadstartError(made)
        run = made
        if world.is_main:
            run.write(RUN_FILE, _record(options, cfg))
    handler = logging.FileHandler(run.path / LOG_FILE, encoding="utf-8") if world.is_main else logging.NullHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(handler)
    level = log.level
    if log.getEffectiveLevel() > logging.INFO:  # called from Python: train.log still gets every epoch
        log.setLevel(logging.INFO)
    board = None
    if run_opts.log_to == "tensorboard" and world.is_main:
        from .reports.tblog import TensorBoardHandler

        board = TensorBoardHandler(run.path / "tensorboard")
        log.addHandler(board)
    try:
        log.info("headstart %s: %s run directory %s", __version__, "resuming the" if resume else "new", run)
        if world.enabled:
            log.info("data parallel: %d processes (%s); batch %d split across them",
                     world.size, distributed.backend_name(), cfg.batch_size)
        if world.is_main:
            run.write(CHECK_FILE, check.to_dict())
        for line in check.brief():
            log.info("%s", line)
        if check.findings:
            log.info("check: details in %s, or run `headstart check %s`", run.path / CHECK_FILE, data)
        if world.is_main:
            run.write(CONFIG_FILE, {
                "task": task, "data": str(data), "val": str(val_data) if val_data else None, "backbone": clf.backbone,
                "weights": model.weights, "training": cfg.resolved().to_dict(), "processes": world.size,
            })
        store = None
        try:
            with checkpointing(run.checkpoints, resume=resume is not None, enabled=world.is_main) as store:
                fit()
        except TrainingInterrupted as exc:
            raise RunInterrupted(run, exc.signum, store.last_epoch() if store else None) from None
        model_dir = None
        if world.is_main:
            model_dir = clf.save(run.model)
            _write_results(run, clf, task, train_set, val_set, world.size)
            shutil.rmtree(run.checkpoints, ignore_errors=True)  # last: until here, --resume finishes the run
        distributed.finish()
    finally:
        log.setLevel(level)
        for h in (handler, board):
            if h is not None:
                log.removeHandler(h)
                h.close()
    return Trained(run, clf, model_dir) if world.is_main else None


def _write_results(run: RunDir, clf, task: str, train_set, val_set, processes: int) -> None:
    """metrics.json and val_predictions.csv of a fitted classifier."""
    from .data.check import training_notes

    run.write(METRICS_FILE, {
        "recipe": clf.recipe_, "protocol": clf.protocol_, "tried": clf.tried_, "head": clf.head_info_,
        "cv_path": clf.cv_path_,
        "history": clf.history_, "val": clf.val_metrics_, "data": clf.data_summary_,
        "precision": clf.precision_, "train_seconds": round(clf.train_seconds_, 2),
        "skipped": [{"path": p, "reason": r} for p, r in clf.skipped_], "processes": processes,
        "temperature": clf.temperature_, "calibration": clf.calibration_,
        "data_notes": training_notes(task, train_set, val_set, clf.config.val_split, clf.config.seed,
                                     getattr(clf, "truncated_", None)),
    })
    if clf.val_items_ is not None:
        items = [str(Path(i).absolute()) for i in clf.val_items_] if task == "image" else clf.val_items_
        write_predictions(run.path / PREDICTIONS_FILE, items, clf.val_labels_, clf.val_probs_, clf.classes_,
                          getattr(clf.decision_, "thresholds", None), clf.objective_.separator or ";")
