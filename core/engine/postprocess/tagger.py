"""/describe: booru tags for an image from a WD14 v3 tagger (SmilingWolf's ``wd-*-tagger-v3``, Apache-2.0).

A tagger is a folder (its name is the tagger's name) holding ``model.onnx`` and ``selected_tags.csv``, as
the model repositories ship them — or a flat ``NAME.onnx`` beside ``NAME.csv``. Preprocessing is the
reference code's (SmilingWolf's ``wd-tagger`` Space): composite transparency onto white, pad to a square
with white (centred), resize to the model's input side with bicubic, float32 0–255 in BGR order, NHWC.
The model returns a sigmoid probability per row of the CSV; category 9 rows are ratings, 4 characters,
0 general tags. Tags at or above their category's threshold are kept, by score.

As prompt text (what A1111 users paste): characters first, then general tags, each by score; underscores
become spaces except in kaomoji (``^_^``), and brackets are escaped (``\\(``) so A1111 reads them as text.
"""

from __future__ import annotations

import csv
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from core.engine.postprocess.files import PostprocessError, unknown_name_error
from core.engine.postprocess.onnx_models import open_session

RATING, GENERAL, CHARACTER = 9, 0, 4
# The reference code's list: tags whose underscore is part of the face, not a word separator.
KAOMOJI = frozenset({
    "0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3", "6_9", ">_o", "@_@",
    "^_^", "o_o", "u_u", "x_x", "|_|", "||_||",
})
_ESCAPES = str.maketrans({"(": "\\(", ")": "\\)", "[": "\\[", "]": "\\]"})


def prompt_tag(name: str) -> str:
    """A booru tag as A1111 prompt text: ``long_hair`` -> ``long hair``; ``ganyu_(genshin_impact)`` ->
    ``ganyu \\(genshin impact\\)``; kaomoji keep their underscores."""
    text = name if name in KAOMOJI else name.replace("_", " ")
    return text.translate(_ESCAPES)


@dataclass(frozen=True)
class Labels:
    names: tuple[str, ...]
    categories: tuple[int, ...]


def read_labels(path: Path) -> Labels:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        return Labels(tuple(r["name"] for r in rows), tuple(int(r["category"]) for r in rows))
    except (OSError, KeyError, ValueError) as exc:
        raise PostprocessError(f"{path.parent.name}: unreadable selected_tags.csv ({exc})") from None


@dataclass(frozen=True)
class Tags:
    """One image's tags: ``(name, probability)``, highest first."""

    rating: tuple[tuple[str, float], ...]  # every rating, highest first
    characters: tuple[tuple[str, float], ...]
    general: tuple[tuple[str, float], ...]

    def prompt(self, *, characters: bool = True, limit: int = 0) -> str:
        """Prompt text: characters (optionally), then general tags; ``limit`` > 0 keeps that many tags."""
        names = [n for n, _ in self.characters] if characters else []
        names += [n for n, _ in self.general]
        if limit > 0:
            names = names[:limit]
        return ", ".join(prompt_tag(n) for n in names)


def preprocess(image: Image.Image, side: int) -> np.ndarray:
    """1×side×side×3 float32, BGR 0–255: the reference code's preparation."""
    canvas = Image.new("RGBA", image.size, (255, 255, 255, 255))
    canvas.alpha_composite(image.convert("RGBA"))
    rgb = canvas.convert("RGB")
    longest = max(rgb.size)
    square = Image.new("RGB", (longest, longest), (255, 255, 255))
    square.paste(rgb, ((longest - rgb.width) // 2, (longest - rgb.height) // 2))
    if longest != side:
        square = square.resize((side, side), Image.Resampling.BICUBIC)
    array = np.asarray(square, dtype=np.float32)[:, :, ::-1]
    return np.ascontiguousarray(array[None])


class WD14Tagger:
    def __init__(self, name: str, model: Path, labels: Path, *, device: str = "cpu") -> None:
        self.name = name
        self.labels = read_labels(labels)
        self.session = open_session(model, device=device)
        model_input = self.session.get_inputs()[0]
        shape = model_input.shape
        if len(shape) != 4 or not isinstance(shape[1], int) or shape[1] != shape[2] or shape[3] != 3:
            raise PostprocessError(f"{name}: not a WD14 tagger (input shape {shape}, expected N×S×S×3)")
        self.input_name, self.side = model_input.name, int(shape[1])
        outputs = self.session.get_outputs()[0].shape
        if isinstance(outputs[-1], int) and outputs[-1] != len(self.labels.names):
            raise PostprocessError(f"{name}: the model has {outputs[-1]} tags, selected_tags.csv {len(self.labels.names)}")

    def probabilities(self, image: Image.Image) -> np.ndarray:
        output = self.session.run(None, {self.input_name: preprocess(image, self.side)})[0]
        return np.asarray(output, dtype=np.float32)[0]

    def tag(self, image: Image.Image, *, general_threshold: float = 0.35, character_threshold: float = 0.85) -> Tags:
        probs = self.probabilities(image)

        def pick(category: int, threshold: float | None) -> tuple[tuple[str, float], ...]:
            found = [(self.labels.names[i], float(p)) for i, (c, p) in enumerate(zip(self.labels.categories, probs,
                     strict=True)) if c == category and (threshold is None or p >= threshold)]
            return tuple(sorted(found, key=lambda t: -t[1]))

        return Tags(rating=pick(RATING, None), characters=pick(CHARACTER, character_threshold),
                    general=pick(GENERAL, general_threshold))


class Taggers:
    """The taggers of one server (under ``tagger_dirs``), by name, loaded once."""

    def __init__(self, folders: Sequence[str], *, device: str = "cpu") -> None:
        self.folders = tuple(folders)
        self.device = device
        self._loaded: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _files(self) -> dict[str, tuple[Path, Path]]:
        found: dict[str, tuple[Path, Path]] = {}
        for folder in self.folders:
            base = Path(folder).expanduser()
            if not base.is_dir():
                continue
            root = base.resolve()
            for model in sorted(base.glob("*/model.onnx")) + sorted(base.glob("*.onnx")):
                in_folder = model.name == "model.onnx"
                labels = model.parent / "selected_tags.csv" if in_folder else model.with_suffix(".csv")
                name = model.parent.name if in_folder else model.stem
                if labels.is_file() and model.resolve().is_relative_to(root) and labels.resolve().is_relative_to(root):
                    found.setdefault(name, (model.resolve(), labels.resolve()))
        return found

    def names(self) -> list[str]:
        return sorted(self._files(), key=str.lower)

    def get(self, name: str) -> WD14Tagger:
        files = self._files()
        if name not in files:
            raise unknown_name_error("tagger", name, files, self.folders)
        with self._lock:
            if name not in self._loaded:
                self._loaded[name] = WD14Tagger(name, *files[name], device=self.device)
            return self._loaded[name]
