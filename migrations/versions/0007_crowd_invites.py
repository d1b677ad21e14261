"""crowd-platform sign-in: reusable crowd invites, their participants and visits; per-user quota and time limit

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 06:00:00.000000
"""
from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('user_account', schema=None) as batch_op:
        batch_op.add_column(sa.Column('task_quota', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('work_ends_at', sa.DateTime(timezone=True), nullable=True))

    op.create_table('crowd_invite',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('token', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('platform', sa.String(length=16), nullable=False),
    sa.Column('task_quota', sa.Integer(), nullable=False),
    sa.Column('session_minutes', sa.Integer(), nullable=True),
    sa.Column('completion_code', sa.String(length=64), nullable=False),
    sa.Column('completion_url', sa.String(length=500), nullable=False),
    sa.Column('created_by_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('closed_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['created_by_id'], ['user_account.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('token')
    )
    op.create_table('crowd_participant',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('invite_id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('participant_id', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['invite_id'], ['crowd_invite.id'], ),
    sa.ForeignKeyConstraint(['user_id'], ['user_account.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('invite_id', 'participant_id', name='uq_crowd_participant_invite_pid'),
    sa.UniqueConstraint('user_id')
    )
    op.create_table('crowd_visit',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('participant_id', sa.Integer(), nullable=False),
    sa.Column('study_id', sa.String(length=64), nullable=False),
    sa.Column('session_id', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['participant_id'], ['crowd_participant.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('crowd_visit', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_crowd_visit_participant_id'), ['participant_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('crowd_visit', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_crowd_visit_participant_id'))
    op.drop_table('crowd_visit')
    op.drop_table('crowd_participant')
    op.drop_table('crowd_invite')
    with op.batch_alter_table('user_account', schema=None) as batch_op:
        batch_op.drop_column('work_ends_at')
        batch_op.drop_column('task_quota')
