"""Prompt editing and alternation: A1111's doctests (golden table) and one test per rule."""

from __future__ import annotations

import pytest

from core.prompt import PromptError
from core.prompt.parser import Unparsable, hash_dependent, parse
from core.prompt.schedule import schedule


def sched(prompt: str, steps: int = 10, hires: int | None = None, old: bool = False) -> list[list]:
    try:
        tree = parse(prompt)
    except Unparsable:
        tree = prompt
    return [list(e) for e in schedule(tree, steps, hires, old)]


# A1111 v1.10.1 prompt_parser.py doctests of get_learned_conditioning_prompt_schedules, at 10 steps.
GOLDEN = [
    ("test", [[10, "test"]]),
    ("a [b:3]", [[3, "a "], [10, "a b"]]),
    ("a [b: 3]", [[3, "a "], [10, "a b"]]),
    ("a [[[b]]:2]", [[2, "a "], [10, "a [[b]]"]]),
    ("[(a:2):3]", [[3, ""], [10, "(a:2)"]]),
    ("a [b : c : 1] d", [[1, "a b  d"], [10, "a  c  d"]]),
    ("a[b:[c:d:2]:1]e", [[1, "abe"], [2, "ace"], [10, "ade"]]),
    ("a [unbalanced", [[10, "a [unbalanced"]]),
    ("a [b:.5] c", [[5, "a  c"], [10, "a b c"]]),
    # The stale doctest (A1111-SEMANTICS §4.7): `|` makes the prompt unparsable, so it stays literal.
    ("a [{b|d{:.5] c", [[10, "a [{b|d{:.5] c"]]),
    ("((a][:b:c [d:3]", [[3, "((a][:b:c "], [10, "((a][:b:c d"]]),
    ("[a|(b:1.1)]", [[t, "a" if t % 2 else "(b:1.1)"] for t in range(1, 11)]),
    ("[fe|]male", [[t, "female" if t % 2 else "male"] for t in range(1, 11)]),
    ("[fe|||]male", [[t, "female" if t % 4 == 1 else "male"] for t in range(1, 11)]),
]


@pytest.mark.parametrize(("prompt", "expected"), GOLDEN)
def test_a1111_doctests(prompt, expected):
    assert sched(prompt) == expected


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [("a [b:.5] c", [[10, "a b c"]]), ("a [b:1.5] c", [[5, "a  c"], [10, "a b c"]])],
)
def test_a1111_hires_doctests(prompt, expected):
    assert sched(prompt, 10, hires=10) == expected


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        ("1", [[1, "a b d"], [10, "a c d"]]),  # integer text: absolute step
        ("1.0", [[10, "a b d"]]),  # decimal text: fraction 1.0 x 10 = step 10, never switches
        ("5.0", [[10, "a b d"]]),  # fraction 5.0 x 10, clamped to 10
        ("1e1", [[10, "a b d"]]),  # no ".": absolute 10
        ("5e-1", [[10, "a c d"]]),  # absolute 0.5 -> 0: "to" from the first step
        ("1.5e-1", [[1, "a b d"], [10, "a c d"]]),  # fraction 0.15 x 10 = 1
        ("-.5", [[10, "a c d"]]),  # -5: "to" from the start
        ("+3", [[3, "a b d"], [10, "a c d"]]),
        ("5.", [[10, "a b d"]]),  # fraction 5.0
        (" 3 ", [[3, "a b d"], [10, "a c d"]]),  # whitespace around the number is dropped
    ],
)
def test_fraction_or_absolute_is_decided_by_the_dot(when, expected):
    assert sched(f"a [b:c:{when}] d") == expected


def test_old_scheduling_uses_the_value_not_the_text():
    assert sched("a [b:c:1.0] d", old=True) == [[1, "a b d"], [10, "a c d"]]
    assert sched("a [b:c:0.5] d", old=True) == [[5, "a b d"], [10, "a c d"]]
    assert sched("a [b:c:-1] d", old=True) == [[10, "a c d"]]  # negative: fraction -10


def test_hires_rebases_decimals_to_the_second_pass_and_integers_past_the_first():
    assert sched("[b:c:1.5]", 20, hires=10) == [[5, "b"], [10, "c"]]
    assert sched("[b:c:23]", 20, hires=10) == [[3, "b"], [10, "c"]]
    assert sched("[b:c:0.5]", 20, hires=10) == [[10, "c"]]  # the first pass's half: done before hires
    assert sched("[b:c:5]", 20, hires=10) == [[10, "c"]]


def test_old_scheduling_ignores_hires_steps():
    assert sched("[b:c:0.5]", 20, hires=10, old=True) == [[10, "b"], [20, "c"]]


def test_alternation_adds_every_step_and_empty_options():
    assert sched("[a|b|c]", 4) == [[1, "a"], [2, "b"], [3, "c"], [4, "a"]]
    assert sched("[|]", 2) == [[1, ""], [2, ""]]


def test_nesting_in_every_direction():
    assert sched("[[x|y]:z:2]", 4) == [[1, "x"], [2, "y"], [3, "z"], [4, "z"]]
    assert sched("([a:b:5]:1.3)") == [[5, "(a:1.3)"], [10, "(b:1.3)"]]
    assert sched("[a:[b|c]:1]", 3) == [[1, "a"], [2, "c"], [3, "b"]]


def test_unparsable_prompts_stay_literal():
    for prompt in ["[a:b:3] | c", "(a|b) [c:d:5]", "a\\", "a\\\nb [c:d:5]", "[a|b:3]", "[a|(b|c)]"]:
        assert sched(prompt) == [[10, prompt]], prompt


def test_escapes_are_kept_by_the_scheduler():
    assert sched("\\[a:b:3\\] [c:d:3]") == [[3, "\\[a:b:3\\] c"], [10, "\\[a:b:3\\] d"]]


def test_edit_inside_emphasis_and_stray_brackets():
    assert sched("(x [a:b:2]") == [[2, "(x a"], [10, "(x b"]]
    assert sched("a) [b:c:2] (d") == [[2, "a) b (d"], [10, "a) c (d"]]
    assert sched("[a:b]") == [[10, "[a:b]"]]  # no number: not an edit
    assert sched("[a:b:c:3]") == [[10, "[a:b:c:3]"]]  # three colons: not an edit


def test_hash_seed_dependent_case_always_edits():
    # A1111 edits this on some launches and not on others (PYTHONHASHSEED); chant always edits.
    for prompt in ["masterpiece, [cat:dog:0.5]: cute", "[a:b:3]((", "x [a:b:3]) : y"]:
        assert hash_dependent(prompt)
        assert len(sched(prompt)) == 2
    assert not hash_dependent("x [a:b:3] y")


def test_overflowing_edit_step_is_an_error_with_its_column():
    with pytest.raises(PromptError) as err:
        sched("a [b:1e999]")
    assert err.value.column == 6


def test_deep_nesting_does_not_recurse():
    depth = 3000
    prompt = "[" * depth + "a:b:3" + "]" + "]" * (depth - 1)
    result = sched(prompt)
    assert result == [
        [3, "[" * (depth - 1) + "a" + "]" * (depth - 1)],
        [10, "[" * (depth - 1) + "b" + "]" * (depth - 1)],
    ]
    nested = "[a:" * 1000 + "b" + ":3]" * 1000
    assert sched(nested)[-1][1] == "b"
