"""Tiny random-weight ControlNets for tests and benchmarks (no download), and their file layouts.

``tiny_controlnet(unet)`` copies a (tiny) UNet's encoder as ``ControlNetModel.from_unet`` does, then
gives the zero-initialised parts (the zero convolutions and the hint embedding's last convolution)
random weights, so the residuals are not all zero and a parity test can fail. ``save_single_file``
writes it as sd-webui-controlnet users have ControlNets: the original (LDM, ``control_model.…``)
key layout or the diffusers one, in one ``.safetensors`` file.
"""

from __future__ import annotations

from pathlib import Path

import torch

_RESNET = (
    ("norm1.", "in_layers.0."),
    ("conv1.", "in_layers.2."),
    ("norm2.", "out_layers.0."),
    ("conv2.", "out_layers.3."),
    ("time_emb_proj.", "emb_layers.1."),
    ("conv_shortcut.", "skip_connection."),
)


def _randomize_zero_parts(model, generator: torch.Generator) -> None:
    zero_parts = [*model.controlnet_down_blocks, model.controlnet_mid_block, model.controlnet_cond_embedding.conv_out]
    if hasattr(model, "spatial_ch_projs"):
        zero_parts.append(model.spatial_ch_projs)
    with torch.no_grad():
        for module in zero_parts:
            for parameter in module.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)


def tiny_controlnet(unet, *, seed: int = 0, conditioning_channels: int = 3, union: bool = False):
    """A ControlNet (or ControlNet++ "union" model) for ``unet`` with random weights everywhere."""
    from diffusers import ControlNetModel, ControlNetUnionModel

    generator = torch.Generator().manual_seed(seed)
    if union:
        channels = unet.config.block_out_channels[0]
        config = dict(ControlNetModel.from_unet(unet).config)
        config = {k: v for k, v in config.items() if not k.startswith("_") and k != "mid_block_type"}
        config.update(num_trans_channel=channels, num_trans_head=4, num_proj_channel=channels, num_control_type=8)
        torch.manual_seed(seed)
        model = ControlNetUnionModel(**config)
        model.down_blocks.load_state_dict(unet.down_blocks.state_dict(), strict=False)
    else:
        model = ControlNetModel.from_unet(unet, conditioning_channels=conditioning_channels)
    _randomize_zero_parts(model, generator)
    return model.eval()


def controlnet_to_ldm(model) -> dict[str, torch.Tensor]:
    """A diffusers ControlNet's weights in the original ControlNet (LDM) layout, ``control_model.``-prefixed."""
    config = model.config
    per = config.layers_per_block + 1
    blocks = len(model.controlnet_cond_embedding.blocks)
    prefixes = [
        ("time_embedding.linear_1.", "time_embed.0."),
        ("time_embedding.linear_2.", "time_embed.2."),
        ("add_embedding.linear_1.", "label_emb.0.0."),
        ("add_embedding.linear_2.", "label_emb.0.2."),
        ("conv_in.", "input_blocks.0.0."),
        ("mid_block.resnets.0.", "middle_block.0."),
        ("mid_block.attentions.0.", "middle_block.1."),
        ("mid_block.resnets.1.", "middle_block.2."),
        ("controlnet_mid_block.", "middle_block_out.0."),
        ("controlnet_cond_embedding.conv_in.", "input_hint_block.0."),
        ("controlnet_cond_embedding.conv_out.", f"input_hint_block.{2 * (blocks + 1)}."),
    ]
    prefixes += [(f"controlnet_cond_embedding.blocks.{j}.", f"input_hint_block.{2 * (j + 1)}.") for j in range(blocks)]
    prefixes += [(f"controlnet_down_blocks.{k}.", f"zero_convs.{k}.0.") for k in range(len(model.controlnet_down_blocks))]
    for i in range(len(config.block_out_channels)):
        for j in range(config.layers_per_block):
            prefixes.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{per * i + j + 1}.0."))
            prefixes.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{per * i + j + 1}.1."))
        prefixes.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{per * (i + 1)}.0.op."))
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        for hf, ldm in prefixes:
            if key.startswith(hf):
                rest = key[len(hf) :]
                if ".resnets." in hf:
                    rest = next((b + rest[len(a) :] for a, b in _RESNET if rest.startswith(a)), rest)
                out["control_model." + ldm + rest] = value
                break
        else:
            raise ValueError(f"no original-layout name for ControlNet key {key}")
    return out


