"""Finding faces: the YuNet face detector (ONNX, OpenCV Zoo, MIT) run by onnxruntime, and NMS.

YuNet (``face_detection_yunet_2023mar.onnx``) predicts, for every cell of three feature maps (strides 8,
16, 32), a class and an objectness probability, a box (centre offset in cells, log width/height in
cells) and five landmarks (right eye, left eye, nose tip, right and left mouth corner). The decoding and
the score ``sqrt(cls * obj)`` follow OpenCV's ``FaceDetectorYN`` (our own numpy code). The ONNX file has a
fixed input size (640×640), so the image is fitted into it (letterboxed at the top left, as OpenCV pads);
because YuNet was trained on faces up to about 300 pixels, it also runs on the image at half that size,
and the two runs are merged by NMS — a close-up portrait's face is found as well as a crowd's.

Hands: no hand detector with a licence that fits beside MIT is wired in yet (the ultralytics YOLO hand
models ADetailer uses are AGPL). Any detector that returns :class:`Detection` can be used by the detailer.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from core.engine.postprocess.files import PostprocessError, list_model_files, unknown_name_error
from core.engine.postprocess.onnx_models import open_session

STRIDES = (8, 16, 32)
YUNET_OUTPUTS = tuple(f"{kind}_{stride}" for kind in ("cls", "obj", "bbox", "kps") for stride in STRIDES)
DETECT_SCALES = (1.0, 0.5)  # fractions of the model input the image is fitted into (see module doc)
DYNAMIC_SIDE = 640  # long side for a YuNet export with a dynamic input size
NMS_IOU = 0.3  # OpenCV FaceDetectorYN's default
TOP_K = 5000


@dataclass(frozen=True)
class Detection:
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in image pixels
    score: float
    landmarks: tuple[tuple[float, float], ...] = ()  # YuNet: right eye, left eye, nose, mouth right, mouth left
    label: str = "face"

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.box
        return max(0.0, x1 - x0) * max(0.0, y1 - y0)


class Detector(Protocol):
    name: str

    def detect(self, image: Image.Image, confidence: float) -> list[Detection]: ...


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Intersection over union of one x0,y0,x1,y1 box with each of ``boxes``."""
    x0 = np.maximum(box[0], boxes[:, 0])
    y0 = np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[2], boxes[:, 2])
    y1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = NMS_IOU, top_k: int = TOP_K) -> list[int]:
    """Greedy non-maximum suppression: indices kept, best score first (ties: the earlier one)."""
    order = list(np.argsort(-scores, kind="stable")[:top_k])
    keep: list[int] = []
    while order:
        best = order.pop(0)
        keep.append(int(best))
        if order:
            rest = np.asarray(order)
            order = [int(i) for i in rest[iou(boxes[best], boxes[rest]) <= iou_threshold]]
    return keep


def decode_yunet(outputs: dict[str, np.ndarray], width: int, height: int, confidence: float) -> np.ndarray:
    """Rows ``x0, y0, x1, y1, score, 10 landmark coordinates`` for cells scoring >= ``confidence``.

    ``width``/``height``: the (padded) input size the model ran on.
    """
    rows = []
    for stride in STRIDES:
        cols, lines = width // stride, height // stride
        cls = np.clip(outputs[f"cls_{stride}"].reshape(-1), 0.0, 1.0)
        obj = np.clip(outputs[f"obj_{stride}"].reshape(-1), 0.0, 1.0)
        bbox = outputs[f"bbox_{stride}"].reshape(-1, 4)
        kps = outputs[f"kps_{stride}"].reshape(-1, 10)
        if cls.size != cols * lines:
            raise ValueError(f"YuNet cls_{stride} has {cls.size} cells, expected {cols}x{lines}")
        score = np.sqrt(cls * obj)
        hit = np.nonzero(score >= confidence)[0]
        r, c = (hit // cols).astype(np.float32), (hit % cols).astype(np.float32)
        cx, cy = (c + bbox[hit, 0]) * stride, (r + bbox[hit, 1]) * stride
        w, h = np.exp(bbox[hit, 2]) * stride, np.exp(bbox[hit, 3]) * stride
        points = kps[hit].reshape(-1, 5, 2)
        points = np.stack([(points[..., 0] + c[:, None]) * stride, (points[..., 1] + r[:, None]) * stride], -1)
        rows.append(np.column_stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, score[hit], points.reshape(-1, 10)]))
    return np.concatenate(rows) if rows else np.zeros((0, 15), np.float32)


