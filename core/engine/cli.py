"""``chant generate``: one job from the command line (the operator's tool: model paths allowed).

Everything the arguments say is checked before torch is imported (:func:`check_request`: sizes, counts,
ranges from ``core.ranges``, the prompt's syntax through ``core.prompt``), so a typo fails in a fraction
of a second; the sampler name is checked right after the engine is imported, before the model loads; the
progress bar starts with the first step, after the model is loaded.
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
        "folder or a single .safetensors file. --infotext reproduces an A1111 image's settings; "
        "options given as well override them.",
    )
    # Defaults are GenerationRequest's: None here means "not given", so --infotext can fill it.
    p.add_argument("prompt", nargs="?", default=None, help="the prompt, A1111 syntax")
    p.add_argument(
        "--infotext",
        default=None,
        metavar="FILE|TEXT|-",
        help="A1111 parameters to reproduce: a PNG/JPEG/WebP made by A1111 or chant, a text file, "
        "the text itself, or - for standard input",
    )
    p.add_argument("--negative", default=None, metavar="TEXT", help="negative prompt")
    p.add_argument("--steps", type=int, default=None, metavar="N", help="default 20")
    p.add_argument("--cfg", type=float, default=None, metavar="X", help="CFG scale (default 7)")
    p.add_argument(
        "--cfg-rescale",
        type=float,
        default=None,
        metavar="PHI",
        help="CFG rescale 0..1 (v-prediction models; 0 = off)",
    )
    p.add_argument("--eta", type=float, default=None, metavar="X", help="eta (ancestral/SDE/DDIM samplers)")
    p.add_argument(
        "--ensd", type=int, default=None, metavar="N", help="eta noise seed delta (default from config)"
    )
    p.add_argument("--sampler", default=None, metavar="NAME", help='A1111 sampler name (default "Euler a")')
    p.add_argument("--schedule", default=None, metavar="TYPE", help="A1111 schedule type (default Automatic)")
    p.add_argument("--seed", type=int, default=None, metavar="N", help="-1 = random (default)")
    p.add_argument("--size", default=None, metavar="WxH", help="image size (default 512x512)")
    p.add_argument(
        "--model", default=None, metavar="NAME|PATH", help="configured name, or a folder/file path"
    )
    p.add_argument("--clip-skip", type=int, default=None, metavar="N", help="A1111 numbering: 1 = last layer")
    p.add_argument(
        "--rng", choices=("gpu", "cpu", "nv"), default=None, help="noise source (default from config)"
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default from config")
    p.add_argument(
        "-n", "--count", type=int, default=None, metavar="COUNT", help="images (seeds seed..seed+COUNT-1)"
    )
    p.add_argument("-o", "--output", default="out.png", metavar="FILE", help="out.png, then out-1.png, ...")
    image = p.add_argument_group("img2img / inpaint (A1111 options)")
    image.add_argument("--init-image", default=None, metavar="FILE", help="source image: img2img")
    image.add_argument("--mask", default=None, metavar="FILE", help="inpaint mask (white = repaint)")
    image.add_argument(
        "--inpaint", action="store_true", help="inpaint the source's transparent pixels (no --mask)"
    )
    image.add_argument("--strength", type=float, default=None, metavar="X", help="denoising strength (0.75)")
    image.add_argument(
        "--resize-mode",
        type=int,
        choices=(0, 1, 2),
        default=None,
        help="0 just resize (default), 1 crop, 2 fill",
    )
    image.add_argument("--mask-blur", type=int, default=None, metavar="N", help="default 4")
    image.add_argument(
        "--fill",
        type=int,
        choices=(0, 1, 2, 3),
        default=None,
        help="0 fill, 1 original (default), 2 noise, 3 nothing",
    )
    image.add_argument("--masked-only", action="store_true", default=None, help='"Only masked" inpaint area')
    image.add_argument("--padding", type=int, default=None, metavar="N", help="masked-only padding (32)")
    _guide_options(p)
    hires = p.add_argument_group("hires fix (txt2img)")
    hires.add_argument("--hires", action="store_true", default=None, help="enable hires fix")
    hires.add_argument("--hr-scale", type=float, default=None, metavar="X", help="default 2")
    hires.add_argument("--hr-size", default=None, metavar="WxH", help="resize to (0 keeps the aspect)")
    hires.add_argument("--hr-upscaler", default=None, metavar="NAME", help="Latent (default), Lanczos, ...")
    hires.add_argument("--hr-steps", type=int, default=None, metavar="N", help="0 = same as --steps")
    hires.add_argument("--hr-strength", type=float, default=None, metavar="X", help="default 0.7")
    hires.add_argument("--hr-prompt", default=None, metavar="TEXT")
    hires.add_argument("--hr-negative", default=None, metavar="TEXT")
    _after_decoding_options(p)
    p.set_defaults(func=_generate)


def _guide_options(p: argparse.ArgumentParser) -> None:
    guide = p.add_argument_group("ControlNet and reference images (sd-webui-controlnet's unit fields)")
    guide.add_argument("--control", action="append", default=None, metavar="FILE",
                       help="a control image (repeat for more units; with --infotext: its units' images)")  # fmt: skip
    guide.add_argument("--control-type", default=None, metavar="NAME",
                       help="preprocessor: canny, depth_anything_v2, dw_openpose_full, lineart_standard, "
                            "scribble_xdog, tile_resample, none (a ready map; default)")  # fmt: skip
    guide.add_argument(
        "--control-model", default=None, metavar="NAME", help="ControlNet name (default: one that fits)"
    )
    guide.add_argument("--control-weight", type=float, default=None, metavar="X", help="default 1")
    guide.add_argument("--control-start", type=float, default=None, metavar="X", help="guidance start (0)")
    guide.add_argument("--control-end", type=float, default=None, metavar="X", help="guidance end (1)")
    guide.add_argument("--control-mode", default=None, metavar="MODE",
                       help='"Balanced", "My prompt is more important", "ControlNet is more important"')  # fmt: skip
    guide.add_argument(
        "--reference", action="append", default=None, metavar="FILE", help="a reference image (IP-Adapter)"
    )
    guide.add_argument(
        "--reference-model", default=None, metavar="NAME", help="IP-Adapter name (default: one that fits)"
    )
    guide.add_argument("--reference-scale", type=float, default=None, metavar="X", help="default 1")


def _after_decoding_options(p: argparse.ArgumentParser) -> None:
    after = p.add_argument_group("after decoding")
    after.add_argument(
        "--face-restore",
        default=None,
        metavar="NAME|none",
        help="face restoration model (GFPGAN ...); none = off, also when an --infotext asks for it",
    )
    after.add_argument(
        "--detailer",
        default=None,
        metavar="MODEL|none",
        help="the detailer's face detector model; none = off, also when an --infotext asks for it",
    )


# GenerationRequest field <- option, for the options that are one field each.
_FIELDS = {
    "prompt": "prompt",
    "negative_prompt": "negative",
    "steps": "steps",
    "cfg_scale": "cfg",
    "cfg_rescale": "cfg_rescale",
    "eta": "eta",
    "eta_noise_seed_delta": "ensd",
    "sampler": "sampler",
    "schedule_type": "schedule",
    "seed": "seed",
    "count": "count",
    "model": "model",
    "clip_skip": "clip_skip",
    "rng": "rng",
    "denoising_strength": "strength",
    "resize_mode": "resize_mode",
    "mask_blur": "mask_blur",
    "inpainting_fill": "fill",
    "inpaint_full_res": "masked_only",
    "inpaint_full_res_padding": "padding",
    "enable_hr": "hires",
    "hr_scale": "hr_scale",
    "hr_upscaler": "hr_upscaler",
    "hr_second_pass_steps": "hr_steps",
    "hr_denoising_strength": "hr_strength",
    "hr_prompt": "hr_prompt",
    "hr_negative_prompt": "hr_negative",
}


def read_infotext(value: str, stdin=None) -> str:
    """``--infotext``: ``-`` reads standard input; an existing file is an image (its A1111 parameters) or
    text; anything else is the parameters text itself. OSError/ValueError say what is wrong."""
    from core.engine.infotext import infotext_of_file

    if value == "-":
        return (stdin or sys.stdin).read()
    path = Path(value)
    try:
        is_file = "\n" not in value and path.is_file()
    except OSError:  # e.g. a one-line text too long to be a file name
        is_file = False
    if is_file:
        data = path.read_bytes()
        try:
            text = infotext_of_file(data)
        except OSError:  # not an image: a text file
            try:
                return data.decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError(f"{path.name} is neither an image nor UTF-8 text") from None
        if text is None:
            raise ValueError(f"{path.name} holds no A1111 parameters")
        return text
    if re.fullmatch(r"[^\n]*\.(png|jpe?g|webp|txt)", value, re.IGNORECASE):
        raise ValueError(f"no such file: {value}")
    return value


def match_model(settings, name: str | None, model_hash: str | None) -> str | None:
    """The model an infotext names: a configured one by name (or file stem), else a checkpoint found in
    the model folders by name (or file stem, which is what A1111 writes), else a configured one by
    A1111 short hash.

    None when the infotext names no model; ValueError when it names one that is not there.
    """
    if not name and not model_hash:
        return None
    from core.engine import catalog
    from core.engine.models import short_hash

    models = settings.models
    for key, model in models.items():
        if name and name.lower() in (key.lower(), Path(model.source).stem.lower()):
            return key
    for found in catalog.scan_checkpoints(settings.model_dirs, allow_pickle=settings.allow_pickle):
        if name and name.lower() in (found.name.lower(), found.path.stem.lower()):
            return found.name
    for key, model in models.items():
        path = Path(model.source).expanduser()
        if model_hash and path.is_file() and short_hash(path) == model_hash.lower()[:10]:
            return key
    known = ", ".join(catalog.model_names(settings)[:20]) or "none"
    raise ValueError(
        f"the infotext's model {name or '?'} [{model_hash or 'no hash'}] is not here "
        f"(known: {known}); give --model NAME to use one of yours"
    )


def request_from_args(args: argparse.Namespace, settings) -> tuple[object, tuple[str, ...]]:
    """The request: the options given, else the infotext's settings, else the model's defaults
    (``[engine.models.NAME]``, 1024x1024 for SDXL), else GenerationRequest's defaults. The model's
    prompt prefix/suffix wrap a prompt given here (an infotext's prompt already carries them).

    Returns it with the infotext keys chant does not reproduce. ValueError/OSError say what is wrong.
    """
    from core.engine.infotext import settings_from_infotext
    from core.types import GenerationRequest, Mode

    fields: dict = {}
    ignored: tuple[str, ...] = ()
    if args.infotext is not None:
        found = settings_from_infotext(read_infotext(args.infotext))
        fields.update(found.fields)
        ignored = found.ignored
        if args.model is None:
            fields["model"] = match_model(settings, found.model_name, found.model_hash)
    fields.update(
        {field: getattr(args, opt) for field, opt in _FIELDS.items() if getattr(args, opt) is not None}
    )
    for field, opt in (("face_restoration", "face_restore"), ("detailer", "detailer")):
        value = getattr(args, opt, None)
        if value is not None:
            fields[field] = "" if value.strip().lower() in ("", "none", "off") else value.strip()
    if not fields.get("prompt") and args.infotext is None:
        raise ValueError("give a prompt (or --infotext)")
    if args.size is not None:
        fields["width"], fields["height"] = parse_size(args.size)
    if args.hr_size is not None:
        fields["hr_resize_x"], fields["hr_resize_y"] = parse_size(args.hr_size)
    defaults = _model_defaults(settings, fields.get("model"))
    for field, value in defaults.fields().items():
        fields.setdefault(field, value)
    if args.prompt is not None:
        fields["prompt"] = defaults.wrap(args.prompt)
    init_image = Path(args.init_image).read_bytes() if args.init_image else None
    mask_image = Path(args.mask).read_bytes() if args.mask else None
    mode = Mode.INPAINT if (mask_image or args.inpaint) else Mode.IMG2IMG if init_image else Mode.TXT2IMG
    fields.setdefault("prompt", "")
    fields.update(_guides_from_args(args, fields.get("controls", ()), fields.get("references", ())))
    request = GenerationRequest(**fields, mode=mode, init_image=init_image, mask_image=mask_image)
    return request, ignored


def _guides_from_args(args: argparse.Namespace, controls, references) -> dict:
    """``--control``/``--reference`` images on the infotext's units (in order), or on new ones with the
    ``--control-*``/``--reference-*`` values. A unit read from an infotext needs its image."""
    from core.types import ControlInput, ReferenceInput

    images = [Path(f).read_bytes() for f in args.control or ()]
    given = {
        "module": args.control_type, "model": args.control_model, "weight": args.control_weight,
        "guidance_start": args.control_start, "guidance_end": args.control_end, "control_mode": args.control_mode,
    }  # fmt: skip
    given = {k: v for k, v in given.items() if v is not None}
    if args.control_type is not None:  # a preprocessor, or a control type (its default preprocessor)
        from core.engine.control.preprocessors import CONTROL_TYPES, PREPROCESSORS

        if args.control_type not in PREPROCESSORS:
            match = {k.lower(): k for k in CONTROL_TYPES}.get(args.control_type.lower())
            if match is None:
                raise ValueError(
                    f"--control-type {args.control_type!r}: not a preprocessor ({', '.join(PREPROCESSORS)}) "
                    f"or control type ({', '.join(CONTROL_TYPES)})"
                )
            given["module"], given["control_type"] = CONTROL_TYPES[match][0], match
    units = list(controls) or [ControlInput() for _ in images]
    if len(images) != len(units):
        raise ValueError(f"the infotext has {len(units)} ControlNet units: give as many --control images")
    out: dict = {}
    if units:
        out["controls"] = tuple(
            dataclasses.replace(u, image=i, **given) for u, i in zip(units, images, strict=True)
        )
    elif given:
        raise ValueError("--control-type/--control-model/--control-weight/... need a --control image")
    ref_images = [Path(f).read_bytes() for f in args.reference or ()]
    refs = list(references)[:1] or [ReferenceInput()]
    if ref_images:
        base = refs[0]
        values = {"model": args.reference_model, "scale": args.reference_scale}
        base = dataclasses.replace(base, **{k: v for k, v in values.items() if v is not None})
        out["references"] = tuple(dataclasses.replace(base, image=data) for data in ref_images)
    elif references:
        raise ValueError("the infotext has a reference image (IP-Adapter): give it with --reference")
    return out


def _model_defaults(settings, model: str | None):
    """What the model sets (``core.engine.catalog``); a checkpoint named by path: 1024x1024 for SDXL."""
    from core.engine import catalog

    name = model or catalog.default_model_name(settings)
    if name and name not in settings.models and Path(name).expanduser().exists():
        configured = catalog.configured_name_of(settings, Path(name))
        if configured is not None:  # a configured model's file, by its path: its table
            return catalog.model_defaults(settings, configured)
        if catalog.guess_kind(Path(name).expanduser()) == "sdxl":
            return catalog.ModelDefaults(*catalog.SDXL_SIZE)
        return catalog.ModelDefaults()
    return catalog.model_defaults(settings, name)


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


def check_request(request, postprocess=None) -> None:
    """Every value of ``request`` that can be checked without torch; ValueError naming the option.
    ``postprocess``: the settings whose installed upscaler models ``--hr-upscaler`` may name."""
    from core import ranges
    from core.prompt import PromptError, interpret

    r = request
    for name, side in (("--size width", r.width), ("--size height", r.height)):
        if not ranges.MIN_SIDE <= side <= ranges.MAX_SIDE or side % ranges.SIDE_MULTIPLE:
            raise ValueError(
                f"{name} must be a multiple of {ranges.SIDE_MULTIPLE} from {ranges.MIN_SIDE} to "
                f"{ranges.MAX_SIDE}, not {side}"
            )
    _in("--steps", r.steps, ranges.MIN_STEPS, ranges.MAX_STEPS)
    _in("--count", r.count, ranges.MIN_COUNT, ranges.MAX_COUNT)
    _in("--cfg", r.cfg_scale, ranges.MIN_CFG, ranges.MAX_CFG)
    if r.seed != ranges.RANDOM_SEED:
        _in("--seed (-1 = random)", r.seed, 0, ranges.MAX_SEED)
    if r.clip_skip is not None:
        _in("--clip-skip", r.clip_skip, ranges.MIN_CLIP_SKIP, ranges.MAX_CLIP_SKIP)
    _in("--strength", r.denoising_strength, ranges.MIN_STRENGTH, ranges.MAX_STRENGTH)
    _in("--mask-blur", r.mask_blur, ranges.MIN_MASK_BLUR, ranges.MAX_MASK_BLUR)
    _in("--padding", r.inpaint_full_res_padding, ranges.MIN_PADDING, ranges.MAX_PADDING)
    _in("--hr-scale", r.hr_scale, ranges.MIN_HIRES_SCALE, ranges.MAX_HIRES_SCALE)
    _in("--hr-steps (0 = --steps)", r.hr_second_pass_steps, 0, ranges.MAX_HIRES_STEPS)
    _in("--hr-strength", r.hr_denoising_strength, ranges.MIN_STRENGTH, ranges.MAX_STRENGTH)
    _in("--cfg-rescale", r.cfg_rescale, ranges.MIN_CFG_RESCALE, ranges.MAX_CFG_RESCALE)
    if r.eta is not None:
        _in("--eta", r.eta, ranges.MIN_ETA, ranges.MAX_ETA)
    if r.eta_noise_seed_delta is not None:
        _in("--ensd", r.eta_noise_seed_delta, 0, ranges.MAX_SEED)
    if r.enable_hr and r.hr_upscaler not in ranges.UPSCALERS:
        from core.config import PostprocessSettings
        from core.engine.postprocess.names import hires_upscaler_names

        known = hires_upscaler_names(postprocess or PostprocessSettings())
        if r.hr_upscaler not in known:
            raise ValueError(f"--hr-upscaler must be one of {', '.join(known)}, not {r.hr_upscaler!r}")
    if (r.face_restoration or r.detailer) and postprocess is not None:
        from core.engine.postprocess.files import PostprocessError
        from core.engine.postprocess.names import check_after_decoding

        for restorer, detailer, off in (
            (r.face_restoration, "", "--face-restore"),
            ("", r.detailer, "--detailer"),
        ):
            try:
                check_after_decoding(postprocess, restorer, detailer)
            except PostprocessError as exc:
                raise ValueError(f"{exc} (or generate without it: {off} none)") from None
    if not r.sampler.strip():
        raise ValueError('--sampler must name an A1111 sampler, e.g. "Euler a"')
    hires_steps = (r.hr_second_pass_steps or r.steps) if r.enable_hr else None
    for option, text, negative in (
        ("prompt", r.prompt, False),
        ("--negative", r.negative_prompt, True),
        ("--hr-prompt", r.hr_prompt, False),
        ("--hr-negative", r.hr_negative_prompt, True),
    ):
        try:
            interpret(text, r.steps, negative=negative, hires_steps=hires_steps)
        except PromptError as exc:
            raise ValueError(f"{option}: {exc}") from None


def _check_sampler(request) -> None:
    """The sampler table lives with the engine (torch); checked before the model loads."""
    from core.engine import samplers

    samplers.resolve(request.sampler, request.schedule_type)


def _with_a_model(args: argparse.Namespace, settings, request, postprocess=None):
    """``request``, after downloading the default model when it asks for the default and there is no
    model at all (``engine.auto_download``)."""
    if request.model is not None:
        return request
    from core.engine.download import ensure_model

    if ensure_model(settings) is None:
        return request
    request, _ = request_from_args(args, settings)  # the downloaded model's defaults apply now
    check_request(request, postprocess)
    return request


def _generate(args: argparse.Namespace, settings) -> int:
    from core.types import GenerationCancelled, GenerationError

    try:
        request, ignored = request_from_args(args, settings.engine)
        check_request(request, settings.postprocess)
    except OSError as exc:
        print(f"chant generate: cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"chant generate: {exc}", file=sys.stderr)
        return 2
    if ignored:
        print(f"chant generate: not reproduced from the infotext: {', '.join(ignored)}", file=sys.stderr)
    engine_settings = settings.engine
    if args.device:
        engine_settings = dataclasses.replace(engine_settings, device=args.device)
    if request.model is None:  # the default model: with none at all and downloads off, say so now
        from core.engine.download import download_needed

        try:
            download_needed(engine_settings)
        except GenerationError as exc:
            print(f"chant generate: {exc}", file=sys.stderr)
            return 1
    from tqdm import tqdm

    from core.engine import create_engine

    try:
        _check_sampler(request)
    except ValueError as exc:
        print(f"chant generate: --sampler/--schedule: {exc}", file=sys.stderr)
        return 2
    try:
        request = _with_a_model(args, engine_settings, request, settings.postprocess)
    except GenerationError as exc:
        print(f"chant generate: {exc}", file=sys.stderr)
        return 1
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

    from core.engine.catalog import default_model_name

    model = request.model or default_model_name(engine_settings) or "the default model"
    print(f"chant generate: loading {model}…", file=sys.stderr)
    try:
        engine = create_engine(engine_settings, allow_paths=True, postprocess=settings.postprocess)
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
