"""End to end with the REAL engine: ``chant run`` (SQLite, DiffusersEngine on the CPU) serving a tiny
random-weight SD1.5 single file against the fake Discord server. Small sizes and few steps keep it
to seconds; the images are noise, but real ones, with A1111 PNG info written by the engine."""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from PIL import Image

from tests.bot.conftest import ALICE, BOB, CHANNEL_A, GUILD_A, TOKEN, fake_guilds
from tests.bot.fake_discord import FakeDiscord
from tests.bot.harness import ChantProcess

pytestmark = pytest.mark.slow

EPHEMERAL = 64


def opt(name: str, value, type_: int = 3) -> dict:
    return {"name": name, "type": type_, "value": value}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory):
    """A tiny SD1.5 single file inside a model folder (built once for this module, a few seconds)."""
    pytest.importorskip("diffusers")
    from core.testing.tiny import build_tiny_sd15

    cache = tmp_path_factory.mktemp("chant-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CHANT_CACHE", str(cache))
        mp.setenv("HF_HUB_OFFLINE", "1")
        tiny = build_tiny_sd15(tmp_path_factory.mktemp("models"))
    return tiny, cache


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    server = await FakeDiscord(fake_guilds()).start()
    yield server
    await server.close()


def write_engine_config(tmp_path: Path, tiny, extra: str = "") -> Path:
    config = tmp_path / "chant.toml"
    config.write_text(
        f"""log_level = "INFO"
[database]
url = "sqlite+aiosqlite:///{tmp_path / "chant.db"}"
[discord]
progress_edit_interval_s = 0.5
[engine]
device = "cpu"
threads = 1
preview_every = 0
default_model = "tiny"
model_dirs = ["{tiny.single_file.parent}"]
lora_dirs = []
embedding_dirs = []
hypernetwork_dirs = []
[engine.models.tiny]
source = "{tiny.single_file}"
config = "{tiny.config}"
"""
        + extra,
        encoding="utf-8",
    )
    return config


