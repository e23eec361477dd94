"""How risky a customer is to collect from, and why: a score made of points, each with its reason.

A person must be able to read why a customer is ``high``, so every point added
comes with a sentence, and the thresholds are this table (nothing else counts):

==========================================  ==========  ======  =======  =======  ======
factor                                      0 points    +1      +2       +3       +4
==========================================  ==========  ======  =======  =======  ======
average days late, invoices paid in full    on time     1-14    15-29    30-59    60+
  in the last 365 days (payment day minus
  due day, early counts as on time)
broken promises to pay, last 365 days       none        -       1        -        2 (3+: +6)
declined charges, last 90 days              none        1       2        3+       -
oldest overdue open invoice, days past due  none        1-30    31-60    61-90    91+
open balance, while anything is overdue     < 1,000     1,000+  10,000+  50,000+  -
==========================================  ==========  ======  =======  =======  ======

Levels: a score of 0-2 is ``low``, 3-5 ``medium``, 6 or more ``high``.

Details that the table does not show:

- An invoice counts towards the average once its status is ``paid``, on the day
  of its last payment; that day must fall in the last 365 days.
- A promise counts when its outcome is ``broken`` and it ended (was released)
  in the last 365 days, or, not released, its promised day is in them.
- Balances are compared per currency, unconverted; the largest counts.
- The overdue factor and the balance factor make one sentence
  (``owes USD 12,400.00, 62 days past due``) whose points are their sum.
- A customer with no invoice paid in the window gets the reason
  ``no payment history`` (no points); one that pays on time, ``paid on time on
  average over N invoices``; one with a balance and nothing overdue, ``owes …,
  nothing past due``. Those sentences add no points.

Everything is read with a handful of grouped queries for the whole tenant (or
the customers asked about), returning plain rows: no query per customer, no
ORM object per row. Day differences are taken in SQL with each database's own
date arithmetic; money is summed in SQL on PostgreSQL and in Python on SQLite
(which stores it as text).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlmodel import col

from collect.aging import OPEN_STATUSES
from collect.dunning_policy import RiskLevel
from collect.standing import DECLINED, CustomerRef
from connectors.values import minor_unit
from sync.models import Customer, Invoice, InvoiceHold, Payment, PaymentApplication, ProcessorPayment

HISTORY_DAYS = 365
DECLINE_DAYS = 90
MEDIUM_FROM = 3
HIGH_FROM = 6
LATE_POINTS = ((60, 4), (30, 3), (15, 2), (1, 1))
"""(average days late at least, points), highest first."""
PROMISE_POINTS_EACH = 2
PROMISE_POINTS_MAX = 6
DECLINE_POINTS_MAX = 3
OVERDUE_POINTS = ((91, 4), (61, 3), (31, 2), (1, 1))
"""(days past due at least, points), highest first."""
BALANCE_POINTS = ((Decimal(50_000), 3), (Decimal(10_000), 2), (Decimal(1_000), 1))
"""(open balance at least, points), highest first."""
RISK_WEIGHT: Mapping[RiskLevel, int] = {"low": 1, "medium": 2, "high": 3}
SQL_FILTER_LIMIT = 500
"""Up to this many customers asked about are filtered in SQL; more are filtered while reading."""
DEAD_PAYMENT_STATUSES = ("void", "deleted")
Query = sa.Select[*tuple[Any, ...]]


@dataclass(frozen=True, slots=True)
class RiskAssessment:
    level: RiskLevel
    score: int
    reasons: tuple[str, ...]
    points: tuple[int, ...] = ()
    """The points each reason added (same order as ``reasons``)."""


@dataclass(slots=True)
class RiskFacts:
    """What the score is made of, for one customer."""

    paid_invoices: int = 0
    """Invoices paid in full in the window."""
    days_late_total: int = 0
    """Their days late added up (early counts as 0)."""
    broken_promises: int = 0
    declines: int = 0
    balances: dict[str, Decimal] = field(default_factory=dict)
    """Open balance per currency."""
    oldest_overdue: date | None = None
    """Due day of the oldest open invoice past due."""
    oldest_overdue_currency: str | None = None

    def days_overdue(self, today: date) -> int:
        return (today - self.oldest_overdue).days if self.oldest_overdue is not None else 0

    def average_days_late(self) -> int:
        """Rounded half up to whole days (0 with no history)."""
        if not self.paid_invoices:
            return 0
        exact = Decimal(self.days_late_total) / Decimal(self.paid_invoices)
        return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def level_for(score: int) -> RiskLevel:
    if score >= HIGH_FROM:
        return "high"
    if score >= MEDIUM_FROM:
        return "medium"
    return "low"


def _points(value: Any, table: Iterable[tuple[Any, int]]) -> int:
    return next((points for least, points in table if value >= least), 0)


def _plural(count: int, one: str, many: str | None = None) -> str:
    return f"{count} {one if count == 1 else (many or one + 's')}"


def format_amount(amount: Decimal, currency: str) -> str:
    """``USD 12,400.00``: the currency first, thousands separated, to its minor unit."""
    places = minor_unit(currency)
    value = amount.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    return f"{currency} {value:,.{places}f}"


def score(facts: RiskFacts, today: date) -> RiskAssessment:
    """The points, level and reasons for one customer's facts (see the module's table)."""
    reasons: list[tuple[str, int]] = []
    if facts.paid_invoices:
        late = facts.average_days_late()
        over = _plural(facts.paid_invoices, "invoice")
        if late:
            reasons.append((f"paid {_plural(late, 'day')} late on average over {over}", _points(late, LATE_POINTS)))
        else:
            reasons.append((f"paid on time on average over {over}", 0))
    else:
        reasons.append(("no payment history", 0))
    if facts.broken_promises:
        points = min(PROMISE_POINTS_MAX, PROMISE_POINTS_EACH * facts.broken_promises)
        reasons.append((f"{_plural(facts.broken_promises, 'broken promise')} this year", points))
    if facts.declines:
        points = min(DECLINE_POINTS_MAX, facts.declines)
        reasons.append((f"{_plural(facts.declines, 'declined charge')} in {DECLINE_DAYS} days", points))
    owed = {c: b for c, b in sorted(facts.balances.items()) if b > 0}
    if owed:
        owes = " and ".join(format_amount(b, c) for c, b in owed.items())
        days = facts.days_overdue(today)
        if days > 0:
            points = _points(days, OVERDUE_POINTS) + _points(max(owed.values()), BALANCE_POINTS)
            reasons.append((f"owes {owes}, {_plural(days, 'day')} past due", points))
        else:
            reasons.append((f"owes {owes}, nothing past due", 0))
    total = sum(p for _, p in reasons)
    return RiskAssessment(level_for(total), total, tuple(r for r, _ in reasons), tuple(p for _, p in reasons))


def assess_customers(
    session: Session,
    tenant: str,
    connections: Sequence[str],
    today: date,
    *,
    customers: Collection[CustomerRef] | None = None,
) -> dict[CustomerRef, RiskAssessment]:
    """Every customer of ``connections`` (or just ``customers``) with its risk level and the reasons."""
    return {
        ref: score(facts, today)
        for ref, facts in risk_facts(session, tenant, connections, today, customers=customers).items()
    }


def risk_facts(
    session: Session,
    tenant: str,
    connections: Sequence[str],
    today: date,
    *,
    customers: Collection[CustomerRef] | None = None,
) -> dict[CustomerRef, RiskFacts]:
    """The facts behind the score, for every customer of ``connections`` (or just those of ``customers``
    that belong to ``connections``)."""
    connections = list(connections)
    wanted = {ref for ref in customers if ref[0] in connections} if customers is not None else None
    if wanted is not None:
        connections = sorted({connection for connection, _ in wanted})
    if not connections:
        return {}
    facts: dict[CustomerRef, RiskFacts] = {ref: RiskFacts() for ref in wanted or ()}
    ids = _sql_ids(wanted)

    def get(connection: str | None, customer: str | None) -> RiskFacts | None:
        if connection is None or customer is None:
            return None
        ref = (connection, customer)
        found = facts.get(ref)
        if found is None and wanted is None:
            found = facts[ref] = RiskFacts()
        return found

    if wanted is None:
        for connection, customer in session.execute(
            sa.select(col(Customer.connection_id), col(Customer.external_id)).where(
                col(Customer.connection_id).in_(connections), col(Customer.deleted).is_(False)
            )
        ):
            get(connection, customer)

    for connection, customer, paid, late in session.execute(_paid_history(session, connections, today, ids)):
        found = get(connection, customer)
        if found is not None:
            found.paid_invoices += int(paid)
            found.days_late_total += int(late or 0)
    for connection, customer, count in session.execute(_broken_promises(connections, today, ids)):
        found = get(connection, customer)
        if found is not None:
            found.broken_promises += int(count)
    for connection, customer, count in session.execute(_declines(tenant, connections, today, ids)):
        found = get(connection, customer)
        if found is not None:
            found.declines += int(count)
    for connection, customer, currency, balance, oldest in _open_positions(session, connections, today, ids):
        found = get(connection, customer)
        if found is None:
            continue
        found.balances[currency] = found.balances.get(currency, Decimal(0)) + balance
        if oldest is not None and (found.oldest_overdue is None or oldest < found.oldest_overdue):
            found.oldest_overdue = oldest
            found.oldest_overdue_currency = currency
    return facts


def _sql_ids(wanted: set[CustomerRef] | None) -> list[str] | None:
    """Customer ids to filter on in SQL (None: read everything and filter while reading)."""
    if wanted is None or len(wanted) > SQL_FILTER_LIMIT:
        return None
    return sorted({customer for _, customer in wanted})


def _days_late(session: Session, paid_on: Any, due: Any) -> sa.ColumnElement[int]:
    """``paid_on - due`` in whole days, 0 when paid early, in this database's own date arithmetic."""
    if session.get_bind().dialect.name == "sqlite":
        days = sa.cast(sa.func.julianday(paid_on) - sa.func.julianday(due), sa.Integer)
        return sa.func.max(days, 0, type_=sa.Integer)  # SQLite's max() of two values is the scalar one
    return sa.func.greatest(sa.cast(paid_on - due, sa.Integer), 0, type_=sa.Integer)  # date - date: days


