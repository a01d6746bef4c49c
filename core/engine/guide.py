"""Guiding a job with images: its ControlNet units and reference images (IP-Adapter), wired into the
pipeline and the denoising loop (the parts live in ``core.engine.control``).

Three steps, as the pipeline runs them:

1. :func:`prepare` (the pipeline's step 1, per job): each unit checked, its image decoded as an img2img
   source is and run through its preprocessor (the detected map the user is shown); each reference
   image decoded. A bad value or image fails its job alone.
2. :func:`load` (after the model, per job): each unit's ControlNet found in ``engine.controlnet_dirs``
   (by name, or the first whose name fits the control type and whose family is the model's) and loaded
   (LRU); the reference images' IP-Adapter and image encoder loaded, and each job's image tokens made.
3. :class:`BatchGuide` (the loop): what the units add to each UNet call, per row — each row's control
   map and factors at A1111's step counter (``core.engine.control.units.row_scales``: guidance window,
   weight, control mode; unconditional rows know they are), summed over the batch's ControlNets
   (``core.engine.control.residuals``), and each row's IP tokens and scale (the adapter's attention hook
   is attached for the loop). A job without a unit or a reference gets zero factors: its rows see exactly
   what they see alone, so batched = alone.

The maps are fitted to the size of the pass (the hires pass gets its own, as sd-webui-controlnet's
"Both" option), by the unit's resize mode.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from core import ranges
from core.config import EngineSettings
from core.engine import image_modes
from core.engine.control import ip_adapter, residuals
from core.engine.control import models as control_models
from core.engine.control.image import fit_control_map
from core.engine.control.infotext import format_unit, infotext_params
from core.engine.control.preprocessors import (
    CONTROL_TYPES,
    PreprocessContext,
    get_preprocessor,
    models_for_control_type,
    preprocess,
    union_index,
)
from core.engine.control.units import ControlUnit, a1111_sampling_step, row_scales
from core.types import ControlInput, GenerationError, GenerationRequest

# --- 1. prepare ----------------------------------------------------------------------------------


@dataclass
class PreparedUnit:
    unit: ControlUnit
    source: ControlInput
    detected: np.ndarray  # the preprocessor's map (H, W, 3) uint8, before fitting to the pass's size
    params: tuple[int, float, float]  # the (resolution, threshold A, threshold B) used
    net: Any = None  # control_models.LoadedControlNet, after load()
    union_type: int | None = None


@dataclass
class JobGuide:
    """One job's prepared units and reference images (and, after :func:`load`, models and tokens)."""

    units: list[PreparedUnit] = field(default_factory=list)
    references: list[Any] = field(default_factory=list)  # PIL images
    reference_scale: float = 0.0
    reference_style: bool = False
    reference_model: str = ""
    adapter: Any = None  # ip_adapter.IPAdapter, after load()
    tokens: tuple[torch.Tensor, torch.Tensor] | None = None  # (cond, uncond) IP tokens, after load()

    def infotext(self) -> dict[str, str]:
        """sd-webui-controlnet's ``ControlNet N`` keys: the units, then the reference (a unit there too)."""
        texts = [
            format_unit(p.unit, p.net.label, processor_res=p.params[0], threshold_a=p.params[1],
                        threshold_b=p.params[2])
            for p in self.units
        ]  # fmt: skip
        if self.adapter is not None:
            unit = ControlUnit(
                model=self.adapter.name, module=self.adapter.module, weight=self.reference_scale
            )
            texts.append(format_unit(unit, self.adapter.label, processor_res=ranges.DEFAULT_PROCESSOR_RES,
                                     threshold_a=0.5, threshold_b=0.5))  # fmt: skip
        return infotext_params(texts)

    def detected_maps(self) -> tuple[bytes, ...]:
        """PNGs of the preprocessed maps (not of ready maps, module "none"), as sd-webui-controlnet shows."""
        from PIL import Image

        out = []
        for p in self.units:
            if p.unit.module == "none":
                continue
            buffer = io.BytesIO()
            Image.fromarray(p.detected).save(buffer, format="PNG")
            out.append(buffer.getvalue())
        return tuple(out)


