"""``chant bench sampling``: per-step overhead of the samplers (``core.engine.samplers``) against a bare
loop on the same model.

``sampler_overhead()`` runs a sampler through :func:`core.engine.samplers.sample` (plan, noise sampler,
callback, denoiser wrapper) and a hand-written Euler loop doing the same UNet calls, and returns the time
per step of each and their ratio (meaningful for one-call-a-step samplers, Euler by default).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch


def _tiny_unet(device: str):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return (
        UNet2DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=8,
            norm_num_groups=32,
        )
        .eval()
        .to(device)
    )


def sampler_overhead(
    *, name: str = "Euler", steps: int = 20, batch: int = 2, repeats: int = 3, device: str = "cpu"
) -> dict[str, float]:
    """Seconds per step of the library path and of a bare loop over the same sigmas and UNet, best of ``repeats``."""
    from core.engine.rng import ImageRNG
    from core.engine.samplers import plan, resolve, sample
    from core.engine.sampling import NoiseSchedule

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
    return {
        "sampler": name,
        "steps": steps,
        "batch": batch,
        "device": device,
        "library_s_per_step": timings["library"],
        "bare_s_per_step": timings["bare"],
        "ratio": timings["library"] / timings["bare"],
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sampler", default="Euler")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=2, help="images per loop")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each (best is kept)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")


def run(args: argparse.Namespace, settings) -> dict[str, Any]:
    return sampler_overhead(
        name=args.sampler, steps=args.steps, batch=args.batch, repeats=args.repeats, device=args.device
    )
