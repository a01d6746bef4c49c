"""Pure rendering: captions, progress bars and upload-size fitting. No Discord, no I/O.

Everything here returns plain strings/bytes that fit Discord's limits (2,000 characters per message
content, the guild's upload limit per file), so the cogs never have to think about truncation.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

from PIL import Image, PngImagePlugin

MESSAGE_LIMIT = 2000
CAPTION_PROMPT_LIMIT = 300  # the caption is short; ℹ️ sends the full parameters
DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024  # Discord's default per-file limit for an unboosted guild
ELLIPSIS = "…"


def truncate(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, ending in … when cut."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    if len(text) <= limit:
        return text
    return text[: limit - 1] + ELLIPSIS


def escape_markdown(text: str) -> str:
    """Escape Discord markdown so a prompt like ``**bold** _x_`` shows as typed."""
    out = []
    for ch in text:
        if ch in "\\*_~`|>#[]()-":
            out.append("\\")
        out.append(ch)
    return "".join(out).replace("@", "@\u200b")  # no pings from prompts


def format_cfg(cfg: float) -> str:
    return f"{cfg:g}"


def caption(
    *,
    prompt: str,
    seeds: tuple[int, ...] | list[int],
    sampler: str,
    steps: int,
    cfg: float,
    model: str | None,
    job_id: int,
    width: int | None = None,
    height: int | None = None,
    user_mention: str | None = None,
    note: str | None = None,
    limit: int = MESSAGE_LIMIT,
) -> str:
    """A short result caption: prompt (truncated), then seed, sampler, steps, CFG, model, job id."""
    seed_text = str(seeds[0]) if len(seeds) == 1 else f"{seeds[0]}–{seeds[-1]}" if seeds else "?"
    facts = [f"seed {seed_text}", sampler, f"{steps} steps", f"CFG {format_cfg(cfg)}"]
    if width and height:
        facts.append(f"{width}×{height}")
    facts.append(model or "default model")
    facts.append(f"job #{job_id}")
    tail = "`" + truncate(" · ".join(facts).replace("`", "'"), 400) + "`"
    head = []
    if user_mention:
        head.append(user_mention)
    if note:
        head.append(truncate(note, 200))
    prefix = (" ".join(head) + "\n") if head else ""
    room = limit - len(prefix) - len(tail) - 5  # two ** markers and a newline
    room = max(1, min(room, CAPTION_PROMPT_LIMIT))
    body = truncate(escape_markdown(" ".join(prompt.split())), room) if prompt.strip() else "(empty prompt)"
    text = f"{prefix}**{body}**\n{tail}"
    return truncate(text, limit)


def format_duration(seconds: float | None) -> str:
    if seconds is None or math.isnan(seconds) or seconds < 0:
        return "?"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def progress_bar(step: int, total: int, *, width: int = 20) -> str:
    """``[██████░░░░] 12/20`` — clamps nothing silently: bad numbers raise."""
    if total < 1:
        raise ValueError(f"total must be at least 1, got {total}")
    if not 0 <= step <= total:
        raise ValueError(f"step must be between 0 and {total}, got {step}")
    filled = round(width * step / total)
    return f"[{'█' * filled}{'░' * (width - filled)}] {step}/{total}"


def progress_text(
    step: int, total: int, eta_s: float | None, *, job_id: int, prompt: str | None = None
) -> str:
    pct = 100 * step // total if total else 0
    lines = []
    if prompt:
        lines.append(f"**{truncate(escape_markdown(' '.join(prompt.split())), 200)}**")
    lines.append(f"`{progress_bar(step, total)}` {pct}% · ETA {format_duration(eta_s)} · job #{job_id}")
    return "\n".join(lines)


def queued_text(position: int, eta_s: float | None, *, job_id: int) -> str:
    if position <= 0:
        return f"Starting… · job #{job_id}"
    where = "next in line" if position == 1 else f"#{position} in the queue"
    return f"Queued: {where} · ETA {format_duration(eta_s)} · job #{job_id}"


@dataclass(frozen=True)
class FittedImage:
    data: bytes
    filename: str
    resized: bool  # True when re-encoded or downscaled to fit


def _png_with_info(img: Image.Image, infotext: str | None) -> bytes:
    buf = io.BytesIO()
    info = PngImagePlugin.PngInfo()
    if infotext:
        info.add_text("parameters", infotext)
    img.save(buf, format="PNG", pnginfo=info, optimize=True)
    return buf.getvalue()


def fit_to_limit(png: bytes, limit: int, *, stem: str = "image") -> FittedImage:
    """Return the image as a file no larger than ``limit`` bytes — never drop it.

    1. the original PNG when it fits; 2. the same pixels re-encoded as an optimized PNG, keeping the
    A1111 ``parameters`` chunk; 3. a high-quality JPEG (the parameters go into its EXIF UserComment
    the way A1111 writes them); 4. smaller and smaller JPEGs until it fits.
    """
    if limit < 1024:
        raise ValueError(f"upload limit of {limit} bytes is too small to send an image")
    if len(png) <= limit:
        return FittedImage(png, f"{stem}.png", False)
    img = Image.open(io.BytesIO(png))
    img.load()
    infotext = img.info.get("parameters") if isinstance(img.info.get("parameters"), str) else None
    data = _png_with_info(img, infotext)
    if len(data) <= limit:
        return FittedImage(data, f"{stem}.png", True)
    rgb = img.convert("RGB")
    exif = _exif_with_comment(infotext)
    scale = 1.0
    for quality in (92, 85, 75):
        data = _jpeg(rgb, quality, exif)
        if len(data) <= limit:
            return FittedImage(data, f"{stem}.jpg", True)
    while True:
        scale *= math.sqrt(limit / len(data)) * 0.9
        size = (max(1, int(rgb.width * scale)), max(1, int(rgb.height * scale)))
        data = _jpeg(rgb.resize(size, Image.Resampling.LANCZOS), 80, exif)
        if len(data) <= limit or size == (1, 1):
            return FittedImage(data, f"{stem}.jpg", True)


def _exif_with_comment(infotext: str | None) -> bytes | None:
    if not infotext:
        return None
    exif = Image.Exif()
    # UserComment (0x9286) in the Exif IFD, UNICODE-prefixed, as A1111 writes JPEG infotext.
    ifd = exif.get_ifd(0x8769)
    ifd[0x9286] = b"UNICODE\x00" + infotext.encode("utf-16-be")
    return exif.tobytes()


def _jpeg(img: Image.Image, quality: int, exif: bytes | None) -> bytes:
    buf = io.BytesIO()
    kwargs = {"exif": exif} if exif else {}
    img.save(buf, format="JPEG", quality=quality, optimize=True, **kwargs)
    return buf.getvalue()


def parameters_text(infotext: str, *, job_id: int, limit: int = MESSAGE_LIMIT) -> str:
    """The full A1111 parameters for a ℹ️ DM, in a code block, within one message."""
    head = f"Parameters of job #{job_id}:\n```\n"
    tail = "\n```"
    body = truncate(infotext.replace("```", "'''"), limit - len(head) - len(tail))
    return head + body + tail


def withheld_text(job_id: int, withheld: int, total: int, reason: str) -> str:
    """The private notice for images that moderation kept out of the channel."""
    if total == 1:
        what = "Your image"
    else:
        what = "All your images" if withheld == total else f"{withheld} of your {total} images"
    verb, it = ("was", "it") if withheld == 1 else ("were", "them")
    return truncate(
        f"{what} of job #{job_id} {verb} not posted: this server's image moderation blocked {it} "
        f"({reason}). An age-restricted channel may allow {it}, depending on the server's settings.",
        MESSAGE_LIMIT,
    )


def template_text(templates: dict, *, seed: int, limit: int = MESSAGE_LIMIT) -> str:
    """ℹ️'s note on a dynamic prompt: what was typed (the parameters show the expansion)."""
    lines = [f"Dynamic prompt, expanded with seed {seed}:"]
    for field, label in (("prompt", "prompt"), ("negative_prompt", "negative prompt")):
        if templates.get(field):
            typed = truncate(templates[field].replace("`", "'"), 700)
            lines.append(f"{label} as typed: `{typed}`")
    if templates.get("wildcards"):
        lines.append("wildcards: " + ", ".join(f"`__{w}__`" for w in templates["wildcards"][:20]))
    return truncate("\n".join(lines), limit)


def moderation_lines(moderation: tuple, *, limit: int = MESSAGE_LIMIT) -> str:
    """An admin's view of a job's images: score, decision, the rule and the policy that applied."""
    lines = []
    for n, m in enumerate(moderation):
        score = "not checked" if m.score is None else f"score {m.score:.3f}"
        policy = m.policy or {}
        rules = ", ".join(f"{k} {v}" for k, v in policy.items())
        lines.append(f"image {n + 1}: **{m.action}** · {score} · {m.rule}" + (f" · policy: {rules}" if rules else "")
                     + ("" if m.charged else " · refunded"))  # fmt: skip
    return truncate("\n".join(lines) or "no images", limit)
