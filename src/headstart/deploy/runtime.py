"""The light predictor: an exported ONNX model run with onnxruntime, without PyTorch.

This module imports only numpy, Pillow, onnxruntime and (for transformer text models)
Hugging Face ``tokenizers`` - never torch or transformers - so a machine that only predicts
needs ``pip install 'headstart[onnx]'`` and none of the training stack. It reproduces the
training-time preprocessing exactly: for images the decode rules of ``data.load_image`` and
the evaluation transform of ``transforms.eval_transform`` (PIL resize of the short side to
``input_size / crop_pct``, centre crop, scale to [0, 1], normalise); for text the saved
tokenizer with the same truncation, and batches padded to their longest sequence. The
export's parity check (``headstart export``) runs this very code against the PyTorch model.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..data.labels import LabelPredictions
from ..objectives import decision_from_config
from ..errors import DataError, HeadstartError, ModelDirError
from ..data.images import load_opened, to_rgb

EXPORT_FORMAT = "headstart-export"
# 2: sigmoid outputs with per-label thresholds ("objective", "decision"); written only for those
EXPORT_VERSION = 2
EXPORT_CONFIG = "headstart-export.json"
PARITY_FILE = "parity.json"

ImageSource = Union[str, Path, bytes, Image.Image]

_PIL_FILTERS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}


# --------------------------------------------------------------------------- images


def pixel_limit(max_pixels: int | None = None) -> int | None:
    """The most pixels an image may have: ``max_pixels`` when given, else Pillow's
    decompression bomb limit (``Image.MAX_IMAGE_PIXELS``, None when switched off)."""
    return max_pixels if max_pixels is not None else Image.MAX_IMAGE_PIXELS


class ImageTooLarge(DataError):
    """An image over a pixel limit: refused for its size, not because it is broken."""


def check_pixels(size: tuple[int, int], max_pixels: int | None) -> None:
    """Refuse an image by the width and height of its header, before a pixel is decoded.

    An explicit check rather than Pillow's ``DecompressionBombWarning`` turned into an error
    with ``warnings.catch_warnings``: that switch is process-global and not thread-safe, and
    servers decode in many threads at once.
    """
    w, h = size
    if max_pixels is not None and w * h > max_pixels:
        raise ImageTooLarge(f"{w}x{h} is {w * h:,} pixels; the limit is {max_pixels:,} (decompression bomb guard)")


def decode_image(source: str | Path | bytes, max_pixels: int | None = None, draft: int | None = None) -> Image.Image:
    """Decode a file or the bytes of one into RGB; an image of more than ``max_pixels``
    (default: Pillow's decompression bomb limit) is refused from its header, before
    decoding. A bomb, a truncated file or something that is not an image raises
    :class:`DataError` with the reason."""
    limit = pixel_limit(max_pixels)
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            check_pixels(im.size, limit)
            return load_opened(im, draft)
    except UnidentifiedImageError:
        raise DataError("not an image (or an image format Pillow cannot read)") from None
    except Image.DecompressionBombError:  # Pillow's own hard limit, twice MAX_IMAGE_PIXELS
        raise ImageTooLarge(f"too many pixels (more than {limit}; decompression bomb guard)") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"unreadable image ({exc})") from None


def short_side(pre: dict[str, Any]) -> int:
    """The short side the evaluation transform resizes to: ``input_size / crop_pct``."""
    return int(math.floor(int(pre["input_size"]) / float(pre["crop_pct"])))


def resized_size(size: tuple[int, int], short: int) -> tuple[int, int]:
    """(width, height) after torchvision's ``Resize(short)``: the short side becomes
    ``short``, the long side ``int(short * long / short_side)``."""
    w, h = size
    return (short, int(short * h / w)) if w <= h else (int(short * w / h), short)


def model_input_image(im: Image.Image, pre: dict[str, Any], max_pixels: int | None = None) -> Image.Image:
    """The small image from which the model's preprocessing gives exactly the input it
    gives from ``im``: ``im`` resized (short side ``input_size / crop_pct``, the same Pillow
    filter, so the model's own resize then changes nothing) and cut down along its long side
    to the part around the centre crop. A server keeps this instead of the full-size image.

    The cut keeps ``input_size + 2 d`` pixels centred on the crop, ``d`` chosen so the piece
    is at least as long as the short side (the model's resize stays a no-op): the model's
    centre crop then lands on the very same pixels, padding included when ``crop_pct > 1``. An aspect ratio so extreme that the resized image alone would hold more
    than ``max_pixels`` is refused (a 1x40000 strip would become 256 x 10,240,000)."""
    size, short = int(pre["input_size"]), short_side(pre)
    new_w, new_h = resized_size(im.size, short)
    if max_pixels is not None and new_w * new_h > max_pixels:
        w, h = im.size
        raise ImageTooLarge(f"the aspect ratio of {w}x{h} is too extreme: resized to {short} px on its short side it "
                        f"would be {new_w}x{new_h}, over the limit of {max_pixels:,} pixels")
    if (new_w, new_h) != im.size:
        im = im.resize((new_w, new_h), _PIL_FILTERS.get(pre.get("interpolation", "bicubic"), Image.BICUBIC))
    d = max(0, -(-(short - size) // 2))  # ceil: the piece must stay at least `short` long
    long_side = max(new_w, new_h)
    start = int(round((long_side - size) / 2.0)) - d  # the model's crop offset, less d
    if start <= 0 or start + size + 2 * d > long_side:
        return im
    box = (start, 0, start + size + 2 * d, new_h) if new_w > new_h else (0, start, new_w, start + size + 2 * d)
    return im.crop(box)


def preprocess_image(im: Image.Image, pre: dict[str, Any]) -> np.ndarray:
    """One RGB image -> float32 CHW, exactly as torchvision's ``Resize(int(input_size /
    crop_pct))``, ``CenterCrop(input_size)``, ``PILToTensor``, ``ConvertImageDtype``,
    ``Normalize(mean, std)`` do it."""
    size, short = int(pre["input_size"]), short_side(pre)
    new_w, new_h = resized_size(im.size, short)
    if (new_w, new_h) != im.size:
        im = im.resize((new_w, new_h), _PIL_FILTERS.get(pre.get("interpolation", "bicubic"), Image.BICUBIC))
    arr = np.asarray(im, dtype=np.uint8)
    if new_w < size or new_h < size:  # torchvision pads with zeros before cropping
        pad_h, pad_w = max(size - new_h, 0), max(size - new_w, 0)
        arr = np.pad(arr, ((pad_h // 2, (pad_h + 1) // 2), (pad_w // 2, (pad_w + 1) // 2), (0, 0)))
        new_h, new_w = arr.shape[:2]
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    arr = arr[top : top + size, left : left + size]
    x = arr.transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)
    mean = np.asarray(pre["mean"], dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(pre["std"], dtype=np.float32).reshape(3, 1, 1)
    return (x - mean) / std


# --------------------------------------------------------------------------- text


class _WordTokens:
    """The word-vector models' tokenizer (``vocab.json``), without torch."""

    def __init__(self, path: Path, max_length: int):
        from ..data.words import word_ids

        data = json.loads(path.read_text(encoding="utf-8"))
        self.index = {w: i + 2 for i, w in enumerate(data["words"])}
        self.lowercase = bool(data["lowercase"])
        self.max_length = max_length
        self._ids = word_ids

    def __call__(self, texts: Sequence[str]) -> list[list[int]]:
        return [self._ids(t, self.index, self.lowercase, self.max_length) for t in texts]


class _HFTokens:
    """A Hugging Face fast tokenizer (``tokenizer.json``) with the model's truncation: to
    ``max_length`` from the model's side (``truncation_side``: "right" keeps the start of a
    long text, "left" its end). Padding is done by :func:`pad_batch`, on the right, as the
    PyTorch model's batches are."""

    def __init__(self, path: Path, max_length: int, truncation_side: str = "right"):
        from tokenizers import Tokenizer

        if truncation_side not in ("left", "right"):
            raise ModelDirError(f"truncation side {truncation_side!r} in {str(path.parent)!r}; expected 'left' or 'right'")
        self.tokenizer = Tokenizer.from_file(str(path))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=max_length, direction=truncation_side)

    def __call__(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(list(texts))]


