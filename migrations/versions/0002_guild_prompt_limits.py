"""guild limits on AND parts and prompt chunks

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


# revision identifiers, used by Alembic.
revision: str = '0002'
down_revision: str | Sequence[str] | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # NULL: the operator's default from [limits], as for the other guild limits.
    with op.batch_alter_table('guilds', schema=None) as batch_op:
        batch_op.add_column(sa.Column('max_and_parts', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('max_prompt_chunks', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('guilds', schema=None) as batch_op:
        batch_op.drop_column('max_prompt_chunks')
        batch_op.drop_column('max_and_parts')
