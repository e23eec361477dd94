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
* **surcharge**: a payment's card surcharge, income received into clearing.
* **payment_reversal**: a posted payment undone when its bank debit was
  returned, a chargeback took the money back, or it was refunded in full; a
  chargeback won applies the payment again (a new payment posting). A partial
  refund is not reversed: the report shows it for a person to credit.
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

from collect.standing import CREDIT_KIND, PROCESSOR_CREDIT, available_credits, outstanding_charges
from connectors.base import PostingKind
from connectors.values import show_money
from sync import journal
from sync.models import (
    BalanceLineRow,
    Invoice,
    JournalEntry,
    Payout,
    ProcessorDispute,
    ProcessorPayment,
    ProcessorRefund,
)

KIND = "posting"


@dataclass(frozen=True)
class Accounts:
    """A connection's write-back accounts (the ledger's own identifiers)."""

    clearing: str
    bank: str
    fees: str
    surcharges: str | None = None
    """Income account for card surcharges (None: surcharge postings are parked until one is configured)."""


def posting_key(tenant: str, connection: str, kind: PostingKind, ident: str) -> str:
    return f"post:{tenant}:{connection}:{kind.value}:{ident}"


def _intent(
    tenant: str, connection: str, kind: PostingKind, ident: str, payload: dict[str, Any], reference: str | None = None
) -> journal.Intent:
    key = posting_key(tenant, connection, kind, ident)
    body = {"connection": connection, "posting_kind": kind.value, "reference": reference or key, **payload}
    return journal.Intent(key, tenant, KIND, body, f"{kind.value}:{ident}")


@dataclass
class Derived:
    payments: int = 0
    fees: int = 0
    payouts: int = 0
    surcharges: int = 0
    reversals: int = 0
    allocations: int = 0
    """Shares of balance payments (a link paid for a customer's whole balance) applied to invoices."""

    def total(self) -> int:
        return self.payments + self.fees + self.payouts + self.surcharges + self.reversals + self.allocations


REVERSING_DISPUTES = ("warning_needs_response", "warning_under_review", "needs_response", "under_review", "lost")
"""A card dispute takes the money back when it opens; ``won`` gives it back (the payment is applied again)."""


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

    intents: list[journal.Intent] = []

    def record(connection: str, kind: PostingKind, ident: str, payload: dict[str, Any]) -> None:
        intents.append(_intent(tenant, connection, kind, ident, payload))

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
            col(ProcessorPayment.connection_id).in_(connections),
            col(ProcessorPayment.invoice_external_id).is_not(None),
        )
    ).all()
    owner_of: dict[str, str] = {}
    posted = _posted_payments(session, tenant)
    reversals = _reversals(session, tenant)
    for payment, invoice_customer in payments:
        assert payment.connection_id is not None
        connection = payment.connection_id
        accounts = ledgers[connection]
        ident = payment.processor_id or payment.key
        if payment.processor_id:
            owner_of[payment.processor_id] = connection
        customer = payment.customer_external_id or invoice_customer
        payload = {
            "processor_key": payment.key,
            "invoice_external_id": payment.invoice_external_id,
            "customer_external_id": customer,
            "amount": payment.amount,
            "currency": payment.currency,
            "date": day(payment.created_at).isoformat(),
            "account": accounts.clearing,
        }
        if not payment.returned:
            record(connection, PostingKind.PAYMENT, ident, payload)
        if payment.surcharge > 0 and not payment.returned:
            surcharge = {
                "customer_external_id": customer,
                "amount": payment.surcharge,
                "currency": payment.currency,
                "date": day(payment.created_at).isoformat(),
                "account": accounts.clearing,
                "income_account": accounts.surcharges,
                "description": f"Card surcharge on invoice {payment.invoice_external_id}",
            }
            record(connection, PostingKind.SURCHARGE, ident, surcharge)
        ledger_id = posted.get(posting_key(tenant, connection, PostingKind.PAYMENT, ident))
        if ledger_id is None:
            continue
        for cause, reason, reapply in _causes(payment, reversals.get(payment.processor_id or "", [])):
            reversal = {
                "payment_external_id": ledger_id,
                "amount": payment.amount,
                "currency": payment.currency,
                "date": day(now).isoformat(),
                "reason": reason,
            }
            record(connection, PostingKind.PAYMENT_REVERSAL, f"{ident}:{cause}", reversal)
            if reapply:
                record(connection, PostingKind.PAYMENT, f"{ident}:{cause}-won", payload)
    first = connections[0]
    for pi, owner in session.execute(
        sa.select(col(ProcessorPayment.processor_id), col(ProcessorPayment.connection_id)).where(
            col(ProcessorPayment.tenant_id) == tenant,
            col(ProcessorPayment.processor_id).is_not(None),
            col(ProcessorPayment.connection_id).in_(connections),
        )
    ):
        if pi is not None and owner is not None:
            owner_of.setdefault(pi, owner)
    lines = list(session.execute(sa.select(BalanceLineRow).where(col(BalanceLineRow.tenant_id) == tenant)).scalars())
    for line in lines:
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
        record(connection, PostingKind.FEE, line.id, payload)
    intents += _payouts(session, tenant, ledgers, owner_of, first, lines, day)
    kinds = {intent.key: str(intent.payload["posting_kind"]) for intent in intents}
    for key in journal.record_many(session, intents, now):
        match kinds[key]:
            case PostingKind.PAYMENT:
                derived.payments += 1
            case PostingKind.SURCHARGE:
                derived.surcharges += 1
            case PostingKind.PAYMENT_REVERSAL:
                derived.reversals += 1
            case PostingKind.FEE:
                derived.fees += 1
            case PostingKind.PAYOUT:
                derived.payouts += 1
    derived.allocations = allocate_balance_payments(session, tenant, connections, now)
    return derived


