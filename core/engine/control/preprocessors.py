"""Preprocessors: an attachment into a control map, by sd-webui-controlnet's module names.

The registry names each preprocessor as sd-webui-controlnet does (``canny``, ``depth_anything_v2``,
…), with its control type (the "Control Type" it is listed under: which ControlNet models fit it and,
for a union model, which task), its two parameters ("Threshold A/B" in the infotext) with their
defaults and bounds, and whether it works at the unit's "Processor Res". The cheap ones are plain
numpy/OpenCV and torch-free, written from sd-webui-controlnet's behaviour:

- the image is first scaled so its short side is the resolution (bicubic up, area down) and padded
  to a multiple of 64 with its edge pixels; the result is cut back to the scaled size;
- ``canny``: ``cv2.Canny(image, low, high)`` (defaults 100/200); ``threshold``: white where every
  channel is above the threshold; ``scribble_xdog``: difference of Gaussians (σ 0.5 and 5) above a
  threshold; ``lineart_standard``: dark lines on white, from the image minus its Gaussian blur (σ 6);
  ``blur_gaussian`` / ``tile_resample`` for tile models; ``invert`` for white-background line art;
  ``none`` passes a ready map through.

``depth_anything_v2`` (``core.engine.control.depth``, torch + transformers) and ``dw_openpose_full``
(``core.engine.control.pose``, ONNX through OpenCV) run models from ``engine.preprocessor_dirs``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from core.engine.control.image import hwc3
from core.engine.control.units import ControlUnit
from core.ranges import DEFAULT_PROCESSOR_RES, MAX_PROCESSOR_RES, MIN_PROCESSOR_RES


@dataclass(frozen=True)
class Slider:
    label: str
    minimum: float
    maximum: float
    default: float


# sd-webui-controlnet writes a hidden parameter as 0.5 (its PreprocessorParameter default).
HIDDEN_DEFAULT = 0.5


@dataclass(frozen=True)
class PreprocessContext:
    """What a model-based preprocessor needs besides the image (folders, device)."""

    preprocessor_dirs: tuple[str, ...] = ()
    device: str = "cpu"


Run = Callable[[np.ndarray, int, float, float, PreprocessContext], np.ndarray]


@dataclass(frozen=True)
class Preprocessor:
    name: str
    control_type: str  # sd-webui-controlnet's "Control Type" tab it is listed under
    run: Run
    threshold_a: Slider | None = None
    threshold_b: Slider | None = None
    uses_resolution: bool = True
    needs_model: bool = False

    def defaults(self, unit: ControlUnit) -> tuple[int, float, float]:
        """The unit's (resolution, threshold A, threshold B) with this preprocessor's defaults filled in,
        as sd-webui-controlnet resolves unset (-1) or out-of-range values."""
        res = unit.processor_res if unit.processor_res is not None else DEFAULT_PROCESSOR_RES
        if not MIN_PROCESSOR_RES <= res <= MAX_PROCESSOR_RES:
            res = DEFAULT_PROCESSOR_RES
        values = []
        for slider, value in ((self.threshold_a, unit.threshold_a), (self.threshold_b, unit.threshold_b)):
            low, high, default = (slider.minimum, slider.maximum, slider.default) if slider else (0.0, 1.0, HIDDEN_DEFAULT)
            values.append(default if value is None or not low <= value <= high else float(value))
        return res, values[0], values[1]


def _pad64(x: int) -> int:
    return int(np.ceil(float(x) / 64.0) * 64 - x)


def resize_with_pad(image: np.ndarray, resolution: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Short side to ``resolution`` (bicubic up, area down), edge-padded to multiples of 64.

    Returns the padded image and the (height, width) to cut the result back to.
    """
    image = hwc3(image)
    raw_h, raw_w = image.shape[:2]
    k = float(resolution) / float(min(raw_h, raw_w))
    interpolation = cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA
    height, width = round(float(raw_h) * k), round(float(raw_w) * k)
    image = cv2.resize(image, (width, height), interpolation=interpolation)
    padded = np.pad(image, [[0, _pad64(height)], [0, _pad64(width)], [0, 0]], mode="edge")
    return np.ascontiguousarray(padded), (height, width)


