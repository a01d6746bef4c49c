"""A job's messages and its result after it ran: the result messages the bot posted (so 🔁, ❌ and ℹ️
find the job, also after a restart), ❌ delete, and the results and live statuses a restarted bot picks
up again. (A status message is stored with its job, by :func:`core.services.submit.enqueue`.)"""

from __future__ import annotations

from collections.abc import Sequence

from core.services import policy
from core.services.context import Context, guild_of
from core.services.reads import view_of
from core.services.types import Actor, JobView, UserError
from core.storage.repositories import Repositories


async def record_result_messages(ctx: Context, job_id: int, message_ids: Sequence[int]) -> None:
    """The messages that show the job's result; the job counts as posted from now on."""
    async with ctx.db.transaction(write=True) as s:
        repos = Repositories(s)
        job = await repos.jobs.get(job_id)
        if job is None:
            raise UserError("not_found", f"There is no job {job_id}.")
        await repos.jobs.mark_posted(job_id)
        await repos.jobs.add_result_messages(job_id, job.channel_id, list(message_ids))


async def delete_result(ctx: Context, actor: Actor, message_id: int) -> JobView:
    """❌ on a result: the owner, or an admin of its server (audited), forgets its messages."""
    async with ctx.db.transaction(write=True) as s:
        repos = Repositories(s)
        job = await repos.jobs.by_message(message_id)
        if job is None:
            raise UserError("not_found", "That message is not a chant result I know about.")
        refusal = "Only the person who made this image or a server admin can delete it."
        if policy.acts_for_another(actor, await guild_of(s, actor), job, refusal):
            await repos.audit.add(
                actor.guild_id, actor.user_id, "result.delete", str(job.id), {"message_id": message_id}
            )
        view = await view_of(s, job)
        await repos.jobs.forget_messages([message_id])
        return view


async def unposted_results(ctx: Context) -> list[JobView]:
    """Done/failed jobs never posted that finished before this process began announcing (restart
    recovery). Jobs that finish later arrive as events; together each result reaches the bot once."""
    since = ctx.ledger.begin()
    async with ctx.db.session() as s:
        out = []
        for job in await Repositories(s).jobs.unposted(limit=1000):
            if job.finished_at is not None and job.finished_at <= since:
                ctx.ledger.claim_end(job.id)  # announced here, not again as an event
                out.append(await view_of(s, job))
        return out


async def live_status_jobs(ctx: Context, limit: int = 1000) -> list[tuple[JobView, int | None]]:
    """Queued and running jobs that have a status message (restart recovery: the bot tracks them
    again, so their live progress continues), each with the result message a reroll, variation or
    control answers (its parent's first result), or None."""
    async with ctx.db.session() as s:
        repos = Repositories(s)
        out = []
        for job in await repos.jobs.live_with_status(limit=limit):
            reply_to = None
            if job.parent_id is not None:  # a reroll, variation or result control
                parent_messages = await repos.jobs.result_message_ids(job.parent_id)
                reply_to = parent_messages[0] if parent_messages else None
            out.append((await view_of(s, job), reply_to))
        return out
