"""The post-processing models inside the real engine (tiny SD 1.5, tiny random-weight upscalers)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.config import PostprocessSettings
from core.engine.diffusers_engine import DiffusersEngine
from core.engine.infotext import settings_from_infotext
from core.engine.postprocess.names import hires_upscaler_names
from core.testing.tiny_upscalers import build_tiny_upscaler
from core.types import GenerationError, GenerationRequest

from .conftest import engine_settings

SMALL = {"width": 64, "height": 64, "steps": 3, "sampler": "Euler", "seed": 3, "prompt": "a cat"}


@pytest.fixture(scope="module")
def post_dirs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("post")
    # RealESRGAN_x4plus is the file A1111 shows as "R-ESRGAN 4x+"; 2x-Tiny is named by its stem.
    build_tiny_upscaler("ESRGAN", root / "ESRGAN" / "RealESRGAN_x4plus.safetensors", scale=4)
    build_tiny_upscaler("Compact", root / "ESRGAN" / "2x-Tiny.safetensors", scale=2)
    return root


@pytest.fixture(scope="module")
def engine(tiny_sd15, post_dirs: Path):
    post = PostprocessSettings(
        upscaler_dirs=(str(post_dirs / "ESRGAN"),), upscale_tile=32, upscale_tile_overlap=8
    )
    engine = DiffusersEngine(engine_settings(tiny_sd15), postprocess=post)
    yield engine
    engine.close()


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_hires_offers_the_installed_models_by_a1111_names(engine) -> None:
    names = hires_upscaler_names(engine.postprocess)
    assert names[:2] == ["Latent", "Latent (antialiased)"]
    assert names[-2:] == ["2x-Tiny", "R-ESRGAN 4x+"]


def test_hires_fix_runs_the_upscaler_model_on_the_decoded_first_pass(engine, monkeypatch) -> None:
    request = GenerationRequest(**SMALL).replace(
        enable_hr=True, hr_scale=1.5, hr_second_pass_steps=2, hr_upscaler="R-ESRGAN 4x+"
    )
    encoded: list[Image.Image] = []
    real_encode = engine.encode_images
    monkeypatch.setattr(
        engine, "encode_images", lambda model, images: encoded.extend(images) or real_encode(model, images)
    )
    result = engine.generate(request)
    monkeypatch.undo()
    assert pixels(result.images[0].png).shape == (96, 96, 3)
    # Reference: A1111's hires first pass is the plain txt2img image; the model upscales it to the
    # hires size (×4 model, then Lanczos down to 96), and that is what the VAE encodes again.
    first = Image.open(io.BytesIO(engine.generate(GenerationRequest(**SMALL)).images[0].png)).convert("RGB")
    expected = engine.post.upscalers.upscale_to(first, "R-ESRGAN 4x+", 96, 96)
    assert len(encoded) == 1 and encoded[0].size == (96, 96)
    assert np.array_equal(np.asarray(encoded[0]), np.asarray(expected))
    lanczos = engine.generate(request.replace(hr_upscaler="Lanczos"))
    assert not np.array_equal(pixels(lanczos.images[0].png), pixels(result.images[0].png))
    # The infotext names the upscaler as A1111 does, and reading it back asks for the same image.
    text = result.images[0].infotext
    assert "Hires upscaler: R-ESRGAN 4x+" in text
    fields = settings_from_infotext(text).fields
    assert fields["hr_upscaler"] == "R-ESRGAN 4x+"
    again = engine.generate(GenerationRequest(**{**SMALL, **fields}))
    assert again.images[0].png == result.images[0].png


def test_an_unknown_hires_upscaler_names_itself_and_what_exists(engine) -> None:
    request = GenerationRequest(**SMALL).replace(enable_hr=True, hr_upscaler="4x-UltraSharp")
    with pytest.raises(
        GenerationError, match=r"unknown hires upscaler '4x-UltraSharp'.*Lanczos.*R-ESRGAN 4x\+"
    ):
        engine.generate(request)


class StubDetector:
    """One face at a fixed box (with YuNet's five landmarks), whatever the image."""

    name = "stub"

    def __init__(self, box=(16.0, 16.0, 32.0, 32.0)) -> None:
        from core.engine.postprocess.detect import Detection

        x0, y0, x1, _ = box
        w = x1 - x0
        marks = ((x0 + 0.3 * w, y0 + 0.4 * w), (x0 + 0.7 * w, y0 + 0.4 * w), (x0 + 0.5 * w, y0 + 0.55 * w),
                 (x0 + 0.35 * w, y0 + 0.75 * w), (x0 + 0.65 * w, y0 + 0.75 * w))  # fmt: skip
        self.found = [Detection(box, 0.9, marks)]
        self.calls = 0

    def detect(self, image, confidence):
        self.calls += 1
        return [d for d in self.found if d.score >= confidence]


def test_the_detailer_repaints_only_the_detected_region_through_the_engines_inpaint(
    engine, monkeypatch
) -> None:
    detector = StubDetector()
    monkeypatch.setattr(engine.post.detectors, "get", lambda name: detector)
    plain = GenerationRequest(**SMALL)
    detailed = plain.replace(detailer="stub", detailer_strength=0.5)
    before = pixels(engine.generate(plain).images[0].png)
    result = engine.generate(detailed)
    after = pixels(result.images[0].png)
    assert detector.calls == 1
    changed = np.any(before != after, axis=-1)
    # The box (16..32) grown by ADetailer's dilate (4), feathered by the mask blur (4): nothing outside.
    from core.engine.image_modes import blur_mask
    from core.engine.postprocess.detailer import region_mask

    inside = np.asarray(blur_mask(region_mask((64, 64), detector.found[0], 4), 4, 4)) > 0
    assert not inside[:, 48:].any()
    assert changed[16:32, 16:32].mean() > 0.5 and not (changed & ~inside).any()
    text = result.images[0].infotext
    assert "ADetailer model: stub" in text and "ADetailer denoising strength: 0.5" in text
    read = settings_from_infotext(text)
    assert read.fields["detailer"] == "stub" and read.fields["detailer_strength"] == 0.5
    assert not [k for k in read.ignored if k.startswith("ADetailer")]
    assert engine.generate(detailed).images[0].png == result.images[0].png  # the image's seed: reproducible


def test_face_restoration_restores_the_detected_faces_and_writes_a1111s_infotext(engine, monkeypatch) -> None:
    from core.engine.postprocess.faces import FaceRestorer

    detector = StubDetector()
    monkeypatch.setattr(engine.post.detectors, "get", lambda name: detector)

    class Restorer(FaceRestorer):  # a GFPGAN that paints the aligned face white
        def restore(self, face, *, codeformer_weight=0.5):
            return Image.new("RGB", face.size, (255, 255, 255))

    monkeypatch.setattr(
        engine.post.faces, "load", lambda name: Restorer("GFPGANv1.4", "GFPGAN", None, None, None)
    )
    plain = GenerationRequest(**SMALL)
    before = pixels(engine.generate(plain).images[0].png)
    result = engine.generate(plain.replace(face_restoration="GFPGAN"))
    after = pixels(result.images[0].png)
    changed = np.any(before != after, axis=-1)
    assert changed[20:28, 20:28].all() and not changed[:, 48:].any()
    assert "Face restoration: GFPGAN" in result.images[0].infotext
    assert settings_from_infotext(result.images[0].infotext).fields["face_restoration"] == "GFPGAN"


def test_missing_face_restorer_or_detector_fails_the_job_naming_what_the_server_lacks(engine) -> None:
    with pytest.raises(GenerationError, match="has no face restoration model models installed"):
        engine.generate(GenerationRequest(**SMALL).replace(face_restoration="GFPGAN"))
    with pytest.raises(GenerationError, match="has no detector models installed"):
        engine.generate(GenerationRequest(**SMALL).replace(detailer="face_detection_yunet_2023mar"))


def _png(image: Image.Image, text: str = "") -> bytes:
    from core.engine.infotext import png_with_infotext

    return png_with_infotext(image, text)


def upscale_request(source: bytes, **changes) -> GenerationRequest:
    from core.types import Mode

    values = {
        "mode": Mode.UPSCALE,
        "init_image": source,
        "width": 128,
        "height": 128,
        "upscaler": "R-ESRGAN 4x+",
    }
    return GenerationRequest(**{**SMALL, **values, **changes})


def test_an_upscale_job_is_the_upscaler_models_output_and_keeps_the_sources_infotext(engine) -> None:
    made = engine.generate(GenerationRequest(**SMALL)).images[0]
    result = engine.generate(upscale_request(made.png))
    (image,) = result.images
    # Reference: the upscaler library on the stored image (×4 model, then Lanczos down to 128).
    source = Image.open(io.BytesIO(made.png)).convert("RGB")
    expected = engine.post.upscalers.upscale_to(source, "R-ESRGAN 4x+", 128, 128)
    assert np.array_equal(pixels(image.png), np.asarray(expected))
    assert image.infotext.startswith(made.infotext + ", ")  # the source's parameters, then the upscale's
    assert "Postprocess upscale to: 128x128, Postprocess upscaler: R-ESRGAN 4x+" in image.infotext
    assert result.model_name == "R-ESRGAN 4x+"
    # Nothing random: the same job gives the same bytes.
    assert engine.generate(upscale_request(made.png)).images[0].png == image.png
    lanczos = engine.generate(upscale_request(made.png, upscaler="Lanczos")).images[0]
    assert np.array_equal(
        pixels(lanczos.png), np.asarray(source.resize((128, 128), Image.Resampling.LANCZOS))
    )


def test_the_detail_pass_repaints_tiles_with_the_engines_img2img(engine, monkeypatch) -> None:
    import dataclasses

    from core.engine.postprocess.upscale_job import detail_tiles

    made = engine.generate(GenerationRequest(**SMALL)).images[0]
    monkeypatch.setattr(
        engine, "postprocess", dataclasses.replace(engine.postprocess, detail_tile=64, detail_tile_overlap=16)
    )
    assert len(detail_tiles(128, 128, 64, 16)) == 9  # 3 × 3 tiles of 64 over 128, sharing >= 16 pixels
    plain = pixels(engine.generate(upscale_request(made.png)).images[0].png)
    request = upscale_request(made.png, upscale_detail=0.3, seed=11)
    detailed = engine.generate(request)
    assert not np.array_equal(pixels(detailed.images[0].png), plain)
    assert engine.generate(request).images[0].png == detailed.images[0].png  # a seed: reproducible
    assert engine.generate(request.replace(seed=12)).images[0].png != detailed.images[0].png
    assert "SD upscale overlap: 16" in detailed.images[0].infotext and detailed.model_name == "tiny"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"upscaler": "4x-Nothing"}, r"unknown upscaler '4x-Nothing' \(known: 2x-Tiny, R-ESRGAN 4x\+\)"),
        ({"init_image": b"not an image"}, "not a PNG, JPEG or WebP"),
        ({"upscale_detail": 1.5}, "detail strength must be between 0 and 1"),
    ],
)
def test_bad_upscale_jobs_fail_with_clear_errors(engine, changes, message) -> None:
    source = _png(Image.new("RGB", (32, 32), (10, 20, 30)))
    with pytest.raises(GenerationError, match=message):
        engine.generate(upscale_request(source, **changes))


