"""Reference images: our per-row IP-Adapter hook in a plain loop equals diffusers' IP-Adapter pipelines."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from core.config import EngineSettings
from core.engine.control.ip_adapter import (
    IPAdapterCache,
    attach,
    clip_image_processor,
    encoder_for_adapter,
    find_image_encoder,
    gather_ip_rows,
    image_embeds,
    layer_scales,
    load_image_encoder,
    load_ip_adapter,
    resolve_ip_adapter,
)
from core.engine.models import ModelError
from core.testing.tiny_control import tiny_image_encoder, tiny_ip_adapter

SIZE, CFG = 64, 7.0
# diffusers projects the negative and positive image embeddings in one batch of 2, we once per job: the
# matrix kernels round differently in the last bits, which CFG 7 amplifies to ~2e-5 after 3 steps.
ATOL = 1e-4


@pytest.fixture(scope="module")
def encoder():
    return tiny_image_encoder(seed=5)


@pytest.fixture(scope="module")
def folders(tmp_path_factory, encoder, sd15_pipe):
    root = tmp_path_factory.mktemp("ip")
    (root / "ControlNet").mkdir()
    (root / "clip_vision").mkdir()
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(root / "clip_vision" / "tiny-vit.safetensors"))
    for variant in ("plain", "plus"):
        state = tiny_ip_adapter(sd15_pipe.unet, encoder, variant=variant, seed=6)
        save_file(state, str(root / "ControlNet" / f"ip-adapter-{variant}_sd15.safetensors"))
    return EngineSettings(controlnet_dirs=(str(root / "ControlNet"),), clip_vision_dirs=(str(root / "clip_vision"),))


def _reference_image(seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (80, 60, 3), dtype=np.uint8))


def _load(settings, pipe, variant: str):
    path = resolve_ip_adapter(settings, f"ip-adapter-{variant}_sd15")
    encoder_path = encoder_for_adapter(settings, path)  # plain: projection_dim 16; plus: hidden_size 32
    return load_ip_adapter(path, pipe.unet, load_image_encoder(encoder_path, "cpu", torch.float32))


def _euler(pipe):
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler.from_config(pipe.scheduler.config)


def _our_loop(pipe, adapter, image, scale: float, latents, steps: int = 3, style: bool = False, added=None, embeds=None):
    scheduler = _euler(pipe)
    pe, ne = embeds
    context = torch.cat([ne, pe])
    with attach(pipe.unet, adapter, style=style) as hook:
        tokens, scales = gather_ip_rows([image_embeds(adapter, [image])], [scale], [0, 0], [False, True])
        scheduler.set_timesteps(steps)
        x = latents * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            x_in = scheduler.scale_model_input(torch.cat([x, x]), t)
            hook.set_rows(tokens, scales)
            with torch.no_grad():
                noise = pipe.unet(x_in, t, encoder_hidden_states=context, added_cond_kwargs=added, return_dict=False)[0]
            uncond, cond = noise.chunk(2)
            x = scheduler.step(uncond + CFG * (cond - uncond), t, x).prev_sample
    return x


def _diffusers_reference(pipe, adapter_state, encoder, image, scale, latents, steps=3, **call):
    """diffusers' own IP-Adapter path on a copy of the UNet (load_ip_adapter changes the UNet)."""
    parts = {k: v for k, v in pipe.components.items() if k not in ("image_encoder", "feature_extractor", "unet")}
    ref = type(pipe)(**parts, unet=copy.deepcopy(pipe.unet), image_encoder=encoder, feature_extractor=clip_image_processor())
    ref.scheduler = _euler(pipe)
    ref.set_progress_bar_config(disable=True)
    split = {"image_proj": {}, "ip_adapter": {}}
    for key, value in adapter_state.items():
        head, _, rest = key.partition(".")
        split[head][rest] = value
    ref.load_ip_adapter(split, subfolder=None, weight_name=None, image_encoder_folder=None)
    ref.set_ip_adapter_scale(scale)
    return ref(**call, ip_adapter_image=image, height=SIZE, width=SIZE, num_inference_steps=steps, guidance_scale=CFG,
               latents=latents.clone(), output_type="latent").images  # fmt: skip


