"""``chant generate`` on a machine with no model: the default is downloaded (from a loopback stand-in
for the hub, ``HF_ENDPOINT``) into the model folder and used; with downloads off it stops at once
with one line. The tiny SD1.5 checkpoint plays SD 1.5 (its config is put where chant keeps the SD1
skeleton, so the single file loads as a real one would)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from core.engine import skeleton
from tests.fake_hub import DEFAULT_PATH, FakeHub

ROOT = Path(__file__).resolve().parents[3]

_REPORT_IMPORTS = """
import sys
from bot.cli import main
rc = main(sys.argv[1:])
print("LOADED:", [m for m in ("torch", "diffusers", "transformers") if m in sys.modules], file=sys.stderr)
sys.exit(rc)
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHANT_", "HF_"))}
    return {**env, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}


def test_no_model_with_downloads_off_stops_before_torch_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "chant.toml").write_text('[engine]\nauto_download = false\n')
    proc = subprocess.run(
        [sys.executable, "-c", _REPORT_IMPORTS, "generate", "a cat"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if not line.startswith("LOADED:")]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("chant generate: no model: put a Stable Diffusion .safetensors checkpoint in")
    assert "models/Stable-diffusion" in lines[0] and "engine.auto_download = true" in lines[0]
    assert "LOADED: []" in proc.stderr


@pytest.mark.slow
def test_no_model_downloads_the_default_with_a_bar_and_generates_with_it(tiny_sd15, tmp_path: Path) -> None:
    data = Path(tiny_sd15.single_file).read_bytes()
    cache = tmp_path / "cache"
    shutil.copytree(tiny_sd15.config, cache / "skeletons" / f"{skeleton.KINDS['sd1']}-v{skeleton._VERSION}")
    (tmp_path / "chant.toml").write_text(
        '[engine]\ndevice = "cpu"\nthreads = 1\nembedding_dirs = []\n'
        f'download_sha256 = "{hashlib.sha256(data).hexdigest()}"\n'
    )
    hub = FakeHub({DEFAULT_PATH: data}).start()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "bot.cli", "generate", "a cat", "--steps", "2", "--size", "64x64",
             "--seed", "3", "-o", "cat.png"],
            cwd=tmp_path, env=_env(HF_ENDPOINT=hub.url, CHANT_CACHE=str(cache)),
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    finally:
        hub.close()
    assert proc.returncode == 0, proc.stderr[-3000:]
    downloaded = tmp_path / "models" / "Stable-diffusion" / "v1-5-pruned-emaonly.safetensors"
    assert downloaded.read_bytes() == data
    assert [p.name for p in downloaded.parent.iterdir()] == [downloaded.name]
    assert "downloading v1-5-pruned-emaonly.safetensors" in proc.stderr and "100%" in proc.stderr
    text = Image.open(tmp_path / "cat.png").info["parameters"]
    assert "Model: v1-5-pruned-emaonly" in text and "Size: 64x64" in text
    # A checkpoint in a subfolder is named by its path, and the infotext names its file as A1111 does.
    (downloaded.parent / "mine").mkdir()
    shutil.copy(downloaded, downloaded.parent / "mine" / "fox.safetensors")
    proc = subprocess.run(
        [sys.executable, "-m", "bot.cli", "generate", "a cat", "--model", "mine/fox", "--steps", "2",
         "--size", "64x64", "-o", "fox.png"],
        cwd=tmp_path, env=_env(CHANT_CACHE=str(cache), HF_HUB_OFFLINE="1"),
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = Image.open(tmp_path / "fox.png").info["parameters"]
    assert "Model: fox," in text and "mine/" not in text
