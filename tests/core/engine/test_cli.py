"""``chant generate`` in a real subprocess on the tiny single-file model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
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
    assert main(["generate", "a cat", *common, "--size", "60x64"]) == 2  # refused before torch loads
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


def _config(tmp_path: Path, tiny) -> Path:
    config = tmp_path / "chant.toml"
    config.write_text(
        '[engine]\ndevice = "cpu"\nthreads = 1\nembedding_dirs = []\n'
        f'[engine.models.tiny]\nsource = "{tiny.single_file}"\nconfig = "{tiny.config}"\n'
    )
    return config


def test_infotext_reproduces_an_image_and_options_override_it(
    tiny_sd15, tmp_path, capsys, monkeypatch
) -> None:
    import io

    from core.cli import main

    monkeypatch.chdir(tmp_path)
    config = ["--config", str(_config(tmp_path, tiny_sd15))]
    first = ["generate", "a small (red:1.2) boat", "--negative", "fog, rain", "--steps", "3", "--cfg", "6.5"]
    first += ["--sampler", "Euler", "--seed", "42", "--size", "64x64", "--clip-skip", "2", "--rng", "cpu"]
    assert main([*config, *first, "-o", "a.png"]) == 0
    text = Image.open(tmp_path / "a.png").info["parameters"]
    # the PNG itself: the same settings give the same image, bit for bit
    assert main([*config, "generate", "--infotext", "a.png", "-o", "b.png"]) == 0
    assert (tmp_path / "b.png").read_bytes() == (tmp_path / "a.png").read_bytes()
    # the text (from standard input), with options that override it
    monkeypatch.setattr("sys.stdin", io.StringIO(text))
    assert main([*config, "generate", "--infotext", "-", "--seed", "7", "--steps", "2", "-o", "c.png"]) == 0
    changed = Image.open(tmp_path / "c.png").info["parameters"]
    assert changed == text.replace("Steps: 3", "Steps: 2").replace("Seed: 42", "Seed: 7")
    capsys.readouterr()
    # an A1111 text whose model is not configured: said plainly, nothing generated
    a1111 = text.replace("Model: tiny", "Model: v1-5-pruned-emaonly").replace("Model hash: ", "Model hash: 0")
    assert main([*config, "generate", "--infotext", a1111, "-o", "d.png"]) == 2
    err = capsys.readouterr().err
    assert "model v1-5-pruned-emaonly" in err and "is not here (known: tiny)" in err
    assert not (tmp_path / "d.png").exists()
    assert main([*config, "generate", "--infotext", "missing.png"]) == 2
    assert "no such file: missing.png" in capsys.readouterr().err
    assert main([*config, "generate"]) == 2
    assert "give a prompt (or --infotext)" in capsys.readouterr().err


def test_infotext_model_is_matched_by_hash(tiny_sd15, tmp_path) -> None:
    import hashlib

    from core.config import EngineSettings, ModelSettings
    from core.engine.cli import match_model

    settings = EngineSettings(models={"mine": ModelSettings(source=str(tiny_sd15.single_file))})
    digest = hashlib.sha256(Path(tiny_sd15.single_file).read_bytes()).hexdigest()
    assert match_model(settings, "someone-elses-name", digest[:10]) == "mine"
    assert match_model(settings, "MINE", None) == "mine"
    assert match_model(settings, None, None) is None


_NO_TORCH = """
import sys
from bot.cli import main
rc = main(sys.argv[1:])
loaded = [m for m in ("torch", "diffusers", "transformers") if m in sys.modules]
print("LOADED:", loaded, file=sys.stderr)
sys.exit(rc)
"""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--size", "500x512"], "--size width must be a multiple of 8 from 64 to 4096, not 500"),
        (["--size", "512"], "size must look like 512x768"),
        (["--steps", "0"], "--steps must be from 1 to 150, not 0"),
        (["-n", "99"], "--count must be from 1 to 16, not 99"),
        (["--clip-skip", "13"], "--clip-skip must be from 1 to 12"),
        (["--cfg", "1e9"], "--cfg must be from -100 to 100"),
        (["--strength", "2"], "--strength must be from 0 to 1"),
        (["--hires", "--hr-upscaler", "ESRGAN"], "--hr-upscaler must be one of Latent"),
        (["--negative", "x" * 7000], "--negative: the prompt has 7000 characters"),
        (["--seed", "-5"], "--seed (-1 = random) must be from 0 to 4294967295"),
        (["--cfg-rescale", "1.5"], "--cfg-rescale must be from 0 to 1, not 1.5"),
        (["--eta", "-1"], "--eta must be from 0 to 1"),
        (["--detailer", "face_yolov8n.pt"], "(or generate without it: --detailer none)"),
        (["--face-restore", "GFPGAN"], "(or generate without it: --face-restore none)"),
    ],
)
def test_bad_arguments_fail_before_torch_is_imported(tmp_path: Path, args, message) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _NO_TORCH, "generate", "a cat", *args],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), "CHANT_CONFIG": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "LOADED: []" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_prompt_syntax_fails_before_torch(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _NO_TORCH, "generate", "a (cat:1.2.3)"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), "CHANT_CONFIG": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "chant generate: prompt: '1.2.3' is not a number (column 8)" in proc.stderr
    assert "LOADED: []" in proc.stderr


def test_an_unknown_sampler_fails_before_the_model_loads(tmp_path: Path) -> None:
    """The sampler table lives with the schedulers (torch), so it is checked after the import and
    before any model is read: a model path that does not exist is never reached."""
    proc = _run(
        ["generate", "a cat", "--sampler", "Euler z", "--model", str(tmp_path / "nope.safetensors")], tmp_path
    )
    assert proc.returncode == 2
    assert "unknown sampler 'Euler z'" in proc.stderr
    assert "nope" not in proc.stderr


def test_help_shows_defaults(capsys) -> None:
    from core.cli import main

    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    out = capsys.readouterr().out
    for shown in ("default 20", "(default Automatic)", "denoising strength (0.75)", "Latent (default)"):
        assert shown in " ".join(out.split()), shown


def test_the_models_defaults_fill_what_the_options_leave_out(tiny_sd15, tmp_path, monkeypatch) -> None:
    from core.cli import main

    monkeypatch.chdir(tmp_path)
    config = tmp_path / "chant.toml"
    config.write_text(
        '[engine]\ndevice = "cpu"\nthreads = 1\nembedding_dirs = []\n'
        f'[engine.models.tiny]\nsource = "{tiny_sd15.single_file}"\nconfig = "{tiny_sd15.config}"\n'
        'size = "64x64"\nsteps = 2\ncfg = 5.0\ncfg_rescale = 0.5\nsampler = "Euler"\nschedule = "Karras"\n'
        "clip_skip = 2\n"
        'negative = "fog"\nprompt_prefix = "masterpiece"\nprompt_suffix = "sharp"\n'
    )
    assert main(["--config", str(config), "generate", "a cat", "--seed", "1", "-o", "a.png"]) == 0
    text = Image.open(tmp_path / "a.png").info["parameters"]
    assert text.startswith("masterpiece, a cat, sharp\nNegative prompt: fog\nSteps: 2, Sampler: Euler, ")
    for part in ("Schedule type: Karras", "CFG scale: 5", "CFG Rescale: 0.5", "Size: 64x64", "Clip skip: 2"):
        assert part in text, part
    # Options given win over the model's defaults.
    given = [
        "--steps",
        "3",
        "--cfg",
        "6",
        "--schedule",
        "Automatic",
        "--negative",
        "rain",
        "--size",
        "64x128",
    ]
    given += ["--cfg-rescale", "0"]
    assert main(["--config", str(config), "generate", "a cat", "--seed", "1", *given, "-o", "b.png"]) == 0
    text = Image.open(tmp_path / "b.png").info["parameters"]
    assert text.startswith("masterpiece, a cat, sharp\nNegative prompt: rain\nSteps: 3, Sampler: Euler, ")
    assert "CFG scale: 6" in text and "Size: 64x128" in text and "Schedule type: Automatic" in text
    assert "CFG Rescale" not in text  # 0 = off, given: not written


def test_infotext_reproduces_a1111_samplers_schedules_eta_ensd_rescale_and_variation(
    tiny_sd15, tmp_path, monkeypatch
):
    """The second image of a variation batch made with an SDE sampler on a chosen schedule type, eta, ENSD and
    CFG rescale: its PNG's parameters alone give it again (A1111's all_seeds: the job's seed, variation seed
    + 1), to one 8-bit level: the first run's UNet summed two images at once, the second one."""
    import numpy as np

    from core.cli import main

    monkeypatch.chdir(tmp_path)
    config = ["--config", str(_config(tmp_path, tiny_sd15))]
    options = ["--sampler", "DPM++ 2M SDE", "--schedule", "Karras", "--eta", "0.6", "--ensd", "31337"]
    options += [
        "--cfg-rescale",
        "0.5",
        "--seed",
        "42",
        "--steps",
        "4",
        "--size",
        "64x64",
        "--rng",
        "cpu",
        "-n",
        "2",
    ]
    variation = [
        "--infotext",
        "Steps: 4, Sampler: Euler, Seed: 42, Variation seed: 9, Variation seed strength: 0.3",
    ]
    assert main([*config, "generate", "a boat", *options, *variation, "-o", "a.png"]) == 0
    text = Image.open(tmp_path / "a-1.png").info["parameters"]
    assert "Sampler: DPM++ 2M SDE, Schedule type: Karras" in text and "Seed: 42," in text
    assert "Variation seed: 10, Variation seed strength: 0.3" in text and "CFG Rescale: 0.5" in text
    assert "Eta: 0.6" in text and "ENSD" not in text  # A1111 writes ENSD for its ancestral samplers only
    assert main([*config, "generate", "--infotext", "a-1.png", "-o", "b.png"]) == 0
    again, first = (np.asarray(Image.open(tmp_path / f), dtype=np.int16) for f in ("b.png", "a-1.png"))
    assert np.abs(again - first).max() <= 1 and (again != first).mean() < 0.01