def unit_of(control: ControlInput) -> ControlUnit:
    return ControlUnit(
        model=control.model or "(auto)", module=control.module, weight=control.weight,
        resize_mode=control.resize_mode, processor_res=control.processor_res, threshold_a=control.threshold_a,
        threshold_b=control.threshold_b, guidance_start=control.guidance_start,
        guidance_end=control.guidance_end, pixel_perfect=control.pixel_perfect, control_mode=control.control_mode,
    )  # fmt: skip


def check(request: GenerationRequest) -> None:
    """The request's units and references checked (values only); ``GenerationError`` names the first bad one."""
    if len(request.controls) > ranges.MAX_CONTROL_UNITS:
        raise GenerationError(
            f"at most {ranges.MAX_CONTROL_UNITS} ControlNet units, not {len(request.controls)}"
        )
    for i, control in enumerate(request.controls):
        try:
            unit_of(control).check()
            get_preprocessor(control.module)
            if control.control_type is not None and control.control_type not in CONTROL_TYPES:
                raise ValueError(
                    f"unknown control type {control.control_type!r} (have: {', '.join(CONTROL_TYPES)})"
                )
        except ValueError as exc:
            raise GenerationError(f"ControlNet unit {i}: {exc}") from None
    models = {r.model for r in request.references}
    if (
        len(models) > 1
        or len({r.style for r in request.references}) > 1
        or len({r.scale for r in request.references}) > 1
    ):
        raise GenerationError("reference images of one job share one IP-Adapter model, scale and style")
    for r in request.references:
        if not ranges.MIN_REFERENCE_SCALE <= r.scale <= ranges.MAX_REFERENCE_SCALE:
            raise GenerationError(
                f"reference scale must be between {ranges.MIN_REFERENCE_SCALE:g} and "
                f"{ranges.MAX_REFERENCE_SCALE:g}, not {r.scale}"
            )


def prepare(request: GenerationRequest, settings: EngineSettings, device: str = "cpu") -> JobGuide | None:
    """Step 1 for one job: checked, images decoded, preprocessors run. None: the job has no guide."""
    if not request.controls and not request.references:
        return None
    check(request)
    guide = JobGuide()
    limit = settings.max_input_megapixels
    context = PreprocessContext(preprocessor_dirs=tuple(settings.preprocessor_dirs), device=device)
    for i, control in enumerate(request.controls):
        if control.image is None:
            raise GenerationError(f"ControlNet unit {i} has no image (was it pruned?)")
        unit = unit_of(control)
        try:
            image = image_modes.load_image(control.image, max_megapixels=limit, what="control image")
            array = np.array(image.convert("RGBA") if "A" in image.mode else image.convert("RGB"))
            detected, params = preprocess(unit, array, context, target_size=(request.width, request.height))
        except (ValueError, OSError) as exc:  # OSError: a preprocessor's model file is missing
            raise GenerationError(f"ControlNet unit {i}: {exc}") from None
        guide.units.append(PreparedUnit(unit, control, detected, params))
    for reference in request.references:
        if reference.image is None:
            raise GenerationError("a reference image is missing (was it pruned?)")
        try:
            image = image_modes.load_image(reference.image, max_megapixels=limit, what="reference image")
        except ValueError as exc:
            raise GenerationError(str(exc)) from None
        guide.references.append(image.convert("RGB"))
        guide.reference_scale, guide.reference_style = reference.scale, reference.style
        guide.reference_model = reference.model
    return guide


# --- 2. load -------------------------------------------------------------------------------------


