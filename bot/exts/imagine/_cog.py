from __future__ import annotations

import contextlib
import logging

import discord
from discord import app_commands
from discord.ext import commands

from bot import render
from bot.actors import actor_from_interaction, actor_from_reaction
from bot.app import ChantBot
from bot.delivery import DELETE, INFO_EMOJIS, REROLL, UPSCALE, VARIATION
from bot.errors import new_error_id, user_error_text
from bot.options import (
    DESCRIBE,
    FILLS,
    GUIDE_DESCRIBE,
    RESIZE_MODES,
    Cfg,
    CfgRescale,
    ClipSkip,
    ControlType,
    ControlWeight,
    Count,
    Fill,
    HiresScale,
    HiresSteps,
    JobId,
    Lora,
    MaskBlur,
    Model,
    Negative,
    Prompt,
    ReferenceScale,
    ResizeMode,
    Sampler,
    Seed,
    Size,
    Steps,
    Strength,
    Upscaler,
    command_options,
    preset_autocomplete,
    prompt_autocomplete,
    read_attachment,
)
from bot.status import send_queueing, submitted
from core.services import Actor, ImagineOptions, JobView, Receipt, UserError

log = logging.getLogger(__name__)


def refuse_dm_if_configured(bot: ChantBot, guild_id: int | None) -> None:
    if guild_id is None and bot.settings.discord.dm_mode == "refuse":
        raise UserError(
            "dm", "/imagine does not work in direct messages on this bot; use it in a server channel."
        )


async def read_guides(
    control: discord.Attachment | None, reference: discord.Attachment | None
) -> tuple[bytes | None, bytes | None]:
    """The control and reference attachments' bytes (core checks them as it checks img2img sources)."""
    return (
        await read_attachment(control, "control image") if control is not None else None,
        await read_attachment(reference, "reference image") if reference is not None else None,
    )


