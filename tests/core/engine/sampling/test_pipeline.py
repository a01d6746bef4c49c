"""The whole pipeline against A1111's sampling, end to end: ``DiffusersEngine.generate`` (and
``generate_batch``) on the tiny SD1.5 checkpoint must give the final latents (before the VAE) that k-diffusion
0.0.16's sampler function gives when driven the way A1111 1.10 drives it, by the test-side code below:

- sigmas from k-diffusion's own functions (``CompVisDenoiser.get_sigmas`` for Automatic/Uniform,
  ``get_sigmas_karras`` / ``get_sigmas_exponential`` over the model's σ range), with A1111's "discard next
  to last sigma" rule; img2img and hires take A1111's tail (``setup_img2img_steps``) and start at
  ``init + noise·σ``; the timesteps samplers use diffusers' ``DDIMScheduler`` over A1111's grid;
- A1111's ``CFGDenoiser.forward`` for one job: the image rows repeated per ``AND`` part then the uncond
  rows, one UNet call when token lengths agree and two otherwise, ``combine_denoised`` with the weights,
  the step counter counting model calls (prompt editing switches at it), inpaint blended on x₀ inside the
  denoiser and ``samples·nmask + init·mask`` at the end; k-diffusion's ``CompVisDenoiser`` /
  ``CompVisVDenoiser`` around the UNet (continuous t);
- A1111's noise: ``ImageRNG`` with its ``all_seeds`` (every image the job's seed when the variation strength
  is above 0), ENSD, k-diffusion's ``torch.randn_like`` hijacked to ``ImageRNG.next()``, and the SDE
  samplers' ``BrownianTreeNoiseSampler`` seeded with the image seeds over the whole schedule.

The conditioning (embeddings) is the engine's own (``prompts.encode_prompt``); its A1111-exactness is
tested elsewhere. Final latents must agree within 1e-3 (the issue's bar; the difference is float rounding).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from core.engine import checks, hires, prompts
from core.engine.diffusers_engine import DiffusersEngine
from core.engine.rng import ImageRNG
from core.types import GenerationRequest, GenerationResult, Mode
from tests.core.engine.conftest import engine_settings
from tests.core.engine.sampling.conftest import hijacked_randn
from tests.core.engine.test_batch import DecodeSpy
from tests.core.engine.test_image_modes import noise_image, png, square_mask

TOL = 1e-3
BASE = dict(width=64, height=64, steps=5, rng="cpu", seed=21, negative_prompt="blurry, low quality")
PROMPT = "a red [cat:dog:3] on a chair"  # prompt editing: the counter decides, two a step for 2nd order
# sampler -> (k-diffusion function, schedule type A1111's "Automatic" means for it, discard penultimate)
K_DIFFUSION = {
    "Euler a": ("sample_euler_ancestral", "uniform", False),
    "Euler": ("sample_euler", "uniform", False),
    "LMS": ("sample_lms", "uniform", False),
    "Heun": ("sample_heun", "uniform", False),
    "DPM2": ("sample_dpm_2", "karras", True),
    "DPM2 a": ("sample_dpm_2_ancestral", "karras", True),
    "DPM++ 2S a": ("sample_dpmpp_2s_ancestral", "karras", False),
    "DPM++ 2M": ("sample_dpmpp_2m", "karras", False),
    "DPM++ SDE": ("sample_dpmpp_sde", "karras", False),
    "DPM++ 2M SDE": ("sample_dpmpp_2m_sde", "exponential", False),
    "DPM++ 3M SDE": ("sample_dpmpp_3m_sde", "exponential", True),
    "DPM fast": ("sample_dpm_fast", "uniform", False),
}
BROWNIAN = {"DPM++ SDE", "DPM++ 2M SDE", "DPM++ 3M SDE"}
ETA = {"Euler a", "DPM2 a", "DPM++ 2S a", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 3M SDE", "DPM fast"}


@pytest.fixture(scope="module")
def engine(tiny_sd15):
    engine = DiffusersEngine(engine_settings(tiny_sd15))
    yield engine
    engine.close()


def model_of(engine: DiffusersEngine):
    return next(iter(engine.models._models.values()))


def run(engine: DiffusersEngine, request: GenerationRequest) -> torch.Tensor:
    """The engine's final latents for ``request`` (what it hands the VAE)."""
    spy = DecodeSpy(engine)
    try:
        result = engine.generate(request)
    finally:
        del engine.decode
    assert isinstance(result, GenerationResult) and len(spy.latents) == 1
    return spy.latents[0]


