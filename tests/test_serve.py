"""The HTTP server: endpoints, limits, errors, and batching that changes no answer."""

from __future__ import annotations

import asyncio
import io
import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("onnxruntime")

from fastapi.testclient import TestClient  # noqa: E402

from headstart import ImageClassifier, TextClassifier  # noqa: E402
from headstart.export import export_model  # noqa: E402
from headstart.runtime import OnnxClassifier  # noqa: E402
from headstart.serve import create_app, load_model  # noqa: E402

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


def test_a_failing_model_call_answers_500_and_spares_the_rest():
    async def scenario():
        import httpx

        app = create_app(Flaky(), max_wait_ms=50)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            bad, good = await asyncio.gather(
                client.post("/predict", json={"text": "boom"}), client.post("/predict", json={"text": "banana"})
            )
            return bad, good, app.state.batcher

    bad, good, _ = asyncio.run(scenario())
    assert bad.status_code == 500 and "the model broke" in bad.json()["detail"]
    assert good.status_code == 200 and good.json()["results"][0]["predictions"][0]["label"] == "b"


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


def test_cli_serve_help():
    from click.testing import CliRunner

    from headstart.cli import cli

    out = CliRunner().invoke(cli, ["serve", "--help"]).output
    assert "--port" in out and "--no-batching" in out and "/predict" in out
    out = CliRunner().invoke(cli, ["export", "--help"]).output
    assert "--format" in out and "parity" in out
