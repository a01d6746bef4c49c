"""Dynamic prompts: ``{a|b}`` variants and ``__name__`` wildcards, expanded before the A1111 parser.

The syntax is that of the sd-dynamic-prompts extension (the ``dynamicprompts`` library, v0.31), in its
default random mode:

- ``{a|b|c}`` picks one option; ``{0.5::a|b}`` weights options (default 1); ``{2$$a|b|c}`` picks two
  without replacement, joined by ``,``; ``{1-3$$a|b|c}`` (also ``{-2$$…}``, ``{2-$$…}``) a random count
  in the range; ``{2$$ and $$a|b|c}`` joins with `` and ``. Asking for more than there are gives all.
  Options nest (``{a|{b|c}}``) and may hold wildcards; ``{2$$__colours__}`` picks from the file's lines
  without replacement. ``~`` and ``!`` after ``{`` (``{~a|b}``) are accepted and sample at random.
- ``__name__`` is a random line of ``name.txt`` in the wildcard folder (``__animals/cats__`` in a
  subfolder; ``*`` globs as ``fnmatch``; a plain name not found at the top also matches ``*/name``).
  Lines are stripped, blank lines and ``#`` lines skipped, duplicates dropped, then sorted (the
  library's defaults). A line may itself hold variants and wildcards.
- ``#`` starts a comment to the end of its line (removed, as the library removes it).

Every template the library expands (all its wildcards found) expands here to exactly the text of
``RandomPromptGenerator(manager).generate(template, 1, seeds=[s])`` for the same folder, draw for draw
(tests compare the two on generated templates), with three deliberate differences: ``//`` and
``/* */`` are text (the library removes them as comments; A1111 reads them as text), an empty
wildcard name (``__{}__``, which the library reads as "every file") and a negative weight are errors.
Where the library fails, chant is more lenient or says why:

- An ``__`` that does not start a wildcard (``^__^``, ``a__b``) is plain text, as are ``$`` and ``%``
  outside braces. As in the library, the first ``__`` after an opening one closes it: ``^__^ and
  a__b`` asks for the wildcard ``^ and a``.
- A missing wildcard is an error naming it and the closest names (the library leaves ``__name__`` in
  the prompt). So are weights that add up to 0, a ``{`` that is never closed, a ``$`` inside braces
  that is not a ``N$$`` count, a cycle of wildcards (more than ``MAX_WILDCARD_DEPTH`` nested) and an
  expansion longer than ``max_chars`` or with more than ``MAX_WORK`` pieces.
- Not supported (an error says so): variables ``${…}``, wrap commands ``%{…}``, parameterised
  wildcards ``__name(var=x)__``, the cyclical sampler ``@``, YAML/JSON wildcard files.

Seeds: image ``i`` of a job uses seed ``seed + i`` for its noise (A1111; ``seed`` for all of them when
a variation strength is set), and its prompt is expanded from a generator seeded with that same
number (the library's ``generate(seeds=[...])``), so an image's prompt is a function of its own seed
and template: rerunning one image's seed expands to its prompt.
(The A1111 extension instead draws a job's prompts one after another from one generator seeded with
the first seed; image 0 is the same either way.) Python's ``random`` keeps its draws stable across
versions for ``random()`` only, so store the expansion with the job rather than re-expanding it.
"""

from __future__ import annotations

import collections.abc
import random
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache

from core.prompt.errors import PromptError
from core.prompt.wildcards import WildcardLibrary, WildcardLookupError, WildcardValues

DISCORD_LIMIT = 6000  # the default of limits.max_prompt_chars (core.prompt.interpret has the same)

MAX_NESTING = 64  # braces inside braces; far beyond any real template, well inside Python's stack
MAX_WILDCARD_DEPTH = 24  # wildcards inside wildcards; deeper is reported as a cycle
MAX_WORK = 50_000  # pieces (texts, options, wildcard draws) one expansion may visit: bounds the time

_WS = " \t\r\n"  # pyparsing's White(): what the library skips after "{", "|" and a count
# A comment, with the whitespace before it when it starts where the library starts an element.
_COMMENT = re.compile(r"[ \t\r\n]*#[^\n]*")
# A count: "lo-hi", "-hi", "lo-" or "n", then "$$" (the library tries the forms in this order).
_BOUND = re.compile(r"(?:(\d+)-(\d+)|-(\d+)|(\d+)-|(\d+))\$\$")
# A custom separator: printable ASCII or space, not "$", "{", "}" (nor "#": a comment), then "$$".
_SEPARATOR = re.compile(r"([ !\"%-z|~]+)\$\$")
# A weight: pyparsing's real (needs a ".") or integer, directly followed by "::".
_WEIGHT = re.compile(r"([+-]?(?:\d+\.\d*|\.\d+)|\d+)::")
_SAMPLERS = "~!@"


