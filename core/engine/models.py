"""Model sources, safe loading, an LRU of loaded pipelines, and A1111's short model hash.

A configured model is a hub id, a diffusers folder, or a single-file ``.safetensors`` checkpoint in
A1111's (LDM) layout. Discord users pick models by configured name only; a name that is not
configured resolves only to a file or folder *inside* the configured model folders. Paths are
accepted only when the caller says so (the operator's CLI). Pickle checkpoints are refused unless
the operator allows them, and even then only ``weights_only`` loading is used.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pickle
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.config import EngineSettings, ModelSettings
from core.engine.catalog import (
    configured_name_of,
    default_model_name,
    kind_of_keys,
    looks_like_hub_id,
    model_names,
    no_model_hint,
)
from core.engine.skeleton import cache_dir, skeleton_dir
from core.types import GenerationError

log = logging.getLogger(__name__)

SAFE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
KINDS = ("auto", "sd1", "sd2", "sdxl")
PREDICTIONS = ("auto", "eps", "v")

PICKLE_HELP = (
    "{name}: pickle checkpoints ({suffix}) can run arbitrary code when loaded, so chant refuses them. "
    'Convert it once to .safetensors, e.g. `python -c "import torch, safetensors.torch as st; '
    "sd = torch.load('{name}', weights_only=True); sd = sd.get('state_dict', sd); "
    "st.save_file({{k: v.contiguous() for k, v in sd.items() if hasattr(v, 'contiguous')}}, "
    "'{stem}.safetensors')\"`, or set engine.allow_pickle = true (loads with weights_only=True)."
)


class ModelError(GenerationError):
    """A model cannot be found, is not allowed, or is not a Stable Diffusion checkpoint."""


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from, after name resolution."""

    name: str  # configured name (or the file/folder stem for operator paths)
    location: str  # hub id, or an absolute path
    is_hub: bool = False
    vae: str | None = None  # absolute path or hub id of a VAE override
    kind: str = "auto"
    clip_skip: int = 1
    config: str | None = None  # skeleton folder override for single files
    prediction: str = "auto"  # auto | eps | v (the operator's override)
    zero_terminal_snr: bool | None = None  # None: from the checkpoint


def _inside(path: Path, folders: tuple[str, ...]) -> bool:
    resolved = path.resolve()
    return any(resolved.is_relative_to(Path(folder).resolve()) for folder in folders)


def find_in_folders(name: str, folders: tuple[str, ...], suffixes: tuple[str, ...]) -> Path | None:
    """``name`` (with or without a suffix) inside one of ``folders``; never outside them.

    Names are plain: no absolute paths, no ``..``, and the resolved file (symlinks followed) must
    stay inside its folder.
    """
    if not name or name.strip() != name or "\x00" in name:
        return None
    candidate_name = Path(name)
    if candidate_name.is_absolute() or ".." in candidate_name.parts or name.startswith("~"):
        raise ModelError(f"{name!r} is not a plain name: names may not contain paths that leave the folder")
    for folder in folders:
        base = Path(folder)
        options = [base / name] + [base / (name + s) for s in suffixes]
        for option in options:
            if option.exists():
                if not _inside(option, (folder,)):
                    raise ModelError(f"{name!r} resolves outside the configured folder {folder}")
                return option.resolve()
    return None


def check_file_allowed(path: Path, allow_pickle: bool) -> None:
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES and not allow_pickle:
        raise ModelError(PICKLE_HELP.format(name=path.name, suffix=suffix, stem=path.stem))
    if path.is_file() and suffix not in SAFE_SUFFIXES + PICKLE_SUFFIXES:
        raise ModelError(f"{path.name}: not a model file (expected .safetensors)")


def _from_settings(name: str, model: ModelSettings) -> ModelSource:
    source = model.source
    path = Path(source).expanduser()
    is_hub = not path.exists() and looks_like_hub_id(source)
    if not is_hub and not path.exists():
        raise ModelError(f"model {name!r}: {source} does not exist (and is not a hub id like org/name)")
    if model.kind not in KINDS:
        raise ModelError(f"model {name!r}: kind must be one of {', '.join(KINDS)}, not {model.kind!r}")
    if model.prediction not in PREDICTIONS:
        raise ModelError(
            f"model {name!r}: prediction must be one of {', '.join(PREDICTIONS)}, not {model.prediction!r}"
        )
    vae = None
    if model.vae:
        vae_path = Path(model.vae).expanduser()
        vae = str(vae_path.resolve()) if vae_path.exists() else model.vae
    return ModelSource(
        name=name,
        location=source if is_hub else str(path.resolve()),
        is_hub=is_hub,
        vae=vae,
        kind=model.kind,
        clip_skip=model.clip_skip,
        config=getattr(model, "config", None),
        prediction=model.prediction,
        zero_terminal_snr=model.zero_terminal_snr,
    )


