"""Text data: CSV / TSV / JSON Lines files, pandas DataFrames or lists -> texts, integer
labels and class names, with what was skipped and why."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .labels import class_counts, encode_multi_label, is_multi_label, split_labels
from ..errors import DataError

TEXT_COLUMNS = ("text", "sentence", "review", "content")
LABEL_COLUMNS = ("label", "labels", "category", "sentiment", "class")
TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".ndjson", ".json")

# Large fields (long reviews) are legal CSV; the csv module's 128 kB default is not a limit users expect.
csv.field_size_limit(2**31 - 1)


@dataclass
class TextSet:
    texts: list[str]
    labels: np.ndarray
    classes: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    source: str = ""

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, index: Sequence[int] | np.ndarray) -> "TextSet":
        index = np.asarray(index, dtype=np.int64)
        return TextSet([self.texts[i] for i in index], self.labels[index], self.classes, [], self.source)

    def class_counts(self) -> dict[str, int]:
        return class_counts(self.labels, self.classes)


def _label_name(value: Any) -> str:
    """Labels keep their names; integers (and floats that are integers, as pandas makes them) become '0', '1', ..."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def sort_classes(names: set[str]) -> list[str]:
    """Numeric labels in numeric order (2 before 10), others alphabetically."""
    try:
        return sorted(names, key=lambda s: (0, int(s), s))
    except ValueError:
        return sorted(names)


def class_name_texts(classes: Sequence[str]) -> list[str] | None:
    """The class names as texts a sentence encoder can read (``card_arrival`` and
    ``CardArrival`` -> ``card arrival`` / ``Card Arrival``), or None when they cannot tell the
    classes apart: once digits and punctuation are dropped, some name is empty or two are the
    same (``0``/``1``, ``LABEL_0``/``LABEL_1``, ``c1``/``c2``)."""
    import re

    letters = [re.sub(r"[\W\d_]", "", str(c).lower()) for c in classes]  # letters of any script
    if len(classes) < 2 or not all(letters) or len(set(letters)) < len(letters):
        return None
    texts = []
    for c in classes:
        text = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", str(c))  # camelCase -> camel Case
        texts.append(" ".join(re.sub(r"[_\-./:]+", " ", text).split()))
    return texts


def _pick(columns: list[str], wanted: str | None, candidates: tuple[str, ...], what: str, flag: str) -> str:
    if wanted is not None:
        if wanted in columns:
            return wanted
        raise DataError(f"{what} column {wanted!r} not found; columns are: {', '.join(columns)}. Pass {flag} NAME")
    lowered = {c.strip().lower(): c for c in columns}
    for c in candidates:
        if c in lowered:
            return lowered[c]
    raise DataError(
        f"no {what} column found (looked for {', '.join(candidates)}); columns are: {', '.join(columns)}. "
        f"Pass {flag} NAME"
    )


def read_rows(path: Path, encoding: str | None = None) -> tuple[list[str], list[dict[str, Any]]]:
    """The columns and rows of a CSV, TSV or JSON Lines file."""
    if not path.exists():
        raise DataError(f"data file {str(path)!r} does not exist")
    if path.is_dir():
        raise DataError(f"{str(path)!r} is a folder; text data is a CSV, TSV or JSON Lines file")
    raw = path.read_bytes()
    try:
        text = raw.decode(encoding or "utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{str(path)!r} is not {encoding or 'UTF-8'} (bad byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
            "save it as UTF-8 or pass --encoding (e.g. --encoding latin-1)"
        ) from None
    except LookupError:
        raise DataError(f"unknown encoding {encoding!r}; use a Python codec name such as utf-8, latin-1, cp1252") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        rows, columns = [], {}
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{str(path)!r} line {lineno} is not valid JSON ({exc.msg}); expected one object per line") from None
            if not isinstance(obj, dict):
                raise DataError(f"{str(path)!r} line {lineno}: expected a JSON object, found {type(obj).__name__}")
            rows.append(obj)
            columns.update(dict.fromkeys(obj))
        return list(columns), rows
    delimiter = "\t" if suffix == ".tsv" else ","
    if suffix not in (".csv", ".tsv"):
        try:
            delimiter = csv.Sniffer().sniff(text[:4096], delimiters=",\t;|").delimiter
        except csv.Error:
            delimiter = ","
    # TSV files such as the GLUE releases carry quote characters as text, not as quoting.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting, strict=True)
    try:
        header = next(reader, None)
        if not header:
            raise DataError(f"{str(path)!r} is empty; expected a header line naming the columns")
        header = [h.strip() for h in header]
        rows = []
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise DataError(
                    f"{str(path)!r} line {reader.line_num}: expected {len(header)} fields "
                    f"({', '.join(header)}), found {len(row)}; quote fields that contain "
                    f"{'tabs' if delimiter == chr(9) else 'commas'} or newlines"
                )
            rows.append(dict(zip(header, row)))
    except csv.Error as exc:
        raise DataError(f"{str(path)!r} line {reader.line_num}: malformed CSV ({exc}); check the quoting") from None
    return header, rows


