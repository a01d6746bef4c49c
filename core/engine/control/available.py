"""Which ControlNets, IP-Adapters and preprocessor models the configured folders hold (torch-free).

The engine resolves and loads from these lists; the submit path reads them too, so a job whose
ControlNet, IP-Adapter or depth/pose model is not there is refused before anything is stored or
charged (``core.engine.control.requirements.check_guides``).
"""

from __future__ import annotations

import os
from pathlib import Path

from core.config import EngineSettings

SAFE_SUFFIXES = (".safetensors",)  # as core.engine.models (a test checks they agree)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
IP_ADAPTER_WORDS = ("ip-adapter", "ip_adapter")  # how sd-webui-controlnet tells them apart in the same folder
DEPTH_FOLDER_NAMES = (
    "depth_anything_v2",
    "Depth-Anything-V2-Small-hf",
    "Depth-Anything-V2-Base-hf",
    "Depth-Anything-V2-Large-hf",
)
POSE_FILES = ("yolox_l.onnx", "dw-ll_ucoco_384.onnx")  # DWPose: the person detector, the pose model
POSE_SUBFOLDERS = ("", "openpose", "dwpose")


def is_diffusers_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def list_controlnets(settings: EngineSettings) -> list[str]:
    """Every ControlNet name a request may use: files and diffusers folders, searched recursively
    (IP-Adapter files, which share the folder, are listed by :func:`list_ip_adapters`)."""
    return [n for n in _list_models(settings) if not any(w in n.lower() for w in IP_ADAPTER_WORDS)]


def list_ip_adapters(settings: EngineSettings) -> list[str]:
    """Every IP-Adapter name (files named ``ip-adapter…``) in the ControlNet folders."""
    return [n for n in _list_models(settings) if any(w in n.lower() for w in IP_ADAPTER_WORDS)]


def _list_models(settings: EngineSettings) -> list[str]:
    suffixes = SAFE_SUFFIXES + (PICKLE_SUFFIXES if settings.allow_pickle else ())
    names: set[str] = set()
    for folder in settings.controlnet_dirs:
        base = Path(folder)
        for root, dirs, files in os.walk(base):
            here = Path(root)
            if here != base and is_diffusers_folder(here):
                names.add(here.relative_to(base).as_posix())
                dirs.clear()  # its weights are not models of their own
                continue
            for file in files:
                if Path(file).suffix.lower() in suffixes:
                    names.add((here / file).relative_to(base).with_suffix("").as_posix())
    return sorted(names)


def find_preprocessor_model(name: str, folders: tuple[str, ...]) -> Path:
    """A preprocessor model folder by name, inside the configured preprocessor folders only."""
    for folder in folders:
        candidate = Path(folder) / name
        if candidate.is_dir() and candidate.resolve().is_relative_to(Path(folder).resolve()):
            return candidate.resolve()
    raise ValueError(
        f"preprocessor model {name!r} not found in {', '.join(folders) or 'no folder'} (engine.preprocessor_dirs)"
    )


def find_depth_model(folders: tuple[str, ...]) -> Path:
    for name in DEPTH_FOLDER_NAMES:
        try:
            return find_preprocessor_model(name, folders)
        except ValueError:
            continue
    raise ValueError(
        f"depth_anything_v2 needs a Depth Anything V2 model folder ({' or '.join(DEPTH_FOLDER_NAMES[:2])}) "
        f"in {', '.join(folders) or 'engine.preprocessor_dirs'}"
    )


def find_pose_file(name: str, folders: tuple[str, ...]) -> Path:
    for folder in folders:
        for sub in POSE_SUBFOLDERS:
            candidate = Path(folder) / sub / name
            if candidate.is_file() and candidate.resolve().is_relative_to(Path(folder).resolve()):
                return candidate.resolve()
    raise ValueError(
        f"dw_openpose_full needs {name} in {', '.join(folders) or 'engine.preprocessor_dirs'} "
        "(or an openpose/ subfolder)"
    )
