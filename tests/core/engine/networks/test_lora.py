"""LoRA: both file layouts against a PEFT reference, multipliers, several at once, exact removal."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from core.engine.networks import NetworkCache, activate_networks
from core.engine.networks.lora import load_lora_file, module_index
from tests.core.engine.networks.conftest import (
    TE_TARGETS,
    UNET_TARGETS,
    Tag,
    assert_bit_identical,
    kohya_tensors,
    lora,
    peft_lora,
    snapshot,
    write_safetensors,
)

TOL = {"atol": 2e-5, "rtol": 1e-4}


@dataclass(frozen=True)
class Library:
    """Two LoRA files made from one PEFT adapter (rank 4, alpha 8 -> scale 2) and its outputs."""

    root: Path
    unet_layers: int
    te_layers: int
    expected_unet: torch.Tensor  # PEFT-injected UNet output
    expected_te: torch.Tensor  # PEFT-injected text encoder output


@pytest.fixture(scope="session")
def library(tmp_path_factory, _unet_template, _te_template, run_unet, run_te) -> Library:
    ref_unet, unet_sd = peft_lora(_unet_template, UNET_TARGETS, seed=3)
    ref_te, te_sd = peft_lora(_te_template, TE_TARGETS, seed=4)
    root = tmp_path_factory.mktemp("lora_library")
    kohya = {
        **kohya_tensors(unet_sd, "lora_unet_", alpha=8.0),
        # kohya names text-encoder layers after transformers 4's CLIPTextModel (``text_model.``)
        **kohya_tensors(te_sd, "lora_te_text_model_", alpha=8.0),
    }
    write_safetensors(root / "kohya_style.safetensors", kohya)
    tensors = {f"unet.{k}": v for k, v in unet_sd.items()}
    tensors.update({f"text_encoder.{k}": v for k, v in te_sd.items()})
    adapter = {"unet.r": 4, "unet.lora_alpha": 8, "text_encoder.r": 4, "text_encoder.lora_alpha": 8}
    metadata = {"format": "pt", "lora_adapter_metadata": json.dumps(adapter)}
    write_safetensors(root / "sub" / "peft_style.safetensors", tensors, metadata)
    return Library(root, len(unet_sd) // 2, len(te_sd) // 2, run_unet(ref_unet), run_te(ref_te))


@pytest.fixture
def lora_dir(tmp_path: Path, library: Library) -> Path:
    """A fresh copy of the library per test (tests add files and links to it)."""
    return Path(shutil.copytree(library.root, tmp_path / "Lora"))


@pytest.fixture
def kohya_file(lora_dir: Path) -> Path:
    return lora_dir / "kohya_style.safetensors"


@pytest.fixture
def diffusers_file(lora_dir: Path) -> Path:
    return lora_dir / "sub" / "peft_style.safetensors"


def _activate(unet, te, lora_dir, *tags, **kwargs):
    return activate_networks(
        unet=unet, text_encoders=[te], networks=list(tags), lora_dirs=[lora_dir], **kwargs
    )


@pytest.mark.parametrize("fixture", ["kohya_file", "diffusers_file"])
def test_lora_matches_the_peft_reference_and_is_removed_exactly(
    request, fixture, unet, text_encoder, library, run_unet, run_te, lora_dir
) -> None:
    path = request.getfixturevalue(fixture)
    layers = library.unet_layers + library.te_layers
    base_unet, base_te = run_unet(unet), run_te(text_encoder)
    before_unet, before_te = snapshot(unet), snapshot(text_encoder)
    expected_unet, expected_te = library.expected_unet, library.expected_te
    assert not torch.allclose(expected_unet, base_unet, atol=1e-3)
    assert not torch.allclose(expected_te, base_te, atol=1e-3)

    with _activate(unet, text_encoder, lora_dir, lora(path.stem)) as active:
        torch.testing.assert_close(run_unet(unet), expected_unet, **TOL)
        torch.testing.assert_close(run_te(text_encoder), expected_te, **TOL)
        assert active.lora_layers == {path.stem: layers}
        assert active.merged_weights == layers > 30

    assert_bit_identical(unet, before_unet)
    assert_bit_identical(text_encoder, before_te)
    assert torch.equal(run_unet(unet), base_unet)
    assert torch.equal(run_te(text_encoder), base_te)


def test_multiplier_zero_changes_nothing(unet, text_encoder, kohya_file, run_unet, run_te, lora_dir) -> None:
    base_unet, base_te = run_unet(unet), run_te(text_encoder)
    with _activate(unet, text_encoder, lora_dir, lora("kohya_style", "0")) as active:
        assert torch.equal(run_unet(unet), base_unet)
        assert torch.equal(run_te(text_encoder), base_te)
        assert active.merged_weights == 0


def test_te_and_unet_multipliers_reach_only_their_model(
    unet, text_encoder, kohya_file, library, run_unet, run_te, lora_dir
) -> None:
    base_unet, base_te = run_unet(unet), run_te(text_encoder)
    with _activate(unet, text_encoder, lora_dir, lora("kohya_style", "1", "0")):
        assert torch.equal(run_unet(unet), base_unet)
        torch.testing.assert_close(run_te(text_encoder), library.expected_te, **TOL)
    with _activate(unet, text_encoder, lora_dir, lora("kohya_style", te="0", unet="1")):
        torch.testing.assert_close(run_unet(unet), library.expected_unet, **TOL)
        assert torch.equal(run_te(text_encoder), base_te)


def test_multiplier_scales_the_weight_update(unet, text_encoder, kohya_file, lora_dir) -> None:
    w = unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_k.weight
    base = w.detach().clone()
    with _activate(unet, text_encoder, lora_dir, lora("kohya_style", "1")):
        full = w.detach() - base
    with _activate(unet, text_encoder, lora_dir, lora("kohya_style", "1", "-0.5")):
        half = w.detach() - base
    assert full.abs().max() > 1e-3
    torch.testing.assert_close(half, full * -0.5, atol=1e-6, rtol=1e-4)


def test_two_loras_add_their_updates(
    unet, text_encoder, kohya_file, diffusers_file, run_unet, lora_dir
) -> None:
    before = snapshot(unet)
    base = run_unet(unet)
    deltas = {}
    for tags in (
        [lora("kohya_style", "0.7")],
        [lora("peft_style", "0.4")],
        [lora("peft_style", "0.4"), lora("kohya_style", "0.7")],
    ):
        with _activate(unet, text_encoder, lora_dir, *tags):
            deltas[len(deltas)] = {k: v - before[k] for k, v in unet.state_dict().items()}
            out = run_unet(unet)
        assert not torch.allclose(out, base, atol=1e-4)
    for key in before:
        torch.testing.assert_close(deltas[2][key], deltas[0][key] + deltas[1][key], atol=1e-6, rtol=1e-5)
    assert_bit_identical(unet, before)


def test_updates_are_added_in_activation_order(unet, text_encoder, kohya_file, lora_dir) -> None:
    """A1111 adds each LoRA's update to the weight in activation order; float32 sums follow the order."""
    from core.engine.networks.activate import UNET, LoraUse, MergedWeights, merge_loras

    _, sd = peft_lora(unet, UNET_TARGETS, seed=11)
    write_safetensors(lora_dir / "other.safetensors", kohya_tensors(sd, "lora_unet_", alpha=8.0))
    files = {
        "other": load_lora_file(lora_dir / "other.safetensors"),
        "kohya_style": load_lora_file(kohya_file),
    }

    def merged_in(order: list[str]) -> dict[str, torch.Tensor]:
        merged = MergedWeights("cpu")
        merge_loras({UNET: unet}, [LoraUse(n, files[n], 0.7, 0.7, None) for n in order], merged)
        state = {k: v.clone() for k, v in unet.state_dict().items()}
        merged.restore()
        return state

    other_first, kohya_first = merged_in(["other", "kohya_style"]), merged_in(["kohya_style", "other"])
    assert any(not torch.equal(other_first[k], kohya_first[k]) for k in other_first)  # order is visible
    with _activate(unet, text_encoder, lora_dir, lora("other", "0.7"), lora("kohya_style", "0.7")) as active:
        assert [name for name, _ in active.loras] == ["other", "kohya_style"]
        assert all(torch.equal(v, other_first[k]) for k, v in unet.state_dict().items())


