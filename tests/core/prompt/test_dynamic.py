"""Dynamic prompts: each rule of the syntax, seeding, errors, limits, and the dynamicprompts library
(sd-dynamic-prompts' engine, MIT) as the reference for every template it can parse."""

from __future__ import annotations

import itertools
import logging
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from core.prompt.dynamic import (
    MAX_NESTING,
    MAX_WILDCARD_DEPTH,
    MAX_WORK,
    DynamicPromptError,
    expand,
    expand_images,
    has_dynamic_syntax,
)
from core.prompt.errors import PromptError
from core.prompt.wildcards import WildcardLibrary

SEEDS = range(200)


def outcomes(template: str, library: WildcardLibrary | None = None, seeds=SEEDS) -> set[str]:
    return {expand(template, s, wildcards=library).text for s in seeds}


def write(root: Path, files: dict[str, str]) -> WildcardLibrary:
    for name, text in files.items():
        path = root / f"{name}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return WildcardLibrary(root)


@pytest.fixture
def lib(tmp_path: Path) -> WildcardLibrary:
    return write(
        tmp_path / "wildcards",
        {
            "colours": "red\ngreen\n# a comment\n\n  blue  \nred\n",
            "animals/cats": "tabby\n{black|white} cat\n__animals/dogs__ friend\n",
            "animals/dogs": "pug\ncorgi\n",
            "one": "only\n",
            "loop/a": "x __loop/b__\n",
            "loop/b": "y __loop/a__\n",
            "bad/unclosed": "fine\n{oops\n",
        },
    )


# ------------------------------------------------------------------------------------------ variants


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{a|b|c}", {"a", "b", "c"}),
        ("x {a|b} y", {"x a y", "x b y"}),
        ("{a|{b|c}}", {"a", "b", "c"}),
        ("{a|}", {"a", ""}),
        ("{a}", {"a"}),
        ("{{masterpiece}}", {"masterpiece"}),  # NovelAI-style braces read as one-option variants
        ("{0::a|b}", {"b"}),  # a zero weight is never drawn
        ("{2$$a|b|c}", {"a,b", "a,c", "b,a", "b,c", "c,a", "c,b"}),  # without replacement, "," joined
        ("{2$$ and $$a|b}", {"a and b", "b and a"}),  # custom separator
        ("{2$$|$$a|b}", {"a|b", "b|a"}),
        ("{1-2$$a|b}", {"a", "b", "a,b", "b,a"}),
        ("{-2$$a|b}", {"a", "b", "a,b", "b,a"}),  # lower bound 1
        ("{2-$$a|b|c}", {",".join(p) for k in (2, 3) for p in itertools.permutations("abc", k)}),
        ("{3-1$$a|b}", {"a", "b", "a,b", "b,a"}),  # bounds in either order
        ("{0$$a|b}", {""}),
        ("{5$$a|b}", {"a,b", "b,a"}),  # more than there are: all of them
        ("{ a | b }", {"a ", "b "}),  # leading whitespace of an option is dropped, trailing kept
        ("{~a|b}", {"a", "b"}),
        ("{0.5:: a|b}", {" a", "b"}),
    ],
)
def test_variant_outcomes(template: str, expected: set[str]) -> None:
    assert outcomes(template) == expected


def test_weights_shift_the_odds() -> None:
    heavy = [expand("{9::a|1::b}", s).text for s in range(2000)]
    assert 0.85 < heavy.count("a") / len(heavy) < 0.95


@pytest.mark.parametrize(
    "prompt",
    [
        "a (red:1.2) boat, [sunny:stormy:0.5] sky, [a|b] AND c:0.5 BREAK d",
        "a|b, a}b, <lora:name:0.8>, \\(escaped\\)",
        "^__^ smile",  # an "__" that no later "__" closes is text
        "a__b, >_<",
        "____ x",  # so is one with nothing between
        "$5 and 50% off",  # "$" and "%" outside braces are text
        "http://example.com/*x*/",  # "//" and "/* */" are not comments for chant
    ],
)
def test_a1111_syntax_passes_through(prompt: str) -> None:
    assert expand(prompt, 7).text == prompt


def test_two_lone_double_underscores_make_a_wildcard_as_in_the_extension() -> None:
    with pytest.raises(DynamicPromptError, match=r"there is no wildcard '\^ and a'.*read as a wildcard name"):
        expand("^__^ and a__b", 1, wildcards=WildcardLibrary("/nonexistent"))


