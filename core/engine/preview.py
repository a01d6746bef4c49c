"""Cheap live previews: latents → RGB with a fixed linear map, no VAE (A1111's "Approx cheap").

Each latent channel contributes linearly to R, G and B. The factors are least-squares fits of VAE-decoded
colours against latents, as published for the community:
- SD 1.x/2.x: Keturn, "Decoding latents to RGB without upscaling", Hugging Face forums, 2022
  (https://discuss.huggingface.co/t/decoding-latents-to-rgb-without-upscaling/23204); the same table is
  A1111's "Approx cheap" preview.
- SDXL: the SDXL fit published with ComfyUI's ``latent_formats.SDXL`` (``latent_rgb_factors`` and bias).
They apply to the latents the UNet sees (VAE latents times the scaling factor). The preview has the
latent's resolution (1/8 of the image: 64x64 for 512x512).
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

#                R        G        B
_SD1 = np.array(
    [
        [0.298, 0.207, 0.208],
        [0.187, 0.286, 0.173],
        [-0.158, 0.189, 0.264],
        [-0.184, -0.271, -0.473],
    ],
    dtype=np.float32,
)
_SDXL = np.array(
    [
        [0.3651, 0.4232, 0.4341],
        [-0.2533, -0.0042, 0.1068],
        [0.1076, 0.1111, -0.0362],
        [-0.3165, -0.2492, -0.2188],
    ],
    dtype=np.float32,
)
_SDXL_BIAS = np.array([0.1084, -0.0175, -0.0011], dtype=np.float32)

FACTORS: dict[str, tuple[np.ndarray, np.ndarray]] = {
    "sd1": (_SD1, np.zeros(3, dtype=np.float32)),
    "sd2": (_SD1, np.zeros(3, dtype=np.float32)),  # SD 2.x uses the SD 1.x VAE
    "sdxl": (_SDXL, _SDXL_BIAS),
}


def latent_to_rgb(latents: torch.Tensor, kind: str, index: int = 0) -> np.ndarray:
    """``(h, w, 3)`` uint8 approximation of image ``index`` of ``latents`` ``(N, 4, h, w)`` or ``(4, h, w)``."""
    if kind not in FACTORS:
        raise ValueError(f"unknown latent kind {kind!r}; use one of: {', '.join(FACTORS)}")
    factors, bias = FACTORS[kind]
    if latents.ndim == 4:
        if not 0 <= index < latents.shape[0]:
            raise ValueError(f"image index {index} outside a batch of {latents.shape[0]}")
        latents = latents[index]
    if latents.ndim != 3 or latents.shape[0] != factors.shape[0]:
        raise ValueError(
            f"expected latents (N, {factors.shape[0]}, h, w) or ({factors.shape[0]}, h, w), got {tuple(latents.shape)}"
        )
    lat = latents.detach().to("cpu", torch.float32).numpy()
    rgb = np.tensordot(lat, factors, axes=([0], [0])) + bias  # (h, w, 3), roughly -1..1
    return (np.clip((rgb + 1.0) * 127.5, 0, 255) + 0.5).astype(np.uint8)


def latent_preview(latents: torch.Tensor, kind: str = "sd1", index: int = 0) -> bytes:
    """Small PNG bytes previewing image ``index`` of ``latents``; ``kind`` is "sd1", "sd2" or "sdxl"."""
    buf = io.BytesIO()
    Image.fromarray(latent_to_rgb(latents, kind, index), "RGB").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
