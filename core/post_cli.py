"""``chant upscale`` and ``chant describe``: the operator's commands for issue 15's models, on a file or a
stored job's image (read from the database), on this machine's engine — no queue, no quota.

    chant upscale photo.png --scale 4 --upscaler "R-ESRGAN 4x+" -o big.png
    chant upscale --job 12 --index 2 --detail 0.3
    chant describe photo.png
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from pathlib import Path

from core import ranges


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "upscale",
        help="upscale an image (a file, or a stored job's) with an upscaler model, as /upscale does",
        description="Upscale IMAGE (or --job N's image) by --scale with an upscaler model by A1111's name "
        "(postprocess.upscaler_dirs) or Lanczos; --detail X adds A1111's SD upscale pass (tiles repainted "
        "at strength X with the default model and the image's prompt). Writes a PNG with the infotext.",
    )
    p.add_argument("image", nargs="?", default=None, help="PNG, JPEG or WebP file")
    p.add_argument(
        "--job", type=int, default=None, metavar="N", help="a stored job's image instead of a file"
    )
    p.add_argument(
        "--index", type=int, default=1, metavar="I", help="which image of --job (1-based; default 1)"
    )
    p.add_argument("--scale", type=float, default=2.0, metavar="X", help="how much larger (default 2)")
    p.add_argument(
        "--upscaler", default=None, metavar="NAME", help="default: postprocess.upscaler if installed"
    )
    p.add_argument(
        "--detail", type=float, default=0.0, metavar="X", help="SD upscale strength 0-1 (0 = none)"
    )
    p.add_argument("--prompt", default=None, help="the detail pass's prompt (default: the image's own)")
    p.add_argument("--seed", type=int, default=-1, metavar="N", help="the detail pass's seed (-1 = random)")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default from config)")
    p.add_argument("-o", "--output", default=None, metavar="FILE", help="default: IMAGE-upscaled.png")
    p.set_defaults(func=_upscale)
    d = sub.add_parser(
        "describe",
        help="turn an image (a file, or a stored job's) into prompts with the WD14 tagger, as /describe does",
        description="Print up to four prompts for IMAGE (or --job N's image): the tags of postprocess.tagger "
        "above the thresholds, characters first, long to short; with --tags, every tag and its probability.",
    )
    d.add_argument("image", nargs="?", default=None, help="PNG, JPEG or WebP file")
    d.add_argument(
        "--job", type=int, default=None, metavar="N", help="a stored job's image instead of a file"
    )
    d.add_argument(
        "--index", type=int, default=1, metavar="I", help="which image of --job (1-based; default 1)"
    )
    d.add_argument("--tagger", default=None, metavar="NAME", help="default: postprocess.tagger")
    d.add_argument("--tags", action="store_true", help="also print each tag with its probability")
    d.set_defaults(func=_describe)


def _fail(command: str, message: str, code: int = 2) -> int:
    print(f"chant {command}: {message}", file=sys.stderr)
    return code


async def _job_image(settings, job_id: int, index: int) -> bytes:
    from core.storage.db import open_database
    from core.storage.repositories import Repositories

    db = await open_database(settings.database, upgrade=False)
    try:
        async with db.session() as s:
            rows = await Repositories(s).jobs.images(job_id)
    finally:
        await db.dispose()
    row = next((r for r in rows if r.position == index), None)
    if row is None or row.png is None:
        raise ValueError(f"job {job_id} has no stored image {index + 1}")
    return row.png


def source_bytes(args: argparse.Namespace, settings) -> tuple[bytes, Path]:
    """The image to work on and where its output goes by default. ValueError/OSError say what is wrong."""
    if (args.image is None) == (args.job is None):
        raise ValueError("give an IMAGE file or --job N (one of them)")
    if args.job is not None:
        return asyncio.run(_job_image(settings, args.job, args.index - 1)), Path(
            f"job-{args.job}-{args.index}.png"
        )
    path = Path(args.image)
    return path.read_bytes(), path


def _upscale(args: argparse.Namespace, settings) -> int:
    from core.engine.image_modes import IMAGE_UPSCALERS, load_image
    from core.engine.infotext import infotext_of_file, settings_from_infotext
    from core.engine.postprocess.names import upscaler_names
    from core.types import GenerationRequest, Mode

    try:
        data, path = source_bytes(args, settings)
        image = load_image(data, max_megapixels=settings.engine.max_input_megapixels, what="image")
    except (OSError, ValueError) as exc:
        return _fail("upscale", str(exc))
    models = upscaler_names(settings.postprocess)
    names = [*models, *(n for n, r in IMAGE_UPSCALERS.items() if r is not None)]
    default = settings.postprocess.upscaler
    name = args.upscaler or (default if default in models else (models[0] if models else "Lanczos"))
    if name not in names:
        return _fail("upscale", f"--upscaler: unknown upscaler {name!r}; this server has: {', '.join(names)}")
    if not ranges.MIN_UPSCALE_FACTOR < args.scale <= ranges.MAX_UPSCALE_FACTOR:
        return _fail("upscale", f"--scale must be above 1 and at most {ranges.MAX_UPSCALE_FACTOR:g}")
    if not ranges.MIN_STRENGTH <= args.detail <= ranges.MAX_STRENGTH:
        return _fail("upscale", "--detail must be from 0 to 1")
    width, height = int(image.width * args.scale) // 8 * 8, int(image.height * args.scale) // 8 * 8
    if max(width, height) > ranges.MAX_SIDE:
        return _fail(
            "upscale", f"{width}x{height} is over {ranges.MAX_SIDE} pixels a side; use a smaller --scale"
        )
    prompt = args.prompt
    if prompt is None:
        text = infotext_of_file(data)
        prompt = settings_from_infotext(text).fields.get("prompt", "") if text else ""
    request = GenerationRequest(
        prompt=prompt, mode=Mode.UPSCALE, init_image=data, width=width, height=height, seed=args.seed,
        upscaler=name, upscale_detail=args.detail,
    )  # fmt: skip
    from core.engine import create_engine
    from core.types import GenerationCancelled, GenerationError

    engine_settings = settings.engine
    if args.device:
        engine_settings = dataclasses.replace(engine_settings, device=args.device)
    print(f"chant upscale: {image.width}x{image.height} -> {width}x{height} with {name}…", file=sys.stderr)
    try:
        engine = create_engine(engine_settings, postprocess=settings.postprocess)
        result = engine.generate(request)
    except (GenerationError, GenerationCancelled) as exc:
        return _fail("upscale", str(exc), 1)
    out = Path(args.output) if args.output else path.with_name(f"{path.stem}-upscaled.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(result.images[0].png)
    print(out)
    return 0


def _describe(args: argparse.Namespace, settings) -> int:
    from core.engine.image_modes import load_image
    from core.engine.postprocess.files import PostprocessError
    from core.services.describe import describe_image

    try:
        data, _ = source_bytes(args, settings)
        load_image(data, max_megapixels=settings.engine.max_input_megapixels, what="image")
    except (OSError, ValueError) as exc:
        return _fail("describe", str(exc))
    post = (
        settings.postprocess
        if args.tagger is None
        else dataclasses.replace(settings.postprocess, tagger=args.tagger)
    )
    try:
        found = describe_image(data, post)
    except PostprocessError as exc:
        return _fail("describe", str(exc), 1)
    if not found.prompts:
        print("chant describe: no tags above the thresholds", file=sys.stderr)
        return 1
    for n, prompt in enumerate(found.prompts, start=1):
        print(f"{n}. {prompt}")
    if args.tags:
        for name, probability in found.tags:
            print(f"{probability:.3f}  {name}")
    return 0
