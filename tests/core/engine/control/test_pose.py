"""dw_openpose_full with stand-in ONNX models whose outputs are fixed: detections and keypoints are
placed by hand, so every box, keypoint and drawn pixel follows from the decoding rules."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from core.engine.control.pose import (
    COLORS,
    DETECTOR_FILE,
    POSE_FILE,
    decode_detections,
    dw_openpose_full,
    letterbox,
    pose_crop,
    to_openpose,
)
from core.engine.control.preprocessors import PreprocessContext, preprocess
from core.engine.control.units import ControlUnit

onnx = pytest.importorskip("onnx")


def _constant_model(path: Path, input_shape: list[int], outputs: dict[str, np.ndarray]) -> None:
    """An ONNX graph whose outputs are constants (tied to the input by a zero term, as a real net is)."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("ReduceMean", ["input"], ["mean"], keepdims=0),
             helper.make_node("Mul", ["mean", "zero"], ["nothing"])]  # fmt: skip
    initializers = [numpy_helper.from_array(np.zeros((), np.float32), "zero")]
    graph_outputs = []
    for name, value in outputs.items():
        initializers.append(numpy_helper.from_array(value.astype(np.float32), f"{name}_value"))
        nodes.append(helper.make_node("Add", [f"{name}_value", "nothing"], [name]))
        graph_outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(value.shape)))
    graph = helper.make_graph(nodes, "stand-in", [helper.make_tensor_value_info("input", TensorProto.FLOAT, input_shape)],
                              graph_outputs, initializer=initializers)  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _anchor(stride: int, gx: int, gy: int) -> int:
    """Row of grid cell (gx, gy) of a stride in YOLOX's 8400 anchors (strides 8, 16, 32 in order)."""
    offset = {8: 0, 16: 80 * 80, 32: 80 * 80 + 40 * 40}[stride]
    return offset + gy * (640 // stride) + gx


def _detections() -> np.ndarray:
    raw = np.zeros((1, 8400, 85), np.float32)

    def put(row, dx, dy, w_cells, h_cells, obj, person, other=0.0):
        raw[0, row, :4] = (dx, dy, np.log(w_cells), np.log(h_cells))
        raw[0, row, 4], raw[0, row, 5], raw[0, row, 6] = obj, person, other

    put(_anchor(32, 10, 10), 0.0, 0.0, 6, 9, 0.9, 0.9)  # centre (320, 320), 192 x 288: the person
    put(_anchor(32, 11, 10), 0.0, 0.0, 6, 9, 0.8, 0.8)  # overlaps it (IoU ~0.7): suppressed
    put(_anchor(16, 5, 5), 0.0, 0.0, 4, 4, 0.5, 0.5)  # score 0.25: kept by NMS, dropped at 0.3
    put(_anchor(8, 70, 70), 0.0, 0.0, 4, 4, 0.9, 0.0, other=0.9)  # a confident non-person
    return raw


# Chosen COCO-WholeBody keypoints (index: SimCC peak x, y in bins); the person box makes image
# x = bin * 0.46875 + 185 and y = bin * 0.46875 + 140 (see test_pose_crop_maps_the_box_onto_the_model_input).
# COCO-WholeBody 91..111 is the left hand (0 = its wrist), 23..90 the face.
PEAKS = {0: (288, 128), 5: (352, 256), 6: (224, 256), 9: (416, 512), 91: (64, 64), 92: (64, 128), 30: (288, 96)}


def _keypoints() -> dict[str, np.ndarray]:
    x, y = np.zeros((1, 133, 576), np.float32), np.zeros((1, 133, 768), np.float32)
    for k, (px, py) in PEAKS.items():
        x[0, k, px], y[0, k, py] = 1.0, 0.9
    x[0, 7, 10], y[0, 7, 10] = 0.2, 0.2  # a low-confidence elbow: not drawn
    return {"simcc_x": x, "simcc_y": y}


@pytest.fixture(scope="module")
def pose_dirs(tmp_path_factory) -> tuple[str, ...]:
    root = tmp_path_factory.mktemp("preprocessors")
    (root / "openpose").mkdir()
    _constant_model(root / "openpose" / DETECTOR_FILE, [1, 3, 640, 640], {"output": _detections()})
    _constant_model(root / "openpose" / POSE_FILE, [1, 3, 384, 288], _keypoints())
    return (str(root),)


def _image_xy(px: int, py: int) -> tuple[float, float]:
    return px * 0.46875 + 185, py * 0.46875 + 140


def test_detections_decode_suppress_and_keep_only_people() -> None:
    boxes = decode_detections(_detections(), ratio=1.0)
    np.testing.assert_allclose(boxes, [[224, 176, 416, 464]], atol=1e-4)
    np.testing.assert_allclose(decode_detections(_detections(), ratio=0.5), [[448, 352, 832, 928]], atol=1e-4)


def test_letterbox_scales_into_the_top_left_on_grey() -> None:
    blob, ratio = letterbox(np.zeros((320, 160, 3), np.uint8))
    assert ratio == 2.0 and blob.shape == (1, 3, 640, 640)
    assert blob[0, :, :, :320].max() == 0 and (blob[0, :, :, 320:] == 114).all()


def test_pose_crop_maps_the_box_onto_the_model_input() -> None:
    # box 192x288 -> x1.25 = 240x360 -> widened to 3:4 = 270x360: one model pixel = 0.9375 image pixels,
    # the crop's left edge at 320 - 135 = 185 and top at 320 - 180 = 140.
    image = np.zeros((640, 640, 3), np.uint8)
    image[:, 320] = 255
    crop, centre, scale = pose_crop(image, np.array([224.0, 176.0, 416.0, 464.0]))
    assert crop.shape == (384, 288, 3) and list(centre) == [320, 320] and list(scale) == [270, 360]
    column = crop[:, :, 0].mean(axis=0)
    assert int(np.argmax(column)) == round((320 - 185) / 0.9375)  # 144


def test_wholebody_to_openpose_order_and_neck() -> None:
    people = np.zeros((1, 133, 3))
    people[0, 5] = (10, 20, 0.9)  # left shoulder
    people[0, 6] = (30, 40, 0.8)  # right shoulder
    people[0, 0] = (1, 2, 0.7)  # nose
    out = to_openpose(people)
    assert out.shape == (1, 134, 3)
    assert list(out[0, 1]) == [20, 30, 1.0]  # the neck: mean of the shoulders, score 1 when both > 0.3
    assert list(out[0, 2]) == [30, 40, 0.8] and list(out[0, 5]) == [10, 20, 0.9]  # R / L shoulder
    assert list(out[0, 0]) == [1, 2, 0.7]


def test_the_drawn_map_has_every_joint_limb_hand_and_face_point(pose_dirs) -> None:
    canvas = dw_openpose_full(np.zeros((640, 640, 3), np.uint8), pose_dirs)
    joints = {0: PEAKS[0], 2: PEAKS[6], 5: PEAKS[5], 7: PEAKS[9]}  # OpenPose: nose, R/L shoulder, L wrist
    for index, peak in joints.items():
        x, y = _image_xy(*peak)
        assert tuple(canvas[int(y), int(x)]) == COLORS[index], index
    neck = ((_image_xy(*PEAKS[5])[0] + _image_xy(*PEAKS[6])[0]) / 2, _image_xy(*PEAKS[5])[1])
    assert tuple(canvas[int(neck[1]), int(neck[0])]) == COLORS[1]
    # limb neck -> nose (limb 13, colour 12 at 60 %), sampled between the two joint circles
    nose = _image_xy(*PEAKS[0])
    mid = (int((neck[0] + nose[0]) / 2), int((neck[1] + nose[1]) / 2))
    assert tuple(canvas[mid[1], mid[0]]) == tuple(int(c * 0.6) for c in COLORS[12])
    hand_a, hand_b = _image_xy(*PEAKS[91]), _image_xy(*PEAKS[92])
    assert tuple(canvas[int(hand_a[1]), int(hand_a[0])]) == (0, 0, 255)  # hand joints: (0, 0, 255) as drawn there
    hand_mid = (int(hand_a[0]), int((hand_a[1] + hand_b[1]) / 2))
    assert tuple(canvas[hand_mid[1], hand_mid[0]]) == (255, 0, 0)  # the hand's first edge (wrist -> thumb): hue 0
    face = _image_xy(*PEAKS[30])
    assert tuple(canvas[int(face[1]), int(face[0])]) == (255, 255, 255)
    assert not canvas[:100].any()  # nothing above the person (the weak elbow is not drawn)


def test_preprocessor_runs_at_the_processor_resolution_and_names_missing_files(pose_dirs, tmp_path) -> None:
    unit = ControlUnit(model="m", module="dw_openpose_full", processor_res=640)
    image = np.zeros((640, 640, 3), np.uint8)
    out, _ = preprocess(unit, image, PreprocessContext(preprocessor_dirs=pose_dirs))
    assert out.shape == (640, 640, 3)
    assert np.array_equal(out, dw_openpose_full(image, pose_dirs))
    with pytest.raises(ValueError, match=r"dw_openpose_full needs yolox_l\.onnx"):
        preprocess(unit, image, PreprocessContext(preprocessor_dirs=(str(tmp_path),)))


def test_a_person_less_image_gives_a_black_map(tmp_path) -> None:
    _constant_model(tmp_path / DETECTOR_FILE, [1, 3, 640, 640], {"output": np.zeros((1, 8400, 85), np.float32)})
    _constant_model(tmp_path / POSE_FILE, [1, 3, 384, 288], _keypoints())
    out = dw_openpose_full(np.full((100, 120, 3), 7, np.uint8), (str(tmp_path),))
    assert out.shape == (100, 120, 3) and not out.any()
    assert cv2.dnn  # the runtime is OpenCV's DNN module
