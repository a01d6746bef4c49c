from __future__ import annotations

import numpy as np
import pytest

from core.engine.control.image import fit_control_map, hwc3

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def _thirds(height: int = 100, width: int = 200) -> np.ndarray:
    """Three colours (so maps resize by nearest neighbour): red, green, blue vertical thirds."""
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[:, : width // 3] = RED
    image[:, width // 3 : 2 * width // 3] = GREEN
    image[:, 2 * width // 3 :] = BLUE
    return image


def _nearest(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """OpenCV's INTER_NEAREST: destination pixel d takes source pixel floor(d * src / dst)."""
    ys = np.floor(np.arange(height) * image.shape[0] / height).astype(int)
    xs = np.floor(np.arange(width) * image.shape[1] / width).astype(int)
    return image[ys][:, xs]


def test_crop_and_resize_covers_then_crops_the_centre() -> None:
    image = _thirds()
    out = fit_control_map(image, 64, 64, "Crop and Resize")
    # cover: factor max(64/100, 64/200) = 0.64 -> 128x64, then columns 32..95
    assert np.array_equal(out, _nearest(image, 128, 64)[:, 32:96])
    assert tuple(out[0, 0]) == RED and tuple(out[0, 32]) == GREEN and tuple(out[0, 63]) == BLUE


def test_resize_and_fill_fits_inside_on_the_median_border_colour() -> None:
    image = _thirds()
    out = fit_control_map(image, 64, 64, "Resize and Fill")
    # fit: factor min(0.64, 0.32) = 0.32 -> 64x32 at rows 16..47; border median per channel is 0
    assert np.array_equal(out[16:48], _nearest(image, 64, 32))
    assert not out[:16].any() and not out[48:].any()


def test_just_resize_stretches_and_shape_is_height_by_width() -> None:
    image = _thirds()
    out = fit_control_map(image, 96, 40, "Just Resize")
    assert out.shape == (40, 96, 3)
    assert np.array_equal(out, _nearest(image, 96, 40))


def test_binary_maps_stay_binary_when_enlarged() -> None:
    edges = np.zeros((32, 32), dtype=np.uint8)
    edges[:, 15] = 255
    out = fit_control_map(edges, 80, 80, "Just Resize")
    assert set(np.unique(out)) == {0, 255}
    # source column 15 spans [15, 16) -> [37.5, 40) at 2.5x: the pixels centred in it are 37, 38, 39
    assert [int(x) for x in np.nonzero(out[0, :, 0])[0]] == [37, 38, 39]
    assert (out == out[:1]).all()  # every row the same


def test_hwc3_composites_transparency_on_white_and_rejects_bad_arrays() -> None:
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)
    out = hwc3(rgba)
    assert tuple(out[0, 0]) == (10, 20, 30) and tuple(out[1, 1]) == (255, 255, 255)
    assert hwc3(np.full((2, 2), 7, dtype=np.uint8)).shape == (2, 2, 3)
    with pytest.raises(ValueError, match="uint8"):
        hwc3(np.zeros((2, 2, 3)))
    with pytest.raises(ValueError, match="resize mode"):
        fit_control_map(rgba, 8, 8, "Stretch")
