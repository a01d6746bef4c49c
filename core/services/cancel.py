"""/cancel: a queued job leaves the queue; a running one stops between two steps. Its quota is
refunded; the owner or an admin of its server (audited) may cancel it."""

from __future__ import annotations

from core.queue import notify
from core.queue.notify import JOBS, Note
from core.services import policy
from core.services.context import Context, guild_of
from core.services.reads import view_of, visible_job
from core.services.types import Actor, JobCancelled, JobView, UserError
from core.storage.repositories import Repositories


async def cancel(ctx: Context, actor: Actor, job_id: int) -> JobView:
    async with ctx.db.transaction(write=True) as s:
        repos = Repositories(s)
        job = await visible_job(s, actor, job_id, for_update=not ctx.db.is_sqlite)
        refusal = "Only the person who asked for this job or a server admin can cancel it."
        if policy.acts_for_another(actor, await guild_of(s, actor), job, refusal):
            await repos.audit.add(
                actor.guild_id, actor.user_id, "job.cancel", str(job_id), {"owner": job.user_id}
            )
        was = job.state
        if not await repos.jobs.cancel(job_id):
            raise UserError(
                "not_cancellable", f"Job {job_id} is already {job.state}; there is nothing to cancel."
            )
        await repos.quotas.refund(job_id)
        await notify.send(s, JOBS, Note("cancel", job_id))  # a worker elsewhere stops it
        await s.refresh(job)
        view = await view_of(s, job)
    if ctx.worker is not None:
        if was == "running":
            ctx.worker.cancel(job_id)
        ctx.worker.wake()
    ctx.ledger.ended(JobCancelled(view))
    return view
