"""The import graph: no cycles, layers that only import downwards, torch-free readers, and
text runs that never load the image side."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "headstart"

# Lower layers never import higher ones (imports inside functions count too). A new module
# gets a layer here, so where it belongs is a decision, not an accident.
LAYERS = {
    "foundation": ["errors", "config", "words", "images", "labels", "splits", "registry", "distributed", "cache",
                   "checkpoint", "artifact", "evaluation", "calibration", "objectives", "losses", "card", "plots", "tblog",
                   "solver"],
    "data": ["data", "textdata", "check", "demo"],
    "backbones": ["backbones", "encoders", "vectors", "transforms", "fetch"],
    "model": ["model", "unknown"],
    "training": ["training", "contrastive", "transfer", "tokens", "image_recipe", "wordvec"],
    "fronts": ["classifier", "image", "text"],
    "loading": ["loading"],
    "runs": ["runs"],
    "deploy": ["runtime", "export", "report", "serve", "studio"],
    "cli": ["cli", "__main__"],
}
RANK = {m: i for i, (_, mods) in enumerate(LAYERS.items()) for m in mods}


def _imports(path: Path) -> set[str]:
    """headstart modules imported by one file, at module level or inside functions."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:  # from . import x
                found.update(a.name for a in node.names)
            elif node.module and node.module.startswith("headstart."):
                found.add(node.module.split(".")[1])
            elif node.module == "headstart":
                found.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("headstart."))
    modules = {p.stem for p in SRC.glob("*.py")}
    return {m for m in found if m in modules} - {path.stem}


def _graph() -> dict[str, set[str]]:
    return {p.stem: _imports(p) for p in SRC.glob("*.py") if p.stem != "__init__"}


def test_every_module_has_a_layer():
    missing = sorted(set(_graph()) - set(RANK))
    assert not missing, f"place these modules in LAYERS: {missing}"


def test_imports_only_point_down():
    upward = [(m, d) for m, deps in _graph().items() for d in deps if d in RANK and RANK[d] > RANK[m]]
    assert not upward, f"upward imports (module -> higher layer): {sorted(upward)}"


def test_no_import_cycles():
    graph = _graph()
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, timeout=300, cwd=SRC.parents[1])
    assert out.returncode == 0, out.stderr[-2000:]
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_reading_a_text_table_does_not_import_torch(tmp_path):
    (tmp_path / "t.csv").write_text("text,label\ngood,p\nbad,n\n")
    loaded = _modules_after(f"from headstart.textdata import read_table; read_table({str(tmp_path / 't.csv')!r})")
    assert "torch" not in loaded and "headstart.textdata" in loaded


@pytest.mark.parametrize("kind", ["transformer", "word-vectors"])
def test_a_text_run_does_not_import_the_image_side(tiny_bert, tmp_path, kind):
    from conftest import make_texts

    texts, labels = make_texts(24)
    if kind == "transformer":
        backbone = f"backbone={str(tiny_bert)!r}"
    else:
        vec = tmp_path / "v.txt"
        words = sorted({w for t in texts for w in t.split()})
        vec.write_text("".join(f"{w} " + " ".join(str((i * 7 + j) % 5 / 5) for j in range(4)) + "\n" for i, w in enumerate(words)))
        backbone = f"word_vectors={str(vec)!r}"
    code = (
        "import os; os.environ['HEADSTART_CACHE_DIR'] = " + repr(str(tmp_path / "cache")) + "\n"
        "from headstart import TextClassifier\n"
        f"clf = TextClassifier({backbone}, epochs=1, precision='fp32').fit({texts!r}, {labels!r})\n"
        f"clf.save({str(tmp_path / 'model')!r}); clf.predict(['good'])\n"
    )
    loaded = _modules_after(code)
    # (transformers itself may import torchvision when it is installed; headstart's image side must not load)
    image_side = {"headstart.image", "headstart.image_recipe", "headstart.data", "headstart.transforms",
                  "headstart.backbones", "timm"}
    assert not loaded & image_side, sorted(loaded & image_side)
