"""The post-processing models one engine holds (on its device, loaded on first use), for the pipeline:
upscaler models in hires fix and upscale jobs, face restoration and the detailer after decoding."""

from __future__ import annotations

import torch

from core.config import PostprocessSettings
from core.engine.postprocess.detect import Detectors
from core.engine.postprocess.faces import FaceRestorers
from core.engine.postprocess.upscalers import Upscalers


class PostModels:
    def __init__(self, settings: PostprocessSettings, *, allow_pickle: bool, device: torch.device) -> None:
        self.settings = settings
        self.upscalers = Upscalers(settings, allow_pickle=allow_pickle, device=device)
        self.faces = FaceRestorers(settings.face_restorer_dirs, allow_pickle=allow_pickle, device=device)
        self.detectors = Detectors(settings.detector_dirs, device=str(device))
