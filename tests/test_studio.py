"""The studio's API: projects, uploads and their refusals, the check, the training queue,
trying and exporting a model, the token, and a restart in the middle of a training."""

from __future__ import annotations

import io
import json
import os
import signal
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from headstart.deploy.studio import Limits, Projects, Trainer, check_binding, create_studio_app  # noqa: E402

from conftest import COLORS, TINY, make_texts  # noqa: E402

TINY_CLI = Path(__file__).parent / "tiny_cli.py"
IMAGE_ARGS = ["--backbone", TINY, "--weights", "none", "--epochs", "1", "--head-epochs", "2", "--batch-size", "8",
              "--precision", "fp32", "--workers", "0", "--no-cache"]


def text_args(tiny_bert) -> list[str]:
    return ["--backbone", str(tiny_bert), "--epochs", "8", "--batch-size", "8", "--lr", "1e-2", "--backbone-lr", "3e-3",
            "--precision", "fp32", "--patience", "0", "--no-cache"]


def png(rgb=(220, 30, 30), size=(16, 16), seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(rgb)[None, None] + rng.normal(0, 25, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def zip_of(entries: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries.items():
            z.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16)
            z.writestr(info, target)
    return buf.getvalue()


def app_for(tmp_path: Path, tiny_bert=None, **kw):
    train_args = {"image": IMAGE_ARGS}
    if tiny_bert is not None:
        train_args["text"] = text_args(tiny_bert)
    return create_studio_app(tmp_path / "work", train_command=[sys.executable, str(TINY_CLI)], train_args=train_args, **kw)


def create(client, name="Fruit", modality="image") -> str:
    r = client.post("/api/projects", json={"name": name, "modality": modality})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def upload(client, pid, cls, files: dict[str, bytes]):
    return client.post(f"/api/projects/{pid}/images", data={"class": cls},
                       files=[("files", (name, data, "application/octet-stream")) for name, data in files.items()])


def counts(client, pid) -> dict[str, int]:
    return {c["name"]: c["count"] for c in client.get(f"/api/projects/{pid}").json()["classes"]}


def data_files(tmp_path: Path, pid: str) -> list[str]:
    root = tmp_path / "work" / "projects" / pid / "data"
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def two_classes(client, pid, n=8):
    for ci, cls in enumerate(("red", "green")):
        r = upload(client, pid, cls, {f"{cls}_{i}.png": png(COLORS[cls], seed=ci * 100 + i) for i in range(n)})
        assert r.status_code == 200, r.text


def wait_for(client, pid, rid, states=("finished", "failed", "cancelled", "cut"), timeout=180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = next(r for r in client.get(f"/api/projects/{pid}").json()["runs"] if r["id"] == rid)
        if run["state"] in states:
            return run
        time.sleep(0.3)
    raise AssertionError(f"run {rid} still {run['state']} after {timeout} s")


# --------------------------------------------------------------------------- projects


def test_projects_are_created_renamed_listed_deleted_and_survive_a_restart(tmp_path):
    with TestClient(app_for(tmp_path)) as client:
        page = client.get("/")
        assert page.status_code == 200 and "headstart studio" in page.text
        assert "https://" not in page.text and "http://" not in page.text
        js = client.get("/static/studio.js").text
        assert "innerHTML" not in js and "http://" not in js and "https://" not in js
        assert client.get("/static/../studio.py").status_code == 404
        image = create(client, "Fruit / photos")
        text = create(client, "Reviews", "text")
        assert client.patch(f"/api/projects/{image}", json={"name": "Fruit"}).json()["name"] == "Fruit"
        assert client.post("/api/projects", json={"name": "x", "modality": "audio"}).status_code == 422
        assert client.post("/api/projects", json={"name": "  ", "modality": "image"}).status_code == 422
        assert client.get("/api/projects/../../etc").status_code == 404
    meta = json.loads((tmp_path / "work" / "projects" / image / "project.json").read_text())
    assert meta["name"] == "Fruit" and meta["modality"] == "image" and meta["runs"] == []
    with TestClient(app_for(tmp_path)) as client:
        listed = {p["id"]: p for p in client.get("/api/projects").json()["projects"]}
        assert listed[image]["name"] == "Fruit" and listed[text]["modality"] == "text"
        assert client.delete(f"/api/projects/{text}").status_code == 200
        assert [p["id"] for p in client.get("/api/projects").json()["projects"]] == [image]
        assert client.get(f"/api/projects/{text}").status_code == 404
    assert not (tmp_path / "work" / "projects" / text).exists()


# --------------------------------------------------------------------------- uploads


def test_images_are_added_per_class_and_bad_uploads_change_nothing(tmp_path):
    with TestClient(app_for(tmp_path, limits=Limits(max_file_mb=0.05, max_files=5))) as client:
        pid = create(client)
        assert client.post(f"/api/projects/{pid}/classes", json={"name": "ripe"}).status_code == 200
        r = upload(client, pid, "ripe", {"a.png": png(), "../../escape.png": png(seed=1), "b.jpg": png(seed=2)})
        assert r.status_code == 200, r.text
        # the name that claimed to be a JPEG is a PNG: it is stored as one
        assert sorted(r.json()["files"]) == ["ripe/a.png", "ripe/b.png", "ripe/escape.png"]
        assert counts(client, pid) == {"ripe": 3}
        before = data_files(tmp_path, pid)

        refused = {
            "not an image": ({"ok.png": png(), "notes.txt": b"hello there"}, 415),
            "empty": ({"empty.png": b""}, 422),
            "truncated": ({"cut.png": png(size=(64, 64))[:-200]}, 422),
            "too large": ({"big.png": png(size=(300, 300))}, 413),
            "too many": ({f"{i}.png": png(seed=i) for i in range(6)}, 413),
        }
        for why, (files, status) in refused.items():
            r = upload(client, pid, "ripe", files)
            assert r.status_code == status, (why, r.text)
            assert r.json()["detail"], why
        assert upload(client, pid, "..", {"x.png": png()}).status_code == 422  # no usable class name
        assert data_files(tmp_path, pid) == before

        img = client.get(f"/api/projects/{pid}/images/ripe/a.png")
        assert img.status_code == 200 and img.content == png()
        thumb = client.get(f"/api/projects/{pid}/images/ripe/a.png?thumb=8")
        assert thumb.headers["content-type"] == "image/jpeg" and Image.open(io.BytesIO(thumb.content)).size == (8, 8)
        assert client.get(f"/api/projects/{pid}/images/ripe/..%2F..%2Fproject.json").status_code == 404
        assert client.delete(f"/api/projects/{pid}/images/ripe/a.png").status_code == 200
        assert counts(client, pid) == {"ripe": 2}
        assert client.delete(f"/api/projects/{pid}/classes/ripe").status_code == 200
        assert counts(client, pid) == {}


def test_a_zip_of_class_folders_is_added_and_unsafe_zips_are_refused(tmp_path):
    with TestClient(app_for(tmp_path, limits=Limits(max_file_mb=2, max_files=20))) as client:
        pid = create(client)

        def send(data: bytes):
            return client.post(f"/api/projects/{pid}/images", files=[("files", ("data.zip", data, "application/zip"))])

        good = zip_of({"photos/red/r1.png": png(), "photos/red/r2.png": png(seed=1), "photos/green/g1.png": png(COLORS["green"]),
                       "photos/.DS_Store": b"junk", "__MACOSX/photos/._r1.png": b"junk"})
        r = send(good)
        assert r.status_code == 200, r.text
        assert counts(client, pid) == {"green": 1, "red": 2}
        before = data_files(tmp_path, pid)

        zeros = b"\0" * (1536 * 1024)  # 1.5 MB that compresses about a thousand times
        refused = {
            "traversal": (zip_of({"red/ok.png": png(), "../evil.png": png()}), 422, "outside"),
            "absolute": (zip_of({"/etc/evil.png": png()}), 422, "outside"),
            "nested traversal": (zip_of({"red/../../evil.png": png()}), 422, "outside"),
            "symlink": (zip_of({"red/ok.png": png()}, symlinks={"red/link.png": "/etc/passwd"}), 422, "symbolic link"),
            "bomb": (zip_of({"red/bomb.png": zeros}), 413, "zip bomb"),
            "huge entry": (zip_of({"red/huge.png": os.urandom(3 << 20)}), 413, "limit"),
            "too many entries": (zip_of({f"red/{i}.png": png(seed=i) for i in range(21)}), 413, "entries"),
            "not in a class folder": (zip_of({"loose.png": png()}), 422, "class folder"),
            "a non-image inside": (zip_of({"red/ok.png": png(), "red/readme.txt": b"hello"}), 415, "not an image"),
            "not a zip": (b"PK\x03\x04 this is no zip", 422, "zip"),
        }
        for why, (data, status, words) in refused.items():
            r = send(data)
            assert r.status_code == status, (why, r.text)
            assert words in r.json()["detail"], (why, r.json())
        assert data_files(tmp_path, pid) == before
        assert not (tmp_path / "work" / "evil.png").exists() and not (tmp_path / "work" / "projects" / "evil.png").exists()


def test_texts_are_typed_or_uploaded_as_tables_and_removed(tmp_path):
    with TestClient(app_for(tmp_path)) as client:
        pid = create(client, "Reviews", "text")
        r = client.post(f"/api/projects/{pid}/texts", json={"label": "positive", "texts": ["great film", "I loved it"]})
        assert r.status_code == 200 and r.json()["added"] == 2
        csv_table = "review,sentiment\n\"good, fun\",positive\nawful,negative\n,negative\n"
        r = client.post(f"/api/projects/{pid}/texts", files={"file": ("more.csv", csv_table.encode(), "text/csv")})
        assert r.status_code == 200, r.text
        assert r.json()["added"] == 2 and r.json()["skipped_count"] == 1
        jsonl = '{"text": "boring plot", "label": "negative"}\n{"text": "line\\nbreak", "label": "positive"}\n'
        assert client.post(f"/api/projects/{pid}/texts", files={"file": ("x.jsonl", jsonl.encode())}).json()["added"] == 2
        assert counts(client, pid) == {"positive": 4, "negative": 2}
        table = tmp_path / "work" / "projects" / pid / "data" / "texts.csv"
        before = table.read_bytes()

        refused = [
            client.post(f"/api/projects/{pid}/texts", files={"file": ("t.csv", b"words,stars\nhi,5\n")}),  # no text column
            client.post(f"/api/projects/{pid}/texts", files={"file": ("t.xlsx", b"PK...")}),
            client.post(f"/api/projects/{pid}/texts", files={"file": ("t.csv", b"text,label\n\xff\xfe,x\n")}),
            client.post(f"/api/projects/{pid}/texts", json={"label": "positive", "texts": ["fine", "   "]}),
            client.post(f"/api/projects/{pid}/texts", json={"label": " ", "texts": ["fine"]}),
            client.post(f"/api/projects/{pid}/images", data={"class": "x"}, files={"files": ("a.png", png())}),
        ]
        assert [r.status_code for r in refused] == [422, 415, 422, 422, 422, 422], [r.text for r in refused]
        assert "columns are: words, stars" in refused[0].json()["detail"] and "Name the text column 'text'" in refused[0].json()["detail"]
        assert table.read_bytes() == before

        negative = next(c for c in client.get(f"/api/projects/{pid}").json()["classes"] if c["name"] == "negative")
        first = negative["examples"][0]
        assert client.request("DELETE", f"/api/projects/{pid}/texts/{first['index']}", json={"text": "not it"}).status_code == 409
        assert client.request("DELETE", f"/api/projects/{pid}/texts/{first['index']}", json={"text": first["text"]}).status_code == 200
        assert counts(client, pid) == {"positive": 4, "negative": 1}
        rows = table.read_text(encoding="utf-8")
        assert rows.startswith("text,label\n") and '"good, fun",positive' in rows and '"line\nbreak",positive' in rows


def test_the_check_reports_findings_with_links_to_the_items(tmp_path):
    with TestClient(app_for(tmp_path)) as client:
        pid = create(client)
        upload(client, pid, "red", {"r1.png": png(), "r2.png": png(), "r3.png": png(seed=3)})
        report = client.get(f"/api/projects/{pid}/check").json()
        kinds = {f["kind"]: f for f in report["findings"]}
        assert "single-class" in kinds and kinds["single-class"]["severity"] == "error"
        upload(client, pid, "green", {f"g{i}.png": png(COLORS["green"], seed=10 + i) for i in range(3)})
        report = client.get(f"/api/projects/{pid}/check").json()
        dup = next(f for f in report["findings"] if "duplicates" in f["kind"] or f["kind"] == "leakage")
        links = [link for item in dup["items"] for link in item["links"]]
        assert {"class": "red", "name": "r1.png"} in links and {"class": "red", "name": "r2.png"} in links
        assert str(tmp_path) not in json.dumps(report)  # paths are shown relative to the project's data
        text = create(client, "Reviews", "text")
        assert client.get(f"/api/projects/{text}/check").json()["findings"][0]["severity"] == "error"


def test_names_from_users_are_made_safe_or_refused():
    from headstart.deploy.studio import Refused, image_file_name, safe_name

    assert safe_name("  tabby cat ", "class name") == "tabby cat"
    assert safe_name("a/b\\c:d*e?f", "class name") == "a_b_c_d_e_f"
    assert safe_name(".hidden", "class name") == "hidden"
    assert safe_name("Ünïcödé", "class name") == "Ünïcödé"
    assert len(safe_name("x" * 500, "class name")) == 100
    for bad in ("", "..", "...", "/", " . "):
        with pytest.raises(Refused):
            safe_name(bad, "class name")
    assert image_file_name("../../etc/passwd", ".png") == "passwd.png"
    assert image_file_name("C:\\photos\\cat.JPG", ".jpg") == "cat.JPG"
    assert image_file_name("cat.jpg", ".png") == "cat.png"  # the extension follows the format
    assert image_file_name("scan.tiff", ".tif") == "scan.tiff"


# --------------------------------------------------------------------------- security


def test_a_token_is_required_on_every_request(tmp_path):
    with TestClient(app_for(tmp_path, token="s3cret")) as client:
        for path in ("/", "/static/studio.js", "/api/projects", "/api/info", "/api/projects/x/runs/y/events"):
            r = client.get(path)
            assert r.status_code == 401, path
            assert "token" in r.json()["detail"]
        assert client.get("/api/projects", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/api/projects?token=wrong").status_code == 401
        assert client.get("/api/projects", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        page = client.get("/?token=s3cret")  # the address printed at start: sets the page's cookie
        assert page.status_code == 200 and "headstart_studio" in page.headers["set-cookie"]
        assert "samesite=strict" in page.headers["set-cookie"].lower()
        assert client.get("/static/studio.js").status_code == 200  # the cookie
        assert client.post("/api/projects", json={"name": "a", "modality": "image"}).status_code == 201
    with TestClient(app_for(tmp_path)) as client:
        assert client.get("/api/projects").status_code == 200  # no token, none needed


def test_binding_beyond_loopback_needs_a_token_and_other_hosts_and_sites_are_refused(tmp_path, capsys):
    check_binding("127.0.0.1", None)
    check_binding("0.0.0.0", "t")
    with pytest.raises(Exception, match="--token"):
        check_binding("0.0.0.0", None)
    from headstart.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["studio", "--host", "0.0.0.0", "--workdir", str(tmp_path / "w")])
    assert exc.value.code == 1 and "--token" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["studio", "--help"])
    assert exc.value.code == 0 and "--workdir" in capsys.readouterr().out

    with TestClient(app_for(tmp_path, allowed_hosts=["127.0.0.1", "localhost", "testserver"])) as client:
        assert client.get("/api/projects").status_code == 200
        assert client.get("/api/projects", headers={"Host": "evil.example:8765"}).status_code == 403
        r = client.post("/api/projects", json={"name": "a", "modality": "image"}, headers={"Origin": "http://evil.example"})
        assert r.status_code == 403
        r = client.post("/api/projects", json={"name": "a", "modality": "image"}, headers={"Origin": "http://testserver"})
        assert r.status_code == 201


# --------------------------------------------------------------------------- training


def read_events(client, pid, rid) -> list[tuple[str, str]]:
    events, kind = [], None
    with client.stream("GET", f"/api/projects/{pid}/runs/{rid}/events") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[6:])))
                if kind == "end":
                    break
    return events


