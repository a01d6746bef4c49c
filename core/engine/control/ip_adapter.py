"""Reference images (IP-Adapter): load an adapter and its image encoder, embed images, hook the UNet.

An IP-Adapter file (``ip-adapter_sd15.safetensors``, ``ip-adapter-plus_sdxl_vit-h.safetensors``,
``ip-adapter-plus-face_sd15.safetensors``, … in ``engine.controlnet_dirs``, as sd-webui-controlnet has
them) holds an image projection (``image_proj.*``) and, per cross-attention layer of the UNet, two
extra key/value projections (``ip_adapter.N.to_k_ip/to_v_ip``). Its image encoder is a CLIP vision
model (ViT-H/14 for most, ViT-bigG/14 for ``ip-adapter_sdxl``) in ``engine.clip_vision_dirs``: a
transformers folder or one ``.safetensors`` file in transformers' key layout.

The reference image becomes a few tokens (4 for the plain models, 16 for "plus"/"plus-face", 257
for "full face"), once per job: :func:`image_embeds` (diffusers' semantics: the unconditional rows get
the projection of a zero embedding, or for "plus" models of the encoder's view of a black image).
Each cross-attention of the UNet then also attends to those tokens and adds the result times the
scale: ``out = attn(q, text) + scale · attn(q, ip tokens)`` before the output projection, as diffusers'
``IPAdapterAttnProcessor2_0`` does, but with the tokens and a scale *per row* so jobs with different
reference images, scales or none at all share one UNet call. The UNet's own config and projections are
not touched: :func:`attach` swaps the cross-attention processors for the duration of a batch and puts
the originals back.

"style" applies the adapter in the layers sd-webui-controlnet's "style transfer" weight type (and
InstantStyle) uses: SDXL ``up_blocks.0.attentions.1`` only; SD 1.5 its first four input and last seven
output transformer blocks. Face ID models need InsightFace and are refused.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.config import EngineSettings
from core.engine.control.infotext import legacy_model_hash, model_label
from core.engine.control.models import kind_of, read_state_dict
from core.engine.models import PICKLE_SUFFIXES, SAFE_SUFFIXES, ModelError, check_file_allowed, find_in_folders

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# sd-webui-controlnet "style transfer" layers, as diffusers processor-name prefixes.
STYLE_LAYERS = {
    "sdxl": ("up_blocks.0.attentions.1.",),
    "sd1": (
        "down_blocks.0.attentions.", "down_blocks.1.attentions.", "up_blocks.1.attentions.2.",
        "up_blocks.2.attentions.", "up_blocks.3.attentions.",
    ),
}  # fmt: skip


@dataclass
class IPAdapter:
    """A loaded IP-Adapter: its image projection, per-layer key/value weights and image encoder."""

    name: str
    kind: str  # sd1 | sd2 | sdxl (the base family)
    variant: str  # plain | plus | full
    image_proj: nn.Module
    layers: dict[str, tuple[nn.Linear, nn.Linear]]  # attn2 processor name -> (to_k_ip, to_v_ip)
    encoder: Any  # transformers CLIPVisionModelWithProjection
    label: str  # "name [hash]" for the infotext
    num_tokens: int
    encoder_path: Path | None = None
    where: tuple[str, str] = ("cpu", "torch.float32")  # device and dtype it was loaded for

    @property
    def uses_hidden_states(self) -> bool:
        return self.variant != "plain"

    @property
    def module(self) -> str:
        """sd-webui-controlnet's preprocessor name for this adapter's encoder, for the infotext."""
        return "ip-adapter_clip_g" if self.encoder.config.hidden_size == 1664 else "ip-adapter_clip_h"


# --- files ---------------------------------------------------------------------------------------


def resolve_ip_adapter(settings: EngineSettings, name: str) -> Path:
    found = find_in_folders(re.sub(r"\s*\[[0-9a-fA-F]{8,10}\]$", "", name), settings.controlnet_dirs,
                            SAFE_SUFFIXES + PICKLE_SUFFIXES)  # fmt: skip
    if found is None or not found.is_file():
        raise ModelError(f"unknown IP-Adapter {name!r} (in {', '.join(settings.controlnet_dirs)})")
    check_file_allowed(found, settings.allow_pickle)
    return found


def _split(state: Mapping[str, Any], name: str) -> dict[str, dict[str, torch.Tensor]]:
    if "image_proj" in state and "ip_adapter" in state:  # the original .bin layout
        return {"image_proj": dict(state["image_proj"]), "ip_adapter": dict(state["ip_adapter"])}
    out: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        if head in out:
            out[head][rest] = value
    if not out["image_proj"] or not out["ip_adapter"]:
        raise ModelError(f"{name}: not an IP-Adapter (no image_proj.* and ip_adapter.* weights)")
    return out


def _variant(image_proj: Mapping[str, torch.Tensor], name: str) -> str:
    if "proj.weight" in image_proj:
        return "plain"
    if "proj.3.weight" in image_proj:
        return "full"
    if "latents" in image_proj:
        return "plus"
    raise ModelError(f"{name}: Face ID IP-Adapters need InsightFace, which chant does not include")


def _clip_vision_config(state: Mapping[str, torch.Tensor]):
    """A CLIP vision config read from a transformers-layout state dict (heads: 16, as ViT-L/H/bigG)."""
    from transformers import CLIPVisionConfig

    prefix = "vision_model."
    hidden = state[prefix + "embeddings.class_embedding"].shape[0]
    patch = state[prefix + "embeddings.patch_embedding.weight"].shape[-1]
    positions = state[prefix + "embeddings.position_embedding.weight"].shape[0]
    layers = len({k.split(".")[3] for k in state if k.startswith(prefix + "encoder.layers.")})
    return CLIPVisionConfig(
        hidden_size=hidden, intermediate_size=state[prefix + "encoder.layers.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=layers, num_attention_heads=16, patch_size=patch,
        image_size=round((positions - 1) ** 0.5) * patch, projection_dim=state["visual_projection.weight"].shape[0],
        hidden_act="gelu",
    )  # fmt: skip


def load_image_encoder(path: Path, device, dtype):
    """A CLIP vision encoder from a transformers folder or one ``.safetensors`` file."""
    from transformers import CLIPVisionModelWithProjection

    try:
        if path.is_dir():
            model = CLIPVisionModelWithProjection.from_pretrained(str(path), local_files_only=True, dtype=dtype)
        else:
            state = read_state_dict(path, allow_pickle=False)
            model = CLIPVisionModelWithProjection(_clip_vision_config(state))
            model.load_state_dict(state, strict=True)
    except (OSError, KeyError, RuntimeError, ValueError) as exc:
        raise ModelError(f"{path.name}: not a CLIP vision encoder chant can read ({exc})") from exc
    return model.to(device=device, dtype=dtype).requires_grad_(False).eval()


def _encoder_width(adapter_proj: Mapping[str, torch.Tensor], variant: str) -> tuple[str, int]:
    """Which encoder output the projection reads and its width: (``image_embeds``|``hidden``, width)."""
    if variant == "plain":
        return "projection_dim", adapter_proj["proj.weight"].shape[1]
    if variant == "full":
        return "hidden_size", adapter_proj["proj.0.weight"].shape[1]
    return "hidden_size", adapter_proj["proj_in.weight"].shape[1]


def find_image_encoder(settings: EngineSettings, field_name: str, width: int, name: str | None = None) -> Path:
    """The image encoder named ``name``, or the first in ``clip_vision_dirs`` whose width fits."""
    from transformers import CLIPVisionConfig

    candidates: list[Path] = []
    if name:
        found = find_in_folders(name, settings.clip_vision_dirs, SAFE_SUFFIXES)
        if found is None:
            raise ModelError(f"unknown image encoder {name!r} (in {', '.join(settings.clip_vision_dirs)})")
        candidates = [found]
    else:
        for folder in settings.clip_vision_dirs:
            base = Path(folder)
            if base.is_dir():
                candidates += sorted(p for p in base.iterdir() if p.suffix == ".safetensors" or (p / "config.json").is_file())
    for path in candidates:
        if path.is_dir():
            config = CLIPVisionConfig.from_pretrained(str(path), local_files_only=True)
        else:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:  # shapes only: no weights are read
                shapes = {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}  # noqa: SIM118
            config = _clip_vision_config(shapes)
        if getattr(config, field_name) == width:
            return path
    raise ModelError(
        f"no image encoder with {field_name} {width} in {', '.join(settings.clip_vision_dirs)} "
        "(IP-Adapter models need CLIP ViT-H/14 or, for ip-adapter_sdxl, ViT-bigG/14)"
    )


def encoder_for_adapter(settings: EngineSettings, path: Path, name: str | None = None) -> Path:
    """The image encoder an adapter file needs (by its projection's input width), from ``clip_vision_dirs``."""
    parts = _split(read_state_dict(path, allow_pickle=settings.allow_pickle), path.stem)
    return find_image_encoder(settings, *_encoder_width(parts["image_proj"], _variant(parts["image_proj"], path.stem)), name)


def load_ip_adapter(path: Path, unet, encoder, *, allow_pickle: bool = False) -> IPAdapter:
    """Load the adapter at ``path`` for ``unet`` (checked to fit), with a loaded image ``encoder``."""
    name = path.stem
    parts = _split(read_state_dict(path, allow_pickle=allow_pickle), name)
    variant = _variant(parts["image_proj"], name)
    field_name, width = _encoder_width(parts["image_proj"], variant)
    if getattr(encoder.config, field_name) != width:
        raise ModelError(f"{name}: needs an image encoder with {field_name} {width}, not {getattr(encoder.config, field_name)}")
    try:
        image_proj = unet._convert_ip_adapter_image_proj_to_diffusers(parts["image_proj"], low_cpu_mem_usage=False)
        processors = unet._convert_ip_adapter_attn_to_diffusers([parts], low_cpu_mem_usage=False)
    except (KeyError, RuntimeError) as exc:
        raise ModelError(f"{name}: does not fit this model's UNet ({exc})") from exc
    layers = {
        name_: (proc.to_k_ip[0], proc.to_v_ip[0]) for name_, proc in processors.items() if hasattr(proc, "to_k_ip")
    }
    parameter = next(unet.parameters())
    for module in (image_proj, *[m for pair in layers.values() for m in pair]):
        module.to(device=parameter.device, dtype=parameter.dtype).requires_grad_(False).eval()
    tokens = next(iter(processors[n] for n in layers)).num_tokens[0]
    return IPAdapter(
        name=name, kind=kind_of(dict(unet.config)), variant=variant, image_proj=image_proj, layers=layers,
        encoder=encoder, label=model_label(name, legacy_model_hash(path)), num_tokens=tokens,
    )  # fmt: skip


class IPAdapterCache:
    """Loaded adapters (with their image encoders) by file, encoder, base UNet family and device; LRU."""

    def __init__(self, max_loaded: int = 1, allow_pickle: bool = False) -> None:
        self.max_loaded = max(1, max_loaded)
        self.allow_pickle = allow_pickle
        self._adapters: OrderedDict[tuple, IPAdapter] = OrderedDict()
        self._encoders: dict[tuple, Any] = {}
        self._lock = threading.RLock()

    def get(self, path: Path, encoder_path: Path, unet) -> IPAdapter:
        parameter = next(unet.parameters())
        where = (str(parameter.device), str(parameter.dtype))
        key = (str(path), path.stat().st_mtime_ns, str(encoder_path), kind_of(dict(unet.config)), *where)
        with self._lock:
            if key in self._adapters:
                self._adapters.move_to_end(key)
                return self._adapters[key]
            while len(self._adapters) >= self.max_loaded:
                self._adapters.popitem(last=False)
            encoder_key = (str(encoder_path), *where)
            if encoder_key not in self._encoders:
                self._encoders[encoder_key] = load_image_encoder(encoder_path, parameter.device, parameter.dtype)
            adapter = load_ip_adapter(path, unet, self._encoders[encoder_key], allow_pickle=self.allow_pickle)
            adapter.encoder_path, adapter.where = encoder_path, where
            self._adapters[key] = adapter
            # An encoder stays while an adapter uses it (ViT-H is ~630M parameters: load it once).
            used = {(str(a.encoder_path), *a.where) for a in self._adapters.values()}
            self._encoders = {k: v for k, v in self._encoders.items() if k in used}
            return adapter


# --- embedding -----------------------------------------------------------------------------------


def clip_image_processor():
    """CLIP's preprocessing (shortest side 224 bicubic, centre crop, CLIP mean/std), torchvision-free."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    return CLIPImageProcessorPil(
        size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}, do_center_crop=True,
        do_normalize=True, do_resize=True, do_convert_rgb=True, image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD),
        resample=3,
    )  # fmt: skip


def image_embeds(adapter: IPAdapter, images: Sequence[Any], processor=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The IP tokens of a job's reference images: (conditional, unconditional), each (1, n·T, D).

    Several images give their tokens one after the other (diffusers' multi-image behaviour).
    """
    if not images:
        raise ValueError("a reference needs at least one image")
    processor = processor or clip_image_processor()
    parameter = next(adapter.image_proj.parameters())
    pixels = processor(list(images), return_tensors="pt").pixel_values.to(device=parameter.device, dtype=parameter.dtype)
    with torch.no_grad():
        if adapter.uses_hidden_states:
            cond = adapter.encoder(pixels, output_hidden_states=True).hidden_states[-2]
            uncond = adapter.encoder(torch.zeros_like(pixels), output_hidden_states=True).hidden_states[-2]
        else:
            cond = adapter.encoder(pixels).image_embeds
            uncond = torch.zeros_like(cond)
        tokens = [adapter.image_proj(x) for x in (cond, uncond)]
    return tuple(t.reshape(1, -1, t.shape[-1]) for t in tokens)  # type: ignore[return-value]


# --- the UNet hook -------------------------------------------------------------------------------


@dataclass
class IPRows:
    """The IP tokens (R, T, D) and scale (R,) of every row of the next UNet call; tokens None = off."""

    tokens: torch.Tensor | None = None
    scales: torch.Tensor | None = None


class IPAttnProcessor(nn.Module):
    """Cross-attention with the text and, per row, ``scale ·`` attention to the IP tokens.

    The arithmetic follows diffusers' ``IPAdapterAttnProcessor2_0`` (Apache-2.0), with a scale per row.
    """

    def __init__(self, to_k_ip: nn.Linear, to_v_ip: nn.Linear, rows: IPRows, layer_scale: float) -> None:
        super().__init__()
        self.to_k_ip, self.to_v_ip, self.rows, self.layer_scale = to_k_ip, to_v_ip, rows, layer_scale

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch, length, _ = context.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, length, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        key, value = attn.to_k(context), attn.to_v(context)
        head_dim = key.shape[-1] // attn.heads
        split = lambda x: x.view(batch, -1, attn.heads, head_dim).transpose(1, 2)  # noqa: E731
        query = split(query)
        out = F.scaled_dot_product_attention(query, split(key), split(value), attn_mask=attention_mask)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        rows = self.rows
        if rows.tokens is not None and self.layer_scale != 0 and bool((rows.scales != 0).any()):
            ip = F.scaled_dot_product_attention(query, split(self.to_k_ip(rows.tokens)), split(self.to_v_ip(rows.tokens)))
            ip = ip.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
            scale = (rows.scales * self.layer_scale).to(dtype=out.dtype, device=out.device)[:, None, None]
            out = out + scale * ip
        out = attn.to_out[1](attn.to_out[0](out))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


@dataclass
class IPAdapterHook:
    """An adapter attached to a UNet: set each UNet call's rows with :meth:`set_rows`."""

    adapter: IPAdapter
    rows: IPRows = field(default_factory=IPRows)

    def set_rows(self, tokens: torch.Tensor | None, scales: torch.Tensor | None = None) -> None:
        """Per-row IP tokens (R, T, D) and scales (R,) for the next UNet call; None = no reference."""
        if tokens is not None and (scales is None or scales.shape != (tokens.shape[0],)):
            raise ValueError("IP-Adapter rows need one scale per row of tokens")
        self.rows.tokens, self.rows.scales = tokens, scales


def layer_scales(adapter: IPAdapter, style: bool) -> dict[str, float]:
    """Per cross-attention layer factor: 1 everywhere, or only in the style layers."""
    if not style:
        return dict.fromkeys(adapter.layers, 1.0)
    prefixes = STYLE_LAYERS["sdxl" if adapter.kind == "sdxl" else "sd1"]
    return {name: 1.0 if name.startswith(prefixes) else 0.0 for name in adapter.layers}


@contextmanager
def attach(unet, adapter: IPAdapter, *, style: bool = False) -> Iterator[IPAdapterHook]:
    """Route the UNet's cross-attentions through the adapter while the block runs; restore them after."""
    original = dict(unet.attn_processors)
    missing = set(adapter.layers) - set(original)
    if missing:
        raise ModelError(f"IP-Adapter {adapter.name} does not fit this UNet (no layer {sorted(missing)[0]})")
    hook = IPAdapterHook(adapter)
    scales = layer_scales(adapter, style)
    processors = dict(original)
    for name, (to_k, to_v) in adapter.layers.items():
        processors[name] = IPAttnProcessor(to_k, to_v, hook.rows, scales[name])
    unet.set_attn_processor(processors)
    try:
        yield hook
    finally:
        unet.set_attn_processor(original)


def gather_ip_rows(
    job_tokens: Sequence[tuple[torch.Tensor, torch.Tensor] | None], job_scales: Sequence[float],
    row_jobs: Sequence[int], row_conditional: Sequence[bool],
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Per-row tokens and scales from per-job ``image_embeds`` results (None = no reference: scale 0)."""
    present = next((t for t in job_tokens if t is not None), None)
    if present is None:
        raise ValueError("no job has a reference image")
    blank = torch.zeros_like(present[0][0])
    tokens, scales = [], []
    for job, conditional in zip(row_jobs, row_conditional, strict=True):
        pair = job_tokens[job]
        tokens.append(blank if pair is None else pair[0 if conditional else 1][0])
        scales.append(0.0 if pair is None else float(job_scales[job]))
    return torch.stack(tokens), torch.tensor(scales, dtype=torch.float32, device=present[0].device)
