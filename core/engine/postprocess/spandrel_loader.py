"""Loading image models (upscalers, face restorers) through spandrel, safely.

spandrel (MIT) recognises an architecture from a state dict's keys and builds the module, as A1111 1.8+
does with ``modelloader.load_spandrel_model``. Its own file loader is not used: it opens ``.pt`` files
with ``torch.jit.load`` (TorchScript archives) and ``.pth`` with a pickle allow-list of its own. chant
reads the state dict itself — ``.safetensors`` always, pickles only when the operator allows them and
then only through ``torch.load(weights_only=True)``, which cannot run pickled code — and hands spandrel
the tensors.

spandrel imports torchvision when it is imported, for two architectures chant does not offer (LaMa
inpainting and RestoreFormer). PyPI's torchvision wheel is built against CUDA torch and fails to import
beside the CPU torch wheel, so where torchvision cannot be imported a stand-in module satisfies those two
imports while spandrel loads and is removed again right after (nothing else sees it).
"""

from __future__ import annotations

import enum
import sys
import threading
import types
from pathlib import Path
from typing import Any

import torch

from core.engine.postprocess.files import PostprocessError, check_weights_file

_import_lock = threading.Lock()
_TORCHVISION_SHIM = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")
EXTRA_ARCHES_PACKAGE = "spandrel_extra_arches"


def _torchvision_imports() -> bool:
    try:
        import torchvision.transforms.functional  # noqa: F401
    except Exception:
        # Installed but broken (CUDA wheel beside CPU torch): drop the half-imported modules.
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        return False
    return True


def _needs_torchvision(*_args: Any, **_kwargs: Any) -> Any:
    raise PostprocessError("this model architecture needs torchvision, which is not installed here")


def _shim_modules() -> dict[str, types.ModuleType]:
    functional = types.ModuleType("torchvision.transforms.functional")
    functional.normalize = _needs_torchvision  # type: ignore[attr-defined]
    functional.rotate = _needs_torchvision  # type: ignore[attr-defined]
    functional.InterpolationMode = enum.Enum(  # type: ignore[attr-defined]
        "InterpolationMode", {"NEAREST": "nearest", "BILINEAR": "bilinear", "BICUBIC": "bicubic"}
    )
    transforms = types.ModuleType("torchvision.transforms")
    transforms.functional = functional  # type: ignore[attr-defined]
    root = types.ModuleType("torchvision")
    root.transforms = transforms  # type: ignore[attr-defined]
    return dict(zip(_TORCHVISION_SHIM, (root, transforms, functional), strict=True))


def import_spandrel() -> types.ModuleType:
    """``spandrel``, with the extra (non-commercial) architectures added when the operator installed them."""
    with _import_lock:
        if "spandrel" in sys.modules:
            return sys.modules["spandrel"]
        shim = {} if _torchvision_imports() else _shim_modules()
        sys.modules.update(shim)
        try:
            import spandrel
        except ModuleNotFoundError as exc:
            raise PostprocessError("spandrel is not installed on this server (pip install spandrel)") from exc
        finally:
            for name, module in shim.items():
                if sys.modules.get(name) is module:
                    del sys.modules[name]
        try:
            import spandrel_extra_arches  # type: ignore[import-not-found]
        except ImportError:
            pass
        else:
            spandrel_extra_arches.install()
        return spandrel


def has_extra_arches() -> bool:
    """Whether spandrel's extra architectures (CodeFormer and others, some non-commercial) are installed."""
    import importlib.util

    return importlib.util.find_spec(EXTRA_ARCHES_PACKAGE) is not None


def read_state_dict(path: Path, *, allow_pickle: bool) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, read without running any pickled code."""
    check_weights_file(path, allow_pickle)
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:
            raise PostprocessError(f"{path.name}: not a readable .safetensors file ({exc})") from None
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        # weights_only refuses any global outside torch's tensor allow-list: this is where a malicious
        # pickle stops, before any of its code runs.
        raise PostprocessError(
            f"{path.name}: refused, it is not a plain tensor file and could run code if unpickled "
            f"(convert it to .safetensors); {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        ) from None
    if not isinstance(state, dict):
        raise PostprocessError(f"{path.name}: does not hold a state dict")
    return state


def descriptor_from_state_dict(state: dict[str, Any], *, name: str) -> Any:
    """spandrel's model descriptor (``ImageModelDescriptor``) for a state dict, in eval mode on the CPU."""
    spandrel = import_spandrel()
    state = spandrel.canonicalize_state_dict(state)
    try:
        descriptor = spandrel.MAIN_REGISTRY.load(state)
    except spandrel.UnsupportedModelError:
        raise PostprocessError(f"{name}: not a model architecture chant can load (spandrel does not know it)") from None
    except (KeyError, RuntimeError, ValueError) as exc:
        raise PostprocessError(f"{name}: the weights do not fit the detected architecture ({exc})") from None
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise PostprocessError(f"{name}: a {descriptor.architecture.name} model is not an image-to-image model")
    return descriptor.eval()


def load_descriptor(path: Path, *, allow_pickle: bool) -> Any:
    return descriptor_from_state_dict(read_state_dict(path, allow_pickle=allow_pickle), name=path.stem)


def pick_dtype(descriptor: Any, device: torch.device) -> torch.dtype:
    """fp16 on CUDA where the architecture supports it, else bf16 where it does (SwinIR, DAT, HAT), else fp32.

    On a CPU always fp32 (half-precision convolutions there are slow or missing).
    """
    if device.type != "cuda":
        return torch.float32
    if descriptor.supports_half:
        return torch.float16
    if descriptor.supports_bfloat16 and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32
