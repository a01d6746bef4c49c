"""Control maps to the generation size, as sd-webui-controlnet fits them (numpy + OpenCV, torch-free).

After the preprocessor, a control map is fitted to the image being generated (width × height, i.e.
the latent size × 8) by the unit's resize mode:

- "Just Resize": stretched to the target size;
- "Crop and Resize": scaled to cover the target (factor ``max(h/H, w/W)``), then centre-cropped;
- "Resize and Fill": scaled to fit inside (``min``), centred on a background of the median colour of
  the map's border pixels.

Scaling follows sd-webui-controlnet's "high quality" resize: maps of 3–199 distinct colours
(segmentation, pose) use nearest neighbour, others area averaging to shrink and bicubic to enlarge;
binary maps (two colours, black and white) are re-thresholded with Otsu after resizing.
sd-webui-controlnet also thins one-pixel edge maps after enlarging them (NMS + thinning); chant does
not, so an enlarged canny map can have slightly thicker lines than there.
"""

from __future__ import annotations

import cv2
import numpy as np

from core.engine.control.units import CROP_AND_RESIZE, JUST_RESIZE, RESIZE_AND_FILL, RESIZE_MODES


def hwc3(image: np.ndarray) -> np.ndarray:
    """Any uint8 gray / RGB / RGBA array as RGB; transparency is composited onto white (as ``HWC3``)."""
    if image.dtype != np.uint8:
        raise ValueError(f"an image must be uint8, not {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"an image must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), not {image.shape}")
    if image.shape[2] == 3:
        return image
    if image.shape[2] == 1:
        return np.concatenate([image] * 3, axis=2)
    color = image[:, :, :3].astype(np.float32)
    alpha = image[:, :, 3:4].astype(np.float32) / 255.0
    return (color * alpha + 255.0 * (1.0 - alpha)).clip(0, 255).astype(np.uint8)


def resize_map(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """sd-webui-controlnet's map resize (without its edge thinning): interpolation by content."""
    if image.shape[0] == height and image.shape[1] == width:
        return image
    colors = len(np.unique(image.reshape(-1, image.shape[2]), axis=0))
    binary = colors == 2 and int(image.min()) < 16 and int(image.max()) > 240
    smaller = width * height < image.shape[0] * image.shape[1]
    if 2 < colors < 200:
        interpolation = cv2.INTER_NEAREST
    elif smaller:
        interpolation = cv2.INTER_AREA
    else:
        interpolation = cv2.INTER_CUBIC
    out = cv2.resize(image, (width, height), interpolation=interpolation)
    if binary:
        gray = np.mean(out.astype(np.float32), axis=2).clip(0, 255).astype(np.uint8)
        _, gray = cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        out = np.stack([gray] * 3, axis=2)
    return out


def fit_control_map(image: np.ndarray, width: int, height: int, resize_mode: str) -> np.ndarray:
    """``image`` (any uint8 layout) as an (height, width, 3) uint8 map, by sd-webui-controlnet's resize modes."""
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {', '.join(RESIZE_MODES)}, not {resize_mode!r}")
    image = hwc3(image)
    if resize_mode == JUST_RESIZE:
        return np.ascontiguousarray(resize_map(image, width, height))
    old_h, old_w = float(image.shape[0]), float(image.shape[1])
    k_h, k_w = height / old_h, width / old_w
    if resize_mode == RESIZE_AND_FILL:
        k = min(k_h, k_w)
        border = np.concatenate([image[0, :, :], image[-1, :, :], image[:, 0, :], image[:, -1, :]], axis=0)
        background = np.tile(np.median(border, axis=0).astype(np.uint8)[None, None], [height, width, 1])
        scaled = resize_map(image, round(old_w * k), round(old_h * k))
        new_h, new_w = scaled.shape[:2]
        top, left = max(0, (height - new_h) // 2), max(0, (width - new_w) // 2)
        background[top : top + new_h, left : left + new_w] = scaled
        return background
    assert resize_mode == CROP_AND_RESIZE
    k = max(k_h, k_w)
    scaled = resize_map(image, round(old_w * k), round(old_h * k))
    new_h, new_w = scaled.shape[:2]
    top, left = max(0, (new_h - height) // 2), max(0, (new_w - width) // 2)
    return np.ascontiguousarray(scaled[top : top + height, left : left + width])
