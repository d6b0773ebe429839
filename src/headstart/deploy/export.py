"""Export a saved model to ONNX or TorchScript, and prove the export matches it.

An export is a directory: the network file (``model.onnx`` or ``model.pt``, fp32, whose
output is the class probabilities with the model's temperature applied), a JSON description
(``headstart-export.json``: labels, inputs, preprocessing or tokenizer settings), the
tokenizer files of a text model, and ``parity.json``. The parity check runs right after
exporting: the export and the PyTorch model predict the same inputs (validation data when
given, generated ones otherwise) through their own preprocessing - for ONNX the torch-free
predictor of :mod:`headstart.deploy.runtime` - and the export is refused unless the top-1 labels
agree on every input and no probability differs by more than ``tolerance``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..config import EXPORT_TOLERANCE
from ..errors import DataError, HeadstartError, ModelDirError
from .runtime import EXPORT_CONFIG, EXPORT_FORMAT, EXPORT_VERSION, PARITY_FILE, OnnxClassifier

log = logging.getLogger("headstart")

FORMATS = ("onnx", "torchscript")
MODEL_FILES = {"onnx": "model.onnx", "torchscript": "model.pt"}
# Largest allowed difference of any probability (headstart.config, where the CLI reads it too).
TOLERANCE = EXPORT_TOLERANCE
# Unknown scores are compared to this multiple of the tolerance, relative to their size: a
# combined score divides logit and feature differences by their spreads on in-scope rows, so
# fp32 differences the probabilities show at 1e-5 can show at 1e-4 there. The answers
# (unknown or not) must agree either way.
UNKNOWN_TOLERANCE_FACTOR = 10
ONNX_OPSET = 17


@dataclass
class Parity:
    """How closely an export follows the PyTorch model on ``n`` inputs."""

    n: int
    source: str
    top1_agreement: float
    max_abs_diff: float
    tolerance: float
    disagreements: list[dict[str, Any]]
    decided_by: str = "top-1"  # or "thresholds": the labels over each label's threshold
    unknown: dict[str, Any] | None = None  # a model that can answer unknown: compare_unknown

    @property
    def passed(self) -> bool:
        return (self.n > 0 and self.top1_agreement == 1.0 and self.max_abs_diff <= self.tolerance
                and (self.unknown is None or self.unknown["passed"]))

    @property
    def summary(self) -> str:
        what = "top-1 agreement" if self.decided_by == "top-1" else "agreement of the labels over their thresholds"
        return (f"{what} {self.top1_agreement:.2%} on {self.n} inputs, "
                f"max |prob diff| {self.max_abs_diff:.2e} (tolerance {self.tolerance:.0e})"
                + (f"; {self.unknown['summary']}" if self.unknown else ""))

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed, "n": self.n, "source": self.source, "top1_agreement": self.top1_agreement,
            "max_abs_diff": self.max_abs_diff, "tolerance": self.tolerance, "precision": "fp32",
            "summary": self.summary, "disagreements": self.disagreements[:20],
            **({"unknown": self.unknown} if self.unknown else {}),
        }


@dataclass
class ExportResult:
    path: Path
    model_file: Path
    parity: Parity


# --------------------------------------------------------------------------- the graph


def _activate(logits: torch.Tensor, temperature: float, multi_label: bool) -> torch.Tensor:
    """The objective's probabilities: softmax over classes, or a sigmoid per label."""
    z = logits / temperature
    return torch.sigmoid(z) if multi_label else torch.softmax(z, dim=-1)


class _Probabilities(nn.Module):
    """inputs -> softmax(logits / temperature) (a sigmoid per label with several labels per
    input), and for a model that can answer unknown its unknown score as a second output."""

    def __init__(self, model: nn.Module, temperature: float, multi_label: bool = False):
        super().__init__()
        self.model, self.temperature, self.multi_label = model, float(temperature), bool(multi_label)

    def _outputs(self, x):
        from ..models.unknown import logits_and_score

        if getattr(self.model, "unknown", None) is None:
            return _activate(self.model(x), self.temperature, self.multi_label)
        logits, score = logits_and_score(self.model, x)
        return _activate(logits, self.temperature, self.multi_label), score


class ImageProbabilities(_Probabilities):
    """pixel_values -> probabilities [, unknown_score]: the exported image graph."""

    def forward(self, pixel_values: torch.Tensor):
        return self._outputs(pixel_values)


