"""Running the real ``chant run`` process against the fake Discord server (e2e tests, benchmark)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

from tests.bot.fake_discord import FakeDiscord

ROOT = Path(__file__).resolve().parents[2]
CHANT = ROOT / ".venv" / "bin" / "chant"


class ChantProcess:
    """``chant run`` in a subprocess; its combined output is kept in ``self.output``."""

    def __init__(
        self,
        config: Path,
        fake: FakeDiscord,
        step_delay: float,
        token: str,
        *,
        fake_engine: bool = True,
        env: dict[str, str] | None = None,
    ) -> None:
        self.config, self.fake, self.step_delay, self.token = config, fake, step_delay, token
        self.fake_engine = fake_engine
        self.extra_env = dict(env or {})
        self.output = ""
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_", "CHANT_"))},
            **self.fake.env(),
            "DISCORD_TOKEN": self.token,
            "CHANT_CONFIG": str(self.config),
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
            **self.extra_env,
        }
        if self.fake_engine:
            env.update(CHANT_FAKE_ENGINE="1", CHANT_FAKE_ENGINE_DELAY=str(self.step_delay))
        exe = [str(CHANT)] if CHANT.exists() else [sys.executable, "-m", "bot.cli"]
        self.proc = await asyncio.create_subprocess_exec(
            *exe,
            "run",
            env=env,
            cwd=self.config.parent,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        self._reader = asyncio.create_task(self._read())
        identifies = len(self.fake.identifies)
        try:
            await self.fake.wait_until(
                lambda: len(self.fake.identifies) > identifies or self.proc.returncode is not None,
                60,
                "chant run to connect",
            )
        finally:
            if self.proc.returncode is not None:
                await asyncio.sleep(0.2)
                raise RuntimeError(f"chant run exited with {self.proc.returncode}:\n{self.output[-4000:]}")
        await self.fake.wait_ready()

    async def _read(self) -> None:
        assert self.proc and self.proc.stdout
        while line := await self.proc.stdout.readline():
            self.output += line.decode(errors="replace")

    async def kill(self) -> int:
        """``kill -9``: no shutdown, nothing finished or written."""
        assert self.proc is not None
        self.proc.kill()
        await self.proc.wait()
        if self._reader:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 5)
        return self.proc.returncode or 0

    async def stop(self) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 20)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._reader:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 5)
        return self.proc.returncode or 0


def write_config(tmp_path: Path, extra: str = "") -> Path:
    config = tmp_path / "chant.toml"
    config.write_text(
        f"""log_level = "INFO"
[database]
url = "sqlite+aiosqlite:///{tmp_path / "chant.db"}"
[discord]
progress_edit_interval_s = 0.5
[engine]
default_model = "fake-sd15"
{extra}""",
        encoding="utf-8",
    )
    return config
