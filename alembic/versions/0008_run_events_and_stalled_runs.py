"""run events: a run's history; stalled runs flagged

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 04:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
RUN_TABLES = ('geo_runs', 'reviewflow_analysis_runs', 'knowledge_refresh_runs')


def upgrade() -> None:
    op.create_table('run_events',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('run_id', sa.Uuid(), nullable=False),
    sa.Column('job', sa.String(length=64), nullable=False),
    sa.Column('event', sa.String(length=32), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), server_default=sa.text('clock_timestamp()'), nullable=False),
    sa.Column('worker', sa.String(length=200), nullable=True),
    sa.Column('fencing_token', sa.BigInteger(), nullable=True),
    sa.Column('step_index', sa.Integer(), nullable=True),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_run_events'))
    )
    op.create_index('ix_run_events_run', 'run_events', ['run_id', 'id'], unique=False)
    op.create_index('ix_run_events_at', 'run_events', ['at'], unique=False)
    for table in RUN_TABLES:
        op.add_column(table, sa.Column('stalled_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    for table in RUN_TABLES:
        op.drop_column(table, 'stalled_at')
    op.drop_index('ix_run_events_at', table_name='run_events')
    op.drop_index('ix_run_events_run', table_name='run_events')
    op.drop_table('run_events')
