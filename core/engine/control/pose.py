"""The ``dw_openpose_full`` preprocessor: DWPose whole-body keypoints drawn as an OpenPose map.

Two ONNX models, run with OpenCV's DNN module (no extra runtime), from ``engine.preprocessor_dirs``
(directly or in an ``openpose``/``dwpose`` subfolder): the YOLOX-L person detector ``yolox_l.onnx``
(Apache-2.0) and the DWPose RTMPose-L whole-body model ``dw-ll_ucoco_384.onnx`` (Apache-2.0) —
the files sd-webui-controlnet uses. The behaviour follows sd-webui-controlnet's DWPose path:

1. detection: the image letterboxed into 640×640 (grey 114 padding, top-left), YOLOX's grid decoding,
   person boxes with score > 0.3 after non-maximum suppression (IoU 0.45) of those above 0.1;
2. per person: the box centre and 1.25× its size, widened to the model's 3:4 aspect, cut out by an
   affine warp to 288×384, normalised (ImageNet mean/std on 0..255); keypoints are the SimCC
   maxima (÷ 2, the split ratio) mapped back, scored by the lower of the x and y maxima;
3. the 133 COCO-WholeBody keypoints become OpenPose's 18 body points (a neck between the shoulders),
   plus 21 per hand and 68 face points, each kept if its score ≥ 0.3, and are drawn on black:
   OpenPose's limb colours (60 %) and joint colours, hands in rainbow lines with blue joints, the
   face as white dots.
"""

from __future__ import annotations

import colorsys
import math
import threading
from pathlib import Path

import cv2
import numpy as np

from core.engine.control.available import POSE_FILES, POSE_SUBFOLDERS, find_pose_file

DETECTOR_FILE, POSE_FILE = POSE_FILES
SUBFOLDERS = POSE_SUBFOLDERS
DET_SIZE = 640
POSE_SIZE = (288, 384)  # (width, height)
SIMCC_SPLIT = 2.0
MEAN = np.array([123.675, 116.28, 103.53])
STD = np.array([58.395, 57.12, 57.375])
KEEP = 0.3  # keypoint and box score threshold
EPS = 0.01

# OpenPose body: 1-based limb pairs and the 18 joint colours (RGB).
LIMBS = (
    (2, 3), (2, 6), (3, 4), (4, 5), (6, 7), (7, 8), (2, 9), (9, 10), (10, 11), (2, 12), (12, 13),
    (13, 14), (2, 1), (1, 15), (15, 17), (1, 16), (16, 18),
)  # fmt: skip
COLORS = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
    (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
    (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)  # fmt: skip
HAND_EDGES = tuple((0, i + 1) if i % 4 == 0 else (i, i + 1) for i in range(20))
# COCO-WholeBody (with the neck inserted at 17) -> OpenPose body order.
# (COCO: 0 nose, 1/2 L/R eye, 3/4 ears, 5/6 shoulders, 7/8 elbows, 9/10 wrists, 11/12 hips, 13/14 knees,
# 15/16 ankles; OpenPose: 0 nose, 1 neck, 2-4 R arm, 5-7 L arm, 8-10 R leg, 11-13 L leg, 14/15 R/L eye, 16/17 ears.)
WHOLEBODY_TO_OPENPOSE = ((17, 1), (6, 2), (8, 3), (10, 4), (7, 6), (9, 7), (12, 8), (14, 9), (16, 10), (13, 12),
                         (15, 13), (2, 14), (1, 15), (4, 16), (3, 17))  # fmt: skip

_lock = threading.Lock()
_nets: dict[str, cv2.dnn.Net] = {}


find_model_file = find_pose_file


def _net(path: Path) -> cv2.dnn.Net:
    with _lock:
        if str(path) not in _nets:
            _nets[str(path)] = cv2.dnn.readNetFromONNX(str(path))
        return _nets[str(path)]


def _forward(net: cv2.dnn.Net, blob: np.ndarray) -> list[np.ndarray]:
    with _lock:  # a Net holds its input: one call at a time
        net.setInput(blob)
        return list(net.forward(net.getUnconnectedOutLayersNames()))


# --- detection -----------------------------------------------------------------------------------


def letterbox(image: np.ndarray) -> tuple[np.ndarray, float]:
    """The detector's input (1, 3, 640, 640) float32 and the image's scale factor into it."""
    ratio = min(DET_SIZE / image.shape[0], DET_SIZE / image.shape[1])
    height, width = int(image.shape[0] * ratio), int(image.shape[1] * ratio)
    padded = np.full((DET_SIZE, DET_SIZE, 3), 114, dtype=np.uint8)
    padded[:height, :width] = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(padded.transpose(2, 0, 1), dtype=np.float32)[None], ratio


def decode_detections(raw: np.ndarray, ratio: float) -> np.ndarray:
    """YOLOX output (1, anchors, 5 + classes) -> person boxes (n, 4) x1, y1, x2, y2 in the image."""
    grids, strides = [], []
    for stride in (8, 16, 32):
        size = DET_SIZE // stride
        xs, ys = np.meshgrid(np.arange(size), np.arange(size))
        grids.append(np.stack((xs, ys), 2).reshape(-1, 2))
        strides.append(np.full((size * size, 1), stride))
    grid, stride = np.concatenate(grids), np.concatenate(strides)
    out = raw[0].astype(np.float64)
    centre = (out[:, :2] + grid) * stride
    size = np.exp(out[:, 2:4]) * stride
    boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1) / ratio
    scores = out[:, 4] * out[:, 5]  # objectness x "person"
    candidates = np.nonzero(scores > 0.1)[0]
    kept = [candidates[i] for i in _nms(boxes[candidates], scores[candidates], 0.45)]
    return np.array([boxes[i] for i in kept if scores[i] > KEEP]).reshape(-1, 4)


