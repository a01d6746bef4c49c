"""What happens to an image given its classifier score and where it would be posted (torch-free).

Each guild sets a policy — ``off``, ``spoiler`` (post it as a ``SPOILER_`` attachment) or ``block``
(do not post it; tell the requester privately) — and a threshold: an image is *flagged* when its
score (the classifier's probability of an unsafe label, 0..1) is at least the threshold. Channels
Discord marks age-restricted (the ``nsfw`` flag; a thread has its parent's) follow the guild's
``age_restricted`` setting: ``allow`` (post everything as is: members there opted in), ``spoiler``
(flagged images are spoilered, never blocked) or ``same`` (the guild policy, as anywhere). Direct
messages follow the operator's ``moderation.dm_policy`` at the operator's default threshold.

An image that has no score (no classifier, or it failed) is treated as flagged wherever a policy
applies: a check that did not run must not let an image through a ``block`` policy.

Charging: a blocked image is charged like any other (the GPU did the work, and a refund would let
anyone keep the GPU busy with what the guild blocks at no cost to their quota), except one blocked
only because it could not be checked: that is not the requester's doing, so it is refunded.

Re-posting: ``/show``, 🔁 and anything made from an image (⬆️ upscale, vary, zoom, pan, "use as
source") is decided again by :func:`decide` with the stored score, at the place it would go, under
the policy of now. A ``block`` there refuses it: a blocked image is never re-posted outside a place
that allows it, and work is not spent on one that would be blocked again.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

MIN_THRESHOLD = 0.01  # 0 would flag every image: "block" everything is not a threshold
MAX_THRESHOLD = 1.0


def check_threshold(value: float) -> float:
    if not MIN_THRESHOLD <= value <= MAX_THRESHOLD:
        raise ValueError(f"the threshold must be between {MIN_THRESHOLD:g} and {MAX_THRESHOLD:g}, not {value:g}")
    return value


class Policy(StrEnum):
    OFF = "off"
    SPOILER = "spoiler"
    BLOCK = "block"


class AgeRestricted(StrEnum):
    """What a guild's age-restricted channels do."""

    ALLOW = "allow"
    SPOILER = "spoiler"
    SAME = "same"


class Action(StrEnum):
    POST = "post"
    SPOILER = "spoiler"
    BLOCK = "block"


@dataclass(frozen=True)
class GuildPolicy:
    policy: Policy = Policy.OFF
    threshold: float = 0.8
    age_restricted: AgeRestricted = AgeRestricted.ALLOW

    def __post_init__(self) -> None:
        check_threshold(self.threshold)


@dataclass(frozen=True)
class OperatorPolicy:
    """The operator's settings: defaults for guilds and the policy of direct messages."""

    default: GuildPolicy = GuildPolicy()
    dm_policy: Policy = Policy.OFF


@dataclass(frozen=True)
class Place:
    """Where an image would be posted."""

    dm: bool = False
    age_restricted: bool = False

    @classmethod
    def channel(cls, *, nsfw: bool, parent_nsfw: bool | None = None, thread: bool = False) -> Place:
        """A guild channel from the interaction payload: a thread takes its parent channel's flag."""
        return cls(dm=False, age_restricted=bool(parent_nsfw) if thread else nsfw)

    @classmethod
    def direct_message(cls) -> Place:
        return cls(dm=True)


@dataclass(frozen=True)
class Decision:
    """One image's fate, stored with the job (``to_json``) and shown to admins."""

    action: Action
    score: float | None
    threshold: float | None  # None when no policy applied
    rule: str  # which rule decided: "dm", "guild", "age-restricted channel" or "off"
    reason: str  # one sentence for the requester or an admin
    charged: bool

    @property
    def flagged(self) -> bool:
        return self.action != Action.POST

    def to_json(self) -> dict:
        return {
            "action": str(self.action),
            "score": self.score,
            "threshold": self.threshold,
            "rule": self.rule,
            "reason": self.reason,
            "charged": self.charged,
        }


