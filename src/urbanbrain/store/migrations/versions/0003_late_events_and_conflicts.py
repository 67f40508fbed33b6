"""Late device events (a field's backlog) marked; conflicting resends kept for inspection.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('device_events') as batch:
        batch.add_column(sa.Column('late', sa.Boolean(), server_default=sa.false(), nullable=False))
    op.create_table('event_conflicts',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('device_id', sa.String(length=200), nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.Column('key_name', sa.String(length=100), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('payload', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_event_conflicts_device_seq', 'event_conflicts', ['device_id', 'seq'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_event_conflicts_device_seq', table_name='event_conflicts')
    op.drop_table('event_conflicts')
    with op.batch_alter_table('device_events') as batch:
        batch.drop_column('late')
