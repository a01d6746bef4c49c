"""Uploaded pictures, opened the same way by the bot's upload check (core.services.images) and the
engine's loader (core.engine.image_modes), both through core.imagefile.

* Every mode a user can upload (what Pillow writes in PNG, JPEG, WebP, GIF and BMP, read back) keeps its
  brightness — a 16-bit grey PNG of mean 80 used to become all white — and its alpha, as before.
* Pictures over Pillow's decompression-bomb limit (a 30000² PNG of about 100 KB) are refused with the
  size-limit message naming their size, not as "not an image I can read".
"""

from __future__ import annotations

import io
import zlib
from struct import pack

import numpy as np
import pytest
from PIL import Image

from core.engine.image_modes import FORMATS as ENGINE_FORMATS
from core.engine.image_modes import load_image
from core.imagefile import EIGHT_BIT, ImageTooLarge, open_image, to_8bit
from core.services.images import FORMATS as UPLOAD_FORMATS
from core.services.images import load_source
from core.services.types import UserError

MAX_PIXELS = 16_000_000
SIZE = (96, 64)
TRANSPARENT_COLUMNS = 24  # the left quarter of the alpha sources
SOURCE_MODES = (
    "1",
    "L",
    "LA",
    "P",
    "PA",
    "RGB",
    "RGBA",
    "CMYK",
    "YCbCr",
    "I",
    "I;16",
    "I;16B",
    "F",
    "LAB",
    "HSV",
)


def reference(alpha: bool) -> Image.Image:
    """A smooth colour picture (JPEG keeps it): mean grey about 80, the left quarter transparent."""
    x = np.linspace(0, 1, SIZE[0])[None, :]
    y = np.linspace(0, 1, SIZE[1])[:, None]
    rgb = np.stack([40 + 90 * x + 0 * y, 50 + 60 * y + 0 * x, 110 - 50 * x * y], axis=-1)
    image = Image.fromarray(rgb.round().astype(np.uint8), "RGB")
    if alpha:
        a = np.full(SIZE[::-1], 255, np.uint8)
        a[:, :TRANSPARENT_COLUMNS] = 0
        image.putalpha(Image.fromarray(a, "L"))
    return image


def in_mode(mode: str) -> Image.Image:
    """The reference in ``mode``, its brightness kept: greys of more than 8 bits at their full range."""
    alpha = "A" in mode
    ref = reference(alpha)
    if mode == "I" or mode.startswith("I;16"):
        grey = np.asarray(ref.convert("L"), dtype=np.uint32) * 257  # 8-bit v is 16-bit v·257
        if mode == "I":
            return Image.fromarray(grey.astype(np.int32), "I")
        order = ">u2" if mode == "I;16B" else "<u2"  # (Pillow's convert between these clips to 255)
        return Image.frombytes(mode, SIZE, grey.astype(order).tobytes())
    if mode == "P":
        return ref.convert("P", palette=Image.Palette.ADAPTIVE)
    if mode == "PA":
        return ref.convert("PA")
    return ref.convert(mode)


def opaque_brightness(image: Image.Image) -> float:
    """Mean grey of the pixels the reference keeps opaque (all of them when it has no alpha)."""
    grey = np.asarray(image.convert("RGBA").convert("L"), dtype=np.float64)
    return float(grey[:, TRANSPARENT_COLUMNS:].mean())


def uploads() -> list[tuple[str, str]]:
    """Every (source mode, format) Pillow writes, except where its writer itself clips >8-bit greys
    (WebP and GIF of I, I;16, F: the file is white; that is not a 16-bit upload)."""
    out = []
    for mode in SOURCE_MODES:
        for fmt in UPLOAD_FORMATS:
            if fmt in ("WEBP", "GIF") and (mode == "F" or mode.startswith("I")):
                continue
            try:
                in_mode(mode).save(io.BytesIO(), format=fmt)
            except (OSError, ValueError, KeyError):
                continue
            out.append((mode, fmt))
    return out


UPLOADS = uploads()


def encoded(mode: str, fmt: str) -> bytes:
    buf = io.BytesIO()
    in_mode(mode).save(buf, format=fmt, **({"quality": 95} if fmt in ("JPEG", "WEBP") else {}))
    return buf.getvalue()


def read_back_mode(mode: str, fmt: str) -> str:
    return Image.open(io.BytesIO(encoded(mode, fmt))).mode


