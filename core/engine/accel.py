"""Speed and memory switches applied to a model when it is loaded: compilation, warm-up, CPU offload.

- ``engine.compile = "default" | "cuda-graphs"``: on CUDA the UNet goes to ``channels_last`` and through
  ``torch.compile`` (mode ``reduce-overhead`` for CUDA graphs), then a warm-up runs the UNet for every
  configured size (``warmup_sizes``) and batch bucket (``batch_buckets``), so the first user waits for no
  compilation. Compile and warm-up times are logged and kept in ``LoadedModel``-side stats
  (:func:`last_warmup`). On a CPU the setting is refused with a warning and the model stays eager.
- ``engine.cpu_offload``: diffusers' ``enable_model_cpu_offload`` for our own loop: every model (text
  encoders, UNet, VAE) lives in RAM and is moved to the device by an ``accelerate`` hook when it runs;
  the previous one goes back to RAM. Images are unchanged; peak VRAM is the largest single model.

Attention already runs through PyTorch SDPA (diffusers' ``AttnProcessor2_0`` is its default on torch 2).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

log = logging.getLogger(__name__)

COMPILE_MODES = {"off": None, "default": "default", "cuda-graphs": "reduce-overhead"}
_warmups: dict[int, dict[str, Any]] = {}  # id(pipe) -> warm-up report


def parse_size(text: str) -> tuple[int, int]:
    """``"768x512"`` -> (768, 512) (width, height); multiples of 8 only."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"warm-up size must look like 512x512, not {text!r}") from None
    if width <= 0 or height <= 0 or width % 8 or height % 8:
        raise ValueError(f"warm-up size {text!r}: width and height must be positive multiples of 8")
    return width, height


def install(engine) -> None:
    """Check the engine's settings and have its model cache prepare every model it loads."""
    if engine.settings.compile not in COMPILE_MODES:
        raise ValueError(
            f"engine.compile must be off, default or cuda-graphs, not {engine.settings.compile!r}"
        )
    for size in engine.settings.warmup_sizes:
        parse_size(size)
    if engine.settings.max_batch < 0:
        raise ValueError(f"engine.max_batch must be 0 (from free VRAM) or more, not {engine.settings.max_batch}")
    if engine.settings.vae_decode_batch < 0:
        raise ValueError(f"engine.vae_decode_batch must be 0 (all at once) or more, not {engine.settings.vae_decode_batch}")
    if any(b < 1 for b in engine.settings.batch_buckets):
        raise ValueError(f"engine.batch_buckets must be positive, not {list(engine.settings.batch_buckets)}")
    if engine.settings.compile != "off" or engine.settings.cpu_offload:
        engine.models.on_load = lambda model: prepare_model(engine, model)
    if engine.settings.cpu_offload:
        engine.models.load_device = torch.device("cpu")  # never the whole model on the GPU at once


def prepare_model(engine, model) -> None:
    """Apply the engine's compile / offload settings to a freshly loaded ``model`` (once per load)."""
    settings = engine.settings
    if settings.cpu_offload:
        if settings.compile != "off":
            log.warning("engine.compile is ignored with cpu_offload (hooks move modules between devices)")
        enable_cpu_offload(model, engine.device)
        return
    if settings.compile == "off":
        return
    if engine.device.type != "cuda":
        log.warning("engine.compile=%s needs CUDA; running eager on %s", settings.compile, engine.device)
        return
    compile_unet(model, settings.compile)
    # batched UNet calls are padded to the warmed-up row counts (cond + uncond per image)
    engine.unet_row_buckets = tuple(sorted({2 * b for b in settings.batch_buckets}))
    warmup(engine, model)


def enable_cpu_offload(model, device: torch.device) -> None:
    """Model-level offload: each module on ``device`` only while it runs (``accelerate`` hooks)."""
    from accelerate import cpu_offload_with_hook

    pipe = model.pipe
    hook = None
    for name in ("text_encoder", "text_encoder_2", "unet", "vae"):
        module = getattr(pipe, name, None)
        if module is None:
            continue
        module.to("cpu")
        _, hook = cpu_offload_with_hook(module, execution_device=device, prev_module_hook=hook)
    if device.type == "cuda":
        torch.cuda.empty_cache()


def compile_unet(model, setting: str) -> float:
    """``torch.compile`` the UNet in place (lazy: the first calls compile); returns the wrapping time."""
    start = time.perf_counter()
    unet = model.pipe.unet
    unet.to(memory_format=torch.channels_last)
    compiled = torch.compile(unet, mode=COMPILE_MODES[setting])
    model.pipe.unet = compiled
    return time.perf_counter() - start


@torch.no_grad()
def warmup(engine, model) -> dict[str, Any]:
    """Run the UNet once (twice for CUDA graphs) for every warm-up size and batch bucket; log the times.

    A bucket of ``b`` images is warmed up with ``2·b`` rows (cond + uncond in one call), at 77 tokens.
    """
    settings = engine.settings
    report: dict[str, Any] = {"compile": settings.compile, "shapes": {}}
    total_start = time.perf_counter()
    runs = 2 if settings.compile == "cuda-graphs" else 1
    for size in settings.warmup_sizes:
        width, height = parse_size(size)
        for bucket in settings.batch_buckets:
            start = time.perf_counter()
            for _ in range(runs):
                blank_unet_call(model, 2 * bucket, width, height, engine.device)
            if engine.device.type == "cuda":
                torch.cuda.synchronize(engine.device)
            seconds = time.perf_counter() - start
            report["shapes"][f"{size}/b{bucket}"] = round(seconds, 3)
            log.info("warm-up %s batch %d: %.1fs (compile=%s)", size, bucket, seconds, settings.compile)
    report["total_s"] = round(time.perf_counter() - total_start, 3)
    log.info("warm-up done in %.1fs for %s", report["total_s"], ", ".join(report["shapes"]))
    _warmups[id(model.pipe)] = report
    return report


@torch.no_grad()
def blank_unet_call(model, rows: int, width: int, height: int, device) -> None:
    """One UNet call of ``rows`` blank rows at ``width``×``height`` (77 tokens; SDXL's added conditioning):
    what warm-up and the batch memory probe run."""
    pipe = model.pipe
    factor = model.vae_scale_factor
    channels = pipe.text_encoder.config.hidden_size
    if getattr(pipe, "text_encoder_2", None) is not None:
        channels += pipe.text_encoder_2.config.hidden_size
    latent = (height // factor, width // factor)
    x = torch.zeros(rows, pipe.unet.config.in_channels, *latent, device=device, dtype=model.dtype)
    embeds = torch.zeros(rows, 77, channels, device=device, dtype=model.dtype)
    added = None
    if model.kind == "sdxl":
        pooled = pipe.text_encoder_2.config.projection_dim
        added = {
            "text_embeds": torch.zeros(rows, pooled, device=device, dtype=model.dtype),
            "time_ids": torch.tensor(
                [[height, width, 0, 0, height, width]] * rows, device=device, dtype=model.dtype
            ),
        }
    t = torch.full((rows,), 999.0, device=device)  # as the samplers call it: one float32 timestep per row
    pipe.unet(x, t, encoder_hidden_states=embeds, added_cond_kwargs=added, return_dict=False)


def last_warmup(model) -> dict[str, Any] | None:
    """The warm-up report of ``model`` (None when it was not compiled/warmed up)."""
    return _warmups.get(id(model.pipe))
