from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.config import PostprocessSettings
from core.engine.postprocess.files import PostprocessError
from core.engine.postprocess.spandrel_loader import descriptor_from_state_dict
from core.engine.postprocess.tiling import run_tiled, tile_starts
from core.engine.postprocess.upscalers import Upscalers, bgr_to_pil, pil_to_bgr
from core.testing.tiny_upscalers import ARCHITECTURES, build_tiny_upscaler, tiny_state_dict


def _image(width: int = 40, height: int = 32, seed: int = 1) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def _upscalers(folder: Path, *, tile: int = 0, overlap: int = 8, allow_pickle: bool = False) -> Upscalers:
    settings = PostprocessSettings(upscaler_dirs=(str(folder),), upscale_tile=tile, upscale_tile_overlap=overlap)
    return Upscalers(settings, allow_pickle=allow_pickle)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_each_architecture_loads_by_name_and_upscales_deterministically(tmp_path: Path, arch: str) -> None:
    build_tiny_upscaler(arch, tmp_path / f"4x-{arch}.safetensors", scale=2)
    ups = _upscalers(tmp_path, tile=16, overlap=4)
    model = ups.load(f"4x-{arch}")
    assert model.architecture == arch and model.scale == 2 and model.dtype == torch.float32
    image = _image()
    first = ups.upscale_by(image, f"4x-{arch}", 2)
    assert first.size == (80, 64)
    assert np.array_equal(np.asarray(first), np.asarray(ups.upscale_by(image, f"4x-{arch}", 2)))
    assert np.asarray(first).std() > 0  # a real forward pass, not a resize of a blank


def load_descriptor_from(arch: str):
    return descriptor_from_state_dict(tiny_state_dict(arch, scale=4), name=arch)


def test_channel_order_is_bgr_as_a1111_feeds_models() -> None:
    image = Image.new("RGB", (2, 1), (255, 0, 10))
    tensor = pil_to_bgr(image)
    assert tensor[0, :, 0, 0].tolist() == pytest.approx([10 / 255, 0.0, 1.0])
    assert bgr_to_pil(tensor).getpixel((0, 0)) == (255, 0, 10)


def test_tile_starts_cover_the_image_with_the_overlap() -> None:
    assert tile_starts(100, 200, 8) == [0]
    starts = tile_starts(500, 192, 8)
    assert starts[0] == 0 and starts[-1] == 500 - 192
    assert all(b - a <= 192 - 8 for a, b in itertools.pairwise(starts))


@pytest.mark.parametrize(
    ("arch", "tile", "overlap"), [("Compact", 24, 16), pytest.param("ESRGAN", 96, 79, marks=pytest.mark.slow)]
)
def test_tiled_equals_untiled_when_the_receptive_field_fits_the_blend_margin(arch: str, tile: int, overlap: int) -> None:
    # Tiles drop (weight 0) the outer quarter of each shared band: a model that sees at most that many
    # pixels around an output pixel computes it from the same inputs in a tile as in the whole image.
    # Compact (2 body convs) reaches 4 input pixels; a 1-block ESRGAN about 19. So the only difference
    # left is float rounding of convolutions run on different sizes.
    descriptor = load_descriptor_from(arch)
    x = pil_to_bgr(_image(150, 90 if arch == "ESRGAN" else 70))
    with torch.inference_mode():
        whole = descriptor(x)
        tiled = run_tiled(descriptor, x, scale=descriptor.scale, tile=tile, overlap=overlap)
    assert len(tile_starts(x.shape[-1], tile, overlap)) > 2  # several tiles really ran
    assert torch.allclose(whole, tiled, atol=1e-5), (whole - tiled).abs().max()


@pytest.mark.slow
def test_tiled_differs_from_untiled_when_the_margin_is_too_small() -> None:
    # The same ESRGAN with a 4-pixel overlap: its 19-pixel reach crosses the tile edges. The test above
    # is therefore not passing by accident; the blend keeps the difference small and seam-free.
    descriptor = load_descriptor_from("ESRGAN")
    x = pil_to_bgr(_image(150, 90))
    with torch.inference_mode():
        whole = descriptor(x)
        tiled = run_tiled(descriptor, x, scale=descriptor.scale, tile=48, overlap=4)
    diff = (whole - tiled).abs()
    assert diff.max() > 1e-4  # ten times the tolerance above: the tiles really saw their edges
    assert diff.mean() < 0.002


def test_two_from_a_four_x_model_is_one_pass_then_lanczos_down(tmp_path: Path) -> None:
    build_tiny_upscaler("Compact", tmp_path / "x4.safetensors", scale=4)
    ups = _upscalers(tmp_path)
    image = _image(40, 32)
    once = ups.load("x4").run(image, tile=0, overlap=0)
    assert once.size == (160, 128)
    expected = once.resize((80, 64), resample=Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(ups.upscale_by(image, "x4", 2)), np.asarray(expected))


