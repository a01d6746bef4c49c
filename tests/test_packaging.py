"""The wheel is a real package: built, installed outside the checkout, it migrates a database and
generates an image with nothing from the repository (issue 14).

The new environment gets chant from the wheel only; its third-party dependencies (torch, diffusers…)
are reused from the test's environment through a ``.pth`` line (a folder on the path, not a site
folder: the checkout's editable-install hook there is not run). Every chant file the run touches —
code, migrations, prompt grammar, CLIP vocabulary, model skeletons — is checked to come from the new
environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.tiny import build_tiny_sd15

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list, *, env: dict, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(c) for c in cmd], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"{cmd}: rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    build = tmp_path_factory.mktemp("build")
    env = {**os.environ, "TMPDIR": str(build)}
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", out, ROOT]
    _run(cmd, env=env, cwd=build)
    (path,) = out.glob("chant-*.whl")
    return path


def test_the_wheel_carries_migrations_data_and_license(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in (
        "migrations/env.py",
        "migrations/script.py.mako",
        "core/prompt/grammar.lark",
        "core/prompt/data/bpe_simple_vocab_16e6.txt.gz",
        "core/engine/skeletons/sd15/model_index.json",
        "core/engine/skeletons/sdxl/tokenizer_2/special_tokens_map.json",
    ):
        assert needed in names, needed
    versions = {n for n in names if n.startswith("migrations/versions/") and n.endswith(".py")}
    in_repo = {f"migrations/versions/{p.name}" for p in (ROOT / "migrations/versions").glob("*.py")}
    assert versions == in_repo
    assert not any(n.startswith("tests/") for n in names)
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    assert "License-Expression: MIT" in text
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    # The Docker image's ENTRYPOINT (tests/test_docker.py) is this console script.
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "chant = bot.cli:main" in entry_points


@pytest.mark.slow
def test_installed_wheel_migrates_and_generates_outside_the_checkout(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], env=dict(os.environ), cwd=tmp_path)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.check_output([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip()
    )
    (site / "_deps_from_tests.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q", wheel]
    _run(pip, env=dict(os.environ), cwd=tmp_path)

    work = tmp_path / "work"
    work.mkdir()
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("CHANT_", "PYTHON", "VIRTUAL_ENV"))
    }
    env |= {
        "CHANT_DATABASE__URL": f"sqlite:///{work / 'chant.db'}",
        "CHANT_CACHE": str(tmp_path / "cache"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONNOUSERSITE": "1",
    }
    where = _run(
        [
            python,
            "-c",
            "import bot.cli, core.prompt.parser, core.prompt.tokens, core.engine.skeleton as s, "
            "core.storage.migrate as m; "
            "print(bot.cli.__file__, m.MIGRATIONS_DIR / 'env.py', core.prompt.parser.__file__, "
            "core.prompt.tokens._DATA, s.PACKAGE_SKELETONS / 'sd15', sep='\\n')",
        ],
        env=env,
        cwd=work,
    )
    for line in where.stdout.split():
        assert Path(line).is_relative_to(site), f"{line} does not come from the installed wheel"
        assert Path(line).exists(), line
    # What a real single-file checkpoint loads with: the wheel's skeleton + tokenizer from its vocabulary.
    skeleton = _run(
        [python, "-c", "from core.engine.skeleton import skeleton_dir; print(skeleton_dir('sdxl'))"],
        env=env,
        cwd=work,
    )
    tokenizer = Path(skeleton.stdout.strip()) / "tokenizer_2"
    assert (tokenizer / "merges.txt").stat().st_size > 100_000 and (tokenizer / "vocab.json").exists()

    chant = venv / "bin" / "chant"
    upgraded = _run([chant, "db", "upgrade"], env=env, cwd=work)
    assert "database at" in upgraded.stdout
    assert (work / "chant.db").stat().st_size > 0

    tiny = build_tiny_sd15(tmp_path / "tiny")
    env |= {"CHANT_ENGINE__MODELS__TINY__SOURCE": str(tiny.single_file), "CHANT_ENGINE__MODELS__TINY__CONFIG": str(tiny.config)}
    out = work / "img.png"
    cmd = ["generate", "a (red:1.2) [cat|dog]", "--model", "tiny", "--steps", "2", "--size", "64x64", "-o", out]
    _run([chant, *cmd, "--seed", "7", "--device", "cpu"], env=env, cwd=work)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
