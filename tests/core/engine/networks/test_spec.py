"""A1111's argument rules for <lora:…> and <hypernet:…>, and the batching key."""

from __future__ import annotations

import pytest

from core.engine.networks import (
    HypernetSpec,
    LoraSpec,
    networks_key,
    parse_hypernet,
    parse_lora,
    parse_networks,
)
from tests.core.engine.networks.conftest import Tag, hypernet, lora


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        (lora("a"), LoraSpec("a", 1.0, 1.0, None)),
        (lora("a", "0.5"), LoraSpec("a", 0.5, 0.5, None)),
        (lora("a", " 0.5"), LoraSpec("a", 0.5, 0.5, None)),  # A1111 keeps the space; float() accepts it
        (lora("a", "0.5", "0.25"), LoraSpec("a", 0.5, 0.25, None)),
        (lora("a", "0.5", "0.25", "8"), LoraSpec("a", 0.5, 0.25, 8)),
        (lora("a", te="0.3"), LoraSpec("a", 0.3, 0.3, None)),  # unet defaults to te after te= applies
        (lora("a", "0.5", unet="0"), LoraSpec("a", 0.5, 0.0, None)),
        (lora("a", "1", "1", "4", te="0.2", unet="0.7", dyn="2"), LoraSpec("a", 0.2, 0.7, 2)),
        (Tag("lyco", ("a", "0.6")), LoraSpec("a", 0.6, 0.6, None)),
    ],
)
def test_lora_arguments(tag: Tag, expected: LoraSpec) -> None:
    assert parse_lora(tag) == expected


@pytest.mark.parametrize(
    ("tag", "message"),
    [
        (lora("a", "strong"), "text-encoder multiplier 'strong' is not a number"),
        (lora("a", "1", "x"), "UNet multiplier 'x' is not a number"),
        (lora("a", te=""), "te '' is not a number"),
        (lora("a", "inf"), "finite"),
        (lora("a", "nan"), "finite"),
        (lora("a", dyn="1.5"), "dyn '1.5' is not a whole number"),
        (lora("a", dyn="0"), "dyn must be at least 1"),
        (Tag("lora", (), {"te": "1"}), "first argument must be the LoRA name"),
    ],
)
def test_bad_lora_arguments(tag: Tag, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_lora(tag)


def test_hypernet_arguments() -> None:
    assert parse_hypernet(hypernet("h")) == HypernetSpec("h", 1.0)
    assert parse_hypernet(hypernet("h", "0.4")) == HypernetSpec("h", 0.4)
    with pytest.raises(ValueError, match="not a number"):
        parse_hypernet(hypernet("h", "x"))
    with pytest.raises(ValueError, match="a name and a multiplier only"):
        parse_hypernet(Tag("hypernet", ("h",), {"te": "1"}))


def test_named_items_may_be_a_tuple_of_pairs() -> None:
    assert parse_lora(Tag("lora", ("a",), (("unet", "0.5"),))) == LoraSpec("a", 1.0, 0.5, None)  # type: ignore[arg-type]


def test_parse_networks_groups_by_kind_in_a1111_order_and_skips_other_kinds() -> None:
    request = parse_networks(
        [lora("b"), Tag("img", ("x",)), hypernet("h2"), lora("a", "0.5"), hypernet("h1")]
    )
    assert [s.name for s in request.loras] == ["b", "a"]
    assert [s.name for s in request.hypernets] == ["h2", "h1"]
    assert request.skipped == ("img",) and request.kinds == ("lora", "hypernet")
    assert not parse_networks([Tag("img", ("x",))])


@pytest.mark.parametrize(
    ("tags", "order"),
    [
        # the example: a <lora:foo:1> b <hypernet:h:0.3> c <lora:bar:0.2>
        (
            [lora("foo", "1"), hypernet("h", "0.3"), lora("bar", "0.2")],
            ["lora foo", "lora bar", "hypernet h"],
        ),
        ([hypernet("h"), lora("foo"), hypernet("g")], ["hypernet h", "hypernet g", "lora foo"]),
        # lyco is lora's alias: its tags join lora's list after the first-seen spelling's tags
        ([lora("x"), Tag("lyco", ("y",)), lora("z")], ["lora x", "lora z", "lora y"]),
        ([Tag("lyco", ("y",)), hypernet("h"), lora("x")], ["lora y", "lora x", "hypernet h"]),
    ],
)
def test_activation_order_is_a1111s_dict_of_lists(tags, order) -> None:
    request = parse_networks(tags)
    named = {"lora": [f"lora {s.name}" for s in request.loras]}
    named["hypernet"] = [f"hypernet {s.name}" for s in request.hypernets]
    assert [item for kind in request.kinds for item in named[kind]] == order


def test_networks_key() -> None:
    key = networks_key([lora("a", "0.5"), lora("b")])
    assert key == networks_key([lora("a", "0.5", "0.5"), lora("b", "1")])
    assert key != networks_key([lora("b", "1"), lora("a", "0.5")])  # updates are summed in this order
    assert key != networks_key([lora("a", "0.5"), lora("b", "1", "0.9")])
    assert key != networks_key([lora("a", "0.5")])
    assert networks_key([]) == networks_key([Tag("img", ("x",))])
    assert networks_key([hypernet("x"), hypernet("y")]) != networks_key([hypernet("y"), hypernet("x")])
    hash(key)


def test_tags_from_the_real_prompt_parser() -> None:
    prompt = pytest.importorskip("core.prompt")
    if not hasattr(prompt, "interpret"):
        pytest.skip("core.prompt.interpret is not there yet")
    interp = prompt.interpret("a cat <lora:detail:0.8:unet=0.3> <lyco:ink:te=0.5> <hypernet:hn:0.4>", 20)
    request = parse_networks(interp.networks)
    assert request.loras == (LoraSpec("detail", 0.8, 0.3, None), LoraSpec("ink", 0.5, 0.5, None))
    assert request.hypernets == (HypernetSpec("hn", 0.4),)
