"""Every sampler × schedule type against k-diffusion 0.0.16 (A1111 1.10's sampler code) on a tiny fp32 UNet.

Both sides get the same sigmas (A1111's, from our table ``core.engine.samplers``), the same CFG (A1111's CFGDenoiser arithmetic
on x₀), the same ImageRNG (A1111's TorchHijack: k-diffusion's ``torch.randn_like`` is ``ImageRNG.next()``)
and, for the SDE samplers, k-diffusion's own ``BrownianTreeNoiseSampler`` seeded with the image seeds over
the full schedule, as A1111's ``create_noise_sampler``. The oracle's denoiser is k-diffusion's
``CompVisDenoiser`` / ``CompVisVDenoiser``. Final latents must agree within 1e-3.

No independent reference exists for Restart from 20 steps on (A1111's own restart list over Karras
segments; below 20 steps it is plain Heun and is checked against k-diffusion's Heun) nor for LCM (A1111's
LCM denoiser and sampler): those are checked for determinism and batch = alone only, and documented as
unverified. The timesteps samplers are in test_timesteps.py.
"""

from __future__ import annotations

import inspect

import pytest
import torch

from core.engine.rng import ImageRNG
from core.engine.samplers import plan, resolve, sample
from core.engine.sampling import SCHEDULE_TYPES, NoiseSchedule, combine_cfg
from tests.core.engine.sampling.conftest import hijacked_randn

CFG = 7.0
TOL = 1e-3
K_SAMPLERS = {
    "Euler a": "sample_euler_ancestral", "Euler": "sample_euler", "LMS": "sample_lms", "Heun": "sample_heun",
    "DPM2": "sample_dpm_2", "DPM2 a": "sample_dpm_2_ancestral", "DPM++ 2S a": "sample_dpmpp_2s_ancestral",
    "DPM++ 2M": "sample_dpmpp_2m", "DPM++ SDE": "sample_dpmpp_sde", "DPM++ 2M SDE": "sample_dpmpp_2m_sde",
    "DPM++ 2M SDE Heun": "sample_dpmpp_2m_sde", "DPM++ 3M SDE": "sample_dpmpp_3m_sde",
    "DPM fast": "sample_dpm_fast", "DPM adaptive": "sample_dpm_adaptive",
}


def _rows(tiny, n):
    return torch.cat([tiny.cond.expand(n, -1, -1), tiny.uncond.expand(n, -1, -1)])


def ours_model(tiny, schedule, cfg=CFG):
    def denoise(x, sigma):
        n = x.shape[0]
        out = schedule.denoise(lambda xi, t: tiny(xi, t, _rows(tiny, n)), torch.cat([x, x]), torch.cat([sigma, sigma]))
        return combine_cfg(out[n:], [out[:n]], [1.0], cfg)

    return denoise


def oracle_model(kd, tiny, schedule, cfg=CFG):
    class Inner:
        alphas_cumprod = schedule.alphas_cumprod

        def apply_model(self, x, t, cond):
            return tiny(x, t, cond)

    wrap_cls = kd.external.CompVisVDenoiser if schedule.prediction == "v" else kd.external.CompVisDenoiser
    wrap = wrap_cls(Inner(), quantize=False)

    def denoise(x, sigma):
        n = x.shape[0]
        out = wrap(torch.cat([x, x]), torch.cat([sigma, sigma]), cond=_rows(tiny, n))
        uncond = out[n:]
        denoised = torch.clone(uncond)
        for i in range(n):
            denoised[i] += (out[i] - uncond[i]) * (1.0 * cfg)
        return denoised

    return denoise


def run_pair(kd, tiny, name, schedule_type, *, steps=7, seeds=(11, 12), shape=(4, 8, 8), source="cpu", ensd=0,
             eta=None, strength=None, prediction="eps", extras=None):
    """(ours, oracle) final latents for one configuration."""
    extras = extras or {}
    model = NoiseSchedule.ldm(prediction)
    spec = resolve(name, schedule_type)
    p = plan(spec, steps, model, denoising_strength=strength)
    init = None
    if strength is not None:
        init = torch.randn((len(seeds), *shape), generator=torch.Generator().manual_seed(99))

    def fresh_rng():
        return ImageRNG(shape, list(seeds), source=source, eta_noise_seed_delta=ensd)

    rng = fresh_rng()
    x = p.start(rng.first(), init)
    ours = sample(p, ours_model(tiny, model), x, rng=rng, eta=eta, **extras)

    rng = fresh_rng()
    x = p.start(rng.first(), init)
    fn = getattr(kd.sampling, K_SAMPLERS[name])
    kwargs = {k: v for k, v in extras.items() if k in spec.sampler.extras}
    kwargs.update(spec.sampler.options)
    if spec.sampler.takes_eta:
        kwargs["eta"] = spec.sampler.default_eta if eta is None else eta
    if spec.sampler.brownian:
        kwargs["noise_sampler"] = kd.sampling.BrownianTreeNoiseSampler(
            x, p.sigmas[p.sigmas > 0].min(), p.sigmas.max(), seed=list(seeds))
    if spec.sampler.kind == "dpm":
        if strength is None:
            kwargs.update(sigma_min=model.sigma_min, sigma_max=model.sigma_max)
            n = steps
        else:
            kwargs.update(sigma_min=p.run[-2], sigma_max=p.run[0])
            n = len(p.run) - 1
        if "n" in inspect.signature(fn).parameters:
            kwargs["n"] = n
    else:
        kwargs["sigmas"] = p.run
    with hijacked_randn(kd.sampling, rng):
        oracle = fn(oracle_model(kd, tiny, model), x, disable=True, **kwargs)
    return ours, oracle