def test_four_from_a_two_x_model_runs_it_twice(tmp_path: Path) -> None:
    build_tiny_upscaler("Compact", tmp_path / "x2.safetensors", scale=2)
    ups = _upscalers(tmp_path)
    image = _image(24, 16)
    model = ups.load("x2")
    twice = model.run(model.run(image, tile=0, overlap=0), tile=0, overlap=0)
    assert np.array_equal(np.asarray(ups.upscale_by(image, "x2", 4)), np.asarray(twice))


def test_upscale_factor_out_of_range_is_refused(tmp_path: Path) -> None:
    build_tiny_upscaler("Compact", tmp_path / "x4.safetensors", scale=4)
    with pytest.raises(ValueError, match="upscale factor must be from 1 to 8, not 9"):
        _upscalers(tmp_path).upscale_by(_image(), "x4", 9)


def test_upscale_to_covers_the_box_then_resizes_exactly(tmp_path: Path) -> None:
    build_tiny_upscaler("Compact", tmp_path / "x4.safetensors", scale=4)
    ups = _upscalers(tmp_path)
    assert ups.upscale_to(_image(40, 32), "x4", 100, 60).size == (100, 60)


def test_a1111_names_resolve_to_a1111_files_and_are_listed(tmp_path: Path) -> None:
    build_tiny_upscaler("ESRGAN", tmp_path / "RealESRGAN" / "RealESRGAN_x4plus.safetensors")
    build_tiny_upscaler("Compact", tmp_path / "ESRGAN" / "4x-UltraSharp.safetensors")
    settings = PostprocessSettings(upscaler_dirs=(str(tmp_path / "ESRGAN"), str(tmp_path / "RealESRGAN")))
    ups = Upscalers(settings, allow_pickle=False)
    assert ups.names() == ["4x-UltraSharp", "R-ESRGAN 4x+"]
    assert ups.resolve("R-ESRGAN 4x+").name == "RealESRGAN_x4plus.safetensors"
    assert ups.resolve("RealESRGAN_x4plus").name == "RealESRGAN_x4plus.safetensors"


def test_unknown_name_names_the_known_ones_and_paths_are_not_names(tmp_path: Path) -> None:
    build_tiny_upscaler("Compact", tmp_path / "4x-UltraSharp.safetensors")
    ups = _upscalers(tmp_path)
    with pytest.raises(PostprocessError, match=r"unknown upscaler 'R-ESRGAN 4x\+' \(known: 4x-UltraSharp\)"):
        ups.upscale_by(_image(), "R-ESRGAN 4x+", 2)
    with pytest.raises(PostprocessError, match="unknown upscaler"):
        ups.resolve("../" + tmp_path.name + "/4x-UltraSharp")  # names are looked up, never joined to paths
    empty = _upscalers(tmp_path / "none")
    with pytest.raises(PostprocessError, match="has no upscaler models installed"):
        empty.resolve("4x-UltraSharp")


def test_a_file_that_is_no_upscaler_is_refused_clearly(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"hello.weight": torch.zeros(2, 2)}, str(tmp_path / "notes.safetensors"))
    with pytest.raises(PostprocessError, match="notes: not a model architecture chant can load"):
        _upscalers(tmp_path).load("notes")


class _WritesMarker:
    """Unpickling this object writes ``marker``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


def test_pickle_upscaler_never_runs_code(tmp_path: Path) -> None:
    marker = tmp_path / "marker.txt"
    state = {"params_ema": tiny_state_dict("Compact", scale=2), "extra": _WritesMarker(marker)}
    torch.save(state, tmp_path / "evil.pth")
    for allow in (False, True):
        with pytest.raises(PostprocessError) as info:
            _upscalers(tmp_path, allow_pickle=allow).upscale_by(_image(), "evil", 2)
        assert not marker.exists()
        message = str(info.value)
        assert ("allow_pickle" in message) if not allow else ("could run code" in message)
    # The file really is live: a plain unpickling runs its code.
    torch.load(tmp_path / "evil.pth", weights_only=False)
    assert marker.read_text() == "code ran"


def test_plain_pickle_upscaler_loads_only_when_allowed(tmp_path: Path) -> None:
    torch.save({"params_ema": tiny_state_dict("Compact", scale=2)}, tmp_path / "plain.pth")
    with pytest.raises(PostprocessError, match=r"plain\.pth: pickle checkpoints \(\.pth\).*allow_pickle"):
        _upscalers(tmp_path).load("plain")
    model = _upscalers(tmp_path, allow_pickle=True).load("plain")
    assert model.architecture == "Compact"


def test_spandrel_imports_without_leaving_a_torchvision_stand_in_behind() -> None:
    import importlib.util
    import sys

    from core.engine.postprocess.spandrel_loader import import_spandrel

    assert import_spandrel().__name__ == "spandrel"
    module = sys.modules.get("torchvision")
    if module is None:  # not installed here (the CPU wheel set): nothing may pretend it is
        assert importlib.util.find_spec("torchvision") is None
        with pytest.raises(ModuleNotFoundError):
            import torchvision  # noqa: F401
    else:  # a working torchvision (a GPU install) was used as is
        assert module.__spec__ is not None
