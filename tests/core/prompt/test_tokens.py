"""CLIP BPE ids (checked against transformers' CLIPTokenizer after A1111's ftfy clean-up) and A1111's
75-token chunker."""

from __future__ import annotations

import html
import json
import random
import re

import ftfy
import pytest
import regex
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.prompt import BOS, COMMA, EOS, ClipTokenizer, EmbeddingFix, tokenize_text

A = 320  # "a</w>"
TOK = ClipTokenizer.default()


@pytest.fixture(scope="module")
def hf_bpe(tmp_path_factory):
    """transformers' CLIPTokenizer over the shipped vocabulary: the reference regex split and BPE."""
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("clip-tokenizer")
    (folder / "vocab.json").write_text(json.dumps(TOK.vocab()), encoding="utf-8")
    merges = "\n".join(f"{a} {b}" for a, b in TOK.merges())
    (folder / "merges.txt").write_text("#version: 0.2\n" + merges + "\n", encoding="utf-8")
    # The tokenizers-library CLIP BPE: ``CLIPTokenizer`` itself in transformers 5, ``…Fast`` in 4.x
    # (whose plain ``CLIPTokenizer`` is a different, pure-Python pre-tokenizer).
    hf = getattr(transformers, "CLIPTokenizerFast", transformers.CLIPTokenizer).from_pretrained(str(folder))
    return lambda text: hf(text, add_special_tokens=False, truncation=False)["input_ids"]


@pytest.fixture(scope="module")
def a1111(hf_bpe):
    """The ids A1111's tokenizers give: ftfy's ``fix_text`` (the library A1111 installs) and the clean-up
    of transformers 4's slow ``CLIPTokenizer._tokenize`` (SD1, SDXL CLIP-L: special tokens split off,
    ``fix_text``, ``regex`` whitespace runs to one space, strip, ``str.lower``) or of open_clip's
    ``SimpleTokenizer.encode`` (SD2, SDXL OpenCLIP-G: ``html.unescape`` twice after ``fix_text``),
    then transformers' BPE. transformers 5's CLIPTokenizer no longer runs ftfy (its NFC/whitespace/
    lowercase normalizer is a no-op on cleaned text), so the clean-up is composed here. open_clip's
    special tokens are ``<start_of_text>``/``<end_of_text>``; OpenAI's names are plain text there (spaced
    out, they split into the same words without being taken whole by transformers)."""

    def spaces(text: str) -> str:
        return regex.sub(r"\s+", " ", text).strip()

    def reference(text: str, style: str = "clip") -> list[int]:
        ids: list[int] = []
        if style == "open_clip":
            cleaned = spaces(html.unescape(html.unescape(ftfy.fix_text(text))).strip()).lower()
            for i, piece in enumerate(re.split("(<start_of_text>|<end_of_text>)", cleaned)):
                if i % 2:
                    ids.append(BOS if piece == "<start_of_text>" else EOS)
                else:
                    ids += hf_bpe(re.sub(r"<\|(startoftext|endoftext)\|>", r"<| \1 |>", piece))
            return ids
        for i, piece in enumerate(re.split(r"(<\|startoftext\|>|<\|endoftext\|>)", text)):
            ids += hf_bpe(piece if i % 2 else spaces(ftfy.fix_text(piece)).lower())
        return ids

    return reference


