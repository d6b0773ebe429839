"""Property-based tests: whatever texts and labels a CSV holds, headstart reads back
exactly what the csv module wrote."""

from __future__ import annotations

import csv
import io

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from headstart.data.imagesets import read_csv
from headstart.errors import DataError
from headstart.data.textdata import read_table

# Any Unicode text but lone surrogates (not encodable in UTF-8), with the characters that
# break naive parsers well represented.
TRICKY = st.sampled_from([",", '"', "\n", "\r", "\r\n", "\t", " ", "'", ";", "\u2028", "\x85", "\x0b", "\x1c", "\ufeff", "é", "💥", "<script>"])
TEXT = st.lists(st.one_of(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12), TRICKY), max_size=6).map("".join)
LABEL = st.one_of(TEXT, st.sampled_from(["pos", "neg", "Pos", " pos ", "0", "1", "10", "2"]))
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _write_csv(path, header, rows, delimiter=",") -> None:
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, delimiter=delimiter)  # the default "\r\n" line ends, as Excel writes them
    writer.writerow(header)
    writer.writerows(rows)
    path.write_bytes(buf.getvalue().encode("utf-8"))


def _expected(rows):
    """What read_table keeps: rows whose text and label are not blank; labels stripped."""
    return [(t, l.strip()) for t, l in rows if t.strip() and l.strip()]


@FAST
@given(rows=st.lists(st.tuples(TEXT, LABEL), min_size=1, max_size=12))
def test_text_csv_round_trip(tmp_path_factory, rows):
    path = tmp_path_factory.mktemp("csv") / "data.csv"
    _write_csv(path, ["text", "label"], rows)
    expected = _expected(rows)
    if not expected:
        with pytest.raises(DataError):
            read_table(path, multi_label=False)  # labels may hold any character, ";" included
        return
    got = read_table(path, multi_label=False)  # labels may hold any character, ";" included
    assert [(t, got.classes[i]) for t, i in zip(got.texts, got.labels.tolist())] == expected
    assert set(got.classes) == {l for _, l in expected}
    assert len(got) + len(got.skipped) == len(rows) - sum(1 for t, l in rows if not t.strip() and not l.strip())


# Characters that end a TSV field or line: generated TSV texts are drawn without them, rather
# than filtered afterwards (most tricky texts hold one, and a filter would discard most draws).
BREAKS = ("\t", "\n", "\r", "\u2028", "\x85", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\u2029")
TSV_TEXT = st.lists(st.one_of(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters=BREAKS),
                                      max_size=12),
                              TRICKY.filter(lambda c: c not in BREAKS and c != "\r\n")), max_size=6).map("".join)
TSV_LABEL = st.one_of(TSV_TEXT, st.sampled_from(["pos", "neg", "Pos", " pos ", "0", "1", "10", "2"]))


@FAST
@given(rows=st.lists(st.tuples(TSV_TEXT, TSV_LABEL), min_size=1, max_size=12))
def test_tsv_round_trip_keeps_quotes_as_text(tmp_path_factory, rows):
    """TSV files (GLUE style) carry quote characters as text: any text without tabs or
    line breaks comes back unchanged."""
    assert all(not any(b in t + l for b in BREAKS) for t, l in rows)
    path = tmp_path_factory.mktemp("tsv") / "data.tsv"
    path.write_bytes(("text\tlabel\n" + "".join(f"{t}\t{l}\n" for t, l in rows)).encode("utf-8"))
    expected = _expected(rows)
    if not expected:
        with pytest.raises(DataError):
            read_table(path, multi_label=False)  # labels may hold any character, ";" included
        return
    got = read_table(path, multi_label=False)  # labels may hold any character, ";" included
    assert [(t, got.classes[i]) for t, i in zip(got.texts, got.labels.tolist())] == expected


@FAST
@given(labels=st.lists(LABEL, min_size=1, max_size=8))
def test_image_csv_labels_round_trip(tmp_path_factory, labels):
    """Labels of a path,label CSV (commas, quotes, line breaks, any Unicode) come back as written."""
    from conftest import COLORS, make_image

    root = tmp_path_factory.mktemp("imgcsv")
    image = make_image(root / "a.png", COLORS["red"], size=(8, 8))
    _write_csv(root / "data.csv", ["path", "label"], [(image.name, l) for l in labels])
    expected = [l.strip() for l in labels if l.strip()]
    if not expected:
        with pytest.raises(DataError):
            read_csv(root / "data.csv", check=False, multi_label=False)
        return
    got = read_csv(root / "data.csv", check=False, multi_label=False)
    assert [got.classes[i] for i in got.labels.tolist()] == expected
    assert got.classes == sorted(set(expected))