def test_train_queue_cancel_try_export_download(tmp_path, tiny_bert):
    with TestClient(app_for(tmp_path, tiny_bert)) as client:
        image = create(client)
        two_classes(client, image)
        text = create(client, "Reviews", "text")
        texts, labels = make_texts(40)
        for label in ("positive", "negative"):
            client.post(f"/api/projects/{text}/texts", json={"label": label, "texts": [t for t, l in zip(texts, labels) if l == label]})

        first = client.post(f"/api/projects/{image}/runs", json={}).json()["run"]["id"]
        second = client.post(f"/api/projects/{text}/runs", json={}).json()["run"]["id"]
        third = client.post(f"/api/projects/{image}/runs", json={}).json()["run"]["id"]
        queue = client.get("/api/info").json()["queue"]
        assert queue["queued"][-2:] == [[text, second], [image, third]]
        runs = {r["id"]: r for r in client.get(f"/api/projects/{image}").json()["runs"]}
        assert runs[third]["state"] == "queued" and runs[third]["position"] == (2 if queue["running"] else 3)
        assert client.post(f"/api/projects/{image}/runs/{third}/cancel").status_code == 200
        assert wait_for(client, image, third)["state"] == "cancelled"

        events = read_events(client, image, first)
        states = [e[1]["state"] for e in events if e[0] == "state"]
        lines = [e[1] for e in events if e[0] == "log"]
        assert states[-1] == "finished" and events[-1][0] == "end"
        assert any("head: logistic regression" in line for line in lines) and any("validation accuracy" in line for line in lines)
        done = wait_for(client, image, first)
        assert done["state"] == "finished" and 0 <= done["metrics"]["accuracy"] <= 1 and done["has_report"]
        assert wait_for(client, text, second)["state"] == "finished"
        image_runs = {r["id"]: r for r in client.get(f"/api/projects/{image}").json()["runs"]}
        text_run = client.get(f"/api/projects/{text}").json()["runs"][0]
        assert text_run["started"] >= image_runs[first]["started"]  # in the order they were queued

        report = client.get(f"/api/projects/{image}/runs/{first}/files/report.html")
        assert report.status_code == 200 and "<html" in report.text.lower()
        assert client.get(f"/api/projects/{image}/runs/{first}/files/../../project.json").status_code == 404
        assert client.get(f"/api/projects/{image}/runs/{first}/files/..%2F..%2Fproject.json").status_code == 404

        r = client.post(f"/api/projects/{image}/runs/{first}/predict?top_k=2", files={"files": ("r.png", png(), "image/png")})
        assert r.status_code == 200, r.text
        preds = r.json()["results"][0]["predictions"]
        assert len(preds) == 2 and {p["label"] for p in preds} == {"green", "red"}
        assert abs(sum(p["score"] for p in preds) - 1) < 1e-5
        assert client.post(f"/api/projects/{image}/runs/{first}/predict", files={"files": ("x.png", b"nope")}).status_code == 422
        assert client.post(f"/api/projects/{image}/runs/{third}/predict", files={"files": ("r.png", png())}).status_code == 409
        r = client.post(f"/api/projects/{text}/runs/{second}/predict", json={"texts": ["great fun", "awful"]})
        assert r.status_code == 200 and len(r.json()["results"]) == 2
        assert client.post(f"/api/projects/{text}/runs/{second}/predict", json={"texts": [" "]}).status_code == 422

        r = client.post(f"/api/projects/{image}/runs/{first}/export")
        assert r.status_code == 200, r.text
        assert r.json()["export"]["passed"] and "top-1 agreement" in r.json()["export"]["summary"]
        z = zipfile.ZipFile(io.BytesIO(client.get(f"/api/projects/{image}/runs/{first}/download").content))
        assert any(n.endswith("/config.json") for n in z.namelist()) and any(n.endswith("model.safetensors") for n in z.namelist())
        z = zipfile.ZipFile(io.BytesIO(client.get(f"/api/projects/{image}/runs/{first}/download?which=onnx").content))
        assert any(n.endswith("model.onnx") for n in z.namelist())

        # the data a run trained on is kept: removing an example afterwards leaves it
        client.delete(f"/api/projects/{image}/images/red/red_0.png")
        assert (tmp_path / "work" / "projects" / image / "snapshots" / first / "red" / "red_0.png").is_file()


