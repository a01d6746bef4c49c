"""``chant upscale`` on a file and on a stored job's image (tiny random-weight upscaler, no SD model)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from core.cli import main
from core.config import PostprocessSettings
from core.engine.postprocess.upscalers import Upscalers
from core.testing.tiny_upscalers import build_tiny_upscaler


def _setup(tmp_path: Path) -> tuple[Path, Path]:
    build_tiny_upscaler("Compact", tmp_path / "ESRGAN" / "RealESRGAN_x4plus.safetensors", scale=4)
    config = tmp_path / "chant.toml"
    config.write_text(
        f'[engine]\ndevice = "cpu"\nthreads = 1\n[postprocess]\nupscaler_dirs = ["{tmp_path / "ESRGAN"}"]\n'
        f'[database]\nurl = "sqlite+aiosqlite:///{tmp_path / "chant.db"}"\n'
    )
    image = tmp_path / "in.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8), "RGB").save(image)
    return config, image


def test_chant_upscale_writes_the_models_upscale_of_a_file(tmp_path: Path, capsys) -> None:
    config, image = _setup(tmp_path)
    assert main(["--config", str(config), "upscale", str(image), "--scale", "2"]) == 0
    out = Path(capsys.readouterr().out.strip())
    assert out == tmp_path / "in-upscaled.png"
    made = Image.open(io.BytesIO(out.read_bytes()))
    assert made.size == (96, 64) and "Postprocess upscaler: R-ESRGAN 4x+" in made.info["parameters"]
    settings = PostprocessSettings(upscaler_dirs=(str(tmp_path / "ESRGAN"),))
    expected = Upscalers(settings, allow_pickle=False).upscale_to(Image.open(image), "R-ESRGAN 4x+", 96, 64)
    assert np.array_equal(np.asarray(made.convert("RGB")), np.asarray(expected))


def test_chant_upscale_refuses_bad_arguments_clearly(tmp_path: Path, capsys) -> None:
    config, image = _setup(tmp_path)
    assert main(["--config", str(config), "upscale", str(image), "--upscaler", "4x-Nope"]) == 2
    assert (
        "unknown upscaler '4x-Nope'; this server has: R-ESRGAN 4x+, Lanczos, Nearest"
        in capsys.readouterr().err
    )
    assert main(["--config", str(config), "upscale"]) == 2
    assert "give an IMAGE file or --job N" in capsys.readouterr().err
    (tmp_path / "bad.png").write_bytes(b"nope")
    assert main(["--config", str(config), "upscale", str(tmp_path / "bad.png")]) == 2
    assert "not a PNG, JPEG or WebP" in capsys.readouterr().err
