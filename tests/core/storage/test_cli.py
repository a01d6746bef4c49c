"""``chant db``'s destructive commands ask first; ``prune-images --days 0`` prunes everything."""

from __future__ import annotations

import asyncio
import io
from datetime import timedelta
from pathlib import Path

import pytest

from core.cli import main
from core.storage import migrate
from core.storage.db import Database, create_engine
from core.storage.models import utcnow
from core.storage.repositories import JobRepo
from core.types import GeneratedImage, GenerationRequest


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CHANT_CONFIG", raising=False)
    monkeypatch.delenv("CHANT_DATABASE_URL", raising=False)
    url = f"sqlite:///{tmp_path / 'chant.db'}"
    assert main(["db", "upgrade", "--url", url]) == 0
    return url


def _revision(url: str) -> str | None:
    async def run():
        engine = create_engine(url)
        try:
            return await migrate.current_revision(engine)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _images(url: str, ages_days: list[float]) -> list[int]:
    """Jobs with one image each, created ``ages_days`` ago; returns the job ids."""

    async def run() -> list[int]:
        db = Database(url)
        ids = []
        try:
            async with db.transaction(write=True) as s:
                repo = JobRepo(s)
                for age in ages_days:
                    job = await repo.add(user_id=1, channel_id=2, guild_id=3, request=GenerationRequest(prompt="x"))
                    for image in await repo.add_images(job.id, [GeneratedImage(b"png", 1, 0, "i")]):
                        image.created_at = utcnow() - timedelta(days=age)
                    ids.append(job.id)
        finally:
            await db.dispose()
        return ids

    return asyncio.run(run())


def _stored(url: str, ids: list[int]) -> list[bool]:
    async def run() -> list[bool]:
        db = Database(url)
        try:
            async with db.transaction() as s:
                return [(await JobRepo(s).images(i))[0].png is not None for i in ids]
        finally:
            await db.dispose()

    return asyncio.run(run())


def test_downgrade_without_a_terminal_refuses_unless_yes(url: str, capsys, monkeypatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["db", "downgrade", "base", "--url", url]) == 1
    err = capsys.readouterr().err
    assert "not done: migrating" in err and "down to base drops every table" in err and "--yes" in err
    assert _revision(url) == migrate.head_revision()
    assert main(["db", "downgrade", "base", "--url", url, "--yes"]) == 0
    assert _revision(url) is None


@pytest.mark.parametrize(("answer", "rc"), [("n\n", 1), ("\n", 1), ("yes\n", 0)])
def test_downgrade_asks_on_a_terminal(url: str, capsys, monkeypatch, answer: str, rc: int) -> None:
    monkeypatch.setattr("sys.stdin", _Terminal(answer))
    assert main(["db", "downgrade", "base", "--url", url]) == rc
    assert "Continue? [y/N]" in capsys.readouterr().out
    assert _revision(url) == (None if rc == 0 else migrate.head_revision())


def test_prune_asks_and_days_zero_prunes_everything(url: str, capsys, monkeypatch) -> None:
    ids = _images(url, [40, 2, 0])
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["db", "prune-images", "--url", url, "--days", "0"]) == 1  # no terminal, no --yes
    assert _stored(url, ids) == [True, True, True]
    assert main(["db", "prune-images", "--url", url, "--yes"]) == 0  # the default retention, 30 days
    assert "pruned the bytes of 1 image(s): older than 30 days" in capsys.readouterr().out
    assert _stored(url, ids) == [False, True, True]
    assert main(["db", "prune-images", "--url", url, "--days", "0", "--yes"]) == 0
    assert "pruned the bytes of 2 image(s): all of them" in capsys.readouterr().out
    assert _stored(url, ids) == [False, False, False]


def test_prune_refuses_negative_days_and_says_when_retention_is_off(url: str, capsys, tmp_path) -> None:
    assert main(["db", "prune-images", "--url", url, "--days", "-1", "--yes"]) == 2
    assert "--days must be 0 (every image) or more, not -1" in capsys.readouterr().err
    config = tmp_path / "off.toml"
    config.write_text("[database]\nimage_retention_days = 0\n")
    assert main(["--config", str(config), "db", "prune-images", "--url", url, "--yes"]) == 0
    assert "image retention is off" in capsys.readouterr().out


def test_help_of_a_destructive_command_shows_yes_and_defaults(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["db", "downgrade", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--yes do not ask for confirmation" in out
    assert "--url URL database URL (default: [database] url from the settings)" in out
