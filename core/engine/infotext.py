"""A1111's "parameters" text: build it, read it back, and put it into a PNG.

The layout is AUTOMATIC1111's ``create_infotext`` (1.10): the prompt, ``Negative prompt: ...`` when there
is one, then one line of ``Key: value`` pairs in A1111's key order, leaving out keys whose value is None or
the default (no Clip skip at 1, no variation seed at strength 0, ...). A value containing ``,``, ``:`` or a
newline is written as a JSON string, as A1111's ``quote`` does. ``parse_infotext`` reads the text back the
way A1111's ``parse_generation_parameters`` does (tolerant: any text gives at least a prompt), so A1111's
PNG Info, Civitai and chant itself agree; ``settings_from_infotext`` turns it into ``GenerationRequest``
fields, as A1111's "send to txt2img" does. No torch here: the bot can parse pasted parameters cheaply.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import re
from collections.abc import Mapping
from importlib import metadata
from typing import Any

from PIL import Image, PngImagePlugin

from core.ranges import RNG_SOURCES, SCHEDULE_TYPES

# A1111's keys in create_infotext order; extra parameters (hires, LoRA hashes, Eta, ...) go before Version.
_KEY_ORDER = (
    "Steps",
    "Sampler",
    "Schedule type",
    "CFG scale",
    "Seed",
    "Size",
    "Model hash",
    "Model",
    "VAE hash",
    "VAE",
    "Variation seed",
    "Variation seed strength",
    "Denoising strength",
    "Clip skip",
    "ENSD",
    "RNG",
)


@functools.cache
def chant_version() -> str:
    try:
        return metadata.version("chant")
    except metadata.PackageNotFoundError:
        return "dev"


def format_value(value: Any) -> str:
    """A value as A1111 prints it: ``7`` for 7.0 (gradio gives whole numbers as ints), ``7.5``, ``0.3``."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def quote(value: Any) -> str:
    """A1111's ``infotext_utils.quote``: JSON-quote values that contain ``,``, ``:`` or a newline."""
    text = format_value(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text: str) -> str:
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, str) else text


def build_infotext(
    prompt: str,
    negative_prompt: str = "",
    *,
    steps: int,
    sampler: str,
    cfg_scale: float,
    seed: int,
    width: int,
    height: int,
    schedule_type: str | None = "Automatic",
    model_hash: str | None = None,
    model_name: str | None = None,
    vae_name: str | None = None,
    vae_hash: str | None = None,
    subseed: int | None = None,
    subseed_strength: float = 0.0,
    denoising_strength: float | None = None,
    clip_skip: int | None = None,
    ensd: int | None = None,
    rng: str | None = None,
    extra: Mapping[str, Any] | None = None,
    version: str | None = None,
) -> str:
    """A1111's parameters text for one image.

    ``schedule_type`` is what A1111 records (``SamplerSpec.schedule_type``: "Karras" for DPM++ 2M on
    Automatic). ``ensd`` is written only when given and non-zero: pass it only for samplers that use it
    (``samplers.uses_ensd``). ``rng`` "gpu" (A1111's default) is not written; "cpu"/"nv" are, as "CPU"/"NV".
    ``extra`` holds further A1111 keys in order (``Hires upscale``, ``Lora hashes``, ``Eta``, ...);
    a None value leaves the key out. ``version`` defaults to ``chant <version>``.
    """
    strength = float(subseed_strength or 0.0)
    params: dict[str, Any] = {
        "Steps": steps,
        "Sampler": sampler,
        "Schedule type": schedule_type,
        "CFG scale": cfg_scale,
        "Seed": seed,
        "Size": f"{width}x{height}",
        "Model hash": model_hash,
        "Model": model_name,
        "VAE hash": vae_hash,
        "VAE": vae_name,
        "Variation seed": None if strength == 0 else subseed,
        "Variation seed strength": None if strength == 0 else strength,
        "Denoising strength": denoising_strength,
        "Clip skip": None if clip_skip is None or clip_skip <= 1 else clip_skip,
        "ENSD": ensd if ensd else None,
        "RNG": None if rng is None or rng.lower() == "gpu" else rng.upper(),
    }
    for key, value in (extra or {}).items():
        params[key] = value
    params["Version"] = f"chant {chant_version()}" if version is None else version

    line = ", ".join(f"{k}: {quote(v)}" for k, v in params.items() if v is not None)
    negative = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{line}".strip()


