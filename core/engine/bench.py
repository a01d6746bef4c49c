"""``chant bench engine``: per-stage timings of one job, and the same work through diffusers' pipeline.

Default: the tiny random-weight SD1.x model on the CPU (built on the fly, no download). With
``--shapes sd15|sdxl --random-weights`` the real architectures are built from the shipped config
skeletons with random weights (no download) — meant for a GPU (``--device cuda``). Both our engine
and ``StableDiffusionPipeline`` / ``StableDiffusionXLPipeline`` run the same components, scheduler,
size, steps, CFG and initial latents, interleaved; the ratio compares medians (ours / diffusers).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

DEFAULT_SIZE = {"tiny": 64, "sd15": 512, "sdxl": 1024}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shapes", choices=("tiny", "sd15", "sdxl"), default="tiny")
    parser.add_argument("--random-weights", action="store_true", help="required for sd15/sdxl shapes")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=("auto", "fp16", "bf16", "fp32"), default="auto")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=None, help="square side in pixels (default by shapes)")
    parser.add_argument("--sampler", default="Euler")
    parser.add_argument("--cfg", type=float, default=7.0)
    parser.add_argument("--count", type=int, default=1, help="images per job")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each (after one warm-up)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def _random_weight_model(shapes: str, device, dtype, source):
    """A full-size SD1.5 / SDXL pipeline with random weights, from the shipped config skeletons."""
    import torch
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
        scheduler_config=dict(pipe.scheduler.config),
    )


def _peak_memory_mb(device) -> float:
    import resource

    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run(args: argparse.Namespace, settings) -> dict[str, Any]:
    import dataclasses
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import diffusers
    import torch

    from core.config import ModelSettings
    from core.engine import models, rng, samplers
    from core.engine.diffusers_engine import DiffusersEngine
    from core.types import GenerationRequest

    if args.shapes != "tiny" and not args.random_weights:
        raise SystemExit("chant bench engine: --shapes sd15/sdxl needs --random-weights (no download)")
    if args.threads:
        torch.set_num_threads(args.threads)
    size = args.size or DEFAULT_SIZE[args.shapes]
    tmp = Path(tempfile.mkdtemp(prefix="chant-bench-"))
    engine_settings = dataclasses.replace(
        settings.engine,
        device=args.device,
        dtype=args.dtype,
        models={"bench": ModelSettings(source=str(tmp))},
        default_model="bench",
        embedding_dirs=(),
        preview_every=0,
        max_loaded_models=1,
    )
    engine = DiffusersEngine(engine_settings)
    source = models.resolve_model(engine_settings, "bench")
    if args.shapes == "tiny":
        from core.engine.tiny import build_tiny_sd15

        tiny = build_tiny_sd15(tmp / "tiny")
        source = dataclasses.replace(source, location=str(tiny.single_file), config=str(tiny.config))
        model = models.load_model(source, engine.device, engine.dtype)
        source = models.resolve_model(engine_settings, "bench")
        model.source = source
    else:
        model = _random_weight_model(args.shapes, engine.device, engine.dtype, source)
    engine.models.put(model)

    request = GenerationRequest(
        prompt="a photograph of an astronaut riding a horse, highly detailed",
        negative_prompt="blurry, low quality",
        steps=args.steps,
        cfg_scale=args.cfg,
        sampler=args.sampler,
        seed=1234,
        width=size,
        height=size,
        count=args.count,
        model="bench",
        rng="cpu",
    )
    pipe_cls = type(model.pipe)
    pipe = pipe_cls(**model.pipe.components)
    pipe.set_progress_bar_config(disable=True)
    latents = rng.ImageRNG(
        (4, size // model.vae_scale_factor, size // model.vae_scale_factor),
        [1234 + i for i in range(args.count)],
        source="cpu",
    ).first()

    def sync() -> None:
        if engine.device.type == "cuda":
            torch.cuda.synchronize(engine.device)

    def ours() -> Any:
        start = time.perf_counter()
        engine.generate(request)
        sync()
        return time.perf_counter() - start, engine.last_stats

    def theirs() -> float:
        pipe.scheduler = samplers.make_scheduler(model.scheduler_config, args.sampler, "Automatic")
        start = time.perf_counter()
        with torch.no_grad():
            pipe(
                request.prompt,
                negative_prompt=request.negative_prompt,
                num_inference_steps=args.steps,
                guidance_scale=args.cfg,
                latents=latents.to(engine.device, engine.dtype),
                height=size,
                width=size,
                num_images_per_prompt=args.count,
            )
        sync()
        return time.perf_counter() - start

    ours()  # warm-up
    theirs()
    if engine.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(engine.device)
    our_runs, our_png, their_runs, stats = [], [], [], []
    for _ in range(max(1, args.repeats)):
        seconds, stat = ours()
        our_runs.append(seconds)
        our_png.append(stat.png)
        stats.append(stat)
        their_runs.append(theirs())
    peak = _peak_memory_mb(engine.device)
    if engine.device.type == "cuda":  # per-stage figures need a GPU sync at every boundary
        engine.sync_stages = True
        stats = [ours()[1] for _ in range(max(1, args.repeats))]
        engine.sync_stages = False
    median_stat = sorted(stats, key=lambda s: s.total)[len(stats) // 2]
    steps = median_stat.steps
    ours_total = statistics.median(our_runs)
    ours_without_png = statistics.median(total - png for total, png in zip(our_runs, our_png, strict=True))
    theirs_total = statistics.median(their_runs)
    result = {
        "shapes": args.shapes,
        "device": str(engine.device),
        "card": torch.cuda.get_device_name(engine.device) if engine.device.type == "cuda" else "cpu",
        "dtype": str(engine.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "size": f"{size}x{size}",
        "steps": args.steps,
        "sampler": args.sampler,
        "cfg": args.cfg,
        "images_per_job": args.count,
        "repeats": len(our_runs),
        "text_encode_s": round(median_stat.encode, 5),
        "step_s": [round(s, 5) for s in steps],
        "step_median_s": round(statistics.median(steps), 5),
        "it_per_s": round(len(steps) / sum(steps), 3),
        "vae_decode_s": round(median_stat.decode, 5),
        "png_s": round(median_stat.png, 5),
        "total_s": round(ours_total, 5),
        "images_per_s": round(args.count / ours_total, 3),
        "diffusers_pipeline_s": round(theirs_total, 5),
        "diffusers_images_per_s": round(args.count / theirs_total, 3),
        "ratio_vs_diffusers": round(ours_without_png / theirs_total, 4),
        "ratio_vs_diffusers_with_png": round(ours_total / theirs_total, 4),
        "peak_memory_mb": round(peak, 1),
        "peak_memory_kind": "cuda max_memory_allocated"
        if engine.device.type == "cuda"
        else "process max RSS",
        "model_build_s": round(model.load_seconds, 3),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
    }
    engine.close()
    shutil.rmtree(tmp, ignore_errors=True)
    return result