def _paid_history(session: Session, connections: list[str], today: date, ids: list[str] | None) -> Query:
    """Per customer: invoices paid in full whose last payment is in the window, and their days late summed.

    The last payment day per invoice is grouped from the applications first, so
    the invoice is then found by its key (never a scan of payments per invoice).
    Customers whose paid invoices are all older than the window come back with 0.
    """
    paid_on = sa.func.max(col(Payment.payment_date))
    last_paid: Query = (
        sa.select(
            col(Payment.connection_id).label("connection"),
            col(PaymentApplication.target_external_id).label("invoice"),
            paid_on.label("paid_on"),
        )
        .select_from(PaymentApplication)
        .join(Payment, col(Payment.id) == col(PaymentApplication.payment_id))
        .where(
            col(PaymentApplication.target_entity) == "invoice",
            col(Payment.connection_id).in_(connections),
            col(Payment.status).not_in(DEAD_PAYMENT_STATUSES),
            col(Payment.payment_date).is_not(None),
        )
        .group_by(col(Payment.connection_id), col(PaymentApplication.target_external_id))
    )
    if ids is not None:
        theirs = sa.select(col(Invoice.external_id)).where(
            col(Invoice.connection_id).in_(connections), col(Invoice.customer_external_id).in_(ids)
        )
        last_paid = last_paid.where(col(PaymentApplication.target_external_id).in_(theirs))
    paid = last_paid.subquery()
    per_invoice: Query = (
        sa.select(
            col(Invoice.connection_id).label("connection"),
            col(Invoice.customer_external_id).label("customer"),
            col(Invoice.due_date).label("due"),
            paid.c.paid_on,
        )
        .select_from(paid)
        .join(
            Invoice,
            sa.and_(col(Invoice.connection_id) == paid.c.connection, col(Invoice.external_id) == paid.c.invoice),
        )
        .where(
            col(Invoice.status) == "paid",
            col(Invoice.due_date).is_not(None),
            col(Invoice.customer_external_id).is_not(None),
        )
    )
    if ids is not None:
        per_invoice = per_invoice.where(col(Invoice.customer_external_id).in_(ids))
    inv = per_invoice.subquery()
    # The window is applied while counting, not as a filter: PostgreSQL cannot estimate a filter on
    # an aggregate and would then look every invoice up one by one instead of hashing.
    in_window = inv.c.paid_on.between(today - timedelta(days=HISTORY_DAYS), today)
    late = _days_late(session, inv.c.paid_on, inv.c.due)
    return sa.select(
        inv.c.connection,
        inv.c.customer,
        sa.func.sum(sa.case((in_window, 1), else_=0)),
        sa.func.sum(sa.case((in_window, late), else_=0)),
    ).group_by(inv.c.connection, inv.c.customer)


