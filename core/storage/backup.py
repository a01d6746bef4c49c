"""Consistent copies of a SQLite database while chant runs (the sqlite3 online backup API).

The copy is taken in one backup step, i.e. one read transaction: with WAL, writers carry on and
the copy is the database as of one commit. It is written to a temporary file, checked with
``PRAGMA integrity_check`` and renamed into place, so ``PATH`` is either complete or absent.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from core.storage.db import SQLITE_BUSY_TIMEOUT_MS


@dataclass(frozen=True)
class BackupInfo:
    path: Path
    pages: int
    bytes: int


def backup_sqlite(
    source: str | os.PathLike[str], dest: str | os.PathLike[str], *, overwrite: bool = False
) -> BackupInfo:
    source, dest = Path(source), Path(dest)
    if not source.is_file():
        raise ValueError(f"no SQLite database at {source}")
    if dest.exists() and not overwrite:
        raise ValueError(f"{dest} already exists; choose another path")
    if dest.resolve() == source.resolve():
        raise ValueError("the backup path is the database itself")
    tmp = dest.with_name(f".{dest.name}.partial")
    tmp.unlink(missing_ok=True)
    src = sqlite3.connect(source, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000)
    try:
        dst = sqlite3.connect(tmp)
        try:
            src.backup(dst)  # pages=-1: everything in one step, one consistent snapshot
            (status,) = dst.execute("PRAGMA integrity_check").fetchone()
            if status != "ok":
                raise RuntimeError(f"backup failed its integrity check: {status}")
            # The copy is a standalone file: no -wal/-shm companions needed to open it.
            dst.execute("PRAGMA journal_mode=DELETE")
            (pages,) = dst.execute("PRAGMA page_count").fetchone()
        finally:
            dst.close()
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        src.close()
    os.replace(tmp, dest)
    return BackupInfo(dest, pages, dest.stat().st_size)
