"""LoRA files (kohya/A1111 and diffusers/PEFT layouts) and merging them into a loaded model.

A LoRA layer adds ``up @ down * scale * multiplier`` to one Linear/Conv2d weight, with
``scale = alpha / rank`` (1.0 without alpha), as A1111's ``network_lora.py`` does. The multiplier is
the tag's text-encoder value for text-encoder layers and its UNet value for UNet layers.

We merge into the weights (fast while sampling, as A1111 does) and keep an exact copy of every
weight we touch; :class:`MergedWeights.restore` copies those bits back, so the model afterwards is
bit-for-bit the model before.

Key layouts understood:

* kohya / A1111: ``lora_unet_<module>``, ``lora_te_<module>`` (SD1/SD2), ``lora_te1_``/``lora_te2_``
  (SDXL), each with ``.lora_down.weight``, ``.lora_up.weight``, optional ``.alpha`` and LoCon's
  ``.lora_mid.weight`` (CP decomposition). ``<module>`` is the diffusers module path with ``_`` for
  ``.`` (SD1 trainers), or the original LDM/SGM name (``input_blocks_4_1_…``, SDXL trainers).
* diffusers / PEFT: ``unet.<path>.lora_A.weight``/``lora_B.weight`` (also ``lora.down``/``lora.up``,
  ``lora_linear_layer.down``/``up`` and the old ``processor.to_q_lora`` form), ``text_encoder.``,
  ``text_encoder_2.``; alpha from ``.alpha`` keys or diffusers' ``lora_adapter_metadata``.

LyCORIS types other than LoCon (LoHa, LoKr, (IA)^3, OFT, DoRA, full diffs) are refused with a message.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

UNET = "unet"
TEXT_ENCODER = "text_encoder"
TEXT_ENCODER_2 = "text_encoder_2"

_KOHYA_PREFIXES = {
    "lora_unet_": UNET,
    "lora_te1_": TEXT_ENCODER,
    "lora_te2_": TEXT_ENCODER_2,
    "lora_te_": TEXT_ENCODER,
}
_DIFFUSERS_PREFIXES = {"unet.": UNET, "text_encoder.": TEXT_ENCODER, "text_encoder_2.": TEXT_ENCODER_2}
_UNET_ROOTS = ("down_blocks.", "up_blocks.", "mid_block.", "conv_in", "conv_out", "time_embedding.")

# part of a key after the module name -> role
_DIFFUSERS_PART = re.compile(
    r"^(?P<module>.+?)\.(?:"
    r"lora_(?P<ab>[AB])(?:\.[A-Za-z0-9_-]+)?\.weight"
    r"|lora(?:_linear_layer)?\.(?P<ud>up|down)\.weight"
    r"|lora_(?P<kohya>up|down|mid)\.weight"
    r"|(?P<alpha>alpha)"
    r")$"
)
_OLD_PROCESSOR = re.compile(
    r"^(?P<attn>.+)\.processor\.(?P<proj>to_q|to_k|to_v|to_out)_lora\.(?P<ud>up|down)\.weight$"
)
_UNSUPPORTED = {
    "hada_": "LoHa",
    "lokr_": "LoKr",
    "oft_": "OFT",
    "dora_scale": "DoRA",
    "lora_magnitude_vector": "DoRA",
    "diff": "full-weight diff",
    "w_norm": "norm",
    "b_norm": "norm",
    "on_input": "(IA)^3",
}


@dataclass
class LoraLayer:
    """One low-rank update, not yet placed on a model."""

    component: str  # UNET | TEXT_ENCODER | TEXT_ENCODER_2
    key: str  # kohya underscore name or diffusers dotted path, without the component prefix
    down: torch.Tensor | None = None
    up: torch.Tensor | None = None
    mid: torch.Tensor | None = None
    alpha: float | None = None

    @property
    def rank(self) -> int:
        assert self.down is not None
        return int(self.down.shape[0])

    def scale(self) -> float:
        return 1.0 if self.alpha is None else self.alpha / self.rank

    def out_numel(self) -> tuple[int, int]:
        """(rows, elements) of the full update, to check it against a weight before computing it."""
        assert self.up is not None and self.down is not None
        rows = int(self.up.shape[0])
        if self.mid is not None:
            return rows, rows * int(self.down.shape[1]) * math.prod(self.mid.shape[2:])
        return rows, rows * math.prod(self.down.shape[1:])

    @torch.no_grad()
    def add_to(self, target: torch.Tensor, multiplier: float, dyn: int | None) -> None:
        """``target += up @ down * scale * multiplier`` for a float32 weight (A1111's ``rebuild_*``).

        The scale and multiplier go onto the small ``up`` factor, and the product is added with one
        fused ``addmm_``: a single pass over the (large) weight.
        """
        assert self.up is not None and self.down is not None
        factor = self.scale() * multiplier
        device = target.device
        up2 = self.up.to(device=device, dtype=torch.float32).reshape(self.up.shape[0], -1)
        down2 = self.down.to(device=device, dtype=torch.float32).reshape(self.down.shape[0], -1)
        rows = target.view(target.shape[0], -1)
        if self.mid is not None:
            mid = self.mid.to(device=device, dtype=torch.float32)
            updown = torch.einsum("n m k l, i n, m j -> i j k l", mid, up2 * factor, down2)
            rows.add_(updown.reshape(rows.shape))
            return
        if dyn is not None:
            up2, down2 = up2[:, :dyn], down2[:dyn, :]
        rows.addmm_(up2 * factor, down2)


@dataclass
class LoraFile:
    """A parsed LoRA file: its layers (CPU tensors) and what we could not place."""

    path: Path
    layers: list[LoraLayer]
    ignored: list[str] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        total = 0
        for layer in self.layers:
            for t in (layer.up, layer.down, layer.mid):
                if t is not None:
                    total += t.numel() * t.element_size()
        return total


def _unsupported_kind(part: str) -> str | None:
    for marker, kind in _UNSUPPORTED.items():
        if part.startswith(marker) or f".{marker}" in part:
            return kind
    return None


def _split_key(key: str) -> tuple[str, str, str] | None:
    """(component, module key, part) for one tensor name, or None when it is not a LoRA tensor."""
    for prefix, component in _KOHYA_PREFIXES.items():
        if key.startswith(prefix):
            module, _, part = key.partition(".")
            return component, module[len(prefix) :], part
    rest, component = key, None
    if rest.startswith("base_model.model."):
        rest = rest[len("base_model.model.") :]
    for prefix, comp in _DIFFUSERS_PREFIXES.items():
        if rest.startswith(prefix):
            component, rest = comp, rest[len(prefix) :]
            break
    if component is None and rest.startswith(_UNET_ROOTS):
        component = UNET
    if component is None:
        return None
    old = _OLD_PROCESSOR.match(rest)
    if old:
        module = f"{old['attn']}.{old['proj']}" + (".0" if old["proj"] == "to_out" else "")
        return component, module, f"lora_{old['ud']}.weight"
    match = _DIFFUSERS_PART.match(rest)
    if match is None:
        return component, rest, ""
    module = match["module"]
    if match["ab"]:
        part = "lora_down.weight" if match["ab"] == "A" else "lora_up.weight"
    elif match["ud"]:
        part = f"lora_{match['ud']}.weight"
    elif match["kohya"]:
        part = f"lora_{match['kohya']}.weight"
    else:
        part = "alpha"
    return component, module, part


def _metadata_alphas(metadata: Mapping[str, str] | None) -> dict[str, dict]:
    """diffusers' ``lora_adapter_metadata``: per component ``lora_alpha``, ``alpha_pattern``, ``use_rslora``."""
    if not metadata or "lora_adapter_metadata" not in metadata:
        return {}
    try:
        raw = json.loads(metadata["lora_adapter_metadata"])
    except (TypeError, ValueError):
        return {}
    out: dict[str, dict] = {}
    for key, value in raw.items() if isinstance(raw, dict) else ():
        component, _, name = key.partition(".")
        out.setdefault(component, {})[name] = value
    return out


def _pattern_alpha(config: dict, module: str) -> float | None:
    for pattern, alpha in (config.get("alpha_pattern") or {}).items():
        if (
            module == pattern
            or module.endswith("." + pattern)
            or re.fullmatch(rf"(.*\.)?(?:{pattern})", module)
        ):
            return float(alpha)
    alpha = config.get("lora_alpha")
    return None if alpha is None else float(alpha)


def parse_lora_state_dict(
    path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> LoraFile:
    """Group tensors into :class:`LoraLayer`s; ``ValueError`` for layouts we cannot read."""
    layers: dict[tuple[str, str], LoraLayer] = {}
    ignored: list[str] = []
    for key, tensor in tensors.items():
        if key.startswith("bundle_emb."):
            ignored.append(key)  # embeddings bundled in a LoRA: not applied here
            continue
        split = _split_key(key)
        if split is None:
            ignored.append(key)
            continue
        component, module, part = split
        kind = _unsupported_kind(part) or _unsupported_kind(key)
        if kind is not None:
            raise ValueError(f"{path.name}: {kind} networks are not supported (tensor {key!r})")
        layer = layers.setdefault((component, module), LoraLayer(component=component, key=module))
        if part == "lora_down.weight":
            layer.down = tensor
        elif part == "lora_up.weight":
            layer.up = tensor
        elif part == "lora_mid.weight":
            layer.mid = tensor
        elif part == "alpha":
            layer.alpha = float(tensor.float().reshape(-1)[0]) if tensor.numel() else None
        else:
            ignored.append(key)
    if not layers:
        sample = ", ".join(list(tensors)[:3]) or "(empty)"
        raise ValueError(f"{path.name} is not a LoRA file chant can read (first tensors: {sample})")
    alphas = _metadata_alphas(metadata)
    complete: list[LoraLayer] = []
    for layer in layers.values():
        if layer.up is None or layer.down is None:
            if layer.up is None and layer.down is None:
                ignored.append(f"{layer.component}.{layer.key}")
                continue
            raise ValueError(f"{path.name}: layer {layer.key!r} has only one of lora_up/lora_down")
        if not _factors_fit(layer):
            shapes = [tuple(t.shape) for t in (layer.up, layer.mid, layer.down) if t is not None]
            raise ValueError(f"{path.name}: layer {layer.key!r} has factors that do not multiply: {shapes}")
        if layer.alpha is None and layer.component in alphas:
            config = alphas[layer.component]
            alpha = _pattern_alpha(config, layer.key)
            if alpha is not None and config.get("use_rslora"):
                alpha = alpha * math.sqrt(layer.rank)  # PEFT's rsLoRA scale alpha/sqrt(r) as alpha'/r
            layer.alpha = alpha
        complete.append(layer)
    if not complete:
        raise ValueError(f"{path.name} holds no complete LoRA layer (lora_up + lora_down)")
    if ignored:
        bundled = sum(k.startswith("bundle_emb.") for k in ignored)
        log.warning(
            "%s: %d tensors ignored (%d bundled embedding tensors, not applied)",
            path.name,
            len(ignored),
            bundled,
        )
    return LoraFile(path=path, layers=complete, ignored=ignored)


def _factors_fit(layer: LoraLayer) -> bool:
    up, down, mid = layer.up, layer.down, layer.mid
    assert up is not None and down is not None
    if up.dim() < 2 or down.dim() < 2 or up.numel() == 0 or down.numel() == 0:
        return False
    inner = math.prod(up.shape[1:])
    if mid is None:
        return inner == down.shape[0]
    return mid.dim() == 4 and (mid.shape[0], mid.shape[1]) == (inner, down.shape[0])


def load_lora_file(path: Path) -> LoraFile:
    """Read a ``.safetensors`` LoRA onto the CPU; ``ValueError`` when it cannot be read."""
    from safetensors import safe_open

    if path.suffix.lower() != ".safetensors":
        raise ValueError(f"{path.name}: only .safetensors LoRA files are loaded")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"cannot read LoRA file {path.name}: {exc}") from None
    return parse_lora_state_dict(path, tensors, metadata)


# --- placing layers on a model ------------------------------------------------------------------

_RESNET_LDM = {
    "norm1": "in_layers_0",
    "conv1": "in_layers_2",
    "time_emb_proj": "emb_layers_1",
    "norm2": "out_layers_0",
    "conv2": "out_layers_3",
    "conv_shortcut": "skip_connection",
}


def _ldm_prefixes(unet: nn.Module) -> dict[str, str]:
    """diffusers module prefix -> LDM/SGM name prefix (underscored), from the UNet's own layout."""
    out = {
        "conv_in": "input_blocks_0_0",
        "time_embedding.linear_1": "time_embed_0",
        "time_embedding.linear_2": "time_embed_2",
        "add_embedding.linear_1": "label_emb_0_0",
        "add_embedding.linear_2": "label_emb_0_2",
        "conv_norm_out": "out_0",
        "conv_out": "out_2",
    }
    down_blocks = getattr(unet, "down_blocks", None)
    up_blocks = getattr(unet, "up_blocks", None)
    if down_blocks is None or up_blocks is None:
        return out
    i = 1
    for b, block in enumerate(down_blocks):
        attentions = getattr(block, "attentions", None)
        for j in range(len(block.resnets)):
            out[f"down_blocks.{b}.resnets.{j}"] = f"input_blocks_{i}_0"
            if attentions:
                out[f"down_blocks.{b}.attentions.{j}"] = f"input_blocks_{i}_1"
            i += 1
        if getattr(block, "downsamplers", None):
            out[f"down_blocks.{b}.downsamplers.0.conv"] = f"input_blocks_{i}_0_op"
            i += 1
    mid = getattr(unet, "mid_block", None)
    if mid is not None:
        out["mid_block.resnets.0"] = "middle_block_0"
        if getattr(mid, "attentions", None):
            out["mid_block.attentions.0"] = "middle_block_1"
            out["mid_block.resnets.1"] = "middle_block_2"
    i = 0
    for b, block in enumerate(up_blocks):
        attentions = getattr(block, "attentions", None)
        for j in range(len(block.resnets)):
            out[f"up_blocks.{b}.resnets.{j}"] = f"output_blocks_{i}_0"
            if attentions:
                out[f"up_blocks.{b}.attentions.{j}"] = f"output_blocks_{i}_1"
            i += 1
        if getattr(block, "upsamplers", None):
            out[f"up_blocks.{b}.upsamplers.0.conv"] = f"output_blocks_{i - 1}_{2 if attentions else 1}_conv"
    return out


def ldm_name(path: str, prefixes: Mapping[str, str]) -> str | None:
    """The LDM/SGM underscored name of a diffusers UNet module path (None when there is none)."""
    parts = path.split(".")
    for n in range(len(parts), 0, -1):
        head = ".".join(parts[:n])
        if head in prefixes:
            rest = parts[n:]
            if ".resnets." in head and rest:
                rest = [_RESNET_LDM.get(rest[0], rest[0]), *rest[1:]]
            return "_".join([prefixes[head], *rest])
    return None


def module_index(component: str, model: nn.Module) -> dict[str, nn.Module]:
    """Every name a LoRA may use for each Linear/Conv2d of ``model``."""
    index: dict[str, nn.Module] = {}
    prefixes = _ldm_prefixes(model) if component == UNET else {}
    has_text_model = component != UNET and hasattr(model, "text_model")
    for path, module in model.named_modules():
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            continue
        names = [path]
        if component != UNET:
            # transformers 5 dropped the ``text_model.`` level of CLIPTextModel; files still use it
            if has_text_model and path.startswith("text_model."):
                names.append(path[len("text_model.") :])
            elif not has_text_model:
                names.append("text_model." + path)
        for name in list(names):
            names.append(name.replace(".", "_"))
        if prefixes:
            ldm = ldm_name(path, prefixes)
            if ldm:
                names.append(ldm)
        for name in names:
            index.setdefault(name, module)
    return index


class MergedWeights:
    """Exact backups of the weights a merge changed; :meth:`restore` puts the original bits back."""

    def __init__(self, backup_device: str | torch.device | None = "cpu") -> None:
        self.backup_device = backup_device
        self._saved: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __len__(self) -> int:
        return len(self._saved)

    @torch.no_grad()
    def update(self, weight: torch.Tensor, change: Callable[[torch.Tensor], None]) -> None:
        """Back ``weight`` up exactly, then let ``change`` add to a float32 view of it in place."""
        device = weight.device if self.backup_device is None else self.backup_device
        self._saved.append((weight, weight.detach().to(device=device, copy=True)))
        if weight.dtype == torch.float32 and weight.is_contiguous():
            change(weight.detach())
        else:  # fp16/bf16, or channels_last convolutions
            work = torch.empty_like(weight, dtype=torch.float32, memory_format=torch.contiguous_format)
            work.copy_(weight.detach())
            change(work)
            weight.copy_(work)

    @torch.no_grad()
    def restore(self) -> None:
        while self._saved:
            weight, backup = self._saved.pop()
            weight.copy_(backup)


@dataclass(frozen=True)
class LoraUse:
    """One LoRA to merge: the parsed file, the name from the prompt, and its multipliers."""

    name: str
    file: LoraFile
    te: float = 1.0
    unet: float = 1.0
    dyn: int | None = None


@torch.no_grad()
def merge_loras(
    models: Mapping[str, nn.Module], uses: Iterable[LoraUse], merged: MergedWeights
) -> dict[str, int]:
    """Add every LoRA's updates into ``models`` (component -> model); record backups in ``merged``.

    Returns how many layers of each LoRA found a home. Raises ``ValueError`` before changing
    anything when a LoRA fits no layer of these models or a layer's shape differs (a LoRA for
    another architecture). Updates go into a float32 copy of each weight, then back once.
    """
    indexes = {component: module_index(component, model) for component, model in models.items()}
    per_module: dict[nn.Module, list[tuple[LoraLayer, float, int | None]]] = {}
    placed: dict[str, int] = {}
    for use in uses:
        count, missing = 0, 0
        for layer in use.file.layers:
            module = indexes.get(layer.component, {}).get(layer.key)
            if module is None:
                missing += 1
                continue
            count += 1
            weight = module.weight
            rows, numel = layer.out_numel()
            if rows != weight.shape[0] or numel != weight.numel():
                raise ValueError(
                    f"LoRA {use.name!r} does not fit this model: layer {layer.key!r} makes "
                    f"{rows} x {numel // max(rows, 1)} updates for a weight of shape {tuple(weight.shape)}"
                )
            multiplier = use.unet if layer.component == UNET else use.te
            if multiplier != 0:
                per_module.setdefault(module, []).append((layer, multiplier, use.dyn))
        if count == 0:
            raise ValueError(
                f"LoRA {use.name!r} has no layer that fits this model (made for another model type?)"
            )
        if missing:
            log.warning(
                "LoRA %r: %d of %d layers match no module of this model", use.name, missing, missing + count
            )
        placed[use.name] = count
    for module, parts in per_module.items():

        def change(work: torch.Tensor, parts=parts) -> None:
            for layer, multiplier, dyn in parts:
                layer.add_to(work, multiplier, dyn)

        merged.update(module.weight, change)
    return placed
