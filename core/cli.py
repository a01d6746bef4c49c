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
import os
import signal
import sys
import warnings
from collections.abc import Callable, Sequence

from core.config import ConfigError, Settings, load_settings
from core.types import GenerationError

Register = Callable[[argparse._SubParsersAction], None]
log = logging.getLogger(__name__)


def _registrars() -> list[Register]:
    from core import post_cli
    from core.bench import cli as bench_cli
    from core.engine import cli as engine_cli
    from core.prompt import cli as prompt_cli
    from core.queue import cli as queue_cli
    from core.storage import cli as storage_cli
    from core.storage import export as export_cli

    return [
        prompt_cli.register,
        engine_cli.register,
        storage_cli.register,
        export_cli.register,
        _register_worker,
        queue_cli.register,
        bench_cli.register,
        post_cli.register,
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


class DefaultsFormatter(argparse.HelpFormatter):
    """``--help`` shows every option's default (unless its help already says it)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help = action.help or ""
        default = action.default
        if (
            "default" not in help
            and action.option_strings
            and default not in (None, False, "", argparse.SUPPRESS)
            and action.nargs != 0
        ):
            help += " (default: %(default)s)"
        return help


def _use_formatter(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = DefaultsFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                _use_formatter(subparser)


# Loggers and warnings of libraries that speak at INFO/WARNING about things an operator cannot act on.
_NOISY_LOGGERS = ("PIL", "asyncio", "urllib3", "httpx", "filelock", "huggingface_hub", "torch._dynamo")
_NOISY_MODULES = r"(torch|torchvision|diffusers|transformers|accelerate|huggingface_hub|peft|torchsde)(\..*)?$"


class _DropMessages(logging.Filter):
    """Drops discord.py's 'PyNaCl/davey is not installed, voice will NOT be supported' (chant has no voice)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "voice will NOT be supported" not in str(record.msg)


def quiet_third_party(level: str) -> None:
    """Below DEBUG, third-party chatter goes: library warnings that are not ours to fix, download
    and loading progress bars, discord.py's voice notice. At DEBUG everything is shown."""
    if logging.getLevelName(level) <= logging.DEBUG:
        return
    for name in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY"):
        os.environ.setdefault(name, "error")  # read once, when the library is imported
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    logging.getLogger("discord.client").addFilter(_DropMessages())
    for category in (UserWarning, FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=_NOISY_MODULES)


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
    _use_formatter(parser)
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
    quiet_third_party(settings.log_level)
    from core.storage.faults import FaultLogFilter, explain

    url = getattr(args, "url", None) or settings.database.url
    for handler in logging.getLogger().handlers:
        handler.addFilter(FaultLogFilter(url))  # a retried disk-full etc. is one line, not a traceback a poll
    try:
        return int(args.func(args, settings) or 0)
    except GenerationError as exc:  # the engine cannot start, e.g. CUDA asked for but unusable
        print(f"chant: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        line = explain(exc, url)  # a database fault the operator can fix: no tables, damaged, disk full...
        if line is None:
            raise
        print(f"chant: {line}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
