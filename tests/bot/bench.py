"""Benchmark: N /imagine interactions arriving at once against the fake Discord server.

    .venv/bin/python -m tests.bot.bench [--n 50] [--rounds 3] [--service real|fake] [--json]

Runs the real ``chant run`` process (temporary SQLite, the torch-free fake engine chosen by
``core.bootstrap``), or with ``--service fake`` the bot in-process on the in-memory test service, fires N
INTERACTION_CREATE events in one burst and measures, per interaction, the time from the gateway
event being written to the deferral (interaction callback) arriving, and to the queue-position
status message. Prints p50/p99/max; "every one acknowledged within 3 s" is checked and reported.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import statistics
import sys
import tempfile
from pathlib import Path

from core.config import Settings
from tests.bot.fake_discord import FakeDiscord, FakeGuild
from tests.bot.harness import ChantProcess, write_config

TOKEN = "bench.token.not-secret"


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


async def run(n: int, rounds: int, service_kind: str) -> dict:
    guilds = [FakeGuild(10_000 + g, f"g{g}", channel_ids=(20_000 + g,)) for g in range(5)]
    fake = await FakeDiscord(guilds).start()
    tmp = tempfile.TemporaryDirectory()
    acks: list[float] = []
    statuses: list[float] = []
    burst_acks: list[list[float]] = []
    proc = None
    task = None
    try:
        if service_kind == "real":
            # The real `chant run` process (SQLite, fake engine): the fake server gets its own core.
            config = write_config(
                Path(tmp.name),
                "[limits]\nmax_queued_per_guild = 10000\nmax_queued_global = 100000\n"
                "max_queued_per_user = 100\n",
            )
            proc = ChantProcess(config, fake, 0.01, TOKEN)
            await proc.start()
        else:
            from bot.app import serve
            from tests.bot.fake_service import FakeService

            base = Settings()
            settings = dataclasses.replace(
                base,
                discord=dataclasses.replace(
                    base.discord, api_base=fake.api_base, gateway_url=fake.gateway_url
                ),
            )
            task = asyncio.create_task(serve(settings, TOKEN, with_worker=False, service=FakeService()))
            await fake.wait_ready(60)
        await fake.wait_call("PUT", r"/applications/\d+/commands", timeout=30)
        await asyncio.sleep(2.0)  # let startup finish (READY, guilds, backlog): measure a connected, idle bot
        user = 1_000_000
        for _ in range(rounds):
            burst = []
            for i in range(n):
                user += 1
                g = guilds[i % len(guilds)]
                burst.append(
                    fake.interaction(
                        "imagine",
                        [
                            {"name": "prompt", "type": 3, "value": f"bench {i}"},
                            {"name": "steps", "type": 4, "value": 4},
                        ],
                        guild_id=g.id,
                        channel_id=g.channel_ids[0],
                        user_id=user,
                    )
                )
            sent = await asyncio.gather(*burst)
            for iid, token in sent:
                await fake.wait_call("POST", rf"/interactions/{iid}/{token}/callback", timeout=30)
            burst_acks.append(
                [1000 * (fake.interaction_acked_at[i] - fake.interaction_sent_at[i]) for i, _ in sent]
            )
            for iid, token in sent:
                (patch,) = await fake.wait_call(
                    "PATCH", rf"/webhooks/\d+/{token}/messages/@original", timeout=60
                )
                acks.append(fake.interaction_acked_at[iid] - fake.interaction_sent_at[iid])
                statuses.append(patch.at - fake.interaction_sent_at[iid])
            await asyncio.sleep(0.5)
    finally:
        if proc is not None:
            await proc.stop()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await fake.close()
        tmp.cleanup()
    ms = [a * 1000 for a in acks]
    st = [s * 1000 for s in statuses]
    return {
        "interactions": len(acks),
        "burst": n,
        "rounds": rounds,
        "service": service_kind,
        "ack_p50_ms": round(statistics.median(ms), 1),
        "ack_p99_ms": round(percentile(ms, 99), 1),
        "ack_max_ms": round(max(ms), 1),
        "all_acked_within_3s": max(acks) < 3.0,
        "ack_p99_ms_per_burst": [round(percentile(b, 99), 1) for b in burst_acks],
        "ack_first_ms_per_burst": [round(min(b), 1) for b in burst_acks],
        "status_p50_ms": round(statistics.median(st), 1),
        "status_p99_ms": round(percentile(st, 99), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50, help="interactions per burst")
    parser.add_argument("--rounds", type=int, default=3, help="bursts (figures pool all of them)")
    parser.add_argument("--service", choices=("real", "fake"), default="real")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    result = asyncio.run(run(args.n, args.rounds, args.service))
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{result['interactions']} interactions ({args.rounds} bursts of {args.n}, {args.service} service)"
        )
        print(
            f"  acknowledge (defer): p50 {result['ack_p50_ms']} ms  p99 {result['ack_p99_ms']} ms  "
            f"max {result['ack_max_ms']} ms  all < 3 s: {result['all_acked_within_3s']}"
        )
        print(
            f"  per burst: first ack {result['ack_first_ms_per_burst']} ms, p99 {result['ack_p99_ms_per_burst']} ms"
        )
        print(f"  queue position posted: p50 {result['status_p50_ms']} ms  p99 {result['status_p99_ms']} ms")
    return 0 if result["all_acked_within_3s"] else 1


if __name__ == "__main__":
    sys.exit(main())