def _start_of(day: date) -> datetime:
    return datetime.combine(day, time(), UTC)


def _broken_promises(connections: list[str], today: date, ids: list[str] | None) -> Query:
    start = today - timedelta(days=HISTORY_DAYS)
    query: Query = (
        sa.select(col(Invoice.connection_id), col(Invoice.customer_external_id), sa.func.count())
        .select_from(InvoiceHold)
        .join(
            Invoice,
            sa.and_(
                col(Invoice.connection_id) == col(InvoiceHold.connection_id),
                col(Invoice.external_id) == col(InvoiceHold.invoice_external_id),
            ),
        )
        .where(
            col(InvoiceHold.connection_id).in_(connections),
            col(InvoiceHold.kind) == "promise",
            col(InvoiceHold.outcome) == "broken",
            sa.or_(
                col(InvoiceHold.released_at) >= _start_of(start),
                sa.and_(col(InvoiceHold.released_at).is_(None), col(InvoiceHold.until) >= start),
            ),
        )
        .group_by(col(Invoice.connection_id), col(Invoice.customer_external_id))
    )
    if ids is not None:
        query = query.where(col(Invoice.customer_external_id).in_(ids))
    return query


def _declines(tenant: str, connections: list[str], today: date, ids: list[str] | None) -> Query:
    """Declined charge attempts per customer (the charge's own customer, else its invoice's)."""
    customer = sa.func.coalesce(col(ProcessorPayment.customer_external_id), col(Invoice.customer_external_id))
    query: Query = (
        sa.select(col(ProcessorPayment.connection_id), customer, sa.func.count())
        .select_from(ProcessorPayment)
        .outerjoin(
            Invoice,
            sa.and_(
                col(Invoice.connection_id) == col(ProcessorPayment.connection_id),
                col(Invoice.external_id) == col(ProcessorPayment.invoice_external_id),
            ),
        )
        .where(
            col(ProcessorPayment.tenant_id) == tenant,
            col(ProcessorPayment.connection_id).in_(connections),
            col(ProcessorPayment.state).in_(DECLINED),
            col(ProcessorPayment.created_at) >= _start_of(today - timedelta(days=DECLINE_DAYS)),
        )
        .group_by(col(ProcessorPayment.connection_id), customer)
    )
    if ids is not None:
        query = query.where(customer.in_(ids))
    return query


