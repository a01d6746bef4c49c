"""Batch sizing from free VRAM (core.engine.memory), VAE decode in chunks, PNGs encoded in parallel."""

from __future__ import annotations

import os

import pytest
import torch

from core.engine import memory
from core.engine.diffusers_engine import DiffusersEngine
from core.types import GenerationRequest
from tests.core.engine.conftest import engine_settings

GiB = 2**30
JOB = GenerationRequest(prompt="a red cat", width=64, height=64, steps=2, seed=5, rng="cpu")


def test_capacity_divides_the_usable_free_memory() -> None:
    footprint = memory.Footprint(per_image=1 * GiB, fixed=GiB // 2, decode=3 * GiB)
    # 85 % of 20 GiB = 17 GiB, minus the fixed 0.5 GiB -> 16 images of 1 GiB
    assert memory.capacity(20 * GiB, footprint) == 16
    assert memory.capacity(20 * GiB, footprint, ceiling=10) == 10
    assert memory.capacity(20 * GiB, footprint, buckets=(1, 2, 4, 8)) == 8
    assert memory.capacity(20 * GiB, footprint, buckets=(1, 3, 6, 12)) == 12
    assert memory.capacity(GiB, footprint) == 1  # not even one fits: the job still runs, alone
    assert memory.capacity(0, footprint, buckets=(2, 4)) == 1
    assert memory.capacity(10**15, footprint) == memory.AUTO_MAX


def test_measure_runs_the_unet_at_one_and_two_images_and_one_decode_chunk(tiny_sd15) -> None:
    """The footprint comes from metering real runs: per image = peak(2 images) - peak(1 image)."""
    engine = DiffusersEngine(engine_settings(tiny_sd15, vae_decode_batch=3))
    engine.generate(JOB)  # loads the model
    model = next(iter(engine.models._models.values()))
    seen: list[tuple[str, tuple[int, ...]]] = []
    hooks = [
        model.pipe.unet.register_forward_pre_hook(lambda m, args: seen.append(("unet", tuple(args[0].shape)))),
        model.pipe.vae.decoder.register_forward_pre_hook(
            lambda m, args: seen.append(("vae", tuple(args[0].shape)))
        ),
    ]

    def meter(device, run) -> int:  # pretend bytes: 1000 per UNet row + 500, 7000 per decoded latent
        start = len(seen)
        run()
        kind, shape = seen[start]
        return shape[0] * 1000 + 500 if kind == "unet" else shape[0] * 7000

    try:
        footprint = memory.measure(engine, model, 96, 64, peak=meter)
    finally:
        for hook in hooks:
            hook.remove()
    # one unmetered UNet run first (lazy allocations, offloaded weights moving in)
    assert seen == [
        ("unet", (2, 4, 8, 12)),
        ("unet", (2, 4, 8, 12)),
        ("unet", (4, 4, 8, 12)),
        ("vae", (3, 4, 8, 12)),
    ]
    assert footprint == memory.Footprint(per_image=2000, fixed=500, decode=21000)
    # a meter that sees no growth from 1 to 2 images: every byte counts per image (never "free")
    flat = memory.measure(engine, model, 64, 64, peak=lambda device, run: (run(), 4000)[1])
    assert flat == memory.Footprint(per_image=4000, fixed=0, decode=4000)
    engine.close()


def test_engine_capacity_is_the_setting_or_the_cpu_default(tiny_sd15) -> None:
    engine = DiffusersEngine(engine_settings(tiny_sd15, max_batch=3))
    assert engine.batch_capacity(JOB) == 3
    engine.close()
    engine = DiffusersEngine(engine_settings(tiny_sd15, max_batch=0))
    assert engine.batch_capacity(JOB) == memory.CPU_AUTO
    engine.close()
    with pytest.raises(ValueError, match="max_batch"):
        DiffusersEngine(engine_settings(tiny_sd15, max_batch=-1))
    with pytest.raises(ValueError, match="vae_decode_batch"):
        DiffusersEngine(engine_settings(tiny_sd15, vae_decode_batch=-2))


@pytest.mark.parametrize("chunk", [1, 2])
def test_decoding_in_chunks_gives_the_same_images(tiny_sd15, chunk) -> None:
    whole = DiffusersEngine(engine_settings(tiny_sd15, vae_decode_batch=0))
    chunked = DiffusersEngine(engine_settings(tiny_sd15, vae_decode_batch=chunk))
    whole.generate(JOB)
    chunked.generate(JOB)
    model_whole = next(iter(whole.models._models.values()))
    model_chunked = next(iter(chunked.models._models.values()))
    latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    calls: list[int] = []
    hook = model_chunked.pipe.vae.decoder.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
    try:
        a = whole.decode_latents(model_whole, latents)
        b = chunked.decode_latents(model_chunked, latents)
    finally:
        hook.remove()
    assert calls == ([1, 1, 1] if chunk == 1 else [2, 1])
    assert a.shape == b.shape == (3, 3, 64, 64)
    assert (a - b).abs().max().item() <= 1e-5
    whole.close()
    chunked.close()


def test_parallel_png_encoding_keeps_every_image_with_its_own_seed(tiny_sd15) -> None:
    import io

    from PIL import Image

    engine = DiffusersEngine(engine_settings(tiny_sd15))
    together = engine.generate(JOB.replace(count=3))
    alone = engine.generate(JOB.replace(seed=6))  # image 2 of the batch, on its own
    assert [image.seed for image in together.images] == [5, 6, 7]
    pixels = []
    for image in together.images:
        with Image.open(io.BytesIO(image.png)) as png:
            assert f"Seed: {image.seed}," in png.text["parameters"]
            pixels.append(png.convert("RGB").tobytes())
    assert len(set(pixels)) == 3
    with Image.open(io.BytesIO(alone.images[0].png)) as png:
        single = png.convert("RGB").tobytes()
    # the second PNG holds the second image (a seed of its own gives the same pixels, up to rounding)
    diff = [abs(a - b) for a, b in zip(pixels[1], single, strict=True)]
    assert max(diff) <= 1
    assert max(abs(a - b) for a, b in zip(pixels[0], single, strict=True)) > 1
    engine.close()


def test_preload_loads_the_default_model_before_the_first_job(tiny_sd15) -> None:
    engine = DiffusersEngine(engine_settings(tiny_sd15))
    assert not engine.models._models
    report = engine.preload()
    assert report["model"] == "tiny" and report["load_s"] > 0
    assert "warmup" not in report  # compile is off: nothing to warm up
    loaded = list(engine.models._models.values())
    assert len(loaded) == 1
    result = engine.generate(JOB)
    assert list(engine.models._models.values()) == loaded  # the job used the preloaded model
    assert result.timings["load"] < report["load_s"]
    engine.close()


def test_preloading_in_a_thread_while_another_thread_lists_samplers(tiny_sd15) -> None:
    """diffusers' lazy imports are not thread-safe; the engine resolves them where it is built.

    Without that, this exact sequence (what ``chant run`` does at start) failed with
    "cannot import name 'StableDiffusionPipeline'" in the preload thread, or with a scheduler class
    missing from diffusers for every later job. Fresh interpreter: imports are per process.
    """
    import subprocess
    import sys

    code = f"""
import threading
from core.config import EngineSettings, ModelSettings
from core.engine import create_engine
from core.types import GenerationRequest
model = ModelSettings(source={str(tiny_sd15.single_file)!r}, config={str(tiny_sd15.config)!r})
engine = create_engine(EngineSettings(device="cpu", models={{"tiny": model}}, default_model="tiny",
                                      embedding_dirs=()))
errors = []
def preload():
    try:
        engine.preload()
    except Exception as exc:
        errors.append(repr(exc))
thread = threading.Thread(target=preload)
thread.start()
import diffusers
from core.engine import samplers
engine.sampler_names()
samplers.resolve("Euler a", None)
samplers.is_second_order("Euler a")
thread.join()
assert not errors, errors
result = engine.generate(GenerationRequest(prompt="a cat", sampler="Euler a", steps=1, width=64, height=64))
print("ok", len(result.images))
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok 1")
