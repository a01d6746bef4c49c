"""The rules a request and an actor are held to: no database, no I/O, every refusal a :class:`UserError`.

Limits (the operator's, lowered per guild by its admins), queue caps, where the bot answers, what a
prompt may contain (its syntax, banned words, known LoRAs), who may see, reroll, cancel, delete or
administer what, and where an image may be posted again (moderation). Value ranges come from :mod:`core.ranges`, the one definition the bot and the engine
share, so nothing accepted here is refused later.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from core import moderation, ranges
from core.config import EngineSettings, PostprocessSettings, Settings
from core.cost import prompt_shape
from core.engine.image_modes import hires_target  # torch-free: the engine's own hires target
from core.engine.postprocess.names import listing
from core.prompt import Interpretation, PromptError, interpret
from core.services.types import Actor, ImageModeration, UserError
from core.storage.models import Guild, Job
from core.storage.repositories import GUILD_LIMIT_FIELDS, QuotaExceeded, moderation_of
from core.types import GenerationRequest, Mode

Limits = dict[str, int]  # GUILD_LIMIT_FIELDS -> value


@dataclass(frozen=True)
class Caps:
    """Queued + running jobs allowed at once."""

    per_user: int  # of one user, in one guild (or in DMs)
    per_guild: int
    global_: int


def limits(settings: Settings, guild: Guild | None) -> Limits:
    """The operator's limits, with the guild's own (lower) values where its admins set one."""
    out = {name: getattr(settings.limits, name) for name in GUILD_LIMIT_FIELDS}
    if guild is not None:
        for name in GUILD_LIMIT_FIELDS:
            value = getattr(guild, name)
            if value is not None:
                out[name] = value
    return out


def caps(settings: Settings, guild: Guild | None) -> Caps:
    lim = limits(settings, guild)
    return Caps(lim["max_queued_per_user"], lim["max_queued_per_guild"], settings.limits.max_queued_global)


def over_cap(caps: Caps, counts: tuple[int, int, int]) -> str | None:
    """The cap one more job would pass ("user" | "guild" | "global"), given the active counts of
    (this user here, this guild, everyone), or None."""
    n_user, n_guild, n_all = counts
    if n_user >= caps.per_user:
        return "user"
    if n_guild >= caps.per_guild:
        return "guild"
    if n_all >= caps.global_:
        return "global"
    return None


def cap_refusal(limit: str, caps: Caps, retry_after_s: float | None) -> UserError:
    when = (
        f" Try again in about {max(1, round(retry_after_s))} s."
        if retry_after_s is not None
        else " Try again when one finishes."
    )
    if limit == "user":
        msg = f"You already have {caps.per_user} jobs waiting or running, the most allowed here.{when}"
    elif limit == "guild":
        msg = f"This server already has {caps.per_guild} jobs waiting or running, its limit.{when}"
    else:
        msg = f"The bot's queue is full ({caps.global_} jobs).{when}"
    return UserError(f"queue.{limit}_limit", msg, retry_after_s=retry_after_s)


def quota_refusal(exc: QuotaExceeded) -> UserError:
    u = exc.usage
    unit = "images" if u.unit == "images" else "GPU seconds"
    return UserError(
        "quota",
        f"You have used {u.used:g} of your {u.allowance:g} {unit} this {u.period}, and this request "
        f"needs {exc.requested:g}. Your quota resets at {u.resets_at:%H:%M} UTC "
        f"(<t:{int(u.resets_at.timestamp())}:R>).",
        retry_after_s=exc.retry_after_s,
    )


def source_pruned(job_id: int, retention_days: int) -> UserError:
    return UserError(
        "source_pruned",
        f"The source image of job {job_id} is no longer stored: source images are kept {retention_days} "
        "days after the last job that used them. Start again from the picture with /img2img.",
    )


# ------------------------------------------------------------------------------------ who may do what


def check_channel(settings: Settings, actor: Actor, guild: Guild | None) -> None:
    if actor.guild_id is None and settings.discord.dm_mode == "refuse":
        raise UserError("dm", "I do not take requests in direct messages. Use /imagine in a server.")
    if guild is not None and guild.channel_ids and actor.channel_id not in guild.channel_ids:
        channels = ", ".join(f"<#{c}>" for c in guild.channel_ids[:10])
        raise UserError("channel", f"I only answer in these channels on this server: {channels}.")


def is_admin(actor: Actor, guild: Guild | None) -> bool:
    """Manage Server, or one of the guild's chant admin roles (never in DMs)."""
    if actor.guild_id is None:
        return False
    if actor.manage_guild:
        return True
    return guild is not None and any(r in guild.admin_role_ids for r in actor.role_ids)


