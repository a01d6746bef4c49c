"""A1111's CFG denoiser over a batch of jobs: UNet rows built from each job's conditioning at A1111's step
counter, run in as few UNet calls as the token lengths allow, each job's ``AND`` parts combined with its
own CFG scale, and inpaint's kept area blended in, as A1111's ``CFGDenoiser.forward`` does.

:class:`CFGDenoiser` is the model a sampler of ``core.engine.samplers`` calls, with one row per image (jobs
in order): the k-diffusion samplers as ``model(x, σ) → x₀`` (the UNet at c_in·x and the continuous t of σ,
eps or v scalings: :meth:`NoiseSchedule.denoise`), the timesteps samplers as ``model(x, t) → ε`` (DDIM
CFG++: ``(ε, ε_uncond)``). It counts its own calls (``step``), as A1111's does: the prompt schedule
(editing, alternation) is read at that counter, two a step for second-order samplers.

Per job and counter, :meth:`JobCond.row_blocks` gives its UNet row blocks: [uncond, cond₁ … condₙ] as one
block when their token lengths agree, else uncond and the conds apart (A1111's default; with
``pad_cond_uncond`` the shorter side is padded with the empty prompt). All blocks of equal token length,
of every job, share one UNet call. Nothing is padded that a job alone would not pad, so each row sees
exactly the conditioning it sees alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from core.engine import models
from core.engine.conditioning import Cond, ScheduledPart, stack_conds
from core.engine.job import Plan
from core.engine.sampling import CFGPP_SCALE, NoiseSchedule, combine_cfg, rescale_cfg, timestep_eps
from core.engine.sampling.model import rescale_cfg_eps

# One UNet row block: (repeats of the job's input rows, encoder states, SDXL added conditioning).
RowBlock = tuple[int, torch.Tensor, dict[str, torch.Tensor] | None]


class UNetModel:
    """The UNet as the CFG denoiser's model: ``(x, t, embeds, added, image_cond) -> ε`` (or v).

    ``x`` comes in the sampler's dtype (float32, as A1111's latents) and goes into the UNet in its own dtype;
    the output comes back as float32. An inpainting UNet's ``image_cond`` rows are appended to ``x``'s
    channels here, after any scaling of ``x``. With ``buckets`` (a compiled UNet) the rows are padded up to
    the next bucket: padding repeats the last row and is cut off again; rows do not see each other, so the
    real rows' outputs do not change, and a compiled UNet (CUDA graphs) meets only the shapes it was warmed
    up for.
    """

    def __init__(self, unet: Any, buckets: Sequence[int] = (), guide: Any = None) -> None:
        self.unet = unet
        self.dtype = unet.dtype
        self.buckets = tuple(sorted(buckets))
        self.guide = guide  # core.engine.guide.BatchGuide: ControlNet residuals, IP-Adapter rows

    def __call__(self, x, t, *, embeds, added=None, image_cond=None, rows=None) -> torch.Tensor:
        """``rows``: each row's (job position, conditional), for the guide."""
        x = x.to(self.dtype)
        count = x.shape[0]
        target = next((b for b in self.buckets if b >= count), count)
        if target > count:

            def pad(tensor):
                return torch.cat([tensor, tensor[-1:].expand(target - count, *tensor.shape[1:])])

            x, embeds, t = pad(x), pad(embeds), pad(t)
            image_cond = None if image_cond is None else pad(image_cond)
            added = None if added is None else {name: pad(value) for name, value in added.items()}
            rows = None if rows is None else [*rows, *[rows[-1]] * (target - count)]
        extra = {}
        if self.guide is not None and rows is not None:  # on the latents alone, as the UNet gets them
            extra = self.guide.unet_kwargs(x, t, embeds, added, rows)
        if image_cond is not None:  # inpainting UNet: [latents, mask, masked-image latents]
            x = torch.cat([x, image_cond.to(self.dtype)], dim=1)
        out = self.unet(
            x, t, encoder_hidden_states=embeds, added_cond_kwargs=added, return_dict=False, **extra
        )[0]
        return out[:count].float()


