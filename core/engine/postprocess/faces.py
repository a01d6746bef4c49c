"""Face restoration (A1111's "Restore faces"): GFPGAN through spandrel, CodeFormer when installed.

A1111 1.8+ finds faces with facexlib (RetinaFace), aligns each to the FFHQ 512×512 template by its five
landmarks, restores the crop, pastes it back through the inverse transform with a face-parsing mask, and
blends the whole result with the original by "visibility". chant does the same with two differences:
faces and their five landmarks come from the YuNet detector (:mod:`.detect`; facexlib's weights are not
redistributable and it pulls in torchvision and numba), and the pasted face is feathered by facexlib's
own no-parsing mask (the warped square, eroded and blurred in proportion to the face) instead of a
parsing network's skin mask — hair and background at the crop's edge blend a little more.

GFPGAN runs without its random noise injection (the noise stored in the weights is used), so a
restored image is reproducible; A1111 draws fresh noise each time (changes are tiny and local).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageChops, ImageFilter

from core import ranges
from core.engine.postprocess.detect import Detection, Detector
from core.engine.postprocess.files import (
    WEIGHT_SUFFIXES,
    PostprocessError,
    list_model_files,
)
from core.engine.postprocess.names import resolve_face_restorer
from core.engine.postprocess.spandrel_loader import (
    descriptor_from_state_dict,
    has_extra_arches,
    pick_dtype,
    read_state_dict,
)

FACE_SIZE = 512
# facexlib's five-point FFHQ template for a 512×512 crop (image-left eye, image-right eye, nose tip,
# image-left mouth corner, image-right mouth corner) — YuNet's landmark order, "right eye" first.
FFHQ_TEMPLATE_512 = np.array(
    [[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935], [201.26117, 371.41043], [313.08905, 371.15118]],
    dtype=np.float64,
)
BORDER = (135, 133, 132)  # facexlib's fill for crop pixels outside the image
DETECT_CONFIDENCE = 0.8  # facexlib's RetinaFace threshold
RestoreCrop = Callable[[Image.Image], Image.Image]  # 512×512 aligned face -> restored face


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2×3 rotation + uniform scale + translation that maps ``src`` points onto ``dst`` best
    (least squares, no reflection; Umeyama 1991)."""
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    s, d = src - src_mean, dst - dst_mean
    u, sigma, vt = np.linalg.svd(d.T @ s / len(src))
    sign = np.diag([1.0, np.sign(np.linalg.det(u @ vt))])
    rotation = u @ sign @ vt
    scale = np.trace(np.diag(sigma) @ sign) / (s**2).sum(1).mean()
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - scale * rotation @ src_mean
    return matrix


