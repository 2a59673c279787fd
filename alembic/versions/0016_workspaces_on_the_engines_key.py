"""workspaces on the engine's key: a workspace may have no provider key of its own (its runs then call
with OPENAI_API_KEY and share the engine's limits fairly with the other workspaces that do)

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07 23:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = '0016'
down_revision: str | None = '0015'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.alter_column('workspaces', 'api_key_encrypted', existing_type=sa.Text(), nullable=True)


def downgrade() -> None:
    shared = op.get_bind().scalar(sa.text("SELECT count(*) FROM workspaces WHERE api_key_encrypted IS NULL"))
    if shared:
        raise RuntimeError(f"{shared} workspace(s) use the engine's key: give each a key of its own "
                           "(dataengine workspaces set-key ID) before downgrading")
    op.alter_column('workspaces', 'api_key_encrypted', existing_type=sa.Text(), nullable=False)