class TextProbabilities(_Probabilities):
    """(input_ids, attention_mask) -> probabilities [, unknown_score]: the exported text graph."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        return self._outputs({"input_ids": input_ids, "attention_mask": attention_mask})


def output_names(model: nn.Module) -> list[str]:
    return ["probabilities"] + (["unknown_score"] if getattr(model, "unknown", None) is not None else [])


def model_temperature(config: dict[str, Any]) -> float:
    """The softmax temperature of a saved model (``config.json`` key ``temperature``, 1.0
    when absent); the exported probabilities include it."""
    try:
        t = float(config.get("temperature", 1.0))
    except (TypeError, ValueError):
        t = float("nan")
    if not math.isfinite(t) or t <= 0:
        raise ModelDirError(f"config.json has temperature {config.get('temperature')!r}; it must be a positive number")
    return t


def _example_inputs(clf) -> tuple[torch.Tensor, ...]:
    """Inputs to trace with. Text: two sequences, one padded - a mask of all ones lets the
    encoder drop its masking branch from the traced graph."""
    if clf.task == "image":
        size = clf.preprocessing_.input_size
        return (torch.randn(2, 3, size, size),)
    vocab = _vocab_size(clf)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(min(5, vocab - 1), vocab, (2, 9), generator=gen)
    mask = torch.ones_like(ids)
    ids[1, 5:], mask[1, 5:] = _pad_id(clf), 0
    return ids, mask


def _vocab_size(clf) -> int:
    if clf.kind == "word-vectors":
        return int(clf.model_.backbone.weight.shape[0]) + 2
    return int(clf.model_.backbone.config.vocab_size)


def _pad_id(clf) -> int:
    return clf.tokenizer_.pad_token_id if clf.tokenizer_.pad_token_id is not None else 0


def _write_graph(module: nn.Module, example: tuple[torch.Tensor, ...], task: str, fmt: str, path: Path) -> None:
    names = ["pixel_values"] if task == "image" else ["input_ids", "attention_mask"]
    outputs = output_names(module.model)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and deprecation chatter; parity is the real check
        if fmt == "torchscript":
            traced = torch.jit.trace(module, example, check_trace=False)
            torch.jit.save(traced, str(path))
            return
        axes = {n: ({0: "batch"} if task == "image" else {0: "batch", 1: "sequence"}) for n in names}
        axes.update({o: {0: "batch"} for o in outputs})
        # The TorchScript-based exporter: dynamic axes by name, LSTMs over packed sequences
        # (word-vector BiLSTMs), and sub-second exports; torch.export-based export cannot
        # trace pack_padded_sequence yet.
        torch.onnx.export(
            module, example, str(path), input_names=names, output_names=outputs,
            dynamic_axes=axes, opset_version=ONNX_OPSET, do_constant_folding=True, dynamo=False,
        )


# --------------------------------------------------------------------------- sample inputs


def _spread(items: Sequence, n: int) -> list:
    """At most ``n`` items spread evenly over ``items`` (every class of a sorted folder)."""
    if len(items) <= n:
        return list(items)
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, n).round().astype(int)]


def generated_images(directory: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` image files of varied size, aspect, format and mode: smooth colour fields with
    noise, saved as JPEG (most), PNG with transparency, grey PNG - what photos look like to
    the resize, crop and decode rules."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        w, h = int(rng.integers(24, 400)), int(rng.integers(24, 400))
        coarse = rng.uniform(0, 255, (int(rng.integers(2, 6)), int(rng.integers(2, 6)), 3)).astype(np.uint8)
        base = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BILINEAR), dtype=np.float64)
        arr = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        im = Image.fromarray(arr)
        kind = i % 5
        if kind == 3:
            alpha = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8))
            im.putalpha(alpha)
            path = directory / f"{i:03d}.png"
        elif kind == 4:
            im = im.convert("L")
            path = directory / f"{i:03d}.png"
        else:
            path = directory / f"{i:03d}.jpg"
        if path.suffix == ".jpg":
            im.save(path, quality=int(rng.integers(60, 96)))
        else:
            im.save(path)
        paths.append(path)
    return paths


def generated_texts(clf, n: int, seed: int = 0) -> list[str]:
    """``n`` texts of varied length from the model's own vocabulary (some past the token
    limit, so truncation is compared too), plus words it has never seen and punctuation."""
    rng = np.random.default_rng(seed)
    if clf.kind == "word-vectors":
        words = clf.tokenizer_.words
    else:
        special = set(clf.tokenizer_.all_special_tokens)
        words = [w for w in clf.tokenizer_.get_vocab() if w not in special and not w.startswith("##") and not w.startswith("[")]
    words = words or ["text"]
    extra = ["Zyxwvut", "naïve", "café", "don't", "it's", "!", ",", "?", "2024", "e-mail", "—", "😀"]
    limit = clf.max_length_
    texts = []
    for i in range(n):
        length = int(rng.integers(1, limit + 16)) if i % 3 else int(rng.integers(1, 6))
        picks = [words[int(j)] for j in rng.integers(0, len(words), length)]
        for _ in range(int(rng.integers(0, 3))):
            picks.insert(int(rng.integers(0, len(picks) + 1)), extra[int(rng.integers(0, len(extra)))])
        texts.append(" ".join(picks))
    return texts


# --------------------------------------------------------------------------- parity


def compare(reference: np.ndarray, exported: np.ndarray, names: Sequence[str], labels: Sequence[str], tolerance: float, source: str,
            thresholds: np.ndarray | None = None) -> Parity:
    """Agreement of the decisions and the largest absolute difference of any probability.
    One label per input: the top class (a tie within ``tolerance`` in the reference counts
    as agreeing). Several (``thresholds``): the same labels over their thresholds (a label
    whose reference probability lies within ``tolerance`` of its threshold may go either way)."""
    if reference.shape != exported.shape:
        raise HeadstartError(f"parity check: the export gave shape {exported.shape}, the model {reference.shape}")
    if not len(reference):
        return Parity(0, source, 0.0, float("inf"), tolerance, [])
    diff = np.abs(reference - exported)
    if thresholds is not None:
        ref_on, exp_on = reference >= thresholds, exported >= thresholds
        agree = ((ref_on == exp_on) | (np.abs(reference - thresholds) <= tolerance)).all(1)

        def shown(on: np.ndarray) -> str:
            return ";".join(labels[int(j)] for j in np.flatnonzero(on))

        bad = [{"input": str(names[i]), "model": shown(ref_on[i]), "export": shown(exp_on[i]), "max_abs_diff": float(diff[i].max())}
               for i in np.flatnonzero(~agree | (diff.max(1) > tolerance))]
        return Parity(len(reference), source, float(agree.mean()), float(diff.max()) if np.isfinite(diff).all() else float("inf"),
                      tolerance, bad, decided_by="thresholds")
    ref_top, exp_top = reference.argmax(1), exported.argmax(1)
    rows = np.arange(len(reference))
    tie = np.abs(reference[rows, ref_top] - reference[rows, exp_top]) <= tolerance
    agree = (ref_top == exp_top) | tie
    bad = [
        {"input": str(names[i]), "model": labels[int(ref_top[i])], "export": labels[int(exp_top[i])], "max_abs_diff": float(diff[i].max())}
        for i in np.flatnonzero(~agree | (diff.max(1) > tolerance))
    ]
    return Parity(len(reference), source, float(agree.mean()), float(diff.max()) if np.isfinite(diff).all() else float("inf"), tolerance, bad)


def _torchscript_probs(module, clf, inputs: Sequence) -> np.ndarray:
    """The TorchScript export on headstart's own torch preprocessing."""
    with torch.inference_mode():
        if clf.task == "image":
            from ..data.imagesets import load_image
            from ..backbones.transforms import eval_transform

            transform = eval_transform(clf.preprocessing_)
            out = [module(torch.stack([transform(load_image(p)) for p in inputs[i : i + 32]])) for i in range(0, len(inputs), 32)]
        else:
            from ..training.tokens import pad, tokenize

            ids, _ = tokenize(clf.tokenizer_, list(inputs), clf.max_length_)
            out = []
            for i in range(0, len(ids), 32):
                batch = pad(ids[i : i + 32], _pad_id(clf))
                out.append(module(batch["input_ids"], batch["attention_mask"]))
    if out and isinstance(out[0], tuple):  # probabilities, unknown scores
        return torch.cat([o[0] for o in out]).double().numpy(), torch.cat([o[1] for o in out]).double().numpy()
    return torch.cat(out).double().numpy(), None