def test_same_lora_twice_counts_twice(unet, text_encoder, kohya_file, lora_dir) -> None:
    w = unet.mid_block.attentions[0].transformer_blocks[0].attn1.to_q.weight
    base = w.detach().clone()
    with _activate(unet, text_encoder, lora_dir, lora("kohya_style", "1")):
        once = w.detach() - base
    with _activate(unet, text_encoder, lora_dir, lora("kohya_style", "0.5"), lora("kohya_style", "0.5")):
        twice = w.detach() - base
    torch.testing.assert_close(twice, once, atol=1e-6, rtol=1e-5)


def test_restored_after_an_exception_in_the_job(unet, text_encoder, kohya_file, lora_dir) -> None:
    before = snapshot(unet), snapshot(text_encoder)
    with pytest.raises(KeyboardInterrupt), _activate(unet, text_encoder, lora_dir, lora("kohya_style")):
        raise KeyboardInterrupt
    assert_bit_identical(unet, before[0])
    assert_bit_identical(text_encoder, before[1])


def test_fp16_model_is_restored_bit_for_bit(unet, text_encoder, kohya_file, lora_dir) -> None:
    unet, text_encoder = unet.half(), text_encoder.half()
    before = snapshot(unet)
    with _activate(unet, text_encoder, lora_dir, lora("kohya_style", "0.3"), backup_device=None) as active:
        assert active.merged_weights > 0
        assert any(not torch.equal(v, before[k]) for k, v in unet.state_dict().items())
    assert_bit_identical(unet, before)


