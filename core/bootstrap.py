"""The one place where chant's real or fake parts are chosen and wired together.

Entry points (``chant run``, ``chant worker``, tests) call these builders with Settings; nothing
else decides between the real diffusers engine and the torch-free fake, or between SQLite and
PostgreSQL behaviour. ``CHANT_FAKE_ENGINE=1`` (delay per step in ``CHANT_FAKE_ENGINE_DELAY``
seconds, square images of ``CHANT_FAKE_ENGINE_IMAGE_SIZE`` pixels) selects :class:`core.testing.fake_engine.FakeEngine`, for tests and demos without a model;
``CHANT_FAKE_CLASSIFIER=1`` the moderation stub :class:`core.testing.fake_classifier.FakeClassifier`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
from collections.abc import Mapping

from core import moderation
from core.config import Settings
from core.engine.api import Engine
from core.prompt.wildcards import WildcardLibrary
from core.queue import notify
from core.queue.outputs import ResultFiles
from core.queue.positions import QueuePositions
from core.queue.store import JobStore
from core.queue.worker import ImageScorer, Worker, WorkerListener
from core.services.announcer import Announcer
from core.services.context import Catalog, Context
from core.services.events import EventHub, Ledger
from core.services.images import ImageWork
from core.services.prompts import TagSource
from core.services.runtime import Runtime
from core.services.service import ChantService
from core.storage import db as storage_db
from core.storage.db import Database
from core.types import GenerationError

log = logging.getLogger(__name__)


def fake_engine_requested(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return env.get("CHANT_FAKE_ENGINE", "").strip().lower() in ("1", "true", "yes")


def build_engine(settings: Settings, env: Mapping[str, str] | None = None) -> Engine:
    """The real engine (torch imported here, lazily), or the fake one when the environment asks."""
    env = os.environ if env is None else env
    if fake_engine_requested(env):
        from core.testing.fake_engine import FakeEngine

        delay = env.get("CHANT_FAKE_ENGINE_DELAY", "0") or "0"
        size = env.get("CHANT_FAKE_ENGINE_IMAGE_SIZE", "32") or "32"
        try:
            step_delay = float(delay)
        except ValueError:
            raise ValueError(f"CHANT_FAKE_ENGINE_DELAY must be a number of seconds, got {delay!r}") from None
        if not size.isdigit() or not 8 <= int(size) <= 2048:
            raise ValueError(f"CHANT_FAKE_ENGINE_IMAGE_SIZE must be 8 to 2048 pixels, got {size!r}")
        return FakeEngine(step_delay_s=step_delay, image_size=int(size))
    from core.engine import create_engine
    from core.engine.download import ensure_model

    # A model on first run, as A1111: none at all -> download the default (or stop with what to do).
    ensure_model(settings.engine, env)
    return create_engine(settings.engine, postprocess=settings.postprocess)


def build_scorer(settings: Settings, env: Mapping[str, str] | None = None) -> ImageScorer | None:
    """The moderation classifier the worker runs on every result (``moderation.classifier``; None: images
    are stored "not checked"), or the stub when the environment asks. Its folder is checked now, so a
    wrong path stops chant at start; the model itself loads in the worker thread."""
    env = os.environ if env is None else env
    if env.get("CHANT_FAKE_CLASSIFIER", "").strip().lower() in ("1", "true", "yes"):
        from core.testing.fake_classifier import FakeClassifier

        return FakeClassifier()
    if not settings.moderation.classifier:
        return None
    from core.engine.classifier import ClassifierError, ClassifierScorer

    try:
        return ClassifierScorer(
            settings.moderation.classifier,
            unsafe_labels=settings.moderation.unsafe_labels,
            engine_settings=settings.engine,
        )
    except ClassifierError as exc:
        raise GenerationError(str(exc)) from None


def operator_moderation(settings: Settings) -> moderation.OperatorPolicy:
    m = settings.moderation
    return moderation.operator_policy(m.policy, m.threshold, m.age_restricted, m.dm_policy)


def tag_source(settings: Settings) -> TagSource:
    """Tag autocomplete's list; a configured file that is missing stops chant at start."""
    try:
        return TagSource(settings.prompts)
    except ValueError as exc:
        raise GenerationError(str(exc)) from None


def worker_id(settings: Settings) -> str:
    return settings.queue.worker_id or f"{socket.gethostname()}:{os.getpid()}"


async def open_database(settings: Settings, *, upgrade: bool | None = None) -> Database:
    """The process's Database; migrates to the newest schema when configured (the default)."""
    return await storage_db.open_database(settings.database, upgrade=upgrade)


