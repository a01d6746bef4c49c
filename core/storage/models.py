"""What chant remembers: SQLAlchemy 2 typed ORM models (SQLite and PostgreSQL).

Conventions:

* Discord ids (guilds, users, channels, roles, messages) are 64-bit ``Snowflake`` columns.
* Times are timezone-aware UTC (:class:`UTCDateTime` also on SQLite, which stores naive text).
* In quota and usage tables direct messages use ``guild_id = 0`` (:data:`DM_GUILD`), never NULL, so
  unique keys and row locks work the same on both backends. ``jobs.guild_id`` is NULL in DMs.
* A job's full parameters are ``GenerationRequest.to_dict()`` in ``jobs.params`` (JSON); the
  columns next to it (model, size, steps, ...) are copies for queries. Input images for img2img
  live in ``source_images`` (once each, referenced from ``job_inputs``) and result PNGs in
  ``job_images``, so scanning jobs never reads blobs.

Every change to this file needs a new Alembic revision in ``migrations/versions``
(``chant db check`` fails on drift).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
    true,
)
from sqlalchemy.ext.asyncio import AsyncAttrs
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from core.moderation import AgeRestricted, Policy

DM_GUILD = 0
"""``guild_id`` of direct messages in quota and usage tables."""

JOB_STATES = ("queued", "running", "done", "failed", "cancelled")
# vary / remix / zoom / pan: the result controls (buttons) under a result, each from one of its images.
JOB_KINDS = ("imagine", "reroll", "variation", "show", "vary", "remix", "zoom", "pan", "upscale")
MODERATION_POLICIES = tuple(str(p) for p in Policy)
AGE_RESTRICTED_POLICIES = tuple(str(a) for a in AgeRestricted)
FINISHED_STATES = ("done", "failed", "cancelled")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """``DateTime(timezone=True)`` that always returns aware UTC datetimes (SQLite included)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass an aware UTC datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# Shared column shapes.
IntPK = Annotated[int, mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)]
Snowflake = Annotated[int, mapped_column(BigInteger)]
Timestamp = Annotated[datetime, mapped_column(UTCDateTime, default=utcnow)]
JSONDict = Annotated[dict[str, Any], mapped_column(JSON)]
Name = Annotated[str, mapped_column(String(100))]

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(AsyncAttrs, DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime,
        dict[str, Any]: JSON,
        bytes: LargeBinary,
        float: Double,  # SQLAlchemy 2.1's default; said here so 2.0.x builds the same schema
    }


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Guild(Base):
    """A Discord guild's settings. NULL limits mean "the operator's default from config"."""

    __tablename__ = "guilds"
    __table_args__ = (
        CheckConstraint(_in("reroll_policy", ("everyone", "owner")), name="reroll_policy"),
        CheckConstraint(_in("moderation_policy", MODERATION_POLICIES), name="moderation_policy"),
        CheckConstraint(_in("age_restricted_policy", AGE_RESTRICTED_POLICIES), name="age_restricted_policy"),
    )

    id: Mapped[Snowflake] = mapped_column(primary_key=True, autoincrement=False)
    default_model: Mapped[str | None] = mapped_column(String(200))
    max_steps: Mapped[int | None]
    max_pixels: Mapped[int | None]
    max_images: Mapped[int | None]
    max_queued_per_user: Mapped[int | None]
    max_queued_per_guild: Mapped[int | None]
    max_and_parts: Mapped[int | None]
    max_prompt_chunks: Mapped[int | None]
    reroll_policy: Mapped[str] = mapped_column(String(16), default="everyone")
    weight: Mapped[float] = mapped_column(default=1.0)  # share of the GPU in the fair queue
    banned_words: Mapped[list[str]] = mapped_column(JSON, default=list)
    channel_ids: Mapped[list[int]] = mapped_column(JSON, default=list)  # empty = every channel
    admin_role_ids: Mapped[list[int]] = mapped_column(JSON, default=list)
    # Image moderation (core.moderation); NULL = the operator's default from [moderation].
    moderation_policy: Mapped[str | None] = mapped_column(String(16))
    moderation_threshold: Mapped[float | None]
    age_restricted_policy: Mapped[str | None] = mapped_column(String(16))
    # /imagine's detailer when the option is left out (issue 15); NULL = off.
    detailer_default: Mapped[bool | None]
    # Whether /imagine and /img2img take control images and reference images here (issue 16).
    allow_guides: Mapped[bool] = mapped_column(default=True, server_default=true())
    created_at: Mapped[Timestamp]
    updated_at: Mapped[Timestamp] = mapped_column(onupdate=utcnow)


