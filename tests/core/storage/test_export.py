"""``chant jobs export``: a job's, a user's or a guild's images (PNG) and parameters (JSON lines), from
the database, streamed (memory stays that of a few images however much is exported)."""

from __future__ import annotations

import asyncio
import json
import os
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from core.cli import main
from core.storage.db import Database
from core.storage.export import export
from core.storage.models import utcnow
from core.storage.repositories import JobRepo
from core.types import GeneratedImage, GenerationRequest

GUILD, OTHER_GUILD = 111_000_000_000_000_001, 111_000_000_000_000_002
ALICE, BOB = 444_000_000_000_000_001, 444_000_000_000_000_002


@pytest.fixture
def url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CHANT_CONFIG", raising=False)
    url = f"sqlite:///{tmp_path / 'chant.db'}"
    monkeypatch.setenv("CHANT_DATABASE_URL", url)
    assert main(["db", "upgrade"]) == 0
    return url


def _add(url: str, jobs: list[tuple[int, int | None, int, int, float]], png_size: int = 0) -> list[int]:
    """Jobs (user, guild, seed, images, age in days); each image's PNG is b"PNG" + its job/seed (padded
    with random bytes to ``png_size``). Returns the job ids."""

    async def run() -> list[int]:
        db = Database(url)
        ids = []
        try:
            for user, guild, seed, count, age in jobs:
                async with db.transaction(write=True) as s:
                    repo = JobRepo(s)
                    request = GenerationRequest(prompt=f"cat {seed}", seed=seed, count=count, model="sd15")
                    job = await repo.add(user_id=user, channel_id=5, guild_id=guild, request=request)
                    images = [
                        GeneratedImage(_png(job.id, seed + k, png_size), seed + k, seed + k + 1, f"cat {seed + k}")
                        for k in range(count)
                    ]
                    for image in await repo.add_images(job.id, images):
                        image.created_at = utcnow() - timedelta(days=age)
                    ids.append(job.id)
        finally:
            await db.dispose()
        return ids

    return asyncio.run(run())


def _png(job: int, seed: int, size: int) -> bytes:
    head = f"PNG {job}-{seed}".encode()
    return head + os.urandom(max(0, size - len(head)))


def _lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "parameters.jsonl").read_text(encoding="utf-8").splitlines()]


def test_export_a_job_a_user_or_a_guild(url: str, tmp_path: Path, capsys) -> None:
    a, b, c = _add(url, [(ALICE, GUILD, 10, 2, 0), (BOB, GUILD, 20, 1, 0), (ALICE, OTHER_GUILD, 30, 1, 0)])
    out = tmp_path / "job"
    assert main(["jobs", "export", "--job", str(a), "--out", str(out)]) == 0
    assert f"exported 2 image(s) of 1 job(s) of job {a} to {out}" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{a}-10.png", f"{a}-11.png", "parameters.jsonl"])
    assert (out / f"{a}-11.png").read_bytes().startswith(f"PNG {a}-11".encode())
    first, second = _lines(out)
    assert first["file"] == f"{a}-10.png" and second["file"] == f"{a}-11.png"
    assert (first["job"], first["seed"], first["subseed"], first["position"]) == (a, 10, 11, 0)
    assert first["user_id"] == str(ALICE) and first["guild_id"] == str(GUILD)  # snowflakes as strings
    assert first["infotext"] == "cat 10" and first["model"] == "sd15"
    assert first["request"]["prompt"] == "cat 10" and first["request"]["count"] == 2
    assert datetime.fromisoformat(first["created_at"]).tzinfo is not None
    assert main(["jobs", "export", "--user", str(ALICE), "--out", str(tmp_path / "alice")]) == 0
    assert [(line["job"], line["seed"]) for line in _lines(tmp_path / "alice")] == [(a, 10), (a, 11), (c, 30)]
    assert main(["jobs", "export", "--guild", str(GUILD), "--out", str(tmp_path / "guild")]) == 0
    assert [(line["job"], line["seed"]) for line in _lines(tmp_path / "guild")] == [(a, 10), (a, 11), (b, 20)]


def test_since_and_pruned_images(url: str, tmp_path: Path, capsys) -> None:
    old, new = _add(url, [(ALICE, GUILD, 1, 1, 10), (ALICE, GUILD, 2, 1, 0)])
    since = (datetime.now(UTC) - timedelta(days=2)).strftime("%Y-%m-%d")
    assert main(["jobs", "export", "--user", str(ALICE), "--since", since, "--out", str(tmp_path / "recent")]) == 0
    assert [line["job"] for line in _lines(tmp_path / "recent")] == [new]
    assert main(["db", "prune-images", "--days", "5", "--yes"]) == 0
    capsys.readouterr()
    assert main(["jobs", "export", "--user", str(ALICE), "--out", str(tmp_path / "all")]) == 0
    assert "exported 1 image(s) (1 more pruned: parameters only) of 2 job(s)" in capsys.readouterr().out
    pruned, kept = _lines(tmp_path / "all")
    assert (pruned["job"], pruned["file"], pruned["infotext"]) == (old, None, "cat 1")
    assert kept["file"] == f"{new}-2.png"
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == [f"{new}-2.png", "parameters.jsonl"]


