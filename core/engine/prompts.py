"""Step 3 of the pipeline: a request's prompts interpreted (``core.prompt``: A1111 schedules, ``AND``,
emphasis, extra-network tags) and encoded into a :class:`~core.engine.job.Plan`
(``core.engine.conditioning``), with the job's seeds, sampler and ENSD resolved.
"""

from __future__ import annotations

import random

from core import ranges
from core.config import EngineSettings
from core.engine import models, samplers
from core.engine.conditioning import EmbeddingLibrary, PromptEncoder, encode_interpretation
from core.engine.job import Plan
from core.engine.networks.hashes import lora_hashes_param
from core.types import GenerationError, GenerationRequest


def schedule_steps(request: GenerationRequest) -> int:
    """The steps a prompt schedule counts: A1111 counts model calls, two a step for second-order samplers."""
    return request.steps * 2 if samplers.is_second_order(request.sampler) else request.steps


def interpret(request: GenerationRequest, settings: EngineSettings, *, hires_steps: int | None = None):
    """(positive, negative) ``core.prompt`` interpretations, scheduled in A1111's step counts.

    ``hires_steps`` (the hires pass's scheduling steps): the hires pass's schedule (A1111's rebasing).
    """
    from core.prompt.errors import PromptError
    from core.prompt.interpret import interpret as interpret_prompt

    resolve_sampler(request)
    steps = schedule_steps(request)
    old = settings.use_old_scheduling
    try:
        positive = interpret_prompt(request.prompt, steps, hires_steps=hires_steps, use_old_scheduling=old)
        negative = interpret_prompt(
            request.negative_prompt, steps, negative=True, hires_steps=hires_steps, use_old_scheduling=old
        )
    except PromptError as exc:
        raise GenerationError(f"prompt error at column {exc.column}: {exc.message}") from None
    return positive, negative


def resolve_sampler(request: GenerationRequest) -> samplers.SamplerSpec:
    try:
        return samplers.resolve(request.sampler, request.schedule_type)
    except ValueError as exc:
        raise GenerationError(str(exc)) from None


def encode_prompt(
    request: GenerationRequest,
    model: models.LoadedModel,
    interpretations,
    *,
    settings: EngineSettings,
    embeddings: EmbeddingLibrary,
    first_pass: Plan | None = None,
) -> Plan:
    """The job's plan: ``interpretations`` encoded with the model's text encoders (inside the job's extra
    networks), its seeds (random ones drawn here) and ENSD. ``first_pass`` (the hires pass): its request,
    seeds and ENSD are kept, only the conditioning is new."""
    positive, negative = interpretations
    sampler = resolve_sampler(request)
    pipe = model.pipe
    text_encoder_2 = getattr(pipe, "text_encoder_2", None)
    widths = PromptEncoder.widths(model.kind, pipe.text_encoder, text_encoder_2)
    encoder = PromptEncoder(
        model.kind,
        pipe.text_encoder,
        text_encoder_2,
        emphasis=settings.emphasis,
        comma_padding_backtrack=settings.comma_padding_backtrack,
        clip_skip=request.clip_skip or model.source.clip_skip,
        embeddings=embeddings.for_widths(widths),
    )
    empty = encoder.encode([""])[0] if settings.pad_cond_uncond else None
    # negative first, as A1111 (its "TI hashes" list the positive prompt's embeddings first)
    negative_parts = encode_interpretation(encoder, negative, zero_if_empty=model.kind == "sdxl")
    positive_parts = encode_interpretation(encoder, positive)
    hashes = {
        **lora_hashes_param(positive.networks, settings.lora_dirs),
        **encoder.ti_hashes_infotext(),
    }
    if first_pass is None:
        seeds, subseeds = _seeds(request)
        ensd = _ensd(request, settings)
    else:
        request, ensd = first_pass.request, first_pass.ensd
        seeds, subseeds = first_pass.seeds, first_pass.subseeds
    return Plan(
        request=request,
        model=model,
        seeds=seeds,
        subseeds=subseeds,
        positive=positive_parts,
        negative=negative_parts[0],
        sampler=sampler,
        schedule_steps=schedule_steps(request),
        interpretation=positive,
        rng_source=request.rng or settings.rng,
        ensd=ensd,
        empty=empty,
        hashes=hashes,
    )


def _seeds(request: GenerationRequest) -> tuple[list[int], list[int]]:
    """Image i's seed and variation seed, as A1111's ``all_seeds`` / ``all_subseeds``: seed + i, but the
    job's seed for every image when the variation strength is above 0 (then only the variation seed
    moves: subseed + i). A1111 draws a random seed as ``random.randrange(4294967294)``, one short of the
    seeds it accepts."""
    seed, subseed = request.seed, request.subseed
    if seed == ranges.RANDOM_SEED:
        seed = random.randrange(ranges.RANDOM_SEED_BOUND)
    if subseed == ranges.RANDOM_SEED:
        subseed = random.randrange(ranges.RANDOM_SEED_BOUND)
    step = 1 if request.subseed_strength == 0 else 0
    return [seed + i * step for i in range(request.count)], [subseed + i for i in range(request.count)]


def _ensd(request: GenerationRequest, settings: EngineSettings) -> int:
    """The eta noise seed delta: the request's, else the setting. It goes to every job's ImageRNG, which
    re-seeds the step noise whenever it is not 0, as A1111's does for every sampler; the infotext names it
    only where A1111 writes it (``samplers.uses_ensd``)."""
    if request.eta_noise_seed_delta is not None:
        return request.eta_noise_seed_delta
    return settings.eta_noise_seed_delta
