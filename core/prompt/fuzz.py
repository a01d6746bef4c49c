"""Fuzz core.prompt: ``python -m core.prompt.fuzz --examples 100000 [--seed N]``.

Random prompts (prompt syntax fragments, deep nesting, arbitrary Unicode, over-long text) must
give an interpretation or a PromptError — never another exception — and every result must hold
the invariants in ``check``. Prints a summary; exit status 1 on the first violation.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time

from core.prompt.errors import PromptError
from core.prompt.interpret import Interpretation, interpret
from core.prompt.tokens import BOS, EOS, tokenize_text

FRAGMENTS = [
    "a", "cat", " ", ", ", "(", ")", "[", "]", ":", "|", "\\", "\\(", "\\\n", "\n", "#", "BREAK", " BREAK ",
    "AND", " AND ", ":0.5", ":1.2)", "(x:1.3)", "[a:b:3]", "[a:b:0.5]", "[x|y]", "[:c:2]", "[d::1.0]",
    "1e999", ".5", "-1", "１.５", "٣", "<lora:n:0.8>", "<hypernet:h>", "<x:a=b:c=d=e>", "{", "}",
    "masterpiece", "\u00a0", "日本", "😀", "ΣΑΣ", "e\u0301", "\x00", "\u200b", "..", "1.2.3",
]  # fmt: skip


def random_prompt(rng: random.Random, max_len: int = 2000) -> str:
    kind = rng.random()
    if kind < 0.6:
        parts = [rng.choice(FRAGMENTS) for _ in range(rng.randint(0, 60))]
        text = "".join(parts)
    elif kind < 0.75:  # deep nesting
        depth = rng.randint(1, 1500)
        opener, closer = rng.choice([("(", ")"), ("[", "]"), ("[a:", ":2]"), ("[", "|b]"), ("((", ")")])
        text = opener * depth + rng.choice(FRAGMENTS) + closer * rng.randint(0, depth)
    elif kind < 0.95:  # arbitrary code points
        text = "".join(chr(rng.randint(0, 0x10FFFF)) for _ in range(rng.randint(0, 80)))
        text = "".join(c for c in text if not 0xD800 <= ord(c) <= 0xDFFF)
    else:  # long text, sometimes over the limit
        text = "".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(500, 2500)))
    return text[: max_len + rng.choice([0, 0, 0, 10])]


def check(result: Interpretation, steps: int) -> None:
    """Invariants of every interpretation; raises AssertionError."""
    assert result.subprompts, "no subprompts"
    for sub in result.subprompts:
        assert math.isfinite(sub.weight), sub.weight
        until = [e.until_step for e in sub.schedule]
        assert until == sorted(set(until)) and until[0] >= 1, until
        assert until[-1] == steps, (until, steps)  # the schedule covers every step
        for entry in sub.schedule:
            assert entry.attention, entry
            for text, weight in entry.attention:
                assert isinstance(text, str) and math.isfinite(weight), (text, weight)


def check_tokens(text: str) -> None:
    result = tokenize_text(text)
    assert result.chunks
    for chunk in result.chunks:
        assert len(chunk.tokens) == len(chunk.multipliers) == 77
        assert chunk.tokens[0] == BOS and chunk.tokens[-1] == EOS
        assert all(math.isfinite(m) for m in chunk.multipliers)


def run_one(rng: random.Random) -> tuple[str, bool]:
    prompt = random_prompt(rng)
    steps = rng.randint(1, 60)
    hires = rng.choice([None, None, rng.randint(1, 30)])
    old = rng.random() < 0.2
    negative = rng.random() < 0.2
    try:
        result = interpret(prompt, steps, negative=negative, hires_steps=hires, use_old_scheduling=old)
    except PromptError as exc:
        assert 1 <= exc.column <= len(prompt) + 1, (exc.column, len(prompt))
        return prompt, False
    check(result, hires if hires is not None and not old else steps)
    if rng.random() < 0.2:
        check_tokens(result.subprompts[0].schedule[-1].text)
    return prompt, True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m core.prompt.fuzz", description=__doc__)
    p.add_argument("--examples", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    ok = errors = 0
    slowest = (0.0, "")
    start = time.perf_counter()
    for _ in range(args.examples):
        t0 = time.perf_counter()
        try:
            prompt, fine = run_one(rng)
        except Exception as exc:  # any other exception is a bug
            print(f"FAILED after {ok + errors} examples: {type(exc).__name__}: {exc}", file=sys.stderr)
            raise
        elapsed = time.perf_counter() - t0
        slowest = max(slowest, (elapsed, prompt[:60]))
        ok, errors = ok + fine, errors + (not fine)
    total = time.perf_counter() - start
    print(
        f"{args.examples} examples in {total:.1f} s: {ok} interpreted, {errors} PromptError, "
        f"0 other exceptions; slowest {slowest[0] * 1000:.1f} ms ({slowest[1]!r})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
