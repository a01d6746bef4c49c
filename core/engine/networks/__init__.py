"""Extra networks for one job: ``<lora:…>`` (alias ``<lyco:…>``) and ``<hypernet:…>``.

Usage in the engine::

    with activate_networks(unet=pipe.unet, text_encoders=[pipe.text_encoder], networks=interp.networks,
                           lora_dirs=settings.lora_dirs, hypernetwork_dirs=settings.hypernetwork_dirs,
                           cache=self._network_cache):
        ...  # encode the prompt, then sample

    # or, for a diffusers pipeline and EngineSettings:
    with activate_for_pipeline(pipe, interp.networks, settings, self._network_cache):
        ...

Importing this package loads no torch: name resolution, listing (autocomplete) and tag parsing are
torch-free; :func:`activate_networks`, :func:`activate_for_pipeline`, :class:`NetworkCache` and
:class:`ActiveNetworks` load ``activate.py`` (and torch) on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from core.engine.networks.hashes import (
    addnet_hash,
    file_sha256,
    lora_hashes_infotext,
    lora_hashes_param,
    lora_short_hash,
)
from core.engine.networks.resolve import (
    check_extra_networks,
    check_network_name,
    list_network_files,
    list_networks,
    resolve_network_file,
)
from core.engine.networks.spec import (
    HYPERNET_KINDS,
    LORA_KINDS,
    HypernetSpec,
    LoraSpec,
    NetworkRequest,
    networks_key,
    parse_hypernet,
    parse_lora,
    parse_networks,
)

if TYPE_CHECKING:
    from core.engine.networks.activate import (
        ActiveNetworks,
        NetworkCache,
        activate_for_pipeline,
        activate_networks,
    )

__all__ = [
    "HYPERNET_KINDS",
    "LORA_KINDS",
    "ActiveNetworks",
    "HypernetSpec",
    "LoraSpec",
    "NetworkCache",
    "NetworkRequest",
    "activate_for_pipeline",
    "activate_networks",
    "addnet_hash",
    "check_extra_networks",
    "check_network_name",
    "file_sha256",
    "list_network_files",
    "list_networks",
    "lora_hashes_infotext",
    "lora_hashes_param",
    "lora_short_hash",
    "networks_key",
    "parse_hypernet",
    "parse_lora",
    "parse_networks",
    "resolve_network_file",
]

_LAZY = {"ActiveNetworks", "NetworkCache", "activate_for_pipeline", "activate_networks"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from core.engine.networks import activate

        return getattr(activate, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
