"""Zoom out (1.5×, 2×) and Pan (⬅️➡️⬆️⬇️), as Midjourney offers them, done with chant's inpaint path.

Geometry (decided here, as Midjourney behaves):

- **Zoom out** keeps the image's size and aspect: the source is shrunk by the factor and centred on a
  canvas of the source's own size, and the border around it is painted. (Midjourney's zoom does not
  grow the picture either, and a model paints best at the size it made the source at.)
- **Pan** grows the canvas by half the source in one direction (1024×1024 panned right is 1536×1024):
  the source stays at full size on the far side and the new strip is painted.
- Either canvas is then fitted into the guild's pixel limit (``max_pixels``, and ``MAX_SIDE`` a side)
  by scaling canvas and source together, and rounded down to multiples of 8; the source is resized
  with Lanczos only when it has to shrink.

Masking (A1111's "Poor man's outpainting", its defaults): the mask is white (repaint) over the new area
and ``OVERLAP`` pixels (2 × its mask blur of 4) into the source along every side the canvas extends
beyond it, so the seam is repainted too; the engine blurs it by ``MASK_BLUR`` (the script's ``mask_blur
* 2``), fills the masked area with the surrounding colours (masked content ``fill``) and, after
sampling, composites the source back wherever the blurred mask is clear. New pixels of the canvas are
pre-filled by stretching the source's edge (A1111's "resize and fill"), so the canvas reads sensibly
with any masked-content choice. Denoising strength ``STRENGTH`` 0.8 is what A1111's "Outpainting mk2"
recommends (the poor man's script takes the user's, 0.75 by default); the seed is new (a reroll's).
A1111's script also passes a second, tighter latent mask; chant's inpaint path derives the latent mask
from the blurred mask, so that detail differs.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from PIL import Image

from core.ranges import MAX_SIDE, MIN_SIDE, SIDE_MULTIPLE
from core.types import GenerationRequest, Mode

ZOOM_FACTORS = (1.5, 2.0)  # Midjourney's buttons (its custom zoom allows 1..2)
MAX_ZOOM = 2.0
PAN_FRACTION = 0.5  # a pan adds half the source in its direction
OVERLAP = 8  # pixels of the source repainted along each seam
MASK_BLUR = 8
FILL = 0  # A1111 masked content "fill"
STRENGTH = 0.8


class Direction(StrEnum):
    LEFT = "left"
    RIGHT = "right"
    UP = "up"
    DOWN = "down"


@dataclass(frozen=True)
class Geometry:
    """A canvas and where the (resized) source goes on it."""

    width: int  # canvas, a multiple of 8
    height: int
    x: int  # the source's box on the canvas
    y: int
    source_width: int
    source_height: int

    @property
    def margins(self) -> tuple[int, int, int, int]:
        """New pixels on the left, top, right and bottom."""
        return (self.x, self.y, self.width - self.x - self.source_width, self.height - self.y - self.source_height)


@dataclass(frozen=True)
class Outpaint:
    request: GenerationRequest
    geometry: Geometry
    canvas: Image.Image  # RGB, the init image
    mask: Image.Image  # L, white = repaint


def _fit(width: float, height: float, max_pixels: int) -> tuple[int, int]:
    """The largest multiple-of-8 size of this aspect within the pixel and side limits (never grown)."""
    scale = min(1.0, math.sqrt(max_pixels / (width * height)), MAX_SIDE / width, MAX_SIDE / height)
    w = int(width * scale) // SIDE_MULTIPLE * SIDE_MULTIPLE
    h = int(height * scale) // SIDE_MULTIPLE * SIDE_MULTIPLE
    if w < MIN_SIDE or h < MIN_SIDE:
        raise ValueError(
            f"a {w}×{h} canvas is too small to paint (at least {MIN_SIDE} a side): the source is too narrow"
        )
    return w, h


def _nearest8(value: float) -> int:
    return max(SIDE_MULTIPLE, round(value / SIDE_MULTIPLE) * SIDE_MULTIPLE)


def _ceil8(value: int) -> int:
    return -(-value // SIDE_MULTIPLE) * SIDE_MULTIPLE


def zoom_geometry(src_width: int, src_height: int, factor: float, max_pixels: int) -> Geometry:
    """Zoom out by ``factor`` (1 < factor ≤ 2): a canvas of the source's size, the source shrunk and centred."""
    if not 1.0 < factor <= MAX_ZOOM:
        raise ValueError(f"the zoom factor must be above 1 and at most {MAX_ZOOM:g}, not {factor:g}")
    width, height = _fit(src_width, src_height, max_pixels)
    scale = min(width / (src_width * factor), height / (src_height * factor))
    sw, sh = max(1, round(src_width * scale)), max(1, round(src_height * scale))
    # Multiples of 8 bend the canvas's aspect a little: trim the looser side back to the view's.
    width = min(width, max(_nearest8(sw * factor), _ceil8(sw), MIN_SIDE))
    height = min(height, max(_nearest8(sh * factor), _ceil8(sh), MIN_SIDE))
    return Geometry(width, height, (width - sw) // 2, (height - sh) // 2, sw, sh)


def pan_geometry(src_width: int, src_height: int, direction: Direction | str, max_pixels: int) -> Geometry:
    """Pan: the canvas grows by ``PAN_FRACTION`` of the source towards ``direction``."""
    direction = Direction(direction)
    horizontal = direction in (Direction.LEFT, Direction.RIGHT)
    grow_w = 1 + PAN_FRACTION if horizontal else 1.0
    grow_h = 1.0 if horizontal else 1 + PAN_FRACTION
    width, height = _fit(src_width * grow_w, src_height * grow_h, max_pixels)
    scale = min(width / (src_width * grow_w), height / (src_height * grow_h))
    sw, sh = min(width, round(src_width * scale)), min(height, round(src_height * scale))
    # Rounding the other side down to a multiple of 8 may have shrunk the source: grow by half of it.
    if horizontal:
        width = min(width, max(_nearest8(sw * grow_w), _ceil8(sw), MIN_SIDE))
    else:
        height = min(height, max(_nearest8(sh * grow_h), _ceil8(sh), MIN_SIDE))
    x = {Direction.LEFT: width - sw, Direction.RIGHT: 0}.get(direction, (width - sw) // 2)
    y = {Direction.UP: height - sh, Direction.DOWN: 0}.get(direction, (height - sh) // 2)
    return Geometry(width, height, x, y, sw, sh)


def canvas_and_mask(source: Image.Image, geometry: Geometry, overlap: int = OVERLAP) -> tuple[Image.Image, Image.Image]:
    """The init image (source in its box, edges stretched outwards) and the repaint mask."""
    g = geometry
    placed = source.convert("RGB")
    if placed.size != (g.source_width, g.source_height):
        placed = placed.resize((g.source_width, g.source_height), Image.Resampling.LANCZOS)
    left, top, right, bottom = g.margins
    pixels = np.pad(np.asarray(placed), ((top, bottom), (left, right), (0, 0)), mode="edge")
    canvas = Image.fromarray(pixels, "RGB")
    mask = np.full((g.height, g.width), 255, dtype=np.uint8)
    keep_x0 = g.x + (overlap if left else 0)
    keep_y0 = g.y + (overlap if top else 0)
    keep_x1 = g.x + g.source_width - (overlap if right else 0)
    keep_y1 = g.y + g.source_height - (overlap if bottom else 0)
    if keep_x1 > keep_x0 and keep_y1 > keep_y0:
        mask[keep_y0:keep_y1, keep_x0:keep_x1] = 0
    return canvas, Image.fromarray(mask, "L")


def outpaint_request(base: GenerationRequest, canvas: Image.Image, mask: Image.Image, *, seed: int = -1) -> GenerationRequest:
    """``base`` (the source job's request: prompts, model, sampler, steps, CFG…) turned into an inpaint of
    ``canvas`` with ``mask``. Hires fix and the variation seed are dropped: the canvas is the size."""
    return base.replace(
        mode=Mode.INPAINT,
        init_image=_png(canvas),
        mask_image=_png(mask),
        width=canvas.width,
        height=canvas.height,
        seed=seed,
        subseed=-1,
        subseed_strength=0.0,
        denoising_strength=STRENGTH,
        resize_mode=0,
        mask_blur=MASK_BLUR,
        inpainting_fill=FILL,
        inpaint_full_res=False,
        enable_hr=False,
    )


def zoom_out(base: GenerationRequest, source: Image.Image | bytes, factor: float, max_pixels: int) -> Outpaint:
    """Zoom out one image of a job (``source``: the image, as posted) by ``factor``."""
    image = _image(source)
    geometry = zoom_geometry(image.width, image.height, factor, max_pixels)
    canvas, mask = canvas_and_mask(image, geometry)
    return Outpaint(outpaint_request(base, canvas, mask), geometry, canvas, mask)


def pan(base: GenerationRequest, source: Image.Image | bytes, direction: Direction | str, max_pixels: int) -> Outpaint:
    """Pan one image of a job towards ``direction``."""
    image = _image(source)
    geometry = pan_geometry(image.width, image.height, direction, max_pixels)
    canvas, mask = canvas_and_mask(image, geometry)
    return Outpaint(outpaint_request(base, canvas, mask), geometry, canvas, mask)


def _image(source: Image.Image | bytes) -> Image.Image:
    """The source (a chant result): decoded only after its header says it fits ``MAX_SIDE``."""
    image = Image.open(io.BytesIO(source)) if isinstance(source, bytes | bytearray) else source
    if image.width > MAX_SIDE or image.height > MAX_SIDE:
        raise ValueError(f"the source is {image.width}×{image.height}; at most {MAX_SIDE} a side can be outpainted")
    image.load()
    return image


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