class YuNetDetector:
    """A YuNet ONNX face detector; thread-safe (onnxruntime sessions are)."""

    def __init__(self, path: Path, *, device: str = "cpu", scales: Sequence[float] = DETECT_SCALES) -> None:
        self.name = path.stem
        self.session = open_session(path, device=device)
        outputs = {o.name for o in self.session.get_outputs()}
        missing = [name for name in YUNET_OUTPUTS if name not in outputs]
        if missing:
            raise PostprocessError(f"{self.name}: not a YuNet (2023) face detector (no output {missing[0]})")
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        shape = model_input.shape
        self.fixed = (shape[3], shape[2]) if all(isinstance(d, int) for d in shape[2:4]) else None
        self.scales = tuple(scales)

    def _canvas(self, image: Image.Image, fraction: float) -> tuple[np.ndarray, float]:
        if self.fixed is not None:
            width, height = self.fixed
            scale = min(width / image.width, height / image.height) * fraction
        else:
            scale = DYNAMIC_SIDE / max(image.size) * fraction
            width = math.ceil(image.width * scale / 32) * 32
            height = math.ceil(image.height * scale / 32) * 32
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        canvas = np.zeros((height, width, 3), np.float32)
        resized = image.convert("RGB").resize(size, Image.Resampling.BILINEAR)
        canvas[: size[1], : size[0]] = np.asarray(resized, np.float32)[:, :, ::-1]  # BGR, 0..255 as OpenCV
        return canvas, scale

    def detect(self, image: Image.Image, confidence: float = 0.3) -> list[Detection]:
        found = []
        for fraction in self.scales:
            canvas, scale = self._canvas(image, fraction)
            blob = np.ascontiguousarray(canvas.transpose(2, 0, 1)[None])
            values = self.session.run(list(YUNET_OUTPUTS), {self.input_name: blob})
            rows = decode_yunet(dict(zip(YUNET_OUTPUTS, values, strict=True)), canvas.shape[1], canvas.shape[0], confidence)
            rows[:, [0, 1, 2, 3, *range(5, 15)]] /= scale
            found.append(rows)
        rows = np.concatenate(found)
        keep = nms(rows[:, :4], rows[:, 4])
        return [_detection(rows[i], image.size) for i in keep]


def _detection(row: np.ndarray, size: tuple[int, int]) -> Detection:
    width, height = size
    x0, y0 = float(np.clip(row[0], 0, width)), float(np.clip(row[1], 0, height))
    x1, y1 = float(np.clip(row[2], 0, width)), float(np.clip(row[3], 0, height))
    points = tuple((float(row[5 + 2 * i]), float(row[6 + 2 * i])) for i in range(5))
    return Detection(box=(x0, y0, x1, y1), score=float(row[4]), landmarks=points)


class Detectors:
    """The detector models of one server (``*.onnx`` under ``detector_dirs``), by file stem, loaded once."""

    def __init__(self, folders: Sequence[str], *, device: str = "cpu") -> None:
        self.folders = tuple(folders)
        self.device = device
        self._loaded: dict[Path, Any] = {}
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        return sorted(list_model_files(self.folders, (".onnx",)), key=str.lower)

    def get(self, name: str) -> Detector:
        path = list_model_files(self.folders, (".onnx",)).get(name)
        if path is None:
            raise unknown_name_error("detector", name, self.names(), self.folders)
        with self._lock:
            if path not in self._loaded:
                self._loaded[path] = YuNetDetector(path, device=self.device)
            return self._loaded[path]
