"""A1111's "Lora hashes" infotext value (torch-free).

A1111 names a LoRA in the PNG parameters by the first 12 hex digits of kohya's "addnet" hash: the
sha256 of a ``.safetensors`` file after its header (so editing metadata keeps the hash). Civitai
reads it to link the resource. Hashes are cached by path, size and modification time.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable
from pathlib import Path

_CACHE: dict[tuple[str, int, int], str] = {}
_LOCK = threading.Lock()
_REMOVE = str.maketrans("", "", ":,")


def addnet_hash(path: Path) -> str:
    """kohya's sha256 of the tensor data of a ``.safetensors`` file (everything after the header)."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
    digest = hashlib.sha256()
    with path.open("rb") as f:
        header = f.read(8)
        if len(header) != 8:
            raise ValueError(f"{path.name} is too short to be a .safetensors file")
        f.seek(8 + int.from_bytes(header, "little"))
        for chunk in iter(lambda: f.read(1024 * 1024), b""):
            digest.update(chunk)
    value = digest.hexdigest()
    with _LOCK:
        _CACHE[key] = value
    return value


def lora_hashes_infotext(loras: Iterable[tuple[str, Path]]) -> str | None:
    """``"name: 0123456789ab, other: ..."`` for (name in the prompt, file) pairs, or None when empty.

    As A1111's ``ExtraNetworkLora.activate``: ``:`` and ``,`` are removed from names, and a name
    used twice appears once.
    """
    hashes: dict[str, str] = {}
    for name, path in loras:
        alias = name.translate(_REMOVE)
        if alias:
            hashes[alias] = addnet_hash(path)[:12]
    return ", ".join(f"{k}: {v}" for k, v in hashes.items()) or None