def resolve_model(settings: EngineSettings, name: str | None, *, allow_paths: bool = False) -> ModelSource:
    """Turn a request's model name (or, for the operator's CLI only, a path) into a source."""
    if name is None or name == "":
        name = default_model_name(settings)
        if name is None:
            raise ModelError(f"no model: {no_model_hint(settings)}")
    if name in settings.models:
        return _from_settings(name, settings.models[name])
    if allow_paths:
        path = Path(name).expanduser()
        if path.exists():
            if (configured := configured_name_of(settings, path)) is not None:
                return _from_settings(configured, settings.models[configured])
            check_file_allowed(path, settings.allow_pickle)
            return ModelSource(name=path.stem if path.is_file() else path.name, location=str(path.resolve()))
    found = find_in_folders(name, settings.model_dirs, SAFE_SUFFIXES + PICKLE_SUFFIXES)
    if found is None:
        known = ", ".join(model_names(settings)[:20]) or "none"
        raise ModelError(f"unknown model {name!r} (known: {known})")
    if (configured := configured_name_of(settings, found)) is not None:
        return _from_settings(configured, settings.models[configured])  # its table: prediction, VAE, ...
    check_file_allowed(found, settings.allow_pickle)
    return ModelSource(name=name, location=str(found))


def resolve_vae(settings: EngineSettings, name: str | None) -> str | None:
    """A request's VAE override by name, inside the configured VAE folders only."""
    if not name:
        return None
    found = find_in_folders(name, settings.vae_dirs, SAFE_SUFFIXES)
    if found is None:
        raise ModelError(f"unknown VAE {name!r}")
    check_file_allowed(found, settings.allow_pickle)
    return str(found)


# --- single-file detection -----------------------------------------------------------------------


def detect_kind(path: Path, keys: list[str] | None = None) -> str:
    """SD1.x / SD2.x / SDXL from the tensor names of an A1111/LDM single file (reads no weights)."""
    kind = kind_of_keys(_checkpoint_keys(path) if keys is None else keys)
    if kind is not None:
        return kind
    raise ModelError(f"{path.name}: not an SD 1.x, SD 2.x or SDXL checkpoint in A1111 (LDM) layout")


def _checkpoint_keys(path: Path) -> list[str]:
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return list(f.keys())
        except Exception as exc:
            raise ModelError(f"{path.name}: not a readable .safetensors file ({exc})") from None
    import torch

    try:
        state = torch.load(str(path), map_location="meta", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelError(unpickling_refused(path, exc)) from None
    state = state.get("state_dict", state)
    return list(state)


def unpickling_refused(path: Path, exc: BaseException) -> str:
    """One line for a pickle that ``weights_only`` loading refused (it needs code run to load)."""
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (
        f"{path.name}: refused: this pickle file holds Python objects, not only tensors, and chant never runs "
        f"code to load a model (torch.load weights_only=True said: {reason[:160]}). Convert it to .safetensors "
        "with a tool you trust, or use another copy of the model"
    )


def check_folder_allowed(folder: Path, allow_pickle: bool) -> None:
    """A diffusers folder whose weights are pickles (``.bin``, ``.ckpt``, ...) with no ``.safetensors`` next to
    them is refused before anything is read, unless the operator allows pickles."""
    if allow_pickle:
        return
    for component in [folder, *sorted(p for p in folder.iterdir() if p.is_dir())]:
        files = [f for f in component.iterdir() if f.is_file()]
        pickled = [f for f in files if f.suffix.lower() in PICKLE_SUFFIXES]
        if pickled and not any(f.suffix.lower() in SAFE_SUFFIXES for f in files):
            raise ModelError(
                f"{folder.name}: {pickled[0].relative_to(folder)} is a pickle weights file and the folder has "
                "no .safetensors for it; chant refuses pickles (they can run code when loaded). Convert the "
                "folder to .safetensors, or set engine.allow_pickle = true (loads with weights_only=True)"
            )


# --- A1111 short hash ------------------------------------------------------------------------------

_hash_lock = threading.Lock()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def short_hash(path: Path | str, cache_file: Path | None = None) -> str:
    """A1111's model hash: the first 10 hex digits of the file's sha256, computed once and cached.

    The cache (JSON) is keyed by absolute path, size and modification time, so a replaced file is
    hashed again.
    """
    path = Path(path).resolve()
    cache_file = cache_file or cache_dir() / "hashes.json"
    stat = path.stat()
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    with _hash_lock:
        try:
            cache = json.loads(cache_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            cache = {}
        if key in cache:
            return cache[key][:10]
        full = sha256_file(path)
        cache[key] = full
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=0), encoding="utf-8")
        tmp.replace(cache_file)
        return full[:10]


