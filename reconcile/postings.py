"""What the books must show for the money the processor moved: postings, decided once each.

:func:`derive_postings` reads the processor's tables (payments, payouts and their
balance lines) and journals one ``posting`` entry per effect, keyed
``post:{tenant}:{connection}:{kind}:{id}``, where ``id`` is the processor's own
id (PaymentIntent, balance transaction, payout). Deriving again journals nothing
new: the keys already exist.

* **payment**: a payment that succeeded (and was not returned) against an
  invoice of a connection with write-back, received into the clearing account.
  One in another currency than the tenant's home currency carries the rate the
  processor converted it at (``currency_rate``, home units per unit of the
  payment's currency) and waits until its balance line brings that rate.
* **fee**: each balance line's fee, an expense paid from the clearing account,
  booked to the connection of the payment it was charged on.
* **surcharge**: a payment's card surcharge, income received into clearing.
* **payment_reversal**: a posted payment undone when its bank debit was
  returned, a chargeback took the money back, or it was refunded in full; a
  chargeback won applies the payment again (a new payment posting).
* **surcharge_reversal**: a payment refunded in full (amount and surcharge)
  whose surcharge was posted: the surcharge posting is undone too.
* **refund**: a refund smaller than its payment (all refunds together short of
  amount and surcharge), booked per refund id once the payment is posted: the
  customer got money back from clearing. Once one refund of a payment is booked
  this way, the later ones are too, even when they complete the whole payment.
* **payout**: a paid payout, once its lines are loaded, moves the net from the
  clearing account to the bank, with the payout id as its reference. When one
  processor account pays for several ledgers, each ledger's deposit is the net
  of its own lines; lines of no ledger's payment (payout fees, adjustments) go
  to the first ledger with write-back.
* **payout_debit**: a ledger's net of a paid payout below zero (refunds and
  chargebacks beyond the charges: the processor debited the bank) moves back
  from the bank to clearing, the payout id as its reference. A net of zero
  posts nothing.

Credit applications are journaled by the auto-pay planner (``apply_credit``)
and posted by the same handler. What a payment for a customer's whole balance
leaves after its shares is one ``overpayment`` posting (see
:func:`allocate_balance_payments`).
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
    DocumentLine,
    Invoice,
    JournalEntry,
    Payout,
    ProcessorDispute,
    ProcessorPayment,
    ProcessorRefund,
)

KIND = "posting"


LATE_FEES = "late_fees"
COLLECTION_FEES = "collection_fees"
PRINCIPAL = "principal"


@dataclass(frozen=True)
class AllocationOrder:
    """How a payment for a customer's whole balance is spread: classes of invoices in ``order``, oldest first
    within a class. An invoice whose lines are all ``late_fee_items`` is a late-fee invoice, all
    ``collection_fee_items`` a collection-fee invoice; anything else (no lines, or any other line) is principal."""

    order: tuple[str, ...] = (COLLECTION_FEES, LATE_FEES, PRINCIPAL)
    late_fee_items: frozenset[str] = frozenset()
    collection_fee_items: frozenset[str] = frozenset()

    def class_of(self, items: list[str | None]) -> str:
        if items and all(i is not None and i in self.collection_fee_items for i in items):
            return COLLECTION_FEES
        if items and all(i is not None and i in self.late_fee_items for i in items):
            return LATE_FEES
        return PRINCIPAL

    def rank(self, kind: str) -> int:
        return self.order.index(kind) if kind in self.order else len(self.order)


@dataclass(frozen=True)
class Accounts:
    """A connection's write-back accounts (the ledger's own identifiers)."""

    clearing: str
    bank: str
    fees: str
    surcharges: str | None = None
    """Income account for card surcharges (None: surcharge postings are parked until one is configured)."""
    refunds: str | None = None
    """Xero: the revenue account of a partial refund's credit note."""
    refund_item: str | None = None
    """QuickBooks: the Item of a partial refund's RefundReceipt line."""
    allocation: AllocationOrder = AllocationOrder()
    """The order balance payments are spread over the customer's invoices in."""
    late_fee_item: str | None = None
    """QuickBooks: the Item (its Id) of a late fee's line (required to book late fees)."""
    late_fee_account: str | None = None
    """Xero: the revenue account code of a late fee's line (required to book late fees)."""
    collections_fee_account: str | None = None
    """The expense account of a collections agency's fee (required to book them)."""
    collections_vendor: str | None = None
    """QuickBooks: the Vendor (its Id) a collections agency's bill is from (required to book them there)."""


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
    refunds: int = 0
    """Partial refunds booked (a full refund is a reversal)."""
    allocations: int = 0
    """Shares of balance payments (a link paid for a customer's whole balance) applied to invoices."""

    def total(self) -> int:
        return (
            self.payments
            + self.fees
            + self.payouts
            + self.surcharges
            + self.reversals
            + self.refunds
            + self.allocations
        )


