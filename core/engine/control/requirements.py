"""What a job's ControlNet units and reference images need from the configured folders (torch-free):
checked at submit, so a job that could not run is refused before anything is stored or charged."""

from __future__ import annotations

import re
from pathlib import Path

from core.config import EngineSettings
from core.engine.control.available import (
    PICKLE_SUFFIXES,
    POSE_FILES,
    SAFE_SUFFIXES,
    find_depth_model,
    find_pose_file,
    list_controlnets,
    list_ip_adapters,
)
from core.engine.control.preprocessors import get_preprocessor, models_for_control_type


def _plain(name: str) -> str:
    """A name without its ``[hash]`` and file suffix."""
    name = re.sub(r"\s*\[[0-9a-fA-F]{8,10}\]$", "", name)
    return (
        name[: -len(Path(name).suffix)]
        if Path(name).suffix.lower() in SAFE_SUFFIXES + PICKLE_SUFFIXES
        else name
    )


def check_guides(settings: EngineSettings, controls, references) -> None:
    """``ValueError`` naming what is missing for these units and references (``core.types.ControlInput``,
    ``ReferenceInput``): the named ControlNet, one fitting the control type, the preprocessor's model,
    an IP-Adapter. Names only: whether a file fits the model's family is the engine's to say."""
    controlnets = list_controlnets(settings) if controls else []
    for control in controls:
        preprocessor = get_preprocessor(control.module)
        if control.model:
            if _plain(control.model) not in controlnets and Path(_plain(control.model)).name not in {
                Path(n).name for n in controlnets
            }:
                raise ValueError(f"there is no ControlNet named {control.model!r}")
        else:
            control_type = control.control_type or preprocessor.control_type
            if not models_for_control_type(control_type, controlnets):
                raise ValueError(f"this bot has no ControlNet model for {control_type}")
        folders = tuple(settings.preprocessor_dirs)
        if control.module == "depth_anything_v2":
            find_depth_model(folders)
        elif control.module == "dw_openpose_full":
            for name in POSE_FILES:
                find_pose_file(name, folders)
    if references:
        adapters = list_ip_adapters(settings)
        wanted = references[0].model
        if not adapters or (wanted and _plain(wanted) not in adapters):
            raise ValueError("this bot has no IP-Adapter model for reference images" if not adapters
                             else f"there is no IP-Adapter named {wanted!r}")  # fmt: skip
        if not any(
            Path(folder).is_dir() and any(Path(folder).iterdir()) for folder in settings.clip_vision_dirs
        ):
            raise ValueError("reference images need a CLIP vision model in engine.clip_vision_dirs")
