"""An upscale job (``Mode.UPSCALE``): a stored image to ``width × height`` by an upscaler model (or a PIL
resampler), then optionally A1111's SD upscale detail pass: the upscaled image in overlapping tiles, each
repainted by img2img at a low denoising strength (the engine's own img2img, passed in), blended back.

Without a detail pass nothing is random (the same image gives the same bytes) and no SD model is loaded.
The infotext keeps the source's parameters (A1111's extras tab keeps them too) and adds A1111's
``Postprocess upscale to`` / ``Postprocess upscaler`` keys, and ``SD upscale …`` for a detail pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from core import ranges
from core.engine import image_modes
from core.engine.postprocess.tiling import tile_starts
from core.types import GenerationRequest

# img2img of one tile: (tile, index among the tiles) -> the repainted tile, same size.
TileImg2Img = Callable[[Image.Image, int], Image.Image]


def upscale_image(post: Any, request: GenerationRequest, source: Image.Image, progress=None) -> Image.Image:
    """The source upscaled to the request's size by its upscaler (``post``: ``PostModels``)."""
    width, height = request.width, request.height
    if request.upscaler in image_modes.IMAGE_UPSCALERS:
        return image_modes.upscale_image(source.convert("RGB"), width, height, request.upscaler)
    return post.upscalers.upscale_to(
        source.convert("RGB"), request.upscaler, width, height, progress=progress
    )


def detail_tiles(width: int, height: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """SD upscale's tiles over a ``width × height`` image: ``(x, y, tile_w, tile_h)``, sides multiples of 8."""
    tile_w = min(tile, width) // ranges.SIDE_MULTIPLE * ranges.SIDE_MULTIPLE
    tile_h = min(tile, height) // ranges.SIDE_MULTIPLE * ranges.SIDE_MULTIPLE
    return [
        (x, y, tile_w, tile_h)
        for y in tile_starts(height, tile_h, overlap)
        for x in tile_starts(width, tile_w, overlap)
    ]


def _weights(length: int, start: int, starts: list[int]) -> np.ndarray:
    """A tile's blend weight along one axis: a linear ramp over each band it shares with a neighbour
    (A1111's ``combine_grid`` blends the overlap linearly)."""
    weight = np.ones(length, np.float32)
    position = np.arange(length, dtype=np.float32) + 0.5
    index = starts.index(start)
    if index > 0:
        shared = starts[index - 1] + length - start
        weight *= np.clip(position / max(shared, 1), 0.0, 1.0)
    if index < len(starts) - 1:
        shared = start + length - starts[index + 1]
        weight *= np.clip((length - position) / max(shared, 1), 0.0, 1.0)
    return weight


def detail_pass(image: Image.Image, tile: int, overlap: int, img2img: TileImg2Img) -> Image.Image:
    """Every tile of ``image`` through ``img2img``, blended back where tiles overlap."""
    width, height = image.size
    tiles = detail_tiles(width, height, tile, overlap)
    xs = sorted({x for x, _, _, _ in tiles})
    ys = sorted({y for _, y, _, _ in tiles})
    total = np.zeros((height, width, 1), np.float32)
    out = np.zeros((height, width, 3), np.float32)
    for i, (x, y, w, h) in enumerate(tiles):
        crop = image.crop((x, y, x + w, y + h))
        repainted = img2img(crop, i).convert("RGB")
        if repainted.size != (w, h):
            repainted = repainted.resize((w, h), Image.Resampling.LANCZOS)
        weight = np.outer(_weights(h, y, ys), _weights(w, x, xs))[..., None]
        out[y : y + h, x : x + w] += np.asarray(repainted, np.float32) * weight
        total[y : y + h, x : x + w] += weight
    return Image.fromarray(np.rint(out / np.maximum(total, 1e-8)).clip(0, 255).astype(np.uint8), "RGB")


def infotext_params(request: GenerationRequest, overlap: int) -> dict[str, Any]:
    params: dict[str, Any] = {
        "Postprocess upscale to": f"{request.width}x{request.height}",
        "Postprocess upscaler": request.upscaler,
    }
    if request.upscale_detail > 0:
        params |= {
            "SD upscale overlap": overlap,
            "SD upscale upscaler": request.upscaler,
            "Detail strength": request.upscale_detail,
        }
    return params


def append_params(text: str, params: dict[str, Any]) -> str:
    """``text`` (an A1111 infotext, or empty) with ``params`` added to its parameters line."""
    from core.engine.infotext import _PARAM, quote

    extra = ", ".join(f"{key}: {quote(value)}" for key, value in params.items())
    if not text.strip():
        return extra
    last = text.rstrip().split("\n")[-1]
    has_params = len(_PARAM.findall(last)) >= 3  # A1111's rule for a parameters line
    return f"{text.rstrip()}, {extra}" if has_params else f"{text.rstrip()}\n{extra}"
