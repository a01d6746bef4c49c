"""Several jobs in one denoising loop: every image equals its job run alone (decoded floats, 1e-4)."""

from __future__ import annotations

import pytest
import torch

from core.engine import cfg, grouping
from core.engine.diffusers_engine import DiffusersEngine
from core.types import GenerationCancelled, GenerationError, GenerationRequest, GenerationResult, Mode
from tests.core.engine.conftest import engine_settings

TOLERANCE = 1e-4
# One sampler of each kind of per-sample state (these keep CI short): none, ancestral noise, multistep
# history, Brownian tree, history + noise, 2nd order, LMS, UniPC, DDIM, Restart, LCM, DPM fast.
SAMPLERS = [
    "Euler", "Euler a", "DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "Heun", "LMS", "UniPC", "DDIM", "Restart",
    "LCM", "DPM fast",
]  # fmt: skip

BASE = dict(width=64, height=64, steps=4, rng="cpu")
JOBS = [
    GenerationRequest(
        prompt="a red [cat:dog:2] on a chair",
        negative_prompt="blurry",
        cfg_scale=7.0,
        seed=11,
        count=1,
        **BASE,
    ),
    GenerationRequest(
        prompt="a red cat AND a (blue:1.3) chair :0.6",
        negative_prompt="",
        cfg_scale=4.5,
        seed=22,
        count=2,
        **BASE,
    ),
    GenerationRequest(
        prompt="an astronaut",
        negative_prompt="low quality, " * 40,
        cfg_scale=9.0,
        seed=33,
        subseed=7,
        subseed_strength=0.4,
        eta_noise_seed_delta=31337,
        count=1,
        **BASE,
    ),
]


class DecodeSpy:
    """Wraps ``engine.decode`` to keep the latents it decodes (to compare float images, not PNGs)."""

    def __init__(self, engine: DiffusersEngine) -> None:
        self.latents: list[torch.Tensor] = []
        self._decode = engine.decode
        engine.decode = self  # instance attribute: only this engine

    def __call__(self, model, latents):
        self.latents.append(latents.clone())
        return self._decode(model, latents)


@torch.no_grad()
def decoded(engine: DiffusersEngine, latents: torch.Tensor) -> torch.Tensor:
    """The VAE's float image for each latent, one at a time (the reference decode)."""
    vae = next(iter(engine.models._models.values())).pipe.vae  # the loaded model
    return torch.cat(
        [vae.decode(row[None] / vae.config.scaling_factor, return_dict=False)[0] for row in latents]
    )


def max_diff(engine: DiffusersEngine, alone: torch.Tensor, batched: torch.Tensor) -> float:
    a, b = decoded(engine, alone), decoded(engine, batched)
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    return float((a - b).abs().max())


def alone_and_batched(engine: DiffusersEngine, jobs, **kwargs):
    spy = DecodeSpy(engine)
    alone = [engine.generate(job) for job in jobs]
    alone_latents = list(spy.latents)
    spy.latents.clear()
    together = engine.generate_batch(jobs, **kwargs)
    return alone, alone_latents, together, list(spy.latents)


def split(latents: torch.Tensor, counts) -> list[torch.Tensor]:
    return list(latents.split(list(counts)))


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_each_image_equals_its_job_alone(tiny_sd15, sampler) -> None:
    engine = DiffusersEngine(engine_settings(tiny_sd15))
    jobs = [job.replace(sampler=sampler) for job in JOBS]
    alone, alone_latents, together, batch_latents = alone_and_batched(engine, jobs)
    assert len(batch_latents) == 1, "one loop and one VAE call for the whole batch"
    assert engine.last_stats.steps and together[0].timings["batch_jobs"] == 3.0
    pieces = split(batch_latents[0], [j.count for j in jobs])
    worst = 0.0
    for single, latents, piece, result in zip(alone, alone_latents, pieces, together, strict=True):
        assert isinstance(result, GenerationResult)
        assert [i.seed for i in result.images] == [i.seed for i in single.images]
        assert [i.infotext for i in result.images] == [i.infotext for i in single.images]
        worst = max(worst, max_diff(engine, latents, piece))
    assert worst <= TOLERANCE, f"{sampler}: max abs difference {worst}"
    print(f"{sampler}: max abs difference batched vs alone {worst:.2e}")
    assert not torch.allclose(pieces[0], pieces[2], atol=1e-2)  # the jobs really differ
    engine.close()


def test_sdxl_batch_equals_jobs_alone(tiny_sdxl) -> None:
    engine = DiffusersEngine(engine_settings(tiny_sdxl))
    jobs = [JOBS[0], JOBS[1].replace(negative_prompt="ugly")]
    _, alone_latents, _, batch_latents = alone_and_batched(engine, jobs)
    pieces = split(batch_latents[0], [j.count for j in jobs])
    for latents, piece in zip(alone_latents, pieces, strict=True):
        assert max_diff(engine, latents, piece) <= TOLERANCE
    engine.close()


