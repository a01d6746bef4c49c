"""DiffusersEngine on tiny random-weight models: parity with diffusers, A1111 semantics, errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from core.engine import cfg, prompts, rng, samplers
from core.engine.diffusers_engine import DiffusersEngine
from core.engine.infotext import parse_infotext
from core.types import GenerationCancelled, GenerationError, GenerationRequest, OutOfMemory

from .conftest import engine_settings
from .test_image_modes import CondSpy

SMALL = {"width": 64, "height": 64, "steps": 3}


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)


def loaded(engine: DiffusersEngine):
    engine.generate(GenerationRequest(prompt="warm up", seed=1, **{**SMALL, "steps": 1}))
    return next(iter(engine.models._models.values()))


def encode(engine: DiffusersEngine, request: GenerationRequest, model):
    """``request``'s plan, as the pipeline's step 3 encodes it."""
    interpretations = prompts.interpret(request, engine.settings)
    return prompts.encode_prompt(
        request, model, interpretations, settings=engine.settings, embeddings=engine.embeddings
    )


def diffusers_latents(model, prompt: str, negative: str | None, seed: int, *, steps=3, cfg=7.0):
    """The final latents of diffusers' own pipeline with its Euler (``EulerDiscreteScheduler``, "linspace"
    timesteps: the same continuous timesteps as A1111's Euler on the Automatic schedule)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionXLPipeline if model.kind == "sdxl" else StableDiffusionPipeline
    pipe = cls(**model.pipe.components)
    pipe.set_progress_bar_config(disable=True)
    prediction = "v_prediction" if model.noise.prediction == "v" else "epsilon"
    pipe.scheduler = EulerDiscreteScheduler.from_config(
        model.pipe.scheduler.config, timestep_spacing="linspace", prediction_type=prediction
    )
    noise = rng.ImageRNG((4, 8, 8), [seed], source="cpu").first()
    return pipe(
        prompt,
        negative_prompt=negative,
        num_inference_steps=steps,
        guidance_scale=cfg,
        latents=noise,
        height=64,
        width=64,
        output_type="latent",
    ).images


@pytest.mark.parametrize(
    ("engine_fixture", "negative"),
    [("sd15_engine", "blurry, low quality"), ("sd2_engine", "blurry"), ("sdxl_engine", "")],
)
def test_plain_prompt_with_euler_equals_the_diffusers_pipeline(engine_fixture, negative, request) -> None:
    """A1111's Euler (k-diffusion sigmas, continuous t) and diffusers' EulerDiscreteScheduler on "linspace"
    timesteps differ only where diffusers interpolates σ linearly between the table's timesteps and
    k-diffusion log σ: ~1e-4 on latents of magnitude ~50 (an 8-bit pixel at most)."""
    from tests.core.engine.test_batch import DecodeSpy

    engine = request.getfixturevalue(engine_fixture)
    model = loaded(engine)
    prompt = "a photo of a cat sitting on a red chair"
    spy = DecodeSpy(engine)
    try:
        ours = engine.generate(
            GenerationRequest(
                prompt=prompt, negative_prompt=negative, sampler="Euler", seed=1234, rng="cpu", **SMALL
            )
        )
    finally:
        del engine.decode
    theirs = diffusers_latents(model, prompt, negative or None, 1234)
    delta = (spy.latents[0] - theirs).abs().max().item()
    assert delta <= 1e-3, f"max |Δ| {delta:.2e}"
    assert pixels(ours.images[0].png).std() > 5  # not a blank (NaN) image


def test_same_request_twice_gives_the_same_png(sd15_engine) -> None:
    request = GenerationRequest(prompt="a [cat|dog] AND a hat:0.5", sampler="Euler a", seed=7, **SMALL)
    first = sd15_engine.generate(request)
    second = sd15_engine.generate(request)
    assert first.images[0].png == second.images[0].png
    other = sd15_engine.generate(request.replace(seed=8))
    assert not np.array_equal(pixels(other.images[0].png), pixels(first.images[0].png))


