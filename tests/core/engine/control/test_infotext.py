from __future__ import annotations

from pathlib import Path

import pytest

from core.engine.control.infotext import (
    format_unit,
    infotext_params,
    legacy_model_hash,
    parse_unit,
    units_from_infotext,
)
from core.engine.control.units import ControlUnit
from core.engine.infotext import build_infotext, parse_infotext

# As sd-webui-controlnet 1.1.455 writes a canny unit (ControlNetUnit.serialize after API coercion).
CURRENT = (
    "Module: canny, Model: control_v11p_sd15_canny [d14c016b], Weight: 1.0, Resize Mode: Crop and Resize, "
    "Processor Res: 512, Threshold A: 100.0, Threshold B: 200.0, Guidance Start: 0.0, Guidance End: 1.0, "
    "Pixel Perfect: False, Control Mode: Balanced"
)
# 1.1.41x wrote a few more keys; they are ignored.
WITH_EXTRA_KEYS = (
    "Module: depth_midas, Model: control_v11f1p_sd15_depth [cfd03158], Weight: 0.6, Resize Mode: Just Resize, "
    "Low Vram: False, Processor Res: 384, Threshold A: 0.5, Threshold B: 0.5, Guidance Start: 0.1, "
    "Guidance End: 0.8, Pixel Perfect: True, Control Mode: My prompt is more important, Save Detected Map: True"
)
# 1.1.2xx.
LEGACY = (
    "preprocessor: openpose, model: control_v11p_sd15_openpose [cab727d4], weight: 0.85, "
    "starting/ending: (0, 0.75), resize mode: Resize and Fill, pixel perfect: True, "
    "control mode: ControlNet is more important, preprocessor params: (512, 64, 64)"
)


def test_format_writes_sd_webui_controlnet_order_and_types() -> None:
    unit = ControlUnit(model="control_v11p_sd15_canny", module="canny", weight=1)
    text = format_unit(unit, "control_v11p_sd15_canny [d14c016b]", processor_res=512, threshold_a=100, threshold_b=200)
    assert text == CURRENT


def test_current_format_round_trips() -> None:
    parsed = parse_unit(CURRENT)
    assert parsed.model_hash == "d14c016b"
    assert parsed.unit == ControlUnit(
        model="control_v11p_sd15_canny", module="canny", weight=1.0, processor_res=512,
        threshold_a=100.0, threshold_b=200.0,
    )
    u = parsed.unit
    again = format_unit(u, "control_v11p_sd15_canny [d14c016b]", processor_res=u.processor_res,
                        threshold_a=u.threshold_a, threshold_b=u.threshold_b)
    assert again == CURRENT


def test_extra_keys_are_ignored() -> None:
    unit = parse_unit(WITH_EXTRA_KEYS).unit
    assert (unit.module, unit.weight, unit.resize_mode, unit.processor_res) == ("depth_midas", 0.6, "Just Resize", 384)
    assert (unit.guidance_start, unit.guidance_end, unit.pixel_perfect) == (0.1, 0.8, True)
    assert unit.control_mode == "My prompt is more important"


def test_legacy_format() -> None:
    parsed = parse_unit(LEGACY)
    unit = parsed.unit
    assert (unit.module, unit.model, parsed.model_hash) == ("openpose", "control_v11p_sd15_openpose", "cab727d4")
    assert (unit.guidance_start, unit.guidance_end) == (0.0, 0.75)
    assert (unit.processor_res, unit.threshold_a, unit.threshold_b) == (512, 64.0, 64.0)
    assert unit.control_mode == "ControlNet is more important" and unit.resize_mode == "Resize and Fill"


def test_whole_infotext_round_trip_through_a1111_quoting() -> None:
    second = parse_unit(WITH_EXTRA_KEYS).unit
    formatted = [
        CURRENT,
        format_unit(second, "control_v11f1p_sd15_depth [cfd03158]", processor_res=384, threshold_a=0.5, threshold_b=0.5),
    ]
    text = build_infotext(
        "a cat", "", steps=20, sampler="Euler a", cfg_scale=7, seed=1, width=512, height=512,
        extra=infotext_params(formatted), version="chant test",
    )
    assert 'ControlNet 0: "Module: canny, Model: control_v11p_sd15_canny [d14c016b], Weight: 1.0,' in text
    units = units_from_infotext(parse_infotext(text))
    assert [u.index for u in units] == [0, 1]
    assert units[0].unit == parse_unit(CURRENT).unit
    assert units[1].unit == second and units[1].model_hash == "cfd03158"


def test_bad_values_are_named() -> None:
    with pytest.raises(ValueError, match="ControlNet 2: weight: 'heavy' is not a number"):
        parse_unit(CURRENT.replace("Weight: 1.0", "Weight: heavy"), 2)
    with pytest.raises(ValueError, match="control weight must be between"):
        parse_unit(CURRENT.replace("Weight: 1.0", "Weight: 5"))
    with pytest.raises(ValueError, match="no Model"):
        parse_unit("Module: canny, Weight: 1.0, Resize Mode: Crop and Resize")
    with pytest.raises(ValueError, match="contains ',' or ':'"):
        format_unit(ControlUnit(model="m"), "a, b", processor_res=512, threshold_a=0.5, threshold_b=0.5)


def test_legacy_model_hash_reads_64k_at_one_mebibyte(tmp_path: Path) -> None:
    import hashlib

    data = bytes(range(256)) * (0x120000 // 256)
    path = tmp_path / "m.safetensors"
    path.write_bytes(data)
    assert legacy_model_hash(path) == hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]


def test_the_torch_free_modules_load_no_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, core.engine.control, core.engine.control.units, core.engine.control.infotext,"
        " core.engine.control.preprocessors, core.engine.control.image;"
        "bad = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
