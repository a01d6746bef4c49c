"""SQLite faults end in one line that names the file and what to do, the file left as it was (issue 18,
item 17): a damaged file, a truncated one, a missing folder, a read-only folder, a database without
tables, a full disk."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from sqlalchemy import event

from core.storage import migrate
from core.storage.db import Database, create_engine
from core.storage.faults import DatabaseFault, FaultLogFilter, check_sqlite_file, explain
from core.storage.repositories import JobRepo
from core.types import GenerationRequest

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("good") / "good.db"

    async def run() -> None:
        engine = create_engine(f"sqlite:///{path}")
        await migrate.upgrade(engine)
        async with engine.connect() as conn:
            await conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        await engine.dispose()

    asyncio.run(run())
    return path


def _chant(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT), "CHANT_CONFIG": "", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _one_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def _damaged(kind: str, folder: Path, migrated: Path) -> Path:
    path = folder / f"{kind}.db"
    data = migrated.read_bytes()
    if kind == "corrupt":
        path.write_bytes(os.urandom(8192))
    elif kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "header-only":
        path.write_bytes(data[:60])
    return path


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("corrupt", "is not a SQLite database (damaged, or another kind of file); it was left untouched"),
        ("truncated", "is cut short: "),
        ("header-only", "is cut short (60 bytes)"),
    ],
)
@pytest.mark.parametrize("command", [["queue", "status"], ["db", "upgrade"], ["db", "current"]])
def test_a_damaged_file_is_one_line_and_left_untouched(
    tmp_path, migrated, kind, message, command, capsys, monkeypatch
) -> None:
    from core.cli import main

    path = _damaged(kind, tmp_path, migrated)
    before = path.read_bytes()
    monkeypatch.setenv("CHANT_DATABASE__URL", f"sqlite:///{path}")
    monkeypatch.setenv("CHANT_CONFIG", "")
    assert main(command) in (1, 2)
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert str(path) in line and message in line and "backup" in line
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no -wal/-shm/-journal either


@pytest.mark.slow
def test_chant_run_on_a_damaged_file_is_one_line(tmp_path, migrated) -> None:
    path = _damaged("corrupt", tmp_path, migrated)
    before = path.read_bytes()
    proc = _chant(["run"], tmp_path, CHANT_DATABASE__URL=f"sqlite:///{path}", DISCORD_TOKEN="x", CHANT_FAKE_ENGINE="1")
    assert "is not a SQLite database" in _one_line(proc)
    assert path.read_bytes() == before


def _main_line(args: list[str], url: str, capsys, monkeypatch) -> str:
    from core.cli import main

    monkeypatch.setenv("CHANT_DATABASE__URL", url)
    monkeypatch.setenv("CHANT_CONFIG", "")
    assert main(args) in (1, 2)
    (line,) = capsys.readouterr().err.strip().splitlines()
    return line


def test_a_missing_folder_is_one_line_and_not_created(tmp_path, capsys, monkeypatch) -> None:
    path = tmp_path / "no" / "such" / "chant.db"
    line = _main_line(["db", "upgrade"], f"sqlite:///{path}", capsys, monkeypatch)
    assert line == (
        f"chant db: SQLite database {path}: the folder {path.parent} does not exist. "
        f"Create it (mkdir -p {path.parent}) or point [database] url at another place"
    )
    assert not (tmp_path / "no").exists()


def test_a_fresh_database_asks_for_an_upgrade(tmp_path, capsys, monkeypatch) -> None:
    path = tmp_path / "fresh.db"
    line = _main_line(["queue", "status"], f"sqlite:///{path}", capsys, monkeypatch)
    assert line == f"chant: SQLite database {path} has no chant tables yet: run `chant db upgrade` " \
        "(or set [database] upgrade_on_start = true)"


_AS_NOBODY = """
import os, sys
from core.cli import main
# Load every module the command needs while still allowed to read the interpreter's folders.
assert main(["--config", sys.argv[2], "queue", "status"]) == 0
os.setgid(65534); os.setuid(65534)
sys.exit(main(["--config", sys.argv[1], "queue", "status"]))
"""


@pytest.mark.slow
def test_a_read_only_folder_is_one_line_and_left_untouched(migrated) -> None:
    folder = Path(tempfile.mkdtemp(prefix="chant-ro-"))
    try:
        os.chmod(folder, 0o755)
        (folder / "ro").mkdir()
        path = folder / "ro" / "chant.db"
        shutil.copy(migrated, path)
        shutil.copy(migrated, folder / "warm.db")
        os.chmod(path, 0o644)
        os.chmod(folder / "warm.db", 0o666)
        os.chmod(folder, 0o777)
        for name, db in (("ro.toml", path), ("warm.toml", folder / "warm.db")):
            (folder / name).write_text(f'[database]\nurl = "sqlite:///{db}"\n')
            os.chmod(folder / name, 0o644)
        os.chmod(folder / "ro", 0o555)
        before = path.read_bytes()
        if os.geteuid() == 0:  # root writes anywhere: drop to nobody, as a hardened service would run
            cmd = [sys.executable, "-c", _AS_NOBODY, folder / "ro.toml", folder / "warm.toml"]
        else:
            cmd = [sys.executable, "-m", "bot.cli", "--config", folder / "ro.toml", "queue", "status"]
        proc = subprocess.run(
            [str(c) for c in cmd],
            cwd=folder,
            env={**os.environ, "PYTHONPATH": str(ROOT), "CHANT_CONFIG": ""},
            capture_output=True,
            text=True,
            timeout=60,
        )
        line = _one_line(proc)
        assert line == (
            f"chant: SQLite database {path}: the file or its folder {path.parent} is read-only for this "
            "user. SQLite writes the database and its -wal/-shm files beside it: make both writable"
        )
        assert path.read_bytes() == before
        assert sorted(p.name for p in path.parent.iterdir()) == ["chant.db"]
    finally:
        os.chmod(folder / "ro", 0o755)
        shutil.rmtree(folder)


def test_the_checks_pass_a_good_new_or_empty_file(tmp_path, migrated) -> None:
    check_sqlite_file(migrated)
    check_sqlite_file(tmp_path / "new.db")
    (tmp_path / "empty.db").write_bytes(b"")
    check_sqlite_file(tmp_path / "empty.db")
    with pytest.raises(DatabaseFault, match="is a folder"):
        check_sqlite_file(tmp_path)


# --- Disk full ----------------------------------------------------------------------------------
# Twice: with SQLite's own limit (``PRAGMA max_page_count`` pinned at the file's size makes SQLite fail
# the next write that needs a new page with SQLITE_FULL, "database or disk is full", the same code and
# message a full disk gives; runs anywhere), and on a real 1 MiB tmpfs where this user may mount one.


def _full(db: Database) -> None:
    @event.listens_for(db.engine.sync_engine, "connect")
    def pin(dbapi_connection, _record) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA page_count")
        pages = cursor.fetchone()[0]
        cursor.execute(f"PRAGMA max_page_count = {pages}")
        cursor.close()


def test_disk_full_is_said_once_and_nothing_is_half_written(tmp_path, migrated, caplog) -> None:
    path = tmp_path / "full.db"
    shutil.copy(migrated, path)
    url = f"sqlite:///{path}"

    async def submit_until_full() -> list[BaseException]:
        db = Database(url)
        _full(db)
        errors = []
        try:
            for _ in range(5):
                try:
                    async with db.transaction(write=True) as s:
                        request = GenerationRequest(prompt="x" * 20_000, negative_prompt="y" * 20_000)
                        await JobRepo(s).add(user_id=1, channel_id=2, guild_id=3, request=request)
                except Exception as exc:
                    errors.append(exc)
        finally:
            await db.dispose()
        return errors

    errors = asyncio.run(submit_until_full())
    assert errors, "the pinned page count never filled up"
    assert explain(errors[0], url) == (
        f"SQLite database {path}: disk full: SQLite could not grow the database; free space on its disk "
        "(nothing was half-written)"
    )
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        stored = conn.execute("SELECT count(*) FROM jobs").fetchone()[0]
    assert stored == 5 - len(errors)

    # A worker retrying every poll logs it once, in one line, without a traceback.
    log = logging.getLogger("core.queue.worker")
    handler = logging.Handler()
    seen: list[logging.LogRecord] = []
    handler.emit = seen.append  # type: ignore[method-assign]
    handler.addFilter(FaultLogFilter(url))
    log.addHandler(handler)
    try:
        for err in errors * 3:
            try:
                raise err
            except Exception:
                log.exception("worker turn failed; retrying after %.1fs", 1.0)
    finally:
        log.removeHandler(handler)
    assert len(seen) == 1
    assert seen[0].exc_info is None and "\n" not in seen[0].getMessage()
    assert seen[0].getMessage().startswith("worker turn failed; retrying after 1.0s: SQLite database ")
    assert "disk full" in seen[0].getMessage()


@pytest.fixture
def tiny_disk(tmp_path: Path):
    """A real 1 MiB tmpfs (root only; skipped where mounting is not allowed)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True, text=True
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.strip()}")
    try:
        yield disk
    finally:
        if subprocess.run(["umount", str(disk)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(disk)], check=False)  # never leave a mount behind


