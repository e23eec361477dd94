"""write-back: the exchange rate of each balance line (a converted charge's rate)

Revision ID: 0006_writeback
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import sync.models

revision = "0006_writeback"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("balance_line") as batch:
        batch.add_column(sa.Column("exchange_rate", sync.models.RateType(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("balance_line") as batch:
        batch.drop_column("exchange_rate")
