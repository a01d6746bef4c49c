"""One job's extra networks: resolve, load (with a small cache), apply, and take back exactly."""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from core.engine.networks.hypernetwork import Hypernetwork, HypernetworkHooks, load_hypernetwork_file
from core.engine.networks.lora import (
    TEXT_ENCODER,
    TEXT_ENCODER_2,
    UNET,
    LoraUse,
    MergedWeights,
    load_lora_file,
    merge_loras,
)
from core.engine.networks.resolve import HYPERNETWORK_EXTS, LORA_EXTS, resolve_network_file
from core.engine.networks.spec import ExtraNetworkLike, NetworkRequest, networks_key, parse_networks

log = logging.getLogger(__name__)

T = TypeVar("T")


class NetworkCache:
    """LRU of parsed network files (CPU tensors; hypernetworks stay on the device they last ran on).

    Keyed by path, size and modification time, so a replaced file is read again. Thread-safe.
    """

    def __init__(self, max_entries: int = 8) -> None:
        if max_entries < 0:
            raise ValueError(f"max_entries must be >= 0, got {max_entries}")
        self.max_entries = max_entries
        self._items: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, kind: str, path: Path, load: Callable[[Path], T]) -> T:
        try:
            stat = path.stat()
        except OSError as exc:
            raise ValueError(f"cannot read {kind} file {path.name}: {exc.strerror}") from None
        key = (kind, str(path), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
        value = load(path)
        with self._lock:
            self.misses += 1
            if self.max_entries:
                self._items[key] = value
                self._items.move_to_end(key)
                while len(self._items) > self.max_entries:
                    self._items.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


@dataclass
class ActiveNetworks:
    """What :func:`activate_networks` applied for this job."""

    request: NetworkRequest
    loras: list[tuple[str, Path]] = field(default_factory=list)  # (name in the prompt, file), A1111 order
    hypernetworks: list[tuple[str, Path]] = field(default_factory=list)
    activated: list[tuple[str, str]] = field(default_factory=list)  # (kind, name) in the order applied
    lora_layers: dict[str, int] = field(default_factory=dict)  # name -> layers placed
    merged_weights: int = 0  # weights changed (and restored on exit)
    hooked_attentions: int = 0

    @property
    def key(self) -> tuple:
        return networks_key(self.request)


_ACTIVE_ATTR = "_chant_networks_active"


@contextmanager
def activate_networks(
    *,
    unet: nn.Module,
    text_encoders: Sequence[nn.Module | None] = (),
    networks: Iterable[ExtraNetworkLike] | NetworkRequest,
    lora_dirs: Iterable[str | os.PathLike[str]] = (),
    hypernetwork_dirs: Iterable[str | os.PathLike[str]] = (),
    cache: NetworkCache | None = None,
    backup_device: str | torch.device | None = "cpu",
) -> Iterator[ActiveNetworks]:
    """Apply a prompt's ``<lora:…>``/``<lyco:…>``/``<hypernet:…>`` tags for the duration of the block.

    ``text_encoders`` are ``[text_encoder]`` (SD1/SD2) or ``[text_encoder, text_encoder_2]`` (SDXL).
    Every name is resolved and every file read before the model is touched; ``ValueError`` (unknown
    name with the closest names, path escape, unreadable file, LoRA for another model) leaves the
    model as it was. On exit (normal or exception) merged weights are copied back from exact
    backups (on ``backup_device``; None keeps them next to the weight) and hooks are removed.
    Not re-entrant per model: the engine runs one job at a time on a model.
    """
    request = networks if isinstance(networks, NetworkRequest) else parse_networks(networks)
    active = ActiveNetworks(request=request)
    for kind in request.skipped:
        log.info("extra network kind %r is not handled; tag ignored (as A1111 does)", kind)
    if not request:
        yield active
        return
    cache = cache if cache is not None else NetworkCache(max_entries=0)
    lora_dirs, hypernetwork_dirs = list(lora_dirs), list(hypernetwork_dirs)

    # 1. Resolve and read everything; nothing is changed yet.
    paths: dict[str, Path] = {}
    for spec in request.loras:
        if spec.name not in paths:
            paths[spec.name] = resolve_network_file(spec.name, lora_dirs, LORA_EXTS, what="LoRA")
        active.loras.append((spec.name, paths[spec.name]))
    lora_uses = [  # merged in A1111's activation order (float sums follow it)
        LoraUse(spec.name, cache.get("LoRA", paths[spec.name], load_lora_file), spec.te, spec.unet, spec.dyn)
        for spec in request.loras
    ]
    hn_uses: list[tuple[Hypernetwork, float]] = []
    for spec in request.hypernets:
        path = resolve_network_file(spec.name, hypernetwork_dirs, HYPERNETWORK_EXTS, what="hypernetwork")
        hn_uses.append((cache.get("hypernetwork", path, load_hypernetwork_file), spec.multiplier))
        active.hypernetworks.append((spec.name, path))

    # 2. Apply; 3. always take back.
    if getattr(unet, _ACTIVE_ATTR, False):
        raise RuntimeError("extra networks are already active on this model (one job at a time)")
    models: dict[str, nn.Module] = {UNET: unet}
    for component, encoder in zip((TEXT_ENCODER, TEXT_ENCODER_2), text_encoders, strict=False):
        if encoder is not None:
            models[component] = encoder
    merged = MergedWeights(backup_device)
    hooks = HypernetworkHooks()
    setattr(unet, _ACTIVE_ATTR, True)
    try:
        for kind in request.kinds:  # A1111's order; each kind changes its own part of the model
            if kind == "lora":
                active.lora_layers = merge_loras(models, lora_uses, merged)
                active.merged_weights = len(merged)
                active.activated += [("lora", use.name) for use in lora_uses]
            else:
                active.hooked_attentions = hooks.attach(unet, hn_uses)
                if active.hooked_attentions == 0:
                    sizes = sorted({size for hn, _ in hn_uses for size in hn.layers})
                    names = ", ".join(repr(spec.name) for spec in request.hypernets)
                    raise ValueError(
                        f"hypernetwork {names} fits no attention layer of this model "
                        f"(it has layers for widths {sizes})"
                    )
                active.activated += [("hypernet", spec.name) for spec in request.hypernets]
        yield active
    finally:
        hooks.remove()
        merged.restore()
        setattr(unet, _ACTIVE_ATTR, False)


def activate_for_pipeline(
    pipe: Any,
    networks: Iterable[ExtraNetworkLike] | NetworkRequest,
    settings: Any,
    cache: NetworkCache | None = None,
    *,
    backup_device: str | torch.device | None = "cpu",
):
    """:func:`activate_networks` for a diffusers SD1/SD2/SDXL pipeline and ``EngineSettings``."""
    return activate_networks(
        unet=pipe.unet,
        text_encoders=[pipe.text_encoder, getattr(pipe, "text_encoder_2", None)],
        networks=networks,
        lora_dirs=settings.lora_dirs,
        hypernetwork_dirs=settings.hypernetwork_dirs,
        cache=cache,
        backup_device=backup_device,
    )
