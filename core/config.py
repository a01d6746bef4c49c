"""Typed settings, one class per section, loaded once (TOML + environment) and passed down.

Nothing in ``core`` reads a global: ``chant``'s entry points call :func:`load_settings` and hand the
result to the parts they build. Every field here appears in ``config.example.toml`` with its default
and a one-line comment (a test checks both ways).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

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


@dataclass(frozen=True)
class EngineSettings:
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (fp16 on CUDA, fp32 on CPU) | fp16 | bf16 | fp32
    rng: str = "gpu"  # gpu | cpu | nv (A1111's "Random number generator source")
    default_model: str | None = None
    model_dirs: tuple[str, ...] = ("models/Stable-diffusion",)
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
    face_restorer_dirs: tuple[str, ...] = ("models/GFPGAN", "models/Codeformer")
    face_restoration_model: str = "GFPGAN"  # GFPGAN | CodeFormer (A1111's names) or a file stem
    codeformer_weight: float = 0.5  # A1111 "CodeFormer weight": 0 = strongest effect, 1 = weakest
    face_detector: str = "face_detection_yunet_2023mar"  # detector (file stem) that finds faces to restore
    detector_dirs: tuple[str, ...] = ("models/adetailer",)
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


@dataclass(frozen=True)
class QueueSettings:
    in_process_worker: bool = True
    worker_id: str | None = None  # defaults to hostname:pid
    lease_seconds: float = 60.0
    poll_interval_s: float = 1.0
    max_attempts: int = 2
    default_guild_weight: float = 1.0


@dataclass(frozen=True)
class Settings:
    discord: DiscordSettings = field(default_factory=DiscordSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    engine: EngineSettings = field(default_factory=EngineSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    queue: QueueSettings = field(default_factory=QueueSettings)
    postprocess: PostprocessSettings = field(default_factory=PostprocessSettings)
    log_level: str = "INFO"


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
        kwargs[name] = _coerce(value, hints[name], f"{where}.{name}" if where else name)
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise ConfigError(f"{where or 'top level'}: {exc}") from None


def settings_from_dict(data: dict[str, Any], env: dict[str, str] | None = None) -> Settings:
    env = dict(os.environ) if env is None else env
    settings: Settings = _build(Settings, data, "")
    discord = settings.discord
    overrides: dict[str, Any] = {}
    if env.get("DISCORD_API_BASE"):
        overrides["api_base"] = env["DISCORD_API_BASE"]
    if env.get("DISCORD_GATEWAY_URL"):
        overrides["gateway_url"] = env["DISCORD_GATEWAY_URL"]
    if overrides:
        settings = dataclasses.replace(settings, discord=dataclasses.replace(discord, **overrides))
    if env.get("CHANT_DATABASE_URL"):
        settings = dataclasses.replace(
            settings, database=dataclasses.replace(settings.database, url=env["CHANT_DATABASE_URL"])
        )
    return settings


def load_settings(path: Path | str | None = None, env: dict[str, str] | None = None) -> Settings:
    """Load settings from ``path`` (or ``$CHANT_CONFIG``, or ./chant.toml if present)."""
    env = dict(os.environ) if env is None else env
    explicit = path is not None or bool(env.get("CHANT_CONFIG"))
    path = Path(path or env.get("CHANT_CONFIG") or DEFAULT_CONFIG_PATH)
    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    elif explicit:
        raise ConfigError(f"config file {path} does not exist")
    return settings_from_dict(data, env)
