"""A1111 hypernetworks (``<hypernet:name:multiplier>``): ``.pt`` files, read with ``weights_only=True``.

The file (A1111's ``Hypernetwork.save``) is a dict: integer keys (context widths such as 768, 320,
640, 1280) map to a pair of ``nn.Sequential`` state dicts, one for keys and one for values, plus
``layer_structure`` (default ``[1, 2, 1]``), ``activation_func``, ``is_layer_norm``,
``use_dropout``/``dropout_structure``/``last_layer_dropout`` (they shift the layer indices),
``activate_output`` (default True), ``name``, ``step``...

A1111 applies them in every ``CrossAttention`` of the UNet: ``context`` (the text for attn2, the
hidden states themselves for attn1) becomes ``context + hn(context) * multiplier`` before ``to_k``
and ``to_v``, picked by the context's width, several hypernetworks one after another. We do the
same with forward pre-hooks on ``to_k``/``to_v``; removing the hooks leaves the model untouched.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    name.lower(): cls
    for name, cls in inspect.getmembers(torch.nn.modules.activation, inspect.isclass)
    if cls.__module__ == "torch.nn.modules.activation"
}
_ACTIVATIONS.update(
    {
        "linear": nn.Identity,
        "relu": nn.ReLU,
        "leakyrelu": nn.LeakyReLU,
        "elu": nn.ELU,
        "swish": nn.Hardswish,
        "tanh": nn.Tanh,
        "sigmoid": nn.Sigmoid,
    }
)
_OLD_NAMES = {
    "linear1.weight": "linear.0.weight",
    "linear1.bias": "linear.0.bias",
    "linear2.weight": "linear.1.weight",
    "linear2.bias": "linear.1.bias",
}


def _dropout_structure(
    layer_structure: Sequence[float], use_dropout: bool, last_layer_dropout: bool
) -> list[float]:
    """A1111's ``parse_dropout_structure``."""
    if not use_dropout:
        return [0.0] * len(layer_structure)
    values = [0.0, *([0.3] * (len(layer_structure) - 3))]
    values.append(0.3 if last_layer_dropout else 0.0)
    values.append(0.0)
    return values


class HypernetworkModule(nn.Module):
    """A1111's ``HypernetworkModule`` in eval mode: ``x + linear(x) * multiplier``."""

    def __init__(
        self,
        dim: int,
        layer_structure: Sequence[float],
        activation: str | None,
        layer_norm: bool,
        activate_output: bool,
        dropout: Sequence[float],
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        last = len(layer_structure) - 2
        for i in range(len(layer_structure) - 1):
            width = int(dim * layer_structure[i + 1])
            layers.append(nn.Linear(int(dim * layer_structure[i]), width))
            if not (activation in (None, "linear") or (i >= last and not activate_output)):
                layers.append(_ACTIVATIONS[activation]())
            if layer_norm:
                layers.append(nn.LayerNorm(width))
            if dropout[i + 1] > 0:
                layers.append(nn.Dropout(p=float(dropout[i + 1])))
        self.linear = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, multiplier: float = 1.0) -> torch.Tensor:
        return x + self.linear(x) * multiplier


@dataclass
class Hypernetwork:
    name: str
    path: Path
    layers: dict[int, tuple[HypernetworkModule, HypernetworkModule]]

    @property
    def nbytes(self) -> int:
        return sum(
            p.numel() * p.element_size()
            for pair in self.layers.values()
            for m in pair
            for p in m.parameters()
        )


def _fail(path: Path, why: str) -> ValueError:
    return ValueError(f"hypernetwork file {path.name} has a layout chant cannot read: {why}")


