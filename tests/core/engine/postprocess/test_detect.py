from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from core.engine.postprocess.detect import Detectors, YuNetDetector, decode_yunet, nms
from core.engine.postprocess.files import PostprocessError
from tests.core.engine.postprocess.onnx_graphs import yunet_like


def test_nms_keeps_the_best_of_overlapping_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 9]], np.float32)
    scores = np.array([0.8, 0.9, 0.5, 0.7], np.float32)
    assert nms(boxes, scores, 0.3) == [1, 2]
    assert nms(boxes, scores, 0.99) == [1, 0, 3, 2]


def test_decode_follows_opencv_yunet_layout() -> None:
    # One stride-8 cell (row 1, col 2) of a 32x16 input: score sqrt(cls*obj), box centre (col+dx)*8.
    outputs = {}
    for stride in (8, 16, 32):
        cells = (32 // stride) * (16 // stride)
        outputs |= {f"cls_{stride}": np.zeros(cells), f"obj_{stride}": np.zeros(cells),
                    f"bbox_{stride}": np.zeros((cells, 4)), f"kps_{stride}": np.zeros((cells, 10))}
    cell = 1 * 4 + 2
    outputs["cls_8"][cell], outputs["obj_8"][cell] = 0.81, 1.5  # obj is clamped to 1 as OpenCV does
    outputs["bbox_8"][cell] = [0.5, 0.25, np.log(2.0), 0.0]
    outputs["kps_8"][cell] = [0, 0, 1, 0, 0.5, 0.5, 0, 1, 1, 1]
    rows = decode_yunet(outputs, 32, 16, confidence=0.5)
    assert rows.shape == (1, 15)
    x0, y0, x1, y1, score = rows[0, :5]
    assert score == pytest.approx(0.9)
    assert (x0, y0, x1, y1) == pytest.approx((12.0, 6.0, 28.0, 14.0))  # centre (20, 10), 16 x 8
    assert rows[0, 5:9] == pytest.approx([16.0, 8.0, 24.0, 8.0])
    assert decode_yunet(outputs, 32, 16, confidence=0.95).shape == (0, 15)


def _image_with_squares(side: int, squares: list[tuple[int, int, int]]) -> Image.Image:
    image = Image.new("RGB", (side, side), (0, 0, 0))
    draw = ImageDraw.Draw(image)
    for x, y, size in squares:
        draw.rectangle((x, y, x + size - 1, y + size - 1), fill=(255, 255, 255))
    return image


def test_onnxruntime_runs_a_yunet_graph_and_boxes_come_out_decoded(tmp_path: Path) -> None:
    path = yunet_like(tmp_path / "faces.onnx", side=64)
    detector = YuNetDetector(path, scales=(1.0,))
    assert detector.fixed == (64, 64)
    image = _image_with_squares(128, [(16, 16, 16), (96, 64, 16)])  # fitted into 64x64: 8-px blocks, one cell each
    found = detector.detect(image, confidence=0.5)
    assert len(found) == 2 and all(d.score > 0.9 for d in found)  # PIL's bilinear softens the edges a little
    centres = sorted(d.landmarks[0] for d in found)  # the graph puts landmarks at the cell centre
    assert centres == [pytest.approx((24.0, 24.0)), pytest.approx((104.0, 72.0))]  # back at 128 px
    first, second = sorted(found, key=lambda d: d.box[0])
    assert first.box == pytest.approx((0.0, 0.0, 56.0, 56.0))  # 4 cells of 8 px at scale 0.5, clipped at 0
    assert second.box == pytest.approx((72.0, 40.0, 128.0, 104.0))
    assert detector.detect(Image.new("RGB", (128, 128)), confidence=0.5) == []


def test_neighbouring_hits_merge_into_one_face(tmp_path: Path) -> None:
    detector = YuNetDetector(yunet_like(tmp_path / "faces.onnx", side=64), scales=(1.0,))
    found = detector.detect(_image_with_squares(64, [(16, 16, 16)]), confidence=0.5)  # 2x2 cells light up
    assert len(found) == 1


def test_detectors_by_name_and_clear_errors(tmp_path: Path) -> None:
    yunet_like(tmp_path / "adetailer" / "face_detection_yunet_2023mar.onnx")
    detectors = Detectors([str(tmp_path / "adetailer")])
    assert detectors.names() == ["face_detection_yunet_2023mar"]
    assert detectors.get("face_detection_yunet_2023mar") is detectors.get("face_detection_yunet_2023mar")
    with pytest.raises(PostprocessError, match=r"unknown detector 'face_yolov8n.pt' \(known: face_detection_yunet_2023mar\)"):
        detectors.get("face_yolov8n.pt")
    with pytest.raises(PostprocessError, match=r"has no detector models installed \(looked in nowhere\)"):
        Detectors(["nowhere"]).get("face_detection_yunet_2023mar")
    (tmp_path / "adetailer" / "broken.onnx").write_bytes(b"not a model")
    with pytest.raises(PostprocessError, match="broken: not a usable ONNX model"):
        detectors.get("broken")