class ImagineCog(commands.Cog):
    def __init__(self, bot: ChantBot) -> None:
        self.bot = bot
        self.service = bot.service
        self.delivery = bot.delivery

    @app_commands.command(name="imagine", description="Generate images from an A1111-style prompt")
    @app_commands.allowed_contexts(guilds=True, dms=True, private_channels=False)
    @app_commands.describe(
        prompt="A1111 prompt: (emphasis:1.2), [from:to:when], AND, BREAK, <lora:x:0.8>; {a|b}, __wildcard__",
        size="width x height (default: the model's; choices stay within this server's pixel limit)",
        lora="add a LoRA to the prompt (<lora:name:1>); /loras lists them",
        **DESCRIBE,
        hires="hires fix: generate, upscale, then refine at the larger size",
        hires_scale="hires fix: upscale factor (default 2)",
        hires_steps="hires fix: second-pass steps (0 = as many as the first pass)",
        hires_strength="hires fix: denoising strength of the second pass (default 0.7)",
        upscaler="hires fix: Latent, Lanczos or an upscaler model (R-ESRGAN 4x+, 4x-UltraSharp, …)",
        face_restore="restore faces after generating (A1111's Restore faces: GFPGAN or CodeFormer)",
        detailer="detailer: find each face and repaint it at full resolution (ADetailer's idea)",
        **GUIDE_DESCRIBE,
    )
    @app_commands.autocomplete(preset=preset_autocomplete, prompt=prompt_autocomplete)
    async def imagine(
        self,
        interaction: discord.Interaction,
        prompt: Prompt,
        negative: Negative | None = None,
        preset: str | None = None,
        size: Size | None = None,
        steps: Steps | None = None,
        cfg: Cfg | None = None,
        cfg_rescale: CfgRescale | None = None,
        sampler: Sampler | None = None,
        seed: Seed | None = None,
        count: Count | None = None,
        model: Model | None = None,
        clip_skip: ClipSkip | None = None,
        lora: Lora | None = None,
        hires: bool | None = None,
        hires_scale: HiresScale | None = None,
        hires_steps: HiresSteps | None = None,
        hires_strength: Strength | None = None,
        upscaler: Upscaler | None = None,
        face_restore: bool | None = None,
        detailer: bool | None = None,
        control_image: discord.Attachment | None = None,
        control_type: ControlType | None = None,
        control_weight: ControlWeight | None = None,
        reference_image: discord.Attachment | None = None,
        reference_scale: ReferenceScale | None = None,
    ) -> None:
        # 1. Acknowledge at once: everything after this may take as long as it needs.
        await self._defer(interaction)
        control, reference = await read_guides(control_image, reference_image)
        # 2. Translate and submit; core validates limits, banned words, the prompt and the quota.
        options = command_options(
            prompt,
            size,
            lora,
            negative=negative,
            preset=preset,
            steps=steps,
            cfg=cfg,
            cfg_rescale=cfg_rescale,
            sampler=sampler,
            seed=seed,
            count=count,
            model=model,
            clip_skip=clip_skip,
            hires=hires,
            hires_scale=hires_scale,
            hires_steps=hires_steps,
            hires_strength=hires_strength,
            upscaler=upscaler,
            face_restore=face_restore,
            detailer=detailer,
            control_image=control,
            control_type=control_type,
            control_weight=control_weight,
            reference_image=reference,
            reference_scale=reference_scale,
        )
        await self._submit(interaction, options)

    @app_commands.command(name="img2img", description="Repaint an image: img2img, or inpaint with a mask")
    @app_commands.allowed_contexts(guilds=True, dms=True, private_channels=False)
    @app_commands.describe(
        prompt="the prompt, A1111 syntax",
        image="the source image (PNG, JPEG or WebP); transparent pixels are repainted",
        job="instead of an image: the job id (see /history) whose first image is the source",
        mask="inpaint: white = repaint, black = keep (resized to the source if its size differs)",
        strength="denoising strength: 0 keeps the source, 1 ignores it (default 0.75)",
        resize_mode="how the source is fitted to the size (A1111 resize modes)",
        mask_blur="inpaint: mask blur in pixels (default 4)",
        masked_only="inpaint: work on the masked area only, at full resolution",
        fill="inpaint: what the masked area starts from (default original)",
        size="output size (default: the source's, within this server's limit)",
        lora="add a LoRA to the prompt (<lora:name:1>)",
        **DESCRIBE,
        control_image=GUIDE_DESCRIBE["control_image"],
        control_type=GUIDE_DESCRIBE["control_type"],
        reference_image=GUIDE_DESCRIBE["reference_image"],
    )
    @app_commands.autocomplete(preset=preset_autocomplete)
    async def img2img(
        self,
        interaction: discord.Interaction,
        prompt: Prompt,
        image: discord.Attachment | None = None,
        job: JobId | None = None,
        mask: discord.Attachment | None = None,
        strength: Strength | None = None,
        resize_mode: ResizeMode | None = None,
        mask_blur: MaskBlur | None = None,
        masked_only: bool | None = None,
        fill: Fill | None = None,
        negative: Negative | None = None,
        preset: str | None = None,
        size: Size | None = None,
        steps: Steps | None = None,
        cfg: Cfg | None = None,
        cfg_rescale: CfgRescale | None = None,
        sampler: Sampler | None = None,
        seed: Seed | None = None,
        count: Count | None = None,
        model: Model | None = None,
        clip_skip: ClipSkip | None = None,
        lora: Lora | None = None,
        control_image: discord.Attachment | None = None,
        control_type: ControlType | None = None,
        reference_image: discord.Attachment | None = None,
    ) -> None:
        await self._defer(interaction)
        control, reference = await read_guides(control_image, reference_image)
        if image is None and job is None:
            raise UserError("invalid", "Attach a source image (image:) or name a job to start from (job:).")
        # Only the interaction's own attachments are read (Discord's CDN URLs), never a typed URL.
        init = await read_attachment(image, "source image") if image is not None else None
        mask_bytes = await read_attachment(mask, "mask") if mask is not None else None
        options = command_options(
            prompt,
            size,
            lora,
            negative=negative,
            preset=preset,
            steps=steps,
            cfg=cfg,
            cfg_rescale=cfg_rescale,
            sampler=sampler,
            seed=seed,
            count=count,
            model=model,
            clip_skip=clip_skip,
            init_image=init,
            mask_image=mask_bytes,
            source_job=job,
            strength=strength,
            resize_mode=RESIZE_MODES[resize_mode] if resize_mode else None,
            mask_blur=mask_blur,
            masked_only=masked_only,
            fill=FILLS[fill] if fill else None,
            control_image=control,
            control_type=control_type,
            reference_image=reference,
        )
        await self._submit(interaction, options)

    @app_commands.command(name="loras", description="List the LoRAs this bot has (for <lora:name:weight>)")
    @app_commands.describe(search="only names containing this")
    async def loras(self, interaction: discord.Interaction, search: str | None = None) -> None:
        names = self.service.lora_names()
        if search:
            names = [n for n in names if search.lower() in n.lower()]
        if not names:
            text = "No LoRAs match that." if search else "This bot has no LoRAs installed."
        else:
            listed = ", ".join(f"`{n}`" for n in names)
            text = render.truncate(
                f"{len(names)} LoRA(s) — use `<lora:NAME:1>` in a prompt or the `lora` option:\n{listed}",
                render.MESSAGE_LIMIT,
            )
        await interaction.response.send_message(text, ephemeral=True)

    async def _defer(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(thinking=True)
        interaction.extras["public_defer"] = True
        self.delivery.remember_upload_limit(interaction.guild_id, interaction.filesize_limit)
        refuse_dm_if_configured(self.bot, interaction.guild_id)

    async def _submit(self, interaction: discord.Interaction, options: ImagineOptions) -> None:
        # The status message is this interaction's response ("thinking…" until edited). Its id goes in
        # with the job, in one transaction: a bot killed before the edit below still finishes it later.
        status = await interaction.original_response()
        receipt = await self.service.submit_imagine(
            actor_from_interaction(interaction), options, status_message_id=status.id
        )
        await self.delivery.until_done(self._post_queued(interaction, receipt, options.prompt, status.id))

    async def _post_queued(
        self, interaction: discord.Interaction, receipt: Receipt, prompt: str, status_id: int
    ) -> None:
        # 3. The status message: queue position now, progress later (edited by the delivery task).
        tracked = self.delivery.track(
            receipt.job_id,
            interaction.channel_id or 0,
            interaction.guild_id,
            status_id,
            prompt=prompt,
            interaction=interaction,
        )
        text = render.queued_text(receipt.position, receipt.eta_s, job_id=receipt.job_id)
        await self.delivery.first_status(tracked, lambda: interaction.edit_original_response(content=text))

    # -- reactions on results (raw events: also messages from before a restart) ----------------------
    @commands.Cog.listener()
    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        if self.bot.user is not None and payload.user_id == self.bot.user.id:
            return
        name = payload.emoji.name if payload.emoji.id is None else None
        if name not in (REROLL, VARIATION, DELETE, UPSCALE, UPSCALE.rstrip("\ufe0f"), *INFO_EMOJIS):
            return
        actor = actor_from_reaction(payload, self.bot)
        try:
            job = await self.service.job_for_message(payload.message_id)
            if job is None:
                return  # not a chant result: ignore reactions on other messages
            if name == REROLL:
                await self._reroll(actor, payload)
            elif name == VARIATION:
                await self._reroll(actor, payload, variation=True)
            elif name in (UPSCALE, UPSCALE.rstrip("\ufe0f")):
                await self._reroll(actor, payload, upscale=True)
            elif name == DELETE:
                await self._delete(actor, payload)
            else:
                await self._info(actor, job)
        except UserError as exc:
            await self._dm(payload.user_id, user_error_text(exc))
        except Exception:
            error_id = new_error_id()
            log.exception("error %s handling %s on message %s", error_id, name, payload.message_id)
            await self._dm(payload.user_id, f"Something went wrong on our side (error id `{error_id}`).")

    async def _reroll(
        self,
        actor: Actor,
        payload: discord.RawReactionActionEvent,
        *,
        variation: bool = False,
        upscale: bool = False,
    ) -> None:
        """🔁 a new seed, 🔀 a variation (same seed, a variation seed mixed in), or ⬆️ an upscale of the first
        image; a reply either way, posted first: its id goes in with the job, as /imagine's status does."""
        emoji = UPSCALE if upscale else VARIATION if variation else REROLL
        status = await send_queueing(
            self.bot,
            payload.channel_id,
            payload.guild_id,
            payload.message_id,
            f"<@{actor.user_id}> {emoji} queueing…",
        )
        submit = (
            self.service.upscale_message
            if upscale
            else self.service.variation
            if variation
            else self.service.reroll
        )
        # refused: the reactor is told by DM, and the status goes again
        receipt = await submitted(status, submit(actor, payload.message_id, status_message_id=status.id))
        await self.delivery.until_done(self._post_requeued(actor, payload, receipt, status, emoji))

    async def _post_requeued(
        self,
        actor: Actor,
        payload: discord.RawReactionActionEvent,
        receipt: Receipt,
        status: discord.Message,
        emoji: str,
    ) -> None:
        tracked = self.delivery.track(
            receipt.job_id, payload.channel_id, payload.guild_id, status.id, reply_to=payload.message_id
        )
        text = f"<@{actor.user_id}> {emoji} " + render.queued_text(
            receipt.position, receipt.eta_s, job_id=receipt.job_id
        )
        await self.delivery.first_status(tracked, lambda: status.edit(content=text))

    async def _delete(self, actor: Actor, payload: discord.RawReactionActionEvent) -> None:
        """❌ deletes the message reacted to, nothing else: the job's other results (the original, or
        /show re-posts, perhaps in other channels) stay, and so does what 🔁 finds through them."""
        await self.service.delete_result(actor, payload.message_id)
        channel = self.bot.get_partial_messageable(payload.channel_id, guild_id=payload.guild_id)
        with contextlib.suppress(discord.NotFound):
            await channel.get_partial_message(payload.message_id).delete()

    async def _info(self, actor: Actor, job: JobView) -> None:
        images = await self.service.job_images(job.id)
        hint = f"\nStart from this image: `/img2img job:{job.id}` · 🔀 on the result makes a variation."
        for n, image in enumerate(images[:4]):
            tail = hint if n == 0 else ""
            text = render.parameters_text(
                image.infotext, job_id=job.id, limit=render.MESSAGE_LIMIT - len(tail)
            )
            await self._dm(actor.user_id, text + tail)
        if job.prompt_templates:  # a dynamic prompt: the parameters hold its expansion, this what was typed
            seed = job.seeds[0] if job.seeds else job.request.seed
            await self._dm(actor.user_id, render.template_text(job.prompt_templates, seed=seed))

    async def _dm(self, user_id: int, text: str) -> None:
        try:
            channel = await self.bot.create_dm(discord.Object(id=user_id))
            await channel.send(text)
        except discord.HTTPException as exc:
            log.info("could not DM user %s: %s", user_id, exc)
