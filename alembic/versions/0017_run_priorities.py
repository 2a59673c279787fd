"""run priorities: every run has a tier (high, normal, low), normal for the runs made before

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-08 02:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = '0017'
down_revision: str | None = '0016'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RUN_TABLES = ('geo_runs', 'reviewflow_analysis_runs', 'knowledge_refresh_runs')


def upgrade() -> None:
    for table in RUN_TABLES:
        # A constant default: PostgreSQL adds the column without rewriting the table.
        op.add_column(table, sa.Column('priority', sa.String(length=8), server_default='normal', nullable=False))
        op.create_check_constraint(op.f(f'ck_{table}_priority'), table, "priority IN ('high', 'normal', 'low')")


def downgrade() -> None:
    for table in RUN_TABLES:
        op.drop_constraint(op.f(f'ck_{table}_priority'), table, type_='check')
        op.drop_column(table, 'priority')
