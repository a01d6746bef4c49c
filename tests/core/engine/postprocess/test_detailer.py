from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.engine.postprocess.detailer import (
    DetailerOptions,
    InpaintOptions,
    detail,
    infotext_params,
    options_from_infotext,
    region_mask,
)
from core.engine.postprocess.detect import Detection, Detectors
from tests.core.engine.postprocess.onnx_graphs import yunet_like


class StubDetector:
    name = "stub"

    def __init__(self, detections: list[Detection]) -> None:
        self.detections = detections

    def detect(self, image: Image.Image, confidence: float) -> list[Detection]:
        return list(self.detections)


class RepaintEverything:
    """An inpaint that (wrongly) changes every pixel: the detailer must keep only the masked ones."""

    def __init__(self) -> None:
        self.calls: list[tuple[Image.Image, Image.Image, InpaintOptions]] = []

    def __call__(self, image: Image.Image, mask: Image.Image, options: InpaintOptions) -> Image.Image:
        self.calls.append((image.copy(), mask.copy(), options))
        return Image.fromarray(255 - np.asarray(image), "RGB")


def _noise(width: int = 96, height: int = 64) -> Image.Image:
    rng = np.random.default_rng(3)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def _support(mask: Image.Image, blur: int) -> np.ndarray:
    from core.engine.image_modes import blur_mask

    return np.asarray(blur_mask(mask, blur, blur)) > 0


def test_only_pixels_inside_the_detected_regions_masks_change() -> None:
    faces = [Detection((10, 8, 30, 28), 0.9), Detection((60, 30, 80, 50), 0.8), Detection((40, 2, 50, 12), 0.1)]
    inpaint = RepaintEverything()
    options = DetailerOptions(model="stub", confidence=0.3, dilate_erode=2, mask_blur=3)
    image = _noise()
    result = detail(image, [options], lambda name: StubDetector(faces), inpaint)
    changed = np.any(np.asarray(result.image) != np.asarray(image), axis=-1)
    allowed = np.zeros_like(changed)
    for _, mask, _ in inpaint.calls:
        allowed |= _support(mask, 3)
    assert len(inpaint.calls) == 2  # the 0.1 box is under the threshold
    assert changed.any() and not (changed & ~allowed).any()
    # Inside each region's rectangle the repaint is kept.
    assert np.array_equal(np.asarray(result.image)[10:26, 12:28], 255 - np.asarray(image)[10:26, 12:28])
    assert [d.score for d in result.regions[0]] == [0.9, 0.8]


def test_regions_go_left_to_right_each_from_the_previous_result_with_its_options() -> None:
    faces = [Detection((60, 30, 80, 50), 0.95), Detection((10, 8, 30, 28), 0.5)]
    inpaint = RepaintEverything()
    options = DetailerOptions(model="stub", prompt="a face", denoising_strength=0.3, steps=12, inpaint_padding=16,
                              inpaint_width=512, inpaint_height=512, mask_blur=0)
    detail(_noise(), [options], lambda name: StubDetector(faces), inpaint)
    (first_image, first_mask, first), (second_image, second_mask, second) = inpaint.calls
    assert first_mask.getbbox() == (6, 4, 34, 32)  # (10, 8, 30, 28) grown by 4 on each side
    assert second_mask.getbbox() == (56, 26, 84, 54)
    assert not np.array_equal(np.asarray(first_image), np.asarray(second_image))  # second saw the first repaint
    assert (first.region_index, second.region_index) == (0, 1)
    assert first == InpaintOptions(prompt="a face", negative_prompt="", denoising_strength=0.3, steps=12,
                                   cfg_scale=None, width=512, height=512, mask_blur=0, inpaint_full_res=True,
                                   inpaint_full_res_padding=16, region_index=0)


def test_max_detections_keeps_the_best_scores() -> None:
    faces = [Detection((10, 8, 30, 28), 0.5), Detection((60, 30, 80, 50), 0.95), Detection((40, 2, 50, 12), 0.7)]
    inpaint = RepaintEverything()
    result = detail(_noise(), [DetailerOptions(model="stub", max_detections=2)], lambda n: StubDetector(faces), inpaint)
    assert [d.score for d in result.regions[0]] == [0.7, 0.95]  # left to right


def test_negative_dilation_shrinks_and_boxes_are_clipped() -> None:
    assert region_mask((50, 40), Detection((10, 10, 30, 30), 1.0), -3).getbbox() == (13, 13, 27, 27)
    assert region_mask((50, 40), Detection((-5, 30, 60, 45), 1.0), 4).getbbox() == (0, 26, 50, 40)
    assert region_mask((50, 40), Detection((10, 10, 14, 14), 1.0), -3).getbbox() is None


