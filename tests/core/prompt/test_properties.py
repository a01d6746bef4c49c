"""Property tests: any prompt gives an interpretation or a PromptError, with sound schedules and
weights; and the parser agrees with an Earley model of A1111's grammar (reference.py)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.prompt import PromptError, interpret
from core.prompt.fuzz import FRAGMENTS, check, check_tokens, run_one
from core.prompt.parser import Unparsable, hash_dependent, parse
from core.prompt.schedule import schedule

from .reference import reference_schedule

SETTINGS = settings(max_examples=200, deadline=None)
syntax = st.lists(st.sampled_from(FRAGMENTS), max_size=80).map("".join)
prompts = st.one_of(st.text(max_size=2000), syntax)


def interpret_or_error(prompt: str, steps: int, **kw):
    try:
        return interpret(prompt, steps, **kw)
    except PromptError as exc:
        assert 1 <= exc.column <= len(prompt) + 1
        return None


@SETTINGS
@given(prompts, st.integers(1, 60), st.booleans(), st.booleans())
def test_any_prompt_gives_a_sound_result_or_a_prompt_error(prompt, steps, negative, old):
    result = interpret_or_error(prompt, steps, negative=negative, use_old_scheduling=old)
    if result is not None:
        check(result, steps)
        for sub in result.subprompts:
            used = [sub.entry_at(k) for k in range(steps)]  # every sampler step has its text
            assert used[0] is sub.schedule[0]


@SETTINGS
@given(syntax, st.integers(1, 40), st.integers(1, 40))
def test_hires_schedules_cover_the_hires_pass(prompt, steps, hires):
    result = interpret_or_error(prompt, steps, hires_steps=hires)
    if result is not None:
        check(result, hires)


@SETTINGS
@given(
    st.integers(1, 2000),
    st.sampled_from([("(", ")"), ("[", "]"), ("[a:", ":3]"), ("[", "|b]"), ("(", ":1.1)")]),
    st.booleans(),
)
def test_deep_nesting_neither_recurses_nor_hangs(depth, brackets, balanced):
    opener, closer = brackets
    prompt = (opener * depth + "x" + (closer * depth if balanced else ""))[:6000]
    result = interpret_or_error(prompt, 20)
    if result is not None:
        check(result, 20)
        check_tokens(result.subprompts[0].schedule[0].text)


@SETTINGS
@given(st.text(min_size=1, max_size=50), st.integers(0, 3000))
def test_over_the_limit_is_a_clear_error(text, extra):
    prompt = (text * (6000 // len(text) + 1))[:6000] + "x" * (extra + 1)
    with pytest.raises(PromptError, match="limit is 6000") as err:
        interpret(prompt, 20)
    assert err.value.column == 6001


@settings(max_examples=100, deadline=None)
@given(st.randoms(use_true_random=False))
def test_fuzz_examples(rng: random.Random):
    run_one(rng)


def _mine(prompt: str, steps: int) -> list[list]:
    try:
        tree = parse(prompt)
    except Unparsable:
        tree = prompt
    return [list(e) for e in schedule(tree, steps)]


small = st.lists(
    st.sampled_from(["a", " ", "[", "]", "(", ")", ":", "|", "3", ".5", "\\", "[x|y]", "(c:1.2)", "[a:b:2]"]),
    max_size=14,
).map("".join)


@settings(max_examples=150, deadline=None)
@given(small, st.sampled_from([4, 10]))
def test_lalr_parser_matches_a1111_earley_grammar(prompt, steps):
    # Where A1111 itself depends on PYTHONHASHSEED, chant's deterministic choice is one of
    # A1111's outcomes (checked across seeds when this was written), not necessarily this seed's.
    expected = reference_schedule(prompt, steps)
    assert _mine(prompt, steps) == expected or hash_dependent(prompt)


@pytest.mark.parametrize(
    "prompt",
    [
        "a [b:3]",
        "((a][:b:c [d:3]",
        "[a|(b:1.1)] [c:d:0.5] (e:1.2)",
        "a [b : c : 1] d [[x|y]:z:2]",
        "[a:[b:c:2]:1]((d)) e]",
        "x (y [a|b|] z) [unbalanced",
        "[a:b:3] | c",
        "a\\[b:c:2\\] [d:e:.5]",
    ],
)
def test_lalr_parser_matches_a1111_earley_grammar_on_examples(prompt):
    assert _mine(prompt, 10) == reference_schedule(prompt, 10)
