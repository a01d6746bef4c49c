"""Tiny random-weight UNet and CLIP text encoder, and writers for LoRA / hypernetwork files."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file


@dataclass(frozen=True)
class Tag:
    """Stands in for core.prompt.ExtraNetwork (same three fields)."""

    kind: str
    positional: tuple[str, ...]
    named: dict[str, str] = field(default_factory=dict)


def lora(*items: str, **named: str) -> Tag:
    return Tag("lora", tuple(items), dict(named))


def hypernet(*items: str) -> Tag:
    return Tag("hypernet", tuple(items), {})


def _build_unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    ).eval()


def _build_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(1)
    config = CLIPTextConfig(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=2,
        vocab_size=1000,
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )
    return CLIPTextModel(config).eval()


@pytest.fixture(scope="session")
def _unet_template():
    return _build_unet()


@pytest.fixture(scope="session")
def _te_template():
    return _build_text_encoder()


@pytest.fixture
def unet(_unet_template):
    return copy.deepcopy(_unet_template)


@pytest.fixture
def text_encoder(_te_template):
    return copy.deepcopy(_te_template)


@pytest.fixture(scope="session")
def unet_inputs():
    g = torch.Generator().manual_seed(2)
    return (
        torch.randn(1, 4, 8, 8, generator=g),
        torch.tensor([10]),
        torch.randn(1, 7, 32, generator=g),
    )


@pytest.fixture(scope="session")
def run_unet(unet_inputs) -> Callable:
    @torch.no_grad()
    def run(model):
        sample, t, context = unet_inputs
        return model(sample, t, encoder_hidden_states=context).sample

    return run


@pytest.fixture(scope="session")
def run_te() -> Callable:
    ids = torch.tensor([[0, 5, 17, 99, 400, 2, 1]])

    @torch.no_grad()
    def run(model):
        return model(ids).last_hidden_state

    return run


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_bit_identical(model, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    changed = [k for k in before if not torch.equal(after[k], before[k])]
    assert not changed, f"parameters not restored bit for bit: {changed[:5]}"


UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "ff.net.2", "conv1"]
TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1"]


def peft_lora(model, targets: list[str], *, rank: int = 4, alpha: float = 8.0, seed: int = 3):
    """A PEFT-injected copy of ``model`` (the reference) and its LoRA tensors by module path."""
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, init_lora_weights=False)
    injected = inject_adapter_in_model(config, copy.deepcopy(model)).eval()
    with torch.no_grad():  # keep the update small enough that outputs stay well scaled
        for name, param in injected.named_parameters():
            if "lora_B" in name:
                param.mul_(0.1)
    return injected, get_peft_model_state_dict(injected)


def kohya_tensors(
    peft_sd: dict[str, torch.Tensor], prefix: str, alpha: float | None
) -> dict[str, torch.Tensor]:
    """PEFT tensors renamed the kohya way: ``<prefix><path_with_underscores>.lora_down.weight``."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in peft_sd.items():
        path, part = key.rsplit(".lora_", 1)
        name = prefix + path.replace(".", "_")
        out[f"{name}.lora_down.weight" if part.startswith("A") else f"{name}.lora_up.weight"] = (
            tensor.contiguous()
        )
        if alpha is not None:
            out[f"{name}.alpha"] = torch.tensor(alpha)
    return out


def write_safetensors(
    path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path