def parse_guild_policy(policy: str, threshold: float, age_restricted: str) -> GuildPolicy:
    """An admin's choice as a policy; a ValueError names the value that is not one of the choices."""
    try:
        chosen = Policy(policy)
    except ValueError:
        raise ValueError(f"the policy must be one of {', '.join(p.value for p in Policy)}, not {policy!r}") from None
    try:
        restricted = AgeRestricted(age_restricted)
    except ValueError:
        choices = ", ".join(a.value for a in AgeRestricted)
        raise ValueError(f"age-restricted channels must be one of {choices}, not {age_restricted!r}") from None
    return GuildPolicy(chosen, check_threshold(threshold), restricted)


def effective(place: Place, guild: GuildPolicy | None, operator: OperatorPolicy) -> tuple[Policy, float, str]:
    """The policy, threshold and rule name that apply at ``place``."""
    if place.dm:
        return operator.dm_policy, operator.default.threshold, "dm"
    rules = guild or operator.default
    if place.age_restricted:
        if rules.age_restricted == AgeRestricted.ALLOW:
            return Policy.OFF, rules.threshold, "age-restricted channel"
        if rules.age_restricted == AgeRestricted.SPOILER and rules.policy != Policy.OFF:
            return Policy.SPOILER, rules.threshold, "age-restricted channel"
    return rules.policy, rules.threshold, "guild"


def decide(score: float | None, place: Place, guild: GuildPolicy | None, operator: OperatorPolicy) -> Decision:
    """What to do with one image scored ``score`` (None: not checked) that would be posted at ``place``.

    ``guild`` is None for a guild that never set a policy (the operator's default applies).
    """
    policy, threshold, rule = effective(place, guild, operator)
    if policy == Policy.OFF:
        why = "age-restricted channels here post every image" if rule == "age-restricted channel" else (
            "image moderation is off here")
        return Decision(Action.POST, score, None, "off" if rule == "guild" else rule, why, True)
    action = Action.SPOILER if policy == Policy.SPOILER else Action.BLOCK
    if score is None:
        return Decision(action, None, threshold, rule, "the image could not be checked", action != Action.BLOCK)
    if score >= threshold:
        return Decision(action, score, threshold, rule, f"scored {score:.2f}, at or over the limit of {threshold:.2f}", True)
    return Decision(Action.POST, score, threshold, rule, f"scored {score:.2f}, under the limit of {threshold:.2f}", True)


def refusal(decision: Decision) -> str | None:
    """The message refusing a re-post or a derived job (``/show``, 🔁, ⬆️, vary, zoom, pan, "use as
    source") where ``decision`` (made by :func:`decide` for the new place) blocks it; None when allowed."""
    if decision.action != Action.BLOCK:
        return None
    where = "in direct messages" if decision.rule == "dm" else "in this channel"
    return f"That image is blocked {where} ({decision.reason}), so I will not post it or make new images from it here."


def place_of(guild_id: int | None, age_restricted: bool) -> Place:
    """The place of a job or a re-post: a direct message (no guild), or a guild channel whose
    age-restricted flag (a thread's: its parent's) was read from the interaction."""
    return Place.direct_message() if guild_id is None else Place(dm=False, age_restricted=age_restricted)


def record(decision: Decision, place: Place, guild: GuildPolicy | None, operator: OperatorPolicy) -> dict:
    """What is stored with an image: the decision, where it was made for and the policy that applied
    (the guild's as its admins set it, else the operator's; the operator's DM policy in DMs)."""
    rules = guild or operator.default
    where = "dm" if place.dm else "age-restricted channel" if place.age_restricted else "channel"
    policy = (
        {"policy": str(operator.dm_policy), "threshold": operator.default.threshold}
        if place.dm
        else {"policy": str(rules.policy), "threshold": rules.threshold, "age_restricted": str(rules.age_restricted)}
    )
    return {**decision.to_json(), "place": where, "policy": policy}


def operator_policy(policy: str, threshold: float, age_restricted: str, dm_policy: str) -> OperatorPolicy:
    """The operator's ``[moderation]`` settings as an :class:`OperatorPolicy` (values checked at load)."""
    return OperatorPolicy(parse_guild_policy(policy, threshold, age_restricted), Policy(dm_policy))
