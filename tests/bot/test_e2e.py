"""End to end: the real ``chant run`` process (SQLite, the fake engine from core.bootstrap) against
the fake Discord server. These start subprocesses, so they are marked slow (a few seconds each)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from PIL import Image

from tests.bot.conftest import (
    ALICE,
    BOB,
    CHANNEL_A,
    CHANNEL_B,
    CHANNEL_C,
    GUILD_A,
    GUILD_B,
    GUILD_C,
    TOKEN,
    fake_guilds,
)
from tests.bot.fake_discord import ALL_PERMISSIONS, FakeDiscord
from tests.bot.harness import ChantProcess, write_config

pytestmark = pytest.mark.slow

MANAGE_GUILD = 1 << 5


def opt(name: str, value, type_: int = 3) -> dict:
    return {"name": name, "type": type_, "value": value}


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    server = await FakeDiscord(fake_guilds()).start()
    yield server
    await server.close()


@contextlib.asynccontextmanager
async def chant(tmp_path: Path, fake: FakeDiscord, step_delay: float = 0.01) -> AsyncIterator[ChantProcess]:
    config = tmp_path / "chant.toml"
    if not config.exists():
        write_config(tmp_path)
    proc = ChantProcess(config, fake, step_delay, TOKEN)
    await proc.start()
    try:
        yield proc
    except BaseException:
        print(f"--- chant run output (last 6000 characters) ---\n{proc.output[-6000:]}")  # shown on failure
        raise
    finally:
        await proc.stop()
        assert TOKEN not in proc.output, "the bot token appeared in the logs"


def results(fake: FakeDiscord, channel: int | None = None):
    return [c for c in fake.channel_posts(channel) if c.files and c.status == 200]


def parameters(call) -> str:
    img = Image.open(io.BytesIO(call.files[0][1]))
    return img.info["parameters"]


def seed_of(call) -> int:
    return int(re.search(r"Seed: (\d+)", parameters(call)).group(1))


async def test_imagine_reroll_and_reroll_after_restart(tmp_path: Path, fake: FakeDiscord) -> None:
    async with chant(tmp_path, fake) as proc:
        iid, token = await fake.interaction(
            "imagine",
            [opt("prompt", "a (red:1.2) fox"), opt("seed", 1234, 4), opt("steps", 6, 4)],
            guild_id=GUILD_A,
            channel_id=CHANNEL_A,
            user_id=ALICE,
        )
        (cb,) = await fake.wait_call("POST", rf"/interactions/{iid}/{token}/callback")
        assert cb.json["type"] == 5 and fake.ack_latencies()[iid] < 3.0
        (first,) = await fake.wait_call(
            "POST", rf"/channels/{CHANNEL_A}/messages", lambda c: bool(c.files), timeout=30
        )
        params = parameters(first)
        assert params.startswith("a (red:1.2) fox") and "Seed: 1234" in params and "Steps: 6" in params
        assert "job #" in first.json["content"] and "seed 1234" in first.json["content"]
        original = int(first.response["id"])
        await fake.wait_call("PUT", rf"/channels/{CHANNEL_A}/messages/{original}/reactions/🔁/@me")

        await fake.react(original, "🔁", user_id=BOB, channel_id=CHANNEL_A, guild_id=GUILD_A)
        posts = await fake.wait_call(
            "POST", rf"/channels/{CHANNEL_A}/messages", lambda c: bool(c.files), count=2, timeout=30
        )
        second = posts[1]
        assert int(second.json["message_reference"]["message_id"]) == original
        assert seed_of(second) != 1234 and "a (red:1.2) fox" in parameters(second)
        assert f"<@{BOB}>" in second.json["content"]  # charged to (and announced for) the reactor
        await fake.wait_call(
            "PUT", rf"/channels/{CHANNEL_A}/messages/{second.response['id']}/reactions/🔁/@me"
        )
        assert await proc.stop() == 0, proc.output[-3000:]

    # A new process: the old message is still rerollable (the database knows it).
    async with chant(tmp_path, fake):
        await fake.react(original, "🔁", user_id=ALICE, channel_id=CHANNEL_A, guild_id=GUILD_A)
        posts = await fake.wait_call(
            "POST", rf"/channels/{CHANNEL_A}/messages", lambda c: bool(c.files), count=3, timeout=30
        )
        third = posts[2]
        assert int(third.json["message_reference"]["message_id"]) == original
        assert seed_of(third) not in (1234, seed_of(second))


async def test_admin_refusal_429_retry_and_gateway_resume(tmp_path: Path, fake: FakeDiscord) -> None:
    async with chant(tmp_path, fake) as proc:
        # /admin opened to everyone by the server: Discord delivers it, core still refuses a non-admin.
        _, token = await fake.interaction(
            "admin",
            [opt("name", "max_steps"), opt("value", 10, 4)],
            subcommand="limit",
            guild_id=GUILD_A,
            channel_id=CHANNEL_A,
            user_id=BOB,
            permissions=ALL_PERMISSIONS & ~MANAGE_GUILD & ~(1 << 3),
        )
        (refusal,) = await fake.wait_call("POST", rf"/webhooks/\d+/{token}")
        assert refusal.json["flags"] & 64 and "admin" in refusal.json["content"].lower()
        # An admin can; afterwards the limit holds for everyone.
        _, token = await fake.interaction(
            "admin",
            [opt("name", "max_steps"), opt("value", 10, 4)],
            subcommand="limit",
            guild_id=GUILD_A,
            channel_id=CHANNEL_A,
            user_id=ALICE,
            permissions=MANAGE_GUILD,
        )
        (ok,) = await fake.wait_call("POST", rf"/webhooks/\d+/{token}")
        assert "max_steps is now 10" in ok.json["content"], ok.json
        _, token = await fake.interaction(
            "imagine",
            [opt("prompt", "a cat"), opt("steps", 20, 4)],
            guild_id=GUILD_A,
            channel_id=CHANNEL_A,
            user_id=BOB,
        )
        (limited,) = await fake.wait_call("POST", rf"/webhooks/\d+/{token}")
        assert limited.json["flags"] & 64 and "10" in limited.json["content"], limited.json

        # REST 429 on the result post: retried after the given delay, nothing dropped.
        fake.fail_once_with_429("POST", rf"/channels/{CHANNEL_B}/messages", retry_after=0.7)
        await fake.interaction(
            "imagine",
            [opt("prompt", "rate limited"), opt("steps", 3, 4)],
            guild_id=GUILD_B,
            channel_id=CHANNEL_B,
            user_id=ALICE,
        )
        posts = await fake.wait_call("POST", rf"/channels/{CHANNEL_B}/messages", count=2, timeout=30)
        assert posts[0].status == 429 and posts[1].status == 200 and posts[1].files
        assert posts[1].at - posts[0].at >= 0.7

        # Gateway drop: commands sent while the bot is away arrive after RESUME; none is lost.
        await fake.drop_gateway()
        sent = [
            await fake.interaction(
                "imagine",
                [opt("prompt", f"during drop {n}"), opt("steps", 3, 4)],
                guild_id=GUILD_C,
                channel_id=CHANNEL_C,
                user_id=ALICE + n,
            )
            for n in range(3)
        ]
        await fake.wait_until(lambda: fake.resumes, 30, "RESUME")
        assert len(fake.identifies) == 1
        for iid, token in sent:
            await fake.wait_call("POST", rf"/interactions/{iid}/{token}/callback", timeout=15)
        done = await fake.wait_call(
            "POST", rf"/channels/{CHANNEL_C}/messages", lambda c: bool(c.files), count=3, timeout=30
        )
        assert {parameters(c).splitlines()[0] for c in done} == {f"during drop {n}" for n in range(3)}
        assert "rate limited" in proc.output.lower() or "429" in proc.output

        # A job the engine fails: the user is told why, in the channel, on the status message.
        _, token = await fake.interaction(
            "imagine",
            [opt("prompt", "please FAIL"), opt("steps", 3, 4)],
            guild_id=GUILD_B,
            channel_id=CHANNEL_B,
            user_id=BOB,
        )
        (status,) = await fake.wait_call("PATCH", rf"/webhooks/\d+/{token}/messages/@original", timeout=30)
        status_id = int(status.response["id"])
        (failed,) = await fake.wait_call(
            "PATCH",
            rf"/channels/{CHANNEL_B}/messages/{status_id}",
            lambda c: "failed" in ((c.json or {}).get("content") or ""),
            timeout=30,
        )
        assert f"<@{BOB}>" in failed.json["content"] and "Traceback" not in failed.json["content"]


async def _run_chant(env_extra: dict[str, str], tmp_path: Path, fake: FakeDiscord) -> tuple[int, str]:
    import os
    import sys

    from tests.bot.harness import CHANT

    config = write_config(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_", "CHANT_"))}
    env.update(fake.env(), CHANT_CONFIG=str(config), CHANT_FAKE_ENGINE="1", **env_extra)
    exe = [str(CHANT)] if CHANT.exists() else [sys.executable, "-m", "bot.cli"]
    proc = await asyncio.create_subprocess_exec(
        *exe, "run", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=tmp_path
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(errors="replace")


async def test_without_a_token_chant_run_explains_and_exits(tmp_path: Path, fake: FakeDiscord) -> None:
    code, out = await _run_chant({}, tmp_path, fake)
    assert code == 2 and "DISCORD_TOKEN" in out and "Traceback" not in out


async def test_a_rejected_token_fails_cleanly_without_printing_it(tmp_path: Path, fake: FakeDiscord) -> None:
    fake.reject_login = True
    code, out = await _run_chant({"DISCORD_TOKEN": TOKEN}, tmp_path, fake)
    assert code == 3 and "refused the token" in out, out[-3000:]
    assert TOKEN not in out and "Traceback" not in out


async def test_three_guilds_flooding_are_served_interleaved(tmp_path: Path, fake: FakeDiscord) -> None:
    write_config(tmp_path, "max_batch = 1\n")  # one job per engine call: service order is visible
    async with chant(tmp_path, fake, step_delay=0.04):
        tokens = []
        for guild, channel, n in [(GUILD_A, CHANNEL_A, 6), (GUILD_B, CHANNEL_B, 6)]:  # two floods at once
            for k in range(n):
                tokens.append(
                    await fake.interaction(
                        "imagine",
                        [opt("prompt", f"g{guild % 10} job {k}"), opt("steps", 6, 4)],
                        guild_id=guild,
                        channel_id=channel,
                        user_id=ALICE + k,
                    )
                )
        for _, token in tokens:  # every flood job is queued...
            await fake.wait_call("PATCH", rf"/webhooks/\d+/{token}/messages/@original", timeout=30)
        c_tokens = [
            (
                await fake.interaction(
                    "imagine",
                    [opt("prompt", f"small guild job {k}"), opt("steps", 6, 4)],
                    guild_id=GUILD_C,
                    channel_id=CHANNEL_C,
                    user_id=BOB + k,
                )
            )[1]
            for k in range(2)
        ]  # ...then a small guild asks for two
        for token in c_tokens:
            await fake.wait_call("PATCH", rf"/webhooks/\d+/{token}/messages/@original", timeout=30)
        served_before_c = len(results(fake))  # jobs finished by the time the small guild's are queued
        await fake.wait_until(lambda: len(results(fake)) >= 14, 90, "14 results")
        order = [int(c.path.split("/")[2]) for c in sorted(results(fake), key=lambda c: c.at)]
        sequence = "".join({CHANNEL_A: "A", CHANNEL_B: "B", CHANNEL_C: "C"}[c] for c in order)
        assert sequence.count("A") == 6 and sequence.count("B") == 6 and sequence.count("C") == 2
        # Interleaved across the two floods (not all of A, then all of B)...
        assert "B" in sequence[:3] and "A" in sequence[:3], sequence
        # ...and the small guild's jobs are served within a few jobs of arriving, ahead of the floods' tails.
        assert served_before_c < 12, f"the floods finished before the small guild could submit: {sequence}"
        # Equal weights: each round serves every waiting guild once, so both C jobs are done within two
        # rounds of three (+1 for the job running when they arrived) — far ahead of the floods' ends.
        assert sequence.rindex("C") <= served_before_c + 6, (served_before_c, sequence)
        assert sequence.rindex("C") < min(sequence.rindex("A"), sequence.rindex("B")), sequence


def png_bytes(size=(48, 32), color=(20, 120, 220)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


async def test_img2img_attachments_are_checked_and_variation_replies(
    tmp_path: Path, fake: FakeDiscord
) -> None:
    async with chant(tmp_path, fake):
        # A corrupt upload: core opens it with Pillow and refuses it privately, before queueing.
        broken = fake.add_attachment("broken.png", png_bytes()[:80])
        _, token = await fake.interaction(
            "img2img",
            [opt("prompt", "a fox"), opt("image", broken["id"], 11)],
            guild_id=GUILD_A,
            channel_id=CHANNEL_A,
            user_id=ALICE,
            attachments=[broken],
        )
        (refusal,) = await fake.wait_call("POST", rf"/webhooks/\d+/{token}", timeout=30)
        assert refusal.json["flags"] & 64 and "damaged" in refusal.json["content"], refusal.json
        # A good one: queued as img2img, the result is posted with 🔁 and 🔀.
        good = fake.add_attachment("fox.png", png_bytes())
        await fake.interaction(
            "img2img",
            [
                opt("prompt", "a fox"),
                opt("image", good["id"], 11),
                opt("strength", 0.5, 10),
                opt("steps", 4, 4),
            ],
            guild_id=GUILD_A,
            channel_id=CHANNEL_A,
            user_id=ALICE,
            attachments=[good],
        )
        (first,) = await fake.wait_call(
            "POST", rf"/channels/{CHANNEL_A}/messages", lambda c: bool(c.files), timeout=30
        )
        assert "96×64" in first.json["content"]  # no size given: the source's, up to 64 on the short side
        original = int(first.response["id"])
        await fake.wait_call("PUT", rf"/channels/{CHANNEL_A}/messages/{original}/reactions/🔀/@me")
        # 🔀: the same seed, a variation seed mixed in, as a reply.
        await fake.react(original, "🔀", user_id=BOB, channel_id=CHANNEL_A, guild_id=GUILD_A)
        posts = await fake.wait_call(
            "POST", rf"/channels/{CHANNEL_A}/messages", lambda c: bool(c.files), count=2, timeout=30
        )
        second = posts[1]
        assert int(second.json["message_reference"]["message_id"]) == original
        assert seed_of(second) == seed_of(first)
        assert "Variation seed strength: 0.25" in parameters(second)


async def test_jobs_queued_before_a_restart_get_live_progress_after_it(
    tmp_path: Path, fake: FakeDiscord
) -> None:
    write_config(tmp_path, "max_batch = 1\n")
    async with chant(tmp_path, fake, step_delay=0.3) as proc:
        tokens = []
        for n in range(2):  # the first runs, the second waits behind it
            _, token = await fake.interaction(
                "imagine",
                [opt("prompt", f"slow job {n}"), opt("steps", 20, 4)],
                guild_id=GUILD_A,
                channel_id=CHANNEL_A,
                user_id=ALICE + n,
            )
            tokens.append(token)
        statuses = [
            (await fake.wait_call("PATCH", rf"/webhooks/\d+/{t}/messages/@original", timeout=30))[0]
            for t in tokens
        ]
        # One job at a time, the first submitted first: the second waits ("#2 in the queue", or "next in
        # line" once the first has started, which a loaded machine may reach before this edit).
        waiting_status = statuses[1]
        assert waiting_status.json["content"].startswith("Queued:"), waiting_status.json["content"]
        waiting = int(waiting_status.response["id"])
        waiting_prompt = "slow job 1"
        assert await proc.stop() == 0, proc.output[-3000:]
    before = len(fake.calls)
    async with chant(tmp_path, fake, step_delay=0.1):
        # The new process edits the waiting job's status message with a progress bar...
        await fake.wait_until(
            lambda: any(
                c.method == "PATCH"
                and c.path == f"/channels/{CHANNEL_A}/messages/{waiting}"
                and "/20`" in ((c.json or {}).get("content") or "")
                for c in fake.calls[before:]
            ),
            30,
            "a progress edit of the job queued before the restart",
        )
        # ...and then posts its result and removes the status message.
        await fake.wait_until(
            lambda: any(
                c.method == "POST" and c.files and parameters(c).startswith(waiting_prompt)
                for c in fake.calls[before:]
            ),
            30,
            "the result of the job queued before the restart",
        )
        await fake.wait_call("DELETE", rf"/channels/{CHANNEL_A}/messages/{waiting}", timeout=10)


async def test_a_kill_between_submit_and_the_status_edit_leaves_no_orphaned_status(
    tmp_path: Path, fake: FakeDiscord
) -> None:
    """kill -9 while the bot waits for Discord to take the "Queued … job #1" edit: the restarted bot
    still knows the status message, and removes it when the result is posted."""
    write_config(tmp_path, "max_batch = 1\n")
    fake.hold("PATCH", r"/webhooks/\d+/[^/]+/messages/@original")
    proc = ChantProcess(tmp_path / "chant.toml", fake, 0.2, TOKEN)
    await proc.start()
    try:
        _, token = await fake.interaction(
            "imagine",
            [opt("prompt", "killed mid-edit"), opt("steps", 20, 4)],
            guild_id=GUILD_A,
            channel_id=CHANNEL_A,
            user_id=ALICE,
        )
        (held,) = await fake.wait_call("PATCH", rf"/webhooks/\d+/{token}/messages/@original", timeout=30)
        assert "job #1" in held.json["content"]  # queued; Discord has not answered the edit yet
        status_id = fake.originals[token]
    finally:
        await proc.kill()
    fake.release_holds()
    before = len(fake.calls)
    async with chant(tmp_path, fake):
        await fake.wait_until(
            lambda: any(
                c.method == "POST" and c.files and parameters(c).startswith("killed mid-edit")
                for c in fake.calls[before:]
            ),
            30,
            "the result of the job, after the restart",
        )
        await fake.wait_call("DELETE", rf"/channels/{CHANNEL_A}/messages/{status_id}", timeout=10)
