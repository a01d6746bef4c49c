"""The cost of a job, defined once: the GPU work a request asks for (torch-free).

UNet rows × pixels × model calls, in the unit the queue has always used: a plain prompt (one ``AND``
part, 75 tokens or fewer, a negative as short, a first-order sampler) costs width × height × steps per
image, so 512², 20 steps is one standard image. What multiplies it:

* ``AND`` parts: each is one more row in the UNet batch beside the uncond row (A1111's composable
  diffusion): a plain prompt runs 2 rows per model call, a prompt of n parts n + 1.
* chunks: each 75-token chunk beyond the first lengthens its row's cross-attention context by 77
  tokens (:data:`CHUNK_SHARE` of the row's work); the cond rows run at their longest part's length.
* second-order samplers call the model twice per step (the last step once).
* img2img and inpaint run the strength's tail of the steps; hires fix adds its second pass at its
  own size, steps and strength (and its own prompt, if it has one).
* an upscale job: :data:`UPSCALE_PIXEL_STEPS` per output pixel for the upscaler model, plus its detail
  pass as img2img over the output.
* the detailer: one inpaint pass per image (one region: the usual face) at its strength's tail of the
  steps; face restoration is not counted (one small network per face).
* the text encoder: each chunk of every distinct scheduled text beyond a plain prompt's two.
* ControlNet units (half a UNet row each, over their guidance window) and reference images.

The jobs table stores it (``jobs.cost``); the fair scheduler charges guilds with it, the queue measures
its throughput in it (cost per GPU second over the jobs finished last, so the measured run time
corrects the model below), and the submit path turns it into GPU seconds for the quota and the ETAs.
Everything that weighs a job reads it from here, so the queue's order, its ETAs and the quota never
disagree about what a job costs.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from core.prompt import PromptError, interpret, tokenize_text
from core.ranges import SECOND_ORDER_SAMPLERS
from core.types import GenerationRequest, Mode

STANDARD_PIXEL_STEPS = 512 * 512 * 20  # one standard image: 512², 20 steps = 1.0 standard image

# Each 77-token chunk beyond the first adds cross-attention over 77 more context tokens to a row: about
# 3 GMACs (QKᵀ and AV at four resolutions, plus the K/V projections) against the SD 1.5 UNet's ~340
# at 512², so ~1% of the row. (Issue 18 measured 0.6% per chunk on a CPU: 857 chunks, 5.9× the denoise.)
CHUNK_SHARE = 0.01
# One chunk through CLIP ViT-L/14's text model (~9.5 GMACs) is about 1/36 of one UNet row at 512² (one
# row of one model call: half of a plain step's 512 × 512 pixel-steps).
TEXT_CHUNK_PIXEL_STEPS = 512 * 512 / 2 / 36
PLAIN_ENCODED = 2  # chunks a plain prompt encodes (its text and the negative): part of the standard
# A ControlNet is a copy of the UNet's encoder and middle block: about half a UNet row's work, on the
# rows and steps it acts on (its guidance window; weight 0 runs nothing). An IP-Adapter adds one short
# cross-attention per layer (its image tokens): a few percent.
CONTROLNET_SHARE = 0.5
REFERENCE_SHARE = 0.05


@dataclass(frozen=True)
class PromptShape:
    """What a prompt asks of the UNet and the text encoder."""

    parts: int  # AND parts: cond rows per image (1 for a negative prompt)
    max_chunks: int  # 75-token chunks of its longest part, at the step where that is longest
    mean_chunks: float  # the same, averaged over the sampling steps (prompt editing changes it)
    encoded: int  # chunks the text encoder runs: every distinct scheduled text, once


@lru_cache(maxsize=4096)
def _chunks(text: str, literal: bool = False) -> int:
    """75-token chunks of a scheduled text; ``literal``: of text whose brackets cannot be read."""
    return len(tokenize_text(text, emphasis="None" if literal else "Original").chunks)


@lru_cache(maxsize=256)
def prompt_shape(prompt: str, steps: int, *, negative: bool = False) -> PromptShape:
    """The shape of ``prompt`` over ``steps`` sampling steps, as A1111 reads it (``core.prompt``)."""
    steps = max(1, steps)
    try:
        plan = interpret(prompt, steps, negative=negative, max_chars=max(1, len(prompt)))
        parts = [[(entry.until_step, entry.text) for entry in sub.schedule] for sub in plan.subprompts]
    except (PromptError, ValueError):  # unusable: refused before queueing; costed as literal text
        return PromptShape(1, _chunks(prompt, True), float(_chunks(prompt, True)), _chunks(prompt, True))
    constant = 0  # the longest part that does not change over the steps
    per_step = [0] * steps  # the longest of the parts that do, at each step
    for schedule in parts:
        if len(schedule) == 1:
            constant = max(constant, _chunks(schedule[0][1]))
            continue
        start = 0
        for until, text in schedule:  # A1111: an entry serves the step counters up to its end step
            n = _chunks(text)
            stop = steps if until >= schedule[-1][0] else min(steps, until + 1)
            for t in range(start, stop):
                per_step[t] = max(per_step[t], n)
            start = max(start, stop)
    lengths = [max(constant, n) for n in per_step]
    encoded = sum(_chunks(text) for text in {text for schedule in parts for _, text in schedule})
    return PromptShape(len(parts), max(lengths), sum(lengths) / steps, encoded)


def model_calls(sampler: str, steps: int) -> int:
    """UNet calls of ``steps`` sampling steps: A1111's second-order samplers call it twice per step but
    the last (which ends at sigma 0 with one Euler step). A name may carry an old schedule suffix."""
    name = sampler.strip().casefold()
    second = any(name == s.casefold() or name.startswith(s.casefold() + " ") for s in SECOND_ORDER_SAMPLERS)
    return 2 * steps - 1 if second and steps > 0 else steps


def _rows(prompt: PromptShape, negative: PromptShape) -> float:
    """UNet rows per image and model call, in plain rows (a plain prompt: 2), each row lengthened by its
    chunks; halved, so that a plain prompt's factor is 1."""
    cond = prompt.parts * (1 + CHUNK_SHARE * (prompt.mean_chunks - 1))
    uncond = 1 + CHUNK_SHARE * (negative.mean_chunks - 1)
    return (cond + uncond) / 2


