"""Prompt editing and alternation over sampler steps (A1111 ``get_learned_conditioning_prompt_schedules``)."""

from __future__ import annotations

from core.prompt.ast import Alternate, Node, Scheduled, Seq
from core.prompt.errors import PromptError


def _nodes(tree: Node) -> list[Node]:
    """Every Scheduled and Alternate node of ``tree`` (iterative walk)."""
    found: list[Node] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        kind = type(node)
        if kind is Seq:
            stack.extend(node.parts)  # type: ignore[union-attr]
        elif kind is Scheduled:
            found.append(node)
            stack.append(node.before)  # type: ignore[union-attr]
            stack.append(node.after)  # type: ignore[union-attr]
        elif kind is Alternate:
            found.append(node)
            stack.extend(node.options)  # type: ignore[union-attr]
    return found


def when_to_step(
    when: str, steps: int, *, base_steps: int, hires: bool, use_old_scheduling: bool, column: int = 1
) -> int:
    """The step after which an edit switches (A1111-SEMANTICS §4.2); ``steps`` is the pass's step count.

    Raises PromptError where A1111 raises OverflowError (``[b:1e999]``).
    """
    v = float(when)
    if use_old_scheduling:
        v = v * steps if v < 1 else v
    elif "." in when:
        v = (v - 1.0) * steps if hires else v * steps
    else:
        v = v - base_steps if hires else v
    try:
        return min(steps, int(v))
    except (OverflowError, ValueError):
        raise PromptError(f"edit step {when!r} is out of range", column) from None


def schedule(
    tree: Node, base_steps: int, hires_steps: int | None = None, use_old_scheduling: bool = False
) -> list[tuple[int, str]]:
    """``[(until_step, text), ...]`` for a parsed prompt, as A1111 computes it.

    With ``hires_steps`` (and the default timeline) the schedule is the hires pass's: ``steps`` is
    ``hires_steps``, decimals are rebased to 1.0..2.0 and integers count on from ``base_steps``.
    Error columns are 1-based in the parsed text.
    """
    hires = hires_steps is not None and not use_old_scheduling
    steps = hires_steps if hires else base_steps
    assert steps is not None
    if isinstance(tree, str):
        return [(steps, tree)]
    whens: dict[int, int] = {}
    boundaries = {steps}
    for node in _nodes(tree):
        if type(node) is Scheduled:
            when = when_to_step(
                node.when,
                steps,
                base_steps=base_steps,
                hires=hires,
                use_old_scheduling=use_old_scheduling,
                column=node.column,
            )
            whens[id(node)] = when
            if when >= 1:
                boundaries.add(when)
        else:
            boundaries.update(range(1, steps + 1))
    return [(t, render(tree, t, whens)) for t in sorted(boundaries)]


def render(tree: Node, step: int, whens: dict[int, int]) -> str:
    """The text of ``tree`` at boundary ``step`` (iterative, so nesting depth is unlimited)."""
    out: list[str] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        kind = type(node)
        if kind is str:
            out.append(node)  # type: ignore[arg-type]
        elif kind is Seq:
            stack.extend(reversed(node.parts))  # type: ignore[union-attr]
        elif kind is Scheduled:
            stack.append(node.before if step <= whens[id(node)] else node.after)  # type: ignore[union-attr]
        else:
            options = node.options  # type: ignore[union-attr]
            stack.append(options[(step - 1) % len(options)])
    return "".join(out)
