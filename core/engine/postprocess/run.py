"""The post-processing models one engine holds (on its device, loaded on first use), and what the pipeline
runs after decoding, per image, in A1111's order: face restoration ("Restore faces", in
``process_images``), then the detailer (ADetailer's ``postprocess_image``, after it).

The detailer's inpaint is the engine's own: the caller passes an :data:`~.detailer.InpaintCall` that runs
the pipeline's inpaint "only masked" on the image (``Pipeline.detailer_inpaint``).
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from core.config import PostprocessSettings
from core.engine.postprocess.detailer import DetailerOptions, InpaintCall, detail
from core.engine.postprocess.detect import Detectors
from core.engine.postprocess.faces import FaceRestorers, restore_faces
from core.engine.postprocess.upscalers import Upscalers
from core.types import GenerationRequest


class PostModels:
    def __init__(self, settings: PostprocessSettings, *, allow_pickle: bool, device: torch.device) -> None:
        self.settings = settings
        self.upscalers = Upscalers(settings, allow_pickle=allow_pickle, device=device)
        self.faces = FaceRestorers(settings.face_restorer_dirs, allow_pickle=allow_pickle, device=device)
        self.detectors = Detectors(settings.detector_dirs, device=str(device))

    def restore_faces(self, image: Image.Image, name: str) -> tuple[Image.Image, dict[str, Any]]:
        """A1111's "Restore faces" with restorer ``name``: the image and its infotext entries."""
        settings = self.settings
        restorer = self.faces.load(name)
        detector = self.detectors.get(settings.face_detector)
        weight = settings.codeformer_weight
        restored, _ = restore_faces(
            image,
            detector,
            lambda crop: restorer.restore(crop, codeformer_weight=weight),
            visibility=settings.face_restoration_visibility,
        )
        params = restorer.infotext_params(
            visibility=settings.face_restoration_visibility, codeformer_weight=weight
        )
        return restored, params


def detailer_passes(request: GenerationRequest) -> list[DetailerOptions]:
    """The job's detailer pass (one, ADetailer's defaults but the job's prompt and strength)."""
    if not request.detailer:
        return []
    return [
        DetailerOptions(
            model=request.detailer,
            prompt=request.detailer_prompt,
            denoising_strength=request.detailer_strength,
        )
    ]


def after_decoding(
    post: PostModels, request: GenerationRequest, image: Image.Image, inpaint: InpaintCall
) -> tuple[Image.Image, dict[str, Any]]:
    """One decoded image of ``request`` through face restoration and the detailer, with their infotext."""
    params: dict[str, Any] = {}
    if request.face_restoration:
        image, restored = post.restore_faces(image, request.face_restoration)
        params.update(restored)
    passes = detailer_passes(request)
    if passes:
        result = detail(image, passes, post.detectors.get, inpaint)
        image = result.image
        params.update(result.params)
    return image, params
