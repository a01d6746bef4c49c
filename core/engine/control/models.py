"""ControlNet models: find them by name, read their architecture from the file, load, cache.

Models live in the configured ``engine.controlnet_dirs`` (``models/ControlNet``), laid out as
sd-webui-controlnet has them: single ``.safetensors`` files in the original (LDM, ``control_model.…``)
or the diffusers key layout, optionally with a ``.yaml`` of the same name beside; or a diffusers folder
(``config.json`` + weights). A name resolves inside those folders only; pickles (``.pth``/``.ckpt``) are
refused unless ``engine.allow_pickle``, and then loaded with ``weights_only=True``.

A single file carries no config, so it is read from the tensor shapes (levels, channels, layers,
attention depth, conditioning channels, SDXL's added embedding, union task embeddings). What shapes
cannot tell — attention heads, SDXL's time-id width, norm groups — a ControlNet shares with the UNet it
was trained from, so it comes from the base model's UNet config (a ``.yaml`` beside can set the heads
and ``global_average_pooling``, as sd-webui-controlnet reads them). The base family (SD 1.x / 2.x /
SDXL) is checked against the model's before anything runs.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from core.config import EngineSettings
from core.engine.control.available import (  # noqa: F401 (listed here for the engine's callers)
    IP_ADAPTER_WORDS,
    is_diffusers_folder,
    list_controlnets,
    list_ip_adapters,
)
from core.engine.control.infotext import legacy_model_hash, model_label
from core.engine.models import PICKLE_SUFFIXES, SAFE_SUFFIXES, ModelError, check_file_allowed, find_in_folders

log = logging.getLogger(__name__)

LDM_PREFIX = "control_model."
_LABEL = re.compile(r"^(.*?)\s*\[[0-9a-fA-F]{8,10}\]$")


@dataclass
class LoadedControlNet:
    """A ControlNet ready to run, and what the denoising loop and the infotext need to know."""

    name: str
    path: Path
    kind: str  # sd1 | sd2 | sdxl
    model: Any  # diffusers ControlNetModel | ControlNetUnionModel
    label: str  # "name [hash]", as sd-webui-controlnet writes it
    device: Any
    dtype: Any
    load_seconds: float = 0.0

    @property
    def is_union(self) -> bool:
        return type(self.model).__name__ == "ControlNetUnionModel"

    @property
    def n_residuals(self) -> int:
        """Outputs per call: one per encoder block plus the middle block (SD1.5: 13, SDXL: 10)."""
        return len(self.model.controlnet_down_blocks) + 1

    @property
    def global_pool(self) -> bool:
        return bool(self.model.config.global_pool_conditions)


# --- names ---------------------------------------------------------------------------------------


_is_diffusers_folder = is_diffusers_folder


def resolve_controlnet(settings: EngineSettings, name: str) -> Path:
    """A ControlNet by name (``stem``, ``stem [hash]`` or ``sub/stem``) inside the configured folders only."""
    label = _LABEL.match(name or "")
    plain = label.group(1) if label else name
    found = find_in_folders(plain, settings.controlnet_dirs, SAFE_SUFFIXES + PICKLE_SUFFIXES)
    if found is None or (found.is_dir() and not _is_diffusers_folder(found)):
        known = list_controlnets(settings)
        hint = f" (have: {', '.join(known[:20])})" if known else f" (none in {', '.join(settings.controlnet_dirs)})"
        raise ModelError(f"unknown ControlNet {name!r}{hint}")
    if found.is_file():
        check_file_allowed(found, settings.allow_pickle)
    return found


# --- reading the file ----------------------------------------------------------------------------


def read_state_dict(path: Path, *, allow_pickle: bool) -> dict[str, torch.Tensor]:
    check_file_allowed(path, allow_pickle)
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:
            raise ModelError(f"{path.name}: not a readable .safetensors file ({exc})") from None
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    if not isinstance(state, dict):
        raise ModelError(f"{path.name}: not a state dict")
    return state


def _refuse_other_kinds(keys: set[str], name: str) -> None:
    if "lora_controlnet" in keys:
        raise ModelError(f"{name}: Control-LoRA models are not supported (use a full ControlNet)")
    if any(k.startswith("image_proj.") for k in keys) and any(k.startswith("ip_adapter.") for k in keys):
        raise ModelError(f"{name}: this is an IP-Adapter model; use it as a reference image, not a ControlNet")
    if any("lllite" in k for k in keys):
        raise ModelError(f"{name}: ControlNet-LLLite models are not supported")
    if "input_hint_block.0.weight" not in keys and "controlnet_cond_embedding.conv_in.weight" not in keys:
        raise ModelError(f"{name}: not a ControlNet (T2I-Adapters and other control models are not supported)")


def to_diffusers_layout(state: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """The state dict in diffusers' key layout, converting the original (LDM) layout if needed."""
    if any(k.startswith(LDM_PREFIX) for k in state):
        state = {k[len(LDM_PREFIX) :]: v for k, v in state.items() if k.startswith(LDM_PREFIX)}
    _refuse_other_kinds(set(state), name)
    if "controlnet_cond_embedding.conv_in.weight" in state:
        return state
    if "task_embedding" in state:
        raise ModelError(f"{name}: union ControlNets are read in the diffusers layout only")
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    converted = convert_controlnet_checkpoint(state, {"layers_per_block": _ldm_layers_per_block(state)})
    # diffusers' conversion leaves out SDXL's added embedding (kohya-trained SDXL ControlNets have it).
    for ldm, hf in (("label_emb.0.0.", "add_embedding.linear_1."), ("label_emb.0.2.", "add_embedding.linear_2.")):
        for part in ("weight", "bias"):
            if ldm + part in state:
                converted[hf + part] = state[ldm + part]
    return {k: v for k, v in converted.items() if v is not None}