def check_parity(clf, directory: Path, config: dict[str, Any], inputs: Sequence, source: str, temperature: float,
                 tolerance: float = TOLERANCE, where: str | None = None) -> Parity:
    """Predict ``inputs`` (image paths or texts) with the PyTorch model and with the export
    in ``directory``; compare the probabilities. ``where`` names the inputs' origin in the
    error when none of them decodes."""
    n = len(inputs)
    inputs, ref, ref_scores = reference_probs(clf, list(inputs), temperature)
    if not len(inputs):  # nothing to compare: say so, rather than compare two empty arrays
        raise DataError(f"no decodable images in {where or source} ({n} file(s) tried); "
                        "pass image files, a folder of images or a CSV with columns path,label")
    if config["model_format"] == "onnx":
        exported, scores = OnnxClassifier(directory, config).predict_scored(list(inputs))
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still the portable format
            module = torch.jit.load(str(directory / config["file"]))
        exported, scores = _torchscript_probs(module, clf, inputs)
    names = [Path(p).name for p in inputs] if clf.task == "image" else [t[:60] for t in inputs]
    thresholds = getattr(clf.decision_, "thresholds", None) if clf.objective_.multi_label else None
    parity = compare(np.atleast_2d(ref), np.atleast_2d(exported), names, clf.classes_, tolerance, source, thresholds)
    if ref_scores is not None:
        parity.unknown = compare_unknown(ref_scores, scores, names, clf.unknown_rule_.threshold,
                                         tolerance * UNKNOWN_TOLERANCE_FACTOR)
    return parity


