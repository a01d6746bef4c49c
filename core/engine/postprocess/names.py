"""The names of the installed post-processing models, torch-free (the services list and check them at
submit; the engine loads them by the same names).

Upscalers are named as A1111 1.8+ names them: every weights file under ``postprocess.upscaler_dirs`` by its
file stem (``4x-UltraSharp``), A1111's built-ins by A1111's names (``R-ESRGAN 4x+``) when their file is
installed, so an infotext from A1111 reads back. The engine's own hires upscalers (``core.ranges.UPSCALERS``:
latent modes and PIL resamplers) are not files and are listed first by :func:`hires_upscaler_names`.
"""

from __future__ import annotations

from pathlib import Path

from core import ranges
from core.config import PostprocessSettings
from core.engine.postprocess.files import (
    WEIGHT_SUFFIXES,
    PostprocessError,
    list_model_files,
    unknown_name_error,
)

# A1111's built-in upscalers: the name A1111 shows (and writes as "Hires upscaler") -> the file stem
# A1111 saves its download under (the URL's file name, or the name it renames the download to).
A1111_NAMES = {
    "R-ESRGAN 4x+": "RealESRGAN_x4plus",
    "R-ESRGAN 4x+ Anime6B": "RealESRGAN_x4plus_anime_6B",
    "R-ESRGAN 2x+": "RealESRGAN_x2plus",
    "R-ESRGAN General 4xV3": "realesr-general-x4v3",
    "R-ESRGAN General WDN 4xV3": "realesr-general-wdn-x4v3",
    "R-ESRGAN AnimeVideo": "realesr-animevideov3",
    "ESRGAN_4x": "ESRGAN_4x",
    "SwinIR 4x": "SwinIR_4x",
    "DAT x2": "DAT_x2",
    "DAT x3": "DAT_x3",
    "DAT x4": "DAT_x4",
    "ScuNET GAN": "scunet_color_real_gan",
    "ScuNET PSNR": "scunet_color_real_psnr",
}


def listing(names: list[str] | tuple[str, ...], most: int = 30) -> str:
    """Names for a message: the first ``most``, then how many more (a server may hold hundreds)."""
    names = list(names)
    more = f", … ({len(names) - most} more)" if len(names) > most else ""
    return ", ".join(names[:most]) + more


def upscaler_files(settings: PostprocessSettings) -> dict[str, Path]:
    return list_model_files(settings.upscaler_dirs, WEIGHT_SUFFIXES)


def upscaler_names(settings: PostprocessSettings) -> list[str]:
    """Every installed upscaler model, A1111's built-ins under their A1111 names, sorted."""
    try:
        files = upscaler_files(settings)
    except OSError:
        return []
    aliased = {stem: name for name, stem in A1111_NAMES.items() if stem in files}
    return sorted((aliased.get(stem, stem) for stem in files), key=str.lower)


def resolve_upscaler(settings: PostprocessSettings, name: str) -> Path:
    """The file of upscaler ``name`` (an A1111 name or a file stem), inside the configured folders."""
    path = upscaler_files(settings).get(A1111_NAMES.get(name, name))
    if path is None:
        raise unknown_name_error("upscaler", name, upscaler_names(settings), settings.upscaler_dirs)
    return path


def hires_upscaler_names(settings: PostprocessSettings) -> list[str]:
    """What hires fix offers: the engine's own upscalers (latent, PIL), then the installed models."""
    builtin = list(ranges.UPSCALERS)
    return builtin + [n for n in upscaler_names(settings) if n not in builtin]


def check_hires_upscaler(settings: PostprocessSettings, name: str) -> None:
    """A ``PostprocessError`` naming an unknown hires upscaler and listing the ones there are."""
    if name in ranges.UPSCALERS:
        return
    if A1111_NAMES.get(name, name) in upscaler_files(settings):
        return
    known = hires_upscaler_names(settings)
    raise PostprocessError(f"unknown hires upscaler {name!r}; this server has: {listing(known)}")


# -- face restorers and detectors ----------------------------------------------------------------------

A1111_RESTORERS = {"GFPGAN": "gfpgan", "CodeFormer": "codeformer"}  # A1111 name -> file stem prefix
EXTRA_ARCHES_PACKAGE = "spandrel_extra_arches"


def has_extra_arches() -> bool:
    """Whether spandrel's extra architectures (CodeFormer and others, some non-commercial) are installed."""
    import importlib.util

    return importlib.util.find_spec(EXTRA_ARCHES_PACKAGE) is not None


def face_restorer_names(settings: PostprocessSettings) -> list[str]:
    try:
        return sorted(list_model_files(settings.face_restorer_dirs, WEIGHT_SUFFIXES), key=str.lower)
    except OSError:
        return []


def resolve_face_restorer(folders: tuple[str, ...], name: str) -> Path:
    """The weights file of face restorer ``name``: A1111's name (the newest-looking file of its family,
    GFPGANv1.4 before GFPGANv1.3) or a file stem, inside ``folders``."""
    files = list_model_files(folders, WEIGHT_SUFFIXES)
    if name in A1111_RESTORERS:
        family = sorted((s for s in files if s.lower().startswith(A1111_RESTORERS[name])), reverse=True)
        if family:
            return files[family[0]]
        if name == "CodeFormer" and not has_extra_arches():
            raise PostprocessError(
                "CodeFormer is not installed on this server (it needs its weights in models/Codeformer and "
                "the spandrel-extra-arches package, whose CodeFormer licence is non-commercial)"
            )
    if name not in files:
        raise unknown_name_error("face restoration model", name, sorted(files, key=str.lower), folders)
    return files[name]


def detector_names(settings: PostprocessSettings) -> list[str]:
    try:
        return sorted(list_model_files(settings.detector_dirs, (".onnx",)), key=str.lower)
    except OSError:
        return []


def check_detector(settings: PostprocessSettings, name: str) -> None:
    if name not in detector_names(settings):
        raise unknown_name_error("detector", name, detector_names(settings), settings.detector_dirs)


def check_after_decoding(settings: PostprocessSettings, face_restoration: str, detailer: str) -> None:
    """A ``PostprocessError`` naming what the server lacks for a job's face restoration or detailer: the
    restorer's weights, and the ONNX face detector both need."""
    if face_restoration:
        resolve_face_restorer(settings.face_restorer_dirs, face_restoration)
        check_detector(settings, settings.face_detector)
    if detailer:
        check_detector(settings, detailer)