def _ldm_layers_per_block(state: Mapping[str, Any]) -> int:
    """Resnets before the first downsampler (``input_blocks.N.0.op``) in the original layout."""
    for n in range(1, 64):
        if f"input_blocks.{n}.0.op.weight" in state:
            return n - 1
    raise ModelError("not a ControlNet: no downsampling block in input_blocks")


def _count(keys: Iterable[str], pattern: str) -> int:
    regex = re.compile(pattern)
    return len({m.group(1) for k in keys if (m := regex.match(k))})


# What a ControlNet shares with the UNet it was trained from but its tensor shapes do not show.
_INHERITED = (
    "attention_head_dim", "num_attention_heads", "norm_num_groups", "norm_eps", "act_fn", "flip_sin_to_cos",
    "freq_shift", "upcast_attention", "resnet_time_scale_shift", "only_cross_attention", "downsample_padding",
    "mid_block_scale_factor", "addition_time_embed_dim",
)  # fmt: skip


def derive_config(state: Mapping[str, Any], base_unet_config: Mapping[str, Any]) -> dict[str, Any]:
    """A diffusers ControlNet config for a diffusers-layout state dict, from its shapes + the base UNet's."""
    keys = list(state)
    levels = _count(keys, r"^down_blocks\.(\d+)\.")
    shape = {k: tuple(v.shape) for k, v in state.items()}
    channels = [shape[f"down_blocks.{i}.resnets.0.conv1.weight"][0] for i in range(levels)]
    attention = [f"down_blocks.{i}.attentions.0.proj_in.weight" in shape for i in range(levels)]
    depth = [max(1, _count(keys, rf"^down_blocks\.{i}\.attentions\.0\.transformer_blocks\.(\d+)\.")) for i in range(levels)]
    cross = [v[1] for k, v in shape.items() if k.endswith("attn2.to_k.weight")]
    proj_in = [v for k, v in shape.items() if k.endswith("proj_in.weight")]
    n_embed_blocks = _count(keys, r"^controlnet_cond_embedding\.blocks\.(\d+)\.")
    embed_out = [shape["controlnet_cond_embedding.conv_in.weight"][0]] + [
        shape[f"controlnet_cond_embedding.blocks.{j}.weight"][0] for j in range(1, n_embed_blocks, 2)
    ]
    config: dict[str, Any] = {k: base_unet_config[k] for k in _INHERITED if k in base_unet_config}
    config.update(
        in_channels=shape["conv_in.weight"][1],
        conditioning_channels=shape["controlnet_cond_embedding.conv_in.weight"][1],
        conditioning_embedding_out_channels=tuple(embed_out),
        block_out_channels=tuple(channels),
        layers_per_block=_count(keys, r"^down_blocks\.0\.resnets\.(\d+)\."),
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        transformer_layers_per_block=tuple(depth),
        cross_attention_dim=cross[0] if cross else base_unet_config.get("cross_attention_dim"),
        use_linear_projection=bool(proj_in) and len(proj_in[0]) == 2,
        mid_block_type="UNetMidBlock2DCrossAttn" if any(k.startswith("mid_block.attentions.") for k in keys) else "UNetMidBlock2D",
    )  # fmt: skip
    if "add_embedding.linear_1.weight" in shape:
        config.update(
            addition_embed_type="text_time",
            projection_class_embeddings_input_dim=shape["add_embedding.linear_1.weight"][1],
        )
        config.setdefault("addition_time_embed_dim", 256)  # every SDXL: 6 time ids of 256
    else:
        config.pop("addition_time_embed_dim", None)
    if "task_embedding" in shape:
        config.update(
            num_control_type=shape["task_embedding"][0],
            num_trans_channel=shape["task_embedding"][1],
            num_trans_layer=_count(keys, r"^transformer_layes\.(\d+)\."),
            num_proj_channel=shape["spatial_ch_projs.weight"][0],
        )
        config.pop("mid_block_type")  # the union model has no choice of middle block
    return config


def kind_of(config: Mapping[str, Any]) -> str:
    """SD 1.x / 2.x / SDXL, as the base family of a ControlNet or UNet config."""
    if config.get("addition_embed_type") == "text_time":
        return "sdxl"
    return "sd2" if config.get("cross_attention_dim") == 1024 else "sd1"