REVERSING_DISPUTES = ("warning_needs_response", "warning_under_review", "needs_response", "under_review", "lost")
"""A card dispute takes the money back when it opens; ``won`` gives it back (the payment is applied again)."""


def derive_postings(
    session: Session,
    tenant: str,
    ledgers: Mapping[str, Accounts],
    timezone: str,
    now: datetime,
    home_currency: str | None = None,
) -> Derived:
    """Journal every posting the processor's tables call for (in the caller's transaction).

    A payment in another currency than ``home_currency`` (the tenant's) is posted with its exchange rate, once
    the processor's balance line for it says the rate (see :func:`payment_rates`); until then it waits.
    """
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
    lines = list(session.execute(sa.select(BalanceLineRow).where(col(BalanceLineRow.tenant_id) == tenant)).scalars())
    rates = payment_rates(lines, home_currency)
    posted = _posted_payments(session, tenant)
    surcharges = _posted_payments(session, tenant, PostingKind.SURCHARGE)
    booked = _booked_refunds(session, tenant)
    reversals = _reversals(session, tenant, booked)
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
        waiting = False
        if home_currency is not None and payment.currency.upper() != home_currency.upper():
            rate = rates.get(payment.processor_id or "")
            if rate is None:
                waiting = True  # for its rate (the report says so): nothing of it is posted before the payment
            else:
                payload["currency_rate"] = rate
        if not payment.returned and not waiting:
            record(connection, PostingKind.PAYMENT, ident, payload)
        if payment.surcharge > 0 and not payment.returned and not waiting:
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
        found = reversals.get(payment.processor_id or "", [])
        for refund in _partial_refunds(payment, found):
            record(
                connection,
                PostingKind.REFUND,
                refund.refund_id,
                {
                    "refund_id": refund.refund_id,
                    "invoice_external_id": payment.invoice_external_id,
                    "customer_external_id": customer,
                    "amount": refund.amount,
                    "currency": refund.currency,
                    "date": day(refund.at).isoformat(),
                    "account": accounts.clearing,
                    "income_account": accounts.refunds,
                    "refund_item": accounts.refund_item,
                    "description": f"Refund {refund.refund_id} of a payment on invoice {payment.invoice_external_id}",
                },
            )
        for cause, reason, reapply in _causes(payment, found):
            reversal = {
                "payment_external_id": ledger_id,
                "amount": payment.amount,
                "currency": payment.currency,
                "date": day(now).isoformat(),
                "reason": reason,
            }
            record(connection, PostingKind.PAYMENT_REVERSAL, f"{ident}:{cause}", reversal)
            surcharge_id = surcharges.get(posting_key(tenant, connection, PostingKind.SURCHARGE, ident))
            if cause == "refund" and surcharge_id is not None:
                undo = {
                    "surcharge_external_id": surcharge_id,
                    "amount": payment.surcharge,
                    "currency": payment.currency,
                    "date": day(now).isoformat(),
                    "reason": reason,
                }
                record(connection, PostingKind.SURCHARGE_REVERSAL, f"{ident}:{cause}", undo)
            if reapply and not waiting:
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
            case PostingKind.PAYMENT_REVERSAL | PostingKind.SURCHARGE_REVERSAL:
                derived.reversals += 1
            case PostingKind.REFUND:
                derived.refunds += 1
            case PostingKind.FEE:
                derived.fees += 1
            case PostingKind.PAYOUT | PostingKind.PAYOUT_DEBIT:
                derived.payouts += 1
    derived.allocations = allocate_balance_payments(
        session, tenant, connections, now, ledgers, day(now), rates=rates, home_currency=home_currency
    )
    return derived


