"""The HTTP server: endpoints, limits, errors, and batching that changes no answer."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import resource
import threading
import zlib

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("onnxruntime")

from fastapi.testclient import TestClient  # noqa: E402

from headstart import ImageClassifier, TextClassifier  # noqa: E402
from headstart.deploy.export import export_model  # noqa: E402
from headstart.deploy.runtime import OnnxClassifier  # noqa: E402
from headstart.deploy.serve import create_app, load_model  # noqa: E402

from conftest import COLORS, TINY, make_folder, make_texts  # noqa: E402


@pytest.fixture(scope="module")
def image_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-image")
    folder = make_folder(root / "photos", per_class=6)
    clf = ImageClassifier(backbone=TINY, weights="none", epochs=1, head_epochs=2, batch_size=8, precision="fp32",
                          num_workers=0, seed=0, cache=False).fit(folder)
    model = clf.save(root / "model")
    return model, export_model(model, "onnx", root / "onnx", samples=4).path


@pytest.fixture(scope="module")
def onnx_image(image_dirs):
    return OnnxClassifier.load(image_dirs[1])


@pytest.fixture(scope="module")
def text_model(tmp_path_factory, tiny_bert):
    texts, labels = make_texts(40)
    return TextClassifier(backbone=str(tiny_bert), epochs=2, batch_size=8, lr=1e-2, precision="fp32", seed=0,
                          cache=False).fit(texts, labels)


def png(rgb=(220, 30, 30), size=(40, 30), seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(rgb)[None, None] + rng.normal(0, 25, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def expected_top(model, images: list[bytes]):
    probs = model.predict_proba([Image.open(io.BytesIO(b)) for b in images])
    return [model.classes_[int(i)] for i in np.atleast_2d(probs).argmax(1)], np.atleast_2d(probs)


# --------------------------------------------------------------------------- endpoints


def test_page_health_labels_docs(onnx_image):
    with TestClient(create_app(onnx_image)) as client:
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        html = page.text
        assert "<script src" not in html and "https://" not in html and "http://" not in html  # self-contained
        assert "innerHTML" not in html  # labels are set with textContent only
        health = client.get("/health").json()
        assert health["status"] == "ok" and health["task"] == "image" and health["runtime"] == "onnxruntime"
        assert health["labels"] == 3 and health["batching"]["enabled"]
        assert client.get("/labels").json() == {"labels": ["blue", "green", "red"]}
        assert client.get("/docs").status_code == 200
        spec = client.get("/openapi.json").json()
        body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]
        assert {"multipart/form-data", "application/json"} <= set(body)


@pytest.mark.parametrize("which", ["onnx", "pytorch"])
def test_predict_images_one_and_several(which, image_dirs, onnx_image):
    model = onnx_image if which == "onnx" else load_model(image_dirs[0])
    images = [png(COLORS[c], seed=i) for i, c in enumerate(["red", "green", "blue"])]
    labels, probs = expected_top(model, images)
    with TestClient(create_app(model)) as client:
        r = client.post("/predict", files={"files": ("red.png", images[0], "image/png")})
        assert r.status_code == 200, r.text
        result = r.json()["results"][0]
        assert result["input"] == "red.png" and result["predictions"][0]["label"] == labels[0]
        assert len(result["predictions"]) == 3 and result["predictions"][0]["score"] == pytest.approx(probs[0].max(), abs=1e-6)
        files = [("files", (f"{i}.png", b, "image/png")) for i, b in enumerate(images)]
        r = client.post("/predict?top_k=1", files=files)
        assert r.status_code == 200
        results = r.json()["results"]
        assert [x["input"] for x in results] == ["0.png", "1.png", "2.png"]
        assert [x["predictions"][0]["label"] for x in results] == labels
        assert all(len(x["predictions"]) == 1 for x in results)


def test_predict_texts(text_model):
    with TestClient(create_app(text_model)) as client:
        r = client.post("/predict", json={"texts": ["good great fun", "awful boring movie"]})
        assert r.status_code == 200, r.text
        probs = text_model.predict_proba(["good great fun", "awful boring movie"])
        got = [{p["label"]: p["score"] for p in x["predictions"]} for x in r.json()["results"]]
        for row, scores in zip(probs, got):
            assert scores == pytest.approx(dict(zip(text_model.classes_, row)), abs=1e-6)
        one = client.post("/predict", json={"text": "good great fun"}).json()["results"]
        assert one[0]["input"] == "good great fun" and len(one) == 1
        form = client.post("/predict", data={"text": "good great fun"})
        assert form.status_code == 200 and form.json()["results"][0]["predictions"] == one[0]["predictions"]


def test_load_model_accepts_exports_and_model_dirs(image_dirs):
    model_dir, onnx_dir = image_dirs
    assert isinstance(load_model(onnx_dir), OnnxClassifier)
    assert isinstance(load_model(onnx_dir / "model.onnx"), OnnxClassifier)
    assert isinstance(load_model(model_dir), ImageClassifier)


# --------------------------------------------------------------------------- limits and errors


def test_limits_and_errors_keep_the_server_up(onnx_image):
    app = create_app(onnx_image, max_upload_mb=0.05, max_inputs=2)
    with TestClient(app) as client:
        big = np.random.default_rng(0).integers(0, 255, (300, 300, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(big).save(buf, format="PNG")
        r = client.post("/predict", files={"files": ("big.png", buf.getvalue(), "image/png")})
        assert r.status_code == 413 and "limit" in r.json()["detail"]
        r = client.post("/predict", content=b"hello", headers={"content-type": "text/plain"})
        assert r.status_code == 415 and "multipart/form-data" in r.json()["detail"]
        r = client.post("/predict", files={"files": ("notes.txt", b"just text", "text/plain")})
        assert r.status_code == 415 and "notes.txt" in r.json()["detail"]
        r = client.post("/predict", files={"files": ("fake.png", b"\x89PNG but not really", "image/png")})
        assert r.status_code == 422 and "cannot read 'fake.png'" in r.json()["detail"]
        truncated = png()[:60]
        r = client.post("/predict", files={"files": ("cut.png", truncated, "image/png")})
        assert r.status_code == 422
        r = client.post("/predict", files={"files": ("empty.png", b"", "image/png")})
        assert r.status_code == 422 and "empty" in r.json()["detail"]
        r = client.post("/predict", files={"note": (None, "no file")})
        assert r.status_code == 422 and "no image file" in r.json()["detail"]
        r = client.post("/predict", data={"note": "no file"})
        assert r.status_code == 415 and "classifies images" in r.json()["detail"]
        r = client.post("/predict", files=[("files", (f"{i}.png", png(seed=i), "image/png")) for i in range(3)])
        assert r.status_code == 413 and "Maximum number of files is 2" in r.json()["detail"]
        r = client.post("/predict", json={"texts": ["an image model"]})
        assert r.status_code == 415 and "classifies images" in r.json()["detail"]
        r = client.post("/predict?top_k=0", files={"files": ("a.png", png(), "image/png")})
        assert r.status_code == 422
        r = client.post("/predict", content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data; boundary=x"})
        assert r.status_code in (413, 422)
        # still serving
        ok = client.post("/predict", files={"files": ("a.png", png(), "application/octet-stream")})
        assert ok.status_code == 200 and client.get("/health").json()["status"] == "ok"


def test_text_errors(text_model):
    with TestClient(create_app(text_model, max_inputs=3, max_text_chars=50)) as client:
        for body, status, message in [
            ({"text": "   "}, 422, "empty"),
            ({"texts": ["fine", ""]}, 422, "text 2 of 2 is empty"),
            ({"texts": []}, 422, "no text"),
            ({"texts": ["a", "b", "c", "d"]}, 413, "limit is 3"),
            ({"texts": ["x" * 51]}, 413, "limit is 50"),
            ({"texts": [1]}, 422, "not a string"),
            ({"words": "x"}, 422, "expected a JSON object"),
            ([1, 2], 422, "expected a JSON object"),
        ]:
            r = client.post("/predict", json=body)
            assert r.status_code == status and message in r.json()["detail"], (body, r.text)
        r = client.post("/predict", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 422 and "not valid JSON" in r.json()["detail"]
        assert client.post("/predict", json={"text": "good"}).status_code == 200


class Flaky:
    """A model that fails on one input, to prove a failure stays with its request."""

    task, classes_ = "text", ["a", "b"]

    def predict_proba(self, texts):
        if "boom" in texts:
            raise RuntimeError("the model broke")
        return np.array([[0.25, 0.75] if t.startswith("b") else [0.75, 0.25] for t in texts])


def test_a_failing_model_call_answers_500_and_spares_the_rest(caplog):
    async def scenario():
        import httpx

        app = create_app(Flaky(), max_wait_ms=50)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            bad, good = await asyncio.gather(
                client.post("/predict", json={"text": "boom"}), client.post("/predict", json={"text": "banana"})
            )
            return bad, good, app.state.batcher

    with caplog.at_level(logging.ERROR, logger="headstart.deploy.serve"):
        bad, good, _ = asyncio.run(scenario())
    assert bad.status_code == 500 and good.status_code == 200
    assert good.json()["results"][0]["predictions"][0]["label"] == "b"
    # The client gets a generic message and a request id; the exception goes to the log only.
    detail, request_id = bad.json()["detail"], bad.headers["x-request-id"]
    assert "the model broke" not in detail and "RuntimeError" not in detail and request_id in detail
    logged = [r for r in caplog.records if request_id in r.getMessage()]
    assert logged and "the model broke" in str(logged[0].exc_info[1])


def test_deeply_nested_json_is_422_not_500(text_model):
    with TestClient(create_app(text_model)) as client:
        for body in (b"[" * 100_000, b'{"texts": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"):
            r = client.post("/predict", content=body, headers={"content-type": "application/json"})
            assert r.status_code == 422 and "not valid JSON" in r.json()["detail"], r.text[:200]
        assert client.post("/predict", json={"text": "good"}).status_code == 200


def test_a_multipart_text_part_over_the_part_limit_is_refused_by_the_parser(text_model):
    # max_text_chars=50 -> parts up to 50 * 4 + 1024 bytes; a 2000-byte field is cut off while parsing,
    # not read whole and refused afterwards.
    with TestClient(create_app(text_model, max_text_chars=50)) as client:
        r = client.post("/predict", files={"text": (None, "x" * 2000)})
        assert r.status_code == 413 and "cannot read the multipart body" in r.json()["detail"], r.text
        r = client.post("/predict", files={"text": (None, "x" * 60)})  # under the part limit: the text check
        assert r.status_code == 413 and "limit is 50" in r.json()["detail"]
        r = client.post("/predict", files={"text": (None, "a fine text")})
        assert r.status_code == 200


# --------------------------------------------------------------------------- memory bounds


def grey_png(width: int, height: int, rows: int | None = None) -> bytes:
    """An 8-bit grey PNG of zeros, compressed row by row (never held whole); with ``rows``,
    only that many rows of pixel data follow the header (a header that promises more)."""
    import struct

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    comp, row, idat = zlib.compressobj(9), b"\0" * (width + 1), []
    for _ in range(height if rows is None else rows):
        idat.append(comp.compress(row))
    idat.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(idat)) + chunk(b"IEND", b"")


def test_huge_pixel_images_are_refused_from_their_header(onnx_image, monkeypatch):
    from PIL import ImageFile

    loaded = []
    real_load = ImageFile.ImageFile.load

    def spy(self):
        loaded.append(self.size)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    huge = grey_png(6000, 6000)  # 36 Mpx in about 35 KB
    assert len(huge) < 100_000
    header_only = grey_png(20000, 20000, rows=2)  # 400 Mpx promised, a few bytes of data
    strip = grey_png(1, 40000)  # 40,000 px, but 36 x 1,440,000 once resized for the 32 px model
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    with TestClient(create_app(onnx_image)) as client:
        r = client.post("/predict", files=[("files", (f"{i}.png", huge, "image/png")) for i in range(6)])
        assert r.status_code == 413 and "36,000,000 pixels; the limit is 25,000,000" in r.json()["detail"], r.text
        r = client.post("/predict", files={"files": ("bomb.png", header_only, "image/png")})
        assert r.status_code == 413 and "'bomb.png' is too large" in r.json()["detail"], r.text
        r = client.post("/predict", files={"files": ("strip.png", strip, "image/png")})
        assert r.status_code == 413 and "aspect ratio of 1x40000 is too extreme" in r.json()["detail"], r.text
        assert client.get("/health").json()["limits"]["max_pixels"] == 25_000_000
        assert client.post("/predict", files={"files": ("a.png", png(), "image/png")}).status_code == 200
    # The refusals came from the header: no image over the limit was decoded.
    assert all(w * h <= 25_000_000 for w, h in loaded) and (40, 30) in loaded
    # Peak memory: decoding the six images would have taken over 200 MB (36 MB grey + 108 MB RGB each).
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 100, f"peak RSS grew by {grown_mb:.0f} MB"
    # A smaller limit applies to ordinary images too.
    with TestClient(create_app(onnx_image, max_pixels=1000)) as client:
        r = client.post("/predict", files={"files": ("a.png", png(size=(40, 30)), "image/png")})
        assert r.status_code == 413 and "1,200 pixels; the limit is 1,000" in r.json()["detail"]


def test_served_images_are_cut_down_to_what_the_model_needs(image_dirs, onnx_image):
    from headstart import load
    from headstart.deploy.serve import model_preprocessing, prepare_image

    wide = png(size=(900, 40), seed=3)
    tall = png(size=(35, 700), seed=4)
    for model in (onnx_image, load(image_dirs[0])):
        pre = model_preprocessing(model)
        assert pre is not None and pre["input_size"] == 32
        kept = prepare_image(wide, pre, 25_000_000)
        short = int(32 / pre["crop_pct"])
        assert kept.size[1] == short and kept.size[0] < 2 * short  # not 900 px wide any more
        _, full = expected_top(model, [wide, tall])
        np.testing.assert_allclose(model.predict_proba([kept, prepare_image(tall, pre, 25_000_000)]), full, atol=1e-6)
        with TestClient(create_app(model)) as client:
            r = client.post("/predict?top_k=3", files=[("files", ("w.png", wide, "image/png")), ("files", ("t.png", tall, "image/png"))])
            assert r.status_code == 200
            for result, row in zip(r.json()["results"], full):
                for p in result["predictions"]:
                    assert p["score"] == pytest.approx(row[model.classes_.index(p["label"])], abs=1e-5)


class Slow:
    """A text model that holds each call until released, to fill the server."""

    task, classes_ = "text", ["a", "b"]

    def __init__(self):
        self.entered, self.release = threading.Event(), threading.Event()

    def predict_proba(self, texts):
        self.entered.set()
        self.release.wait(10)
        return np.array([[0.5, 0.5]] * len(texts))


def test_requests_beyond_max_concurrent_get_503_with_retry_after():
    import httpx

    model = Slow()
    app = create_app(model, max_concurrent=1)

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            first = asyncio.ensure_future(client.post("/predict", json={"text": "one"}))
            for _ in range(500):
                if model.entered.is_set():
                    break
                await asyncio.sleep(0.01)
            busy = await client.post("/predict", json={"text": "two"})
            health = (await client.get("/health")).json()
            model.release.set()
            done = await first
            again = await client.post("/predict", json={"text": "three"})
            return busy, health, done, again

    busy, health, done, again = asyncio.run(scenario())
    assert busy.status_code == 503 and busy.headers["retry-after"] == "1" and "busy" in busy.json()["detail"]
    assert health["limits"]["max_concurrent"] == 1 and health["limits"]["in_flight"] == 1
    assert done.status_code == 200 and again.status_code == 200


# --------------------------------------------------------------------------- batching


def test_concurrent_requests_are_batched_with_the_same_answers(onnx_image):
    import httpx

    images = [png(COLORS[c], seed=i) for i, c in enumerate(["red", "green", "blue"] * 4)]

    async def fire(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            responses = await asyncio.gather(*[
                client.post("/predict", files={"files": (f"{i}.png", b, "image/png")}) for i, b in enumerate(images)
            ])
        assert all(r.status_code == 200 for r in responses)
        return [r.json()["results"][0] for r in responses]

    batched_app = create_app(onnx_image, max_batch=8, max_wait_ms=100)
    batched = asyncio.run(fire(batched_app))
    single = asyncio.run(fire(create_app(onnx_image, batching=False)))
    assert [r["input"] for r in batched] == [f"{i}.png" for i in range(len(images))]
    for a, b in zip(batched, single):
        assert a["predictions"][0]["label"] == b["predictions"][0]["label"]
        for pa, pb in zip(a["predictions"], b["predictions"]):
            assert pa["label"] == pb["label"] and pa["score"] == pytest.approx(pb["score"], abs=1e-6)
    calls = batched_app.state.batcher.batches
    assert 2 <= calls < len(images)  # 12 requests, batches of at most 8 inputs


def test_bad_options():
    from headstart.errors import HeadstartError

    with pytest.raises(HeadstartError):
        create_app(Flaky(), max_batch=0)
    for bad in ({"max_pixels": 0}, {"max_concurrent": 0}):
        with pytest.raises(HeadstartError):
            create_app(Flaky(), **bad)


def test_cli_serve_reports_a_bad_model_before_announcing(tmp_path):
    from click.testing import CliRunner

    from headstart.cli import cli
    from headstart.errors import HeadstartError

    result = CliRunner().invoke(cli, ["serve", str(tmp_path / "nonexistent")])
    assert isinstance(result.exception, HeadstartError)
    assert "serving" not in result.output


def test_cli_serve_help():
    from click.testing import CliRunner

    from headstart.cli import cli

    out = CliRunner().invoke(cli, ["serve", "--help"]).output
    assert "--port" in out and "--no-batching" in out and "/predict" in out
    assert "--max-pixels" in out and "--max-concurrent" in out
    out = CliRunner().invoke(cli, ["export", "--help"]).output
    assert "--format" in out and "parity" in out
