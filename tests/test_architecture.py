"""Layering rules of the source tree, checked on the real files."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The engine's tiny-model fixtures and its benchmark sit on top of it and build or time torch models.
TORCH_ON_TOP_OF_THE_ENGINE = {"core/testing/tiny.py", "core/bench/engine.py"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package.replace(".", "/")).rglob("*.py"))


def test_core_never_imports_discord() -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(n for n in _imports(path) if n.split(".")[0] in ("discord", "bot"))
        for path in _modules("core")
    }
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"core modules import discord/bot: {offenders}"


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


def test_the_checker_catches_a_discord_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom discord.ext import commands\n")
    assert "discord.ext" in _imports(bad)