SAMPLES = [
    "a photo of an astronaut riding a horse on mars, masterpiece, best quality",
    "Hello WORLD!! naïve café 日本語 ２３ don't it's we'll",
    "(((masterpiece))), [lowres:0.5], <lora:x:1>, 8k, RAW photo, f/1.8",
    "😀👍🏽 a—b…c ÀÉÎ İ ß ﬁ e\u0301 ΣΑΣ ǅ Ⅻ ² ½",
    "\t tabs\nand\r\nnewlines\u00a0nbsp\u200bzero width \x1f unit sep \x00 nul",
    "<|startoftext|>x<|endoftext|>",
    "",
]
# Prompts as people paste them: from phones and word processors (curly quotes, ligatures, full-width),
# web pages (HTML entities), other languages, emoji, and sloppy spacing.
PROMPTS = [
    "portrait of a woman, don’t smile, “portrait” style, soft light",
    "a ﬁne ﬂower ﬁeld, oﬀice desk, ﬃ ligature",
    "ＡＢＣ ２３ full-width text, ｍａｓｔｅｒｐｉｅｃｅ，ｂｅｓｔ　ｑｕａｌｉｔｙ",
    "cats &amp; dogs, salt &amp;amp; pepper, &lt;3, caf&eacute;, &#39;quoted&#39;",
    "a <3 heart &amp; a star",
    "mojibake cafÃ© naÃ¯ve, â€œquotedâ€\x9d",
    "café crème brûlée, Ångström, Zoë, São Paulo, Łódź, İstanbul",
    "東京の夜景, 桜, 美しい少女, 한국어 프롬프트, кошка на крыше, ΣΟΦΙΑ ΣΑΣ",
    "sunset 🌅 over the sea 🌊, happy 😀👍🏽, family 👨‍👩‍👧",
    "masterpiece,   best quality,\n\nultra detailed\t\t1girl ,solo\r\n\r\nlong hair",
    "em—dash – en dash … ellipsis ‘single’ «guillemets» „low“",
    "x\u00a0y\u2009thin\u3000ideographic\u200bzero\u202fnarrow",
    "\x1b[31mred\x1b[0m terminal, tab\x0bvertical, bell\x07",
    "<|endoftext|> inside, <|ENDOFTEXT|> upper, <|startoftext|>",
    "open_clip's <start_of_text> and <END_OF_TEXT>, x<|endoftext|>|y",
]


@pytest.mark.parametrize("text", SAMPLES + PROMPTS)
@pytest.mark.parametrize("style", ["clip", "open_clip"])
def test_ids_equal_a1111_tokenizers(a1111, text, style):
    assert TOK.encode(text, style) == a1111(text, style)


def test_the_clean_up_is_what_makes_pasted_prompts_tokenize_like_typed_ones():
    for pasted, typed in [
        ("don’t", "don't"),
        ("“portrait”", '"portrait"'),
        ("ﬁne", "fine"),
        ("ＡＢＣ ２３", "abc 23"),
        ("cats &amp; dogs", "cats & dogs"),
        ("cafÃ©", "café"),
    ]:
        assert TOK.encode(pasted) == TOK.encode(typed), pasted
    # ftfy leaves entities alone in text that looks like HTML; only open_clip unescapes them then.
    assert TOK.encode("a <3 &amp; b") != TOK.encode("a <3 & b")
    assert TOK.encode("a <3 &amp; b", "open_clip") == TOK.encode("a <3 & b", "open_clip")
    # Each tokenizer has its own special-token names.
    assert TOK.encode("a<|endoftext|>b") == [A, EOS, *TOK.encode("b")]
    assert TOK.encode("a<end_of_text>b", "open_clip") == [A, EOS, *TOK.encode("b")]
    assert TOK.encode("<|endoftext|>", "open_clip") == TOK.encode("<| endoftext |>", "open_clip")
    with pytest.raises(ValueError, match="clean must be one of"):
        TOK.encode("a", "nfc")


_ASCII = st.text(st.characters(min_codepoint=0, max_codepoint=127), max_size=60)
_ANY = st.text(st.characters(exclude_categories=("Cs", "Cn")), max_size=60)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(_ASCII, _ANY, st.sampled_from(PROMPTS)), style=st.sampled_from(["clip", "open_clip"]))
def test_ids_equal_a1111_for_any_text(a1111, text, style):
    # Unassigned code points (Cn) are left out: their letter class depends on each library's
    # Unicode version (regex vs the tokenizers library), not on the algorithm. The ASCII strategy
    # covers the path that skips ftfy (and its boundary: "&", control characters).
    assert TOK.encode(text, style) == a1111(text, style)


# --- BPE: the heap merge gives the reference's merges -----------------------------------------------


def test_every_merge_is_made_of_symbols_from_lower_ranked_merges():
    """What makes the heap order equal the reference loop's (``ClipTokenizer._merge``)."""
    merges = TOK.merges()
    made_at: dict[str, list[int]] = {}
    for rank, (a, b) in enumerate(merges):
        made_at.setdefault(a + b, []).append(rank)
    for rank, (a, b) in enumerate(merges):
        for part in (a, b):
            assert all(r < rank for r in made_at.get(part, ())), (rank, a, b)


