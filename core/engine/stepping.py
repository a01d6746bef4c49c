"""The loop's stepping, today with a diffusers scheduler: timesteps, the first latents, one step, and the
per-sample state a batch keeps between steps (cut when a job leaves).

:class:`SchedulerStepper` is everything ``core.engine.loop`` asks of a sampler; the model side (the CFG
denoiser) and the per-step hooks know nothing of schedulers. One scheduler steps the whole batch:
diffusers' schedulers work per element, and their per-sample state (multistep histories, Heun's
first-stage sample, Brownian trees) is sliced with the rows (:func:`drop_rows`).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from core.engine import models, rng, samplers
from core.engine.job import Start
from core.types import GenerationError, GenerationRequest


class SchedulerStepper:
    """A diffusers scheduler for one batch (A1111 sampler + schedule type), with the request's eta."""

    def __init__(self, scheduler: Any, eta: float | None = None) -> None:
        self.scheduler = scheduler
        # Extra ``scheduler.step`` arguments: eta where the scheduler takes one.
        takes_eta = "eta" in inspect.signature(scheduler.step).parameters
        self.step_kwargs = {"eta": eta} if eta is not None and takes_eta else {}

    @classmethod
    def for_batch(
        cls, model: models.LoadedModel, request: GenerationRequest, seeds: Sequence[int]
    ) -> SchedulerStepper:
        """The batch's scheduler; per-image state (Brownian trees) seeded with every image's seed."""
        try:
            scheduler = samplers.make_scheduler(
                model.scheduler_config, request.sampler, request.schedule_type, seeds=list(seeds)
            )
        except ValueError as exc:
            raise GenerationError(str(exc)) from None
        return cls(scheduler, request.eta)

    def set_timesteps(self, steps: int, start: Start | None, device) -> tuple[torch.Tensor, int]:
        """Set the timesteps; returns (the timesteps that run, the steps they count as).

        txt2img: all ``steps``. img2img (``start``): A1111's ``t_enc = int(min(strength, 0.999) * steps)``,
        the last ``t_enc + 1`` steps of the full schedule; hires (``start.steps``): a schedule of
        ``int(start.steps / strength)`` steps of which the last ``start.steps`` run.
        """
        scheduler = self.scheduler
        if start is None:
            total_steps = run_steps = steps
        else:
            strength = min(start.strength, 0.999)
            if start.steps is not None:
                run_steps = start.steps
                total_steps = int(run_steps / strength)
            else:
                total_steps = steps
                run_steps = int(strength * total_steps) + 1
        scheduler.set_timesteps(total_steps, device=device)
        timesteps = scheduler.timesteps
        if start is not None:
            begin = (total_steps - run_steps) * scheduler.order
            timesteps = timesteps[begin:]
            if hasattr(scheduler, "set_begin_index"):
                scheduler.set_begin_index(begin)
        return timesteps, run_steps

    def first_latents(self, start: Start | None, noise: torch.Tensor, timesteps, device, dtype):
        """One job's first latents, plus (inpaint) the source latents and keep mask it blends back:
        ``(latents, source, keep)``; ``source`` and ``keep`` are None without ``start.keep``."""
        if start is None:
            return noise * self.scheduler.init_noise_sigma, None, None
        # A1111: the source latents, noised to the first step that runs; inpaint's "latent noise" /
        # "latent nothing" replace the masked area first (with the same seed's noise / zeros).
        source, keep = start.latents.to(device, dtype), start.keep
        if keep is not None and start.fill == 2:
            source = source * keep + noise * (1 - keep)
        elif keep is not None and start.fill == 3:
            source = source * keep
        return self.add_noise(source, noise, timesteps[:1]), source, keep

    def scale(self, latents: torch.Tensor, t) -> torch.Tensor:
        """The model's input at timestep ``t``."""
        return self.scheduler.scale_model_input(latents, t)

    def step(self, prediction: torch.Tensor, t, latents: torch.Tensor) -> torch.Tensor:
        """One step from ``latents`` with the (CFG-combined) model ``prediction``."""
        return self.scheduler.step(prediction, t, latents, **self.step_kwargs, return_dict=False)[0]

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """``latents`` noised with ``noise`` to ``timestep`` (a one-element tensor)."""
        return self.scheduler.add_noise(latents, noise, timestep.repeat(noise.shape[0]))

    def drop_rows(self, latents: torch.Tensor, rows: list[int]) -> torch.Tensor:
        return drop_rows(self.scheduler, latents, rows)

    @contextlib.contextmanager
    def noise_from(self, source: Any) -> Iterator[None]:
        """Inside the block the scheduler's step noise comes from ``source.next()`` (each job's own
        :class:`~core.engine.rng.ImageRNG`, stacked), as each job draws alone."""
        with rng.scheduler_noise(self.scheduler, source):
            yield


def drop_rows(scheduler: Any, latents: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """``latents[rows]``, and the same rows of every per-sample tensor the scheduler keeps between steps.

    Per-sample state is what has the latents' shape (DPM-Solver/UniPC histories, Heun/DPM2's first-stage
    sample, LMS derivatives) plus the Brownian trees of the SDE samplers (one per image).
    """
    index = torch.tensor(rows, device=latents.device)
    shape = latents.shape
    sampler = getattr(scheduler, "noise_sampler", None)
    tree = getattr(sampler, "tree", sampler)
    if sampler is not None and (
        not getattr(tree, "batched", False) or len(getattr(tree, "trees", ())) != shape[0]
    ):
        raise GenerationError("this sampler cannot drop images from a running batch")

    def cut(value):
        if isinstance(value, torch.Tensor) and value.shape == shape:
            return value.index_select(0, index)
        if isinstance(value, list):
            return [cut(v) for v in value]
        if isinstance(value, tuple):
            return tuple(cut(v) for v in value)
        return value

    for name, value in list(vars(scheduler).items()):
        if name == "noise_sampler" and value is not None:  # BrownianTreeNoiseSampler(BatchedBrownianTree)
            tree.trees = [tree.trees[r] for r in rows]
            continue
        new = cut(value)
        if new is not value:
            setattr(scheduler, name, new)
    return latents.index_select(0, index)
