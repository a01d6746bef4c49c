"""`chant` subcommands of core.queue (filled in by its issue)."""

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    pass
