from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

from core.config import CHECKS, ConfigError, ModelSettings, Settings, load_settings, settings_from_dict

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


# --- Validation at load: every bad value names its key and what it accepts (issue 18, item 18) ---

BAD_VALUES = [
    # (section, key, value, what the message must say)
    (None, "log_level", "debug", "one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
    ("discord", "dm_mode", "sometimes", "one of allow, refuse"),
    ("discord", "progress_edit_interval_s", -1.0, "above 0"),
    ("discord", "shard_count", 0, "at least 1"),
    ("discord", "token_env", "", "environment variable name"),
    ("discord", "api_base", "discord.com", "http"),
    ("database", "url", "mysql://db/chant", "sqlite:///FILE or postgresql://"),
    ("database", "image_retention_days", -1, "at least 0"),
    ("engine", "device", "tpu", "one of auto, cpu, cuda, cuda:N"),
    ("engine", "device", "gpu", "one of auto, cpu, cuda, cuda:N"),
    ("engine", "dtype", "fp8", "one of auto, fp16, bf16, fp32"),
    ("engine", "rng", "dice", "one of gpu, cpu, nv"),
    ("engine", "compile", "max", "one of off, default, cuda-graphs"),
    ("engine", "emphasis", "strong", "one of Original, No norm, Ignore, None"),
    ("engine", "max_loaded_models", 0, "at least 1"),
    ("engine", "max_batch", -1, "from 0 to 1024"),
    ("engine", "preview_every", -5, "at least 0"),
    ("engine", "threads", 0, "from 1 to 1024"),
    ("engine", "max_input_megapixels", 0.0, "above 0"),
    ("engine", "comma_padding_backtrack", 75, "from 0 to 74"),
    ("engine", "warmup_sizes", ["500x500"], "multiple of 8"),
    ("engine", "batch_buckets", [0, 2], "from 1 to 1024"),
    ("engine", "model_dirs", [" "], "folder name"),
    ("limits", "max_steps", -1, "from 1 to 150"),
    ("limits", "max_pixels", 0, "from 4096 to 16777216"),
    ("limits", "max_images", 0, "from 1 to 16"),
    ("limits", "max_queued_per_user", 0, "at least 1"),
    ("limits", "max_prompt_chars", 0, "from 1 to 20000"),
    ("queue", "lease_seconds", 0.0, "from 0.5 to 86400"),
    ("queue", "lease_seconds", float("nan"), "from 0.5 to 86400"),
    ("queue", "poll_interval_s", 0.0, "from 0.01 to 3600"),
    ("queue", "poll_interval_s", -1.0, "from 0.01 to 3600"),
    ("queue", "max_attempts", 0, "from 1 to 100"),
    ("queue", "default_guild_weight", 0.0, "above 0"),
    ("queue", "default_guild_weight", float("inf"), "above 0"),
    ("engine", "download_model", "v1-5-pruned-emaonly.safetensors", "ORG/REPO/FILE.safetensors"),
    ("engine", "download_model", "org/repo/model.ckpt", "ORG/REPO/FILE.safetensors"),
    ("engine", "download_sha256", "6CE0", "64 lower-case hex digits"),
    ("outputs", "dir", " ", "folder name"),
]


@pytest.mark.parametrize(("section", "key", "value", "accepted"), BAD_VALUES)
def test_bad_value_is_refused_naming_the_key(section, key, value, accepted) -> None:
    data = {section: {key: value}} if section else {key: value}
    name = f"{section}.{key}" if section else key
    with pytest.raises(ConfigError) as info:
        settings_from_dict(data, env={}, source="chant.toml")
    message = str(info.value)
    assert message.startswith(f"chant.toml: {name}: must be "), message
    assert accepted in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("key", "value", "accepted"),
    [
        ("kind", "sd3", "one of auto, sd1, sd2, sdxl"),
        ("clip_skip", 0, "from 1 to 12"),
        ("source", "", "hub id"),
        ("size", "1001x1000", "multiple of 8"),
        ("size", "1024", "WxH"),
        ("steps", 0, "from 1 to 150"),
        ("cfg", 1e9, "from -100 to 100"),
        ("sampler", " ", "sampler name"),
        ("schedule", "", "schedule type"),
        ("negative", "x" * 20_001, "at most 20000 characters"),
        ("prompt_prefix", "x" * 20_001, "at most 20000 characters"),
    ],
)
def test_bad_model_value_names_the_model(key, value, accepted) -> None:
    model = {"source": "m.safetensors", key: value}
    with pytest.raises(ConfigError, match=rf"engine\.models\.sd15\.{key}: must be .*{accepted}"):
        settings_from_dict({"engine": {"models": {"sd15": model}}}, env={})


