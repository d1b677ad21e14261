"""serving order: batch.priority, batch.is_newest_round, task.serve_rank, task.serve_order, ix_task_serve

Existing batches become "normal" and none is the newest round's; existing tasks get rank 2 (normal)
and a serve_order that spreads each batch's tuples across its prompts, as build_bws_batch does for
new ones (the j-th tuple of a prompt, in id order, of the i-th of n prompts: j * n + i).
The index ix_task_serve replaces ix_task_free (free tasks in id order).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 09:00:00.000000
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

FREE = 'done_count + active_leases < required'


def upgrade() -> None:
    with op.batch_alter_table('batch', schema=None) as batch_op:
        batch_op.add_column(sa.Column('priority', sa.String(length=16), server_default='normal', nullable=False))
        batch_op.add_column(sa.Column('is_newest_round', sa.Boolean(), server_default=sa.text('false'), nullable=False))
    with op.batch_alter_table('task', schema=None) as batch_op:
        batch_op.add_column(sa.Column('serve_rank', sa.Integer(), server_default=sa.text('2'), nullable=False))
        batch_op.add_column(sa.Column('serve_order', sa.Integer(), server_default=sa.text('0'), nullable=False))

    _spread_existing_tasks()

    with op.batch_alter_table('task', schema=None) as batch_op:
        batch_op.drop_index('ix_task_free', sqlite_where=sa.text(FREE), postgresql_where=sa.text(FREE))
    # Not in the batch block: an expression index needs no table copy, and batch mode would copy it.
    op.create_index('ix_task_serve', 'task', ['serve_rank', sa.text('(done_count + active_leases)'), 'serve_order', 'id'],
                    unique=False, sqlite_where=sa.text(FREE), postgresql_where=sa.text(FREE))


def _spread_existing_tasks() -> None:
    task = sa.table('task', sa.column('id', sa.Integer), sa.column('batch_id', sa.Integer),
                    sa.column('prompt_id', sa.Integer), sa.column('serve_order', sa.Integer))
    conn = op.get_bind()
    by_batch: dict[int, dict[int, list[int]]] = {}
    for task_id, batch_id, prompt_id in conn.execute(
            sa.select(task.c.id, task.c.batch_id, task.c.prompt_id).order_by(task.c.id)):
        by_batch.setdefault(batch_id, {}).setdefault(prompt_id, []).append(task_id)
    rows = []
    for by_prompt in by_batch.values():
        n = len(by_prompt)
        for i, prompt_id in enumerate(sorted(by_prompt)):
            rows.extend({'task_id': task_id, 'order': j * n + i} for j, task_id in enumerate(by_prompt[prompt_id]))
    if rows:
        conn.execute(sa.update(task).where(task.c.id == sa.bindparam('task_id'))
                     .values(serve_order=sa.bindparam('order')), rows)


def downgrade() -> None:
    op.drop_index('ix_task_serve', table_name='task', sqlite_where=sa.text(FREE), postgresql_where=sa.text(FREE))
    with op.batch_alter_table('task', schema=None) as batch_op:
        batch_op.drop_column('serve_order')
        batch_op.drop_column('serve_rank')
    # After the columns are gone (on SQLite that copies the table), so the copy need not carry it.
    with op.batch_alter_table('task', schema=None) as batch_op:
        batch_op.create_index('ix_task_free', ['id'], unique=False, sqlite_where=sa.text(FREE), postgresql_where=sa.text(FREE))
    with op.batch_alter_table('batch', schema=None) as batch_op:
        batch_op.drop_column('is_newest_round')
        batch_op.drop_column('priority')
