"""The web page in headless Chromium: upload an image, see the predicted label; labels are
shown as text, never as markup. Needs /usr/bin/chromium and playwright; skips without them."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("HEADSTART_CHROMIUM", "/usr/bin/chromium")


def _chromium() -> str:
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        pytest.skip(f"{CHROMIUM} not installed")
    pytest.importorskip("playwright.sync_api")
    pytest.importorskip("uvicorn")
    return CHROMIUM


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running(app):
    """uvicorn on 127.0.0.1 (a free port) in a thread, for the duration of the block."""
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@contextmanager
def browser_page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"], headless=True)
        try:
            yield browser.new_page(viewport={"width": 900, "height": 760})
        finally:
            browser.close()


@pytest.fixture(scope="module")
def onnx_image(tmp_path_factory):
    _chromium()
    from headstart import ImageClassifier
    from headstart.deploy.export import export_model
    from headstart.deploy.runtime import OnnxClassifier

    from conftest import TINY, make_folder

    root = tmp_path_factory.mktemp("browser")
    folder = make_folder(root / "photos", per_class=6)
    clf = ImageClassifier(backbone=TINY, weights="none", epochs=1, head_epochs=3, batch_size=8, precision="fp32",
                          num_workers=0, seed=0, cache=False).fit(folder)
    return OnnxClassifier.load(export_model(clf.save(root / "model"), "onnx", root / "onnx", samples=4).path)


def test_upload_an_image_and_see_the_label(onnx_image, tmp_path):
    from headstart.deploy.serve import create_app

    from conftest import COLORS, make_image

    photo = make_image(tmp_path / "red photo.jpg", COLORS["red"], size=(120, 90), seed=3)
    expected = onnx_image.predict_top_k(photo, k=3)[0]
    shots = Path(os.environ.get("HEADSTART_SCREENSHOTS", tmp_path))
    with running(create_app(onnx_image)) as url, browser_page() as page:
        page.goto(url)
        page.wait_for_selector("body[data-ready='1']")
        assert "image classifier with 3 labels" in page.text_content("#about")
        page.set_input_files("#file", str(photo))
        page.wait_for_selector("#results .row")
        labels = page.locator("#results .label").all_text_contents()
        scores = page.locator("#results .score").all_text_contents()
        assert labels == [label for label, _ in expected]
        assert scores[0] == f"{expected[0][1] * 100:.1f}%"
        width = page.locator("#results .bar").first.evaluate("e => e.style.width")
        assert float(width.rstrip("%")) == pytest.approx(expected[0][1] * 100, abs=0.1)
        page.screenshot(path=str(shots / "serve-image-page.png"), full_page=True)

        bad = tmp_path / "broken.png"
        bad.write_bytes(b"\x89PNG not an image")
        page.set_input_files("#file", str(bad))
        page.wait_for_function("document.getElementById('error').textContent.length > 0")
        assert "422" in page.text_content("#error") and "cannot read" in page.text_content("#error")


class MarkupLabels:
    """A text model whose labels look like HTML: the page must show them literally."""

    task = "text"
    classes_ = ['<img src=x onerror="document.title=\'pwned\'">', "<b>bold</b>"]

    def predict_proba(self, texts):
        return np.array([[0.8, 0.2] for _ in texts])


def test_text_page_shows_labels_as_text(tmp_path):
    from headstart.deploy.serve import create_app

    shots = Path(os.environ.get("HEADSTART_SCREENSHOTS", tmp_path))
    with running(create_app(MarkupLabels())) as url, browser_page() as page:
        page.goto(url)
        page.wait_for_selector("body[data-ready='1']")
        page.fill("#text", "anything at all")
        page.click("#classify")
        page.wait_for_selector("#results .row")
        assert page.locator("#results .label").all_text_contents() == MarkupLabels.classes_
        assert page.locator("#results img, #results b").count() == 0
        assert page.title() != "pwned"
        page.fill("#text", "   ")
        page.click("#classify")
        page.wait_for_function("document.getElementById('error').textContent.includes('empty')")
        page.screenshot(path=str(shots / "serve-text-page.png"), full_page=True)
