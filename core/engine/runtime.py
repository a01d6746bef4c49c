"""What every run of the pipeline shares, for the life of the engine: settings, device and dtype, the model
cache and its one loader, embeddings, the extra-network cache, the VAE with the engine's settings, the PNG
threads, and the lock that keeps runs one at a time. ``DiffusersEngine`` is a :class:`Runtime` with the
``Engine`` protocol on top.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from core.config import EngineSettings, PostprocessSettings
from core.engine import models, vae
from core.engine.conditioning import EmbeddingLibrary
from core.engine.job import RunStats
from core.types import GenerationError, GenerationRequest

log = logging.getLogger(__name__)


class Runtime:
    def __init__(
        self,
        settings: EngineSettings,
        *,
        allow_paths: bool = False,
        postprocess: PostprocessSettings | None = None,
    ) -> None:
        self.settings = settings
        self.postprocess = postprocess or PostprocessSettings()
        self._post = None  # core.engine.postprocess.run.PostModels, made on first use
        self.allow_paths = allow_paths
        self.models = models.ModelCache(settings.max_loaded_models, allow_pickle=settings.allow_pickle)
        self.embeddings = EmbeddingLibrary(settings.embedding_dirs)
        self.device, self.dtype = models.torch_device_and_dtype(settings)
        self.last_stats = RunStats()
        self.sync_stages = False  # benchmarks: wait for the GPU at every stage/step boundary
        self.unet_row_buckets: tuple[int, ...] = ()  # a compiled UNet's warmed-up row counts (accel)
        self._lock = threading.Lock()
        self._network_cache = None
        self._guide_models = None  # core.engine.guide.GuideModels (ControlNets, IP-Adapters), on first use
        self._pool: ThreadPoolExecutor | None = None  # PNG encoding threads, created on first use

    def load_model(self, request: GenerationRequest) -> models.LoadedModel:
        """The request's model (LRU cache), with its VAE override and the VAE switches."""
        return models.load_for_request(
            self.models,
            self.settings,
            request.model,
            request.vae,
            self.device,
            self.dtype,
            allow_paths=self.allow_paths,
        )

    @contextlib.contextmanager
    def extra_networks(self, model: models.LoadedModel, networks):
        """LoRA / hypernetwork tags active for one run, taken back exactly afterwards."""
        if not networks:
            yield
            return
        from core.engine.networks.activate import NetworkCache, activate_for_pipeline

        if self._network_cache is None:
            self._network_cache = NetworkCache()
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(
                activate_for_pipeline(model.pipe, networks, self.settings, self._network_cache)
            )
        except ValueError as exc:
            raise GenerationError(str(exc)) from None
        with stack:
            yield

    @property
    def post(self):
        """The post-processing models (upscalers, face restorers, detectors) on the engine's device."""
        if self._post is None:
            from core.engine.postprocess.run import PostModels

            self._post = PostModels(
                self.postprocess, allow_pickle=self.settings.allow_pickle, device=self.device
            )
        return self._post
    def guide_models(self):
        """The ControlNet and IP-Adapter caches (made on first use)."""
        if self._guide_models is None:
            from core.engine.guide import GuideModels

            self._guide_models = GuideModels(self.settings)
        return self._guide_models

    # -- the VAE, with the engine's settings ---------------------------------------------------------

    def decode(self, model: models.LoadedModel, latents: torch.Tensor) -> list:
        """Latents -> PIL images, ``vae_decode_batch`` latents per VAE call."""
        return vae.decode(model, latents, chunk=self.settings.vae_decode_batch)

    def decode_latents(self, model: models.LoadedModel, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> image tensor in [-1, 1], ``vae_decode_batch`` latents per VAE call."""
        return vae.decode_latents(model, latents, chunk=self.settings.vae_decode_batch)

    def encode_images(self, model: models.LoadedModel, images: Sequence[Any]) -> torch.Tensor:
        """PIL images -> latents (the distribution's mean)."""
        return vae.encode_images(model, images, self.device)

    # -- around the loop -----------------------------------------------------------------------------

    def preview(self, model: models.LoadedModel, latents: torch.Tensor) -> bytes | None:
        try:
            from core.engine.preview import latent_preview

            return latent_preview(latents, model.kind)
        except Exception:  # a preview must never fail a job
            log.debug("preview failed", exc_info=True)
            return None

    def sync(self) -> None:
        if self.sync_stages and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def png_pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            import os

            workers = max(1, min(16, (os.cpu_count() or 2) - 1))
            self._pool = ThreadPoolExecutor(workers, thread_name_prefix="chant-png")
        return self._pool

    def close(self) -> None:
        self.models.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None
