"""The moderation classifier, on tiny random-weight ViTs built here (the architecture of
Falconsai/nsfw_image_detection), against transformers' own image-classification pipeline."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.engine.classifier import ClassifierError, ImageClassifier


def build_tiny_vit(folder: Path, labels: dict[int, str], *, seed: int = 0, problem_type: str | None = None,
                   size: int = 32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)) -> Path:  # fmt: skip
    from transformers import ViTConfig, ViTForImageClassification
    from transformers.models.vit import ViTImageProcessorPil

    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=size, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=len(labels), id2label=labels,
        label2id={v: k for k, v in labels.items()}, problem_type=problem_type,
    )  # fmt: skip
    model = ViTForImageClassification(config)
    with torch.no_grad():  # random logits far enough apart that labels differ between images
        model.classifier.weight.mul_(40)
    model.save_pretrained(folder, safe_serialization=True)
    ViTImageProcessorPil(size={"height": size, "width": size}, image_mean=list(mean), image_std=list(std)).save_pretrained(folder)
    return folder


def images(n: int = 5) -> list[Image.Image]:
    rng = np.random.default_rng(3)
    out = []
    for i in range(n):
        array = rng.integers(0, 256, size=(40 + 8 * i, 56, 3), dtype=np.uint8)
        out.append(Image.fromarray(array, "RGB"))
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_vit(tmp_path_factory.mktemp("vit"), {0: "normal", 1: "nsfw"})


def reference(folder: Path, pictures) -> list[dict[str, float]]:
    from transformers import pipeline

    classify = pipeline("image-classification", model=str(folder), device="cpu")
    return [{r["label"]: r["score"] for r in classify(p, top_k=None)} for p in pictures]


def test_scores_match_the_transformers_pipeline(tiny: Path) -> None:
    pictures = images()
    ours = ImageClassifier.load(tiny).score(pictures)
    theirs = reference(tiny, pictures)
    for mine, ref in zip(ours, theirs, strict=True):
        assert mine.score == pytest.approx(ref["nsfw"], abs=1e-6)
        assert mine.labels == pytest.approx(ref, abs=1e-6)
    assert max(s.score for s in ours) - min(s.score for s in ours) > 0.05  # the images really differ


def test_preprocessing_follows_the_processor_config(tmp_path: Path) -> None:
    folder = build_tiny_vit(tmp_path / "m", {0: "sfw", 1: "nsfw"}, size=24, mean=(0.2, 0.4, 0.6), std=(0.3, 0.2, 0.1))
    assert json.loads((folder / "preprocessor_config.json").read_text())["size"] == {"height": 24, "width": 24}
    pictures = images(3)
    ours = ImageClassifier.load(folder).score(pictures)
    assert [s.score for s in ours] == pytest.approx([r["nsfw"] for r in reference(folder, pictures)], abs=1e-6)


def test_deterministic_and_batch_equals_single(tiny: Path) -> None:
    classifier = ImageClassifier.load(tiny)
    pictures = images(5)
    batched = [s.score for s in classifier.score(pictures, batch_size=4)]
    single = [classifier.score([p])[0].score for p in pictures]
    assert batched == pytest.approx(single, abs=1e-6)
    assert [s.score for s in ImageClassifier.load(tiny).score(pictures)] == pytest.approx(batched, abs=1e-6)  # a few float32 ulps: another batch shape


def test_png_bytes_and_other_modes(tiny: Path) -> None:
    classifier = ImageClassifier.load(tiny)
    picture = images(1)[0]
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    rgba = picture.convert("RGBA")
    [a, b, c] = classifier.score([picture, buffer.getvalue(), rgba])
    assert a.score == pytest.approx(b.score, abs=1e-7) == pytest.approx(c.score, abs=1e-7)


def test_several_unsafe_labels_add_up(tmp_path: Path) -> None:
    labels = {0: "drawings", 1: "hentai", 2: "neutral", 3: "porn", 4: "sexy"}
    folder = build_tiny_vit(tmp_path / "five", labels)
    [one] = ImageClassifier.load(folder, unsafe_labels=("hentai", "porn", "Sexy")).score(images(1))
    assert one.score == pytest.approx(one.labels["hentai"] + one.labels["porn"] + one.labels["sexy"], abs=1e-6)
    assert sum(one.labels.values()) == pytest.approx(1.0, abs=1e-5)


def test_multi_label_models_use_sigmoid_and_the_highest(tmp_path: Path) -> None:
    folder = build_tiny_vit(tmp_path / "multi", {0: "nudity", 1: "gore", 2: "ok"}, problem_type="multi_label_classification")
    pictures = images(2)
    ours = ImageClassifier.load(folder, unsafe_labels=("nudity", "gore")).score(pictures)
    for mine, ref in zip(ours, reference(folder, pictures), strict=True):
        assert mine.labels == pytest.approx(ref, abs=1e-6)  # the pipeline applies sigmoid here too
        assert mine.score == pytest.approx(max(ref["nudity"], ref["gore"]), abs=1e-6)


def test_missing_folder_files_and_labels(tmp_path: Path, tiny: Path) -> None:
    with pytest.raises(ClassifierError, match=r"the folder .*nowhere does not exist"):
        ImageClassifier.load(tmp_path / "nowhere")
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text((tiny / "config.json").read_text())
    (partial / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ClassifierError, match=r"has no preprocessor_config\.json, model\.safetensors \(only \.safetensors"):
        ImageClassifier.load(partial)
    with pytest.raises(ClassifierError, match=r"'porn' is not a label of .* \(its labels: normal, nsfw\)"):
        ImageClassifier.load(tiny, unsafe_labels=("porn",))
