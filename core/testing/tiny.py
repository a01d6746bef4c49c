"""Tiny random-weight SD1.x / SDXL models for tests, benchmarks and end-to-end runs (no download).

``build_tiny_sd15(path)`` / ``build_tiny_sdxl(path)`` write, in a few seconds on a CPU:

- ``path/diffusers/``   a diffusers folder (``from_pretrained`` layout),
- ``path/config/``      the same folder without weights: a config + tokenizer "skeleton",
- ``path/tiny-<arch>.safetensors``  one A1111/LDM-layout single-file checkpoint of the same weights,

and return a :class:`TinyModel` with the three paths. The text encoders use the real CLIP
vocabulary (49408 tokens) so chant's own tokenizer and the pipelines' tokenizers agree; everything
else is as small as diffusers' own test models. The LDM export is the inverse of diffusers'
``from_single_file`` conversion (checked by a round-trip test).

``random_weight_model(shapes, ...)`` builds a full-size SD1.5 / SDXL pipeline with random weights from
the shipped config skeletons (``chant bench engine --shapes sd15|sdxl --random-weights`` on a GPU).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from core.engine.skeleton import write_tokenizer

SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "set_alpha_to_one": False,
    "clip_sample": False,
    "skip_prk_steps": True,
}


@dataclass(frozen=True)
class TinyModel:
    arch: str  # "sd1" | "sd2" | "sdxl"
    folder: Path  # diffusers folder
    single_file: Path  # A1111/LDM-layout .safetensors
    config: Path  # weight-free skeleton folder for the single file


def _clip_config(hidden: int, layers: int, *, act: str = "quick_gelu", projection: int = 32):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_attention_heads=4,
        num_hidden_layers=layers,
        max_position_embeddings=77,
        hidden_act=act,
        projection_dim=projection,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )


def _vae():
    from diffusers import AutoencoderKL

    # Four blocks, so the latent is 1/8 of the image as in every real SD model.
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
    )


def _scheduler():
    from diffusers import PNDMScheduler

    return PNDMScheduler.from_config(SD15_SCHEDULER)


def _trained_looking_norms(pipe) -> None:
    """Give every LayerNorm/GroupNorm a random affine part, as trained weights have.

    Freshly initialised norms (weight 1, bias 0) make each text-encoder token vector average exactly
    zero, so A1111's emphasis mean restoration divides 0 by 0 on a tiny model — something no real
    checkpoint does. Seeded by the builder's ``torch.manual_seed``.
    """
    for component in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)):
        if component is None:
            continue
        for module in component.modules():
            if isinstance(module, torch.nn.LayerNorm) and module.elementwise_affine:
                with torch.no_grad():
                    module.weight.uniform_(0.5, 1.5)
                    module.bias.normal_(0.0, 0.2)


def _finish(pipe, root: Path, arch: str) -> TinyModel:
    _trained_looking_norms(pipe)
    folder = root / "diffusers"
    config = root / "config"
    pipe.save_pretrained(folder, safe_serialization=True)
    for name in ("tokenizer", "tokenizer_2"):
        if (folder / name).exists():
            pad = "!" if name == "tokenizer_2" or arch == "sd2" else "<|endoftext|>"
            write_tokenizer(folder / name, pad_token=pad)
    if config.exists():
        shutil.rmtree(config)
    shutil.copytree(folder, config, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    single = root / f"tiny-{arch}.safetensors"
    from safetensors.torch import save_file

    state = to_ldm_state_dict(pipe, arch)
    save_file({k: v.contiguous() for k, v in state.items()}, str(single))
    return TinyModel(arch=arch, folder=folder, single_file=single, config=config)


def _tokenizer(pad_token: str):
    import tempfile

    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer(Path(tmp), pad_token=pad_token)
        return CLIPTokenizer.from_pretrained(tmp, local_files_only=True)


def build_tiny_sd15(path: Path | str, seed: int = 0) -> TinyModel:
    """A tiny SD1.x pipeline (UNet, VAE, CLIP-L-shaped text encoder) with random weights."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    text_encoder = CLIPTextModel(_clip_config(32, 3))
    pipe = StableDiffusionPipeline(
        vae=_vae(),
        text_encoder=text_encoder,
        tokenizer=_tokenizer("<|endoftext|>"),
        unet=unet,
        scheduler=_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return _finish(pipe, root, "sd1")


def build_tiny_sd2(path: Path | str, seed: int = 0) -> TinyModel:
    """A tiny SD 2.x pipeline: OpenCLIP-shaped text encoder (pads with "!"), linear projections."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        norm_num_groups=32,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )
    pipe = StableDiffusionPipeline(
        vae=_vae(),
        text_encoder=CLIPTextModel(_clip_config(64, 3, act="gelu")),
        tokenizer=_tokenizer("!"),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return _finish(pipe, root, "sd2")


def build_tiny_sdxl(path: Path | str, seed: int = 0) -> TinyModel:
    """A tiny SDXL pipeline (two text encoders, pooled + time ids) with random weights."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
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
    # diffusers tells the two encoders of an SDXL single file apart by width (768 vs 1280 in the
    # real model: 32 vs 64 here) and detects SDXL by the 10th OpenCLIP block: keep 10 layers.
    text_encoder = CLIPTextModel(_clip_config(32, 3))
    text_encoder_2 = CLIPTextModelWithProjection(_clip_config(64, 10, act="gelu", projection=32))
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
        timestep_spacing="leading",
        prediction_type="epsilon",
    )
    pipe = StableDiffusionXLPipeline(
        vae=_vae(),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=_tokenizer("<|endoftext|>"),
        tokenizer_2=_tokenizer("!"),
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
    )
    pipe.vae.register_to_config(force_upcast=False)
    return _finish(pipe, root, "sdxl")


