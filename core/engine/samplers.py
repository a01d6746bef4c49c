"""The one table: A1111 1.10's sampler names → our sampler functions (``core.engine.sampling``), with the
facts A1111 keeps about each, and the three calls the denoising loop makes.

Like A1111's ``samplers_k_diffusion`` / ``samplers_timesteps`` tables (read for behaviour only), a row is a
name, its function, its aliases and options: the schedule type "Automatic" means, the "discard next to last
sigma" rule, second order (prompt editing counts model calls), ENSD, Brownian noise, eta. :func:`resolve`
turns a name (canonical, ``k_*`` alias or an old combined name such as "DPM++ 2M Karras") and a schedule
type into a :class:`SamplerSpec`; :func:`plan` computes what one run samples over (txt2img, or img2img /
hires fix with A1111's denoising-strength rule); :func:`sample` runs it. Every sampler × schedule type pair
resolves: A1111 refuses none of them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import torch
from torch import Tensor

from core.engine.rng import ImageRNG
from core.engine.sampling import dpm_solver, samplers, timesteps
from core.engine.sampling.model import LCMSchedule, NoiseSchedule
from core.engine.sampling.noise import BrownianNoise, StepNoise
from core.engine.sampling.schedules import (
    SCHEDULE_TYPES,
    ScheduleOptions,
    ScheduleType,
    compute,
    schedule_type,
)

CHURN = ("s_churn", "s_tmin", "s_tmax", "s_noise")
UNIPC_ORDER = 3  # A1111's uni_pc_order default; its UniPC refuses fewer steps


@dataclass(frozen=True)
class Sampler:
    """One A1111 sampler and A1111's options for it."""

    name: str
    function: Callable[..., Tensor]
    kind: str = "sigmas"  # "sigmas" (k-diffusion), "dpm" (σ range + n), "timesteps" (DDPM timesteps)
    aliases: tuple[str, ...] = ()
    automatic: str | None = None  # the schedule type "Automatic" means (A1111's options["scheduler"])
    discard_penultimate: bool = False
    second_order: bool = False  # A1111's prompt-editing step counter counts model calls: steps × 2
    uses_ensd: bool = False  # A1111 writes ENSD into the infotext (is_sampler_using_eta_noise_seed_delta)
    brownian: bool = False  # step noise from per-image Brownian trees
    takes_eta: bool = False
    default_eta: float = 1.0  # A1111's eta_ancestral (k-diffusion) / eta_ddim (timesteps: 0)
    extras: tuple[str, ...] = ()  # A1111's sampler_extra_params: passed through when given
    options: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))
    lcm: bool = False  # denoises over LCM's 50-step table (model_schedule)
    cfgpp: bool = False  # the denoiser returns (ε with CFG scale × 1/12.5, unconditional ε)
    batchable: bool = True  # False: the batch changes each image (DPM adaptive's batch-wide error norm)

    @property
    def eta_infotext_key(self) -> str:
        return "Eta DDIM" if self.kind == "timesteps" else "Eta"

    def total_steps(self, steps: int) -> int:
        """A1111's ``SamplerData.total_steps``: the step count prompt editing schedules against."""
        return steps * 2 if self.second_order else steps

    def model_schedule(self, model: NoiseSchedule) -> NoiseSchedule:
        """The schedule this sampler's denoiser and sigmas use: LCM's 50-step table for LCM, else the model's."""
        return LCMSchedule.from_model(model) if self.lcm else model


def _s(name, function, aliases, **kw) -> Sampler:
    return Sampler(name, function, aliases=tuple(aliases), **kw)


