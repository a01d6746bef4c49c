"""Entry point of the ``chant`` console script: core's commands plus ``chant run`` (the bot).

discord.py is imported only when ``chant run`` actually runs, so the other commands start fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _register_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the Discord bot (and, by default, the in-process GPU worker)")
    p.add_argument(
        "--no-worker", action="store_true", help="bot only: GPU workers run elsewhere (`chant worker`)"
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace, settings) -> int:
    from bot.app import run_bot

    return run_bot(settings, with_worker=not args.no_worker)


def main(argv: Sequence[str] | None = None) -> int:
    from core.cli import main as core_main

    return core_main(argv, extra=[_register_run])


if __name__ == "__main__":
    sys.exit(main())