def read_table(
    data: Any,
    labels: Sequence[Any] | None = None,
    *,
    text_column: str | None = None,
    label_column: str | None = None,
    encoding: str | None = None,
    classes: Sequence[str] | None = None,
    require_labels: bool = True,
    multi_label: bool | None = None,
    label_sep: str = ";",
) -> TextSet:
    """Texts and labels from a file path, a pandas DataFrame, or a list of texts (+ ``labels``).

    Empty texts and empty labels are skipped and counted. With ``classes`` (a trained
    model's labels) a label outside them is an error that names it.

    A label cell holding ``label_sep`` (``;``) makes the column multi-label: each cell names
    any of the labels, and ``labels`` is an ``(n, K)`` 0/1 array. ``multi_label`` True or
    False decides instead (a trained model passes what it learned).
    """
    source = ""
    if labels is not None:
        if isinstance(data, (str, bytes)) or not hasattr(data, "__len__"):
            raise DataError("with labels given, data must be a list of texts")
        if len(data) != len(labels):
            raise DataError(f"got {len(data)} texts but {len(labels)} labels; they must pair up")
        pairs = list(zip(data, labels))
        source = "list"
    elif isinstance(data, (str, Path)):
        path = Path(data)
        columns, rows = read_rows(path, encoding)
        if not rows:
            raise DataError(f"{str(path)!r} has a header but no rows")
        tcol = _pick(columns, text_column, TEXT_COLUMNS, "text", "--text-column")
        if require_labels:
            lcol = _pick(columns, label_column, LABEL_COLUMNS, "label", "--label-column")
            pairs = [(r.get(tcol), r.get(lcol)) for r in rows]
        else:
            pairs = [(r.get(tcol), None) for r in rows]
        source = str(path)
    elif hasattr(data, "columns") and hasattr(data, "to_dict"):  # a pandas DataFrame
        columns = [str(c) for c in data.columns]
        tcol = _pick(columns, text_column, TEXT_COLUMNS, "text", "text_column=")
        lcol = _pick(columns, label_column, LABEL_COLUMNS, "label", "label_column=") if require_labels else None
        records = data.to_dict("records")
        pairs = [(r.get(tcol), r.get(lcol) if lcol else None) for r in records]
        source = "DataFrame"
    else:
        raise DataError(
            "text data must be a CSV/TSV/JSON Lines path, a pandas DataFrame, or a list of texts with labels"
        )
    texts: list[str] = []
    names: list[str] = []
    skipped: list[tuple[str, str]] = []
    for i, (text, label) in enumerate(pairs):
        where = f"{source} row {i + 1}"
        if text is None or (isinstance(text, float) and np.isnan(text)) or not str(text).strip():
            skipped.append((where, "empty text"))
            continue
        if require_labels:
            if label is None or (isinstance(label, float) and np.isnan(label)) or not _label_name(label):
                skipped.append((where, "empty label"))
                continue
            names.append(_label_name(label))
        texts.append(str(text))
    if not texts:
        raise DataError(f"no non-empty texts with labels found in {source}")
    if not require_labels:
        return TextSet(texts, np.full(len(texts), -1, dtype=np.int64), list(classes or []), skipped, source)
    multi = is_multi_label(names, label_sep, multi_label)
    found = {n for cell in names for n in split_labels(cell, label_sep)} if multi else set(names)
    if classes is None:
        classes = sort_classes(found)
    else:
        unknown = sorted(found - set(classes))
        if unknown:
            raise DataError(
                f"label(s) {', '.join(map(repr, unknown))} in {source} never appear in the training data; "
                f"known labels are: {', '.join(classes)}"
            )
    if multi:
        return TextSet(texts, encode_multi_label(names, label_sep, classes), list(classes), skipped, source)
    index = {c: i for i, c in enumerate(classes)}
    return TextSet(texts, np.asarray([index[n] for n in names], dtype=np.int64), list(classes), skipped, source)


def looks_like_text_table(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in TABLE_SUFFIXES