_ETA_NOISE = {"takes_eta": True, "extras": ("s_noise",)}
SAMPLERS: Mapping[str, Sampler] = MappingProxyType({s.name: s for s in (
    _s("DPM++ 2M", samplers.sample_dpmpp_2m, ["k_dpmpp_2m"], automatic="Karras"),
    _s("DPM++ SDE", samplers.sample_dpmpp_sde, ["k_dpmpp_sde"], automatic="Karras", second_order=True, brownian=True, **_ETA_NOISE),
    _s("DPM++ 2M SDE", samplers.sample_dpmpp_2m_sde, ["k_dpmpp_2m_sde"], automatic="Exponential", brownian=True, **_ETA_NOISE),
    _s("DPM++ 2M SDE Heun", samplers.sample_dpmpp_2m_sde, ["k_dpmpp_2m_sde_heun"], automatic="Exponential", brownian=True, options=MappingProxyType({"solver_type": "heun"}), **_ETA_NOISE),
    _s("DPM++ 2S a", samplers.sample_dpmpp_2s_ancestral, ["k_dpmpp_2s_a"], automatic="Karras", uses_ensd=True, second_order=True, **_ETA_NOISE),
    _s("DPM++ 3M SDE", samplers.sample_dpmpp_3m_sde, ["k_dpmpp_3m_sde"], automatic="Exponential", discard_penultimate=True, brownian=True, **_ETA_NOISE),
    _s("Euler a", samplers.sample_euler_ancestral, ["k_euler_a", "k_euler_ancestral"], uses_ensd=True, takes_eta=True),
    _s("Euler", samplers.sample_euler, ["k_euler"], extras=CHURN),
    _s("LMS", samplers.sample_lms, ["k_lms"]),
    _s("Heun", samplers.sample_heun, ["k_heun"], second_order=True, extras=CHURN),
    _s("DPM2", samplers.sample_dpm_2, ["k_dpm_2"], automatic="Karras", discard_penultimate=True, second_order=True, extras=CHURN),
    _s("DPM2 a", samplers.sample_dpm_2_ancestral, ["k_dpm_2_a"], automatic="Karras", discard_penultimate=True, uses_ensd=True, second_order=True, **_ETA_NOISE),
    _s("DPM fast", dpm_solver.sample_dpm_fast, ["k_dpm_fast"], kind="dpm", uses_ensd=True, **_ETA_NOISE),
    _s("DPM adaptive", dpm_solver.sample_dpm_adaptive, ["k_dpm_ad"], kind="dpm", uses_ensd=True, takes_eta=True, batchable=False),
    _s("Restart", samplers.sample_restart, ["restart"], automatic="Karras", second_order=True),
    _s("LCM", samplers.sample_lcm, ["k_lcm"], lcm=True),
    _s("DDIM", timesteps.sample_ddim, ["ddim"], kind="timesteps", takes_eta=True, default_eta=0.0),
    _s("DDIM CFG++", timesteps.sample_ddim_cfgpp, ["ddim_cfgpp"], kind="timesteps", takes_eta=True, default_eta=0.0, cfgpp=True),
    _s("PLMS", timesteps.sample_plms, ["plms"], kind="timesteps", default_eta=0.0),
    _s("UniPC", timesteps.sample_unipc, ["unipc"], kind="timesteps", default_eta=0.0),
)})  # fmt: skip

_LOOKUP = {key.lower(): s.name for s in SAMPLERS.values() for key in (s.name, *s.aliases)}
# A1111 < 1.9 wrote the schedule into the sampler's name; its k_*_ka aliases too.
_OLD_SUFFIXES = {"karras": "Karras", "exponential": "Exponential"}


@dataclass(frozen=True)
class SamplerSpec:
    """A resolved sampler + schedule type: what to run and what the infotext says."""

    sampler: Sampler
    schedule: ScheduleType  # the effective type ("Automatic" only where the sampler has no default)
    schedule_label: str  # A1111's "Schedule type" value

    @property
    def name(self) -> str:
        return self.sampler.name


def sampler_names() -> list[str]:
    """A1111 1.10's sampler names, in A1111's order."""
    return list(SAMPLERS)


def is_second_order(name: str) -> bool:
    """A1111's ``second_order``: prompt schedules count two model calls a step for this sampler."""
    return _split(name)[0].second_order


def _split(name: str) -> tuple[Sampler, str | None]:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"sampler name must be a non-empty string, got {name!r}")
    key = " ".join(name.strip().lower().split())
    if key in _LOOKUP:
        return SAMPLERS[_LOOKUP[key]], None
    if key.endswith("_ka") and key[:-3] in _LOOKUP:  # k_dpmpp_2m_ka: the old "DPM++ 2M Karras"
        return SAMPLERS[_LOOKUP[key[:-3]]], "Karras"
    for label in sorted((*SCHEDULE_TYPES, *_OLD_SUFFIXES), key=len, reverse=True):
        if key.endswith(" " + label.lower()) and key[: -len(label) - 1] in _LOOKUP:
            return SAMPLERS[_LOOKUP[key[: -len(label) - 1]]], schedule_type(label).label
    raise ValueError(f"unknown sampler {name!r}; A1111's are: {', '.join(SAMPLERS)}")