class Preset(Base):
    """A named parameter set owned by a user (``owner_kind='user'``) or a guild (admins)."""

    __tablename__ = "presets"
    __table_args__ = (
        UniqueConstraint("owner_kind", "owner_id", "name_key"),
        CheckConstraint(_in("owner_kind", ("user", "guild")), name="owner_kind"),
    )

    id: Mapped[IntPK]
    owner_kind: Mapped[str] = mapped_column(String(8))
    owner_id: Mapped[Snowflake]
    name: Mapped[Name]  # as the user typed it
    name_key: Mapped[Name]  # name.casefold(): uniqueness and lookup are case-insensitive
    params: Mapped[JSONDict]  # ImagineOptions-like fields (prompt fragment, negative, model, steps, ...)
    created_by: Mapped[Snowflake]
    created_at: Mapped[Timestamp]
    updated_at: Mapped[Timestamp] = mapped_column(onupdate=utcnow)


class Job(Base):
    """One /imagine, reroll, variation or /show: parameters, state, lease, timings and messages."""

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(_in("state", JOB_STATES), name="state"),
        CheckConstraint(_in("kind", JOB_KINDS), name="kind"),
        Index(None, "user_id", "id"),  # history pages, newest first
        Index(None, "state", "id"),  # the queue in submit order
        Index(None, "guild_id", "state"),  # per-guild queue counts
        Index(None, "posted", "state"),  # finished but never posted (after a restart)
    )

    id: Mapped[IntPK]
    kind: Mapped[str] = mapped_column(String(16), default="imagine")
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), index=True)
    guild_id: Mapped[int | None] = mapped_column(BigInteger)  # NULL in DMs
    channel_id: Mapped[Snowflake]
    user_id: Mapped[Snowflake]
    state: Mapped[str] = mapped_column(String(16), default="queued")
    params: Mapped[JSONDict]  # GenerationRequest.to_dict()
    # Copies of parameters for queries and batching (the JSON is the source of truth).
    model: Mapped[str | None] = mapped_column(String(200))
    model_hash: Mapped[str | None] = mapped_column(String(16))
    seed: Mapped[int] = mapped_column(BigInteger)
    count: Mapped[int]
    width: Mapped[int]
    height: Mapped[int]
    steps: Mapped[int]
    sampler: Mapped[str] = mapped_column(String(64))
    cost: Mapped[float]  # core.cost.job_cost: UNet rows x pixels x model calls, for fair scheduling
    # Where it was asked: an age-restricted channel (Discord's nsfw flag; a thread's parent's). Kept so
    # that a result posted later (after a restart) is moderated for the place it goes to.
    age_restricted: Mapped[bool] = mapped_column(default=False, server_default=false())
    # The prompt and negative prompt as typed, when dynamic prompts / wildcards changed them (the
    # request holds the expansion): {"prompt": ..., "negative_prompt": ..., "wildcards": [...]}.
    prompt_templates: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Execution.
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(default=0)
    gpu_seconds: Mapped[float | None]
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[Timestamp]  # queued
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # Discord.
    status_channel_id: Mapped[int | None] = mapped_column(BigInteger)
    status_message_id: Mapped[int | None] = mapped_column(BigInteger)
    posted: Mapped[bool] = mapped_column(default=False, server_default=false())
    posted_at: Mapped[datetime | None]

    images: Mapped[list[JobImage]] = relationship(
        back_populates="job", order_by="JobImage.position", cascade="all, delete-orphan", passive_deletes=True
    )
    messages: Mapped[list[JobMessage]] = relationship(
        back_populates="job",
        order_by="JobMessage.position",
        cascade="all, delete-orphan",
        passive_deletes=True,
    )


class SourceImage(Base):
    """A source or mask image of img2img / inpaint jobs, stored once however many jobs use it (rerolls,
    variations, the same upload again): content-addressed by its SHA-256, in the encoding it came in.
    Its bytes are pruned with the results' retention once no recent job uses it; the row stays."""

    __tablename__ = "source_images"

    id: Mapped[IntPK]
    sha256: Mapped[str] = mapped_column(String(64), unique=True)  # of the bytes, hex
    data: Mapped[bytes | None]  # PNG, JPEG or WebP as the engine reads it; NULL once pruned
    size_bytes: Mapped[int]
    created_at: Mapped[Timestamp]
    pruned_at: Mapped[datetime | None]


class JobInput(Base):
    """Which source (and mask) an img2img / inpaint job starts from (kept out of ``jobs``)."""

    __tablename__ = "job_inputs"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    init_image_id: Mapped[int | None] = mapped_column(ForeignKey("source_images.id"), index=True)
    mask_image_id: Mapped[int | None] = mapped_column(ForeignKey("source_images.id"), index=True)


class JobGuideImage(Base):
    """A control or reference image of a job (kind "input": ``GenerationRequest.guide_images``, the
    ControlNet units' images then the reference images, by position), or a preprocessed control map the
    engine made (kind "map", shown with the result), stored once in ``source_images`` like img2img sources."""

    __tablename__ = "job_guide_images"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(8), primary_key=True)  # input | map
    position: Mapped[int] = mapped_column(primary_key=True)
    source_image_id: Mapped[int] = mapped_column(ForeignKey("source_images.id"), index=True)


