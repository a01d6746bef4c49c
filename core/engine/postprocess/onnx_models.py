"""onnxruntime sessions for the detectors and taggers (onnxruntime is MIT; the models are files the
operator puts in the configured folders — nothing is downloaded at run time)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.engine.postprocess.files import PostprocessError


def open_session(path: Path, *, device: str = "cpu") -> Any:
    """An ``onnxruntime.InferenceSession`` for ``path``: CUDA when ``device`` is one and onnxruntime has
    the CUDA provider (the ``onnxruntime-gpu`` package), else the CPU."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise PostprocessError("onnxruntime is not installed on this server (pip install onnxruntime)") from None
    providers: list[Any] = ["CPUExecutionProvider"]
    if str(device).startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        index = int(str(device).partition(":")[2] or 0)
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": index}))
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: onnxruntime warns about every unused initializer
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise PostprocessError(f"{path.stem}: not a usable ONNX model ({first})") from None
