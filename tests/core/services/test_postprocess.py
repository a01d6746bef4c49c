"""Upscaler models, face restoration and the detailer at submit (issue 15): the server's models by name,
refused before queueing and charging when the server lacks them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from core.cost import job_cost
from core.services import ImagineOptions, JobDone, UserError
from core.types import GenerationRequest
from tests.core.services.conftest import Harness, actor, wait_for


def _with_post(h: Harness, **changes) -> None:
    h.settings = dataclasses.replace(
        h.settings, postprocess=dataclasses.replace(h.settings.postprocess, **changes)
    )


def _models(root: Path) -> dict:
    (root / "GFPGAN").mkdir(parents=True)
    (root / "GFPGAN" / "GFPGANv1.4.safetensors").write_bytes(b"{}")  # listed by name; loaded by the worker
    (root / "adetailer").mkdir()
    (root / "adetailer" / "face_detection_yunet_2023mar.onnx").write_bytes(b"x")
    return {"face_restorer_dirs": (str(root / "GFPGAN"),), "detector_dirs": (str(root / "adetailer"),)}


async def test_face_restore_and_detailer_options_use_the_servers_models(tmp_path) -> None:
    h = Harness(tmp_path)
    _with_post(h, **_models(tmp_path / "models"))
    try:
        service = await h.open(start=False)
        receipt = await service.submit_imagine(
            actor(), ImagineOptions(prompt="x", face_restore=True, detailer=True)
        )
        job = await service.show(actor(), receipt.job_id)
        assert job.request.face_restoration == "GFPGAN"
        assert job.request.detailer == "face_detection_yunet_2023mar"
        plain = await service.submit_imagine(actor(), ImagineOptions(prompt="x", face_restore=False))
        assert (await service.show(actor(), plain.job_id)).request.face_restoration == ""
    finally:
        await h.close()


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"face_restore": True}, "has no face restoration model models installed"),
        ({"detailer": True}, "has no detector models installed"),
    ],
)
async def test_missing_models_are_refused_privately_before_anything_is_charged(
    tmp_path, options, words
) -> None:
    h = Harness(tmp_path)
    _with_post(h, face_restorer_dirs=(str(tmp_path / "none"),), detector_dirs=(str(tmp_path / "none"),))
    try:
        service = await h.open(start=False)
        with pytest.raises(UserError) as err:
            await service.submit_imagine(actor(), ImagineOptions(prompt="x", **options))
        assert err.value.code == "postprocess" and words in str(err.value), str(err.value)
        assert (await service.quota_status(actor())).used_images == 0  # nothing charged
        assert await service.history(actor()) == ([], 0)  # nothing stored
    finally:
        await h.close()


def test_the_detailer_costs_one_inpaint_pass_per_image() -> None:
    plain = GenerationRequest(prompt="x", width=512, height=512, steps=20, count=2)
    detailed = plain.replace(detailer="face", detailer_strength=0.4)
    # 0.4 × 20 = 8 more steps per image at the image's size.
    assert job_cost(detailed) == pytest.approx(job_cost(plain) * (20 + 8) / 20)
    assert job_cost(plain.replace(face_restoration="GFPGAN")) == job_cost(plain)


async def test_a_guild_can_turn_the_detailer_on_by_default(tmp_path) -> None:
    h = Harness(tmp_path)
    _with_post(h, **_models(tmp_path / "models"))
    admin = actor(user=1, manage_guild=True)
    try:
        service = await h.open(start=False)
        await service.admin_set_detailer_default(admin, True)
        on = await service.submit_imagine(actor(), ImagineOptions(prompt="x"))
        assert (await service.show(actor(), on.job_id)).request.detailer == "face_detection_yunet_2023mar"
        off = await service.submit_imagine(actor(), ImagineOptions(prompt="x", detailer=False))
        assert (await service.show(actor(), off.job_id)).request.detailer == ""  # the option still decides
        elsewhere = await service.submit_imagine(actor(guild=2), ImagineOptions(prompt="x"))
        assert (await service.show(actor(guild=2), elsewhere.job_id)).request.detailer == ""
        await service.admin_set_detailer_default(admin, False)
        again = await service.submit_imagine(actor(), ImagineOptions(prompt="x"))
        assert (await service.show(actor(), again.job_id)).request.detailer == ""
    finally:
        await h.close()


async def test_the_detailer_default_needs_the_detector(tmp_path) -> None:
    h = Harness(tmp_path)
    _with_post(h, detector_dirs=(str(tmp_path / "none"),))
    try:
        service = await h.open(start=False)
        with pytest.raises(UserError, match="has no detector models installed"):
            await service.admin_set_detailer_default(actor(user=1, manage_guild=True), True)
    finally:
        await h.close()


async def test_an_upscale_job_is_charged_by_its_cost_and_vary_or_reroll_of_it_are_refused(tmp_path) -> None:
    import io

    from PIL import Image

    folder = tmp_path / "ESRGAN"
    folder.mkdir()
    (folder / "RealESRGAN_x4plus.safetensors").write_bytes(b"{}")
    h = Harness(tmp_path)
    _with_post(h, upscaler_dirs=(str(folder),))
    buf = io.BytesIO()
    Image.new("RGB", (96, 64), (1, 2, 3)).save(buf, format="PNG")
    try:
        service = await h.open()
        events = service.events()
        receipt = await service.upscale(actor(), image=buf.getvalue(), scale=4.0)
        await wait_for(events, lambda e: isinstance(e, JobDone) and e.job.id == receipt.job_id)
        assert (await service.quota_status(actor())).used_images == 1  # charged
        view = await service.show(actor(), receipt.job_id)
        assert view.kind == "upscale" and (view.request.width, view.request.height) == (384, 256)
        assert view.request.upscaler == "R-ESRGAN 4x+" and view.request.upscale_detail == 0.0
        assert job_cost(view.request) == 384 * 256 * 1.25  # the model pass over the output pixels
        detailed = view.request.replace(upscale_detail=0.3, steps=20)
        assert job_cost(detailed) == pytest.approx(384 * 256 * (1.25 + 6))  # + 0.3 × 20 steps
        for refused in (
            service.vary(actor(), receipt.job_id, 0, "subtle"),
            service.reroll_job(actor(), receipt.job_id),
        ):
            with pytest.raises(UserError) as err:
                await refused
            assert "upscale" in str(err.value)
    finally:
        await h.close()


async def test_a_preset_keeps_face_restoration_and_the_detailer(tmp_path) -> None:
    h = Harness(tmp_path)
    _with_post(h, **_models(tmp_path / "models"))
    try:
        service = await h.open(start=False)
        await service.submit_imagine(actor(), ImagineOptions(prompt="x", face_restore=True, detailer=True))
        await service.save_preset(actor(), "faces", None, from_last_job=True)
        used = await service.submit_imagine(actor(), ImagineOptions(prompt="y", preset="faces"))
        request = (await service.show(actor(), used.job_id)).request
        assert (request.face_restoration, request.detailer) == ("GFPGAN", "face_detection_yunet_2023mar")
        off = await service.submit_imagine(
            actor(), ImagineOptions(prompt="y", preset="faces", detailer=False)
        )
        assert (await service.show(actor(), off.job_id)).request.detailer == ""  # the option wins
    finally:
        await h.close()


async def test_an_upscale_to_a_target_size_within_the_limit(tmp_path) -> None:
    import io

    from PIL import Image

    h = Harness(tmp_path, max_pixels=512 * 512)
    buf = io.BytesIO()
    Image.new("RGB", (96, 64), (1, 2, 3)).save(buf, format="PNG")
    try:
        service = await h.open(start=False)
        receipt = await service.upscale(actor(), image=buf.getvalue(), size=(384, 256), upscaler="Lanczos")
        request = (await service.show(actor(), receipt.job_id)).request
        assert (request.width, request.height, request.upscaler) == (384, 256, "Lanczos")
        for kwargs, words in (
            ({"size": (96, 64)}, "no larger than the image"),
            ({"size": (1024, 1024)}, "larger than this server allows"),
            ({"size": (384, 256), "scale": 2.0}, "not both"),
            ({"scale": 8.0}, "at most ×6.53 here"),
        ):
            with pytest.raises(UserError, match=words):
                await service.upscale(actor(), image=buf.getvalue(), upscaler="Lanczos", **kwargs)
        assert (await service.quota_status(actor())).used_images == 1  # the first one only
    finally:
        await h.close()
