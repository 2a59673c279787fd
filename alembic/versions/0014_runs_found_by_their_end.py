"""runs found by their end: an index on (status, finished_at) of every run table, for the runs that
ended one way, the latest first (dataengine runs --status failed --since 1d)

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07 20:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = '0014'
down_revision: str | None = '0013'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RUN_TABLES = ('geo_runs', 'reviewflow_analysis_runs', 'knowledge_refresh_runs')


def upgrade() -> None:
    for table in RUN_TABLES:
        op.create_index(f'ix_{table}_ended', table, ['status', 'finished_at'], unique=False)


def downgrade() -> None:
    for table in RUN_TABLES:
        op.drop_index(f'ix_{table}_ended', table_name=table)
