"""Upscaler models (ESRGAN, Real-ESRGAN, SwinIR, DAT, HAT, …) by name, as A1111 1.8+ offers them.

Every weights file under ``postprocess.upscaler_dirs`` is an upscaler named by its file stem
(``4x-UltraSharp``), as A1111's ``modelloader.friendly_name``; A1111's built-in upscalers keep their
A1111 names (``R-ESRGAN 4x+``) when their file is installed, so infotexts from A1111 read back. The
architecture comes from the weights (spandrel), never from the folder.

Upscaling follows A1111: the image goes in as BGR in [0, 1] (A1111's ``pil_image_to_torch_bgr``), runs
in tiles (:mod:`.tiling`), and ``upscale_by`` repeats the model (at most 3 passes) until the target —
the input times ``scale``, rounded down to a multiple of 8 — is reached, then resizes to it with Lanczos
(``Upscaler.upscale``); ``upscale_to`` covers a ``width × height`` box and Lanczos-resizes to it exactly
(``images.resize_image`` for hires fix). A ×2 from a ×4 model is one ×4 pass, then Lanczos down.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from core import ranges
from core.config import PostprocessSettings
from core.engine.postprocess.names import resolve_upscaler, upscaler_files, upscaler_names
from core.engine.postprocess.spandrel_loader import load_descriptor, pick_dtype
from core.engine.postprocess.tiling import TileProgress, run_tiled

MAX_PASSES = 3  # A1111's Upscaler.upscale runs the model at most three times to reach the target


def pil_to_bgr(image: Image.Image) -> torch.Tensor:
    """1×3×H×W float32 in [0, 1], BGR: the channel order A1111 feeds every upscaler model."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32)[:, :, ::-1] / 255.0
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))[None]


def bgr_to_pil(tensor: torch.Tensor) -> Image.Image:
    array = tensor[0].float().clamp(0, 1).numpy().transpose(1, 2, 0)[:, :, ::-1]
    return Image.fromarray(np.rint(array * 255.0).astype(np.uint8), "RGB")


@dataclass
class UpscalerModel:
    """One loaded upscaler: spandrel's descriptor on its device, in its inference dtype."""

    name: str
    path: Path
    descriptor: Any  # spandrel.ImageModelDescriptor
    device: torch.device
    dtype: torch.dtype

    @property
    def scale(self) -> int:
        return int(self.descriptor.scale)

    @property
    def architecture(self) -> str:
        return str(self.descriptor.architecture.id)  # spandrel's id: ESRGAN, Compact, SwinIR, DAT, HAT, …

    def run(self, image: Image.Image, *, tile: int, overlap: int, progress: TileProgress | None = None) -> Image.Image:
        """One pass of the model over ``image`` (``scale`` times larger), tiled."""
        tensor = pil_to_bgr(image).to(self.device, self.dtype)
        with torch.inference_mode():
            out = run_tiled(self.descriptor, tensor, scale=self.scale, tile=tile, overlap=overlap, progress=progress)
        return bgr_to_pil(out)


class Upscalers:
    """The upscaler models of one server: listing, name resolution, loading (LRU) and upscaling."""

    def __init__(
        self,
        settings: PostprocessSettings,
        *,
        allow_pickle: bool,
        device: str | torch.device = "cpu",
        max_loaded: int = 1,
    ) -> None:
        self.settings = settings
        self.allow_pickle = allow_pickle
        self.device = torch.device(device)
        self.max_loaded = max(1, max_loaded)
        self._loaded: OrderedDict[Path, UpscalerModel] = OrderedDict()
        self._lock = threading.Lock()

    # -- names -------------------------------------------------------------------------------------

    def _files(self) -> dict[str, Path]:
        return upscaler_files(self.settings)

    def names(self) -> list[str]:
        """Every installed upscaler, A1111's built-ins under their A1111 names, sorted."""
        return upscaler_names(self.settings)

    def resolve(self, name: str) -> Path:
        """The file of upscaler ``name`` (an A1111 name or a file stem), inside the configured folders."""
        return resolve_upscaler(self.settings, name)

    # -- loading -----------------------------------------------------------------------------------

    def load(self, name: str) -> UpscalerModel:
        path = self.resolve(name)
        with self._lock:
            model = self._loaded.get(path)
            if model is not None:
                self._loaded.move_to_end(path)
                return model
            while len(self._loaded) >= self.max_loaded:
                _, old = self._loaded.popitem(last=False)
                old.descriptor.to("cpu")
            descriptor = load_descriptor(path, allow_pickle=self.allow_pickle)
            dtype = pick_dtype(descriptor, self.device)
            descriptor.to(self.device, dtype)
            model = UpscalerModel(name=name, path=path, descriptor=descriptor, device=self.device, dtype=dtype)
            self._loaded[path] = model
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            return model

    def unload(self) -> None:
        with self._lock:
            self._loaded.clear()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # -- upscaling ---------------------------------------------------------------------------------

    def upscale_by(
        self, image: Image.Image, name: str, scale: float, *, progress: TileProgress | None = None
    ) -> Image.Image:
        """A1111's ``Upscaler.upscale``: to ``int(side * scale) // 8 * 8`` on each side."""
        if not ranges.MIN_UPSCALE_FACTOR <= scale <= ranges.MAX_UPSCALE_FACTOR:
            raise ValueError(
                f"upscale factor must be from {ranges.MIN_UPSCALE_FACTOR:g} to {ranges.MAX_UPSCALE_FACTOR:g}, not {scale:g}"
            )
        width, height = int(image.width * scale) // 8 * 8, int(image.height * scale) // 8 * 8
        if width < 8 or height < 8:
            raise ValueError(f"a {image.width}x{image.height} image scaled by {scale} is smaller than 8 pixels")
        return self._reach(image, name, width, height, progress)

    def upscale_to(
        self, image: Image.Image, name: str, width: int, height: int, *, progress: TileProgress | None = None
    ) -> Image.Image:
        """A1111's ``resize_image(0, image, width, height, upscaler)``: cover the box, then resize to it."""
        if width < 1 or height < 1:
            raise ValueError(f"target size must be positive, not {width}x{height}")
        scale = max(width / image.width, height / image.height)
        if scale > 1.0:
            self.resolve(name)  # an unknown name is an error even when no pass is needed
            image = self._reach(
                image, name, int(image.width * scale) // 8 * 8, int(image.height * scale) // 8 * 8, progress
            )
        if image.size != (width, height):
            image = image.resize((width, height), resample=Image.Resampling.LANCZOS)
        return image

    def _reach(
        self, image: Image.Image, name: str, width: int, height: int, progress: TileProgress | None
    ) -> Image.Image:
        model = self.load(name)
        image = image.convert("RGB")
        for _ in range(MAX_PASSES):
            if image.width >= width and image.height >= height:
                break
            before = image.size
            image = model.run(
                image, tile=self.settings.upscale_tile, overlap=self.settings.upscale_tile_overlap, progress=progress
            )
            if image.size == before:  # a 1x model (ScuNET): one pass, then resize
                break
        if image.size != (width, height):
            image = image.resize((width, height), resample=Image.Resampling.LANCZOS)
        return image
