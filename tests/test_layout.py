"""The package's shape: imports go down the layers, no circles, registries filled in one place, README true."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

import polymodal.registry as registry

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "polymodal"
# Lower first (DESIGN.md): a module may import from its own layer or the ones before it.
LAYERS = ["errors", "config", "registry", "text", "checkpoint", "data", "nn", "decoding", "beam", "generate", "models",
          "eval", "api", "train", "serve", "cli"]


def module_imports() -> dict[str, set[str]]:
    """Module -> the polymodal modules it imports at module level (function-level imports are lazy on purpose)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        targets: set[str] = set()
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
                targets |= {base, *(f"{base}.{a.name}" for a in node.names)}
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
        graph[name] = {t for t in targets if t in modules and t != name and not name.startswith(t + ".")}
    return graph


def layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def test_no_module_imports_from_a_layer_above_it():
    upward = [(m, t) for m, targets in module_imports().items() for t in targets
              if layer(m) is not None and layer(t) is not None and layer(t) > layer(m)]
    assert upward == []


def test_no_import_circles():
    graph = module_imports()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def cycle_from(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
            if nxt not in state and (found := cycle_from(nxt, path + [nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            assert cycle_from(start, [start]) is None


def test_a_circle_is_found_when_there_is_one(monkeypatch):
    """The circle check itself: two modules importing each other are reported."""
    monkeypatch.setattr(sys.modules[__name__], "module_imports", lambda: {"a": {"b"}, "b": {"a"}})
    with pytest.raises(AssertionError):
        test_no_import_circles()


REGISTRIES = {name: value for name, value in vars(registry).items() if isinstance(value, registry.Registry)}


@pytest.mark.parametrize("name", sorted(REGISTRIES))
def test_every_registry_is_filled_by_one_table_in_the_package_it_names(name):
    reg = REGISTRIES[name]
    assert reg.filled_by, f"{name} does not say which package fills it"
    init = PACKAGE.parent / (reg.filled_by.replace(".", "/") + "/__init__.py")
    fillers = [p for p in PACKAGE.rglob("*.py") if re.search(rf"^\s*@?{name}\.(fill|register)\(", p.read_text(), re.M)]
    assert fillers == [init], f"{name} is filled in {fillers}, expected only {init}"
    assert reg.names(), f"{name} is empty after a lookup"


def test_a_lookup_fills_the_registry_in_a_fresh_interpreter():
    """Importing only the registry is enough: the first lookup imports the package that fills it."""
    code = ("from polymodal.registry import MODELS, TASKS, FUSION, DATASETS, TOKENIZERS\n"
            "print(len(MODELS.names()), 'vqa' in TASKS, FUSION.get('gated').__name__, 'coco' in DATASETS,"
            " TOKENIZERS.names())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    from polymodal.models import __all__ as architectures  # every class the models package registers

    assert out[:4] == [str(len(architectures)), "True", "GatedFusion", "True"]


def test_a_broken_model_module_fails_loudly(monkeypatch, tmp_path):
    """No sweep that swallows ImportError: a model module that cannot import is an error, not 'unknown'."""
    code = ("import sys, types\n"
            "sys.modules['polymodal.models.vqa'] = None  # makes `import polymodal.models.vqa` raise\n"
            "from polymodal.registry import MODELS\n"
            "MODELS.names()\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0 and "polymodal.models.vqa" in result.stderr.splitlines()[-1]


def test_readme_generated_blocks_are_current():
    result = subprocess.run([sys.executable, str(ROOT / "docs" / "readme_blocks.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_package_and_top_level_module_says_what_it_is():
    for path in [*PACKAGE.glob("*.py"), *PACKAGE.glob("*/__init__.py")]:
        if path.name != "__main__.py":
            assert ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))), f"{path} has no docstring"
    importlib.import_module("polymodal.cli")  # the command group files all import