class JobImage(Base):
    """One result image: its seeds and infotext forever, its PNG bytes until retention prunes them."""

    __tablename__ = "job_images"
    __table_args__ = (UniqueConstraint("job_id", "position"),)

    id: Mapped[IntPK]
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    position: Mapped[int]  # 0-based index within the job
    seed: Mapped[int] = mapped_column(BigInteger)
    subseed: Mapped[int] = mapped_column(BigInteger)
    infotext: Mapped[str] = mapped_column(Text)
    png: Mapped[bytes | None]  # NULL once pruned
    size_bytes: Mapped[int]
    # The classifier's score (NULL: not checked) and the moderation decision for the place it was made
    # for (core.moderation.Decision.to_json() plus the policy that applied).
    moderation_score: Mapped[float | None]
    moderation: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[Timestamp] = mapped_column(index=True)
    pruned_at: Mapped[datetime | None]

    job: Mapped[Job] = relationship(back_populates="images")


class JobMessage(Base):
    """A Discord message that shows a job (status or result): 🔁 finds the job by message id."""

    __tablename__ = "job_messages"
    __table_args__ = (CheckConstraint(_in("kind", ("status", "result")), name="kind"),)

    message_id: Mapped[Snowflake] = mapped_column(primary_key=True, autoincrement=False)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    channel_id: Mapped[Snowflake]
    kind: Mapped[str] = mapped_column(String(8))
    position: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[Timestamp]

    job: Mapped[Job] = relationship(back_populates="messages")


class QuotaRule(Base):
    """An allowance per user: guild default (target 0), per role, or per user override."""

    __tablename__ = "quota_rules"
    __table_args__ = (
        UniqueConstraint("guild_id", "scope", "target_id", "unit", "period"),
        CheckConstraint(_in("scope", ("guild", "role", "user")), name="scope"),
        CheckConstraint(_in("unit", ("images", "gpu_seconds")), name="unit"),
        CheckConstraint(_in("period", ("hour", "day")), name="period"),
        CheckConstraint("allowance >= 0", name="allowance"),
    )

    id: Mapped[IntPK]
    guild_id: Mapped[Snowflake]  # DM_GUILD for direct messages
    scope: Mapped[str] = mapped_column(String(8))
    target_id: Mapped[Snowflake]  # role or user id; 0 for the guild default
    unit: Mapped[str] = mapped_column(String(16))
    period: Mapped[str] = mapped_column(String(8))
    allowance: Mapped[float]
    updated_by: Mapped[Snowflake]
    created_at: Mapped[Timestamp]
    updated_at: Mapped[Timestamp] = mapped_column(onupdate=utcnow)


class UsageEntry(Base):
    """Ledger: an amount reserved at submit, then committed (maybe re-measured) or refunded."""

    __tablename__ = "usage_entries"
    __table_args__ = (
        Index(None, "guild_id", "user_id", "unit", "created_at"),
        CheckConstraint(_in("unit", ("images", "gpu_seconds")), name="unit"),
        CheckConstraint(_in("state", ("reserved", "committed", "refunded")), name="state"),
    )

    id: Mapped[IntPK]
    guild_id: Mapped[Snowflake]  # DM_GUILD for direct messages
    user_id: Mapped[Snowflake]
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), index=True)
    unit: Mapped[str] = mapped_column(String(16))
    amount: Mapped[float]
    state: Mapped[str] = mapped_column(String(16), default="reserved")
    created_at: Mapped[Timestamp]
    settled_at: Mapped[datetime | None]


class QuotaLock(Base):
    """One row per (guild, user): reservations lock it so that check + reserve is atomic."""

    __tablename__ = "quota_locks"

    guild_id: Mapped[Snowflake] = mapped_column(primary_key=True, autoincrement=False)
    user_id: Mapped[Snowflake] = mapped_column(primary_key=True, autoincrement=False)
    version: Mapped[int] = mapped_column(default=0)


class AuditEntry(Base):
    """Who changed which setting, quota or guild preset, and when."""

    __tablename__ = "audit_log"
    __table_args__ = (Index(None, "guild_id", "id"),)

    id: Mapped[IntPK]
    guild_id: Mapped[int | None] = mapped_column(BigInteger)
    actor_id: Mapped[Snowflake]
    action: Mapped[str] = mapped_column(String(64))  # e.g. "quota.set", "limit.set", "preset.delete"
    target: Mapped[str] = mapped_column(String(200), default="")
    details: Mapped[JSONDict] = mapped_column(default=dict)  # e.g. {"before": ..., "after": ...}
    created_at: Mapped[Timestamp]