def _weights_file_of_folder(folder: Path) -> Path | None:
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors"):
        if (folder / "unet" / name).exists():
            return folder / "unet" / name
    return None


# --- loading ---------------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """A loaded pipeline and what the engine needs to know about it."""

    source: ModelSource
    kind: str  # sd1 | sd2 | sdxl
    pipe: Any  # StableDiffusionPipeline | StableDiffusionXLPipeline (components only; never called)
    hash: str
    device: Any
    dtype: Any
    load_seconds: float
    noise: Any = None  # core.engine.sampling.NoiseSchedule: ᾱ (LDM or ZTSNR) and eps / v prediction

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.pipe.vae.config.block_out_channels) - 1)


def cuda_unusable_reason(torch) -> str | None:
    """Why CUDA cannot be used in this process, in words an operator can act on (None: it can)."""
    if torch.version.cuda is None:
        return (
            f"this torch ({torch.__version__}) is a CPU-only build; install a CUDA build of torch "
            "(README, \"GPU install\")"
        )
    try:
        torch.cuda.init()
    except Exception as exc:  # driver missing or too old, no device node, ...
        return f"torch {torch.__version__} (CUDA {torch.version.cuda}) cannot start CUDA: {exc}"
    if torch.cuda.device_count() == 0:
        return "no CUDA GPU is visible to this process (check the driver and CUDA_VISIBLE_DEVICES)"
    return None


def torch_device_and_dtype(settings: EngineSettings, device: str | None = None):
    """The torch device and dtype ``settings`` ask for. ``auto`` takes CUDA when it works, else the
    CPU with a WARNING that says why; ``cuda``/``cuda:N`` that cannot work is an error, never a CPU run."""
    import torch

    device = device or settings.device
    if device == "auto":
        reason = cuda_unusable_reason(torch)
        if reason:
            log.warning("engine.device = auto: running on the CPU (slow): %s", reason)
        device = "cpu" if reason else "cuda"
    elif device.startswith("cuda"):
        reason = cuda_unusable_reason(torch)
        if reason:
            raise ModelError(f"engine.device = {device!r}, but CUDA is unusable: {reason}")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ModelError(
                f"engine.device = {device!r}, but this machine has {torch.cuda.device_count()} CUDA GPU(s) "
                f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})"
            )
    elif device != "cpu":
        raise ModelError(f"engine.device must be auto, cpu, cuda or cuda:N, not {device!r}")
    dev = torch.device(device)
    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    if settings.dtype == "auto":
        dtype = torch.float16 if dev.type == "cuda" else torch.float32
    elif settings.dtype in dtypes:
        dtype = dtypes[settings.dtype]
    else:
        raise ModelError(f"engine.dtype must be auto, fp16, bf16 or fp32, not {settings.dtype!r}")
    if dev.type == "cpu" and dtype == torch.float16:
        dtype = torch.float32  # fp16 convolutions are not implemented (or far too slow) on CPU
    return dev, dtype


def _kind_of_pipe(pipe) -> str:
    if getattr(pipe, "text_encoder_2", None) is not None:
        return "sdxl"
    # SD 2.x: OpenCLIP-H (width 1024), whose tokenizer pads with "!" (id 0) instead of the end token.
    tokenizer = getattr(pipe, "tokenizer", None)
    pads_with_zero = tokenizer is not None and tokenizer.pad_token_id == 0
    return "sd2" if pads_with_zero or pipe.text_encoder.config.hidden_size == 1024 else "sd1"