class GuideModels:
    """The engine's ControlNet and IP-Adapter caches (LRU)."""

    def __init__(self, settings: EngineSettings) -> None:
        self.settings = settings
        self.controlnets = control_models.ControlNetCache(
            settings.max_loaded_controlnets, settings.allow_pickle
        )
        self.adapters = ip_adapter.IPAdapterCache(1, settings.allow_pickle)

    def controlnet(self, control: ControlInput, unet, device, dtype):
        """The unit's ControlNet: by name, or the first that fits its control type and the model's family."""
        settings = self.settings
        if control.model:
            path = control_models.resolve_controlnet(settings, control.model)
            return self.controlnets.get(path, dict(unet.config), device, dtype)
        control_type = control.control_type or get_preprocessor(control.module).control_type
        names = models_for_control_type(control_type, control_models.list_controlnets(settings))
        errors = []
        for name in names:
            try:
                path = control_models.resolve_controlnet(settings, name)
                return self.controlnets.get(path, dict(unet.config), device, dtype)
            except GenerationError as exc:  # another family, or unreadable: try the next
                errors.append(str(exc))
        hint = f" ({errors[0]})" if errors else ""
        raise GenerationError(
            f"no ControlNet for {control_type} in {', '.join(settings.controlnet_dirs)} fits this model{hint}"
        )

    def adapter(self, name: str, unet):
        settings = self.settings
        names = [name] if name else control_models.list_ip_adapters(settings)
        errors = []
        for candidate in names:
            try:
                path = ip_adapter.resolve_ip_adapter(settings, candidate)
                encoder = ip_adapter.encoder_for_adapter(settings, path)
                adapter = self.adapters.get(path, encoder, unet)
                if adapter.kind != control_models.kind_of(dict(unet.config)):
                    raise GenerationError(f"IP-Adapter {candidate!r} is for another model family")
                return adapter
            except GenerationError as exc:
                if name:
                    raise
                errors.append(str(exc))
        hint = f" ({errors[0]})" if errors else ""
        raise GenerationError(f"no IP-Adapter in {', '.join(settings.controlnet_dirs)} fits this model{hint}")


def load(models: GuideModels, unet, guide: JobGuide, device, dtype) -> None:
    """Step 2 for one job: its ControlNets and IP-Adapter loaded, its image tokens made."""
    for prepared in guide.units:
        prepared.net = models.controlnet(prepared.source, unet, device, dtype)
        prepared.unit = dataclasses.replace(prepared.unit, model=prepared.net.name)
        if prepared.net.is_union:
            try:
                prepared.union_type = union_index(
                    prepared.unit if prepared.source.control_type is None
                    else dataclasses.replace(prepared.unit, union_control_type=_union_name(prepared.source))
                )  # fmt: skip
            except ValueError as exc:
                raise GenerationError(str(exc)) from None
    if guide.references:
        guide.adapter = models.adapter(guide.reference_model, unet)
        guide.tokens = ip_adapter.image_embeds(guide.adapter, guide.references)


def _union_name(control: ControlInput) -> str | None:
    return CONTROL_TYPES[control.control_type][2] if control.control_type in CONTROL_TYPES else None


# --- 3. the loop ---------------------------------------------------------------------------------


