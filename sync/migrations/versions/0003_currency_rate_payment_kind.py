"""exchange rate on documents; payment kind (payment, overpayment, prepayment)

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import sync.models

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("invoice", "payment", "credit_note"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("currency_rate", sync.models.RateType(), nullable=True))
    with op.batch_alter_table("payment") as batch:
        batch.add_column(sa.Column("kind", sa.String(length=20), nullable=False, server_default="payment"))


def downgrade() -> None:
    with op.batch_alter_table("payment") as batch:
        batch.drop_column("kind")
    for table in ("invoice", "payment", "credit_note"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("currency_rate")
