from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from core.config import EngineSettings
from core.engine.control.models import (
    ControlNetCache,
    derive_config,
    kind_of,
    list_controlnets,
    list_ip_adapters,
    load_controlnet,
    resolve_controlnet,
    to_diffusers_layout,
)
from core.engine.models import ModelError
from core.testing.tiny_control import controlnet_to_ldm, save_single_file, tiny_controlnet

SKELETONS = Path(__file__).resolve().parents[4] / "core" / "engine" / "skeletons"

# The published configs of lllyasviel/control_v11p_sd15_canny, diffusers/controlnet-canny-sdxl-1.0 and
# xinsir/controlnet-union-sdxl-1.0 (architecture only), to check what is read from real-sized shapes.
SD15_CANNY = {
    "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280], "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "layers_per_block": 2, "use_linear_projection": False, "conditioning_embedding_out_channels": [16, 32, 96, 256],
}  # fmt: skip
SDXL_CANNY = {
    "addition_embed_type": "text_time", "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280], "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "projection_class_embeddings_input_dim": 2816, "transformer_layers_per_block": [1, 2, 10],
    "use_linear_projection": True, "layers_per_block": 2,
}  # fmt: skip
UNION_SDXL = {**SDXL_CANNY, "num_control_type": 6, "num_trans_channel": 320, "num_trans_head": 8,
              "num_trans_layer": 1, "num_proj_channel": 320}  # fmt: skip


def _unet_config(kind: str) -> dict:
    return json.loads((SKELETONS / kind / "unet" / "config.json").read_text())


def _meta_model(cls_name: str, config: dict):
    import diffusers
    from accelerate import init_empty_weights

    with init_empty_weights():
        return getattr(diffusers, cls_name)(**config)


def _meta_state(cls_name: str, config: dict) -> dict[str, torch.Tensor]:
    return dict(_meta_model(cls_name, config).state_dict())


def _expect(derived: dict, published: dict) -> None:
    for key, value in published.items():
        got = derived[key]
        assert (list(got) if isinstance(got, tuple) else got) == value, key


def test_real_sd15_controlnet_architecture_is_read_from_shapes_in_both_layouts() -> None:
    model = _meta_model("ControlNetModel", SD15_CANNY)
    state = dict(model.state_dict())
    _expect(derive_config(state, _unet_config("sd15")), SD15_CANNY)
    converted = to_diffusers_layout(controlnet_to_ldm(model), "canny")
    assert set(converted) == set(state)
    assert all(converted[k].shape == state[k].shape for k in state)
    _expect(derive_config(converted, _unet_config("sd15")), SD15_CANNY)
    assert kind_of(derive_config(state, _unet_config("sd15"))) == "sd1"


def test_real_sdxl_and_union_architectures_are_read_from_shapes() -> None:
    config = derive_config(_meta_state("ControlNetModel", SDXL_CANNY), _unet_config("sdxl"))
    _expect(config, SDXL_CANNY)
    assert kind_of(config) == "sdxl"
    union = derive_config(_meta_state("ControlNetUnionModel", UNION_SDXL), _unet_config("sdxl"))
    _expect(union, {k: v for k, v in UNION_SDXL.items() if k != "num_trans_head"})


@pytest.mark.parametrize("layout", ["ldm", "diffusers"])
def test_tiny_single_file_loads_to_the_same_weights(tmp_path: Path, sd15_pipe, sd15_controlnet, layout) -> None:
    path = save_single_file(sd15_controlnet, tmp_path / f"tiny_canny_{layout}.safetensors", layout=layout)
    net = load_controlnet(path, dict(sd15_pipe.unet.config), "cpu", torch.float32)
    assert (net.kind, net.is_union, net.n_residuals) == ("sd1", False, 7)
    assert net.label.startswith(f"tiny_canny_{layout} [") and len(net.label.split("[")[1]) == 9
    assert dict(net.model.config)["transformer_layers_per_block"] == (1, 1)
    mine, theirs = net.model.state_dict(), sd15_controlnet.state_dict()
    assert set(mine) == set(theirs)
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)


def test_sdxl_and_union_single_files(tmp_path: Path, sdxl_pipe, sdxl_controlnet) -> None:
    base = dict(sdxl_pipe.unet.config)
    net = load_controlnet(save_single_file(sdxl_controlnet, tmp_path / "xl.safetensors"), base, "cpu", torch.float32)
    assert (net.kind, net.n_residuals) == ("sdxl", 7)
    assert all(torch.equal(a, b) for a, b in zip(net.model.state_dict().values(), sdxl_controlnet.state_dict().values(), strict=True))
    union = tiny_controlnet(sdxl_pipe.unet, seed=3, union=True)
    path = save_single_file(union, tmp_path / "union.safetensors", layout="diffusers")
    loaded = load_controlnet(path, base, "cpu", torch.float32)
    assert loaded.is_union and loaded.model.config.num_control_type == 8
    assert all(torch.equal(a, b) for a, b in zip(loaded.model.state_dict().values(), union.state_dict().values(), strict=True))