def test_bad_arguments_and_nothing_to_export(url: str, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["jobs", "export", "--out", str(tmp_path / "x")])  # one of --job/--user/--guild is required
    with pytest.raises(SystemExit):
        main(["jobs", "export", "--job", "1", "--user", "2", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit):
        main(["jobs", "export", "--job", "1", "--since", "last week", "--out", str(tmp_path / "x")])
    assert "'last week' is not a date like 2024-05-31" in capsys.readouterr().err
    assert main(["jobs", "export", "--job", "999", "--out", str(tmp_path / "none")]) == 1
    assert "no stored images of job 999" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    _add(url, [(ALICE, GUILD, 1, 1, 0)])
    assert main(["jobs", "export", "--user", str(ALICE), "--out", str(tmp_path / "file" / "sub")]) == 1
    assert "cannot write into" in capsys.readouterr().err


def test_export_streams_instead_of_loading_every_image(url: str, tmp_path: Path) -> None:
    """60 images of 256 KiB (15 MiB) go out with a Python memory peak of a few images (2.2 MiB here, the
    same for 240 images)."""
    _add(url, [(ALICE, GUILD, 100 * n, 4, 0) for n in range(15)], png_size=256 * 1024)

    async def run() -> int:
        db = Database(url)
        try:
            tracemalloc.start()
            done = await export(db, tmp_path / "big", guild=GUILD)
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        finally:
            await db.dispose()
        assert done.images == 60
        return peak

    peak = asyncio.run(run())
    total = sum(p.stat().st_size for p in (tmp_path / "big").glob("*.png"))
    assert total >= 60 * 256 * 1024
    assert peak < total / 4, f"peak {peak / 2**20:.1f} MiB for {total / 2**20:.1f} MiB of images"


async def test_export_streams_from_both_backends(db: Database, tmp_path: Path) -> None:
    async with db.transaction(write=True) as s:
        repo = JobRepo(s)
        job = await repo.add(user_id=ALICE, channel_id=5, guild_id=GUILD, request=GenerationRequest(prompt="x", seed=7))
        await repo.add_images(job.id, [GeneratedImage(_png(job.id, 7 + k, 5000), 7 + k, 0, "x") for k in range(9)])
    done = await export(db, tmp_path / "out", guild=GUILD)
    assert (done.images, done.jobs) == (9, 1)  # more rows than one fetch holds
    assert [line["seed"] for line in _lines(tmp_path / "out")] == list(range(7, 16))
    assert (tmp_path / "out" / f"{job.id}-15.png").read_bytes().startswith(f"PNG {job.id}-15".encode())


async def test_a_variation_job_s_images_moderation_and_template_are_exported(db: Database, tmp_path: Path) -> None:
    """A variation job's images share their seed (A1111 keeps it and steps the variation seed): each is
    its own file, named with its variation seed too. A blocked image is exported all the same, its line
    marked with the stored decision; a dynamic prompt's template and the parent job go along."""
    block = {"action": "block", "score": 0.97, "threshold": 0.5, "rule": "guild", "reason": "r", "charged": True}
    async with db.transaction(write=True) as s:
        repo = JobRepo(s)
        parent = await repo.add(user_id=ALICE, channel_id=5, guild_id=GUILD, request=GenerationRequest(prompt="a"))
        request = GenerationRequest(prompt="a red fox", seed=42, subseed=9, subseed_strength=0.5, count=2)
        job = await repo.add(
            user_id=ALICE, channel_id=5, guild_id=GUILD, request=request, kind="vary", parent_id=parent.id,
            prompt_templates={"prompt": "a {red|blue} fox"},
        )  # fmt: skip
        images = [GeneratedImage(_png(job.id, 42, 100), 42, 9 + k, "a red fox", 0.97 if k else 0.1) for k in range(2)]
        await repo.add_images(job.id, images, [None, block])
    done = await export(db, tmp_path / "out", job=job.id)
    assert done.images == 2
    first, second = _lines(tmp_path / "out")
    assert (first["file"], second["file"]) == (f"{job.id}-42-9.png", f"{job.id}-42-10.png")
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == sorted([first["file"], second["file"]])
    assert (first["moderation"], first["moderation_score"]) == (None, 0.1)
    assert second["moderation"] == block and second["moderation_score"] == 0.97
    assert first["prompt_templates"] == {"prompt": "a {red|blue} fox"} and first["request"]["prompt"] == "a red fox"
    assert (first["kind"], first["parent_job"]) == ("vary", parent.id)