def _invert(matrix: np.ndarray) -> np.ndarray:
    full = np.vstack([matrix, [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def _warp(image: Image.Image, matrix: np.ndarray, size: tuple[int, int], fill: Any) -> Image.Image:
    """``image`` under ``matrix`` (input -> output pixel centres), ``size`` output; PIL wants the inverse."""
    # PIL samples output pixel centres (x + 0.5): shift so that integer pixel indices map as in cv2.
    shift = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    unshift = np.array([[1, 0, -0.5], [0, 1, -0.5], [0, 0, 1]])
    full = shift @ np.vstack([_invert(matrix), [0, 0, 1]]) @ unshift
    return image.transform(size, Image.Transform.AFFINE, tuple(full[:2].ravel()), Image.Resampling.BILINEAR, fillcolor=fill)


def align(image: Image.Image, landmarks: Sequence[tuple[float, float]]) -> tuple[Image.Image, np.ndarray]:
    """The 512×512 FFHQ-aligned crop of a face and the transform from image to crop."""
    matrix = similarity_transform(np.asarray(landmarks, np.float64), FFHQ_TEMPLATE_512)
    return _warp(image.convert("RGB"), matrix, (FACE_SIZE, FACE_SIZE), BORDER), matrix


def paste_back(image: Image.Image, face: Image.Image, matrix: np.ndarray) -> Image.Image:
    """``face`` (512×512, aligned by ``matrix``) pasted into ``image`` with a feathered edge, like facexlib's
    no-parsing mask: the warped square, eroded and then blurred in proportion to the face (a twentieth
    of its side); the blur never reaches past the square, so nothing outside the crop changes."""
    inverse = _invert(matrix)
    back = _warp(face.convert("RGB"), inverse, image.size, (0, 0, 0))
    mask = _warp(Image.new("L", (FACE_SIZE, FACE_SIZE), 255), inverse, image.size, 0)
    edge = int(math.sqrt(np.count_nonzero(np.asarray(mask)))) // 20
    if edge > 0:
        soft = mask.filter(ImageFilter.MinFilter(4 * edge + 1)).filter(ImageFilter.GaussianBlur(edge / 2))
        mask = ImageChops.darker(soft, mask)
    return Image.composite(back, image.convert("RGB"), mask)


def restore_faces(
    image: Image.Image,
    detector: Detector,
    restore_crop: RestoreCrop,
    *,
    visibility: float = 1.0,
    confidence: float = DETECT_CONFIDENCE,
) -> tuple[Image.Image, list[Detection]]:
    """Every face the detector finds (with landmarks) restored in place, then blended by ``visibility``
    (A1111: 1 = the restored image, 0 = the original). Returns the image and the faces restored."""
    if not ranges.MIN_VISIBILITY <= visibility <= ranges.MAX_VISIBILITY:
        raise ValueError(f"face restoration visibility must be between 0 and 1, not {visibility}")
    original = image.convert("RGB")
    faces = [d for d in detector.detect(original, confidence) if len(d.landmarks) == 5]
    restored = original
    for face in faces:
        crop, matrix = align(original, face.landmarks)
        restored = paste_back(restored, restore_crop(crop), matrix)
    if visibility < 1.0:
        restored = Image.blend(original, restored, visibility)
    return restored, faces


# -- the models ---------------------------------------------------------------------------------------


@dataclass
class FaceRestorer:
    """A loaded GFPGAN or CodeFormer; ``restore`` maps an aligned 512×512 face to its restoration."""

    name: str
    architecture: str  # "GFPGAN" | "CodeFormer"
    descriptor: Any
    device: torch.device
    dtype: torch.dtype

    def restore(self, face: Image.Image, *, codeformer_weight: float = 0.5) -> Image.Image:
        rgb = np.asarray(face.convert("RGB").resize((FACE_SIZE, FACE_SIZE)), np.float32) / 255.0
        x = torch.from_numpy(rgb.transpose(2, 0, 1).copy())[None].to(self.device, self.dtype) * 2 - 1
        with torch.inference_mode():
            if self.architecture == "CodeFormer":
                out = self.descriptor.model(x, weight=codeformer_weight, adain=True)[0]
            else:
                out = self.descriptor.model(x, return_rgb=False, randomize_noise=False)[0]
        out = ((out.float().clamp(-1, 1) + 1) / 2)[0].cpu().numpy().transpose(1, 2, 0)
        return Image.fromarray(np.rint(out * 255).astype(np.uint8), "RGB")

    def infotext_params(self, *, visibility: float = 1.0, codeformer_weight: float = 0.5) -> dict[str, Any]:
        """A1111's entries: ``Face restoration: GFPGAN``, and the extras tab's visibility / weight keys."""
        params: dict[str, Any] = {"Face restoration": self.architecture}
        if visibility < 1.0:
            params[f"{self.architecture} visibility"] = visibility
        if self.architecture == "CodeFormer":
            params["CodeFormer weight"] = codeformer_weight
        return params


class FaceRestorers:
    """The face restoration models of one server: A1111's names (GFPGAN, CodeFormer) or file stems."""

    def __init__(self, folders: Sequence[str], *, allow_pickle: bool, device: str | torch.device = "cpu") -> None:
        self.folders = tuple(folders)
        self.allow_pickle = allow_pickle
        self.device = torch.device(device)
        self._loaded: dict[Path, FaceRestorer] = {}
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        return sorted(list_model_files(self.folders, WEIGHT_SUFFIXES), key=str.lower)

    def resolve(self, name: str) -> Path:
        return resolve_face_restorer(self.folders, name)

    def load(self, name: str) -> FaceRestorer:
        path = self.resolve(name)
        with self._lock:
            if path in self._loaded:
                return self._loaded[path]
            state = read_state_dict(path, allow_pickle=self.allow_pickle)
            try:
                descriptor = descriptor_from_state_dict(state, name=path.stem)
            except PostprocessError:
                if "codeformer" in path.stem.lower() and not has_extra_arches():
                    raise PostprocessError(
                        f"{path.stem}: CodeFormer needs the spandrel-extra-arches package (non-commercial licence)"
                    ) from None
                raise
            arch = str(descriptor.architecture.id)
            if arch not in ("GFPGAN", "CodeFormer"):
                raise PostprocessError(f"{path.stem}: a {arch} model is not a face restoration model")
            dtype = pick_dtype(descriptor, self.device)
            descriptor.to(self.device, dtype)
            self._loaded[path] = FaceRestorer(path.stem, arch, descriptor, self.device, dtype)
            return self._loaded[path]