def test_diffusers_folder_and_yaml_beside(tmp_path: Path, sd15_pipe, sd15_controlnet) -> None:
    sd15_controlnet.save_pretrained(tmp_path / "folder_net")
    net = load_controlnet(tmp_path / "folder_net", dict(sd15_pipe.unet.config), "cpu", torch.float32)
    assert net.name == "folder_net" and net.kind == "sd1" and not net.global_pool
    path = save_single_file(sd15_controlnet, tmp_path / "pool.safetensors")
    path.with_suffix(".yaml").write_text(
        "model:\n  params:\n    control_stage_config:\n      params:\n        global_average_pooling: true\n"
        "        num_heads: 8\n"
    )
    assert load_controlnet(path, dict(sd15_pipe.unet.config), "cpu", torch.float32).global_pool


def test_family_mismatch_and_other_model_kinds_are_refused(tmp_path: Path, sd15_pipe, sdxl_pipe, sd15_controlnet) -> None:
    from safetensors.torch import save_file

    path = save_single_file(sd15_controlnet, tmp_path / "sd15net.safetensors")
    with pytest.raises(ModelError, match=r"is for SD 1\.x models, this model is SDXL"):
        load_controlnet(path, dict(sdxl_pipe.unet.config), "cpu", torch.float32)
    ip = tmp_path / "ip-adapter_sd15.safetensors"
    save_file({"image_proj.proj.weight": torch.zeros(2, 2), "ip_adapter.1.to_k_ip.weight": torch.zeros(2, 2)}, str(ip))
    with pytest.raises(ModelError, match="IP-Adapter model; use it as a reference image"):
        load_controlnet(ip, dict(sd15_pipe.unet.config), "cpu", torch.float32)
    adapter = tmp_path / "t2iadapter.safetensors"
    save_file({"adapter.conv_in.weight": torch.zeros(2, 2, 1, 1)}, str(adapter))
    with pytest.raises(ModelError, match="not a ControlNet"):
        load_controlnet(adapter, dict(sd15_pipe.unet.config), "cpu", torch.float32)


def test_names_resolve_inside_the_configured_folders_only(tmp_path: Path, sd15_controlnet) -> None:
    folder = tmp_path / "ControlNet"
    (folder / "sub").mkdir(parents=True)
    save_single_file(sd15_controlnet, folder / "canny.safetensors")
    save_single_file(sd15_controlnet, folder / "sub" / "depth.safetensors")
    sd15_controlnet.save_pretrained(folder / "diffusers_net")
    (folder / "old.pth").write_bytes(b"not loaded")
    (folder / "ip-adapter-plus_sd15.safetensors").write_bytes(b"x")
    (tmp_path / "outside.safetensors").write_bytes(b"x")
    settings = EngineSettings(controlnet_dirs=(str(folder),))
    assert list_controlnets(settings) == ["canny", "diffusers_net", "sub/depth"]
    assert list_ip_adapters(settings) == ["ip-adapter-plus_sd15"]
    assert resolve_controlnet(settings, "canny [0123abcd]") == (folder / "canny.safetensors").resolve()
    assert resolve_controlnet(settings, "sub/depth").name == "depth.safetensors"
    assert resolve_controlnet(settings, "diffusers_net").is_dir()
    with pytest.raises(ModelError, match="not a plain name"):
        resolve_controlnet(settings, "../outside")
    with pytest.raises(ModelError, match="pickle checkpoints"):
        resolve_controlnet(settings, "old")
    with pytest.raises(ModelError, match=r"unknown ControlNet 'nope' \(have: canny, diffusers_net, sub/depth\)"):
        resolve_controlnet(settings, "nope")
    assert "old" in list_controlnets(EngineSettings(controlnet_dirs=(str(folder),), allow_pickle=True))


def test_cache_keeps_the_most_recently_used(tmp_path: Path, sd15_pipe, sd15_controlnet) -> None:
    paths = [save_single_file(sd15_controlnet, tmp_path / f"n{i}.safetensors") for i in range(3)]
    cache = ControlNetCache(max_loaded=2)
    base = dict(sd15_pipe.unet.config)
    first = cache.get(paths[0], base, "cpu", torch.float32)
    assert cache.get(paths[0], base, "cpu", torch.float32) is first
    cache.get(paths[1], base, "cpu", torch.float32)
    cache.get(paths[0], base, "cpu", torch.float32)
    cache.get(paths[2], base, "cpu", torch.float32)
    assert cache.loaded_names() == ["n0", "n2"]


def test_the_torch_free_listing_uses_the_engine_suffixes() -> None:
    from core.engine import models
    from core.engine.control import available

    assert available.SAFE_SUFFIXES == models.SAFE_SUFFIXES
    assert available.PICKLE_SUFFIXES == models.PICKLE_SUFFIXES
