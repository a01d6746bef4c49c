"""Image preprocessing for img2img, inpaint and hires fix, as AUTOMATIC1111 (1.10) does it.

Pure PIL/numpy, written from A1111's ``processing.py``, ``images.py`` and ``masking.py`` semantics:

- :func:`load_image` decodes user bytes (PNG/JPEG/WebP only) under a megapixel limit.
- :func:`resize_image`: A1111's resize modes 0 "just resize", 1 "crop and resize", 2 "resize and fill"
  (the gaps are filled by stretching the edge rows/columns of the resized image), all with Lanczos.
- :func:`prepare_init`: the whole img2img/inpaint init of ``StableDiffusionProcessingImg2Img.init``: mask
  from a mask image or the source's transparency, mask blur (cv2-style separable Gaussian), "masked only"
  crop region with padding expanded to the target aspect, masked-content "fill", the overlay that is
  composited back at the end, and the latent-resolution mask.
- :func:`apply_overlay`: A1111's ``apply_overlay`` (paste a masked-only result back, composite the original).
- :func:`hires_target`: hires fix target size and latent truncation.

Errors are ``ValueError`` with a message a user can act on; the engine turns them into ``GenerationError``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from core import ranges
from core.imagefile import DamagedImage, ImageTooLarge, NotAnImage, decode, open_image, to_8bit

FORMATS = ("PNG", "JPEG", "WEBP")
BACKGROUND = (255, 255, 255)  # A1111 img2img_background_color "#ffffff": transparent source pixels
# How each of A1111's latent upscalers (``ranges.LATENT_UPSCALERS``) interpolates:
# name -> (torch.nn.functional.interpolate mode, antialias).
LATENT_UPSCALERS = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
# How each image upscaler (``ranges.IMAGE_UPSCALERS``: decode, resize with PIL, encode again) resamples.
IMAGE_UPSCALERS = {"Lanczos": Image.Resampling.LANCZOS, "Nearest": Image.Resampling.NEAREST, "None": None}


def upscaler_names() -> list[str]:
    return list(ranges.UPSCALERS)


# -- decoding ---------------------------------------------------------------------------------------


def load_image(data: bytes, *, max_megapixels: float, what: str = "source image") -> Image.Image:
    """Decode PNG/JPEG/WebP ``data``; refuse other formats, corrupt files and images over the limit.

    Opened as the bot's upload check opens it (:mod:`core.imagefile`): the size is checked from the header
    before the pixels are decoded (so a decompression bomb costs nothing), and every mode comes back 8 bits
    a channel (L, LA, RGB or RGBA), a 16-bit grey scaled, not clipped.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) == 0:
        raise ValueError(f"the {what} is empty")
    try:
        image = open_image(bytes(data), max_pixels=int(max_megapixels * 1_000_000))
    except ImageTooLarge as exc:
        raise ValueError(
            f"the {what} is {exc.width}x{exc.height} ({exc.width * exc.height / 1e6:.1f} megapixels); "
            f"the limit is {max_megapixels:g} megapixels"
        ) from None
    except NotAnImage:
        raise ValueError(f"the {what} is not a PNG, JPEG or WebP image") from None
    if image.format not in FORMATS:
        raise ValueError(f"the {what} is a {image.format} file; use PNG, JPEG or WebP")
    try:
        # Phone photos: upright as the user sees them, as A1111 (``images.fix_image``) and the bot's upload
        # check do, so `chant generate --init-image` and /img2img agree.
        image = decode(image)
    except DamagedImage:
        raise ValueError(f"the {what} is corrupt or truncated and cannot be decoded") from None
    return to_8bit(image)


