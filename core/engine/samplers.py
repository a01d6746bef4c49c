"""A1111 sampler names and schedule types → diffusers schedulers.

Like diffusers' own A1111 table (docs: "Schedulers" overview), a sampler we support is one row: the
A1111 name, a diffusers scheduler class and its ``from_config`` overrides, plus the facts A1111 keeps about
the sampler (``sd_samplers_kdiffusion.samplers_k_diffusion`` options in A1111 1.10): the schedule that
"Automatic" means, second order (prompt-editing step counting), ENSD use, Brownian noise. We swap
schedulers with ``Cls.from_config(base_config, **overrides)`` and never write sampler maths.

Schedule types map as diffusers documents them: Karras → ``use_karras_sigmas``, Exponential →
``use_exponential_sigmas``, Beta → ``use_beta_sigmas``, SGM Uniform and Simple → ``timestep_spacing=
"trailing"``; Uniform (and "Automatic" for samplers without a default) → ``timestep_spacing="linspace"``,
k-diffusion's ``get_sigmas``. Types diffusers cannot do are refused.

Known approximations (diffusers has no exact equivalent): "DPM++ 2S a" is DPMSolverSinglestepScheduler
order 2 with SDE noise; DPM2, DPM2 a and DPM++ 3M SDE do not drop the next-to-last sigma as A1111 does;
the SDE multistep samplers draw step noise from the image RNG instead of A1111's Brownian tree.
"""

from __future__ import annotations

import copy
import inspect
import json
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import diffusers

# A1111 1.10 schedule types (sd_schedulers.schedulers): label, internal name.
SCHEDULE_TYPES: tuple[str, ...] = (
    "Automatic",
    "Uniform",
    "Karras",
    "Exponential",
    "Polyexponential",
    "SGM Uniform",
    "KL Optimal",
    "Align Your Steps",
    "Simple",
    "Normal",
    "DDIM",
    "Beta",
)
_SCHEDULE_ALIASES = {
    "automatic": "Automatic",
    "uniform": "Uniform",
    "karras": "Karras",
    "exponential": "Exponential",
    "polyexponential": "Polyexponential",
    "sgm_uniform": "SGM Uniform",
    "sgmuniform": "SGM Uniform",
    "kl_optimal": "KL Optimal",
    "align_your_steps": "Align Your Steps",
    "simple": "Simple",
    "normal": "Normal",
    "ddim": "DDIM",
    "beta": "Beta",
}
# Overrides per schedule type, for the k-diffusion samplers. The first key must be a parameter of the class
# for the type to be supported; the others are applied where the class has them.
_SCHEDULE_OVERRIDES: dict[str, dict[str, Any]] = {
    "Uniform": {"timestep_spacing": "linspace"},
    "Karras": {"use_karras_sigmas": True},
    "Exponential": {"use_exponential_sigmas": True, "timestep_spacing": "linspace"},
    "Beta": {"use_beta_sigmas": True, "timestep_spacing": "linspace"},
    "SGM Uniform": {"timestep_spacing": "trailing"},
    "Simple": {"timestep_spacing": "trailing"},
}

# A1111 sampler names we cannot honour: no diffusers scheduler implements them.
UNSUPPORTED = ("DPM fast", "DPM adaptive", "Restart", "DDIM CFG++", "Euler CFG++")


@dataclass(frozen=True)
class SamplerRow:
    """One A1111 sampler: the diffusers class and overrides, and A1111's facts about it."""

    name: str
    cls_name: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    automatic: str | None = None  # the schedule A1111 uses for "Automatic" (options["scheduler"])
    second_order: bool = False
    uses_ensd: bool = False
    brownian: bool = False  # draws step noise from a seeded Brownian tree (diffusers: noise_sampler_seed)
    timestep_sampler: bool = False  # A1111 CompVis/timesteps sampler: schedule type does not apply
    default_eta: float = 1.0
    aliases: tuple[str, ...] = ()

    @property
    def cls(self) -> type:
        return getattr(diffusers, self.cls_name)


def _row(name: str, cls_name: str, **kw: Any) -> tuple[str, SamplerRow]:
    overrides = MappingProxyType(dict(kw.pop("overrides", {})))
    return name, SamplerRow(name, cls_name, overrides, **kw)


