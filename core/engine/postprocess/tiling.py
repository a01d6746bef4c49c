"""Tiled inference for image-to-image models: tiles with overlap, blended back without seams.

Like A1111's ``upscale_with_model`` (``images.split_grid`` / ``combine_grid``), tiles of ``tile`` pixels
are spread evenly over the image so that neighbours share at least ``overlap`` pixels, and each output
pixel in a shared band is a weighted mean of the tiles that cover it. Unlike A1111's grid, the weights
are not a plain linear ramp over the whole band: the outer quarter of the band on each side gets weight
0 (a tile's edge pixels saw padding, not the neighbour's image), the middle half ramps linearly. So a
model whose receptive field reaches less than ``overlap // 4`` input pixels gives exactly its untiled
result, and a wider one (ESRGAN, transformers) blends smoothly across the middle of each band.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

TileProgress = Callable[[int, int], None]  # (tiles done, tiles in all); may raise to cancel


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of ``tile``-long windows covering ``[0, size)``, neighbours sharing >= ``overlap``."""
    if tile <= 0 or tile >= size:
        return [0]
    overlap = min(max(overlap, 0), tile - 1)
    count = math.ceil((size - overlap) / (tile - overlap))
    step = (size - tile) / (count - 1)
    return [min(int(i * step), size - tile) for i in range(count)]


def _axis_weights(starts: list[int], index: int, length: int, scale: int) -> torch.Tensor:
    """One tile's blend weights along one axis, in output pixels (``length`` input pixels long)."""
    j = torch.arange(length * scale, dtype=torch.float32) + 0.5
    weight = torch.ones_like(j)
    if index > 0:  # band shared with the previous tile: [start, previous end)
        shared = (starts[index - 1] + length - starts[index]) * scale
        weight *= _ramp(j, shared)
    if index < len(starts) - 1:
        shared = (starts[index] + length - starts[index + 1]) * scale
        weight *= _ramp(length * scale - j, shared)
    return weight


def _ramp(distance: torch.Tensor, shared: int) -> torch.Tensor:
    margin = shared // 4
    width = max(shared - 2 * margin, 1)
    return ((distance - margin) / width).clamp(0.0, 1.0)


def run_tiled(
    model: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    *,
    scale: int,
    tile: int,
    overlap: int,
    progress: TileProgress | None = None,
) -> torch.Tensor:
    """``model`` over ``image`` (1×C×H×W, on the model's device and dtype) in tiles; float32 on the CPU.

    ``tile <= 0`` runs the whole image at once. The output is ``scale`` times the input on each side.
    """
    _, channels, height, width = image.shape
    if tile <= 0 or (tile >= height and tile >= width):
        out = model(image).float().cpu()
        if progress:
            progress(1, 1)
        return out
    tile_h, tile_w = min(tile, height), min(tile, width)
    ys, xs = tile_starts(height, tile_h, overlap), tile_starts(width, tile_w, overlap)
    result = torch.zeros(1, channels, height * scale, width * scale, dtype=torch.float32)
    total = torch.zeros(1, 1, height * scale, width * scale, dtype=torch.float32)
    done = 0
    for iy, y in enumerate(ys):
        wy = _axis_weights(ys, iy, tile_h, scale)
        for ix, x in enumerate(xs):
            out = model(image[..., y : y + tile_h, x : x + tile_w]).float().cpu()
            if out.shape[-2:] != (tile_h * scale, tile_w * scale):
                raise ValueError(f"the model returned {tuple(out.shape[-2:])} for a {tile_h}x{tile_w} tile at scale {scale}")
            weight = torch.outer(wy, _axis_weights(xs, ix, tile_w, scale))[None, None]
            region = (..., slice(y * scale, (y + tile_h) * scale), slice(x * scale, (x + tile_w) * scale))
            result[region] += out.mul_(weight)
            total[region] += weight
            done += 1
            if progress:
                progress(done, len(ys) * len(xs))
    return result.div_(total)
