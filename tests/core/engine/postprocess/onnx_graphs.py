"""Tiny ONNX graphs built with onnx's helper API, standing in for real detector/tagger files in tests."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def yunet_like(path: Path, side: int = 64, box_cells: float = 4.0) -> Path:
    """YuNet's inputs and outputs; the stride-8 class and objectness score of a cell is the mean
    brightness of its 8×8 pixels, its box is ``box_cells`` cells wide centred on the cell's centre, its
    landmarks sit at the cell's centre. Strides 16 and 32 find nothing."""
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["gray"], axes=[1], keepdims=1),
        helper.make_node("Div", ["gray", "k255"], ["unit"]),
        helper.make_node("AveragePool", ["unit"], ["pooled"], kernel_shape=[8, 8], strides=[8, 8]),
        helper.make_node("Reshape", ["pooled", "shape8"], ["cls_8"]),
        helper.make_node("Identity", ["cls_8"], ["obj_8"]),
    ]
    cells8 = (side // 8) ** 2
    init = [
        numpy_helper.from_array(np.array(255.0, np.float32), "k255"),
        numpy_helper.from_array(np.array([1, cells8, 1], np.int64), "shape8"),
    ]
    consts = {"bbox_8": np.tile(np.array([0.5, 0.5, math.log(box_cells), math.log(box_cells)], np.float32), (1, cells8, 1)),
              "kps_8": np.full((1, cells8, 10), 0.5, np.float32)}
    for stride in (16, 32):
        cells = (side // stride) ** 2
        consts |= {f"cls_{stride}": np.zeros((1, cells, 1), np.float32), f"obj_{stride}": np.zeros((1, cells, 1), np.float32),
                   f"bbox_{stride}": np.zeros((1, cells, 4), np.float32), f"kps_{stride}": np.zeros((1, cells, 10), np.float32)}
    for name, value in consts.items():
        init.append(numpy_helper.from_array(value, f"{name}_value"))
        nodes.append(helper.make_node("Identity", [f"{name}_value"], [name]))
    width = {"cls": 1, "obj": 1, "bbox": 4, "kps": 10}
    outputs = [
        helper.make_tensor_value_info(f"{k}_{s}", TensorProto.FLOAT, [1, (side // s) ** 2, width[k]])
        for k in ("cls", "obj", "bbox", "kps") for s in (8, 16, 32)
    ]
    graph = helper.make_graph(
        nodes, "yunet_like", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, side, side])], outputs, init
    )
    return _save(graph, path)


def tagger_like(path: Path, weights: np.ndarray, side: int = 8) -> Path:
    """WD14's interface (input ``input_1:0`` N×side×side×3 BGR 0–255, output sigmoid probabilities):
    probability_i = sigmoid(sum_c weights[c, i] * mean of channel c / 255)."""
    tags = weights.shape[1]
    nodes = [
        helper.make_node("ReduceMean", ["input_1:0"], ["means"], axes=[1, 2], keepdims=0),
        helper.make_node("Div", ["means", "k255"], ["unit"]),
        helper.make_node("MatMul", ["unit", "w"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["predictions_sigmoid"]),
    ]
    init = [numpy_helper.from_array(np.array(255.0, np.float32), "k255"),
            numpy_helper.from_array(weights.astype(np.float32), "w")]
    graph = helper.make_graph(
        nodes, "tagger_like",
        [helper.make_tensor_value_info("input_1:0", TensorProto.FLOAT, ["batch", side, side, 3])],
        [helper.make_tensor_value_info("predictions_sigmoid", TensorProto.FLOAT, ["batch", tags])], init,
    )
    return _save(graph, path)