def _yaml_overrides(path: Path) -> dict[str, Any]:
    """sd-webui-controlnet's optional ``NAME.yaml`` beside a file: heads and global average pooling."""
    yaml_path = path.with_suffix(".yaml")
    if not yaml_path.is_file():
        return {}
    import yaml

    try:
        data = yaml.safe_load(yaml_path.read_text(encoding="utf-8"))
        params = data["model"]["params"]["control_stage_config"]["params"]
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError) as exc:
        raise ModelError(f"{yaml_path.name}: not a ControlNet config ({exc})") from None
    out: dict[str, Any] = {"global_pool_conditions": bool(params.get("global_average_pooling", False))}
    channels = params.get("num_head_channels", -1)
    if channels and channels > 0:
        mult = params.get("channel_mult", (1, 2, 4, 4))
        out["attention_head_dim"] = tuple(params["model_channels"] * m // channels for m in mult)
    elif params.get("num_heads", -1) > 0:
        out["attention_head_dim"] = params["num_heads"]
    return out


def _build(state: dict[str, torch.Tensor], config: dict[str, Any], name: str):
    from accelerate import init_empty_weights
    from diffusers import ControlNetModel, ControlNetUnionModel

    cls = ControlNetUnionModel if "task_embedding" in state else ControlNetModel
    try:
        with init_empty_weights():
            model = cls.from_config(config)
        model.load_state_dict(state, strict=True, assign=True)
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{name}: the weights do not fit the architecture read from them ({exc})") from exc
    return model


def load_controlnet(
    path: Path, base_unet_config: Mapping[str, Any], device, dtype, *, allow_pickle: bool = False
) -> LoadedControlNet:
    """Load the ControlNet at ``path`` (file or diffusers folder) for a base model with this UNet config."""
    start = time.perf_counter()
    name = path.stem if path.is_file() else path.name
    base_kind = kind_of(base_unet_config)
    if path.is_dir():
        from diffusers import ControlNetModel, ControlNetUnionModel

        raw = (path / "config.json").read_text(encoding="utf-8")
        cls = ControlNetUnionModel if '"ControlNetUnionModel"' in raw else ControlNetModel
        try:
            model = cls.from_pretrained(str(path), local_files_only=True, torch_dtype=dtype)
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelError(f"could not load ControlNet {name!r}: {exc}") from exc
        weights = next((p for p in sorted(path.glob("*.safetensors"))), None)
        model_hash = legacy_model_hash(weights) if weights else None
    else:
        state = to_diffusers_layout(read_state_dict(path, allow_pickle=allow_pickle), name)
        config = derive_config(state, base_unet_config)
        config.update(_yaml_overrides(path))
        if "shuffle" in name.lower() and "task_embedding" not in state:
            config.setdefault("global_pool_conditions", True)  # sd-webui-controlnet: shuffle models pool
        kind = kind_of(config)
        if kind != base_kind:
            raise ModelError(f"ControlNet {name!r} is for {_FAMILY[kind]} models, this model is {_FAMILY[base_kind]}")
        model = _build(state, config, name)
        model_hash = legacy_model_hash(path)
    kind = kind_of(model.config)
    if kind != base_kind:
        raise ModelError(f"ControlNet {name!r} is for {_FAMILY[kind]} models, this model is {_FAMILY[base_kind]}")
    model.to(device=device, dtype=dtype).requires_grad_(False).eval()
    seconds = time.perf_counter() - start
    log.info("loaded ControlNet %s (%s) in %.2f s", name, kind, seconds)
    return LoadedControlNet(
        name=name, path=path, kind=kind, model=model, label=model_label(name, model_hash),
        device=device, dtype=dtype, load_seconds=seconds,
    )  # fmt: skip


_FAMILY = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}


class ControlNetCache:
    """At most ``max_loaded`` ControlNets stay loaded; the least recently used one goes first."""

    def __init__(self, max_loaded: int = 2, allow_pickle: bool = False) -> None:
        self.max_loaded = max(1, max_loaded)
        self.allow_pickle = allow_pickle
        self._nets: OrderedDict[tuple, LoadedControlNet] = OrderedDict()
        self._lock = threading.RLock()

    def get(self, path: Path, base_unet_config: Mapping[str, Any], device, dtype) -> LoadedControlNet:
        stat = path.stat()
        # The base UNet decides heads and norm groups, so a file is loaded once per such base.
        base = tuple(sorted((k, repr(v)) for k, v in base_unet_config.items() if k in _INHERITED))
        key = (str(path), stat.st_mtime_ns, base, str(device), str(dtype))
        with self._lock:
            if key in self._nets:
                self._nets.move_to_end(key)
                return self._nets[key]
            while len(self._nets) >= self.max_loaded:
                _, old = self._nets.popitem(last=False)
                log.info("unloading ControlNet %s (LRU)", old.name)
            net = load_controlnet(path, base_unet_config, device, dtype, allow_pickle=self.allow_pickle)
            self._nets[key] = net
            return net

    def loaded_names(self) -> list[str]:
        with self._lock:
            return [n.name for n in self._nets.values()]

    def clear(self) -> None:
        with self._lock:
            self._nets.clear()
