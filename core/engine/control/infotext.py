"""sd-webui-controlnet's infotext keys: write them and read them back (torch-free).

sd-webui-controlnet (v1.1.4xx) adds one parameter per enabled unit, ``ControlNet 0``, ``ControlNet
1``, …, whose value lists the unit's fields as ``Key: value`` pairs in a fixed order::

    ControlNet 0: "Module: canny, Model: control_v11p_sd15_canny [d14c016b], Weight: 1.0,
    Resize Mode: Crop and Resize, Processor Res: 512, Threshold A: 100.0, Threshold B: 200.0,
    Guidance Start: 0.0, Guidance End: 1.0, Pixel Perfect: False, Control Mode: Balanced"

(one line; A1111 JSON-quotes the value because it holds ``,`` and ``:``). Numbers are Python's
``str`` of the unit's field types: floats for weight, thresholds and guidance, an int for the
resolution. The model is ``name [hash]`` with A1111's legacy 8-digit model hash. A reference image
(IP-Adapter) is a unit too (module ``ip-adapter_clip_h``, model ``ip-adapter_sd15 [hash]``, weight =
scale). Older versions (1.1.2xx) wrote lower-case keys with tuples (``starting/ending: (0, 1)``,
``preprocessor params: (512, 100, 200)``); :func:`parse_unit` reads both.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from core.engine.control.units import ControlUnit, normalize_resize_mode

PREFIX = "ControlNet "
# sd-webui-controlnet's ControlNetUnit.infotext_fields(), in order, with their display names.
FIELDS = (
    ("module", "Module"),
    ("model", "Model"),
    ("weight", "Weight"),
    ("resize_mode", "Resize Mode"),
    ("processor_res", "Processor Res"),
    ("threshold_a", "Threshold A"),
    ("threshold_b", "Threshold B"),
    ("guidance_start", "Guidance Start"),
    ("guidance_end", "Guidance End"),
    ("pixel_perfect", "Pixel Perfect"),
    ("control_mode", "Control Mode"),
)
_FLOATS = {"weight", "threshold_a", "threshold_b", "guidance_start", "guidance_end"}
_PAIR = re.compile(r"\s*([A-Za-z][\w /]*?):\s*(\([^)]*\)|[^,]*)(?:,|$)")
_LABEL = re.compile(r"^(.*?)\s*\[([0-9a-fA-F]{8,10})\]$")


@dataclass(frozen=True)
class InfotextUnit:
    """A unit read back from an infotext: the unit, and the model hash the label carried (if any)."""

    index: int
    unit: ControlUnit
    model_hash: str | None


def legacy_model_hash(path: Path | str) -> str:
    """A1111's old 8-digit model hash (``sd_models.model_hash``): sha256 of the 64 KiB at 1 MiB.

    sd-webui-controlnet labels ControlNet models with it (``name [hash]``) and writes that label.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(0x100000)
        digest.update(f.read(0x10000))
    return digest.hexdigest()[:8]


def model_label(name: str, model_hash: str | None) -> str:
    return f"{name} [{model_hash}]" if model_hash else name


def format_unit(unit: ControlUnit, label: str, *, processor_res: int, threshold_a: float, threshold_b: float) -> str:
    """One unit's value, as sd-webui-controlnet's ``ControlNetUnit.serialize`` writes it.

    ``label`` is the model's ``name [hash]``; ``processor_res`` and the thresholds are the values the
    preprocessor used (its defaults when the unit left them unset).
    """
    values = {
        "module": unit.module,
        "model": label,
        "weight": float(unit.weight),
        "resize_mode": unit.resize_mode,
        "processor_res": int(processor_res),
        "threshold_a": float(threshold_a),
        "threshold_b": float(threshold_b),
        "guidance_start": float(unit.guidance_start),
        "guidance_end": float(unit.guidance_end),
        "pixel_perfect": bool(unit.pixel_perfect),
        "control_mode": unit.control_mode,
    }
    for field, value in values.items():
        if isinstance(value, str) and ("," in value or ":" in value):
            raise ValueError(f"{field} {value!r} cannot be written: it contains ',' or ':'")
    return ", ".join(f"{display}: {values[field]}" for field, display in FIELDS)