OpenRow = tuple[str, str, str, Decimal, date | None]
"""(connection, customer, currency, open balance, oldest overdue due day in that currency)"""


def _open_positions(session: Session, connections: list[str], today: date, ids: list[str] | None) -> Iterable[OpenRow]:
    """Open balance and oldest overdue due day per customer and currency.

    PostgreSQL sums the NUMERIC balances itself; SQLite keeps money as text, so
    its balances are summed here as ``Decimal`` (never as the float SQLite's
    ``sum`` would make of them).
    """
    where = [
        col(Invoice.connection_id).in_(connections),
        col(Invoice.status).in_(OPEN_STATUSES),
        col(Invoice.customer_external_id).is_not(None),
    ]
    if ids is not None:
        where.append(col(Invoice.customer_external_id).in_(ids))
    if session.get_bind().dialect.name != "sqlite":
        overdue_due = sa.case((col(Invoice.due_date) < today, col(Invoice.due_date)), else_=None)
        rows = session.execute(
            sa.select(
                col(Invoice.connection_id),
                col(Invoice.customer_external_id),
                col(Invoice.currency),
                sa.func.sum(col(Invoice.balance)),
                sa.func.min(overdue_due),
            )
            .where(*where, col(Invoice.balance) > Decimal(0))
            .group_by(col(Invoice.connection_id), col(Invoice.customer_external_id), col(Invoice.currency))
        )
        for connection, customer, currency, balance, oldest in rows:
            yield connection, customer, currency, Decimal(balance), oldest
        return
    # SQLite: one row per customer and currency carrying "balance@due" for each open invoice, so that
    # the text amounts are summed here as Decimal without an ORM row per invoice.
    pairs = sa.func.group_concat(
        sa.type_coerce(col(Invoice.balance), sa.String)
        + "@"
        + sa.func.coalesce(sa.type_coerce(col(Invoice.due_date), sa.String), ""),
        " ",
    )
    rows = session.execute(
        sa.select(col(Invoice.connection_id), col(Invoice.customer_external_id), col(Invoice.currency), pairs)
        .where(*where)
        .group_by(col(Invoice.connection_id), col(Invoice.customer_external_id), col(Invoice.currency))
    )
    cutoff = today.isoformat()
    for connection, customer, currency, text in rows:
        total = Decimal(0)
        first_due: str | None = None
        for pair in str(text).split(" "):
            amount, _, due = pair.partition("@")
            value = Decimal(amount)
            if value <= 0:
                continue
            total += value
            if due and due < cutoff and (first_due is None or due < first_due):
                first_due = due
        if total > 0 and customer is not None:
            yield connection, customer, currency, total, date.fromisoformat(first_due) if first_due else None
