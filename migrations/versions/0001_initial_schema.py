"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-25

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


# revision identifiers, used by Alembic.
revision: str = '0001'
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('audit_log',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('guild_id', sa.BigInteger(), nullable=True),
    sa.Column('actor_id', sa.BigInteger(), nullable=False),
    sa.Column('action', sa.String(length=64), nullable=False),
    sa.Column('target', sa.String(length=200), nullable=False),
    sa.Column('details', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_log'))
    )
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_audit_log_guild_id_id'), ['guild_id', 'id'], unique=False)

    op.create_table('guilds',
    sa.Column('id', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('default_model', sa.String(length=200), nullable=True),
    sa.Column('max_steps', sa.Integer(), nullable=True),
    sa.Column('max_pixels', sa.Integer(), nullable=True),
    sa.Column('max_images', sa.Integer(), nullable=True),
    sa.Column('max_queued_per_user', sa.Integer(), nullable=True),
    sa.Column('max_queued_per_guild', sa.Integer(), nullable=True),
    sa.Column('reroll_policy', sa.String(length=16), nullable=False),
    sa.Column('weight', sa.Double(), nullable=False),
    sa.Column('banned_words', sa.JSON(), nullable=False),
    sa.Column('channel_ids', sa.JSON(), nullable=False),
    sa.Column('admin_role_ids', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("reroll_policy IN ('everyone', 'owner')", name=op.f('ck_guilds_reroll_policy')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_guilds'))
    )
    op.create_table('jobs',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('parent_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('guild_id', sa.BigInteger(), nullable=True),
    sa.Column('channel_id', sa.BigInteger(), nullable=False),
    sa.Column('user_id', sa.BigInteger(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('model', sa.String(length=200), nullable=True),
    sa.Column('model_hash', sa.String(length=16), nullable=True),
    sa.Column('seed', sa.BigInteger(), nullable=False),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.Column('width', sa.Integer(), nullable=False),
    sa.Column('height', sa.Integer(), nullable=False),
    sa.Column('steps', sa.Integer(), nullable=False),
    sa.Column('sampler', sa.String(length=64), nullable=False),
    sa.Column('cost', sa.Double(), nullable=False),
    sa.Column('lease_owner', sa.String(length=200), nullable=True),
    sa.Column('lease_expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('gpu_seconds', sa.Double(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('status_channel_id', sa.BigInteger(), nullable=True),
    sa.Column('status_message_id', sa.BigInteger(), nullable=True),
    sa.Column('posted', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.Column('posted_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("kind IN ('imagine', 'reroll', 'variation', 'show')", name=op.f('ck_jobs_kind')),
    sa.CheckConstraint("state IN ('queued', 'running', 'done', 'failed', 'cancelled')", name=op.f('ck_jobs_state')),
    sa.ForeignKeyConstraint(['parent_id'], ['jobs.id'], name=op.f('fk_jobs_parent_id_jobs'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_jobs'))
    )
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_jobs_guild_id_state'), ['guild_id', 'state'], unique=False)
        batch_op.create_index(batch_op.f('ix_jobs_parent_id'), ['parent_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_jobs_posted_state'), ['posted', 'state'], unique=False)
        batch_op.create_index(batch_op.f('ix_jobs_state_id'), ['state', 'id'], unique=False)
        batch_op.create_index(batch_op.f('ix_jobs_user_id_id'), ['user_id', 'id'], unique=False)

    op.create_table('presets',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('owner_kind', sa.String(length=8), nullable=False),
    sa.Column('owner_id', sa.BigInteger(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('name_key', sa.String(length=100), nullable=False),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('created_by', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("owner_kind IN ('user', 'guild')", name=op.f('ck_presets_owner_kind')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_presets')),
    sa.UniqueConstraint('owner_kind', 'owner_id', 'name_key', name=op.f('uq_presets_owner_kind_owner_id_name_key'))
    )
    op.create_table('quota_locks',
    sa.Column('guild_id', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('user_id', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('guild_id', 'user_id', name=op.f('pk_quota_locks'))
    )
    op.create_table('quota_rules',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('guild_id', sa.BigInteger(), nullable=False),
    sa.Column('scope', sa.String(length=8), nullable=False),
    sa.Column('target_id', sa.BigInteger(), nullable=False),
    sa.Column('unit', sa.String(length=16), nullable=False),
    sa.Column('period', sa.String(length=8), nullable=False),
    sa.Column('allowance', sa.Double(), nullable=False),
    sa.Column('updated_by', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("period IN ('hour', 'day')", name=op.f('ck_quota_rules_period')),
    sa.CheckConstraint("scope IN ('guild', 'role', 'user')", name=op.f('ck_quota_rules_scope')),
    sa.CheckConstraint("unit IN ('images', 'gpu_seconds')", name=op.f('ck_quota_rules_unit')),
    sa.CheckConstraint('allowance >= 0', name=op.f('ck_quota_rules_allowance')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_quota_rules')),
    sa.UniqueConstraint('guild_id', 'scope', 'target_id', 'unit', 'period', name=op.f('uq_quota_rules_guild_id_scope_target_id_unit_period'))
    )
    op.create_table('job_images',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('job_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('seed', sa.BigInteger(), nullable=False),
    sa.Column('subseed', sa.BigInteger(), nullable=False),
    sa.Column('infotext', sa.Text(), nullable=False),
    sa.Column('png', sa.LargeBinary(), nullable=True),
    sa.Column('size_bytes', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('pruned_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_job_images_job_id_jobs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_job_images')),
    sa.UniqueConstraint('job_id', 'position', name=op.f('uq_job_images_job_id_position'))
    )
    with op.batch_alter_table('job_images', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_job_images_created_at'), ['created_at'], unique=False)

    op.create_table('job_inputs',
    sa.Column('job_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('init_image', sa.LargeBinary(), nullable=True),
    sa.Column('mask_image', sa.LargeBinary(), nullable=True),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_job_inputs_job_id_jobs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('job_id', name=op.f('pk_job_inputs'))
    )
    op.create_table('job_messages',
    sa.Column('message_id', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('job_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('channel_id', sa.BigInteger(), nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("kind IN ('status', 'result')", name=op.f('ck_job_messages_kind')),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_job_messages_job_id_jobs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('message_id', name=op.f('pk_job_messages'))
    )
    with op.batch_alter_table('job_messages', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_job_messages_job_id'), ['job_id'], unique=False)

    op.create_table('usage_entries',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('guild_id', sa.BigInteger(), nullable=False),
    sa.Column('user_id', sa.BigInteger(), nullable=False),
    sa.Column('job_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('unit', sa.String(length=16), nullable=False),
    sa.Column('amount', sa.Double(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('settled_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("state IN ('reserved', 'committed', 'refunded')", name=op.f('ck_usage_entries_state')),
    sa.CheckConstraint("unit IN ('images', 'gpu_seconds')", name=op.f('ck_usage_entries_unit')),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_usage_entries_job_id_jobs'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_usage_entries'))
    )
    with op.batch_alter_table('usage_entries', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_usage_entries_guild_id_user_id_unit_created_at'), ['guild_id', 'user_id', 'unit', 'created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_usage_entries_job_id'), ['job_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('usage_entries', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_usage_entries_job_id'))
        batch_op.drop_index(batch_op.f('ix_usage_entries_guild_id_user_id_unit_created_at'))

    op.drop_table('usage_entries')
    with op.batch_alter_table('job_messages', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_job_messages_job_id'))

    op.drop_table('job_messages')
    op.drop_table('job_inputs')
    with op.batch_alter_table('job_images', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_job_images_created_at'))

    op.drop_table('job_images')
    op.drop_table('quota_rules')
    op.drop_table('quota_locks')
    op.drop_table('presets')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_jobs_user_id_id'))
        batch_op.drop_index(batch_op.f('ix_jobs_state_id'))
        batch_op.drop_index(batch_op.f('ix_jobs_posted_state'))
        batch_op.drop_index(batch_op.f('ix_jobs_parent_id'))
        batch_op.drop_index(batch_op.f('ix_jobs_guild_id_state'))

    op.drop_table('jobs')
    op.drop_table('guilds')
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_audit_log_guild_id_id'))

    op.drop_table('audit_log')