def save_single_file(model, path: Path | str, *, layout: str = "ldm") -> Path:
    """Write ``model`` as one ``.safetensors`` file in the ``ldm`` or ``diffusers`` key layout."""
    from safetensors.torch import save_file

    state = controlnet_to_ldm(model) if layout == "ldm" else dict(model.state_dict())
    save_file({k: v.detach().contiguous() for k, v in state.items()}, str(path))
    return Path(path)


# --- IP-Adapter fixtures ---------------------------------------------------------------------------


def tiny_image_encoder(seed: int = 0):
    """A CLIP vision encoder with real ViT/14 geometry at 224 px but tiny widths (random weights)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    config = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=16, patch_size=14,
        image_size=224, projection_dim=16, hidden_act="gelu",
    )  # fmt: skip
    return CLIPVisionModelWithProjection(config).eval()


def _resampler_to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers' IPAdapterPlusImageProjection names -> the IP-Adapter "plus" Resampler's own."""
    out: dict[str, torch.Tensor] = {}
    kv: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] != "layers":
            out[key] = value
            continue
        i, rest = parts[1], ".".join(parts[2:])
        renames = {"ln0": "0.norm1", "ln1": "0.norm2", "attn.to_q": "0.to_q", "attn.to_out.0": "0.to_out",
                   "ff.0": "1.0", "ff.1.net.0.proj": "1.1", "ff.1.net.2": "1.3"}  # fmt: skip
        for old, new in renames.items():
            if rest.startswith(old + "."):
                out[f"layers.{i}.{new}{rest[len(old):]}"] = value
                break
        else:
            which = "k" if rest.startswith("attn.to_k.") else "v"
            kv.setdefault(i, {})[which] = value
    for i, pair in kv.items():
        out[f"layers.{i}.0.to_kv.weight"] = torch.cat([pair["k"], pair["v"]], dim=0)
    return out


def tiny_ip_adapter(unet, encoder, *, variant: str = "plain", seed: int = 0) -> dict[str, torch.Tensor]:
    """An IP-Adapter state dict for ``unet`` and ``encoder`` in the published single-file layout
    (``image_proj.*`` + ``ip_adapter.N.to_k_ip/to_v_ip``), random weights; ``variant`` plain or plus."""
    from diffusers.models.embeddings import ImageProjection, IPAdapterPlusImageProjection

    torch.manual_seed(seed)
    cross = unet.config.cross_attention_dim
    if variant == "plain":
        proj = ImageProjection(cross_attention_dim=cross, image_embed_dim=encoder.config.projection_dim,
                               num_image_text_embeds=4)  # fmt: skip
        image_proj = {k.replace("image_embeds", "proj"): v for k, v in proj.state_dict().items()}
    else:
        proj = IPAdapterPlusImageProjection(embed_dims=encoder.config.hidden_size, output_dims=cross, hidden_dims=64,
                                            heads=1, num_queries=8)  # fmt: skip
        image_proj = _resampler_to_original(dict(proj.state_dict()))
    state = {f"image_proj.{k}": v.detach().clone() for k, v in image_proj.items()}
    key_id = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        module = unet.get_submodule(name.removesuffix(".processor"))
        hidden = module.to_q.out_features
        state[f"ip_adapter.{key_id}.to_k_ip.weight"] = torch.randn(hidden, cross) * 0.2
        state[f"ip_adapter.{key_id}.to_v_ip.weight"] = torch.randn(hidden, cross) * 0.2
        key_id += 2
    return state


def save_tiny_depth_anything(folder: Path | str, seed: int = 0) -> Path:
    """A Depth Anything V2-architecture model (DINOv2 backbone, DPT head) with tiny widths, random weights."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    torch.manual_seed(seed)
    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                            patch_size=14, image_size=518, out_indices=[1, 2, 3, 4], reshape_hidden_states=False)  # fmt: skip
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32, neck_hidden_sizes=[8, 16, 32, 32],
                                 fusion_hidden_size=16, head_hidden_size=8, patch_size=14, depth_estimation_type="relative")  # fmt: skip
    DepthAnythingForDepthEstimation(config).eval().save_pretrained(str(folder))
    return Path(folder)
