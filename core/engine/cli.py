"""``chant generate``: one job from the command line (the operator's tool: model paths allowed).

Everything the arguments say is checked before torch is imported (:func:`request_from_args`: sizes,
counts, ranges from ``core.ranges``, the prompt's syntax through ``core.prompt``), so a typo fails in
a fraction of a second; the sampler name is checked right after the engine is imported, before the
model loads; the progress bar starts with the first step, after the model is loaded.
"""

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
    p.add_argument("--steps", type=int, default=20, metavar="N", help="sampling steps")
    p.add_argument("--cfg", type=float, default=7.0, metavar="X", help="CFG scale (default 7)")
    p.add_argument(
        "--sampler", default="Euler a", metavar="NAME", help='A1111 sampler name (default "Euler a")'
    )
    p.add_argument("--schedule", default="Automatic", metavar="TYPE", help="A1111 schedule type (default: %(default)s)")
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
    image = p.add_argument_group("img2img / inpaint (A1111 options)")
    image.add_argument("--init-image", default=None, metavar="FILE", help="source image: img2img")
    image.add_argument("--mask", default=None, metavar="FILE", help="inpaint mask (white = repaint)")
    image.add_argument(
        "--inpaint", action="store_true", help="inpaint the source's transparent pixels (no --mask)"
    )
    image.add_argument("--strength", type=float, default=0.75, metavar="X", help="denoising strength")
    image.add_argument(
        "--resize-mode", type=int, choices=(0, 1, 2), default=0, help="0 just resize, 1 crop, 2 fill"
    )
    image.add_argument("--mask-blur", type=int, default=4, metavar="N", help="mask blur in pixels")
    image.add_argument(
        "--fill", type=int, choices=(0, 1, 2, 3), default=1, help="0 fill, 1 original, 2 noise, 3 nothing"
    )
    image.add_argument("--masked-only", action="store_true", help='"Only masked" inpaint area')
    image.add_argument("--padding", type=int, default=32, metavar="N", help="masked-only padding")
    hires = p.add_argument_group("hires fix (txt2img)")
    hires.add_argument("--hires", action="store_true", help="enable hires fix")
    hires.add_argument("--hr-scale", type=float, default=2.0, metavar="X", help="upscale by")
    hires.add_argument("--hr-size", default=None, metavar="WxH", help="resize to (0 keeps the aspect)")
    hires.add_argument("--hr-upscaler", default="Latent", metavar="NAME", help="Latent, Lanczos, ...")
    hires.add_argument("--hr-steps", type=int, default=0, metavar="N", help="0 = same as --steps")
    hires.add_argument("--hr-strength", type=float, default=0.7, metavar="X", help="hires denoising strength")
    hires.add_argument("--hr-prompt", default="", metavar="TEXT", help="hires pass prompt (empty: the prompt)")
    hires.add_argument("--hr-negative", default="", metavar="TEXT", help="hires pass negative prompt")
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