_SDE = {"algorithm_type": "sde-dpmsolver++"}
SAMPLERS: Mapping[str, SamplerRow] = MappingProxyType(
    dict(
        [
            _row("DPM++ 2M", "DPMSolverMultistepScheduler", overrides={"algorithm_type": "dpmsolver++", "solver_order": 2}, automatic="Karras", aliases=("k_dpmpp_2m",)),
            _row("DPM++ SDE", "DPMSolverSDEScheduler", automatic="Karras", second_order=True, brownian=True, aliases=("k_dpmpp_sde",)),
            _row("DPM++ 2M SDE", "DPMSolverMultistepScheduler", overrides={**_SDE, "solver_order": 2, "solver_type": "midpoint"}, automatic="Exponential", aliases=("k_dpmpp_2m_sde",)),
            _row("DPM++ 2M SDE Heun", "DPMSolverMultistepScheduler", overrides={**_SDE, "solver_order": 2, "solver_type": "heun"}, automatic="Exponential", aliases=("k_dpmpp_2m_sde_heun",)),
            _row("DPM++ 2S a", "DPMSolverSinglestepScheduler", overrides={**_SDE, "solver_order": 2, "lower_order_final": True}, automatic="Karras", second_order=True, uses_ensd=True, aliases=("k_dpmpp_2s_a",)),
            _row("DPM++ 3M SDE", "DPMSolverMultistepScheduler", overrides={**_SDE, "solver_order": 3}, automatic="Exponential", aliases=("k_dpmpp_3m_sde",)),
            _row("Euler a", "EulerAncestralDiscreteScheduler", uses_ensd=True, aliases=("k_euler_a", "k_euler_ancestral")),
            _row("Euler", "EulerDiscreteScheduler", aliases=("k_euler",)),
            _row("LMS", "LMSDiscreteScheduler", aliases=("k_lms",)),
            _row("Heun", "HeunDiscreteScheduler", second_order=True, aliases=("k_heun",)),
            _row("DPM2", "KDPM2DiscreteScheduler", automatic="Karras", second_order=True, aliases=("k_dpm_2",)),
            _row("DPM2 a", "KDPM2AncestralDiscreteScheduler", automatic="Karras", second_order=True, uses_ensd=True, aliases=("k_dpm_2_a",)),
            _row("LCM", "LCMScheduler", aliases=("k_lcm",)),
            # A1111's timesteps samplers: timesteps range(0, 1000, 1000 // steps) + 1 ("leading", offset 1);
            # UniPC with A1111's defaults (variant bh1, order 3, lower order final, time-uniform steps).
            # A1111's UniPC ends at t = 1/N, not at sigma 0: "sigma_min" is that, and it also keeps bh1
            # finite (with a final sigma of 0, bh1's B(h) = h is infinite and the latents turn NaN).
            _row("DDIM", "DDIMScheduler", overrides={"timestep_spacing": "leading", "steps_offset": 1}, timestep_sampler=True, default_eta=0.0, aliases=("ddim",)),
            _row("PLMS", "PNDMScheduler", overrides={"skip_prk_steps": True, "timestep_spacing": "leading", "steps_offset": 1}, timestep_sampler=True, default_eta=0.0, aliases=("plms",)),
            _row("UniPC", "UniPCMultistepScheduler", overrides={"solver_type": "bh1", "final_sigmas_type": "sigma_min", "solver_order": 3, "lower_order_final": True, "predict_x0": True, "timestep_spacing": "linspace"}, timestep_sampler=True, default_eta=0.0, aliases=("unipc",)),
        ]
    )
)  # fmt: skip


@dataclass(frozen=True)
class SamplerSpec:
    """A resolved (sampler, schedule type): what to build and what to write into the infotext."""

    name: str  # canonical A1111 sampler name ("Sampler: ...")
    schedule_type: str  # A1111's "Schedule type: ..." value (Automatic resolved as A1111 records it)
    row: SamplerRow
    overrides: Mapping[str, Any]

    @property
    def cls(self) -> type:
        return self.row.cls

    @property
    def second_order(self) -> bool:
        return self.row.second_order


