"""Tiny random-weight upscaler models of each architecture chant offers, for tests and benchmarks.

``build_tiny_upscaler(arch, path)`` builds spandrel's own module class at a tiny size, and writes its
state dict as a ``.safetensors`` file that the real loader then recognises by its keys (no download).
``full=True`` gives the real shape of a well-known model of that architecture (R-ESRGAN 4x+ for ESRGAN,
realesr-general-x4v3 for Compact) with random weights, for timing on a GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from core.engine.postprocess.spandrel_loader import import_spandrel

ARCHITECTURES = ("ESRGAN", "Compact", "SwinIR", "DAT", "HAT")


def _builders(scale: int, full: bool) -> dict[str, Callable[[], Any]]:
    import_spandrel()
    from spandrel.architectures.Compact import Compact
    from spandrel.architectures.DAT import DAT
    from spandrel.architectures.ESRGAN import ESRGAN
    from spandrel.architectures.HAT import HAT
    from spandrel.architectures.SwinIR import SwinIR

    if full:
        return {
            "ESRGAN": lambda: ESRGAN(num_filters=64, num_blocks=23, scale=scale),
            "Compact": lambda: Compact(num_feat=64, num_conv=32, upscale=scale),
        }
    return {
        "ESRGAN": lambda: ESRGAN(num_filters=8, num_blocks=1, scale=scale),
        "Compact": lambda: Compact(num_feat=8, num_conv=2, upscale=scale),
        "SwinIR": lambda: SwinIR(embed_dim=12, depths=[1], num_heads=[2], window_size=4, upscale=scale,
                                 upsampler="pixelshuffle", mlp_ratio=2.0),
        "DAT": lambda: DAT(embed_dim=16, depth=[1], num_heads=[2], split_size=[2, 4], upscale=scale,
                           expansion_factor=2.0),
        "HAT": lambda: HAT(embed_dim=12, depths=[1], num_heads=[2], window_size=4, upscale=scale, mlp_ratio=2.0,
                           num_feat=8, compress_ratio=3, squeeze_factor=4),
    }


def tiny_state_dict(arch: str, *, scale: int = 4, seed: int = 0, full: bool = False) -> dict[str, torch.Tensor]:
    builders = _builders(scale, full)
    if arch not in builders:
        raise ValueError(f"no {'full-size' if full else 'tiny'} {arch} model (have: {', '.join(builders)})")
    torch.manual_seed(seed)
    module = builders[arch]()
    return {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}


def build_tiny_upscaler(arch: str, path: Path, *, scale: int = 4, seed: int = 0, full: bool = False) -> Path:
    """Write a random-weight ``arch`` upscaler to ``path`` (a ``.safetensors`` file) and return it."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tiny_state_dict(arch, scale=scale, seed=seed, full=full), str(path))
    return path