def compare_unknown(reference: np.ndarray, exported: np.ndarray | None, names: Sequence[str], threshold: float,
                    tolerance: float) -> dict[str, Any]:
    """Agreement of the unknown answers and the largest difference of the unknown scores,
    relative to the score's size (energy scores are logits); an input whose reference score
    lies within the tolerance of the threshold may go either way."""
    if exported is None or np.shape(exported) != np.shape(reference):
        return {"passed": False, "summary": "the export gives no unknown scores for this model"}
    scale = np.maximum(1.0, np.abs(reference))
    diff = np.abs(reference - exported) / scale
    agree = ((reference > threshold) == (exported > threshold)) | (np.abs(reference - threshold) <= tolerance * scale)
    bad = [{"input": str(names[i]), "model": float(reference[i]), "export": float(exported[i])}
           for i in np.flatnonzero(~agree | (diff > tolerance))]
    worst = float(diff.max()) if len(diff) and np.isfinite(diff).all() else (0.0 if not len(diff) else float("inf"))
    return {"passed": bool(agree.all() and worst <= tolerance), "agreement": float(agree.mean()) if len(agree) else 1.0,
            "max_rel_diff": worst, "summary": f"unknown answers agree on {agree.mean():.2%}, max relative score diff "
                                              f"{worst:.2e}", "disagreements": bad[:20]}


def reference_probs(clf, inputs: list, temperature: float) -> tuple[list, np.ndarray]:
    """The PyTorch model's probabilities, softmax(logits / temperature) or its sigmoids, in
    fp32; for images only of the inputs that decode (returned with them)."""
    if clf.task == "image":
        logits, scores, rows, _ = clf._logits(inputs, with_unknown=True)
        inputs = [inputs[int(i)] for i in rows]
    else:
        logits, scores = clf._logits(inputs, with_unknown=True)
    return inputs, _activate(logits.double(), temperature, clf.objective_.multi_label).numpy(), scores


def sample_inputs(clf, val: str | Path | None, samples: int, scratch: Path, seed: int = 0) -> tuple[list, str]:
    """The parity inputs: up to ``samples`` from ``val``, else generated ones."""
    if val is not None:
        if clf.task == "image":
            from ..data.imagesets import image_files

            items = _spread(image_files(Path(val)), samples)
        else:
            items = _spread(clf._read(val).texts, samples)
        if not items:
            raise DataError(f"{str(val)!r} holds nothing to check the export on")
        return items, f"{len(items)} inputs from {val}"
    if clf.task == "image":
        folder = scratch / "parity-images"
        folder.mkdir()
        return generated_images(folder, samples, seed), f"{samples} generated images (JPEG and PNG, varied sizes)"
    return generated_texts(clf, samples, seed), f"{samples} generated texts (varied lengths, some past the token limit)"


# --------------------------------------------------------------------------- the command


def default_out(model_dir: Path, fmt: str) -> Path:
    return model_dir.resolve().parent / f"{model_dir.resolve().name}-{fmt}"


