"""A corpus of broken inputs, built here: each gives its documented behaviour (see
docs/reliability.md) in both `headstart check` and `headstart train`, never a traceback."""

from __future__ import annotations

import csv
import io
import json
import shutil
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from headstart.cli import main

from conftest import COLORS, make_folder, make_image, make_texts

# One epoch of a linear probe: every image is still decoded (for the cached features).
IMAGE_ARGS = ["--backbone", "tiny-cnn", "--weights", "none", "--recipe", "linear-probe", "--epochs", "1",
              "--batch-size", "8", "--precision", "fp32", "--workers", "0"]


def run(capsys, *argv) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    # An unexpected exception would print a traceback, or with it hidden, the --debug hint.
    assert "Traceback" not in out + err and "rerun with --debug" not in err, err
    return exc.value.code, out, err


# --- building the broken inputs ------------------------------------------------------------


def truncated_jpeg(path: Path) -> None:
    whole = make_image(path.with_name("whole.jpg"), COLORS["red"], size=(64, 64))
    data = whole.read_bytes()
    whole.unlink()
    path.write_bytes(data[: len(data) // 2])


def png_bomb(path: Path, side: int = 16000) -> None:
    """A valid 1-bit PNG of side x side pixels (256 megapixels) that compresses to ~30 kB."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    row, z = b"\x00" * (1 + side // 8), zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def png16(path: Path) -> None:
    Image.fromarray(np.full((36, 40), 50000, dtype=np.uint16)).save(path)


def cmyk_jpeg(path: Path) -> None:
    Image.new("CMYK", (40, 36), (0, 200, 200, 30)).save(path, "JPEG")


def exif_rotated(path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed turned 90 degrees clockwise
    Image.new("RGB", (48, 36), COLORS["red"]).save(path, exif=exif)


def one_pixel(path: Path) -> None:
    Image.new("RGB", (1, 1), COLORS["red"]).save(path)


def png_named_jpg(path: Path) -> None:
    make_image(path, COLORS["red"], fmt="PNG", seed=99)


def image_folder(tmp_path: Path, classes=("red", "green", "blue")) -> Path:
    return make_folder(tmp_path / "photos", per_class=4, classes=classes)


@dataclass
class Case:
    build: Callable[[Path], list]  # tmp_path -> argv after the command: [data, *flags]
    check_code: int
    kinds: set[str]  # finding kinds the check must report
    check_text: str  # in the check's output
    train_code: int
    train_text: str  # in the train's output
    strict_code: int | None = None  # train --strict, when it differs from train
    absent: set[str] = field(default_factory=set)  # finding kinds that must not appear


def _in_red(maker: Callable[[Path], None], name: str) -> Callable[[Path], list]:
    def build(tmp_path: Path) -> list:
        root = image_folder(tmp_path)
        maker(root / "red" / name)
        return [root]
    return build


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _text(path: Path) -> None:
    path.write_text("this is a note, not a photo\n")


def _one_class(tmp_path: Path) -> list:
    return [image_folder(tmp_path, classes=("red",))]


def _empty_class(tmp_path: Path) -> list:
    root = image_folder(tmp_path)
    (root / "yellow").mkdir()
    return [root]


def _class_of_broken_files(tmp_path: Path) -> list:
    root = image_folder(tmp_path)
    (root / "yellow").mkdir()
    (root / "yellow" / "a.jpg").write_bytes(b"")
    (root / "yellow" / "b.jpg").write_text("not an image")
    return [root]


def _leaky_val(tmp_path: Path) -> list:
    root = image_folder(tmp_path)
    val = make_folder(tmp_path / "val", per_class=2, seed=7)
    shutil.copy(root / "red" / "red_0.png", val / "red" / "copy_of_train.png")
    return [root, "--val", val]


def _duplicates_within(tmp_path: Path) -> list:
    root = image_folder(tmp_path)
    shutil.copy(root / "green" / "green_1.png", root / "green" / "again.png")
    shutil.copy(root / "blue" / "blue_1.png", root / "red" / "blue_labelled_red.png")
    return [root, "--val-split", "0.25"]


def _paths_csv(extra_lines: str) -> Callable[[Path], list]:
    def build(tmp_path: Path) -> list:
        root = image_folder(tmp_path)
        lines = ["path,label"] + [f"{p.relative_to(root)},{p.parent.name}" for p in sorted(root.rglob("*.png"))]
        (root / "train.csv").write_text("\n".join(lines) + "\n" + extra_lines, encoding="utf-8")
        return [root / "train.csv"]
    return build


IMAGE_CASES = {
    "csv listing a missing file": Case(_paths_csv("red/gone.png,red\n"), 0, {"unreadable"}, "gone.png (file not found)", 0, "",
                                       strict_code=1),
    "csv of paths with bad quoting": Case(_paths_csv('"red/red_0.png,red\n'), 1, {"unusable-data"}, "malformed CSV", 1,
                                          "check the quoting"),
    "truncated jpeg": Case(_in_red(truncated_jpeg, "trunc.jpg"), 0, {"unreadable"}, "trunc.jpg", 0, "", strict_code=1),
    "zero-byte file": Case(_in_red(_empty, "empty.jpg"), 0, {"unreadable"}, "empty file", 0, "", strict_code=1),
    "text file named .jpg": Case(_in_red(_text, "notes.jpg"), 0, {"unreadable"}, "not an image", 0, "", strict_code=1),
    "png decompression bomb": Case(_in_red(png_bomb, "bomb.png"), 0, {"unreadable"}, "decompression bomb", 0, "", strict_code=1),
    "1x1 image": Case(_in_red(one_pixel, "dot.png"), 0, {"tiny-image"}, "1x1", 0, "", absent={"unreadable"}),
    "16-bit png": Case(_in_red(png16, "deep.png"), 0, {"conversions"}, "I;16 1", 0, "", absent={"unreadable"}),
    "cmyk jpeg": Case(_in_red(cmyk_jpeg, "cmyk.jpg"), 0, {"conversions"}, "CMYK 1", 0, "", absent={"unreadable"}),
    "exif-rotated photo": Case(_in_red(exif_rotated, "rotated.jpg"), 0, {"conversions"}, "1 turned upright by their EXIF orientation", 0, "",
                               absent={"unreadable"}),
    "png named .jpg": Case(_in_red(png_named_jpg, "really_a_png.jpg"), 0, {"wrong-extension"}, "really_a_png.jpg (a PNG file)", 0, "",
                           absent={"unreadable", "duplicates"}),
    "one class": Case(_one_class, 1, {"single-class"}, "needs at least two", 1, "found only one class ('red')"),
    "empty class folder": Case(_empty_class, 1, {"empty-class"}, "yellow", 1, "1 class has no readable images"),
    "class of unreadable files": Case(_class_of_broken_files, 1, {"empty-class", "unreadable"}, "yellow", 1, "1 class has no readable images"),
    "validation copies training": Case(_leaky_val, 1, {"leakage"}, "copy_of_train.png", 0, "identical to training images", strict_code=1),
    "duplicates within train": Case(_duplicates_within, 0, {"duplicates", "conflicting-labels"}, "again.png", 0, "different labels"),
}


def _check_and_train(case: Case, argv: list, train_args: list, tmp_path: Path, capsys) -> None:
    code, out, err = run(capsys, "check", *argv, "--json")
    assert code == case.check_code, out + err
    report = json.loads(out)
    assert set(report) >= {"task", "splits", "findings"} and set(report["splits"]["train"]) == {"items", "per_class"}
    kinds = {f["kind"] for f in report["findings"]}
    assert case.kinds <= kinds and not (case.absent & kinds), kinds
    assert all(set(f) == {"severity", "kind", "message", "items"} for f in report["findings"])
    code, out, err = run(capsys, "check", *argv)
    assert code == case.check_code and case.check_text in out, out

    out_dir = tmp_path / "run"
    code, out, err = run(capsys, "train", *argv, *train_args, "--out", out_dir)
    assert code == case.train_code, err
    assert case.train_text in out + err
    if code == 0:
        written = json.loads((out_dir / "check.json").read_text())
        assert {f["kind"] for f in written["findings"]} >= case.kinds
        assert "check: " in err and (f"headstart check {argv[0]}" in err or not written["findings"])
        log = (out_dir / "train.log").read_text()
        assert "check: " in log
    else:
        assert err.startswith("error: ") and err.count("\n") == 1
        assert not out_dir.exists()  # refused before a run directory is made
    if case.strict_code is not None:
        code, out, err = run(capsys, "train", *argv, *train_args, "--strict", "--out", tmp_path / "strict")
        assert code == case.strict_code and "--strict" in err and "nothing was trained" in err, err
        assert not (tmp_path / "strict").exists()


@pytest.mark.parametrize("name", list(IMAGE_CASES))
def test_broken_image_input(name, tmp_path, capsys):
    case = IMAGE_CASES[name]
    _check_and_train(case, case.build(tmp_path), IMAGE_ARGS, tmp_path, capsys)


def test_unreadable_files_are_listed_in_the_log_and_metrics(tmp_path, capsys):
    root = image_folder(tmp_path)
    truncated_jpeg(root / "red" / "trunc.jpg")
    (root / "green" / "empty.jpg").write_bytes(b"")
    fine_tune = [a for a in IMAGE_ARGS if a not in ("--recipe", "linear-probe")] + ["--head-epochs", "1"]
    code, _, err = run(capsys, "train", root, *fine_tune, "--out", tmp_path / "run")
    assert code == 0, err
    skipped = {Path(s["path"]).name for s in json.loads((tmp_path / "run" / "metrics.json").read_text())["skipped"]}
    assert {"empty.jpg", "trunc.jpg"} <= skipped
    log = (tmp_path / "run" / "train.log").read_text()
    assert "trunc.jpg" in log and "empty.jpg" in log


def test_full_decode_agrees_with_fast_on_the_corpus(tmp_path):
    from headstart.data.check import check_path

    root = image_folder(tmp_path)
    for maker, name in [(truncated_jpeg, "t.jpg"), (png16, "d.png"), (cmyk_jpeg, "c.jpg"), (exif_rotated, "r.jpg"), (one_pixel, "o.png")]:
        maker(root / "green" / name)
    data = root.joinpath("blue", "blue_0.png").read_bytes()
    (root / "blue" / "cut.png").write_bytes(data[: len(data) // 2])  # pixels missing: unreadable
    (root / "blue" / "no_end.png").write_bytes(data[: len(data) - 12])  # only IEND missing: decodes
    fast, full = (check_path(root, full_decode=f).to_dict() for f in (False, True))
    def files(report):  # the decoders word their reasons differently; the files must agree
        return [(f["kind"], sorted(i.split(" (")[0] for i in f["items"])) for f in report["findings"]]

    assert files(fast) == files(full) and fast["decode"] == "fast" and full["decode"] == "full"
    unreadable = next(f for f in fast["findings"] if f["kind"] == "unreadable")["items"]
    assert sorted(Path(i.split(" (")[0]).name for i in unreadable) == ["cut.png", "t.jpg"]


# --- text ------------------------------------------------------------------------------------


def _write_rows(path: Path, rows: list[tuple], header=("text", "label")) -> Path:
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    path.write_text(buf.getvalue(), encoding="utf-8")
    return path


def _reviews(n: int = 24, seed: int = 0) -> list[tuple[str, str]]:
    texts, labels = make_texts(n, seed=seed)
    return list(zip(texts, labels))


def _text_case(rows_fn: Callable[[], list], header=("text", "label"), extra: tuple = ()) -> Callable[[Path], list]:
    def build(tmp_path: Path) -> list:
        return [_write_rows(tmp_path / "data.csv", rows_fn(), header), *extra]
    return build


def _raw(content: bytes, extra: tuple = ()) -> Callable[[Path], list]:
    def build(tmp_path: Path) -> list:
        (tmp_path / "data.csv").write_bytes(content)
        return [tmp_path / "data.csv", *extra]
    return build


def _latin1_rows() -> bytes:
    lines = ["text,label"] + [f"{t} caf\xe9,{l}" for t, l in _reviews()]
    return ("\n".join(lines) + "\n").encode("latin-1")


def _text_leak(tmp_path: Path) -> list:
    rows = _reviews()
    val = _write_rows(tmp_path / "val.csv", _reviews(8, seed=3) + [rows[0], (rows[1][0].upper() + "  ", rows[1][1])])
    return [_write_rows(tmp_path / "data.csv", rows), "--val", val]


TEXT_CASES = {
    "missing text column": Case(_text_case(_reviews, header=("body", "stars")), 1, {"unusable-data"}, "no text column found", 1,
                                "no text column found (looked for text, sentence, review, content); columns are: body, stars"),
    "missing label column": Case(_raw(b"text\nhello\nworld\n"), 1, {"unusable-data"}, "no label column found", 1, "Pass --label-column NAME"),
    "bad quoting": Case(_raw(b'text,label\n"an unclosed quote,positive\nfine,negative\n'), 1, {"unusable-data"}, "malformed CSV", 1,
                        "check the quoting"),
    "too many fields": Case(_raw(b"text,label\nhello, world,positive\nfine,negative\n"), 1, {"unusable-data"}, "expected 2 fields", 1,
                            "quote fields that contain commas"),
    "latin-1 bytes": Case(_raw(_latin1_rows()), 1, {"unusable-data"}, "not UTF-8 (bad byte 0xe9", 1, "--encoding latin-1"),
    "latin-1 bytes with --encoding": Case(_raw(_latin1_rows(), ("--encoding", "latin-1")), 0, set(), "0 errors", 0, "",
                                          absent={"encoding", "unusable-data"}),
    "empty texts": Case(_text_case(lambda: _reviews() + [("", "positive"), ("   ", "negative"), ("fine", "")]), 0, {"empty-rows"},
                        "3 rows with an empty text or label", 0, ""),
    "a single label": Case(_text_case(lambda: [(t, "positive") for t, _ in _reviews()]), 1, {"single-class"}, "needs at least two", 1,
                           "found only one class ('positive')"),
    "mojibake": Case(_text_case(lambda: _reviews() + [("the cafÃ© was great", "positive"), ("itâ€™s awful", "negative")]), 0, {"encoding"},
                     "UTF-8 read as Latin-1", 0, ""),
    "replacement characters": Case(_text_case(lambda: _reviews() + [("caf\ufffd boring", "negative")]), 0, {"encoding"}, "U+FFFD", 0, ""),
    "labels differing by case": Case(_text_case(lambda: _reviews() + [("great fun", "Positive"), ("a great movie", "Positive")]), 0,
                                     {"label-variants"}, "'Positive' = 'positive'", 0, ""),
    "leakage and near-duplicates": Case(_text_leak, 1, {"leakage", "near-leakage"}, "identical to training texts", 0, "", strict_code=1),
}


@pytest.mark.parametrize("name", list(TEXT_CASES))
def test_broken_text_input(name, tmp_path, capsys, tiny_bert):
    case = TEXT_CASES[name]
    train_args = ["--backbone", tiny_bert, "--epochs", "1", "--batch-size", "8", "--precision", "fp32"]
    _check_and_train(case, case.build(tmp_path), train_args, tmp_path, capsys)


def test_text_lengths_and_duplicates_in_the_report(tmp_path, capsys):
    rows = _reviews(20) + [("the movie was great", "positive"), ("The  movie was GREAT", "positive"), ("the movie was great", "positive")]
    data = _write_rows(tmp_path / "d.csv", rows)
    code, out, _ = run(capsys, "check", data, "--val-split", "0", "--json")
    report = json.loads(out)
    assert code == 0 and report["task"] == "text" and list(report["splits"]) == ["train"]
    assert report["splits"]["train"] == {"items": 23, "per_class": {"negative": 10, "positive": 13}}
    lengths = report["lengths"]["train"]
    words = [len(t.split()) for t, _ in rows]
    assert lengths["words"]["min"] == min(words) and lengths["words"]["max"] == max(words)
    assert lengths["words"]["median"] == float(np.median(words))
    assert lengths["chars"]["p95"] == float(np.percentile([len(t) for t, _ in rows], 95))
    kinds = {f["kind"]: f for f in report["findings"]}
    assert kinds["duplicates"]["items"] == ["the movie was great = the movie was great"]
    assert kinds["near-duplicates"]["severity"] == "info"
    code, out, _ = run(capsys, "check", data, "--val-split", "0")
    assert "train lengths: chars min" in out and "words min" in out


# --- HTML in names and labels is data ---------------------------------------------------------


def test_html_in_labels_and_file_names_is_kept_verbatim(tmp_path, capsys, tiny_bert):
    label = "<b onmouseover=alert(1)>x"
    root = image_folder(tmp_path)
    (root / "red").rename(root / label)
    evil = make_image(root / label / "<img src=x onerror=alert(1)>.png", COLORS["red"])
    evil.with_name("<script>.png").write_bytes(b"")
    code, out, _ = run(capsys, "check", root, "--json")
    report = json.loads(out)
    assert code == 0 and label in report["splits"]["train"]["per_class"]
    assert any(str(evil.with_name("<script>.png")) + " (empty file)" == i for f in report["findings"] for i in f["items"])
    code, _, err = run(capsys, "train", root, *IMAGE_ARGS, "--out", tmp_path / "run")
    assert code == 0, err
    assert label in json.loads((tmp_path / "run" / "check.json").read_text())["splits"]["train"]["per_class"]
    assert label in json.loads((tmp_path / "run" / "model" / "config.json").read_text())["labels"]

    script = "<script>alert('x')</script>"
    rows = [(t, script if l == "positive" else l) for t, l in _reviews()] + [(script + " & <b>", "negative")] * 2
    data = _write_rows(tmp_path / "t.csv", rows)
    code, out, _ = run(capsys, "check", data, "--val-split", "0", "--json")
    report = json.loads(out)
    assert script in report["splits"]["train"]["per_class"]
    dup = next(f for f in report["findings"] if f["kind"] == "duplicates")
    assert dup["items"] == [f"{script} & <b> = {script} & <b>"]


@pytest.mark.slow
def test_check_on_flowers5_is_fast_and_finds_its_duplicates(capsys):
    import time

    from conftest import requires_shared

    root = requires_shared("flowers5")
    start = time.perf_counter()
    code, out, _ = run(capsys, "check", root, "--json")
    seconds = time.perf_counter() - start
    report = json.loads(out)
    assert sum(s["items"] for s in report["splits"].values()) == 4064
    kinds = {f["kind"] for f in report["findings"]}
    # the redistributed set holds the same photo under rose and tulip, and a few copies
    assert {"duplicates", "conflicting-labels", "ignored-files"} <= kinds and "unreadable" not in kinds
    assert code == (1 if "leakage" in kinds else 0)
    assert seconds < 120, seconds  # a few seconds on a 2-core CPU


def test_a_class_of_only_unreadable_images_is_an_empty_class(tmp_path, capsys):
    """Counts, classes and duplicates are about usable images: unreadable copies of one
    another are not 'leakage', and a class with none readable is empty."""
    data = make_folder(tmp_path / "photos", per_class=4)
    for p in (data / "blue").iterdir():
        p.write_bytes(p.read_bytes()[:80])  # all truncated the same way: identical bytes
    code, out, _ = run(capsys, "check", data, "--json")
    report = json.loads(out)
    assert code == 1
    assert report["splits"]["train"]["per_class"]["blue"] == 0
    kinds = {f["kind"] for f in report["findings"]}
    assert "empty-class" in kinds and "leakage" not in kinds and "duplicates" not in kinds
    code, _, err = run(capsys, "train", data, *IMAGE_ARGS, "--out", tmp_path / "run")
    assert code == 1 and "blue" in err and not (tmp_path / "run").exists()
