"""``chant generate``: one job from the command line (the operator's tool: model paths allowed)."""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="generate images from a prompt (A1111 semantics) and write PNGs with A1111 infotext",
        description="Generate images. --model takes a configured name or a path to a diffusers "
        "folder or a single .safetensors file.",
    )
    p.add_argument("prompt", help="the prompt, A1111 syntax")
    p.add_argument("--negative", default="", metavar="TEXT", help="negative prompt")
    p.add_argument("--steps", type=int, default=20, metavar="N")
    p.add_argument("--cfg", type=float, default=7.0, metavar="X", help="CFG scale (default 7)")
    p.add_argument(
        "--sampler", default="Euler a", metavar="NAME", help='A1111 sampler name (default "Euler a")'
    )
    p.add_argument("--schedule", default="Automatic", metavar="TYPE", help="A1111 schedule type")
    p.add_argument("--seed", type=int, default=-1, metavar="N", help="-1 = random (default)")
    p.add_argument("--size", default="512x512", metavar="WxH", help="image size (default 512x512)")
    p.add_argument(
        "--model", default=None, metavar="NAME|PATH", help="configured name, or a folder/file path"
    )
    p.add_argument("--clip-skip", type=int, default=None, metavar="N", help="A1111 numbering: 1 = last layer")
    p.add_argument(
        "--rng", choices=("gpu", "cpu", "nv"), default=None, help="noise source (default from config)"
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default from config")
    p.add_argument(
        "-n", "--count", type=int, default=1, metavar="COUNT", help="images (seeds seed..seed+COUNT-1)"
    )
    p.add_argument("-o", "--output", default="out.png", metavar="FILE", help="out.png, then out-1.png, ...")
    p.set_defaults(func=_generate)


def parse_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", text)
    if not match:
        raise ValueError(f"size must look like 512x768, not {text!r}")
    return int(match.group(1)), int(match.group(2))


def output_paths(output: str, count: int) -> list[Path]:
    """``out.png`` for the first image, ``out-1.png``, ``out-2.png``, ... for the others."""
    path = Path(output)
    suffix = path.suffix or ".png"
    stem = path.with_suffix("") if path.suffix else path
    return [Path(f"{stem}{suffix}")] + [Path(f"{stem}-{i}{suffix}") for i in range(1, count)]


def _generate(args: argparse.Namespace, settings) -> int:
    from core.types import GenerationCancelled, GenerationError, GenerationRequest

    try:
        width, height = parse_size(args.size)
    except ValueError as exc:
        print(f"chant generate: {exc}", file=sys.stderr)
        return 2
    engine_settings = settings.engine
    if args.device:
        engine_settings = dataclasses.replace(engine_settings, device=args.device)
    request = GenerationRequest(
        prompt=args.prompt,
        negative_prompt=args.negative,
        steps=args.steps,
        cfg_scale=args.cfg,
        sampler=args.sampler,
        schedule_type=args.schedule,
        seed=args.seed,
        width=width,
        height=height,
        count=args.count,
        model=args.model,
        clip_skip=args.clip_skip,
        rng=args.rng,
    )
    from tqdm import tqdm

    from core.engine import create_engine

    bar = tqdm(total=args.steps, unit="step", file=sys.stderr, dynamic_ncols=True)

    def on_progress(progress) -> None:
        bar.total = progress.total
        bar.n = progress.step
        bar.refresh()

    try:
        engine = create_engine(engine_settings, allow_paths=True)
        result = engine.generate(request, on_progress=on_progress)
    except (GenerationError, GenerationCancelled) as exc:
        bar.close()
        print(f"chant generate: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        bar.close()
        print("chant generate: interrupted", file=sys.stderr)
        return 130
    bar.close()
    paths = output_paths(args.output, len(result.images))
    for path, image in zip(paths, result.images, strict=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(image.png)
        print(f"{path}  seed={image.seed}")
    timings = ", ".join(f"{k} {v:.2f}s" for k, v in result.timings.items())
    print(f"model {result.model_name} [{result.model_hash}]: {timings}", file=sys.stderr)
    return 0