def _words(seed: int, count: int, length: int, alphabet: str) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(alphabet) for _ in range(length)) for _ in range(count)]


@pytest.mark.parametrize(
    "word",
    [
        "a" * 999,
        "ab" * 700,
        "aaaaaaa",
        "ssssssssssssssstttttt",
        "supercalifragilisticexpialidocious" * 40,
        "ñéü" * 300,
        "日本語" * 200,
        *_words(1, 3, 1500, "abcdefghijklmnopqrstuvwxyz"),
        *_words(2, 3, 400, "eaiou"),
        *_words(3, 2, 6000, "abcdefghijklmnopqrstuvwxyz"),
    ],
    ids=lambda w: f"{w[:12]}..{len(w)}",
)
def test_long_words_tokenize_as_transformers(hf_bpe, word):
    TOK.clear_cache()
    assert TOK.encode(word) == hf_bpe(word)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(st.sampled_from("aeilnorst"), min_size=1, max_size=80))
def test_words_of_few_letters_tokenize_as_transformers(hf_bpe, word):
    # Few letters: many overlapping and repeated pairs, where merge order matters most.
    TOK.clear_cache()
    assert TOK.encode(word) == hf_bpe(word)


def test_vocabulary_size_and_special_ids():
    vocab = TOK.vocab()
    assert len(vocab) == 49408
    assert vocab["<|startoftext|>"] == BOS and vocab["<|endoftext|>"] == EOS and vocab[",</w>"] == COMMA
    assert TOK.encode("a, a") == [A, COMMA, A]


def body(chunk) -> list[int]:
    """The chunk's tokens between BOS and the EOS padding."""
    tokens = list(chunk.tokens[1:-1])
    while tokens and tokens[-1] == EOS:
        tokens.pop()
    return tokens


def test_empty_prompt_is_one_padding_chunk():
    result = tokenize_text("")
    assert result.token_count == 0 and result.max_length == 75
    (chunk,) = result.chunks
    assert chunk.tokens == (BOS,) + (EOS,) * 76 and chunk.multipliers == (1.0,) * 77 and chunk.fixes == ()


def test_chunks_hold_75_tokens_and_the_count_is_75_per_full_chunk_plus_the_last():
    assert [len(c.tokens) for c in tokenize_text("a " * 75).chunks] == [77]
    result = tokenize_text("a " * 76)
    assert len(result.chunks) == 2 and result.token_count == 76 and result.max_length == 150
    assert body(result.chunks[1]) == [A]


def test_break():
    result = tokenize_text("a BREAK a")
    assert [body(c) for c in result.chunks] == [[A], [A]] and result.token_count == 76
    trailing = tokenize_text("a BREAK")
    assert len(trailing.chunks) == 1 and trailing.token_count == 75
    double = tokenize_text("a BREAK BREAK a")
    assert [body(c) for c in double.chunks] == [[A], [], [A]]
    after_full = tokenize_text("a " * 75 + "BREAK a")
    assert [len(body(c)) for c in after_full.chunks] == [75, 1]


def test_break_in_brackets_is_the_word_break_at_minus_1_1():
    result = tokenize_text("(a BREAK b)")
    assert len(result.chunks) == 1
    assert body(result.chunks[0]) == TOK.encode("a break b")
    assert result.chunks[0].multipliers[1:4] == (1.1, -1.1, 1.1)


def _comma_at(index: int, backtrack: int = 20) -> list[list[int]]:
    text = "a " * index + ", " + "a " * (80 - index)
    return [body(c) for c in tokenize_text(text, comma_padding_backtrack=backtrack).chunks]


def test_comma_backtracking_moves_the_text_after_a_near_comma():
    chunks = _comma_at(70)
    assert chunks[0] == [A] * 70 + [COMMA]
    assert chunks[1] == [A] * 10
    chunks = _comma_at(55)  # 75 - 55 = 20: still moved
    assert len(chunks[0]) == 56 and chunks[0][-1] == COMMA
    chunks = _comma_at(54)  # 21 back: not moved
    assert len(chunks[0]) == 75
    assert len(_comma_at(70, backtrack=0)[0]) == 75  # 0 disables it