CHARGE_LINES = ("charge", "payment")
"""Balance line types of a payment collected (a card charge, a bank debit)."""


def payment_rates(lines: list[BalanceLineRow], home_currency: str | None) -> dict[str, Decimal]:
    """Per PaymentIntent: units of ``home_currency`` per unit of the payment's currency, as the processor converted
    it (its charge line's ``exchange_rate``, when the line is in the home currency). A payment whose money was
    not converted into the home currency has none: no ledger rate can be read from the processor for it."""
    if home_currency is None:
        return {}
    return {
        str(line.payment_processor_id): line.exchange_rate
        for line in lines
        if line.type in CHARGE_LINES
        and line.payment_processor_id
        and line.exchange_rate is not None
        and line.currency.upper() == home_currency.upper()
    }


def rate_of_payment(session: Session, tenant: str, processor_key: str, home_currency: str | None) -> Decimal | None:
    """The rate of one processor payment (by our key), as :func:`payment_rates` reads it; None: not known yet."""
    pi = session.execute(
        sa.select(col(ProcessorPayment.processor_id)).where(
            col(ProcessorPayment.tenant_id) == tenant, col(ProcessorPayment.key) == processor_key
        )
    ).scalar_one_or_none()
    if pi is None:
        return None
    lines = list(
        session.execute(
            sa.select(BalanceLineRow).where(
                col(BalanceLineRow.tenant_id) == tenant, col(BalanceLineRow.payment_processor_id) == pi
            )
        ).scalars()
    )
    return payment_rates(lines, home_currency).get(pi)


def allocate_balance_payments(
    session: Session,
    tenant: str,
    connections: list[str],
    now: datetime,
    ledgers: Mapping[str, Accounts] | None = None,
    today: date | None = None,
    rates: Mapping[str, Decimal] | None = None,
    home_currency: str | None = None,
) -> int:
    """Spread each payment made for a customer's whole balance over the customer's open invoices.

    By the connection's :class:`AllocationOrder` (default: collection fees, then late fees, then principal),
    oldest invoice first within a class, each up to what it owes less what is on its way. Each share is an
    ``apply_credit`` entry (the same decision auto-pay makes when it applies that cash first), posted as a
    payment into clearing. What is left over becomes the customer's unapplied credit: one ``overpayment``
    posting, decided once (its key is the processor payment's), into clearing. From then on nothing more is
    spread from that payment: the ledger holds the rest, and auto-pay applies it from there once the sync has
    read it back.
    """
    credits = available_credits(session, tenant, connections)
    on_way = outstanding_charges(session, tenant)
    processor_ids = _processor_ids(session, tenant)
    recorded = 0
    for (connection, customer), found in credits.items():
        balance_payments = [c for c in found if c.source == PROCESSOR_CREDIT]
        if not balance_payments:
            continue
        rows = session.execute(
            sa.select(
                col(Invoice.id),
                col(Invoice.external_id),
                col(Invoice.balance),
                col(Invoice.currency),
                col(Invoice.issue_date),
            ).where(
                col(Invoice.connection_id) == connection,
                col(Invoice.customer_external_id) == customer,
                col(Invoice.status).in_(("open", "partially_paid")),
            )
        ).all()
        order = ledgers[connection].allocation if ledgers is not None and connection in ledgers else AllocationOrder()
        items = _line_items(session, [row_id for row_id, *_ in rows if row_id is not None])
        rows = sorted(
            rows,
            key=lambda r: (order.rank(order.class_of(items.get(r[0] or 0, []))), r[4] or date.min, r[1]),
        )
        invoices = [(external_id, balance, currency) for _, external_id, balance, currency, _ in rows]
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
            if left > 0 and ledgers is not None and connection in ledgers:
                ident = processor_ids.get(credit.external_id) or credit.external_id
                payload = {
                    "processor_key": credit.external_id,
                    "customer_external_id": customer,
                    "amount": left,
                    "currency": credit.currency,
                    "date": (today or now.date()).isoformat(),
                    "account": ledgers[connection].clearing,
                }
                if home_currency is not None and credit.currency.upper() != home_currency.upper():
                    rate = (rates or {}).get(ident)
                    if rate is None:
                        continue  # waits for the processor's rate, like the payments it came from
                    payload["currency_rate"] = rate
                if journal.record(session, _intent(tenant, connection, PostingKind.OVERPAYMENT, ident, payload), now):
                    recorded += 1
    return recorded


