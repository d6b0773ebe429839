"""Export to ONNX / TorchScript, the parity check, and the torch-free ONNX predictor."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from headstart import ImageClassifier, TextClassifier
from headstart.cli import main
from headstart.errors import HeadstartError, ModelDirError
from headstart.deploy.export import export_model
from headstart.deploy.runtime import EXPORT_CONFIG, OnnxClassifier, decode_image, preprocess_image, to_rgb

from conftest import TINY, make_folder, make_image, make_texts

pytest.importorskip("onnxruntime")

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(scope="module")
def image_model(tmp_path_factory) -> Path:
    """The tiny CNN trained one epoch by the library, saved."""
    root = tmp_path_factory.mktemp("image-export")
    folder = make_folder(root / "photos", per_class=6)
    # recipe full: every layer trains. A head solved on a random-weight toy backbone's features
    # (nearly constant, their signal in the fourth decimal) needs weights so large that the
    # exports' float rounding shows in the probabilities; real backbones' features do not.
    clf = ImageClassifier(backbone=TINY, weights="none", recipe="full", epochs=1, head_epochs=1, batch_size=8,
                          precision="fp32", num_workers=0, seed=0, cache=False).fit(folder)
    return clf.save(root / "model")


@pytest.fixture(scope="module")
def text_model(tmp_path_factory, tiny_bert) -> Path:
    root = tmp_path_factory.mktemp("text-export")
    texts, labels = make_texts(40)
    clf = TextClassifier(backbone=str(tiny_bert), recipe="full", epochs=1, batch_size=8, lr=1e-2, precision="fp32", seed=0,
                         cache=False).fit(texts, labels)
    return clf.save(root / "model")


@pytest.fixture(scope="module")
def image_onnx(image_model, tmp_path_factory) -> Path:
    return export_model(image_model, "onnx", tmp_path_factory.mktemp("exports") / "image-onnx", samples=10).path


@pytest.fixture(scope="module")
def text_onnx(text_model, tmp_path_factory) -> Path:
    return export_model(text_model, "onnx", tmp_path_factory.mktemp("exports") / "text-onnx", samples=12).path


def photos(root: Path) -> list[Path]:
    """Real-looking files: JPEGs of odd sizes, a grey PNG, a transparent PNG."""
    out = [make_image(root / f"p{i}.jpg", (40 * i, 200 - 30 * i, 90), size=(33 + 57 * i, 71 + 13 * i), seed=i) for i in range(4)]
    Image.open(out[0]).convert("L").save(root / "grey.png")
    rgba = Image.open(out[1]).convert("RGBA")
    rgba.putalpha(128)
    rgba.save(root / "alpha.png")
    return out + [root / "grey.png", root / "alpha.png"]


# --------------------------------------------------------------------------- image


def test_image_onnx_export_files_parity_and_predictions(image_model, image_onnx, tmp_path):
    files = sorted(p.name for p in image_onnx.iterdir())
    assert files == ["headstart-export.json", "model.onnx", "parity.json"]
    config = json.loads((image_onnx / EXPORT_CONFIG).read_text())
    # a model with one label per image can answer unknown: its score is the graph's second output
    assert config["task"] == "image" and config["inputs"] == ["pixel_values"]
    assert config["outputs"] == ["probabilities", "unknown_score"]
    assert config["format_version"] == 2 and config["decision"]["kind"] == "abstain"
    assert config["labels"] == ["blue", "green", "red"]
    assert config["preprocessing"]["input_size"] == 32 and config["preprocessing"]["resize_short_side"] == 32
    parity = json.loads((image_onnx / "parity.json").read_text())
    assert parity["passed"] and parity["n"] == 10 and parity["top1_agreement"] == 1.0
    assert parity["max_abs_diff"] <= 1e-4 and "generated images" in parity["source"]
    assert parity["unknown"]["passed"] and parity["unknown"]["agreement"] == 1.0

    clf = ImageClassifier.load(image_model, precision="fp32")
    onnx = OnnxClassifier.load(image_onnx / "model.onnx")  # the file works as well as its directory
    paths = photos(tmp_path)
    np.testing.assert_allclose(onnx.predict_proba(paths), clf.predict_proba(paths), atol=1e-5)
    assert onnx.predict(paths) == clf.predict(paths)
    (_, ours), (_, theirs) = clf.predict_scored(paths), onnx.predict_scored(paths)
    np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-5)
    assert onnx.decision_.to_config() == clf.decision_.to_config()  # the threshold travels with the export
    assert onnx.predict_proba(paths[0]).shape == (3,)
    assert onnx.predict_proba(paths[0].read_bytes()).shape == (3,)  # bytes, as the server passes them


def test_image_torchscript_export(image_model, tmp_path):
    result = export_model(image_model, "torchscript", tmp_path / "ts", samples=6)
    assert result.model_file.name == "model.pt" and result.parity.passed
    module = torch.jit.load(str(result.model_file))
    clf = ImageClassifier.load(image_model, precision="fp32")
    x = torch.randn(5, 3, 32, 32)  # any batch size
    with torch.inference_mode():
        expected = torch.softmax(clf.model_(x), 1)
        probs, scores = module(x)  # with the unknown score
        np.testing.assert_allclose(probs.numpy(), expected.numpy(), atol=1e-6)
        assert scores.shape == (5,)
    with pytest.raises(ModelDirError, match="light predictor runs ONNX"):
        OnnxClassifier.load(result.path)


def test_parity_with_validation_folder_through_the_cli(image_model, tmp_path, capsys):
    val = make_folder(tmp_path / "val", per_class=3, seed=7)
    with pytest.raises(SystemExit) as exit_:
        main(["export", str(image_model), "--out", str(tmp_path / "e"), "--val", str(val), "--samples", "5", "--quiet"])
    assert exit_.value.code == 0
    assert "top-1 agreement 100.00% on 5 inputs" in capsys.readouterr().out
    parity = json.loads((tmp_path / "e" / "parity.json").read_text())
    assert parity["source"] == f"5 inputs from {val}"


def test_parity_with_a_validation_csv_and_with_nothing_decodable(image_model, tmp_path, capsys):
    """--val takes the path,label table `evaluate` takes; a --val with no decodable image
    is a clear error, not a comparison of two empty arrays."""
    val = make_folder(tmp_path / "val", per_class=2, seed=8)
    rows = ["path,label"] + [f"{p.relative_to(tmp_path).as_posix()},{p.parent.name}" for p in sorted(val.rglob("*.png"))]
    (tmp_path / "val.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(SystemExit) as exit_:
        main(["export", str(image_model), "--out", str(tmp_path / "e"), "--val", str(tmp_path / "val.csv"), "--quiet"])
    assert exit_.value.code == 0
    assert f"top-1 agreement 100.00% on {len(rows) - 1} inputs" in capsys.readouterr().out
    junk = tmp_path / "junk"
    junk.mkdir()
    for name in ("a.jpg", "b.png"):
        (junk / name).write_bytes(b"not an image at all")
    with pytest.raises(SystemExit) as exit_:
        main(["export", str(image_model), "--out", str(tmp_path / "j"), "--val", str(junk), "--quiet"])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert f"no decodable images in --val {str(junk)!r}" in err and "shape" not in err
    assert not (tmp_path / "j").exists()


def test_temperature_is_baked_into_the_export(image_model, tmp_path):
    model = shutil.copytree(image_model, tmp_path / "model")
    config = json.loads((model / "config.json").read_text())
    config["temperature"] = 2.5
    (model / "config.json").write_text(json.dumps(config))
    out = export_model(model, "onnx", tmp_path / "onnx", samples=4).path
    assert json.loads((out / EXPORT_CONFIG).read_text())["temperature"] == 2.5
    clf = ImageClassifier.load(model, precision="fp32")
    paths = photos(tmp_path)
    logits, rows, _ = clf._logits(paths)
    expected = torch.softmax(logits.double() / 2.5, 1).numpy()
    got = OnnxClassifier.load(out).predict_proba(paths)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert got.max() < torch.softmax(logits.double(), 1).numpy().max()  # flatter than at temperature 1

    config["temperature"] = -1
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelDirError, match="positive"):
        export_model(model, "onnx", tmp_path / "onnx2")


def test_a_drifting_export_is_refused_and_kept_aside(image_model, image_onnx, tmp_path, monkeypatch):
    import headstart.deploy.export as export

    good = shutil.copytree(image_onnx, tmp_path / "good")
    before = (good / "model.onnx").read_bytes()
    real = export.reference_probs

    def drifted(clf, inputs, temperature):
        inputs, probs, scores = real(clf, inputs, temperature)
        probs = probs.copy()
        probs[0] = probs[0][::-1]  # one input's classes swapped: the export now "disagrees"
        probs[:, 0] += 1e-3
        return inputs, probs, scores

    monkeypatch.setattr(export, "reference_probs", drifted)
    with pytest.raises(HeadstartError, match="does not match the PyTorch model.*kept at"):
        export_model(image_model, "onnx", good, samples=4)
    assert (good / "model.onnx").read_bytes() == before  # the previous export is untouched
    failed = tmp_path / "good.parity-failed"
    report = json.loads((failed / "parity.json").read_text())
    assert not report["passed"] and report["max_abs_diff"] > 1e-4 and report["disagreements"]
    with pytest.raises(ModelDirError, match="failed its parity check"):
        OnnxClassifier.load(failed)


def test_export_refuses_to_overwrite_other_things(image_model, tmp_path):
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(HeadstartError, match="not a headstart export"):
        export_model(image_model, "onnx", other)
    assert (other / "keep.txt").read_text() == "mine"
    with pytest.raises(ModelDirError, match="does not exist"):
        export_model(tmp_path / "missing", "onnx")
    with pytest.raises(HeadstartError, match="unknown export format"):
        export_model(image_model, "tflite")
    with pytest.raises(ModelDirError, match="not a headstart export"):
        OnnxClassifier.load(image_model)


# --------------------------------------------------------------------------- preprocessing parity


@pytest.mark.parametrize("pre", [
    dict(input_size=224, crop_pct=0.875, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bicubic"),
    dict(input_size=40, crop_pct=0.9, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), interpolation="bilinear"),
    dict(input_size=48, crop_pct=1.15, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="nearest"),
])
def test_numpy_preprocessing_equals_torchvision(pre, tmp_path):
    from headstart.backbones.image import Preprocessing
    from headstart.data.imagesets import load_image
    from headstart.backbones.transforms import eval_transform

    transform = eval_transform(Preprocessing(**pre))
    for path in photos(tmp_path):
        expected = transform(load_image(path)).numpy()
        got = preprocess_image(decode_image(path), pre)
        assert got.shape == expected.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=path.name)


def test_decoding_equals_load_image(tmp_path):
    from headstart.data.imagesets import load_image

    base = np.random.default_rng(0).integers(0, 255, (30, 50, 3), dtype=np.uint8)
    cases = {
        "rgba.png": Image.fromarray(base).convert("RGBA"),
        "palette.gif": Image.fromarray(base).convert("P"),
        "grey.png": Image.fromarray(base).convert("L"),
        "deep.png": Image.fromarray((base[..., 0].astype(np.uint16) * 250)),
        "cmyk.jpg": Image.fromarray(base).convert("CMYK"),
    }
    rgba = cases["rgba.png"]
    rgba.putalpha(Image.fromarray(base[..., 1]))
    rotated = Image.fromarray(base)
    exif = rotated.getexif()
    exif[0x0112] = 6  # orientation: rotate 90
    rotated.save(tmp_path / "exif.jpg", exif=exif)
    for name, im in cases.items():
        im.save(tmp_path / name)
    for name in [*cases, "exif.jpg"]:
        path = tmp_path / name
        np.testing.assert_array_equal(np.asarray(decode_image(path)), np.asarray(load_image(path)), err_msg=name)
        np.testing.assert_array_equal(np.asarray(decode_image(path.read_bytes())), np.asarray(load_image(path)))
    assert decode_image(tmp_path / "exif.jpg").size == (30, 50)
    assert to_rgb(Image.open(tmp_path / "rgba.png")).mode == "RGB"


@pytest.mark.parametrize("pre", [
    dict(input_size=32, crop_pct=0.875, interpolation="bicubic"),
    dict(input_size=224, crop_pct=0.9, interpolation="bilinear"),
    dict(input_size=33, crop_pct=0.8, interpolation="nearest"),
    dict(input_size=32, crop_pct=1.0, interpolation="bicubic"),
    dict(input_size=48, crop_pct=1.15, interpolation="bicubic"),  # pads before cropping
])
def test_model_input_image_gives_the_same_input_from_less(pre):
    """What a server keeps of an image gives the very same model input as the whole image,
    through the ONNX preprocessing and through torchvision's."""
    from headstart.backbones.image import Preprocessing
    from headstart.deploy.runtime import model_input_image
    from headstart.backbones.transforms import eval_transform

    pre = {**pre, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}
    transform = eval_transform(Preprocessing(**pre))
    rng = np.random.default_rng(0)
    for w, h in [(40, 30), (30, 40), (1000, 37), (37, 1001), (5, 900), (901, 4), (33, 33), (300, 301), (64, 1), (2, 3)]:
        im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        small = model_input_image(im, pre)
        short = int(pre["input_size"] / pre["crop_pct"])
        assert max(small.size) <= max(2 * short, pre["input_size"] + 2), (w, h, small.size)
        np.testing.assert_array_equal(preprocess_image(small, pre), preprocess_image(im, pre), err_msg=f"{w}x{h}")
        np.testing.assert_array_equal(transform(small).numpy(), transform(im).numpy(), err_msg=f"{w}x{h}")


