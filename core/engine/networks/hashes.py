"""A1111's "Lora hashes" and "TI hashes" infotext values (torch-free).

Civitai reads them to link the resources. As A1111 1.10:

- a LoRA is named by the first 12 hex digits of its ``sshs_model_hash`` metadata (kohya writes it when
  training) or else of kohya's "addnet" hash: the sha256 of a ``.safetensors`` file after its header,
  so editing metadata keeps the hash (``NetworkOnDisk``); ``Lora hashes: "name: 0123456789ab, ..."``,
  names as written in the prompt, in activation order, each once;
- a textual-inversion embedding by the first 12 hex digits of the whole file's sha256
  (``create_embedding_from_data``); the list itself is built by ``PromptEncoder``.

``:`` and ``,`` are removed from names. Hashes are cached by path, size and modification time.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections.abc import Iterable
from pathlib import Path

from core.engine.networks.resolve import LORA_EXTS, resolve_network_file
from core.engine.networks.spec import ExtraNetworkLike, parse_networks

_CACHE: dict[tuple[str, str, int, int], str] = {}
_LOCK = threading.Lock()
_REMOVE = str.maketrans("", "", ":,")
_HEX = re.compile(r"[0-9a-fA-F]{12,}")


def _cached(kind: str, path: Path, compute) -> str:
    stat = path.stat()
    key = (kind, str(path), stat.st_size, stat.st_mtime_ns)
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
    value = compute(path)
    with _LOCK:
        _CACHE[key] = value
    return value


def _header(f) -> int:
    header = f.read(8)
    if len(header) != 8:
        raise ValueError(f"{Path(f.name).name} is too short to be a .safetensors file")
    return int.from_bytes(header, "little")


def _addnet(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        f.seek(8 + _header(f))
        for chunk in iter(lambda: f.read(1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()


def addnet_hash(path: Path) -> str:
    """kohya's sha256 of the tensor data of a ``.safetensors`` file (everything after the header)."""
    return _cached("addnet", path, _addnet)


def file_sha256(path: Path) -> str:
    """The sha256 of the whole file (A1111's hash of embeddings and checkpoints)."""
    return _cached("sha256", path, _sha256)


def _metadata_hash(path: Path) -> str:
    """``sshs_model_hash`` from the ``.safetensors`` metadata, or "" (also for a value that is no hash)."""
    with path.open("rb") as f:
        size = _header(f)
        if size > 100 * 1024 * 1024:
            return ""
        try:
            value = json.loads(f.read(size)).get("__metadata__", {}).get("sshs_model_hash", "")
        except (ValueError, AttributeError):
            return ""
    return value if isinstance(value, str) and _HEX.fullmatch(value) else ""


def lora_short_hash(path: Path) -> str:
    """A1111's LoRA short hash: ``sshs_model_hash`` metadata, else the addnet hash; 12 hex digits."""
    return (_cached("sshs", path, _metadata_hash) or addnet_hash(path))[:12]


def lora_hashes_infotext(loras: Iterable[tuple[str, Path]]) -> str | None:
    """``"name: 0123456789ab, other: ..."`` for (name in the prompt, file) pairs, or None when empty."""
    hashes: dict[str, str] = {}
    for name, path in loras:
        alias = name.translate(_REMOVE)
        if alias:
            hashes[alias] = lora_short_hash(path)
    return ", ".join(f"{k}: {v}" for k, v in hashes.items()) or None


def lora_hashes_param(
    networks: Iterable[ExtraNetworkLike], lora_dirs: Iterable[str | os.PathLike[str]]
) -> dict[str, str]:
    """``{"Lora hashes": ...}`` for a prompt's tags (A1111's activation order), or {} without LoRAs."""
    dirs = list(lora_dirs)
    pairs = [
        (spec.name, resolve_network_file(spec.name, dirs, LORA_EXTS, what="LoRA"))
        for spec in parse_networks(networks).loras
    ]
    value = lora_hashes_infotext(pairs)
    return {"Lora hashes": value} if value else {}
