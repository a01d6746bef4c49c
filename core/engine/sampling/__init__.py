"""A1111 1.10's sampling maths, in our own code: the model as a denoiser over sigmas (:mod:`.model`), the
twelve schedule types (:mod:`.schedules`), the samplers (:mod:`.samplers`, :mod:`.dpm_solver`,
:mod:`.timesteps`) and their step noise (:mod:`.noise`). ``core.engine.samplers`` is the table from A1111's
names to them, and the pipeline's denoising loop (``core.engine.loop``) runs them::

    spec = samplers.resolve("DPM++ 2M", "Automatic")          # spec.schedule_label -> "Karras"
    p = samplers.plan(spec, steps, NoiseSchedule.ldm("eps"))  # img2img: denoising_strength=...
    x = p.start(rng.first(), init_latent)                     # rng: core.engine.rng.ImageRNG
    latents = samplers.sample(p, denoiser, x, rng=rng, callback=on_step)

No diffusers in this path. Tables and sigmas stay on the CPU; tensors the model sees live on its device.
"""

from core.engine.sampling.model import NoiseSchedule, combine_cfg, rescale_cfg, timestep_eps
from core.engine.sampling.samplers import Step
from core.engine.sampling.schedules import SCHEDULE_TYPES, ScheduleOptions, schedule_type
from core.engine.sampling.timesteps import CFGPP_SCALE

__all__ = [
    "CFGPP_SCALE",
    "SCHEDULE_TYPES",
    "NoiseSchedule",
    "ScheduleOptions",
    "Step",
    "combine_cfg",
    "rescale_cfg",
    "schedule_type",
    "timestep_eps",
]
