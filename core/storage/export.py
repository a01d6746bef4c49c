"""``chant jobs export``: a job's, a user's or a guild's images and parameters, out of the database.

Each stored image becomes ``OUT/<job>-<seed>.png`` (the PNG as stored, A1111's ``parameters`` text
inside; :func:`file_stem`) and one line of ``OUT/parameters.jsonl``: the job's ids, state, model, times, the image's
seeds and infotext, the full request (and a dynamic prompt's template), and the image's moderation
score and decision — an image moderation blocked is exported too, marked so. An image whose bytes were pruned
(``database.image_retention_days``) keeps its line, with ``"file": null``. Discord ids are written
as strings, as Discord writes them (JavaScript readers lose digits of larger numbers).

Rows are streamed from the database a few at a time (plain rows, no ORM identity map), so exporting a
guild's whole history takes the memory of a handful of images, not of all of them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROWS_PER_FETCH = 4  # rows (images) fetched at a time: a few MB with big SDXL PNGs
JSONL = "parameters.jsonl"


def register(sub: argparse._SubParsersAction) -> None:
    jobs = sub.add_parser("jobs", help="jobs in the database: export their images and parameters")
    actions = jobs.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")
    p = actions.add_parser(
        "export",
        help="write a job's, a user's or a guild's images (PNG) and parameters (JSON lines) into a folder",
        description="Write the stored images of one job, one user or one guild as OUT/<job>-<seed>.png "
        f"(A1111 parameters inside) with one JSON line per image in OUT/{JSONL}. Streams from the "
        "database: any amount of history fits in memory.",
    )
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--job", type=int, metavar="N", help="one job")
    who.add_argument("--user", type=int, metavar="ID", help="every job of a Discord user")
    who.add_argument("--guild", type=int, metavar="ID", help="every job made in a Discord server")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write into (created if needed)")
    p.add_argument(
        "--since", type=since_date, default=None, metavar="DATE", help="only images made on or after DATE "
        "(YYYY-MM-DD, or an ISO time; UTC unless it says otherwise)",
    )  # fmt: skip
    p.set_defaults(func=_export)


def since_date(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2024-05-31 (or 2024-05-31T18:00)") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@dataclass
class Exported:
    images: int = 0
    pruned: int = 0  # lines without a file: their bytes were pruned
    jobs: int = 0


def file_stem(job_id: int, seed: int, subseed: int, *, seed_shared: bool) -> str:
    """A result image's file name without ``.png`` (here and in ``outputs.dir``): ``<job>-<seed>``, or
    ``<job>-<seed>-<subseed>`` for an image whose seed another image of its job has too (a variation
    seed above 0: A1111 keeps the seed and steps the variation seed), so no file overwrites another."""
    return f"{job_id}-{seed}" + (f"-{subseed}" if seed_shared else "")


def _query(job: int | None, user: int | None, guild: int | None, since: datetime | None):
    from sqlalchemy import select  # here, so `chant --help` and `chant prompt` start without it

    from core.storage.models import Job, JobImage

    columns = (
        JobImage.job_id, JobImage.position, JobImage.seed, JobImage.subseed, JobImage.infotext,
        JobImage.png, JobImage.created_at, Job.user_id, Job.guild_id, Job.channel_id, Job.kind,
        Job.state, Job.model, Job.model_hash, Job.params, Job.created_at.label("job_created_at"),
        Job.finished_at, Job.parent_id, Job.prompt_templates, JobImage.moderation_score,
        JobImage.moderation,
        _same_seed(JobImage),
    )  # fmt: skip
    query = select(*columns).join(Job, Job.id == JobImage.job_id)
    if job is not None:
        query = query.where(Job.id == job)
    if user is not None:
        query = query.where(Job.user_id == user)
    if guild is not None:
        query = query.where(Job.guild_id == guild)
    if since is not None:
        query = query.where(JobImage.created_at >= since)
    return query.order_by(JobImage.job_id, JobImage.position).execution_options(yield_per=ROWS_PER_FETCH)


def _same_seed(image: Any) -> Any:
    """How many images of the row's job have its seed (a correlated count over seeds only: a window
    function would make the database sort every row, PNG bytes and all, before the first one streams)."""
    from sqlalchemy import func, select
    from sqlalchemy.orm import aliased

    other = aliased(image)
    return (
        select(func.count())
        .select_from(other)
        .where(other.job_id == image.job_id, other.seed == image.seed)
        .scalar_subquery()
        .label("same_seed")
    )


async def stream_rows(db, query) -> AsyncIterator[Any]:
    async with db.session() as s:
        result = await s.stream(query)
        async for row in result:
            yield row


async def export(
    db, out: Path, *, job: int | None = None, user: int | None = None, guild: int | None = None,
    since: datetime | None = None,
) -> Exported:  # fmt: skip
    """Write the matching images and their lines into ``out`` (see the module doc)."""
    out.mkdir(parents=True, exist_ok=True)
    done = Exported()
    last_job = None
    with open(out / JSONL, "w", encoding="utf-8") as lines:
        async for row in stream_rows(db, _query(job, user, guild, since)):
            file = None
            if row.png is not None:
                file = file_stem(row.job_id, row.seed, row.subseed, seed_shared=row.same_seed > 1) + ".png"
                _write(out / file, row.png)
                done.images += 1
            else:
                done.pruned += 1
            if row.job_id != last_job:
                done.jobs, last_job = done.jobs + 1, row.job_id
            lines.write(json.dumps(_line(row, file), ensure_ascii=False) + "\n")
    return done


def _line(row: Any, file: str | None) -> dict[str, Any]:
    def snowflake(value: int | None) -> str | None:
        return None if value is None else str(value)

    def when(value: datetime | None) -> str | None:
        return None if value is None else value.isoformat()

    return {
        "job": row.job_id,
        "position": row.position,
        "file": file,
        "seed": row.seed,
        "subseed": row.subseed,
        "user_id": snowflake(row.user_id),
        "guild_id": snowflake(row.guild_id),
        "channel_id": snowflake(row.channel_id),
        "kind": row.kind,
        "state": row.state,
        "model": row.model,
        "model_hash": row.model_hash,
        "created_at": when(row.created_at),
        "job_created_at": when(row.job_created_at),
        "finished_at": when(row.finished_at),
        "parent_job": row.parent_id,
        "infotext": row.infotext,
        "request": row.params,
        "prompt_templates": row.prompt_templates,  # a dynamic prompt as typed (the request has its expansion)
        "moderation_score": row.moderation_score,  # None: not checked
        "moderation": row.moderation,  # the decision stored with the image (post / spoiler / block, why)
    }


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _export(args: argparse.Namespace, settings) -> int:
    return asyncio.run(_export_async(args, settings))


async def _export_async(args: argparse.Namespace, settings) -> int:
    from core.storage.db import open_database

    db = await open_database(settings.database, upgrade=False)
    out = Path(args.out).expanduser()
    try:
        done = await export(db, out, job=args.job, user=args.user, guild=args.guild, since=args.since)
    except OSError as exc:
        print(f"chant jobs export: cannot write into {out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    finally:
        await db.dispose()
    which = f"job {args.job}" if args.job is not None else (
        f"user {args.user}" if args.user is not None else f"guild {args.guild}"
    )  # fmt: skip
    if done.images + done.pruned == 0:
        print(f"chant jobs export: no stored images of {which}" + (f" since {args.since:%Y-%m-%d %H:%M} UTC"
              if args.since else ""), file=sys.stderr)  # fmt: skip
        return 1
    pruned = f" ({done.pruned} more pruned: parameters only)" if done.pruned else ""
    print(f"exported {done.images} image(s){pruned} of {done.jobs} job(s) of {which} to {out} ({JSONL})")
    return 0
