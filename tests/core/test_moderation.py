"""The moderation policy, table-driven: place × policy × score → action, rule and charge."""

from __future__ import annotations

import pytest

from core.moderation import (
    Action,
    AgeRestricted,
    Decision,
    GuildPolicy,
    OperatorPolicy,
    Place,
    Policy,
    decide,
    parse_guild_policy,
    refusal,
)

NORMAL = Place.channel(nsfw=False)
RESTRICTED = Place.channel(nsfw=True)
DM = Place.direct_message()

SPOIL = GuildPolicy(Policy.SPOILER, 0.7)
BLOCK = GuildPolicy(Policy.BLOCK, 0.7)
BLOCK_ALL_CHANNELS = GuildPolicy(Policy.BLOCK, 0.7, AgeRestricted.SAME)
BLOCK_SPOIL_RESTRICTED = GuildPolicy(Policy.BLOCK, 0.7, AgeRestricted.SPOILER)
OFF = GuildPolicy(Policy.OFF, 0.7, AgeRestricted.SPOILER)
OPERATOR = OperatorPolicy(GuildPolicy(Policy.SPOILER, 0.9), dm_policy=Policy.BLOCK)

# (score, place, guild policy, expected action, rule, charged)
TABLE = [
    # Under the threshold: posted wherever.
    (0.10, NORMAL, BLOCK, Action.POST, "guild", True),
    (0.6999, NORMAL, SPOIL, Action.POST, "guild", True),
    # At or over it: the guild's action.
    (0.70, NORMAL, SPOIL, Action.SPOILER, "guild", True),
    (0.95, NORMAL, BLOCK, Action.BLOCK, "guild", True),  # blocked images are charged
    # Off: everything posts.
    (0.99, NORMAL, OFF, Action.POST, "off", True),
    (0.99, RESTRICTED, OFF, Action.POST, "off", True),  # "spoiler" in restricted channels never adds a policy
    # Age-restricted channels: allow (default), spoiler, or the same policy.
    (0.99, RESTRICTED, BLOCK, Action.POST, "age-restricted channel", True),
    (0.99, RESTRICTED, BLOCK_SPOIL_RESTRICTED, Action.SPOILER, "age-restricted channel", True),
    (0.10, RESTRICTED, BLOCK_SPOIL_RESTRICTED, Action.POST, "age-restricted channel", True),
    (0.99, RESTRICTED, BLOCK_ALL_CHANNELS, Action.BLOCK, "guild", True),
    # A thread takes its parent's flag.
    (0.99, Place.channel(nsfw=False, parent_nsfw=True, thread=True), BLOCK, Action.POST, "age-restricted channel", True),
    (0.99, Place.channel(nsfw=True, parent_nsfw=False, thread=True), BLOCK, Action.BLOCK, "guild", True),
    # A guild that never chose: the operator's default (spoiler at 0.9).
    (0.95, NORMAL, None, Action.SPOILER, "guild", True),
    (0.85, NORMAL, None, Action.POST, "guild", True),
    # Direct messages: the operator's DM policy at the default threshold, whatever the guild says.
    (0.95, DM, OFF, Action.BLOCK, "dm", True),
    (0.85, DM, BLOCK, Action.POST, "dm", True),
    # Not checked: flagged wherever a policy applies; a block for that reason is refunded.
    (None, NORMAL, BLOCK, Action.BLOCK, "guild", False),
    (None, NORMAL, SPOIL, Action.SPOILER, "guild", True),
    (None, NORMAL, OFF, Action.POST, "off", True),
    (None, RESTRICTED, BLOCK, Action.POST, "age-restricted channel", True),
]


@pytest.mark.parametrize(("score", "place", "guild", "action", "rule", "charged"), TABLE)
def test_decision_table(score, place, guild, action, rule, charged) -> None:
    decision = decide(score, place, guild, OPERATOR)
    assert (decision.action, decision.rule, decision.charged) == (action, rule, charged)
    assert decision.score == score
    assert decision.reason


def test_reasons_and_stored_form() -> None:
    blocked = decide(0.93, NORMAL, BLOCK, OPERATOR)
    assert blocked.reason == "scored 0.93, at or over the limit of 0.70"
    assert blocked.to_json() == {
        "action": "block",
        "score": 0.93,
        "threshold": 0.7,
        "rule": "guild",
        "reason": "scored 0.93, at or over the limit of 0.70",
        "charged": True,
    }
    assert decide(None, NORMAL, BLOCK, OPERATOR).reason == "the image could not be checked"
    assert decide(0.99, RESTRICTED, BLOCK, OPERATOR).reason == "age-restricted channels here post every image"
    assert decide(0.99, NORMAL, OFF, OPERATOR).threshold is None


# Re-posting (/show, 🔁, ⬆️, vary, zoom, pan, use as source): decided again for the new place.
REPOST = [
    # stored score, where it was made, where it is asked for, guild policy now, refused?
    (0.95, RESTRICTED, NORMAL, BLOCK, True),  # made in an age-restricted channel, /show elsewhere
    (0.95, RESTRICTED, RESTRICTED, BLOCK, False),
    (0.95, NORMAL, NORMAL, SPOIL, False),  # spoilered again, not refused
    (0.95, NORMAL, NORMAL, OFF, False),  # the guild turned moderation off since
    (0.50, RESTRICTED, NORMAL, BLOCK, False),  # never flagged
    (None, NORMAL, NORMAL, BLOCK, True),  # never checked
    (0.95, NORMAL, DM, BLOCK, True),  # the DM policy blocks it
]


@pytest.mark.parametrize(("score", "made_at", "asked_at", "guild", "refused"), REPOST)
def test_repost_rule(score, made_at, asked_at, guild, refused) -> None:
    message = refusal(decide(score, asked_at, guild, OPERATOR))
    assert (message is not None) == refused
    if refused:
        assert "blocked" in message and "will not post it or make new images from it" in message


def test_refusal_names_where() -> None:
    assert "in direct messages" in refusal(decide(0.95, DM, None, OPERATOR))
    assert "in this channel" in refusal(decide(0.95, NORMAL, BLOCK, OPERATOR))
    assert refusal(Decision(Action.SPOILER, 0.9, 0.5, "guild", "x", True)) is None


def test_parse_guild_policy() -> None:
    assert parse_guild_policy("block", 0.6, "same") == GuildPolicy(Policy.BLOCK, 0.6, AgeRestricted.SAME)
    with pytest.raises(ValueError, match="the policy must be one of off, spoiler, block, not 'ban'"):
        parse_guild_policy("ban", 0.6, "same")
    with pytest.raises(ValueError, match="age-restricted channels must be one of allow, spoiler, same"):
        parse_guild_policy("block", 0.6, "nope")
    for bad in (0.0, 1.5, -1.0):
        with pytest.raises(ValueError, match=r"the threshold must be between 0\.01 and 1"):
            parse_guild_policy("block", bad, "allow")


def test_the_new_torch_free_modules_load_no_torch() -> None:
    """Moderation policy, dynamic prompts, wildcards, tags and the result controls run in the bot's
    process: importing them must not pull in torch (or discord)."""
    import subprocess
    import sys
    from pathlib import Path

    modules = "core.moderation, core.prompt.dynamic, core.prompt.wildcards, core.prompt.tags, core.controls.outpaint, core.controls.vary"
    code = (
        f"import sys, {modules};"
        "bad = [m for m in ('torch', 'discord', 'diffusers', 'transformers') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
