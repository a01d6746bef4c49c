"""Parse the editing syntax of one prompt (A1111 ``get_learned_conditioning_prompt_schedules``).

A1111 parses with an ambiguous Earley grammar whose top level accepts stray ``[ ] ( ) :``. Its
parser takes every bracket group that is a well-formed construct as that construct (the exception
depends on Python's hash seed: see ``parse`` and ``hash_dependent``). chant makes that choice in
``_classify``: one pass with a bracket stack finds the well-formed groups, marks every other
bracket or colon as a stray, and hands lark an unambiguous token stream for the LALR grammar in
``grammar.lark``. Nothing here recurses, so deep nesting costs time linear in its length.
tests/core/prompt/test_properties.py checks the result against an Earley model of A1111's grammar."""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import lru_cache

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import LarkError
from lark.lexer import Lexer

from core.prompt.ast import Alternate, Node, Scheduled, make_seq

# A raw token: a run of plain text (escapes kept), one special character, or a backslash that
# escapes nothing (at the end, or before a newline), which A1111's grammar cannot parse.
_RAW = re.compile(r"(?:[^\\\[\]():|]|\\.)+|[\[\]():|]|\\")
# The `when` of an edit: lark's SIGNED_NUMBER (ASCII digits) with optional whitespace around it.
_WHEN = re.compile(r"\s*[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\s*")


class Unparsable(Exception):
    """The prompt is not in A1111's language: A1111 then uses it as literal text."""


class _Frame:
    __slots__ = ("colons", "dynamic", "index", "kind", "pipes")

    def __init__(self, kind: str, index: int) -> None:
        self.kind = kind
        self.index = index
        self.colons: list[int] = []
        self.pipes: list[int] = []
        self.dynamic = False  # holds an edit or alternation


def _classify(raw: list[str]) -> list[str]:
    """The terminal name of every raw token (see grammar.lark); raises Unparsable.

    An emphasis group without an edit or alternation inside is static text: its brackets are
    named GROUP_*, and the lexer passes them on as TEXT, so the parser sees one piece of text.
    """
    names = ["TEXT" if len(t) > 1 or t not in "[]():|\\" else "STRAY" for t in raw]
    stack: list[_Frame] = []

    def collapse() -> None:
        # A group that is not well formed makes every group around it ill formed too: their
        # brackets stay strays. A `|` can live only in a well-formed alternation.
        for frame in stack:
            if frame.pipes:
                raise Unparsable
        stack.clear()

    for i, tok in enumerate(raw):
        if names[i] == "TEXT":
            continue
        if tok == "(" or tok == "[":
            stack.append(_Frame(tok, i))
        elif tok == ":":
            if stack:
                stack[-1].colons.append(i)
        elif tok == "|":
            if not stack or stack[-1].kind == "(":
                raise Unparsable
            stack[-1].pipes.append(i)
        elif tok == "\\":
            raise Unparsable
        elif tok == ")":
            if not stack or stack[-1].kind != "(":
                collapse()
                continue
            frame = stack.pop()
            if len(frame.colons) > 1:
                collapse()
                continue
            if frame.dynamic:
                names[frame.index], names[i] = "LPAR", "RPAR"
                for c in frame.colons:
                    names[c] = "COLON"
                if stack:
                    stack[-1].dynamic = True
            else:
                names[frame.index], names[i] = "GROUP_OPEN", "GROUP_CLOSE"
                for c in frame.colons:
                    names[c] = "GROUP_COLON"
        else:  # "]"
            if not stack or stack[-1].kind != "[":
                collapse()
                continue
            frame = stack.pop()
            if frame.pipes:
                if frame.colons:
                    stack.append(frame)
                    collapse()
                    continue
                names[frame.index], names[i] = "_ALT_OPEN", "_ALT_CLOSE"
                for p in frame.pipes:
                    names[p] = "_PIPE"
            elif not frame.colons:
                names[frame.index] = "LSQB" if frame.dynamic else "GROUP_OPEN"
                names[i] = "RSQB" if frame.dynamic else "GROUP_CLOSE"
            else:
                last = frame.colons[-1]
                if len(frame.colons) > 2 or last + 2 != i or not _WHEN.fullmatch(raw[last + 1]):
                    collapse()
                    continue
                names[frame.index], names[i] = "_EDIT_OPEN", "_EDIT_CLOSE"
                if len(frame.colons) == 2:
                    names[frame.colons[0]] = "_EDIT_COLON"
                names[last] = "WHEN"
                names[last + 1] = ""  # folded into the WHEN token
            if stack and names[i] != "GROUP_CLOSE":  # an edit, an alternation or a group holding one
                stack[-1].dynamic = True
    collapse()
    return names


