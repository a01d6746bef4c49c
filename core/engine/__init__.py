"""The generation engine: A1111-exact conditioning, samplers and seeds on diffusers.

Import-light on purpose: ``from core.engine.api import Engine`` loads no torch. ``create_engine``
imports torch and diffusers only when called.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core.config import EngineSettings, PostprocessSettings
    from core.engine.api import Engine


def uses_hub(settings: EngineSettings) -> bool:
    """Whether any configured model (or VAE) is a hub id; without one the hub is never contacted."""
    from pathlib import Path

    from core.engine.models import looks_like_hub_id

    for model in settings.models.values():
        for value in (model.source, model.vae):
            if value and not Path(value).expanduser().exists() and looks_like_hub_id(value):
                return True
    return False


def create_engine(
    settings: EngineSettings, *, allow_paths: bool = False, postprocess: PostprocessSettings | None = None
) -> Engine:
    """The real engine (torch + diffusers), configured by ``settings``.

    ``allow_paths`` lets requests name model files by path: for the operator's CLI only. ``postprocess``:
    the upscaler / face restorer / detector folders (``[postprocess]``).
    """
    if not uses_hub(settings):
        # Must be set before huggingface_hub is imported: it reads the variable once.
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import logging

    from core.engine.diffusers_engine import DiffusersEngine

    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()  # "Loading pipeline components…" bars between log lines
    return DiffusersEngine(settings, allow_paths=allow_paths, postprocess=postprocess)


__all__ = ["create_engine", "uses_hub"]
