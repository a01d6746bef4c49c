"""Typed settings, one class per section, loaded once (TOML + environment) and passed down.

Nothing in ``core`` reads a global: ``chant``'s entry points call :func:`load_settings` and hand the
result to the parts they build. Every field here appears in ``config.example.toml`` with its default
and a one-line comment (a test checks both ways).

Every key is checked when the settings are loaded: its type from the annotation, its range or
choices from :data:`CHECKS` (one entry per key that is not a plain flag), the key named in the
error. ``CHANT_<SECTION>__<KEY>`` environment variables override any key (:func:`env_overrides`).
Settings built in code (tests) are not checked: the checks guard what an operator writes.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from core import ranges
from core.config_checks import Check, between, choices, each, optional_flag, size_text, text
from core.storage.validation import MAX_PROMPT_CHARS

DEFAULT_CONFIG_PATH = Path("chant.toml")


class ConfigError(ValueError):
    """A setting is missing, unknown or has a value of the wrong type."""


@dataclass(frozen=True)
class DiscordSettings:
    # The token is never read from the file: only from the environment variable named here.
    token_env: str = "DISCORD_TOKEN"
    dev_guild_id: int | None = None
    sync_commands: bool = True
    shard_count: int | None = None
    dm_mode: str = "allow"  # "allow" (per-user limits) or "refuse"
    progress_edit_interval_s: float = 3.0
    previews: bool = True
    api_base: str | None = None  # overridden by DISCORD_API_BASE
    gateway_url: str | None = None  # overridden by DISCORD_GATEWAY_URL


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = "sqlite+aiosqlite:///chant.db"
    upgrade_on_start: bool = True
    image_retention_days: int = 30
    echo: bool = False


# A1111 1.10 downloads runwayml/stable-diffusion-v1-5's file; that repo is gone from the hub and
# stable-diffusion-v1-5/stable-diffusion-v1-5 holds the same file (same sha256).
DEFAULT_DOWNLOAD = "stable-diffusion-v1-5/stable-diffusion-v1-5/v1-5-pruned-emaonly.safetensors"
DEFAULT_DOWNLOAD_SHA256 = "6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa"


@dataclass(frozen=True)
class ModelSettings:
    """One configured model: ``source`` is a hub id, a diffusers folder or a single .safetensors file."""

    source: str
    vae: str | None = None
    kind: str = "auto"  # auto | sd1 | sd2 | sdxl (single files are detected when "auto")
    clip_skip: int = 1
    config: str | None = None  # weight-free diffusers config folder for a single file (default: shipped skeleton)
    prediction: str = "auto"  # auto | eps | v: what the UNet predicts (auto: the checkpoint's v_pred key, SD2's test)
    zero_terminal_snr: bool | None = None  # None: the checkpoint's ztsnr key; true: A1111's Zero Terminal SNR ᾱ
    # Defaults for requests that leave the value out (order: the user's option > their preset > these >
    # chant's defaults). Unset = chant's default (size: 1024x1024 for SDXL, else 512x512).
    size: str | None = None  # "WxH"
    steps: int | None = None
    cfg: float | None = None
    cfg_rescale: float | None = None  # CFG rescale φ (v-prediction / zero-terminal-SNR models)
    sampler: str | None = None  # an A1111 sampler name
    schedule: str | None = None  # an A1111 schedule type (Karras, Exponential, ...)
    negative: str | None = None  # negative prompt when the user gives none
    prompt_prefix: str | None = None  # joined before every prompt with ", " (e.g. Pony's score tags)
    prompt_suffix: str | None = None  # joined after every prompt with ", "


@dataclass(frozen=True)
class EngineSettings:
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (fp16 on CUDA, fp32 on CPU) | fp16 | bf16 | fp32
    rng: str = "gpu"  # gpu | cpu | nv (A1111's "Random number generator source")
    default_model: str | None = None
    model_dirs: tuple[str, ...] = ("models/Stable-diffusion",)  # scanned for checkpoints (subfolders too)
    # With no model at all, `chant run`/`worker`/`generate` download this hub file into model_dirs[0]
    # (A1111 downloads the same SD 1.5 file); the sha256 is checked when set.
    auto_download: bool = True
    download_model: str = DEFAULT_DOWNLOAD
    download_sha256: str | None = DEFAULT_DOWNLOAD_SHA256
    lora_dirs: tuple[str, ...] = ("models/Lora",)
    embedding_dirs: tuple[str, ...] = ("embeddings",)
    hypernetwork_dirs: tuple[str, ...] = ("models/hypernetworks",)
    vae_dirs: tuple[str, ...] = ("models/VAE",)
    controlnet_dirs: tuple[str, ...] = ("models/ControlNet",)  # ControlNet and IP-Adapter models
    preprocessor_dirs: tuple[str, ...] = ("models/ControlNetPreprocessor",)  # depth/pose model folders
    clip_vision_dirs: tuple[str, ...] = ("models/clip_vision",)  # IP-Adapter image encoders
    max_loaded_controlnets: int = 2
    max_loaded_models: int = 1
    allow_pickle: bool = False
    emphasis: str = "Original"  # Original | No norm | Ignore | None
    comma_padding_backtrack: int = 20
    use_old_scheduling: bool = False
    pad_cond_uncond: bool = False  # A1111 option: pad prompt/negative to one length (one UNet batch)
    eta_noise_seed_delta: int = 0
    preview_every: int = 5
    compile: str = "off"  # off | default | cuda-graphs
    max_batch: int = 0  # most images in one denoising loop; 0 = as many as free VRAM holds (8 on a CPU)
    vae_decode_batch: int = 8  # latents per VAE decode call (0 = the whole batch at once)
    warmup_sizes: tuple[str, ...] = ("512x512",)  # WxH compiled/warmed up at start (compile != off)
    batch_buckets: tuple[int, ...] = (1, 2, 4, 8)  # batch sizes warmed up at start (compile != off)
    vae_tiling: bool = False
    vae_slicing: bool = False
    cpu_offload: bool = False
    threads: int | None = None
    max_input_megapixels: float = 16.0  # largest img2img/inpaint source or mask the engine decodes
    models: dict[str, ModelSettings] = field(default_factory=dict)


@dataclass(frozen=True)
class PostprocessSettings:
    """Upscalers, face restoration, the detailer's detectors and the /describe tagger (their model folders)."""

    upscaler_dirs: tuple[str, ...] = (
        "models/ESRGAN", "models/RealESRGAN", "models/DAT", "models/SwinIR", "models/HAT", "models/ScuNET",
    )
    upscale_tile: int = 192  # A1111 "Tile size for ESRGAN upscalers"; 0 = the whole image at once
    upscale_tile_overlap: int = 8  # A1111 "Tile overlap for ESRGAN upscalers" (input pixels)
    upscaler: str = "R-ESRGAN 4x+"  # /upscale's and ⬆️'s default (else the first installed model, else Lanczos)
    detail_tile: int = 512  # SD upscale's tile side (pixels) for an upscale's detail pass
    detail_tile_overlap: int = 64  # SD upscale's tile overlap (pixels)
    face_restorer_dirs: tuple[str, ...] = ("models/GFPGAN", "models/Codeformer")
    face_restoration_model: str = "GFPGAN"  # GFPGAN | CodeFormer (A1111's names) or a file stem
    codeformer_weight: float = 0.5  # A1111 "CodeFormer weight": 0 = strongest effect, 1 = weakest
    face_restoration_visibility: float = 1.0  # A1111 "GFPGAN visibility": 1 = the restored face, 0 = the original
    face_detector: str = "face_detection_yunet_2023mar"  # detector (file stem) that finds faces to restore
    detector_dirs: tuple[str, ...] = ("models/adetailer",)
    detailer_model: str = "face_detection_yunet_2023mar"  # the detector a job's "detailer" option uses
    tagger_dirs: tuple[str, ...] = ("models/interrogators",)
    tagger: str = "wd-vit-tagger-v3"  # default /describe tagger: a folder with model.onnx + selected_tags.csv
    tagger_general_threshold: float = 0.35
    tagger_character_threshold: float = 0.85


