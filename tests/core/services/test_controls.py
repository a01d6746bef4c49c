"""The result controls as use cases (the real service, SQLite, the fake engine): each button's job and
the request stored for it — variation seed and strength, the edited prompt, the outpaint canvas and
mask — with 🔁's permission rules, the guild's pixel limit, /history's kind and parent."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from core.controls.vary import STRONG, SUBTLE
from core.services import ImagineOptions, JobDone, UserError
from core.storage.repositories import Repositories
from core.testing.fake_engine import FakeEngine
from core.types import Mode
from tests.core.services.conftest import actor, wait_for

SIDE = 128  # the fake engine's images: 128×128, one solid colour each


@pytest.fixture
async def service(harness):
    harness.engine = FakeEngine(image_size=SIDE)
    return await harness.open()


async def run(service, who, receipt_coro) -> JobDone:
    events = service.events()
    receipt = await receipt_coro
    return await wait_for(events, lambda e: isinstance(e, JobDone) and e.job.id == receipt.job_id)


async def imagine(service, who=None, **options) -> JobDone:
    who = who or actor()
    opts = {"prompt": "a lighthouse", "steps": 2, "width": SIDE, "height": SIDE, "seed": 1000, **options}
    return await run(service, who, service.submit_imagine(who, ImagineOptions(**opts)))


async def stored(harness, job_id: int):
    async with harness.db.session() as s:
        repos = Repositories(s)
        job = await repos.jobs.get(job_id)
        return job, await repos.jobs.request(job)


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


async def test_vary_subtle_and_strong_keep_the_images_seed_and_add_a_variation_seed(harness, service) -> None:
    original = await imagine(service, count=2)
    a = actor(user=11)
    for strength, value in (("subtle", SUBTLE), ("strong", STRONG)):
        done = await run(service, a, service.vary(a, original.job.id, 1, strength))
        job, request = await stored(harness, done.job.id)
        assert (job.kind, job.parent_id, job.user_id) == ("vary", original.job.id, a.user_id)
        assert request.seed == original.job.seeds[1] == 1001  # image 2's own seed
        assert request.subseed_strength == value and request.subseed >= 0 and request.count == 2
        assert request.prompt == "a lighthouse"
    with pytest.raises(UserError) as err:
        await service.vary(a, original.job.id, 2, "subtle")
    assert err.value.code == "not_found" and "no image 3" in str(err.value)


async def test_remix_stores_the_edited_prompt_and_seed_through_the_imagine_checks(harness, service) -> None:
    original = await imagine(service, negative="fog")
    a = actor(user=12)
    form = await service.remix_form(a, original.job.id, 0)
    assert (form.prompt, form.negative, form.seed) == ("a lighthouse", "fog", 1000)
    done = await run(
        service,
        a,
        service.remix(a, original.job.id, 0, prompt="a (red:1.2) lighthouse", negative="", seed=77),
    )
    job, request = await stored(harness, done.job.id)
    assert (job.kind, job.parent_id) == ("remix", original.job.id)
    assert (request.prompt, request.negative_prompt, request.seed) == ("a (red:1.2) lighthouse", "", 77)
    assert request.subseed_strength == 0.0 and request.width == SIDE and request.steps == 2
    random_seed = await service.remix(a, original.job.id, 0, prompt="x", negative="", seed=-1)
    _, request = await stored(harness, random_seed.job_id)
    assert request.seed != -1
    await service.admin_banned_words(actor(manage_guild=True), add=["kraken"])
    for prompt, seed, code in (("a [kraken:ship:0.5]", 1, "banned_word"), ("(a:1.2.3)", 1, "prompt"),
                               ("", 1, "prompt"), ("ok", 2**32, "seed"), ("x" * 6001, 1, "limit.prompt")):  # fmt: skip
        with pytest.raises(UserError) as err:
            await service.remix(a, original.job.id, 0, prompt=prompt, negative="", seed=seed)
        assert err.value.code == code, prompt[:20]


async def test_zoom_out_stores_the_source_centred_on_a_canvas_and_a_mask_of_the_new_border(
    harness, service
) -> None:
    original = await imagine(service)
    source = pixels(original.images[0].png)
    done = await run(service, actor(), service.zoom_out(actor(), original.job.id, 0, 2.0))
    job, request = await stored(harness, done.job.id)
    assert (job.kind, job.parent_id) == ("zoom", original.job.id)
    assert request.mode == Mode.INPAINT and (request.width, request.height) == (SIDE, SIDE)
    assert request.denoising_strength == 0.8 and not request.enable_hr and request.seed != 1000
    canvas, mask = pixels(request.init_image), pixels(request.mask_image)
    assert canvas.shape == (SIDE, SIDE, 3) and mask.shape == (SIDE, SIDE)
    # The source, halved (a solid colour stays that colour), sits in the middle; the 8 px seam inside
    # it and everything outside it are repainted (white), the rest is kept (black).
    lo, hi = SIDE // 4, SIDE * 3 // 4
    assert (canvas[lo:hi, lo:hi] == source[0, 0]).all()
    expected = np.full((SIDE, SIDE), 255, np.uint8)
    expected[lo + 8 : hi - 8, lo + 8 : hi - 8] = 0
    assert (mask == expected).all()


async def test_pan_right_adds_half_the_image_on_the_right_within_the_guilds_pixel_limit(
    harness, service
) -> None:
    original = await imagine(service)
    done = await run(service, actor(), service.pan(actor(), original.job.id, 0, "right"))
    job, request = await stored(harness, done.job.id)
    assert job.kind == "pan" and (request.width, request.height) == (SIDE * 3 // 2, SIDE)
    mask = pixels(request.mask_image)
    assert (mask[:, : SIDE - 8] == 0).all() and (mask[:, SIDE - 8 :] == 255).all()
    # The guild allows fewer pixels than the panned canvas: canvas and source shrink together.
    await service.admin_set_limit(actor(manage_guild=True), "max_pixels", SIDE * SIDE)
    done = await run(service, actor(), service.pan(actor(), original.job.id, 0, "left"))
    _, request = await stored(harness, done.job.id)
    assert request.width * request.height <= SIDE * SIDE and request.width > request.height
    assert request.width % 8 == 0 and request.height % 8 == 0
    with pytest.raises(UserError):
        await service.pan(actor(), original.job.id, 0, "sideways")


async def test_reroll_button_pick_history_and_the_reroll_policy(harness, service) -> None:
    owner = actor(user=1)
    original = await imagine(service, owner, count=2)
    done = await run(service, owner, service.reroll_job(owner, original.job.id))
    job, request = await stored(harness, done.job.id)
    assert (job.kind, job.parent_id) == ("reroll", original.job.id) and request.seed != 1000
    view, image = await service.pick(owner, original.job.id, 1)
    assert image.seed == 1001 and view.moderation[0].action == "post"
    history, _ = await service.history(owner)
    assert [(j.kind, j.parent_id) for j in history[:2]] == [("reroll", original.job.id), ("imagine", None)]
    await service.admin_set_reroll_policy(actor(manage_guild=True), "owner")
    with pytest.raises(UserError) as err:
        await service.vary(actor(user=2), original.job.id, 0, "strong")
    assert err.value.code == "permission"
    with pytest.raises(UserError) as err:  # another guild cannot even see the job
        await service.zoom_out(actor(user=3, guild=2), original.job.id, 0, 1.5)
    assert err.value.code == "not_found"


async def test_controls_need_a_finished_job(harness, service) -> None:
    events = service.events()
    receipt = await service.submit_imagine(actor(), ImagineOptions(prompt="FAIL now", steps=2))
    await wait_for(events, lambda e: getattr(getattr(e, "job", None), "id", None) == receipt.job_id)
    with pytest.raises(UserError) as err:
        await service.vary(actor(), receipt.job_id, 0, "subtle")
    assert err.value.code == "not_done"


async def test_a_control_queued_before_a_restart_still_answers_its_parents_result(harness, service) -> None:
    original = await imagine(service)
    await service.record_result_messages(original.job.id, [5001])
    await harness.close()
    service = await harness.open(worker=False, start=False)  # a new process, no worker yet
    # The status message's id goes in with the job (as every submit's does).
    receipt = await service.zoom_out(actor(), original.job.id, 0, 1.5, status_message_id=5002)
    live = {view.id: reply_to for view, reply_to in await service.live_status_jobs()}
    assert live == {receipt.job_id: 5001}


async def test_control_sources_are_stored_once_by_content_and_each_control_stores_its_status_message(
    harness, service
) -> None:
    """Outpaint canvases and masks, and /img2img job:'s image, go to ``source_images`` like uploads: the
    same canvas twice (the same image zoomed twice, and 🔁 of that zoom) is one row; the status message
    each control was given is stored with its job."""
    from sqlalchemy import select

    from core.storage.models import JobInput, SourceImage

    original = await imagine(service)
    a = actor(user=13)
    ids = []
    for n, make in enumerate(
        (
            lambda sid: service.zoom_out(a, original.job.id, 0, 1.5, status_message_id=sid),
            lambda sid: service.zoom_out(a, original.job.id, 0, 1.5, status_message_id=sid),
            lambda sid: service.vary(a, original.job.id, 0, "subtle", status_message_id=sid),
            lambda sid: service.pan(a, original.job.id, 0, "up", status_message_id=sid),
            lambda sid: service.remix(
                a, original.job.id, 0, prompt="a tower", negative="", seed=3, status_message_id=sid
            ),
        )
    ):
        done = await run(service, a, make(7000 + n))
        ids.append(done.job.id)
        assert done.job.status_message_id == 7000 + n
    zoomed = ids[0]
    rerolled = await run(service, a, service.reroll_job(a, zoomed, status_message_id=7100))
    assert rerolled.job.status_message_id == 7100
    from_job = await run(
        service, a, service.submit_imagine(a, ImagineOptions("a harbour", source_job=zoomed))
    )
    async with harness.db.session() as s:
        inputs = {
            row.job_id: (row.init_image_id, row.mask_image_id)
            for row in (await s.scalars(select(JobInput))).all()
        }
        sources = {row.id: row.data for row in (await s.scalars(select(SourceImage))).all()}
    # Both zooms and the reroll share one canvas row and one mask row.
    assert inputs[ids[0]] == inputs[ids[1]] == inputs[rerolled.job.id]
    pan = ids[3]
    assert inputs[pan] != inputs[ids[0]] and None not in inputs[pan]
    # /img2img job: stores the zoom's result image as it is (a PNG the engine reads as sent).
    zoom_result = (await service.job_images(zoomed))[0].png
    assert sources[inputs[from_job.job.id][0]] == zoom_result and inputs[from_job.job.id][1] is None
    # Each content once: canvas+mask of the zooms, of the pan, and the zoom's result.
    assert len(sources) == len(set(sources.values())) == 5
