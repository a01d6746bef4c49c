import io
import time

import numpy as np
import pytest
import torch
from PIL import Image

from core.engine.preview import latent_preview, latent_to_rgb


def _png(data):
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return Image.open(io.BytesIO(data))


@pytest.mark.parametrize("kind", ["sd1", "sd2", "sdxl"])
def test_preview_is_a_small_png_at_latent_resolution(kind):
    latents = torch.randn((2, 4, 64, 48), generator=torch.Generator().manual_seed(0))
    data = latent_preview(latents, kind)
    with _png(data) as img:
        assert img.size == (48, 64) and img.mode == "RGB"
    assert len(data) < 20_000


def test_different_latents_give_different_previews():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn((1, 4, 32, 32), generator=g), torch.randn((1, 4, 32, 32), generator=g)
    assert latent_preview(a) != latent_preview(b)
    assert latent_preview(a, "sd1") != latent_preview(a, "sdxl")


def test_batch_index_selects_the_image():
    g = torch.Generator().manual_seed(2)
    batch = torch.randn((3, 4, 16, 16), generator=g)
    assert latent_preview(batch, index=2) == latent_preview(batch[2])
    with pytest.raises(ValueError, match="index 3"):
        latent_preview(batch, index=3)


def test_colours_follow_the_linear_map():
    # A latent with only channel 4 positive is dark bluish in SD1 (all its factors are negative, blue most).
    lat = torch.zeros((4, 2, 2))
    lat[3] = 1.0
    rgb = latent_to_rgb(lat, "sd1")
    r, g, b = (int(c) for c in rgb[0, 0])
    assert r > g > b and b < 128
    assert np.array_equal(latent_to_rgb(torch.zeros((4, 2, 2)), "sd1"), np.full((2, 2, 3), 128, np.uint8))


def test_half_precision_latents_work():
    lat = torch.randn((1, 4, 8, 8)).half()
    with _png(latent_preview(lat)) as img:
        assert img.size == (8, 8)


@pytest.mark.parametrize(
    ("shape", "kind", "match"),
    [
        ((1, 3, 8, 8), "sd1", "expected latents"),
        ((4, 8), "sd1", "expected latents"),
        ((4, 8, 8), "flux", "unknown latent kind"),
    ],
)
def test_bad_input_is_refused(shape, kind, match):
    with pytest.raises(ValueError, match=match):
        latent_preview(torch.zeros(shape), kind)


def test_preview_is_cheap_smoke():
    lat = torch.randn((1, 4, 64, 64))
    latent_preview(lat)
    t = time.perf_counter()
    latent_preview(lat)
    assert time.perf_counter() - t < 0.1  # generous bound on a loaded CI box; the report gives the figure