def test_control_and_reference_images_and_their_infotext_round_trip(
    tiny_sd15, tmp_path, capsys, monkeypatch
) -> None:
    """``--control IMAGE --control-type canny``: the unit's infotext is written; ``--infotext`` with the
    same ``--control`` image reproduces the PNG bit for bit; a unit read from an infotext needs its image."""
    import numpy as np
    from diffusers import StableDiffusionPipeline

    from core.cli import main
    from core.testing.tiny_control import tiny_controlnet

    monkeypatch.chdir(tmp_path)
    controlnets = tmp_path / "ControlNet"
    unet = StableDiffusionPipeline.from_pretrained(str(tiny_sd15.folder), local_files_only=True).unet
    tiny_controlnet(unet, seed=1).save_pretrained(str(controlnets / "control_tiny_canny"))
    config = _config(tmp_path, tiny_sd15)
    config.write_text(
        config.read_text().replace("[engine]\n", f'[engine]\ncontrolnet_dirs = ["{controlnets}"]\n', 1)
    )
    square = np.zeros((64, 64, 3), dtype=np.uint8)
    square[16:48, 16:48] = 255
    Image.fromarray(square).save(tmp_path / "square.png")
    common = ["--config", str(config), "generate"]
    first = ["a boat", "--steps", "3", "--sampler", "Euler", "--seed", "5", "--size", "64x64", "--rng", "cpu"]
    control = [
        "--control",
        "square.png",
        "--control-type",
        "canny",
        "--control-weight",
        "0.7",
        "--control-end",
        "0.5",
    ]
    assert main([*common, *first, *control, "-o", "a.png"]) == 0
    text = Image.open(tmp_path / "a.png").info["parameters"]
    assert 'ControlNet 0: "Module: canny, Model: control_tiny_canny [' in text, text
    assert "Weight: 0.7" in text and "Guidance End: 0.5" in text
    assert main([*common, *first, "-o", "plain.png"]) == 0
    assert (tmp_path / "plain.png").read_bytes() != (tmp_path / "a.png").read_bytes()
    assert main([*common, "--infotext", "a.png", "--control", "square.png", "-o", "b.png"]) == 0
    assert (tmp_path / "b.png").read_bytes() == (tmp_path / "a.png").read_bytes()
    capsys.readouterr()
    assert main([*common, "--infotext", "a.png", "-o", "c.png"]) == 2
    assert "give as many --control images" in capsys.readouterr().err
    assert main([*common, *first, "--control", "square.png", "--control-type", "sketchy"]) == 2
    assert "--control-type 'sketchy'" in capsys.readouterr().err


def test_an_infotexts_detailer_and_face_restoration_are_kept_or_turned_off(tmp_path: Path) -> None:
    """A pasted A1111 infotext with ADetailer / face restoration asks for them (and is refused, naming
    the option, when this machine lacks the models); ``none`` generates without them."""
    from core.cli import build_parser
    from core.config import Settings
    from core.engine.cli import request_from_args

    text = (
        "a cat\nSteps: 4, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64, "
        "Face restoration: GFPGAN, ADetailer model: face_yolov8n.pt, ADetailer denoising strength: 0.3"
    )
    settings = Settings()

    def request(*extra: str):
        args = build_parser().parse_args(["generate", "--infotext", text, *extra])
        return request_from_args(args, settings.engine)[0]

    kept = request()
    assert (kept.face_restoration, kept.detailer, kept.detailer_strength) == (
        "GFPGAN",
        "face_yolov8n.pt",
        0.3,
    )
    off = request("--detailer", "none", "--face-restore", "None")
    assert (off.face_restoration, off.detailer) == ("", "")
