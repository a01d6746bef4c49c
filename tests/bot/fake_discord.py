"""A loopback fake of Discord (REST v10 + gateway) for the paths chant's bot uses.

Runs inside the test's event loop on 127.0.0.1. The bot under test is pointed at it through
``DISCORD_API_BASE`` / ``DISCORD_GATEWAY_URL`` (or the settings of the same names). The fake:

* records every REST call (:class:`Call`: method, path, query, json, files) so tests assert on them,
* serves the gateway: HELLO, IDENTIFY -> READY + GUILD_CREATE, HEARTBEAT -> ACK, RESUME -> replay of
  the events the client missed + RESUMED,
* injects INTERACTION_CREATE (commands, autocomplete, button clicks, form submits) and
  MESSAGE_REACTION_ADD events, can drop the gateway connection,
* sends each interaction's channel object as Discord does (its ``nsfw`` flag: age-restricted
  channels; a thread carries its parent's id, and the parent is in the guild's channel list),
* answers one chosen request with a 429 and ``retry_after`` (the client must retry after the delay),
  refuses chosen requests with 403 "Missing Permissions" (50013) as Discord does when the bot lacks a
  channel permission, and holds chosen requests unanswered (a process killed while waiting on Discord),
* keeps each interaction's original response as one message (its id stable from the deferral on, as on
  Discord), so GET/PATCH/DELETE ``@original`` and the channel endpoints see the same message,
* serves attachment bytes (uploads given to :meth:`FakeDiscord.add_attachment`, and files the bot posted)
  at loopback "CDN" URLs, as Discord's CDN serves an interaction's attachments.

Only what discord.py 2.7 needs is implemented; unknown routes answer 404 and are recorded too.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

BOT_USER_ID = 900_000_000_000_000_001
APPLICATION_ID = BOT_USER_ID
MANAGE_GUILD = 1 << 5
ALL_PERMISSIONS = (1 << 41) - 1


@dataclass
class Call:
    """One REST request the bot made."""

    method: str
    path: str  # without the /api/v10 prefix, e.g. /channels/1/messages
    query: dict[str, str]
    json: Any
    files: list[tuple[str, bytes]]
    headers: dict[str, str]
    at: float  # time.monotonic() when it arrived
    status: int = 200
    response: Any = None  # the JSON the fake answered (e.g. the created message)


@dataclass
class FakeGuild:
    id: int
    name: str = "guild"
    admin_role_id: int | None = None  # a role carrying Manage Guild
    channel_ids: tuple[int, ...] = ()
    attachment_size_limit: int = 10 * 1024 * 1024
    nsfw_channel_ids: tuple[int, ...] = ()  # age-restricted channels (listed with the others)
    threads: dict[int, int] = field(default_factory=dict)  # thread id -> parent channel id


@dataclass
class _Failure:
    method: str
    pattern: re.Pattern[str]
    retry_after: float
    remaining: int = 1


@dataclass
class _Refusal:
    method: str
    pattern: re.Pattern[str]
    code: int
    message: str


@dataclass
class _Hold:
    method: str
    pattern: re.Pattern[str]
    release: asyncio.Event


@dataclass
class _Session:
    id: str
    seq: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)  # every dispatch, with "s"
    ws: web.WebSocketResponse | None = None
    delivered: int = 0  # highest seq written to a live socket


def _snowflakes():
    # Discord snowflakes encode a timestamp; any increasing 64-bit number works for discord.py.
    start = (int(time.time() * 1000) - 1420070400000) << 22
    return itertools.count(start)


class FakeDiscord:
    def __init__(self, guilds: list[FakeGuild] | None = None) -> None:
        self.guilds = {g.id: g for g in (guilds or [])}
        self.calls: list[Call] = []
        self.identifies: list[dict[str, Any]] = []
        self.resumes: list[dict[str, Any]] = []
        self.tokens_seen: set[str] = set()
        self.messages: dict[int, dict[str, Any]] = {}  # message id -> payload as stored
        self.interaction_sent_at: dict[int, float] = {}  # interaction id -> monotonic time dispatched
        self.interaction_acked_at: dict[int, float] = {}
        self._ids = _snowflakes()
        self._failures: list[_Failure] = []
        self._refusals: list[_Refusal] = []
        self._holds: list[_Hold] = []
        self.interaction_channels: dict[str, tuple[int, int | None]] = {}  # token -> (channel, guild)
        self.originals: dict[str, int] = {}  # interaction token -> its original response's message id
        self._session: _Session | None = None
        self._pending: list[tuple[str, dict[str, Any]]] = []  # dispatched while no session existed
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.reject_login = False  # answer GET /users/@me with 401 (a wrong token)
        self.files: dict[str, tuple[bytes, str]] = {}  # CDN path -> (bytes, content type)
        self.cdn_fetches: list[str] = []  # CDN paths the bot downloaded

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self, port: int = 0) -> FakeDiscord:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/gateway", self._gateway)
        app.router.add_route("*", "/api/v10/{tail:.*}", self._rest)
        app.router.add_get("/attachments/{tail:.*}", self._cdn)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def close(self) -> None:
        if self._session and self._session.ws is not None:
            await self._session.ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    def env(self) -> dict[str, str]:
        return {"DISCORD_API_BASE": self.api_base, "DISCORD_GATEWAY_URL": self.gateway_url}

    def new_id(self) -> int:
        return next(self._ids)

    # -- attachments (the CDN) -----------------------------------------------------------------------
    def add_attachment(
        self, filename: str, data: bytes, content_type: str | None = "image/png"
    ) -> dict[str, Any]:
        """An uploaded file, served at a loopback CDN URL; pass it to :meth:`interaction`."""
        aid = self.new_id()
        path = f"/attachments/{aid}/{filename}"
        self.files[path] = (data, content_type or "application/octet-stream")
        out: dict[str, Any] = {
            "id": str(aid),
            "filename": filename,
            "size": len(data),
            "url": f"http://127.0.0.1:{self.port}{path}",
            "proxy_url": f"http://127.0.0.1:{self.port}{path}",
        }
        if content_type is not None:
            out["content_type"] = content_type
        return out

    async def _cdn(self, request: web.Request) -> web.Response:
        path = "/attachments/" + request.match_info["tail"]
        self.cdn_fetches.append(path)
        await self._notify()
        if path not in self.files:
            return web.Response(status=404, text="not found")
        data, content_type = self.files[path]
        return web.Response(body=data, headers={"Content-Type": content_type})

    # -- waiting -----------------------------------------------------------------------------------
    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_until(self, predicate: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
        async def _wait() -> Any:
            async with self._changed:
                while True:
                    result = predicate()
                    if result:
                        return result
                    await self._changed.wait()

        try:
            return await asyncio.wait_for(_wait(), timeout)
        except TimeoutError:
            calls = "\n".join(
                f"  {c.method} {c.path} {c.status} {json.dumps(c.json)[:160] if c.json else ''}"
                for c in self.calls[-30:]
            )
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what or predicate}; last calls:\n{calls}"
            ) from None

    def find(self, method: str, pattern: str, where: Callable[[Call], bool] | None = None) -> list[Call]:
        rx = re.compile(pattern)
        return [
            c
            for c in self.calls
            if c.method == method and rx.fullmatch(c.path) and (where is None or where(c))
        ]

    async def wait_call(
        self,
        method: str,
        pattern: str,
        where: Callable[[Call], bool] | None = None,
        *,
        count: int = 1,
        timeout: float = 10.0,
    ) -> list[Call]:
        rx = re.compile(pattern)
        found: list[Call] = []
        checked = 0

        def predicate() -> list[Call] | None:
            nonlocal checked  # look only at calls that arrived since the last check
            for call in self.calls[checked:]:
                if call.method == method and rx.fullmatch(call.path) and (where is None or where(call)):
                    found.append(call)
            checked = len(self.calls)
            return found if len(found) >= count else None

        return await self.wait_until(
            predicate,
            timeout,
            f"{count} x {method} {pattern}",
        )

    async def wait_ready(self, timeout: float = 20.0) -> None:
        await self.wait_until(
            lambda: (
                self._session is not None and self._session.ws is not None and self._session.delivered >= 1
            ),
            timeout,
            "the bot to identify",
        )

    # -- failure injection -------------------------------------------------------------------------
    def fail_once_with_429(self, method: str, pattern: str, retry_after: float) -> None:
        self._failures.append(_Failure(method, re.compile(pattern), retry_after))

    def refuse(
        self, method: str, pattern: str, code: int = 50013, message: str = "Missing Permissions"
    ) -> None:
        """Answer matching requests with 403 and Discord's error ``code`` until :meth:`allow`."""
        self._refusals.append(_Refusal(method, re.compile(pattern), code, message))

    def allow(self) -> None:
        self._refusals.clear()

    def hold(self, method: str, pattern: str) -> asyncio.Event:
        """Leave matching requests unanswered until the returned event is set (recorded on arrival)."""
        held = _Hold(method, re.compile(pattern), asyncio.Event())
        self._holds.append(held)
        return held.release

    def release_holds(self) -> None:
        for held in self._holds:
            held.release.set()
        self._holds.clear()

    async def drop_gateway(self) -> None:
        """Close the socket abnormally (code 4000): the client must RESUME the same session."""
        if self._session and self._session.ws is not None:
            ws, self._session.ws = self._session.ws, None
            await ws.close(code=4000, message=b"fake drop")

    # -- gateway events ----------------------------------------------------------------------------
    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        session = self._session
        if session is None:
            self._pending.append((event, data))
            return
        session.seq += 1
        payload = {"op": 0, "t": event, "s": session.seq, "d": data}
        session.events.append(payload)
        if session.ws is not None:
            await self._send(session, payload)

    async def _send(self, session: _Session, payload: dict[str, Any]) -> None:
        assert session.ws is not None
        if payload["t"] == "INTERACTION_CREATE":
            self.interaction_sent_at[int(payload["d"]["id"])] = time.monotonic()
        try:
            await session.ws.send_str(json.dumps(payload))
        except ConnectionError:
            session.ws = None
            return
        session.delivered = max(session.delivered, payload.get("s") or 0)
        await self._notify()

    def _user(self, user_id: int, name: str | None = None, bot: bool = False) -> dict[str, Any]:
        return {
            "id": str(user_id),
            "username": name or f"user{user_id % 10000}",
            "discriminator": "0",
            "global_name": None,
            "avatar": None,
            "bot": bot,
        }

    def _member(self, guild_id: int, user_id: int, roles: tuple[int, ...]) -> dict[str, Any]:
        return {
            "user": self._user(user_id),
            "roles": [str(r) for r in roles],
            "joined_at": "2024-01-01T00:00:00+00:00",
            "deaf": False,
            "mute": False,
            "flags": 0,
            "nick": None,
            "avatar": None,
        }

    def _guild_payload(self, guild: FakeGuild) -> dict[str, Any]:
        roles = [
            {
                "id": str(guild.id),
                "name": "@everyone",
                "permissions": str(1 << 11 | 1 << 6 | 1 << 31),
                "position": 0,
                "color": 0,
                "hoist": False,
                "managed": False,
                "mentionable": False,
                "flags": 0,
            }
        ]
        if guild.admin_role_id:
            roles.append(
                {
                    "id": str(guild.admin_role_id),
                    "name": "admins",
                    "permissions": str(MANAGE_GUILD),
                    "position": 1,
                    "color": 0,
                    "hoist": False,
                    "managed": False,
                    "mentionable": False,
                    "flags": 0,
                }
            )
        channels = [
            {
                "id": str(c),
                "type": 0,
                "name": f"chan{i}",
                "position": i,
                "guild_id": str(guild.id),
                "permission_overwrites": [],
                "nsfw": c in guild.nsfw_channel_ids,
                "parent_id": None,
            }
            for i, c in enumerate(dict.fromkeys((*guild.channel_ids, *guild.nsfw_channel_ids)))
        ]
        return {
            "id": str(guild.id),
            "name": guild.name,
            "owner_id": "1",
            "roles": roles,
            "channels": channels,
            "emojis": [],
            "stickers": [],
            "features": [],
            "members": [],
            "threads": [],
            "member_count": 10,
            "large": False,
            "unavailable": False,
            "premium_tier": 0,
            "joined_at": "2024-01-01T00:00:00+00:00",
            "preferred_locale": "en-US",
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "system_channel_flags": 0,
            "voice_states": [],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
        }

    def _channel_payload(self, guild_id: int, channel_id: int) -> dict[str, Any]:
        """The interaction's channel as Discord sends it: a text channel with its nsfw flag, or a public
        thread (type 11) naming its parent (a thread has no nsfw flag of its own)."""
        guild = self.guilds.get(guild_id)
        if guild is not None and channel_id in guild.threads:
            return {
                "id": str(channel_id),
                "type": 11,
                "guild_id": str(guild_id),
                "name": "thread",
                "parent_id": str(guild.threads[channel_id]),
                "owner_id": "1",
                "thread_metadata": {
                    "archived": False,
                    "auto_archive_duration": 1440,
                    "archive_timestamp": "2024-01-01T00:00:00+00:00",
                    "locked": False,
                },
                "message_count": 0,
                "member_count": 1,
                "rate_limit_per_user": 0,
                "flags": 0,
            }
        return {
            "id": str(channel_id),
            "type": 0,
            "guild_id": str(guild_id),
            "name": "chan",
            "position": 0,
            "permission_overwrites": [],
            "nsfw": guild is not None and channel_id in guild.nsfw_channel_ids,
            "parent_id": None,
        }

    async def interaction(
        self,
        name: str,
        options: list[dict[str, Any]] | None = None,
        *,
        guild_id: int | None,
        channel_id: int,
        user_id: int,
        roles: tuple[int, ...] = (),
        permissions: int = 0,
        type: int = 2,
        subcommand: str | None = None,
        attachments: list[dict[str, Any]] | None = None,
    ) -> tuple[int, str]:
        """Send INTERACTION_CREATE for an application command; returns (interaction id, token).

        ``attachments`` (from :meth:`add_attachment`) go into ``data.resolved``; an option of type 11
        refers to one by its id."""
        iid = self.new_id()
        token = f"itoken-{iid}"
        self.interaction_channels[token] = (channel_id, guild_id)
        opts = options or []
        if subcommand:
            opts = [{"type": 1, "name": subcommand, "options": opts}]
        data: dict[str, Any] = {
            "id": str(iid),
            "application_id": str(APPLICATION_ID),
            "type": type,
            "token": token,
            "version": 1,
            "data": {"id": str(abs(hash(name)) % 10**18), "name": name, "type": 1, "options": opts},
            "channel_id": str(channel_id),
            "locale": "en-US",
            "entitlements": [],
            "authorizing_integration_owners": {"0": str(guild_id or user_id)},
            "app_permissions": str(ALL_PERMISSIONS),
            "attachment_size_limit": (
                self.guilds[guild_id].attachment_size_limit if guild_id in self.guilds else 10 * 1024 * 1024
            ),
        }
        if attachments:
            data["data"]["resolved"] = {"attachments": {a["id"]: a for a in attachments}}
        if guild_id is not None:
            member = self._member(guild_id, user_id, roles)
            member["permissions"] = str(permissions)
            data.update(
                guild_id=str(guild_id),
                member=member,
                guild_locale="en-US",
                context=0,
                channel=self._channel_payload(guild_id, channel_id),
            )
        else:
            data.update(
                user=self._user(user_id),
                context=1,
                channel={"id": str(channel_id), "type": 1, "recipients": [self._user(user_id)]},
            )
        await self.dispatch("INTERACTION_CREATE", data)
        return iid, token

    async def component(
        self,
        custom_id: str,
        *,
        message_id: int,
        guild_id: int | None,
        channel_id: int,
        user_id: int,
        ephemeral: bool = True,
    ) -> tuple[int, str]:
        """Send INTERACTION_CREATE for a button click on ``message_id``; returns (interaction id, token).

        On a message the bot posted (kept in :attr:`messages`) the button must be one it posted: the
        message is sent with its real components, as Discord does."""
        iid = self.new_id()
        token = f"itoken-{iid}"
        stored = self.messages.get(message_id)
        if stored is not None:
            message = dict(stored)
            ids = [
                b.get("custom_id")
                for row in message.get("components") or []
                for b in row.get("components", [])
            ]
            assert custom_id in ids, f"message {message_id} has no button {custom_id!r} (it has {ids})"
        else:
            message = self._message(channel_id, {"flags": 64 if ephemeral else 0}, [], message_id=message_id)
            message["components"] = [
                {"type": 1, "components": [{"type": 2, "style": 2, "custom_id": custom_id, "label": "x"}]}
            ]
        data = self._interaction_base(
            iid, token, 3, guild_id=guild_id, channel_id=channel_id, user_id=user_id
        )
        data.update(data={"custom_id": custom_id, "component_type": 2}, message=message)
        await self.dispatch("INTERACTION_CREATE", data)
        return iid, token

    async def modal_submit(
        self,
        custom_id: str,
        values: dict[str, str],
        *,
        message_id: int | None,
        guild_id: int | None,
        channel_id: int,
        user_id: int,
    ) -> tuple[int, str]:
        """Send INTERACTION_CREATE for a submitted form (text inputs by ``custom_id``), opened from a
        button on ``message_id``; returns (interaction id, token)."""
        iid = self.new_id()
        token = f"itoken-{iid}"
        rows = [
            {"type": 1, "components": [{"type": 4, "custom_id": k, "value": v}]} for k, v in values.items()
        ]
        data = self._interaction_base(
            iid, token, 5, guild_id=guild_id, channel_id=channel_id, user_id=user_id
        )
        data["data"] = {"custom_id": custom_id, "components": rows}
        if message_id is not None and message_id in self.messages:
            data["message"] = dict(self.messages[message_id])
        await self.dispatch("INTERACTION_CREATE", data)
        return iid, token

    def _interaction_base(
        self, iid: int, token: str, type_: int, *, guild_id: int | None, channel_id: int, user_id: int
    ) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": str(iid),
            "application_id": str(APPLICATION_ID),
            "type": type_,
            "token": token,
            "version": 1,
            "channel_id": str(channel_id),
            "locale": "en-US",
            "entitlements": [],
            "authorizing_integration_owners": {"0": str(guild_id or user_id)},
            "app_permissions": str(ALL_PERMISSIONS),
            "attachment_size_limit": 10 * 1024 * 1024,
        }
        if guild_id is not None:
            member = self._member(guild_id, user_id, ())
            member["permissions"] = "0"
            data.update(
                guild_id=str(guild_id),
                member=member,
                guild_locale="en-US",
                context=0,
                channel=self._channel_payload(guild_id, channel_id),
            )
        else:
            data.update(
                user=self._user(user_id),
                context=1,
                channel={"id": str(channel_id), "type": 1, "recipients": [self._user(user_id)]},
            )
        return data

    async def react(
        self,
        message_id: int,
        emoji: str,
        *,
        user_id: int,
        channel_id: int,
        guild_id: int | None,
        roles: tuple[int, ...] = (),
    ) -> None:
        data: dict[str, Any] = {
            "user_id": str(user_id),
            "channel_id": str(channel_id),
            "message_id": str(message_id),
            "emoji": {"id": None, "name": emoji},
            "type": 0,
            "burst": False,
            "burst_colors": [],
            "message_author_id": str(BOT_USER_ID),
        }
        if guild_id is not None:
            data["guild_id"] = str(guild_id)
            data["member"] = self._member(guild_id, user_id, roles)
        await self.dispatch("MESSAGE_REACTION_ADD", data)

    # -- gateway socket ----------------------------------------------------------------------------
    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        await ws.send_str(json.dumps({"op": 10, "d": {"heartbeat_interval": 41250}, "s": None, "t": None}))
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                break
            payload = json.loads(msg.data)
            op = payload.get("op")
            if op == 1:
                await ws.send_str(json.dumps({"op": 11, "d": None, "s": None, "t": None}))
            elif op == 2:
                await self._identify(ws, payload["d"])
            elif op == 6:
                await self._resume(ws, payload["d"])
        if self._session is not None and self._session.ws is ws:
            self._session.ws = None
        await self._notify()
        return ws

    async def _identify(self, ws: web.WebSocketResponse, data: dict[str, Any]) -> None:
        self.tokens_seen.add(data.get("token", ""))
        self.identifies.append({k: v for k, v in data.items() if k != "token"})
        old = self._session
        if old is not None and old.ws is not None and old.ws is not ws:
            await old.ws.close()
        self._session = session = _Session(id=f"session-{self.new_id()}", ws=ws)
        shard = data.get("shard") or [0, 1]
        await self.dispatch(
            "READY",
            {
                "v": 10,
                "user": self._user(BOT_USER_ID, "chant", bot=True),
                "session_id": session.id,
                "resume_gateway_url": self.gateway_url,
                "shard": shard,
                "guilds": [{"id": str(g), "unavailable": True} for g in self.guilds],
                "application": {"id": str(APPLICATION_ID), "flags": 0},
                "private_channels": [],
                "relationships": [],
            },
        )
        for guild in self.guilds.values():
            await self.dispatch("GUILD_CREATE", self._guild_payload(guild))
        pending, self._pending = self._pending, []
        for event, payload in pending:
            await self.dispatch(event, payload)

    async def _resume(self, ws: web.WebSocketResponse, data: dict[str, Any]) -> None:
        self.tokens_seen.add(data.get("token", ""))
        self.resumes.append({k: v for k, v in data.items() if k != "token"})
        session = self._session
        if session is None or data.get("session_id") != session.id:
            await ws.send_str(json.dumps({"op": 9, "d": False, "s": None, "t": None}))
            return
        session.ws = ws
        last = int(data.get("seq") or 0)
        for payload in session.events:
            if payload["s"] > last:
                await self._send(session, payload)
        await self.dispatch("RESUMED", {})

    # -- REST -------------------------------------------------------------------------------------
    async def _rest(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()  # before reading the body: the acknowledgement time of a callback
        path = "/" + request.match_info["tail"]
        body: Any = None
        files: list[tuple[str, bytes]] = []
        if request.content_type == "multipart/form-data":
            reader = await request.multipart()
            async for part in reader:
                data = await part.read()  # type: ignore[union-attr]
                if part.name == "payload_json":  # type: ignore[union-attr]
                    body = json.loads(data)
                else:
                    files.append((part.filename or "", bytes(data)))  # type: ignore[union-attr]
        elif request.can_read_body:
            raw = await request.read()
            body = json.loads(raw) if raw else None
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bot "):
            self.tokens_seen.add(auth[4:])
        call = Call(
            request.method,
            path,
            dict(request.query),
            body,
            files,
            {k: v for k, v in request.headers.items() if k.lower() != "authorization"},
            arrived,
        )
        self.calls.append(call)
        if request.method == "POST" and path.startswith("/interactions/") and path.endswith("/callback"):
            self.interaction_acked_at.setdefault(int(path.split("/")[2]), arrived)
        for held in self._holds:
            if held.method == request.method and held.pattern.fullmatch(path):
                await self._notify()
                await held.release.wait()
        for refusal in self._refusals:
            if refusal.method == request.method and refusal.pattern.fullmatch(path):
                call.status = 403
                await self._notify()
                return self._json({"message": refusal.message, "code": refusal.code}, status=403)
        for failure in self._failures:
            if failure.remaining and failure.method == request.method and failure.pattern.fullmatch(path):
                failure.remaining -= 1
                call.status = 429
                await self._notify()
                return self._json(
                    {
                        "message": "You are being rate limited.",
                        "retry_after": failure.retry_after,
                        "global": False,
                    },
                    status=429,
                    headers={"Via": "1.1 google", "Retry-After": str(failure.retry_after)},
                )
        try:
            status, result = self._route(request.method, path, body, files)
        finally:
            await self._notify()
        call.status = status
        call.response = result
        if status == 204:
            return web.Response(status=204)
        return self._json(result, status=status)

    @staticmethod
    def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
        # discord.py parses JSON only when the Content-Type is exactly application/json.
        return web.Response(
            status=status,
            body=json.dumps(data).encode(),
            headers={"Content-Type": "application/json", **(headers or {})},
        )

    def _message(
        self,
        channel_id: int,
        body: dict[str, Any] | None,
        files: list[tuple[str, bytes]],
        message_id: int | None = None,
    ) -> dict[str, Any]:
        body = body or {}
        mid = message_id or self.new_id()
        attachments = [
            {
                "id": str(self.new_id()),
                "filename": name,
                "size": len(data),
                "url": f"http://127.0.0.1:{self.port}/attachments/{mid}/{name}",
                "proxy_url": f"http://127.0.0.1:{self.port}/attachments/{mid}/{name}",
            }
            for name, data in files
        ]
        for name, data in files:
            self.files[f"/attachments/{mid}/{name}"] = (data, "image/png")
        ref = body.get("message_reference")
        message = {
            "id": str(mid),
            "channel_id": str(channel_id),
            "author": self._user(BOT_USER_ID, "chant", bot=True),
            "content": body.get("content") or "",
            "timestamp": "2024-01-01T00:00:00+00:00",
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": attachments,
            "embeds": body.get("embeds") or [],
            "pinned": False,
            "type": 19 if ref else 0,
            "flags": body.get("flags") or 0,
            "components": body.get("components") or [],
        }
        if ref:
            message["message_reference"] = ref
        return message

    def _route(self, method: str, path: str, body: Any, files: list[tuple[str, bytes]]) -> tuple[int, Any]:
        parts = path.strip("/").split("/")
        if method == "GET" and path == "/users/@me":
            if self.reject_login:
                return 401, {"message": "401: Unauthorized", "code": 0}
            return 200, self._user(BOT_USER_ID, "chant", bot=True)
        if method == "GET" and path == "/oauth2/applications/@me":
            return 200, {
                "id": str(APPLICATION_ID),
                "name": "chant",
                "description": "",
                "icon": None,
                "bot_public": True,
                "bot_require_code_grant": False,
                "verify_key": "00",
                "owner": self._user(1, "owner"),
                "team": None,
                "flags": 0,
                "interactions_endpoint_url": None,
            }
        if method == "GET" and path in ("/gateway/bot", "/gateway"):
            return 200, {
                "url": self.gateway_url,
                "shards": 1,
                "session_start_limit": {
                    "total": 1000,
                    "remaining": 999,
                    "reset_after": 0,
                    "max_concurrency": 1,
                },
            }
        if method == "PUT" and parts[0] == "applications" and parts[-1] == "commands":
            guild_id = parts[3] if len(parts) > 3 else None
            out = []
            for cmd in body or []:
                out.append(
                    {
                        **cmd,
                        "id": str(self.new_id()),
                        "application_id": str(APPLICATION_ID),
                        "version": "1",
                        "guild_id": guild_id,
                        "default_member_permissions": cmd.get("default_member_permissions"),
                        "type": cmd.get("type", 1),
                    }
                )
            return 200, out
        if method == "POST" and parts[0] == "interactions" and parts[-1] == "callback":
            iid = int(parts[1])
            kind = (body or {}).get("type")
            flags = ((body or {}).get("data") or {}).get("flags") or 0
            if kind in (4, 5) and parts[2] in self.interaction_channels:  # a response message exists now
                channel_id, _ = self.interaction_channels[parts[2]]
                msg = self._message(channel_id, (body or {}).get("data") or {}, files)
                if kind == 5:
                    msg["flags"] = msg["flags"] | 128  # LOADING: "thinking…"
                self.messages[int(msg["id"])] = msg
                self.originals[parts[2]] = int(msg["id"])
            return 200, {
                "interaction": {
                    "id": str(iid),
                    "type": 2,
                    "response_message_loading": kind == 5,
                    "response_message_ephemeral": bool(flags & 64),
                }
            }
        if parts[0] == "webhooks":
            # /webhooks/{app}/{token}[/messages/{id|@original}]
            if method == "POST" and len(parts) == 3:
                msg = self._message(0, body, files)
                self.messages[int(msg["id"])] = msg
                return 200, msg
            if len(parts) == 5 and parts[4] == "@original":
                return self._original(method, parts[2], body, files)
            if method == "PATCH" and len(parts) == 5:
                msg = self._message(0, body, files)
                msg["id"] = parts[4]
                return 200, msg
            if method == "DELETE":
                return 204, None
            if method == "GET" and len(parts) == 5:
                return 200, self._message(0, {}, [])
        if parts[0] == "channels" and len(parts) >= 3 and parts[2] == "messages":
            channel_id = int(parts[1])
            if method == "POST" and len(parts) == 3:
                msg = self._message(channel_id, body, files)
                self.messages[int(msg["id"])] = msg
                return 200, msg
            if len(parts) == 4:
                mid = int(parts[3])
                if method == "PATCH":
                    msg = self._message(channel_id, body, files, message_id=mid)
                    self.messages[mid] = msg
                    return 200, msg
                if method == "DELETE":
                    self.messages.pop(mid, None)
                    return 204, None
                if method == "GET":
                    return (
                        (200, self.messages[mid])
                        if mid in self.messages
                        else (404, {"message": "Unknown Message", "code": 10008})
                    )
            if len(parts) >= 6 and parts[4] == "reactions" and method in ("PUT", "DELETE"):
                return 204, None
        if method == "POST" and path == "/users/@me/channels":
            recipient = int(body["recipient_id"])
            return 200, {
                "id": str(recipient + 1),
                "type": 1,
                "recipients": [self._user(recipient)],
                "last_message_id": None,
            }
        return 404, {"message": f"fake discord: no route {method} {path}", "code": 0}

    def _original(
        self, method: str, token: str, body: Any, files: list[tuple[str, bytes]]
    ) -> tuple[int, Any]:
        """An interaction's original response: one message, whichever endpoint reads or edits it."""
        channel_id, _ = self.interaction_channels.get(token, (0, None))
        mid = self.originals.get(token)
        if method == "DELETE":
            if mid is None or self.messages.pop(mid, None) is None:
                return 404, {"message": "Unknown Message", "code": 10008}
            return 204, None
        if method == "GET":
            if mid is None or mid not in self.messages:
                return 404, {"message": "Unknown Message", "code": 10008}
            return 200, self.messages[mid]
        if mid is not None and mid not in self.messages:
            return 404, {"message": "Unknown Message", "code": 10008}
        msg = self._message(channel_id, body, files, message_id=mid)
        self.messages[int(msg["id"])] = msg
        self.originals[token] = int(msg["id"])
        return 200, msg

    # -- helpers for tests -------------------------------------------------------------------------
    def ack_latencies(self) -> dict[int, float]:
        return {
            i: self.interaction_acked_at[i] - t
            for i, t in self.interaction_sent_at.items()
            if i in self.interaction_acked_at
        }

    def channel_posts(self, channel_id: int | None = None) -> list[Call]:
        return [
            c
            for c in self.find("POST", r"/channels/\d+/messages")
            if channel_id is None or c.path == f"/channels/{channel_id}/messages"
        ]


async def _serve_forever(port: int = 0) -> None:  # pragma: no cover - manual debugging aid
    fake = await FakeDiscord([FakeGuild(1, channel_ids=(11,))]).start()
    print("api", fake.api_base, "gateway", fake.gateway_url)
    await asyncio.Event().wait()


if __name__ == "__main__":  # pragma: no cover
    asyncio.run(_serve_forever())
