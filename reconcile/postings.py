"""What the books must show for the money the processor moved: postings, decided once each.

:func:`derive_postings` reads the processor's tables (payments, payouts and their
balance lines) and journals one ``posting`` entry per effect, keyed
``post:{tenant}:{connection}:{kind}:{id}``, where ``id`` is the processor's own
id (PaymentIntent, balance transaction, payout). Deriving again journals nothing
new: the keys already exist.

* **payment**: a payment that succeeded (and was not returned) against an
  invoice of a connection with write-back, received into the clearing account.
* **fee**: each balance line's fee, an expense paid from the clearing account,
  booked to the connection of the payment it was charged on.
* **payout**: a paid payout, once its lines are loaded, moves the net from the
  clearing account to the bank, with the payout id as its reference. When one
  processor account pays for several ledgers, each ledger's deposit is the net
  of its own lines; lines of no ledger's payment (payout fees, adjustments) go
  to the first ledger with write-back.

Credit applications are journaled by the auto-pay planner (``apply_credit``)
and posted by the same handler.
"""

from __future__ import annotations

import zoneinfo
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlmodel import col

from connectors.base import PostingKind
from sync import journal
from sync.models import BalanceLineRow, Invoice, Payout, ProcessorPayment

KIND = "posting"


@dataclass(frozen=True)
class Accounts:
    """A connection's write-back accounts (the ledger's own identifiers)."""

    clearing: str
    bank: str
    fees: str


def posting_key(tenant: str, connection: str, kind: PostingKind, ident: str) -> str:
    return f"post:{tenant}:{connection}:{kind.value}:{ident}"


def _intent(tenant: str, connection: str, kind: PostingKind, ident: str, payload: dict[str, Any]) -> journal.Intent:
    key = posting_key(tenant, connection, kind, ident)
    body = {"connection": connection, "posting_kind": kind.value, "reference": key, **payload}
    return journal.Intent(key, tenant, KIND, body, f"{kind.value}:{ident}")


@dataclass
class Derived:
    payments: int = 0
    fees: int = 0
    payouts: int = 0

    def total(self) -> int:
        return self.payments + self.fees + self.payouts


def derive_postings(
    session: Session,
    tenant: str,
    ledgers: Mapping[str, Accounts],
    timezone: str,
    now: datetime,
) -> Derived:
    """Journal every posting the processor's tables call for (in the caller's transaction)."""
    tz = zoneinfo.ZoneInfo(timezone)
    derived = Derived()
    if not ledgers:
        return derived
    connections = list(ledgers)

    def day(moment: datetime | None) -> date:
        return (moment or now).astimezone(tz).date()

    payments = session.execute(
        sa.select(ProcessorPayment, col(Invoice.customer_external_id))
        .join(
            Invoice,
            sa.and_(
                col(Invoice.connection_id) == col(ProcessorPayment.connection_id),
                col(Invoice.external_id) == col(ProcessorPayment.invoice_external_id),
            ),
            isouter=True,
        )
        .where(
            col(ProcessorPayment.tenant_id) == tenant,
            col(ProcessorPayment.state) == "succeeded",
            col(ProcessorPayment.returned).is_(False),
            col(ProcessorPayment.connection_id).in_(connections),
            col(ProcessorPayment.invoice_external_id).is_not(None),
        )
    ).all()
    owner_of: dict[str, str] = {}
    for payment, invoice_customer in payments:
        assert payment.connection_id is not None
        ident = payment.processor_id or payment.key
        if payment.processor_id:
            owner_of[payment.processor_id] = payment.connection_id
        payload = {
            "processor_key": payment.key,
            "invoice_external_id": payment.invoice_external_id,
            "customer_external_id": payment.customer_external_id or invoice_customer,
            "amount": payment.amount,
            "currency": payment.currency,
            "date": day(payment.created_at).isoformat(),
            "account": ledgers[payment.connection_id].clearing,
        }
        if journal.record(session, _intent(tenant, payment.connection_id, PostingKind.PAYMENT, ident, payload), now):
            derived.payments += 1
    first = connections[0]
    lines = session.execute(
        sa.select(BalanceLineRow, col(Payout.arrival_date))
        .join(Payout, col(Payout.payout_id) == col(BalanceLineRow.payout_id))
        .where(col(BalanceLineRow.tenant_id) == tenant)
    ).all()
    for line, _arrival in lines:
        if line.fee == 0:
            continue
        connection = owner_of.get(line.payment_processor_id or "", first)
        payload = {
            "amount": line.fee,
            "currency": line.currency,
            "date": day(line.created).isoformat(),
            "from_account": ledgers[connection].clearing,
            "expense_account": ledgers[connection].fees,
            "description": f"Processing fee ({line.type} {line.source_id or line.id})",
            "contact_name": "Payment processor",
        }
        if journal.record(session, _intent(tenant, connection, PostingKind.FEE, line.id, payload), now):
            derived.fees += 1
    derived.payouts = _payouts(session, tenant, ledgers, owner_of, first, day, now)
    return derived


def _payouts(
    session: Session,
    tenant: str,
    ledgers: Mapping[str, Accounts],
    owner_of: Mapping[str, str],
    first: str,
    day: Any,
    now: datetime,
) -> int:
    recorded = 0
    paid = session.execute(
        sa.select(Payout).where(
            col(Payout.tenant_id) == tenant, col(Payout.status) == "paid", col(Payout.lines_loaded_at).is_not(None)
        )
    ).scalars()
    for payout in paid:
        shares: dict[str, Decimal] = defaultdict(Decimal)
        for line in session.execute(
            sa.select(BalanceLineRow).where(col(BalanceLineRow.payout_id) == payout.payout_id)
        ).scalars():
            shares[owner_of.get(line.payment_processor_id or "", first)] += line.net
        for connection, net in sorted(shares.items()):
            if net <= 0:
                continue
            arrival = payout.arrival_date.isoformat() if payout.arrival_date else day(None).isoformat()
            payload = {
                "payout_id": payout.payout_id,
                "amount": net,
                "currency": payout.currency,
                "date": arrival,
                "from_account": ledgers[connection].clearing,
                "to_account": ledgers[connection].bank,
            }
            intent = _intent(tenant, connection, PostingKind.PAYOUT, payout.payout_id, payload)
            intent = journal.Intent(
                intent.key, tenant, KIND, {**intent.payload, "reference": payout.payout_id}, intent.subject
            )
            if journal.record(session, intent, now):
                recorded += 1
    return recorded