@pytest.mark.parametrize("sampler", ["DPM++ 2M", "DPM++ SDE", "UniPC"])
def test_a_cancelled_job_leaves_the_batch_and_the_others_finish(tiny_sd15, sampler) -> None:
    engine = DiffusersEngine(engine_settings(tiny_sd15))
    jobs = [job.replace(sampler=sampler) for job in JOBS]
    spy = DecodeSpy(engine)
    alone = [engine.generate(job) for job in (jobs[0], jobs[2])]
    alone_latents = list(spy.latents)
    spy.latents.clear()
    progress: dict[int, list[int]] = {0: [], 1: [], 2: []}
    together = engine.generate_batch(
        jobs,
        on_progress=lambda i, p: progress[i].append(p.step),
        should_cancel=lambda i: i == 1 and bool(progress[1]) and progress[1][-1] >= 2,
    )
    assert isinstance(together[1], GenerationCancelled)
    assert progress[0] == progress[2] and progress[0][-1] == 4  # second-order samplers repeat steps
    assert progress[1] == progress[0][: len(progress[1])] and progress[1][-1] == 2
    assert batch_latents_shape(spy) == (2, 4, 8, 8)  # job 1's two images left the batch
    pieces = split(spy.latents[0], [1, 1])
    for latents, piece, single, result in zip(
        alone_latents, pieces, alone, (together[0], together[2]), strict=True
    ):
        assert max_diff(engine, latents, piece) <= TOLERANCE
        assert [i.seed for i in result.images] == [i.seed for i in single.images]
    engine.close()


def batch_latents_shape(spy: DecodeSpy) -> tuple[int, ...]:
    assert len(spy.latents) == 1
    return tuple(spy.latents[0].shape)


def test_a_failing_job_fails_alone(tiny_sd15) -> None:
    engine = DiffusersEngine(engine_settings(tiny_sd15))
    jobs = [
        JOBS[0],
        JOBS[0].replace(prompt="a cat <lora:nosuchlora:1>"),
        JOBS[0].replace(prompt="a [cat"),
        JOBS[2],
    ]
    together = engine.generate_batch(jobs)
    assert isinstance(together[0], GenerationResult) and isinstance(together[3], GenerationResult)
    assert isinstance(together[1], GenerationError) and "nosuchlora" in str(together[1])
    assert isinstance(together[2], GenerationResult)  # "[cat" is literal text in A1111, not an error
    assert together[0].timings["batch_jobs"] == 3.0
    engine.close()


def test_incompatible_jobs_run_one_by_one(tiny_sd15) -> None:
    engine = DiffusersEngine(engine_settings(tiny_sd15))
    jobs = [
        JOBS[0],
        JOBS[0].replace(steps=3),  # another step count
        JOBS[0].replace(prompt="a cat <lora:other:1>"),  # another LoRA set
        JOBS[0].replace(mode=Mode.IMG2IMG),  # not txt2img
        JOBS[1],
    ]
    assert grouping.group_requests(engine.settings, jobs) == [[0, 4], [1], [2], [3]]
    assert grouping.group_requests(engine.settings, [JOBS[0]] * 5, max_images=2) == [[0, 1], [2, 3], [4]]
    # the limit counts images: JOBS[1] makes two
    assert grouping.group_requests(engine.settings, [JOBS[1], JOBS[1], JOBS[1]], max_images=5) == [[0, 1], [2]]
    assert grouping.group_requests(engine.settings, [JOBS[1], JOBS[1]], max_images=1) == [[0], [1]]
    assert grouping.group_requests(engine.settings, [JOBS[0], JOBS[1]], max_images=lambda r: 3) == [[0, 1]]
    assert grouping.group_requests(engine.settings, [JOBS[0], JOBS[0].replace(eta=0.5)]) == [[0], [1]]
    adaptive = JOBS[0].replace(sampler="DPM adaptive")  # its step sizes come from the whole batch: alone
    assert grouping.group_requests(engine.settings, [adaptive, adaptive]) == [[0], [1]]
    results = engine.generate_batch(jobs[:2])
    assert all(isinstance(r, GenerationResult) for r in results)
    assert "batch_jobs" not in results[0].timings  # ran alone through generate()
    engine.close()


def test_an_unexpected_batch_failure_reruns_the_jobs_one_by_one(tiny_sd15, monkeypatch) -> None:
    call = cfg.CFGDenoiser.__call__

    def broken(self, x, t):  # breaks a loop of several jobs only
        if len(self.jobs) > 1:
            raise RuntimeError("boom")
        return call(self, x, t)

    monkeypatch.setattr(cfg.CFGDenoiser, "__call__", broken)
    engine = DiffusersEngine(engine_settings(tiny_sd15))
    results = engine.generate_batch([JOBS[0].replace(steps=2), JOBS[2].replace(steps=2)])
    assert all(isinstance(r, GenerationResult) and "batch_jobs" not in r.timings for r in results)
    engine.close()


def test_engine_max_batch_caps_one_loop(tiny_sd15) -> None:
    engine = DiffusersEngine(engine_settings(tiny_sd15, max_batch=2))
    jobs = [JOBS[0].replace(steps=1, seed=seed) for seed in (1, 2, 3)]
    results = engine.generate_batch(jobs)
    assert [r.timings.get("batch_jobs") for r in results] == [2.0, 2.0, None]
    assert [r.images[0].seed for r in results] == [1, 2, 3]
    engine.close()


def test_rows_padded_to_compile_buckets_change_no_image(tiny_sd15) -> None:
    engine = DiffusersEngine(engine_settings(tiny_sd15))
    engine.unet_row_buckets = (4, 16)  # set by core.engine.accel for a compiled UNet on CUDA
    calls = []
    engine.generate(JOBS[0].replace(steps=1))  # loads the model
    model = next(iter(engine.models._models.values()))
    unet_forward = model.pipe.unet.forward
    model.pipe.unet.forward = lambda x, *a, **k: calls.append(x.shape[0]) or unet_forward(x, *a, **k)
    jobs = [job.replace(sampler="Euler a") for job in JOBS]
    _, alone_latents, _, batch_latents = alone_and_batched(engine, jobs)
    batched_calls = calls[-8:]  # 4 steps, two token lengths each
    assert set(batched_calls) <= {4, 16}
    for latents, piece in zip(alone_latents, split(batch_latents[0], [j.count for j in jobs]), strict=True):
        assert max_diff(engine, latents, piece) <= TOLERANCE
    engine.close()
