"""gold checks: gold items (known answers), annotators excluded from exports and training, run-time settings

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-10 06:00:00.000000
"""
from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'gold_item',
        sa.Column('task_id', sa.Integer(), nullable=False),
        sa.Column('best_id', sa.Integer(), nullable=True),
        sa.Column('worst_id', sa.Integer(), nullable=True),
        sa.Column('rating_ranges', sa.JSON(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['task_id'], ['task.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['best_id'], ['continuation.id']),
        sa.ForeignKeyConstraint(['worst_id'], ['continuation.id']),
        sa.PrimaryKeyConstraint('task_id'),
    )
    op.create_table(
        'annotator_exclusion',
        sa.Column('user_id', sa.Integer(), nullable=False),
        sa.Column('excluded_by_id', sa.Integer(), nullable=True),
        sa.Column('excluded_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('note', sa.String(length=500), nullable=False),
        sa.ForeignKeyConstraint(['user_id'], ['user_account.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['excluded_by_id'], ['user_account.id'], ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('user_id'),
    )
    op.create_table(
        'app_setting',
        sa.Column('key', sa.String(length=64), nullable=False),
        sa.Column('value', sa.JSON(), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('key'),
    )


def downgrade() -> None:
    op.drop_table('app_setting')
    op.drop_table('annotator_exclusion')
    op.drop_table('gold_item')
