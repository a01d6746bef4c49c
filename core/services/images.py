"""Checking the images users upload for img2img and inpainting (Pillow only, no torch).

Uploaded bytes are untrusted: :func:`load_source` opens them with :mod:`core.imagefile` (as the engine
does), refuses anything that is not a readable still image or that is larger than the operator's pixel
limit (checked from the header, before decoding, so a decompression bomb is never decoded), and
re-encodes what it accepts, 8 bits a channel, as PNG, the format :class:`core.types.GenerationRequest`
carries. :func:`load_mask` does the same for a mask
and, as A1111 does, resizes a mask of another size to the source's size.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image

from core import ranges
from core.imagefile import DamagedImage, ImageTooLarge, NotAnImage, decode, open_image, to_8bit
from core.services.types import UserError

FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")


@dataclass(frozen=True)
class SourceImage:
    png: bytes
    width: int
    height: int
    transparent: bool  # it has transparent pixels: kept as RGBA, the engine repaints them (inpaint)


def _open(data: bytes, what: str, max_pixels: int) -> Image.Image:
    """Decoded, upright and 8 bits a channel (:mod:`core.imagefile`), or a UserError naming the problem."""
    if not data:
        raise UserError("image.invalid", f"The {what} is empty; attach a PNG, JPEG or WebP image.")
    try:
        img = open_image(data, max_pixels=max_pixels, formats=FORMATS)
        width, height = img.size
        if width < 8 or height < 8:
            raise UserError(
                "image.invalid", f"The {what} is {width}×{height}; it must be at least 8×8 pixels."
            )
        return to_8bit(decode(img))
    except ImageTooLarge as exc:
        raise UserError(
            "image.too_large",
            f"The {what} is {exc.width}×{exc.height} ({exc.width * exc.height / 1e6:.1f} megapixels); "
            f"this bot accepts at most {max_pixels / 1e6:g} megapixels. Send a smaller image.",
        ) from None
    except NotAnImage:
        raise UserError(
            "image.invalid", f"The {what} is not an image I can read; attach a PNG, JPEG or WebP image."
        ) from None
    except DamagedImage as exc:
        raise UserError(
            "image.invalid", f"The {what} is damaged or cut off ({exc}); attach it again or re-save it."
        ) from None


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def load_source(data: bytes, *, max_pixels: int, what: str = "source image") -> SourceImage:
    """The source image as PNG: RGB, or RGBA when it has transparent pixels (A1111 repaints those when
    no mask is given; the engine derives that mask and flattens the rest onto white)."""
    img = _open(data, what, max_pixels)
    if img.mode in ("RGBA", "LA"):  # a palette's transparency is RGBA by now
        rgba = img.convert("RGBA")
        if rgba.getchannel("A").getextrema()[0] < 255:
            return SourceImage(_png(rgba), rgba.width, rgba.height, True)
    img = img.convert("RGB")
    return SourceImage(_png(img), img.width, img.height, False)


def load_mask(data: bytes, size: tuple[int, int], *, max_pixels: int) -> bytes:
    """The mask as a grayscale PNG of ``size`` (white = repaint); another size is resized as A1111 does."""
    img = _open(data, "mask", max_pixels)
    if img.mode in ("RGBA", "LA") and img.getchannel("A").getextrema()[0] < 255:
        # A transparent mask: what is painted (opaque) is repainted.
        gray = img.getchannel("A")
    else:
        gray = img.convert("L")
    if gray.size != size:
        gray = gray.resize(size, Image.Resampling.LANCZOS)
    if gray.getextrema()[1] == 0:
        raise UserError("image.mask", "The mask is all black: paint the parts to repaint in white.")
    return _png(gray)


def fit_size(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """The source's size, scaled to fit ``max_pixels`` and the engine's sides (``core.ranges``: a short
    side is scaled up to MIN_SIDE, a long one down to MAX_SIDE), in multiples of SIDE_MULTIPLE, keeping
    the aspect ratio as well as those allow."""
    low, high, step = ranges.MIN_SIDE, ranges.MAX_SIDE, ranges.SIDE_MULTIPLE
    scale = min(
        max(1.0, low / min(width, height)),
        (max_pixels / (width * height)) ** 0.5,
        high / max(width, height),
    )
    w = min(high, max(low, int(width * scale) // step * step))
    h = min(high, max(low, int(height * scale) // step * step))
    while w * h > max_pixels and (w > low or h > low):
        if w >= h:
            w -= step
        else:
            h -= step
    return w, h
