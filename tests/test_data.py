from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from PIL import Image

from headstart.data.imagesets import ImageDataset, collate, load_image, read_csv, scan_folder, stratified_split
from headstart.errors import DataError

from conftest import COLORS, make_folder, make_image


def test_scan_folder_classes_labels_and_skips(tmp_path):
    root = make_folder(tmp_path / "d", per_class=3)
    (root / "red" / ".DS_Store").write_bytes(b"\x00\x01")
    (root / ".DS_Store").write_bytes(b"\x00")
    (root / "red" / "notes.txt").write_text("hello")
    (root / "green" / "empty.jpg").write_bytes(b"")
    (root / "green" / "fake.jpg").write_text("this is not a jpeg")
    make_image(root / "blue" / "nested" / "deep.jpg", COLORS["blue"])
    s = scan_folder(root)
    assert s.classes == ["blue", "green", "red"]
    assert len(s) == 10  # 3 x 3 + the nested one
    assert s.class_counts() == {"blue": 4, "green": 3, "red": 3}
    reasons = {Path(p).name: r for p, r in s.skipped}
    assert reasons["empty.jpg"] == "empty file"
    assert reasons["fake.jpg"] == "not an image"
    assert reasons[".DS_Store"] == "hidden file"
    assert reasons["notes.txt"] == "not an image file extension"


def test_scan_errors_name_the_problem(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        scan_folder(tmp_path / "missing")
    (tmp_path / "flat").mkdir()
    make_image(tmp_path / "flat" / "a.png", COLORS["red"])
    with pytest.raises(DataError, match="one sub-folder per class"):
        scan_folder(tmp_path / "flat")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match="no readable images"):
        scan_folder(tmp_path / "empty")


def test_scan_with_known_classes_rejects_unknown_folder(tmp_path):
    root = make_folder(tmp_path / "d", per_class=1)
    with pytest.raises(DataError, match="does not know: red"):
        scan_folder(root, classes=["blue", "green"])
    # a subset of the known classes keeps the model's label indices
    s = scan_folder(root, classes=["red", "green", "blue", "yellow"])
    assert s.classes == ["red", "green", "blue", "yellow"]
    assert sorted(s.labels.tolist()) == [0, 1, 2]


def test_read_csv_paths_relative_to_csv(tmp_path):
    make_image(tmp_path / "img" / "a.png", COLORS["red"])
    make_image(tmp_path / "img" / "b.png", COLORS["blue"])
    (tmp_path / "data.csv").write_text('path,label\nimg/a.png,"red, dark"\nimg/b.png,blue\nimg/missing.png,blue\n\n')
    s = read_csv(tmp_path / "data.csv")
    assert s.classes == ["blue", "red, dark"]
    assert [p.name for p in s.paths] == ["a.png", "b.png"]
    assert s.skipped == [(str(tmp_path / "img" / "missing.png"), "file not found")]
    assert scan_folder(tmp_path / "data.csv").classes == s.classes


def test_read_csv_missing_columns(tmp_path):
    (tmp_path / "bad.csv").write_text("file_name,y\na.png,1\n")
    with pytest.raises(DataError, match="needs a 'path' and a 'label' column; columns are: file_name, y"):
        read_csv(tmp_path / "bad.csv")
    (tmp_path / "latin.csv").write_bytes("path,label\ncaf\xe9.png,x\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        read_csv(tmp_path / "latin.csv")


def test_split_is_stratified_and_seeded():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 20)
    tr, va = stratified_split(labels, 0.2, 0, ["a", "b", "c"])
    assert len(va) == 20 and len(set(tr) & set(va)) == 0 and len(tr) + len(va) == 100
    assert np.bincount(labels[va]).tolist() == [10, 6, 4]
    tr2, va2 = stratified_split(labels, 0.2, 0, ["a", "b", "c"])
    assert va.tolist() == va2.tolist()
    _, va3 = stratified_split(labels, 0.2, 1, ["a", "b", "c"])
    assert va.tolist() != va3.tolist()


def test_split_errors():
    with pytest.raises(DataError, match="only one class"):
        stratified_split(np.zeros(10, dtype=int), 0.2, 0, ["a"])
    with pytest.raises(DataError, match="'b'.*single example"):
        stratified_split(np.array([0, 0, 0, 1]), 0.5, 0, ["a", "b"])


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(min_value=2, max_value=30), min_size=2, max_size=6),
    frac=st.floats(min_value=0.1, max_value=0.5),
    seed=st.integers(min_value=0, max_value=2**31 - 1),
)
def test_split_properties(counts, frac, seed):
    labels = np.repeat(np.arange(len(counts)), counts)
    names = [f"c{i}" for i in range(len(counts))]
    try:
        tr, va = stratified_split(labels, frac, seed, names)
    except DataError as exc:
        assert "too few" in str(exc)
        return
    # disjoint and complete: every example on exactly one side
    assert not set(tr.tolist()) & set(va.tolist())
    assert sorted(np.concatenate([tr, va]).tolist()) == list(range(len(labels)))
    # the validation size asked for, and each class in proportion (to within one example)
    assert len(va) == int(np.ceil(frac * len(labels)))
    expected = np.asarray(counts) * len(va) / len(labels)
    assert np.all(np.abs(np.bincount(labels[va], minlength=len(counts)) - expected) <= 1)
    # every class keeps at least one training example, and the split is reproducible
    assert set(labels[tr].tolist()) == set(range(len(counts)))
    tr2, va2 = stratified_split(labels, frac, seed, names)
    assert va2.tolist() == va.tolist() and tr2.tolist() == tr.tolist()


