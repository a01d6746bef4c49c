"""Vary (subtle / strong): an image again from its own seed, with A1111's variation seed mixed in.

A1111 draws an image's initial noise from its seed, and with a variation seed at strength ``t`` it
spherically interpolates (slerp) that noise towards the variation seed's noise. Two independent
Gaussian noises are nearly orthogonal, so the result is about ``cos(tπ/2)·seed + sin(tπ/2)·variation``:
the share of the noise's energy that is new is ``sin²(tπ/2)``. Composition comes mostly from the
low frequencies of that noise, so:

- **subtle**, ``t = 0.15``: 5% of the noise is new (correlation 0.97 with the original): the same
  composition, pose and colours, with changed details — Midjourney's "Vary (Subtle)".
- **strong**, ``t = 0.5``: half the noise is new (correlation 0.71): the subject and palette stay
  recognisable while the composition moves — Midjourney's "Vary (Strong)". (chant's 🔀 reaction
  uses 0.25, between the two: 15% new.)

A1111 gives every image of a job the same seed when a variation strength is set, and counts the
variation seed up instead (``processing.py``: ``seed + (i if subseed_strength == 0 else 0)``,
``subseed + i``), so one vary job of four images is four variations of the one image, as Midjourney's
V buttons are. :func:`image_seeds` is that rule.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.ranges import MAX_SEED, MAX_STRENGTH, MIN_STRENGTH
from core.types import GenerationRequest

SUBTLE = 0.15
STRONG = 0.5
STRENGTHS = {"subtle": SUBTLE, "strong": STRONG}


@dataclass(frozen=True)
class ImageSeeds:
    seed: int
    subseed: int


def image_seeds(seed: int, subseed: int, subseed_strength: float, count: int) -> list[ImageSeeds]:
    """A1111's seeds for the images of one job: ``seed + i`` (or ``seed`` for all under a variation
    strength) and ``subseed + i``."""
    return [ImageSeeds(seed + (i if subseed_strength == 0 else 0), subseed + i) for i in range(count)]


def vary(
    base: GenerationRequest,
    *,
    image_seed: int,
    strength: float | str,
    subseed: int,
    count: int | None = None,
    prompt: str | None = None,
) -> GenerationRequest:
    """The request that varies one image of ``base``: its seed ``image_seed``, the variation seed
    ``subseed`` (the caller draws it, e.g. ``random.randrange(MAX_SEED + 1)``) at ``strength``
    (``"subtle"``, ``"strong"`` or a number), ``count`` images (default: as many as ``base``).
    ``prompt`` replaces the prompt: pass the image's own expansion when the job used dynamic prompts.
    Hires fix, img2img and inpaint settings stay as they were.
    """
    if isinstance(strength, str):
        if strength not in STRENGTHS:
            raise ValueError(f"vary strength must be one of {', '.join(STRENGTHS)} or a number, not {strength!r}")
        strength = STRENGTHS[strength]
    if not MIN_STRENGTH < strength <= MAX_STRENGTH:
        raise ValueError(f"vary strength must be above {MIN_STRENGTH:g} and at most {MAX_STRENGTH:g}, not {strength:g}")
    for name, value in (("image_seed", image_seed), ("subseed", subseed)):
        if not 0 <= value <= MAX_SEED:
            raise ValueError(f"{name} must be between 0 and {MAX_SEED}, not {value}")
    changes: dict = {"seed": image_seed, "subseed": subseed, "subseed_strength": strength}
    if count is not None:
        changes["count"] = count
    if prompt is not None:
        changes["prompt"] = prompt
    return base.replace(**changes)
