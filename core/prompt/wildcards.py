"""The wildcard folder: ``name.txt`` files (``animals/cats.txt`` is ``__animals/cats__``), one option a line.

Names resolve inside the configured folder only: the folder is walked once into an index of names
(re-walked when the index is older than ``RESCAN_S``, or when a name is missing and the index is older
than ``MIN_RESCAN_S``, so a stream of bad names cannot keep the disk busy), and a name is only
ever looked up in that index, never turned into a path, so ``..`` or an absolute name cannot reach
other files. Files and folders whose real path (symlinks followed) is outside the folder are left out
of the index, as are hidden folders (the ``dynamicprompts`` library skips those too).

A file's lines are read as the library reads them: stripped, blank lines and lines starting with ``#``
skipped. The values of a name (or of a glob, or of the ``*/name`` fallback, over several files) are
then de-duplicated and sorted, as the library does by default, so a seed picks the same line.
Files are UTF-8 (a BOM is dropped); a file that is not is an error naming it, never a guess.
"""

from __future__ import annotations

import difflib
import os
import re
import threading
import time
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

RESCAN_S = 30.0  # how stale the name index may get before a lookup walks the folder again
MIN_RESCAN_S = 1.0  # a missing name walks the folder again, but not more often than this
_GLOB = re.compile(r"[*?\[]")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")  # what text-mode file iteration splits on (not \f, \v, \x85)


