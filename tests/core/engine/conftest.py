"""Tiny random-weight models for the engine tests, built once per session (seconds, offline)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from core.config import EngineSettings, ModelSettings


@pytest.fixture(scope="session", autouse=True)
def _engine_cache(tmp_path_factory: pytest.TempPathFactory):
    """Skeletons and the hash cache go to a temporary folder, never the user's ~/.cache."""
    old = os.environ.get("CHANT_CACHE")
    os.environ["CHANT_CACHE"] = str(tmp_path_factory.mktemp("chant-cache"))
    yield
    if old is None:
        os.environ.pop("CHANT_CACHE", None)
    else:
        os.environ["CHANT_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_sd15(tmp_path_factory: pytest.TempPathFactory, _engine_cache):
    from core.testing.tiny import build_tiny_sd15

    return build_tiny_sd15(tmp_path_factory.mktemp("tiny-sd15"))


@pytest.fixture(scope="session")
def tiny_sd2(tmp_path_factory: pytest.TempPathFactory, _engine_cache):
    from core.testing.tiny import build_tiny_sd2

    return build_tiny_sd2(tmp_path_factory.mktemp("tiny-sd2"))


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory: pytest.TempPathFactory, _engine_cache):
    from core.testing.tiny import build_tiny_sdxl

    return build_tiny_sdxl(tmp_path_factory.mktemp("tiny-sdxl"))


def engine_settings(tiny, *, name: str = "tiny", single_file: bool = True, **changes) -> EngineSettings:
    """Settings with one configured tiny model (the single file by default), on the CPU."""
    source = str(tiny.single_file) if single_file else str(tiny.folder)
    model = ModelSettings(source=source, config=str(tiny.config) if single_file else None)
    values = {
        "device": "cpu",
        "models": {name: model},
        "default_model": name,
        "model_dirs": (str(Path(tiny.single_file).parent),),
        "embedding_dirs": (),
        "preview_every": 0,
        "threads": 1,  # same bits every run, and no thread oversubscription on a shared 2-core box
    }
    values.update(changes)
    return EngineSettings(**values)


@pytest.fixture(scope="session")
def sd15_engine(tiny_sd15):
    from core.engine.diffusers_engine import DiffusersEngine

    engine = DiffusersEngine(engine_settings(tiny_sd15))
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def sdxl_engine(tiny_sdxl):
    from core.engine.diffusers_engine import DiffusersEngine

    engine = DiffusersEngine(engine_settings(tiny_sdxl))
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def sd2_engine(tiny_sd2):
    from core.engine.diffusers_engine import DiffusersEngine

    engine = DiffusersEngine(engine_settings(tiny_sd2))
    yield engine
    engine.close()
