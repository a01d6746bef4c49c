"""What an extra-network tag asks for, read with A1111's argument rules (no torch here).

``<lora:name:te:unet:dyn>`` (``lyco`` is an alias): positional 1 is the text-encoder multiplier
(default 1.0), positional 2 the UNet multiplier (default: the text-encoder value, after ``te=``),
positional 3 the dynamic dimension; the named items ``te=``, ``unet=``, ``dyn=`` override them.
``<hypernet:name:multiplier>`` reads its raw items: name, then multiplier (default 1.0).
Tags of other kinds are not ours; A1111 skips them with a log line, and so do we.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

LORA_KINDS = ("lora", "lyco")
HYPERNET_KINDS = ("hypernet",)


class ExtraNetworkLike(Protocol):
    kind: str
    positional: tuple[str, ...]
    named: Any  # Mapping[str, str] or a tuple of (key, value) pairs


@dataclass(frozen=True, order=True)
class LoraSpec:
    name: str
    te: float = 1.0
    unet: float = 1.0
    dyn: int | None = None


@dataclass(frozen=True)
class HypernetSpec:
    name: str
    multiplier: float = 1.0


@dataclass(frozen=True)
class NetworkRequest:
    """The networks one job uses: LoRAs in canonical (sorted) order, hypernetworks in prompt order."""

    loras: tuple[LoraSpec, ...] = ()
    hypernets: tuple[HypernetSpec, ...] = ()
    skipped: tuple[str, ...] = ()  # kinds we do not handle, as A1111 skips them
    loras_in_prompt_order: tuple[LoraSpec, ...] = ()  # for the infotext; () means ``loras``

    def __bool__(self) -> bool:
        return bool(self.loras or self.hypernets)


def _tag(net: ExtraNetworkLike) -> str:
    named = _named(net)
    items = [*net.positional, *(f"{k}={v}" for k, v in named.items())]
    return f"<{net.kind}:{':'.join(items)}>"


def _named(net: ExtraNetworkLike) -> dict[str, str]:
    named = net.named
    return dict(named.items()) if isinstance(named, Mapping) else dict(named)


def _number(text: str, what: str, net: ExtraNetworkLike) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{_tag(net)}: {what} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{_tag(net)}: {what} must be a finite number, got {text!r}")
    return value


def parse_lora(net: ExtraNetworkLike) -> LoraSpec:
    """A1111's ``ExtraNetworkLora.activate`` argument rules, with clear errors for bad values."""
    pos, named = net.positional, _named(net)
    if not pos:
        raise ValueError(f"{_tag(net)}: the first argument must be the LoRA name")
    te = _number(pos[1], "text-encoder multiplier", net) if len(pos) > 1 else 1.0
    te = _number(named["te"], "te", net) if "te" in named else te
    unet = _number(pos[2], "UNet multiplier", net) if len(pos) > 2 else te
    unet = _number(named["unet"], "unet", net) if "unet" in named else unet
    dyn_text = named.get("dyn", pos[3] if len(pos) > 3 else None)
    dyn = None
    if dyn_text is not None:
        try:
            dyn = int(dyn_text)
        except ValueError:
            raise ValueError(f"{_tag(net)}: dyn {dyn_text!r} is not a whole number") from None
        if dyn < 1:
            raise ValueError(f"{_tag(net)}: dyn must be at least 1, got {dyn}")
    return LoraSpec(name=pos[0], te=te, unet=unet, dyn=dyn)


def parse_hypernet(net: ExtraNetworkLike) -> HypernetSpec:
    """A1111's ``ExtraNetworkHypernet.activate``: items[0] is the name, items[1] the multiplier."""
    if _named(net):
        raise ValueError(f"{_tag(net)}: a hypernetwork takes a name and a multiplier only")
    pos = net.positional
    if not pos:
        raise ValueError(f"{_tag(net)}: the first argument must be the hypernetwork name")
    multiplier = _number(pos[1], "multiplier", net) if len(pos) > 1 else 1.0
    return HypernetSpec(name=pos[0], multiplier=multiplier)


def parse_networks(networks: Iterable[ExtraNetworkLike]) -> NetworkRequest:
    """Read every tag of one prompt; raises ``ValueError`` naming the bad tag."""
    loras: list[LoraSpec] = []
    hypernets: list[HypernetSpec] = []
    skipped: list[str] = []
    for net in networks:
        if net.kind in LORA_KINDS:
            loras.append(parse_lora(net))
        elif net.kind in HYPERNET_KINDS:
            hypernets.append(parse_hypernet(net))
        else:
            skipped.append(net.kind)
    return NetworkRequest(
        loras=tuple(sorted(loras)),
        hypernets=tuple(hypernets),
        skipped=tuple(skipped),
        loras_in_prompt_order=tuple(loras),
    )


def networks_key(networks: Iterable[ExtraNetworkLike] | NetworkRequest) -> tuple:
    """Hashable key: two jobs may share one denoising loop only when their keys are equal.

    LoRAs are merged in a canonical order, so tag order does not matter for them; hypernetworks
    chain, so their order does. Kinds we do not handle do not change the key.
    """
    request = networks if isinstance(networks, NetworkRequest) else parse_networks(networks)
    return (
        tuple((s.name, s.te, s.unet, s.dyn) for s in request.loras),
        tuple((s.name, s.multiplier) for s in request.hypernets),
    )