def test_dyn_keeps_the_first_ranks(unet, text_encoder, lora_dir) -> None:
    w = unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_v.weight
    g = torch.Generator().manual_seed(5)
    down, up = torch.randn(4, w.shape[1], generator=g), torch.randn(w.shape[0], 4, generator=g)
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_v"
    write_safetensors(
        lora_dir / "dyn.safetensors",
        {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up, f"{name}.alpha": torch.tensor(2.0)},
    )
    base = w.detach().clone()
    with _activate(unet, text_encoder, lora_dir, lora("dyn", "1", "1", "2")):
        got = w.detach() - base
    torch.testing.assert_close(got, up[:, :2] @ down[:2] * (2.0 / 4), atol=1e-5, rtol=1e-5)
    with _activate(unet, text_encoder, lora_dir, lora("dyn", "1")):
        torch.testing.assert_close(w.detach() - base, up @ down * 0.5, atol=1e-5, rtol=1e-5)


def test_locon_cp_decomposition_with_lora_mid(unet, text_encoder, lora_dir) -> None:
    conv = unet.down_blocks[0].resnets[0].conv2
    g = torch.Generator().manual_seed(6)
    out_ch, in_ch = conv.weight.shape[:2]
    down = torch.randn(2, in_ch, 1, 1, generator=g)
    mid = torch.randn(2, 2, 3, 3, generator=g)
    up = torch.randn(out_ch, 2, 1, 1, generator=g)
    name = "lora_unet_down_blocks_0_resnets_0_conv2"
    write_safetensors(
        lora_dir / "cp.safetensors",
        {f"{name}.lora_down.weight": down, f"{name}.lora_mid.weight": mid, f"{name}.lora_up.weight": up},
    )
    expected = torch.einsum("nmkl,in,mj->ijkl", mid, up.flatten(1), down.flatten(1))
    base = conv.weight.detach().clone()
    with _activate(unet, text_encoder, lora_dir, lora("cp", "0.5")):
        torch.testing.assert_close(conv.weight.detach() - base, expected * 0.5, atol=1e-5, rtol=1e-5)
    assert torch.equal(conv.weight, base)


