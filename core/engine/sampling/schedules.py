"""A1111 1.10's twelve schedule types: each a function returning sigmas (descending, usually ending at 0).

Like A1111's ``sd_schedulers.py`` each type is one small function ``(n, sigma_min, sigma_max, *, model,
options) -> sigmas`` and :data:`SCHEDULE_TYPES` is the table of them. The maths follows k-diffusion's
``get_sigmas_*`` (MIT) and the papers each names; A1111 was read for its behaviour only: its defaults
(Karras ρ 7, Polyexponential ρ 1, Beta α = β = 0.6), which types read the model's own table (``model``),
and its quirks, kept because they change the image:

- "KL Optimal" ends at σ_min, not 0 (so the last step leaves σ_min of noise), as A1111's does;
- "DDIM" strides the 1000-entry table by ``1000 // n`` and so gives more than n steps when n does not
  divide 1000 (7 steps → 8);
- "Align Your Steps" uses NVIDIA's published SD1/SDXL tables whatever the model's σ range.

σ_min/σ_max are python floats (A1111's ``model_wrap.sigmas[0].item()``); the result is a float32 CPU
tensor, so a sampler loop over it never waits on the GPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import torch
from scipy import stats
from torch import Tensor

from core.engine.sampling.model import NoiseSchedule


@dataclass(frozen=True)
class ScheduleOptions:
    """A1111's schedule settings (``opts``) that change sigmas; defaults are A1111 1.10's."""

    rho: float | None = None  # None: the type's default (Karras 7, Polyexponential 1)
    beta_alpha: float = 0.6
    beta_beta: float = 0.6
    sdxl: bool = False  # Align Your Steps: the SDXL table instead of SD1's


def _append_zero(x: Tensor) -> Tensor:
    return torch.cat([x, x.new_zeros([1])])


def karras(n: int, sigma_min: float, sigma_max: float, *, rho: float = 7.0, **_: object) -> Tensor:
    """Karras et al. (2022), eq. 5: σ evenly spaced in σ^(1/ρ)."""
    ramp = torch.linspace(0, 1, n)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    return _append_zero((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho)


def exponential(n: int, sigma_min: float, sigma_max: float, **_: object) -> Tensor:
    """σ evenly spaced in log σ."""
    return _append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp())


def polyexponential(n: int, sigma_min: float, sigma_max: float, *, rho: float = 1.0, **_: object) -> Tensor:
    """log σ a polynomial of degree ρ in the step index (ρ = 1 is Exponential)."""
    ramp = torch.linspace(1, 0, n) ** rho
    return _append_zero(torch.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min)))


def uniform(n: int, sigma_min: float, sigma_max: float, *, model: NoiseSchedule, **_: object) -> Tensor:
    """Timesteps evenly spaced from the last to 0 (k-diffusion's ``get_sigmas``)."""
    return model.get_sigmas(n)


def sgm_uniform(n: int, sigma_min: float, sigma_max: float, *, model: NoiseSchedule, **_: object) -> Tensor:
    """Timesteps from t(σ_max) evenly spaced towards t(σ_min), n of n + 1 (SGM's "trailing" spacing)."""
    start = model.sigma_to_t(torch.tensor(sigma_max))
    end = model.sigma_to_t(torch.tensor(sigma_min))
    return torch.FloatTensor([*(model.t_to_sigma(t) for t in torch.linspace(start, end, n + 1)[:-1]), 0.0])


def normal(n: int, sigma_min: float, sigma_max: float, *, model: NoiseSchedule, **_: object) -> Tensor:
    """Timesteps evenly spaced from t(σ_max) to t(σ_min), both included."""
    start = model.sigma_to_t(torch.tensor(sigma_max))
    end = model.sigma_to_t(torch.tensor(sigma_min))
    return torch.FloatTensor([*(model.t_to_sigma(t) for t in torch.linspace(start, end, n)), 0.0])


def simple(n: int, sigma_min: float, sigma_max: float, *, model: NoiseSchedule, **_: object) -> Tensor:
    """Every (len/n)-th entry of the model's table, from the top (ComfyUI's "simple")."""
    stride = len(model.sigmas) / n
    return torch.FloatTensor([*(float(model.sigmas[-(1 + int(i * stride))]) for i in range(n)), 0.0])


def ddim(n: int, sigma_min: float, sigma_max: float, *, model: NoiseSchedule, **_: object) -> Tensor:
    """The table at timesteps 1, 1 + s, 1 + 2s, ... (s = len // n), reversed: DDIM's "uniform" spacing."""
    stride = max(len(model.sigmas) // n, 1)
    picked = [float(model.sigmas[i]) for i in range(1, len(model.sigmas), stride)]
    return torch.FloatTensor([*picked[::-1], 0.0])


def kl_optimal(n: int, sigma_min: float, sigma_max: float, **_: object) -> Tensor:
    """Sabour et al. (2024), "Align Your Steps", KL-optimal: σ = tan of evenly spaced arctan σ; ends at σ_min."""
    alpha_min = torch.arctan(torch.tensor(sigma_min))
    alpha_max = torch.arctan(torch.tensor(sigma_max))
    step = torch.arange(n + 1)
    return torch.tan(step / n * alpha_min + (1.0 - step / n) * alpha_max)


# NVIDIA's published 10-step Align Your Steps sigmas (research.nvidia.com/labs/toronto-ai/AlignYourSteps).
AYS_SD1 = (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029)
AYS_SDXL = (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029)


def align_your_steps(
    n: int, sigma_min: float, sigma_max: float, *, options: ScheduleOptions = ScheduleOptions(), **_: object
) -> Tensor:
    """The AYS table for SD1 or SDXL, log-linearly interpolated to n sigmas (NVIDIA's how-to), then 0."""
    table = list(AYS_SDXL if options.sdxl else AYS_SD1)
    if n == len(table):
        return torch.FloatTensor([*table, 0.0])
    xs = np.linspace(0, 1, len(table))
    ys = np.log(table[::-1])
    interpolated = np.exp(np.interp(np.linspace(0, 1, n), xs, ys))[::-1].copy()
    return torch.FloatTensor(np.append(interpolated, [0.0]))


def beta(
    n: int, sigma_min: float, sigma_max: float, *, options: ScheduleOptions = ScheduleOptions(), **_: object
) -> Tensor:
    """Lee et al. (2024), "Beta Sampling is All You Need": σ linear in the Beta(α, β) quantiles of 1..0."""
    quantiles = [stats.beta.ppf(q, options.beta_alpha, options.beta_beta) for q in 1 - np.linspace(0, 1, n)]
    return torch.FloatTensor([*(sigma_min + q * (sigma_max - sigma_min) for q in quantiles), 0.0])


ScheduleFunction = Callable[..., Tensor]


@dataclass(frozen=True)
class ScheduleType:
    """One row of A1111's schedule table: internal name, label, function, default ρ, whether it reads the model."""

    name: str
    label: str
    function: ScheduleFunction | None  # None: "Automatic" (the sampler's own choice)
    default_rho: float | None = None
    needs_model: bool = False
    aliases: tuple[str, ...] = ()


SCHEDULE_TYPES = MappingProxyType(
    {
        row.label: row
        for row in (
            ScheduleType("automatic", "Automatic", None),
            ScheduleType("uniform", "Uniform", uniform, needs_model=True),
            ScheduleType("karras", "Karras", karras, default_rho=7.0),
            ScheduleType("exponential", "Exponential", exponential),
            ScheduleType("polyexponential", "Polyexponential", polyexponential, default_rho=1.0),
            ScheduleType("sgm_uniform", "SGM Uniform", sgm_uniform, needs_model=True, aliases=("SGMUniform",)),
            ScheduleType("kl_optimal", "KL Optimal", kl_optimal),
            ScheduleType("align_your_steps", "Align Your Steps", align_your_steps),
            ScheduleType("simple", "Simple", simple, needs_model=True),
            ScheduleType("normal", "Normal", normal, needs_model=True),
            ScheduleType("ddim", "DDIM", ddim, needs_model=True),
            ScheduleType("beta", "Beta", beta, needs_model=True),
        )
    }
)
_BY_KEY = {
    key.lower(): row
    for row in SCHEDULE_TYPES.values()
    for key in (row.name, row.label, row.label.replace(" ", "_"), *row.aliases)
}


def schedule_type(name: str | None) -> ScheduleType:
    """The schedule type named by A1111's label or internal name (any case); None/"" is Automatic."""
    if name is None or not str(name).strip():
        return SCHEDULE_TYPES["Automatic"]
    row = _BY_KEY.get(str(name).strip().lower())
    if row is None:
        raise ValueError(f"unknown schedule type {name!r}; A1111's are: {', '.join(SCHEDULE_TYPES)}")
    return row


def compute(
    row: ScheduleType,
    n: int,
    model: NoiseSchedule,
    options: ScheduleOptions = ScheduleOptions(),
    *,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
) -> Tensor:
    """``row``'s n-step sigmas for ``model`` (σ range from the model unless given); float32, on the CPU."""
    if n < 1:
        raise ValueError(f"steps must be at least 1, got {n}")
    if row.function is None:  # Automatic with no sampler default: the model's own spacing
        return model.get_sigmas(n).cpu()
    kwargs: dict[str, object] = {"model": model, "options": options}
    if row.default_rho is not None:
        kwargs["rho"] = row.default_rho if options.rho is None else options.rho
    low = model.sigma_min if sigma_min is None else sigma_min
    high = model.sigma_max if sigma_max is None else sigma_max
    return row.function(n, low, high, **kwargs).to(torch.float32).cpu()
