"""Control and reference images through the service: options → request, checked like img2img sources,
the guild switch, missing models refused before anything is stored, 🔁 keeps them, maps come back."""

from __future__ import annotations

import dataclasses
import io

import pytest
from PIL import Image

from core.services import ImagineOptions, JobDone, UserError
from core.storage.repositories import Repositories
from tests.core.services.conftest import Harness, actor, wait_for


def png(size=(64, 64), color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
async def guided(tmp_path):
    """The service with a ControlNet folder holding canny and depth ControlNets and an IP-Adapter (names only: the
    fake engine does not load them), a CLIP vision folder, and no preprocessor models."""
    controlnets = tmp_path / "ControlNet"
    controlnets.mkdir()
    (controlnets / "control_v11p_sd15_canny.safetensors").write_bytes(b"x")
    (controlnets / "control_v11f1p_sd15_depth.safetensors").write_bytes(b"x")
    (controlnets / "ip-adapter_sd15.safetensors").write_bytes(b"x")
    vision = tmp_path / "clip_vision"
    vision.mkdir()
    (vision / "vit-h.safetensors").write_bytes(b"x")
    h = Harness(tmp_path)
    engine = dataclasses.replace(
        h.settings.engine,
        controlnet_dirs=(str(controlnets),),
        clip_vision_dirs=(str(vision),),
        preprocessor_dirs=(str(tmp_path / "none"),),
    )
    h.settings = dataclasses.replace(h.settings, engine=engine)
    yield h
    await h.close()


async def stored(harness, job_id: int):
    async with harness.db.session() as s:
        repos = Repositories(s)
        return await repos.jobs.request(await repos.jobs.get(job_id))


async def job_count(harness) -> int:
    async with harness.db.session() as s:
        return await Repositories(s).jobs.count_for_user(10)


async def test_control_and_reference_become_the_request_and_reroll_keeps_them(guided) -> None:
    service = await guided.open()
    events = service.events()
    edges, face = png(color=(0, 0, 0)), png(color=(9, 9, 9))
    r = await service.submit_imagine(
        actor(),
        ImagineOptions(prompt="a fox", control_image=edges, control_type="canny", control_weight=0.6,
                       reference_image=face, reference_scale=0.8),
    )  # fmt: skip
    req = await stored(guided, r.job_id)
    (unit,) = req.controls
    assert (unit.image, unit.module, unit.control_type, unit.weight, unit.model) == (
        edges,
        "canny",
        "Canny",
        0.6,
        "",
    )
    (ref,) = req.references
    assert (ref.image, ref.scale) == (face, 0.8)
    done = await wait_for(events, lambda e: isinstance(e, JobDone) and e.job.id == r.job_id)
    assert len(done.control_maps) == 1  # the preprocessed map comes with the result
    await service.record_result_messages(r.job_id, [7001])
    rr = await service.reroll(actor(user=11), 7001)
    again = await stored(guided, rr.job_id)
    assert again.controls == req.controls and again.references == req.references and again.seed != req.seed
    vr = await service.variation(actor(user=12), 7001)  # 🔀 too
    varied = await stored(guided, vr.job_id)
    assert varied.controls == req.controls and varied.references == req.references and varied.subseed_strength > 0


async def test_a_preset_holds_guidance_start_and_end(guided) -> None:
    service = await guided.open(start=False)
    await service.save_preset(actor(), "early", ImagineOptions(prompt="", control_start=0.1, control_end=0.4))
    r = await service.submit_imagine(
        actor(), ImagineOptions(prompt="a fox", preset="early", control_image=png(), control_type="canny map")
    )
    (unit,) = (await stored(guided, r.job_id)).controls
    assert (unit.guidance_start, unit.guidance_end, unit.module) == (0.1, 0.4, "none")


@pytest.mark.parametrize(
    ("options", "code", "words"),
    [
        (dict(control_image=b"not an image"), "image.invalid", "control image"),
        (dict(control_image=png((4100, 4100))), "image.too_large", "control image"),
        (dict(reference_image=b"\x89PNG broken"), "image.invalid", "reference image"),
        (dict(control_image=png(), control_type="depth"), "guides.missing", "Depth Anything"),
        (dict(control_image=png(), control_type="openpose map"), "guides.missing", "OpenPose"),
        (dict(control_weight=0.5), "invalid", "control image"),
        (dict(control_image=png(), control_type="sketchy"), "invalid", "control_type"),
    ],
)
async def test_bad_guides_are_refused_and_nothing_is_stored(guided, options, code, words) -> None:
    service = await guided.open(start=False)
    with pytest.raises(UserError) as err:
        await service.submit_imagine(actor(), ImagineOptions(prompt="a fox", **options))
    assert err.value.code == code and words in str(err.value), str(err.value)
    assert await job_count(guided) == 0


async def test_an_admin_can_turn_guides_off(guided) -> None:
    service = await guided.open()
    events = service.events()
    admin = actor(manage_guild=True)
    r = await service.submit_imagine(admin, ImagineOptions(prompt="a fox", control_image=png()))
    await wait_for(events, lambda e: isinstance(e, JobDone) and e.job.id == r.job_id)
    await service.record_result_messages(r.job_id, [7002])
    await service.admin_set_guides(admin, False)
    with pytest.raises(UserError) as err:
        await service.submit_imagine(actor(), ImagineOptions(prompt="a fox", reference_image=png()))
    assert err.value.code == "guides.off"
    with pytest.raises(UserError) as err:  # 🔁 of an earlier guided job too
        await service.reroll(admin, 7002)
    assert err.value.code == "guides.off"
    await service.submit_imagine(actor(), ImagineOptions(prompt="a plain fox"))  # the rest still works
    await service.admin_set_guides(admin, True)
    await service.reroll(admin, 7002)