def test_a_really_full_disk_is_said_as_disk_full(tiny_disk: Path, migrated: Path) -> None:
    path = tiny_disk / "chant.db"
    shutil.copy(migrated, path)
    url = f"sqlite:///{path}"

    async def submit_until_full() -> BaseException | None:
        db = Database(url)
        try:
            for _ in range(100):
                async with db.transaction(write=True) as s:
                    request = GenerationRequest(prompt="x" * 20_000, negative_prompt="y" * 20_000)
                    await JobRepo(s).add(user_id=1, channel_id=2, guild_id=3, request=request)
        except Exception as exc:
            return exc
        finally:
            await db.dispose()
        return None

    error = asyncio.run(submit_until_full())
    assert error is not None, "1 MiB never filled up"
    assert "disk full" in explain(error, url)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_other_exceptions_keep_their_traceback() -> None:
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "boom", None, None)
    try:
        raise RuntimeError("not a database fault")
    except RuntimeError:
        record.exc_info = sys.exc_info()
    assert FaultLogFilter().filter(record) is True
    assert record.exc_info is not None and record.msg == "boom"


def test_postgres_disk_full_is_named_too() -> None:
    class DiskFullError(Exception):  # asyncpg's name for SQLSTATE 53100
        pass

    error = DiskFullError('could not extend file "base/16384/2619": No space left on device')
    assert explain(error, "postgresql://chant@db/chant").startswith("the database: disk full on the database server")
