"""The studio in headless Chromium, end to end: an image project and a text project are
made, filled, checked, trained (tiny models, so it takes seconds), tried and exported,
all through the page. Needs /usr/bin/chromium and playwright; skips without them.

HEADSTART_SCREENSHOTS=docs pytest tests/test_studio_browser.py refreshes docs/studio.png and
docs/studio-text.png."""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

import pytest

from conftest import COLORS, TINY, make_image, make_texts
from test_browser import _chromium, browser_page, running
from test_studio import TINY_CLI, text_args

pytestmark = pytest.mark.browser

TRAINED = 180_000  # ms: a tiny training, on a busy 2-core machine
# The tiny network's frozen features and a linear head: enough to tell red from green.
LINEAR_ARGS = ["--backbone", TINY, "--weights", "none", "--recipe", "linear-probe", "--epochs", "40", "--lr", "1e-2",
               "--batch-size", "8", "--precision", "fp32", "--workers", "0", "--no-cache"]


def _wait_for_parity(page) -> None:
    """Until the export says its parity check passed; on a failed export (its own message,
    or the page's error box for a failed request) or a timeout, fail with what the page says."""
    page.wait_for_function("(t => t.includes('parity passed') || t.startsWith('Export failed'))"
                           "(document.getElementById('export-result').textContent)"
                           " || !document.getElementById('error').hidden", timeout=120_000)
    text, error = page.text_content("#export-result"), page.text_content("#error")
    assert "parity passed" in text, f"export result: {text!r}; error box: {error!r}"


def test_make_try_and_export_an_image_and_a_text_classifier_in_the_browser(tmp_path, tiny_bert):
    _chromium()
    from headstart.deploy.studio import create_studio_app

    shots = Path(os.environ.get("HEADSTART_SCREENSHOTS", tmp_path))
    images = {cls: [make_image(tmp_path / "photos" / cls / f"{cls} {i}.png", COLORS[cls], size=(48, 40), seed=ci * 50 + i)
                    for i in range(10)] for ci, cls in enumerate(("red", "green"))}
    texts, labels = make_texts(40)
    table = tmp_path / "reviews.csv"
    with open(table, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("text", "label"), *zip(texts, labels)])

    app = create_studio_app(tmp_path / "work", train_command=[sys.executable, str(TINY_CLI)],
                            train_args={"image": LINEAR_ARGS, "text": text_args(tiny_bert)})
    with running(app) as url, browser_page() as page:
        page.set_viewport_size({"width": 1280, "height": 900})
        page.goto(url)
        page.wait_for_selector("body[data-ready='1']")

        # ---- an image project
        page.fill("#new-name", "Colours")
        page.select_option("#new-modality", "image")
        page.click("#create")
        page.wait_for_function("document.getElementById('project-title').textContent === 'Colours'")
        for cls, files in images.items():
            page.fill("#new-class", cls)
            page.click("#add-class")
            card = f".class[data-class='{cls}']"
            page.wait_for_selector(card)
            page.set_input_files(f"{card} input.files", [str(p) for p in files])
            page.wait_for_function(f"document.querySelector(\"{card} .count\").textContent === '10 images'")
        assert page.locator(".class[data-class='red'] .thumb img").count() == 10
        bad = tmp_path / "notes.png"
        bad.write_text("not an image at all")
        page.set_input_files(".class[data-class='red'] input.files", str(bad))
        page.wait_for_function("document.getElementById('error').textContent.includes('not an image')")
        assert page.text_content(".class[data-class='red'] .count") == "10 images"  # nothing was added

        page.click("#check")
        page.wait_for_selector("#check-result .split")
        assert "train: 20 example(s) (green 10, red 10)" in page.text_content("#check-result")  # one set: training cross-validates

        page.click("#train")
        page.wait_for_selector(".run[data-state='finished']", timeout=TRAINED)
        page.wait_for_selector("#accuracy")
        accuracy = page.text_content("#accuracy")
        assert accuracy.endswith("%") and 0 <= float(accuracy[:-1]) <= 100
        assert "head: logistic regression" in page.text_content("#log")
        page.wait_for_function("document.getElementById('report-frame').contentDocument"
                               " && document.getElementById('report-frame').contentDocument.body"
                               " && document.getElementById('report-frame').contentDocument.body.textContent.length > 100")

        photo = make_image(tmp_path / "try red.jpg", COLORS["red"], size=(120, 90), seed=999)
        page.set_input_files("#try-file", str(photo))
        page.wait_for_selector("#try-results .row")
        assert sorted(page.locator("#try-results .label").all_text_contents()) == ["green", "red"]
        assert all(s.endswith("%") for s in page.locator("#try-results .score").all_text_contents())

        page.click("#export")
        _wait_for_parity(page)
        assert "top-1 agreement" in page.text_content("#export-result")
        assert page.get_attribute("#download", "href").endswith("/download")
        page.screenshot(path=str(shots / "studio.png"), full_page=True)

        # ---- a text project
        page.fill("#new-name", "Reviews")
        page.select_option("#new-modality", "text")
        page.click("#create")
        page.wait_for_function("document.getElementById('project-title').textContent === 'Reviews'")
        page.set_input_files("#table-file", str(table))
        page.wait_for_selector(".class[data-class='positive']")
        page.fill(".class[data-class='positive'] textarea", "a wonderful film\nfun and great")
        page.click(".class[data-class='positive'] .add-texts-button")
        page.wait_for_function("document.querySelector(\".class[data-class='positive'] .count\").textContent === '22 texts'")
        assert page.text_content(".class[data-class='negative'] .count") == "20 texts"

        page.click("#check")
        page.wait_for_selector("#check-result .split")
        page.click("#train")
        page.wait_for_selector(".run[data-state='finished']", timeout=TRAINED)
        page.wait_for_selector("#accuracy")
        assert page.text_content("#accuracy").endswith("%")

        page.fill("#try-text", "great fun, I love it")
        page.click("#try-go")
        page.wait_for_selector("#try-results .row")
        # the predictions (an input unlike the training texts may also get the "Unknown" line above them)
        assert set(page.locator("#try-results .row .label").all_text_contents()) == {"positive", "negative"}
        page.click("#export")
        _wait_for_parity(page)
        page.screenshot(path=str(shots / "studio-text.png"), full_page=True)

        # both projects are listed, and the image project opens again with its finished run
        assert page.locator("#projects li").count() == 2
        page.click("#projects li[data-id] >> text=Colours")
        page.wait_for_function("document.getElementById('project-title').textContent === 'Colours'")
        page.wait_for_selector("#model-panel:not([hidden]) #accuracy")