def test_pixel_limit_is_checked_from_the_header_without_touching_warning_filters(tmp_path):
    """The limit is an explicit width x height check, safe from many threads at once (no
    process-global warnings switch)."""
    import warnings
    from concurrent.futures import ThreadPoolExecutor

    from headstart.errors import DataError
    from headstart.deploy.runtime import ImageTooLarge, model_input_image

    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "big.png")
    Image.new("RGB", (20, 20), (10, 200, 10)).save(tmp_path / "small.png")
    filters = list(warnings.filters)

    def one(i: int):
        path = tmp_path / ("big.png" if i % 2 else "small.png")
        try:
            return decode_image(path, max_pixels=1000).size
        except ImageTooLarge as exc:
            return str(exc)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(64)))
    assert warnings.filters == filters
    assert results[0::2] == [(20, 20)] * 32
    assert all("40x30 is 1,200 pixels; the limit is 1,000" in r for r in results[1::2])
    assert issubclass(ImageTooLarge, DataError)
    strip = Image.new("RGB", (1, 5000))
    with pytest.raises(ImageTooLarge, match="aspect ratio of 1x5000 is too extreme"):
        model_input_image(strip, {"input_size": 224, "crop_pct": 0.875}, max_pixels=1_000_000)


# --------------------------------------------------------------------------- text


