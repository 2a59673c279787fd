"""run budgets and workspaces, and the cost ledger: what every LLM call cost, by the hour

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 06:11:25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = '0010'
down_revision: str | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('llm_costs',
    sa.Column('hour', sa.DateTime(timezone=True), nullable=False),
    sa.Column('job', sa.String(length=64), nullable=False),
    sa.Column('model', sa.String(length=200), nullable=False),
    sa.Column('property', sa.String(length=300), nullable=False),
    sa.Column('workspace_id', sa.String(length=100), nullable=False),
    sa.Column('calls', sa.Integer(), server_default='0', nullable=False),
    sa.Column('prompt_tokens', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('cached_tokens', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('completion_tokens', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('cost_usd', sa.Numeric(precision=16, scale=6), server_default='0', nullable=False),
    sa.Column('unpriced_calls', sa.Integer(), server_default='0', nullable=False),
    sa.PrimaryKeyConstraint('hour', 'job', 'model', 'property', 'workspace_id', name=op.f('pk_llm_costs'))
    )
    op.create_index('ix_llm_costs_workspace_hour', 'llm_costs', ['workspace_id', 'hour'], unique=False)
    op.add_column('geo_runs', sa.Column('max_cost_usd', sa.Numeric(precision=14, scale=6), nullable=True))
    op.add_column('geo_runs', sa.Column('workspace_id', sa.String(length=100), nullable=True))
    op.add_column('knowledge_refresh_runs', sa.Column('max_cost_usd', sa.Numeric(precision=14, scale=6), nullable=True))
    op.add_column('knowledge_refresh_runs', sa.Column('workspace_id', sa.String(length=100), nullable=True))
    op.add_column('reviewflow_analysis_runs', sa.Column('max_cost_usd', sa.Numeric(precision=14, scale=6), nullable=True))
    op.add_column('reviewflow_analysis_runs', sa.Column('workspace_id', sa.String(length=100), nullable=True))


def downgrade() -> None:
    op.drop_column('reviewflow_analysis_runs', 'workspace_id')
    op.drop_column('reviewflow_analysis_runs', 'max_cost_usd')
    op.drop_column('knowledge_refresh_runs', 'workspace_id')
    op.drop_column('knowledge_refresh_runs', 'max_cost_usd')
    op.drop_column('geo_runs', 'workspace_id')
    op.drop_column('geo_runs', 'max_cost_usd')
    op.drop_index('ix_llm_costs_workspace_hour', table_name='llm_costs')
    op.drop_table('llm_costs')