def test_a_restart_during_training_cuts_the_run_and_resume_finishes_it(tmp_path):
    # long enough that the cancel lands while epochs run, not after them (on an idle machine 60
    # epochs of 16 tiny images could end first)
    slow = IMAGE_ARGS[:IMAGE_ARGS.index("--epochs")] + ["--recipe", "fine-tune", "--epochs", "200", "--patience", "0", "--head-epochs", "2",
                                                          "--batch-size", "4", "--precision", "fp32", "--workers", "0", "--no-cache"]
    app = create_studio_app(tmp_path / "work", train_command=[sys.executable, str(TINY_CLI)], train_args={"image": slow})
    with TestClient(app) as client:
        pid = create(client)
        two_classes(client, pid)
        rid = client.post(f"/api/projects/{pid}/runs", json={}).json()["run"]["id"]
        log = tmp_path / "work" / "projects" / pid / "runs" / rid / "train.log"

        def wait_log(text: str) -> None:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and text not in (log.read_text() if log.is_file() else ""):
                time.sleep(0.1)
            assert text in log.read_text()

        wait_log("fine-tune epoch 1/")
        assert client.post(f"/api/projects/{pid}/runs/{rid}/cancel").status_code == 200
        run = wait_for(client, pid, rid)
        assert run["state"] == "cancelled" and "checkpoint is kept" in run["message"] and run["resumable"]
        assert client.post(f"/api/projects/{pid}/runs/{rid}/cancel").status_code == 409
        assert client.post(f"/api/projects/{pid}/runs/{rid}/resume").status_code == 200
        wait_log("resuming after epoch")
    # the studio stopped: its training was stopped with it, and the run is cut
    with TestClient(create_studio_app(tmp_path / "work", train_command=[sys.executable, str(TINY_CLI)])) as client:
        project = client.get(f"/api/projects/{pid}").json()
        run = project["runs"][0]
        assert run["state"] == "cut" and "cut" in run["message"] and run["resumable"]
        assert counts(client, pid) == {"green": 8, "red": 8}
        r = client.post(f"/api/projects/{pid}/runs/{rid}/resume")
        assert r.status_code == 200, r.text
        run = wait_for(client, pid, rid, timeout=240)
        assert run["state"] == "finished", run
        assert log.read_text().count("resuming after epoch") == 2
        assert client.post(f"/api/projects/{pid}/runs/{rid}/resume").status_code == 409