# --- diffusers -> LDM (A1111 single-file) layout -------------------------------------------------


def _unet_to_ldm(unet) -> dict[str, torch.Tensor]:
    config = unet.config
    per = config.layers_per_block + 1
    n = len(config.block_out_channels)
    prefixes: list[tuple[str, str]] = [
        ("time_embedding.linear_1.", "time_embed.0."),
        ("time_embedding.linear_2.", "time_embed.2."),
        ("add_embedding.linear_1.", "label_emb.0.0."),
        ("add_embedding.linear_2.", "label_emb.0.2."),
        ("conv_in.", "input_blocks.0.0."),
        ("conv_norm_out.", "out.0."),
        ("conv_out.", "out.2."),
        ("mid_block.attentions.0.", "middle_block.1."),
        ("mid_block.resnets.0.", "middle_block.0."),
        ("mid_block.resnets.1.", "middle_block.2."),
    ]
    for i in range(n):
        for j in range(config.layers_per_block):
            prefixes.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{per * i + j + 1}.0."))
            prefixes.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{per * i + j + 1}.1."))
        prefixes.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{per * (i + 1)}.0.op."))
        has_attention = "CrossAttn" in config.up_block_types[i]
        for j in range(per):
            prefixes.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{per * i + j}.0."))
            prefixes.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{per * i + j}.1."))
        prefixes.append(
            (
                f"up_blocks.{i}.upsamplers.0.",
                f"output_blocks.{per * i + per - 1}.{2 if has_attention else 1}.",
            )
        )
    resnet = [
        ("norm1.", "in_layers.0."),
        ("conv1.", "in_layers.2."),
        ("norm2.", "out_layers.0."),
        ("conv2.", "out_layers.3."),
        ("time_emb_proj.", "emb_layers.1."),
        ("conv_shortcut.", "skip_connection."),
    ]
    out: dict[str, torch.Tensor] = {}
    for key, value in unet.state_dict().items():
        for hf, sd in prefixes:
            if key.startswith(hf):
                rest = key[len(hf) :]
                if ".resnets." in hf or hf.startswith("mid_block.resnets"):
                    for a, b in resnet:
                        if rest.startswith(a):
                            rest = b + rest[len(a) :]
                            break
                out["model.diffusion_model." + sd + rest] = value
                break
        else:
            raise ValueError(f"no LDM name for UNet key {key}")
    return out


