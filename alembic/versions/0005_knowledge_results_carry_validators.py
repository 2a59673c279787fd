"""knowledge refresh results carry the source's validators, hash and title

The checkpoint statement copies them to the source row itself (Job.checkpoint_sql), so recording
a checkpoint of unchanged sources takes one round trip.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 19:50:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = (("etag", 500), ("last_modified", 100), ("content_hash", 64), ("title", 500))


def upgrade() -> None:
    for name, length in COLUMNS:
        op.add_column('knowledge_refresh_results', sa.Column(name, sa.String(length=length), nullable=True))


def downgrade() -> None:
    for name, _ in reversed(COLUMNS):
        op.drop_column('knowledge_refresh_results', name)
