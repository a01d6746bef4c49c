from __future__ import annotations

import itertools

import pytest

from core.engine.control.units import (
    BALANCED,
    CONTROL_MORE_IMPORTANT,
    PROMPT_MORE_IMPORTANT,
    ControlUnit,
    a1111_sampling_step,
    control_scales,
    guidance_active,
    normalize_resize_mode,
    pixel_perfect_resolution,
    row_scales,
    union_control_index,
)


def _active_steps(start: float, end: float, steps: int) -> list[int]:
    return [i for i in range(steps) if guidance_active(start, end, a1111_sampling_step(i), steps)]


def test_a1111_step_counter_lags_one_step_behind_the_sampler() -> None:
    # k-diffusion's callback sets state.sampling_step = i after step i: step 0 and step 1 both see 0.
    assert [a1111_sampling_step(i) for i in range(4)] == [0, 0, 1, 2]


def test_guidance_end_half_of_20_steps_keeps_the_first_12_sampler_steps() -> None:
    # step/20 <= 0.5 holds for A1111 steps 0..10, which the sampler's steps 0..11 see.
    assert _active_steps(0.0, 0.5, 20) == list(range(12))


def test_guidance_start_skips_early_steps_and_both_ends_are_inclusive() -> None:
    # 0.2 * 20 = 4: A1111 step 4 is active (4/20 is not below 0.2); it is seen by sampler step 5.
    assert _active_steps(0.2, 1.0, 20)[0] == 5
    assert _active_steps(0.0, 0.0, 10) == [0, 1]  # 0/10 <= 0: only the calls that see step 0
    assert _active_steps(0.0, 1.0, 7) == list(range(7))


def test_balanced_scales_are_the_weight_everywhere() -> None:
    assert control_scales(0.7, BALANCED, 13) == (0.7,) * 13


def test_soft_injection_table_and_sdxl_truncation() -> None:
    sd15 = control_scales(2.0, PROMPT_MORE_IMPORTANT, 13)
    assert sd15[12] == 2.0  # the middle block
    assert sd15[0] == pytest.approx(2.0 * 0.825**12)
    assert all(b / a == pytest.approx(1 / 0.825) for a, b in itertools.pairwise(sd15))
    sdxl = control_scales(2.0, CONTROL_MORE_IMPORTANT, 10)
    assert sdxl == sd15[:10] and sdxl[-1] == pytest.approx(2.0 * 0.825**3)
    with pytest.raises(ValueError, match="13 factors"):
        control_scales(1.0, PROMPT_MORE_IMPORTANT, 14)


def test_row_scales_cfg_injection_and_schedule() -> None:
    unit = ControlUnit(model="m", control_mode=CONTROL_MORE_IMPORTANT, guidance_end=0.5)
    assert row_scales(unit, 13, sampling_step=0, sampling_steps=10, conditional=False) is None
    assert row_scales(unit, 13, sampling_step=0, sampling_steps=10, conditional=True)[12] == 1.0
    assert row_scales(unit, 13, sampling_step=6, sampling_steps=10, conditional=True) is None
    balanced = ControlUnit(model="m", weight=0.5)
    assert row_scales(balanced, 10, sampling_step=3, sampling_steps=10, conditional=False) == (0.5,) * 10


def test_unit_check_names_the_bad_value() -> None:
    ControlUnit(model="m").check()
    with pytest.raises(ValueError, match="control weight"):
        ControlUnit(model="m", weight=2.5).check()
    with pytest.raises(ValueError, match="must not be after"):
        ControlUnit(model="m", guidance_start=0.8, guidance_end=0.2).check()
    with pytest.raises(ValueError, match="resize mode"):
        ControlUnit(model="m", resize_mode="Stretch").check()
    with pytest.raises(ValueError, match="processor resolution"):
        ControlUnit(model="m", processor_res=32).check()
    with pytest.raises(ValueError, match="union control type"):
        ControlUnit(model="m", union_control_type="Edges").check()
    with pytest.raises(ValueError, match="guidance end"):
        ControlUnit(model="m", guidance_end=float("nan")).check()


def test_resize_mode_aliases_and_union_index() -> None:
    assert normalize_resize_mode("Inner Fit (Scale to Fit)") == "Crop and Resize"
    assert normalize_resize_mode("Envelope (Outer Fit)") == "Resize and Fill"
    assert union_control_index("OpenPose") == 0 and union_control_index("Hard Edge") == 3
    assert union_control_index("Inpaint") == 7


def test_pixel_perfect_resolution() -> None:
    # A 1000x500 (HxW) image into 512x512: cover -> scale by 512/500, short side 500 -> 512.
    assert pixel_perfect_resolution(1000, 500, 512, 512, "Crop and Resize") == 512
    # fit inside -> scale by 512/1000: short side 500 -> 256.
    assert pixel_perfect_resolution(1000, 500, 512, 512, "Resize and Fill") == 256


def test_global_pooling_models_skip_unconditional_rows_and_hires_softens_edges() -> None:
    unit = ControlUnit(model="m", module="canny")
    common = {"sampling_step": 0, "sampling_steps": 10}
    assert row_scales(unit, 13, conditional=False, global_pool=True, **common) is None
    assert row_scales(unit, 13, conditional=True, global_pool=True, **common) == (1.0,) * 13
    hires = row_scales(unit, 13, conditional=True, hires_pass=True, **common)
    assert hires == control_scales(1.0, PROMPT_MORE_IMPORTANT, 13)
    depth = ControlUnit(model="m", module="depth_anything_v2")
    assert row_scales(depth, 13, conditional=True, hires_pass=True, **common) == (1.0,) * 13