def check_admin(actor: Actor, guild: Guild | None) -> None:
    if actor.guild_id is None:
        raise UserError("permission", "Admin settings belong to a server; use this command in one.")
    if not is_admin(actor, guild):
        raise UserError(
            "permission", "Only server admins (Manage Server permission or a chant admin role) can do this."
        )


def may_see(actor: Actor, job: Job) -> bool:
    return job.user_id == actor.user_id or (job.guild_id is not None and job.guild_id == actor.guild_id)


def check_reroll(actor: Actor, guild: Guild | None, job: Job) -> None:
    if (
        guild is not None
        and guild.reroll_policy == "owner"
        and job.user_id != actor.user_id
        and not is_admin(actor, guild)
    ):
        raise UserError("permission", "On this server only the person who made an image can reroll it.")


def acts_for_another(actor: Actor, guild: Guild | None, job: Job, refusal: str) -> bool:
    """Whether the actor acts on someone else's job, as an admin of its guild (audit it); raises
    ``refusal`` when they may not."""
    if job.user_id == actor.user_id:
        return False
    if not is_admin(actor, guild) or job.guild_id != actor.guild_id:
        raise UserError("permission", refusal)
    return True


# ------------------------------------------------------------------------------------ moderation


def age_restricted_here(actor: Actor, job: Job | None = None) -> bool:
    """Whether the actor's channel is age-restricted; when the bot could not tell (None), a job's own
    channel counts as the job recorded it and any other channel as not age-restricted."""
    if actor.age_restricted is not None:
        return actor.age_restricted
    return job is not None and job.age_restricted and actor.channel_id == job.channel_id


def moderation_here(
    actor: Actor,
    guild: Guild | None,
    operator: moderation.OperatorPolicy,
    scores: Sequence[float | None],
    job: Job | None = None,
) -> list[moderation.Decision]:
    """Each image (by its stored score) as it would be moderated where the actor is now, under the
    policy of now: ``/show``, a picked image, and what the controls would make from it."""
    place = moderation.place_of(actor.guild_id, age_restricted_here(actor, job))
    rules = None if actor.guild_id is None else moderation_of(guild, operator.default)
    return [moderation.decide(score, place, rules, operator) for score in scores]


def moderation_view(decision: moderation.Decision, policy: dict | None = None) -> ImageModeration:
    return ImageModeration(
        action=str(decision.action),
        score=decision.score,
        reason=decision.reason,
        rule=decision.rule,
        threshold=decision.threshold,
        charged=decision.charged,
        policy=policy,
    )


def check_not_blocked(decisions: Sequence[moderation.Decision], what: str = "That image") -> None:
    """Refuse a re-post or a new job made from images this place blocks (never spend work on them)."""
    for decision in decisions:
        refusal = moderation.refusal(decision)
        if refusal is not None:
            raise UserError("moderation", refusal.replace("That image", what, 1))


# ------------------------------------------------------------------------------------ the request


