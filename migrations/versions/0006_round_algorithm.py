"""round algorithm: what a training round trains with (ppo | alol | dpo | bakeoff), and a bake-off's plan

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 06:00:00.000000
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('training_round', schema=None) as batch_op:
        batch_op.add_column(sa.Column('algorithm', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('bakeoff', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('training_round', schema=None) as batch_op:
        batch_op.drop_column('bakeoff')
        batch_op.drop_column('algorithm')
