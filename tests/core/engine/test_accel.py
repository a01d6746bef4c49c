"""Compile / offload switches: refused with a warning on a CPU (compile), same images (offload)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from core.engine import accel
from core.engine.diffusers_engine import DiffusersEngine
from core.types import GenerationRequest
from tests.core.engine.conftest import engine_settings

REQUEST = GenerationRequest(
    prompt="a red cat",
    negative_prompt="blurry",
    seed=3,
    width=64,
    height=64,
    steps=3,
    sampler="Euler a",
    rng="cpu",
)


def latents_of(engine: DiffusersEngine, request: GenerationRequest) -> torch.Tensor:
    seen = []
    decode = engine.decode
    engine.decode = lambda model, latents: seen.append(latents.clone()) or decode(model, latents)
    engine.generate(request)
    return seen[0]


def test_cpu_offload_is_accepted_and_changes_no_image(tiny_sd15) -> None:
    plain = DiffusersEngine(engine_settings(tiny_sd15))
    offload = DiffusersEngine(engine_settings(tiny_sd15, cpu_offload=True))
    expected = latents_of(plain, REQUEST)
    got = latents_of(offload, REQUEST)
    model = next(iter(offload.models._models.values()))
    assert offload.models.load_device == torch.device("cpu") and plain.models.load_device is None
    assert all(hasattr(getattr(model.pipe, n), "_hf_hook") for n in ("text_encoder", "unet", "vae"))
    assert torch.equal(expected, got)
    jobs = [REQUEST, REQUEST.replace(seed=4, prompt="a dog")]
    batched, expected_batch = offload.generate_batch(jobs), plain.generate_batch(jobs)
    assert [r.images[0].png for r in batched] == [r.images[0].png for r in expected_batch]
    plain.close()
    offload.close()


def test_compile_on_a_cpu_warns_and_stays_eager(tiny_sd15, caplog) -> None:
    engine = DiffusersEngine(engine_settings(tiny_sd15, compile="cuda-graphs"))
    with caplog.at_level(logging.WARNING, logger="core.engine.accel"):
        result = engine.generate(REQUEST)
    assert "needs CUDA" in caplog.text
    model = next(iter(engine.models._models.values()))
    assert not isinstance(model.pipe.unet, torch._dynamo.eval_frame.OptimizedModule)
    plain = DiffusersEngine(engine_settings(tiny_sd15))
    assert np.array_equal(result.images[0].png, plain.generate(REQUEST).images[0].png)
    engine.close()
    plain.close()


def test_warmup_runs_every_size_and_bucket(tiny_sd15) -> None:
    engine = DiffusersEngine(
        engine_settings(tiny_sd15, warmup_sizes=("64x64", "64x96"), batch_buckets=(1, 3))
    )
    engine.generate(REQUEST.replace(steps=1))
    model = next(iter(engine.models._models.values()))
    report = accel.warmup(engine, model)  # eager here; on CUDA with compile != off it runs at load
    assert list(report["shapes"]) == ["64x64/b1", "64x64/b3", "64x96/b1", "64x96/b3"]
    assert accel.last_warmup(model) is report
    engine.close()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"compile": "fast"}, "engine.compile must be off, default or cuda-graphs"),
        ({"warmup_sizes": ("512",)}, "warm-up size must look like 512x512"),
        ({"warmup_sizes": ("500x512",)}, "multiples of 8"),
        ({"batch_buckets": (0,)}, "batch_buckets must be positive"),
    ],
)
def test_bad_switches_are_refused_at_start(tiny_sd15, changes, message) -> None:
    with pytest.raises(ValueError, match=message):
        DiffusersEngine(engine_settings(tiny_sd15, **changes))
