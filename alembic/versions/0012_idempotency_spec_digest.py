"""runs store the digest of the spec their idempotency key was first used with: another spec is refused

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = '0012'
down_revision: str | None = '0011'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RUN_TABLES = ('geo_runs', 'reviewflow_analysis_runs', 'knowledge_refresh_runs')


def upgrade() -> None:
    # Nullable, no default: adding it rewrites no rows, and the runs made before keep NULL (no check).
    for table in RUN_TABLES:
        op.add_column(table, sa.Column('spec_digest', sa.String(length=64), nullable=True))


def downgrade() -> None:
    for table in RUN_TABLES:
        op.drop_column(table, 'spec_digest')
