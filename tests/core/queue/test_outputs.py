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

    def slow_write(self, job_id, result):
        release.wait(10)
        return write(self, job_id, result)

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
