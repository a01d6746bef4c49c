"""The VAE: latents to images (in chunks), images to latents, and an inpainting UNet's image conditioning."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from core.engine import models


@contextlib.contextmanager
def upcast(model: models.LoadedModel, *, always: bool = False) -> Iterator[Any]:
    """The model's VAE, in fp32 inside the block where the pipelines do it: SDXL's fp16 VAE (its fp16
    decode overflows; ``force_upcast`` in its config), or any VAE with ``always``."""
    vae = model.pipe.vae
    dtype = vae.dtype
    forced = model.kind == "sdxl" and dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    needed = dtype != torch.float32 and (always or forced)
    if needed:
        vae.to(torch.float32)
    try:
        yield vae
    finally:
        if needed:
            vae.to(dtype)


@torch.no_grad()
def decode_latents(
    model: models.LoadedModel, latents: torch.Tensor, *, chunk: int = 0, fp32: bool = False
) -> torch.Tensor:
    """Latents -> image tensor in [-1, 1], ``chunk`` latents per VAE call (0: all at once), so a big batch's
    decode peak stays that of one chunk. ``fp32``: the VAE in float32 whatever the model's dtype."""
    with upcast(model, always=fp32) as vae:
        latents = latents.to(vae.dtype) / vae.config.scaling_factor
        chunk = chunk or latents.shape[0]
        pieces = [
            vae.decode(latents[i : i + chunk], return_dict=False)[0]
            for i in range(0, latents.shape[0], chunk)
        ]
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces)


def decode(model: models.LoadedModel, latents: torch.Tensor, *, chunk: int = 0) -> list:
    """Latents -> PIL images (see :func:`decode_latents`); None for a latent whose pixels are NaN/inf.

    As A1111 (``auto_vae_precision``, on by default), rows a half-precision VAE decodes to NaN/inf are
    decoded again with the VAE in float32 (an fp16 VAE overflows on some images).
    """
    pixels = decode_latents(model, latents, chunk=chunk)
    bad = ~torch.isfinite(pixels).flatten(1).all(dim=1)
    if bad.any() and model.pipe.vae.dtype != torch.float32:
        rows = bad.nonzero().flatten()
        pixels[rows] = decode_latents(model, latents[rows], chunk=chunk, fp32=True).to(pixels.dtype)
        bad = ~torch.isfinite(pixels).flatten(1).all(dim=1)
    images = model.pipe.image_processor.postprocess(pixels.nan_to_num(), output_type="pil")
    return [None if broken else image for image, broken in zip(images, bad.tolist(), strict=True)]


@torch.no_grad()
def encode_pixels(model: models.LoadedModel, pixels: torch.Tensor, device) -> torch.Tensor:
    """VAE-encode a [-1, 1] image batch (N, 3, H, W) to latents (× the VAE's scaling factor).

    We take the latent distribution's mean: deterministic, where A1111's ``get_first_stage_encoding``
    samples it with the global torch RNG, so A1111 itself is not repeatable there (the posterior's
    std is small next to the noise the sampler adds).
    """
    with upcast(model) as vae:
        dist = vae.encode(pixels.to(device, vae.dtype)).latent_dist
        latents = dist.mean * vae.config.scaling_factor
    return latents.to(model.dtype)


def encode_images(model: models.LoadedModel, images: Sequence[Any], device) -> torch.Tensor:
    """VAE-encode PIL images to latents (see :func:`encode_pixels`)."""
    return encode_pixels(model, to_pixels(images), device)


def to_pixels(images: Sequence[Any]) -> torch.Tensor:
    """PIL images as one (N, 3, H, W) float tensor in [-1, 1]."""
    import numpy as np

    arrays = [np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0 for image in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) * 2.0 - 1.0


@torch.no_grad()
def inpainting_conditioning(model: models.LoadedModel, init, count: int, device) -> torch.Tensor:
    """A1111's ``inpainting_image_conditioning`` for 9-channel UNets: the rounded repaint mask (all
    ones for img2img) at latent size, then the latents of the source with the masked area set to
    grey (0 in [-1, 1]; ``inpainting_mask_weight`` 1)."""
    import numpy as np

    width, height = init.image.size
    if init.work_mask is None:
        mask = torch.ones(1, 1, height, width)
    else:
        values = np.asarray(init.work_mask.convert("L"), dtype=np.float32) / 255.0
        mask = torch.round(torch.from_numpy(values))[None, None]
    pixels = to_pixels([init.image])
    latents = encode_pixels(model, pixels * (1.0 - mask), device)
    small = torch.nn.functional.interpolate(mask, size=latents.shape[-2:])
    cond = torch.cat([small.to(latents.device, latents.dtype), latents], dim=1)
    return cond.repeat(count, 1, 1, 1)


@torch.no_grad()
def blank_inpainting_conditioning(model: models.LoadedModel, count: int, size: tuple[int, int], device):
    """A1111's ``txt2img_image_conditioning`` for 9-channel UNets (txt2img and the hires pass): everything
    masked (ones) and the latents of a grey image (0.5, i.e. 0 in [-1, 1]), at ``size`` (height, width)."""
    height, width = size
    latents = encode_pixels(model, torch.zeros(1, 3, height, width), device)
    mask = torch.ones(1, 1, *latents.shape[-2:], device=latents.device, dtype=latents.dtype)
    return torch.cat([mask, latents], dim=1).repeat(count, 1, 1, 1)
