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


def test_chant_describe_prints_the_prompts_and_tags(tmp_path: Path, capsys) -> None:
    from tests.core.services.test_describe import white_png, write_tagger

    write_tagger(tmp_path / "interrogators" / "wd-tiny-tagger-v3")
    config = tmp_path / "chant.toml"
    config.write_text(
        f'[postprocess]\ntagger_dirs = ["{tmp_path / "interrogators"}"]\ntagger = "wd-tiny-tagger-v3"\n'
    )
    image = tmp_path / "white.png"
    image.write_bytes(white_png())
    assert main(["--config", str(config), "describe", str(image), "--tags"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "1. hatsune miku, smile, long hair"
    assert [line.split()[1] for line in lines[1:]] == ["hatsune_miku", "smile", "long_hair"]
    assert main(["--config", str(config), "describe", str(image), "--tagger", "wd-nothing"]) == 1
    assert "unknown tagger 'wd-nothing'" in capsys.readouterr().err


async def test_chant_upscale_of_a_stored_jobs_image(tmp_path: Path, capsys) -> None:
    import asyncio

    from core.services import ImagineOptions, JobDone
    from core.testing.fake_engine import FakeEngine
    from tests.core.services.conftest import Harness, actor, wait_for

    config, _ = _setup(tmp_path)
    h = Harness(tmp_path)  # the same database file as the config's
    h.engine = FakeEngine(image_size=64)
    try:
        service = await h.open()
        events = service.events()
        receipt = await service.submit_imagine(actor(), ImagineOptions(prompt="a cat", count=2, seed=3))
        await wait_for(events, lambda e: isinstance(e, JobDone) and e.job.id == receipt.job_id)
        args = [
            "--config",
            str(config),
            "upscale",
            "--job",
            str(receipt.job_id),
            "--index",
            "2",
            "--upscaler",
            "Lanczos",
            "-o",
            str(tmp_path / "out.png"),
        ]
        assert await asyncio.to_thread(main, args) == 0
        out = Path(capsys.readouterr().out.strip())
        assert out == tmp_path / "out.png"
        made = Image.open(out)
        assert made.size == (128, 128) and "Seed: 4" in made.info["parameters"]  # image 2: seed 3 + 1
        missing = ["--config", str(config), "upscale", "--job", str(receipt.job_id), "--index", "3"]
        assert await asyncio.to_thread(main, missing) == 2
        assert "has no stored image 3" in capsys.readouterr().err
    finally:
        await h.close()
