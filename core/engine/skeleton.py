"""Config + tokenizer "skeletons" that let single-file checkpoints load with no network.

The package ships weight-free diffusers config folders for SD1.5, SD2.1 (768-v; the prediction
type is detected per checkpoint by the loader) and SDXL base (``skeletons/``). The
CLIP tokenizer files (``vocab.json`` / ``merges.txt``) are generated once from the BPE vocabulary
that ``core.prompt`` ships (OpenAI's MIT-licensed ``bpe_simple_vocab_16e6.txt.gz``) into a cache
folder, so the package does not carry the vocabulary twice. torch-free.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from core.prompt.tokens import ClipTokenizer

PACKAGE_SKELETONS = Path(__file__).with_name("skeletons")
KINDS = {"sd1": "sd15", "sd2": "sd2", "sdxl": "sdxl"}
_VERSION = "2"


def write_tokenizer(folder: Path, *, pad_token: str = "<|endoftext|>") -> None:
    """Write a complete HF ``CLIPTokenizer`` folder (vocab, merges and configs) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = ClipTokenizer.default()
    merges = [f"{a} {b}" for a, b in tokenizer.merges()]
    (folder / "vocab.json").write_text(json.dumps(tokenizer.vocab(), ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": pad_token,
    }
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")
    config = {
        **special,
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "do_lower_case": True,
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "add_prefix_space": False,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")


def cache_dir() -> Path:
    base = os.environ.get("CHANT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "chant"
    )
    return Path(base)


def skeleton_dir(kind: str) -> Path:
    """A complete config + tokenizer folder for ``kind`` ("sd1" | "sdxl"), created on first use."""
    if kind not in KINDS:
        raise ValueError(f"no config skeleton for model kind {kind!r} (have: {', '.join(sorted(KINDS))})")
    target = cache_dir() / "skeletons" / f"{KINDS[kind]}-v{_VERSION}"
    if (target / "model_index.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        shutil.copytree(PACKAGE_SKELETONS / KINDS[kind], tmp, dirs_exist_ok=True)
        for name in ("tokenizer", "tokenizer_2"):
            if (tmp / name).exists():
                pad = json.loads((tmp / name / "special_tokens_map.json").read_text())["pad_token"]
                write_tokenizer(tmp / name, pad_token=pad)
        try:
            tmp.rename(target)
        except OSError:  # another process made it first
            if not (target / "model_index.json").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
