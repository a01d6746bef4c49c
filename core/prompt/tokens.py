"""CLIP BPE tokens and A1111's 75-token chunker (A1111-SEMANTICS §7 and §10).

``ClipTokenizer`` is OpenAI CLIP's byte-level BPE in pure Python over the vocabulary shipped in
``data/bpe_simple_vocab_16e6.txt.gz`` (MIT, from OpenAI CLIP via open_clip), with the text clean-up
of the tokenizer A1111 runs for each encoder (``CLEAN_STYLES``):

- ``"clip"``: transformers 4's slow ``CLIPTokenizer`` with ftfy installed, A1111's tokenizer for SD1
  and SDXL's CLIP-L: ``ftfy.fix_text``, whitespace runs to one space, ``str.lower()``; the special
  tokens are split off first (the tokenizer's added-token trie);
- ``"open_clip"``: open_clip's ``SimpleTokenizer``, A1111's for SD2 and SDXL's OpenCLIP-G: the same
  plus ``html.unescape`` twice after ftfy.

ftfy uncurls quotes, undoes ligatures and full-width forms and NFC-normalizes, so ``don’t``,
``ﬁne`` and ``ＡＢＣ`` give A1111's ids. ``tokenize_text`` is A1111's ``tokenize_line``: ids and
multipliers only; the engine turns them into tensors.
"""

from __future__ import annotations

import gzip
import heapq
import html
import itertools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import ftfy
import regex

from core.prompt.attention import parse_attention_cached

BOS = 49406
EOS = 49407
COMMA = 267  # ",</w>"
CHUNK = 75
EMPHASIS_MODES = ("Original", "No norm", "Ignore", "None")
_DATA = Path(__file__).with_name("data") / "bpe_simple_vocab_16e6.txt.gz"
_WORDS = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
# The same for lowercased ASCII text, in the faster ``re`` (\s here is Unicode White_Space).
_ASCII_WORDS = r"'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^\t\n\x0b\x0c\r a-z0-9]+"
# Each tokenizer's special tokens, matched as words (ids BOS and EOS): OpenAI's names in transformers,
# open_clip's own in open_clip, where "<|endoftext|>" is plain text.
_SPECIALS = {"clip": ("<|startoftext|>", "<|endoftext|>"), "open_clip": ("<start_of_text>", "<end_of_text>")}
_PATTERNS = {
    style: (
        regex.compile("|".join(map(re.escape, names)) + "|" + _WORDS, regex.IGNORECASE),
        re.compile("|".join(map(re.escape, names)) + "|" + _ASCII_WORDS),
    )
    for style, names in _SPECIALS.items()
}
_SPECIAL_IDS = {
    name: (id_,) for names in _SPECIALS.values() for name, id_ in zip(names, (BOS, EOS), strict=True)
}
# Text that ftfy and html.unescape leave as it is: printable ASCII, the whitespace ftfy keeps, no "&".
# Most prompts are; they skip the clean-up (ftfy costs ~0.2 ms a text).
_PLAIN_ASCII = re.compile(r"[\x20-\x25\x27-\x7e\t\n\r\x0c]*")
_SPACES = regex.compile(r"\s+")  # ``regex``'s \s, as both tokenizers (it leaves out \x1c-\x1f)
_CLIP_SPLIT = re.compile(r"(<\|startoftext\|>|<\|endoftext\|>)")
CLEAN_STYLES = tuple(_SPECIALS)
_CACHE_CHARS = 1_000_000  # BPE word cache: about 100,000 words, or 166 6,000-letter ones


@lru_cache(maxsize=1024)
def clean_text(text: str, style: str = "clip") -> str:
    """The lowercased text A1111's tokenizer runs BPE on (``style``: see the module docstring)."""
    text = ftfy.fix_text(text)
    if style == "open_clip":
        text = html.unescape(html.unescape(text)).strip()
    return _SPACES.sub(" ", text).strip().lower()


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable character table."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


