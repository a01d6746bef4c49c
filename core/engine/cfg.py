"""A1111's CFG denoiser over a batch of jobs: UNet rows built from each job's conditioning at A1111's step
counter, run in as few UNet calls as the token lengths allow, and each job's ``AND`` parts combined.

``CFGDenoiser(model, jobs)(x, t)`` takes the batch's model input (one row per image, jobs in order) and
returns, row for row, uncond + Σ wᵢ·s·(condᵢ − uncond) of what ``model`` predicts. The combination is
linear, so it is the same whether ``model`` predicts ε (today: :class:`UNetModel`, the UNet on
scheduler-scaled input) or x0 (a k-diffusion-style wrapper that scales ``x`` by its sigma first, as
A1111's samplers call their model). The denoiser counts its own calls (``step``), as A1111's does: the
prompt schedule (editing, alternation) is read at that counter, two a step for second-order samplers.

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

# One UNet row block: (repeats of the job's input rows, encoder states, SDXL added conditioning).
RowBlock = tuple[int, torch.Tensor, dict[str, torch.Tensor] | None]


class UNetModel:
    """The UNet as the CFG denoiser's model: ``(x, t, embeds, added, image_cond) -> ε`` (or v).

    An inpainting UNet's ``image_cond`` rows are appended to ``x``'s channels here, after any scaling of
    ``x``. With ``buckets`` (a compiled UNet) the rows are padded up to the next bucket: padding repeats
    the last row and is cut off again; rows do not see each other, so the real rows' outputs do not
    change, and a compiled UNet (CUDA graphs) meets only the shapes it was warmed up for.
    """

    def __init__(self, unet: Any, buckets: Sequence[int] = ()) -> None:
        self.unet = unet
        self.buckets = tuple(sorted(buckets))

    def __call__(self, x, t, *, embeds, added=None, image_cond=None) -> torch.Tensor:
        if image_cond is not None:  # inpainting UNet: [latents, mask, masked-image latents]
            x = torch.cat([x, image_cond.to(x.dtype)], dim=1)
        rows = x.shape[0]
        target = next((b for b in self.buckets if b >= rows), rows)
        if target > rows:

            def pad(tensor):
                return torch.cat([tensor, tensor[-1:].expand(target - rows, *tensor.shape[1:])])

            x, embeds = pad(x), pad(embeds)
            added = None if added is None else {name: pad(value) for name, value in added.items()}
        out = self.unet(x, t, encoder_hidden_states=embeds, added_cond_kwargs=added, return_dict=False)[0]
        return out[:rows]


@dataclass
class JobCond:
    """One job's conditioning, as the CFG denoiser reads it."""

    count: int  # images (rows of x)
    positive: list[ScheduledPart]  # the AND parts, each with its weight
    negative: ScheduledPart
    cfg_scale: float
    empty: Cond | None = None  # pad_cond_uncond: the empty prompt's encoding
    image_cond: torch.Tensor | None = None  # inpainting UNets: one row per image
    time_ids: torch.Tensor | None = None  # SDXL: one row
    _cache: dict = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, plan: Plan, time_ids: torch.Tensor | None = None) -> JobCond:
        return cls(
            count=len(plan.seeds),
            positive=plan.positive,
            negative=plan.negative,
            cfg_scale=plan.request.cfg_scale,
            empty=plan.empty,
            image_cond=plan.image_cond,
            time_ids=time_ids,
        )

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

    def combine(self, out: torch.Tensor) -> torch.Tensor:
        """A1111's CFG with ``AND`` on this job's outputs ([uncond, cond₁ … condₙ], ``count`` rows each)."""
        count = self.count
        out_uncond, out_conds = out[:count], out[count:]
        result = out_uncond
        for index, part in enumerate(self.positive):
            cond = out_conds[index * count : (index + 1) * count]
            result = result + (part.weight * self.cfg_scale) * (cond - out_uncond)
        return result


class CFGDenoiser:
    """Every active job's CFG over one batch of rows (see the module doc). ``jobs`` may shrink between
    calls (:meth:`keep`): a cancelled job's rows leave the batch."""

    def __init__(self, model: Any, jobs: Sequence[JobCond]) -> None:
        self.model = model  # (x, t, *, embeds, added, image_cond) -> prediction
        self.jobs = list(jobs)
        self.step = 0  # A1111's step counter: one per call

    def keep(self, positions: Sequence[int]) -> None:
        """Only the jobs at ``positions`` (of the current ones) stay."""
        self.jobs = [self.jobs[p] for p in positions]

    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        outputs = self.forward(x, t, self.step)
        self.step += 1
        return torch.cat([job.combine(out) for job, out in zip(self.jobs, outputs, strict=True)])

    def forward(self, x: torch.Tensor, t, counter: int) -> list[torch.Tensor]:
        """Each job's raw outputs, [uncond, cond₁ … condₙ]: row blocks of equal token length share a call."""
        blocks: list[tuple[int, torch.Tensor, torch.Tensor | None, torch.Tensor, dict | None]] = []
        owner: list[int] = []  # the job of each block
        row = 0
        for position, job in enumerate(self.jobs):
            rows = x[row : row + job.count]
            row += job.count
            for repeats, embeds, added in job.row_blocks(counter):
                image_cond = job.image_cond
                if repeats > 1:
                    rows_in = torch.cat([rows] * repeats)
                    image_cond = None if image_cond is None else torch.cat([image_cond] * repeats)
                else:
                    rows_in = rows
                blocks.append((embeds.shape[1], rows_in, image_cond, embeds, added))
                owner.append(position)
        outputs: list[torch.Tensor | None] = [None] * len(blocks)
        for length in dict.fromkeys(block[0] for block in blocks):
            members = [k for k, block in enumerate(blocks) if block[0] == length]
            out = self._call(t, [blocks[k] for k in members])
            sizes = [blocks[k][1].shape[0] for k in members]
            for k, piece in zip(members, out.split(sizes), strict=True):
                outputs[k] = piece
        return [
            torch.cat([o for o, p in zip(outputs, owner, strict=True) if p == position])
            for position in range(len(self.jobs))
        ]

    def _call(self, t, blocks: list) -> torch.Tensor:
        """One model call over row blocks of equal token length."""
        x = torch.cat([block[1] for block in blocks])
        embeds = torch.cat([block[3] for block in blocks])
        image_cond = None
        if blocks[0][2] is not None:
            image_cond = torch.cat([block[2] for block in blocks])
        added = None
        if blocks[0][4] is not None:
            added = {name: torch.cat([block[4][name] for block in blocks]) for name in blocks[0][4]}
        return self.model(x, t, embeds=embeds, added=added, image_cond=image_cond)


def time_ids(model: models.LoadedModel, shape: Sequence[int], device) -> torch.Tensor | None:
    """SDXL's added ``time_ids`` for latents of ``shape`` (C, h, w); None for other models."""
    if model.kind != "sdxl":
        return None
    factor = model.vae_scale_factor
    height, width = shape[1] * factor, shape[2] * factor
    return torch.tensor([[height, width, 0, 0, height, width]], dtype=model.dtype, device=device)
