"""Result files on disk, as A1111 users expect: with ``outputs.dir`` set, every finished job's images
are also written as ``DIR/YYYY-MM-DD/<job>-<seed>.png`` (the PNG carries A1111's ``parameters``
text, as the engine wrote it), plus ``<job>-<seed>.txt`` with the infotext when ``outputs.save_txt``
is on (A1111's ``save_txt``, off by default).

An image that moderation blocked (its stored decision, :mod:`core.moderation`) is not written: the
folder is often synced or served to others, so it gets only what may be shown; the image stays in the
database, and ``chant jobs export`` takes it out marked as blocked. Files are named as the export
names them (:func:`core.storage.export.file_stem`: images of one job that share a seed carry their
variation seed too).

The worker writes them after the job's result is stored and announced, in a thread, so neither the
engine nor the delivery waits for the disk. A failed write (a full disk, a read-only folder) is
logged once until writing works again; the job itself has succeeded and stays so.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence, Set
from datetime import date
from pathlib import Path

from core.config import OutputSettings
from core.storage.export import file_stem
from core.types import GeneratedImage, GenerationResult

log = logging.getLogger(__name__)


class ResultFiles:
    def __init__(self, settings: OutputSettings, *, today: Callable[[], date] = date.today) -> None:
        if not settings.dir:
            raise ValueError("outputs.dir is not set")
        self.folder = Path(settings.dir).expanduser()
        self.save_txt = settings.save_txt
        self.today = today  # the local date, as A1111 names its day folders
        self._failing = False

    def write(self, job_id: int, result: GenerationResult, withheld: Set[int] = frozenset()) -> list[Path]:
        """Write one job's images (and text files) but those at the ``withheld`` indexes; the paths
        written. OSError on failure."""
        kept = [image for i, image in enumerate(result.images) if i not in withheld]
        if not kept:
            return []
        day = self.folder / self.today().isoformat()
        day.mkdir(parents=True, exist_ok=True)
        names = file_stems(job_id, result.images)
        written = []
        for i, image in enumerate(result.images):
            if i in withheld:
                continue
            stem = day / names[i]
            written.append(_write_atomically(stem.with_suffix(".png"), image.png))
            if self.save_txt:
                written.append(_write_atomically(stem.with_suffix(".txt"), image.infotext.encode("utf-8")))
        return written

    async def save(self, job_id: int, result: GenerationResult, withheld: Set[int] = frozenset()) -> None:
        """:meth:`write` in a thread; never raises (a failure is logged, once until a write works)."""
        try:
            await asyncio.to_thread(self.write, job_id, result, withheld)
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


def file_stems(job_id: int, images: Sequence[GeneratedImage]) -> list[str]:
    """Each image's file name without its suffix (:func:`core.storage.export.file_stem`'s rule)."""
    seeds = Counter(image.seed for image in images)
    return [
        file_stem(job_id, image.seed, image.subseed, seed_shared=seeds[image.seed] > 1) for image in images
    ]


def _write_atomically(path: Path, data: bytes) -> Path:
    """A whole file or none: a reader (an image viewer, a sync tool) never sees half a PNG."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