def test_text_onnx_export_dynamic_axes_and_predictions(text_model, text_onnx):
    import onnx
    import onnxruntime as ort

    assert {"tokenizer.json", "model.onnx", "headstart-export.json", "parity.json"} <= {p.name for p in text_onnx.iterdir()}
    graph = onnx.load(str(text_onnx / "model.onnx")).graph
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
    assert dims == {"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "sequence"]}
    config = json.loads((text_onnx / EXPORT_CONFIG).read_text())
    assert config["text"]["max_length"] == 64 and config["text"]["kind"] == "transformer"
    assert json.loads((text_onnx / "parity.json").read_text())["passed"]

    clf = TextClassifier.load(text_model, precision="fp32")
    texts = ["good great fun", "awful movie", "the plot was really boring and the actors bad", "Zyxwvut!", "love " * 80]
    onnx_clf = OnnxClassifier.load(text_onnx)
    np.testing.assert_allclose(onnx_clf.predict_proba(texts), clf.predict_proba(texts), atol=1e-5)
    assert onnx_clf.predict("good great fun") == clf.predict("good great fun")
    session = ort.InferenceSession(str(text_onnx / "model.onnx"), providers=["CPUExecutionProvider"])
    for batch, length in [(1, 2), (3, 17), (2, 64)]:
        ids = np.full((batch, length), 7, dtype=np.int64)
        out = session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0]
        assert out.shape == (batch, 2)
        np.testing.assert_allclose(out.sum(1), 1.0, atol=1e-5)
    with pytest.raises(Exception, match="empty"):
        onnx_clf.predict_proba(["fine", "  "])