def encode(engine: DiffusersEngine, request: GenerationRequest, first_pass=None):
    model = model_of(engine)
    if first_pass is None:
        interpretations = prompts.interpret(request, engine.settings)
    else:
        interpretations = hires.interpret(request, engine.settings)
        request = hires.hires_request(request)
    return prompts.encode_prompt(
        request,
        model,
        interpretations,
        settings=engine.settings,
        embeddings=engine.embeddings,
        first_pass=first_pass,
    )


# -- A1111, test side ---------------------------------------------------------------------------------


class Inner:
    """The LDM model as k-diffusion's CompVis wrappers see it: ``alphas_cumprod`` and ``apply_model``."""

    def __init__(self, unet, alphas_cumprod):
        self.unet, self.alphas_cumprod = unet, alphas_cumprod

    def apply_model(self, x, t, cond):
        return self.unet(x, t, encoder_hidden_states=cond).sample


def pad_tokens(tensors):
    """A1111's ``reconstruct_multicond_batch``: shorter AND parts get their last token repeated."""
    longest = max(t.shape[0] for t in tensors)
    return [torch.cat([t, t[-1:].repeat(longest - t.shape[0], 1)]) for t in tensors]


class A1111Denoiser:
    """A1111's ``CFGDenoiser.forward`` for one job (one prompt for all its images)."""

    def __init__(self, inner_model, plan, cfg, *, timesteps=False, init=None, nmask=None, rescale=0.0):
        self.inner_model, self.plan, self.cfg, self.timesteps = inner_model, plan, cfg, timesteps
        self.init, self.nmask, self.rescale = init, nmask, rescale
        self.step = 0

    def blend(self, latent):
        return latent * self.nmask + self.init * (1.0 - self.nmask)

    def __call__(self, x, sigma, **_):
        if self.timesteps and self.nmask is not None:
            x = self.blend(x)  # mask_before_denoising
        parts = self.plan.positive
        conds = pad_tokens([part.at(self.step).embeds for part in parts])
        uncond = self.plan.negative.at(self.step).embeds
        n, k = x.shape[0], len(conds)
        x_in = torch.cat([torch.stack([x[i]] * k) for i in range(n)] + [x])
        sigma_in = torch.cat([torch.stack([sigma[i]] * k) for i in range(n)] + [sigma])
        tensor = torch.stack([c for _ in range(n) for c in conds])
        uncond = uncond[None].expand(n, -1, -1)
        if tensor.shape[1] == uncond.shape[1]:
            x_out = self.inner_model(x_in, sigma_in, cond=torch.cat([tensor, uncond]))
        else:
            cond_out = self.inner_model(x_in[:-n], sigma_in[:-n], cond=tensor)
            x_out = torch.cat([cond_out, self.inner_model(x_in[-n:], sigma_in[-n:], cond=uncond)])
        denoised_uncond = x_out[-n:]
        denoised = torch.clone(denoised_uncond)
        for i in range(n):
            for j, part in enumerate(parts):
                denoised[i] += (x_out[i * k + j] - denoised_uncond[i]) * (part.weight * self.cfg)
        if self.rescale:
            denoised = rescale_cfg(x, sigma, x_out[: n * k : k], denoised, self.rescale)
        if not self.timesteps and self.nmask is not None:
            denoised = self.blend(denoised)
        self.step += 1
        return denoised


def rescale_cfg(x, sigma, cond, guided, phi):
    """CFG rescale (Lin et al. 2023, Alg. 2) as ComfyUI/Forge apply it to x₀: in v space, per image."""
    s = sigma[:, None, None, None]
    x_in = x / (s**2 + 1)
    v_cond = (x_in - cond) * (s**2 + 1) ** 0.5 / s
    v_cfg = (x_in - guided) * (s**2 + 1) ** 0.5 / s
    factor = v_cond.std(dim=(1, 2, 3), keepdim=True) / v_cfg.std(dim=(1, 2, 3), keepdim=True)
    v_final = phi * v_cfg * factor + (1 - phi) * v_cfg
    return x_in - v_final * s / (s**2 + 1) ** 0.5


def a1111_seeds(request: GenerationRequest):
    """A1111's all_seeds / all_subseeds for one job."""
    step = 1 if request.subseed_strength == 0 else 0
    return (
        [request.seed + i * step for i in range(request.count)],
        [request.subseed + i for i in range(request.count)],
    )


