"""Startup of the Discord bot (discord.py ``advanced_startup`` style).

``run_bot`` builds the core service first (``core.bootstrap``), then the bot, and hands the service
in. ``setup_hook`` loads one extension per domain, starts the single event consumer
(:class:`bot.delivery.Delivery`) and syncs the slash commands (globally, or to a dev guild).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from typing import Any

import discord
import yarl
from discord.ext import commands

from bot.delivery import Delivery
from bot.errors import on_app_command_error
from core.config import Settings
from core.services.api import CoreAPI

log = logging.getLogger(__name__)

EXTENSIONS = (
    "bot.exts.imagine",
    "bot.exts.controls",
    "bot.exts.upscale",
    "bot.exts.describe",
    "bot.exts.presets",
    "bot.exts.history",
    "bot.exts.quotas",
    "bot.exts.admin",
)


class TokenRedactor(logging.Filter):
    """Replaces the bot token in any log record (message or args) with ``[token]``."""

    def __init__(self, secret: str) -> None:
        super().__init__()
        self.secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secret:
            message = record.getMessage()
            if self.secret in message:
                record.msg = message.replace(self.secret, "[token]")
                record.args = None
        return True


def install_token_redactor(token: str) -> TokenRedactor:
    redactor = TokenRedactor(token)
    root = logging.getLogger()
    for handler in root.handlers:
        handler.addFilter(redactor)
    if not root.handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
        for handler in root.handlers:
            handler.addFilter(redactor)
    return redactor


def configure_endpoints(settings: Settings) -> None:
    """Point discord.py at ``settings.discord.api_base`` / ``gateway_url`` (before login)."""
    if settings.discord.api_base:
        discord.http.Route.BASE = settings.discord.api_base.rstrip("/")
    if settings.discord.gateway_url:
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord.gateway_url)


def default_intents() -> discord.Intents:
    intents = discord.Intents.default()  # guilds, reactions, ... ; no message_content, members, presences
    intents.message_content = False
    intents.members = False
    intents.presences = False
    intents.reactions = True  # raw reaction events: 🔁 ❌ ℹ️ on any result, also old ones
    return intents


class ChantBot(commands.AutoShardedBot):
    """The bot: what the cogs get (``settings``, the core ``service``, the ``delivery`` of results)."""

    def __init__(self, settings: Settings, service: CoreAPI, **kwargs: Any) -> None:
        super().__init__(
            command_prefix=commands.when_mentioned,  # no message commands: slash commands only
            intents=default_intents(),
            shard_count=settings.discord.shard_count,
            allowed_mentions=discord.AllowedMentions(
                everyone=False, roles=False, users=True, replied_user=False
            ),
            help_command=None,
            **kwargs,
        )
        self.settings = settings
        self.service = service
        self.delivery = Delivery(self, service, settings)

    async def setup_hook(self) -> None:
        self.tree.error(on_app_command_error)
        for ext in EXTENSIONS:
            await self.load_extension(ext)
        self.delivery.start()
        if self.settings.discord.sync_commands:
            guild_id = self.settings.discord.dev_guild_id
            if guild_id:
                guild = discord.Object(id=guild_id)
                self.tree.copy_global_to(guild=guild)
                synced = await self.tree.sync(guild=guild)
                log.info("synced %d commands to dev guild %s", len(synced), guild_id)
            else:
                synced = await self.tree.sync()
                log.info("synced %d commands globally", len(synced))

    async def on_ready(self) -> None:
        log.info("connected as %s (%s shard(s))", self.user, self.shard_count)

    async def close(self) -> None:
        await self.delivery.stop()
        await super().close()


async def build_service(settings: Settings, *, with_worker: bool) -> CoreAPI:
    from core.bootstrap import bootstrap

    # --no-worker forces the worker off; otherwise settings.queue.in_process_worker decides.
    return await bootstrap(settings, worker=None if with_worker else False)


LOGIN_RETRY_MAX_S = 60.0


def _unreachable(exc: BaseException) -> str | None:
    """'HOST:PORT (reason)' when ``exc`` means Discord's REST host could not be reached at all."""
    import aiohttp

    if isinstance(exc, aiohttp.ClientConnectorError):
        error = exc.os_error
        reason = os.strerror(error.errno) if (error.errno or 0) > 0 else error.strerror or str(error)
        if isinstance(exc, getattr(aiohttp, "ClientConnectorDNSError", ())):
            reason = f"the name does not resolve: {reason}"
        return f"{exc.host}:{exc.port} ({reason})"
    if isinstance(exc, TimeoutError):
        return f"{yarl.URL(discord.http.Route.BASE).host} (timed out)"
    return None


async def _start(bot: ChantBot, token: str) -> None:
    """``bot.start`` whose login survives Discord being unreachable (DNS, refused, timeout): one log
    line naming the host per try, retried with backoff (1 s doubling to a minute). The gateway
    connection that follows reconnects by itself (discord.py)."""
    delay = 1.0
    while True:
        try:
            await bot.login(token)
            break
        except (TimeoutError, OSError) as exc:  # aiohttp's connection errors are OSErrors
            where = _unreachable(exc)
            if where is None:
                raise
            log.error("cannot reach Discord at %s; retrying in %.0f s", where, delay)
        # A failed login leaves its HTTP session open: close it, and let the next login make a new
        # connector (closing the session closed the old one).
        await bot.http.close()
        bot.http.connector = discord.utils.MISSING
        await asyncio.sleep(delay)
        delay = min(delay * 2, LOGIN_RETRY_MAX_S)
    await bot.connect(reconnect=True)


async def serve(settings: Settings, token: str, *, with_worker: bool, service: CoreAPI | None = None) -> None:
    """Run the bot until it is closed or the process gets SIGINT/SIGTERM."""
    configure_endpoints(settings)
    own_service = service is None
    if own_service:
        service = await build_service(settings, with_worker=with_worker)
    await service.start()
    bot = ChantBot(settings, service)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    handled = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stopping.set)
            handled.append(sig)
    try:
        async with bot:
            runner = asyncio.create_task(_start(bot, token))
            stopper = asyncio.create_task(stopping.wait())
            done, _ = await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if runner in done:
                runner.result()  # re-raise a login failure
            else:
                log.info("shutting down")
                await bot.close()
                runner.cancel()  # also ends a login still waiting to retry an unreachable Discord
                with contextlib.suppress(asyncio.CancelledError):
                    await runner
            stopper.cancel()
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        if own_service:
            await service.stop()


def run_bot(settings: Settings, with_worker: bool) -> int:
    """``chant run``: the bot, and unless ``with_worker`` is False, the in-process GPU worker."""
    env_name = settings.discord.token_env
    token = (os.environ.get(env_name) or "").strip()
    if not token:
        print(
            f"chant run: no Discord bot token. Set the environment variable {env_name} "
            "(Discord developer portal → your application → Bot → Reset Token).",
            file=sys.stderr,
        )
        return 2
    install_token_redactor(token)
    try:
        asyncio.run(serve(settings, token, with_worker=with_worker))
    except discord.LoginFailure:
        log.error("Discord refused the token in %s (login failed); check it and try again", env_name)
        return 3
    except KeyboardInterrupt:
        return 0
    return 0


__all__ = ["ChantBot", "configure_endpoints", "default_intents", "run_bot", "serve"]