def allocate_balance_payments(session: Session, tenant: str, connections: list[str], now: datetime) -> int:
    """Spread each payment made for a customer's whole balance over the customer's open invoices.

    Oldest invoice first, each up to what it owes less what is on its way. Each share is an ``apply_credit``
    entry (the same decision auto-pay makes when it applies that cash first), posted as a payment into
    clearing. What is left over stays with the processor payment (the report says how much).
    """
    credits = available_credits(session, tenant, connections)
    on_way = outstanding_charges(session, tenant)
    recorded = 0
    for (connection, customer), found in credits.items():
        balance_payments = [c for c in found if c.source == PROCESSOR_CREDIT]
        if not balance_payments:
            continue
        invoices = session.execute(
            sa.select(col(Invoice.external_id), col(Invoice.balance), col(Invoice.currency))
            .where(
                col(Invoice.connection_id) == connection,
                col(Invoice.customer_external_id) == customer,
                col(Invoice.status).in_(("open", "partially_paid")),
            )
            .order_by(col(Invoice.issue_date), col(Invoice.external_id))
        ).all()
        owed = {i: b - on_way.get((connection, i), Decimal(0)) for i, b, _ in invoices}
        for credit in balance_payments:
            left = credit.available
            for invoice, _balance, currency in invoices:
                if left <= 0:
                    break
                share = min(left, owed[invoice])
                if currency != credit.currency or share <= 0:
                    continue
                intent = journal.Intent(
                    key=f"{CREDIT_KIND}:{tenant}:{connection}:{invoice}:{PROCESSOR_CREDIT}:{credit.external_id}:writeback",
                    tenant=tenant,
                    kind=CREDIT_KIND,
                    payload={
                        "connection": connection,
                        "invoice": invoice,
                        "customer": customer,
                        "source": PROCESSOR_CREDIT,
                        "source_id": credit.external_id,
                        "amount": share,
                        "currency": currency,
                    },
                    subject=f"invoice:{connection}:{invoice}",
                )
                if journal.record(session, intent, now):
                    recorded += 1
                    owed[invoice] -= share
                    left -= share
    return recorded