def image_rng(request: GenerationRequest, shape, ensd=0):
    seeds, subseeds = a1111_seeds(request)
    strength = request.subseed_strength
    return ImageRNG(
        shape,
        seeds,
        subseeds=subseeds if strength else None,
        subseed_strength=strength,
        source=request.rng,
        eta_noise_seed_delta=ensd,
    )


def sigmas_for(kd, wrap, name, steps, schedule=None):
    """A1111's ``get_sigmas``: the sampler's schedule type from k-diffusion's functions, discard rule."""
    _, automatic, discard = K_DIFFUSION[name]
    schedule = schedule or automatic
    steps += 1 if discard else 0
    low, high = wrap.sigmas[0].item(), wrap.sigmas[-1].item()
    if schedule == "karras":
        sigmas = kd.sampling.get_sigmas_karras(steps, low, high)
    elif schedule == "exponential":
        sigmas = kd.sampling.get_sigmas_exponential(steps, low, high)
    else:
        sigmas = wrap.get_sigmas(steps)
    return torch.cat([sigmas[:-2], sigmas[-1:]]) if discard else sigmas


def k_sample(kd, name, denoiser, wrap, x, sigmas, rng, seeds, *, eta=None, dpm_range=None, full=None):
    """k-diffusion's sampler ``name`` as A1111's KDiffusionSampler calls it; ``full``: the whole schedule
    (img2img), which the Brownian trees span."""
    function = getattr(kd.sampling, K_DIFFUSION[name][0])
    kwargs = {}
    if name in ETA:
        kwargs["eta"] = 1.0 if eta is None else eta
    if name in BROWNIAN:
        full = sigmas if full is None else full
        positive = full[full > 0]
        kwargs["noise_sampler"] = kd.sampling.BrownianTreeNoiseSampler(
            x, positive.min(), full.max(), seed=seeds
        )
    if name == "DPM fast":
        kwargs.update(dpm_range)
    else:
        kwargs["sigmas"] = sigmas
    with hijacked_randn(kd.sampling, rng):
        return function(denoiser, x, disable=True, **kwargs)