def has_transparency(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA") and image.getchannel("A").getextrema()[0] < 255


def flatten(image: Image.Image, background: tuple[int, int, int] = BACKGROUND) -> Image.Image:
    """A1111's ``images.flatten``: transparent pixels over the background colour, as RGB."""
    if image.mode in ("RGBA", "LA"):
        base = Image.new("RGBA", image.size, background)
        rgba = image.convert("RGBA")
        base.paste(rgba, mask=rgba)
        image = base
    return image.convert("RGB")


# -- resizing ---------------------------------------------------------------------------------------


def _lanczos(image: Image.Image, width: int, height: int) -> Image.Image:
    return image.resize((width, height), resample=Image.Resampling.LANCZOS)


def resize_image(mode: int, image: Image.Image, width: int, height: int) -> Image.Image:
    """A1111's ``images.resize_image`` with the Lanczos resizer.

    0 stretches to ``width x height``; 1 scales to cover the target and crops the centre; 2 scales to fit
    inside, centres, and fills the two gaps by stretching the resized image's outermost row or column.
    """
    if mode == 0:
        return _lanczos(image, width, height)
    if mode not in (1, 2):
        raise ValueError(
            f"resize mode must be 0 (just resize), 1 (crop and resize) or 2 (resize and fill), not {mode}"
        )
    ratio = width / height
    src_ratio = image.width / image.height
    width_decides = ratio > src_ratio if mode == 1 else ratio < src_ratio
    if width_decides:
        src_w, src_h = width, image.height * width // image.width
    else:
        src_w, src_h = image.width * height // image.height, height
    resized = _lanczos(image, max(1, src_w), max(1, src_h))
    out = Image.new(image.mode, (width, height))
    out.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    if mode == 2:
        if ratio < src_ratio:  # bands above and below
            band = height // 2 - src_h // 2
            if band > 0:
                top = resized.resize((width, band), box=(0, 0, width, 0))
                bottom = resized.resize((width, band), box=(0, resized.height, width, resized.height))
                out.paste(top, box=(0, 0))
                out.paste(bottom, box=(0, band + src_h))
        elif ratio > src_ratio:  # bands left and right
            band = width // 2 - src_w // 2
            if band > 0:
                left = resized.resize((band, height), box=(0, 0, 0, height))
                right = resized.resize((band, height), box=(resized.width, 0, resized.width, height))
                out.paste(left, box=(0, 0))
                out.paste(right, box=(band + src_w, 0))
    return out


# -- masks ------------------------------------------------------------------------------------------


def mask_from_image(mask: Image.Image) -> Image.Image:
    """A1111's ``create_binary_mask``: an RGBA mask with transparency uses its alpha, thresholded at 128
    (painted = repaint); any other mask is its greyscale (white = repaint, grey = partly)."""
    if mask.mode in ("RGBA", "LA") and mask.getchannel("A").getextrema() != (255, 255):
        return mask.getchannel("A").point(lambda v: 255 if v > 128 else 0)
    return mask.convert("L")


def mask_from_alpha(image: Image.Image) -> Image.Image:
    """Repaint where the source is transparent: alpha <= 128 gives 255 (the inverse of A1111's threshold)."""
    if not has_transparency(image):
        raise ValueError("inpaint needs a mask image or a source image with transparent pixels to repaint")
    return image.getchannel("A").point(lambda v: 0 if v > 128 else 255)


def _gaussian_kernel(sigma: float) -> np.ndarray:
    """cv2.getGaussianKernel with A1111's size ``2 * int(2.5 * sigma + 0.5) + 1``."""
    size = 2 * int(2.5 * sigma + 0.5) + 1
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    kernel = np.exp(-(x * x) / (2 * sigma * sigma))
    return kernel / kernel.sum()


def _blur_axis(values: np.ndarray, sigma: float, axis: int) -> np.ndarray:
    from scipy.ndimage import correlate1d

    # cv2's default border, BORDER_REFLECT_101 (dcb|abcd|cba), is scipy's "mirror".
    return correlate1d(values, _gaussian_kernel(sigma), axis=axis, mode="mirror")


def blur_mask(mask: Image.Image, blur_x: float, blur_y: float) -> Image.Image:
    """A1111's mask blur: a cv2-style Gaussian along x (sigma ``blur_x``), then along y (``blur_y``)."""
    values = np.asarray(mask.convert("L"), dtype=np.float64)
    if blur_x > 0:
        values = np.clip(np.rint(_blur_axis(values, blur_x, axis=1)), 0, 255)
    if blur_y > 0:
        values = np.clip(np.rint(_blur_axis(values, blur_y, axis=0)), 0, 255)
    return Image.fromarray(values.astype(np.uint8), mode="L")


def crop_region(mask: Image.Image, padding: int) -> tuple[int, int, int, int] | None:
    """A1111's ``get_crop_region_v2``: the bounding box of non-zero mask pixels grown by ``padding``."""
    box = mask.getbbox()
    if box is None:
        return None
    x1, y1, x2, y2 = box
    if not padding:
        return box
    return (
        max(x1 - padding, 0),
        max(y1 - padding, 0),
        min(x2 + padding, mask.width),
        min(y2 + padding, mask.height),
    )


def expand_crop_region(
    region: tuple[int, int, int, int], width: int, height: int, image_width: int, image_height: int
) -> tuple[int, int, int, int]:
    """A1111's ``expand_crop_region``: grow the short side of ``region`` to the ``width:height`` aspect,
    centred, shifted back inside the image (and clipped only when the image itself is too small)."""
    x1, y1, x2, y2 = region
    if (x2 - x1) / (y2 - y1) > width / height:
        y1, y2 = _expand(y1, y2, int((x2 - x1) / (width / height) - (y2 - y1)), image_height)
    else:
        x1, x2 = _expand(x1, x2, int((y2 - y1) * (width / height) - (x2 - x1)), image_width)
    return x1, y1, x2, y2


def _expand(lo: int, hi: int, diff: int, limit: int) -> tuple[int, int]:
    lo -= diff // 2
    hi += diff - diff // 2
    if hi >= limit:
        lo -= hi - limit
        hi = limit
    if lo < 0:
        hi -= lo
        lo = 0
    return lo, min(hi, limit)


def fill(image: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111's "fill" masked content: the masked area gets the surrounding colours, blurred.

    The unmasked pixels are blurred at radii 256, 64, 16, 4, 2 and 0 and laid over each other
    (alpha-composited, 1/1/2/4/2/1 times); pixels outside the mask come back unchanged.
    """
    keep = ImageOps.invert(mask.convert("L"))
    masked = Image.new("RGBa", image.size)
    masked.paste(image.convert("RGBA").convert("RGBa"), mask=keep)
    out = Image.new("RGBA", image.size)
    for radius, repeats in ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)):
        blurred = masked.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            out.alpha_composite(blurred)
    return out.convert("RGB")


def make_overlay(image: Image.Image, mask_for_overlay: Image.Image) -> Image.Image:
    """The original image, opaque where it is kept (alpha = 255 - mask), for :func:`apply_overlay`."""
    overlay = Image.new("RGBa", image.size)
    overlay.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask_for_overlay.convert("L")))
    return overlay.convert("RGBA")


def apply_overlay(
    image: Image.Image, paste_to: tuple[int, int, int, int] | None, overlay: Image.Image | None
) -> Image.Image:
    """A1111's ``apply_overlay``: a masked-only result is resized (crop and resize) into its box of the
    full-size canvas, then the original's kept pixels are composited over it."""
    if paste_to is not None and overlay is not None:
        x, y, w, h = paste_to
        canvas = Image.new("RGBA", overlay.size)
        canvas.paste(resize_image(1, image, w, h), (x, y))
        image = canvas
    if overlay is None:
        return image.convert("RGB")
    image = image.convert("RGBA")
    image.alpha_composite(overlay)
    return image.convert("RGB")


def latent_mask(
    mask: Image.Image, latent_width: int, latent_height: int, *, rounded: bool = True
) -> np.ndarray:
    """The repaint mask at latent resolution, 0..1 (A1111: bicubic downscale, then rounded to 0/1)."""
    small = mask.convert("RGB").resize((latent_width, latent_height), resample=Image.Resampling.BICUBIC)
    values = np.asarray(small, dtype=np.float32)[..., 0] / 255.0
    return np.around(values) if rounded else values


# -- the img2img / inpaint init ---------------------------------------------------------------------


@dataclass
class PreparedInit:
    """What the engine needs from the source image (and mask) for img2img or inpaint."""

    image: Image.Image  # RGB, width x height: the picture to VAE-encode
    mask: np.ndarray | None = None  # (H/8, W/8) repaint mask at latent resolution, 0/1
    overlay: Image.Image | None = None  # RGBA original with alpha = kept, composited over the result
    paste_to: tuple[int, int, int, int] | None = None  # masked only: (x, y, w, h) in the source
    fill: int = 1  # inpainting_fill
    work_mask: Image.Image | None = None  # the repaint mask at width x height (inpainting models' input)


def prepare_init(
    source: Image.Image,
    width: int,
    height: int,
    *,
    resize_mode: int = 0,
    mask: Image.Image | None = None,
    inpaint: bool = False,
    mask_blur: int = 4,
    inpainting_fill: int = 1,
    full_res: bool = False,
    full_res_padding: int = 32,
    latent_factor: int = 8,
) -> PreparedInit:
    """A1111's ``StableDiffusionProcessingImg2Img.init`` for one source image.

    Without ``inpaint`` this is img2img: flatten onto white, resize with ``resize_mode``. With ``inpaint``
    the repaint mask comes from ``mask`` or, when it is None, from the source's transparent pixels. A mask
    of another size than the source is first stretched to the source's size (Lanczos), which is what A1111
    ends up doing when both are resized to the target with "just resize".
    """
    if not inpaint:
        image = flatten(source)
        return PreparedInit(image=resize_image(resize_mode, image, width, height))
    repaint = mask_from_image(mask) if mask is not None else mask_from_alpha(source)
    if repaint.size != source.size:
        repaint = _lanczos(repaint, *source.size)
    if mask_blur > 0:
        repaint = blur_mask(repaint, mask_blur, mask_blur)
    if repaint.getbbox() is None:
        raise ValueError("the inpaint mask is empty: paint the area to repaint white")
    image = flatten(source)
    region = None
    if full_res:
        mask_for_overlay = repaint
        region = crop_region(repaint, full_res_padding)
        assert region is not None  # the mask is not empty
        region = expand_crop_region(region, width, height, repaint.width, repaint.height)
        x1, y1, x2, y2 = region
        work_mask = resize_image(2, repaint.crop(region), width, height)
        paste_to = (x1, y1, x2 - x1, y2 - y1)
    else:
        work_mask = resize_image(resize_mode, repaint, width, height)
        doubled = np.clip(np.asarray(work_mask, dtype=np.float32) * 2, 0, 255).astype(np.uint8)
        mask_for_overlay = Image.fromarray(doubled, mode="L")
        image = resize_image(resize_mode, image, width, height)
        paste_to = None
    overlay = make_overlay(image, mask_for_overlay)
    if region is not None:
        image = resize_image(2, image.crop(region), width, height)
    if inpainting_fill != 1:
        image = fill(image, work_mask)
    return PreparedInit(
        image=image,
        mask=latent_mask(work_mask, width // latent_factor, height // latent_factor),
        overlay=overlay,
        paste_to=paste_to,
        fill=inpainting_fill,
        work_mask=work_mask,
    )


# -- hires fix --------------------------------------------------------------------------------------


def hires_target(
    width: int, height: int, scale: float, resize_x: int = 0, resize_y: int = 0
) -> tuple[int, int, int, int]:
    """A1111's hires target: ``(upscale_to_x, upscale_to_y, truncate_x, truncate_y)``.

    With no resize size, the first pass times ``scale`` (truncated to int). With one side, the other keeps
    the aspect. With both, the image is upscaled to cover the box and the latent is cropped centrally by
    ``truncate_x/y`` latent pixels (A1111: ``(upscale_to - target) // 8``).
    """
    if resize_x == 0 and resize_y == 0:
        return int(width * scale), int(height * scale), 0, 0
    if resize_y == 0:
        return resize_x, resize_x * height // width, 0, 0
    if resize_x == 0:
        return resize_y * width // height, resize_y, 0, 0
    if width / height < resize_x / resize_y:
        to_x, to_y = resize_x, resize_x * height // width
    else:
        to_x, to_y = resize_y * width // height, resize_y
    return to_x, to_y, (to_x - resize_x) // 8, (to_y - resize_y) // 8


def upscale_image(image: Image.Image, width: int, height: int, upscaler: str) -> Image.Image:
    """A1111's ``resize_image(0, ..., upscaler_name)`` for the PIL upscalers: scale by the covering factor
    (int-truncated size), then a final Lanczos resize when that missed the exact target."""
    resample = IMAGE_UPSCALERS[upscaler]
    if resample is None:
        return _lanczos(image, width, height)
    scale = max(width / image.width, height / image.height)
    if scale > 1.0:
        image = image.resize((int(image.width * scale), int(image.height * scale)), resample=resample)
    if image.size != (width, height):
        image = _lanczos(image, width, height)
    return image
