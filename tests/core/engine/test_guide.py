"""ControlNet units and reference images through the engine: parity with diffusers' ControlNet pipeline,
A1111's guidance window, weights, several units, batching, infotext and the detected map."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from core.engine import rng
from core.engine.control.infotext import units_from_infotext
from core.engine.diffusers_engine import DiffusersEngine
from core.engine.infotext import parse_infotext
from core.types import ControlInput, GenerationError, GenerationRequest, GenerationResult, ReferenceInput

from .conftest import engine_settings
from .test_batch import TOLERANCE, DecodeSpy, max_diff

SMALL = {"width": 64, "height": 64, "steps": 3, "rng": "cpu", "sampler": "Euler"}
PROMPT = "a photo of a cat sitting on a red chair"


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def control_map(seed: int) -> np.ndarray:
    """A 64×64 RGB map with a few shapes (a ready control map, module "none")."""
    generator = np.random.default_rng(seed)
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    for _ in range(4):
        x, y = generator.integers(0, 48, 2)
        image[y : y + 16, x : x + 16] = generator.integers(0, 256, 3)
    return image


@pytest.fixture(scope="module")
def guided(tiny_sd15, tmp_path_factory):
    """An engine on the tiny SD 1.5 with two random-weight ControlNets (diffusers folders) and an IP-Adapter."""
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import save_file

    from core.testing.tiny_control import tiny_controlnet, tiny_image_encoder, tiny_ip_adapter

    folder = tmp_path_factory.mktemp("controlnet")
    vision = tmp_path_factory.mktemp("clip_vision")
    unet = StableDiffusionPipeline.from_pretrained(str(tiny_sd15.folder), local_files_only=True).unet
    tiny_controlnet(unet, seed=1).save_pretrained(str(folder / "control_sd15_canny"))
    tiny_controlnet(unet, seed=2).save_pretrained(str(folder / "control_sd15_depth"))
    encoder = tiny_image_encoder(seed=3)
    encoder.save_pretrained(str(vision / "tiny-vit"))
    save_file(tiny_ip_adapter(unet, encoder, seed=4), str(folder / "ip-adapter_tiny.safetensors"))
    engine = DiffusersEngine(
        engine_settings(tiny_sd15, controlnet_dirs=(str(folder),), clip_vision_dirs=(str(vision),))
    )
    yield engine
    engine.close()


def latents_of(engine: DiffusersEngine, request: GenerationRequest) -> tuple[torch.Tensor, GenerationResult]:
    spy = DecodeSpy(engine)
    try:
        result = engine.generate(request)
    finally:
        del engine.decode
    return spy.latents[0], result


def loaded_model(engine: DiffusersEngine):
    return next(iter(engine.models._models.values()))


def diffusers_controlnet_latents(engine, nets, maps, scales, *, seed, steps=3, end=1.0):
    """The final latents of diffusers' ``StableDiffusionControlNetPipeline`` with the same components, its
    Euler on "linspace" timesteps (the continuous timesteps of A1111's Euler) and the same first noise."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionControlNetPipeline

    model = loaded_model(engine)
    components = {k: v for k, v in model.pipe.components.items() if k != "image_encoder"}
    pipe = StableDiffusionControlNetPipeline(
        **{**components, "controlnet": nets if len(nets) > 1 else nets[0], "image_encoder": None}
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = EulerDiscreteScheduler.from_config(
        model.pipe.scheduler.config, timestep_spacing="linspace"
    )
    noise = rng.ImageRNG((4, 8, 8), [seed], source="cpu").first()
    images = [Image.fromarray(m) for m in maps]
    return pipe(
        PROMPT, negative_prompt="blurry", num_inference_steps=steps, guidance_scale=7.0, latents=noise,
        height=64, width=64, output_type="latent", image=images if len(nets) > 1 else images[0],
        controlnet_conditioning_scale=scales if len(nets) > 1 else scales[0],
        control_guidance_end=[end] * len(nets) if len(nets) > 1 else end,
    ).images  # fmt: skip


def request(*controls: ControlInput, seed: int = 1234, **changes) -> GenerationRequest:
    values = {"prompt": PROMPT, "negative_prompt": "blurry", **SMALL, **changes}
    return GenerationRequest(seed=seed, controls=tuple(controls), **values)


def canny_unit(weight=1.0, **changes) -> ControlInput:
    return ControlInput(image=png_bytes(control_map(1)), model="control_sd15_canny", weight=weight, **changes)


def nets_of(engine: DiffusersEngine, *names: str):
    loaded = engine.guide_models().controlnets._nets.values()
    return [next(n.model for n in loaded if n.name == name) for name in names]


def test_one_unit_equals_diffusers_controlnet_pipeline(guided) -> None:
    ours, result = latents_of(guided, request(canny_unit(0.8)))
    theirs = diffusers_controlnet_latents(guided, nets_of(guided, "control_sd15_canny"), [control_map(1)], [0.8],
                                          seed=1234)  # fmt: skip
    plain, _ = latents_of(guided, request())
    delta = (ours - theirs).abs().max().item()
    assert delta <= 1e-3, f"max |Δ| {delta:.2e}"
    assert (ours - plain).abs().max().item() > 1e-2  # the ControlNet really changes the image
    assert result.control_maps == ()  # a ready map (module "none") is not shown again


def test_weight_zero_is_no_controlnet(guided) -> None:
    plain, _ = latents_of(guided, request())
    zero, _ = latents_of(guided, request(canny_unit(0.0)))
    assert torch.equal(plain, zero)


def test_two_units_add_as_diffusers_multicontrolnet(guided) -> None:
    depth = ControlInput(image=png_bytes(control_map(2)), model="control_sd15_depth", weight=0.6)
    ours, result = latents_of(guided, request(canny_unit(1.0), depth))
    nets = nets_of(guided, "control_sd15_canny", "control_sd15_depth")
    theirs = diffusers_controlnet_latents(
        guided, nets, [control_map(1), control_map(2)], [1.0, 0.6], seed=1234
    )
    assert (ours - theirs).abs().max().item() <= 1e-3
    units = units_from_infotext(parse_infotext(result.images[0].infotext))
    assert [(u.unit.model, u.unit.weight) for u in units] == [
        ("control_sd15_canny", 1.0),
        ("control_sd15_depth", 0.6),
    ]


def test_guidance_end_switches_off_at_a1111_step(guided) -> None:
    """At 5 steps, end 0.5 stops the unit when A1111's ``sampling_step / steps`` passes 0.5: its step
    counter reads 3 (0.6) during the last step only. diffusers counts ``(i + 1) / steps``: its end 0.8
    stops the same last step, so the two runs must agree — and differ from the unit on throughout."""
    ours, _ = latents_of(guided, request(canny_unit(1.0, guidance_end=0.5), steps=5))
    net = nets_of(guided, "control_sd15_canny")
    same_window = diffusers_controlnet_latents(
        guided, net, [control_map(1)], [1.0], seed=1234, steps=5, end=0.8
    )
    always = diffusers_controlnet_latents(guided, net, [control_map(1)], [1.0], seed=1234, steps=5, end=1.0)
    assert (ours - same_window).abs().max().item() <= 1e-3
    assert (ours - always).abs().max().item() > 1e-2


def test_batched_equals_alone(guided) -> None:
    """Jobs with the same ControlNet share one loop, each with its own map, weight, mode and window."""
    jobs = [
        request(canny_unit(0.9), seed=11, prompt="a red [cat:dog:2] AND a hat :0.5"),
        request(canny_unit(0.0), seed=22, count=2),
        request(canny_unit(0.5, control_mode="ControlNet is more important"), seed=33, cfg_scale=4.0),
        request(
            ControlInput(image=png_bytes(control_map(5)), model="control_sd15_canny", guidance_start=0.4),
            seed=44,
        ),
    ]
    spy = DecodeSpy(guided)
    try:
        alone = [guided.generate(job) for job in jobs]
        alone_latents = list(spy.latents)
        spy.latents.clear()
        together = guided.generate_batch(jobs)
    finally:
        del guided.decode
    assert len(spy.latents) == 1, "one loop for the whole batch"
    pieces = spy.latents[0].split([job.count for job in jobs])
    for single, latents, piece, result in zip(alone, alone_latents, pieces, together, strict=True):
        assert isinstance(result, GenerationResult)
        assert [i.infotext for i in result.images] == [i.infotext for i in single.images]
        assert max_diff(guided, latents, piece) <= TOLERANCE


def test_canny_runs_at_generation_and_its_map_comes_back(guided) -> None:
    photo = np.zeros((64, 64, 3), dtype=np.uint8)
    photo[16:48, 16:48] = 255  # a white square: canny draws its outline
    unit = ControlInput(image=png_bytes(photo), module="canny", model="control_sd15_canny")
    result = guided.generate(request(unit))
    (detected,) = result.control_maps
    edges = np.asarray(Image.open(io.BytesIO(detected)))
    assert edges.shape[2] == 3 and set(np.unique(edges)) == {0, 255}
    assert edges[:, :, 0].sum() > 0 and edges[32, 32, 0] == 0  # an outline, not a filled square
    (parsed,) = units_from_infotext(parse_infotext(result.images[0].infotext))
    assert (
        parsed.unit.module == "canny"
        and parsed.unit.threshold_a == 100.0
        and parsed.unit.threshold_b == 200.0
    )


def test_automatic_model_fits_the_control_type(guided) -> None:
    unit = ControlInput(image=png_bytes(control_map(1)), control_type="Depth")
    result = guided.generate(request(unit))
    (parsed,) = units_from_infotext(parse_infotext(result.images[0].infotext))
    assert parsed.unit.model == "control_sd15_depth"


@pytest.mark.parametrize(
    ("unit", "message"),
    [
        (ControlInput(image=b"not an image", model="control_sd15_canny"), "control image"),
        (ControlInput(image=png_bytes(control_map(1)), model="nope"), "unknown ControlNet"),
        (
            ControlInput(image=png_bytes(control_map(1)), model="control_sd15_canny", weight=3.0),
            "control weight",
        ),
        (ControlInput(image=png_bytes(control_map(1)), module="depth_anything_v2"), "ControlNet unit 0"),
        (ControlInput(image=None, model="control_sd15_canny"), "no image"),
    ],
)
def test_bad_units_fail_their_job_alone(guided, unit, message) -> None:
    good = request(seed=5)
    results = guided.generate_batch([request(unit), good])
    assert isinstance(results[0], GenerationError) and message in str(results[0])
    assert isinstance(results[1], GenerationResult)


def test_reference_image_changes_the_image_and_scale_zero_does_not(guided) -> None:
    face = png_bytes(control_map(9))
    plain, _ = latents_of(guided, request())
    zero, _ = latents_of(guided, request(references=(ReferenceInput(image=face, scale=0.0),)))
    ref, result = latents_of(guided, request(references=(ReferenceInput(image=face, scale=1.0),)))
    assert (plain - zero).abs().max().item() <= 1e-4
    assert (plain - ref).abs().max().item() > 1e-3
    (parsed,) = units_from_infotext(parse_infotext(result.images[0].infotext))
    assert parsed.unit.model == "ip-adapter_tiny" and parsed.unit.weight == 1.0


def test_reference_batched_equals_alone(guided) -> None:
    face = png_bytes(control_map(9))
    jobs = [
        request(references=(ReferenceInput(image=face, scale=0.7),), seed=1),
        request(references=(ReferenceInput(image=face, scale=0.0),), seed=2, negative_prompt="long " * 80),
        request(references=(ReferenceInput(image=png_bytes(control_map(3)), scale=1.2),), seed=3),
    ]
    spy = DecodeSpy(guided)
    try:
        alone = [guided.generate(job) for job in jobs]
        alone_latents = list(spy.latents)
        spy.latents.clear()
        guided.generate_batch(jobs)
    finally:
        del guided.decode
    assert all(isinstance(r, GenerationResult) for r in alone)
    assert len(spy.latents) == 1, "one loop for the whole batch"
    pieces = spy.latents[0].split([job.count for job in jobs])
    for latents, piece in zip(alone_latents, pieces, strict=True):
        assert max_diff(guided, latents, piece) <= TOLERANCE


def test_hires_fix_and_img2img_run_with_a_unit(guided) -> None:
    """The hires pass gets the map fitted to its own size; img2img counts A1111's steps from t_enc."""
    unit = canny_unit(1.0)
    hires = guided.generate(request(unit, enable_hr=True, hr_scale=2.0, hr_second_pass_steps=2))
    assert Image.open(io.BytesIO(hires.images[0].png)).size == (128, 128)
    plain_hires, _ = latents_of(guided, request(enable_hr=True, hr_scale=2.0, hr_second_pass_steps=2))
    guided_hires, _ = latents_of(guided, request(unit, enable_hr=True, hr_scale=2.0, hr_second_pass_steps=2))
    assert guided_hires.shape[-1] == 16 and (plain_hires - guided_hires).abs().max().item() > 1e-2
    source = png_bytes(control_map(7))
    img2img = dict(mode="img2img", init_image=source, denoising_strength=0.6, steps=4)
    late = ControlInput(image=png_bytes(control_map(1)), model="control_sd15_canny", guidance_start=0.9)
    plain, _ = latents_of(guided, request(**img2img))
    off, _ = latents_of(guided, request(late, **img2img))
    on, _ = latents_of(guided, request(canny_unit(1.0), **img2img))
    # t_enc = 2: A1111 counts 3 steps; its counter reads 0, 0, 1 (of 3): start 0.9 never comes.
    assert torch.equal(plain, off) and (plain - on).abs().max().item() > 1e-2


@pytest.fixture(scope="module")
def guided_xl(tiny_sdxl, tmp_path_factory):
    from diffusers import StableDiffusionXLPipeline

    from core.testing.tiny_control import tiny_controlnet

    folder = tmp_path_factory.mktemp("controlnet-xl")
    unet = StableDiffusionXLPipeline.from_pretrained(str(tiny_sdxl.folder), local_files_only=True).unet
    tiny_controlnet(unet, seed=2).save_pretrained(str(folder / "control_xl_canny"))
    tiny_controlnet(unet, seed=4, union=True).save_pretrained(str(folder / "controlnet_union_xl"))
    engine = DiffusersEngine(engine_settings(tiny_sdxl, controlnet_dirs=(str(folder),)))
    yield engine
    engine.close()


def test_sdxl_unit_equals_diffusers_sdxl_controlnet_pipeline(guided_xl) -> None:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLControlNetPipeline

    unit = ControlInput(image=png_bytes(control_map(1)), model="control_xl_canny", weight=0.9)
    ours, _ = latents_of(guided_xl, request(unit, negative_prompt=""))
    plain, _ = latents_of(guided_xl, request(negative_prompt=""))
    model = loaded_model(guided_xl)
    (net,) = nets_of(guided_xl, "control_xl_canny")
    components = {
        k: v for k, v in model.pipe.components.items() if k not in ("image_encoder", "feature_extractor")
    }
    pipe = StableDiffusionXLControlNetPipeline(**components, controlnet=net)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = EulerDiscreteScheduler.from_config(
        model.pipe.scheduler.config, timestep_spacing="linspace"
    )
    noise = rng.ImageRNG((4, 8, 8), [1234], source="cpu").first()
    theirs = pipe(
        PROMPT, num_inference_steps=3, guidance_scale=7.0, latents=noise, height=64, width=64,
        output_type="latent", image=Image.fromarray(control_map(1)), controlnet_conditioning_scale=0.9,
    ).images  # fmt: skip
    assert (ours - theirs).abs().max().item() <= 1e-3
    assert (ours - plain).abs().max().item() > 1e-2


def test_a_cancelled_job_leaves_a_guided_batch_and_the_others_equal_alone(guided) -> None:
    from core.types import GenerationCancelled

    face = png_bytes(control_map(9))
    refs = (ReferenceInput(image=face, scale=0.6),)
    jobs = [
        request(canny_unit(0.9), seed=1, steps=4, references=refs),
        request(canny_unit(0.4, guidance_start=0.5), seed=2, steps=4, count=2, references=refs),
        request(ControlInput(image=png_bytes(control_map(3)), model="control_sd15_canny"), seed=3, steps=4,
                references=refs),
    ]  # fmt: skip
    spy = DecodeSpy(guided)
    try:
        alone = [latents_of_spy(spy, guided, job) for job in (jobs[0], jobs[2])]
        progress: dict[int, list[int]] = {0: [], 1: [], 2: []}
        together = guided.generate_batch(
            jobs,
            on_progress=lambda i, p: progress[i].append(p.step),
            should_cancel=lambda i: i == 1 and bool(progress[1]) and progress[1][-1] >= 2,
        )
    finally:
        del guided.decode
    assert isinstance(together[1], GenerationCancelled)
    assert tuple(spy.latents[-1].shape) == (2, 4, 8, 8)  # job 1's rows left the batch
    for latents, piece in zip(alone, spy.latents[-1].split([1, 1]), strict=True):
        assert max_diff(guided, latents, piece) <= TOLERANCE


def latents_of_spy(spy: DecodeSpy, engine: DiffusersEngine, job: GenerationRequest) -> torch.Tensor:
    engine.generate(job)
    return spy.latents[-1]


def test_reference_image_equals_diffusers_ip_adapter(guided) -> None:
    """chant's reference image (IP-Adapter) = diffusers' own ``load_ip_adapter`` path, same components,
    the same image encoder and adapter weights, Euler and noise."""
    import copy

    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    from core.engine.control.ip_adapter import clip_image_processor
    from core.testing.tiny_control import tiny_image_encoder, tiny_ip_adapter

    face = control_map(9)
    ours, _ = latents_of(guided, request(references=(ReferenceInput(image=png_bytes(face), scale=0.7),)))
    model = loaded_model(guided)
    encoder = tiny_image_encoder(seed=3)
    state = tiny_ip_adapter(model.pipe.unet, encoder, seed=4)
    parts = {
        k: v
        for k, v in model.pipe.components.items()
        if k not in ("image_encoder", "feature_extractor", "unet")
    }
    pipe = StableDiffusionPipeline(
        **parts,
        unet=copy.deepcopy(model.pipe.unet),
        image_encoder=encoder,
        feature_extractor=clip_image_processor(),
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = EulerDiscreteScheduler.from_config(
        model.pipe.scheduler.config, timestep_spacing="linspace"
    )
    split: dict = {"image_proj": {}, "ip_adapter": {}}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        split[head][rest] = value
    pipe.load_ip_adapter(split, subfolder=None, weight_name=None, image_encoder_folder=None)
    pipe.set_ip_adapter_scale(0.7)
    noise = rng.ImageRNG((4, 8, 8), [1234], source="cpu").first()
    theirs = pipe(
        PROMPT, negative_prompt="blurry", num_inference_steps=3, guidance_scale=7.0, latents=noise, height=64,
        width=64, output_type="latent", ip_adapter_image=Image.fromarray(face),
    ).images  # fmt: skip
    assert (ours - theirs).abs().max().item() <= 1e-3


def test_sdxl_union_model_takes_the_task_of_the_control_type(guided_xl) -> None:
    """A union (ControlNet++) model with control type Canny runs its "Hard Edge" task (index 3), as
    diffusers' ``StableDiffusionXLControlNetUnionPipeline`` with ``control_mode=3``."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLControlNetUnionPipeline

    unit = ControlInput(image=png_bytes(control_map(1)), model="controlnet_union_xl", control_type="Canny")
    ours, _ = latents_of(guided_xl, request(unit, negative_prompt=""))
    model = loaded_model(guided_xl)
    (net,) = nets_of(guided_xl, "controlnet_union_xl")
    components = {
        k: v for k, v in model.pipe.components.items() if k not in ("image_encoder", "feature_extractor")
    }
    pipe = StableDiffusionXLControlNetUnionPipeline(**components, controlnet=net)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = EulerDiscreteScheduler.from_config(
        model.pipe.scheduler.config, timestep_spacing="linspace"
    )
    noise = rng.ImageRNG((4, 8, 8), [1234], source="cpu").first()
    theirs = pipe(
        PROMPT, num_inference_steps=3, guidance_scale=7.0, latents=noise, height=64, width=64,
        output_type="latent", control_image=[Image.fromarray(control_map(1))], control_mode=[3],
    ).images  # fmt: skip
    assert (ours - theirs).abs().max().item() <= 1e-3
    depth = ControlInput(image=png_bytes(control_map(1)), model="controlnet_union_xl", control_type="Depth")
    other, _ = latents_of(guided_xl, request(depth, negative_prompt=""))
    assert (ours - other).abs().max().item() > 1e-4  # the task matters
