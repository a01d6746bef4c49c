"""outputs.dir: every result also on disk as A1111 users expect (DIR/YYYY-MM-DD/<job>-<seed>.png with
the infotext in the PNG, and a .txt with save_txt), written by the worker after the result is stored,
never holding up the engine; a write failure is logged once and the job still succeeds."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import logging
import threading
from datetime import date
from pathlib import Path

from PIL import Image

from core.config import OutputSettings
from core.queue.outputs import ResultFiles
from core.services import ImagineOptions, JobDone
from core.testing.fake_classifier import FakeClassifier
from core.types import GeneratedImage, GenerationResult
from tests.core.services.conftest import Harness, actor, wait_for


def _harness(tmp_path: Path, **outputs) -> Harness:
    h = Harness(tmp_path)
    h.settings = dataclasses.replace(h.settings, outputs=OutputSettings(**outputs))
    return h


def _day_folder(root: Path) -> Path:
    (folder,) = list(root.iterdir())  # one day's folder (the test may run across midnight: either day)
    assert folder.name in {date.today().isoformat(), date.fromordinal(date.today().toordinal() - 1).isoformat()}
    return folder


async def test_every_result_is_written_with_its_infotext_and_a_text_file(tmp_path: Path) -> None:
    out = tmp_path / "outputs"
    h = _harness(tmp_path, dir=str(out), save_txt=True)
    service = await h.open()
    events = service.events()
    jobs = []
    for options in (ImagineOptions(prompt="a cat", seed=11, count=2), ImagineOptions(prompt="a dog", seed=5)):
        r = await service.submit_imagine(actor(), options)
        jobs.append(await wait_for(events, lambda e, j=r.job_id: isinstance(e, JobDone) and e.job.id == j))
    await h.close()  # waits for the worker's last writes
    folder = _day_folder(out)
    expected = set()
    for done in jobs:
        for image in done.images:
            png = folder / f"{done.job.id}-{image.seed}.png"
            assert png.read_bytes() == image.png  # the stored PNG, as it is
            assert Image.open(io.BytesIO(png.read_bytes())).info["parameters"] == image.infotext
            assert png.with_suffix(".txt").read_text(encoding="utf-8") == image.infotext
            expected |= {png.name, png.with_suffix(".txt").name}
    assert {p.name for p in folder.iterdir()} == expected  # 3 images, 3 texts, no temporary files
    assert {image.seed for done in jobs for image in done.images} == {11, 12, 5}


async def test_no_files_unless_outputs_dir_is_set_and_no_text_unless_asked(tmp_path: Path) -> None:
    h = _harness(tmp_path)
    service = await h.open()
    events = service.events()
    await service.submit_imagine(actor(), ImagineOptions(prompt="a cat"))
    await wait_for(events, lambda e: isinstance(e, JobDone))
    await h.close()
    assert service.worker.outputs is None
    assert not any(p.suffix == ".png" for p in tmp_path.rglob("*"))
    h2 = _harness(tmp_path / "second", dir=str(tmp_path / "second" / "outputs"))
    (tmp_path / "second").mkdir()
    service = await h2.open()
    events = service.events()
    await service.submit_imagine(actor(), ImagineOptions(prompt="a cat", seed=1))
    await wait_for(events, lambda e: isinstance(e, JobDone))
    await h2.close()
    assert [p.suffix for p in _day_folder(tmp_path / "second" / "outputs").iterdir()] == [".png"]


async def test_a_failing_write_is_logged_once_and_the_jobs_still_succeed(tmp_path: Path, caplog) -> None:
    blocker = tmp_path / "outputs"
    blocker.write_text("a file where the folder should be")
    h = _harness(tmp_path, dir=str(blocker))
    service = await h.open()
    events = service.events()
    caplog.set_level(logging.INFO, logger="core.queue.outputs")
    for n in range(3):
        r = await service.submit_imagine(actor(), ImagineOptions(prompt=f"cat {n}", seed=n))
        done = await wait_for(events, lambda e, j=r.job_id: isinstance(e, JobDone) and e.job.id == j)
        assert done.job.state == "done" and done.images
    await service.worker.drain()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert str(blocker) in warnings[0].getMessage() and "jobs go on" in warnings[0].getMessage()
    blocker.unlink()  # the operator fixes it: the next write works and says so
    r = await service.submit_imagine(actor(), ImagineOptions(prompt="cat again", seed=9))
    await wait_for(events, lambda e: isinstance(e, JobDone) and e.job.id == r.job_id)
    await h.close()
    assert any("works again" in rec.getMessage() for rec in caplog.records)
    assert [p.name for p in _day_folder(blocker).iterdir()] == [f"{r.job_id}-9.png"]


async def test_writing_files_never_holds_up_the_engine_or_the_announcement(tmp_path: Path, monkeypatch) -> None:
    h = _harness(tmp_path, dir=str(tmp_path / "outputs"))
    h.engine.capacity = 1
    release = threading.Event()
    write = ResultFiles.write

    def slow_write(self, job_id, result, withheld=frozenset()):
        release.wait(10)
        return write(self, job_id, result, withheld)

    monkeypatch.setattr(ResultFiles, "write", slow_write)
    service = await h.open(start=False)
    first = await service.submit_imagine(actor(user=1, guild=1), ImagineOptions(prompt="a", seed=1))
    await service.submit_imagine(actor(user=2, guild=2), ImagineOptions(prompt="b", seed=2))
    events = service.events()
    await service.start()
    # The first job is announced while its file is still being written...
    await wait_for(events, lambda e: isinstance(e, JobDone) and e.job.id == first.job_id)
    # ...and the engine runs the second job meanwhile.
    for _ in range(200):
        if len(h.engine.calls) == 2:
            break
        await asyncio.sleep(0.02)
    assert h.engine.calls == [[1], [2]]
    assert not (tmp_path / "outputs").exists()
    release.set()
    await h.close()
    assert sorted(p.name for p in _day_folder(tmp_path / "outputs").iterdir()) == [
        f"{first.job_id}-1.png", f"{first.job_id + 1}-2.png"
    ]


async def test_an_image_moderation_blocks_is_not_written_and_stays_in_the_database(tmp_path: Path) -> None:
    """outputs.dir gets what may be shown: a blocked image is left out (the folder is often synced or
    served to others); a spoilered one is written. Both stay in the database with their decisions."""
    out = tmp_path / "outputs"
    h = _harness(tmp_path, dir=str(out))
    service = await h.open(scorer=FakeClassifier())  # "NSFW" in the prompt scores 0.97
    await service.admin_moderation(actor(manage_guild=True), policy="block", age_restricted="spoiler")
    events = service.events()
    done = {}
    for name, who, prompt in (
        ("blocked", actor(), "a fox NSFW"),
        ("clean", actor(), "a fox"),
        ("spoilered", actor(channel=555, age_restricted=True), "a fox NSFW"),
    ):
        r = await service.submit_imagine(who, ImagineOptions(prompt=prompt, seed=3, count=2))
        done[name] = await wait_for(events, lambda e, j=r.job_id: isinstance(e, JobDone) and e.job.id == j)
    await h.close()
    assert [m.action for m in done["blocked"].job.moderation] == ["block", "block"]
    assert [m.action for m in done["spoilered"].job.moderation] == ["spoiler", "spoiler"]
    assert all(image.png for image in done["blocked"].images)  # stored, only not on disk
    written = sorted(p.name for p in _day_folder(out).iterdir())
    assert written == sorted(f"{done[n].job.id}-{seed}.png" for n in ("clean", "spoilered") for seed in (3, 4))


async def test_no_files_when_the_moderation_decisions_cannot_be_read(tmp_path: Path, monkeypatch, caplog) -> None:
    """Which images were blocked is unknown, so none of the batch is written (they stay in the database)."""
    h = _harness(tmp_path, dir=str(tmp_path / "outputs"))
    service = await h.open()

    async def broken(job_ids):
        raise OSError("the database went away")

    monkeypatch.setattr(service.worker.store, "blocked", broken)
    caplog.set_level(logging.ERROR, logger="core.queue.worker")
    events = service.events()
    r = await service.submit_imagine(actor(), ImagineOptions(prompt="a cat", seed=1))
    assert (await wait_for(events, lambda e: isinstance(e, JobDone) and e.job.id == r.job_id)).job.state == "done"
    await h.close()
    assert not (tmp_path / "outputs").exists()
    assert any("no files written" in rec.getMessage() for rec in caplog.records)


def test_images_sharing_a_seed_get_their_variation_seed_in_the_name(tmp_path: Path) -> None:
    """A1111 keeps the job's seed for every image once a variation strength is set (a Vary or 🔀 of
    several images): the names carry the variation seed, so no file overwrites another."""
    files = ResultFiles(OutputSettings(dir=str(tmp_path), save_txt=True), today=lambda: date(2024, 5, 31))
    images = tuple(GeneratedImage(b"png %d" % k, 42, 9 + k, f"info {k}") for k in range(3))
    written = files.write(7, GenerationResult(images, "m", "h"), withheld={1})
    assert [p.name for p in written] == ["7-42-9.png", "7-42-9.txt", "7-42-11.png", "7-42-11.txt"]
    assert (tmp_path / "2024-05-31" / "7-42-11.png").read_bytes() == b"png 2"
    plain = tuple(GeneratedImage(b"png", 5 + k, 0, "") for k in range(2))
    assert [p.name for p in files.write(8, GenerationResult(plain, "m", "h"))] == [
        "8-5.png", "8-5.txt", "8-6.png", "8-6.txt"
    ]
