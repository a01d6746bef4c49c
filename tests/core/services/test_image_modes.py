"""img2img / inpaint / hires options, uploaded-image checks, LoRA names and guild limits in the service."""

from __future__ import annotations

import dataclasses
import io

import pytest
from PIL import Image

from core.services import ImagineOptions, JobDone, UserError
from core.services.images import fit_size
from core.storage.repositories import Repositories
from core.types import Mode
from tests.core.services.conftest import Harness, actor, wait_for


def png(size=(96, 64), mode="RGB", color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


async def stored_request(harness, job_id: int):
    async with harness.db.session() as s:
        repos = Repositories(s)
        return await repos.jobs.request(await repos.jobs.get(job_id))


async def test_img2img_stores_the_source_as_sent_and_reroll_keeps_it(harness) -> None:
    service = await harness.open()
    events = service.events()
    jpeg = io.BytesIO()
    Image.new("RGB", (96, 64), (10, 200, 10)).save(jpeg, format="JPEG")
    r = await service.submit_imagine(
        actor(),
        ImagineOptions(prompt="a fox", steps=4, init_image=jpeg.getvalue(), strength=0.4, resize_mode=1),
    )
    req = await stored_request(harness, r.job_id)
    assert req.mode == Mode.IMG2IMG and req.denoising_strength == 0.4 and req.resize_mode == 1
    assert (req.width, req.height) == (96, 64)  # no size given: the source's
    assert req.init_image == jpeg.getvalue() and req.mask_image is None  # the JPEG, not a PNG of it
    await wait_for(events, lambda e: isinstance(e, JobDone) and e.job.id == r.job_id)
    await service.record_result_messages(r.job_id, [7001])
    rr = await service.reroll(actor(user=11), 7001)
    again = await stored_request(harness, rr.job_id)
    assert again.mode == Mode.IMG2IMG and again.init_image == req.init_image and again.seed != req.seed


async def test_inpaint_mask_of_another_size_is_resized_and_transparency_is_a_mask(harness) -> None:
    service = await harness.open(start=False)
    mask = png((48, 32), "L", 255)
    r = await service.submit_imagine(
        actor(),
        ImagineOptions(
            prompt="x",
            init_image=png(),
            mask_image=mask,
            mask_blur=8,
            masked_only=True,
            fill=2,
            width=64,
            height=64,
        ),
    )
    req = await stored_request(harness, r.job_id)
    assert (
        req.mode == Mode.INPAINT and req.mask_blur == 8 and req.inpaint_full_res and req.inpainting_fill == 2
    )
    assert Image.open(io.BytesIO(req.mask_image)).size == (96, 64)  # A1111 resizes a mask to the source
    assert (req.width, req.height) == (64, 64)  # an explicit size wins
    # A source with transparent pixels and no mask: the transparent part is repainted.
    rgba = Image.new("RGBA", (64, 64), (0, 0, 255, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 32, 64))
    buf = io.BytesIO()
    rgba.save(buf, format="PNG")
    r = await service.submit_imagine(actor(user=12), ImagineOptions(prompt="x", init_image=buf.getvalue()))
    req = await stored_request(harness, r.job_id)
    kept = Image.open(io.BytesIO(req.init_image))
    assert req.mode == Mode.INPAINT and req.mask_image is None  # the engine repaints what is transparent
    assert kept.mode == "RGBA" and kept.getpixel((5, 5))[3] == 0 and kept.getpixel((50, 5))[3] == 255
    # An opaque RGBA upload is plain img2img.
    buf = io.BytesIO()
    Image.new("RGBA", (64, 64), (0, 0, 255, 255)).save(buf, format="PNG")
    r = await service.submit_imagine(actor(user=13), ImagineOptions(prompt="x", init_image=buf.getvalue()))
    assert (await stored_request(harness, r.job_id)).mode == Mode.IMG2IMG


@pytest.mark.parametrize(
    ("options", "code", "words"),
    [
        ({"init_image": b"definitely not an image"}, "image.invalid", "not an image"),
        ({"init_image": png()[:60]}, "image.invalid", "damaged"),
        ({"init_image": png((300, 300))}, "image.too_large", "megapixels"),
        ({"init_image": png(), "strength": 1.5}, "invalid", "between 0 and 1"),
        ({"init_image": png(), "strength": -0.1}, "invalid", "between 0 and 1"),
        ({"mask_image": png()}, "invalid", "source image"),
        ({"strength": 0.5}, "invalid", "only apply with a source image"),
        ({"init_image": png(), "mask_image": png(color=(0, 0, 0))}, "image.mask", "all black"),
        ({"init_image": png(), "hires": True}, "invalid", "text-to-image"),
        ({"hires_scale": 2.0, "hires": False}, "invalid", "only apply with hires on"),
        (
            {"hires": True, "hires_scale": 3.0, "width": 512, "height": 512},
            "limit.pixels",
            "Hires fix would make",
        ),
        ({"hires": True, "upscaler": "ESRGAN"}, "invalid", "upscaler"),
        ({"hires": True, "hires_strength": 0.0}, "invalid", "above 0"),
        ({"hires": True, "hires_steps": 99}, "limit.steps", "hires_steps"),
    ],
)
async def test_bad_image_and_mode_options_are_clear_errors(tmp_path, options, code, words) -> None:
    h = Harness(tmp_path)
    h.settings = dataclasses.replace(
        h.settings, engine=dataclasses.replace(h.settings.engine, max_input_megapixels=0.04)
    )
    try:
        service = await h.open(start=False)
        with pytest.raises(UserError) as err:
            await service.submit_imagine(actor(), ImagineOptions(prompt="x", **options))
        assert err.value.code == code and words in str(err.value), str(err.value)
    finally:
        await h.close()


async def test_hires_options_are_stored(harness) -> None:
    service = await harness.open(start=False)
    r = await service.submit_imagine(
        actor(),
        ImagineOptions(prompt="x", width=256, height=256, hires_scale=2.0, hires_steps=5, upscaler="Lanczos"),
    )
    req = await stored_request(harness, r.job_id)
    assert (
        req.enable_hr
        and req.hr_scale == 2.0
        and req.hr_second_pass_steps == 5
        and req.hr_upscaler == "Lanczos"
    )
    assert req.mode == Mode.TXT2IMG


async def test_an_earlier_job_is_a_source_for_those_who_can_see_it(harness) -> None:
    service = await harness.open()
    events = service.events()
    first = await service.submit_imagine(actor(), ImagineOptions(prompt="a fox", steps=3))
    done = await wait_for(events, lambda e: isinstance(e, JobDone) and e.job.id == first.job_id)
    r = await service.submit_imagine(actor(user=13), ImagineOptions(prompt="a cat", source_job=first.job_id))
    req = await stored_request(harness, r.job_id)
    expected = Image.open(io.BytesIO(done.images[0].png)).convert("RGB").tobytes()
    assert req.mode == Mode.IMG2IMG
    assert Image.open(io.BytesIO(req.init_image)).convert("RGB").tobytes() == expected
    with pytest.raises(UserError) as err:  # another guild's job is not visible
        await service.submit_imagine(
            actor(user=14, guild=2), ImagineOptions(prompt="x", source_job=first.job_id)
        )
    assert err.value.code == "not_found"
    with pytest.raises(UserError) as err:
        await service.submit_imagine(
            actor(), ImagineOptions(prompt="x", source_job=first.job_id, init_image=png())
        )
    assert "not both" in str(err.value)


async def test_unknown_lora_is_refused_before_queueing_with_the_closest_names(tmp_path) -> None:
    loras = tmp_path / "Lora"
    (loras / "styles").mkdir(parents=True)
    for name in ("detail_tweaker", "styles/watercolor", "add_brightness"):
        (loras / f"{name}.safetensors").write_bytes(b"x")
    h = Harness(tmp_path)
    h.settings = dataclasses.replace(
        h.settings, engine=dataclasses.replace(h.settings.engine, lora_dirs=(str(loras),))
    )
    try:
        service = await h.open(start=False)
        assert service.lora_names() == ["add_brightness", "detail_tweaker", "watercolor"]
        with pytest.raises(UserError) as err:
            await service.submit_imagine(actor(), ImagineOptions(prompt="a fox <lora:detail_twaker:0.8>"))
        assert err.value.code == "lora" and "closest: detail_tweaker" in str(err.value)
        with pytest.raises(UserError) as err:
            await service.submit_imagine(actor(), ImagineOptions(prompt="x <lora:zzzzqqq:1>"))
        assert "'zzzzqqq'" in str(err.value) and "/loras" in str(err.value)
        r = await service.submit_imagine(actor(), ImagineOptions(prompt="a fox <lora:watercolor:0.5>"))
        assert r.job_id > 0
    finally:
        await h.close()


@pytest.mark.parametrize(
    ("prompt", "why"),
    [
        ("a fox <lora:../../etc/passwd:1>", "leaves the LoRA folder"),
        ("a fox <lyco:inkwash:1>", "unknown LoRA 'inkwash'"),
        ("a fox <lora:" + "x" * 3000 + ":1>", "too long for a file name"),
        ("a fox <hypernet:../../etc/passwd:1>", "leaves the hypernetwork folder"),
        ("a fox <hypernet:anime:0.5>", "unknown hypernetwork 'anime'"),
        ("a fox <lora:detail:many>", "is not a number"),
    ],
)
@pytest.mark.parametrize("installed", [False, True])
async def test_bad_extra_network_tags_are_refused_before_queueing_or_charging(
    tmp_path, prompt, why, installed
) -> None:
    # A fresh install has no models/Lora: the names are checked all the same.
    loras, hns = tmp_path / "Lora", tmp_path / "hypernetworks"
    if installed:
        loras.mkdir()
        hns.mkdir()
        (loras / "ink.safetensors").write_bytes(b"x")
        (hns / "anime_hn.pt").write_bytes(b"x")
    h = Harness(tmp_path)
    h.settings = dataclasses.replace(
        h.settings,
        engine=dataclasses.replace(h.settings.engine, lora_dirs=(str(loras),), hypernetwork_dirs=(str(hns),)),
    )
    try:
        service = await h.open(start=False)
        with pytest.raises(UserError) as err:
            await service.submit_imagine(actor(), ImagineOptions(prompt=prompt))
        assert why in str(err.value) and str(err.value).startswith("Your prompt: ")
        async with h.db.session() as s:
            assert await Repositories(s).jobs.count_for_user(actor().user_id) == 0  # nothing queued
        assert (await service.quota_status(actor())).used_images == 0  # nothing charged
    finally:
        await h.close()


async def test_guild_limits_follow_admin_changes(harness) -> None:
    service = await harness.open(start=False)
    before = await service.guild_limits(actor())
    assert before.max_pixels == 1024 * 1024 and before.max_steps == 50
    await service.admin_set_limit(actor(user=1, manage_guild=True), "max_pixels", 512 * 512)
    assert (await service.guild_limits(actor())).max_pixels == 512 * 512
    assert (await service.guild_limits(actor(guild=2))).max_pixels == 1024 * 1024


def test_upscaler_names_match_the_engine() -> None:
    from core.engine.image_modes import upscaler_names
    from core.ranges import UPSCALERS

    assert list(UPSCALERS) == upscaler_names()


async def test_hires_accepts_the_installed_upscaler_models_and_names_the_unknown_one(tmp_path) -> None:
    folder = tmp_path / "ESRGAN"
    folder.mkdir()
    (folder / "RealESRGAN_x4plus.safetensors").write_bytes(b"{}")  # listed by name; loaded by the worker
    (folder / "4x-UltraSharp.safetensors").write_bytes(b"{}")
    h = Harness(tmp_path)
    h.settings = dataclasses.replace(
        h.settings, postprocess=dataclasses.replace(h.settings.postprocess, upscaler_dirs=(str(folder),))
    )
    try:
        service = await h.open(start=False)
        assert service.upscaler_names() == ["4x-UltraSharp", "R-ESRGAN 4x+", "Lanczos", "Nearest"]
        assert service.upscaler_names(hires=True)[-2:] == ["4x-UltraSharp", "R-ESRGAN 4x+"]
        for name in ("R-ESRGAN 4x+", "4x-UltraSharp", "Lanczos"):
            await service.submit_imagine(actor(), ImagineOptions(prompt="x", hires=True, upscaler=name))
        with pytest.raises(UserError) as err:
            await service.submit_imagine(
                actor(), ImagineOptions(prompt="x", hires=True, upscaler="4x-Foolhardy")
            )
        assert "'4x-Foolhardy'" in str(err.value) and "R-ESRGAN 4x+" in str(err.value)
        assert "Latent" in str(err.value)
    finally:
        await h.close()


def test_hires_and_img2img_are_estimated_by_the_work_they_do() -> None:
    from core.cost import job_cost
    from core.types import GenerationRequest

    plain = GenerationRequest(prompt="x", width=512, height=512, steps=20)
    assert job_cost(
        plain.replace(enable_hr=True, hr_scale=2.0, hr_denoising_strength=0.5)
    ) == pytest.approx(job_cost(plain) * (1 + 4 * 0.5))
    img2img = plain.replace(mode=Mode.IMG2IMG, init_image=b"x", denoising_strength=0.25)
    assert job_cost(img2img) == pytest.approx(job_cost(plain) / 4)


def test_fit_size_keeps_the_aspect_within_the_limit() -> None:
    assert fit_size(96, 64, 1024 * 1024) == (96, 64)
    w, h = fit_size(4000, 3000, 1024 * 1024)
    assert w * h <= 1024 * 1024 and w % 8 == 0 and h % 8 == 0 and abs(w / h - 4 / 3) < 0.02
    assert fit_size(20, 20, 1024 * 1024) == (64, 64)
    assert fit_size(48, 32, 1024 * 1024) == (96, 64)


async def test_live_status_jobs_lists_waiting_jobs_with_status_messages_and_reply_targets(harness) -> None:
    service = await harness.open()
    events = service.events()
    first = await service.submit_imagine(actor(), ImagineOptions(prompt="a fox", steps=3))
    await wait_for(events, lambda e: isinstance(e, JobDone) and e.job.id == first.job_id)
    await service.record_result_messages(first.job_id, [9001])
    await service.stop()  # nothing runs from here: the next jobs stay queued
    await harness.db.dispose()
    harness.service = None
    service = await harness.open(start=False)
    plain = await service.submit_imagine(
        actor(user=21), ImagineOptions(prompt="b", steps=3), status_message_id=8001
    )
    var = await service.variation(actor(user=22), 9001, status_message_id=8002)
    silent = await service.submit_imagine(actor(user=23), ImagineOptions(prompt="c", steps=3))
    live = await service.live_status_jobs()
    assert [(j.id, j.status_message_id, reply) for j, reply in live] == [
        (plain.job_id, 8001, None),
        (var.job_id, 8002, 9001),
    ]
    assert silent.job_id not in [j.id for j, _ in live]  # no status message: nothing to edit


async def test_presets_carry_hires_for_text_and_strength_for_image_sources(harness) -> None:
    service = await harness.open(start=False)
    a = actor()
    await service.save_preset(
        a,
        "big",
        ImagineOptions(prompt="", width=256, height=256, hires_scale=2.0, upscaler="Lanczos", strength=0.3),
    )
    r = await service.submit_imagine(a, ImagineOptions(prompt="a fox", preset="big", steps=2))
    req = await stored_request(harness, r.job_id)
    assert req.enable_hr and req.hr_scale == 2.0 and req.hr_upscaler == "Lanczos" and req.mode == Mode.TXT2IMG
    # Saved from the last job: its hires settings come along.
    await service.save_preset(a, "again", None, from_last_job=True)
    (again,) = [p for p in await service.list_presets(a) if p.name == "again"]
    assert (
        again.options.hires is True
        and again.options.hires_scale == 2.0
        and again.options.upscaler == "Lanczos"
    )
    # With a source image the preset's hires fix is left out and its strength used.
    r3 = await service.submit_imagine(a, ImagineOptions(prompt="x", preset="big", init_image=png()))
    req3 = await stored_request(harness, r3.job_id)
    assert req3.mode == Mode.IMG2IMG and not req3.enable_hr and req3.denoising_strength == 0.3