def test_a_run_cut_by_a_restart_is_shown_with_resume_behind_a_token(tmp_path):
    """A studio that stopped during a training: the project opens, the run says it was cut
    and offers Resume. The page works with a token (from its address, then its cookie)."""
    _chromium()
    from headstart.deploy.studio import Projects, create_studio_app

    projects = Projects(tmp_path / "work")
    pid = projects.create("Colours", "image")["id"]
    projects.add_images(pid, [("red", "r.png", make_image(tmp_path / "r.png", COLORS["red"]).read_bytes())])
    rid = "20260101-000000-abcd"
    run_dir = projects.run_dir(pid, rid)
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text("{}")
    (run_dir / "checkpoints").mkdir()
    run = {"id": rid, "state": "running", "kind": "train", "created": "2026-01-01T00:00:00Z", "started": "2026-01-01T00:00:01Z",
           "ended": None, "message": "", "metrics": None, "export": None, "pid": None}
    projects.update(pid, lambda m: m.update(runs=[run]))
    with running(create_studio_app(tmp_path / "work", token="t0k3n")) as url, browser_page() as page:
        assert page.goto(url).status == 401
        page.goto(url + "/?token=t0k3n")
        page.wait_for_selector("body[data-ready='1']")
        page.click("#projects li >> text=Colours")
        page.wait_for_selector(".run[data-state='cut']")
        note = page.text_content(".run[data-state='cut'] .note")
        assert "the run was cut" in note and "Resume" in note
        assert page.locator(".run[data-state='cut'] button.resume").is_visible()
        page.wait_for_function("document.querySelector('.thumb img').naturalWidth > 0")  # the page's images carry the token too

        # a folder of class folders, chosen whole
        for i in range(3):
            make_image(tmp_path / "dataset" / "blue" / f"b{i}.png", COLORS["blue"], seed=i)
            make_image(tmp_path / "dataset" / "green" / f"g{i}.png", COLORS["green"], seed=i)
        (tmp_path / "dataset" / ".DS_Store").write_bytes(b"junk")
        page.set_input_files("#dataset-folder", str(tmp_path / "dataset"))
        page.wait_for_selector(".class[data-class='blue']")
        page.wait_for_function("document.querySelector(\".class[data-class='green'] .count\") &&"
                               " document.querySelector(\".class[data-class='green'] .count\").textContent === '3 images'")
        assert page.text_content(".class[data-class='blue'] .count") == "3 images"

        page.once("dialog", lambda dialog: dialog.accept("Colours, renamed"))
        page.click("#rename")
        page.wait_for_function("document.getElementById('project-title').textContent === 'Colours, renamed'")
        page.wait_for_function("document.querySelector('#projects li .pname').textContent === 'Colours, renamed'")
        page.once("dialog", lambda dialog: dialog.accept())
        page.click("#delete")
        page.wait_for_selector("#welcome:not([hidden])")
        assert page.locator("#projects li").count() == 0
    assert not (tmp_path / "work" / "projects" / pid).exists()