class DynamicPromptError(PromptError):
    """A template chant cannot expand. ``column`` (1-based) points into the template as the user wrote it
    (for a problem inside a wildcard file: at the wildcard that led there); ``wildcards`` is the chain of
    wildcard names that led to the problem; ``suggestions`` holds close names for a missing wildcard."""

    def __init__(
        self,
        message: str,
        column: int,
        *,
        wildcards: tuple[str, ...] = (),
        suggestions: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message, column)
        self.wildcards = wildcards
        self.suggestions = suggestions


# ---------------------------------------------------------------------------------------------- syntax
# Nodes compare by value, as the library's commands do: which of two equal options a draw removes
# depends on it (see _Expander.choose). ``column`` is only for errors and is left out of comparisons.


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Sequence:
    parts: tuple[Node, ...]


@dataclass(frozen=True)
class Option:
    weight: float
    body: Node


@dataclass(frozen=True)
class Variant:
    options: tuple[Option, ...]
    low: int
    high: int
    separator: str = ","
    sampler: str | None = None
    column: int = field(default=0, compare=False)


@dataclass(frozen=True)
class Wildcard:
    name: str | Node  # a plain name, or one built from variants (``__animals/{cats|dogs}__``)
    sampler: str | None = None
    column: int = field(default=0, compare=False)


Node = Text | Sequence | Variant | Wildcard


def _collapse(parts: list[Node]) -> Node:
    """One part stands for itself; none is the empty sequence (the library's normal form)."""
    return parts[0] if len(parts) == 1 else Sequence(tuple(parts))


class _Fail(Exception):
    """A wildcard reference that does not parse: its ``__`` is plain text."""


