"""control and reference images (issue 16)

A job's ControlNet and reference (IP-Adapter) images, by position, and the preprocessed control maps
shown with its result, stored once in ``source_images`` like img2img sources; a guild's switch for them.

Revision ID: 0006
Revises: 0004
Create Date: 2026-12-03

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


# revision identifiers, used by Alembic.
revision: str = '0006'
down_revision: str | Sequence[str] | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table('job_guide_images',
    sa.Column('job_id', _ID, nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('source_image_id', _ID, nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_job_guide_images_job_id_jobs'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['source_image_id'], ['source_images.id'], name=op.f('fk_job_guide_images_source_image_id_source_images')),
    sa.PrimaryKeyConstraint('job_id', 'kind', 'position', name=op.f('pk_job_guide_images'))
    )
    with op.batch_alter_table('job_guide_images', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_job_guide_images_source_image_id'), ['source_image_id'], unique=False)
    with op.batch_alter_table('guilds', schema=None) as batch_op:
        batch_op.add_column(sa.Column('allow_guides', sa.Boolean(), server_default=sa.true(), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('guilds', schema=None) as batch_op:
        batch_op.drop_column('allow_guides')
    with op.batch_alter_table('job_guide_images', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_job_guide_images_source_image_id'))
    op.drop_table('job_guide_images')