def resolve(name: str, schedule: str | None = "Automatic") -> SamplerSpec:
    """``name`` + schedule type → spec. "Automatic" becomes the sampler's own type where A1111 has one
    (and the infotext then names it, as A1111 writes it); timesteps samplers keep the label but ignore it."""
    sampler, from_name = _split(name)
    requested = schedule_type(schedule)
    if from_name is not None:
        if requested.label not in ("Automatic", from_name):
            raise ValueError(
                f"sampler {name!r} already names schedule {from_name!r}, but {requested.label!r} was given"
            )
        requested = schedule_type(from_name)
    if sampler.kind == "timesteps":
        return SamplerSpec(sampler, requested, requested.label)
    effective = requested
    if requested.function is None and sampler.automatic is not None:
        effective = schedule_type(sampler.automatic)
    return SamplerSpec(sampler, effective, effective.label)


def img2img_steps(steps: int, denoising_strength: float, *, fixed: bool = False) -> tuple[int, int]:
    """A1111's ``setup_img2img_steps``: (schedule steps, t_enc).

    Plain img2img runs ``int(min(strength, 0.999) · steps) + 1`` steps of a ``steps`` schedule. With
    ``fixed`` (hires fix, which passes its steps; A1111's "img2img_fix_steps") the schedule has
    ``int(steps / min(strength, 0.999))`` steps and exactly ``steps`` of them run.
    """
    if not 0 <= denoising_strength <= 1:
        raise ValueError(f"denoising strength must be within 0..1, got {denoising_strength}")
    strength = min(denoising_strength, 0.999)
    if fixed:
        return (int(steps / strength) if denoising_strength > 0 else 0), steps - 1
    return steps, int(strength * steps)


@dataclass(frozen=True)
class Plan:
    """One run: the schedule and the part of it the sampler walks (all of it for txt2img)."""

    spec: SamplerSpec
    schedule: NoiseSchedule  # the table the denoiser uses (LCM's for LCM)
    sigmas: Tensor | None  # full k-diffusion schedule (CPU), None for timesteps samplers
    run: Tensor  # sigmas walked (k-diffusion), or the timesteps handed to the sampler
    steps: int  # the schedule's step count (img2img/hires: A1111's setup_img2img_steps result)
    t_enc: int | None = None  # img2img: A1111's t_enc

    @property
    def img2img(self) -> bool:
        return self.t_enc is not None

    def start(self, noise: Tensor, init_latent: Tensor | None = None) -> Tensor:
        """The sampler's first x: noise scaled to the first σ, or (img2img) the source latent noised to it."""
        if self.spec.sampler.kind == "timesteps":
            if init_latent is None:
                return noise
            a = self.schedule.alphas_cumprod[int(timesteps.timesteps(self.steps)[self.t_enc])]
            return init_latent * a.sqrt().to(init_latent) + noise * (1 - a).sqrt().to(noise)
        if init_latent is None:
            return noise * self.run[0]
        return init_latent.to(noise) + noise * self.run[0]

    @property
    def steps_run(self) -> int:
        """The steps this run counts as (A1111's ``launch_sampling``): all of them, or img2img's ``t_enc + 1``."""
        return self.steps if self.t_enc is None else self.t_enc + 1

    @property
    def callbacks(self) -> int | None:
        """How many times the sampler reports a step (None: DPM adaptive, whose steps are not known ahead)."""
        sampler = self.spec.sampler
        if not sampler.batchable:
            return None
        if sampler.kind == "dpm":
            n = len(self.run) - 1 if self.img2img else self.steps
            return n // 3 + 1
        if sampler.function is samplers.sample_restart:
            return samplers.restart_step_count(self.run)
        if sampler.function is timesteps.sample_unipc:
            return len(self.run)
        return max(0, len(self.run) - 1)


def _sigmas(spec: SamplerSpec, steps: int, schedule: NoiseSchedule, options: ScheduleOptions) -> Tensor:
    steps += 1 if spec.sampler.discard_penultimate else 0
    sigmas = compute(spec.schedule, steps, schedule, options)
    if spec.sampler.discard_penultimate:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    return sigmas


