"""/img2img from attachments (fetched from the fake CDN), the lora option and /loras, 🔀 variations,
and size choices within the guild's limit — the real bot against the fake Discord server."""

from __future__ import annotations

import io

from PIL import Image

from tests.bot.conftest import ALICE, BOB, CHANNEL_A, GUILD_A, RunningBot
from tests.bot.fake_discord import FakeDiscord

EPHEMERAL = 64


def opt(name: str, value, type_: int = 3) -> dict:
    return {"name": name, "type": type_, "value": value}


def png(size=(40, 24), color=(10, 200, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


async def img2img(fake: FakeDiscord, *options: dict, attachments=(), user=ALICE, type=2) -> tuple[int, str]:
    return await fake.interaction(
        "img2img",
        [opt("prompt", "a watercolor fox"), *options],
        guild_id=GUILD_A,
        channel_id=CHANNEL_A,
        user_id=user,
        attachments=list(attachments),
        type=type,
    )


def submitted(service):
    return [c[1][1] for c in service.calls if c[0] == "submit_imagine"]


async def test_img2img_reads_the_interactions_attachments_from_the_cdn(bot: RunningBot) -> None:
    fake, service = bot.fake, bot.service
    source, mask = png(), png(color=(255, 255, 255))
    a_src = fake.add_attachment("fox.png", source)
    a_mask = fake.add_attachment("mask.png", mask)
    await img2img(
        fake,
        opt("image", a_src["id"], 11),
        opt("mask", a_mask["id"], 11),
        opt("strength", 0.35, 10),
        opt("resize_mode", "crop and resize"),
        opt("fill", "latent noise"),
        opt("mask_blur", 9, 4),
        opt("masked_only", True, 5),
        attachments=[a_src, a_mask],
    )
    await fake.wait_call("POST", rf"/channels/{CHANNEL_A}/messages", lambda c: bool(c.files))
    (options,) = submitted(service)
    assert options.init_image == source and options.mask_image == mask
    assert (options.strength, options.resize_mode, options.fill) == (0.35, 1, 2)
    assert options.mask_blur == 9 and options.masked_only is True and options.source_job is None
    assert sorted(fake.cdn_fetches) == sorted(a["url"].split(str(fake.port), 1)[1] for a in (a_src, a_mask))


async def test_img2img_from_a_job_id_and_its_refusals(bot: RunningBot) -> None:
    fake, service = bot.fake, bot.service
    await img2img(fake, opt("job", 17, 4))
    await fake.wait_call("PATCH", r"/webhooks/\d+/[^/]+/messages/@original")
    assert submitted(service)[0].source_job == 17 and submitted(service)[0].init_image is None
    # Neither an image nor a job.
    _, token = await img2img(fake, opt("strength", 0.5, 10))
    (reply,) = await fake.wait_call("POST", rf"/webhooks/\d+/{token}")
    assert reply.json["flags"] & EPHEMERAL and "Attach a source image" in reply.json["content"]
    # Not an image (Discord says so): refused before anything is downloaded or queued.
    text = fake.add_attachment("notes.txt", b"hello", content_type="text/plain")
    _, token = await img2img(fake, opt("image", text["id"], 11), attachments=[text])
    (reply,) = await fake.wait_call("POST", rf"/webhooks/\d+/{token}")
    assert reply.json["flags"] & EPHEMERAL and "text/plain file, not an image" in reply.json["content"]
    # The CDN does not have it any more.
    gone = fake.add_attachment("gone.png", png())
    fake.files.clear()
    _, token = await img2img(fake, opt("image", gone["id"], 11), attachments=[gone])
    (reply,) = await fake.wait_call("POST", rf"/webhooks/\d+/{token}")
    assert reply.json["flags"] & EPHEMERAL and "could not download the source image" in reply.json["content"]
    assert len(submitted(service)) == 1


async def test_lora_option_autocomplete_and_the_loras_list(bot: RunningBot) -> None:
    fake, service = bot.fake, bot.service
    iid, token = await fake.interaction(
        "imagine",
        [opt("prompt", "x"), {"name": "lora", "type": 3, "value": "deta", "focused": True}],
        guild_id=GUILD_A,
        channel_id=CHANNEL_A,
        user_id=ALICE,
        type=4,
    )
    (cb,) = await fake.wait_call("POST", rf"/interactions/{iid}/{token}/callback")
    assert [c["value"] for c in cb.json["data"]["choices"]] == ["detail_tweaker", "add_detail"]
    await fake.interaction(
        "imagine",
        [opt("prompt", "a fox"), opt("lora", "watercolor")],
        guild_id=GUILD_A,
        channel_id=CHANNEL_A,
        user_id=ALICE,
    )
    await fake.wait_call("PATCH", r"/webhooks/\d+/[^/]+/messages/@original")
    assert submitted(service)[0].prompt == "a fox <lora:watercolor:1>"
    _, token = await fake.interaction(
        "imagine",
        [opt("prompt", "a fox"), opt("lora", "x:2><lora:y")],
        guild_id=GUILD_A,
        channel_id=CHANNEL_A,
        user_id=ALICE,
    )
    (reply,) = await fake.wait_call("POST", rf"/webhooks/\d+/{token}")
    assert reply.json["flags"] & EPHEMERAL and "not a LoRA name" in reply.json["content"]
    iid, token = await fake.interaction("loras", [], guild_id=GUILD_A, channel_id=CHANNEL_A, user_id=BOB)
    (cb,) = await fake.wait_call("POST", rf"/interactions/{iid}/{token}/callback")
    assert cb.json["data"]["flags"] & EPHEMERAL
    assert "3 LoRA(s)" in cb.json["data"]["content"] and "`watercolor`" in cb.json["data"]["content"]


async def test_variation_reaction_replies_with_the_same_seed(bot: RunningBot) -> None:
    fake, service = bot.fake, bot.service
    await fake.interaction(
        "imagine",
        [opt("prompt", "a cat"), opt("seed", 7, 4)],
        guild_id=GUILD_A,
        channel_id=CHANNEL_A,
        user_id=ALICE,
    )
    (first,) = await fake.wait_call("POST", rf"/channels/{CHANNEL_A}/messages", lambda c: bool(c.files))
    original = int(first.response["id"])
    await fake.wait_call("PUT", rf"/channels/{CHANNEL_A}/messages/{original}/reactions/🔀/@me")
    await fake.react(original, "🔀", user_id=BOB, channel_id=CHANNEL_A, guild_id=GUILD_A)
    (status,) = await fake.wait_call(
        "POST", rf"/channels/{CHANNEL_A}/messages", lambda c: "🔀" in ((c.json or {}).get("content") or "")
    )
    assert int(status.json["message_reference"]["message_id"]) == original
    posts = await fake.wait_call("POST", rf"/channels/{CHANNEL_A}/messages", lambda c: bool(c.files), count=2)
    assert int(posts[1].json["message_reference"]["message_id"]) == original
    (call,) = [c for c in service.calls if c[0] == "variation"]
    assert call[1][0].user_id == BOB and call[1][1] == original
    job = service.jobs[2]
    assert job.kind == "variation" and job.request.seed == 7 and job.request.subseed_strength == 0.25


async def test_size_choices_follow_the_guilds_limit(bot: RunningBot) -> None:
    fake, service = bot.fake, bot.service
    service.max_pixels[GUILD_A] = 512 * 768

    async def sizes() -> list[str]:
        iid, token = await fake.interaction(
            "imagine",
            [opt("prompt", "x"), {"name": "size", "type": 3, "value": "", "focused": True}],
            guild_id=GUILD_A,
            channel_id=CHANNEL_A,
            user_id=ALICE,
            type=4,
        )
        (cb,) = await fake.wait_call("POST", rf"/interactions/{iid}/{token}/callback")
        return [c["value"] for c in cb.json["data"]["choices"]]

    assert await sizes() == ["512x512", "512x768", "768x512"]
    service.max_pixels[GUILD_A] = 1024 * 1024
    assert "1024x1024" in await sizes()


def test_the_bot_and_lora_listing_load_no_torch(tmp_path) -> None:
    import subprocess
    import sys

    (tmp_path / "Lora").mkdir()
    (tmp_path / "Lora" / "style.safetensors").write_bytes(b"x")
    code = (
        "import sys, dataclasses\n"
        "import bot.app, bot.delivery, bot.options, bot.exts.imagine._cog\n"
        "from core.config import Settings\n"
        "from core.services.context import Catalog\n"
        "s = Settings()\n"
        f"s = dataclasses.replace(s, engine=dataclasses.replace(s.engine, lora_dirs=({str(tmp_path / 'Lora')!r},)))\n"
        "names = Catalog(s, engine=None).loras()\n"
        "assert names == ['style'], names\n"
        "bad = [m for m in ('torch', 'diffusers', 'transformers', 'safetensors') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]


async def test_imagine_passes_control_and_reference_images_and_posts_the_map(bot: RunningBot) -> None:
    fake, service = bot.fake, bot.service
    edges, face = png(color=(0, 0, 0)), png(color=(9, 9, 9))
    a_edges = fake.add_attachment("edges.png", edges)
    a_face = fake.add_attachment("face.png", face)
    await fake.interaction(
        "imagine",
        [
            opt("prompt", "a fox"), opt("control_image", a_edges["id"], 11), opt("control_type", "depth map"),
            opt("control_weight", 0.6, 10), opt("reference_image", a_face["id"], 11), opt("reference_scale", 1.5, 10),
        ],
        guild_id=GUILD_A, channel_id=CHANNEL_A, user_id=ALICE, attachments=[a_edges, a_face],
    )  # fmt: skip
    (post,) = await fake.wait_call("POST", rf"/channels/{CHANNEL_A}/messages", lambda c: bool(c.files))
    (options,) = submitted(service)
    assert (options.control_image, options.control_type, options.control_weight) == (edges, "depth map", 0.6)
    assert (options.reference_image, options.reference_scale) == (face, 1.5)
    names = [name for name, _ in post.files]
    assert len(names) == 2 and names[1].endswith("control-0.png")  # the result, then its control map
