"""DDIM, DDIM CFG++, PLMS and UniPC over A1111's timesteps.

DDIM is checked against diffusers' DDIMScheduler stepped over the same grid with our ᾱ table ("leading"
spacing, offset 1: 951, 901, ..., 1 for 20 steps; A1111 runs all but the last step, which ends at ᾱ[1]),
PLMS against diffusers' PNDMScheduler (PLMS steps only) over the same grid. No independent reference is
run for UniPC (diffusers' UniPC steps over integer timesteps, A1111's over continuous time) or DDIM CFG++:
those are checked for A1111's grid, determinism and batch = alone only, and are documented as unverified.
"""

from __future__ import annotations

import pytest
import torch

from core.engine.rng import ImageRNG
from core.engine.samplers import plan, resolve, sample
from core.engine.sampling import CFGPP_SCALE, NoiseSchedule, combine_cfg, timestep_eps
from core.engine.sampling.timesteps import timesteps

CFG = 7.0
MODEL = NoiseSchedule.ldm()


def _rows(tiny, n):
    return torch.cat([tiny.cond.expand(n, -1, -1), tiny.uncond.expand(n, -1, -1)])


def eps_model(tiny, cfgpp=False, prediction="eps"):
    def model(x, t):
        n = x.shape[0]
        out = timestep_eps(MODEL.alphas_cumprod, prediction, lambda xi, ti: tiny(xi, ti, _rows(tiny, n)),
                           torch.cat([x, x]), torch.cat([t, t]))
        if cfgpp:
            return combine_cfg(out[n:], [out[:n]], [1.0], CFG * CFGPP_SCALE), out[n:]
        return combine_cfg(out[n:], [out[:n]], [1.0], CFG)

    return model


def _run(tiny, name, steps, seeds=(3, 4), strength=None, init=None, eta=None):
    p = plan(resolve(name), steps, MODEL, denoising_strength=strength)
    rng = ImageRNG((4, 8, 8), list(seeds), source="cpu")
    x = p.start(rng.first(), init)
    spec = resolve(name)
    return sample(p, eps_model(tiny, cfgpp=spec.sampler.cfgpp), x, rng=rng, eta=eta), p


def test_a1111_timestep_grid():
    assert timesteps(20).tolist() == list(range(1, 1000, 50))
    assert timesteps(7).tolist()[:3] == [1, 143, 285] and len(timesteps(7)) == 8  # 1000 // 7 = 142
    assert timesteps(1000).tolist()[-1] == 999


@pytest.mark.parametrize("steps", [10, 7])
def test_ddim_matches_diffusers_ddim_scheduler(tiny_unet, steps):
    from diffusers import DDIMScheduler

    ours, p = _run(tiny_unet, "DDIM", steps)
    sched = DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          clip_sample=False, set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading")
    sched.alphas_cumprod = MODEL.alphas_cumprod.clone()
    sched.set_timesteps(steps)  # its step back is 1000 // steps, as A1111's grid
    if 1000 % steps == 0:
        assert sched.timesteps.tolist() == p.run.flip(0).tolist()
    sched.timesteps = p.run.flip(0)  # A1111's grid has 1000 // steps + ... entries when steps does not divide 1000
    rng = ImageRNG((4, 8, 8), [3, 4], source="cpu")
    x = rng.first()
    model = eps_model(tiny_unet)
    for t in sched.timesteps[:-1]:  # A1111 stops one step early, at ᾱ[timesteps[0]]
        x = sched.step(model(x, t.float().expand(x.shape[0])), int(t), x, eta=0.0).prev_sample
    assert (ours - x).abs().max().item() <= 1e-3


@pytest.mark.parametrize("steps", [10, 7])
def test_plms_matches_diffusers_pndm_scheduler(tiny_unet, steps):
    """A1111's PLMS is LDM's: a pseudo improved-Euler first step (two model calls), then Adams-Bashforth on
    ε. diffusers' PNDMScheduler with ``skip_prk_steps`` is the same method (its step is DDIM's in another
    algebraic form); stepped over A1111's grid and stopped one call early (A1111 ends at ᾱ[1]) it is an
    independent reference."""
    import numpy as np
    from diffusers import PNDMScheduler

    ours, p = _run(tiny_unet, "PLMS", steps)
    sched = PNDMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading")
    sched.alphas_cumprod = MODEL.alphas_cumprod.clone()
    sched.set_timesteps(steps)  # its step back is 1000 // steps, as A1111's grid
    grid = p.run.numpy()  # A1111's grid has one more entry than diffusers' when steps does not divide 1000
    sched._timesteps = grid
    sched.plms_timesteps = np.concatenate([grid[:-1], grid[-2:-1], grid[-1:]])[::-1].copy()
    sched.timesteps = torch.from_numpy(sched.plms_timesteps)
    x = ImageRNG((4, 8, 8), [3, 4], source="cpu").first()
    model = eps_model(tiny_unet)
    for t in sched.timesteps[:-1]:
        x = sched.step(model(x, t.float().expand(x.shape[0])), int(t), x).prev_sample
    assert (ours - x).abs().max().item() <= 1e-3


def test_ddim_img2img_noises_to_the_tail_timestep(tiny_unet):
    init = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(1))
    p = plan(resolve("DDIM"), 10, MODEL, denoising_strength=0.5)
    assert (p.steps, p.t_enc) == (10, 5) and p.run.tolist() == [1, 101, 201, 301, 401]
    noise = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(2))
    a = MODEL.alphas_cumprod[501]
    torch.testing.assert_close(p.start(noise, init), init * a.sqrt() + noise * (1 - a).sqrt())


@pytest.mark.parametrize("name", ["DDIM", "DDIM CFG++", "PLMS", "UniPC"])
def test_batch_equals_each_image_alone_and_is_deterministic(tiny_unet, name):
    batch, _ = _run(tiny_unet, name, 6, seeds=(3, 4))
    alone, _ = _run(tiny_unet, name, 6, seeds=(4,))
    again, _ = _run(tiny_unet, name, 6, seeds=(3, 4))
    assert torch.isfinite(batch).all() and torch.equal(batch, again)
    # the UNet's batched float32 sums differ in the last bits; the sampler adds nothing across images
    assert (batch[1] - alone[0]).abs().max().item() <= 1e-3


def test_ddim_eta_draws_image_rng_noise(tiny_unet):
    plain, _ = _run(tiny_unet, "DDIM", 5)
    noisy, _ = _run(tiny_unet, "DDIM", 5, eta=0.5)
    assert not torch.allclose(plain, noisy)


def test_unipc_refuses_fewer_steps_than_its_order(tiny_unet):
    with pytest.raises(ValueError, match="UniPC needs at least"):
        _run(tiny_unet, "UniPC", 2)
