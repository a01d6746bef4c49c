"""Emphasis: ``( )``, ``[ ]``, ``(text:weight)``, escapes and ``BREAK`` (A1111 ``parse_prompt_attention``)."""

from __future__ import annotations

import math
import re
from functools import lru_cache

from core.prompt.errors import PromptError

# First match wins: escapes, a lone backslash, openers, a weighted close, closers, a text run,
# a lone colon. `\d` is Unicode, as in A1111 (full-width and Arabic-Indic digits are weights).
_TOKEN = re.compile(r"\\[()\[\]\\]|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|\]|[^\\()\[\]:]+|:")
_BREAK = re.compile(r"\s*\bBREAK\b\s*")
ROUND = 1.1
SQUARE = 1 / 1.1  # A1111 multiplies by this precomputed reciprocal; it never divides by 1.1


class AttentionError(PromptError):
    """A weight A1111 cannot use; ``column`` is 1-based in the parsed text, ``token`` its text."""

    def __init__(self, message: str, column: int, token: str, token_offset: int = 0) -> None:
        super().__init__(message, column)
        self.token = token  # the offending text, to find it in the prompt
        self.token_offset = token_offset  # where in ``token`` the problem starts


@lru_cache(maxsize=4096)
def parse_attention_cached(text: str) -> tuple[tuple[str, float], ...]:
    return tuple((t, w) for t, w in parse_attention(text))


def parse_attention(text: str) -> list[tuple[str, float]]:
    """``[(text, weight), ...]`` with equal neighbours merged; ``("BREAK", -1.0)`` marks a chunk break.

    Raises ``AttentionError`` for a malformed weight (``(a:1.2.3)``, where A1111 raises ValueError)
    and for weights that overflow to infinity.
    """
    res: list[list] = []
    rounds: list[int] = []
    squares: list[int] = []

    def multiply(start: int, factor: float) -> None:
        for p in range(start, len(res)):
            res[p][1] *= factor

    for m in _TOKEN.finditer(text):
        tok = m.group(0)
        weight = m.group(1)
        first = tok[0]
        if first == "\\":
            res.append([tok[1:], 1.0])
        elif tok == "(":
            rounds.append(len(res))
        elif tok == "[":
            squares.append(len(res))
        elif weight is not None and rounds:
            try:
                factor = float(weight)
            except ValueError:
                raise AttentionError(
                    f"{weight!r} is not a number", m.start(1) + 1, tok, m.start(1) - m.start()
                ) from None
            if not math.isfinite(factor):
                raise AttentionError(
                    f"the weight {weight!r} is too large", m.start(1) + 1, tok, m.start(1) - m.start()
                )
            multiply(rounds.pop(), factor)
        elif tok == ")" and rounds:
            multiply(rounds.pop(), ROUND)
        elif tok == "]" and squares:
            multiply(squares.pop(), SQUARE)
        elif "BREAK" in tok:
            for i, part in enumerate(_BREAK.split(tok)):
                if i > 0:
                    res.append(["BREAK", -1.0])
                res.append([part, 1.0])
        else:
            res.append([tok, 1.0])
    for pos in rounds:
        multiply(pos, ROUND)
    for pos in squares:
        multiply(pos, SQUARE)
    if not res:
        return [("", 1.0)]
    merged: list[tuple[str, float]] = []
    text_run, w = res[0]
    for t, weight in res[1:]:
        if weight == w:
            text_run += t
        else:
            merged.append((text_run, w))
            text_run, w = t, weight
    merged.append((text_run, w))
    for t, weight in merged:
        if not math.isfinite(weight):
            raise AttentionError(f"the weight of {t[:30]!r} is too large", 1, t)
    return merged
