from __future__ import annotations

from pathlib import Path

from bot.cli import main


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