def _latents(seed):
    return torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("variant", ["plain", "plus"])
def test_sd15_reference_equals_diffusers_ip_adapter(folders, sd15_pipe, encoder, variant) -> None:
    adapter = _load(folders, sd15_pipe, variant)
    assert (adapter.variant, adapter.num_tokens, adapter.kind) == (variant, 4 if variant == "plain" else 8, "sd1")
    image, latents = _reference_image(), _latents(1)
    embeds = sd15_pipe.encode_prompt("a red boat", "cpu", 1, True, negative_prompt="blurry")
    ours = _our_loop(sd15_pipe, adapter, image, 0.6, latents, embeds=embeds)
    state = tiny_ip_adapter(sd15_pipe.unet, encoder, variant=variant, seed=6)
    theirs = _diffusers_reference(sd15_pipe, state, encoder, image, 0.6, latents,
                                  prompt_embeds=embeds[0], negative_prompt_embeds=embeds[1])  # fmt: skip
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)
    without = _our_loop(sd15_pipe, adapter, image, 0.0, latents, embeds=embeds)
    assert (ours - without).abs().max() > 1e-3  # the reference changes the result


def test_scale_zero_rows_equal_the_plain_unet_and_the_hook_is_removed(folders, sd15_pipe) -> None:
    adapter = _load(folders, sd15_pipe, "plain")
    before = {k: type(v) for k, v in sd15_pipe.unet.attn_processors.items()}
    torch.manual_seed(2)
    sample, t = torch.randn(4, 4, 8, 8), torch.tensor(600.0)
    pe, ne = sd15_pipe.encode_prompt("a red boat", "cpu", 1, True, negative_prompt="blurry")
    context = torch.cat([pe, pe, ne, ne])
    with torch.no_grad():
        plain = sd15_pipe.unet(sample, t, encoder_hidden_states=context).sample
        # rows [job0 cond, job1 cond, job0 uncond, job1 uncond]; only job 1 has a reference
        alone_rows = None
        with attach(sd15_pipe.unet, adapter) as hook:
            pair = image_embeds(adapter, [_reference_image(3)])
            tokens, scales = gather_ip_rows([None, pair], [0.0, 0.8], [0, 1, 0, 1], [True, True, False, False])
            assert scales.tolist() == [0.0, pytest.approx(0.8), 0.0, pytest.approx(0.8)]
            hook.set_rows(tokens, scales)
            mixed = sd15_pipe.unet(sample, t, encoder_hidden_states=context).sample
            hook.set_rows(tokens[[1, 3]], scales[[1, 3]])
            alone_rows = sd15_pipe.unet(sample[[1, 3]], t, encoder_hidden_states=context[[1, 3]]).sample
    torch.testing.assert_close(mixed[[0, 2]], plain[[0, 2]], atol=1e-6, rtol=0)
    torch.testing.assert_close(mixed[[1, 3]], alone_rows, atol=ATOL, rtol=0)
    assert (mixed[[1, 3]] - plain[[1, 3]]).abs().max() > 1e-3
    assert {k: type(v) for k, v in sd15_pipe.unet.attn_processors.items()} == before


