"""cost totals rolled up: the ledger's finished hours summed by each grouping of a cost report, so a
whole-history report reads a page of totals and the last hours, not the whole ledger

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07 20:50:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = '0015'
down_revision: str | None = '0014'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('llm_cost_totals',
    sa.Column('grouping', sa.String(length=16), nullable=False),
    sa.Column('scope', sa.String(length=110), nullable=False),
    sa.Column('key', sa.String(length=300), nullable=False),
    sa.Column('calls', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('prompt_tokens', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('cached_tokens', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('completion_tokens', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('cost_usd', sa.Numeric(precision=20, scale=6), server_default='0', nullable=False),
    sa.Column('unpriced_calls', sa.BigInteger(), server_default='0', nullable=False),
    sa.PrimaryKeyConstraint('grouping', 'scope', 'key', name=op.f('pk_llm_cost_totals'))
    )
    op.create_index('ix_llm_cost_totals_by_cost', 'llm_cost_totals',
                    ['grouping', 'scope', sa.literal_column('cost_usd DESC'), 'key'], unique=False)
    op.create_table('llm_cost_rollup',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('rolled_until', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_llm_cost_rollup'))
    )
    # Nothing rolled up yet: the first sweep rolls up every finished hour of the ledger.
    op.execute("INSERT INTO llm_cost_rollup (id, rolled_until) VALUES (1, '1970-01-01 00:00:00+00')")


def downgrade() -> None:
    op.drop_table('llm_cost_rollup')
    op.drop_index('ix_llm_cost_totals_by_cost', table_name='llm_cost_totals')
    op.drop_table('llm_cost_totals')
