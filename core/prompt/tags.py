"""Tag autocomplete for the prompt option, from a booru tag list (a1111-sd-webui-tagcomplete's CSV).

The file has one tag a row: ``tag,category,count,aliases`` (``1girl,0,4114588,"1girls,sole_female"``;
count and aliases may be missing). A typed word matches a tag, or one of its aliases, where a word of
the tag starts with it: at the start, or after a character that is not an ASCII letter, as the
extension's ``(^|[^a-zA-Z])word`` search does (``girl`` finds ``1girl`` and ``girl_on_top``; ``hair``
finds ``long_hair``). What the user typed is read as one tag: everything after the last comma, its
spaces standing for underscores (``long ha`` finds ``long_hair``). At most ``MAX_SUGGESTIONS`` come
back, by post count (most first), each a whole new option value: the text so far with its last tag
replaced by the completed one, underscores made spaces and brackets escaped as the extension inserts
them (its defaults; kaomoji like ``^_^`` keep their underscores), then ``", "``.

The index is built once (every word start of every tag and alias, sorted) and answers a lookup with a
binary search; the most frequent tags for each one- and two-letter start are kept ready, since those
ranges are the long ones. ``chant bench tags`` measures it on a synthetic 100,000-row file.
"""

from __future__ import annotations

import bisect
import csv
import re
from array import array
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAX_SUGGESTIONS = 25  # Discord shows at most 25 autocomplete choices
MAX_CHOICE_CHARS = 100  # Discord's limit for a choice's name and for its value
# The extension's default "underscore replacement exclusion list": kaomoji keep their underscores.
KEEP_UNDERSCORES = frozenset((
    "0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3", "6_9", ">_o", "@_@",
    "^_^", "o_o", "u_u", "x_x", "|_|", "||_||",
))  # fmt: skip
_READY_PREFIX = 3  # words this short get their top tags computed once (their ranges are the long ones)
_KEY = 32  # characters compared when sorting and searching word starts
_OPENERS = " \t\n([{"  # what may stand between the comma and the tag being typed


