"""Which models there are, which one is the default, and what each one sets for a job — torch-free.

Models come from two places, as in A1111: the ``[engine.models.NAME]`` tables, and the checkpoints
found in ``engine.model_dirs`` (subfolders too). A found checkpoint is named by A1111's title without
its extension and hash: its path inside the folder (``sdxl/ponyDiffusionV6XL``). The list is the
configured models first (in the file's order), then the found ones in A1111's order (folders, then
files, in natural order: ``v2`` before ``v10``). The default is ``engine.default_model``, else the
first configured model, else the first found.

The services (autocomplete, the no-model refusal, per-model defaults) and the engine (name
resolution) both read this module, so what a user is offered is what the engine runs.
"""

from __future__ import annotations

import json
import os
import re
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

from core.config import EngineSettings, ModelSettings

CHECKPOINT_SUFFIXES = (".safetensors",)
PICKLE_CHECKPOINT_SUFFIXES = (".ckpt",)  # listed only with engine.allow_pickle (as A1111 lists them)
# A1111 leaves VAEs stored next to checkpoints out of the list.
NOT_CHECKPOINTS = (".vae.safetensors", ".vae.ckpt")
SDXL_SIZE = (1024, 1024)


@dataclass(frozen=True)
class FoundModel:
    name: str  # path inside its folder, without the extension, "/"-separated
    path: Path


