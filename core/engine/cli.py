"""`chant` subcommands of core.engine (filled in by its issue)."""

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    pass