def _check(ours, oracle):
    assert torch.isfinite(ours).all()
    delta = (ours - oracle).abs().max().item()
    assert delta <= TOL, f"max |Δ| {delta:.2e} (latents up to {oracle.abs().max().item():.1f})"


# DPM fast/adaptive take the model's σ range, not the schedule: one schedule type is enough for them.
SIGMA_LIST_SAMPLERS = [n for n in K_SAMPLERS if n not in ("DPM fast", "DPM adaptive")]


@pytest.mark.slow
@pytest.mark.parametrize("schedule_type", list(SCHEDULE_TYPES))
@pytest.mark.parametrize("name", SIGMA_LIST_SAMPLERS)
def test_every_sampler_and_schedule_matches_k_diffusion(kd, tiny_unet, name, schedule_type):
    # 4 steps (5 with a discarded sigma) exercise every multistep order; 7 steps (not a divisor of 1000) below.
    # One image per pair keeps the matrix cheap; batches are the 20-step test's and the pipeline's.
    _check(*run_pair(kd, tiny_unet, name, schedule_type, steps=4, seeds=(11,)))


@pytest.mark.slow
@pytest.mark.parametrize("schedule_type", ["Automatic", "DDIM", "Simple", "SGM Uniform"])
def test_seven_steps(kd, tiny_unet, schedule_type):
    for name in ("DPM++ 2M", "DPM++ 3M SDE", "Euler a", "LMS"):
        _check(*run_pair(kd, tiny_unet, name, schedule_type, steps=7, seeds=(21,)))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(K_SAMPLERS))
def test_20_steps_non_square_batch_of_two(kd, tiny_unet, name):
    _check(*run_pair(kd, tiny_unet, name, "Automatic", steps=20, seeds=(5, 6), shape=(4, 8, 12)))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(K_SAMPLERS))
def test_img2img_tail(kd, tiny_unet, name):
    _check(*run_pair(kd, tiny_unet, name, "Automatic", steps=10, strength=0.55))


@pytest.mark.parametrize("name", ["Euler a", "DPM2 a", "DPM++ 2S a", "DPM++ SDE", "DPM++ 2M SDE", "DPM fast"])
def test_ensd_and_eta(kd, tiny_unet, name):
    _check(*run_pair(kd, tiny_unet, name, "Automatic", steps=6, ensd=31337, eta=0.6))


@pytest.mark.parametrize("name", ["DPM++ 2M", "Euler a", "DPM++ 2M SDE"])
def test_v_prediction(kd, tiny_unet, name):
    _check(*run_pair(kd, tiny_unet, name, "Karras", steps=6, prediction="v"))


@pytest.mark.parametrize("name", ["Euler", "Heun", "DPM2"])
def test_churn(kd, tiny_unet, name):
    extras = {"s_churn": 0.5, "s_tmin": 0.5, "s_tmax": 10.0, "s_noise": 1.003}
    _check(*run_pair(kd, tiny_unet, name, "Karras", steps=6, extras=extras))


def test_30_steps_hires_tail(kd, tiny_unet):
    # hires fix passes its steps: int(steps / strength) schedule, steps - 1 = t_enc
    spec = resolve("DPM++ 2M", "Karras")
    p = plan(spec, 30, NoiseSchedule.ldm(), denoising_strength=0.7, fixed_steps=True)
    assert (p.steps, p.t_enc, len(p.run)) == (42, 29, 31)
    _check(*run_pair(kd, tiny_unet, "DPM++ 2M", "Karras", steps=30, strength=0.7))


def test_restart_below_20_steps_is_heun(kd, tiny_unet):
    model = NoiseSchedule.ldm()
    p = plan(resolve("Restart"), 8, model)
    rng = ImageRNG((4, 8, 8), [3, 4], source="cpu")
    ours = sample(p, ours_model(tiny_unet, model), p.start(rng.first()), rng=rng)
    rng = ImageRNG((4, 8, 8), [3, 4], source="cpu")
    x = p.start(rng.first())
    oracle = kd.sampling.sample_heun(oracle_model(kd, tiny_unet, model), x, p.run, disable=True)
    _check(ours, oracle)
