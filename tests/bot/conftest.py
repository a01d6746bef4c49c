"""Fixtures: the fake Discord server, and the real bot (bot.app.serve) running in-process on it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import discord
import pytest
import yarl

from core.config import Settings
from tests.bot.fake_discord import FakeDiscord, FakeGuild
from tests.bot.fake_service import FakeService

TOKEN = "MTIzNDU2Nzg5MDEy.fake-token.s3cr3t-never-logged"
GUILD_A, GUILD_B, GUILD_C = 111_000_000_000_000_001, 111_000_000_000_000_002, 111_000_000_000_000_003
CHANNEL_A, CHANNEL_B, CHANNEL_C = 222_000_000_000_000_001, 222_000_000_000_000_002, 222_000_000_000_000_003
ADMIN_ROLE = 333_000_000_000_000_001
ALICE, BOB = 444_000_000_000_000_001, 444_000_000_000_000_002


def fake_guilds() -> list[FakeGuild]:
    return [
        FakeGuild(GUILD_A, "A", admin_role_id=ADMIN_ROLE, channel_ids=(CHANNEL_A,)),
        FakeGuild(GUILD_B, "B", channel_ids=(CHANNEL_B,)),
        FakeGuild(GUILD_C, "C", channel_ids=(CHANNEL_C,)),
    ]


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    server = await FakeDiscord(fake_guilds()).start()
    yield server
    await server.close()


@dataclass
class RunningBot:
    fake: FakeDiscord
    service: FakeService
    task: asyncio.Task[None]
    settings: Settings

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.task


def bot_settings(fake: FakeDiscord, **discord_overrides) -> Settings:
    base = Settings()
    return dataclasses.replace(
        base,
        discord=dataclasses.replace(
            base.discord,
            api_base=fake.api_base,
            gateway_url=fake.gateway_url,
            progress_edit_interval_s=0.25,
            **discord_overrides,
        ),
    )


@contextlib.asynccontextmanager
async def running_bot(
    fake: FakeDiscord, service: FakeService | None = None, **overrides
) -> AsyncIterator[RunningBot]:
    from bot.app import serve

    original_base, original_gateway = (
        discord.http.Route.BASE,
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY,
    )
    service = service or FakeService()
    settings = bot_settings(fake, **overrides)
    task = asyncio.create_task(serve(settings, TOKEN, with_worker=False, service=service))
    running = RunningBot(fake, service, task, settings)
    try:
        await fake.wait_ready()
        await fake.wait_call("PUT", r"/applications/\d+/commands|/applications/\d+/guilds/\d+/commands")
        yield running
    finally:
        await running.stop()
        discord.http.Route.BASE = original_base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(str(original_gateway))


@pytest.fixture
async def bot(fake: FakeDiscord, caplog: pytest.LogCaptureFixture) -> AsyncIterator[RunningBot]:
    caplog.set_level(logging.INFO)
    async with running_bot(fake) as running:
        yield running
