"""Result files on disk, as A1111 users expect: with ``outputs.dir`` set, every finished job's images
are also written as ``DIR/YYYY-MM-DD/<job>-<seed>.png`` (the PNG carries A1111's ``parameters``
text, as the engine wrote it), plus ``<job>-<seed>.txt`` with the infotext when ``outputs.save_txt``
is on (A1111's ``save_txt``, off by default).

The worker writes them after the job's result is stored and announced, in a thread, so neither the
engine nor the delivery waits for the disk. A failed write (a full disk, a read-only folder) is
logged once until writing works again; the job itself has succeeded and stays so.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from datetime import date
from pathlib import Path

from core.config import OutputSettings
from core.types import GenerationResult

log = logging.getLogger(__name__)


class ResultFiles:
    def __init__(self, settings: OutputSettings, *, today: Callable[[], date] = date.today) -> None:
        if not settings.dir:
            raise ValueError("outputs.dir is not set")
        self.folder = Path(settings.dir).expanduser()
        self.save_txt = settings.save_txt
        self.today = today  # the local date, as A1111 names its day folders
        self._failing = False

    def write(self, job_id: int, result: GenerationResult) -> list[Path]:
        """Write one job's images (and text files); the paths written. OSError on failure."""
        day = self.folder / self.today().isoformat()
        day.mkdir(parents=True, exist_ok=True)
        written = []
        for image in result.images:
            stem = day / f"{job_id}-{image.seed}"
            written.append(_write_atomically(stem.with_suffix(".png"), image.png))
            if self.save_txt:
                written.append(_write_atomically(stem.with_suffix(".txt"), image.infotext.encode("utf-8")))
        return written

    async def save(self, job_id: int, result: GenerationResult) -> None:
        """:meth:`write` in a thread; never raises (a failure is logged, once until a write works)."""
        try:
            await asyncio.to_thread(self.write, job_id, result)
        except OSError as exc:
            if not self._failing:
                log.warning(
                    "could not write job %s's images into %s (outputs.dir): %s; jobs go on and stay in the "
                    "database (said once until a write works again)",
                    job_id, self.folder, exc.strerror or exc,
                )  # fmt: skip
            self._failing = True
            return
        if self._failing:
            log.info("writing results into %s works again", self.folder)
            self._failing = False


def _write_atomically(path: Path, data: bytes) -> Path:
    """A whole file or none: a reader (an image viewer, a sync tool) never sees half a PNG."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