def _vae_to_ldm(vae) -> dict[str, torch.Tensor]:
    n = len(vae.config.block_out_channels)
    prefixes: list[tuple[str, str]] = [
        ("encoder.conv_norm_out.", "encoder.norm_out."),
        ("decoder.conv_norm_out.", "decoder.norm_out."),
        ("encoder.mid_block.attentions.0.", "encoder.mid.attn_1."),
        ("decoder.mid_block.attentions.0.", "decoder.mid.attn_1."),
    ]
    for part in ("encoder", "decoder"):
        for j in range(2):
            prefixes.append((f"{part}.mid_block.resnets.{j}.", f"{part}.mid.block_{j + 1}."))
    for i in range(n):
        for j in range(vae.config.layers_per_block):
            prefixes.append((f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}."))
        prefixes.append((f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample."))
        for j in range(vae.config.layers_per_block + 1):
            prefixes.append((f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{n - 1 - i}.block.{j}."))
        prefixes.append((f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{n - 1 - i}.upsample."))
    attention = [
        ("group_norm.", "norm."),
        ("to_q.", "q."),
        ("to_k.", "k."),
        ("to_v.", "v."),
        ("to_out.0.", "proj_out."),
    ]
    out: dict[str, torch.Tensor] = {}
    for key, value in vae.state_dict().items():
        new = key
        for hf, sd in prefixes:
            if key.startswith(hf):
                new = sd + key[len(hf) :]
                break
        new = new.replace("conv_shortcut.", "nin_shortcut.")
        if ".attn_1." in new:
            head, rest = new.split(".attn_1.", 1)
            for a, b in attention:
                if rest.startswith(a):
                    rest = b + rest[len(a) :]
                    break
            new = f"{head}.attn_1.{rest}"
            if new.endswith("weight") and value.ndim == 2:
                value = value[:, :, None, None]  # LDM stores the attention projections as 1x1 convs
        out["first_stage_model." + new] = value
    return out


def _clip_l_to_ldm(text_encoder, prefix: str) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in text_encoder.state_dict().items():
        key = key if key.startswith("text_model.") else "text_model." + key
        out[prefix + key] = value
    return out


def _open_clip_to_ldm(text_encoder, prefix: str) -> dict[str, torch.Tensor]:
    state = {k.removeprefix("text_model."): v for k, v in text_encoder.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    layers = text_encoder.config.num_hidden_layers
    out[prefix + "positional_embedding"] = state["embeddings.position_embedding.weight"]
    out[prefix + "token_embedding.weight"] = state["embeddings.token_embedding.weight"]
    out[prefix + "ln_final.weight"] = state["final_layer_norm.weight"]
    out[prefix + "ln_final.bias"] = state["final_layer_norm.bias"]
    if "text_projection.weight" in state:
        out[prefix + "text_projection"] = state["text_projection.weight"].T.contiguous()
    else:  # SD 2.x files carry OpenCLIP's projection, unused by the UNet
        hidden = text_encoder.config.hidden_size
        out[prefix + "text_projection"] = torch.eye(hidden)
    for i in range(layers):
        src = f"encoder.layers.{i}."
        dst = f"{prefix}transformer.resblocks.{i}."
        for part in ("weight", "bias"):
            out[dst + f"attn.in_proj_{part}"] = torch.cat(
                [state[src + f"self_attn.{p}_proj.{part}"] for p in ("q", "k", "v")], dim=0
            )
            out[dst + f"attn.out_proj.{part}"] = state[src + f"self_attn.out_proj.{part}"]
            out[dst + f"ln_1.{part}"] = state[src + f"layer_norm1.{part}"]
            out[dst + f"ln_2.{part}"] = state[src + f"layer_norm2.{part}"]
            out[dst + f"mlp.c_fc.{part}"] = state[src + f"mlp.fc1.{part}"]
            out[dst + f"mlp.c_proj.{part}"] = state[src + f"mlp.fc2.{part}"]
    return out


def to_ldm_state_dict(pipe, arch: str) -> dict[str, torch.Tensor]:
    """The weights of a diffusers SD1.x/SDXL pipeline in A1111's single-file (LDM) key layout."""
    state = {**_unet_to_ldm(pipe.unet), **_vae_to_ldm(pipe.vae)}
    if arch == "sdxl":
        state.update(_clip_l_to_ldm(pipe.text_encoder, "conditioner.embedders.0.transformer."))
        state.update(_open_clip_to_ldm(pipe.text_encoder_2, "conditioner.embedders.1.model."))
    elif arch == "sd2":
        state.update(_open_clip_to_ldm(pipe.text_encoder, "cond_stage_model.model."))
    else:
        state.update(_clip_l_to_ldm(pipe.text_encoder, "cond_stage_model.transformer."))
    return state


def save_vae_single_file(vae, path: Path | str) -> Path:
    """A VAE alone in A1111's standalone layout (``encoder.…``/``decoder.…``, as vae-ft-mse files)."""
    from safetensors.torch import save_file

    state = {k.removeprefix("first_stage_model."): v.contiguous() for k, v in _vae_to_ldm(vae).items()}
    save_file(state, str(path))
    return Path(path)


def random_weight_model(shapes: str, device, dtype, source):
    """A full-size SD1.5 / SDXL pipeline with random weights, from the shipped config skeletons."""
    import time

    from diffusers import (
        AutoencoderKL,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from diffusers.schedulers import EulerDiscreteScheduler, PNDMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from core.engine import models
    from core.engine.skeleton import skeleton_dir

    folder = skeleton_dir("sdxl" if shapes == "sdxl" else "sd1")
    start = time.perf_counter()
    # Weights are created directly on the device; schedulers and tokenizers stay on the CPU (the
    # schedulers convert their tables with numpy).
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet")).to(dtype)
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae")).to(dtype)
        te = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder")).to(dtype)
        te2 = None
        if shapes == "sdxl":
            config_2 = CLIPTextConfig.from_pretrained(folder / "text_encoder_2")
            te2 = CLIPTextModelWithProjection(config_2).to(dtype)
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    if shapes == "sdxl":
        pipe = StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=te,
            text_encoder_2=te2,
            tokenizer=tokenizer,
            tokenizer_2=CLIPTokenizer.from_pretrained(folder / "tokenizer_2"),
            unet=unet,
            scheduler=EulerDiscreteScheduler.from_pretrained(folder / "scheduler"),
        )
    else:
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=te,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=PNDMScheduler.from_pretrained(folder / "scheduler"),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    for module in (pipe.unet, pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None)):
        if module is not None:
            module.requires_grad_(False).eval()
    return models.LoadedModel(
        source=source,
        kind="sdxl" if shapes == "sdxl" else "sd1",
        pipe=pipe,
        hash="",
        device=device,
        dtype=dtype,
        load_seconds=time.perf_counter() - start,
        noise=models.noise_schedule(source, False, False),
    )
