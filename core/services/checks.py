"""Request checks that need no database: prompt syntax (via core.prompt) and banned words."""

from __future__ import annotations

import re
from collections.abc import Iterable

from core.services.types import UserError

# A1111 syntax characters, LoRA/hypernet tags and weights: what is left are the prompt's words.
_TAG = re.compile(r"<[^<>]*>")
_SYNTAX = re.compile(r"[()\[\]{}|:]+")
_WEIGHT = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?![\w.])")


def prompt_words_text(prompt: str) -> str:
    """The prompt with its syntax removed; every alternative and every scheduled part stays in.

    Keeping all branches is deliberate: a banned word must not slip through in the text of a
    ``[a:b:0.5]`` schedule or a ``[a|b]`` alternation, whichever step shows it.
    """
    text = _TAG.sub(" ", prompt)
    text = _SYNTAX.sub(" ", text)
    text = _WEIGHT.sub(" ", text)
    return re.sub(r"\bAND\b", " ", text)


def find_banned(prompt: str, banned: Iterable[str]) -> str | None:
    """The first banned word or phrase that occurs in ``prompt`` as a whole word (case-insensitive)."""
    text = prompt_words_text(prompt).casefold()
    text = re.sub(r"\s+", " ", text)
    for word in banned:
        needle = " ".join(word.casefold().split())
        if needle and re.search(rf"(?<!\w){re.escape(needle)}(?!\w)", text):
            return word
    return None


def check_prompt_syntax(prompt: str, steps: int, *, field: str = "prompt") -> None:
    """Raise UserError("prompt", column=…) when core.prompt cannot use the prompt."""
    try:
        from core import prompt as prompt_pkg
        from core.prompt.errors import PromptError
    except ImportError:  # pragma: no cover - core.prompt is part of chant
        return
    check = getattr(prompt_pkg, "interpret", None)
    if check is None:
        parse = getattr(prompt_pkg, "parse", None)
        if parse is None:
            try:
                from core.prompt.parser import parse
            except ImportError:  # pragma: no cover
                return
        check = lambda text, _steps: parse(text)  # noqa: E731
    try:
        check(prompt, steps)
    except PromptError as exc:
        what = "negative prompt" if field == "negative" else "prompt"
        message = getattr(exc, "message", str(exc))
        raise UserError(
            "prompt", f"Your {what} has a problem at column {exc.column}: {message}", column=exc.column
        ) from None