def test_unknown_lora_names_the_closest(unet, text_encoder, kohya_file, diffusers_file, lora_dir) -> None:
    with (
        pytest.raises(ValueError, match=r"unknown LoRA 'kohya_stlye'; closest: kohya_style"),
        _activate(unet, text_encoder, lora_dir, lora("kohya_stlye")),
    ):
        pass


def test_path_escapes_are_refused(tmp_path, unet, text_encoder, kohya_file, lora_dir) -> None:
    before = snapshot(unet)
    outside = write_safetensors(tmp_path / "elsewhere" / "evil.safetensors", {"x": torch.zeros(1)})
    for name in ("../../etc/passwd", "../elsewhere/evil", str(outside), str(outside.with_suffix(""))):
        with (
            pytest.raises(ValueError, match=r"leaves the LoRA folder|absolute path"),
            _activate(unet, text_encoder, lora_dir, lora(name, "1")),
        ):
            pass
    if os.name != "nt":
        (lora_dir / "evil.safetensors").symlink_to(outside)
        with (
            pytest.raises(ValueError, match="outside the LoRA folder"),
            _activate(unet, text_encoder, lora_dir, lora("evil")),
        ):
            pass
    assert_bit_identical(unet, before)


def test_unreadable_files_get_clear_errors(unet, text_encoder, lora_dir) -> None:
    lora_dir.mkdir(parents=True, exist_ok=True)
    (lora_dir / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    write_safetensors(lora_dir / "checkpoint.safetensors", {"model.diffusion_model.x.weight": torch.zeros(2)})
    write_safetensors(
        lora_dir / "loha.safetensors",
        {"lora_unet_mid_block_attentions_0_proj_in.hada_w1_a": torch.zeros(2, 2)},
    )
    write_safetensors(
        lora_dir / "half.safetensors",
        {"lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": torch.zeros(2, 64)},
    )
    write_safetensors(
        lora_dir / "mismatch.safetensors",
        {
            "lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": torch.zeros(2, 64),
            "lora_unet_mid_block_attentions_0_proj_in.lora_up.weight": torch.zeros(64, 3),
        },
    )
    cases = {
        "mismatch": "factors that do not multiply",
        "corrupt": "cannot read LoRA file corrupt.safetensors",
        "checkpoint": "not a LoRA file chant can read",
        "loha": "LoHa networks are not supported",
        "half": "only one of lora_up/lora_down",
    }
    before = snapshot(unet)
    for name, message in cases.items():
        with pytest.raises(ValueError, match=message), _activate(unet, text_encoder, lora_dir, lora(name)):
            pass
    assert_bit_identical(unet, before)


def test_lora_for_another_model_is_refused_before_anything_changes(unet, text_encoder, lora_dir) -> None:
    good = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q"
    bad = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"  # wants 768-wide text
    write_safetensors(
        lora_dir / "sd15_for_real.safetensors",
        {
            f"{good}.lora_down.weight": torch.ones(2, 64),
            f"{good}.lora_up.weight": torch.ones(64, 2),
            f"{bad}.lora_down.weight": torch.ones(2, 768),
            f"{bad}.lora_up.weight": torch.ones(32, 2),
        },
    )
    write_safetensors(
        lora_dir / "sdxl_only.safetensors",
        {
            "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.ones(2, 1280),
            "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.ones(5120, 2),
        },
    )
    before = snapshot(unet)
    with (
        pytest.raises(ValueError, match="does not fit this model"),
        _activate(unet, text_encoder, lora_dir, lora("sd15_for_real")),
    ):
        pass
    with (
        pytest.raises(ValueError, match="has no layer that fits this model"),
        _activate(unet, text_encoder, lora_dir, lora("sdxl_only")),
    ):
        pass
    assert_bit_identical(unet, before)


def test_sdxl_text_encoder_prefixes(unet, text_encoder, lora_dir, run_te) -> None:
    te2 = type(text_encoder)(text_encoder.config).eval()
    name = "text_model_encoder_layers_1_self_attn_q_proj"
    tensors = {}
    for prefix in ("lora_te1_", "lora_te2_"):
        tensors[f"{prefix}{name}.lora_down.weight"] = torch.randn(2, 32)
        tensors[f"{prefix}{name}.lora_up.weight"] = torch.randn(32, 2)
    write_safetensors(lora_dir / "xl.safetensors", tensors)
    q1 = text_encoder.encoder.layers[1].self_attn.q_proj.weight
    q2 = te2.encoder.layers[1].self_attn.q_proj.weight
    b1, b2 = q1.detach().clone(), q2.detach().clone()
    with activate_networks(
        unet=unet, text_encoders=[text_encoder, te2], networks=[lora("xl", "0.5")], lora_dirs=[lora_dir]
    ):
        for q, b, prefix in ((q1, b1, "lora_te1_"), (q2, b2, "lora_te2_")):
            up, down = tensors[f"{prefix}{name}.lora_up.weight"], tensors[f"{prefix}{name}.lora_down.weight"]
            torch.testing.assert_close(q.detach() - b, up @ down * 0.5, atol=1e-5, rtol=1e-5)
    assert torch.equal(q1, b1) and torch.equal(q2, b2)


def test_cache_reuses_parsed_files_and_notices_a_replaced_file(
    unet, text_encoder, kohya_file, lora_dir
) -> None:
    cache = NetworkCache(max_entries=2)
    for _ in range(3):
        with _activate(unet, text_encoder, lora_dir, lora("kohya_style"), cache=cache):
            pass
    assert (cache.misses, cache.hits, len(cache)) == (1, 2, 1)
    st = kohya_file.stat()
    os.utime(kohya_file, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with _activate(unet, text_encoder, lora_dir, lora("kohya_style"), cache=cache):
        pass
    assert cache.misses == 2 and len(cache) == 2


def test_nested_activation_on_one_model_is_refused(unet, text_encoder, kohya_file, lora_dir) -> None:
    before = snapshot(unet)
    with (
        _activate(unet, text_encoder, lora_dir, lora("kohya_style")),
        pytest.raises(RuntimeError, match="already active"),
        _activate(unet, text_encoder, lora_dir, lora("kohya_style")),
    ):
        pass
    assert_bit_identical(unet, before)


def test_no_networks_is_a_no_op(unet, text_encoder, run_unet) -> None:
    base = run_unet(unet)
    with activate_networks(unet=unet, text_encoders=[text_encoder], networks=[]) as active:
        assert torch.equal(run_unet(unet), base)
    assert active.loras == [] and active.merged_weights == 0


def test_old_diffusers_layouts(unet, text_encoder, lora_dir) -> None:
    attn = "mid_block.attentions.0.transformer_blocks.0.attn2"
    g = torch.Generator().manual_seed(8)
    tensors = {
        f"unet.{attn}.processor.to_out_lora.down.weight": torch.randn(2, 64, generator=g),
        f"unet.{attn}.processor.to_out_lora.up.weight": torch.randn(64, 2, generator=g),
        f"unet.{attn}.to_q.lora_linear_layer.down.weight": torch.randn(2, 64, generator=g),
        f"unet.{attn}.to_q.lora_linear_layer.up.weight": torch.randn(64, 2, generator=g),
    }
    write_safetensors(lora_dir / "old.safetensors", tensors)
    parsed = load_lora_file(lora_dir / "old.safetensors")
    assert sorted(layer.key for layer in parsed.layers) == [f"{attn}.to_out.0", f"{attn}.to_q"]
    module = unet.mid_block.attentions[0].transformer_blocks[0].attn2
    base = module.to_out[0].weight.detach().clone()
    with _activate(unet, text_encoder, lora_dir, lora("old")):
        expected = (
            tensors[f"unet.{attn}.processor.to_out_lora.up.weight"]
            @ tensors[f"unet.{attn}.processor.to_out_lora.down.weight"]
        )
        torch.testing.assert_close(module.to_out[0].weight.detach() - base, expected, atol=1e-5, rtol=1e-5)


DATA = Path(__file__).parent / "data"

# Original LDM/SGM module names (A1111's layout; kohya's SDXL files use them) -> diffusers paths.
SD15_LDM = {
    "input_blocks_0_0": "conv_in",
    "time_embed_0": "time_embedding.linear_1",
    "input_blocks_1_0_in_layers_2": "down_blocks.0.resnets.0.conv1",
    "input_blocks_1_1_proj_in": "down_blocks.0.attentions.0.proj_in",
    "input_blocks_2_1_transformer_blocks_0_attn2_to_k": "down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k",
    "input_blocks_3_0_op": "down_blocks.0.downsamplers.0.conv",
    "input_blocks_4_0_skip_connection": "down_blocks.1.resnets.0.conv_shortcut",
    "input_blocks_8_1_transformer_blocks_0_ff_net_0_proj": "down_blocks.2.attentions.1.transformer_blocks.0.ff.net.0.proj",
    "input_blocks_10_0_emb_layers_1": "down_blocks.3.resnets.0.time_emb_proj",
    "input_blocks_11_0_out_layers_3": "down_blocks.3.resnets.1.conv2",
    "middle_block_0_in_layers_2": "mid_block.resnets.0.conv1",
    "middle_block_1_transformer_blocks_0_attn1_to_q": "mid_block.attentions.0.transformer_blocks.0.attn1.to_q",
    "middle_block_2_out_layers_3": "mid_block.resnets.1.conv2",
    "output_blocks_0_0_in_layers_2": "up_blocks.0.resnets.0.conv1",
    "output_blocks_2_1_conv": "up_blocks.0.upsamplers.0.conv",
    "output_blocks_3_1_proj_out": "up_blocks.1.attentions.0.proj_out",
    "output_blocks_5_2_conv": "up_blocks.1.upsamplers.0.conv",
    "output_blocks_8_2_conv": "up_blocks.2.upsamplers.0.conv",
    "output_blocks_11_1_transformer_blocks_0_attn2_to_out_0": "up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_out.0",
    "out_2": "conv_out",
    # kohya's SD1 files use the diffusers path with underscores
    "down_blocks_2_attentions_1_transformer_blocks_0_attn2_to_k": "down_blocks.2.attentions.1.transformer_blocks.0.attn2.to_k",
}
SDXL_LDM = {
    "input_blocks_1_0_in_layers_2": "down_blocks.0.resnets.0.conv1",
    "input_blocks_3_0_op": "down_blocks.0.downsamplers.0.conv",
    "input_blocks_4_1_transformer_blocks_1_attn1_to_k": "down_blocks.1.attentions.0.transformer_blocks.1.attn1.to_k",
    "input_blocks_7_1_transformer_blocks_9_attn2_to_v": "down_blocks.2.attentions.0.transformer_blocks.9.attn2.to_v",
    "input_blocks_8_1_proj_in": "down_blocks.2.attentions.1.proj_in",
    "middle_block_1_transformer_blocks_0_ff_net_2": "mid_block.attentions.0.transformer_blocks.0.ff.net.2",
    "output_blocks_0_1_transformer_blocks_0_attn1_to_q": "up_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
    "output_blocks_2_2_conv": "up_blocks.0.upsamplers.0.conv",
    "output_blocks_5_2_conv": "up_blocks.1.upsamplers.0.conv",
    "output_blocks_8_0_skip_connection": "up_blocks.2.resnets.2.conv_shortcut",
    "label_emb_0_0": "add_embedding.linear_1",
}


@pytest.mark.parametrize(("config", "table"), [("sd15_unet.json", SD15_LDM), ("sdxl_unet.json", SDXL_LDM)])
def test_original_layout_names_find_the_diffusers_modules(config: str, table: dict[str, str]) -> None:
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        big = UNet2DConditionModel.from_config(json.loads((DATA / config).read_text()))
    index = module_index("unet", big)
    modules = dict(big.named_modules())
    wrong = {ldm: path for ldm, path in table.items() if index.get(ldm) is not modules[path]}
    assert not wrong


def _tiny_sdxl_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * 8 + 32,
        cross_attention_dim=96,
        norm_num_groups=1,
    )


@pytest.mark.parametrize("which", ["sd1", "sdxl"])
def test_every_layer_agrees_with_the_engines_ldm_export(which: str, unet) -> None:
    """Cross-check against core.testing.tiny's independent diffusers -> LDM converter."""
    tiny = pytest.importorskip("core.testing.tiny")
    to_ldm = getattr(tiny, "_unet_to_ldm", None)
    if to_ldm is None:
        pytest.skip("core.testing.tiny has no _unet_to_ldm")
    model = unet if which == "sd1" else _tiny_sdxl_unet()
    index = module_index("unet", model)
    by_storage = {
        m.weight.data_ptr(): m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))
    }
    checked = 0
    for key, tensor in to_ldm(model).items():
        module = by_storage.get(tensor.data_ptr())
        if module is None or not key.endswith(".weight"):
            continue
        name = key.removeprefix("model.diffusion_model.").removesuffix(".weight").replace(".", "_")
        assert index.get(name) is module, name
        checked += 1
    assert checked == len(by_storage)