def _line_items(session: Session, invoice_ids: list[int]) -> dict[int, list[str | None]]:
    """Per invoice (its row id), the item ref of each of its lines."""
    found: dict[int, list[str | None]] = defaultdict(list)
    for start in range(0, len(invoice_ids), 500):
        for document_id, item in session.execute(
            sa.select(col(DocumentLine.document_id), col(DocumentLine.item_ref)).where(
                col(DocumentLine.document_type) == "invoice",
                col(DocumentLine.document_id).in_(invoice_ids[start : start + 500]),
            )
        ):
            found[document_id].append(item)
    return found


def _processor_ids(session: Session, tenant: str) -> dict[str, str]:
    """Balance payments (no invoice): their key -> the processor's id (what the overpayment is keyed by)."""
    return {
        key: str(pi)
        for key, pi in session.execute(
            sa.select(col(ProcessorPayment.key), col(ProcessorPayment.processor_id)).where(
                col(ProcessorPayment.tenant_id) == tenant,
                col(ProcessorPayment.invoice_external_id).is_(None),
                col(ProcessorPayment.processor_id).is_not(None),
            )
        )
    }


def _posted_payments(session: Session, tenant: str, kind: PostingKind = PostingKind.PAYMENT) -> dict[str, str]:
    """Payment (or surcharge) postings done, by key: the ledger's id of each (what a reversal undoes)."""
    return {
        key: str(external_id)
        for key, external_id in session.execute(
            sa.select(col(JournalEntry.key), col(JournalEntry.external_id)).where(
                col(JournalEntry.tenant_id) == tenant,
                col(JournalEntry.kind) == KIND,
                col(JournalEntry.status) == "done",
                col(JournalEntry.subject).like(f"{kind.value}:%"),
                col(JournalEntry.external_id).is_not(None),
            )
        )
    }


@dataclass(frozen=True)
class _Refund:
    refund_id: str
    amount: Decimal
    currency: str
    at: datetime | None


@dataclass(frozen=True)
class _Cause:
    ident: str
    reason: str
    reapply: bool
    refunded: Decimal | None = None
    """For a refund: how much, all refunds together (only a full refund reverses the payment)."""
    refunds: tuple[_Refund, ...] = ()
    """For a refund: each refund of the payment."""
    booked: bool = False
    """For a refund: one of them is journaled as a ``refund`` posting already, so the others are booked the
    same way even when they add up to the whole payment (a reversal on top would take the first back twice)."""


