"""upscale jobs and the guild's detailer default (issue 15)

The job kind of /upscale, ⬆️ and the upscale button; a guild's default for /imagine's detailer option.
(Face restoration, the detailer and the upscale's own settings live in the request JSON, ``jobs.params``.)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


# revision identifiers, used by Alembic.
revision: str = '0007'
down_revision: str | Sequence[str] | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_KINDS = "kind IN ('imagine', 'reroll', 'variation', 'show', 'vary', 'remix', 'zoom', 'pan')"
NEW_KINDS = "kind IN ('imagine', 'reroll', 'variation', 'show', 'vary', 'remix', 'zoom', 'pan', 'upscale')"


def upgrade() -> None:
    with op.batch_alter_table('guilds', schema=None) as batch_op:
        batch_op.add_column(sa.Column('detailer_default', sa.Boolean(), nullable=True))

    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_jobs_kind'), type_='check')
        batch_op.create_check_constraint(op.f('ck_jobs_kind'), NEW_KINDS)


def downgrade() -> None:
    # Upscale jobs cannot be kept under the old constraint: they become rerolls of their parent.
    op.execute("UPDATE jobs SET kind = 'reroll' WHERE kind = 'upscale'")
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_jobs_kind'), type_='check')
        batch_op.create_check_constraint(op.f('ck_jobs_kind'), OLD_KINDS)
    with op.batch_alter_table('guilds', schema=None) as batch_op:
        batch_op.drop_column('detailer_default')