@dataclass(frozen=True)
class LimitSettings:
    """Defaults for every guild; admins change them per guild with /admin."""

    max_steps: int = 50
    max_pixels: int = 1024 * 1024
    max_images: int = 4
    max_queued_per_user: int = 3
    max_queued_per_guild: int = 50
    max_queued_global: int = 500
    max_prompt_chars: int = 6000
    max_and_parts: int = 8  # AND parts of a prompt: each is one more UNet row per step
    max_prompt_chunks: int = 12  # 75-token chunks of a prompt's (or negative's) longest part


@dataclass(frozen=True)
class QueueSettings:
    in_process_worker: bool = True
    worker_id: str | None = None  # defaults to hostname:pid
    lease_seconds: float = 60.0
    poll_interval_s: float = 1.0
    max_attempts: int = 2
    default_guild_weight: float = 1.0


@dataclass(frozen=True)
class PromptSettings:
    dynamic: bool = True  # expand {a|b} variants and __wildcards__ (sd-dynamic-prompts syntax) first
    wildcard_dir: str = "wildcards"  # NAME.txt files for __NAME__ (subfolders: __folder/NAME__)
    tag_file: str | None = None  # booru tag CSV (tagcomplete's tag,category,count,aliases) for autocomplete
    tag_replace_underscores: bool = True  # autocomplete inserts "long hair" for long_hair
    tag_escape_parentheses: bool = True  # autocomplete inserts "\(cosplay\)" so A1111 reads brackets as text


