"""crowd links: an optional cap on participants per link

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-20 06:00:00.000000
"""
from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('crowd_invite') as batch:
        batch.add_column(sa.Column('max_participants', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('crowd_invite') as batch:
        batch.drop_column('max_participants')
