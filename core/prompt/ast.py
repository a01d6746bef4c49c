"""The parse tree of a prompt's editing syntax: frozen nodes built by ``parser.Transformer``.

Text that does not depend on the sampler step (plain text, emphasis brackets, stray characters)
is folded into plain ``str`` while parsing, so a tree is a ``str`` (nothing to schedule) or a
``Seq`` whose parts are ``str``, ``Seq``, ``Scheduled`` or ``Alternate``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Seq:
    """Parts rendered one after the other (at least one part is not a ``str``)."""

    parts: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Scheduled:
    """``[before:after:when]``; ``[after:when]`` has ``before=""``."""

    before: Node
    after: Node
    when: str  # the NUMBER text: whether it contains "." decides fraction or absolute step
    column: int  # 1-based column of the number in the parsed text


@dataclass(frozen=True, slots=True)
class Alternate:
    """``[a|b|...]``: option ``(step - 1) % len(options)`` at each step."""

    options: tuple[Node, ...]


Node = str | Seq | Scheduled | Alternate


def make_seq(parts: list[Node] | tuple[Node, ...]) -> Node:
    """A node for ``parts`` in order: a ``str`` when all are text, else a ``Seq`` with text runs joined."""
    if all(isinstance(p, str) for p in parts):
        return "".join(parts)  # type: ignore[arg-type]
    merged: list[Node] = []
    for part in parts:
        if isinstance(part, str):
            if not part:
                continue
            if merged and isinstance(merged[-1], str):
                merged[-1] = merged[-1] + part  # type: ignore[operator]
            else:
                merged.append(str(part))
            continue
        elif type(part) is Seq:
            for inner in part.parts:  # one level of splicing keeps sequences flat
                if isinstance(inner, str) and merged and isinstance(merged[-1], str):
                    merged[-1] = merged[-1] + inner  # type: ignore[operator]
                else:
                    merged.append(inner)
            continue
        merged.append(part)
    return Seq(tuple(merged))