def infotext_params(formatted: Sequence[str]) -> dict[str, str]:
    """``{"ControlNet 0": …, "ControlNet 1": …}`` for the infotext's extra parameters, in order."""
    return {f"{PREFIX}{i}": text for i, text in enumerate(formatted)}


def _number(text: str, field: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{field}: {text!r} is not a number") from None


def _bool(text: str, field: str) -> bool:
    if text not in ("True", "False"):
        raise ValueError(f"{field}: {text!r} is not True or False")
    return text == "True"


def _tuple(text: str, field: str) -> list[float]:
    if not (text.startswith("(") and text.endswith(")")):
        raise ValueError(f"{field}: {text!r} is not a (…) tuple")
    return [_number(part.strip(), field) for part in text[1:-1].split(",") if part.strip()]


def _legacy_fields(pairs: dict[str, str]) -> dict[str, str]:
    """Map the 1.1.2xx keys (``preprocessor``, ``starting/ending``, …) onto the current ones."""
    out = {}
    renames = {
        "preprocessor": "module",
        "model": "model",
        "weight": "weight",
        "resize mode": "resize_mode",
        "pixel perfect": "pixel_perfect",
        "control mode": "control_mode",
    }
    for key, value in pairs.items():
        if key in renames:
            out[renames[key]] = value
        elif key == "starting/ending":
            start, end = _tuple(value, key)
            out["guidance_start"], out["guidance_end"] = str(start), str(end)
        elif key == "preprocessor params":
            for field, number in zip(("processor_res", "threshold_a", "threshold_b"), _tuple(value, key), strict=False):
                out[field] = str(number)
    return out


def _parse_fields(text: str) -> tuple[ControlUnit, str | None]:
    pairs = {key.strip(): value.strip() for key, value in _PAIR.findall(text)}
    if not pairs:
        raise ValueError(f"{text!r} has no 'Key: value' fields")
    displays = {display: field for field, display in FIELDS}
    if any(key in displays for key in pairs):
        fields = {displays[k]: v for k, v in pairs.items() if k in displays}
    else:
        fields = _legacy_fields({k.lower(): v for k, v in pairs.items()})
    if "model" not in fields:
        raise ValueError(f"no Model in {text!r}")
    label = _LABEL.match(fields["model"])
    model, model_hash = (label.group(1), label.group(2).lower()) if label else (fields["model"], None)
    kwargs: dict = {"model": model}
    for field, value in fields.items():
        if field in _FLOATS:
            kwargs[field] = _number(value, field)
        elif field == "processor_res":
            kwargs[field] = int(_number(value, field))
        elif field == "pixel_perfect":
            kwargs[field] = _bool(value, field)
        elif field == "resize_mode":
            kwargs[field] = normalize_resize_mode(value)
        elif field in ("module", "control_mode"):
            kwargs[field] = value
    return ControlUnit(**kwargs), model_hash


def parse_unit(text: str, index: int = 0) -> InfotextUnit:
    """One ``ControlNet N`` value (unquoted) back into a unit; ``ValueError`` names a bad field.

    Unknown keys (``Low Vram``, ``Save Detected Map``, ``Hr Option``, …) are ignored, as
    sd-webui-controlnet's own parser does.
    """
    try:
        unit, model_hash = _parse_fields(text)
        unit.check()
    except ValueError as exc:
        raise ValueError(f"ControlNet {index}: {exc}") from None
    return InfotextUnit(index=index, unit=unit, model_hash=model_hash)


def units_from_infotext(params: Mapping[str, str]) -> list[InfotextUnit]:
    """Every ``ControlNet N`` entry of parsed infotext parameters (``core.engine.infotext.parse_infotext``),
    in unit order. A malformed entry raises ``ValueError`` naming it."""
    found = []
    for key, value in params.items():
        if key.startswith(PREFIX) and key[len(PREFIX) :].isdigit():
            found.append(parse_unit(value, int(key[len(PREFIX) :])))
    return sorted(found, key=lambda item: item.index)
