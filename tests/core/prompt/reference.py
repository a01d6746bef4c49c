"""A reference model of A1111's scheduler for differential tests: the Earley grammar of
A1111-SEMANTICS §4.1 with the evaluation of §4.2-§4.3, written from that description.

It is slow (Earley over characters) and, for an edit directly followed by a top-level ``:``,
its answer depends on PYTHONHASHSEED exactly as A1111's does. Tests use it only as an oracle.
"""

from __future__ import annotations

import lark

GRAMMAR = r"""
!start: (prompt | /[][():]/+)*
prompt: (emphasized | scheduled | alternate | plain | WHITESPACE)*
!emphasized: "(" prompt ")"
           | "(" prompt ":" prompt ")"
           | "[" prompt "]"
scheduled: "[" [prompt ":"] prompt ":" [WHITESPACE] NUMBER [WHITESPACE] "]"
alternate: "[" prompt ("|" [prompt])+ "]"
WHITESPACE: /\s+/
plain: /([^\\\[\]():|]|\\.)+/
%import common.SIGNED_NUMBER -> NUMBER
"""

# ordered_sets=False: lark < 1.2 iterated plain sets, which is what makes A1111 hash-seed dependent.
_parser = lark.Lark(GRAMMAR, parser="earley", ordered_sets=False)


def reference_schedule(prompt: str, steps: int) -> list[list]:
    """``[[until_step, text], ...]`` for ``prompt`` at ``steps`` (default timeline, no hires)."""
    try:
        tree = _parser.parse(prompt)
    except lark.exceptions.LarkError:
        return [[steps, prompt]]
    bounds = {steps}
    whens: dict[int, int] = {}
    for node in tree.iter_subtrees():
        if node.data == "scheduled":
            s = str(node.children[-2])
            v = float(s) * steps if "." in s else float(s)
            whens[id(node)] = min(steps, int(v))
            if whens[id(node)] >= 1:
                bounds.add(whens[id(node)])
        elif node.data == "alternate":
            bounds.update(range(1, steps + 1))

    def text(node, t: int) -> str:
        if isinstance(node, lark.Token):
            return str(node)
        if node is None:
            return ""
        if node.data == "scheduled":
            before, after = node.children[0], node.children[1]
            return text(before if t <= whens[id(node)] else after, t)
        if node.data == "alternate":
            options = node.children
            return text(options[(t - 1) % len(options)], t)
        if node.data == "plain":
            return str(node.children[0])
        return "".join(text(c, t) for c in node.children)

    return [[t, text(tree, t)] for t in sorted(bounds)]
