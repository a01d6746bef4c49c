"""The ``chant`` command line (everything that is not the Discord bot).

Each domain adds its own subcommands through a ``register(subparsers)`` function; handlers take
``(args, settings)`` and return an exit code. Handlers import heavy modules (torch) lazily, so
``chant prompt …`` starts fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from core.config import ConfigError, Settings, load_settings

Register = Callable[[argparse._SubParsersAction], None]


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
        queue_cli.register,
        bench_cli.register,
    ]


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