def natural_key(text: str) -> list:
    """A1111's ``natural_sort_key``: digit runs compare as numbers, the rest case-insensitively."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def scan_checkpoints(folders: tuple[str, ...], *, allow_pickle: bool = False) -> list[FoundModel]:
    """The checkpoints in ``folders``, in A1111's order; the first folder wins a name found twice.

    Hidden folders (``.cache``) and files, VAEs (``*.vae.safetensors``) and partial downloads are left
    out, and so is a file whose real path leaves its folder (a symlink out): model names resolve
    inside the configured folders only. A diffusers pipeline folder (``model_index.json`` and UNet
    weights) is one model, named by its path and listed with the files beside it; its component
    files are not models.
    """
    suffixes = CHECKPOINT_SUFFIXES + (PICKLE_CHECKPOINT_SUFFIXES if allow_pickle else ())
    found: dict[str, FoundModel] = {}
    for folder in folders:
        base = Path(folder).expanduser()
        if not base.is_dir():
            continue
        real_base = base.resolve()
        entries: list[tuple[list, list, FoundModel]] = []  # (folder's sort key, name's sort key, model)
        for root, dirs, files in os.walk(base, followlinks=True):
            relative_root = Path(root).relative_to(base)
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            root_inside = Path(root).resolve().is_relative_to(real_base)  # a linked folder may leave it
            if relative_root.parts and _is_pipeline(Path(root)):
                dirs[:] = []  # its parts are not models
                if root_inside:
                    entries.append((natural_key(str(Path(root).parent)), natural_key(Path(root).name),
                                    FoundModel(relative_root.as_posix(), Path(root))))  # fmt: skip
                continue
            for filename in files:
                lower = filename.lower()
                if filename.startswith(".") or not lower.endswith(suffixes) or lower.endswith(NOT_CHECKPOINTS):
                    continue
                path = Path(root) / filename
                inside = root_inside and (not path.is_symlink() or path.resolve().is_relative_to(real_base))
                if inside:
                    name = (relative_root / filename).with_suffix("").as_posix()
                    entries.append((natural_key(str(Path(root))), natural_key(filename), FoundModel(name, path)))
        for _, _, model in sorted(entries, key=lambda entry: (entry[0], entry[1])):
            found.setdefault(model.name, model)
    return list(found.values())


def _is_pipeline(folder: Path) -> bool:
    """A diffusers pipeline with weights (a weight-free config skeleton is not a model)."""
    return (folder / "model_index.json").is_file() and any((folder / "unet").glob("*.safetensors"))


def looks_like_hub_id(text: str) -> bool:
    """``org/name``, as the hub spells repo ids (not a path that happens to have one slash)."""
    parts = text.split("/")
    return (
        len(parts) == 2
        and all(parts)
        and not text.startswith((".", "/", "~"))
        and not Path(text).suffix
        and all(c.isalnum() or c in "-_." for c in text.replace("/", ""))
    )


def _usable(model: ModelSettings) -> bool:
    """A configured model can run: its local source exists, or it names a hub repo."""
    path = Path(model.source).expanduser()
    return path.exists() or looks_like_hub_id(model.source)


def model_names(settings: EngineSettings, *, check_sources: bool = True) -> list[str]:
    """Every model a user may pick: the usable configured ones, then the found ones (a found file that
    is a configured model's source is listed once, by its configured name).

    ``check_sources=False`` lists every configured model, whether or not its file is on this machine:
    a bot process without an engine (``chant run --no-worker``) names its workers' models."""
    configured = [name for name, model in settings.models.items() if not check_sources or _usable(model)]
    sources = {
        str(Path(model.source).expanduser().resolve())
        for model in settings.models.values()
        if Path(model.source).expanduser().exists()
    }
    found = [
        f.name
        for f in scan_checkpoints(settings.model_dirs, allow_pickle=settings.allow_pickle)
        if f.name not in settings.models and not (sources and str(f.path.resolve()) in sources)
    ]
    return configured + found


def configured_name_of(settings: EngineSettings, path: Path) -> str | None:
    """The configured model whose source is the file or folder ``path``, if any: picked by its found
    name or its path, it is that model, with its table (``prediction``, ``zero_terminal_snr``, ``vae``,
    the defaults) — as the list offers it once, by the configured name."""
    real = path.expanduser().resolve()
    for name, model in settings.models.items():
        source = Path(model.source).expanduser()
        if source.exists() and source.resolve() == real:
            return name
    return None


def found_path(settings: EngineSettings, name: str) -> Path | None:
    """Where the found checkpoint ``name`` is (None: no such name in the model folders)."""
    found = next((f for f in scan_checkpoints(settings.model_dirs, allow_pickle=settings.allow_pickle)
                  if f.name == name), None)  # fmt: skip
    return found.path if found is not None else None


def default_model_name(settings: EngineSettings, names: list[str] | None = None) -> str | None:
    """``engine.default_model``, else the first configured model, else the first one found."""
    if settings.default_model:
        return settings.default_model
    names = model_names(settings) if names is None else names
    return names[0] if names else None


def no_model_hint(settings: EngineSettings) -> str:
    """What an operator does about having no model, in one sentence."""
    folders = ", ".join(settings.model_dirs) or "(none: engine.model_dirs is empty)"
    return (
        f"put a Stable Diffusion .safetensors checkpoint in {folders} (engine.model_dirs), "
        "or name one under [engine.models.NAME] in the settings file"
    )


# --- what a model sets for a job --------------------------------------------------------------------


@dataclass(frozen=True)
class ModelDefaults:
    """A model's defaults, by request field (None: not set, chant's own default applies)."""

    width: int | None = None
    height: int | None = None
    steps: int | None = None
    cfg_scale: float | None = None
    cfg_rescale: float | None = None
    sampler: str | None = None
    schedule_type: str | None = None
    clip_skip: int | None = None
    negative_prompt: str | None = None
    prompt_prefix: str = ""
    prompt_suffix: str = ""

    def fields(self) -> dict[str, object]:
        """The request fields this model sets."""
        names = ("width", "height", "steps", "cfg_scale", "cfg_rescale", "sampler", "schedule_type",
                 "clip_skip", "negative_prompt")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    def wrap(self, prompt: str) -> str:
        """The prompt with the model's prefix and suffix, joined with ", " as A1111 joins styles."""
        return ", ".join(part for part in (self.prompt_prefix, prompt, self.prompt_suffix) if part)


def model_defaults(settings: EngineSettings, name: str | None) -> ModelDefaults:
    """What model ``name`` sets: its ``[engine.models.NAME]`` table, and 1024x1024 for an SDXL model
    whose table sets no size (SDXL told by ``kind``, else read from the checkpoint's tensor names)."""
    if not name:
        return ModelDefaults()
    model = settings.models.get(name)
    if model is None and (path := found_path(settings, name)) is not None:
        configured = configured_name_of(settings, path)  # a configured model's file, by its found name
        if configured is not None:
            name, model = configured, settings.models[configured]
    size: tuple[int, int] | None = None
    if model is not None and model.size:
        width, _, height = model.size.partition("x")
        size = (int(width), int(height))
    elif _kind(settings, name, model) == "sdxl":
        size = SDXL_SIZE
    if model is None:
        return ModelDefaults(*(size or (None, None)))
    return ModelDefaults(
        width=size[0] if size else None,
        height=size[1] if size else None,
        steps=model.steps,
        cfg_scale=model.cfg,
        cfg_rescale=model.cfg_rescale,
        sampler=model.sampler,
        schedule_type=model.schedule,
        clip_skip=model.clip_skip if model.clip_skip != 1 else None,
        negative_prompt=model.negative,
        prompt_prefix=model.prompt_prefix or "",
        prompt_suffix=model.prompt_suffix or "",
    )


def _kind(settings: EngineSettings, name: str, model: ModelSettings | None) -> str | None:
    """sd1 | sd2 | sdxl where it can be told without loading the model; None otherwise (a hub id
    with ``kind = "auto"``, an unreadable file)."""
    if model is not None and model.kind != "auto":
        return model.kind
    if model is not None:
        return guess_kind(Path(model.source).expanduser())
    path = found_path(settings, name)
    return guess_kind(path) if path is not None else None


def guess_kind(path: Path) -> str | None:
    """The kind of a single file (its tensor names) or a diffusers folder (its second text encoder)."""
    if path.is_dir():
        if (path / "text_encoder_2").is_dir():
            return "sdxl"
        return "sd1" if (path / "unet").is_dir() else None
    if path.suffix.lower() != ".safetensors":
        return None
    try:
        return kind_of_keys(safetensors_keys(path))
    except (OSError, ValueError):
        return None


def kind_of_keys(keys: tuple[str, ...] | list[str]) -> str | None:
    """sd1 | sd2 | sdxl from an A1111/LDM checkpoint's tensor names (``models.detect_kind``'s rule)."""
    if any(k.startswith("conditioner.embedders.1.model.") for k in keys):
        return "sdxl"
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return "sd2"
    if any(k.startswith("cond_stage_model.transformer.") for k in keys):
        return "sd1"
    return None


_keys_cache: dict[tuple[str, int, int], tuple[str, ...]] = {}
_keys_lock = threading.Lock()
MAX_HEADER_BYTES = 100 * 1024 * 1024  # what safetensors itself accepts


def safetensors_keys(path: Path) -> tuple[str, ...]:
    """The tensor names of a ``.safetensors`` file, from its JSON header alone (no torch, no weights);
    cached by path, size and modification time. ValueError when it is not a safetensors file."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _keys_lock:
        if key in _keys_cache:
            return _keys_cache[key]
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ValueError(f"{path.name}: too short to be a .safetensors file")
        (length,) = struct.unpack("<Q", raw)
        if not 2 <= length <= min(MAX_HEADER_BYTES, stat.st_size - 8):
            raise ValueError(f"{path.name}: not a .safetensors file (bad header length)")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ValueError(f"{path.name}: not a .safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path.name}: not a .safetensors file (its header is not a table)")
    names = tuple(k for k in header if k != "__metadata__")
    with _keys_lock:
        if len(_keys_cache) > 256:
            _keys_cache.clear()
        _keys_cache[key] = names
    return names
