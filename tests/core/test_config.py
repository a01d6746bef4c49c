from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

from core.config import ConfigError, Settings, load_settings, settings_from_dict

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config.example.toml"


def _uncommented_example() -> dict:
    """The example with every commented-out `# key = value` setting switched on."""
    lines = []
    for line in EXAMPLE.read_text().splitlines():
        m = re.match(r"^# (\[?[a-z0-9_.\]]+( = .*)?)$", line)
        lines.append(m.group(1) if m and ("=" in line or line.startswith("# [")) else line)
    return tomllib.loads("\n".join(lines))


def _fields(cls, prefix=""):
    out = set()
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(f.default_factory if f.default_factory is not dataclasses.MISSING else None):
            out |= _fields(f.default_factory, f"{prefix}{f.name}.")
        elif f.name == "models":
            continue
        else:
            out.add(prefix + f.name)
    return out


def _keys(data, prefix=""):
    out = set()
    for k, v in data.items():
        if isinstance(v, dict) and k != "models":
            out |= _keys(v, f"{prefix}{k}.")
        elif k != "models":
            out.add(prefix + k)
    return out


def test_example_lists_every_setting_and_nothing_else() -> None:
    assert _keys(_uncommented_example()) == _fields(Settings)


def test_example_defaults_equal_code_defaults() -> None:
    plain = tomllib.loads(EXAMPLE.read_text())
    assert settings_from_dict(plain, env={}) == Settings()


def test_example_with_everything_enabled_loads() -> None:
    s = settings_from_dict(_uncommented_example(), env={})
    assert s.engine.models["sd15"].source.endswith(".safetensors")


def test_example_model_lists_every_model_setting() -> None:
    from core.config import ModelSettings

    example = _uncommented_example()["engine"]["models"]["sd15"]
    assert set(example) == {f.name for f in dataclasses.fields(ModelSettings)}
    model = settings_from_dict(_uncommented_example(), env={}).engine.models["sd15"]
    assert (model.prediction, model.zero_terminal_snr) == ("auto", True)
    default = settings_from_dict({"engine": {"models": {"m": {"source": "x.safetensors"}}}}, env={})
    assert (default.engine.models["m"].prediction, default.engine.models["m"].zero_terminal_snr) == ("auto", None)


def test_unknown_key_is_named() -> None:
    with pytest.raises(ConfigError, match=r"engine: unknown setting.*devcie"):
        settings_from_dict({"engine": {"devcie": "cuda"}}, env={})


def test_wrong_type_is_named() -> None:
    with pytest.raises(ConfigError, match=r"limits\.max_steps: expected an integer"):
        settings_from_dict({"limits": {"max_steps": "fifty"}}, env={})


def test_environment_overrides(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[database]\nurl = "sqlite+aiosqlite:///x.db"\n')
    s = load_settings(cfg, env={"DISCORD_API_BASE": "http://127.0.0.1:1/api/v10", "CHANT_DATABASE_URL": "sqlite+aiosqlite:///y.db"})
    assert s.discord.api_base == "http://127.0.0.1:1/api/v10"
    assert s.database.url.endswith("y.db")


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", env={})
