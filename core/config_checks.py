"""What a settings key accepts: small check builders for :data:`core.config.CHECKS`.

A check takes the (already type-checked) value and returns None when it is fine, or the words for what
the key accepts (``core.config`` puts them in the error with the key's name).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from core import ranges

Check = Callable[[Any], str | None]


def choices(*allowed: str, pattern: str | None = None) -> Check:
    """One of ``allowed`` (as written: case counts), or, with ``pattern``, text that matches it."""

    def check(value: Any) -> str | None:
        ok = re.fullmatch(pattern, str(value)) if pattern else value in allowed
        return None if ok else "one of " + ", ".join(allowed)

    return check


def between(low: float | None = None, high: float | None = None, *, above: float | None = None) -> Check:
    """``low <= value <= high`` (either side open when None); ``above``: strictly greater."""

    def check(value: Any) -> str | None:
        if value is None:
            return None
        ok = math.isfinite(value) and (low is None or value >= low) and (high is None or value <= high)
        ok = ok and (above is None or value > above)
        if ok:
            return None
        if above is not None:
            return f"a number above {_num(above)}" + (
                f" and at most {_num(high)}" if high is not None else ""
            )
        kind = "an integer" if isinstance(value, int) else "a number"
        if high is None:
            return f"{kind} of at least {_num(low)}"
        return f"{kind} from {_num(low)} to {_num(high)}"

    return check


def _num(value: float | None) -> str:
    return f"{value:.15g}" if isinstance(value, float) and not value.is_integer() else f"{int(value or 0)}"


def each(check: Check) -> Check:
    def check_all(values: Any) -> str | None:
        for value in values or ():
            problem = check(value)
            if problem:
                return f"a list of {problem} (bad: {value!r})"
        return None

    return check_all


def text(pattern: str = r".*\S.*", what: str = "a non-empty text") -> Check:
    return lambda value: None if value is None or re.fullmatch(pattern, value, re.S) else what


def size_text(value: Any) -> str | None:
    """A "WxH" size, each side within chant's side range and a multiple of its step."""
    m = re.fullmatch(r"(\d+)x(\d+)", str(value))
    sides = [int(v) for v in m.groups()] if m else []
    if sides and all(
        ranges.MIN_SIDE <= v <= ranges.MAX_SIDE and v % ranges.SIDE_MULTIPLE == 0 for v in sides
    ):
        return None
    return f"WxH, each side a multiple of {ranges.SIDE_MULTIPLE} from {ranges.MIN_SIDE} to {ranges.MAX_SIDE}"


def optional_flag(value: Any) -> str | None:
    """true, false, or left out (None: decided elsewhere, e.g. from the checkpoint)."""
    return None if value is None or isinstance(value, bool) else "true, false or unset"