_AS_TEXT = frozenset({"TEXT", "STRAY", "GROUP_OPEN", "GROUP_CLOSE", "GROUP_COLON"})


class _PromptLexer(Lexer):
    def __init__(self, lexer_conf) -> None:
        pass

    def lex(self, text: str) -> Iterator[Token]:  # lark's interface-0 custom lexer: gets the text
        matches = list(_RAW.finditer(text))
        raw = [m.group() for m in matches]
        names = _classify(raw)
        run: list[str] = []  # text and strays are all text to the parser: one token per run
        run_start = 0
        for i, m in enumerate(matches):
            name = names[i]
            if name in _AS_TEXT:
                if not run:
                    run_start = m.start()
                run.append(raw[i])
                continue
            if run:
                yield Token("TEXT", "".join(run), start_pos=run_start)
                run = []
            if name:
                value = raw[i] + raw[i + 1] if name == "WHEN" else raw[i]
                yield Token(name, value, start_pos=m.start())
        if run:
            yield Token("TEXT", "".join(run), start_pos=run_start)


@v_args(inline=True)
class _ToTree(Transformer):
    """Builds ``ast`` nodes while lark parses (no parse tree, no recursion)."""

    TEXT = STRAY = LPAR = RPAR = LSQB = RSQB = COLON = str

    def start(self, *parts: Node) -> Node:
        return make_seq(parts)

    def prompt(self, *parts: Node) -> Node:
        return make_seq(parts)

    def emphasized(self, *parts: Node) -> Node:
        return make_seq(parts)

    def scheduled(self, before: Node | None, after: Node, when: Token) -> Scheduled:
        return Scheduled(before or "", after, when.value[1:].strip(), when.start_pos + 2)

    def alternate(self, *options: Node) -> Alternate:
        return Alternate(options)


_parser = Lark.open(
    "grammar.lark", rel_to=__file__, parser="lalr", lexer=_PromptLexer, transformer=_ToTree(), cache=False
)


_OPENERS = frozenset({"LPAR", "LSQB", "_EDIT_OPEN", "_ALT_OPEN", "GROUP_OPEN"})
_CLOSERS = frozenset({"RPAR", "RSQB", "_EDIT_CLOSE", "_ALT_CLOSE", "GROUP_CLOSE"})


def hash_dependent(text: str) -> bool:
    """Whether A1111's result for ``text`` may depend on PYTHONHASHSEED (see ``parse``).

    That is the case when an edit is followed by a stray bracket or colon with nothing but whole
    bracket groups and the closing brackets of groups around the edit in between: A1111's Earley
    parser then sometimes drops the edit and leaves its brackets as text. ``x [a:b:3]: y``,
    ``[a:b:3]((`` and ``[a:b:3](c:1.2):`` are examples.
    """
    try:
        names = [n for n in _classify([m.group() for m in _RAW.finditer(text)]) if n]
    except Unparsable:
        return False
    match: dict[int, int] = {}
    stack: list[int] = []
    for i, name in enumerate(names):
        if name in _OPENERS:
            stack.append(i)
        elif name in _CLOSERS:
            match[stack.pop()] = i
    for i, name in enumerate(names):
        if name != "_EDIT_CLOSE":
            continue
        j = i + 1
        while j < len(names) and (names[j] in _CLOSERS or names[j] in _OPENERS):
            j = match[j] + 1 if names[j] in _OPENERS else j + 1
        if j < len(names) and names[j] == "STRAY":
            return True
    return False


@lru_cache(maxsize=1024)
def parse(text: str) -> Node:
    """The editing tree of ``text``; raises ``Unparsable`` where A1111's parser fails.

    Deterministic choice: A1111's result for an edit directly followed by a top-level stray
    bracket or colon (``x [a:b:3]: y``, ``[a:b:3]((``; see ``hash_dependent`` and A1111-SEMANTICS
    §4.6) depends on ``PYTHONHASHSEED``: some A1111 launches edit, others leave the group as text.
    chant always edits, as every A1111 launch does for the same edit without the stray.
    """
    try:
        return _parser.parse(text)
    except Unparsable:
        raise
    except LarkError as exc:  # cannot happen for tokens _classify accepted; keep A1111's fallback
        raise Unparsable from exc
