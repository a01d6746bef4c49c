from __future__ import annotations

import cv2
import numpy as np
import pytest

from core.engine.control.preprocessors import (
    PREPROCESSORS,
    get_preprocessor,
    models_for_control_type,
    preprocess,
    resize_with_pad,
    union_index,
    union_type_for,
)
from core.engine.control.units import ControlUnit


def _step(low: int, high: int, size: int = 64) -> np.ndarray:
    """A vertical step edge: columns 0..31 at ``low``, 32..63 at ``high``."""
    image = np.full((size, size, 3), low, dtype=np.uint8)
    image[:, size // 2 :] = high
    return image


def _canny(image: np.ndarray, low: float, high: float) -> np.ndarray:
    unit = ControlUnit(model="m", module="canny", processor_res=image.shape[0], threshold_a=low, threshold_b=high)
    out, used = preprocess(unit, image)
    assert used == (image.shape[0], low, high)
    return out


def test_canny_marks_the_dark_side_of_a_step_edge() -> None:
    # Sobel gives |dx| = 4 * 255 at columns 31 and 32; OpenCV's non-maximum suppression keeps a pixel
    # that is greater than its left neighbour and not less than its right one: column 31 only.
    out = _canny(_step(0, 255), 100, 200)
    assert out.shape == (64, 64, 3)
    columns = {int(x) for x in np.nonzero(out[:, :, 0])[1]}
    assert columns == {31}
    assert out[:, 31].min() == 255 and (out[:, :, 0] == out[:, :, 2]).all()


def test_canny_thresholds_decide_a_weak_edge() -> None:
    # A step of 40 gives a gradient of 4 * 40 = 160: below a high threshold of 200 nothing starts an
    # edge; with high 150 it does.
    assert not _canny(_step(100, 140), 100, 200).any()
    assert {int(x) for x in np.nonzero(_canny(_step(100, 140), 100, 150)[:, :, 0])[1]} == {31}
    assert not _canny(_step(100, 140), 170, 255).any()


def test_maps_come_at_the_processor_resolution() -> None:
    image = np.zeros((60, 100, 3), dtype=np.uint8)
    padded, size = resize_with_pad(image, 512)
    assert size == (512, 853) and padded.shape == (512, 896, 3)  # 853 padded to 14 * 64
    out, _ = preprocess(ControlUnit(model="m", module="canny"), image)
    assert out.shape == (512, 853, 3)


def test_threshold_invert_none_and_blur_follow_their_definitions() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    out, used = preprocess(ControlUnit(model="m", module="threshold", processor_res=64), image)
    assert used[1] == 127
    assert np.array_equal(out[:, :, 0] == 255, image.min(axis=2) > 127)
    assert np.array_equal(preprocess(ControlUnit(model="m", module="invert"), image)[0], 255 - image)
    assert np.array_equal(preprocess(ControlUnit(model="m", module="none"), image[:, :, 0])[0][:, :, 1], image[:, :, 0])
    blurred, _ = preprocess(ControlUnit(model="m", module="blur_gaussian", processor_res=64, threshold_a=3.0), image)
    assert np.array_equal(blurred, cv2.GaussianBlur(image, (0, 0), 3.0))


def test_scribble_and_lineart_find_a_dark_line_on_white() -> None:
    image = np.full((64, 64, 3), 255, dtype=np.uint8)
    image[:, 30:33] = 0
    scribble, _ = preprocess(ControlUnit(model="m", module="scribble_xdog", processor_res=64), image)
    assert scribble[:, 31].all() and not scribble[:, :20].any() and not scribble[:, 44:].any()
    lineart, _ = preprocess(ControlUnit(model="m", module="lineart_standard", processor_res=64), image)
    assert lineart[:, 31].min() > 100 and lineart[:, :15].max() == 0
    flat, _ = preprocess(ControlUnit(model="m", module="scribble_xdog", processor_res=64), np.full((64, 64, 3), 90, np.uint8))
    assert not flat.any()


def test_tile_resample_downsamples_by_the_rate() -> None:
    image = np.zeros((64, 96, 3), dtype=np.uint8)
    assert preprocess(ControlUnit(model="m", module="tile_resample", threshold_a=2.0), image)[0].shape == (32, 48, 3)
    assert preprocess(ControlUnit(model="m", module="tile_resample"), image)[0].shape == (64, 96, 3)


def test_defaults_as_sd_webui_controlnet_resolves_them() -> None:
    canny = get_preprocessor("canny")
    assert canny.defaults(ControlUnit(model="m")) == (512, 100, 200)
    assert canny.defaults(ControlUnit(model="m", threshold_a=300, threshold_b=50)) == (512, 100, 50)
    assert get_preprocessor("none").defaults(ControlUnit(model="m", processor_res=768)) == (768, 0.5, 0.5)


def test_pixel_perfect_sets_the_resolution_from_the_target() -> None:
    image = np.zeros((100, 50, 3), dtype=np.uint8)
    unit = ControlUnit(model="m", module="canny", pixel_perfect=True)
    out, (res, _, _) = preprocess(unit, image, target_size=(512, 512))
    assert res == 512 and out.shape == (1024, 512, 3)
    with pytest.raises(ValueError, match="pixel perfect needs the generation size"):
        preprocess(unit, image)


def test_registry_names_types_and_models() -> None:
    assert {"none", "canny", "invert", "depth_anything_v2"} <= set(PREPROCESSORS)
    assert union_type_for("canny") == "Hard Edge" and union_type_for("depth_anything_v2") == "Depth"
    assert union_type_for("none") is None
    names = ["control_v11p_sd15_canny", "control_v11f1p_sd15_depth", "controlnet-union-sdxl-1.0", "ip-adapter_sd15"]
    assert models_for_control_type("Canny", names) == ["control_v11p_sd15_canny", "controlnet-union-sdxl-1.0"]
    with pytest.raises(ValueError, match="unknown preprocessor 'cany'"):
        get_preprocessor("cany")


def test_union_index_from_the_unit_or_its_preprocessor() -> None:
    assert union_index(ControlUnit(model="u", module="canny")) == 3  # Hard Edge
    assert union_index(ControlUnit(model="u", module="none", union_control_type="OpenPose")) == 0
    with pytest.raises(ValueError, match="needs a control type for preprocessor 'none'"):
        union_index(ControlUnit(model="u", module="none"))
