"""interpret(): comments, extra-network tags, AND, the negative path, step selection, JSON, errors."""

from __future__ import annotations

import pytest

from core.prompt import ExtraNetwork, PromptError, interpret


def texts(prompt: str, steps: int = 10, **kw) -> list[tuple[float, list[list]]]:
    result = interpret(prompt, steps, **kw)
    return [(s.weight, [[e.until_step, e.text] for e in s.schedule]) for s in result.subprompts]


def test_comments():
    assert interpret("# c\na", 10).text == "\na"
    assert interpret("a\n# c\nb", 10).text == "a\nb"
    assert interpret("a #c", 10).text == "a \n"
    assert interpret("a \\# b", 10).text == "a \\\n"  # no escape
    assert interpret("a # <lora:x:1>", 10).networks == ()  # comments go first


def test_extra_network_tags_are_removed_in_place_in_prompt_order():
    result = interpret("a <lora:foo:0.5:te=1> b (<hypernet:h:1>:1.2) <lora:bar: 0.5>", 10)
    assert result.text == "a  b (:1.2) "
    assert result.networks == (
        ExtraNetwork("lora", ("foo", "0.5"), (("te", "1"),)),
        ExtraNetwork("hypernet", ("h", "1"), ()),
        ExtraNetwork("lora", ("bar", " 0.5"), ()),
    )


def test_extra_network_argument_rules():
    nets = interpret("<lora::1><x:a=b=c:=1:y=><img:foo>", 10).networks
    assert [n.to_json() for n in nets] == [
        ["lora", ["", "1"], {}],
        ["x", ["a=b=c"], {"": "1", "y": ""}],
        ["img", ["foo"], {}],
    ]
    for not_a_tag in ["<lo-ra:foo>", "<lora>", "<lora:>", "< lora:x>"]:
        result = interpret(not_a_tag, 10)
        assert result.networks == () and result.text == not_a_tag


def test_editing_a_tag_is_impossible():
    result = interpret("[<lora:a:1>:b:5]", 10)
    assert result.networks[0].positional == ("a", "1")
    assert texts("[<lora:a:1>:b:5]") == [(1.0, [[5, ""], [10, "b"]])]


def test_and_split_and_weights():
    assert texts("a AND b:0.5 AND c : -1.5  ") == [
        (1.0, [[10, "a"]]),
        (0.5, [[10, " b"]]),
        (-1.5, [[10, " c"]]),
    ]
    assert texts("a_AND_b") == [(1.0, [[10, "a_AND_b"]])]
    assert [w for w, _ in texts("a-AND-b,AND,c")] == [1.0, 1.0, 1.0]
    assert texts("ANDROID AND ROBOT") == [(1.0, [[10, "ANDROID"]]), (1.0, [[10, " ROBOT"]])]
    assert texts("AND") == [(1.0, [[10, ""]]), (1.0, [[10, ""]])]
    assert texts("[a AND b:c:5]") == [(1.0, [[10, "[a"]]), (1.0, [[10, " b:c:5]"]])]


def test_weight_suffix_applies_without_and():
    assert texts("1girl, smile:0.5") == [(0.5, [[10, "1girl, smile"]])]
    assert texts("a:１.５") == [(1.5, [[10, "a"]])]
    assert texts("a:1.5\n") == [(1.5, [[10, "a"]])]
    for no_weight in ["a:1.2 b", "a:1e3", "a:1.2.3", "(a:1.2)"]:
        assert texts(no_weight) == [(1.0, [[10, no_weight]])]


def test_negative_path_has_no_and_weights_or_tags():
    result = interpret("a AND b:0.5 <lora:x:1>", 10, negative=True)
    assert result.networks == ()
    assert [(s.weight, s.schedule[0].text) for s in result.subprompts] == [(1.0, "a AND b:0.5 <lora:x:1>")]


def test_entry_at_follows_a1111_step_counter():
    sub = interpret("a [b:c:0.5] d", 10).subprompts[0]
    assert [sub.entry_at(k).text for k in range(10)] == ["a b d"] * 6 + ["a c d"] * 4
    alt = interpret("[a|b]", 10).subprompts[0]
    assert [alt.entry_at(k).text for k in range(5)] == ["a", "a", "b", "a", "b"]
    assert interpret("[b:c:0.999999]", 10).subprompts[0].entry_at(9).text == "b"
    assert interpret("a [b:3]", 10).subprompts[0].entry_at(4).text == "a b"
    assert sub.entry_at(99).text == "a c d"


def test_attention_is_parsed_per_scheduled_text():
    entries = interpret("[(cat:1.5):dog:5] BREAK x", 10).subprompts[0].schedule
    assert entries[0].attention == (("cat", 1.5), ("", 1.0), ("BREAK", -1.0), ("x", 1.0))
    assert entries[1].attention == (("dog", 1.0), ("BREAK", -1.0), ("x", 1.0))
    edited_break = interpret("[BREAK:x:3]", 10).subprompts[0].schedule[0].attention
    assert ("BREAK", -1.0) in edited_break


def test_unparsable_prompt_is_literal_for_emphasis_too():
    entry = interpret("(a|b) [c:d:5]", 10).subprompts[0].schedule
    assert len(entry) == 1
    assert entry[0].attention == (("a|b", 1.1), (" ", 1.0), ("c:d:5", 1 / 1.1))


def test_json_shape():
    assert interpret("a [b:c:1] <lora:n:0.8> AND d:0.5", 2).to_json() == {
        "text": "a [b:c:1]  AND d:0.5",
        "networks": [["lora", ["n", "0.8"], {}]],
        "subprompts": [
            {"weight": 1.0, "schedule": [[1, "a b", [["a b", 1.0]]], [2, "a c", [["a c", 1.0]]]]},
            {"weight": 0.5, "schedule": [[2, " d", [[" d", 1.0]]]]},
        ],
    }


@pytest.mark.parametrize(
    ("prompt", "column"),
    [
        ("(a:1.2.3)", 4),
        ("x AND (a:1.2.3)", 10),
        ("<lora:q:1> (a:1.2.3)", 15),  # columns count in the prompt as written
        ("# (a:1)\n(a:1.2.3)", 12),
        ("a [b:1e999]", 6),
        ("a AND [b:1e999]", 10),
        ("a:" + "9" * 400, 3),
    ],
)
def test_errors_point_at_the_column(prompt, column):
    with pytest.raises(PromptError) as err:
        interpret(prompt, 10)
    assert err.value.column == column


def test_length_limit_is_checked_first():
    with pytest.raises(PromptError, match="limit is 6000"):
        interpret("(" * 6001, 10)
    assert interpret("a" * 6000, 10).text == "a" * 6000
    with pytest.raises(PromptError, match="limit is 10"):
        interpret("a" * 11, 10, max_chars=10)


@pytest.mark.parametrize("steps", [0, -1, 1.5, "10", True, 10_001])
def test_bad_steps_are_rejected(steps):
    with pytest.raises(ValueError, match="steps"):
        interpret("a", steps)
