"""Database faults an operator can fix, each said in one line that names the file and what to do.

* :func:`check_sqlite_file` runs before SQLite opens a file (``create_engine``): a missing folder, a
  read-only file or folder, a file that is not a SQLite database, or one cut short, is refused with a
  :class:`DatabaseFault` and the file is left exactly as it was (SQLite never opens it, so it never
  writes a journal or a header into it).
* :func:`explain` turns a driver error met later (no tables yet, damaged pages, disk full, read-only)
  into the same kind of line; ``chant``'s entry point prints it instead of a traceback.
* :class:`FaultLogFilter` does the same for logged exceptions: a worker that retries while the disk is
  full logs one line saying so, not a traceback per poll; repeats of the same fault are silenced for
  :data:`REPEAT_AFTER_S`.

Nothing here imports SQLAlchemy or the drivers: errors are recognised by their class names and
SQLite's messages (its messages are stable: they are part of SQLite's C API).
"""

from __future__ import annotations

import logging
import os
import struct
import time
from pathlib import Path

REPEAT_AFTER_S = 600.0
# As this process's effective user sees it (a root service that dropped privileges too).
_EFFECTIVE = {"effective_ids": True} if os.access in os.supports_effective_ids else {}


def _can(path: Path, mode: int) -> bool:
    return os.access(path, mode, **_EFFECTIVE)
_HEADER = b"SQLite format 3\x00"


class DatabaseFault(ValueError):
    """A database problem the operator can fix; the message names the file and what to do."""


def _restore_hint(path: Path) -> str:
    return (
        f"it was left untouched. Restore it from a backup (`chant db backup` makes them), or move it away "
        f"and start a new database at {path}"
    )


def check_sqlite_file(path: str | os.PathLike[str]) -> None:
    """Refuse a SQLite database file that cannot work, before SQLite touches it."""
    file = Path(path).expanduser().absolute()
    folder = file.parent
    if not folder.is_dir():
        raise DatabaseFault(
            f"SQLite database {file}: the folder {folder} does not exist. Create it "
            f"(mkdir -p {folder}) or point [database] url at another place"
        )
    if not file.exists():
        if not _can(folder, os.W_OK | os.X_OK):
            raise DatabaseFault(
                f"SQLite database {file}: the folder {folder} is read-only for this user, so the "
                "database cannot be created. Make it writable or point [database] url elsewhere"
            )
        return
    if file.is_dir():
        raise DatabaseFault(f"SQLite database {file} is a folder, not a file: point [database] url at a file")
    if not _can(file, os.R_OK | os.W_OK) or not _can(folder, os.W_OK | os.X_OK):
        raise DatabaseFault(
            f"SQLite database {file}: the file or its folder {folder} is read-only for this user. "
            "SQLite writes the database and its -wal/-shm files beside it: make both writable"
        )
    _check_header(file)


def _check_header(file: Path) -> None:
    size = file.stat().st_size
    if size == 0:
        return  # SQLite makes an empty file a new database
    with file.open("rb") as f:
        header = f.read(100)
    if not header.startswith(_HEADER):
        raise DatabaseFault(f"{file} is not a SQLite database (damaged, or another kind of file); {_restore_hint(file)}")
    if len(header) < 100:
        raise DatabaseFault(f"SQLite database {file} is cut short ({size} bytes); {_restore_hint(file)}")
    (page_size,) = struct.unpack(">H", header[16:18])
    page_size = 65536 if page_size == 1 else page_size
    change_counter, pages = struct.unpack(">II", header[24:32])
    (valid_for,) = struct.unpack(">I", header[92:96])
    wal = Path(f"{file}-wal")
    has_wal = wal.exists() and wal.stat().st_size > 0  # newer pages may live there until a checkpoint
    # The header's page count is trusted by SQLite when it was written with the current change counter.
    if valid_for == change_counter and pages and not has_wal and size < pages * page_size:
        raise DatabaseFault(
            f"SQLite database {file} is cut short: {size} bytes, its header says {pages * page_size}; "
            f"{_restore_hint(file)}"
        )


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        orig = getattr(exc, "orig", None)  # SQLAlchemy's DBAPIError wraps the driver's error
        if isinstance(orig, BaseException):
            yield orig
        exc = exc.__cause__ or exc.__context__


def explain(exc: BaseException, url: str | None = None) -> str | None:
    """One line for a database error an operator can fix (None: not one of those)."""
    where = _where(url)
    for e in _chain(exc):
        if isinstance(e, DatabaseFault):
            return str(e)
        text = str(e).lower()
        if type(e).__name__ == "DiskFullError" or "no space left on device" in text:  # PostgreSQL (asyncpg)
            return f"{where}: disk full on the database server ({e}); free space there"
        if type(e).__name__ not in ("OperationalError", "DatabaseError", "IntegrityError", "ProgrammingError"):
            continue
        if "database or disk is full" in text:
            return f"{where}: disk full: SQLite could not grow the database; free space on its disk (nothing was half-written)"
        if "no such table" in text:
            return f"{where} has no chant tables yet: run `chant db upgrade` (or set [database] upgrade_on_start = true)"
        if "file is not a database" in text or "malformed" in text:
            return f"{where} is damaged ({e}); restore it from a backup (`chant db backup` makes them)"
        if "readonly database" in text or "read-only" in text:
            return f"{where} is read-only for this user: make the file and its folder writable"
        if "unable to open database file" in text:
            return f"{where} cannot be opened: check that its folder exists and is writable by this user"
    return None


def _where(url: str | None) -> str:
    if not url:
        return "the database"
    path = _sqlite_file(url)
    return f"SQLite database {Path(path).absolute()}" if path else "the database"


def _sqlite_file(url: str) -> str | None:
    """The file of a ``sqlite[+driver]:///PATH`` URL (read here without SQLAlchemy), else None."""
    scheme, sep, rest = str(url).partition(":///")
    if not sep or scheme.split("+")[0] != "sqlite":
        return None
    path = rest.split("?")[0]
    return None if path in ("", ":memory:") else path


class FaultLogFilter(logging.Filter):
    """On a handler: a logged exception that is a known fault becomes one line, repeats are dropped."""

    def __init__(self, url: str | None = None, *, repeat_after_s: float = REPEAT_AFTER_S) -> None:
        super().__init__()
        self.url = url
        self.repeat_after_s = repeat_after_s
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info or not record.exc_info[1]:
            return True
        line = explain(record.exc_info[1], self.url)
        if line is None:
            return True
        now = time.monotonic()
        last = self._last.get(line)
        if last is not None and now - last < self.repeat_after_s:
            return False
        self._last[line] = now
        quiet = int(self.repeat_after_s // 60)
        record.msg = f"{record.getMessage()}: {line} (repeats silenced for {quiet} min)"
        record.args = None
        record.exc_info = None
        record.exc_text = None
        return True