class _Parser:
    """Recursive descent over one template. ``{`` must close (else an error); ``__`` may fall back to
    text. Variant parses are memoised by position, so a failed wildcard name that held a variant does
    not make the outer level parse it again (which would be exponential in the nesting)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.memo: dict[int, tuple[Variant, int] | DynamicPromptError] = {}

    def error(self, message: str, pos: int) -> DynamicPromptError:
        return DynamicPromptError(message, pos + 1)

    # -- sequences ------------------------------------------------------------------------------------
    def sequence(self, pos: int, *, in_variant: bool, depth: int) -> tuple[Node, int]:
        """Chunks up to the end (top level) or up to an unconsumed ``|`` / ``}`` (inside a variant)."""
        text, parts, pieces, run = self.text, [], [], []
        n = len(text)

        def flush_run() -> None:
            if run:
                pieces.append("".join(run))
                run.clear()

        def flush_text() -> None:
            flush_run()
            if pieces:  # literal runs split by comments are joined by one space (the library's join)
                parts.append(Text(" ".join(pieces)))
                pieces.clear()

        while pos < n:
            if not run:  # where the library starts an element, a comment takes the whitespace before it
                m = _COMMENT.match(text, pos)
                if m:
                    pos = m.end()
                    continue
            c = text[pos]
            if in_variant and c in "|}":
                break
            if c == "#":  # after literal text: the text keeps its whitespace
                flush_run()
                pos = _COMMENT.match(text, pos).end()  # type: ignore[union-attr]
            elif c == "{":
                flush_text()
                node, pos = self.variant(pos, depth=depth + 1)
                parts.append(node)
            elif c in "$%" and text.startswith("{", pos + 1):
                what = "variables (${…})" if c == "$" else "wrap commands (%{…})"
                raise self.error(f"dynamic prompt {what} are not supported", pos)
            elif c == "$" and in_variant:
                raise self.error(
                    "a '$' inside {…} is only allowed in a count at the start, as in {2$$a|b|c}", pos
                )
            elif c == "_" and text.startswith("__", pos):
                try:
                    node, end = self.wildcard(pos, depth=depth)
                except _Fail:
                    run.append("__")
                    pos += 2
                else:
                    flush_text()
                    parts.append(node)
                    pos = end
            else:
                run.append(c)
                pos += 1
        flush_text()
        return _collapse(parts), pos

    # -- variants -------------------------------------------------------------------------------------
    def variant(self, start: int, *, depth: int) -> tuple[Variant, int]:
        if start not in self.memo:
            try:
                self.memo[start] = self._variant(start, depth=depth)
            except DynamicPromptError as exc:
                self.memo[start] = exc
        found = self.memo[start]
        if isinstance(found, DynamicPromptError):
            raise found
        return found

    def _variant(self, start: int, *, depth: int) -> tuple[Variant, int]:
        if depth > MAX_NESTING:
            raise self.error(f"braces nest more than {MAX_NESTING} deep", start)
        text, pos = self.text, self._skip_ws(start + 1)
        sampler = None
        if pos < len(text) and text[pos] in _SAMPLERS:
            sampler = text[pos]
            if sampler == "@":
                raise self.error("the cyclical sampler {@…} is not supported (chant picks at random)", pos)
            pos += 1
        low, high, separator, pos = self._bound(pos)
        pos = self._skip_ws(pos)
        options: list[Option] = []
        while True:
            pos = self._skip_ws(pos)
            weight = 1.0
            m = _WEIGHT.match(text, pos)
            if m:
                weight = float(m.group(1))
                if not weight >= 0.0:  # also NaN-proof
                    raise self.error(f"a weight must not be negative (found {m.group(1)})", pos)
                if weight == float("inf"):
                    raise self.error(f"the weight {m.group(1)} is too large", pos)
                pos = m.end()
            body, pos = self.sequence(pos, in_variant=True, depth=depth)
            options.append(Option(weight, body))
            if pos >= len(text):
                raise self.error("this '{' is never closed with '}'", start)
            pos += 1
            if text[pos - 1] == "}":
                break
        if len(options) > 1 and sum(o.weight for o in options) <= 0.0:
            raise self.error("the weights of these options add up to 0", start)
        if high is None:
            high = len(options)  # "{2-$$…}": up to all of them
        low, high = sorted((low, high))
        return Variant(tuple(options), max(0, low), high, separator, sampler, start + 1), pos

    def _bound(self, pos: int) -> tuple[int, int | None, str, int]:
        """``N$$``, ``lo-hi$$``, ``-hi$$``, ``lo-$$`` and an optional ``sep$$``; else a plain ``{…}``."""
        m = _BOUND.match(self.text, pos)
        if not m:
            return 1, 1, ",", pos
        lo_hi, only_hi, only_lo, exact = (m.group(1), m.group(2)), m.group(3), m.group(4), m.group(5)
        if exact is not None:
            low = high = int(exact)
        elif lo_hi[0] is not None:
            low, high = int(lo_hi[0]), int(lo_hi[1])
        elif only_hi is not None:
            low, high = 1, int(only_hi)
        else:
            low, high = int(only_lo), None
        pos = m.end()
        sep = _SEPARATOR.match(self.text, pos)
        if sep:
            return low, high, sep.group(1), sep.end()
        return low, high, ",", pos

    def _skip_ws(self, pos: int) -> int:
        """Whitespace and comments (the library skips comments before every element)."""
        text = self.text
        while pos < len(text):
            if text[pos] in _WS:
                pos += 1
            elif text[pos] == "#":
                pos = _COMMENT.match(text, pos).end()  # type: ignore[union-attr]
            else:
                break
        return pos

    # -- wildcards ------------------------------------------------------------------------------------
    def wildcard(self, start: int, *, depth: int) -> tuple[Wildcard, int]:
        """``__name__`` with the shortest name (the first ``__`` after it closes it); raises _Fail when
        the name is empty, not closed, or holds a character a name cannot (``# $ % (``)."""
        text, pos, n = self.text, start + 2, len(self.text)
        sampler = None
        if pos < n and text[pos] in _SAMPLERS:
            sampler = text[pos]
            if sampler == "@":
                raise self.error("the cyclical sampler __@…__ is not supported (chant picks at random)", pos)
            pos += 1  # "__~name__": random, as without it
        name_start = pos
        parts: list[Node] = []
        run: list[str] = []
        while True:
            if pos >= n:
                raise _Fail
            if text.startswith("__", pos):
                break
            c = text[pos]
            if c in "#$%":
                raise _Fail
            if c == "(":
                close = text.find("__", pos)
                if close > 0 and ")" in text[pos:close]:
                    raise self.error("parameterised wildcards __name(var=value)__ are not supported", pos)
                raise _Fail
            if c == "{":
                if run:
                    parts.append(Text("".join(run)))
                    run.clear()
                try:
                    node, pos = self.variant(pos, depth=depth + 1)
                except DynamicPromptError:
                    raise _Fail from None  # the outer level meets the same "{" and reports it
                parts.append(node)
                continue
            run.append(c)
            pos += 1
        if pos == name_start:
            raise _Fail
        if run:
            parts.append(Text("".join(run)))
        plain = all(isinstance(p, Text) for p in parts)
        name = "".join(p.text for p in parts) if plain else _collapse(parts)  # type: ignore[union-attr]
        return Wildcard(name, sampler, start + 1), pos + 2


def parse(template: str) -> Node:
    """The template's syntax tree. Raises DynamicPromptError (with a 1-based column)."""
    node, _ = _Parser(template).sequence(0, in_variant=False, depth=0)
    return node


def has_dynamic_syntax(template: str) -> bool:
    """Whether expanding can change the text at all (a cheap test before the real work)."""
    return "{" in template or "__" in template or "#" in template


# ------------------------------------------------------------------------------------------- expansion


@dataclass(frozen=True)
class Expansion:
    """One expanded prompt: what the A1111 parser reads, what banned words are checked on, and what
    is stored with the job and shown by ℹ️."""

    text: str
    seed: int  # the seed it was expanded with (the image's own seed)
    wildcards: tuple[str, ...]  # the wildcard names it drew from, first use first


class _Expander:
    """One random walk over a syntax tree, drawing from ``rng`` in the library's order: depth first,
    left to right, each variant's own draws (count, then picks) before its options' draws."""

    def __init__(self, rng: random.Random, library: WildcardLibrary | None, max_chars: int) -> None:
        self.rng = rng
        self.library = library
        self.max_chars = max_chars
        self.chars = 0  # output characters so far (a running bound; the exact check is on the result)
        self.work = 0
        self.counting = True  # False while a wildcard's own name is built (not output)
        self.stack: list[str] = []  # wildcards being expanded, outermost first
        self.anchor = 0  # column of the outermost wildcard in the user's template
        self.used: dict[str, None] = {}
        self.found: dict[str, WildcardValues] = {}

    def error(self, message: str, column: int, suggestions: tuple[str, ...] = ()) -> DynamicPromptError:
        where = self.anchor if self.stack else column
        return DynamicPromptError(message, where, wildcards=tuple(self.stack), suggestions=suggestions)

    def expand(self, node: Node) -> str:
        self.work += 1
        if self.work > MAX_WORK:
            raise self.error(f"the prompt expands into more than {MAX_WORK:,} pieces", 1)
        if isinstance(node, Text):
            if self.counting:
                self.chars += len(node.text)
                if self.chars > 2 * self.max_chars + 1000:  # stop early; exact check at the end
                    raise self.error(f"the expanded prompt is longer than {self.max_chars:,} characters", 1)
            return node.text
        if isinstance(node, Sequence):
            return "".join([self.expand(part) for part in node.parts])
        if isinstance(node, Variant):
            return self.variant(node)
        return self.wildcard(node)

    # -- variants -------------------------------------------------------------------------------------
    def variant(self, node: Variant) -> str:
        options = node.options
        if len(options) == 1:  # no draw at all; a lone wildcard picks among its lines instead
            only = options[0].body
            if isinstance(only, Wildcard):
                return self.wildcard_as_variant(only, node)
            return self.expand(only)
        low, high = min(node.low, len(options)), min(node.high, len(options))
        count = min(high, self.rng.randint(low, high))
        chosen = self.choose([o.body for o in options], [o.weight for o in options], count, node)
        return self.join([self.expand(c) for c in chosen], node.separator)

    def choose(self, values: list[Node], weights: list[float], count: int, node: Variant) -> list[Node]:
        """``count`` options without replacement, one weighted draw each (the library's bookkeeping:
        the first equal option and the first equal weight are the ones removed)."""
        chosen = []
        for _ in range(count):
            try:
                pick = self.rng.choices(values, weights=weights, k=1)[0]
            except ValueError:  # weights left add up to 0 (or overflow); no draw was made
                raise self.error("the weights of the options left to pick add up to 0", node.column) from None
            chosen.append(pick)
            weights.remove(weights[values.index(pick)])
            values.remove(pick)
        return chosen

    def join(self, results: list[str], separator: str) -> str:
        if len(results) == 1:
            return results[0]
        joined = separator.join(results)
        if separator:  # the library drops one separator at either end of the joined text
            joined = joined.removeprefix(separator).removesuffix(separator)
        if self.counting:
            self.chars += len(joined) - sum(len(r) for r in results)
        return joined

    # -- wildcards ------------------------------------------------------------------------------------
    def wildcard(self, node: Wildcard) -> str:
        name = self.name(node)
        found = self.lookup(name, node)
        with self.inside(found.name, node.column):
            value = self.rng.choice(found.values)
            return self.expand(self.parse_value(value, found.origins[found.values.index(value)]))

    def wildcard_as_variant(self, node: Wildcard, outer: Variant) -> str:
        """``{N$$__name__}``: the file's lines become the options (each weight 1), count clamped."""
        name = self.name(node)
        found = self.lookup(name, node)
        with self.inside(found.name, node.column):
            n = len(found.values)
            options = tuple(
                Option(1.0, self.parse_value(v, o)) for v, o in zip(found.values, found.origins, strict=True)
            )
            lines = Variant(
                options, min(outer.low, n), min(outer.high, n), outer.separator, node.sampler, node.column
            )
            return self.variant(lines)

    def name(self, node: Wildcard) -> str:
        if isinstance(node.name, str):
            return node.name
        self.counting, before = False, self.counting
        try:
            return self.expand(node.name)
        finally:
            self.counting = before

    def lookup(self, name: str, node: Wildcard) -> WildcardValues:
        if self.library is None:
            raise self.error(f"wildcards are not set up on this bot (__{name}__)", node.column)
        if name in self.found:  # one look at the folder per name and expansion
            return self.found[name]
        try:
            self.found[name] = self.library.lookup(name)
            return self.found[name]
        except WildcardLookupError as exc:
            hint = (
                f"; did you mean {', '.join(f'__{s}__' for s in exc.suggestions)}?" if exc.suggestions else ""
            )
            if not exc.suggestions and any(c.isspace() for c in name):
                hint = " (the text between two '__' is read as a wildcard name)"
            raise self.error(exc.message + hint, node.column, exc.suggestions) from None

    def parse_value(self, value: str, origin: str) -> Node:
        try:
            return _parse_value(value)
        except DynamicPromptError as exc:
            raise self.error(f"{exc.message} ({origin}, column {exc.column})", 1) from None

    @contextmanager
    def inside(self, name: str, column: int) -> Iterator[None]:
        if not self.stack:
            self.anchor = column
        self.stack.append(name)
        self.used.setdefault(name, None)
        if len(self.stack) > MAX_WILDCARD_DEPTH:
            chain = " → ".join(self.stack)
            first = self.stack.index(name)
            what = (
                "wildcard cycle"
                if first < len(self.stack) - 1
                else f"wildcards nest deeper than {MAX_WILDCARD_DEPTH}"
            )
            raise self.error(f"{what}: {chain}", column)
        try:
            yield
        finally:
            self.stack.pop()


@lru_cache(maxsize=8192)
def _parse_value(value: str) -> Node:
    """A wildcard line's tree (lines repeat across expansions; trees are immutable)."""
    return parse(value)


def expand(
    template: str,
    seed: int,
    *,
    wildcards: WildcardLibrary | None = None,
    max_chars: int = DISCORD_LIMIT,
) -> Expansion:
    """``template`` with its variants and wildcards drawn from a generator seeded with ``seed``.

    Raises DynamicPromptError: a syntax problem, a missing wildcard, a cycle, or an expansion longer
    than ``max_chars`` (the prompt length limit applies to what the A1111 parser will read).
    """
    return _expand(parse(template), seed, wildcards, max_chars)


def expand_images(
    template: str,
    seeds: collections.abc.Sequence[int],
    *,
    wildcards: WildcardLibrary | None = None,
    max_chars: int = DISCORD_LIMIT,
) -> tuple[Expansion, ...]:
    """The prompts of a job's images, each expanded with that image's own seed (A1111 gives image ``i``
    seed ``seed + i``, or ``seed`` for every image when a variation strength is set:
    ``core.controls.vary.image_seeds``). The template is parsed once."""
    tree = parse(template)
    return tuple(_expand(tree, seed, wildcards, max_chars) for seed in seeds)


def _expand(tree: Node, seed: int, wildcards: WildcardLibrary | None, max_chars: int) -> Expansion:
    walker = _Expander(random.Random(seed), wildcards, max_chars)
    text = walker.expand(tree)
    if len(text) > max_chars:
        raise DynamicPromptError(
            f"the expanded prompt has {len(text):,} characters; the limit is {max_chars:,}", max_chars + 1
        )
    return Expansion(text, seed, tuple(walker.used))