def _cut(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.ascontiguousarray(image[: size[0], : size[1]])


def _none(image, res, a, b, ctx):
    return hwc3(image)


def _invert(image, res, a, b, ctx):
    return 255 - hwc3(image)


def _canny(image, res, a, b, ctx):
    padded, size = resize_with_pad(image, res)
    return hwc3(_cut(cv2.Canny(padded, int(a), int(b)), size))


def _threshold(image, res, a, b, ctx):
    padded, size = resize_with_pad(image, res)
    out = np.zeros_like(padded)
    out[np.min(padded, axis=2) > a] = 255
    return _cut(out, size)


def _scribble_xdog(image, res, a, b, ctx):
    padded, size = resize_with_pad(image, res)
    fine = cv2.GaussianBlur(padded.astype(np.float32), (0, 0), 0.5)
    coarse = cv2.GaussianBlur(padded.astype(np.float32), (0, 0), 5.0)
    dog = (255 - np.min(coarse - fine, axis=2)).clip(0, 255).astype(np.uint8)
    out = np.zeros_like(padded)
    out[2 * (255 - dog) > a] = 255
    return _cut(out, size)


def _lineart_standard(image, res, a, b, ctx):
    padded, size = resize_with_pad(image, res)
    x = padded.astype(np.float32)
    intensity = np.min(cv2.GaussianBlur(x, (0, 0), 6.0) - x, axis=2).clip(0, 255)
    strong = intensity[intensity > 8]
    intensity /= max(16.0, float(np.median(strong)) if strong.size else 0.0)
    intensity *= 127
    return hwc3(_cut(intensity.clip(0, 255).astype(np.uint8), size))


def _blur_gaussian(image, res, a, b, ctx):
    padded, size = resize_with_pad(image, res)
    return cv2.GaussianBlur(_cut(padded, size), (0, 0), float(a))


def _tile_resample(image, res, a, b, ctx):
    image = hwc3(image)
    if a < 1.1:
        return image
    height, width = int(float(image.shape[0]) / float(a)), int(float(image.shape[1]) / float(a))
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def _depth_anything_v2(image, res, a, b, ctx):
    from core.engine.control.depth import depth_anything_v2

    padded, size = resize_with_pad(image, res)
    return hwc3(_cut(depth_anything_v2(padded, ctx.preprocessor_dirs, ctx.device), size))


def _dw_openpose_full(image, res, a, b, ctx):
    from core.engine.control.pose import dw_openpose_full

    padded, size = resize_with_pad(image, res)
    return _cut(dw_openpose_full(padded, ctx.preprocessor_dirs), size)


_LOW = Slider("Low Threshold", 1, 255, 100)
_HIGH = Slider("High Threshold", 1, 255, 200)
PREPROCESSORS: dict[str, Preprocessor] = {
    p.name: p
    for p in (
        Preprocessor("none", "All", _none, uses_resolution=False),
        Preprocessor("invert", "Lineart", _invert, uses_resolution=False),
        Preprocessor("canny", "Canny", _canny, _LOW, _HIGH),
        Preprocessor("threshold", "Scribble", _threshold, Slider("Binarization Threshold", 0, 255, 127)),
        Preprocessor("scribble_xdog", "Scribble", _scribble_xdog, Slider("XDoG Threshold", 1, 64, 32)),
        Preprocessor("lineart_standard", "Lineart", _lineart_standard),
        Preprocessor("blur_gaussian", "Tile", _blur_gaussian, Slider("Sigma", 0.01, 64.0, 9.0)),
        Preprocessor("tile_resample", "Tile", _tile_resample, Slider("Down Sampling Rate", 1.0, 8.0, 1.0),
                     uses_resolution=False),
        Preprocessor("depth_anything_v2", "Depth", _depth_anything_v2, needs_model=True),
        Preprocessor("dw_openpose_full", "OpenPose", _dw_openpose_full, needs_model=True),
    )
}

# Control type -> (default preprocessor, words a fitting model's name contains, union task), after
# sd-webui-controlnet's control-type filters and its ControlNet++ task mapping.
CONTROL_TYPES: dict[str, tuple[str, tuple[str, ...], str | None]] = {
    "Canny": ("canny", ("canny",), "Hard Edge"),
    "Depth": ("depth_anything_v2", ("depth",), "Depth"),
    "OpenPose": ("dw_openpose_full", ("openpose", "pose"), "OpenPose"),
    "Lineart": ("lineart_standard", ("lineart",), "Hard Edge"),
    "Scribble": ("scribble_xdog", ("scribble", "sketch"), "Soft Edge"),
    "Tile": ("tile_resample", ("tile", "blur"), "Tile"),
    "All": ("none", (), None),
}


def get_preprocessor(name: str) -> Preprocessor:
    try:
        return PREPROCESSORS[name]
    except KeyError:
        raise ValueError(f"unknown preprocessor {name!r} (have: {', '.join(sorted(PREPROCESSORS))})") from None


def union_type_for(module: str) -> str | None:
    """The ControlNet++ task a preprocessor's output is (None: the unit must name one)."""
    return CONTROL_TYPES[get_preprocessor(module).control_type][2]


def union_index(unit: ControlUnit) -> int:
    """The ControlNet++ task index for a unit on a union model: its own type, else its preprocessor's."""
    from core.engine.control.units import union_control_index

    name = unit.union_control_type or union_type_for(unit.module)
    if name is None:
        raise ValueError(f"a union ControlNet needs a control type for preprocessor {unit.module!r}")
    return union_control_index(name)


def models_for_control_type(control_type: str, model_names: list[str]) -> list[str]:
    """Model names fitting a control type, by the words sd-webui-controlnet filters on ("union" fits all)."""
    if control_type not in CONTROL_TYPES:
        raise ValueError(f"unknown control type {control_type!r} (have: {', '.join(CONTROL_TYPES)})")
    words = CONTROL_TYPES[control_type][1]
    return [m for m in model_names if any(w in m.lower() for w in (*words, "union"))]


def preprocess(
    unit: ControlUnit, image: np.ndarray, context: PreprocessContext | None = None, *,
    target_size: tuple[int, int] | None = None,
) -> tuple[np.ndarray, tuple[int, float, float]]:  # fmt: skip
    """Run the unit's preprocessor on an (H, W, C) uint8 image: the map, and the (resolution,
    threshold A, threshold B) used (for the infotext). ``target_size`` (width, height) is needed for
    "Pixel Perfect", which derives the resolution from the image and the generation size."""
    from core.engine.control.units import pixel_perfect_resolution

    preprocessor = get_preprocessor(unit.module)
    res, a, b = preprocessor.defaults(unit)
    if unit.pixel_perfect:
        if target_size is None:
            raise ValueError("pixel perfect needs the generation size")
        res = pixel_perfect_resolution(image.shape[0], image.shape[1], target_size[1], target_size[0], unit.resize_mode)
    return preprocessor.run(image, res, a, b, context or PreprocessContext()), (res, a, b)