def hypernetwork_from_dict(path: Path, data: object) -> Hypernetwork:
    """Build the modules from a loaded A1111 dict; ``ValueError`` for anything else."""
    if not isinstance(data, dict):
        raise _fail(path, f"expected a dict, found {type(data).__name__}")
    structure = data.get("layer_structure") or [1, 2, 1]
    if (
        not isinstance(structure, (list, tuple))
        or len(structure) < 2
        or not all(isinstance(v, (int, float)) and v > 0 for v in structure)
        or structure[0] != 1
        or structure[-1] != 1
    ):
        raise _fail(path, f"layer_structure {structure!r} must start and end with 1")
    activation = data.get("activation_func")
    if activation is not None and activation not in _ACTIVATIONS:
        raise _fail(path, f"unknown activation function {activation!r}")
    dropout = data.get("dropout_structure")
    use_dropout = bool(dropout and any(dropout)) or bool(data.get("use_dropout", False))
    if dropout is None:
        dropout = _dropout_structure(structure, use_dropout, bool(data.get("last_layer_dropout", False)))
    if len(dropout) != len(structure):
        raise _fail(path, "dropout_structure and layer_structure differ in length")
    options = {
        "layer_structure": structure,
        "activation": activation,
        "layer_norm": bool(data.get("is_layer_norm", False)),
        "activate_output": bool(data.get("activate_output", True)),
        "dropout": dropout,
    }
    layers: dict[int, tuple[HypernetworkModule, HypernetworkModule]] = {}
    for size, pair in data.items():
        if not isinstance(size, int) or isinstance(size, bool):
            continue
        if (
            not isinstance(pair, (list, tuple))
            or len(pair) != 2
            or not all(isinstance(sd, dict) for sd in pair)
        ):
            raise _fail(path, f"entry {size} is not a pair of state dicts")
        if size < 1 or any(int(size * f) < 1 for f in structure):
            raise _fail(path, f"layer_structure {structure!r} gives an empty layer for width {size}")
        modules = []
        for sd in pair:
            try:
                module = HypernetworkModule(size, **options)
            except (TypeError, ValueError, RuntimeError) as exc:  # e.g. an activation that needs arguments
                raise _fail(path, f"cannot build its layers ({exc})") from None
            state = {_OLD_NAMES.get(k, k): v for k, v in sd.items()}
            try:
                module.load_state_dict(state, strict=True)
            except RuntimeError as exc:
                first = str(exc).splitlines()[0]
                raise _fail(path, f"entry {size} does not match its layer_structure ({first})") from None
            module.eval().requires_grad_(False)
            modules.append(module)
        layers[size] = (modules[0], modules[1])
    if not layers:
        raise _fail(path, "no layers (no integer context-width keys)")
    name = data.get("name")
    return Hypernetwork(name=name if isinstance(name, str) else path.stem, path=path, layers=layers)


def load_hypernetwork_file(path: Path) -> Hypernetwork:
    """``torch.load(weights_only=True)``; files needing arbitrary pickles are refused."""
    if path.suffix.lower() != ".pt":
        raise ValueError(f"{path.name}: hypernetworks are .pt files")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, zip errors, EOF... all mean "not readable safely"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(
            f"cannot read hypernetwork {path.name} safely (torch.load weights_only=True refused it: {reason})"
        ) from None
    return hypernetwork_from_dict(path, data)


class HypernetworkHooks:
    """Forward pre-hooks on ``to_k``/``to_v`` of every attention module of a UNet."""

    def __init__(self) -> None:
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __len__(self) -> int:
        return len(self._handles)

    def remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()

    @torch.no_grad()
    def attach(self, unet: nn.Module, uses: Sequence[tuple[Hypernetwork, float]]) -> int:
        """Hook ``uses`` (hypernetwork, multiplier) into ``unet``; returns the number of hooked attentions."""
        device = next(unet.parameters()).device
        for hn, _ in uses:
            for pair in hn.layers.values():
                for module in pair:
                    module.to(device=device, dtype=torch.float32)
        count = 0
        for module in unet.modules():
            to_k, to_v = getattr(module, "to_k", None), getattr(module, "to_v", None)
            if not isinstance(to_k, nn.Linear) or not isinstance(to_v, nn.Linear):
                continue
            width = to_k.in_features
            k_chain = [(hn.layers[width][0], m) for hn, m in uses if width in hn.layers]
            v_chain = [(hn.layers[width][1], m) for hn, m in uses if width in hn.layers]
            if not k_chain:
                continue
            if getattr(module, "fused_projections", False):
                self.remove()
                raise ValueError(
                    "hypernetworks need unfused attention projections (fuse_qkv_projections is on)"
                )
            self._handles.append(to_k.register_forward_pre_hook(_pre_hook(k_chain)))
            self._handles.append(to_v.register_forward_pre_hook(_pre_hook(v_chain)))
            count += 1
        return count


def _pre_hook(chain: list[tuple[HypernetworkModule, float]]):
    def hook(_module: nn.Module, args: tuple) -> tuple:
        context = args[0]
        for hn, multiplier in chain:
            # A1111: cond_cast_unet(hn(cond_cast_float(context))), one hypernetwork after another,
            # hn(x) = x + linear(x) * multiplier
            x = context.to(torch.float32)
            context = (x + hn.linear(x) * multiplier).to(args[0].dtype)
        return (context, *args[1:])

    return hook