def test_weight_one_equals_the_plain_path(sd15_engine) -> None:
    plain = sd15_engine.generate(GenerationRequest(prompt="a red house", seed=3, sampler="Euler", **SMALL))
    weighted = sd15_engine.generate(
        GenerationRequest(prompt="a red house:1.0", seed=3, sampler="Euler", **SMALL)
    )
    emphasised = sd15_engine.generate(
        GenerationRequest(prompt="a (red:1.0) house", seed=3, sampler="Euler", **SMALL)
    )
    assert plain.images[0].png.split(b"IDAT")[1:] == weighted.images[0].png.split(b"IDAT")[1:]
    assert np.array_equal(pixels(plain.images[0].png), pixels(emphasised.images[0].png))
    half = sd15_engine.generate(GenerationRequest(prompt="a red house:0.5", seed=3, sampler="Euler", **SMALL))
    assert not np.array_equal(pixels(plain.images[0].png), pixels(half.images[0].png))


def test_infotext_is_written_and_reads_back(sd15_engine) -> None:
    result = sd15_engine.generate(
        GenerationRequest(prompt="a lighthouse", negative_prompt="fog", seed=-1, sampler="DPM++ 2M", **SMALL)
    )
    image = result.images[0]
    assert 0 <= image.seed < 2**32
    text = Image.open(io.BytesIO(image.png)).info["parameters"]
    assert text == image.infotext
    params = parse_infotext(text)
    assert params["Prompt"] == "a lighthouse" and params["Negative prompt"] == "fog"
    assert params["Seed"] == str(image.seed) and params["Size"] == "64x64"
    assert params["Sampler"] == "DPM++ 2M" and params["Schedule type"] == "Karras"
    assert (
        params["Model"] == "tiny"
        and params["Model hash"] == result.model_hash
        and len(result.model_hash) == 10
    )


def test_count_uses_consecutive_seeds(sd15_engine) -> None:
    request = GenerationRequest(prompt="a boat", seed=100, count=2, sampler="Euler", **SMALL)
    result = sd15_engine.generate(request)
    assert [i.seed for i in result.images] == [100, 101]
    alone = sd15_engine.generate(request.replace(seed=101, count=1))
    assert np.abs(pixels(result.images[1].png) - pixels(alone.images[0].png)).max() <= 1


@pytest.mark.parametrize("sampler", samplers.sampler_names())
def test_every_sampler_runs(sd15_engine, sampler) -> None:
    result = sd15_engine.generate(
        GenerationRequest(
            prompt="a tree", negative_prompt="x", sampler=sampler, seed=5, width=64, height=64, steps=3
        )
    )
    image = pixels(result.images[0].png)
    assert image.shape == (64, 64, 3)
    assert image.std() > 5, "a blank image: the sampler produced NaN or constant latents"
    spec = samplers.resolve(sampler)
    assert f"Sampler: {spec.name}, Schedule type: {spec.schedule_label}," in result.images[0].infotext


def test_sdxl_runs_with_and_and_a_negative(sdxl_engine) -> None:
    result = sdxl_engine.generate(
        GenerationRequest(
            prompt="a castle AND a moat:0.7", negative_prompt="rain", sampler="Euler a", seed=9, **SMALL
        )
    )
    assert pixels(result.images[0].png).std() > 1


def test_prompt_editing_switches_at_a1111_steps(sd15_engine, monkeypatch) -> None:
    seen = CondSpy(monkeypatch).seen
    sd15_engine.generate(
        GenerationRequest(prompt="a [cat:dog:2]", sampler="Euler", seed=1, **{**SMALL, "steps": 4})
    )
    assert seen == [(0, 0), (1, 0), (2, 0), (3, 1)]  # "a cat" while the counter <= 2
    seen.clear()
    # Second-order samplers: the schedule uses 2x the steps and the counter counts model calls.
    sd15_engine.generate(
        GenerationRequest(prompt="a [cat:dog:0.5]", sampler="Heun", seed=1, **{**SMALL, "steps": 3})
    )
    assert [c for c, _ in seen] == list(range(len(seen))) and len(seen) == 5
    assert [i for _, i in seen] == [0, 0, 0, 0, 1]  # 0.5 of 6 scheduled steps -> switch after counter 3


