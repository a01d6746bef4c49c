from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.engine.postprocess.files import PostprocessError
from core.engine.postprocess.tagger import Taggers, preprocess, prompt_tag
from tests.core.engine.postprocess.onnx_graphs import tagger_like

# name, category, logit on a white image (spread over the three channels)
TAGS = [
    ("smile", 0, 2.0),
    ("blurry", 0, -1.0),
    ("long_hair", 0, 0.5),
    ("hatsune_miku", 4, 3.0),
    ("ganyu_(genshin_impact)", 4, 1.0),
    ("general", 9, 1.0),
    ("explicit", 9, -2.0),
    ("^_^", 0, 1.5),
    ("hat_[bow]", 0, 0.0),
]


def _write_tagger(folder: Path, side: int = 8, weights: np.ndarray | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if weights is None:
        weights = np.tile(np.array([[t[2] / 3 for t in TAGS]], np.float32), (3, 1))
    tagger_like(folder / "model.onnx", weights, side=side)
    lines = ["tag_id,name,category,count"] + [f"{i},{n},{c},100" for i, (n, c, _) in enumerate(TAGS)]
    (folder / "selected_tags.csv").write_text("\n".join(lines) + "\n")
    return folder


def _sigmoid(x: float) -> float:
    return float(1 / (1 + np.exp(-x)))


def test_preprocess_pads_white_centred_and_feeds_bgr_0_255() -> None:
    image = Image.new("RGBA", (4, 2), (255, 0, 0, 255))
    image.putpixel((0, 0), (0, 0, 0, 0))  # transparent: composited onto white
    array = preprocess(image, 4)
    assert array.shape == (1, 4, 4, 3) and array.dtype == np.float32
    assert array[0, 0].tolist() == [[255.0] * 3] * 4  # padding row above
    assert array[0, 3].tolist() == [[255.0] * 3] * 4  # and below (centred)
    assert array[0, 1, 0].tolist() == [255.0, 255.0, 255.0]  # the transparent pixel
    assert array[0, 1, 1].tolist() == [0.0, 0.0, 255.0]  # red, in BGR order
    assert preprocess(Image.new("RGB", (30, 20)), 8).shape == (1, 8, 8, 3)  # resized to the model's side


def test_tags_above_thresholds_come_out_in_score_order(tmp_path: Path) -> None:
    _write_tagger(tmp_path / "wd-tiny-tagger-v3")
    tagger = Taggers([str(tmp_path)]).get("wd-tiny-tagger-v3")
    tags = tagger.tag(Image.new("RGB", (16, 10), (255, 255, 255)), general_threshold=0.35, character_threshold=0.85)
    assert [n for n, _ in tags.general] == ["smile", "^_^", "long_hair", "hat_[bow]"]  # blurry: 0.27 < 0.35
    assert tags.general[0][1] == pytest.approx(_sigmoid(2.0), abs=1e-5)
    assert [n for n, _ in tags.characters] == ["hatsune_miku"]  # ganyu: 0.73 < 0.85
    assert [n for n, _ in tags.rating] == ["general", "explicit"]
    assert tags.prompt() == "hatsune miku, smile, ^_^, long hair, hat \\[bow\\]"
    assert tags.prompt(characters=False, limit=2) == "smile, ^_^"
    lower = tagger.tag(Image.new("RGB", (16, 10), (255, 255, 255)), general_threshold=0.6, character_threshold=0.7)
    assert [n for n, _ in lower.general] == ["smile", "^_^", "long_hair"]
    assert [n for n, _ in lower.characters] == ["hatsune_miku", "ganyu_(genshin_impact)"]
    assert lower.prompt().startswith("hatsune miku, ganyu \\(genshin impact\\), smile")


def test_the_model_sees_bgr(tmp_path: Path) -> None:
    weights = np.zeros((3, len(TAGS)), np.float32)
    weights[0, 0] = 4.0  # tag 0 reads channel 0 only: blue, in BGR
    tagger = Taggers([str(tmp_path)]).get(_write_tagger(tmp_path / "t", weights=weights).name)
    blue = tagger.probabilities(Image.new("RGB", (8, 8), (0, 0, 255)))
    red = tagger.probabilities(Image.new("RGB", (8, 8), (255, 0, 0)))
    assert blue[0] == pytest.approx(_sigmoid(4.0), abs=1e-5) and red[0] == pytest.approx(0.5, abs=1e-6)


def test_prompt_tag_rules() -> None:
    assert prompt_tag("long_hair") == "long hair"
    assert prompt_tag("^_^") == "^_^" and prompt_tag("(o)_(o)") == "(o)_(o)".translate(str.maketrans({"(": "\\(", ")": "\\)"}))
    assert prompt_tag("ganyu_(genshin_impact)") == "ganyu \\(genshin impact\\)"


def test_flat_layout_unknown_names_and_mismatched_files(tmp_path: Path) -> None:
    folder = _write_tagger(tmp_path / "src")
    flat = tmp_path / "interrogators"
    flat.mkdir()
    (flat / "wd-flat.onnx").write_bytes((folder / "model.onnx").read_bytes())
    (flat / "wd-flat.csv").write_text((folder / "selected_tags.csv").read_text())
    (flat / "orphan.onnx").write_bytes(b"x")  # no CSV: not listed
    taggers = Taggers([str(flat)])
    assert taggers.names() == ["wd-flat"]
    with pytest.raises(PostprocessError, match=r"unknown tagger 'wd-vit-tagger-v3' \(known: wd-flat\)"):
        taggers.get("wd-vit-tagger-v3")
    (flat / "wd-flat.csv").write_text("tag_id,name,category,count\n0,a,0,1\n")
    with pytest.raises(PostprocessError, match=r"the model has 9 tags, selected_tags\.csv 1"):
        Taggers([str(flat)]).get("wd-flat")
