"""Models in the service: no usable model refuses a job privately before anything is stored or charged
(and the operator's log says why); per-model defaults fill what the user leaves out, in the order
explicit option > preset > model default > chant's default."""

from __future__ import annotations

import dataclasses
import logging

import pytest
from sqlalchemy import func, select

from core.bootstrap import bootstrap, open_database
from core.config import ModelSettings
from core.services import ImagineOptions, UserError, submit
from core.services.types import JobDone
from core.storage.models import Job, UsageEntry
from core.testing.fake_engine import FakeEngine
from tests.core.services.conftest import Harness, actor, wait_for

PONY = ModelSettings(
    source="org/pony",
    kind="sdxl",
    size="832x1216",
    steps=25,
    cfg=6.5,
    cfg_rescale=0.7,
    sampler="Euler",
    schedule="Karras",
    clip_skip=2,
    negative="lowres",
    prompt_prefix="score_9",
    prompt_suffix="detailed",
)


async def _stored(harness: Harness) -> tuple[int, int]:
    """(jobs, usage entries) in the database."""
    async with harness.db.session() as s:
        jobs = await s.scalar(select(func.count()).select_from(Job))
        usage = await s.scalar(select(func.count()).select_from(UsageEntry))
    return int(jobs or 0), int(usage or 0)


async def test_no_model_refuses_before_anything_is_queued_or_charged(tmp_path, caplog) -> None:
    harness = Harness(tmp_path)
    harness.settings = dataclasses.replace(
        harness.settings,
        engine=dataclasses.replace(harness.settings.engine, model_dirs=(str(tmp_path / "models"),)),
    )
    try:
        service = await harness.open(engine=FakeEngine(models=()))
        caplog.set_level(logging.WARNING)
        with pytest.raises(UserError) as refused:
            await service.submit_imagine(actor(), ImagineOptions(prompt="a cat"))
        assert refused.value.code == "no_model"
        assert str(refused.value) == "This bot has no model yet — ask a server admin."
        assert await _stored(harness) == (0, 0)
        quota = await service.quota_status(actor())
        assert quota.used_images == 0 and quota.used_gpu_seconds == 0
        (line,) = [r.getMessage() for r in caplog.records if "refused a job" in r.getMessage()]
        assert "user 10 (guild 1)" in line and str(tmp_path / "models") in line and "[engine.models.NAME]" in line
    finally:
        await harness.close()


async def test_a_bot_without_a_worker_lists_the_model_folders_and_refuses_when_empty(tmp_path) -> None:
    harness = Harness(tmp_path)
    folder = tmp_path / "models"
    harness.settings = dataclasses.replace(
        harness.settings, engine=dataclasses.replace(harness.settings.engine, model_dirs=(str(folder),))
    )
    try:
        harness.db = await open_database(harness.settings)
        harness.service = service = await bootstrap(harness.settings, db=harness.db, worker=False)  # no engine
        assert service.model_names() == []
        with pytest.raises(UserError, match="no model yet"):
            await service.submit_imagine(actor(), ImagineOptions(prompt="a cat"))
        (folder / "sdxl").mkdir(parents=True)
        (folder / "sdxl" / "pony.safetensors").write_bytes(b"x")  # dropped in: offered at once
        assert service.model_names() == ["sdxl/pony"]
        r = await service.submit_imagine(actor(), ImagineOptions(prompt="a cat"))
        assert (await service.show(actor(), r.job_id)).request.model == "sdxl/pony"
    finally:
        await harness.close()


async def test_a_bot_without_a_worker_names_the_workers_configured_models(tmp_path, caplog) -> None:
    harness = Harness(tmp_path)
    harness.settings = dataclasses.replace(
        harness.settings,
        engine=dataclasses.replace(
            harness.settings.engine,
            model_dirs=(str(tmp_path / "models"),),
            models={"xl": ModelSettings(source="/on/the/gpu/box/xl.safetensors", kind="sdxl")},
        ),
    )
    try:
        harness.db = await open_database(harness.settings)
        harness.service = service = await bootstrap(harness.settings, db=harness.db, worker=False)
        assert service.model_names() == ["xl"]  # not on this machine: a worker's file
        req = (await service.show(actor(), (await service.submit_imagine(actor(), ImagineOptions(prompt="x"))).job_id)).request
        assert (req.model, req.width, req.height) == ("xl", 1024, 1024)
    finally:
        await harness.close()