def plan(
    spec: SamplerSpec,
    steps: int,
    model: NoiseSchedule,
    *,
    options: ScheduleOptions = ScheduleOptions(),
    denoising_strength: float | None = None,
    fixed_steps: bool = False,
) -> Plan:
    """What a run of ``steps`` samples over; with ``denoising_strength``, A1111's img2img/hires tail."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    schedule = spec.sampler.model_schedule(model)
    t_enc = None
    if denoising_strength is not None:
        steps, t_enc = img2img_steps(steps, denoising_strength, fixed=fixed_steps)
        if steps < 1:
            raise ValueError("denoising strength 0 leaves nothing to sample")
    if spec.sampler.kind == "timesteps":
        ts = timesteps.timesteps(steps)
        run = ts if t_enc is None else ts[:t_enc]
        if spec.sampler.function is timesteps.sample_unipc and len(run) < UNIPC_ORDER:
            raise ValueError(
                f"UniPC needs at least {UNIPC_ORDER} steps to run (A1111's order {UNIPC_ORDER}), got {len(run)}"
            )
        return Plan(spec, schedule, None, run, steps, t_enc)
    sigmas = _sigmas(spec, steps, schedule, options)
    run = sigmas if t_enc is None else sigmas[steps - t_enc - 1 :]
    return Plan(spec, schedule, sigmas, run, steps, t_enc)


def sample(
    p: Plan,
    model: Callable,
    x: Tensor,
    *,
    rng: ImageRNG,
    seeds: Sequence[int] | None = None,
    callback: samplers.Callback | None = None,
    eta: float | None = None,
    **extras: float,
) -> Tensor:
    """Run ``p``'s sampler from ``x`` (:meth:`Plan.start`'s result) and return the final latents.

    ``model``: k-diffusion samplers ``model(x, sigma) -> x₀``; timesteps samplers ``model(x, t) -> ε``
    (DDIM CFG++: ``(ε, ε_uncond)``). ``rng`` is the job's ImageRNG, after ``first()``: its ``next()`` is the
    ancestral step noise; the SDE samplers' Brownian trees are seeded with ``seeds`` (default ``rng.seeds``,
    A1111's image seeds) and draw from ``rng.source``. ``extras``: s_churn, s_tmin, s_tmax, s_noise, passed
    where A1111 passes them. ``callback(Step)`` may raise to cancel, or return the rows to keep.
    """
    sampler = p.spec.sampler
    unknown = set(extras) - set(CHURN)
    if unknown:
        raise ValueError(f"unknown sampler option(s): {', '.join(sorted(unknown))}")
    kwargs: dict[str, object] = {k: v for k, v in extras.items() if k in sampler.extras}
    kwargs.update(sampler.options)
    if sampler.takes_eta:
        kwargs["eta"] = sampler.default_eta if eta is None else float(eta)
    if sampler.brownian:
        noise = BrownianNoise(
            p.sigmas,
            list(seeds if seeds is not None else rng.seeds),
            x.shape[1:],
            source=rng.source,
            device=x.device,
            dtype=x.dtype,
        )
    else:
        noise = StepNoise(rng, device=x.device, dtype=x.dtype)
    if sampler.kind == "timesteps":
        if sampler.function is timesteps.sample_unipc and p.img2img:
            kwargs["img2img"] = True
        return sampler.function(
            model, x, p.run, p.schedule.alphas_cumprod, callback=callback, noise=noise, **kwargs
        )
    if sampler.kind == "dpm":
        if p.img2img:
            low, high, n = float(p.run[-2]), float(p.run[0]), len(p.run) - 1
        else:
            low, high, n = p.schedule.sigma_min, p.schedule.sigma_max, p.steps
        if sampler.function is dpm_solver.sample_dpm_fast:
            kwargs["n"] = n
        return sampler.function(model, x, low, high, callback=callback, noise=noise, **kwargs)
    return sampler.function(model, x, p.run, callback=callback, noise=noise, **kwargs)


def uses_ensd(spec: SamplerSpec, eta: float | None = None) -> bool:
    """A1111's ``is_sampler_using_eta_noise_seed_delta``: whether the infotext carries ENSD for this run."""
    value = spec.sampler.default_eta if eta is None else eta
    return value != 0 and spec.sampler.uses_ensd


def eta_infotext(spec: SamplerSpec, eta: float | None) -> dict[str, float]:
    """``{"Eta": η}`` / ``{"Eta DDIM": η}`` where A1111 writes it (the sampler takes η and it is not the default)."""
    if eta is None or not spec.sampler.takes_eta or float(eta) == spec.sampler.default_eta:
        return {}
    return {spec.sampler.eta_infotext_key: float(eta)}