def saved_truncation_side(directory: Path) -> str:
    """The ``truncation_side`` saved with a tokenizer (``tokenizer_config.json``), for
    exports whose description predates the key; "right", the default, when absent."""
    try:
        config = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return "right"
    side = config.get("truncation_side") if isinstance(config, dict) else None
    return side if isinstance(side, str) else "right"


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """``input_ids`` and ``attention_mask`` (int64), padded to the longest sequence."""
    width = max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    return ids, mask


# --------------------------------------------------------------------------- the predictor


def find_export(path: str | Path) -> Path | None:
    """The export directory of ``path`` (an export directory or the model file in one), or
    None when ``path`` is not an export."""
    p = Path(path)
    directory = p.parent if p.is_file() else p
    return directory if (directory / EXPORT_CONFIG).is_file() else None


def read_export_config(directory: Path) -> dict[str, Any]:
    try:
        config = json.loads((directory / EXPORT_CONFIG).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelDirError(f"{str(directory / EXPORT_CONFIG)!r} is unreadable ({exc})") from None
    if config.get("format") != EXPORT_FORMAT:
        raise ModelDirError(f"{str(directory / EXPORT_CONFIG)!r} is not a headstart export description")
    if int(config.get("format_version", 0)) > EXPORT_VERSION:
        raise ModelDirError(f"{str(directory)!r} was exported by a newer headstart; upgrade headstart")
    return config


class OnnxClassifier(LabelPredictions):
    """An exported headstart model run by onnxruntime, with the front of the PyTorch
    classifiers: ``classes_``, ``task``, ``predict``, ``predict_proba``, ``predict_top_k``.

    >>> clf = OnnxClassifier.load("runs/flowers/model-onnx")
    >>> clf.predict("some.jpg")
    'tulip'
    """

    runtime = "onnxruntime"

    def __init__(self, directory: Path, config: dict[str, Any], *, threads: int | None = None, batch_size: int = 32):
        try:
            import onnxruntime as ort
        except ImportError:
            raise HeadstartError("running an ONNX model needs onnxruntime: pip install 'headstart[onnx]'") from None
        self.directory, self.config = directory, config
        self.task = config["task"]
        self.classes_ = list(config["labels"])
        self.decision_ = decision_from_config(config.get("decision"), len(self.classes_))
        self.batch_size = batch_size
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        model_file = directory / config["file"]
        try:
            self.session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types for a bad file
            raise ModelDirError(f"onnxruntime cannot load {str(model_file)!r} ({str(exc).splitlines()[0]})") from None
        self.outputs = list(config["outputs"])  # probabilities [, unknown_score]
        self.scored = "unknown_score" in self.outputs
        if self.task == "image":
            self.preprocessing = config["preprocessing"]
        else:
            text = config["text"]
            self.pad_id = int(text["pad_id"])
            tok_file = directory / text["tokenizer"]
            if not tok_file.is_file():
                raise ModelDirError(f"{str(directory)!r} lacks its tokenizer file {text['tokenizer']!r}")
            if text["kind"] == "word-vectors":
                self.tokenize = _WordTokens(tok_file, int(text["max_length"]))
            else:
                side = text.get("truncation_side") or saved_truncation_side(directory)
                self.tokenize = _HFTokens(tok_file, int(text["max_length"]), side)

    @classmethod
    def load(cls, path: str | Path, **kwargs: Any) -> "OnnxClassifier":
        """Load an ONNX export: its directory, or the ``.onnx`` file in it."""
        directory = find_export(path)
        if directory is None:
            raise ModelDirError(
                f"{str(path)!r} is not a headstart export (no {EXPORT_CONFIG} beside it); "
                "make one with `headstart export MODEL_DIR --format onnx`"
            )
        config = read_export_config(directory)
        if config.get("model_format") != "onnx":
            raise ModelDirError(
                f"{str(directory)!r} holds a {config.get('model_format')} export; the light predictor runs ONNX exports "
                "(`headstart export MODEL_DIR --format onnx`)"
            )
        parity = config.get("parity") or {}
        if parity and not parity.get("passed", False):
            raise ModelDirError(
                f"the export in {str(directory)!r} failed its parity check against the PyTorch model "
                f"({parity.get('summary', 'see parity.json')}); re-export it before using it"
            )
        return cls(directory, config, **kwargs)

    # ------------------------------------------------------------------ running

    def _run_images(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, np.ndarray | None]:
        probs, scores = [], []
        for start in range(0, len(images), self.batch_size):
            x = np.stack([preprocess_image(im, self.preprocessing) for im in images[start : start + self.batch_size]])
            out = self.session.run(self.outputs, {self.config["inputs"][0]: x})
            probs.append(out[0])
            if self.scored:
                scores.append(out[1])
        return np.concatenate(probs).astype(np.float64), np.concatenate(scores).astype(np.float64) if self.scored else None

    def _run_texts(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray | None]:
        seqs = self.tokenize(texts)
        order = np.argsort([-len(s) for s in seqs], kind="stable")  # little padding per batch
        probs = np.empty((len(seqs), len(self.classes_)), dtype=np.float64)
        scores = np.empty(len(seqs), dtype=np.float64)
        for start in range(0, len(order), self.batch_size):
            index = order[start : start + self.batch_size]
            ids, mask = pad_batch([seqs[i] for i in index], self.pad_id)
            out = self.session.run(self.outputs, {"input_ids": ids, "attention_mask": mask})
            probs[index] = out[0]
            if self.scored:
                scores[index] = out[1]
        return probs, scores if self.scored else None

    def predict_proba_items(self, items: Sequence[ImageSource]) -> tuple[np.ndarray, list[str | None]]:
        """Image models: probabilities of each item (NaN rows where one could not be
        decoded) and each item's decode error (None when it decoded)."""
        probs, _, errors = self.predict_scored_items(items)
        return probs, errors

    def predict_scored_items(self, items: Sequence[ImageSource]) -> tuple[np.ndarray, np.ndarray | None, list[str | None]]:
        """Image models: probabilities of each item (NaN rows where one could not be
        decoded), unknown scores (None: the model has none) and each item's decode error."""
        images: list[Image.Image] = []
        rows: list[int] = []
        errors: list[str | None] = [None] * len(items)
        for i, item in enumerate(items):
            try:
                images.append(to_rgb(item) if isinstance(item, Image.Image) else decode_image(item, draft=short_side(self.preprocessing)))
                rows.append(i)
            except DataError as exc:
                errors[i] = str(exc)
        probs = np.full((len(items), len(self.classes_)), np.nan, dtype=np.float64)
        scores = np.full(len(items), np.nan) if self.scored else None
        if images:
            probs[rows], got = self._run_images(images)
            if self.scored:
                scores[rows] = got
        return probs, scores, errors

    def predict_proba(self, inputs: Any) -> np.ndarray:
        """Class probabilities, columns in ``classes_`` order: one row for one input, a 2-D
        array for a list. Images: paths, bytes or PIL images; text: strings."""
        return self.predict_scored(inputs)[0]

    def predict_scored(self, inputs: Any) -> tuple[np.ndarray, np.ndarray | None]:
        """Class probabilities (as :meth:`predict_proba`) and unknown scores (None: the
        model has none)."""
        single = isinstance(inputs, (str, Path, bytes, Image.Image))
        items = [inputs] if single else list(inputs)
        if not items:
            return np.empty((0, len(self.classes_))), (np.empty(0) if self.scored else None)
        if self.task == "image":
            probs, scores, errors = self.predict_scored_items(items)
            bad = [f"{items[i] if not isinstance(items[i], (bytes, Image.Image)) else f'input {i + 1}'} ({e})"
                   for i, e in enumerate(errors) if e]
            if bad:
                raise DataError(f"cannot read {len(bad)} image(s): {'; '.join(bad[:5])}")
        else:
            texts = [str(t) for t in items]
            empty = [i for i, t in enumerate(texts) if not t.strip()]
            if empty:
                which = "the text" if single else f"text {empty[0] + 1} of {len(texts)}"
                raise DataError(f"{which} is empty; there is nothing to classify")
            probs, scores = self._run_texts(texts)
        if single:
            return probs[0], None if scores is None else scores[:1]
        return probs, scores


def load_onnx(path: str | Path, **kwargs: Any) -> OnnxClassifier:
    """Load an ONNX export made by ``headstart export`` (directory or ``.onnx`` file)."""
    return OnnxClassifier.load(path, **kwargs)
