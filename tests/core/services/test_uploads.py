"""No user waits on another's upload: decoding, checking and re-encoding an img2img source happens off
the event loop, in a bounded pool, and past the bound the uploader is told to try again.

Before, one 16 MP phone JPEG took ~10 s of decode + PNG encode on the event loop, and every other
member's /imagine in that window missed Discord's 3 s deadline (three uploads stalled the loop 9+ s).
"""

from __future__ import annotations

import asyncio
import io
import random
import threading
import time

import numpy as np
import pytest
from PIL import Image

from core.bootstrap import bootstrap, open_database
from core.services import ImagineOptions, UserError
from core.services.images import ImageWork
from core.storage.repositories import Repositories
from core.types import Mode
from tests.core.services.conftest import Harness, actor


def phone_jpeg(width: int = 4608, height: int = 3456, seed: int = 0) -> bytes:
    """A 16 MP JPEG of about 5 MB that compresses like a photo (smooth colour plus sensor noise)."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (height // 64, width // 64, 3), dtype=np.uint8), "RGB")
    image = Image.blend(
        small.resize((width, height), Image.Resampling.BICUBIC),
        Image.effect_noise((width, height), 24).convert("RGB"),
        0.25,
    )
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


class StallMeter:
    """A ticker on the event loop: the longest gap between its wake-ups beyond the tick it asked for."""

    def __init__(self, tick: float = 0.005) -> None:
        self.tick, self.worst, self._task = tick, 0.0, None

    async def __aenter__(self) -> StallMeter:
        self._task = asyncio.create_task(self._run())
        await asyncio.sleep(0)
        return self

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(self.tick)
            self.worst = max(self.worst, loop.time() - before - self.tick)

    async def __aexit__(self, *exc) -> None:
        self._task.cancel()


@pytest.mark.slow
async def test_three_16_mp_uploads_at_once_never_stall_the_event_loop(harness) -> None:
    service = await harness.open(start=False)
    photos = [phone_jpeg(seed=n) for n in range(3)]
    assert all(len(p) > 3_000_000 for p in photos)
    async with StallMeter() as meter:
        started = time.perf_counter()
        uploads = [
            asyncio.create_task(
                service.submit_imagine(actor(user=20 + n), ImagineOptions(prompt="a fox", init_image=photo))
            )
            for n, photo in enumerate(photos)
        ]
        await asyncio.sleep(0.2)  # the uploads are being decoded now
        asked = time.perf_counter()
        plain = await service.submit_imagine(actor(user=30), ImagineOptions(prompt="a cat"))
        plain_s = time.perf_counter() - asked
        receipts = await asyncio.gather(*uploads)
        took = time.perf_counter() - started
    print(
        f"\n3 concurrent 16 MP uploads: {took:.1f} s; longest event-loop stall {meter.worst:.3f} s; "
        f"a plain /imagine submitted meanwhile took {plain_s:.3f} s"
    )
    assert meter.worst <= 0.5
    # Queued while the uploads are still being worked on (it waited for all of them before: 10.6 s here).
    assert plain.job_id and plain_s < 3.0
    for r in receipts:
        request = (await service.show(actor(user=20), r.job_id)).request
        assert request.mode == Mode.IMG2IMG and request.width * request.height <= 1024 * 1024


async def test_uploads_past_the_bound_are_told_to_try_again_and_nothing_is_queued(tmp_path) -> None:
    h = Harness(tmp_path)
    work = ImageWork(workers=1, max_waiting=1)
    h.db = await open_database(h.settings)
    h.service = service = await bootstrap(
        h.settings, db=h.db, engine=h.engine, worker=False, rng=random.Random(1), images=work
    )
    blocker = threading.Event()
    try:
        busy = [asyncio.create_task(work.run(blocker.wait, 10)) for _ in range(2)]  # one runs, one waits
        await asyncio.sleep(0.05)
        small = io.BytesIO()
        Image.new("RGB", (96, 64), (1, 2, 3)).save(small, format="PNG")
        with pytest.raises(UserError) as err:
            await service.submit_imagine(actor(), ImagineOptions(prompt="x", init_image=small.getvalue()))
        assert err.value.code == "busy" and "try again" in str(err.value)
        async with h.db.session() as s:
            assert await Repositories(s).jobs.count_for_user(actor().user_id) == 0
        # A plain /imagine needs no image work: it is not held up.
        assert (await service.submit_imagine(actor(user=11), ImagineOptions(prompt="x"))).job_id
        blocker.set()
        await asyncio.gather(*busy)
        r = await service.submit_imagine(actor(), ImagineOptions(prompt="x", init_image=small.getvalue()))
        assert (await service.show(actor(), r.job_id)).request.mode == Mode.IMG2IMG
    finally:
        blocker.set()
        await h.close()
