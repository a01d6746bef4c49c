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


def test_nan_pixels_of_a_half_precision_vae_are_decoded_again_in_fp32_else_marked_broken() -> None:
    """A1111's "Automatically revert VAE to 32-bit floats" (on by default): rows an fp16/bf16 VAE decodes
    to NaN/inf are decoded again in fp32; rows still broken come back as None (the pipeline fails them)."""
    from diffusers.image_processor import VaeImageProcessor

    model = tiny_model("sd1", torch.bfloat16)
    model.pipe.image_processor = VaeImageProcessor(vae_scale_factor=8)
    autoencoder = model.pipe.vae
    real, seen, broken = autoencoder.decode, [], {"in": (torch.bfloat16,)}

    def decode(z, return_dict=False):
        seen.append(autoencoder.dtype)
        out = real(z, return_dict=False)[0]
        bad = out.new_full((), float("nan")) if autoencoder.dtype in broken["in"] else out.new_zeros(())
        return (out + bad,)

    autoencoder.decode = decode
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    images = vae.decode(model, latents)
    assert seen == [torch.bfloat16, torch.float32] and all(image is not None for image in images)
    assert autoencoder.dtype == torch.bfloat16  # back in its own dtype
    seen.clear()
    broken["in"] = (torch.bfloat16, torch.float32)
    assert vae.decode(model, latents) == [None, None] and seen == [torch.bfloat16, torch.float32]


def test_a_job_whose_vae_gives_nan_fails_with_the_likely_cause(sd15_engine, monkeypatch) -> None:
    from core.types import GenerationError, GenerationRequest

    request = GenerationRequest(prompt="a cat", seed=1, width=64, height=64, steps=2, sampler="Euler")
    sd15_engine.generate(request)
    autoencoder = next(iter(sd15_engine.models._models.values())).pipe.vae
    real = autoencoder.decode
    monkeypatch.setattr(autoencoder, "decode", lambda z, return_dict=False: (real(z)[0] * float("inf"),))
    with pytest.raises(GenerationError, match=r"VAE decoded NaN/infinite pixels.*try another VAE"):
        sd15_engine.generate(request)