def test_and_parts_combine_with_a1111_formula(sd15_engine) -> None:
    engine = sd15_engine
    model = loaded(engine)
    request = GenerationRequest(
        prompt="a cat AND a dog:-0.5 AND " + "word " * 80, negative_prompt="", **SMALL
    )
    plan = encode(engine, request, model)
    assert [p.weight for p in plan.positive] == [1.0, -0.5, 1.0]
    assert plan.positive[2].at(0).embeds.shape[0] == 154 and plan.negative.at(0).embeds.shape[0] == 77
    calls = []

    class FakeUNet:
        dtype = torch.float32

        def __call__(self, x, t, encoder_hidden_states, added_cond_kwargs=None, return_dict=False):
            calls.append(encoder_hidden_states.shape)
            value = encoder_hidden_states.float().mean(dim=(1, 2))
            return (x * 0 + value[:, None, None, None],)

    # As a timesteps sampler's model: the UNet's ε is what gets combined, no scalings around it.
    schedule = model.noise
    denoiser = cfg.CFGDenoiser(cfg.UNetModel(FakeUNet()), [cfg.JobCond.of(plan)], schedule, timesteps=True)
    out = denoiser(torch.zeros(1, 4, 8, 8), torch.tensor([999.0]))
    # Different lengths (154 vs 77 tokens): cond and uncond run separately, as A1111 does by default.
    assert [tuple(c) for c in calls] == [(1, 77, 32), (3, 154, 32)]
    u = plan.negative.at(0).embeds.mean()
    conds = [p.at(0).embeds for p in plan.positive]
    padded = [torch.cat([c, c[-1:].repeat(154 - c.shape[0], 1)]) for c in conds]  # repeat the last token
    expected = u + sum(p.weight * 7.0 * (c.mean() - u) for p, c in zip(plan.positive, padded, strict=True))
    assert torch.allclose(out[0, 0, 0, 0], expected, atol=1e-6)


