"""The library's layers (docs/architecture.md): every module imports only from the layers below it,
as import-linter checks, every module has a layer, and no function imports a module of wildlib."""

import ast
import os
import tomllib
from pathlib import Path

from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "wildlib"


def _layers() -> list[str]:
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layers = next(c for c in contracts if c["type"] == "layers")["layers"]
    return [m.strip() for layer in layers for m in layer.replace("|", ":").split(":")]


def test_imports_go_only_downward(monkeypatch):
    monkeypatch.chdir(ROOT)
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True) == 0


def test_every_module_has_a_layer():
    modules = {f"wildlib.{p.stem if p.is_file() else p.name}" for p in PACKAGE.iterdir()
               if (p.suffix == ".py" and p.stem != "__init__") or (p.is_dir() and (p / "__init__.py").exists())}
    assert modules == set(_layers()), "a module of wildlib is missing from the layers in pyproject.toml"


def test_no_function_imports_a_module_of_wildlib():
    found = []
    for path in PACKAGE.rglob("*.py"):
        for fn in ast.walk(ast.parse(path.read_text())):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found += [f"{os.path.relpath(path, ROOT)}:{n.lineno}" for n in ast.walk(fn)
                          if (isinstance(n, ast.ImportFrom) and (n.level or (n.module or "").startswith("wildlib")))
                          or (isinstance(n, ast.Import) and any(a.name.startswith("wildlib") for a in n.names))]
    assert not found, f"imports of wildlib's own modules inside functions (put them at module level): {found}"


def test_every_helper_the_notebooks_call_names_the_notebook_that_introduces_it():
    """As d2l's helpers do: a reader of the library finds where each function is taught."""
    import importlib
    import inspect
    import json
    import re

    called = set()
    for nb in (ROOT / "notebooks").glob("*.ipynb"):
        for cell in json.loads(nb.read_text())["cells"]:
            if cell["cell_type"] == "code":
                called |= set(re.findall(r"\bwl\.([a-z_]+)\.([A-Za-z_]\w*)", "".join(cell["source"])))
    silent = []
    for mod, name in sorted(called):
        obj = getattr(importlib.import_module(f"wildlib.{mod}"), name)
        if (inspect.isfunction(obj) or inspect.isclass(obj)) and not re.search(r"[Nn]otebooks?\s+\d\d",
                                                                                inspect.getdoc(obj) or ""):
            silent.append(f"wildlib.{mod}.{name}")
    assert len(called) > 100 and not silent, f"docstrings that do not name their notebook: {silent}"