class ClipTokenizer:
    """CLIP's BPE (49408 ids). ``encode`` adds no BOS/EOS and never truncates."""

    def __init__(self, bpe_path: Path = _DATA) -> None:
        with gzip.open(bpe_path) as f:
            lines = f.read().decode("utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
        self._byte_encoder = _bytes_to_unicode()
        base = list(self._byte_encoder.values())
        words = base + [v + "</w>" for v in base] + ["".join(m) for m in merges]
        words += ["<|startoftext|>", "<|endoftext|>"]
        self._vocab = {w: i for i, w in enumerate(words)}
        self._merges: list[tuple[str, str]] = merges  # type: ignore[assignment]
        self._ranks = {m: i for i, m in enumerate(merges)}
        self._cache: dict[str, tuple[int, ...]] = {}
        self._cached_chars = 0  # the cache is bounded by the letters it holds, not its entries

    @classmethod
    @lru_cache(maxsize=1)
    def default(cls) -> ClipTokenizer:
        return cls()

    def clear_cache(self) -> None:
        """Forget the BPE of the words seen so far (benchmarks of a cold start)."""
        self._cache.clear()
        self._cached_chars = 0

    def vocab(self) -> dict[str, int]:
        return dict(self._vocab)

    def merges(self) -> list[tuple[str, str]]:
        return list(self._merges)

    def encode(self, text: str, clean: str = "clip") -> list[int]:
        """The ids A1111's tokenizer gives ``text``; ``clean`` is the tokenizer's text clean-up."""
        if clean not in CLEAN_STYLES:
            raise ValueError(f"clean must be one of {', '.join(CLEAN_STYLES)}, not {clean!r}")
        pattern, ascii_pattern = _PATTERNS[clean]
        if _PLAIN_ASCII.fullmatch(text):
            words = ascii_pattern.findall(text.lower())
        elif clean == "clip":
            # transformers splits the special tokens off first and cleans the text between them.
            words = []
            for i, piece in enumerate(_CLIP_SPLIT.split(text)):
                words.extend([piece] if i % 2 else pattern.findall(clean_text(piece, clean)))
        else:
            words = pattern.findall(clean_text(text, clean))
        ids: list[int] = []
        cache = self._cache
        for word in words:
            # A style's pattern yields only its own special names as one word.
            cached = cache.get(word) or _SPECIAL_IDS.get(word)
            if cached is None:
                if self._cached_chars > _CACHE_CHARS:
                    self.clear_cache()
                cached = cache[word] = self._bpe(word)
                self._cached_chars += len(word)
            ids.extend(cached)
        return ids

    def _bpe(self, word: str) -> tuple[int, ...]:
        chars = "".join(self._byte_encoder[b] for b in word.encode("utf-8"))
        parts = [*chars[:-1], chars[-1] + "</w>"]
        return tuple(self._vocab[p] for p in self._merge(parts) if p)

    def _merge(self, parts: list[str]) -> list[str]:
        """CLIP's BPE merges in O(n log n); ``parts`` become the merged symbols ("" where merged away).

        The reference loop (transformers' ``bpe``) finds the lowest-ranked pair, merges every
        occurrence left to right, and looks again: quadratic, seconds for a 6,000-letter word. A heap
        of (rank, left position) over a linked list makes the same merges in the same order, because a
        merge only creates pairs of a higher rank than its own (every merge's parts are made by
        lower-ranked merges; ``tests/core/prompt/test_tokens.py`` checks this over the vocabulary): all
        occurrences of one rank are merged, leftmost first, before any higher rank.
        """
        ranks = self._ranks
        n = len(parts)
        after = [*range(1, n), -1]
        before = [*range(-1, n - 1)]
        heap = [
            (r, i) for i, pair in enumerate(itertools.pairwise(parts)) if (r := ranks.get(pair)) is not None
        ]
        heapq.heapify(heap)
        while heap:
            rank, i = heapq.heappop(heap)
            j = after[i]
            if j < 0 or ranks.get((parts[i], parts[j])) != rank:
                continue  # stale: a neighbour was merged since it was pushed
            parts[i] += parts[j]
            parts[j] = ""
            k = after[i] = after[j]
            if k >= 0:
                before[k] = i
                if (r := ranks.get((parts[i], parts[k]))) is not None:
                    heapq.heappush(heap, (r, i))
            h = before[i]
            if h >= 0 and (r := ranks.get((parts[h], parts[i]))) is not None:
                heapq.heappush(heap, (r, h))
        return parts


@dataclass(frozen=True)
class EmbeddingFix:
    offset: int  # position of the first placeholder, counted from the first token after BOS
    name: str
    vectors: int

    def to_json(self) -> list:
        return [self.offset, self.name, self.vectors]


@dataclass(frozen=True)
class Chunk:
    tokens: tuple[int, ...]  # 77: BOS, 75 body tokens (EOS padding), EOS
    multipliers: tuple[float, ...]
    fixes: tuple[EmbeddingFix, ...]

    def to_json(self) -> dict:
        return {
            "tokens": list(self.tokens),
            "multipliers": list(self.multipliers),
            "fixes": [f.to_json() for f in self.fixes],
        }


@dataclass(frozen=True)
class TokenizedPrompt:
    chunks: tuple[Chunk, ...]
    token_count: int  # A1111's counter: 75 per non-final chunk plus the final chunk's length

    @property
    def max_length(self) -> int:
        """The "/150" of A1111's "n/150" counter: the token count rounded up to whole chunks."""
        return math.ceil(max(self.token_count, 1) / CHUNK) * CHUNK

    def to_json(self) -> dict:
        return {"chunks": [c.to_json() for c in self.chunks], "token_count": self.token_count}


class _Embeddings:
    """Registered names by first token id, longest first (A1111 ``register_embedding_by_name``)."""

    def __init__(self, embeddings: Mapping[str, int], tokenizer: ClipTokenizer, clean: str) -> None:
        self.by_first: dict[int, list[tuple[tuple[int, ...], str, int]]] = {}
        for name, vectors in embeddings.items():
            if type(vectors) is not int or not 1 <= vectors <= CHUNK:
                raise ValueError(
                    f"embedding {name!r}: vectors must be an integer from 1 to {CHUNK}, not {vectors!r}"
                )
            ids = tuple(tokenizer.encode(name, clean))
            if not ids:
                raise ValueError(f"embedding name {name!r} has no tokens")
            entries = self.by_first.setdefault(ids[0], [])
            entries.append((ids, name, vectors))
            entries.sort(key=lambda e: len(e[0]), reverse=True)

    def find(self, tokens: list[int], position: int) -> tuple[tuple[int, ...], str, int] | None:
        candidates = self.by_first.get(tokens[position])
        if candidates:
            for entry in candidates:
                ids = entry[0]
                if tuple(tokens[position : position + len(ids)]) == ids:
                    return entry
        return None


def tokenize_text(
    text: str,
    *,
    embeddings: Mapping[str, int] | None = None,
    emphasis: str = "Original",
    comma_padding_backtrack: int = 20,
    tokenizer: ClipTokenizer | None = None,
    clean: str = "clip",
) -> TokenizedPrompt:
    """A1111's ``tokenize_line`` for one scheduled text.

    ``emphasis`` "None" takes the text whole at weight 1.0 (brackets and BREAK literal); the other
    modes give the same ids and multipliers (they differ in how the engine applies them).
    ``embeddings`` maps textual-inversion names to their vector counts; names match by token ids,
    longest first. ``clean``: the encoder's tokenizer clean-up (``CLEAN_STYLES``; "open_clip" for SD2
    and SDXL's second encoder). Upstream bug kept on purpose (A1111-SEMANTICS §10.4): comma backtracking moves an
    embedding's placeholder tokens to the next chunk but leaves its fix in the previous chunk
    (pointing into its padding), so chant's conditioning equals A1111's; the engine must clip fixes
    to the 77-token chunk as A1111's ``EmbeddingsWithFixes`` does.
    """
    if emphasis not in EMPHASIS_MODES:
        raise ValueError(f"emphasis must be one of {', '.join(EMPHASIS_MODES)}, not {emphasis!r}")
    if type(comma_padding_backtrack) is not int or comma_padding_backtrack < 0:
        raise ValueError(
            f"comma_padding_backtrack must be a non-negative integer, not {comma_padding_backtrack!r}"
        )
    tok = tokenizer or ClipTokenizer.default()
    db = _Embeddings(embeddings, tok, clean) if embeddings else None
    parsed = parse_attention_cached(text) if emphasis != "None" else ((text, 1.0),)

    chunks: list[Chunk] = []
    tokens: list[int] = []
    mults: list[float] = []
    fixes: list[EmbeddingFix] = []
    token_count = 0
    last_comma = -1

    def close(is_last: bool = False) -> None:
        nonlocal tokens, mults, fixes, token_count, last_comma
        token_count += len(tokens) if is_last else CHUNK
        pad = CHUNK - len(tokens)
        chunks.append(
            Chunk(
                (BOS, *tokens, *([EOS] * pad), EOS),
                (1.0, *mults, *([1.0] * pad), 1.0),
                tuple(fixes),
            )
        )
        tokens, mults, fixes = [], [], []
        last_comma = -1

    for segment, weight in parsed:
        if segment == "BREAK" and weight == -1:
            close()
            continue
        ids = tok.encode(segment, clean)
        position = 0
        n = len(ids)
        bulk = db is None or not any(t in db.by_first for t in ids)
        while position < n:
            if bulk and len(tokens) < CHUNK:
                # Below the chunk limit the loop below only appends and notes commas: do it in bulk.
                piece = ids[position : position + CHUNK - len(tokens)]
                if COMMA in piece:
                    last_comma = len(tokens) + len(piece) - 1 - piece[::-1].index(COMMA)
                tokens.extend(piece)
                mults.extend([weight] * len(piece))
                position += len(piece)
                continue
            token = ids[position]
            if token == COMMA:
                last_comma = len(tokens)
            elif (
                comma_padding_backtrack
                and len(tokens) == CHUNK
                and last_comma != -1
                and len(tokens) - last_comma <= comma_padding_backtrack
            ):
                cut = last_comma + 1
                moved_tokens, moved_mults = tokens[cut:], mults[cut:]
                del tokens[cut:], mults[cut:]
                close()
                tokens, mults = moved_tokens, moved_mults
            if len(tokens) == CHUNK:
                close()
            found = None if bulk else db.find(ids, position)  # type: ignore[union-attr]
            if found is None:
                tokens.append(token)
                mults.append(weight)
                position += 1
                continue
            name_ids, name, vectors = found
            if len(tokens) + vectors > CHUNK:
                close()
            fixes.append(EmbeddingFix(len(tokens), name, vectors))
            tokens.extend([0] * vectors)
            mults.extend([weight] * vectors)
            position += len(name_ids)
    if tokens or not chunks:
        close(is_last=True)
    return TokenizedPrompt(tuple(chunks), token_count)