def reference(
    kd, engine, request, *, ensd=0, schedule=None, prediction="eps", alphas=None, init=None, nmask=None
):
    """A1111's txt2img (or, with ``init``, img2img / inpaint) final latents for one job."""
    model = model_of(engine)
    alphas = model.noise.alphas_cumprod if alphas is None else alphas
    unet = model.pipe.unet
    wrap_cls = kd.external.CompVisVDenoiser if prediction == "v" else kd.external.CompVisDenoiser
    wrap = wrap_cls(Inner(unet, alphas), quantize=False)
    plan = encode(engine, request)
    seeds, _ = a1111_seeds(request)
    rng = image_rng(request, (4, request.height // 8, request.width // 8), ensd)
    steps, name = request.steps, request.sampler
    sigmas = sigmas_for(kd, wrap, name, steps, schedule)
    noise = rng.next()
    fill = {}
    denoiser = A1111Denoiser(wrap, plan, request.cfg_scale, rescale=request.cfg_rescale)
    if init is None:
        x, run_sigmas = noise * sigmas[0], sigmas
        fill = {"sigma_min": wrap.sigmas[0].item(), "sigma_max": wrap.sigmas[-1].item(), "n": steps}
    else:
        t_enc = int(min(request.denoising_strength, 0.999) * steps)
        run_sigmas = sigmas[steps - t_enc - 1 :]
        x = init + noise * run_sigmas[0]
        fill = {"sigma_min": run_sigmas[-2], "sigma_max": run_sigmas[0], "n": len(run_sigmas) - 1}
        denoiser.init, denoiser.nmask = init, nmask
    samples = k_sample(
        kd, name, denoiser, wrap, x, run_sigmas, rng, seeds, eta=request.eta, dpm_range=fill, full=sigmas
    )
    if nmask is not None:
        samples = samples * nmask + init * (1.0 - nmask)
    return samples


def check(ours, theirs):
    assert torch.isfinite(ours).all()
    delta = (ours - theirs).abs().max().item()
    assert delta <= TOL, f"max |Δ| {delta:.2e} (latents up to {theirs.abs().max().item():.1f})"
    print(f"max |Δ| {delta:.1e} (latents up to {theirs.abs().max().item():.1f})")


# -- the tests ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(K_DIFFUSION))
def test_txt2img_every_k_diffusion_family(kd, engine, name):
    request = GenerationRequest(prompt=PROMPT, sampler=name, **BASE)
    ours = run(engine, request)
    check(ours, reference(kd, engine, request))


@pytest.mark.parametrize(
    ("name", "schedule"), [("Euler", "Karras"), ("DPM++ 2M", "Exponential"), ("Heun", "Uniform")]
)
def test_txt2img_with_a_chosen_schedule_type(kd, engine, name, schedule):
    request = GenerationRequest(
        prompt="a lighthouse AND fog:0.4", sampler=name, schedule_type=schedule, **BASE
    )
    check(run(engine, request), reference(kd, engine, request, schedule=schedule.lower()))


def test_ensd_and_eta(kd, engine):
    request = GenerationRequest(prompt=PROMPT, sampler="Euler a", eta=0.6, eta_noise_seed_delta=31337, **BASE)
    ours = run(engine, request)
    check(ours, reference(kd, engine, request, ensd=31337))
    plain = run(engine, request.replace(eta_noise_seed_delta=0))
    assert (plain - ours).abs().max() > 1e-2  # ENSD re-seeded the step noise


def test_ensd_reseeds_every_sampler_as_a1111(kd, engine):
    # A1111's ImageRNG.first() re-seeds whenever ENSD is set, whatever the sampler (DPM++ 2S a: step noise).
    request = GenerationRequest(prompt=PROMPT, sampler="DPM++ 2S a", eta_noise_seed_delta=7, **BASE)
    check(run(engine, request), reference(kd, engine, request, ensd=7))


def test_variation_seeds_in_one_job_keep_the_job_seed(kd, engine):
    request = GenerationRequest(
        prompt=PROMPT, sampler="DPM++ 2M SDE", count=2, subseed=99, subseed_strength=0.3, **BASE
    )
    result = engine.generate(request)
    assert [image.seed for image in result.images] == [21, 21]  # A1111's all_seeds
    assert [image.subseed for image in result.images] == [99, 100]
    check(run(engine, request), reference(kd, engine, request))


def test_a_batch_of_jobs_each_equals_a1111(kd, engine):
    jobs = [
        GenerationRequest(prompt=PROMPT, sampler="DPM++ SDE", cfg_scale=6.0, **BASE),
        GenerationRequest(
            prompt="an astronaut AND a horse:0.6",
            sampler="DPM++ SDE",
            cfg_scale=8.5,
            **{**BASE, "seed": 5, "negative_prompt": "low quality, " * 40},
        ),
        GenerationRequest(
            prompt="a boat",
            sampler="DPM++ SDE",
            count=2,
            subseed=3,
            subseed_strength=0.5,
            eta_noise_seed_delta=31337,
            **{**BASE, "seed": 9},
        ),
    ]
    spy = DecodeSpy(engine)
    try:
        results = engine.generate_batch(jobs)
    finally:
        del engine.decode
    assert all(r.timings.get("batch_jobs") == 3.0 for r in results)
    pieces = spy.latents[0].split([job.count for job in jobs])
    for job, piece in zip(jobs, pieces, strict=True):
        check(piece, reference(kd, engine, job, ensd=job.eta_noise_seed_delta or 0))


def img2img_init(engine, request):
    prepared = checks.prepare_init(request, engine.settings)
    init = engine.encode_images(model_of(engine), [prepared.image]).repeat(request.count, 1, 1, 1)
    nmask = None if prepared.mask is None else torch.from_numpy(prepared.mask)[None, None]
    return init, nmask


@pytest.mark.parametrize("name", ["Euler a", "DPM++ 2M", "DPM++ 2M SDE", "DPM fast"])
def test_img2img(kd, engine, name):
    request = GenerationRequest(
        mode=Mode.IMG2IMG,
        init_image=png(noise_image(seed=1)),
        prompt=PROMPT,
        sampler=name,
        denoising_strength=0.6,
        **{**BASE, "steps": 8},
    )
    init, _ = img2img_init(engine, request)
    check(run(engine, request), reference(kd, engine, request, init=init))


@pytest.mark.parametrize("name", ["Euler a", "DPM++ 2M"])
def test_inpaint_blends_x0_as_a1111(kd, engine, name):
    request = GenerationRequest(
        mode=Mode.INPAINT,
        init_image=png(noise_image(seed=2)),
        mask_image=png(square_mask()),
        prompt=PROMPT,
        sampler=name,
        denoising_strength=0.8,
        mask_blur=0,
        **{**BASE, "steps": 8},
    )
    init, nmask = img2img_init(engine, request)
    assert 0 < nmask.mean() < 1
    ours = run(engine, request)
    check(ours, reference(kd, engine, request, init=init, nmask=nmask))
    kept = (1 - nmask).bool().expand_as(ours)
    assert torch.equal(ours[kept], init[kept])  # the kept area is the source, exactly


def test_hires_fix_both_passes(kd, engine):
    request = GenerationRequest(
        prompt=PROMPT,
        hr_prompt="a red [cat:fox:0.5] on a chair",
        sampler="DPM++ 2M",
        enable_hr=True,
        hr_scale=1.5,
        hr_second_pass_steps=4,
        hr_denoising_strength=0.55,
        hr_upscaler="Latent",
        **BASE,
    )
    model = model_of(engine)
    wrap = kd.external.CompVisDenoiser(Inner(model.pipe.unet, model.noise.alphas_cumprod), quantize=False)
    first = reference(kd, engine, request.replace(enable_hr=False))
    upscaled = torch.nn.functional.interpolate(first, size=(12, 12), mode="bilinear", antialias=False)
    # the hires pass: A1111's sample_img2img(steps=4): a schedule of int(4 / 0.55) = 7 steps, its last 4 run
    plan = encode(engine, request, first_pass=encode(engine, request))
    seeds, _ = a1111_seeds(request)
    rng = image_rng(request, (4, 12, 12))
    noise = rng.next()
    total, t_enc = int(4 / 0.55), 3
    sigmas = sigmas_for(kd, wrap, "DPM++ 2M", total)[total - t_enc - 1 :]
    denoiser = A1111Denoiser(wrap, plan, request.cfg_scale)
    theirs = k_sample(kd, "DPM++ 2M", denoiser, wrap, upscaled + noise * sigmas[0], sigmas, rng, seeds)
    assert len(sigmas) == 5 and denoiser.step == 4
    check(run(engine, request), theirs)


def test_ddim_through_the_pipeline_equals_diffusers_ddim_over_a1111s_grid(engine):
    """DDIM: A1111's timesteps denoiser (ε, CFG on ε) stepped by diffusers' DDIMScheduler over A1111's grid,
    stopping one step early at ᾱ[1] as A1111 does."""
    from diffusers import DDIMScheduler

    request = GenerationRequest(prompt=PROMPT, sampler="DDIM", **{**BASE, "steps": 10})
    model = model_of(engine)
    plan = encode(engine, request)
    sched = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        beta_schedule="scaled_linear",
        set_alpha_to_one=False,
        steps_offset=1,
        timestep_spacing="leading",
    )
    sched.alphas_cumprod = model.noise.alphas_cumprod.clone()
    sched.set_timesteps(10)
    denoiser = A1111Denoiser(
        lambda x, t, cond: model.pipe.unet(x, t, encoder_hidden_states=cond).sample,
        plan,
        request.cfg_scale,
        timesteps=True,
    )
    x = image_rng(request, (4, 8, 8)).next()
    for t in sched.timesteps[:-1]:
        x = sched.step(denoiser(x, t.float().expand(x.shape[0])), int(t), x, eta=0.0).prev_sample
    check(run(engine, request), x)


def test_v_prediction_and_zero_terminal_snr_from_the_settings(kd, tiny_sd15):
    """A v-prediction ZTSNR model (NoobAI-style; here the tiny UNet told so by its settings) samples with
    k-diffusion's v denoiser over A1111's ZTSNR ᾱ, and CFG rescale is applied on x₀ in v space."""
    settings = engine_settings(tiny_sd15)
    models = {"tiny": dataclasses.replace(settings.models["tiny"], prediction="v", zero_terminal_snr=True)}
    engine = DiffusersEngine(dataclasses.replace(settings, models=models))
    try:
        request = GenerationRequest(prompt=PROMPT, sampler="Euler a", cfg_rescale=0.7, **BASE)
        ours = run(engine, request)
        model = model_of(engine)
        assert model.noise.prediction == "v" and model.noise.zero_terminal_snr
        ldm = torch.tensor(
            __import__("numpy").cumprod(
                1 - torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64).numpy() ** 2
            ),
            dtype=torch.float32,
        )
        root = ldm.sqrt()
        ztsnr = ((root - root[-1]) * (root[0] / (root[0] - root[-1]))) ** 2
        ztsnr[-1] = 4.8973451890853435e-08  # A1111's last ᾱ (σ_max ≈ 4518.9)
        check(ours, reference(kd, engine, request, prediction="v", alphas=ztsnr))
        text = engine.generate(request).images[0].infotext
        assert "CFG Rescale: 0.7" in text and "Noise Schedule: Zero Terminal SNR" in text
    finally:
        engine.close()
