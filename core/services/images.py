"""Checking the images users upload for img2img and inpainting (Pillow only, no torch).

Uploaded bytes are untrusted: :func:`load_source` opens them with :mod:`core.imagefile` (as the engine
does), refuses anything that is not a readable still image or that is larger than the operator's pixel
limit (checked from the header, before decoding, so a decompression bomb is never decoded), and keeps
what it accepts as it was sent when the engine reads it so (PNG, JPEG, WebP in an 8-bit mode), else
re-encodes it, 8 bits a channel, as PNG. :func:`load_mask` checks a mask the same way and, as A1111
does, resizes a mask of another size to the source's size (PNG).
"""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from PIL import Image

from core import ranges
from core.imagefile import DamagedImage, ImageTooLarge, NotAnImage, decode, open_image, to_8bit
from core.services.types import UserError

FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
T = TypeVar("T")


# What the engine decodes itself (``core.engine.image_modes.load_image``, EXIF orientation included),
# in the 8-bit modes it reads as Pillow shows them here: such an upload is kept as it was sent.
ENGINE_FORMATS = ("PNG", "JPEG", "WEBP")
ENGINE_MODES = ("RGB", "RGBA", "L", "LA", "P")


@dataclass(frozen=True)
class SourceImage:
    data: bytes  # the upload as sent when the engine reads it so; else the checked image as PNG
    width: int  # upright (EXIF orientation applied)
    height: int
    transparent: bool  # it has transparent pixels: kept as RGBA, the engine repaints them (inpaint)


@dataclass(frozen=True)
class Upload:
    """An img2img / inpaint upload, checked: the source and its mask (a grayscale PNG of the source's size)."""

    source: SourceImage
    mask: bytes | None


def load_upload(source: bytes, mask: bytes | None, max_pixels: int) -> Upload:
    """:func:`load_source` and :func:`load_mask` together: one piece of work for :class:`ImageWork`."""
    image = load_source(source, max_pixels=max_pixels)
    if mask is None:
        return Upload(image, None)
    return Upload(image, load_mask(mask, (image.width, image.height), max_pixels=max_pixels))


class ImageWork:
    """Image work off the event loop, bounded.

    Decoding a 16 MP phone photo and re-encoding it as PNG takes seconds (5-10 s on two cores); on the
    event loop that would make every other member's command miss Discord's 3 s deadline. Threads, not
    processes: Pillow releases the GIL while it decodes, resizes and encodes (three 16 MP uploads at once
    stalled the loop at most 0.18 s in threads, 0.10 s in processes, which would also pickle 30 MB of PNG
    back), and a thread needs no second copy of the process. At most ``workers`` pictures are worked on at
    once and ``max_waiting`` more wait; past that the uploader is told to try again, so a burst of uploads
    costs bounded memory and nobody waits minutes without knowing why.
    """

    def __init__(self, workers: int = 2, max_waiting: int = 4) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="chant-images")
        self._limit = workers + max_waiting
        self._lock = threading.Lock()
        self._in_flight = 0  # queued or running in the pool (a cancelled caller's work still counts)

    async def run(self, fn: Callable[..., T], /, *args: Any) -> T:
        with self._lock:
            if self._in_flight >= self._limit:
                raise UserError(
                    "busy",
                    f"I am working on {self._in_flight} other pictures right now; try again in a minute.",
                )
            self._in_flight += 1
        try:
            future = self._pool.submit(fn, *args)
        except RuntimeError:  # shut down: the process is stopping
            self._release(None)
            raise UserError("busy", "I am shutting down; try again in a minute.") from None
        future.add_done_callback(self._release)
        return await asyncio.wrap_future(future)

    def _release(self, _future: Future[Any] | None) -> None:
        with self._lock:
            self._in_flight -= 1

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


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
    """The checked source image: the upload itself when the engine reads it as it is (a phone's 3 MB
    JPEG stays 3 MB, not a 30 MB PNG), else a PNG, RGB or RGBA when it has transparent pixels (A1111
    repaints those when no mask is given; the engine derives that mask and flattens the rest onto
    white)."""
    img = _open(data, what, max_pixels)
    transparent = img.mode in ("RGBA", "LA") and img.convert("RGBA").getchannel("A").getextrema()[0] < 255
    with Image.open(io.BytesIO(data)) as header:  # a palette's transparency is RGBA in ``img`` by now
        as_sent = header.format in ENGINE_FORMATS and header.mode in ENGINE_MODES
    if as_sent:
        return SourceImage(data, img.width, img.height, transparent)
    img = img.convert("RGBA" if transparent else "RGB")
    return SourceImage(_png(img), img.width, img.height, transparent)


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
