"""The dependency floors are true: constraints-lowest.txt pins every floor pyproject.toml declares, and
``scripts/test-lowest`` runs the fast tests (plus the smoke test below) against exactly those versions."""

from __future__ import annotations

import os
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOWEST = os.environ.get("CHANT_LOWEST") == "1"  # set by scripts/test-lowest


def _declared_floors() -> dict[str, Version]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    floors = {}
    for text in [*project["dependencies"], *project["optional-dependencies"]["dev"]]:
        req = Requirement(text)
        lower = [s.version for s in req.specifier if s.operator == ">="]
        assert lower, f"{text}: every dependency declares a floor (>=)"
        floors[canonicalize_name(req.name)] = Version(lower[0])
    return floors


def _pinned_lowest() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "constraints-lowest.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = Version(version)
    return pins


def test_every_floor_is_pinned_in_the_lowest_constraints() -> None:
    floors, pins = _declared_floors(), _pinned_lowest()
    floors.pop("ruff")  # a linter: not run in the lowest environment
    assert pins == floors


@pytest.mark.skipif(not LOWEST, reason="runs in scripts/test-lowest (the lowest declared versions)")
def test_this_environment_has_the_floors() -> None:
    for name, version in _pinned_lowest().items():
        installed = Version(metadata.version(name))
        assert installed.release == version.release, f"{name}: {installed} installed, floor {version}"


@pytest.mark.skipif(not LOWEST, reason="runs in scripts/test-lowest (the lowest declared versions)")
def test_a_tiny_model_generates_with_the_floors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from core.config import EngineSettings, ModelSettings
    from core.engine import create_engine
    from core.types import GenerationRequest
    from tests.tiny import build_tiny_sd15

    monkeypatch.setenv("CHANT_CACHE", str(tmp_path / "cache"))
    tiny = build_tiny_sd15(tmp_path / "tiny")
    model = ModelSettings(source=str(tiny.single_file), config=str(tiny.config))
    engine = create_engine(EngineSettings(device="cpu", models={"tiny": model}))
    request = GenerationRequest(
        prompt="a (red:1.2) [cat:dog:0.5] AND boat", negative_prompt="blurry", steps=3, width=64, height=64,
        seed=1, sampler="DPM++ 2M", count=2,
    )
    result = engine.generate(request)
    assert [image.seed for image in result.images] == [1, 2]
    assert all(image.png[:8] == b"\x89PNG\r\n\x1a\n" for image in result.images)