def _booked_refunds(session: Session, tenant: str) -> set[str]:
    """Refund ids journaled as ``refund`` postings (any status)."""
    prefix = f"{PostingKind.REFUND.value}:"
    return {
        str(subject).removeprefix(prefix)
        for (subject,) in session.execute(
            sa.select(col(JournalEntry.subject)).where(
                col(JournalEntry.tenant_id) == tenant,
                col(JournalEntry.kind) == KIND,
                col(JournalEntry.subject).like(f"{prefix}%"),
            )
        )
    }


def _partial_refunds(payment: ProcessorPayment, found: list[_Cause]) -> list[_Refund]:
    """The refunds to book one by one: all of them, unless together they refund the whole payment (amount and
    surcharge) and none is booked yet, in which case the payment is reversed instead."""
    for cause in found:
        if cause.refunded is None:
            continue
        if cause.refunded < payment.amount + payment.surcharge or cause.booked:
            return list(cause.refunds)
    return []


def _reversals(session: Session, tenant: str, booked: set[str] | None = None) -> dict[str, list[_Cause]]:
    """Per PaymentIntent: disputes that took the money back (and whether they were won), refunds."""
    causes: dict[str, list[_Cause]] = defaultdict(list)
    for dispute in session.execute(
        sa.select(ProcessorDispute).where(col(ProcessorDispute.tenant_id) == tenant)
    ).scalars():
        if dispute.payment_processor_id and (dispute.status in REVERSING_DISPUTES or dispute.status == "won"):
            why = f"chargeback {dispute.dispute_id}" + (f" ({dispute.reason})" if dispute.reason else "")
            causes[dispute.payment_processor_id].append(_Cause(dispute.dispute_id, why, dispute.status == "won"))
    refunded: dict[str, Decimal] = defaultdict(Decimal)
    currency_of: dict[str, str] = {}
    each: dict[str, list[_Refund]] = defaultdict(list)
    for refund in session.execute(
        sa.select(ProcessorRefund)
        .where(
            col(ProcessorRefund.tenant_id) == tenant,
            col(ProcessorRefund.status) == "succeeded",
            col(ProcessorRefund.payment_processor_id).is_not(None),
        )
        .order_by(col(ProcessorRefund.refund_id))
    ).scalars():
        pi = refund.payment_processor_id
        if pi is not None:
            refunded[pi] += refund.amount
            currency_of[pi] = refund.currency
            each[pi].append(_Refund(refund.refund_id, refund.amount, refund.currency, refund.updated_at))
    for pi, amount in refunded.items():
        why = f"refunded in full ({show_money(amount, currency_of[pi])})"
        is_booked = any(r.refund_id in (booked or set()) for r in each[pi])
        causes[pi].append(_Cause("refund", why, False, amount, tuple(each[pi]), is_booked))
    return causes


def _causes(payment: ProcessorPayment, found: list[_Cause]) -> list[tuple[str, str, bool]]:
    """Why the posted payment must be undone: a returned bank debit, a chargeback, a full refund."""
    result = []
    if payment.returned:
        result.append(("return", f"bank debit returned ({payment.decline_code or 'no code'})", False))
    for cause in found:
        if cause.refunded is not None and (cause.refunded < payment.amount + payment.surcharge or cause.booked):
            continue  # partial: each refund is booked as a refund of its own (see _partial_refunds)
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
            if net == 0:
                continue
            arrival = payout.arrival_date.isoformat() if payout.arrival_date else day(None).isoformat()
            accounts = ledgers[connection]
            kind = PostingKind.PAYOUT if net > 0 else PostingKind.PAYOUT_DEBIT
            payload = {
                "payout_id": payout.payout_id,
                "amount": abs(net),
                "currency": payout.currency,
                "date": arrival,
                # A debit (the lines net below zero: refunds and chargebacks beyond the charges) comes back from
                # the bank into clearing, where the refunds and reversals took it from.
                "from_account": accounts.clearing if net > 0 else accounts.bank,
                "to_account": accounts.bank if net > 0 else accounts.clearing,
            }
            intents.append(_intent(tenant, connection, kind, payout.payout_id, payload, payout.payout_id))
    return intents
