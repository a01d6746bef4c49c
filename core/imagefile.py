"""Opening untrusted image bytes (Pillow and numpy, no torch): the one place the bot's upload check
(:mod:`core.services.images`) and the engine's loader (:mod:`core.engine.image_modes`) open a picture,
so they refuse the same pictures for the same reasons.

* :func:`open_image` reads the header and holds the size to the caller's pixel limit before a pixel is
  decoded. Pillow's own decompression-bomb guard (89.5 MP warns, 179 MP refuses) would refuse a 30000²
  PNG of 100 KB with an error that does not say its size; here the caller's limit is the one limit, and
  the refusal names the size.
* :func:`decode` decodes the pixels and turns phone photos upright (EXIF orientation).
* :func:`to_8bit` makes any mode a user can upload 8 bits a channel: 16- and 32-bit greys scaled to their
  range (a 16-bit PNG of mean grey 80 stays 80; a plain ``convert`` clips it to white), CMYK, YCbCr,
  LAB, HSV, 1-bit and palette images converted, alpha kept.
"""

from __future__ import annotations

import io
import struct
import warnings
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


class NotAnImage(ValueError):
    """The bytes are not an image in one of the accepted formats."""


class DamagedImage(ValueError):
    """The header is readable, the pixels are not (cut off, corrupt)."""


class ImageTooLarge(ValueError):
    """More pixels than the caller's limit, by the header."""

    def __init__(self, width: int, height: int, max_pixels: int) -> None:
        super().__init__(f"{width}x{height} is over the limit of {max_pixels} pixels")
        self.width, self.height, self.max_pixels = width, height, max_pixels


def open_image(data: bytes, *, max_pixels: int, formats: Sequence[str] | None = None) -> Image.Image:
    """The image with its header read and its size checked; no pixel decoded yet."""
    if not data:
        raise NotAnImage("empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=formats)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Over Pillow's default limit: its own check stops before saying the size. Read the header
        # again without it; the caller's limit below decides.
        image = _open_over_pillows_limit(data, formats)
    except (UnidentifiedImageError, SyntaxError, OSError, ValueError, EOFError) as exc:
        raise NotAnImage(str(exc)) from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLarge(width, height, max_pixels)
    return image


def _open_over_pillows_limit(data: bytes, formats: Sequence[str] | None) -> Image.Image:
    """What ``Image.open`` does, without its decompression-bomb check: the format plugins in Pillow's
    registry (``Image.OPEN``, the table ``Image.register_open`` fills) try the header in turn."""
    Image.init()
    for name in formats if formats is not None else Image.ID:
        factory, accept = Image.OPEN.get(name.upper(), (None, None))
        if factory is None or (accept is not None and not accept(data[:16])):
            continue
        try:
            return factory(io.BytesIO(data), None)
        except (SyntaxError, IndexError, TypeError, ValueError, OSError, EOFError):
            continue
    raise NotAnImage("no format plugin reads it")


def decode(image: Image.Image) -> Image.Image:
    """The pixels, decoded and upright as the user sees them (phone photos carry an EXIF orientation)."""
    try:
        image.load()
        return ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, struct.error) as exc:
        raise DamagedImage(str(exc)) from None


EIGHT_BIT = ("L", "LA", "RGB", "RGBA")


def to_8bit(image: Image.Image) -> Image.Image:
    """The image in one of :data:`EIGHT_BIT`: L/LA/RGB/RGBA as they are, greys of more bits scaled to
    their range, colour spaces converted to RGB, alpha (or a palette's transparency) kept as RGBA."""
    mode = image.mode
    if mode in EIGHT_BIT:
        return image
    if mode == "I" or mode.startswith("I;16"):
        # 16-bit PNG greys: 0..65535 ("I" is how older Pillows and some plugins read them).
        values = np.asarray(image, dtype=np.int64)
        return Image.fromarray(((np.clip(values, 0, 65535) * 255 + 32767) // 65535).astype(np.uint8), "L")
    if mode == "F":
        return image.convert("L")  # no uploadable format holds floats; Pillow's convention: 0..255, clipped
    if mode == "1":
        return image.convert("L")
    if mode == "P":
        return image.convert("RGBA" if "transparency" in image.info else "RGB")
    if mode == "La":  # premultiplied: Pillow converts it to LA only
        return image.convert("LA")
    if "A" in mode or "a" in mode:  # PA, RGBa
        return image.convert("RGBA")
    if "transparency" in image.info:
        return image.convert("RGBA")
    return image.convert("RGB")  # CMYK, YCbCr, LAB, HSV