def test_channels_last_model(unet, text_encoder, kohya_file, library, run_unet, lora_dir) -> None:
    unet = unet.to(memory_format=torch.channels_last)
    before, base = snapshot(unet), run_unet(unet)
    with _activate(unet, text_encoder, lora_dir, lora("kohya_style")):
        torch.testing.assert_close(run_unet(unet), library.expected_unet, **TOL)
    assert_bit_identical(unet, before)
    assert torch.equal(run_unet(unet), base)
    assert unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)


def test_activate_for_pipeline_with_engine_settings(
    unet, text_encoder, kohya_file, library, run_unet, run_te, lora_dir
) -> None:
    from types import SimpleNamespace

    from core.config import EngineSettings
    from core.engine.networks import activate_for_pipeline

    pipe = SimpleNamespace(unet=unet, text_encoder=text_encoder)  # SD1: no text_encoder_2
    settings = EngineSettings(lora_dirs=(str(lora_dir),), hypernetwork_dirs=(str(lora_dir / "none"),))
    base_unet, base_te = run_unet(unet), run_te(text_encoder)
    with activate_for_pipeline(pipe, [lora("kohya_style")], settings, NetworkCache()):
        torch.testing.assert_close(run_unet(unet), library.expected_unet, **TOL)
        torch.testing.assert_close(run_te(text_encoder), library.expected_te, **TOL)
    assert torch.equal(run_unet(unet), base_unet) and torch.equal(run_te(text_encoder), base_te)


