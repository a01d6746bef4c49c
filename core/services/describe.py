"""/describe and ``chant describe``: an image (an attachment, or a job's image) back into prompt text with
a WD14 v3 booru tagger (``postprocess.tagger`` in ``postprocess.tagger_dirs``; onnxruntime on the CPU, in
the image pool, off the event loop). No job, no quota: nothing is generated.

The answer is up to four prompts, each the tags above the thresholds in the tagger's order (characters,
then general tags, by score): all of them, then the strongest 24, 12 and 6 — the same description from
long to short, as Midjourney's /describe offers four to pick from.
"""

from __future__ import annotations

import functools
import io

from core.config import PostprocessSettings
from core.services import policy
from core.services.context import Context, guild_of
from core.services.images import load_source
from core.services.reads import images_of, visible_job
from core.services.types import Actor, Description, UserError

PROMPT_LENGTHS = (0, 24, 12, 6)  # tags per prompt; 0 = every tag above the thresholds
MAX_PROMPTS = 4


def prompts_of(tags) -> tuple[str, ...]:
    """Up to four distinct prompts from ``tags`` (``core.engine.postprocess.tagger.Tags``), longest first."""
    out: list[str] = []
    for limit in PROMPT_LENGTHS:
        text = tags.prompt(limit=limit)
        if text and text not in out:
            out.append(text)
    return tuple(out[:MAX_PROMPTS])


@functools.lru_cache(maxsize=4)
def _taggers(folders: tuple[str, ...]):
    from core.engine.postprocess.tagger import Taggers  # numpy + onnxruntime, no torch

    return Taggers(folders)


def describe_image(data: bytes, post: PostprocessSettings) -> Description:
    """The tagger over ``data`` (already checked as an image); a ``PostprocessError`` when it is missing."""
    from PIL import Image

    tagger = _taggers(tuple(post.tagger_dirs)).get(post.tagger)
    with Image.open(io.BytesIO(data)) as image:
        tags = tagger.tag(
            image.convert("RGBA"),
            general_threshold=post.tagger_general_threshold,
            character_threshold=post.tagger_character_threshold,
        )
    return Description(tagger.name, prompts_of(tags), (*tags.characters, *tags.general))


async def describe(
    ctx: Context, actor: Actor, *, image: bytes | None = None, job_id: int | None = None, index: int = 0
) -> Description:
    from core.engine.postprocess.files import PostprocessError

    if (job_id is None) == (image is None):
        raise UserError("invalid", "Attach an image (image:) or name a job (job:) to describe — one of them.")
    async with ctx.db.session() as s:
        guild = await guild_of(s, actor)
        policy.check_channel(ctx.settings, actor, guild)
        if job_id is not None:
            job = await visible_job(s, actor, job_id)
            images = await images_of(s, job_id)
            if not 0 <= index < len(images):
                raise UserError("not_found", f"Job #{job_id} has no image {index + 1} (it is {job.state}).")
            decisions = policy.moderation_here(actor, guild, ctx.moderation, [images[index].score], job)
            policy.check_not_blocked(decisions)
            image = images[index].png
    assert image is not None
    checked = await ctx.images.run(
        functools.partial(load_source, max_pixels=ctx.max_input_pixels, what="image to describe"), image
    )
    try:
        found = await ctx.images.run(describe_image, checked.data, ctx.settings.postprocess)
    except PostprocessError as exc:
        raise UserError(
            "postprocess", f"/describe is not available here: {exc}. Ask a server admin."
        ) from None
    if not found.prompts:
        raise UserError("describe.empty", "I found no tags above the threshold in that image.")
    return found
