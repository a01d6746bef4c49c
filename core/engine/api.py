"""The engine's torch-free interface: what the queue, the bot and the CLI program against."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from core.types import GenerationRequest, GenerationResult, Progress


@runtime_checkable
class Engine(Protocol):
    def generate(
        self,
        request: GenerationRequest,
        *,
        on_progress: Callable[[Progress], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> GenerationResult:
        """Run one job synchronously (the queue calls it in a worker thread).

        Raises GenerationCancelled (checked between steps), GenerationError with a message for the
        user (unknown sampler or model, bad size), or OutOfMemory (memory was freed). A seed of -1
        picks a random seed, reported in ``GeneratedImage.seed``.
        """
        ...

    def generate_batch(
        self,
        requests: Sequence[GenerationRequest],
        *,
        on_progress: Callable[[int, Progress], None] | None = None,
        should_cancel: Callable[[int], bool] | None = None,
    ) -> list[GenerationResult | BaseException]:
        """Run compatible requests (equal ``batch_key()``); one result or exception per request."""
        ...

    def batch_capacity(self, request: GenerationRequest) -> int:
        """Most images one ``generate_batch`` loop of jobs like ``request`` should hold (at least 1):
        ``engine.max_batch``, or with 0 an estimate from the memory free now at the job's size."""
        ...

    def model_names(self) -> list[str]:
        """The models users may pick (autocomplete): configured ones first, then checkpoints found in
        the model folders (``core.engine.catalog.model_names``); empty when there is none."""
        ...

    def sampler_names(self) -> list[str]:
        """A1111 sampler names this engine supports."""
        ...

    def close(self) -> None: ...