class WildcardLookupError(LookupError):
    """A name that cannot be used. ``suggestions`` holds close existing names for a missing one."""

    def __init__(self, message: str, suggestions: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.suggestions = suggestions


@dataclass(frozen=True)
class WildcardValues:
    """The options of one wildcard reference, in the order a seed indexes them."""

    name: str  # the (cleaned) name or glob that was looked up
    values: tuple[str, ...]  # de-duplicated, sorted
    origins: tuple[str, ...]  # per value: "animals/cats.txt line 4" (its first occurrence)


@dataclass(frozen=True)
class _File:
    mtime_ns: int
    size: int
    display: str  # its path in the folder, for messages
    lines: tuple[tuple[str, int], ...]  # (value, 1-based line number)


def clean_name(name: str) -> str:
    """The library's canonical form: ``\\`` and repeated ``/`` become one ``/``, no leading or trailing
    ``/``. A name holding ``..`` is refused (it could only be an attempt to leave the folder)."""
    cleaned = re.sub(r"[\\/]+", "/", name).strip("/")
    if ".." in cleaned:
        raise WildcardLookupError(f"a wildcard name cannot contain '..' ({name!r})")
    if not cleaned:
        raise WildcardLookupError("a wildcard name cannot be empty")
    return cleaned


class WildcardLibrary:
    """The ``.txt`` files under ``root``; thread-safe, cheap to share between expansions."""

    def __init__(self, root: Path | str, *, rescan_s: float = RESCAN_S) -> None:
        self.root = Path(root)
        self.rescan_s = rescan_s
        self._lock = threading.Lock()
        self._index: dict[str, Path] = {}
        self._scanned_at: float | None = None
        self._files: dict[Path, _File] = {}
        # name -> (the files' (path, mtime, size) it was built from, its values)
        self._values: dict[str, tuple[tuple, WildcardValues]] = {}

    # -- the index -------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Every wildcard name, sorted (for suggestions and listings)."""
        return sorted(self._current_index())

    def _current_index(self, *, force: bool = False) -> dict[str, Path]:
        with self._lock:
            age = None if self._scanned_at is None else time.monotonic() - self._scanned_at
            if age is None or age > self.rescan_s or (force and age > MIN_RESCAN_S):
                self._index = self._scan()
                self._scanned_at = time.monotonic()
            return self._index

    def _scan(self) -> dict[str, Path]:
        """Walk the folder, following symlinks that stay inside it (each real folder once)."""
        if not self.root.is_dir():
            return {}
        real_root = self.root.resolve()
        index: dict[str, Path] = {}
        seen: set[Path] = set()
        for dirpath, dirnames, filenames in os.walk(real_root, followlinks=True):
            here = Path(dirpath)
            real_here = here.resolve()
            if real_here in seen or not real_here.is_relative_to(real_root):
                dirnames[:] = []
                continue
            seen.add(real_here)
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for filename in sorted(filenames):
                if not filename.endswith(".txt"):
                    continue
                path = here / filename
                real = path.resolve()
                if not real.is_relative_to(real_root) or not real.is_file():
                    continue  # a symlink out of the folder (or a dangling one)
                name = path.relative_to(real_root).with_suffix("").as_posix()
                index.setdefault(name, real)
        return index

    # -- lookups ---------------------------------------------------------------------------------------
    def lookup(self, name: str) -> WildcardValues:
        """The values of ``name`` (a name, a glob, or a plain name found as ``*/name``).

        Raises WildcardLookupError for a bad or missing name (with the closest names), or for a file
        that cannot be read.
        """
        cleaned = clean_name(name)
        paths = self._match(cleaned, self._current_index())
        if not paths:
            paths = self._match(cleaned, self._current_index(force=True))  # a file added since the scan
        if not paths:
            raise WildcardLookupError(f"there is no wildcard {cleaned!r}", tuple(self.suggest(cleaned)))
        files = [(path, self._read(path)) for path in paths]
        stamp = tuple((path, f.mtime_ns, f.size) for path, f in files)
        cached = self._values.get(cleaned)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        found: dict[str, str] = {}
        for _, file in files:
            for value, line in file.lines:
                found.setdefault(value, f"{file.display} line {line}")
        if not found:
            raise WildcardLookupError(f"the wildcard {cleaned!r} has no lines (only blanks or # comments)")
        values = tuple(sorted(found))
        result = WildcardValues(cleaned, values, tuple(found[v] for v in values))
        with self._lock:
            if len(self._values) > 4096:  # names are user input: keep the cache bounded
                self._values.clear()
            self._values[cleaned] = (stamp, result)
        return result

    def _match(self, name: str, index: dict[str, Path]) -> list[Path]:
        if _GLOB.search(name):
            paths = [p for n, p in index.items() if fnmatchcase(n, name)]
        else:
            paths = [index[name]] if name in index else []
        if not paths and not name.startswith("**"):
            # The library retries "**/name": the name in any subfolder ("*" also matches "/").
            paths = [p for n, p in index.items() if fnmatchcase(n, f"**/{name}")]
        return paths

    def suggest(self, name: str, n: int = 3) -> list[str]:
        """The closest existing names (by the last path part too, so ``cat`` finds ``animals/cats``)."""
        names = self.names()
        close = difflib.get_close_matches(name, names, n=n, cutoff=0.6)
        by_leaf: dict[str, list[str]] = {}
        for full in names:
            by_leaf.setdefault(full.rsplit("/", 1)[-1], []).append(full)
        for leaf in difflib.get_close_matches(name.rsplit("/", 1)[-1], list(by_leaf), n=n, cutoff=0.6):
            close.extend(f for f in by_leaf[leaf] if f not in close)
        return close[:n]

    def _display(self, path: Path) -> str:
        try:
            return path.relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return path.name

    def _read(self, path: Path) -> _File:
        """A file's option lines, cached until its size or modification time changes."""
        try:
            stat = path.stat()
            cached = self._files.get(path)
            if cached is not None and (cached.mtime_ns, cached.size) == (stat.st_mtime_ns, stat.st_size):
                return cached
            raw = path.read_bytes()
        except OSError as exc:
            raise WildcardLookupError(f"cannot read {self._display(path)}: {exc.strerror}") from None
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise WildcardLookupError(
                f"{self._display(path)} is not UTF-8 (byte {exc.start}); save it as UTF-8"
            ) from None
        lines = []
        for number, line in enumerate(_LINE_BREAK.split(text), start=1):
            value = line.strip()
            if value and not value.startswith("#"):
                lines.append((value, number))
        entry = _File(stat.st_mtime_ns, stat.st_size, self._display(path), tuple(lines))
        with self._lock:
            self._files[path] = entry
        return entry
