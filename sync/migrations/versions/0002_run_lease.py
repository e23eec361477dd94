"""run lease on the connection: one sync per connection at a time, across processes

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import sync.models

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("connection") as batch:
        batch.add_column(sa.Column("run_owner", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("run_lease_until", sync.models.UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("connection") as batch:
        batch.drop_column("run_lease_until")
        batch.drop_column("run_owner")
