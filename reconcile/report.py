"""The reconciliation report: for each payout, its deposit and what it is made of, and every difference.

A payout reconciles when the deposits posted for it add up to it, and every
payment and fee inside it is in the books. The totals tie out as
payments - fees - refunds - chargebacks = payouts, and the deposits posted
should equal the payouts. A payout that debited the bank (its lines net below
zero) is negative, and so is its transfer back to clearing in ``deposited``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlmodel import col

from collect.standing import CREDIT_KIND, PROCESSOR_CREDIT
from connectors import jsonwire
from connectors.base import PostingKind
from connectors.values import show_money
from reconcile.postings import CHARGE_LINES, KIND, payment_rates
from sync.models import BalanceLineRow, JournalEntry, Payment, Payout, ProcessorPayment, ProcessorRefund

REFUND_LINES = ("refund", "payment_refund")
DISPUTE_LINES = ("adjustment", "dispute")


@dataclass
class PayoutRow:
    payout_id: str
    arrival: date | None
    status: str
    currency: str
    amount: Decimal
    payments: Decimal = Decimal(0)
    fees: Decimal = Decimal(0)
    refunds: Decimal = Decimal(0)
    chargebacks: Decimal = Decimal(0)
    other: Decimal = Decimal(0)
    deposited: Decimal = Decimal(0)
    deposits: list[str] = field(default_factory=list)
    """``connection: ledger id`` of each deposit posted."""
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class FeeBooked:
    """A late fee or a collections agency's fee in the books (not part of any payout)."""

    kind: str
    """``late_fee`` or ``collections_fee``."""
    key: str
    connection: str
    invoice: str
    """The invoice the fee is for (a late fee's overdue invoice, the invoice placed with the agency)."""
    day: date | None
    amount: Decimal
    currency: str
    ledger_id: str | None
    """The ledger's document: the invoice the late fee is on (the overdue one, or its own), the agency's bill."""
    booked_as: str | None = None
    """A late fee's booking: ``line`` or ``invoice`` (a line the ledger refused is booked as an invoice)."""


