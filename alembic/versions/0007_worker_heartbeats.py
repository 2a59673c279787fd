"""worker heartbeats: liveness per process instead of per run

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 20:45:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
RUN_TABLES = ('geo_runs', 'reviewflow_analysis_runs', 'knowledge_refresh_runs')
ACTIVE = "status IN ('queued', 'running')"


def upgrade() -> None:
    op.create_table('worker_heartbeats',
    sa.Column('worker_id', sa.String(length=200), nullable=False),
    sa.Column('beat_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('beats', sa.BigInteger(), server_default='1', nullable=False),
    sa.Column('backend_pid', sa.Integer(), nullable=True),
    sa.Column('backend_start', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('worker_id', name=op.f('pk_worker_heartbeats'))
    )
    for table in RUN_TABLES:
        op.create_index(f'ix_{table}_active_owner', table, ['lease_owner'], unique=False,
                        postgresql_where=sa.text(ACTIVE))


def downgrade() -> None:
    for table in RUN_TABLES:
        op.drop_index(f'ix_{table}_active_owner', table_name=table, postgresql_where=sa.text(ACTIVE))
    op.drop_table('worker_heartbeats')
