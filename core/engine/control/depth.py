"""The ``depth_anything_v2`` preprocessor: Depth Anything V2 through transformers.

The model is a transformers folder (``config.json`` + ``model.safetensors``, the layout of
``depth-anything/Depth-Anything-V2-Small-hf``) named ``depth_anything_v2`` or
``Depth-Anything-V2-{Small,Base,Large}-hf`` inside ``engine.preprocessor_dirs``. Licences: the Small
model is Apache-2.0; Base and Large are CC-BY-NC-4.0 (non-commercial).

As sd-webui-controlnet runs it: the image in [0, 1] is scaled (bicubic) so both sides are at least
518 and multiples of 14, keeping its aspect, normalised with ImageNet's mean and std; the predicted
relative depth is scaled back to the image (bilinear) and stretched to 0..255 (near = bright). One
difference: sd-webui-controlnet swaps the channels to BGR before the model (a leftover of the reference
code, which reads files with OpenCV); chant gives the model RGB, as it was trained.
"""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from core.engine.control.available import DEPTH_FOLDER_NAMES as FOLDER_NAMES  # noqa: F401
from core.engine.control.available import find_depth_model as find_model
from core.engine.control.available import find_preprocessor_model  # noqa: F401

INPUT_SIZE = 518
MULTIPLE = 14
MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])

_lock = threading.Lock()
_loaded: dict[tuple[str, str], torch.nn.Module] = {}


def network_size(height: int, width: int) -> tuple[int, int]:
    """Depth Anything's input size: the smallest scale with both sides >= 518, as multiples of 14."""
    scale = max(INPUT_SIZE / height, INPUT_SIZE / width)

    def constrain(x: float) -> int:
        y = int(np.round(x / MULTIPLE) * MULTIPLE)
        return y if y >= INPUT_SIZE else int(np.ceil(x / MULTIPLE) * MULTIPLE)

    return constrain(scale * height), constrain(scale * width)


def _model(path: Path, device: str) -> torch.nn.Module:
    from transformers import DepthAnythingForDepthEstimation

    key = (str(path), device)
    with _lock:
        if key not in _loaded:
            _loaded.clear()  # one preprocessor model at a time: they are only needed while a job starts
            model = DepthAnythingForDepthEstimation.from_pretrained(str(path), local_files_only=True)
            _loaded[key] = model.to(device).requires_grad_(False).eval()
        return _loaded[key]


def pixel_values(image: np.ndarray) -> torch.Tensor:
    """The network input for an (H, W, 3) RGB uint8 image: (1, 3, h, w) float32."""
    height, width = network_size(image.shape[0], image.shape[1])
    x = cv2.resize(image / 255.0, (width, height), interpolation=cv2.INTER_CUBIC)
    x = (x - MEAN) / STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)).astype(np.float32))[None]


def depth_anything_v2(image: np.ndarray, folders: tuple[str, ...], device: str = "cpu") -> np.ndarray:
    """The relative depth of an (H, W, 3) RGB uint8 image as an (H, W) uint8 map (near = 255)."""
    model = _model(find_model(folders), device)
    height, width = image.shape[:2]
    with torch.no_grad():
        depth = model(pixel_values=pixel_values(image).to(device)).predicted_depth
        depth = F.interpolate(depth[None], (height, width), mode="bilinear", align_corners=False)[0, 0]
    low, high = depth.min(), depth.max()
    if float(high - low) == 0.0:
        return np.zeros((height, width), dtype=np.uint8)
    return ((depth - low) / (high - low) * 255.0).cpu().numpy().astype(np.uint8)