@dataclass
class Report:
    tenant: str
    payouts: list[PayoutRow]
    parked: list[tuple[str, str]]
    """Postings a person must look at: (key, reason)."""
    waiting: int
    """Postings journaled and not posted yet."""
    other: list[str] = field(default_factory=list)
    """Differences not tied to one payout (a partial refund arsync does not book)."""
    fees_booked: list[FeeBooked] = field(default_factory=list)
    """Late fees and collections agencies' fees posted, dated in the period."""

    def totals(self) -> dict[str, dict[str, Decimal]]:
        sums: dict[str, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
        for row in self.payouts:
            t = sums[row.currency]
            for name in ("payments", "fees", "refunds", "chargebacks", "other", "amount", "deposited"):
                t[name] += getattr(row, name)
        return {c: dict(t) for c, t in sums.items()}

    def problems(self) -> int:
        return sum(len(row.problems) for row in self.payouts) + len(self.parked) + len(self.other)


def build_report(session: Session, tenant: str, since: date | None = None, home_currency: str | None = None) -> Report:
    postings = {
        key: (status, external_id, error, subject)
        for key, status, external_id, error, subject in session.execute(
            sa.select(
                col(JournalEntry.key),
                col(JournalEntry.status),
                col(JournalEntry.external_id),
                col(JournalEntry.error),
                col(JournalEntry.subject),
            ).where(col(JournalEntry.tenant_id) == tenant, col(JournalEntry.kind).in_((KIND, CREDIT_KIND)))
        )
    }
    by_subject: dict[str, list[tuple[str, str, str | None]]] = defaultdict(list)
    for key, (status, external_id, _error, subject) in postings.items():
        if subject:
            by_subject[subject].append((key, status, external_id))
    paid_payments = {
        pi: key
        for pi, key in session.execute(
            sa.select(col(ProcessorPayment.processor_id), col(ProcessorPayment.key)).where(
                col(ProcessorPayment.tenant_id) == tenant, col(ProcessorPayment.processor_id).is_not(None)
            )
        )
    }
    balance_payments = _balance_payments(session, tenant)
    query = sa.select(Payout).where(col(Payout.tenant_id) == tenant).order_by(col(Payout.arrival_date))
    if since is not None:
        query = query.where(col(Payout.arrival_date) >= since)
    rows = []
    for payout in session.execute(query).scalars():
        row = PayoutRow(payout.payout_id, payout.arrival_date, payout.status, payout.currency, payout.amount)
        for line in session.execute(
            sa.select(BalanceLineRow).where(col(BalanceLineRow.payout_id) == payout.payout_id)
        ).scalars():
            _add_line(row, line, by_subject, paid_payments, balance_payments)
        for kind, sign in ((PostingKind.PAYOUT, 1), (PostingKind.PAYOUT_DEBIT, -1)):
            for key, status, external_id in by_subject.get(f"{kind.value}:{payout.payout_id}", []):
                if status == "done":
                    row.deposited += sign * _amount_of(session, key)
                    row.deposits.append(f"{key.split(':')[2]}: {external_id}")
        if payout.status == "paid":
            if payout.lines_loaded_at is None:
                row.problems.append("payout lines not loaded yet (run arsync payments follow)")
            elif not row.deposits and payout.amount != 0:
                row.problems.append("payout with no deposit")
            elif row.deposited != payout.amount:
                row.problems.append(
                    f"deposits {show_money(row.deposited, payout.currency)} != payout"
                    f" {show_money(payout.amount, payout.currency)}"
                )
        rows.append(row)
    parked = sorted((key, error or "") for key, (status, _, error, _) in postings.items() if status == "failed")
    waiting = sum(1 for status, *_ in postings.values() if status in ("pending", "in_flight"))
    refunds_booked = {
        subject.removeprefix(f"{PostingKind.REFUND.value}:"): status
        for status, _, _, subject in postings.values()
        if subject and subject.startswith(f"{PostingKind.REFUND.value}:")
    }
    other = (
        _partial_refunds(session, tenant, refunds_booked)
        + _posted_twice(session, tenant)
        + _waiting_for_rates(session, tenant, home_currency, by_subject)
    )
    return Report(tenant, rows, parked, waiting, other, _fees_booked(session, tenant, since))


FEE_KINDS = (PostingKind.LATE_FEE, PostingKind.COLLECTIONS_FEE)


def _fees_booked(session: Session, tenant: str, since: date | None) -> list[FeeBooked]:
    """Late fees (journaled by dunning) and agencies' fees (by the collections hand-off) posted, in date order."""
    found = []
    rows = session.execute(
        sa.select(
            col(JournalEntry.key), col(JournalEntry.payload), col(JournalEntry.external_id), col(JournalEntry.result)
        ).where(
            col(JournalEntry.tenant_id) == tenant,
            col(JournalEntry.kind) == KIND,
            col(JournalEntry.status) == "done",
            sa.or_(*(col(JournalEntry.subject).like(f"{kind.value}:%") for kind in FEE_KINDS)),
        )
    )
    for key, payload, external_id, result in rows:
        p = jsonwire.loads(payload)
        day = date.fromisoformat(str(p["date"])) if p.get("date") else None
        if since is not None and day is not None and day < since:
            continue
        booking = p.get("booking")
        if result:
            booking = jsonwire.loads(result).get("booked_as") or booking
        found.append(
            FeeBooked(
                str(p.get("posting_kind")),
                key,
                str(p.get("connection")),
                str(p.get("invoice_external_id")),
                day,
                Decimal(str(p["amount"])),
                str(p.get("currency")),
                external_id,
                str(booking) if booking else None,
            )
        )
    return sorted(found, key=lambda f: (f.day or date.min, f.key))


def _waiting_for_rates(
    session: Session, tenant: str, home: str | None, by_subject: dict[str, list[tuple[str, str, str | None]]]
) -> list[str]:
    """Payments in another currency than the home currency, not posted for want of their exchange rate."""
    if home is None:
        return []
    lines = list(
        session.execute(
            sa.select(BalanceLineRow).where(
                col(BalanceLineRow.tenant_id) == tenant, col(BalanceLineRow.type).in_(CHARGE_LINES)
            )
        ).scalars()
    )
    rates = payment_rates(lines, home)
    line_of = {line.payment_processor_id: line for line in lines if line.payment_processor_id}
    found = []
    for payment in session.execute(
        sa.select(ProcessorPayment)
        .where(
            col(ProcessorPayment.tenant_id) == tenant,
            col(ProcessorPayment.state) == "succeeded",
            col(ProcessorPayment.returned).is_(False),
            col(ProcessorPayment.invoice_external_id).is_not(None),
            col(ProcessorPayment.processor_id).is_not(None),
        )
        .order_by(col(ProcessorPayment.processor_id))
    ).scalars():
        pi = str(payment.processor_id)
        if payment.currency.upper() == home.upper() or pi in rates:
            continue
        if by_subject.get(f"{PostingKind.PAYMENT.value}:{pi}"):
            continue  # posted (or journaled) before a rate was asked for
        line = line_of.get(pi)
        if line is None:
            why = f"waiting for its exchange rate to {home}: it comes with the payout's balance lines"
        elif line.currency.upper() != home.upper():
            why = f"no exchange rate to {home}: the processor kept it in {line.currency}; post it by hand"
        else:
            why = f"its balance line {line.id} carries no exchange rate to {home}; post it by hand"
        found.append(
            f"payment {pi} ({show_money(payment.amount, payment.currency)}, invoice"
            f" {payment.invoice_external_id}) not posted: {why}"
        )
    return found


def _posted_twice(session: Session, tenant: str) -> list[str]:
    """Payments arsync posted that the ledger holds more than once (found by the reference the echo carries)."""
    found = []
    posted = session.execute(
        sa.select(col(JournalEntry.key), col(JournalEntry.payload), col(JournalEntry.external_id)).where(
            col(JournalEntry.tenant_id) == tenant,
            col(JournalEntry.kind) == KIND,
            col(JournalEntry.status) == "done",
            col(JournalEntry.subject).like(f"{PostingKind.PAYMENT.value}:%"),
            col(JournalEntry.external_id).is_not(None),
        )
    )
    for key, payload, external_id in posted:
        connection = str(jsonwire.loads(payload)["connection"])
        reference = session.execute(
            sa.select(col(Payment.reference)).where(
                col(Payment.connection_id) == connection, col(Payment.external_id) == external_id
            )
        ).scalar_one_or_none()
        if not reference:
            continue
        copies = session.execute(
            sa.select(sa.func.count())
            .select_from(Payment)
            .where(
                col(Payment.connection_id) == connection,
                col(Payment.reference) == reference,
                col(Payment.status) != "void",
            )
        ).scalar_one()
        if copies > 1:
            found.append(f"posted twice: {key} ({copies} payments with reference {reference} in {connection})")
    return found


def _balance_payments(session: Session, tenant: str) -> dict[str, tuple[Decimal, Decimal, str]]:
    """Payments made for a customer's whole balance: PaymentIntent -> (amount, in the books, currency): its
    shares posted, and what is left posted as unapplied credit."""
    posted: dict[str, Decimal] = defaultdict(Decimal)
    for (payload,) in session.execute(
        sa.select(col(JournalEntry.payload)).where(
            col(JournalEntry.tenant_id) == tenant,
            col(JournalEntry.kind) == CREDIT_KIND,
            col(JournalEntry.status) == "done",
        )
    ):
        p = jsonwire.loads(payload)
        if p.get("source") == PROCESSOR_CREDIT:
            posted[str(p["source_id"])] += Decimal(p["amount"])
    for (payload,) in session.execute(
        sa.select(col(JournalEntry.payload)).where(
            col(JournalEntry.tenant_id) == tenant,
            col(JournalEntry.kind) == KIND,
            col(JournalEntry.status) == "done",
            col(JournalEntry.subject).like(f"{PostingKind.OVERPAYMENT.value}:%"),
        )
    ):
        p = jsonwire.loads(payload)
        posted[str(p["processor_key"])] += Decimal(p["amount"])  # the rest, as the customer's unapplied credit
    found = {}
    for pi, key, amount, currency in session.execute(
        sa.select(
            col(ProcessorPayment.processor_id),
            col(ProcessorPayment.key),
            col(ProcessorPayment.amount),
            col(ProcessorPayment.currency),
        ).where(
            col(ProcessorPayment.tenant_id) == tenant,
            col(ProcessorPayment.invoice_external_id).is_(None),
            col(ProcessorPayment.processor_id).is_not(None),
        )
    ):
        found[str(pi)] = (amount, posted.get(key, Decimal(0)), currency)
    return found


def _partial_refunds(session: Session, tenant: str, booked: dict[str, str]) -> list[str]:
    """Refunds short of their payment that are not in the books: parked, or waiting for their payment's posting.

    ``booked``: refund id -> status of its ``refund`` posting. A refund journaled and not yet posted is only
    counted in ``waiting``.
    """
    refunded: dict[str, Decimal] = defaultdict(Decimal)
    missing: dict[str, list[str]] = defaultdict(list)
    for refund_id, pi, amount in session.execute(
        sa.select(
            col(ProcessorRefund.refund_id), col(ProcessorRefund.payment_processor_id), col(ProcessorRefund.amount)
        ).where(col(ProcessorRefund.tenant_id) == tenant, col(ProcessorRefund.status) == "succeeded")
    ):
        if pi is not None:
            refunded[pi] += amount
            status = booked.get(refund_id)
            if status not in ("done", "pending", "in_flight"):
                missing[pi].append("parked" if status == "failed" else "not journaled")
    found = []
    for pi, amount in sorted(refunded.items()):
        payment = session.execute(
            sa.select(ProcessorPayment).where(col(ProcessorPayment.processor_id) == pi)
        ).scalar_one_or_none()
        if payment is None or amount >= payment.amount + payment.surcharge or not missing.get(pi):
            continue
        if "parked" in missing[pi]:
            why = "not booked (parked); see the parked postings"
        else:
            why = "not booked yet: its payment is not posted"
        found.append(
            f"partial refund of {show_money(amount, payment.currency)} on {pi} (invoice"
            f" {payment.invoice_external_id}): {why}"
        )
    return found


def _add_line(
    row: PayoutRow,
    line: BalanceLineRow,
    by_subject: dict[str, list[tuple[str, str, str | None]]],
    paid_payments: dict[str | None, str],
    balance_payments: dict[str, tuple[Decimal, Decimal, str]],
) -> None:
    if line.type in CHARGE_LINES:
        row.payments += line.amount
        payment = line.payment_processor_id
        posted = [s for _, s, _ in by_subject.get(f"{PostingKind.PAYMENT.value}:{payment}", [])]
        if payment not in paid_payments:
            row.problems.append(f"payment {payment or line.source_id} is not one arsync knows")
        elif payment is not None and payment in balance_payments:
            amount, applied, currency = balance_payments[payment]
            if applied < amount:
                row.problems.append(
                    f"payment not applied in full: {payment} ({show_money(applied, currency)} of"
                    f" {show_money(amount, currency)} in the books)"
                )
        elif "done" not in posted:
            row.problems.append(f"payment not applied: {payment}")
    elif line.type in REFUND_LINES:
        row.refunds -= line.amount
    elif line.type in DISPUTE_LINES:
        row.chargebacks -= line.amount
    else:
        row.other += line.amount
    row.fees += line.fee
    if line.fee:
        posted = [s for _, s, _ in by_subject.get(f"{PostingKind.FEE.value}:{line.id}", [])]
        if "done" not in posted:
            row.problems.append(f"fee missing: {line.id} ({show_money(line.fee, line.currency)})")


def _amount_of(session: Session, key: str) -> Decimal:
    payload = session.execute(sa.select(col(JournalEntry.payload)).where(col(JournalEntry.key) == key)).scalar_one()
    return Decimal(jsonwire.loads(payload)["amount"])