def check_request(
    r: GenerationRequest,
    lim: Limits,
    *,
    max_prompt_chars: int,
    samplers: Sequence[str],
    models: Sequence[str],
    upscalers: Sequence[str] = ranges.UPSCALERS,
) -> None:
    """Every value of the request against the ranges and today's limits (again on reroll: an admin may
    have lowered them since). ``upscalers``: what hires fix may name (the engine's own and the installed
    upscaler models)."""
    if not r.prompt.strip():
        raise UserError("prompt", "The prompt is empty: describe the image you want.")
    if len(r.prompt) > max_prompt_chars:
        raise UserError(
            "limit.prompt", f"The prompt is {len(r.prompt)} characters long; the limit is {max_prompt_chars}."
        )
    if not ranges.MIN_STEPS <= r.steps <= lim["max_steps"]:
        raise UserError(
            "limit.steps", f"Steps must be between 1 and {lim['max_steps']} here (you asked for {r.steps})."
        )
    check_structure(r, lim)
    check_sides(r.width, r.height)
    if r.width * r.height > lim["max_pixels"]:
        side = int(lim["max_pixels"] ** 0.5) // 8 * 8
        raise UserError(
            "limit.pixels",
            f"{r.width}×{r.height} is larger than this server allows ({lim['max_pixels']:,} pixels, "
            f"e.g. {side}×{side}). Choose a smaller size.",
        )
    if not ranges.MIN_COUNT <= r.count <= lim["max_images"]:
        raise UserError(
            "limit.images", f"Count must be between 1 and {lim['max_images']} here (you asked for {r.count})."
        )
    if not ranges.BOT_MIN_CFG <= r.cfg_scale <= ranges.BOT_MAX_CFG:
        raise UserError(
            "limit.cfg",
            f"CFG scale must be between {ranges.BOT_MIN_CFG:g} and {ranges.BOT_MAX_CFG:g} "
            f"(you asked for {r.cfg_scale:g}).",
        )
    if not ranges.MIN_CFG_RESCALE <= r.cfg_rescale <= ranges.MAX_CFG_RESCALE:
        raise UserError(
            "cfg_rescale",
            f"CFG rescale must be between {ranges.MIN_CFG_RESCALE:g} and {ranges.MAX_CFG_RESCALE:g} "
            f"(you asked for {r.cfg_rescale:g}).",
        )
    if not 0 <= r.seed <= ranges.MAX_SEED:
        raise UserError("seed", f"The seed must be between 0 and {ranges.MAX_SEED} (or -1 for random).")
    if r.clip_skip is not None and not ranges.MIN_CLIP_SKIP <= r.clip_skip <= ranges.MAX_CLIP_SKIP:
        raise UserError(
            "clip_skip",
            f"CLIP skip must be between {ranges.MIN_CLIP_SKIP} and {ranges.MAX_CLIP_SKIP} "
            f"(you asked for {r.clip_skip}).",
        )
    check_image_options(r, lim, upscalers)
    if samplers and r.sampler not in samplers:
        raise UserError("sampler", f"I do not know the sampler {r.sampler!r}. Pick one from the list.")
    if models and r.model is not None and r.model not in models:
        raise UserError("model", f"I do not know the model {r.model!r}. Pick one from the list.")


def check_structure(r: GenerationRequest, lim: Limits) -> None:
    """AND parts and 75-token chunks against today's limits. Each part is one more UNet row per step and
    each chunk a longer row (:mod:`core.cost`): 1,000 parts fit in 6,000 characters and run 500 times
    the work of a plain prompt. The cost charges what passes; this refuses the extreme."""
    texts = [("prompt", r.prompt, False), ("negative prompt", r.negative_prompt, True)]
    if r.enable_hr:
        texts += [("hires prompt", r.hr_prompt, False), ("hires negative prompt", r.hr_negative_prompt, True)]
    for field, text, negative in texts:
        shape = prompt_shape(text, r.steps, negative=negative)
        if shape.parts > lim["max_and_parts"]:
            raise UserError(
                "limit.and_parts",
                f"Your {field} has {shape.parts} AND parts; this server allows at most {lim['max_and_parts']}. "
                "Each part is drawn separately at every step: combine some of them.",
            )
        if shape.max_chunks > lim["max_prompt_chunks"]:
            most = lim["max_prompt_chunks"]
            raise UserError(
                "limit.chunks",
                f"Your {field} is {shape.max_chunks} chunks of 75 tokens long; this server allows at most "
                f"{most} ({most * 75} tokens). Shorten it, or use fewer BREAKs (each starts a new chunk).",
            )


def check_sides(width: int, height: int) -> None:
    """Each side within ``core.ranges`` (the engine's own bounds): the pixel limit alone lets 64×16384
    through."""
    for name, value in (("width", width), ("height", height)):
        if not ranges.MIN_SIDE <= value <= ranges.MAX_SIDE or value % ranges.SIDE_MULTIPLE:
            raise UserError(
                "limit.size",
                f"The {name} must be a multiple of {ranges.SIDE_MULTIPLE} between {ranges.MIN_SIDE} and "
                f"{ranges.MAX_SIDE} (you asked for {width}×{height}).",
            )