def build_store(settings: Settings, db: Database, *, owner: str | None = None) -> JobStore:
    return JobStore(
        db,
        worker_id=owner or worker_id(settings),
        lease_seconds=settings.queue.lease_seconds,
        max_attempts=settings.queue.max_attempts,
        moderation_policy=operator_moderation(settings),
    )


def build_worker(
    settings: Settings,
    db: Database,
    engine: Engine,
    *,
    listener: WorkerListener | None = None,
    scorer: ImageScorer | None = None,
) -> Worker:
    """One GPU worker over the jobs table, reporting to ``listener``: the announcer of a bot process,
    the NOTIFY sender of a ``chant worker`` process, or nobody (another process polls the table)."""
    return Worker(
        build_store(settings, db),
        engine,
        listener=listener,
        max_batch=settings.engine.max_batch,
        poll_interval_s=settings.queue.poll_interval_s,
        # Embedded SQLite is one process: whatever was running when it stopped is orphaned now.
        recover_all_on_start=db.is_sqlite,
        default_weight=settings.queue.default_guild_weight,
        scorer=scorer,
        outputs=ResultFiles(settings.outputs) if settings.outputs.dir else None,
    )


async def bootstrap(
    settings: Settings,
    *,
    db: Database | None = None,
    engine: Engine | None = None,
    worker: bool | None = None,
    env: Mapping[str, str] | None = None,
    rng: random.Random | None = None,
    scorer: ImageScorer | None = None,
    images: ImageWork | None = None,
) -> ChantService:
    """Build the service the bot uses. ``worker=None`` follows ``settings.queue.in_process_worker``.

    Without an in-process worker (``chant run --no-worker``) no engine is loaded: model names come
    from the config and jobs are run by ``chant worker`` processes. ``rng`` draws random seeds
    (tests pass a seeded one); ``scorer`` is the moderation classifier (default: :func:`build_scorer`);
    ``images`` is the pool uploads are checked in (tests pass a small one).
    """
    db = db or await open_database(settings)
    run_worker = settings.queue.in_process_worker if worker is None else worker
    if run_worker and engine is None:
        engine = build_engine(settings, env)
    if not run_worker and db.is_sqlite:
        log.warning(
            "no in-process worker and a SQLite database: nothing will run jobs. SQLite serves one "
            "process; use PostgreSQL with `chant worker`, or run with the in-process worker."
        )
    store = build_store(settings, db, owner="service")
    queue = QueuePositions(store, default_weight=settings.queue.default_guild_weight)
    ledger = Ledger(EventHub())
    announcer = Announcer(db, ledger, queue, poll_interval_s=settings.queue.poll_interval_s)
    the_worker = None
    if run_worker:
        assert engine is not None
        # The in-process worker reports to the announcer: this is the one place that says so.
        scorer = scorer if scorer is not None else build_scorer(settings, env)
        the_worker = build_worker(settings, db, engine, listener=announcer, scorer=scorer)
    ctx = Context(
        settings,
        db,
        store,
        queue,
        ledger,
        Catalog(settings, engine),
        the_worker,
        rng or random.SystemRandom(),
        moderation=operator_moderation(settings),
        wildcards=WildcardLibrary(settings.prompts.wildcard_dir) if settings.prompts.dynamic else None,
        tags=tag_source(settings),
        images=images or ImageWork(),
    )
    return ChantService(ctx, Runtime(db, announcer, the_worker, engine, ctx.tags))


class WorkerProcess:
    """``chant worker``: one GPU worker whose progress goes to the bot processes by NOTIFY, and which
    wakes up when a bot process NOTIFYs a new or cancelled job."""

    def __init__(self, db: Database, engine: Engine, worker: Worker) -> None:
        self.db, self.engine, self.worker = db, engine, worker

    async def run_until(self, stop: asyncio.Event) -> None:
        # After a lost LISTEN comes back, look at the table at once: a queued note may have been missed.
        listening = notify.Listener(
            self.db, notify.JOBS, lambda _note: self.worker.wake(), on_reconnect=self.worker.wake
        )
        await listening.start()
        task = self.worker.start()
        stopper = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            await self.worker.stop()
            await listening.close()
            self.engine.close()
            await self.db.dispose()


async def bootstrap_worker(settings: Settings, env: Mapping[str, str] | None = None) -> WorkerProcess:
    db = await open_database(settings)
    engine = build_engine(settings, env)
    worker = build_worker(
        settings, db, engine, listener=notify.ProgressNotifier(db), scorer=build_scorer(settings, env)
    )
    return WorkerProcess(db, engine, worker)
