"""The image classifier that scores results for moderation, run by the worker next to the engine.

Any transformers image-classification model saved in a folder works: ``config.json`` (its labels),
``preprocessor_config.json`` (resize, rescale, normalise — applied exactly as its image processor
does) and ``model.safetensors``. Nothing is downloaded: the folder must hold all three, and only
safetensors weights are loaded. The one chant is tested with is Falconsai/nsfw_image_detection (a
ViT-B/16, Apache-2.0, labels ``normal`` / ``nsfw``); AdamCodd/vit-base-nsfw-detector (Apache-2.0,
``sfw`` / ``nsfw``, 384 px) has the same shape.

An image's score is the probability the model gives its unsafe labels (``moderation.unsafe_labels``):
their softmax probabilities added up for a single-label model, the highest of their sigmoid
probabilities for a multi-label one (as transformers' image-classification pipeline reads the two).
``core.moderation`` turns a score into post / spoiler / block.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

log = logging.getLogger(__name__)

REQUIRED_FILES = ("config.json", "preprocessor_config.json", "model.safetensors")


class ClassifierError(RuntimeError):
    """The configured classifier cannot be used; the message says what is missing or wrong."""


@dataclass(frozen=True)
class ImageScore:
    score: float  # the unsafe labels' probability, 0..1
    labels: dict[str, float]  # every label's probability, for admins


def check_folder(folder: Path | str) -> Path:
    """The folder, if it holds a classifier's files; else ClassifierError naming what is missing (checked
    when chant starts, before anything loads)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ClassifierError(f"moderation.classifier: the folder {folder} does not exist")
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        hint = ""
        if "model.safetensors" in missing and any(folder.glob("*.bin")):
            hint = " (only .safetensors weights are loaded; convert the .bin file)"
        raise ClassifierError(f"moderation.classifier: {folder} has no {', '.join(missing)}{hint}")
    return folder


class ImageClassifier:
    """A loaded classifier: ``score(images)`` on the device it was loaded to."""

    def __init__(self, model, processor, unsafe_ids: tuple[int, ...], device: torch.device, dtype) -> None:
        self.model = model
        self.processor = processor
        self.unsafe_ids = unsafe_ids
        self.device = device
        self.dtype = dtype
        config = model.config
        self.labels = {int(i): str(name) for i, name in config.id2label.items()}
        self.multi_label = config.problem_type == "multi_label_classification" or config.num_labels == 1

    @classmethod
    def load(
        cls,
        folder: Path | str,
        *,
        unsafe_labels: Sequence[str] = ("nsfw",),
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> ImageClassifier:
        """Load the model and its image processor from ``folder`` (no network). Raises ClassifierError
        naming a missing folder or file, weights that are not safetensors, or an unknown label."""
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        folder = check_folder(folder)
        try:
            processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
            model = AutoModelForImageClassification.from_pretrained(
                folder, local_files_only=True, use_safetensors=True
            )
        except (OSError, ValueError, KeyError) as exc:
            raise ClassifierError(f"moderation.classifier: cannot load {folder}: {exc}") from None
        by_name = {str(name).lower(): int(i) for i, name in model.config.id2label.items()}
        unknown = [label for label in unsafe_labels if label.lower() not in by_name]
        if unknown:
            raise ClassifierError(
                f"moderation.unsafe_labels: {', '.join(map(repr, unknown))} is not a label of {folder} "
                f"(its labels: {', '.join(sorted(model.config.id2label.values()))})"
            )
        device = torch.device(device)
        model = model.to(device=device, dtype=dtype).eval()
        unsafe = tuple(sorted({by_name[label.lower()] for label in unsafe_labels}))
        return cls(model, processor, unsafe, device, dtype)

    @torch.inference_mode()
    def score(self, images: Sequence[Image.Image | bytes], *, batch_size: int = 16) -> list[ImageScore]:
        """One score per image (PIL images or encoded PNG/JPEG/WebP bytes), ``batch_size`` at a time."""
        scores: list[ImageScore] = []
        for start in range(0, len(images), batch_size):
            batch = [_rgb(image) for image in images[start : start + batch_size]]
            inputs = self.processor(images=batch, return_tensors="pt")
            pixels = inputs["pixel_values"].to(device=self.device, dtype=self.dtype)
            logits = self.model(pixel_values=pixels).logits.float()
            probs = logits.sigmoid() if self.multi_label else logits.softmax(dim=-1)
            for row in probs.cpu().tolist():
                unsafe = [row[i] for i in self.unsafe_ids]
                score = max(unsafe) if self.multi_label else sum(unsafe)
                scores.append(ImageScore(min(1.0, score), {self.labels[i]: p for i, p in enumerate(row)}))
        return scores


def _rgb(image: Image.Image | bytes) -> Image.Image:
    if isinstance(image, bytes | bytearray):
        image = Image.open(io.BytesIO(image))
        image.load()
    return image if image.mode == "RGB" else image.convert("RGB")


class ClassifierScorer:
    """The worker's classifier (``core.queue.worker.ImageScorer``): loaded once, on the engine's device,
    the first time it is needed (the worker preloads it before the first job); thread-safe.

    A classifier that cannot be loaded is reported once and every image is "not checked" (None); the
    guild's policy decides what that means (``core.moderation``)."""

    def __init__(self, folder: Path | str, *, unsafe_labels: Sequence[str], engine_settings) -> None:
        self.folder = check_folder(folder)
        self.unsafe_labels = tuple(unsafe_labels)
        self.engine_settings = engine_settings  # core.config.EngineSettings: the device and dtype
        self._classifier: ImageClassifier | None = None
        self._error: str | None = None
        self._lock = threading.Lock()

    def preload(self) -> ImageClassifier:
        with self._lock:
            if self._classifier is None:
                if self._error is not None:
                    raise ClassifierError(self._error)
                from core.engine.models import torch_device_and_dtype

                try:
                    device, _ = torch_device_and_dtype(self.engine_settings)
                    # fp16 is fine for the engine's UNet; a small ViT scores in fp32 at no real cost.
                    self._classifier = ImageClassifier.load(
                        self.folder, unsafe_labels=self.unsafe_labels, device=device, dtype=torch.float32
                    )
                except Exception as exc:
                    self._error = str(exc)
                    raise
                log.info("moderation classifier %s loaded on %s", self.folder, device)
            return self._classifier

    def scores(self, pngs: Sequence[bytes]) -> list[float | None]:
        try:
            classifier = self.preload()
        except Exception:
            return [None] * len(pngs)
        return [s.score for s in classifier.score(pngs)]
