"""``chant db …``: migrations, drift check, backup and image retention.

* ``chant db upgrade [REV]`` / ``chant db downgrade REV`` / ``chant db current``
* ``chant db check``: ``alembic check`` (do the models match the migrations?). By default on a
  temporary SQLite database migrated to head, so it needs no database; ``--database`` checks the
  configured one. Exit status 1 on drift.
* ``chant db backup PATH``: a consistent copy of the SQLite database, safe while the bot runs.
* ``chant db prune-images [--days N]``: drop image bytes older than the retention (parameters stay):
  results, and the img2img sources no recent job uses; ``--days 0`` drops every image's bytes.

Every command takes ``--url`` to override ``[database] url``. The destructive ones (``downgrade``,
``prune-images``) ask first, and without a terminal to ask on they refuse unless given ``--yes``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
from datetime import timedelta
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)  # chatty at INFO
    p = sub.add_parser("db", help="database: migrations, drift check, backup")
    dbsub = p.add_subparsers(dest="db_command", required=True, metavar="ACTION")

    def add(name: str, func, help: str) -> argparse.ArgumentParser:
        q = dbsub.add_parser(name, help=help)
        q.add_argument("--url", help="database URL (default: [database] url from the settings)")
        q.set_defaults(func=func)
        return q

    add("upgrade", _upgrade, "migrate to a revision (default: head)").add_argument(
        "revision", nargs="?", default="head"
    )
    q = add("downgrade", _downgrade, "migrate down to REV (e.g. base, or a revision id); drops what later revisions added")
    q.add_argument("revision")
    q.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    add("current", _current, "print the database's revision")
    q = add("check", _check, "fail if the models and the migrations differ (alembic check)")
    q.add_argument(
        "--database", action="store_true", help="check the configured database instead of a temporary one"
    )
    add("backup", _backup, "consistent copy of the SQLite database (safe while chant runs)").add_argument(
        "path"
    )
    q = add("prune-images", _prune, "drop stored image bytes older than the retention; parameters stay")
    q.add_argument(
        "--days", type=int, help="drop bytes older than this many days; 0 = all (default: [database] image_retention_days)"
    )
    q.add_argument("--yes", action="store_true", help="do not ask for confirmation")


def _url(args: argparse.Namespace, settings) -> str:
    return args.url or settings.database.url


def _fail(message: str) -> int:
    print(f"chant db: {message}", file=sys.stderr)
    return 2


def _shown(url: str) -> str:
    """The URL as an operator may see it (no password)."""
    from core.storage.db import normalize_url

    try:
        return normalize_url(url).render_as_string(hide_password=True)
    except ValueError:
        return url


def _confirm(args: argparse.Namespace, what: str) -> bool:
    """True when ``--yes`` was given or the operator answers yes; never asks without a terminal."""
    if args.yes:
        return True
    if not sys.stdin.isatty():
        print(f"chant db: not done: {what}. There is no terminal to ask on; add --yes to confirm.", file=sys.stderr)
        return False
    try:
        answer = input(f"{what}. Continue? [y/N] ")
    except EOFError:
        answer = ""
    if answer.strip().lower() in ("y", "yes"):
        return True
    print("chant db: nothing changed", file=sys.stderr)
    return False


async def _with_engine(url: str, fn):
    from core.storage.db import create_engine

    engine = create_engine(url)
    try:
        return await fn(engine)
    finally:
        await engine.dispose()


def _upgrade(args: argparse.Namespace, settings) -> int:
    from core.storage import migrate

    return _migrate(args, settings, lambda e: migrate.upgrade(e, args.revision))


def _downgrade(args: argparse.Namespace, settings) -> int:
    from core.storage import migrate

    what = (
        f"migrating {_shown(_url(args, settings))} down to {args.revision} drops every table and column "
        "added after it, with their data"
        + (" (base: all of chant's tables)" if args.revision == "base" else "")
    )
    if not _confirm(args, what):
        return 1
    return _migrate(args, settings, lambda e: migrate.downgrade(e, args.revision))


def _migrate(args: argparse.Namespace, settings, step) -> int:
    """Run a migration step, then say where the database is."""
    from core.storage import migrate

    try:
        asyncio.run(_with_engine(_url(args, settings), step))
        print(f"database at {asyncio.run(_with_engine(_url(args, settings), migrate.current_revision))}")
    except ValueError as exc:
        return _fail(str(exc))
    return 0


def _current(args: argparse.Namespace, settings) -> int:
    from core.storage import migrate

    try:
        print(asyncio.run(_with_engine(_url(args, settings), migrate.current_revision)) or "base (empty)")
    except ValueError as exc:
        return _fail(str(exc))
    return 0


def _check(args: argparse.Namespace, settings) -> int:
    from core.storage import migrate

    async def on(url: str, upgrade_first: bool) -> str | None:
        async def run(engine):
            if upgrade_first:
                await migrate.upgrade(engine)
            return await migrate.check(engine)

        return await _with_engine(url, run)

    try:
        if args.database:
            drift = asyncio.run(on(_url(args, settings), False))
        else:
            with tempfile.TemporaryDirectory(prefix="chant-db-check-") as tmp:
                drift = asyncio.run(on(f"sqlite+aiosqlite:///{Path(tmp) / 'check.db'}", True))
    except ValueError as exc:
        return _fail(str(exc))
    if drift:
        print(
            f"chant db check: models and migrations differ; add a revision in migrations/versions:\n{drift}",
            file=sys.stderr,
        )
        return 1
    print("models and migrations agree")
    return 0


def _backup(args: argparse.Namespace, settings) -> int:
    from core.storage.backup import backup_sqlite
    from core.storage.db import sqlite_path

    try:
        path = sqlite_path(_url(args, settings))
        if path is None:
            return _fail("backup copies SQLite databases; for PostgreSQL use pg_dump")
        info = backup_sqlite(path, args.path)
    except ValueError as exc:
        return _fail(str(exc))
    print(f"backed up {path} to {info.path} ({info.bytes} bytes)")
    return 0


def _prune(args: argparse.Namespace, settings) -> int:
    from core.storage.db import Database
    from core.storage.models import utcnow
    from core.storage.repositories import Repositories

    if args.days is not None and args.days < 0:
        return _fail(f"--days must be 0 (every image) or more, not {args.days}")
    days = settings.database.image_retention_days if args.days is None else args.days
    if args.days is None and days == 0:
        print("image retention is off ([database] image_retention_days = 0): nothing pruned; --days N prunes")
        return 0
    age = "every stored image" if days == 0 else f"images older than {days} days"
    what = f"dropping the bytes of {age} in {_shown(_url(args, settings))} (parameters and seeds stay)"
    if not _confirm(args, what):
        return 1

    async def run() -> tuple[int, int]:
        db = Database(_url(args, settings))
        try:
            async with db.transaction(write=True) as session:
                repos = Repositories(session)
                older_than = utcnow() - timedelta(days=days)
                # Results first: a source is kept while a job that used it still has its results.
                return await repos.jobs.prune_images(older_than), await repos.sources.prune(older_than)
        finally:
            await db.dispose()

    try:
        count, sources = asyncio.run(run())
    except ValueError as exc:
        return _fail(str(exc))
    print(f"pruned the bytes of {count} image(s): " + ("all of them" if days == 0 else f"older than {days} days"))
    print(f"pruned the bytes of {sources} img2img source images no job within the retention uses")
    return 0