_LOOKUP: dict[str, str] = {}
for _name, _r in SAMPLERS.items():
    _LOOKUP[_name.lower()] = _name
    for _alias in _r.aliases:
        _LOOKUP[_alias.lower()] = _name


def _supported() -> str:
    return ", ".join(SAMPLERS)


def canonical_schedule_type(schedule_type: str | None) -> str:
    """A1111's label for a schedule type given by label or internal name; ValueError if unknown."""
    if schedule_type is None or schedule_type == "":
        return "Automatic"
    label = _SCHEDULE_ALIASES.get(schedule_type.strip().lower().replace(" ", "_"))
    if label is None:
        label = next((s for s in SCHEDULE_TYPES if s.lower() == schedule_type.strip().lower()), None)
    if label is None:
        raise ValueError(f"unknown schedule type {schedule_type!r}; A1111's are: {', '.join(SCHEDULE_TYPES)}")
    return label


def _split_name(name: str) -> tuple[str, str | None]:
    """Sampler name → (canonical name, schedule label from an old combined name like "DPM++ 2M Karras")."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"sampler name must be a non-empty string, got {name!r}")
    key = name.strip().lower()
    if key in _LOOKUP:
        return _LOOKUP[key], None
    candidates = [*SCHEDULE_TYPES, *_SCHEDULE_ALIASES]
    for suffix in sorted(candidates, key=len, reverse=True):
        if key.endswith(" " + suffix.lower()):
            base = key[: -len(suffix) - 1].strip()
            if base in _LOOKUP:
                return _LOOKUP[base], canonical_schedule_type(suffix)
    for unsupported in UNSUPPORTED:
        if key == unsupported.lower() or key.startswith(unsupported.lower() + " "):
            raise ValueError(
                f"sampler {unsupported!r} exists in A1111 but chant cannot run it (no diffusers scheduler); "
                f"choose one of: {_supported()}"
            )
    raise ValueError(f"unknown sampler {name!r}; choose one of: {_supported()}")


def _accepts(cls: type, parameter: str) -> bool:
    return parameter in inspect.signature(cls.__init__).parameters


def schedule_types(name: str) -> list[str]:
    """The schedule types chant honours for sampler ``name`` (for autocomplete and error messages)."""
    row = SAMPLERS[_split_name(name)[0]]
    if row.timestep_sampler:
        return list(SCHEDULE_TYPES)
    if row.cls_name == "LCMScheduler":
        return ["Automatic"]
    out = ["Automatic"]
    for label, overrides in _SCHEDULE_OVERRIDES.items():
        if _accepts(row.cls, next(iter(overrides))):
            out.append(label)
    return out


def resolve(name: str, schedule_type: str | None = "Automatic") -> SamplerSpec:
    """Resolve an A1111 sampler name and schedule type; ValueError naming what is supported otherwise."""
    sampler, from_name = _split_name(name)
    row = SAMPLERS[sampler]
    requested = canonical_schedule_type(schedule_type)
    if from_name is not None:
        if requested not in ("Automatic", from_name):
            raise ValueError(
                f"sampler {name!r} already names schedule {from_name!r}, but {requested!r} was also given"
            )
        requested = from_name

    overrides = dict(row.overrides)
    if row.timestep_sampler:
        # A1111's DDIM/PLMS/UniPC compute their own timesteps and ignore the schedule type (it is still
        # written into the infotext); so do we.
        return SamplerSpec(sampler, requested, row, MappingProxyType(overrides))

    effective = row.automatic if requested == "Automatic" and row.automatic else requested
    supported = schedule_types(sampler)
    if effective not in supported:
        raise ValueError(
            f"schedule type {requested!r} is not available for sampler {sampler!r} in chant; "
            f"supported: {', '.join(supported)}"
        )
    if effective == "Automatic" and row.cls_name != "LCMScheduler":
        effective_overrides = _SCHEDULE_OVERRIDES["Uniform"] if _accepts(row.cls, "timestep_spacing") else {}
    else:
        effective_overrides = _SCHEDULE_OVERRIDES.get(effective, {})
    overrides.update({k: v for k, v in effective_overrides.items() if _accepts(row.cls, k)})
    # A1111 records the schedule it actually used: "DPM++ 2M" + Automatic is written as "Karras".
    return SamplerSpec(sampler, effective, row, MappingProxyType(overrides))


def scheduler_kwargs(name: str, seeds: int | Sequence[int] | None) -> dict[str, Any]:
    """Extra ``from_config`` kwargs that make sampler ``name`` repeatable for the images' ``seeds``.

    DPM++ SDE draws its step noise from a Brownian tree; diffusers seeds it with ``noise_sampler_seed``
    (one seed, or one per image, as A1111 seeds one tree per image with the image's seed).
    """
    row = SAMPLERS[_split_name(name)[0]]
    if not row.brownian or seeds is None:
        return {}
    if isinstance(seeds, int):
        return {"noise_sampler_seed": seeds}
    seeds = [int(s) for s in seeds]
    return {"noise_sampler_seed": seeds[0] if len(seeds) == 1 else seeds}


def make_scheduler(
    base_config: Mapping[str, Any],
    name: str,
    schedule_type: str | None = "Automatic",
    *,
    seeds: int | Sequence[int] | None = None,
) -> Any:
    """A new diffusers scheduler for A1111 ``name`` + ``schedule_type``, built from the model's config.

    Construction of some diffusers schedulers is slow (KDPM2*: ~0.5 s on a CPU), so a fresh prototype per
    (config, sampler, schedule, seeds) is cached and each call returns a deep copy (well under 1 ms).
    """
    spec = resolve(name, schedule_type)
    overrides = {**spec.overrides, **scheduler_kwargs(spec.name, seeds)}
    return copy.deepcopy(_prototype(spec.cls, dict(base_config), overrides))


_PROTOTYPES: OrderedDict[str, Any] = OrderedDict()
_PROTOTYPES_LOCK = threading.Lock()
_PROTOTYPES_MAX = 64


def _prototype(cls: type, base_config: dict[str, Any], overrides: dict[str, Any]) -> Any:
    key = json.dumps([cls.__name__, base_config, overrides], sort_keys=True, default=repr)
    with _PROTOTYPES_LOCK:
        if key in _PROTOTYPES:
            _PROTOTYPES.move_to_end(key)
            return _PROTOTYPES[key]
    proto = cls.from_config(base_config, **overrides)
    with _PROTOTYPES_LOCK:
        _PROTOTYPES[key] = proto
        while len(_PROTOTYPES) > _PROTOTYPES_MAX:
            _PROTOTYPES.popitem(last=False)
    return proto


def sampler_names() -> list[str]:
    """A1111 sampler names chant supports, in A1111's order."""
    return list(SAMPLERS)


def is_second_order(name: str) -> bool:
    """A1111's ``second_order``: the sampler calls the model twice per step (prompt editing counts calls)."""
    return SAMPLERS[_split_name(name)[0]].second_order


def uses_ensd(name: str, eta: float | None = None) -> bool:
    """Whether A1111 applies (and writes) ENSD for this sampler, as ``is_sampler_using_eta_noise_seed_delta``.

    True for the ancestral samplers that draw step noise from the image RNG (Euler a, DPM2 a, DPM++ 2S a),
    unless ``eta`` is 0. Pass ENSD to ``ImageRNG`` only when this is True, so image and infotext agree.
    """
    row = SAMPLERS[_split_name(name)[0]]
    if eta is None:
        eta = row.default_eta
    if eta == 0:
        return False
    return row.uses_ensd


def eta_infotext(name: str, eta: float | None) -> dict[str, float]:
    """The infotext entry A1111 writes for a non-default eta: ``Eta DDIM`` (DDIM/PLMS/UniPC) or ``Eta``.

    Empty when ``eta`` is None or A1111's default for the sampler (0 for DDIM-like samplers, 1 otherwise).
    """
    row = SAMPLERS[_split_name(name)[0]]
    if eta is None or float(eta) == row.default_eta:
        return {}
    return {"Eta DDIM" if row.timestep_sampler else "Eta": float(eta)}