def test_a_run_left_running_by_a_crashed_studio_is_found_cut_or_finished(tmp_path):
    projects = Projects(tmp_path / "work")
    meta = projects.create("Fruit", "image")
    pid = meta["id"]
    dead = {"state": "running", "kind": "train", "created": "2026-01-01T00:00:00Z", "pid": 2 ** 22 + 7, "metrics": None}
    runs = [dict(dead, id="a-cut"), dict(dead, id="b-done"), dict(dead, id="c-queued", state="queued", pid=None)]
    projects.update(pid, lambda m: m.update(runs=runs))
    run_dir = projects.run_dir(pid, "a-cut")
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text("{}")
    done = projects.run_dir(pid, "b-done")
    (done / "model").mkdir(parents=True)
    (done / "model" / "config.json").write_text("{}")
    (done / "metrics.json").write_text(json.dumps({"val": {"accuracy": 0.75, "macro_f1": 0.7, "n": 4}}))
    trainer = Trainer(projects)
    trainer.recover()
    states = {r["id"]: r for r in projects.read(pid)["runs"]}
    assert states["a-cut"]["state"] == "cut" and "cut" in states["a-cut"]["message"]
    assert states["b-done"]["state"] == "finished" and states["b-done"]["metrics"]["accuracy"] == 0.75
    assert list(trainer.queue) == [(pid, "c-queued")]


