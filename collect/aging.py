"""Open receivables by aging bucket: the first thing dunning looks at."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlmodel import col

from sync.models import Invoice

BUCKETS = ("current", "1-30", "31-60", "61-90", "90+")
OPEN_STATUSES = ("open", "partially_paid")


def bucket_for(due: date | None, today: date) -> str:
    if due is None or due >= today:
        return "current"
    late = (today - due).days
    if late <= 30:
        return "1-30"
    if late <= 60:
        return "31-60"
    if late <= 90:
        return "61-90"
    return "90+"


@dataclass
class AgingReport:
    today: date
    balances: dict[str, dict[str, Decimal]] = field(default_factory=dict)
    """bucket -> currency -> open balance"""
    counts: dict[str, int] = field(default_factory=dict)

    def total(self, currency: str) -> Decimal:
        return sum((b.get(currency, Decimal(0)) for b in self.balances.values()), Decimal(0))

    def currencies(self) -> list[str]:
        return sorted({c for b in self.balances.values() for c in b})


def aging_report(session: Session, connections: Sequence[str], today: date) -> AgingReport:
    """Sum open balances per bucket and currency, streaming the invoices."""
    report = AgingReport(today, {b: {} for b in BUCKETS}, dict.fromkeys(BUCKETS, 0))
    rows = session.execute(
        sa.select(col(Invoice.due_date), col(Invoice.currency), col(Invoice.balance))
        .where(
            col(Invoice.connection_id).in_(connections),
            col(Invoice.status).in_(OPEN_STATUSES),
        )
        .execution_options(yield_per=5000)
    )
    for due, currency, balance in rows:
        bucket = bucket_for(due, today)
        per_currency = report.balances[bucket]
        per_currency[currency] = per_currency.get(currency, Decimal(0)) + balance
        report.counts[bucket] += 1
    return report