def _posted_payments(session: Session, tenant: str) -> dict[str, str]:
    """Payment postings done, by key: the ledger's id of each payment (what a reversal voids)."""
    return {
        key: str(external_id)
        for key, external_id in session.execute(
            sa.select(col(JournalEntry.key), col(JournalEntry.external_id)).where(
                col(JournalEntry.tenant_id) == tenant,
                col(JournalEntry.kind) == KIND,
                col(JournalEntry.status) == "done",
                col(JournalEntry.subject).like(f"{PostingKind.PAYMENT.value}:%"),
                col(JournalEntry.external_id).is_not(None),
            )
        )
    }


@dataclass(frozen=True)
class _Cause:
    ident: str
    reason: str
    reapply: bool
    refunded: Decimal | None = None
    """For a refund: how much, all refunds together (only a full refund reverses the payment)."""


def _reversals(session: Session, tenant: str) -> dict[str, list[_Cause]]:
    """Per PaymentIntent: disputes that took the money back (and whether they were won), full refunds."""
    causes: dict[str, list[_Cause]] = defaultdict(list)
    for dispute in session.execute(
        sa.select(ProcessorDispute).where(col(ProcessorDispute.tenant_id) == tenant)
    ).scalars():
        if dispute.payment_processor_id and (dispute.status in REVERSING_DISPUTES or dispute.status == "won"):
            why = f"chargeback {dispute.dispute_id}" + (f" ({dispute.reason})" if dispute.reason else "")
            causes[dispute.payment_processor_id].append(_Cause(dispute.dispute_id, why, dispute.status == "won"))
    refunded: dict[str, Decimal] = defaultdict(Decimal)
    currency_of: dict[str, str] = {}
    for pi, amount, currency in session.execute(
        sa.select(
            col(ProcessorRefund.payment_processor_id), col(ProcessorRefund.amount), col(ProcessorRefund.currency)
        ).where(
            col(ProcessorRefund.tenant_id) == tenant,
            col(ProcessorRefund.status) == "succeeded",
            col(ProcessorRefund.payment_processor_id).is_not(None),
        )
    ):
        if pi is not None:
            refunded[pi] += amount
            currency_of[pi] = currency
    for pi, amount in refunded.items():
        why = f"refunded in full ({show_money(amount, currency_of[pi])})"
        causes[pi].append(_Cause("refund", why, False, amount))
    return causes


def _causes(payment: ProcessorPayment, found: list[_Cause]) -> list[tuple[str, str, bool]]:
    """Why the posted payment must be undone: a returned bank debit, a chargeback, a full refund."""
    result = []
    if payment.returned:
        result.append(("return", f"bank debit returned ({payment.decline_code or 'no code'})", False))
    for cause in found:
        if cause.refunded is not None and cause.refunded < payment.amount + payment.surcharge:
            continue  # partial: reported, not reversed (see the reconciliation report)
        result.append((cause.ident, cause.reason, cause.reapply))
    return result


def _payouts(
    session: Session,
    tenant: str,
    ledgers: Mapping[str, Accounts],
    owner_of: Mapping[str, str],
    first: str,
    lines: list[BalanceLineRow],
    day: Any,
) -> list[journal.Intent]:
    """A deposit per paid payout with its lines loaded, per ledger: the net of that ledger's lines."""
    shares: dict[str, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for line in lines:
        shares[line.payout_id][owner_of.get(line.payment_processor_id or "", first)] += line.net
    intents = []
    paid = session.execute(
        sa.select(Payout).where(
            col(Payout.tenant_id) == tenant, col(Payout.status) == "paid", col(Payout.lines_loaded_at).is_not(None)
        )
    ).scalars()
    for payout in paid:
        for connection, net in sorted(shares[payout.payout_id].items()):
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
            intents.append(_intent(tenant, connection, PostingKind.PAYOUT, payout.payout_id, payload, payout.payout_id))
    return intents