def test_a_training_still_running_after_a_crash_is_watched_again(tmp_path):
    import subprocess

    from headstart.deploy.studio import _Adopted

    projects = Projects(tmp_path / "work")
    pid = projects.create("Fruit", "image")["id"]
    run_dir = projects.run_dir(pid, "live")
    run_dir.mkdir(parents=True)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", str(run_dir)], start_new_session=True)
    try:
        run = {"id": "live", "state": "running", "kind": "train", "created": "2026-01-01T00:00:00Z", "pid": child.pid}
        projects.update(pid, lambda m: m.update(runs=[run]))
        trainer = Trainer(projects)
        trainer.recover()
        assert trainer.current is not None and isinstance(trainer.current[2], _Adopted)
        assert projects.run(pid, "live")["state"] == "running"
        trainer.cancel(pid, "live")  # SIGTERM to its process group
        assert child.wait(30) == -signal.SIGTERM
        assert trainer.current[2].poll() == 1  # no model: it did not finish
    finally:
        child.kill()
        child.wait()


FAKE_TRAIN = """
import json, sys
if sys.argv[1:] == ["train", "--help"]:
    print("Usage: headstart train [OPTIONS] [DATA]\\n  --time-budget MINUTES  Stop training after this many minutes.\\n  --seed INTEGER")
    sys.exit(0)
open(sys.argv[0] + ".args", "w").write(json.dumps(sys.argv[1:]))
print("error: a stand-in for train")
sys.exit(1)
"""


