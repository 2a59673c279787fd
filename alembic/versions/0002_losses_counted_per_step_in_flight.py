"""losses counted per step in flight; an index for runs a producer wrote without a lease

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 16:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ACTIVE = "status IN ('queued', 'running')"


def upgrade() -> None:
    op.add_column(
        "geo_runs",
        sa.Column("in_flight_steps", postgresql.ARRAY(sa.Integer()), server_default="{}", nullable=False),
    )
    op.add_column(
        "geo_runs",
        sa.Column("step_losses", postgresql.JSONB(astext_type=sa.Text()), server_default="{}", nullable=False),
    )
    # A loss counted at the old cursor becomes a loss of the step at that index.
    op.execute(
        "UPDATE geo_runs SET step_losses = jsonb_build_object(lost_at_index::text, losses_at_step) "
        "WHERE lost_at_index IS NOT NULL AND losses_at_step > 0"
    )
    op.drop_column("geo_runs", "losses_at_step")
    op.drop_column("geo_runs", "lost_at_index")
    op.create_index(
        "ix_geo_runs_unleased", "geo_runs", ["created_at"], unique=False,
        postgresql_where=sa.text(f"{ACTIVE} AND lease_expires_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_geo_runs_unleased", table_name="geo_runs", postgresql_where=sa.text(f"{ACTIVE} AND lease_expires_at IS NULL"))
    op.add_column("geo_runs", sa.Column("lost_at_index", sa.Integer(), nullable=True))
    op.add_column("geo_runs", sa.Column("losses_at_step", sa.Integer(), server_default="0", nullable=False))
    op.drop_column("geo_runs", "step_losses")
    op.drop_column("geo_runs", "in_flight_steps")