def load_model(source: ModelSource, device, dtype, *, allow_pickle: bool = False) -> LoadedModel:
    """Load a pipeline's components (on ``device`` in ``dtype``) from any supported source."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.pipelines.pipeline_utils import DiffusionPipeline

    start = time.perf_counter()
    location = Path(source.location)
    common = {"torch_dtype": dtype}
    try:
        if source.is_hub or location.is_dir():
            kwargs = dict(common)
            if not source.is_hub:
                kwargs["local_files_only"] = True
            if _pipeline_has_safety_checker(location, source.is_hub):
                kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
            if not source.is_hub:
                check_folder_allowed(location, allow_pickle)
            if not allow_pickle:
                kwargs["use_safetensors"] = True  # a hub repo with pickle weights only is refused, unread
            pipe = DiffusionPipeline.from_pretrained(source.location, **kwargs)
            if not hasattr(pipe, "unet") or not hasattr(pipe, "text_encoder"):
                raise ModelError(f"{source.name}: not a Stable Diffusion pipeline ({type(pipe).__name__})")
            weights = _weights_file_of_folder(location) if not source.is_hub else None
            model_hash = short_hash(weights) if weights else ""
            scheduler = pipe.scheduler.config
            found = (
                scheduler.get("prediction_type") == "v_prediction",
                bool(scheduler.get("rescale_betas_zero_snr")),
            )
        else:
            check_file_allowed(location, allow_pickle)
            keys = _checkpoint_keys(location)
            kind = detect_kind(location, keys) if source.kind == "auto" else source.kind
            config = source.config or str(_skeleton_for(kind, source))
            if kind not in ("sd1", "sd2", "sdxl"):
                raise ModelError(f"{source.name}: unknown model kind {kind!r}")
            cls = StableDiffusionXLPipeline if kind == "sdxl" else StableDiffusionPipeline
            pipe = cls.from_single_file(str(location), config=config, local_files_only=True, **common)
            model_hash = short_hash(location)
            # A1111 1.10, Forge, ComfyUI: v-prediction and ZTSNR checkpoints carry empty tensors named
            # "v_pred" and "ztsnr"; SD 2.x 768-v is found by A1111's test on the UNet.
            v_pred = "v_pred" in keys
            if not v_pred and source.config:
                v_pred = pipe.scheduler.config.get("prediction_type") == "v_prediction"
            elif not v_pred and kind == "sd2":
                v_pred = uses_v_prediction(pipe.unet)
            found = (v_pred, "ztsnr" in keys)
        if source.vae:
            pipe.vae = _load_vae(source.vae, pipe, dtype, allow_pickle)
    except ModelError:
        raise
    except pickle.UnpicklingError as exc:
        raise ModelError(unpickling_refused(location, exc)) from None
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelError(f"could not load model {source.name!r}: {exc}") from exc
    if hasattr(pipe, "safety_checker"):
        pipe.safety_checker = None
    pipe.to(device)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None)):
        if module is not None:
            module.requires_grad_(False).eval()
    seconds = time.perf_counter() - start
    kind = _kind_of_pipe(pipe)
    log.info("loaded model %s (%s) in %.2f s on %s/%s", source.name, kind, seconds, device, dtype)
    return LoadedModel(
        source=source,
        kind=kind,
        pipe=pipe,
        hash=model_hash,
        device=device,
        dtype=dtype,
        load_seconds=seconds,
        noise=noise_schedule(source, *found),
    )


def noise_schedule(source: ModelSource, v_pred: bool, ztsnr: bool):
    """The model's noise schedule for the samplers: A1111's LDM ᾱ (ZTSNR-rescaled for a ``ztsnr``
    checkpoint), eps or v prediction as the checkpoint says, unless the model's settings override it."""
    from core.engine.sampling import NoiseSchedule

    prediction = ("v" if v_pred else "eps") if source.prediction == "auto" else source.prediction
    if source.zero_terminal_snr is not None:
        ztsnr = source.zero_terminal_snr
    log.info("model %s: %s prediction%s", source.name, prediction, ", zero terminal SNR" if ztsnr else "")
    return NoiseSchedule.ldm(prediction, zero_terminal_snr=ztsnr)