def test_a_time_budget_is_offered_and_passed_only_when_train_has_one(tmp_path):
    fake = tmp_path / "fake_train.py"
    fake.write_text(FAKE_TRAIN)
    app = create_studio_app(tmp_path / "work", train_command=[sys.executable, str(fake)])
    with TestClient(app) as client:
        app.state.trainer.options_known.wait(60)
        assert client.get("/api/info").json()["time_budget"] is True
        pid = create(client)
        assert client.post(f"/api/projects/{pid}/runs", json={"budget_minutes": "soon"}).status_code == 422
        assert client.post(f"/api/projects/{pid}/runs", json={"budget_minutes": -1}).status_code == 422
        rid = client.post(f"/api/projects/{pid}/runs", json={"budget_minutes": 2}).json()["run"]["id"]
        run = wait_for(client, pid, rid, timeout=60)
        assert run["state"] == "failed" and "a stand-in for train" in run["message"] and not run["resumable"]
        args = json.loads((tmp_path / "fake_train.py.args").read_text())
        assert args[args.index("--time-budget") + 1] == "2" and "--no-progress" in args
    app = create_studio_app(tmp_path / "work2", train_command=[sys.executable, "-c", "print('Usage: train [OPTIONS]')"])
    with TestClient(app) as client:
        app.state.trainer.options_known.wait(60)
        assert client.get("/api/info").json()["time_budget"] is False
        pid = create(client)
        r = client.post(f"/api/projects/{pid}/runs", json={"budget_minutes": 2})
        assert r.status_code == 422 and "--time-budget" in r.json()["detail"]
