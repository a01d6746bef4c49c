"""A torch-free stand-in for the moderation classifier (``core.queue.worker.ImageScorer``), for bot and
service tests: it reads the score off the image's own "parameters" text, so a test asks for one in the
prompt, as :class:`core.testing.fake_engine.FakeEngine` takes ``FAIL`` and ``OOM``:

* ``NSFW`` in the infotext scores :data:`FLAGGED` (over any threshold up to 0.95),
* ``UNCHECKED`` gives None (the classifier could not check it),
* anything else scores :data:`CLEAN`.

:func:`core.bootstrap.build_scorer` picks it when ``CHANT_FAKE_CLASSIFIER=1``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

from PIL import Image

FLAGGED = 0.97
CLEAN = 0.02


class FakeClassifier:
    def __init__(self) -> None:
        self.calls: list[int] = []  # images per call (the worker scores a batch in one call)

    def scores(self, pngs: Sequence[bytes]) -> list[float | None]:
        self.calls.append(len(pngs))
        return [self._score(png) for png in pngs]

    @staticmethod
    def _score(png: bytes) -> float | None:
        text = Image.open(io.BytesIO(png)).info.get("parameters", "")
        if "UNCHECKED" in text:
            return None
        return FLAGGED if "NSFW" in text else CLEAN