def test_lora_hashes_for_the_infotext(kohya_file, diffusers_file, lora_dir) -> None:
    import hashlib

    from safetensors.torch import load_file, save_file

    from core.engine.networks import addnet_hash, lora_hashes_param

    def expected(path: Path) -> str:  # kohya's addnet hash: the sha256 after the header
        data = path.read_bytes()
        return hashlib.sha256(data[8 + int.from_bytes(data[:8], "little") :]).hexdigest()

    assert addnet_hash(kohya_file) == expected(kohya_file)
    assert addnet_hash(kohya_file) != hashlib.sha256(kohya_file.read_bytes()).hexdigest()  # header excluded
    tags = [
        lora("peft_style"),
        Tag("hypernet", ("x",)),
        lora("kohya_style", "0.5"),
        lora("peft_style", "0.5"),
    ]
    assert (
        lora_hashes_param(tags, [lora_dir])
        == {  # activation order, each name once
            "Lora hashes": f"peft_style: {expected(diffusers_file)[:12]}, kohya_style: {expected(kohya_file)[:12]}"
        }
    )
    assert lora_hashes_param([Tag("hypernet", ("x",))], [lora_dir]) == {}
    # kohya's own hash in the metadata wins, as in A1111; a value that is no hash is ignored.
    tensors = load_file(str(kohya_file))
    save_file(tensors, str(lora_dir / "trained.safetensors"), {"sshs_model_hash": "ab" * 32})
    save_file(tensors, str(lora_dir / "odd.safetensors"), {"sshs_model_hash": "x, y: z"})
    assert lora_hashes_param([lora("trained"), lora("odd")], [lora_dir]) == {
        "Lora hashes": f"trained: {'ab' * 6}, odd: {expected(kohya_file)[:12]}"
    }