async def test_a_reroll_after_the_models_are_gone_is_refused_too(harness) -> None:
    service = await harness.open()
    events = service.events()
    r = await service.submit_imagine(actor(), ImagineOptions(prompt="a cat"))
    await wait_for(events, lambda e: isinstance(e, JobDone) and e.job.id == r.job_id)
    await service.record_result_messages(r.job_id, [555])
    jobs_before = await _stored(harness)
    harness.engine._models = []  # the operator removed every model
    with pytest.raises(UserError, match="no model yet"):
        await service.reroll(actor(), 555)
    assert await _stored(harness) == jobs_before


async def test_every_control_that_makes_a_job_is_refused_once_the_models_are_gone(tmp_path, caplog) -> None:
    """🔁/🔀 as reactions and every result button that makes a job (🔁, Vary, Remix, Zoom Out, Pan) are
    refused with the no-model message before anything is stored or charged; U1–U4 (no new job) work."""
    harness = Harness(tmp_path)
    harness.engine = FakeEngine(image_size=64)
    try:
        service = await harness.open()
        events = service.events()
        a = actor()
        r = await service.submit_imagine(a, ImagineOptions(prompt="a cat", count=2, width=64, height=64))
        await wait_for(events, lambda e: isinstance(e, JobDone) and e.job.id == r.job_id)
        await service.record_result_messages(r.job_id, [555])
        stored, used = await _stored(harness), (await service.quota_status(a)).used_images
        harness.engine._models = []  # the operator removed every model
        caplog.set_level(logging.WARNING)
        controls = {
            "🔁": service.reroll(a, 555),
            "🔀": service.variation(a, 555),
            "🔁 button": service.reroll_job(a, r.job_id),
            "vary subtle": service.vary(a, r.job_id, 0, "subtle"),
            "V2": service.vary(a, r.job_id, 1, "strong"),
            "remix": service.remix(a, r.job_id, 0, prompt="a dog", negative="", seed=None),
            "zoom": service.zoom_out(a, r.job_id, 0, 2.0),
            "pan": service.pan(a, r.job_id, 1, "left"),
        }
        for name, control in controls.items():
            with pytest.raises(UserError) as refused:
                await control
            assert (refused.value.code, str(refused.value)) == ("no_model", submit.NO_MODEL), name
        assert await _stored(harness) == stored
        assert (await service.quota_status(a)).used_images == used
        refusals = [rec for rec in caplog.records if "refused a job" in rec.getMessage()]
        assert len(refusals) == len(controls) and all(rec.levelno == logging.WARNING for rec in refusals)
        _, image = await service.pick(a, r.job_id, 1)  # U2 posts a stored image: no model needed
        assert image.png
    finally:
        await harness.close()


async def test_the_controls_keep_the_models_defaults_of_the_job_they_start_from(tmp_path) -> None:
    """A job from a control starts from the stored request, which already carries the model's defaults:
    nothing is applied twice (the prefix/suffix wrap the prompt once) and nothing is lost."""
    harness = Harness(tmp_path)
    _with_models(harness, default_model="pony")
    harness.engine = FakeEngine(models=("fake-sd15", "fake-sdxl", "pony"), image_size=64)
    try:
        service = await harness.open()
        events = service.events()
        a = actor()
        r = await service.submit_imagine(a, ImagineOptions(prompt="a cat", width=64, height=64))
        await wait_for(events, lambda e: isinstance(e, JobDone) and e.job.id == r.job_id)
        form = await service.remix_form(a, r.job_id, 0)
        assert (form.prompt, form.negative) == ("score_9, a cat, detailed", "lowres")  # as it ran
        for receipt in (
            await service.vary(a, r.job_id, 0, "strong"),
            await service.remix(a, r.job_id, 0, prompt=form.prompt.replace("cat", "dog"), negative=form.negative,
                                seed=None),
            await service.reroll_job(a, r.job_id),
            await service.zoom_out(a, r.job_id, 0, 2.0),
        ):  # fmt: skip
            req = (await wait_for(events, lambda e, j=receipt.job_id: isinstance(e, JobDone) and e.job.id == j)).job.request
            assert req.prompt in ("score_9, a cat, detailed", "score_9, a dog, detailed")
            assert (req.model, req.steps, req.cfg_scale, req.cfg_rescale, req.sampler) == ("pony", 25, 6.5, 0.7, "Euler")
            assert (req.schedule_type, req.clip_skip, req.negative_prompt) == ("Karras", 2, "lowres")
    finally:
        await harness.close()


def _with_models(harness: Harness, **changes) -> None:
    engine = dataclasses.replace(
        harness.settings.engine,
        models={"fake-sdxl": ModelSettings(source="org/xl", kind="sdxl"), "pony": PONY},
        **changes,
    )
    harness.settings = dataclasses.replace(harness.settings, engine=engine)
    harness.engine = FakeEngine(models=("fake-sd15", "fake-sdxl", "pony"))