def test_sdxl_style_reference_equals_diffusers_instantstyle_scales(tmp_path: Path, sdxl_pipe, encoder) -> None:
    state = tiny_ip_adapter(sdxl_pipe.unet, encoder, variant="plain", seed=7)
    save_file(state, str(tmp_path / "ip-adapter_sdxl.safetensors"))
    adapter = load_ip_adapter(tmp_path / "ip-adapter_sdxl.safetensors", sdxl_pipe.unet, encoder)
    scales = layer_scales(adapter, style=True)
    assert [name for name, s in scales.items() if s] == [  # that attention's two transformer blocks
        f"up_blocks.0.attentions.1.transformer_blocks.{i}.attn2.processor" for i in (0, 1)
    ]
    image, latents = _reference_image(4), _latents(8)
    pe, ne, pooled, npooled = sdxl_pipe.encode_prompt("a red boat", negative_prompt="blurry", device="cpu")
    time_ids = sdxl_pipe._get_add_time_ids((SIZE, SIZE), (0, 0), (SIZE, SIZE), dtype=pe.dtype,
                                           text_encoder_projection_dim=sdxl_pipe.text_encoder_2.config.projection_dim)  # fmt: skip
    added = {"text_embeds": torch.cat([npooled, pooled]), "time_ids": torch.cat([time_ids, time_ids])}
    ours = _our_loop(sdxl_pipe, adapter, image, 0.9, latents, style=True, added=added, embeds=(pe, ne))
    style = {"up": {"block_0": [0.0, 0.9, 0.0]}}
    theirs = _diffusers_reference(sdxl_pipe, state, encoder, image, style, latents, prompt_embeds=pe, negative_prompt_embeds=ne,
                                  pooled_prompt_embeds=pooled, negative_pooled_prompt_embeds=npooled)  # fmt: skip
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)


def test_wrong_files_are_refused(tmp_path: Path, folders, sd15_pipe, encoder) -> None:
    face_id = tmp_path / "ip-adapter-faceid_sd15.safetensors"
    save_file({"image_proj.norm.weight": torch.ones(4), "ip_adapter.1.to_k_ip.weight": torch.ones(2, 2)}, str(face_id))
    with pytest.raises(ModelError, match="Face ID IP-Adapters need InsightFace"):
        load_ip_adapter(face_id, sd15_pipe.unet, encoder)
    not_ip = tmp_path / "canny.safetensors"
    save_file({"input_hint_block.0.weight": torch.ones(2)}, str(not_ip))
    with pytest.raises(ModelError, match="not an IP-Adapter"):
        load_ip_adapter(not_ip, sd15_pipe.unet, encoder)
    other = tiny_image_encoder(seed=1)
    other.config.projection_dim = 8
    with pytest.raises(ModelError, match="needs an image encoder with projection_dim 16, not 8"):
        load_ip_adapter(resolve_ip_adapter(folders, "ip-adapter-plain_sd15"), sd15_pipe.unet, other)
    with pytest.raises(ModelError, match="no image encoder with hidden_size 1280"):
        find_image_encoder(folders, "hidden_size", 1280)
    with pytest.raises(ModelError, match="unknown IP-Adapter"):
        resolve_ip_adapter(folders, "ip-adapter_nope")


def test_single_file_image_encoder_round_trip(folders, encoder) -> None:
    path = find_image_encoder(folders, "projection_dim", 16)
    loaded = load_image_encoder(path, "cpu", torch.float32)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), encoder.state_dict().values(), strict=True))


def test_cache_shares_the_encoder_and_keeps_the_most_recent(folders, sd15_pipe) -> None:
    cache = IPAdapterCache(max_loaded=1)
    encoder = find_image_encoder(folders, "projection_dim", 16)
    plain = cache.get(resolve_ip_adapter(folders, "ip-adapter-plain_sd15"), encoder, sd15_pipe.unet)
    assert cache.get(resolve_ip_adapter(folders, "ip-adapter-plain_sd15"), encoder, sd15_pipe.unet) is plain
    plus = cache.get(resolve_ip_adapter(folders, "ip-adapter-plus_sd15"), encoder, sd15_pipe.unet)
    assert plus.encoder is plain.encoder and plus.variant == "plus"
    assert cache.get(resolve_ip_adapter(folders, "ip-adapter-plain_sd15"), encoder, sd15_pipe.unet) is not plain
