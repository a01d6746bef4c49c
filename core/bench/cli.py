"""``chant bench TARGET``: benchmark commands that print figures (never timed tests).

Each target is a module of this package, on top of the code it measures (so no domain imports a
benchmark), and exposes ``add_arguments(parser)`` and ``run(args, settings) -> dict``; results print
as a table, or as JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import importlib
import json

TARGETS = {
    "engine": "core.bench.engine",
    "prompt": "core.bench.prompt",
    "storage": "core.bench.storage",
    "queue": "core.bench.queue",
    "tags": "core.bench.tags",
    "sampling": "core.bench.sampling",
    "postprocess": "core.bench.postprocess",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks: print timings (engine by default)")
    p.add_argument("target", nargs="?", default="engine", choices=sorted(TARGETS))
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="options for the target (see chant bench TARGET -h)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace, settings) -> int:
    module = importlib.import_module(TARGETS[args.target])
    parser = argparse.ArgumentParser(prog=f"chant bench {args.target}")
    parser.add_argument("--json", action="store_true", help="print one JSON object")  # also after TARGET
    module.add_arguments(parser)
    target_args = parser.parse_args(args.rest)
    target_args.json = args.json = args.json or target_args.json
    result = module.run(target_args, settings)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        for key, value in result.items():
            print(f"{key:40} {value}")
    return 0
