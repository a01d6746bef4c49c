from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_config_is_read_before_or_after_the_subcommand(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "missing.toml"
    assert main(["--config", str(missing), "prompt", "explain", "a"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["prompt", "--config", str(missing), "explain", "a"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_bad_setting_is_reported_not_raised(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[engine]\nrgn = 'nv'\n")
    assert main(["--config", str(cfg), "prompt", "explain", "a"]) == 2
    assert "unknown setting(s) rgn" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("env", "toml", "message"),
    [
        ({}, 'log_level = "debug"\n', "log_level: must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, not 'debug'"),
        ({}, '[engine]\ndevice = "gpu"\n', "engine.device: must be one of auto, cpu, cuda, cuda:N, not 'gpu'"),
        ({"CHANT_QUEUE__LEASE_SECONDS": "0"}, "", "CHANT_QUEUE__LEASE_SECONDS: must be a number from 0.5"),
    ],
)
def test_a_bad_setting_is_one_line_and_exit_2(tmp_path: Path, env, toml, message) -> None:
    cfg = tmp_path / "chant.toml"
    cfg.write_text(toml)
    proc = subprocess.run(
        [sys.executable, "-m", "bot.cli", "queue", "status"],
        cwd=tmp_path,
        env={**os.environ, **env, "PYTHONPATH": str(ROOT), "CHANT_CONFIG": str(cfg)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
    assert proc.stderr.startswith("chant: ")


def test_third_party_noise_is_dropped_below_debug(caplog, monkeypatch) -> None:
    import logging

    from core.cli import quiet_third_party

    for name in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.delenv(name, raising=False)  # restored afterwards
    quiet_third_party("INFO")
    with caplog.at_level(logging.INFO):
        logging.getLogger("discord.client").warning("PyNaCl is not installed, voice will NOT be supported")
        logging.getLogger("discord.client").warning("logging in using static token")
    assert [r.getMessage() for r in caplog.records] == ["logging in using static token"]
    assert os.environ["TRANSFORMERS_VERBOSITY"] == "error"
