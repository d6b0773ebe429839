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
# gets a layer here, so where it belongs is a decision, not an accident. Modules are named
# from the package root, e.g. data.splits for src/headstart/data/splits.py.
LAYERS = {
    "foundation": ["errors", "config", "data.words", "data.images", "data.labels", "data.splits", "backbones.registry",
                   "training.distributed", "training.cache", "training.checkpoint", "classifiers.artifact",
                   "evaluation.metrics", "evaluation.calibration", "objectives", "training.losses", "reports.card",
                   "reports.plots", "reports.tblog", "training.solver"],
    "data": ["data.imagesets", "data.textdata", "data.check", "data.demo"],
    "backbones": ["backbones.image", "backbones.encoders", "backbones.vectors", "backbones.transforms", "backbones.fetch"],
    "model": ["models.networks", "models.unknown"],
    "training": ["training.loop", "training.contrastive", "training.transfer", "training.tokens",
                 "training.image_recipe", "training.wordvec"],
    "fronts": ["classifiers.base", "classifiers.image", "classifiers.text"],
    "loading": ["classifiers.loading"],
    "runs": ["runs"],
    "deploy": ["deploy.runtime", "deploy.export", "reports.report", "deploy.serve", "deploy.studio"],
    "cli": ["cli", "__main__"],
}
RANK = {m: i for i, (_, mods) in enumerate(LAYERS.items()) for m in mods}
PACKAGES = {p.parent.relative_to(SRC).as_posix().replace("/", ".") for p in SRC.rglob("__init__.py")} - {"."}


def _name(path: Path) -> str:
    """A module's name from the package root: data/splits.py -> data.splits."""
    return ".".join(path.relative_to(SRC).with_suffix("").parts)


def _modules() -> dict[str, Path]:
    return {_name(p): p for p in SRC.rglob("*.py") if p.name != "__init__.py" and "__pycache__" not in p.parts}


def _imports(path: Path) -> set[str]:
    """headstart modules imported by one file, at module level or inside functions."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = _name(path).split(".")[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the file's package, one level up per extra dot
                base = package[: len(package) - (node.level - 1)]
                module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            elif node.module and (node.module == "headstart" or node.module.startswith("headstart.")):
                module = node.module.partition(".")[2]
            else:
                continue
            found.add(module)
            found.update(f"{module}.{a.name}".strip(".") for a in node.names)  # from pkg import module
        elif isinstance(node, ast.Import):
            found.update(a.name.partition(".")[2] for a in node.names if a.name.startswith("headstart."))
    return {m for m in found if m in _modules()} - {_name(path)}


def _graph() -> dict[str, set[str]]:
    return {name: _imports(path) for name, path in _modules().items()}


def test_packages_hold_no_code():
    """A package's __init__ is its docstring: importing one module of it loads no other."""
    for package in PACKAGES:
        tree = ast.parse((SRC / package.replace(".", "/") / "__init__.py").read_text(encoding="utf-8"))
        assert all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in tree.body), package


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
    loaded = _modules_after(f"from headstart.data.textdata import read_table; read_table({str(tmp_path / 't.csv')!r})")
    assert "torch" not in loaded and "headstart.data.textdata" in loaded


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
    image_side = {"headstart.classifiers.image", "headstart.training.image_recipe", "headstart.data.imagesets", "headstart.backbones.transforms",
                  "headstart.backbones.image", "timm"}
    assert not loaded & image_side, sorted(loaded & image_side)


def test_old_module_names_import_the_moved_modules():
    code = ("import headstart.runtime as old, headstart.deploy.runtime as new\n"
            "from headstart.textdata import read_table\n"
            "import headstart.data.textdata as t\n"
            "print(old is new, read_table is t.read_table, new.__spec__.name, t.__spec__.parent)")
    out = subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=SRC.parents[1])
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "True", "headstart.deploy.runtime", "headstart.data"]  # their own specs
    assert "headstart.runtime moved to headstart.deploy.runtime" in out.stderr
    assert "headstart.textdata moved to headstart.data.textdata" in out.stderr
