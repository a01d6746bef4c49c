"""End to end with the REAL engine and a tiny random-weight ControlNet: ``/imagine control_image:`` posts
the image and the preprocessed map, 🔁 keeps the control, a bad attachment is refused privately."""

# ruff: noqa: F811 (the fixtures imported from test_e2e_engine are parameters here)
from __future__ import annotations

import contextlib
import io
import re
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.bot.conftest import ALICE, BOB, CHANNEL_A, GUILD_A, TOKEN
from tests.bot.fake_discord import FakeDiscord
from tests.bot.harness import ChantProcess
from tests.bot.test_e2e_engine import EPHEMERAL, fake, opt, parameters, tiny_model, write_engine_config  # noqa: F401

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def controlnet_dir(tiny_model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from diffusers import StableDiffusionPipeline

    from core.testing.tiny_control import tiny_controlnet

    tiny, _ = tiny_model
    folder = tmp_path_factory.mktemp("ControlNet")
    unet = StableDiffusionPipeline.from_pretrained(str(tiny.folder), local_files_only=True).unet
    tiny_controlnet(unet, seed=1).save_pretrained(str(folder / "control_tiny_canny"))
    return folder


@contextlib.asynccontextmanager
async def guided_chant(
    tmp_path: Path, fake: FakeDiscord, tiny_model, controlnets: Path
) -> AsyncIterator[None]:
    tiny, cache = tiny_model
    config = write_engine_config(tmp_path, tiny)
    text = config.read_text(encoding="utf-8").replace(
        "[engine]\n", f'[engine]\ncontrolnet_dirs = ["{controlnets}"]\npreprocessor_dirs = []\n', 1
    )
    config.write_text(text, encoding="utf-8")
    proc = ChantProcess(
        config, fake, 0.0, TOKEN, fake_engine=False, env={"CHANT_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    )
    await proc.start()
    try:
        yield
    except BaseException:
        print(f"--- chant run output (last 6000 characters) ---\n{proc.output[-6000:]}")
        raise
    finally:
        await proc.stop()


def square_png() -> bytes:
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    image[16:48, 16:48] = 255
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


async def test_imagine_with_a_control_image_posts_the_map_and_reroll_keeps_it(
    tmp_path: Path, fake: FakeDiscord, tiny_model, controlnet_dir: Path
) -> None:
    async with guided_chant(tmp_path, fake, tiny_model, controlnet_dir):
        # A broken attachment: refused privately, nothing queued.
        broken = fake.add_attachment("broken.png", square_png()[:60])
        _, token = await fake.interaction(
            "imagine",
            [opt("prompt", "a fox"), opt("control_image", broken["id"], 11), opt("size", "64x64")],
            guild_id=GUILD_A, channel_id=CHANNEL_A, user_id=ALICE, attachments=[broken],
        )  # fmt: skip
        (refusal,) = await fake.wait_call("POST", rf"/webhooks/\d+/{token}")
        assert refusal.json["flags"] & EPHEMERAL and "control image" in refusal.json["content"], refusal.json

        square = fake.add_attachment("square.png", square_png())
        await fake.interaction(
            "imagine",
            [
                opt("prompt", "a fox"), opt("control_image", square["id"], 11), opt("control_type", "canny"),
                opt("control_weight", 0.8, 10), opt("seed", 7, 4), opt("steps", 3, 4), opt("size", "64x64"),
                opt("sampler", "Euler"),
            ],
            guild_id=GUILD_A, channel_id=CHANNEL_A, user_id=ALICE, attachments=[square],
        )  # fmt: skip
        (first,) = await fake.wait_call(
            "POST", rf"/channels/{CHANNEL_A}/messages", lambda c: bool(c.files), timeout=90
        )
        names = [name for name, _ in first.files]
        assert len(names) == 2 and "control" in names[1], names  # the image, then the detected map
        edges = np.asarray(Image.open(io.BytesIO(first.files[1][1])).convert("L"))
        assert set(np.unique(edges)) == {0, 255} and edges[32, 32] == 0  # canny's outline of the square
        params = parameters(first)
        assert re.search(
            r'ControlNet 0: "Module: canny, Model: control_tiny_canny \[[0-9a-f]{8}\], Weight: 0.8', params
        )
        original = int(first.response["id"])
        await fake.wait_call("PUT", rf"/channels/{CHANNEL_A}/messages/{original}/reactions/🔁/@me")

        # 🔁: the same control (stored with the job), another seed.
        await fake.react(original, "🔁", user_id=BOB, channel_id=CHANNEL_A, guild_id=GUILD_A)
        posts = await fake.wait_call(
            "POST", rf"/channels/{CHANNEL_A}/messages", lambda c: bool(c.files), count=2, timeout=90
        )
        again = parameters(posts[1])
        assert "Seed: 7," not in again and 'ControlNet 0: "Module: canny' in again
        assert len(posts[1].files) == 2