def test_a_double_comma_is_not_a_comma():
    (double,) = TOK.encode(",,")
    assert double != COMMA
    text = "a " * 70 + ",, " + "a " * 10
    assert len(body(tokenize_text(text).chunks[0])) == 75


def test_multipliers_follow_emphasis_and_mode_none_takes_the_text_literally():
    result = tokenize_text("a (a) [a]")
    assert result.chunks[0].multipliers[1:4] == (1.0, 1.1, 1 / 1.1)
    literal = tokenize_text("(a) BREAK a", emphasis="None")
    assert len(literal.chunks) == 1
    assert body(literal.chunks[0]) == TOK.encode("(a) break a")
    assert set(literal.chunks[0].multipliers) == {1.0}
    for mode in ["Original", "No norm", "Ignore"]:
        assert tokenize_text("a (b)", emphasis=mode) == tokenize_text("a (b)")
    with pytest.raises(ValueError, match="emphasis"):
        tokenize_text("a", emphasis="original")


def test_embeddings_match_by_token_ids_longest_first():
    emb = {"style-a": 1, "style-a-b": 2, "myemb": 3}
    result = tokenize_text("x style-a-b, style-a-c, MYEMB, myembs, my(emb)", embeddings=emb)
    (chunk,) = result.chunks
    names = [(f.name, f.vectors) for f in chunk.fixes]
    assert names == [("style-a-b", 2), ("style-a", 1), ("myemb", 3)]
    first = chunk.fixes[0]
    assert first.offset == 1  # counted from the first token after BOS
    assert chunk.tokens[1 + first.offset : 1 + first.offset + 2] == (0, 0)
    spaced = tokenize_text("bad - hands - 5", embeddings={"bad-hands-5": 1})
    assert [f.name for f in spaced.chunks[0].fixes] == ["bad-hands-5"]


def test_embedding_that_does_not_fit_starts_the_next_chunk():
    result = tokenize_text("a " * 74 + "emb", embeddings={"emb": 2})
    assert len(body(result.chunks[0])) == 74
    assert result.chunks[1].fixes == (EmbeddingFix(0, "emb", 2),)
    full = tokenize_text("emb", embeddings={"emb": 75})
    assert full.chunks[0].tokens == (BOS,) + (0,) * 75 + (EOS,)
    assert full.token_count == 75


def test_embedding_weight_is_the_segment_weight():
    result = tokenize_text("(emb:1.3)", embeddings={"emb": 2})
    assert result.chunks[0].multipliers[1:3] == (1.3, 1.3)


def test_comma_backtracking_keeps_the_fix_in_the_previous_chunk_like_a1111():
    # A1111-SEMANTICS §10.4: the placeholders move, the fix does not (reproduced on purpose).
    text = "a " * 70 + ", emb " + "a " * 10
    result = tokenize_text(text, embeddings={"emb": 2})
    first, second = result.chunks
    assert first.fixes == (EmbeddingFix(71, "emb", 2),)
    assert body(first) == [A] * 70 + [COMMA]
    assert second.fixes == ()
    assert body(second)[:2] == [0, 0]


@pytest.mark.parametrize("bad", [{"x": 0}, {"x": 76}, {"x": 1.5}, {"   ": 1}])
def test_bad_embeddings_are_rejected(bad):
    with pytest.raises(ValueError):
        tokenize_text("x", embeddings=bad)


def test_bad_backtrack_is_rejected():
    with pytest.raises(ValueError, match="comma_padding_backtrack"):
        tokenize_text("x", comma_padding_backtrack=-1)


def test_the_word_cache_is_bounded_by_letters(monkeypatch) -> None:
    from core.prompt import tokens

    monkeypatch.setattr(tokens, "_CACHE_CHARS", 20_000)
    tok = ClipTokenizer()
    words = _words(4, 12, 6000, "abcdefghijklmnopqrstuvwxyz")
    for word in words:
        tok.encode(word)
        assert sum(map(len, tok._cache)) <= 20_000 + 6000
    assert tok.encode(words[-1]) == TOK.encode(words[-1])


def test_core_prompt_needs_no_torch() -> None:
    import subprocess
    import sys

    code = "import sys, core.prompt as p; p.tokenize_text('don’t ﬁne'); sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
