"""image moderation, result controls and dynamic prompts (issue 17)

Guild moderation policy; a job's age-restricted flag and prompt templates; each result image's
classifier score and moderation decision; the job kinds of the result controls.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


# revision identifiers, used by Alembic.
revision: str = '0004'
down_revision: str | Sequence[str] | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_KINDS = "kind IN ('imagine', 'reroll', 'variation', 'show')"
NEW_KINDS = "kind IN ('imagine', 'reroll', 'variation', 'show', 'vary', 'remix', 'zoom', 'pan')"


def upgrade() -> None:
    with op.batch_alter_table('guilds', schema=None) as batch_op:
        batch_op.add_column(sa.Column('moderation_policy', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('moderation_threshold', sa.Double(), nullable=True))
        batch_op.add_column(sa.Column('age_restricted_policy', sa.String(length=16), nullable=True))
        batch_op.create_check_constraint(
            op.f('ck_guilds_moderation_policy'), "moderation_policy IN ('off', 'spoiler', 'block')"
        )
        batch_op.create_check_constraint(
            op.f('ck_guilds_age_restricted_policy'), "age_restricted_policy IN ('allow', 'spoiler', 'same')"
        )

    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('age_restricted', sa.Boolean(), server_default=sa.text('false'), nullable=False)
        )
        batch_op.add_column(sa.Column('prompt_templates', sa.JSON(), nullable=True))
        batch_op.drop_constraint(op.f('ck_jobs_kind'), type_='check')
        batch_op.create_check_constraint(op.f('ck_jobs_kind'), NEW_KINDS)

    with op.batch_alter_table('job_images', schema=None) as batch_op:
        batch_op.add_column(sa.Column('moderation_score', sa.Double(), nullable=True))
        batch_op.add_column(sa.Column('moderation', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('job_images', schema=None) as batch_op:
        batch_op.drop_column('moderation')
        batch_op.drop_column('moderation_score')

    # Jobs of the new kinds cannot be kept under the old constraint: they become rerolls of their parent.
    op.execute("UPDATE jobs SET kind = 'reroll' WHERE kind IN ('vary', 'remix', 'zoom', 'pan')")
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_jobs_kind'), type_='check')
        batch_op.create_check_constraint(op.f('ck_jobs_kind'), OLD_KINDS)
        batch_op.drop_column('prompt_templates')
        batch_op.drop_column('age_restricted')

    with op.batch_alter_table('guilds', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_guilds_age_restricted_policy'), type_='check')
        batch_op.drop_constraint(op.f('ck_guilds_moderation_policy'), type_='check')
        batch_op.drop_column('age_restricted_policy')
        batch_op.drop_column('moderation_threshold')
        batch_op.drop_column('moderation_policy')