async def _request(service, **options):
    r = await service.submit_imagine(actor(), ImagineOptions(**{"prompt": "a cat", **options}))
    return (await service.show(actor(), r.job_id)).request


async def test_an_sdxl_model_without_a_size_makes_1024_square_and_explicit_options_win(tmp_path) -> None:
    harness = Harness(tmp_path)
    _with_models(harness)
    try:
        service = await harness.open(start=False)
        xl = await _request(service, model="fake-sdxl")
        assert (xl.width, xl.height) == (1024, 1024)
        assert (xl.steps, xl.cfg_scale, xl.sampler, xl.prompt) == (20, 7.0, "Euler a", "a cat")
        sd = await _request(service, model="fake-sd15")
        assert (sd.width, sd.height) == (512, 512)
        given = await _request(service, model="fake-sdxl", width=768, height=1152)
        assert (given.width, given.height) == (768, 1152)
    finally:
        await harness.close()


async def test_a_models_table_fills_every_left_out_option_and_is_written_in_the_infotext(tmp_path) -> None:
    harness = Harness(tmp_path)
    _with_models(harness, default_model="pony")
    try:
        service = await harness.open()
        events = service.events()
        r = await service.submit_imagine(actor(), ImagineOptions(prompt="a cat"))  # no model: the default
        done = await wait_for(events, lambda e: isinstance(e, JobDone) and e.job.id == r.job_id)
        req = done.job.request
        assert req.model == "pony"
        assert (req.width, req.height, req.steps, req.cfg_scale) == (832, 1216, 25, 6.5)
        assert (req.sampler, req.schedule_type, req.clip_skip, req.cfg_rescale) == ("Euler", "Karras", 2, 0.7)
        assert (req.prompt, req.negative_prompt) == ("score_9, a cat, detailed", "lowres")
        info = done.images[0].infotext
        assert info.startswith("score_9, a cat, detailed\nNegative prompt: lowres\nSteps: 25, Sampler: Euler")
        assert "CFG scale: 6.5" in info and "Size: 832x1216" in info and "Model: pony" in info
        # What the user gives wins, one option at a time.
        mine = await _request(
            service, steps=10, cfg=4.0, cfg_rescale=0.0, negative="", sampler="DDIM", width=640, height=640
        )
        assert (mine.steps, mine.cfg_scale, mine.negative_prompt, mine.sampler) == (10, 4.0, "", "DDIM")
        assert mine.cfg_rescale == 0.0  # an explicit 0 (off) wins over the model's 0.7
        assert (mine.width, mine.height, mine.clip_skip) == (640, 640, 2)
    finally:
        await harness.close()


async def test_a_preset_wins_over_the_models_defaults_and_an_explicit_option_over_the_preset(tmp_path) -> None:
    harness = Harness(tmp_path)
    _with_models(harness, default_model="pony")
    try:
        service = await harness.open(start=False)
        a = actor()
        await service.save_preset(
            a, "quick", ImagineOptions(prompt="", steps=12, width=768, height=768, negative="blurry")
        )
        req = await _request(service, preset="quick")
        assert (req.steps, req.width, req.height, req.negative_prompt) == (12, 768, 768, "blurry")
        assert (req.cfg_scale, req.sampler) == (6.5, "Euler")  # the preset sets neither: the model's
        req = await _request(service, preset="quick", steps=30)
        assert req.steps == 30
        # A preset that picks a model gets that model's defaults.
        await service.save_preset(a, "xl", ImagineOptions(prompt="", model="fake-sdxl"))
        req = await _request(service, preset="xl")
        assert (req.model, req.width, req.height, req.steps, req.prompt) == ("fake-sdxl", 1024, 1024, 20, "a cat")
    finally:
        await harness.close()


async def test_a_default_model_that_is_gone_is_refused_and_named(tmp_path, caplog) -> None:
    harness = Harness(tmp_path)
    harness.settings = dataclasses.replace(
        harness.settings, engine=dataclasses.replace(harness.settings.engine, default_model="deleted")
    )
    try:
        service = await harness.open(start=False)
        caplog.set_level(logging.WARNING)
        with pytest.raises(UserError, match="This bot's default model 'deleted' is not available"):
            await service.submit_imagine(actor(), ImagineOptions(prompt="a cat"))
        assert await _stored(harness) == (0, 0)
        assert any("'deleted' is not available" in r.getMessage() for r in caplog.records)
        # A model the user names still works.
        assert (await _request(service, model="fake-sd15")).model == "fake-sd15"
    finally:
        await harness.close()
