"""Request checks that need no database: prompt syntax and banned words, both on the parsed prompt."""

from __future__ import annotations

import re
from collections.abc import Iterable

from core.prompt import Interpretation, PromptError, interpret
from core.services.types import UserError


def parse_for_user(prompt: str, steps: int, *, negative: bool = False) -> Interpretation:
    """``core.prompt.interpret``, with an unusable prompt turned into a UserError naming the column."""
    try:
        return interpret(prompt, steps, negative=negative)
    except PromptError as exc:
        what = "negative prompt" if negative else "prompt"
        raise UserError(
            "prompt", f"Your {what} has a problem at column {exc.column}: {exc.message}", column=exc.column
        ) from None


def rendered_texts(plan: Interpretation) -> set[str]:
    """Every text the text encoder will see, at any step: edit branches and alternatives included.

    Emphasis brackets, weights and escapes are gone (``(g\\ore:1.2)`` reads ``gore``); a BREAK
    separates words.
    """
    texts = set()
    for sub in plan.subprompts:
        for entry in sub.schedule:
            texts.add("".join(" " if w == -1.0 and t == "BREAK" else t for t, w in entry.attention))
    return texts


def find_banned(plan: Interpretation, banned: Iterable[str]) -> str | None:
    """The first banned word or phrase the parsed prompt contains as a whole word (case-insensitive)."""
    texts = [" ".join(text.casefold().split()) for text in rendered_texts(plan)]
    for word in banned:
        needle = " ".join(word.casefold().split())
        if not needle:
            continue
        pattern = re.compile(rf"(?<!\w){re.escape(needle)}(?!\w)")
        if any(pattern.search(text) for text in texts):
            return word
    return None
