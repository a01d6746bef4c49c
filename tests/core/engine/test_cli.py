"""``chant generate`` in a real subprocess on the tiny single-file model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from core.engine.cli import output_paths, parse_size

ROOT = Path(__file__).resolve().parents[3]


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_generate_writes_pngs_with_infotext(tiny_sd15, tmp_path: Path) -> None:
    config = tmp_path / "chant.toml"
    config.write_text(
        '[engine]\ndevice = "cpu"\nthreads = 1\nembedding_dirs = []\n'
        f'[engine.models.tiny]\nsource = "{tiny_sd15.single_file}"\nconfig = "{tiny_sd15.config}"\n'
    )
    out = tmp_path / "pics" / "out.png"
    proc = _run(
        ["--config", str(config), "generate", "a small (red:1.2) boat", "--negative", "fog", "--steps", "3",
         "--cfg", "6.5", "--sampler", "DPM++ 2M", "--seed", "42", "--size", "64x64", "--model", "tiny",
         "--clip-skip", "2", "--rng", "nv", "--device", "cpu", "-n", "2", "-o", str(out)],
        tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "3/3" in proc.stderr  # the progress bar
    first, second = out, out.with_name("out-1.png")
    assert f"{first}  seed=42" in proc.stdout and f"{second}  seed=43" in proc.stdout
    text = Image.open(first).info["parameters"]
    assert text.startswith("a small (red:1.2) boat\nNegative prompt: fog\nSteps: 3, Sampler: DPM++ 2M")
    for part in ("CFG scale: 6.5", "Seed: 42", "Size: 64x64", "Model: tiny", "Clip skip: 2", "RNG: NV"):
        assert part in text
    assert "Seed: 43" in Image.open(second).info["parameters"]


def test_generate_takes_a_path_and_reports_bad_input(tiny_sd15, tmp_path: Path, capsys, monkeypatch) -> None:
    from core.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CHANT_CONFIG", "")
    common = ["--model", str(tiny_sd15.folder), "--device", "cpu", "--seed", "1"]
    assert main(["generate", "a cat", *common, "--steps", "2", "--size", "64x64", "-o", "cat.png"]) == 0
    assert (tmp_path / "cat.png").exists()
    assert main(["generate", "a cat", *common, "--size", "60x64"]) == 1
    assert "width must be a multiple of 8" in capsys.readouterr().err
    assert main(["generate", "a cat", *common, "--size", "big"]) == 2
    assert "size must look like 512x768" in capsys.readouterr().err
    pickle = tmp_path / "old.ckpt"
    pickle.write_bytes(b"x")
    assert main(["generate", "a cat", "--model", str(pickle), "--device", "cpu"]) == 1
    assert "convert it once" in capsys.readouterr().err.lower()


def test_size_and_output_names() -> None:
    assert parse_size("512x768") == (512, 768)
    assert output_paths("out.png", 3) == [Path("out.png"), Path("out-1.png"), Path("out-2.png")]
    assert output_paths("dir/pic", 2) == [Path("dir/pic.png"), Path("dir/pic-1.png")]