def check_strength(name: str, value: float | None) -> None:
    if value is not None and not ranges.MIN_STRENGTH <= value <= ranges.MAX_STRENGTH:
        raise UserError("invalid", f"{name} must be between 0 and 1 (you gave {value:g}).")


def check_image_options(
    r: GenerationRequest, lim: Limits, upscalers: Sequence[str] = ranges.UPSCALERS
) -> None:
    """img2img / inpaint / hires values."""
    if r.mode != Mode.TXT2IMG:
        if r.init_image is None:
            raise UserError("invalid", "This job needs its source image, which is no longer stored.")
        check_strength("strength", r.denoising_strength)
        if r.resize_mode not in ranges.RESIZE_MODES:
            raise UserError("invalid", "resize_mode must be 0 (just resize), 1 (crop) or 2 (fill).")
        if r.inpainting_fill not in ranges.FILL_MODES:
            raise UserError(
                "invalid", "fill must be 0 (fill), 1 (original), 2 (latent noise) or 3 (latent nothing)."
            )
        if not ranges.MIN_MASK_BLUR <= r.mask_blur <= ranges.MAX_MASK_BLUR:
            raise UserError(
                "invalid",
                f"mask_blur must be between {ranges.MIN_MASK_BLUR} and {ranges.MAX_MASK_BLUR} "
                f"(you gave {r.mask_blur}).",
            )
    if r.enable_hr:
        check_hires(r, lim, upscalers)


def check_hires(r: GenerationRequest, lim: Limits, upscalers: Sequence[str] = ranges.UPSCALERS) -> None:
    if r.hr_upscaler not in upscalers:
        raise UserError(
            "invalid",
            f"I do not know the upscaler {r.hr_upscaler!r}; this server has: {listing(upscalers)}.",
        )
    if not ranges.MIN_HIRES_SCALE <= r.hr_scale <= ranges.MAX_HIRES_SCALE:
        raise UserError(
            "invalid",
            f"hires_scale must be between {ranges.MIN_HIRES_SCALE:g} and {ranges.MAX_HIRES_SCALE:g} "
            f"(you gave {r.hr_scale:g}).",
        )
    if not 0.0 < r.hr_denoising_strength <= ranges.MAX_STRENGTH:
        raise UserError(
            "invalid", f"hires_strength must be above 0 and at most 1 (you gave {r.hr_denoising_strength:g})."
        )
    if not 0 <= r.hr_second_pass_steps <= lim["max_steps"]:
        raise UserError(
            "limit.steps",
            f"hires_steps must be between 0 and {lim['max_steps']} here "
            f"(you asked for {r.hr_second_pass_steps}).",
        )
    if (r.hr_second_pass_steps or r.steps) / min(r.hr_denoising_strength, 0.999) > ranges.MAX_HIRES_SCHEDULE:
        raise UserError(
            "invalid",
            f"hires_strength {r.hr_denoising_strength:g} is too small for "
            f"{r.hr_second_pass_steps or r.steps} hires steps; raise it or use fewer steps.",
        )
    # The engine's own target (A1111's): the upscaled size, and the box it is cropped to.
    to_x, to_y, trunc_x, trunc_y = hires_target(r.width, r.height, r.hr_scale, r.hr_resize_x, r.hr_resize_y)
    w, h = to_x - 8 * trunc_x, to_y - 8 * trunc_y
    if max(to_x, to_y) > ranges.MAX_SIDE or min(w, h) < ranges.MIN_SIDE:
        raise UserError(
            "limit.size",
            f"Hires fix would make {to_x}×{to_y}; each side must be between {ranges.MIN_SIDE} and "
            f"{ranges.MAX_SIDE}. Lower hires_scale or the size.",
        )
    if w * h > lim["max_pixels"]:
        raise UserError(
            "limit.pixels",
            f"Hires fix would make {w}×{h}, larger than this server allows "
            f"({lim['max_pixels']:,} pixels). Lower hires_scale or the size.",
        )