def _roundtrip(img: Image.Image, fmt: str, **kw) -> io.BytesIO:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    buf.seek(0)
    return buf


@pytest.mark.parametrize(
    "mode,fmt",
    [("L", "PNG"), ("P", "GIF"), ("RGBA", "PNG"), ("LA", "PNG"), ("CMYK", "JPEG"), ("RGB", "WEBP"),
     ("RGB", "BMP"), ("RGB", "TIFF"), ("I;16", "PNG"), ("1", "PNG")],
)
def test_load_image_converts_every_mode_to_rgb(tmp_path, mode, fmt):
    base = Image.new("RGB", (20, 10), (200, 100, 50))
    img = base.convert(mode) if mode != "I;16" else Image.fromarray(np.full((10, 20), 50000, dtype=np.uint16))
    path = tmp_path / f"x.{fmt.lower()}"
    path.write_bytes(_roundtrip(img, fmt).getvalue())
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (20, 10)
    if mode == "I;16":  # 16-bit scaled by range, not clipped to white
        assert 180 < np.asarray(out)[0, 0, 0] < 210


def test_load_image_transparency_on_white(tmp_path):
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(tmp_path / "t.png")
    assert np.asarray(load_image(tmp_path / "t.png")).min() == 255


def test_load_image_respects_exif_orientation(tmp_path):
    img = Image.new("RGB", (30, 10), (10, 20, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    img.save(tmp_path / "r.jpg", exif=exif)
    assert load_image(tmp_path / "r.jpg").size == (10, 30)


def test_truncated_jpeg_fails_at_decode_and_is_reported(tmp_path):
    good = make_image(tmp_path / "good.jpg", COLORS["red"])
    data = good.read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 2])
    ds = ImageDataset([good, tmp_path / "trunc.jpg"], np.array([0, 1]), lambda im: __import__("torch").zeros(3, 2, 2))
    x, y, idx, failed = collate([ds[0], ds[1]])
    assert x.shape[0] == 1 and idx.tolist() == [0]
    assert failed and failed[0][0] == 1


def test_decompression_bomb_is_skipped(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "d", per_class=2)
    Image.new("RGB", (300, 300)).save(root / "red" / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200 * 200)
    s = scan_folder(root)
    assert ("bomb.png", "too many pixels (decompression bomb guard)") in [(Path(p).name, r) for p, r in s.skipped]


def _photo(path: Path, size=(1024, 768)) -> Path:
    """A JPEG with smooth shapes and fine texture, like a downscaled photo."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    rng = np.random.default_rng(0)
    img = np.stack([128 + 100 * np.sin(6 * xx + c) * np.cos(4 * yy) for c in (0, 1, 2)], -1)
    img += rng.normal(0, 12, (h, w, 1))
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=90)
    return path


def test_draft_decoding_keeps_the_short_side_and_the_tensor_close(tmp_path):
    from headstart.backbones.image import Preprocessing
    from headstart.backbones.transforms import eval_resize, eval_transform

    pre = Preprocessing(input_size=224, crop_pct=0.875, mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bicubic")
    path = _photo(tmp_path / "big.jpg")
    full, small = load_image(path), load_image(path, draft=eval_resize(pre))
    assert full.size == (1024, 768) and small.size == (512, 384)  # DCT-domain 1/2 scale, short side >= 256
    tf = eval_transform(pre)
    a, b = tf(full), tf(small)
    assert a.shape == b.shape == (3, 224, 224)
    # normalised to [-1, 1]: a mean difference of 0.02 is about 2.5 grey levels of 255
    assert float((a - b).abs().mean()) < 0.02
    # never below the resize target, and other formats are decoded in full
    assert load_image(_photo(tmp_path / "mid.jpg", (400, 300)), draft=256).size == (400, 300)
    Image.open(path).save(tmp_path / "big.png")
    assert load_image(tmp_path / "big.png", draft=256).size == (1024, 768)
    ds = ImageDataset([path], None, tf, draft=eval_resize(pre))
    assert torch.equal(ds[0][0], b)