def test_a_models_defaults_load() -> None:
    model = {"source": "m.safetensors", "size": "832x1216", "steps": 25, "cfg": 6, "sampler": "DPM++ 2M",
             "schedule": "Karras", "negative": "", "prompt_prefix": "score_9, score_8_up", "prompt_suffix": ""}
    s = settings_from_dict({"engine": {"models": {"pony": model}}, "outputs": {"dir": "out"}}, env={})
    pony = s.engine.models["pony"]
    assert (pony.size, pony.steps, pony.cfg, pony.negative, pony.prompt_prefix) == (
        "832x1216", 25, 6.0, "", "score_9, score_8_up"
    )
    assert s.outputs.dir == "out" and s.outputs.save_txt is False
    assert Settings().engine.auto_download is True
    assert Settings().engine.download_model.endswith("/v1-5-pruned-emaonly.safetensors")


def test_good_edge_values_load() -> None:
    s = settings_from_dict(
        {
            "engine": {"device": "cuda:1", "emphasis": "No norm", "warmup_sizes": ["64x4096"], "max_batch": 0},
            "queue": {"lease_seconds": 0.5, "poll_interval_s": 0.01},
            "database": {"url": "postgresql+asyncpg://u@h/db", "image_retention_days": 0},
            "limits": {"max_steps": 150, "max_pixels": 4096 * 4096},
        },
        env={},
    )
    assert s.engine.device == "cuda:1" and s.queue.lease_seconds == 0.5


def _non_flag_keys():
    for section in dataclasses.fields(Settings):
        cls = section.default_factory if section.default_factory is not dataclasses.MISSING else None
        if cls is None:
            yield Settings, section.name, section.type
            continue
        for f in dataclasses.fields(cls):
            yield cls, f.name, f.type
    for f in dataclasses.fields(ModelSettings):
        yield ModelSettings, f.name, f.type


def test_every_key_that_is_not_a_flag_has_a_check() -> None:
    """A new setting gets its range or choices in core.config.CHECKS, not just a type."""
    missing = [
        f"{cls.__name__}.{name}"
        for cls, name, hint in _non_flag_keys()
        if hint not in ("bool", bool) and name != "models" and name not in CHECKS.get(cls, {})
    ]
    assert not missing


# --- CHANT_<SECTION>__<KEY> from the environment: one rule for every key ---


def test_every_key_can_be_set_from_the_environment() -> None:
    env = {
        "CHANT_LOG_LEVEL": "DEBUG",
        "CHANT_ENGINE__DEVICE": "cuda",
        "CHANT_ENGINE__MAX_BATCH": "4",
        "CHANT_ENGINE__MAX_INPUT_MEGAPIXELS": "2.5",
        "CHANT_ENGINE__VAE_TILING": "true",
        "CHANT_ENGINE__LORA_DIRS": "/data/models/Lora",
        "CHANT_ENGINE__WARMUP_SIZES": '["512x512", "768x768"]',
        "CHANT_DISCORD__DEV_GUILD_ID": "123",
        "CHANT_QUEUE__WORKER_ID": "1234",  # a text setting keeps digits as text
        "CHANT_DATABASE__URL": "postgresql://chant@db/chant",
        "chant_limits__max_steps": "80",  # names are case-insensitive
    }
    s = settings_from_dict({"engine": {"device": "cpu"}}, env=env)
    assert s.log_level == "DEBUG"
    assert (s.engine.device, s.engine.max_batch, s.engine.max_input_megapixels) == ("cuda", 4, 2.5)
    assert s.engine.vae_tiling is True
    assert s.engine.lora_dirs == ("/data/models/Lora",)
    assert s.engine.warmup_sizes == ("512x512", "768x768")
    assert s.discord.dev_guild_id == 123
    assert s.queue.worker_id == "1234"
    assert s.database.url == "postgresql://chant@db/chant"
    assert s.limits.max_steps == 80