def test_hires_jobs_with_an_upscaler_model_share_a_loop_and_equal_each_alone(engine) -> None:
    base = GenerationRequest(**SMALL).replace(
        enable_hr=True, hr_scale=1.5, hr_second_pass_steps=2, hr_upscaler="R-ESRGAN 4x+"
    )
    requests = [base, base.replace(seed=4, prompt="a dog")]
    batch = engine.generate_batch(requests)
    assert all(r.timings.get("batch_jobs") == 2.0 for r in batch)  # one loop for both
    for request, result in zip(requests, batch, strict=True):
        # As for the image upscalers (README "GPU throughput"): the 8-bit round trip between the passes
        # can turn a float32 rounding difference of the batched first pass into one pixel level.
        alone = pixels(engine.generate(request).images[0].png).astype(int)
        assert np.abs(pixels(result.images[0].png).astype(int) - alone).max() <= 1


def test_an_upscale_job_runs_alone(engine) -> None:
    source = _png(Image.new("RGB", (32, 32), (10, 20, 30)))
    assert engine.batch_capacity(upscale_request(source)) == 1
    assert engine.batch_capacity(GenerationRequest(**SMALL)) > 1


def test_the_detailer_with_a_real_onnx_detector_repaints_only_what_it_finds(tiny_sd15, tmp_path) -> None:
    """The YuNet path end to end: onnxruntime on a tiny YuNet-shaped graph (a cell's score is its mean
    brightness), the engine's inpaint; every changed pixel lies inside a found region's feathered mask.
    The job is an inpaint of one corner of a black image with one white "face", so the decoded result
    is that image (A1111's overlay) outside the corner and the detector finds little else."""
    from core.engine.image_modes import blur_mask
    from core.engine.postprocess.detailer import DetailerOptions, region_mask, select
    from core.engine.postprocess.detect import Detectors
    from core.types import Mode
    from tests.core.engine.postprocess.onnx_graphs import yunet_like

    yunet_like(tmp_path / "adetailer" / "yunet.onnx", side=64)
    post = PostprocessSettings(detector_dirs=(str(tmp_path / "adetailer"),))
    engine = DiffusersEngine(engine_settings(tiny_sd15), postprocess=post)
    source = Image.new("RGB", (64, 64), (0, 0, 0))
    source.paste((255, 255, 255), (16, 16, 24, 24))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (56, 56, 64, 64))
    try:
        plain = GenerationRequest(**SMALL).replace(
            mode=Mode.INPAINT, init_image=_png(source), mask_image=_png(mask.convert("RGB")), mask_blur=0
        )
        before = pixels(engine.generate(plain).images[0].png)
        found = select(
            Detectors([str(tmp_path / "adetailer")]).get("yunet").detect(Image.fromarray(before), 0.3),
            DetailerOptions(model="yunet"),
        )
        support = np.zeros(before.shape[:2], bool)
        for detection in found:
            support |= np.asarray(blur_mask(region_mask((64, 64), detection, 4), 4, 4)) > 0
        assert found and support[20, 20] and support.mean() < 0.8  # the face, not the whole image
        result = engine.generate(plain.replace(detailer="yunet"))
        after = pixels(result.images[0].png)
        changed = np.any(before != after, axis=-1)
        assert changed[16:24, 16:24].any() and not (changed & ~support).any()
        assert "ADetailer model: yunet" in result.images[0].infotext
    finally:
        engine.close()