def test_text_onnx_export_truncates_from_the_tokenizers_side(text_model, tmp_path):
    """A tokenizer that truncates on the left keeps the end of a long text, in the ONNX
    predictor as in PyTorch (also for an export whose description lacks the key)."""
    model = tmp_path / "left"
    shutil.copytree(text_model, model)
    tok_config = json.loads((model / "tokenizer_config.json").read_text())
    (model / "tokenizer_config.json").write_text(json.dumps({**tok_config, "truncation_side": "left"}))
    clf = TextClassifier.load(model, precision="fp32")
    assert clf.tokenizer_.truncation_side == "left"
    result = export_model(model, "onnx", tmp_path / "left-onnx", samples=12)  # a third of them past the limit
    assert result.parity.passed
    config = json.loads((result.path / EXPORT_CONFIG).read_text())
    assert config["text"]["truncation_side"] == "left"
    # Same start, different ends, both past the 64-token limit: only the ends are kept.
    texts = ["awful boring " * 40 + "good great fun " * 30, "awful boring " * 40 + "terrible bad dull " * 30]
    onnx_clf = OnnxClassifier.load(result.path)
    ids = onnx_clf.tokenize(texts)
    assert ids[0][:-1][-3:] != ids[1][:-1][-3:] and len(ids[0]) == 64
    np.testing.assert_allclose(onnx_clf.predict_proba(texts), clf.predict_proba(texts), atol=1e-5)
    del config["text"]["truncation_side"]  # an older export: read from tokenizer_config.json
    (result.path / EXPORT_CONFIG).write_text(json.dumps(config))
    assert OnnxClassifier.load(result.path).tokenize(texts) == ids