def test_no_detection_leaves_the_image_untouched() -> None:
    inpaint = RepaintEverything()
    image = _noise()
    result = detail(image, [DetailerOptions(model="stub")], lambda name: StubDetector([]), inpaint)
    assert inpaint.calls == [] and np.array_equal(np.asarray(result.image), np.asarray(image))


def test_with_the_real_onnx_detector_only_the_face_region_changes(tmp_path: Path) -> None:
    yunet_like(tmp_path / "yunet.onnx", side=64)
    detectors = Detectors([str(tmp_path)])
    image = Image.new("RGB", (64, 64), (0, 0, 0))
    image.paste((255, 255, 255), (16, 16, 24, 24))  # one 8x8 "face": cell (2, 2)
    inpaint = RepaintEverything()
    result = detail(image, [DetailerOptions(model="yunet", confidence=0.5, mask_blur=0)], detectors.get, inpaint)
    (_, mask, _), = inpaint.calls
    changed = np.any(np.asarray(result.image) != np.asarray(image), axis=-1)
    assert changed.any() and not (changed & ~(np.asarray(mask) > 0)).any()
    assert mask.getbbox() == (0, 0, 40, 40)  # the 32-px box around (20, 20), grown by 4, clipped


def test_infotext_uses_adetailer_keys_and_reads_back() -> None:
    passes = [
        DetailerOptions(model="face_detection_yunet_2023mar", prompt="smile", confidence=0.4, steps=10),
        DetailerOptions(model="face_detection_yunet_2023mar", denoising_strength=0.25, max_detections=1),
    ]
    params = infotext_params(passes)
    assert params["ADetailer model"] == "face_detection_yunet_2023mar"
    assert params["ADetailer prompt"] == "smile"
    assert params["ADetailer confidence"] == 0.4
    assert params["ADetailer use separate steps"] is True and params["ADetailer steps"] == 10
    assert params["ADetailer denoising strength 2nd"] == 0.25
    assert params["ADetailer mask only top k largest 2nd"] == 1
    assert "ADetailer prompt 2nd" not in params and "ADetailer steps 2nd" not in params
    as_text = {k: str(v) for k, v in params.items()}  # what an infotext parser hands back
    assert options_from_infotext(as_text) == passes


def test_an_a1111_adetailer_infotext_reads_back() -> None:
    params = {"ADetailer model": "face_yolov8n.pt", "ADetailer confidence": "0.3", "ADetailer dilate erode": "4",
              "ADetailer mask blur": "4", "ADetailer denoising strength": "0.4",
              "ADetailer inpaint only masked": "True", "ADetailer inpaint padding": "32", "ADetailer version": "24.5.1"}
    (options,) = options_from_infotext(params)
    assert options == DetailerOptions(model="face_yolov8n.pt")


@pytest.mark.parametrize("bad", [(0, 0, 10, 10)])
def test_an_inpaint_of_the_wrong_size_is_an_error(bad) -> None:
    def shrink(image: Image.Image, mask: Image.Image, options: InpaintOptions) -> Image.Image:
        return image.resize((10, 10))

    with pytest.raises(ValueError, match=r"the inpaint returned a \(10, 10\) image"):
        detail(_noise(), [DetailerOptions(model="stub")], lambda n: StubDetector([Detection(bad, 1.0)]), shrink)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"confidence": 1.5}, "confidence must be between 0 and 1, not 1.5"),
        ({"dilate_erode": -200}, "dilate/erode must be within ±128, not -200"),
        ({"inpaint_width": 500}, "multiple of 8 from 64 to 4096, not 500"),
        ({"steps": 500}, "steps must be 0 .the job's. or 1 to 150, not 500"),
        ({"max_detections": -1}, "max detections must be 0 to 20, not -1"),
    ],
)
def test_out_of_range_options_are_refused_before_anything_runs(change: dict, message: str) -> None:
    inpaint = RepaintEverything()
    options = DetailerOptions(model="stub", **change)
    with pytest.raises(ValueError, match=message):
        detail(_noise(), [options], lambda n: StubDetector([Detection((10, 8, 30, 28), 0.9)]), inpaint)
    assert inpaint.calls == []
    with pytest.raises(ValueError, match="at most 2 detailer passes, not 3"):
        detail(_noise(), [DetailerOptions(model="stub")] * 3, lambda n: StubDetector([]), inpaint)
