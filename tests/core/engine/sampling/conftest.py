"""The oracle and the tiny model the sampling tests share.

The oracle is k-diffusion 0.0.16 (the version A1111 1.10 pins), test-only. Its package ``__init__`` pulls
in training code (torchvision, wandb, ...), so only ``k_diffusion/sampling.py`` and ``external.py`` are
loaded, under a bare ``k_diffusion`` package whose ``utils`` holds the one helper they use.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
import torch


def _load_k_diffusion():
    if "k_diffusion.sampling" in sys.modules:
        return sys.modules["k_diffusion.sampling"], sys.modules["k_diffusion.external"]
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None:
        pytest.skip("k-diffusion 0.0.16 is not installed (dev extra)")
    package = types.ModuleType("k_diffusion")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["k_diffusion"] = package
    utils = types.ModuleType("k_diffusion.utils")

    def append_dims(x, target_dims):
        return x[(...,) + (None,) * (target_dims - x.ndim)]

    utils.append_dims = append_dims
    sys.modules["k_diffusion.utils"] = utils
    package.utils = utils
    return importlib.import_module("k_diffusion.sampling"), importlib.import_module("k_diffusion.external")


@pytest.fixture(scope="session")
def kd():
    sampling, external = _load_k_diffusion()
    return types.SimpleNamespace(sampling=sampling, external=external)


@dataclass
class TinyUNet:
    """A tiny random SD1.5-shaped UNet (fp32, CPU) with a fixed positive and negative conditioning."""

    unet: torch.nn.Module
    cond: torch.Tensor
    uncond: torch.Tensor

    def __call__(self, x, t, rows_cond):
        return self.unet(x, t, encoder_hidden_states=rows_cond).sample


@pytest.fixture(scope="session")
def tiny_unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32,
    ).eval()
    for p in unet.parameters():  # random weights give tiny outputs; make the model's ε of unit size
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(1)
    return TinyUNet(unet, torch.randn((1, 4, 32), generator=g), torch.randn((1, 4, 32), generator=g))


@contextmanager
def hijacked_randn(kd_sampling, image_rng):
    """A1111's TorchHijack: k-diffusion's ``torch.randn_like`` returns the job's ``ImageRNG.next()``."""

    class TorchHijack:
        def __getattr__(self, item):
            if item == "randn_like":
                return lambda x: image_rng.next()
            return getattr(torch, item)

    original = kd_sampling.torch
    kd_sampling.torch = TorchHijack()
    try:
        yield
    finally:
        kd_sampling.torch = original
