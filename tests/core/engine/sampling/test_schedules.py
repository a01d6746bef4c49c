"""Schedule types: against k-diffusion 0.0.16 / diffusers where they have the type, properties for all."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.engine.sampling import SCHEDULE_TYPES, NoiseSchedule, ScheduleOptions, schedule_type
from core.engine.sampling.model import ZTSNR_FINAL_ALPHA_BAR, LCMSchedule, ldm_alphas_cumprod
from core.engine.sampling.schedules import AYS_SD1, AYS_SDXL, compute

MODEL = NoiseSchedule.ldm()


def sigmas(label, n, model=MODEL, **options):
    return compute(schedule_type(label), n, model, ScheduleOptions(**options))


def test_alphas_cumprod_are_the_ldm_table_in_float32():
    from diffusers import DDPMScheduler

    ac = ldm_alphas_cumprod()
    assert ac.dtype == torch.float32 and ac.shape == (1000,)
    # diffusers builds the same schedule ("scaled_linear") in float32 arithmetic: equal to float32 rounding
    ref = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear").alphas_cumprod
    torch.testing.assert_close(ac, ref, rtol=2e-6, atol=0)
    assert MODEL.sigma_min == pytest.approx(0.0291675, abs=1e-6) and MODEL.sigma_max == pytest.approx(14.614642, abs=1e-5)


def test_zero_terminal_snr_pins_a1111s_last_alpha():
    from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr

    model = NoiseSchedule.ldm("v", zero_terminal_snr=True)
    assert model.alphas_cumprod[-1].item() == np.float32(ZTSNR_FINAL_ALPHA_BAR)
    assert model.sigma_max == pytest.approx(((1 - 4.8973451890853435e-08) / 4.8973451890853435e-08) ** 0.5, rel=1e-4)
    # every other ᾱ as diffusers' rescale (same algorithm, from betas) gives it
    betas = 1 - ldm_alphas_cumprod().double() / torch.cat([torch.ones(1), ldm_alphas_cumprod()[:-1]]).double()
    ref = torch.cumprod(1 - rescale_zero_terminal_snr(betas), 0)
    torch.testing.assert_close(model.alphas_cumprod[:-1].double(), ref[:-1], rtol=1e-4, atol=1e-7)


def test_sigma_to_t_is_continuous_and_matches_k_diffusion(kd):
    wrap = kd.external.DiscreteEpsDDPMDenoiser(None, ldm_alphas_cumprod(), quantize=False)
    s = torch.tensor([14.6, 7.3, 1.0, 0.5, 0.0292, 3.3333])
    assert torch.equal(MODEL.sigma_to_t(s), wrap.sigma_to_t(s))
    assert not torch.equal(MODEL.sigma_to_t(s), MODEL.sigma_to_t(s).round())
    t = torch.tensor([999.0, 500.25, 3.5, 0.0])
    assert torch.equal(MODEL.t_to_sigma(t), wrap.t_to_sigma(t))


@pytest.mark.parametrize("n", [1, 7, 20, 30])
def test_karras_exponential_polyexponential_uniform_match_k_diffusion(kd, n):
    wrap = kd.external.DiscreteEpsDDPMDenoiser(None, ldm_alphas_cumprod(), quantize=False)
    lo, hi = MODEL.sigma_min, MODEL.sigma_max
    assert torch.equal(sigmas("Karras", n), kd.sampling.get_sigmas_karras(n, lo, hi, rho=7.0))
    assert torch.equal(sigmas("Karras", n, rho=5.0), kd.sampling.get_sigmas_karras(n, lo, hi, rho=5.0))
    assert torch.equal(sigmas("Exponential", n), kd.sampling.get_sigmas_exponential(n, lo, hi))
    assert torch.equal(sigmas("Polyexponential", n), kd.sampling.get_sigmas_polyexponential(n, lo, hi, rho=1.0))
    assert torch.equal(sigmas("Uniform", n), wrap.get_sigmas(n))


@pytest.mark.parametrize("n", [7, 20])
def test_beta_matches_diffusers(n):
    from diffusers import EulerDiscreteScheduler

    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    ref = sched._convert_to_beta(torch.tensor([MODEL.sigma_max, MODEL.sigma_min]), n, alpha=0.6, beta=0.6)
    torch.testing.assert_close(sigmas("Beta", n)[:-1], torch.as_tensor(ref, dtype=torch.float32), rtol=1e-6, atol=0)


def test_align_your_steps_tables_are_nvidias():
    from diffusers.schedulers import AysSchedules

    # diffusers lists the same ten sigmas and writes the last (NVIDIA's 0.029) as 0
    assert list(AYS_SD1[:10]) == AysSchedules["StableDiffusionSigmas"][:10]
    assert list(AYS_SDXL[:10]) == AysSchedules["StableDiffusionXLSigmas"][:10]
    assert sigmas("Align Your Steps", 11).tolist() == pytest.approx([*AYS_SD1, 0.0], abs=1e-6)
    s = sigmas("Align Your Steps", 20, sdxl=True)
    assert s[0].item() == pytest.approx(14.615) and s[-2].item() == pytest.approx(0.029) and len(s) == 21


def test_kl_optimal_and_ddim_keep_a1111s_quirks():
    kl = sigmas("KL Optimal", 7)
    assert len(kl) == 8 and kl[-1].item() == pytest.approx(MODEL.sigma_min)  # ends at σ_min, not 0
    assert len(sigmas("DDIM", 7)) == 9  # stride 1000 // 7 = 142 gives 8 steps
    assert len(sigmas("DDIM", 20)) == 21


@pytest.mark.parametrize("label", [k for k in SCHEDULE_TYPES if k != "Automatic"])
@pytest.mark.parametrize("n", [1, 3, 7, 20, 30])
def test_properties(label, n):
    s = sigmas(label, n)
    assert s.dtype == torch.float32 and s.device.type == "cpu"
    assert torch.all(s[:-1] > s[1:]) or n == 1
    if label == "KL Optimal":
        assert s[-1].item() == pytest.approx(MODEL.sigma_min)
    else:
        assert s[-1].item() == 0.0
    if label not in ("DDIM",):
        assert len(s) == n + 1
    if label not in ("Align Your Steps", "Beta", "KL Optimal"):
        assert s[0].item() <= MODEL.sigma_max * (1 + 1e-6)
    assert s[s > 0].min().item() >= 0.0289


def test_lcm_table_is_every_20th_alpha():
    lcm = LCMSchedule.from_model(MODEL)
    assert torch.equal(lcm.alphas_cumprod, ldm_alphas_cumprod()[19::20])
    assert lcm.sigma_to_t(torch.tensor([lcm.sigma_max])).item() == 999
    s = lcm.get_sigmas(4)
    assert len(s) == 5 and s[-1] == 0 and s[0].item() == pytest.approx(lcm.sigma_max)


def test_unknown_schedule_type_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown schedule type 'Karas'"):
        schedule_type("Karas")
    assert schedule_type("sgm_uniform").label == "SGM Uniform" and schedule_type("SGMUniform").label == "SGM Uniform"
