"""The ``chant`` command line (everything that is not the Discord bot).

Each domain adds its own subcommands through a ``register(subparsers)`` function; handlers take
``(args, settings)`` and return an exit code. Handlers import heavy modules (torch) lazily, so
``chant prompt …`` starts fast. ``chant worker`` is here, on top, because it wires a whole process
(:mod:`core.bootstrap`), as ``chant run`` (:mod:`bot.cli`) does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Sequence

from core.config import ConfigError, Settings, load_settings

Register = Callable[[argparse._SubParsersAction], None]
log = logging.getLogger(__name__)


def _registrars() -> list[Register]:
    from core.bench import cli as bench_cli
    from core.engine import cli as engine_cli
    from core.prompt import cli as prompt_cli
    from core.queue import cli as queue_cli
    from core.storage import cli as storage_cli

    return [
        prompt_cli.register,
        engine_cli.register,
        storage_cli.register,
        _register_worker,
        queue_cli.register,
        bench_cli.register,
    ]


def _register_worker(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "worker",
        help="run a GPU worker that takes jobs from the shared PostgreSQL queue",
        description="Run one GPU worker (one per GPU; several per machine are fine). Needs database.url "
        "to point at PostgreSQL; with SQLite, `chant run` runs the worker in-process. "
        "CHANT_FAKE_ENGINE=1 runs the torch-free fake engine (tests, demos).",
    )
    p.set_defaults(func=_worker)


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    from core.storage.db import normalize_url

    try:
        url = normalize_url(settings.database.url)
    except ValueError as exc:
        print(f"chant worker: {exc}")
        return 2
    if url.get_backend_name() == "sqlite":
        print(
            "chant worker: database.url is SQLite, which serves one process; `chant run` runs the "
            "worker in-process. Point database.url (or CHANT_DATABASE_URL) at PostgreSQL for separate workers."
        )
        return 2
    return asyncio.run(_run_worker(settings))


async def _run_worker(settings: Settings) -> int:
    from core.bootstrap import bootstrap_worker

    process = await bootstrap_worker(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    log.info("worker %s started", process.worker.store.worker_id)
    await process.run_until(stop)
    log.info("worker %s stopped", process.worker.store.worker_id)
    return 0


def build_parser(extra: Sequence[Register] = ()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chant", description="chant: Stable Diffusion for Discord, A1111-exact")
    parser.add_argument("--config", help="settings file (default: $CHANT_CONFIG or ./chant.toml)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in [*_registrars(), *extra]:
        register(sub)
    # `--config` is accepted after the subcommand too (`chant run --config x.toml`).
    for name, subparser in sub.choices.items():
        if name != "help":
            subparser.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None, extra: Sequence[Register] = ()) -> int:
    parser = build_parser(extra)
    args = parser.parse_args(argv)
    try:
        settings: Settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"chant: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    return int(args.func(args, settings) or 0)


if __name__ == "__main__":
    sys.exit(main())
