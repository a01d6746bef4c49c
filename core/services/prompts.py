"""Prompt helpers A1111 users install as extensions: dynamic prompts and wildcards, expanded before the
A1111 parser; and tag autocomplete for the ``/imagine`` prompt option.

**Expansion.** ``{a|b}``, ``{2$$a|b|c}`` and ``__name__`` (:mod:`core.prompt.dynamic`, files from
``prompts.wildcard_dir``) are expanded when a job is submitted, with a generator seeded by the job's
seed, so the same template and seed always expand the same way (a reroll with the seed it had, a remix
that keeps it). The expansion is the job's request — what the A1111 parser reads, what banned words
and the prompt length limit are checked on — and the template is stored next to it (ℹ️ shows both).

**One expansion per job.** The engine takes one prompt per job, so all images of a job share one
expansion, drawn with the job's seed (its first image's). The sd-dynamic-prompts extension instead
draws a new prompt for every image of a batch (image 0's draw is the same as here). chant does not
split a job into one job per image: a job's images stay one result with one set of controls (U1–U4,
V1–V4), one queue entry and one quota charge. For several draws, 🔁 (a new seed re-expands the
template) or the Vary / Remix buttons.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.config import PromptSettings
from core.prompt.dynamic import DynamicPromptError, expand, has_dynamic_syntax
from core.prompt.tags import TagFileError, TagIndex
from core.services.context import Context
from core.services.types import UserError
from core.types import GenerationRequest

log = logging.getLogger(__name__)

FIELDS = (("prompt", "prompt"), ("negative_prompt", "negative prompt"))


@dataclass(frozen=True)
class Expanded:
    request: GenerationRequest  # prompt and negative prompt: the expansions
    templates: dict[str, Any] | None  # what was typed, when an expansion changed it (stored with the job)


def expand_request(
    ctx: Context, request: GenerationRequest, templates: dict[str, Any] | None = None
) -> Expanded:
    """``request`` with its prompt and negative prompt expanded with ``request.seed``; ``templates``
    (a stored job's) are expanded instead of the request's texts when given (🔁 with a new seed draws
    again). Unchanged, with no templates, when dynamic prompts are off or there is nothing to expand.

    A syntax error, a missing wildcard (named, with the closest names), a cycle or an expansion over
    the prompt length limit is a UserError.
    """
    if ctx.wildcards is None:  # dynamic prompts off: the texts as they are (a stored job's expansion)
        return Expanded(request, templates)
    texts = {field: (templates or {}).get(field, getattr(request, field)) for field, _ in FIELDS}
    if not any(has_dynamic_syntax(t) for t in texts.values()):
        return Expanded(request.replace(**texts), None)
    changes: dict[str, str] = {}
    used: dict[str, None] = {}
    for field, what in FIELDS:
        if not has_dynamic_syntax(texts[field]):
            changes[field] = texts[field]
            continue
        try:
            expansion = expand(
                texts[field],
                request.seed,
                wildcards=ctx.wildcards,
                max_chars=ctx.settings.limits.max_prompt_chars,
            )
        except DynamicPromptError as exc:
            raise _refusal(exc, what) from None
        changes[field] = expansion.text
        used.update(dict.fromkeys(expansion.wildcards))
    if all(changes[field] == texts[field] for field, _ in FIELDS):
        return Expanded(request.replace(**changes), None)
    kept = {field: texts[field] for field, _ in FIELDS if changes[field] != texts[field]}
    return Expanded(request.replace(**changes), {**kept, "wildcards": list(used)})


def _refusal(exc: DynamicPromptError, what: str) -> UserError:
    text = f"Your {what} has a problem at column {exc.column}: {exc.message}"
    if exc.wildcards:
        text += f" (in {' → '.join(f'__{w}__' for w in exc.wildcards)})"
    if exc.suggestions:
        text += ". Did you mean " + ", ".join(f"`__{s}__`" for s in exc.suggestions) + "?"
    code = "wildcard" if exc.wildcards or exc.suggestions or "wildcard" in exc.message else "prompt"
    return UserError(code, text, column=exc.column)


class TagSource:
    """The tag list for prompt autocomplete (``prompts.tag_file``): read once, in a thread, when the
    service starts (a 100k-row list takes seconds); until then, and without a file, no suggestions."""

    def __init__(self, settings: PromptSettings) -> None:
        self.settings = settings
        self.index: TagIndex | None = None
        if settings.tag_file and not Path(settings.tag_file).is_file():
            raise ValueError(f"prompts.tag_file: there is no file {settings.tag_file}")

    async def load(self) -> None:
        if not self.settings.tag_file or self.index is not None:
            return
        try:
            self.index = await asyncio.to_thread(TagIndex.from_csv, self.settings.tag_file)
        except TagFileError as exc:
            log.error("prompts.tag_file: %s; /imagine offers no tag suggestions", exc)
            return
        log.info("tag autocomplete: %d tags from %s", len(self.index), self.settings.tag_file)

    def complete(self, text: str) -> list[tuple[str, str]]:
        """Up to 25 (label, value) suggestions for the prompt typed so far (values of at most 100
        characters, Discord's limit: a longer prompt gets none)."""
        if self.index is None:
            return []
        return [
            (s.label, s.value)
            for s in self.index.complete(
                text,
                replace_underscores=self.settings.tag_replace_underscores,
                escape_parentheses=self.settings.tag_escape_parentheses,
            )
        ]


def complete_prompt(ctx: Context, text: str) -> list[tuple[str, str]]:
    return ctx.tags.complete(text) if ctx.tags is not None else []
