"""``interpret``: a prompt as A1111 v1.10.1 would use it, step by step (A1111-SEMANTICS §1-§6)."""

from __future__ import annotations

from dataclasses import dataclass

from core.prompt import parser
from core.prompt.attention import AttentionError, parse_attention_cached
from core.prompt.errors import PromptError
from core.prompt.schedule import schedule
from core.prompt.text import ExtraNetwork, extract_networks, split_and, strip_comments

DISCORD_LIMIT = 6000


@dataclass(frozen=True)
class ScheduleEntry:
    until_step: int  # used while A1111's 0-based step counter <= until_step
    text: str
    attention: tuple[tuple[str, float], ...]  # ("BREAK", -1.0) marks a chunk break

    def to_json(self) -> list:
        return [self.until_step, self.text, [[t, w] for t, w in self.attention]]


@dataclass(frozen=True)
class SubPrompt:
    weight: float  # AND weight; 1.0 on the negative path
    schedule: tuple[ScheduleEntry, ...]

    def entry_at(self, counter: int) -> ScheduleEntry:
        """The entry A1111 uses at 0-based step counter ``counter``: the first with ``until_step >= counter``."""
        for entry in self.schedule:
            if entry.until_step >= counter:
                return entry
        return self.schedule[-1]

    def to_json(self) -> dict:
        return {"weight": self.weight, "schedule": [e.to_json() for e in self.schedule]}


@dataclass(frozen=True)
class Interpretation:
    text: str  # after comments and extra-network tags are removed
    networks: tuple[ExtraNetwork, ...]
    subprompts: tuple[SubPrompt, ...]

    def to_json(self) -> dict:
        return {
            "text": self.text,
            "networks": [n.to_json() for n in self.networks],
            "subprompts": [s.to_json() for s in self.subprompts],
        }


MAX_STEPS = (
    10_000  # far above any sampler's use; bounds the work of an alternation ([a|b]: one text per step)
)


def _check_steps(name: str, value: object) -> int:
    if type(value) is not int or not 1 <= value <= MAX_STEPS:
        raise ValueError(f"{name} must be an integer from 1 to {MAX_STEPS}, not {value!r}")
    return value


def interpret(
    prompt: str,
    steps: int,
    *,
    negative: bool = False,
    hires_steps: int | None = None,
    use_old_scheduling: bool = False,
    max_chars: int = DISCORD_LIMIT,
) -> Interpretation:
    """How A1111 interprets ``prompt`` over ``steps`` scheduling steps (the caller doubles them for
    second-order samplers). ``hires_steps`` gives the hires pass's schedule. The negative path has no
    ``AND``, no weight suffix and no tag removal. Raises PromptError for unusable prompts.
    """
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be str, not {type(prompt).__name__}")
    _check_steps("steps", steps)
    if hires_steps is not None:
        _check_steps("hires_steps", hires_steps)
    if len(prompt) > max_chars:
        raise PromptError(f"the prompt has {len(prompt)} characters; the limit is {max_chars}", max_chars + 1)
    text, _ = strip_comments(prompt)
    if negative:
        networks: tuple[ExtraNetwork, ...] = ()
        parts = [(text, 1.0, 0)]
    else:
        text, networks, _ = extract_networks(text)
        try:
            parts = split_and(text)
        except PromptError as exc:
            raise PromptError(exc.message, _column(prompt, negative, exc.column - 1)) from None
    subprompts = []
    for part, weight, offset in parts:
        try:
            subprompts.append(SubPrompt(weight, _schedule_part(part, steps, hires_steps, use_old_scheduling)))
        except AttentionError as exc:
            found = part.find(exc.token)
            where = offset + (found + exc.token_offset if found >= 0 else 0)
            raise PromptError(exc.message, _column(prompt, negative, where)) from None
        except PromptError as exc:
            raise PromptError(exc.message, _column(prompt, negative, offset + exc.column - 1)) from None
    return Interpretation(text, networks, tuple(subprompts))


def _schedule_part(
    part: str, steps: int, hires_steps: int | None, use_old_scheduling: bool
) -> tuple[ScheduleEntry, ...]:
    if "[" not in part:  # no edit or alternation possible; parsed or not, the text is literal
        tree = part
    else:
        try:
            tree = parser.parse(part)
        except parser.Unparsable:  # A1111: the whole prompt is literal text for the whole run
            tree = part
    entries = schedule(tree, steps, hires_steps, use_old_scheduling)
    return tuple(ScheduleEntry(t, text, parse_attention_cached(text)) for t, text in entries)


def _column(prompt: str, negative: bool, index: int) -> int:
    """1-based column in ``prompt`` of character ``index`` of the text after comments and tags."""
    origin = list(range(len(prompt) + 1))
    text, origin = strip_comments(prompt, origin)
    if not negative:
        _, _, origin = extract_networks(text, origin)
    assert origin is not None
    index = max(0, min(index, len(origin) - 1))
    return origin[index] + 1
