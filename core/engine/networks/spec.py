"""What an extra-network tag asks for, read with A1111's argument rules (no torch here).

``<lora:name:te:unet:dyn>`` (``lyco`` is an alias): positional 1 is the text-encoder multiplier
(default 1.0), positional 2 the UNet multiplier (default: the text-encoder value, after ``te=``),
positional 3 the dynamic dimension; the named items ``te=``, ``unet=``, ``dyn=`` override them.
``<hypernet:name:multiplier>`` reads its raw items: name, then multiplier (default 1.0).
Tags of other kinds are not ours; A1111 skips them with a log line, and so do we.

Activation order is A1111's: it collects a prompt's tags in a dict of lists keyed by tag kind (in the
order each kind first appears), then gives each extra network its lists, ``lora`` and its alias
``lyco`` together. So ``a <lora:foo:1> b <hypernet:h:0.3> c <lora:bar:0.2>`` activates LoRAs foo and
bar, then hypernetwork h; ``<lora:x> <lyco:y> <lora:z>`` merges x, z, then y. LoRA updates are
added in that order, so it is part of the batching key.
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
    """The networks one job uses, each kind in A1111's activation order (see the module docstring)."""

    loras: tuple[LoraSpec, ...] = ()
    hypernets: tuple[HypernetSpec, ...] = ()
    skipped: tuple[str, ...] = ()  # kinds we do not handle, as A1111 skips them
    kinds: tuple[str, ...] = ()  # "lora" / "hypernet" in the order A1111 activates them

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


def grouped_by_kind(networks: Iterable[ExtraNetworkLike]) -> dict[str, list[ExtraNetworkLike]]:
    """A1111's activation groups: ``{"lora": [...], "hypernet": [...], other kind: [...]}``.

    Tags are first listed per kind in the order each kind appears, then ``lyco`` joins ``lora``
    (A1111's ``lookup_extra_networks``): the group sits where lora or lyco first appeared, and holds
    the first-seen spelling's tags before the other's.
    """
    by_kind: dict[str, list[ExtraNetworkLike]] = {}
    for net in networks:
        by_kind.setdefault(net.kind, []).append(net)
    groups: dict[str, list[ExtraNetworkLike]] = {}
    for kind, nets in by_kind.items():
        groups.setdefault(LORA_KINDS[0] if kind in LORA_KINDS else kind, []).extend(nets)
    return groups


def parse_networks(networks: Iterable[ExtraNetworkLike]) -> NetworkRequest:
    """Read every tag of one prompt; raises ``ValueError`` naming the bad tag."""
    groups = grouped_by_kind(networks)
    loras = tuple(parse_lora(net) for net in groups.get("lora", ()))
    hypernets = tuple(parse_hypernet(net) for net in groups.get("hypernet", ()))
    skipped = tuple(
        net.kind for kind, nets in groups.items() if kind not in ("lora", "hypernet") for net in nets
    )
    kinds = tuple(kind for kind in groups if kind in ("lora", "hypernet"))
    return NetworkRequest(loras=loras, hypernets=hypernets, skipped=skipped, kinds=kinds)


def networks_key(networks: Iterable[ExtraNetworkLike] | NetworkRequest) -> tuple:
    """Hashable key: two jobs may share one denoising loop only when their keys are equal.

    LoRA updates are added in activation order (float rounding follows it) and hypernetworks chain,
    so both orders are part of the key. Kinds we do not handle do not change the key.
    """
    request = networks if isinstance(networks, NetworkRequest) else parse_networks(networks)
    return (
        tuple((s.name, s.te, s.unet, s.dyn) for s in request.loras),
        tuple((s.name, s.multiplier) for s in request.hypernets),
    )
