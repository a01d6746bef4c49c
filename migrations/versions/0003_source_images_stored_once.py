"""source images stored once, content-addressed

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03

Every img2img job kept its own copy of its source (a reroll copied it again): the bytes move to
``source_images``, one row per distinct content (SHA-256), and ``job_inputs`` points at them.
Existing rows are moved job by job, oldest first, so a source keeps its first job's time.

"""

import hashlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


# revision identifiers, used by Alembic.
revision: str = '0003'
down_revision: str | Sequence[str] | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')

# Lightweight tables for the data move (the models may change after this revision).
jobs = sa.table('jobs', sa.column('id', _ID), sa.column('created_at', sa.DateTime(timezone=True)))
sources = sa.table(
    'source_images',
    sa.column('id', _ID),
    sa.column('sha256', sa.String(64)),
    sa.column('data', sa.LargeBinary()),
    sa.column('size_bytes', sa.Integer()),
    sa.column('created_at', sa.DateTime(timezone=True)),
)
inputs = sa.table(
    'job_inputs',
    sa.column('job_id', _ID),
    sa.column('init_image', sa.LargeBinary()),
    sa.column('mask_image', sa.LargeBinary()),
    sa.column('init_image_id', _ID),
    sa.column('mask_image_id', _ID),
)


def upgrade() -> None:
    op.create_table('source_images',
    sa.Column('id', _ID, nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('data', sa.LargeBinary(), nullable=True),
    sa.Column('size_bytes', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('pruned_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_source_images')),
    sa.UniqueConstraint('sha256', name=op.f('uq_source_images_sha256'))
    )
    with op.batch_alter_table('job_inputs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('init_image_id', _ID, nullable=True))
        batch_op.add_column(sa.Column('mask_image_id', _ID, nullable=True))
    _move_bytes_to_sources()
    with op.batch_alter_table('job_inputs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_job_inputs_init_image_id'), ['init_image_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_job_inputs_mask_image_id'), ['mask_image_id'], unique=False)
        batch_op.create_foreign_key(batch_op.f('fk_job_inputs_init_image_id_source_images'), 'source_images', ['init_image_id'], ['id'])
        batch_op.create_foreign_key(batch_op.f('fk_job_inputs_mask_image_id_source_images'), 'source_images', ['mask_image_id'], ['id'])
        batch_op.drop_column('init_image')
        batch_op.drop_column('mask_image')


def _move_bytes_to_sources() -> None:
    """One job's blobs at a time (never the whole table in memory), each distinct content stored once."""
    bind = op.get_bind()
    known: dict[str, int] = {}  # sha256 -> source id
    rows = bind.execute(
        sa.select(inputs.c.job_id, jobs.c.created_at)
        .join(jobs, jobs.c.id == inputs.c.job_id)
        .order_by(inputs.c.job_id)
    ).all()
    for job_id, created_at in rows:
        init, mask = bind.execute(
            sa.select(inputs.c.init_image, inputs.c.mask_image).where(inputs.c.job_id == job_id)
        ).one()
        ids = {}
        for name, data in (('init_image_id', init), ('mask_image_id', mask)):
            if data is None:
                continue
            digest = hashlib.sha256(data).hexdigest()
            if digest not in known:
                known[digest] = bind.execute(
                    sources.insert()
                    .values(sha256=digest, data=data, size_bytes=len(data), created_at=created_at)
                    .returning(sources.c.id)
                ).scalar_one()
            ids[name] = known[digest]
        if ids:
            bind.execute(inputs.update().where(inputs.c.job_id == job_id).values(**ids))


def downgrade() -> None:
    with op.batch_alter_table('job_inputs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('mask_image', sa.LargeBinary(), nullable=True))
        batch_op.add_column(sa.Column('init_image', sa.LargeBinary(), nullable=True))
    bind = op.get_bind()
    for column, blob in (('init_image_id', 'init_image'), ('mask_image_id', 'mask_image')):
        source = sa.select(sources.c.data).where(sources.c.id == inputs.c[column]).scalar_subquery()
        bind.execute(inputs.update().where(inputs.c[column].is_not(None)).values({blob: source}))
    with op.batch_alter_table('job_inputs', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_job_inputs_mask_image_id_source_images'), type_='foreignkey')
        batch_op.drop_constraint(batch_op.f('fk_job_inputs_init_image_id_source_images'), type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_job_inputs_mask_image_id'))
        batch_op.drop_index(batch_op.f('ix_job_inputs_init_image_id'))
        batch_op.drop_column('mask_image_id')
        batch_op.drop_column('init_image_id')

    op.drop_table('source_images')