def test_comments_are_removed_as_the_library_removes_them() -> None:
    assert expand("a #comment {x|\nb", 1).text == "a  \nb"  # literal pieces joined by a space
    assert expand("#only a comment\nb", 1).text == "\nb"
    assert expand("{a|b} #c\nd", 1).text in {"a\nd", "b\nd"}
    assert expand("{#c\n2$$a|b}", 1).text in {"a,b", "b,a"}


def test_has_dynamic_syntax() -> None:
    assert not has_dynamic_syntax("a (b:1.2) [c|d]")
    assert all(has_dynamic_syntax(t) for t in ("{a|b}", "__x__", "a # c"))


# ------------------------------------------------------------------------------------------ seeding


def test_same_seed_same_expansion_and_seeds_differ(lib: WildcardLibrary) -> None:
    template = "{a|b|c|d} __colours__ {2$$w|x|y|z} __animals/cats__"
    first = expand(template, 1234, wildcards=lib)
    assert expand(template, 1234, wildcards=lib) == first
    assert first.seed == 1234
    assert len({expand(template, s, wildcards=lib).text for s in range(50)}) > 10


def test_image_i_uses_seed_plus_i(lib: WildcardLibrary) -> None:
    template = "{a|b|c} __colours__"
    images = expand_images(template, [40, 41, 42, 43], wildcards=lib)
    assert [e.seed for e in images] == [40, 41, 42, 43]
    assert images == tuple(expand(template, 40 + i, wildcards=lib) for i in range(4))


def test_expansion_lists_the_wildcards_it_used(lib: WildcardLibrary) -> None:
    result = expand("__animals/cats__ __colours__ __colours__", 3, wildcards=lib)
    assert result.wildcards[:1] == ("animals/cats",)
    assert "colours" in result.wildcards and len(result.wildcards) == len(set(result.wildcards))


# ------------------------------------------------------------------------------------------ wildcards


def test_wildcard_lines(lib: WildcardLibrary) -> None:
    assert outcomes("__colours__", lib) == {"red", "green", "blue"}  # stripped, deduped, no comments
    assert outcomes("__one__", lib) == {"only"}


def test_nested_wildcards_and_variants_inside_lines(lib: WildcardLibrary) -> None:
    assert outcomes("__animals/cats__", lib) == {
        "tabby",
        "black cat",
        "white cat",
        "pug friend",
        "corgi friend",
    }


def test_wildcard_in_a_variant_picks_lines_without_replacement(lib: WildcardLibrary) -> None:
    assert outcomes("{2$$__colours__}", lib) == {
        f"{a},{b}" for a, b in itertools.permutations(["red", "green", "blue"], 2)
    }
    assert outcomes("{5$$ and $$__colours__}", lib) == {
        " and ".join(p) for p in itertools.permutations(["red", "green", "blue"])
    }


def test_glob_fallback_and_built_names(lib: WildcardLibrary) -> None:
    assert outcomes("__cats__", lib) == outcomes("__animals/cats__", lib)  # found as */cats
    assert outcomes("__animals/d*__", lib) == {"pug", "corgi"}
    assert outcomes("__animals/{dogs|dogs}__", lib) == {"pug", "corgi"}
    assert outcomes("__~colours__", lib) == {"red", "green", "blue"}


def test_missing_wildcard_names_it_and_the_closest(lib: WildcardLibrary) -> None:
    with pytest.raises(DynamicPromptError) as err:
        expand("a photo of __animal/cat__ outdoors", 1, wildcards=lib)
    assert "there is no wildcard 'animal/cat'" in err.value.message
    assert "animals/cats" in err.value.suggestions
    assert err.value.column == 12
    assert isinstance(err.value, PromptError)


def test_missing_inside_a_file_points_at_the_outer_wildcard(tmp_path: Path) -> None:
    lib = write(tmp_path, {"outer": "__inner__\n", "inner": "__nowhere__\n"})
    with pytest.raises(DynamicPromptError) as err:
        expand("xy __outer__", 1, wildcards=lib)
    assert err.value.column == 4
    assert err.value.wildcards == ("outer", "inner")
    assert "nowhere" in err.value.message


def test_syntax_error_inside_a_file_names_file_and_line(lib: WildcardLibrary) -> None:
    with pytest.raises(DynamicPromptError) as err:
        expand("{2$$__bad/unclosed__}", 1, wildcards=lib)  # every line of the file is parsed
    assert "bad/unclosed.txt line 2" in err.value.message
    assert "never closed" in err.value.message


def test_no_wildcard_folder_is_an_error() -> None:
    with pytest.raises(DynamicPromptError, match=r"wildcards are not set up on this bot \(__x__\)"):
        expand("__x__", 1)


