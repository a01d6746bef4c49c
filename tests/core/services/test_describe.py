"""/describe in the service: a tiny WD14-shaped ONNX tagger (tests/core/engine/postprocess/onnx_graphs),
tags above the thresholds in order, as up to four prompts; refusals for missing models and bad images."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.services import UserError
from tests.core.engine.postprocess.onnx_graphs import tagger_like
from tests.core.services.conftest import Harness, actor

# name, category, logit on a white image (spread over the three channels)
TAGS = [
    ("smile", 0, 2.0),
    ("blurry", 0, -1.0),
    ("long_hair", 0, 0.5),
    ("hatsune_miku", 4, 3.0),
    ("general", 9, 1.0),
]


def write_tagger(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    weights = np.tile(np.array([[t[2] / 3 for t in TAGS]], np.float32), (3, 1))
    tagger_like(folder / "model.onnx", weights, side=8)
    lines = ["tag_id,name,category,count"] + [f"{i},{n},{c},100" for i, (n, c, _) in enumerate(TAGS)]
    (folder / "selected_tags.csv").write_text("\n".join(lines) + "\n")
    return folder


def white_png(size=(16, 12)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (255, 255, 255)).save(buf, format="PNG")
    return buf.getvalue()


def with_tagger(h: Harness, folder: Path) -> None:
    post = dataclasses.replace(h.settings.postprocess, tagger_dirs=(str(folder),), tagger="wd-tiny-tagger-v3")
    h.settings = dataclasses.replace(h.settings, postprocess=post)


async def test_describe_gives_the_tags_above_the_thresholds_in_order(tmp_path) -> None:
    write_tagger(tmp_path / "interrogators" / "wd-tiny-tagger-v3")
    h = Harness(tmp_path)
    with_tagger(h, tmp_path / "interrogators")
    try:
        service = await h.open(start=False)
        found = await service.describe(actor(), image=white_png())
        # Characters first, then general tags by score; blurry (0.27) is under the 0.35 threshold.
        assert found.prompts == ("hatsune miku, smile, long hair",)
        assert found.tagger == "wd-tiny-tagger-v3" and [n for n, _ in found.tags] == [
            "hatsune_miku",
            "smile",
            "long_hair",
        ]
        with pytest.raises(UserError, match="one of them"):
            await service.describe(actor(), image=white_png(), job_id=1)
    finally:
        await h.close()


@pytest.mark.parametrize(
    ("image", "words"),
    [(white_png(), "has no tagger models installed"), (b"not an image", "not an image")],
)
async def test_describe_refusals_are_clear(tmp_path, image, words) -> None:
    h = Harness(tmp_path)
    with_tagger(h, tmp_path / "none")
    try:
        service = await h.open(start=False)
        with pytest.raises(UserError) as err:
            await service.describe(actor(), image=image)
        assert words in str(err.value), (err.value.code, str(err.value))
    finally:
        await h.close()
