"""A fresh ``chant run`` with an empty model folder: it downloads the default model (from a loopback
stand-in for the hub, ``HF_ENDPOINT``) and then serves /imagine with it; with ``engine.auto_download =
false`` it stops at start with one line that says what to do (and never reaches Discord)."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from PIL import Image

from core.engine import skeleton
from tests.bot.conftest import ALICE, CHANNEL_A, GUILD_A, TOKEN, fake_guilds
from tests.bot.fake_discord import FakeDiscord
from tests.bot.harness import ROOT, ChantProcess
from tests.fake_hub import DEFAULT_PATH, FakeHub


def _config(tmp_path: Path, **engine: str) -> Path:
    lines = [f"{key} = {value}" for key, value in engine.items()]
    config = tmp_path / "chant.toml"
    config.write_text(
        f'[database]\nurl = "sqlite+aiosqlite:///{tmp_path / "chant.db"}"\n'
        '[discord]\nprogress_edit_interval_s = 0.5\n'
        '[engine]\ndevice = "cpu"\nthreads = 1\npreview_every = 0\nlora_dirs = []\nembedding_dirs = []\n'
        'hypernetwork_dirs = []\n' + "\n".join(lines) + "\n",
        encoding="utf-8",
    )
    return config


def test_no_model_and_downloads_off_stops_chant_run_with_one_line(tmp_path: Path) -> None:
    config = _config(tmp_path, auto_download="false")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHANT_", "DISCORD_"))}
    proc = subprocess.run(
        [sys.executable, "-m", "bot.cli", "run"],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(ROOT), "CHANT_CONFIG": str(config), "DISCORD_TOKEN": TOKEN,
             "DISCORD_API_BASE": "http://127.0.0.1:9/api/v10"},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("chant: no model: put a Stable Diffusion .safetensors checkpoint in models/Stable-diffusion")
    assert "engine.auto_download = true" in last
    assert "Traceback" not in proc.stderr and "cannot reach Discord" not in proc.stderr


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    server = await FakeDiscord(fake_guilds()).start()
    yield server
    await server.close()


@pytest.mark.slow
async def test_a_fresh_chant_run_downloads_the_default_model_and_serves_imagine(
    tmp_path: Path, fake: FakeDiscord, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from tests.tiny import build_tiny_sd15

    cache = tmp_path / "cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CHANT_CACHE", str(tmp_path_factory.mktemp("build-cache")))
        tiny = build_tiny_sd15(tmp_path_factory.mktemp("tiny"))
    # The tiny model plays SD 1.5: its config stands where chant keeps the SD1 skeleton.
    shutil.copytree(tiny.config, cache / "skeletons" / f"{skeleton.KINDS['sd1']}-v{skeleton._VERSION}")
    data = Path(tiny.single_file).read_bytes()
    config = _config(tmp_path, download_sha256=f'"{hashlib.sha256(data).hexdigest()}"')
    hub = FakeHub({DEFAULT_PATH: data}).start()
    proc = ChantProcess(
        config, fake, 0.0, TOKEN, fake_engine=False,
        env={"CHANT_CACHE": str(cache), "HF_HUB_OFFLINE": "", "HF_ENDPOINT": hub.url},
    )  # fmt: skip
    try:
        await proc.start()  # downloads first, then connects
        await fake.interaction(
            "imagine",
            [{"name": "prompt", "type": 3, "value": "a fox"}, {"name": "size", "type": 3, "value": "64x64"},
             {"name": "steps", "type": 4, "value": 2}],
            guild_id=GUILD_A, channel_id=CHANNEL_A, user_id=ALICE,
        )  # fmt: skip
        (post,) = await fake.wait_call("POST", rf"/channels/{CHANNEL_A}/messages", lambda c: bool(c.files), timeout=60)
        params = Image.open(io.BytesIO(post.files[0][1])).info["parameters"]
        assert "Model: v1-5-pruned-emaonly" in params and "Size: 64x64" in params
    except BaseException:
        print(f"--- chant run output ---\n{proc.output[-6000:]}")
        raise
    finally:
        if proc.proc is not None:
            await proc.stop()
        hub.close()
    downloaded = tmp_path / "models" / "Stable-diffusion" / "v1-5-pruned-emaonly.safetensors"
    assert downloaded.read_bytes() == data
    assert "no model found: downloading" in proc.output and "downloaded " in proc.output
    assert [seen.path for seen in hub.seen] == [DEFAULT_PATH]
