from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.engine.control.depth import depth_anything_v2, find_model, network_size, pixel_values
from core.engine.control.preprocessors import PreprocessContext, preprocess
from core.engine.control.units import ControlUnit
from core.testing.tiny_control import save_tiny_depth_anything


@pytest.fixture(scope="module")
def depth_dirs(tmp_path_factory) -> tuple[str, ...]:
    root = tmp_path_factory.mktemp("preprocessors")
    save_tiny_depth_anything(root / "Depth-Anything-V2-Small-hf")
    return (str(root),)


def _image() -> np.ndarray:
    y, x = np.mgrid[0:64, 0:96]
    return np.stack([x * 2, y * 3, (x + y)], axis=2).clip(0, 255).astype(np.uint8)


def test_network_size_is_at_least_518_in_multiples_of_14() -> None:
    # 64x96: scale 518/64 = 8.09375 -> 518 x 777; 777/14 = 55.5 rounds (half to even) to 56 -> 784
    assert network_size(64, 96) == (518, 784)
    assert network_size(518, 518) == (518, 518)
    # 1000x700: scale 518/700 -> 740 x 518; 740/14 = 52.857 -> 53 * 14 = 742
    assert network_size(1000, 700) == (742, 518)


def test_pixel_values_are_bicubic_and_imagenet_normalised() -> None:
    image = _image()
    x = pixel_values(image)
    assert x.shape == (1, 3, 518, 784) and x.dtype == torch.float32
    expected = cv2.resize(image.astype(np.float64) / 255.0, (784, 518), interpolation=cv2.INTER_CUBIC)
    expected = (expected - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    np.testing.assert_allclose(x[0].permute(1, 2, 0).numpy(), expected, atol=1e-6)


def test_depth_map_is_the_model_output_at_image_size_stretched_to_0_255(depth_dirs) -> None:
    from transformers import DepthAnythingForDepthEstimation

    image = _image()
    out = depth_anything_v2(image, depth_dirs)
    assert out.shape == (64, 96) and out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    model = DepthAnythingForDepthEstimation.from_pretrained(str(find_model(depth_dirs)), local_files_only=True).eval()
    with torch.no_grad():
        depth = model(pixel_values=pixel_values(image)).predicted_depth
    depth = F.interpolate(depth[None], (64, 96), mode="bilinear", align_corners=False)[0, 0]
    reference = ((depth - depth.min()) / (depth.max() - depth.min()) * 255.0).numpy().astype(np.uint8)
    assert np.array_equal(out, reference)


def test_preprocessor_runs_at_the_processor_resolution_and_names_a_missing_model(depth_dirs, tmp_path) -> None:
    unit = ControlUnit(model="m", module="depth_anything_v2", processor_res=128)
    out, used = preprocess(unit, _image(), PreprocessContext(preprocessor_dirs=depth_dirs))
    assert used == (128, 0.5, 0.5) and out.shape == (128, 192, 3)
    assert (out[:, :, 0] == out[:, :, 2]).all()
    with pytest.raises(ValueError, match="depth_anything_v2 needs a Depth Anything V2 model folder"):
        preprocess(unit, _image(), PreprocessContext(preprocessor_dirs=(str(tmp_path),)))
