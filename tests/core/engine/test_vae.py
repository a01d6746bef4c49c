"""The VAE helpers: SDXL's fp16 VAE decodes and encodes in fp32 (as the diffusers pipelines do), others
in their own dtype, and the VAE is back in its dtype afterwards."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from core.engine import vae


def tiny_model(kind: str, dtype: torch.dtype):
    """A stand-in ``LoadedModel``: the tiny fixtures' VAE in ``dtype`` (its config says force_upcast)."""
    from core.testing.tiny import _vae

    torch.manual_seed(3)
    autoencoder = _vae().to(dtype).eval()
    assert autoencoder.config.force_upcast
    return SimpleNamespace(kind=kind, dtype=dtype, pipe=SimpleNamespace(vae=autoencoder))


@pytest.mark.parametrize(("kind", "inside"), [("sdxl", torch.float32), ("sd1", torch.float16)])
def test_only_sdxls_fp16_vae_is_upcast_and_restored(kind, inside) -> None:
    model = tiny_model(kind, torch.float16)
    with vae.upcast(model) as upcast:
        assert upcast is model.pipe.vae and upcast.dtype == inside
    assert model.pipe.vae.dtype == torch.float16


def test_sdxl_fp16_decodes_and_encodes_as_its_vae_in_fp32() -> None:
    model = tiny_model("sdxl", torch.float16)
    reference = copy.deepcopy(model.pipe.vae).to(torch.float32)  # the same fp16 weights, widened
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    image = vae.decode_latents(model, latents)
    with torch.no_grad():
        expected = reference.decode(latents / reference.config.scaling_factor, return_dict=False)[0]
    assert image.dtype == torch.float32 and torch.equal(image, expected)
    encoded = vae.encode_pixels(model, expected.clamp(-1, 1), "cpu")
    with torch.no_grad():
        mean = reference.encode(expected.clamp(-1, 1)).latent_dist.mean * reference.config.scaling_factor
    assert encoded.dtype == torch.float16 and torch.equal(encoded, mean.to(torch.float16))
    assert model.pipe.vae.dtype == torch.float16