def test_text_torchscript_export(text_model, tmp_path):
    result = export_model(text_model, "torchscript", tmp_path / "ts", samples=8)
    assert result.parity.passed and (result.path / "tokenizer.json").is_file()
    module = torch.jit.load(str(result.model_file))
    clf = TextClassifier.load(text_model, precision="fp32")
    ids = torch.tensor([[2, 7, 8, 9, 3, 0, 0], [2, 10, 11, 12, 13, 14, 3]])
    mask = (ids != 0).long()
    with torch.inference_mode():
        expected = torch.softmax(clf.model_({"input_ids": ids, "attention_mask": mask}), 1)
        probs, scores = module(ids, mask)  # with the unknown score
        np.testing.assert_allclose(probs.numpy(), expected.numpy(), atol=1e-6)
        assert scores.shape == (2,)


@pytest.mark.parametrize("encoder, pooling", [("bilstm", "mean+max"), ("cnn", "max")])
def test_word_vector_models_export(encoder, pooling, tmp_path):
    from test_wordvec import write_vectors

    vectors = write_vectors(tmp_path / "vectors.txt", "glove")
    texts, labels = make_texts(32)
    clf = TextClassifier(word_vectors=str(vectors), sequence_encoder=encoder, pooling=pooling, hidden_size=8, epochs=2,
                         batch_size=8, lr=1e-2, seed=0).fit(texts, labels)
    model = clf.save(tmp_path / "model")
    result = export_model(model, "onnx", tmp_path / "onnx", samples=12)
    assert result.parity.passed and (result.path / "vocab.json").is_file()
    probe = ["good fun, don't miss it!", "awful", "words nobody has vectors for"]
    np.testing.assert_allclose(OnnxClassifier.load(result.path).predict_proba(probe), clf.predict_proba(probe), atol=1e-5)


