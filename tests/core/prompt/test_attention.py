"""Emphasis parsing: A1111's doctests (golden table) and the exact float rules."""

from __future__ import annotations

import pytest

from core.prompt import PromptError, parse_attention

GOLDEN = [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    (
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        [
            ("a ", 1.0),
            ("house", 1.5730000000000004),
            (" ", 1.1),
            ("on", 1.0),
            (" a ", 1.1),
            ("hill", 0.55),
            (", sun, ", 1.1),
            ("sky", 1.4641000000000006),
            (".", 1.1),
        ],
    ),
]


@pytest.mark.parametrize(("text", "expected"), GOLDEN)
def test_a1111_doctests(text, expected):
    assert parse_attention(text) == expected


def test_square_brackets_multiply_by_the_precomputed_reciprocal():
    assert parse_attention("[a]") == [("a", 1 / 1.1)]
    assert parse_attention("[[a]]") == [("a", 1.0 * (1 / 1.1) * (1 / 1.1))]
    assert parse_attention("[a:1.5]") == [("a:1.5", 0.9090909090909091)]  # weights only in ( )


def test_factors_compound_in_closing_order_and_merge_only_on_exact_equality():
    assert parse_attention("(((sky)))") == [("sky", 1.1 * 1.1 * 1.1)]
    assert parse_attention("((((sky))))") == [("sky", 1.4641000000000006)]
    assert parse_attention("((a))(a:1.21)") == [("a", 1.2100000000000002), ("a", 1.21)]
    assert parse_attention("(a:1.1)(b)") == [("ab", 1.1)]
    assert parse_attention("([a)]") == [("a", 1.1 * (1 / 1.1))]  # cross-nesting: each closer its own stack


def test_weights_accept_unicode_digits_and_reject_exponents():
    assert parse_attention("(a:１.５)") == [("a", 1.5)]
    assert parse_attention("(a:٣)") == [("a", 3.0)]
    assert parse_attention("(a:1e3)") == [("a:1e3", 1.1)]
    assert parse_attention("(a : 1.2)") == [("a ", 1.2)]
    assert parse_attention("(a:-1)") == [("a", -1.0)]


@pytest.mark.parametrize("text", ["(a:1.2.3)", "(a:.)", "(a:..)"])
def test_malformed_weights_are_errors_with_a_column(text):
    with pytest.raises(PromptError) as err:
        parse_attention(text)
    assert err.value.column == 4


def test_infinite_weights_are_errors():
    with pytest.raises(PromptError):
        parse_attention("(a:" + "9" * 400 + ")")
    with pytest.raises(PromptError):
        parse_attention("((a:" + "9" * 200 + "):" + "9" * 200 + ")")


def test_escapes_and_lone_backslashes():
    assert parse_attention("\\|") == [("|", 1.0)]
    assert parse_attention("a\\b") == [("ab", 1.0)]
    assert parse_attention("\\\\") == [("\\", 1.0)]
    assert parse_attention(":)") == [(":)", 1.0)]  # unmatched closers are text
    assert parse_attention("") == [("", 1.0)]


def test_break():
    assert parse_attention("a BREAK b") == [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]
    assert parse_attention("a,BREAK,b") == [("a,", 1.0), ("BREAK", -1.0), (",b", 1.0)]
    assert parse_attention("a_BREAK_b") == [("a_BREAK_b", 1.0)]
    assert parse_attention("aBREAKb") == [("aBREAKb", 1.0)]
    assert parse_attention("a break b") == [("a break b", 1.0)]
    assert parse_attention("a\u00a0BREAK\u00a0b") == [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]
    assert parse_attention("BREAK BREAK") == [
        ("", 1.0),
        ("BREAK", -1.0),
        ("", 1.0),
        ("BREAK", -1.0),
        ("", 1.0),
    ]


def test_break_inside_brackets_is_a_weighted_word():
    assert parse_attention("(a BREAK b)") == [("a", 1.1), ("BREAK", -1.1), ("b", 1.1)]
    assert parse_attention("(a BREAK b:0)") == [("aBREAKb", 0.0)]
