"""workspaces: each with its own provider key (encrypted), base URL, models and limits; runs name theirs

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01 09:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = '0011'
down_revision: str | None = '0010'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RUN_TABLES = ('geo_runs', 'reviewflow_analysis_runs', 'knowledge_refresh_runs')


def upgrade() -> None:
    op.create_table('workspaces',
    sa.Column('id', sa.String(length=100), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('api_key_encrypted', sa.Text(), nullable=False),
    sa.Column('base_url', sa.String(length=2000), nullable=True),
    sa.Column('models', postgresql.JSONB(astext_type=sa.Text()), server_default='{}', nullable=False),
    sa.Column('daily_budget_usd', sa.Numeric(precision=14, scale=6), nullable=True),
    sa.Column('rate_limits', postgresql.JSONB(astext_type=sa.Text()), server_default='{}', nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('key_updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint('daily_budget_usd > 0', name=op.f('ck_workspaces_daily_budget_usd')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_workspaces'))
    )
    for table in RUN_TABLES:
        op.create_foreign_key(op.f(f'fk_{table}_workspace_id_workspaces'), table, 'workspaces', ['workspace_id'],
                              ['id'], ondelete='RESTRICT')


def downgrade() -> None:
    for table in RUN_TABLES:
        op.drop_constraint(op.f(f'fk_{table}_workspace_id_workspaces'), table, type_='foreignkey')
    op.drop_table('workspaces')