class TagFileError(ValueError):
    """The tag file cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class Tag:
    name: str  # as in the file, e.g. "long_hair"
    category: int
    count: int
    aliases: tuple[str, ...]


@dataclass(frozen=True)
class Suggestion:
    tag: Tag
    alias: str | None  # the alias that matched, when the tag itself did not
    value: str  # the option's new value: the text so far, its last tag completed
    label: str  # what Discord shows for it


_WORD_START = re.compile(r"(?<![a-zA-Z])(?=.)", re.DOTALL)  # the extension's (^|[^a-zA-Z])


def _word_starts(text: str) -> list[int]:
    return [m.start() for m in _WORD_START.finditer(text)]


class TagIndex:
    """Tags and a word-start index over them. Build it once (``from_csv``); lookups do no I/O.

    Memory stays small for a big list: every tag name and alias, lowercased, is one string
    (``_text``, each ended by NUL), a word start is its offset into it (``_starts``, sorted by the
    text that follows), and ``_codes`` holds, for each start, ``rank * 2 + (1 if on an alias)``
    where rank 0 is the tag with most posts. Comparing only the first ``_KEY`` characters keeps the
    sort and the binary search cheap (longer words are checked in full afterwards).
    """

    def __init__(self, tags: list[Tag]) -> None:
        self.tags = tags
        self._rank = sorted(range(len(tags)), key=lambda i: (-tags[i].count, i))  # rank -> tag
        pieces: list[str] = []
        starts: list[int] = []
        codes: list[int] = []
        offset = 0
        for rank, i in enumerate(self._rank):
            tag = tags[i]
            for text, on_alias in ((tag.name, 0), *((a, 1) for a in tag.aliases)):
                lowered = text.lower().replace("\0", "")
                for start in _word_starts(lowered):
                    starts.append(offset + start)
                    codes.append(rank * 2 + on_alias)
                pieces.append(lowered + "\0")
                offset += len(lowered) + 1
        self._text = text = "".join(pieces)
        keys = [text[s : s + _KEY] for s in starts]
        order = sorted(range(len(starts)), key=keys.__getitem__)
        del keys
        self._starts = array("I", map(starts.__getitem__, order))
        self._codes = np.fromiter(map(codes.__getitem__, order), dtype=np.uint32, count=len(order))
        self._ready: dict[str, list[int]] = {}
        for prefix_len in range(1, _READY_PREFIX + 1):
            self._fill_ready(prefix_len)

    def _fill_ready(self, length: int) -> None:
        """The best tags for every word start ``length`` letters long. Starts are sorted by their text,
        so each prefix is one run of the index: one pass, one run's codes in memory at a time."""
        text, starts, codes = self._text, self._starts, self._codes
        k, n = 0, len(starts)
        while k < n:
            prefix = text[starts[k] : starts[k] + length]
            end = bisect.bisect_right(starts, prefix, k, key=lambda s: text[s : s + length])
            if "\0" not in prefix:
                self._ready[prefix] = _best(codes[k:end], MAX_SUGGESTIONS)
            k = end

    def __len__(self) -> int:
        return len(self.tags)

    # -- loading --------------------------------------------------------------------------------------
    @classmethod
    def from_csv(cls, path: Path | str) -> TagIndex:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            raise TagFileError(f"the tag file {path} does not exist") from None
        except OSError as exc:
            raise TagFileError(f"cannot read the tag file {path}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise TagFileError(f"the tag file {path} is not UTF-8 (byte {exc.start})") from None
        return cls(parse_rows(text.splitlines(), source=str(path)))

    # -- lookups --------------------------------------------------------------------------------------
    def search(self, word: str, limit: int = MAX_SUGGESTIONS) -> list[tuple[Tag, str | None]]:
        """Tags whose name or an alias has a word starting with ``word`` (case-insensitive; spaces are
        underscores), most posts first, each with the alias that matched (None: the name did)."""
        query = "_".join(word.lower().split()).replace("\\(", "(").replace("\\)", ")").replace("\0", "")
        if not query:
            return []
        if len(query) <= _READY_PREFIX:
            codes = self._ready.get(query, [])[:limit]
        else:
            text, key = self._text, query[:_KEY]
            window = len(key)
            lo = bisect.bisect_left(self._starts, key, key=lambda s: text[s : s + window])
            hi = bisect.bisect_right(self._starts, key, lo, key=lambda s: text[s : s + window])
            found = self._codes[lo:hi]
            if len(query) > _KEY:  # a long word: check what follows the compared window
                keep = [text.startswith(query, s) for s in self._starts[lo:hi]]
                found = found[np.array(keep, dtype=bool)]
            codes = _best(found, limit)
        result = []
        for code in codes:
            tag = self.tags[self._rank[code >> 1]]
            alias = None
            if code & 1:
                alias = next(a for a in tag.aliases if _starts_a_word(a.lower(), query))
            result.append((tag, alias))
        return result

    def complete(
        self,
        text: str,
        *,
        limit: int = MAX_SUGGESTIONS,
        replace_underscores: bool = True,
        escape_parentheses: bool = True,
    ) -> list[Suggestion]:
        """Suggestions for an option whose value so far is ``text``: its last tag (after the last comma,
        past spaces and opening brackets) completed. Only values Discord accepts (at most
        ``MAX_CHOICE_CHARS``) are offered, so a long prompt gets none."""
        cut = text.rfind(",") + 1
        partial = text[cut:].lstrip(_OPENERS)
        head = text[: len(text) - len(partial)]
        suggestions = []
        for tag, alias in self.search(partial, limit):
            inserted = insertion(tag.name, replace_underscores=replace_underscores, escape=escape_parentheses)
            value = f"{head}{inserted}, "
            if len(value) > MAX_CHOICE_CHARS:
                continue
            shown = f"{alias} → {inserted}" if alias else inserted
            label = f"{shown}  ({format_count(tag.count)})" if tag.count else shown
            suggestions.append(Suggestion(tag, alias, value, label[:MAX_CHOICE_CHARS]))
        return suggestions


def _best(codes: np.ndarray, limit: int) -> list[int]:
    """The ``limit`` best tags among codes, one code each (a match on the name beats one on an alias:
    its code is one less). ``np.unique`` sorts in C, so a range of thousands costs well under a ms."""
    best: list[int] = []
    seen: set[int] = set()
    for code in np.unique(codes)[: 2 * limit].tolist():
        if code >> 1 not in seen:
            seen.add(code >> 1)
            best.append(code)
            if len(best) == limit:
                break
    return best


def _starts_a_word(text: str, query: str) -> bool:
    return any(text.startswith(query, i) for i in _word_starts(text))


def insertion(name: str, *, replace_underscores: bool = True, escape: bool = True) -> str:
    """A tag as the extension inserts it: underscores made spaces (not in kaomoji), brackets escaped."""
    text = name.replace("_", " ") if replace_underscores and name not in KEEP_UNDERSCORES else name
    if escape:
        text = re.sub(r"([()\[\]])", r"\\\1", text)
    return text


def format_count(count: int) -> str:
    """Post counts as the extension shows them (Danbooru's style): 4.1M, 2.3K, 12K, 950."""
    if count >= 1_000_000:
        return f"{count / 1_000_000:.1f}M"
    if count >= 10_000:
        return f"{count // 1_000}K"
    if count >= 1_000:
        return f"{count / 1_000:.1f}K"
    return str(count)


def parse_rows(lines: list[str], *, source: str = "tag file") -> list[Tag]:
    """The CSV rows as tags (first occurrence of a name wins); a bad row is an error naming its line."""
    tags: list[Tag] = []
    seen: set[str] = set()
    for number, row in enumerate(csv.reader(lines), start=1):
        if not row or not row[0].strip():
            continue
        name = row[0].strip()
        try:
            category = int(row[1]) if len(row) > 1 and row[1].strip() else 0
            count = int(row[2]) if len(row) > 2 and row[2].strip() else 0
        except ValueError:
            raise TagFileError(
                f"{source} line {number}: category and count must be whole numbers ({','.join(row[:3])!r})"
            ) from None
        aliases = tuple(a.strip() for a in row[3].split(",") if a.strip()) if len(row) > 3 else ()
        if name not in seen:
            seen.add(name)
            tags.append(Tag(name, category, count, aliases))
    return tags
