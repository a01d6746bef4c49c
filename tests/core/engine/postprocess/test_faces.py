from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.engine.postprocess.detect import Detection
from core.engine.postprocess.faces import (
    FFHQ_TEMPLATE_512,
    FaceRestorers,
    align,
    paste_back,
    restore_faces,
    similarity_transform,
)
from core.engine.postprocess.files import PostprocessError


class StubDetector:
    name = "stub"

    def __init__(self, detections: list[Detection]) -> None:
        self.detections = detections

    def detect(self, image: Image.Image, confidence: float) -> list[Detection]:
        return [d for d in self.detections if d.score >= confidence]


def _face_at(scale: float, angle: float, offset: tuple[float, float]) -> Detection:
    """A face whose landmarks are the template turned by ``angle``, scaled, moved to ``offset``."""
    c, s = np.cos(angle), np.sin(angle)
    points = (FFHQ_TEMPLATE_512 - 256) @ np.array([[c, s], [-s, c]]) * scale + np.array(offset)
    x0, y0 = points.min(0) - 20
    x1, y1 = points.max(0) + 20
    return Detection((x0, y0, x1, y1), 0.99, tuple(map(tuple, points)))


def _gradient(width: int = 200, height: int = 160) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    array = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], -1)
    return Image.fromarray(array.astype(np.uint8), "RGB")


def test_similarity_transform_recovers_rotation_scale_and_shift() -> None:
    face = _face_at(0.25, 0.3, (100, 80))
    matrix = similarity_transform(np.asarray(face.landmarks), FFHQ_TEMPLATE_512)
    mapped = np.asarray(face.landmarks) @ matrix[:, :2].T + matrix[:, 2]
    assert mapped == pytest.approx(FFHQ_TEMPLATE_512, abs=1e-6)
    assert np.hypot(*matrix[0, :2]) == pytest.approx(4.0)  # 1 / 0.25


def test_align_then_paste_back_an_unchanged_face_keeps_the_image() -> None:
    image = _gradient()
    face = _face_at(0.25, 0.2, (100, 80))
    crop, matrix = align(image, face.landmarks)
    assert crop.size == (512, 512)
    pasted = np.asarray(paste_back(image, crop, matrix), np.int16)
    # Up- then down-sampling a smooth gradient through two bilinear warps moves values by a level or two.
    assert np.abs(pasted - np.asarray(image, np.int16)).max() <= 3


def test_restored_faces_change_only_near_the_face_and_visibility_blends() -> None:
    image = _gradient()
    face = _face_at(0.2, 0.0, (60, 60))
    white = lambda crop: Image.new("RGB", crop.size, (255, 255, 255))  # noqa: E731
    restored, faces = restore_faces(image, StubDetector([face]), white)
    assert faces == [face]
    changed = np.any(np.asarray(restored) != np.asarray(image), -1)
    ys, xs = np.nonzero(changed)
    half = 256 * 0.2 + 1  # the 512 crop is 102 px here: nothing beyond it changes
    assert xs.min() >= 60 - half and xs.max() <= 60 + half and ys.min() >= 60 - half and ys.max() <= 60 + half
    assert restored.getpixel((60, 60)) == (255, 255, 255)
    half_way, _ = restore_faces(image, StubDetector([face]), white, visibility=0.5)
    expected = Image.blend(image, restored, 0.5)
    assert np.array_equal(np.asarray(half_way), np.asarray(expected))
    none, _ = restore_faces(image, StubDetector([face]), white, visibility=0.0)
    assert np.array_equal(np.asarray(none), np.asarray(image))
    with pytest.raises(ValueError, match="visibility must be between 0 and 1"):
        restore_faces(image, StubDetector([face]), white, visibility=1.5)


def test_faces_without_landmarks_or_below_the_threshold_are_left_alone() -> None:
    image = _gradient()
    calls = []
    faces = [Detection((10, 10, 50, 50), 0.99), _face_at(0.2, 0.0, (60, 60)).__class__((0, 0, 1, 1), 0.5, ())]
    restored, found = restore_faces(image, StubDetector(faces), lambda c: calls.append(c) or c)
    assert found == [] and calls == [] and np.array_equal(np.asarray(restored), np.asarray(image))


def test_restorer_names_and_codeformer_without_its_package(tmp_path: Path) -> None:
    restorers = FaceRestorers([str(tmp_path)], allow_pickle=False)
    with pytest.raises(PostprocessError, match="CodeFormer is not installed on this server"):
        restorers.resolve("CodeFormer")
    with pytest.raises(PostprocessError, match="has no face restoration model models installed"):
        restorers.resolve("GFPGAN")
    (tmp_path / "GFPGANv1.3.pth").write_bytes(b"x")
    (tmp_path / "GFPGANv1.4.pth").write_bytes(b"x")
    assert restorers.resolve("GFPGAN").name == "GFPGANv1.4.pth"
    with pytest.raises(PostprocessError, match="allow_pickle"):
        restorers.load("GFPGAN")


@pytest.mark.slow
def test_gfpgan_architecture_loads_through_spandrel_and_restores_a_crop(tmp_path: Path) -> None:
    # The real GFPGAN v1.4 shape (spandrel fixes it) with random weights: about 340 MB of float32.
    from safetensors.torch import save_file

    from core.engine.postprocess.spandrel_loader import import_spandrel

    import_spandrel()  # first: it lets spandrel import without torchvision
    from spandrel.architectures.GFPGAN import GFPGAN

    torch.manual_seed(0)
    net = GFPGAN(out_size=512, num_style_feat=512, channel_multiplier=2, decoder_load_path=None, fix_decoder=False,
                 num_mlp=8, input_is_latent=True, different_w=True, narrow=1, sft_half=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "GFPGANv1.4.safetensors"))
    del net
    restorer = FaceRestorers([str(tmp_path)], allow_pickle=False).load("GFPGAN")
    assert restorer.architecture == "GFPGAN"
    crop, _ = align(_gradient(), _face_at(0.2, 0.0, (60, 60)).landmarks)
    out = restorer.restore(crop)
    assert out.size == (512, 512)
    assert np.array_equal(np.asarray(out), np.asarray(restorer.restore(crop)))  # stored noise: reproducible
    assert restorer.infotext_params(visibility=0.8) == {"Face restoration": "GFPGAN", "GFPGAN visibility": 0.8}