@dataclass(frozen=True)
class ModerationSettings:
    """The image classifier (run by the worker) and the defaults of every guild's policy."""

    classifier: str | None = None  # folder of a transformers image classifier; unset = images are not checked
    unsafe_labels: tuple[str, ...] = ("nsfw",)  # labels (from the model's config) whose probabilities add up to the score
    policy: str = "off"  # default guild policy: off | spoiler | block
    threshold: float = 0.8  # default guild threshold: a score at or over it is flagged
    age_restricted: str = "allow"  # default for age-restricted channels: allow | spoiler | same
    dm_policy: str = "off"  # direct messages: off | spoiler | block (at the default threshold)


@dataclass(frozen=True)
class OutputSettings:
    """Result files on disk, as A1111 writes them (off unless ``dir`` is set)."""

    dir: str | None = None  # every result as DIR/YYYY-MM-DD/<job>-<seed>.png (infotext in the PNG)
    save_txt: bool = False  # A1111 "save_txt": also <job>-<seed>.txt with the infotext


@dataclass(frozen=True)
class Settings:
    discord: DiscordSettings = field(default_factory=DiscordSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    engine: EngineSettings = field(default_factory=EngineSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    queue: QueueSettings = field(default_factory=QueueSettings)
    postprocess: PostprocessSettings = field(default_factory=PostprocessSettings)
    prompts: PromptSettings = field(default_factory=PromptSettings)
    moderation: ModerationSettings = field(default_factory=ModerationSettings)
    outputs: OutputSettings = field(default_factory=OutputSettings)
    log_level: str = "INFO"


# --- What each key accepts ---------------------------------------------------------------------
# A check takes the (already type-checked) value and returns None, or what the key accepts
# (the builders are in core.config_checks).

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DM_MODES = ("allow", "refuse")
MODERATION_POLICIES = ("off", "spoiler", "block")  # core.moderation.Policy
AGE_RESTRICTED_POLICIES = ("allow", "spoiler", "same")  # core.moderation.AgeRestricted
DEVICES = ("auto", "cpu", "cuda", "cuda:N")
DTYPES = ("auto", "fp16", "bf16", "fp32")
COMPILE_MODES = ("off", "default", "cuda-graphs")
MODEL_KINDS = ("auto", "sd1", "sd2", "sdxl")
EMPHASIS_MODES = ("Original", "No norm", "Ignore", "None")  # core.prompt.tokens.EMPHASIS_MODES
DATABASE_BACKENDS = ("sqlite", "postgresql")


def _database_url(value: Any) -> str | None:
    m = re.fullmatch(r"([a-z0-9]+)(\+\w+)?://.*", value, re.S)
    if m and m.group(1) in DATABASE_BACKENDS:
        return None
    return "a SQLAlchemy URL: sqlite:///FILE or postgresql://USER@HOST/DB"


POSITIVE_INT = between(1)
COUNT_OR_ZERO = between(0)
ID = between(1)
DIRS = each(text(what="a folder name"))
PROMPT_TEXT = text(rf"(?s).{{0,{MAX_PROMPT_CHARS}}}", f"a text of at most {MAX_PROMPT_CHARS} characters")

CHECKS: dict[type, dict[str, Check]] = {
    Settings: {"log_level": choices(*LOG_LEVELS)},
    DiscordSettings: {
        "token_env": text(r"[A-Za-z_][A-Za-z0-9_]*", "an environment variable name (letters, digits, _)"),
        "dev_guild_id": ID,
        "shard_count": POSITIVE_INT,
        "dm_mode": choices(*DM_MODES),
        "progress_edit_interval_s": between(above=0),
        "api_base": text(r"https?://\S+", "an http:// or https:// URL"),
        "gateway_url": text(r"wss?://\S+", "a ws:// or wss:// URL"),
    },
    DatabaseSettings: {"url": _database_url, "image_retention_days": COUNT_OR_ZERO},
    ModelSettings: {
        "source": text(what="a hub id, a folder or a .safetensors file"),
        "vae": text(what="a VAE name or file"),
        "kind": choices(*MODEL_KINDS),
        "clip_skip": between(ranges.MIN_CLIP_SKIP, ranges.MAX_CLIP_SKIP),
        "config": text(what="a config folder"),
        "prediction": choices("auto", "eps", "v"),
        "zero_terminal_snr": optional_flag,
        "size": size_text,
        "steps": between(ranges.MIN_STEPS, ranges.MAX_STEPS),
        "cfg": between(ranges.MIN_CFG, ranges.MAX_CFG),
        "cfg_rescale": between(ranges.MIN_CFG_RESCALE, ranges.MAX_CFG_RESCALE),
        "sampler": text(what="an A1111 sampler name"),
        "schedule": text(what="an A1111 schedule type"),
        "negative": PROMPT_TEXT,
        "prompt_prefix": PROMPT_TEXT,
        "prompt_suffix": PROMPT_TEXT,
    },
    EngineSettings: {
        "device": choices(*DEVICES, pattern=r"auto|cpu|cuda(:\d+)?"),
        "dtype": choices(*DTYPES),
        "rng": choices(*ranges.RNG_SOURCES),
        "default_model": text(what="a model name"),
        "model_dirs": DIRS,
        "download_model": text(r"[\w.-]+/[\w.-]+/\S+\.safetensors", "ORG/REPO/FILE.safetensors (a hub file)"),
        "download_sha256": text(r"[0-9a-f]{64}", "64 lower-case hex digits"),
        "lora_dirs": DIRS,
        "embedding_dirs": DIRS,
        "hypernetwork_dirs": DIRS,
        "vae_dirs": DIRS,
        "max_loaded_models": POSITIVE_INT,
        "emphasis": choices(*EMPHASIS_MODES),
        "comma_padding_backtrack": between(0, 74),  # A1111's slider: 0 to 74 tokens
        "eta_noise_seed_delta": between(0, ranges.MAX_SEED),
        "preview_every": COUNT_OR_ZERO,
        "compile": choices(*COMPILE_MODES),
        "max_batch": between(0, 1024),
        "vae_decode_batch": between(0, 1024),
        "warmup_sizes": each(size_text),
        "batch_buckets": each(between(1, 1024)),
        "threads": between(1, 1024),
        "max_input_megapixels": between(above=0, high=1024),
        "controlnet_dirs": DIRS,
        "preprocessor_dirs": DIRS,
        "clip_vision_dirs": DIRS,
        "max_loaded_controlnets": POSITIVE_INT,
    },
    PostprocessSettings: {
        "upscaler_dirs": DIRS,
        "upscale_tile": between(0, 4096),  # 0 = the whole image at once
        "upscale_tile_overlap": between(0, 1024),
        "upscaler": text(what="an upscaler name"),
        "detail_tile": between(ranges.MIN_SIDE, ranges.MAX_SIDE),
        "detail_tile_overlap": between(0, 1024),
        "face_restorer_dirs": DIRS,
        "face_restoration_model": text(what="a face restorer name"),
        "codeformer_weight": between(ranges.MIN_VISIBILITY, ranges.MAX_VISIBILITY),
        "face_restoration_visibility": between(ranges.MIN_VISIBILITY, ranges.MAX_VISIBILITY),
        "detailer_model": text(what="a detector name"),
        "face_detector": text(what="a detector name"),
        "detector_dirs": DIRS,
        "tagger_dirs": DIRS,
        "tagger": text(what="a tagger name"),
        "tagger_general_threshold": between(ranges.MIN_CONFIDENCE, ranges.MAX_CONFIDENCE),
        "tagger_character_threshold": between(ranges.MIN_CONFIDENCE, ranges.MAX_CONFIDENCE),
    },
    PromptSettings: {
        "wildcard_dir": text(what="a folder name"),
        "tag_file": text(what="a CSV file name"),
    },
    ModerationSettings: {
        "classifier": text(what="a classifier folder"),
        "unsafe_labels": lambda v: None if v and not each(text(what="x"))(v) else "one or more label names",
        "policy": choices(*MODERATION_POLICIES),
        "threshold": between(0.01, 1.0),  # core.moderation.check_threshold's range
        "age_restricted": choices(*AGE_RESTRICTED_POLICIES),
        "dm_policy": choices(*MODERATION_POLICIES),
    },
    OutputSettings: {"dir": text(what="a folder name")},
    LimitSettings: {
        "max_steps": between(ranges.MIN_STEPS, ranges.MAX_STEPS),
        "max_pixels": between(ranges.MIN_SIDE**2, ranges.MAX_SIDE**2),
        "max_images": between(ranges.MIN_COUNT, ranges.MAX_COUNT),
        "max_queued_per_user": POSITIVE_INT,
        "max_queued_per_guild": POSITIVE_INT,
        "max_queued_global": POSITIVE_INT,
        "max_prompt_chars": between(1, MAX_PROMPT_CHARS),  # what the database stores
        "max_and_parts": POSITIVE_INT,
        "max_prompt_chunks": POSITIVE_INT,
    },
    QueueSettings: {
        "worker_id": text(what="a non-empty name"),
        # A lease is renewed three times per lease (core.queue.worker), at most twice a second.
        "lease_seconds": between(0.5, 86_400),
        "poll_interval_s": between(0.01, 3600),  # 0 would poll in a busy loop
        "max_attempts": between(1, 100),
        "default_guild_weight": between(above=0, high=1e6),
    },
}


def _checked(cls: type, name: str, value: Any, key: str) -> Any:
    check = CHECKS.get(cls, {}).get(name)
    problem = check(value) if check is not None and value is not None else None
    if problem:
        raise ConfigError(f"{key}: must be {problem}, not {value!r}")
    return value


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check (and lightly convert) one TOML value against its field's type hint."""
    import types
    import typing

    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return {str(k): _coerce(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        if isinstance(value, str) and hint is ModelSettings:
            return ModelSettings(source=value)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return _build(hint, value, where)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if hint in (str, float) and not isinstance(value, hint):
        raise ConfigError(f"{where}: expected a {hint.__name__}, got {value!r}")
    return value


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where or 'top level'}: unknown setting(s) {', '.join(unknown)}")
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        kwargs[name] = _checked(cls, name, _coerce(value, hints[name], key), key)
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise ConfigError(f"{where or 'top level'}: {exc}") from None


ENV_PREFIX = "CHANT_"
# Variables that set one key each, kept from before the CHANT_<SECTION>__<KEY> rule (tests, proxies).
LEGACY_ENV = {
    "DISCORD_API_BASE": ("discord", "api_base"),
    "DISCORD_GATEWAY_URL": ("discord", "gateway_url"),
    "CHANT_DATABASE_URL": ("database", "url"),
}


def _env_value(text: str, hint: Any, var: str) -> Any:
    """One rule for every key: a text setting takes the text as written; any other reads it as a
    TOML value (``80``, ``2.5``, ``true``, ``["a", "b"]``), and a list of texts also takes one bare
    text. An empty variable unsets a key that may be unset."""
    import types
    import typing

    args = typing.get_args(hint)
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args
    if optional:
        if text.strip() == "":
            return None
        hint = next(a for a in args if a is not type(None))
    if hint is str:
        return text
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        if typing.get_origin(hint) is tuple and typing.get_args(hint)[0] is str:
            return text
        raise ConfigError(f"{var}: {text!r} is not a value of this setting's type ({_type_name(hint)})") from None


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    """The settings the environment sets, as a TOML-like table.

    ``CHANT_<SECTION>__<KEY>`` sets ``[section] key`` (``CHANT_ENGINE__DEVICE=cuda``), ``CHANT_<KEY>``
    a top-level key (``CHANT_LOG_LEVEL``), ``CHANT_ENGINE__MODELS__<NAME>__<KEY>`` a model's key
    (``<NAME>`` in lower case; ``CHANT_ENGINE__MODELS__<NAME>=PATH`` is the short form). Names are
    case-insensitive. A ``CHANT_…__…`` variable that names no setting is an error; other ``CHANT_``
    variables (``CHANT_CONFIG``, ``CHANT_CACHE`` …) are not settings and are left alone.
    """
    table: dict[str, Any] = {}
    top_level = {f.name for f in dataclasses.fields(Settings) if not dataclasses.is_dataclass(f.type)}
    for var, (section, key) in LEGACY_ENV.items():
        if env.get(var):
            table.setdefault(section, {})[key] = env[var]
    for var in sorted(env):
        if not var.upper().startswith(ENV_PREFIX):
            continue
        parts = var[len(ENV_PREFIX) :].lower().split("__")
        if len(parts) == 1 and parts[0] not in top_level:
            continue
        path, owner, hint = _env_path(Settings, parts, var)
        value = _env_value(env[var], hint, var)
        # Checked here so the error names the variable (the merged table is checked again).
        _checked(owner, path[-1], _coerce(value, hint, var), var)
        node = table
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return table


def _env_path(cls: type, parts: list[str], var: str) -> tuple[list[str], type, Any]:
    """The settings path ``parts`` names under ``cls``, the class that holds its key, its type hint."""
    hints = get_type_hints(cls)
    name, rest = parts[0], parts[1:]
    if name not in hints:
        raise ConfigError(f"{var}: no such setting (see config.example.toml)")
    hint = hints[name]
    if dataclasses.is_dataclass(hint) and rest:
        path, owner, leaf = _env_path(hint, rest, var)
        return [name, *path], owner, leaf
    if name == "models" and rest:  # engine.models.NAME[.KEY]
        if len(rest) == 1:
            return [name, rest[0]], object, str  # the short form: the model's source, checked when built
        path, owner, leaf = _env_path(ModelSettings, rest[1:], var)
        return [name, rest[0], *path], owner, leaf
    if rest or dataclasses.is_dataclass(hint):
        raise ConfigError(f"{var}: no such setting (see config.example.toml)")
    return [name], cls, hint


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def settings_from_dict(
    data: dict[str, Any], env: Mapping[str, str] | None = None, *, source: str | None = None
) -> Settings:
    """Settings from a TOML table, then the environment on top (see :func:`env_overrides`).

    ``source`` (the file's name) starts every error about a value from ``data``; an error about an
    environment variable names the variable.
    """
    env = dict(os.environ) if env is None else env
    merged = _deep_merge(data, env_overrides(env))
    try:
        settings: Settings = _build(Settings, merged, "")
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}" if source else str(exc)) from None
    return settings


def load_settings(path: Path | str | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Load settings from ``path`` (or ``$CHANT_CONFIG``, or ./chant.toml if present) and the environment."""
    env = dict(os.environ) if env is None else env
    explicit = path is not None or bool(env.get("CHANT_CONFIG"))
    path = Path(path or env.get("CHANT_CONFIG") or DEFAULT_CONFIG_PATH)
    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read the settings file ({exc})") from None
    elif explicit:
        raise ConfigError(f"config file {path} does not exist")
    return settings_from_dict(data, env, source=str(path) if path.exists() else None)