class BatchGuide:
    """What the batch's units and references add to each UNet call (see the module doc).

    ``guides`` and ``counts``: per job of the loop, in order. ``size``: the pass's (width, height).
    ``sampling_steps``: A1111's ``state.sampling_steps`` (the plan's ``steps_run``). The loop sets
    :attr:`step` (the sampler step under way) and calls :meth:`keep` when jobs leave.
    """

    def __init__(
        self, guides: Sequence[JobGuide | None], counts: Sequence[int], size: tuple[int, int],
        sampling_steps: int, device, *, hires_pass: bool = False,
    ) -> None:  # fmt: skip
        self.guides, self.counts = list(guides), list(counts)
        self.sampling_steps, self.hires_pass, self.device = sampling_steps, hires_pass, device
        self.step = 0
        width, height = size
        # Each (ControlNet, its k-th unit in a job) is one ControlRows slot; a job's images per slot.
        self.slots: dict[tuple[int, int], Any] = {}
        self.maps: dict[tuple[int, int], list[torch.Tensor | None]] = {}
        self.units: dict[tuple[int, int], list[PreparedUnit | None]] = {}
        for position, guide in enumerate(self.guides):
            seen: dict[int, int] = {}
            for prepared in guide.units if guide else []:
                k = seen[id(prepared.net)] = seen.get(id(prepared.net), -1) + 1
                slot = (id(prepared.net), k)
                self.slots.setdefault(slot, prepared.net)
                self.maps.setdefault(slot, [None] * len(self.guides))
                self.units.setdefault(slot, [None] * len(self.guides))
                fitted = fit_control_map(prepared.detected, width, height, prepared.unit.resize_mode)
                self.maps[slot][position] = residuals.control_tensor(fitted, device=device)
                self.units[slot][position] = prepared
        adapters = {id(g.adapter): g.adapter for g in self.guides if g is not None and g.adapter is not None}
        if len(adapters) > 1:
            raise GenerationError("jobs with different IP-Adapter models cannot share a batch")
        self.adapter = next(iter(adapters.values()), None)
        self.style = any(g.reference_style for g in self.guides if g is not None and g.adapter is not None)
        self.hook: ip_adapter.IPAdapterHook | None = None

    @property
    def empty(self) -> bool:
        return not self.slots and self.adapter is None

    def keep(self, positions: Sequence[int]) -> None:
        self.guides = [self.guides[p] for p in positions]
        self.counts = [self.counts[p] for p in positions]
        self.maps = {s: [m[p] for p in positions] for s, m in self.maps.items()}
        self.units = {s: [u[p] for p in positions] for s, u in self.units.items()}

    @contextlib.contextmanager
    def attached(self, unet):
        """The IP-Adapter's attention hook on the UNet for the loop (nothing without references)."""
        if self.adapter is None:
            yield self
            return
        with ip_adapter.attach(unet, self.adapter, style=self.style) as hook:
            self.hook = hook
            try:
                yield self
            finally:
                self.hook = None

    def unet_kwargs(
        self, x: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor, added: dict | None,
        rows: Sequence[tuple[int, bool]],
    ) -> dict[str, Any]:  # fmt: skip
        """The extra UNet arguments for one call whose row ``r`` is (job position, conditional)."""
        row_jobs = [job for job, _ in rows]
        row_cond = [cond for _, cond in rows]
        if self.hook is not None:
            tokens = [g.tokens if g is not None else None for g in self.guides]
            scales = [g.reference_scale if g is not None else 0.0 for g in self.guides]
            ip_tokens, ip_scales = ip_adapter.gather_ip_rows(tokens, scales, row_jobs, row_cond)
            self.hook.set_rows(ip_tokens.to(x.dtype), ip_scales)
        if not self.slots:
            return {}
        sampling_step = a1111_sampling_step(self.step)
        controls = []
        for slot, net in self.slots.items():
            units = self.units[slot]
            if all(u is None for u in units):
                continue
            factors = []
            for job, conditional in rows:
                prepared = units[job]
                factors.append(None if prepared is None else row_scales(
                    prepared.unit, net.n_residuals, sampling_step=sampling_step,
                    sampling_steps=self.sampling_steps, conditional=conditional, global_pool=net.global_pool,
                    hires_pass=self.hires_pass,
                ))  # fmt: skip
            union = None
            if net.is_union:
                union = tuple(units[job].union_type if units[job] is not None else 0 for job in row_jobs)
            controls.append(residuals.ControlRows(
                net=net, images=residuals.gather_rows(self.maps[slot], row_jobs),
                scales=residuals.scales_tensor(factors, net.n_residuals, device=x.device), union_types=union,
            ))  # fmt: skip
        out = residuals.controlnet_residuals(controls, x, t, embeds, added)
        if out is None:
            return {}
        down, mid = out
        return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}


def batch_guide(
    jobs, size: tuple[int, int], sampling_steps: int, device, *, hires_pass=False
) -> BatchGuide | None:
    """The loop's :class:`BatchGuide` for ``jobs`` (each with ``guide``), or None when none has one."""
    guides = [getattr(job, "guide", None) for job in jobs]
    if all(g is None for g in guides):
        return None
    guide = BatchGuide(
        guides, [job.count for job in jobs], size, sampling_steps, device, hires_pass=hires_pass
    )
    return None if guide.empty else guide