@contextlib.asynccontextmanager
async def real_chant(
    tmp_path: Path, fake: FakeDiscord, tiny_model, extra: str = ""
) -> AsyncIterator[ChantProcess]:
    tiny, cache = tiny_model
    config = write_engine_config(tmp_path, tiny, extra)
    proc = ChantProcess(
        config, fake, 0.0, TOKEN, fake_engine=False, env={"CHANT_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    )
    await proc.start()
    try:
        yield proc
    except BaseException:
        print(f"--- chant run output (last 6000 characters) ---\n{proc.output[-6000:]}")
        raise
    finally:
        await proc.stop()
        assert TOKEN not in proc.output, "the bot token appeared in the logs"


def parameters(call) -> str:
    return Image.open(io.BytesIO(call.files[0][1])).info["parameters"]


def pixels(call) -> bytes:
    return Image.open(io.BytesIO(call.files[0][1])).convert("RGB").tobytes()


async def test_real_engine_imagine_reroll_and_a_prompt_error(tmp_path: Path, fake: FakeDiscord, tiny_model):
    async with real_chant(tmp_path, fake, tiny_model):
        iid, token = await fake.interaction(
            "imagine",
            [
                opt("prompt", "a (red:1.2) fox"),
                opt("seed", 1234, 4),
                opt("steps", 3, 4),
                opt("size", "64x64"),
                opt("sampler", "Euler"),
            ],
            guild_id=GUILD_A,
            channel_id=CHANNEL_A,
            user_id=ALICE,
        )
        (cb,) = await fake.wait_call("POST", rf"/interactions/{iid}/{token}/callback")
        assert cb.json["type"] == 5
        (first,) = await fake.wait_call(
            "POST", rf"/channels/{CHANNEL_A}/messages", lambda c: bool(c.files), timeout=60
        )
        params = parameters(first)
        assert params.splitlines()[0] == "a (red:1.2) fox"
        assert "Seed: 1234" in params and "Sampler: Euler," in params and "Steps: 3" in params
        assert "Size: 64x64" in params and "Model: tiny" in params
        model_hash = re.search(r"Model hash: ([0-9a-f]{10})", params)
        assert model_hash is not None, params
        assert Image.open(io.BytesIO(first.files[0][1])).size == (64, 64)
        original = int(first.response["id"])
        await fake.wait_call("PUT", rf"/channels/{CHANNEL_A}/messages/{original}/reactions/🔁/@me")

        # 🔁: the same parameters with another seed, a different image, as a reply.
        await fake.react(original, "🔁", user_id=BOB, channel_id=CHANNEL_A, guild_id=GUILD_A)
        posts = await fake.wait_call(
            "POST", rf"/channels/{CHANNEL_A}/messages", lambda c: bool(c.files), count=2, timeout=60
        )
        second = posts[1]
        assert int(second.json["message_reference"]["message_id"]) == original
        params2 = parameters(second)
        seed2 = int(re.search(r"Seed: (\d+)", params2).group(1))
        assert seed2 != 1234 and params2.splitlines()[0] == "a (red:1.2) fox"
        assert f"Model hash: {model_hash.group(1)}" in params2
        assert pixels(second) != pixels(first)

        # A prompt error: an ephemeral reply that names the column; nothing is queued.
        _, token = await fake.interaction(
            "imagine",
            [opt("prompt", "a fox (red:1.2.3)"), opt("size", "64x64")],
            guild_id=GUILD_A,
            channel_id=CHANNEL_A,
            user_id=ALICE,
        )
        (refusal,) = await fake.wait_call("POST", rf"/webhooks/\d+/{token}")
        assert refusal.json["flags"] & EPHEMERAL and "column 12" in refusal.json["content"], refusal.json


def png_bytes(size=(64, 64), color=(200, 40, 40), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


async def test_real_engine_img2img_and_inpaint_from_attachments(
    tmp_path: Path, fake: FakeDiscord, tiny_model
):
    async with real_chant(tmp_path, fake, tiny_model):
        source = fake.add_attachment("source.png", png_bytes())
        mask = png_bytes((32, 32), 0, "L")  # another size than the source: stretched to it, as A1111
        half = Image.open(io.BytesIO(mask))
        half.paste(255, (0, 0, 16, 32))
        buf = io.BytesIO()
        half.save(buf, format="PNG")
        mask_att = fake.add_attachment("mask.png", buf.getvalue())
        await fake.interaction(
            "img2img",
            [
                opt("prompt", "a blue fox"),
                opt("image", source["id"], 11),
                opt("strength", 0.6, 10),
                opt("steps", 4, 4),
                opt("seed", 99, 4),
            ],
            guild_id=GUILD_A,
            channel_id=CHANNEL_A,
            user_id=ALICE,
            attachments=[source],
        )
        (plain,) = await fake.wait_call(
            "POST", rf"/channels/{CHANNEL_A}/messages", lambda c: bool(c.files), timeout=60
        )
        params = parameters(plain)
        assert params.splitlines()[0] == "a blue fox" and "Denoising strength: 0.6" in params, params
        assert "Seed: 99" in params and "Size: 64x64" in params
        await fake.interaction(
            "img2img",
            [
                opt("prompt", "a blue fox"),
                opt("image", source["id"], 11),
                opt("mask", mask_att["id"], 11),
                opt("mask_blur", 0, 4),
                opt("steps", 4, 4),
                opt("seed", 99, 4),
            ],
            guild_id=GUILD_A,
            channel_id=CHANNEL_A,
            user_id=BOB,
            attachments=[source, mask_att],
        )
        posts = await fake.wait_call(
            "POST", rf"/channels/{CHANNEL_A}/messages", lambda c: bool(c.files), count=2, timeout=60
        )
        inpainted = Image.open(io.BytesIO(posts[1].files[0][1])).convert("RGB")
        # Only the white (left) half is repainted; the kept half is the source's pixels again.
        assert inpainted.getpixel((60, 30)) == (200, 40, 40)
        assert inpainted.getpixel((4, 30)) != (200, 40, 40)

        # Hires fix on /imagine: 64² generated, then a second pass at 128².
        await fake.interaction(
            "imagine",
            [
                opt("prompt", "a tall tower"),
                opt("size", "64x64"),
                opt("steps", 2, 4),
                opt("hires", True, 5),
                opt("hires_scale", 2.0, 10),
                opt("hires_steps", 2, 4),
                opt("upscaler", "Lanczos"),
            ],
            guild_id=GUILD_A,
            channel_id=CHANNEL_A,
            user_id=ALICE,
        )
        posts = await fake.wait_call(
            "POST", rf"/channels/{CHANNEL_A}/messages", lambda c: bool(c.files), count=3, timeout=60
        )
        hires = posts[2]
        assert Image.open(io.BytesIO(hires.files[0][1])).size == (128, 128)
        params = parameters(hires)
        assert (
            "Hires upscale: 2" in params
            and "Hires steps: 2" in params
            and "Hires upscaler: Lanczos" in params
        )


async def test_real_engine_upscale_reaction_posts_the_models_upscale(
    tmp_path: Path, fake: FakeDiscord, tiny_model
):
    """⬆️ on a real result: a tiny random-weight ESRGAN (as R-ESRGAN 4x+) upscales it ×2, posted as a reply
    with the source's parameters and A1111's Postprocess keys."""
    from core.testing.tiny_upscalers import build_tiny_upscaler

    folder = tmp_path / "ESRGAN"
    build_tiny_upscaler("Compact", folder / "RealESRGAN_x4plus.safetensors", scale=4)
    extra = f'[postprocess]\nupscaler_dirs = ["{folder}"]\n'
    async with real_chant(tmp_path, fake, tiny_model, extra):
        await fake.interaction(
            "imagine",
            [opt("prompt", "a fox"), opt("seed", 5, 4), opt("steps", 2, 4), opt("size", "64x64")],
            guild_id=GUILD_A, channel_id=CHANNEL_A, user_id=ALICE,
        )  # fmt: skip
        (first,) = await fake.wait_call(
            "POST", rf"/channels/{CHANNEL_A}/messages", lambda c: bool(c.files), timeout=60
        )
        original = int(first.response["id"])
        await fake.wait_call("PUT", rf"/channels/{CHANNEL_A}/messages/{original}/reactions/🔀/@me")
        await fake.react(original, "⬆️", user_id=BOB, channel_id=CHANNEL_A, guild_id=GUILD_A)
        posts = await fake.wait_call(
            "POST", rf"/channels/{CHANNEL_A}/messages", lambda c: bool(c.files), count=2, timeout=60
        )
        upscaled = posts[1]
        assert int(upscaled.json["message_reference"]["message_id"]) == original
        assert Image.open(io.BytesIO(upscaled.files[0][1])).size == (128, 128)
        params = parameters(upscaled)
        assert params.startswith(parameters(first) + ", ")
        assert "Postprocess upscale to: 128x128, Postprocess upscaler: R-ESRGAN 4x+" in params