def test_models_from_the_environment() -> None:
    env = {
        "CHANT_ENGINE__MODELS__SD15": "/data/models/a.safetensors",
        "CHANT_ENGINE__MODELS__XL__SOURCE": "/data/models/xl.safetensors",
        "CHANT_ENGINE__MODELS__XL__KIND": "sdxl",
        "CHANT_ENGINE__DEFAULT_MODEL": "xl",
    }
    s = settings_from_dict({}, env=env)
    assert s.engine.models["sd15"].source == "/data/models/a.safetensors"
    assert (s.engine.models["xl"].kind, s.engine.default_model) == ("sdxl", "xl")


def test_an_empty_variable_unsets_an_optional_key() -> None:
    s = settings_from_dict({"discord": {"dev_guild_id": 5}}, env={"CHANT_DISCORD__DEV_GUILD_ID": ""})
    assert s.discord.dev_guild_id is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CHANT_ENGINE__DEVICE": "tpu"}, r"^CHANT_ENGINE__DEVICE: must be one of auto, cpu, cuda, cuda:N, not 'tpu'$"),
        ({"CHANT_ENGINE__DEVIC": "cpu"}, r"^CHANT_ENGINE__DEVIC: no such setting"),
        ({"CHANT_NOPE__X": "1"}, r"^CHANT_NOPE__X: no such setting"),
        ({"CHANT_LIMITS__MAX_STEPS": "fifty"}, r"^CHANT_LIMITS__MAX_STEPS: 'fifty' is not a value"),
        ({"CHANT_QUEUE__LEASE_SECONDS": "nan"}, r"^CHANT_QUEUE__LEASE_SECONDS: must be a number from 0.5"),
        ({"CHANT_ENGINE__VAE_TILING": "yes"}, r"^CHANT_ENGINE__VAE_TILING: .*bool"),
    ],
)
def test_bad_environment_value_names_the_variable(env, message) -> None:
    with pytest.raises(ConfigError, match=message):
        settings_from_dict({}, env=env, source="chant.toml")


def test_other_chant_variables_are_not_settings() -> None:
    env = {"CHANT_CONFIG": "x.toml", "CHANT_CACHE": "/tmp", "CHANT_FAKE_ENGINE": "1"}
    assert settings_from_dict({}, env=env) == Settings()


def test_environment_wins_over_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[engine]\ndevice = "cpu"\nrng = "nv"\n')
    s = load_settings(cfg, env={"CHANT_ENGINE__DEVICE": "cuda:0"})
    assert (s.engine.device, s.engine.rng) == ("cuda:0", "nv")


def test_a_bad_file_value_names_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[engine]\ndevice = "gpu"\n')
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(cfg))}: engine\.device: must be one of"):
        load_settings(cfg, env={})


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"policy": "ban"}, r"moderation\.policy: must be one of off, spoiler, block, not 'ban'"),
        ({"age_restricted": "yes"}, r"moderation\.age_restricted: must be one of allow, spoiler, same"),
        ({"dm_policy": "hide"}, r"moderation\.dm_policy"),
        ({"threshold": 0.0}, r"moderation\.threshold: must be .*0\.01 to 1"),
        ({"unsafe_labels": []}, r"moderation\.unsafe_labels: must be one or more label names"),
    ],
)
def test_moderation_values_are_checked(section: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings_from_dict({"moderation": section}, env={})


def test_moderation_choices_are_the_policy_module_s() -> None:
    from core import config
    from core.moderation import AgeRestricted, Policy

    assert tuple(p.value for p in Policy) == config.MODERATION_POLICIES
    assert tuple(a.value for a in AgeRestricted) == config.AGE_RESTRICTED_POLICIES
