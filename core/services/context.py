"""What every use case works with, built once by :func:`core.bootstrap.bootstrap`.

A use case is a function ``(ctx, actor, ...)``: it opens its own transaction on ``ctx.db``, passes the
session to the repositories of :mod:`core.storage`, and announces through ``ctx.ledger``.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncSession

from core import ranges
from core.config import Settings
from core.engine import catalog
from core.engine.api import Engine
from core.moderation import OperatorPolicy
from core.prompt.wildcards import WildcardLibrary
from core.queue.positions import QueuePositions
from core.queue.store import JobStore
from core.queue.worker import Worker
from core.services.events import Ledger
from core.services.images import ImageWork
from core.services.types import Actor
from core.storage.db import Database
from core.storage.models import Guild
from core.storage.repositories import Repositories

if TYPE_CHECKING:
    from core.services.prompts import TagSource

log = logging.getLogger(__name__)


class Catalog:
    """The names users pick from: models, samplers and LoRAs (the engine's when it runs in this
    process, else the configuration's and the model folders'), and what each model sets."""

    def __init__(self, settings: Settings, engine: Engine | None) -> None:
        self.settings = settings
        self.engine = engine

    def models(self) -> list[str]:
        """Configured models first, then the checkpoints found in ``engine.model_dirs``; empty when
        there is no usable model (the no-model refusal)."""
        if self.engine is not None:
            return list(self.engine.model_names())
        # No engine here (`chant run --no-worker`): the configured models are the workers' files.
        return catalog.model_names(self.settings.engine, check_sources=False)

    def defaults(self, model: str | None) -> catalog.ModelDefaults:
        """What ``model``'s ``[engine.models.NAME]`` table sets (1024x1024 for SDXL when it sets no size)."""
        return catalog.model_defaults(self.settings.engine, model)

    def no_model_reason(self) -> str:
        """Why there is no model, for the operator's log."""
        if self.engine is None:
            return (
                "this bot process runs no engine (chant run --no-worker) and knows no model: name the "
                "workers' models under [engine.models.NAME] in its settings too, or share their model "
                f"folder as {', '.join(self.settings.engine.model_dirs) or 'engine.model_dirs'}"
            )
        return f"this bot has no usable model: {catalog.no_model_hint(self.settings.engine)}"

    def samplers(self) -> list[str]:
        if self.engine is not None:
            return list(self.engine.sampler_names())
        return list(ranges.SAMPLERS)  # no engine in this process (`chant run --no-worker`): A1111's names

    def upscalers(self) -> list[str]:
        """The installed upscaler models (A1111's names for its built-ins; file stems otherwise)."""
        from core.engine.postprocess.names import upscaler_names  # torch-free

        return upscaler_names(self.settings.postprocess)

    def hires_upscalers(self) -> list[str]:
        """What hires fix offers: the engine's latent and image upscalers, then the installed models."""
        from core.engine.postprocess.names import hires_upscaler_names  # torch-free

        return hires_upscaler_names(self.settings.postprocess)

    def loras(self) -> list[str]:
        """LoRA names for autocomplete and /loras (file stems in the configured folders)."""
        from core.engine.networks.resolve import list_networks  # torch-free

        try:
            return list_networks(self.settings.engine.lora_dirs)
        except (OSError, ValueError):
            log.exception("could not list the LoRA folders")
            return []


@dataclass(frozen=True)
class Context:
    settings: Settings
    db: Database
    store: JobStore  # the queue's SQL (throughput, positions)
    queue: QueuePositions
    ledger: Ledger
    catalog: Catalog
    worker: Worker | None = None  # the in-process worker, told about new and cancelled jobs at once
    rng: random.Random = field(default_factory=random.SystemRandom)  # seeds and variation seeds
    moderation: OperatorPolicy = field(default_factory=OperatorPolicy)  # the operator's [moderation]
    wildcards: WildcardLibrary | None = None  # dynamic prompts' files; None = prompts.dynamic off
    tags: TagSource | None = None  # tag autocomplete's index (core.services.prompts)
    images: ImageWork = field(default_factory=ImageWork)  # uploads are checked here, off the event loop

    @property
    def max_input_pixels(self) -> int:
        """The engine's limit for uploaded sources and masks (``engine.max_input_megapixels``)."""
        return int(self.settings.engine.max_input_megapixels * 1_000_000)


def default_model(ctx: Context, guild: Guild | None) -> tuple[str | None, str | None]:
    """(the model of a job that names none, why there is none): the guild's default, the bot's
    (``engine.default_model``), else the first model listed. A default that names a model that is not
    there gives (None, whose default it is) rather than another model in silence."""
    names = ctx.catalog.models()
    for whose, name in (("this server's", guild.default_model if guild else None),
                        ("this bot's", ctx.settings.engine.default_model)):  # fmt: skip
        if name:
            return (name, None) if name in names else (None, whose)
    return (names[0] if names else None), None


async def guild_of(s: AsyncSession, actor: Actor) -> Guild | None:
    """The actor's guild settings (None in DMs, or for a guild that never changed a setting)."""
    if actor.guild_id is None:
        return None
    return await Repositories(s).guilds.get(actor.guild_id)
