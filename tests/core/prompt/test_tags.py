"""Tag autocomplete: the CSV, word-start and alias search, ranking, and the option values it offers."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from core.prompt.tags import (
    MAX_CHOICE_CHARS,
    MAX_SUGGESTIONS,
    TagFileError,
    TagIndex,
    format_count,
    insertion,
    parse_rows,
)

CSV = """\
1girl,0,4114588,"1girls,sole_female"
long_hair,0,1500000,"long hair,longhair"
hatsune_miku,4,120000,"miku,初音ミク"
hair_ornament,0,600000,
girl_on_top,0,30000,cowgirl_position
^_^,0,2000,
hatsune_miku_(cosplay),4,9000,
solo,0,3500000,
original,3,800000,oc
1girl,0,1,
sakura,1,50
plain
"""


@pytest.fixture
def index(tmp_path: Path) -> TagIndex:
    path = tmp_path / "danbooru.csv"
    path.write_text(CSV, encoding="utf-8")
    return TagIndex.from_csv(path)


def names(found) -> list[str]:
    return [tag.name for tag, _ in found]


def test_rows(index: TagIndex) -> None:
    assert len(index) == 11  # the second "1girl" is dropped
    tag = index.tags[0]
    assert (tag.name, tag.category, tag.count, tag.aliases) == ("1girl", 0, 4114588, ("1girls", "sole_female"))
    assert index.tags[-2].count == 50 and index.tags[-2].aliases == ()
    assert index.tags[-1].count == 0  # a name alone


def test_word_start_search_ranked_by_count(index: TagIndex) -> None:
    assert names(index.search("hair")) == ["long_hair", "hair_ornament"]  # after "_" too, most posts first
    assert names(index.search("girl")) == ["1girl", "girl_on_top"]  # after a digit
    assert names(index.search("irl")) == []  # not inside a word
    assert names(index.search("HAT")) == ["hatsune_miku", "hatsune_miku_(cosplay)"]  # case-insensitive
    assert names(index.search("long ha")) == ["long_hair"]  # spaces are underscores
    assert names(index.search("hatsune miku \\(")) == ["hatsune_miku_(cosplay)"]


def test_alias_search_names_the_alias(index: TagIndex) -> None:
    assert index.search("sole") == [(index.tags[0], "sole_female")]
    assert index.search("oc") == [(index.tags[8], "oc")]
    assert index.search("cowgirl") == [(index.tags[4], "cowgirl_position")]
    assert index.search("初音") == [(index.tags[2], "初音ミク")]
    # A tag found by its own name is not repeated for an alias.
    assert index.search("long") == [(index.tags[1], None)]


def test_one_and_two_letter_words_use_the_ready_lists(index: TagIndex) -> None:
    assert names(index.search("s")) == ["1girl", "solo", "sakura"]  # "1girl" by its alias sole_female
    assert names(index.search("h")) == ["long_hair", "hair_ornament", "hatsune_miku", "hatsune_miku_(cosplay)"]
    assert names(index.search("ha")) == names(index.search("h"))


def test_completion_values(index: TagIndex) -> None:
    [first, *_] = index.complete("masterpiece, (long ha")
    assert first.value == "masterpiece, (long hair, "  # text so far kept, last tag completed
    assert first.label == "long hair  (1.5M)"
    [miku, cosplay] = index.complete("hatsu")
    assert miku.value == "hatsune miku, "
    assert cosplay.value == "hatsune miku \\(cosplay\\), "  # brackets escaped for A1111
    [smile] = index.complete("a, ^")
    assert smile.value == "a, ^_^, "  # a kaomoji keeps its underscore
    [alias] = index.complete("x,sole")
    assert (alias.value, alias.label) == ("x,1girl, ", "sole_female → 1girl  (4.1M)")


def test_completion_options(index: TagIndex) -> None:
    [raw] = index.complete("hatsune_miku_(", replace_underscores=False, escape_parentheses=False)
    assert raw.value == "hatsune_miku_(cosplay), "


def test_nothing_to_complete(index: TagIndex) -> None:
    assert index.complete("") == []
    assert index.complete("a cat, ") == []
    assert index.complete("zzz") == []


def test_values_stay_within_discords_limit(index: TagIndex) -> None:
    head = "x" * (MAX_CHOICE_CHARS - len("long hair, ") - 2) + ", "
    assert [s.value for s in index.complete(head + "long")] == [head + "long hair, "]
    assert index.complete("y" + head + "long") == []  # one character more: no choice Discord accepts


def test_at_most_25(tmp_path: Path) -> None:
    rows = [f"tag_{i},0,{i}," for i in range(100)]
    index = TagIndex(parse_rows(rows))
    found = index.search("tag")
    assert len(found) == MAX_SUGGESTIONS
    assert [t.count for t, _ in found] == list(range(99, 74, -1))
    assert len(index.complete("tag")) == MAX_SUGGESTIONS


def test_index_agrees_with_a_plain_scan() -> None:
    """The binary-searched index gives what scanning every row with the extension's regex gives."""
    rng = random.Random(5)
    letters = "abcde_(1 "
    rows = []
    for _row in range(600):
        name = "".join(rng.choice(letters) for _ in range(rng.randint(1, 8))).strip() or "a"
        alias = ",".join("".join(rng.choice(letters) for _ in range(3)) for _ in range(rng.randint(0, 2)))
        rows.append(f'"{name}",0,{rng.randint(0, 50)},"{alias}"')
    index = TagIndex(parse_rows(rows))
    for word in ["a", "b_", "ab", "abc", "(", "1a", "e(", "c d", "dd", "_a"]:
        query = "_".join(word.split())
        pattern = re.compile(rf"(^|[^a-zA-Z]){re.escape(query)}", re.IGNORECASE)
        hits = [
            (i, t)
            for i, t in enumerate(index.tags)
            if pattern.search(t.name) or any(pattern.search(a) for a in t.aliases)
        ]
        hits.sort(key=lambda it: (-it[1].count, it[0]))
        assert names(index.search(word)) == [t.name for _, t in hits][:MAX_SUGGESTIONS], word


@pytest.mark.parametrize(
    ("text", "message"),
    [("a,zero,5,\n", r"line 1: category and count must be whole numbers"), ("a,0,1\nb,0,x\n", "line 2")],
)
def test_bad_rows_name_the_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "t.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(TagFileError, match=message):
        TagIndex.from_csv(path)


def test_missing_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(TagFileError, match="does not exist"):
        TagIndex.from_csv(tmp_path / "none.csv")
    (tmp_path / "latin.csv").write_bytes("caf\xe9,0,1\n".encode("latin-1"))
    with pytest.raises(TagFileError, match=r"is not UTF-8 \(byte 3\)"):
        TagIndex.from_csv(tmp_path / "latin.csv")


def test_insertion_and_counts() -> None:
    assert insertion("a_(b)_[c]") == "a \\(b\\) \\[c\\]"
    assert insertion("o_o") == "o_o"
    assert [format_count(n) for n in (950, 2345, 12000, 4114588)] == ["950", "2.3K", "12K", "4.1M"]
