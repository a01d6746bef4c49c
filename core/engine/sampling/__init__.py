"""A1111 1.10's sampling, in our own code: the model as a denoiser over sigmas, the schedule types, the
samplers, their noise, and one table from A1111's names to them (:mod:`.registry`).

Typical use (the pipeline's denoising loop)::

    spec = resolve("DPM++ 2M", "Automatic")               # spec.schedule_label -> "Karras"
    p = plan(spec, steps, NoiseSchedule.ldm("eps"))       # img2img: denoising_strength=...
    x = p.start(rng.first(), init_latent)                 # rng: core.engine.rng.ImageRNG
    latents = sample(p, denoiser, x, rng=rng, callback=on_step)

No diffusers in this path. Tables and sigmas stay on the CPU; tensors the model sees live on its device.
"""

from core.engine.sampling.model import NoiseSchedule, combine_cfg, rescale_cfg, timestep_eps
from core.engine.sampling.registry import (
    SAMPLERS,
    Plan,
    Sampler,
    SamplerSpec,
    eta_infotext,
    img2img_steps,
    plan,
    resolve,
    sample,
    sampler_names,
    uses_ensd,
)
from core.engine.sampling.samplers import Step
from core.engine.sampling.schedules import SCHEDULE_TYPES, ScheduleOptions, schedule_type
from core.engine.sampling.timesteps import CFGPP_SCALE

__all__ = [
    "CFGPP_SCALE",
    "SAMPLERS",
    "SCHEDULE_TYPES",
    "NoiseSchedule",
    "Plan",
    "Sampler",
    "SamplerSpec",
    "ScheduleOptions",
    "Step",
    "combine_cfg",
    "eta_infotext",
    "img2img_steps",
    "plan",
    "rescale_cfg",
    "resolve",
    "sample",
    "sampler_names",
    "schedule_type",
    "timestep_eps",
    "uses_ensd",
]