def _describe(clf, fmt: str, model_dir: Path, temperature: float) -> dict[str, Any]:
    multi = clf.objective_.multi_label
    abstains = clf.unknown_rule_ is not None
    config: dict[str, Any] = {
        # version 2 only for what version 1 readers would misread: sigmoid outputs, thresholds, unknown
        "format": EXPORT_FORMAT, "format_version": EXPORT_VERSION if multi or abstains else 1, "model_format": fmt,
        "file": MODEL_FILES[fmt], "task": clf.task, "labels": list(clf.classes_), "temperature": temperature,
        **({"objective": clf.objective_.to_config()} if multi else {}),
        **({"decision": clf.decision_.to_config()} if multi or abstains else {}),
        "outputs": output_names(clf.model_), "precision": "fp32",
        "source": {"model_dir": str(model_dir.resolve()), "headstart_version": __version__, "torch_version": torch.__version__},
    }
    if clf.task == "image":
        pre = clf.preprocessing_.to_dict()
        pre["resize_short_side"] = int(math.floor(pre["input_size"] / pre["crop_pct"]))
        pre["layout"] = "NCHW float32, RGB scaled to [0, 1] then (x - mean) / std"
        config.update(inputs=["pixel_values"], preprocessing=pre)
    else:
        word = clf.kind == "word-vectors"
        config.update(inputs=["input_ids", "attention_mask"], text={
            "kind": clf.kind, "max_length": clf.max_length_, "pad_id": _pad_id(clf),
            "tokenizer": "vocab.json" if word else "tokenizer.json",
            "padding": "right, to the longest sequence of the batch; attention_mask 1 on tokens, 0 on padding",
            **({"lowercase": clf.tokenizer_.lowercase} if word else {"truncation_side": clf.tokenizer_.truncation_side}),
        })
    return config


def _prepare_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise HeadstartError(f"--out {str(out)!r} is a file; pass a directory path for the export")
    if out.is_dir() and any(out.iterdir()) and not (out / EXPORT_CONFIG).is_file():
        raise HeadstartError(f"{str(out)!r} exists and is not a headstart export; choose another --out (nothing was overwritten)")


def _replace_dir(tmp: Path, out: Path) -> None:
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        old.rmdir()
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def export_model(
    model_dir: str | Path, fmt: str = "onnx", out: str | Path | None = None, *, val: str | Path | None = None,
    samples: int = 32, tolerance: float = TOLERANCE, seed: int = 0,
) -> ExportResult:
    """Export the model in ``model_dir`` to ``out`` and check parity.

    Raises :class:`HeadstartError` when the parity check fails; the failed export is then
    kept beside ``out`` as ``<out>.parity-failed`` for inspection, and an export already at
    ``out`` is left untouched.
    """
    from ..classifiers.loading import load

    if fmt not in FORMATS:
        raise HeadstartError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if samples < 1:
        raise HeadstartError(f"--samples must be at least 1; got {samples}")
    model_dir = Path(model_dir)
    out = Path(out) if out else default_out(model_dir, fmt)
    _prepare_out(out)
    clf = load(model_dir, precision="fp32", device="cpu")  # export and check in fp32, always
    clf.model_.to("cpu", memory_format=torch.contiguous_format).eval()
    temperature = model_temperature(clf.saved_config_)
    wrapper = (ImageProbabilities if clf.task == "image" else TextProbabilities)(
        clf.model_, temperature, clf.objective_.multi_label).eval()

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    scratch = Path(tempfile.mkdtemp(prefix="headstart-parity-"))
    try:
        config = _describe(clf, fmt, model_dir, temperature)
        log.info("exporting %s to %s", model_dir, out / MODEL_FILES[fmt])
        try:
            _write_graph(wrapper, _example_inputs(clf), clf.task, fmt, tmp / MODEL_FILES[fmt])
        except Exception as exc:  # noqa: BLE001 - the exporter's own errors, for a user
            raise HeadstartError(
                f"exporting {str(model_dir)!r} to {fmt} failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                f"try --format {'torchscript' if fmt == 'onnx' else 'onnx'}"
            ) from None
        if clf.task == "text":
            clf.tokenizer_.save_pretrained(str(tmp))
        _write_json(tmp / EXPORT_CONFIG, config)
        inputs, source = sample_inputs(clf, val, samples, scratch, seed)
        log.info("parity check on %s", source)
        where = f"--val {str(val)!r}" if val is not None else None
        parity = check_parity(clf, tmp, config, inputs, source, temperature, tolerance, where=where)
        config["parity"] = {k: v for k, v in parity.to_dict().items() if k != "disagreements"}
        _write_json(tmp / EXPORT_CONFIG, config)
        _write_json(tmp / PARITY_FILE, {**parity.to_dict(), "model_format": fmt, "model_dir": str(model_dir.resolve())})
        if not parity.passed:
            failed = out.with_name(out.name + ".parity-failed")
            shutil.rmtree(failed, ignore_errors=True)
            os.replace(tmp, failed)
            raise HeadstartError(
                f"the {fmt} export does not match the PyTorch model: {parity.summary}; "
                f"it was kept at {failed} for inspection (see parity.json), not at {out}"
            )
        _replace_dir(tmp, out)
    except OSError as exc:
        raise HeadstartError(f"writing the export to {str(out)!r} failed ({exc.strerror or exc})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
    return ExportResult(out, out / MODEL_FILES[fmt], parity)