# --------------------------------------------------------------------------- without torch


BLOCK_TORCH = textwrap.dedent("""
    import importlib.abc, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "torchvision", "transformers", "timm"):
                raise ImportError(f"{name} is blocked: the light predictor must not import it")
    sys.meta_path.insert(0, Block())
""")


def test_runtime_and_cli_predict_run_without_torch(image_onnx, text_onnx, tmp_path):
    images = photos(tmp_path)
    script = BLOCK_TORCH + textwrap.dedent(f"""
        import json, sys
        from headstart.deploy.runtime import OnnxClassifier
        img = OnnxClassifier.load({str(image_onnx)!r})
        txt = OnnxClassifier.load({str(text_onnx)!r})
        out = {{"image": img.predict_proba({[str(p) for p in images]!r}).tolist(),
               "text": txt.predict_proba(["good great fun", "awful movie"]).tolist()}}
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "torchvision", "timm"))
        print(json.dumps({{"probs": out, "heavy": heavy}}))
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env={"PYTHONPATH": SRC, "PATH": ""})
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["heavy"] == []
    expected = OnnxClassifier.load(image_onnx).predict_proba(images)
    np.testing.assert_allclose(result["probs"]["image"], expected, atol=1e-7)

    cli = BLOCK_TORCH + "from headstart.cli import main\nmain()\n"
    run = subprocess.run([sys.executable, "-c", cli, "predict", str(image_onnx / "model.onnx"), str(tmp_path), "--json"],
                         capture_output=True, text=True, env={"PYTHONPATH": SRC, "PATH": ""})
    assert run.returncode == 0, run.stderr
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    assert len(lines) == len(images) and all(line["predictions"][0]["label"] in ("blue", "green", "red") for line in lines)
    run = subprocess.run([sys.executable, "-c", cli, "predict", str(text_onnx), "good great fun", "--top-k", "2"],
                         capture_output=True, text=True, env={"PYTHONPATH": SRC, "PATH": ""})
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("good great fun\t") and run.stdout.count("positive") == 1


def test_large_jpegs_and_pil_images_predict_the_same_on_every_path(image_model, image_onnx, tmp_path):
    """Large JPEGs decode at reduced scale (draft mode) for training, `predict`, the ONNX
    runtime and the server alike; a PIL image (RGBA here) is converted by the same rules."""
    from io import BytesIO

    from headstart.deploy.serve import prepare_image

    rng = np.random.default_rng(0)
    big = tmp_path / "big.jpg"
    Image.fromarray(rng.integers(0, 255, (900, 1400, 3), dtype=np.uint8)).resize((2800, 1800)).save(big, quality=90)
    from headstart import load

    torch_model, onnx_model = load(image_model), OnnxClassifier.load(image_onnx)
    a, b = torch_model.predict_proba(big), onnx_model.predict_proba(big)
    assert np.abs(a - b).max() < 1e-4
    served = prepare_image(big.read_bytes(), torch_model.preprocessing_.to_dict(), 50_000_000)
    assert np.abs(torch_model.predict_proba(served) - a).max() < 1e-4
    rgba = Image.fromarray(rng.integers(0, 255, (60, 50, 4), dtype=np.uint8), "RGBA")
    buf = BytesIO()
    rgba.save(buf, format="PNG")
    (tmp_path / "rgba.png").write_bytes(buf.getvalue())
    assert np.abs(torch_model.predict_proba(rgba) - torch_model.predict_proba(tmp_path / "rgba.png")).max() < 1e-6
    assert np.abs(onnx_model.predict_proba(rgba) - torch_model.predict_proba(rgba)).max() < 1e-4