def test_progress_preview_and_cancel(tiny_sd15) -> None:
    engine = DiffusersEngine(engine_settings(tiny_sd15, preview_every=2))
    events = []
    engine.generate(
        GenerationRequest(prompt="a kite", seed=2, sampler="Euler", width=64, height=64, steps=4),
        on_progress=events.append,
    )
    assert [(e.step, e.total) for e in events] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert events[1].preview_png and events[1].preview_png.startswith(b"\x89PNG")
    assert events[0].preview_png is None and events[3].preview_png is None
    steps = []
    with pytest.raises(GenerationCancelled):
        engine.generate(
            GenerationRequest(prompt="a kite", seed=2, width=64, height=64, steps=4),
            on_progress=steps.append,
            should_cancel=lambda: len(steps) >= 2,
        )
    assert len(steps) == 2
    engine.close()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"width": 65}, "width must be a multiple of 8"),
        ({"steps": 0}, "steps must be between"),
        ({"sampler": "No Such Sampler"}, "No Such Sampler"),
        ({"sampler": "UniPC", "steps": 2}, "UniPC needs at least 3 steps"),  # A1111 refuses it too
        ({"cfg_rescale": 1.5}, "CFG rescale must be between 0 and 1"),
        ({"eta": -0.1}, "eta must be between 0 and 1"),
        ({"model": "missing"}, "unknown model 'missing'"),
        ({"model": "../tiny-sd1"}, "not a plain name"),
        ({"prompt": "(a:1.2.3)"}, "column"),
        ({"clip_skip": 9}, "CLIP skip must be between 1 and 3"),
        ({"rng": "quantum"}, "RNG source"),
        ({"subseed_strength": 2.0}, "variation strength"),
    ],
)
def test_bad_requests_get_a_clear_error(sd15_engine, changes, message) -> None:
    request = GenerationRequest(prompt="a cat", seed=1, **SMALL).replace(**changes)
    with pytest.raises(GenerationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        sd15_engine.generate(request)


def test_generate_batch_returns_one_result_or_error_per_request(sd15_engine) -> None:
    good = GenerationRequest(prompt="a cup", seed=4, **SMALL)
    results = sd15_engine.generate_batch([good, good.replace(steps=0)], on_progress=lambda i, p: None)
    assert results[0].images[0].seed == 4
    assert isinstance(results[1], GenerationError)


def test_out_of_memory_frees_and_raises_a_user_error(sd15_engine, monkeypatch) -> None:
    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(sd15_engine, "load_model", oom)
    with pytest.raises(OutOfMemory, match="smaller size"):
        sd15_engine.generate(GenerationRequest(prompt="a cat"))


def test_the_engine_lists_models_and_samplers(sd15_engine) -> None:
    # The configured model, then what the model folder holds besides it: the tiny build's diffusers folder.
    assert sd15_engine.model_names() == ["tiny", "diffusers"]
    assert "DPM++ 2M" in sd15_engine.sampler_names() and "Euler a" in sd15_engine.sampler_names()


def test_a_vae_override_by_name_changes_the_decoder(tiny_sd15, tmp_path) -> None:
    from core.testing.tiny import _vae, save_vae_single_file

    torch.manual_seed(11)
    save_vae_single_file(_vae(), tmp_path / "other-vae.safetensors")
    engine = DiffusersEngine(engine_settings(tiny_sd15, vae_dirs=(str(tmp_path),)))
    request = GenerationRequest(prompt="a bird", seed=3, sampler="Euler", **SMALL)
    plain = engine.generate(request)
    with_vae = engine.generate(request.replace(vae="other-vae"))
    assert not np.array_equal(pixels(plain.images[0].png), pixels(with_vae.images[0].png))
    with pytest.raises(GenerationError, match="unknown VAE"):
        engine.generate(request.replace(vae="nope"))
    with pytest.raises(GenerationError, match="not a plain name"):
        engine.generate(request.replace(vae="../other-vae"))
    engine.close()


def test_lora_tags_apply_for_one_job_and_are_removed(tiny_sd15, tmp_path) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(0)
    tensors = {}
    for block in ("down_blocks_0_attentions_0", "up_blocks_1_attentions_0"):
        for proj in ("to_q", "to_k", "to_v"):
            name = f"lora_unet_{block}_transformer_blocks_0_attn1_{proj}"
            tensors[f"{name}.lora_down.weight"] = torch.randn(4, 32) * 0.5
            tensors[f"{name}.lora_up.weight"] = torch.randn(32, 4) * 0.5
            tensors[f"{name}.alpha"] = torch.tensor(4.0)
    save_file(tensors, str(tmp_path / "shiny.safetensors"))
    engine = DiffusersEngine(engine_settings(tiny_sd15, lora_dirs=(str(tmp_path),)))
    request = GenerationRequest(prompt="a cat", seed=3, sampler="Euler", **SMALL)
    before = engine.generate(request)
    with_lora = engine.generate(request.replace(prompt="a cat <lora:shiny:1>"))
    after = engine.generate(request)
    assert not np.array_equal(pixels(with_lora.images[0].png), pixels(before.images[0].png))
    assert before.images[0].png == after.images[0].png  # fully removed, bit for bit
    with pytest.raises(GenerationError, match="shiny"):
        engine.generate(request.replace(prompt="a cat <lora:shinyy:1>"))
    engine.close()


def test_variation_seed_and_ensd(sd15_engine) -> None:
    base = GenerationRequest(prompt="a fox", seed=10, subseed=99, sampler="Euler a", **SMALL)
    plain = sd15_engine.generate(base)
    varied = sd15_engine.generate(base.replace(subseed_strength=0.3))
    assert not np.array_equal(pixels(plain.images[0].png), pixels(varied.images[0].png))
    assert "Variation seed: 99, Variation seed strength: 0.3" in varied.images[0].infotext
    assert "Variation seed" not in plain.images[0].infotext
    ensd = sd15_engine.generate(base.replace(eta_noise_seed_delta=31337))
    assert not np.array_equal(
        pixels(plain.images[0].png), pixels(ensd.images[0].png)
    )  # ancestral: step noise
    assert "ENSD: 31337" in ensd.images[0].infotext
    euler = base.replace(sampler="Euler")
    assert (
        sd15_engine.generate(euler).images[0].png
        == sd15_engine.generate(euler.replace(eta_noise_seed_delta=31337)).images[0].png
    )  # Euler draws no step noise: A1111 neither uses nor writes ENSD


def test_the_engine_satisfies_the_protocol_and_create_engine_builds_it(tiny_sd15) -> None:
    from core.engine import create_engine
    from core.engine.api import Engine

    engine = create_engine(engine_settings(tiny_sd15, vae_slicing=True))
    assert isinstance(engine, Engine) and isinstance(engine, DiffusersEngine)
    result = engine.generate(GenerationRequest(prompt="a pear", seed=1, count=2, **SMALL))
    assert len(result.images) == 2
    assert next(iter(engine.models._models.values())).pipe.vae.use_slicing
    engine.close()
    assert engine.models.loaded_names() == []


def test_pad_cond_uncond_pads_the_negative_with_empty_prompt_chunks(tiny_sd15) -> None:
    engine = DiffusersEngine(engine_settings(tiny_sd15, pad_cond_uncond=True))
    model = loaded(engine)
    request = GenerationRequest(prompt="tree " * 150, negative_prompt="fog", seed=1, sampler="Euler", **SMALL)
    plan = encode(engine, request, model)
    calls = cfg.JobCond.of(plan).row_blocks(0)
    assert len(calls) == 1 and calls[0][0] == 2 and calls[0][1].shape == (2, 154, 32)
    uncond_row = calls[0][1][0]
    assert torch.equal(uncond_row[:77], plan.negative.at(0).embeds)
    assert torch.equal(uncond_row[77:], plan.empty.embeds)
    padded = engine.generate(request)
    engine.close()
    default = DiffusersEngine(engine_settings(tiny_sd15))
    separate = default.generate(request)
    default.close()
    assert not np.array_equal(pixels(padded.images[0].png), pixels(separate.images[0].png))


def test_embeddings_work_in_the_negative_prompt(tiny_sd15, tmp_path) -> None:
    """EasyNegative-style: a textual inversion named in the negative prompt stands for its vectors."""
    from safetensors.torch import save_file
    from transformers import CLIPTextModel

    from core.prompt.tokens import ClipTokenizer

    te = CLIPTextModel.from_pretrained(tiny_sd15.folder / "text_encoder", local_files_only=True)
    ids = ClipTokenizer.default().encode("blurry grainy")
    vectors = te.get_input_embeddings().weight[ids].detach().clone()
    folder = tmp_path / "embeddings"
    folder.mkdir()
    save_file({"emb_params": vectors}, str(folder / "badquality.safetensors"))
    engine = DiffusersEngine(engine_settings(tiny_sd15, embedding_dirs=(str(folder),)))
    try:
        request = GenerationRequest(prompt="a cat", sampler="Euler", seed=3, **SMALL)
        with_embedding = pixels(engine.generate(request.replace(negative_prompt="badquality")).images[0].png)
        with_words = pixels(engine.generate(request.replace(negative_prompt="blurry grainy")).images[0].png)
        plain = pixels(engine.generate(request.replace(negative_prompt="")).images[0].png)
    finally:
        engine.close()
    assert np.abs(with_embedding - with_words).max() <= 1
    assert np.abs(with_embedding - plain).max() > 1  # the negative really changed the image


def test_the_largest_seed_works_and_random_seeds_are_drawn_as_a1111_draws_them(sd15_engine) -> None:
    import random

    request = GenerationRequest(prompt="a kite", seed=2**32 - 1, count=2, sampler="Euler", **SMALL)
    result = sd15_engine.generate(request)  # the bot and the service accept it: the engine must too
    assert [image.seed for image in result.images] == [4294967295, 4294967296]  # seed + i, as A1111
    assert "Seed: 4294967295," in result.images[0].infotext
    with pytest.raises(GenerationError, match="seed must be -1"):
        sd15_engine.generate(request.replace(seed=2**32))
    random.seed(5)
    drawn = sd15_engine.generate(request.replace(seed=-1, count=1)).images[0].seed
    assert drawn == random.Random(5).randrange(4294967294)  # A1111's get_fixed_seed


def test_eta_and_ensd_are_written_where_a1111_writes_them(sd15_engine) -> None:
    base = GenerationRequest(prompt="a fox", seed=10, eta_noise_seed_delta=31337, **{**SMALL, "steps": 3})
    texts = {
        (sampler, eta): sd15_engine.generate(base.replace(sampler=sampler, eta=eta)).images[0].infotext
        for sampler, eta in (
            ("Euler a", 0.6),
            ("Euler a", 0.0),
            ("DDIM", 0.3),
            ("Euler", 0.5),
            ("DPM++ 2M", None),
        )
    }
    assert "Eta: 0.6" in texts["Euler a", 0.6] and "ENSD: 31337" in texts["Euler a", 0.6]
    assert "Eta: 0" in texts["Euler a", 0.0] and "ENSD" not in texts["Euler a", 0.0]  # eta 0: no step noise
    assert "Eta DDIM: 0.3" in texts["DDIM", 0.3] and "ENSD" not in texts["DDIM", 0.3]
    for key in (("Euler", 0.5), ("DPM++ 2M", None)):  # samplers without eta: A1111 writes neither
        assert "Eta" not in texts[key] and "ENSD" not in texts[key]