def _nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """Greedy non-maximum suppression, pixel-inclusive areas (+1) as YOLOX's demo computes them."""
    area = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    order, keep = list(np.argsort(scores)[::-1]), []
    while order:
        best, rest = order[0], np.array(order[1:], dtype=int)
        keep.append(int(best))
        w = np.maximum(0.0, np.minimum(boxes[best, 2], boxes[rest, 2]) - np.maximum(boxes[best, 0], boxes[rest, 0]) + 1)
        h = np.maximum(0.0, np.minimum(boxes[best, 3], boxes[rest, 3]) - np.maximum(boxes[best, 1], boxes[rest, 1]) + 1)
        overlap = w * h / (area[best] + area[rest] - w * h)
        order = [int(i) for i in rest[overlap <= threshold]]
    return keep


# --- keypoints -----------------------------------------------------------------------------------


def pose_crop(image: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The 288×384 cut-out of one person (float, normalised), with the box centre and crop size."""
    width, height = POSE_SIZE
    centre = np.array([box[0] + box[2], box[1] + box[3]]) * 0.5
    scale = np.array([box[2] - box[0], box[3] - box[1]]) * 1.25
    aspect = width / height
    scale = np.array([scale[0], scale[0] / aspect]) if scale[0] > scale[1] * aspect else np.array([scale[1] * aspect, scale[1]])
    half = scale[0] * 0.5
    src = np.float32([centre, centre + np.array([0.0, -half]), centre + np.array([-half, -half])])
    dst = np.float32([(width / 2, height / 2), (width / 2, height / 2 - width / 2), (0, height / 2 - width / 2)])
    crop = cv2.warpAffine(image, cv2.getAffineTransform(src, dst), (width, height), flags=cv2.INTER_LINEAR)
    return (crop - MEAN) / STD, centre, scale


def decode_simcc(simcc_x: np.ndarray, simcc_y: np.ndarray, centre, scale) -> np.ndarray:
    """SimCC maxima (1, K, Wx) / (1, K, Wy) -> (K, 3) image x, y and score."""
    x_max, y_max = simcc_x[0].max(axis=1), simcc_y[0].max(axis=1)
    locs = np.stack([simcc_x[0].argmax(axis=1), simcc_y[0].argmax(axis=1)], axis=1).astype(np.float32)
    scores = np.minimum(x_max, y_max)
    locs[scores <= 0] = -1
    points = locs / SIMCC_SPLIT / np.array(POSE_SIZE) * scale + centre - scale / 2
    return np.concatenate([points, scores[:, None]], axis=1)


def estimate(image: np.ndarray, boxes: np.ndarray, pose_net: cv2.dnn.Net) -> np.ndarray:
    """(n, 133, 3) whole-body keypoints of each person box."""
    people = []
    for box in boxes:
        crop, centre, scale = pose_crop(image, box)
        outputs = _forward(pose_net, np.ascontiguousarray(crop.transpose(2, 0, 1)[None], dtype=np.float32))
        simcc_x, simcc_y = sorted(outputs, key=lambda o: o.shape[-1])  # x bins (576) < y bins (768)
        people.append(decode_simcc(simcc_x, simcc_y, centre, scale))
    return np.array(people).reshape(-1, 133, 3)


def to_openpose(wholebody: np.ndarray) -> np.ndarray:
    """(n, 133, 3) COCO-WholeBody -> (n, 134, 3): OpenPose's 18 body points first, then the rest."""
    neck = wholebody[:, [5, 6]].mean(axis=1)
    neck[:, 2] = np.logical_and(wholebody[:, 5, 2] > KEEP, wholebody[:, 6, 2] > KEEP).astype(float)
    out = np.insert(wholebody, 17, neck, axis=1)
    src, dst = zip(*WHOLEBODY_TO_OPENPOSE, strict=True)
    out[:, list(dst)] = out[:, list(src)]
    return out


# --- drawing -------------------------------------------------------------------------------------


def _kept(points: np.ndarray) -> list[tuple[float, float] | None]:
    return [(float(x), float(y)) if s >= KEEP else None for x, y, s in points]


def draw_body(canvas: np.ndarray, body: list[tuple[float, float] | None]) -> None:
    for (a, b), color in zip(LIMBS, COLORS, strict=False):
        p, q = body[a - 1], body[b - 1]
        if p is None or q is None:
            continue
        mean_x, mean_y = (p[0] + q[0]) / 2, (p[1] + q[1]) / 2
        length = math.hypot(p[0] - q[0], p[1] - q[1])
        angle = math.degrees(math.atan2(p[1] - q[1], p[0] - q[0]))
        polygon = cv2.ellipse2Poly((int(mean_x), int(mean_y)), (int(length / 2), 4), int(angle), 0, 360, 1)
        cv2.fillConvexPoly(canvas, polygon, [int(float(c) * 0.6) for c in color])
    for point, color in zip(body, COLORS, strict=True):
        if point is not None:
            cv2.circle(canvas, (int(point[0]), int(point[1])), 4, color, thickness=-1)


def draw_hand(canvas: np.ndarray, hand: list[tuple[float, float] | None]) -> None:
    for i, (a, b) in enumerate(HAND_EDGES):
        p, q = hand[a], hand[b]
        if p is None or q is None:
            continue
        (x1, y1), (x2, y2) = (int(p[0]), int(p[1])), (int(q[0]), int(q[1]))
        if min(x1, y1, x2, y2) > EPS:
            color = [c * 255 for c in colorsys.hsv_to_rgb(i / float(len(HAND_EDGES)), 1.0, 1.0)]
            cv2.line(canvas, (x1, y1), (x2, y2), color, thickness=2)
    for point in hand:
        if point is not None and int(point[0]) > EPS and int(point[1]) > EPS:
            cv2.circle(canvas, (int(point[0]), int(point[1])), 4, (0, 0, 255), thickness=-1)


def draw_face(canvas: np.ndarray, face: list[tuple[float, float] | None]) -> None:
    for point in face:
        if point is not None and int(point[0]) > EPS and int(point[1]) > EPS:
            cv2.circle(canvas, (int(point[0]), int(point[1])), 3, (255, 255, 255), thickness=-1)


def draw_openpose(people: np.ndarray, height: int, width: int) -> np.ndarray:
    """(n, 134, 3) OpenPose-ordered keypoints drawn on a black (height, width, 3) canvas."""
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    for person in people:
        body = _kept(person[:18])
        draw_body(canvas, body)
        for part in (person[92:113], person[113:134]):
            hand = _kept(part)
            if any(p is not None for p in hand):
                draw_hand(canvas, hand)
        face = _kept(person[24:92])
        if any(p is not None for p in face):
            draw_face(canvas, [*face, body[14], body[15]])  # OpenPose's 70 face points end with the eyes
    return canvas


def dw_openpose_full(image: np.ndarray, folders: tuple[str, ...]) -> np.ndarray:
    """The OpenPose map (H, W, 3) of every person DWPose finds in an (H, W, 3) RGB uint8 image."""
    detector = _net(find_model_file(DETECTOR_FILE, folders))
    pose_net = _net(find_model_file(POSE_FILE, folders))
    blob, ratio = letterbox(image)
    boxes = decode_detections(_forward(detector, blob)[0], ratio)
    people = to_openpose(estimate(image, boxes, pose_net)) if len(boxes) else np.zeros((0, 134, 3))
    return draw_openpose(people, image.shape[0], image.shape[1])
