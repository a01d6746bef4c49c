"""Text passes that run before parsing: comments, extra-network tags and the ``AND`` split.

Each pass can also report where every output character came from (``origin``), which is used only
to give error columns in the prompt as the user wrote it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from core.prompt.errors import PromptError

# A1111 comments.py: a line starting with "#" (and its line break), then any "#" to the end of
# its line; each is replaced by one newline. There is no escape.
_LINE_COMMENT = re.compile(r"(?:^|\n)#[^\n]*(?:\n|$)")
_INLINE_COMMENT = re.compile(r"#[^\n]*(?:\n|$)")
# A1111 extra_networks.py: <name:args> with a \w+ name and args without ">".
_NETWORK = re.compile(r"<(\w+):([^>]+)>")
# The trailing ":weight" of an AND part: no exponent, Unicode digits (A1111 re_weight).
_WEIGHT = re.compile(r":\s*([-+]?(?:\d+\.?|\d*\.\d+))\Z")


@dataclass(frozen=True)
class ExtraNetwork:
    """``<kind:arg:...>``: args split on ``:``; ``k=v`` (exactly one ``=``) is named, else positional."""

    kind: str
    positional: tuple[str, ...]
    named: tuple[tuple[str, str], ...]

    def to_json(self) -> list:
        return [self.kind, list(self.positional), dict(self.named)]


def _sub(
    pattern: re.Pattern, repl: Callable[[re.Match], str], text: str, origin: list[int] | None
) -> tuple[str, list[int] | None]:
    if origin is None:
        return pattern.sub(repl, text), None
    out: list[str] = []
    new_origin: list[int] = []
    pos = 0
    for m in pattern.finditer(text):
        out.append(text[pos : m.start()])
        new_origin.extend(origin[pos : m.start()])
        r = repl(m)
        out.append(r)
        new_origin.extend([origin[m.start()]] * len(r))
        pos = m.end()
    out.append(text[pos:])
    new_origin.extend(origin[pos:])  # origin has one extra entry: the end of the text
    return "".join(out), new_origin


def strip_comments(text: str, origin: list[int] | None = None) -> tuple[str, list[int] | None]:
    text, origin = _sub(_LINE_COMMENT, lambda m: "\n", text, origin)
    return _sub(_INLINE_COMMENT, lambda m: "\n", text, origin)


def _network(m: re.Match) -> ExtraNetwork:
    positional: list[str] = []
    named: dict[str, str] = {}
    for item in m.group(2).split(":"):
        parts = item.split("=", 2)
        if len(parts) == 2:
            named[parts[0]] = parts[1]
        else:
            positional.append(item)
    return ExtraNetwork(m.group(1), tuple(positional), tuple(named.items()))


def extract_networks(
    text: str, origin: list[int] | None = None
) -> tuple[str, tuple[ExtraNetwork, ...], list[int] | None]:
    """Remove every tag (replaced by nothing, anywhere) and return the tags in prompt order."""
    found: list[ExtraNetwork] = []

    def repl(m: re.Match) -> str:
        found.append(_network(m))
        return ""

    text, origin = _sub(_NETWORK, repl, text, origin)
    return text, tuple(found), origin


def _is_word(c: str) -> bool:
    return c.isalnum() or c == "_"  # Python's Unicode \w


def split_and(text: str) -> list[tuple[str, float, int]]:
    """``[(part text, weight, offset of the part in text), ...]`` (A1111 ``get_multicond_prompt_list``).

    The weight rule applies with or without ``AND``: ``a:0.5`` is the part ``a`` at weight 0.5.
    """
    parts: list[tuple[str, float, int]] = []
    start = 0
    bounds = []
    i = text.find("AND")
    while i != -1:  # the regex \bAND\b, without the regex: AND not touching a word character
        if (i == 0 or not _is_word(text[i - 1])) and (i + 3 == len(text) or not _is_word(text[i + 3])):
            bounds.append((i, i + 3))
        i = text.find("AND", i + 3)
    for end, next_start in [*bounds, (len(text), len(text))]:
        part = text[start:end]
        body = part.rstrip()
        weight = 1.0
        m = _WEIGHT.search(body)
        if m is not None:
            weight = float(m.group(1))
            if weight != weight or weight in (float("inf"), float("-inf")):
                raise PromptError("the AND weight is too large", start + m.start(1) + 1)
            body = body[: m.start()].rstrip()
        parts.append((body, weight, start))
        start = next_start
    return parts