def test_the_uploads_cover_every_mode_a_file_can_come_back_in() -> None:
    modes = {read_back_mode(m, f) for m, f in UPLOADS}
    assert {"1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16"} <= modes, modes
    assert {m for m, _ in UPLOADS} >= {"1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "YCbCr", "I;16", "I;16B"}


@pytest.mark.parametrize(("mode", "fmt"), UPLOADS, ids=[f"{m}-{f}" for m, f in UPLOADS])
def test_every_uploadable_mode_keeps_its_brightness_and_alpha(mode: str, fmt: str) -> None:
    data = encoded(mode, fmt)
    file_mode = Image.open(io.BytesIO(data)).mode
    expected = opaque_brightness(reference(alpha=False))
    source = load_source(data, max_pixels=MAX_PIXELS)
    # Kept as sent where the engine reads it so (core.services.images), else an 8-bit PNG: either way,
    # what the engine reads from the stored bytes has the source's brightness and alpha.
    kept_as_sent = source.data == data
    stored = load_image(source.data, max_megapixels=MAX_PIXELS / 1e6)
    assert abs(opaque_brightness(stored) - expected) < 4, (file_mode, opaque_brightness(stored), expected)
    kept_alpha = file_mode in ("LA", "RGBA", "PA") or (
        file_mode == "P" and "transparency" in Image.open(io.BytesIO(data)).info
    )
    assert source.transparent == kept_alpha  # as before: transparent pixels make it RGBA, else RGB
    if not kept_as_sent:
        assert Image.open(io.BytesIO(source.data)).mode == ("RGBA" if kept_alpha else "RGB")
    if kept_alpha:
        alpha = np.asarray(stored.convert("RGBA").getchannel("A"))
        assert (alpha[:, :TRANSPARENT_COLUMNS] == 0).all() and (alpha[:, TRANSPARENT_COLUMNS:] == 255).all()
    if fmt in ENGINE_FORMATS:  # `chant generate --init-image` reads the same pixels
        engine = load_image(data, max_megapixels=MAX_PIXELS / 1e6)
        assert engine.mode in EIGHT_BIT
        assert np.array_equal(np.asarray(engine.convert("RGBA")), np.asarray(stored.convert("RGBA")))


def test_a_16_bit_grey_of_mean_80_stays_80() -> None:
    grey = np.full((64, 64), 80 * 257, np.uint16)
    grey[:32] = 60 * 257
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, format="PNG")
    assert Image.open(io.BytesIO(buf.getvalue())).mode == "I;16"
    stored = Image.open(io.BytesIO(load_source(buf.getvalue(), max_pixels=MAX_PIXELS).data))
    assert np.asarray(stored.convert("L")).mean() == pytest.approx(70, abs=0.5)
    assert np.asarray(load_image(buf.getvalue(), max_megapixels=16).convert("L")).mean() == pytest.approx(
        70, abs=0.5
    )


@pytest.mark.parametrize("mode", ["F", "LAB", "HSV", "La", "RGBa", "PA", "I", "I;16L", "YCbCr", "CMYK"])
def test_modes_no_upload_format_keeps_are_converted_too(mode: str) -> None:
    image = reference(alpha=True).convert(mode) if mode in ("La", "RGBa") else in_mode(mode)
    out = to_8bit(image)
    assert out.mode in EIGHT_BIT
    assert abs(opaque_brightness(out) - opaque_brightness(reference(alpha=False))) < 4


# -- over Pillow's decompression-bomb limit ---------------------------------------------------------------


def bomb_png(width: int, height: int) -> bytes:
    """A valid 1-bit black PNG of that size, compressed to little (30000² is about 100 KB)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return pack(">I", len(body)) + kind + body + pack(">I", zlib.crc32(kind + body))

    row = b"\x00" * (1 + (width + 7) // 8)
    z = zlib.compressobj(9)
    rows = 1000
    block = row * rows
    parts = [z.compress(block) for _ in range(height // rows)] + [
        z.compress(row * (height % rows)),
        z.flush(),
    ]
    ihdr = pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [30000, 10000])  # over Pillow's refusal (179 MP), over its warning (89.5 MP)
def test_pictures_over_pillows_bomb_limit_get_the_size_limit_message(side: int) -> None:
    data = bomb_png(side, side)
    assert len(data) < 200_000
    with pytest.raises(UserError) as err:
        load_source(data, max_pixels=MAX_PIXELS)
    assert err.value.code == "image.too_large"
    assert f"{side}×{side}" in str(err.value) and "16 megapixels" in str(err.value), str(err.value)
    with pytest.raises(ValueError, match=rf"{side}x{side} .*the limit is 16 megapixels"):
        load_image(data, max_megapixels=16)


def test_the_operators_limit_is_the_one_limit_also_above_pillows() -> None:
    image = open_image(bomb_png(10000, 10000), max_pixels=120_000_000)  # 100 MP: Pillow alone would refuse
    assert image.size == (10000, 10000) and image.format == "PNG"
    with pytest.raises(ImageTooLarge) as err:
        open_image(bomb_png(30000, 30000), max_pixels=120_000_000)
    assert (err.value.width, err.value.height) == (30000, 30000)


async def test_a_bomb_sent_to_img2img_is_refused_with_its_size_before_queueing(tmp_path) -> None:
    from core.services import ImagineOptions
    from core.storage.repositories import Repositories
    from tests.core.services.conftest import Harness, actor

    h = Harness(tmp_path)
    service = await h.open(start=False)
    try:
        with pytest.raises(UserError) as err:
            await service.submit_imagine(
                actor(), ImagineOptions(prompt="x", init_image=bomb_png(30000, 30000))
            )
        assert err.value.code == "image.too_large" and "30000×30000 (900.0 megapixels)" in str(err.value)
        async with h.db.session() as s:
            assert await Repositories(s).jobs.count_for_user(actor().user_id) == 0
    finally:
        await h.close()