def _in(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ValueError(f"{name} must be from {low:.15g} to {high:.15g}, not {value:.15g}")


def check_args(args: argparse.Namespace) -> tuple[tuple[int, int], tuple[int, int]]:
    """Every value in ``args`` that can be checked without torch; ValueError naming the option.

    Returns the parsed (width, height) and hires (x, y)."""
    from core import ranges
    from core.prompt import PromptError, interpret

    width, height = parse_size(args.size)
    for name, side in (("--size width", width), ("--size height", height)):
        if not ranges.MIN_SIDE <= side <= ranges.MAX_SIDE or side % ranges.SIDE_MULTIPLE:
            raise ValueError(
                f"{name} must be a multiple of {ranges.SIDE_MULTIPLE} from {ranges.MIN_SIDE} to "
                f"{ranges.MAX_SIDE}, not {side}"
            )
    hr_x, hr_y = parse_size(args.hr_size) if args.hr_size else (0, 0)
    _in("--steps", args.steps, ranges.MIN_STEPS, ranges.MAX_STEPS)
    _in("--count", args.count, ranges.MIN_COUNT, ranges.MAX_COUNT)
    _in("--cfg", args.cfg, ranges.MIN_CFG, ranges.MAX_CFG)
    if args.seed != ranges.RANDOM_SEED:
        _in("--seed (-1 = random)", args.seed, 0, ranges.MAX_SEED)
    if args.clip_skip is not None:
        _in("--clip-skip", args.clip_skip, ranges.MIN_CLIP_SKIP, ranges.MAX_CLIP_SKIP)
    _in("--strength", args.strength, ranges.MIN_STRENGTH, ranges.MAX_STRENGTH)
    _in("--mask-blur", args.mask_blur, ranges.MIN_MASK_BLUR, ranges.MAX_MASK_BLUR)
    _in("--padding", args.padding, ranges.MIN_PADDING, ranges.MAX_PADDING)
    _in("--hr-scale", args.hr_scale, ranges.MIN_HIRES_SCALE, ranges.MAX_HIRES_SCALE)
    _in("--hr-steps (0 = --steps)", args.hr_steps, 0, ranges.MAX_HIRES_STEPS)
    _in("--hr-strength", args.hr_strength, ranges.MIN_STRENGTH, ranges.MAX_STRENGTH)
    if args.hires and args.hr_upscaler not in ranges.UPSCALERS:
        raise ValueError(f"--hr-upscaler must be one of {', '.join(ranges.UPSCALERS)}, not {args.hr_upscaler!r}")
    if not args.sampler.strip():
        raise ValueError("--sampler must name an A1111 sampler, e.g. \"Euler a\"")
    for option, text, negative in (
        ("prompt", args.prompt, False),
        ("--negative", args.negative, True),
        ("--hr-prompt", args.hr_prompt, False),
        ("--hr-negative", args.hr_negative, True),
    ):
        try:
            interpret(text, args.steps, negative=negative, hires_steps=(args.hr_steps or args.steps) if args.hires else None)
        except PromptError as exc:
            raise ValueError(f"{option}: {exc}") from None
    return (width, height), (hr_x, hr_y)


def _check_sampler(args: argparse.Namespace) -> None:
    """The sampler table lives with the schedulers (torch); checked before the model loads."""
    from core.engine import samplers

    samplers.resolve(args.sampler, args.schedule)


def _generate(args: argparse.Namespace, settings) -> int:
    from core.types import GenerationCancelled, GenerationError, GenerationRequest, Mode

    try:
        (width, height), (hr_x, hr_y) = check_args(args)
        init_image = Path(args.init_image).read_bytes() if args.init_image else None
        mask_image = Path(args.mask).read_bytes() if args.mask else None
    except OSError as exc:
        print(f"chant generate: cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
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
        mode=Mode.INPAINT if (mask_image or args.inpaint) else Mode.IMG2IMG if init_image else Mode.TXT2IMG,
        init_image=init_image,
        mask_image=mask_image,
        denoising_strength=args.strength,
        resize_mode=args.resize_mode,
        mask_blur=args.mask_blur,
        inpainting_fill=args.fill,
        inpaint_full_res=args.masked_only,
        inpaint_full_res_padding=args.padding,
        enable_hr=args.hires,
        hr_scale=args.hr_scale,
        hr_resize_x=hr_x,
        hr_resize_y=hr_y,
        hr_upscaler=args.hr_upscaler,
        hr_second_pass_steps=args.hr_steps,
        hr_denoising_strength=args.hr_strength,
        hr_prompt=args.hr_prompt,
        hr_negative_prompt=args.hr_negative,
    )
    from tqdm import tqdm

    from core.engine import create_engine

    try:
        _check_sampler(args)
    except ValueError as exc:
        print(f"chant generate: --sampler/--schedule: {exc}", file=sys.stderr)
        return 2
    bars: list = []  # the bar starts with the first step: after the model is loaded and the prompt encoded

    def on_progress(progress) -> None:
        if not bars:
            bars.append(tqdm(total=progress.total, unit="step", file=sys.stderr, dynamic_ncols=True))
        bar = bars[0]
        bar.total = progress.total
        bar.n = progress.step
        bar.refresh()

    def close_bar() -> None:
        for bar in bars:
            bar.close()

    print(f"chant generate: loading {args.model or settings.engine.default_model or 'the default model'}…", file=sys.stderr)
    try:
        engine = create_engine(engine_settings, allow_paths=True)
        result = engine.generate(request, on_progress=on_progress)
    except (GenerationError, GenerationCancelled) as exc:
        close_bar()
        print(f"chant generate: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        close_bar()
        print("chant generate: interrupted", file=sys.stderr)
        return 130
    close_bar()
    paths = output_paths(args.output, len(result.images))
    for path, image in zip(paths, result.images, strict=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(image.png)
        print(f"{path}  seed={image.seed}")
    timings = ", ".join(f"{k} {v:.2f}s" for k, v in result.timings.items())
    print(f"model {result.model_name} [{result.model_hash}]: {timings}", file=sys.stderr)
    return 0
