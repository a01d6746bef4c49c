"""Per-step overhead of the sampling library against a bare loop on the same model (for ``chant bench``).

``sampler_overhead()`` runs Euler through :func:`core.engine.sampling.sample` (plan, noise sampler,
callback, denoiser wrapper) and a hand-written Euler loop doing the same UNet calls, and returns the time
per step of each and their ratio. ``python -m core.engine.bench_sampling`` prints them.
"""

from __future__ import annotations

import json
import time

import torch


def _tiny_unet(device: str):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32,
    ).eval().to(device)


def sampler_overhead(*, name: str = "Euler", steps: int = 20, batch: int = 2, repeats: int = 3,
                     device: str = "cpu") -> dict[str, float]:
    """Seconds per step of the library path and of a bare loop over the same sigmas and UNet, best of ``repeats``."""
    from core.engine.rng import ImageRNG
    from core.engine.sampling import NoiseSchedule, plan, resolve, sample

    unet = _tiny_unet(device)
    cond = torch.randn((batch, 4, 32), device=device)
    model = NoiseSchedule.ldm()
    dev_model = model.to(device)
    p = plan(resolve(name), steps, model)

    def denoise(x, sigma):
        return dev_model.denoise(lambda xi, t: unet(xi, t, encoder_hidden_states=cond).sample, x, sigma)

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def library():
        rng = ImageRNG((4, 8, 8), list(range(batch)), source="cpu", device=device)
        x = p.start(rng.first())
        return sample(p, denoise, x, rng=rng, callback=lambda step: None)

    def bare():
        rng = ImageRNG((4, 8, 8), list(range(batch)), source="cpu", device=device)
        x = rng.first() * p.run[0]
        sigmas = p.run.tolist()
        for i in range(len(sigmas) - 1):
            s = torch.full((batch,), sigmas[i], device=device)
            denoised = denoise(x, s)
            x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
        return x

    timings = {}
    with torch.inference_mode():
        for label, fn in (("library", library), ("bare", bare)):
            fn()
            best = float("inf")
            for _ in range(repeats):
                sync()
                start = time.perf_counter()
                fn()
                sync()
                best = min(best, time.perf_counter() - start)
            timings[label] = best / steps
    return {"sampler": name, "steps": steps, "batch": batch, "device": device,
            "library_s_per_step": timings["library"], "bare_s_per_step": timings["bare"],
            "ratio": timings["library"] / timings["bare"]}


if __name__ == "__main__":
    print(json.dumps(sampler_overhead(), indent=1))
