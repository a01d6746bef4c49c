"""Zoom out and pan: canvas sizes, where the source goes, the mask, and the inpaint request."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from core.controls.outpaint import (
    FILL,
    MASK_BLUR,
    OVERLAP,
    PAN_FRACTION,
    STRENGTH,
    Direction,
    Geometry,
    canvas_and_mask,
    pan,
    pan_geometry,
    zoom_geometry,
    zoom_out,
)
from core.ranges import MAX_SIDE
from core.types import GenerationRequest, Mode

MP = 1024 * 1024


def picture(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8), "RGB")


@pytest.mark.parametrize(
    ("size", "factor", "limit", "expected"),
    [
        ((512, 512), 2.0, MP, Geometry(512, 512, 128, 128, 256, 256)),
        ((512, 512), 1.5, MP, Geometry(512, 512, 85, 85, 341, 341)),
        ((768, 512), 2.0, MP, Geometry(768, 512, 192, 128, 384, 256)),
        ((1024, 1024), 2.0, 512 * 512, Geometry(512, 512, 128, 128, 256, 256)),  # fitted to the guild limit
        ((1216, 832), 1.5, MP, Geometry(1216, 832, 202, 138, 811, 555)),
    ],
)
def test_zoom_geometry(size, factor, limit, expected) -> None:
    assert zoom_geometry(*size, factor, limit) == expected


@pytest.mark.parametrize(
    ("direction", "expected"),
    [
        ("right", Geometry(768, 512, 0, 0, 512, 512)),
        ("left", Geometry(768, 512, 256, 0, 512, 512)),
        ("down", Geometry(512, 768, 0, 0, 512, 512)),
        ("up", Geometry(512, 768, 0, 256, 512, 512)),
    ],
)
def test_pan_geometry(direction: str, expected: Geometry) -> None:
    assert pan_geometry(512, 512, direction, MP) == expected


def test_pan_within_the_limit_shrinks_source_and_canvas_together() -> None:
    g = pan_geometry(1024, 1024, Direction.RIGHT, MP)
    assert (g.width, g.height) == (1248, 832)
    assert (g.source_width, g.source_height) == (832, 832)
    assert g.margins == (0, 0, 416, 0)  # half the (shrunk) source


@settings(max_examples=300, deadline=None)
@given(
    st.integers(64, 3000),
    st.integers(64, 3000),
    st.one_of(st.sampled_from([1.5, 2.0]), st.floats(1.01, 2.0)),
    st.sampled_from([Direction.LEFT, Direction.RIGHT, Direction.UP, Direction.DOWN, None]),
    st.integers(64 * 64 * 2, 4 * MP),
)
def test_geometry_invariants(width, height, factor, direction, limit) -> None:
    try:
        g = zoom_geometry(width, height, factor, limit) if direction is None else pan_geometry(width, height, direction, limit)
    except ValueError as exc:  # a canvas that would have a side under 64 pixels within the limit
        assert "too small" in str(exc)
        w, h = (width, height) if direction in (None, "up", "down") else (width * 1.5, height)
        h = h * 1.5 if direction in ("up", "down") else h
        scale = min(1.0, (limit / (w * h)) ** 0.5, MAX_SIDE / w, MAX_SIDE / h)
        assert min(int(w * scale), int(h * scale)) < 64
        return
    assert g.width % 8 == 0 and g.height % 8 == 0
    assert g.width * g.height <= limit and max(g.width, g.height) <= MAX_SIDE
    left, top, right, bottom = g.margins
    assert min(g.margins) >= 0
    assert g.source_width / g.source_height == pytest.approx(width / height, rel=0.02, abs=2 / min(g.source_width, g.source_height))
    if direction is None:
        assert g.width / g.height == pytest.approx(width / height, rel=0.02, abs=8 / min(g.width, g.height))
        for margin, side in ((left, g.source_width), (right, g.source_width), (top, g.source_height), (bottom, g.source_height)):
            assert margin == pytest.approx(side * (factor - 1) / 2, abs=5)  # centred, a factor× larger view
    else:
        grown = {"left": left, "right": right, "up": top, "down": bottom}[direction]
        side = g.source_width if direction in ("left", "right") else g.source_height
        assert grown == pytest.approx(side * PAN_FRACTION, abs=8)
        opposite = {"left": right, "right": left, "up": bottom, "down": top}[direction]
        assert opposite == 0


@pytest.mark.parametrize(
    "geometry",
    [zoom_geometry(400, 304, 1.5, MP), pan_geometry(400, 304, "left", MP), pan_geometry(400, 304, "down", MP),
     zoom_geometry(1500, 1000, 2.0, 512 * 512)],
)  # fmt: skip
def test_canvas_keeps_the_source_and_mask_covers_the_new_area(geometry: Geometry) -> None:
    source = picture(400, 304) if geometry.width < 1000 else picture(1500, 1000)
    canvas, mask = canvas_and_mask(source, geometry)
    g = geometry
    assert canvas.size == mask.size == (g.width, g.height)
    placed = source.resize((g.source_width, g.source_height), Image.Resampling.LANCZOS) if source.size != (
        g.source_width, g.source_height) else source  # fmt: skip
    pixels, m = np.asarray(canvas), np.asarray(mask)
    assert set(np.unique(m)) <= {0, 255}
    box = np.zeros_like(m, dtype=bool)
    box[g.y : g.y + g.source_height, g.x : g.x + g.source_width] = True
    # Source pixels sit in their box, untouched, wherever the mask keeps them.
    assert np.array_equal(pixels[box].reshape(g.source_height, g.source_width, 3), np.asarray(placed))
    # The mask is white exactly on the new area plus OVERLAP pixels along each extended side.
    left, top, right, bottom = g.margins
    expected = np.full_like(m, 255)
    expected[
        g.y + (OVERLAP if top else 0) : g.y + g.source_height - (OVERLAP if bottom else 0),
        g.x + (OVERLAP if left else 0) : g.x + g.source_width - (OVERLAP if right else 0),
    ] = 0
    assert np.array_equal(m, expected)
    assert (m[~box] == 255).all()
    # New pixels continue the source's edge.
    if left:
        assert np.array_equal(pixels[g.y : g.y + g.source_height, 0], pixels[g.y : g.y + g.source_height, g.x])


def test_requests_for_the_inpaint_path() -> None:
    base = GenerationRequest(prompt="a castle", negative_prompt="blurry", steps=28, cfg_scale=6.0, sampler="DPM++ 2M",
                             seed=1234, subseed=99, subseed_strength=0.3, width=512, height=512, count=2,
                             model="sd15", enable_hr=True)  # fmt: skip
    source = picture(512, 512)
    buffer = io.BytesIO()
    source.save(buffer, format="PNG")
    result = zoom_out(base, buffer.getvalue(), 2.0, MP)
    r = result.request
    assert (r.mode, r.width, r.height) == (Mode.INPAINT, 512, 512)
    assert (r.prompt, r.negative_prompt, r.steps, r.cfg_scale, r.sampler, r.model, r.count) == (
        "a castle", "blurry", 28, 6.0, "DPM++ 2M", "sd15", 2)  # fmt: skip
    assert (r.seed, r.subseed, r.subseed_strength, r.enable_hr) == (-1, -1, 0.0, False)
    assert (r.denoising_strength, r.inpainting_fill, r.mask_blur, r.inpaint_full_res, r.resize_mode) == (
        STRENGTH, FILL, MASK_BLUR, False, 0)  # fmt: skip
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(r.mask_image))), np.asarray(result.mask))
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(r.init_image)).convert("RGB")), np.asarray(result.canvas))
    panned = pan(base, source, "up", MP).request
    assert (panned.width, panned.height) == (512, 768)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="zoom factor must be above 1 and at most 2"):
        zoom_geometry(512, 512, 1.0, MP)
    with pytest.raises(ValueError, match="zoom factor"):
        zoom_geometry(512, 512, 3.0, MP)
    with pytest.raises(ValueError, match="'sideways' is not a valid Direction"):
        pan_geometry(512, 512, "sideways", MP)
    with pytest.raises(ValueError, match="too small to paint"):
        zoom_geometry(4000, 60, 2.0, MP)
    with pytest.raises(ValueError, match="at most 4096 a side"):
        zoom_out(GenerationRequest(prompt="x"), Image.new("RGB", (5000, 64)), 2.0, MP)


@pytest.mark.parametrize("kind", ["zoom", "pan-left", "pan-up"])
def test_the_inpaint_path_keeps_the_source_and_repaints_the_border(kind: str) -> None:
    """Through the engine's own inpaint preparation (A1111's init: mask blur, fill, overlay): the source
    away from the seams is composited back untouched, the new area is repainted in full."""
    from core.engine.image_modes import prepare_init

    source = picture(512, 384, seed=4)
    geometry = {
        "zoom": zoom_geometry(512, 384, 2.0, MP),
        "pan-left": pan_geometry(512, 384, "left", MP),
        "pan-up": pan_geometry(512, 384, "up", MP),
    }[kind]
    canvas, mask = canvas_and_mask(source, geometry)
    init = prepare_init(canvas, geometry.width, geometry.height, mask=mask, inpaint=True,
                        mask_blur=MASK_BLUR, inpainting_fill=FILL)  # fmt: skip
    alpha = np.asarray(init.overlay)[..., 3]
    g = geometry
    left, top, right, bottom = g.margins
    margin = OVERLAP + 3 * MASK_BLUR
    inner = (
        slice(g.y + (margin if top else 0), g.y + g.source_height - (margin if bottom else 0)),
        slice(g.x + (margin if left else 0), g.x + g.source_width - (margin if right else 0)),
    )
    assert (alpha[inner] == 255).all()  # composited back exactly
    assert np.array_equal(np.asarray(init.overlay)[inner][..., :3], np.asarray(canvas)[inner])
    far = np.ones_like(alpha, dtype=bool)
    far[max(0, g.y - MASK_BLUR) : g.y + g.source_height + MASK_BLUR, max(0, g.x - MASK_BLUR) : g.x + g.source_width + MASK_BLUR] = False
    assert far.any() and (alpha[far] == 0).all()  # the new area is painted, none of it kept
    latent = init.mask
    assert latent.shape == (g.height // 8, g.width // 8)
    cells = far[::8, ::8] & far[7::8, 7::8]
    assert (latent[cells] == 1).all()