def _tail(steps: int, strength: float) -> int:
    """Steps a pass from an image runs at this denoising strength (at least one)."""
    return max(1, int(steps * strength))


def _guide_factor(r: GenerationRequest) -> float:
    """The UNet work's factor for the job's ControlNet units and reference images (1: none)."""
    factor = 1.0
    for unit in r.controls:
        if unit.weight > 0:
            factor += CONTROLNET_SHARE * max(0.0, min(1.0, unit.guidance_end) - max(0.0, unit.guidance_start))
    if r.references and any(ref.scale > 0 for ref in r.references):
        factor += REFERENCE_SHARE
    return factor


def job_cost(r: GenerationRequest) -> float:
    """The job's GPU work in pixel-steps of a plain prompt (see the module docstring)."""
    if r.mode == Mode.UPSCALE:
        return upscale_cost(r)
    prompt = prompt_shape(r.prompt, r.steps)
    negative = prompt_shape(r.negative_prompt, r.steps, negative=True)
    steps = r.steps if r.mode == Mode.TXT2IMG else _tail(r.steps, r.denoising_strength)
    unet = r.width * r.height * model_calls(r.sampler, steps) * _rows(prompt, negative)
    encoded = prompt.encoded + negative.encoded
    if r.enable_hr:
        if r.hr_resize_x and r.hr_resize_y:
            w, h = r.hr_resize_x, r.hr_resize_y
        else:
            w, h = int(r.width * r.hr_scale), int(r.height * r.hr_scale)
        second = r.hr_second_pass_steps or r.steps
        if r.hr_prompt or r.hr_negative_prompt:  # its own prompts (an empty one: the first pass's)
            prompt = prompt_shape(r.hr_prompt or r.prompt, second)
            negative = prompt_shape(r.hr_negative_prompt or r.negative_prompt, second, negative=True)
            encoded += prompt.encoded + negative.encoded
        calls = model_calls(r.sampler, _tail(second, r.hr_denoising_strength))
        unet += w * h * calls * _rows(prompt, negative)
    unet *= _guide_factor(r)
    if r.detailer:  # one region per image (the usual face), inpainted at the image's size
        pixels = w * h if r.enable_hr else r.width * r.height
        unet += pixels * model_calls(r.sampler, _tail(r.steps, r.detailer_strength)) * _rows(prompt, negative)
    text = TEXT_CHUNK_PIXEL_STEPS * max(0, encoded - PLAIN_ENCODED)
    return float(unet * r.count + text)


# An upscaler model pass (R-ESRGAN 4x+, 512² -> 2048²) takes about as long on a GPU as one standard
# image: 512² × 20 pixel-steps over 2048² output pixels, 1.25 pixel-steps per output pixel.
UPSCALE_PIXEL_STEPS = 1.25


def upscale_cost(r: GenerationRequest) -> float:
    """An upscale job: the model pass over the output pixels, plus the detail pass (img2img over the
    output in tiles: the strength's tail of the steps on every output pixel, overlaps not counted)."""
    work = r.width * r.height * UPSCALE_PIXEL_STEPS
    if r.upscale_detail > 0:
        prompt = prompt_shape(r.prompt, r.steps)
        negative = prompt_shape(r.negative_prompt, r.steps, negative=True)
        calls = model_calls(r.sampler, _tail(r.steps, r.upscale_detail))
        work += r.width * r.height * calls * _rows(prompt, negative)
    return float(work)


def standard_images(work: float) -> float:
    """A cost (as stored) in standard images, the unit of the fair scheduler and of throughput; never
    zero (the scheduler refuses free jobs)."""
    return max(work / STANDARD_PIXEL_STEPS, 1e-6)