@dataclass
class JobCond:
    """One job's conditioning and inpaint blend, as the CFG denoiser reads them."""

    count: int  # images (rows of x)
    positive: list[ScheduledPart]  # the AND parts, each with its weight
    negative: ScheduledPart
    cfg_scale: float
    cfg_rescale: float = 0.0  # φ of CFG rescale (0: off)
    empty: Cond | None = None  # pad_cond_uncond: the empty prompt's encoding
    image_cond: torch.Tensor | None = None  # inpainting UNets: one row per image
    time_ids: torch.Tensor | None = None  # SDXL: one row
    init: torch.Tensor | None = None  # inpaint: the source latents A1111 blends in (its ``init_latent``)
    nmask: torch.Tensor | None = None  # inpaint: 1 where the image is repainted (A1111's ``nmask``)
    _cache: dict = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, plan: Plan, time_ids: torch.Tensor | None = None, *, init=None, nmask=None) -> JobCond:
        return cls(
            count=len(plan.seeds),
            positive=plan.positive,
            negative=plan.negative,
            cfg_scale=plan.request.cfg_scale,
            cfg_rescale=plan.request.cfg_rescale,
            empty=plan.empty,
            image_cond=plan.image_cond,
            time_ids=time_ids,
            init=init,
            nmask=nmask,
        )

    def blend(self, latents: torch.Tensor) -> torch.Tensor:
        """Inpaint: A1111's ``latents * nmask + init_latent * mask``; other jobs' latents unchanged."""
        if self.nmask is None:
            return latents
        return latents * self.nmask + self.init * (1.0 - self.nmask)

    def row_blocks(self, counter: int) -> list[RowBlock]:
        """The UNet calls for the conditioning at ``counter``: (repeats, embeds, added_cond_kwargs).

        One block with [uncond, cond₁ … condₙ] when their lengths agree, else uncond and the conds
        apart. Cached per distinct conditioning: schedules switch rarely.
        """
        conds = [part.at(counter) for part in self.positive]
        uncond = self.negative.at(counter)
        key = (id(uncond), *map(id, conds))
        if key not in self._cache:
            self._cache[key] = self._blocks(conds, uncond)
        return self._cache[key]

    def _blocks(self, conds: list[Cond], uncond: Cond) -> list[RowBlock]:
        count = self.count

        def expand(tensor: torch.Tensor | None) -> torch.Tensor | None:  # each row `count` times
            return None if tensor is None else tensor.repeat_interleave(count, dim=0)

        def added(pooled: torch.Tensor | None, rows: int):
            if self.time_ids is None:
                return None
            return {"text_embeds": pooled, "time_ids": self.time_ids.repeat(rows, 1)}

        cond_embeds = stack_conds([c.embeds for c in conds])  # [parts, tokens, channels]
        cond_pooled = torch.stack([c.pooled for c in conds]) if conds[0].pooled is not None else None
        uncond_embeds = uncond.embeds[None]
        if self.empty is not None and uncond_embeds.shape[1] != cond_embeds.shape[1]:
            longest = max(uncond_embeds.shape[1], cond_embeds.shape[1])
            cond_embeds, uncond_embeds = self._pad(cond_embeds, longest), self._pad(uncond_embeds, longest)
        uncond_pooled = uncond.pooled[None] if uncond.pooled is not None else None
        n = len(conds)
        if uncond_embeds.shape[1] == cond_embeds.shape[1]:
            pooled = None if cond_pooled is None else torch.cat([uncond_pooled, cond_pooled])
            embeds = expand(torch.cat([uncond_embeds, cond_embeds]))
            return [(n + 1, embeds, added(expand(pooled), (n + 1) * count))]
        return [
            (1, expand(uncond_embeds), added(expand(uncond_pooled), count)),
            (n, expand(cond_embeds), added(expand(cond_pooled), n * count)),
        ]

    def _pad(self, embeds: torch.Tensor, length: int) -> torch.Tensor:
        """A1111 pad_cond_uncond: the shorter side gets copies of the empty prompt's encoding."""
        if embeds.shape[1] >= length:
            return embeds
        repeats = (length - embeds.shape[1]) // self.empty.embeds.shape[0]
        filler = self.empty.embeds[None].repeat(embeds.shape[0], repeats, 1)
        return torch.cat([embeds, filler], dim=1)

    def split(self, out: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """This job's raw outputs ([uncond, cond₁ … condₙ], ``count`` rows each) as (uncond, conds)."""
        count = self.count
        return out[:count], [out[(k + 1) * count : (k + 2) * count] for k in range(len(self.positive))]


class CFGDenoiser:
    """Every active job's CFG over one batch of rows (see the module doc), as a sampler's model.

    ``schedule`` is the plan's noise schedule on the UNet's device (LCM's table for LCM); ``timesteps``:
    the caller is a timesteps sampler (ε at integer t, inpaint blended into x before the model call, as
    A1111's ``CFGDenoiserTimesteps``); ``cfgpp``: DDIM CFG++ (scale × 1/12.5, and ε_uncond returned too).
    ``jobs`` may shrink between calls (:meth:`keep`): a cancelled job's rows leave the batch.
    """

    def __init__(
        self, model: Any, jobs: Sequence[JobCond], schedule: NoiseSchedule, *, timesteps=False, cfgpp=False
    ) -> None:
        self.model = model  # (x, t, *, embeds, added, image_cond) -> prediction
        self.jobs = list(jobs)
        self.schedule = schedule
        self.timesteps = timesteps
        self.scale = CFGPP_SCALE if cfgpp else 1.0
        self.cfgpp = cfgpp
        self.step = 0  # A1111's step counter: one per call

    def keep(self, positions: Sequence[int]) -> None:
        """Only the jobs at ``positions`` (of the current ones) stay."""
        self.jobs = [self.jobs[p] for p in positions]

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor):
        if self.timesteps:  # A1111: mask_before_denoising for the timesteps samplers
            x = torch.cat([job.blend(rows) for job, rows in zip(self.jobs, self.rows(x), strict=True)])
        outputs = self.forward(x, sigma, self.step)
        guided, unconds = [], []
        for job, out, rows, sigmas in zip(self.jobs, outputs, self.rows(x), self.rows(sigma), strict=True):
            uncond, conds = job.split(out)
            weights = [part.weight for part in job.positive]
            result = combine_cfg(uncond, conds, weights, job.cfg_scale * self.scale)
            if job.cfg_rescale:
                cond = conds[0] if weights == [1.0] else combine_cfg(uncond, conds, weights, 1.0)
                result = self._rescale(rows, sigmas, cond, result, job.cfg_rescale)
            guided.append(result if self.timesteps else job.blend(result))  # A1111: blend x₀ after CFG
            unconds.append(uncond)
        self.step += 1
        out = torch.cat(guided)
        return (out, torch.cat(unconds)) if self.cfgpp else out

    def rows(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``x`` cut into each job's rows."""
        return list(x.split([job.count for job in self.jobs]))

    def _rescale(self, x, sigma, cond, guided, phi):
        if self.timesteps:
            return rescale_cfg_eps(self.schedule.alphas_cumprod, x, sigma, cond, guided, phi)
        return rescale_cfg(x, sigma, cond, guided, phi)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, counter: int) -> list[torch.Tensor]:
        """Each job's raw outputs, [uncond, cond₁ … condₙ]: row blocks of equal token length share a call."""
        blocks: list[
            tuple[int, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor, dict | None, list]
        ] = []
        owner: list[int] = []  # the job of each block
        for position, (job, rows, sigmas) in enumerate(
            zip(self.jobs, self.rows(x), self.rows(sigma), strict=True)
        ):
            job_blocks = job.row_blocks(counter)
            for k, (repeats, embeds, added) in enumerate(job_blocks):
                image_cond = job.image_cond
                if repeats > 1:
                    rows_in, sigmas_in = torch.cat([rows] * repeats), torch.cat([sigmas] * repeats)
                    image_cond = None if image_cond is None else torch.cat([image_cond] * repeats)
                else:
                    rows_in, sigmas_in = rows, sigmas
                # Each row's (job, carries a prompt): [uncond, conds…] in one block, or uncond then conds.
                uncond = job.count if k == 0 else 0
                meta = [(position, r >= uncond) for r in range(repeats * job.count)]
                blocks.append((embeds.shape[1], rows_in, sigmas_in, image_cond, embeds, added, meta))
                owner.append(position)
        outputs: list[torch.Tensor | None] = [None] * len(blocks)
        for length in dict.fromkeys(block[0] for block in blocks):
            members = [k for k, block in enumerate(blocks) if block[0] == length]
            out = self._call([blocks[k] for k in members])
            sizes = [blocks[k][1].shape[0] for k in members]
            for k, piece in zip(members, out.split(sizes), strict=True):
                outputs[k] = piece
        return [
            torch.cat([o for o, p in zip(outputs, owner, strict=True) if p == position])
            for position in range(len(self.jobs))
        ]

    def _call(self, blocks: list) -> torch.Tensor:
        """One model call over row blocks of equal token length: x₀ (k-diffusion) or ε (timesteps)."""
        x = torch.cat([block[1] for block in blocks])
        sigma = torch.cat([block[2] for block in blocks])
        embeds = torch.cat([block[4] for block in blocks])
        image_cond = None
        if blocks[0][3] is not None:
            image_cond = torch.cat([block[3] for block in blocks])
        added = None
        if blocks[0][5] is not None:
            added = {name: torch.cat([block[5][name] for block in blocks]) for name in blocks[0][5]}

        rows = [meta for block in blocks for meta in block[6]]

        def unet(x_in, t):
            return self.model(x_in, t, embeds=embeds, added=added, image_cond=image_cond, rows=rows)

        schedule = self.schedule
        if self.timesteps:
            return timestep_eps(schedule.alphas_cumprod, schedule.prediction, unet, x, sigma)
        return schedule.denoise(unet, x, sigma)


def time_ids(model: models.LoadedModel, shape: Sequence[int], device) -> torch.Tensor | None:
    """SDXL's added ``time_ids`` for latents of ``shape`` (C, h, w); None for other models."""
    if model.kind != "sdxl":
        return None
    factor = model.vae_scale_factor
    height, width = shape[1] * factor, shape[2] * factor
    return torch.tensor([[height, width, 0, 0, height, width]], dtype=model.dtype, device=device)