def infotext_for_request(
    request: Any,
    *,
    seed: int,
    subseed: int | None = None,
    schedule_type: str | None = None,
    model_name: str | None = None,
    model_hash: str | None = None,
    clip_skip: int | None = None,
    ensd: int | None = None,
    rng: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """``build_infotext`` for a ``core.types.GenerationRequest`` and the values the engine resolved."""
    params: dict[str, Any] = {}
    img2img = str(getattr(request, "mode", "txt2img")) != "txt2img"
    denoising = request.denoising_strength if img2img else None
    if getattr(request, "enable_hr", False):
        denoising = request.hr_denoising_strength
        if request.hr_resize_x == 0 and request.hr_resize_y == 0:
            params["Hires upscale"] = request.hr_scale
        else:
            params["Hires resize"] = f"{request.hr_resize_x}x{request.hr_resize_y}"
        params["Hires steps"] = request.hr_second_pass_steps or None
        params["Hires upscaler"] = request.hr_upscaler
    params.update(extra or {})
    return build_infotext(
        request.prompt,
        request.negative_prompt,
        steps=request.steps,
        sampler=request.sampler,
        schedule_type=schedule_type or request.schedule_type,
        cfg_scale=request.cfg_scale,
        seed=seed,
        width=request.width,
        height=request.height,
        model_hash=model_hash,
        model_name=model_name,
        subseed=subseed,
        subseed_strength=request.subseed_strength,
        denoising_strength=denoising,
        clip_skip=clip_skip if clip_skip is not None else request.clip_skip,
        ensd=ensd,
        rng=rng if rng is not None else request.rng,
        extra=params,
    )


# ``Key: value`` pairs: a key starts with a word character; a value is a JSON string or runs to the next comma.
_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SIZE = re.compile(r"^(\d+)x(\d+)$")
_DEFAULTS = {"Clip skip": "1", "Schedule type": "Automatic", "RNG": "GPU"}


def parse_infotext(text: str) -> dict[str, str]:
    """Read A1111 parameters text into ``{"Prompt", "Negative prompt", "Steps", ...}`` (string values).

    Like A1111: the last line holds the parameters only if it has at least three ``Key: value`` pairs;
    ``Size: 512x768`` also gives ``Size-1``/``Size-2``; missing ``Clip skip``, ``Schedule type`` and ``RNG``
    get A1111's defaults. Never raises for text input.
    """
    if not isinstance(text, str):
        raise ValueError(f"infotext must be text, got {type(text).__name__}")
    *lines, last = text.strip().split("\n")
    if len(_PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""

    prompt: list[str] = []
    negative: list[str] = []
    in_negative = False
    for raw in lines:
        line = raw.strip()
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:") :].strip()
        (negative if in_negative else prompt).append(line)

    res: dict[str, str] = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, raw_value in _PARAM.findall(last):
        value = raw_value.strip()
        if value[:1] == '"' and value[-1:] == '"':
            value = unquote(value)
        res[key] = value
        size = _SIZE.match(value)
        if size:
            res[f"{key}-1"], res[f"{key}-2"] = size.group(1), size.group(2)
    for key, value in _DEFAULTS.items():
        res.setdefault(key, value)
    return res


def parse_hashes(value: str) -> dict[str, str]:
    """``"name: 0123456789ab, other: ..."`` (``Lora hashes``, ``TI hashes``) as a dict, as A1111 reads
    it when pasting (a later duplicate name wins); {} for text that is not such a list."""
    pairs = [item.split(":", 1) for item in value.split(",") if item.strip()]
    if any(len(pair) != 2 for pair in pairs):
        return {}
    return {name.strip(): digest.strip() for name, digest in pairs}


# Keys that say what made the image but change nothing chant reproduces.
_INFORMATIONAL = {"Version", "Lora hashes", "TI hashes", "Model", "Model hash", "VAE hash", "User"}
_HIRES_KEYS = ("Hires upscale", "Hires upscaler", "Hires resize-1")


@dataclasses.dataclass(frozen=True)
class InfotextSettings:
    """What an A1111 infotext asks for: ``GenerationRequest`` fields, and the model it names."""

    fields: Mapping[str, Any]
    model_name: str | None = None
    model_hash: str | None = None
    ignored: tuple[str, ...] = ()  # keys chant does not reproduce (an extension's, "Hires sampler", ...)


def _whole(params: Mapping[str, str], key: str) -> int:
    try:
        return int(params[key].strip())
    except ValueError:
        raise ValueError(f"infotext {key}: {params[key]!r} is not a whole number") from None


def _number(params: Mapping[str, str], key: str) -> float:
    try:
        return float(params[key].strip())
    except ValueError:
        raise ValueError(f"infotext {key}: {params[key]!r} is not a number") from None


def split_sampler_name(sampler: str, schedule_type: str = "Automatic") -> tuple[str, str]:
    """(sampler, schedule type): an old combined name ("DPM++ 2M Karras", A1111 < 1.9) is split."""
    if schedule_type in ("", "Automatic"):
        for label in sorted(SCHEDULE_TYPES[1:], key=len, reverse=True):
            if sampler.lower().endswith(" " + label.lower()) and len(sampler) > len(label) + 1:
                return sampler[: -len(label) - 1].strip(), label
    return sampler, schedule_type or "Automatic"


def settings_from_infotext(text: str) -> InfotextSettings:
    """The settings an A1111 1.10 (or chant) parameters text asks for, as A1111's paste reads them.

    Sampler and schedule type (old combined names split), steps, CFG, CFG rescale, seed, size, variation
    seed and strength, Clip skip (missing = 1), ENSD, RNG (missing = GPU), Eta, mask blur, and Denoising strength:
    the hires pass's when the text has hires keys (A1111's rule), else img2img's. ``Model``/``Model
    hash`` are returned for the caller to match against its models; ``Lora hashes``, ``TI hashes`` and
    ``Version`` are informational; other keys are listed in ``ignored``. ValueError names a bad value.
    """
    p = parse_infotext(text)
    f: dict[str, Any] = {"prompt": p["Prompt"], "negative_prompt": p["Negative prompt"]}
    handled = {"Prompt", "Negative prompt", "Size", "Size-1", "Size-2", "Sampler", "Schedule type"}
    if "Sampler" in p:
        f["sampler"], f["schedule_type"] = split_sampler_name(
            p["Sampler"].strip(), p["Schedule type"].strip()
        )
    elif p["Schedule type"] != "Automatic":
        f["schedule_type"] = p["Schedule type"].strip()
    if "Size-1" in p:
        f["width"], f["height"] = _whole(p, "Size-1"), _whole(p, "Size-2")
    for key, field, read in (
        ("Steps", "steps", _whole),
        ("CFG scale", "cfg_scale", _number),
        ("Seed", "seed", _whole),
        ("Variation seed", "subseed", _whole),
        ("Variation seed strength", "subseed_strength", _number),
        ("Clip skip", "clip_skip", _whole),
        ("ENSD", "eta_noise_seed_delta", _whole),
        ("Eta", "eta", _number),
        ("Eta DDIM", "eta", _number),
        # CFG rescale: A1111's CFG_Rescale extension writes "CFG Rescale" (and reads the other two back);
        # Forge Classic writes "Rescale CFG". chant writes "CFG Rescale".
        ("CFG Rescale", "cfg_rescale", _number),
        ("CFG Rescale φ", "cfg_rescale", _number),
        ("CFG Rescale phi", "cfg_rescale", _number),
        ("Rescale CFG", "cfg_rescale", _number),
        ("Mask blur", "mask_blur", _whole),
        ("Hires steps", "hr_second_pass_steps", _whole),
        ("Hires upscale", "hr_scale", _number),
        ("Hires resize-1", "hr_resize_x", _whole),
        ("Hires resize-2", "hr_resize_y", _whole),
    ):
        if key in p:
            f[field] = read(p, key)
            handled.add(key)
    for key, field in (
        ("Hires upscaler", "hr_upscaler"),
        ("Hires prompt", "hr_prompt"),
        ("Hires negative prompt", "hr_negative_prompt"),
    ):
        if key in p:
            f[field] = p[key]
            handled.add(key)
    f.update(_after_decoding(p, handled))
    rng = p["RNG"].strip().lower()
    if rng not in RNG_SOURCES:
        raise ValueError(f"infotext RNG: {p['RNG']!r} is not one of GPU, CPU, NV")
    f["rng"] = rng
    if "Denoising strength" in p:
        hires = any(k in p for k in _HIRES_KEYS)
        f["enable_hr"] = hires
        f["hr_denoising_strength" if hires else "denoising_strength"] = _number(p, "Denoising strength")
    handled |= {"RNG", "Denoising strength", "Hires resize"}
    handled |= _guides_from_infotext(p, f)
    ignored = tuple(
        k for k in p if k not in handled and k not in _INFORMATIONAL and not k.endswith(("-1", "-2"))
    )
    return InfotextSettings(
        fields=f, model_name=p.get("Model") or None, model_hash=p.get("Model hash") or None, ignored=ignored
    )


def _after_decoding(p: Mapping[str, str], handled: set[str]) -> dict[str, Any]:
    """Face restoration (A1111's key; its visibility/weight are the server's settings) and the detailer
    (ADetailer's first pass: its model, prompt and strength; the other ADetailer keys are its defaults)."""
    f: dict[str, Any] = {}
    if p.get("Face restoration"):
        f["face_restoration"] = p["Face restoration"].strip()
        handled.update(("Face restoration", "GFPGAN visibility", "CodeFormer visibility", "CodeFormer weight"))
    model = p.get("ADetailer model", "").strip()
    if model and model != "None":
        f["detailer"] = model
        if p.get("ADetailer prompt"):
            f["detailer_prompt"] = p["ADetailer prompt"]
        if "ADetailer denoising strength" in p:
            f["detailer_strength"] = _number(p, "ADetailer denoising strength")
        handled.update(k for k in p if k.startswith("ADetailer ") and not k.endswith((" 2nd", " 3rd")))
    return f
def _guides_from_infotext(params: Mapping[str, str], fields: dict[str, Any]) -> set[str]:
    """sd-webui-controlnet's ``ControlNet N`` units as ``controls`` (and IP-Adapter units as ``references``),
    without their images (an infotext has none); returns the keys read."""
    from core.engine.control.infotext import PREFIX, units_from_infotext
    from core.types import ControlInput, ReferenceInput

    units = units_from_infotext(params)
    controls, references = [], []
    for found in units:
        u = found.unit
        if u.module.startswith("ip-adapter"):
            references.append(ReferenceInput(model=u.model, scale=u.weight))
            continue
        controls.append(ControlInput(
            module=u.module, model=u.model, weight=u.weight, resize_mode=u.resize_mode,
            processor_res=u.processor_res, threshold_a=u.threshold_a, threshold_b=u.threshold_b,
            guidance_start=u.guidance_start, guidance_end=u.guidance_end, pixel_perfect=u.pixel_perfect,
            control_mode=u.control_mode,
        ))  # fmt: skip
    if controls:
        fields["controls"] = tuple(controls)
    if references:
        fields["references"] = tuple(references)
    return {k for k in params if k.startswith(PREFIX) and k[len(PREFIX) :].isdigit()}


def infotext_of_file(data: bytes) -> str | None:
    """The A1111 parameters stored in an image: a PNG's ``parameters`` text, or a JPEG/WebP's EXIF
    UserComment (as A1111 and chant's bot write it); None when there are none."""
    with Image.open(io.BytesIO(data)) as image:
        text = image.info.get("parameters")
        if isinstance(text, str):
            return text
        comment = image.getexif().get_ifd(0x8769).get(0x9286)
    if isinstance(comment, bytes) and len(comment) > 8:
        prefix, body = comment[:8], comment[8:]
        if prefix == b"UNICODE\x00":
            encoding = "utf-16-le" if body[:2] == b"\xff\xfe" or body[1:2] == b"\x00" else "utf-16-be"
            return body.decode(encoding, errors="replace").lstrip("\ufeff").rstrip("\x00")
        return body.decode("latin-1").rstrip("\x00")
    return comment if isinstance(comment, str) else None


def png_with_infotext(image: Image.Image, infotext: str, *, compress_level: int = 4) -> bytes:
    """PNG bytes of ``image`` with a ``parameters`` text chunk (tEXt, or iTXt for non-Latin-1 text)."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", infotext)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info, compress_level=compress_level)
    return buf.getvalue()