def _pipeline_has_safety_checker(location: Path, is_hub: bool) -> bool:
    """SD 1.x/2.x repos name a safety checker; chant never loads it (the bot has its own rules)."""
    if is_hub:
        return True  # an unexpected keyword is only ignored with a warning by other pipelines
    try:
        index = json.loads((location / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return "safety_checker" in index


def _skeleton_for(kind: str, source: ModelSource) -> Path:
    return skeleton_dir(kind)


def uses_v_prediction(unet) -> bool:
    """A1111's test for SD 2.x checkpoints: a v-prediction UNet maps a flat 0.5 input at t=999 far
    below it (``sd_models_config.is_using_v_parameterization_for_sd2``)."""
    import torch

    parameter = next(unet.parameters())
    width = unet.config.cross_attention_dim
    with torch.no_grad():
        context = torch.ones((1, 2, width), device=parameter.device, dtype=parameter.dtype) * 0.5
        x = (
            torch.ones((1, unet.config.in_channels, 8, 8), device=parameter.device, dtype=parameter.dtype)
            * 0.5
        )
        t = torch.tensor([999], device=parameter.device)
        out = (unet(x, t, encoder_hidden_states=context).sample.float() - x.float()).mean().item()
    return out < -1


def _load_vae(vae: str, pipe, dtype, allow_pickle: bool = False):
    from diffusers import AutoencoderKL

    path = Path(vae)
    if path.is_dir():
        check_folder_allowed(path, allow_pickle)
        return AutoencoderKL.from_pretrained(str(path), torch_dtype=dtype, local_files_only=True)
    if path.is_file():
        check_file_allowed(path, allow_pickle=False)
        config = dict(pipe.vae.config)
        model = AutoencoderKL.from_single_file(
            str(path), config=_vae_config_folder(config), local_files_only=True, torch_dtype=dtype
        )
        return model
    return AutoencoderKL.from_pretrained(vae, torch_dtype=dtype)


def _vae_config_folder(config: dict[str, Any]) -> str:
    """A folder holding the pipeline's own VAE config, for ``from_single_file(config=...)``."""
    clean = {k: v for k, v in config.items() if not k.startswith("_")}
    clean["_class_name"] = "AutoencoderKL"
    text = json.dumps(clean, sort_keys=True, default=list)
    folder = cache_dir() / "vae-configs" / hashlib.sha256(text.encode()).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(text, encoding="utf-8")
    return str(folder)


class ModelCache:
    """At most ``max_loaded`` models stay loaded; the least recently used one is dropped first."""

    def __init__(self, max_loaded: int = 1, allow_pickle: bool = False) -> None:
        self.max_loaded = max(1, max_loaded)
        self.allow_pickle = allow_pickle
        self._models: OrderedDict[tuple, LoadedModel] = OrderedDict()
        self._lock = threading.RLock()
        self.on_load = None  # called with each newly loaded or adopted model (compile, offload)
        self.load_device = None  # load here instead of the run device (model CPU offload: "cpu")

    def get(self, source: ModelSource, device, dtype) -> LoadedModel:
        key = (source, str(device), str(dtype))
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            while len(self._models) >= self.max_loaded:
                _, old = self._models.popitem(last=False)
                log.info("unloading model %s (LRU, max_loaded_models=%d)", old.name, self.max_loaded)
                del old
                _free_memory()
            model = load_model(source, self.load_device or device, dtype, allow_pickle=self.allow_pickle)
            if self.on_load is not None:
                self.on_load(model)
            self._models[key] = model
            return model

    def put(self, model: LoadedModel) -> None:
        """Adopt an already built model (benchmarks with random weights)."""
        if self.on_load is not None:
            self.on_load(model)
        with self._lock:
            self._models[(model.source, str(model.device), str(model.dtype))] = model
            while len(self._models) > self.max_loaded:
                self._models.popitem(last=False)

    def loaded_names(self) -> list[str]:
        with self._lock:
            return [m.name for m in self._models.values()]

    def clear(self) -> None:
        with self._lock:
            self._models.clear()
        _free_memory()


def load_for_request(
    cache: ModelCache,
    settings: EngineSettings,
    name: str | None,
    vae: str | None,
    device,
    dtype,
    *,
    allow_paths: bool = False,
) -> LoadedModel:
    """The engine's one loader: model ``name`` (configured name; a path only with ``allow_paths``) from
    ``cache`` (LRU), with VAE override ``vae`` (a configured VAE name) and the engine's VAE switches."""
    source = resolve_model(settings, name, allow_paths=allow_paths)
    if vae:
        source = dataclasses.replace(source, vae=resolve_vae(settings, vae))
    model = cache.get(source, device, dtype)
    if settings.vae_tiling:
        model.pipe.vae.enable_tiling()
    if settings.vae_slicing:
        model.pipe.vae.enable_slicing()
    return model


def _free_memory() -> None:
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass
