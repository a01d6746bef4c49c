"""Layering rules of the source tree, checked on the real files (a static import graph, built with ``ast``).

The house, bottom to top: ``core/prompt`` (imports nothing of chant), ``core/types``, ``core/ranges``,
``core/cost``, ``core/config``; ``core/engine``, ``core/storage``, ``core/queue``; ``core/services`` and
``core/bootstrap``; on top ``core/bench``, ``core/testing``, the CLIs and ``bot``. Every import counts,
function-level ones included; only ``if TYPE_CHECKING:`` blocks (never run) are left out.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("core", "bot")
# The engine's tiny-model fixtures and its benchmark sit on top of it and build or time torch models.
TORCH_ON_TOP_OF_THE_ENGINE = {
    "core/testing/tiny.py",
    "core/testing/tiny_control.py",
    "core/testing/tiny_upscalers.py",
    "core/bench/engine.py",
    "core/bench/sampling.py",
    "core/bench/postprocess.py",
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package.replace(".", "/")).rglob("*.py"))


ALL = {_module_name(p): p for root in SOURCES for p in _modules(root)}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    out: list[ast.Import | ast.ImportFrom] = []

    def walk(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    walk(other)
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                out.append(child)
            walk(child)

    walk(tree)
    return out


def _imports(path: Path) -> set[str]:
    """Every module name the file imports (``from X import y``: ``X.y`` when that is a module of ours)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    name = _module_name(path) if path.is_relative_to(ROOT) else path.stem
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names: set[str] = set()
    for node in _import_nodes(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            base = ".".join([*anchor, *([base] if base else [])])
        for alias in node.names:
            full = f"{base}.{alias.name}"
            names.add(full if full in ALL else base)
    return names


def _graph() -> dict[str, set[str]]:
    return {name: {m for m in _imports(path) if m in ALL} for name, path in ALL.items()}


def _offenders(package: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    out = {}
    for path in _modules(package):
        bad = sorted(n for n in _imports(path) if any(n == f or n.startswith(f + ".") for f in forbidden))
        if bad:
            out[str(path.relative_to(ROOT))] = bad
    return out


def test_core_never_imports_discord_or_the_bot() -> None:
    offenders = _offenders("core", ("discord", "bot"))
    assert not offenders, f"core modules import discord/bot: {offenders}"


def test_core_prompt_imports_nothing_of_chant_but_itself() -> None:
    offenders = {
        path: [n for n in names if not n.startswith("core.prompt")]
        for path, names in _offenders("core.prompt", ("core", "bot")).items()
    }
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"core/prompt reaches out: {offenders}"


@pytest.mark.parametrize("room", ["core.queue", "core.storage"])
def test_the_lower_rooms_never_reach_up_to_services_or_bootstrap(room: str) -> None:
    offenders = _offenders(room, ("core.services", "core.bootstrap"))
    assert not offenders, f"{room} imports the services or bootstrap: {offenders}"


def test_the_engine_never_reaches_up_to_services_or_bootstrap() -> None:
    offenders = _offenders("core.engine", ("core.services", "core.bootstrap"))
    assert not offenders, f"core/engine imports the services or bootstrap: {offenders}"


def test_benchmarks_and_fixtures_are_not_imported_by_the_rooms_they_serve() -> None:
    """core/bench and core/testing sit on top: only the CLIs and bootstrap (the fake engine) may use them."""
    allowed = ("core.bench", "core.testing", "core.cli", "core.bootstrap")
    offenders = {
        name: sorted(m for m in imports if m.startswith(("core.bench", "core.testing")))
        for name, imports in _graph().items()
        if not name.startswith(allowed)
    }
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, offenders


def _engine_only(cycle: list[str]) -> bool:
    return all(m.startswith("core.engine.") for m in cycle)


def test_there_is_no_import_cycle() -> None:
    cycles = [c for c in _cycles(_graph()) if not _engine_only(c)]
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_engine_has_no_import_cycle() -> None:
    cycles = [c for c in _cycles(_graph()) if _engine_only(c)]
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                out.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle_and_the_checker_a_function_level_import(tmp_path: Path) -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import os\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import bot.app\n"
        "def f():\n    from discord.ext import commands\n"
    )
    assert "discord.ext" in _imports(bad) and "bot.app" not in _imports(bad)


def test_only_engine_imports_torch() -> None:
    heavy = ("torch", "diffusers", "transformers", "safetensors", "torchsde", "peft", "accelerate")
    offenders = {}
    for path in _modules("core") + _modules("bot"):
        rel = path.relative_to(ROOT)
        if rel.parts[:2] == ("core", "engine") or rel.as_posix() in TORCH_ON_TOP_OF_THE_ENGINE:
            continue
        bad = sorted(n for n in _imports(path) if n.split(".")[0] in heavy)
        if bad:
            offenders[str(rel)] = bad
    assert not offenders, f"only core/engine may import torch and friends: {offenders}"


def test_importing_core_prompt_loads_no_torch() -> None:
    code = (
        "import sys, core.prompt, core.cli, core.types, core.config;"
        "bad = [m for m in ('torch', 'discord', 'diffusers', 'transformers') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