def check_upscale(r: GenerationRequest, lim: Limits, upscalers: Sequence[str]) -> None:
    """An upscale job: its upscaler, its size (within the guild's pixel limit), its detail pass."""
    if r.init_image is None:
        raise UserError("invalid", "This upscale needs its source image, which is no longer stored.")
    if r.upscaler not in upscalers:
        raise UserError(
            "upscaler", f"I do not know the upscaler {r.upscaler!r}; this server has: {listing(upscalers)}."
        )
    check_sides(r.width, r.height)
    if r.width * r.height > lim["max_pixels"]:
        raise UserError(
            "limit.pixels",
            f"The upscale would be {r.width}×{r.height}, larger than this server allows "
            f"({lim['max_pixels']:,} pixels). Choose a smaller scale.",
        )
    check_strength("detail", r.upscale_detail)
    if r.upscale_detail > 0 and not ranges.MIN_STEPS <= r.steps <= lim["max_steps"]:
        raise UserError("limit.steps", f"The detail pass's steps must be at most {lim['max_steps']} here.")


def check_after_decoding(r: GenerationRequest, post: PostprocessSettings) -> None:
    """Face restoration and the detailer need their models here: refused before queueing (nothing
    charged), naming what the server lacks (``core.engine.postprocess.names``, torch-free)."""
    if not (r.face_restoration or r.detailer):
        return
    from core.engine.postprocess.files import PostprocessError
    from core.engine.postprocess.names import check_after_decoding as check

    if not ranges.MIN_STRENGTH < r.detailer_strength <= ranges.MAX_STRENGTH:
        raise UserError("invalid", f"The detailer strength must be above 0 and at most 1 (not {r.detailer_strength:g}).")
    try:
        check(post, r.face_restoration, r.detailer)
    except PostprocessError as exc:
        what = "Face restoration" if r.face_restoration and not r.detailer else "The detailer"
        raise UserError("postprocess", f"{what} is not available here: {exc}. Ask a server admin.") from None


# ------------------------------------------------------------------------------------ the prompt text


def check_text(r: GenerationRequest, banned: Sequence[str], engine: EngineSettings) -> None:
    """Prompt syntax, banned words and extra-network names, on the prompt as the engine will read it."""
    for field, value in (("prompt", r.prompt), ("negative prompt", r.negative_prompt)):
        if not value:
            continue
        plan = parse_for_user(value, r.steps, negative=field != "prompt")
        check_networks(plan, field, engine)
        word = find_banned(plan, banned) if banned else None
        if word is not None:
            raise UserError(
                "banned_word", f"Your {field} contains {word!r}, which this server does not allow."
            )


def parse_for_user(prompt: str, steps: int, *, negative: bool = False) -> Interpretation:
    """``core.prompt.interpret``, with an unusable prompt turned into a UserError naming the column."""
    try:
        return interpret(prompt, steps, negative=negative)
    except PromptError as exc:
        what = "negative prompt" if negative else "prompt"
        raise UserError(
            "prompt", f"Your {what} has a problem at column {exc.column}: {exc.message}", column=exc.column
        ) from None


def check_networks(plan: Interpretation, field: str, engine: EngineSettings) -> None:
    """Extra-network tags (lora, lyco, hypernet) the engine would refuse are refused before queueing, with
    the closest known names (``core.engine.networks.resolve.check_extra_networks``, torch-free)."""
    from core.engine.networks.resolve import check_extra_networks

    try:
        check_extra_networks(plan.networks, lora_dirs=engine.lora_dirs, hypernetwork_dirs=engine.hypernetwork_dirs)
    except ValueError as exc:
        raise UserError("lora", f"Your {field}: {exc}. See /loras for the LoRAs.") from None


def rendered_texts(plan: Interpretation) -> set[str]:
    """Every text the text encoder will see, at any step: edit branches and alternatives included.

    Emphasis brackets, weights and escapes are gone (``(g\\ore:1.2)`` reads ``gore``); a BREAK
    separates words.
    """
    texts = set()
    for sub in plan.subprompts:
        for entry in sub.schedule:
            texts.add("".join(" " if w == -1.0 and t == "BREAK" else t for t, w in entry.attention))
    return texts


def find_banned(plan: Interpretation, banned: Iterable[str]) -> str | None:
    """The first banned word or phrase the parsed prompt contains as a whole word (case-insensitive)."""
    texts = [" ".join(text.casefold().split()) for text in rendered_texts(plan)]
    for word in banned:
        needle = " ".join(word.casefold().split())
        if not needle:
            continue
        pattern = re.compile(rf"(?<!\w){re.escape(needle)}(?!\w)")
        if any(pattern.search(text) for text in texts):
            return word
    return None
