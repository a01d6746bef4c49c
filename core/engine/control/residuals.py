"""What the ControlNet units add to one UNet call.

The denoising loop calls :func:`controlnet_residuals` right before each UNet call, with that call's
inputs (the rows of every job in the batch: their ``AND`` parts and negative prompts) and, per
ControlNet model, a :class:`ControlRows`: the control image of each row and the factor of each
residual on each row (from :func:`core.engine.control.units.row_scales`; a zero row = no control
there). It returns the summed residuals for ``unet(…, down_block_additional_residuals=down,
mid_block_additional_residual=mid)``, or None when no unit is active on any row (then the UNet runs
exactly as without ControlNet).

A ControlNet runs only on the rows it acts on (a row of a job without that unit, a unit outside its
guidance window, or an unconditional row under "ControlNet is more important" costs nothing); its
residuals are computed at conditioning scale 1 and multiplied by the per-row factors, which is what
diffusers' ``conditioning_scale`` does with one factor for all rows. Union (ControlNet++) models run
once per control type among the rows.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from core.engine.control.models import LoadedControlNet


@dataclass(frozen=True)
class ControlRows:
    """One ControlNet model's inputs for one UNet call of ``R`` rows.

    ``images``: (R, C, 8·h, 8·w) in [0, 1] for latents of h×w (:func:`control_tensor`, :func:`gather_rows`).
    ``scales``: (R, n_residuals), the factor of each residual on each row (:func:`scales_tensor`).
    ``union_types``: per row, the control-type index of a union model (None for other models).
    """

    net: LoadedControlNet
    images: torch.Tensor
    scales: torch.Tensor
    union_types: tuple[int, ...] | None = None


def control_tensor(image: np.ndarray, device=None, dtype=torch.float32) -> torch.Tensor:
    """A prepared control map (H, W, C) uint8 as (1, C, H, W) in [0, 1], as sd-webui-controlnet feeds it."""
    if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(f"a control map must be an (H, W, C) uint8 array, not {image.dtype} {image.shape}")
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]
    return (tensor.to(torch.float32) / 255.0).to(device=device, dtype=dtype)


def gather_rows(job_images: Sequence[torch.Tensor | None], row_jobs: Sequence[int]) -> torch.Tensor:
    """Per-row control images from per-job ones: row ``r`` belongs to job ``row_jobs[r]``.

    A job without an image (its scales are zero on every row) gets zeros of the same shape.
    """
    present = next((image for image in job_images if image is not None), None)
    if present is None:
        raise ValueError("no job has a control image")
    blank = torch.zeros_like(present[0])
    rows = [job_images[j][0] if job_images[j] is not None else blank for j in row_jobs]
    return torch.stack(rows)


def scales_tensor(rows: Sequence[Sequence[float] | None], n_residuals: int, device=None) -> torch.Tensor:
    """(R, n_residuals) float32 from ``row_scales`` results (None = zeros)."""
    table = [list(row) if row is not None else [0.0] * n_residuals for row in rows]
    if any(len(row) != n_residuals for row in table):
        raise ValueError(f"every row needs {n_residuals} factors")
    return torch.tensor(table, dtype=torch.float32, device=device)


def _take(value, index: torch.Tensor | None, rows: int):
    if index is None or not torch.is_tensor(value) or value.ndim == 0 or value.shape[0] != rows:
        return value
    return value.index_select(0, index)


def _run(net: LoadedControlNet, sample, timestep, context, images, added, union_type: int | None):
    kwargs = {"added_cond_kwargs": added} if added is not None else {}
    if union_type is None:
        return net.model(
            sample, timestep, encoder_hidden_states=context, controlnet_cond=images,
            conditioning_scale=1.0, return_dict=False, **kwargs,
        )  # fmt: skip
    types = net.model.config.num_control_type
    one_hot = torch.zeros((sample.shape[0], types), device=sample.device, dtype=sample.dtype)
    one_hot[:, union_type] = 1
    return net.model(
        sample, timestep, encoder_hidden_states=context, controlnet_cond=[images], control_type=one_hot,
        control_type_idx=[union_type], conditioning_scale=1.0, return_dict=False, **kwargs,
    )  # fmt: skip


def _one_model(control: ControlRows, sample, timestep, context, added):
    """This model's scaled residuals over all rows, or None if it acts on no row."""
    rows = sample.shape[0]
    if control.scales.shape[0] != rows or control.images.shape[0] != rows:
        raise ValueError(f"control rows ({control.scales.shape[0]}) differ from the UNet batch ({rows})")
    active = (control.scales != 0).any(dim=1).cpu()  # row selection is decided on the host
    if control.union_types is not None and len(control.union_types) != rows:
        raise ValueError(f"union control types ({len(control.union_types)}) differ from the UNet batch ({rows})")
    groups = sorted({control.union_types[r] for r in range(rows) if active[r]}) if control.union_types else [None]
    out: list[torch.Tensor] | None = None
    for group in groups:
        mask = active if group is None else active & torch.tensor([t == group for t in control.union_types])
        if not bool(mask.any()):
            continue
        index = None if bool(mask.all()) else mask.nonzero().flatten().to(sample.device)
        take = functools.partial(_take, index=index, rows=rows)
        extra = {k: take(v) for k, v in added.items()} if added is not None else None
        images = take(control.images.to(device=sample.device, dtype=sample.dtype))
        down, mid = _run(control.net, take(sample), take(timestep), take(context), images, extra, group)
        factors = take(control.scales.to(sample.device))
        scaled = [r * factors[:, i].to(r.dtype)[:, None, None, None] for i, r in enumerate([*down, mid])]
        if index is None:
            out = scaled if out is None else [a + b for a, b in zip(out, scaled, strict=True)]
            continue
        if out is None:
            out = [torch.zeros((rows, *r.shape[1:]), dtype=r.dtype, device=r.device) for r in scaled]
        out = [o.index_add(0, index, r) for o, r in zip(out, scaled, strict=True)]
    return out


def controlnet_residuals(
    controls: Sequence[ControlRows],
    sample: torch.Tensor,
    timestep: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    added_cond_kwargs: Mapping[str, torch.Tensor] | None = None,
) -> tuple[list[torch.Tensor], torch.Tensor] | None:
    """The sum of every ControlNet's residuals for this UNet call: ``(down residuals, mid residual)``.

    ``sample``, ``timestep`` (scalar or per row), ``encoder_hidden_states`` and ``added_cond_kwargs``
    (SDXL's ``text_embeds``/``time_ids``) are exactly what the UNet gets. None = nothing to add.
    """
    total: list[torch.Tensor] | None = None
    added = dict(added_cond_kwargs) if added_cond_kwargs is not None else None
    with torch.no_grad():
        for control in controls:
            residuals = _one_model(control, sample, timestep, encoder_hidden_states, added)
            if residuals is None:
                continue
            total = residuals if total is None else [a + b for a, b in zip(total, residuals, strict=True)]
    if total is None:
        return None
    return total[:-1], total[-1]
