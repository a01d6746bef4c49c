"""How many images fit in one denoising loop: ``engine.max_batch``, or (0) an estimate from free VRAM.

``engine.max_batch = 0`` (the default) sizes every batch from the memory the GPU has free right now:

1. a :class:`Footprint` per (model, size) is *measured* once, in the engine thread: the UNet runs at 1 and
   2 images (2 and 4 rows: uncond + cond), and the VAE decodes one chunk (``vae_decode_batch`` latents)
   — the growth of ``torch.cuda.max_memory_allocated`` gives the bytes each extra image costs in the
   loop and the fixed bytes of the decode; nothing is guessed from model names or published tables;
2. free memory = ``torch.cuda.mem_get_info`` (the whole card: other processes count) plus what our own
   caching allocator holds unused; :func:`capacity` keeps ``SAFETY`` of it and divides.

The answer is capped at ``AUTO_MAX`` images, and with ``engine.compile`` on, rounded down to a warmed-up
batch bucket (a bigger batch would compile a new graph in front of users). A CPU has no such budget and
gets ``CPU_AUTO`` images. An image counts as two UNet rows; ``AND`` parts add rows, which the safety
margin absorbs for a few parts (jobs with many parts are rare and their batch-mates few).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

CPU_AUTO = 8  # images per loop on a CPU (more buys nothing there)
AUTO_MAX = 64  # never more images in one loop than this, however much memory is free
SAFETY = 0.85  # share of the free memory a batch may plan to use


@dataclass(frozen=True)
class Footprint:
    """Measured CUDA memory of one (model, size): bytes per image and bytes fixed in the loop; the decode."""

    per_image: int
    fixed: int
    decode: int = 0  # one VAE chunk: after the loop, independent of the batch size


def capacity(free_bytes: int, footprint: Footprint, *, ceiling: int = AUTO_MAX, buckets: Sequence[int] = ()) -> int:
    """Images that fit in ``free_bytes`` (at least 1), capped at ``ceiling`` and rounded down to a bucket."""
    usable = free_bytes * SAFETY - footprint.fixed  # the decode runs after the loop, one chunk at a time
    images = int(usable // max(footprint.per_image, 1)) if usable > 0 else 0
    images = max(1, min(images, ceiling))
    if buckets:
        images = max((b for b in buckets if b <= images), default=1)
    return images


def free_bytes(device: torch.device) -> int:
    """Bytes a new batch can use on ``device``: free on the card plus our allocator's unused cache."""
    free, _total = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(free + max(cached, 0))


def cuda_peak(device: torch.device, run) -> int:
    """Bytes ``run()`` allocated at its peak on ``device`` above what was allocated before it."""
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    run()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


@torch.no_grad()
def measure(engine, model, width: int, height: int, *, peak=cuda_peak) -> Footprint:
    """Run the UNet at 1 and 2 images and decode one VAE chunk at ``width``×``height``.

    ``peak(device, run)`` meters one run (:func:`cuda_peak`; tests pass their own meter on a CPU).
    """
    from core.engine.accel import blank_unet_call

    device = engine.device
    pipe = model.pipe
    latent = (height // model.vae_scale_factor, width // model.vae_scale_factor)

    def unet_rows(rows: int) -> None:
        blank_unet_call(model, rows, width, height, device)

    unet_rows(2)  # unmetered: lazy allocations, and with CPU offload the UNet's weights move in here
    one = peak(device, lambda: unet_rows(2))
    two = peak(device, lambda: unet_rows(4))
    chunk = engine.settings.vae_decode_batch or 1
    vae_latents = torch.zeros(chunk, pipe.vae.config.latent_channels, *latent, device=device, dtype=model.dtype)
    decode = peak(device, lambda: engine.decode_latents(model, vae_latents))
    # two <= one makes no sense (an allocator artefact): then count all of one image's bytes per image
    per_image = two - one if two > one else max(one, 1)
    footprint = Footprint(per_image=per_image, fixed=max(one - per_image, 0), decode=decode)
    log.info(
        "batch memory at %dx%d: %.0f MiB per image, %.0f MiB fixed (decode %.0f MiB)",
        width,
        height,
        per_image / 2**20,
        footprint.fixed / 2**20,
        decode / 2**20,
    )
    return footprint
