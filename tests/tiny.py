"""The tiny random-weight model builders, wherever they live (``core.engine.tiny`` today; a branch moves
them to ``core.testing.tiny``): tests outside the engine's own import them from here."""

from __future__ import annotations

try:
    from core.testing.tiny import TinyModel, build_tiny_sd15, build_tiny_sdxl
except ImportError:
    from core.engine.tiny import TinyModel, build_tiny_sd15, build_tiny_sdxl

__all__ = ["TinyModel", "build_tiny_sd15", "build_tiny_sdxl"]