def test_cycle_is_an_error_not_a_hang(lib: WildcardLibrary) -> None:
    with pytest.raises(DynamicPromptError) as err:
        expand("__loop/a__", 1, wildcards=lib)
    assert err.value.message.startswith("wildcard cycle: loop/a → loop/b → loop/a")
    assert len(err.value.wildcards) == MAX_WILDCARD_DEPTH + 1
    assert err.value.column == 1


def test_deep_but_finite_nesting_is_reported(tmp_path: Path) -> None:
    files = {f"w{i}": f"__w{i + 1}__\n" for i in range(MAX_WILDCARD_DEPTH + 2)}
    files[f"w{MAX_WILDCARD_DEPTH + 2}"] = "end\n"
    lib = write(tmp_path, files)
    with pytest.raises(DynamicPromptError, match=f"wildcards nest deeper than {MAX_WILDCARD_DEPTH}"):
        expand("__w0__", 1, wildcards=lib)
    assert expand("__w3__", 1, wildcards=lib).text == "end"


def test_names_stay_inside_the_folder(lib: WildcardLibrary) -> None:
    with pytest.raises(DynamicPromptError, match=r"cannot contain '\.\.'"):
        expand("__../secrets__", 1, wildcards=lib)


# ------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("template", "message", "column"),
    [
        ("a {b|c", "this '{' is never closed", 3),
        ("{a|{b}", "this '{' is never closed", 1),
        ("x ${season=winter}", r"variables \(\$\{…\}\) are not supported", 3),
        ("%{a$$b}", r"wrap commands \(%\{…\}\) are not supported", 1),
        ("{@a|b}", "cyclical sampler", 2),
        ("__@colours__", "cyclical sampler", 3),
        ("{a|2 $$b}", r"a '\$' inside \{…\} is only allowed in a count", 6),
        ("{-1.5::a|b}", "a weight must not be negative", 2),
        ("{0::a|0.0::b}", "weights of these options add up to 0", 1),
        ("__x(season=winter)__", "parameterised wildcards", 4),
    ],
)
def test_errors_name_the_problem_and_column(template: str, message: str, column: int) -> None:
    with pytest.raises(DynamicPromptError, match=message) as err:
        expand(template, 1)
    assert err.value.column == column


def test_weights_left_can_run_out() -> None:
    with pytest.raises(DynamicPromptError, match="options left to pick add up to 0"):
        outcomes("{2$$1::a|0::b}")


def test_nesting_limit() -> None:
    with pytest.raises(DynamicPromptError, match=f"more than {MAX_NESTING} deep"):
        expand("{" * (MAX_NESTING + 5) + "a" + "}" * (MAX_NESTING + 5), 1)
    assert expand("{" * MAX_NESTING + "a" + "}" * MAX_NESTING, 1).text == "a"


def test_expansion_counts_against_the_length_limit(tmp_path: Path) -> None:
    lib = write(tmp_path, {"long": "x" * 400 + "\n"})
    assert len(expand("__long__ " * 10, 1, wildcards=lib, max_chars=6000).text) == 4010
    with pytest.raises(DynamicPromptError, match="the limit is 4,000") as err:
        expand("__long__ " * 10, 1, wildcards=lib, max_chars=4000)
    assert err.value.column == 4001


def test_explosive_files_stop_at_the_work_budget(tmp_path: Path) -> None:
    # 2^20 empty leaves: never long, but far too much work (stopped after MAX_WORK, well under a second).
    files = {f"e{i}": f"__e{i + 1}____e{i + 1}__\n" for i in range(20)}
    files["e20"] = "{|}\n"
    lib = write(tmp_path, files)
    with pytest.raises(DynamicPromptError, match=f"more than {MAX_WORK:,} pieces"):
        expand("__e0__", 1, wildcards=lib)


@pytest.mark.parametrize(
    "template",
    ["{" * 3000, "__{" * 2000, "{__" * 2000 + "}", "__" * 3000, "{a|" * 1000, "#" * 6000, "{2$$" * 1500],
)
def test_adversarial_templates_end_cleanly(template: str) -> None:
    try:
        expand(template, 1)
    except DynamicPromptError as exc:
        assert 1 <= exc.column <= len(template) + 1


# ------------------------------------------------------------------------------------------ properties

ALPHABET = [
    "a",
    "b",
    " ",
    "{",
    "}",
    "|",
    "$$",
    "2",
    "1-2",
    "::",
    "0.5",
    "__",
    "x",
    "sub/y",
    "\n",
    "#",
    ",",
    "~",
]


