"""The worker scores every result image for moderation in its own thread, one classifier call per batch,
and stores the scores with the images: the real classifier (a tiny random-weight ViT, the architecture
of Falconsai/nsfw_image_detection) and a failing one."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import pytest

from core.bootstrap import build_scorer
from core.config import EngineSettings, ModerationSettings
from core.services import ImagineOptions, JobDone
from core.types import GenerationError
from tests.core.services.conftest import Harness, actor, wait_for


class Recording:
    """Wraps a scorer: which thread called it, with how many images."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.calls: list[tuple[int, str]] = []

    def scores(self, pngs):
        self.calls.append((len(pngs), threading.current_thread().name))
        return self.inner.scores(pngs)


class Broken:
    def scores(self, pngs):
        raise RuntimeError("CUDA error: an illegal memory access")


async def run_two(h: Harness, scorer) -> list[JobDone]:
    service = await h.open(start=False, scorer=scorer)
    events = service.events()
    for user in (1, 2):  # equal batch keys: one engine call, one classifier call
        await service.submit_imagine(actor(user=user), ImagineOptions(prompt=f"job {user}", steps=2, count=2))
    await service.start()
    return [await wait_for(events, lambda e: isinstance(e, JobDone)) for _ in range(2)]


@pytest.mark.slow  # transformers' import and a tiny ViT: ~20 s on a busy 2-core box
async def test_the_real_classifier_scores_a_batch_in_the_worker_thread(tmp_path: Path) -> None:
    from core.engine.classifier import ImageClassifier
    from tests.core.engine.test_classifier import build_tiny_vit

    folder = build_tiny_vit(tmp_path / "vit", {0: "normal", 1: "nsfw"})
    h = Harness(tmp_path)
    h.settings = dataclasses.replace(
        h.settings,
        moderation=ModerationSettings(classifier=str(folder), policy="spoiler", threshold=0.5),
        engine=EngineSettings(device="cpu"),
    )
    scorer = Recording(build_scorer(h.settings, env={}))
    try:
        jobs = await run_two(h, scorer)
    finally:
        await h.close()
    assert len(scorer.calls) == 1 and scorer.calls[0][0] == 4  # both jobs' images, one call
    assert scorer.calls[0][1] != threading.main_thread().name  # never on the event loop's thread
    reference = ImageClassifier.load(folder)
    for done in jobs:
        expected = [s.score for s in reference.score([i.png for i in done.images])]
        assert [m.score for m in done.job.moderation] == pytest.approx(expected, abs=1e-6)
        assert [m.action for m in done.job.moderation] == [
            "spoiler" if s >= 0.5 else "post" for s in expected
        ]


async def test_a_failing_classifier_leaves_the_images_not_checked_and_the_jobs_done(
    tmp_path: Path, caplog
) -> None:
    h = Harness(tmp_path)
    try:
        jobs = await run_two(h, Broken())
    finally:
        await h.close()
    for done in jobs:
        assert done.job.state == "done" and [m.score for m in done.job.moderation] == [None, None]
        assert [m.action for m in done.job.moderation] == ["post", "post"]  # policy off: posted anyway
    assert "stored as not checked" in caplog.text


def test_a_classifier_folder_that_is_not_there_stops_chant_at_start(tmp_path: Path) -> None:
    settings = dataclasses.replace(
        Harness(tmp_path).settings, moderation=ModerationSettings(classifier=str(tmp_path / "nope"))
    )
    with pytest.raises(GenerationError, match=r"moderation\.classifier: the folder .* does not exist"):
        build_scorer(settings, env={})
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    settings = dataclasses.replace(settings, moderation=ModerationSettings(classifier=str(tmp_path / "half")))
    with pytest.raises(GenerationError, match=r"has no preprocessor_config\.json, model\.safetensors"):
        build_scorer(settings, env={})
    assert build_scorer(dataclasses.replace(settings, moderation=ModerationSettings()), env={}) is None