@settings(max_examples=300, deadline=2000)
@given(
    st.one_of(st.text(max_size=300), st.lists(st.sampled_from(ALPHABET), max_size=60).map("".join)),
    st.integers(0, 2**32),
)
def test_any_input_expands_or_fails_cleanly(template: str, seed: int) -> None:
    try:
        result = expand(template, seed, max_chars=6000)
    except DynamicPromptError as exc:
        assert 1 <= exc.column <= 6001
        assert exc.message
    else:
        assert len(result.text) <= 6000
        assert expand(template, seed, max_chars=6000) == result


# --------------------------------------------------------------------- the dynamicprompts reference

dp_generators = pytest.importorskip("dynamicprompts.generators")
dp_wildcards = pytest.importorskip("dynamicprompts.wildcards")

REFERENCE_FILES = {
    "x": "a\nb\n{c|d}\n",
    "sub/y": "x1\n__x__ y\n# c\n\n{2$$p|q|r}\n",
    "z": "z\nzz\n",
}


class _Recording(dp_wildcards.WildcardManager):
    """The library's manager, noting names it found nothing for (it then leaves ``__name__`` as text)."""

    missing = False

    def get_values(self, wildcard):
        values = super().get_values(wildcard)
        if len(values) == 0:
            _Recording.missing = True
        return values


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("reference-wildcards")
    ours = write(root, REFERENCE_FILES)
    logging.getLogger("dynamicprompts").setLevel(logging.CRITICAL)

    manager = _Recording(root)

    def theirs(template: str, seed: int) -> str | None:
        _Recording.missing = False
        generator = dp_generators.RandomPromptGenerator(manager)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                text = generator.generate(template, 1, seeds=[seed])[0]
        except Exception:  # ParseException and friends: a template the library cannot use
            return None
        return None if _Recording.missing else text

    return ours, theirs


@st.composite
def templates(draw, depth: int = 0):
    """Well-formed templates of the library's syntax: text, variants (counts, ranges, separators,
    weights, samplers), wildcards (plain, subfolder, glob, */name fallback, inside counts)."""
    words = st.sampled_from(["a", "b", "cat", " ", ", ", "dog ", "(red:1.2)", "[x|y]", "\n"])
    leaf = st.one_of(words, st.sampled_from(["__x__", "__sub/y__", "__y__", "__z__", "__s*/y__", "__~z__"]))
    if depth >= 2:
        return draw(leaf)
    n = draw(st.integers(1, 4))
    options = []
    for _ in range(n):
        weight = draw(st.sampled_from(["", "", "2::", "0.5::", "3.::", ".25::"]))
        body = "".join(draw(st.lists(templates(depth + 1), max_size=3)))
        options.append(draw(st.sampled_from(["", " ", "\n"])) + weight + body)
    head = draw(st.sampled_from(["", "", "~", "2$$", "1-3$$", "-2$$", "2-$$", "0$$", "3$$ and $$", "2$$|$$"]))
    variant = "{" + head + "|".join(options) + "}"
    lone = (
        "{"
        + draw(st.sampled_from(["", "2$$", "1-2$$", "3$$ + $$"]))
        + draw(st.sampled_from(["__x__", "__z__"]))
        + "}"
    )
    return draw(st.sampled_from([variant, variant, lone, draw(leaf)]))


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(templates(), min_size=1, max_size=3).map("".join), st.integers(0, 2**32 - 1))
def test_matches_dynamicprompts_on_its_syntax(reference, template: str, seed: int) -> None:
    ours, theirs = reference
    expected = theirs(template, seed)
    assume(expected is not None)
    assert expand(template, seed, wildcards=ours).text == expected


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.sampled_from([*ALPHABET, "-", ".", "z", "sub/y", "__x__"]), max_size=20).map("".join),
    st.integers(0, 2**32 - 1),
)
def test_matches_dynamicprompts_wherever_it_parses(reference, template: str, seed: int) -> None:
    """Character soup: where the library expands a template (all its wildcards found), chant gives the
    same text, or refuses it for a documented reason (an empty wildcard name, which the library reads
    as "every file"; a negative weight)."""
    ours, theirs = reference
    expected = theirs(template, seed)
    assume(expected is not None)
    try:
        got = expand(template, seed, wildcards=ours).text
    except DynamicPromptError as exc:
        assert exc.message.startswith(("a wildcard name cannot be empty", "a weight must not be negative"))
    else:
        assert got == expected
