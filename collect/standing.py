"""What the ledger alone does not say about an invoice: money on its way, holds, tags, methods, credits.

The ledger's balance lags the processor: a charge that succeeded is in the
books only once write-back has posted it and the next sync has read it back.
Until then it is *outstanding* and must be subtracted from the balance before
anything else is charged, so that no sequence of plans, runs and restarts can
charge an invoice more than it owes. The same holds for credits journaled for
application but not yet applied in the ledger.

Each loader reads one tenant's rows in one query and returns plain dicts, so the
planner can stream a million invoices against them, and the charge executor can
ask the same question for one invoice just before charging.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlmodel import col

from connectors import jsonwire
from sync.models import (
    CreditNote,
    CustomerTag,
    InvoiceHold,
    JournalEntry,
    Payment,
    ProcessorPayment,
    SavedPaymentMethod,
)

CHARGE_KIND = "charge"
CREDIT_KIND = "apply_credit"
UNSETTLED = ("pending", "in_flight")
MONEY_ON_ITS_WAY = ("succeeded", "processing")
DECLINED = ("soft_decline", "hard_decline", "requires_action")
BLOCKING_HOLDS = ("dispute", "hold")
PROCESSOR_CREDIT = "processor_payment"
"""The credit source of a payment made at the processor for a customer's balance, not one invoice."""
POSTING_KIND = "posting"
"""Write-back's journal kind (``reconcile.postings.KIND``)."""
OVERPAYMENT_SUBJECT = "overpayment:"
"""Subject prefix of write-back's ``overpayment`` postings: what a balance payment left as unapplied credit."""

InvoiceRef = tuple[str, str]
"""(connection, invoice external id)"""
CustomerRef = tuple[str, str]
"""(connection, customer external id)"""


@dataclass(frozen=True, slots=True)
class Method:
    processor_customer_id: str
    payment_method_id: str
    kind: str
    funding: str | None
    enrolled_at: datetime


@dataclass(frozen=True, slots=True)
class LastDecline:
    state: str
    decline_code: str | None
    payment_method_id: str | None
    at: datetime


@dataclass(frozen=True, slots=True)
class Credit:
    """A credit note's remainder or a payment's unapplied cash, net of applications journaled."""

    source: str
    """``credit_note`` or ``payment``."""
    external_id: str
    currency: str
    available: Decimal
    issued: date | None


def _subject_invoice(subject: str | None) -> InvoiceRef | None:
    if subject is None or not subject.startswith("invoice:"):
        return None
    connection, _, invoice = subject.removeprefix("invoice:").partition(":")
    return (connection, invoice) if invoice else None


def outstanding_charges(
    session: Session, tenant: str, invoice: InvoiceRef | None = None, *, exclude_key: str | None = None
) -> dict[InvoiceRef, Decimal]:
    """Per invoice: money charged, being charged or credited that the ledger's balance does not show yet.

    Journaled charges not yet settled (pending, in flight) count at their planned
    amount; settled ones that succeeded or are processing count until the ledger
    has applied them; a bank debit returned after success no longer counts.
    """
    totals: dict[InvoiceRef, Decimal] = defaultdict(Decimal)
    settled_keys = sa.select(col(ProcessorPayment.key))
    unsettled = sa.select(col(JournalEntry.key), col(JournalEntry.subject), col(JournalEntry.payload)).where(
        col(JournalEntry.tenant_id) == tenant,
        col(JournalEntry.kind) == CHARGE_KIND,
        col(JournalEntry.status).in_(UNSETTLED),
        col(JournalEntry.key).not_in(settled_keys),
    )
    if invoice is not None:
        unsettled = unsettled.where(col(JournalEntry.subject) == f"invoice:{invoice[0]}:{invoice[1]}")
    for key, subject, payload in session.execute(unsettled):
        ref = _subject_invoice(subject)
        if ref is None or key == exclude_key:
            continue
        totals[ref] += Decimal(jsonwire.loads(payload)["amount"])
    settled = sa.select(
        col(ProcessorPayment.key),
        col(ProcessorPayment.connection_id),
        col(ProcessorPayment.invoice_external_id),
        col(ProcessorPayment.amount),
    ).where(
        col(ProcessorPayment.tenant_id) == tenant,
        col(ProcessorPayment.state).in_(MONEY_ON_ITS_WAY),
        col(ProcessorPayment.applied_in_ledger_at).is_(None),
        col(ProcessorPayment.returned).is_(False),
        col(ProcessorPayment.invoice_external_id).is_not(None),
    )
    if invoice is not None:
        settled = settled.where(
            col(ProcessorPayment.connection_id) == invoice[0],
            col(ProcessorPayment.invoice_external_id) == invoice[1],
        )
    for key, connection, invoice_id, amount in session.execute(settled):
        if key != exclude_key and connection is not None and invoice_id is not None:
            totals[(connection, invoice_id)] += amount
    for application in unreflected_credit_applications(session, tenant, invoice):
        totals[application.invoice] += application.amount
    return dict(totals)


def last_declines(session: Session, tenant: str, invoice: InvoiceRef | None = None) -> dict[InvoiceRef, LastDecline]:
    """Per invoice, its latest charge attempt when that attempt was declined (else absent)."""
    query = (
        sa.select(
            col(ProcessorPayment.connection_id),
            col(ProcessorPayment.invoice_external_id),
            col(ProcessorPayment.state),
            col(ProcessorPayment.decline_code),
            col(ProcessorPayment.payment_method_id),
            col(ProcessorPayment.created_at),
        )
        .where(col(ProcessorPayment.tenant_id) == tenant, col(ProcessorPayment.invoice_external_id).is_not(None))
        .order_by(col(ProcessorPayment.created_at), col(ProcessorPayment.id))
    )
    if invoice is not None:
        query = query.where(
            col(ProcessorPayment.connection_id) == invoice[0],
            col(ProcessorPayment.invoice_external_id) == invoice[1],
        )
    latest: dict[InvoiceRef, LastDecline | None] = {}
    for connection, invoice_id, state, code, method, created in session.execute(query):
        if connection is None or invoice_id is None or created is None:
            continue
        latest[(connection, invoice_id)] = LastDecline(state, code, method, created) if state in DECLINED else None
    return {ref: decline for ref, decline in latest.items() if decline is not None}


def blocking_holds(
    session: Session, connections: Sequence[str], today: date, invoice: InvoiceRef | None = None
) -> dict[InvoiceRef, str]:
    """Invoices under an active dispute or hold, with its reason."""
    query = sa.select(
        col(InvoiceHold.connection_id),
        col(InvoiceHold.invoice_external_id),
        col(InvoiceHold.kind),
        col(InvoiceHold.reason),
    ).where(
        col(InvoiceHold.connection_id).in_(connections),
        col(InvoiceHold.kind).in_(BLOCKING_HOLDS),
        col(InvoiceHold.released_at).is_(None),
        sa.or_(col(InvoiceHold.until).is_(None), col(InvoiceHold.until) >= today),
    )
    if invoice is not None:
        query = query.where(
            col(InvoiceHold.connection_id) == invoice[0], col(InvoiceHold.invoice_external_id) == invoice[1]
        )
    return {(c, i): f"{kind}: {reason}" for c, i, kind, reason in session.execute(query)}


def customer_tags(session: Session, connections: Sequence[str]) -> dict[CustomerRef, frozenset[str]]:
    tags: dict[CustomerRef, set[str]] = defaultdict(set)
    rows = session.execute(
        sa.select(col(CustomerTag.connection_id), col(CustomerTag.customer_external_id), col(CustomerTag.tag)).where(
            col(CustomerTag.connection_id).in_(connections)
        )
    )
    for connection, customer, tag in rows:
        tags[(connection, customer)].add(tag)
    return {ref: frozenset(t) for ref, t in tags.items()}


def enrolled_methods(
    session: Session, connections: Sequence[str], customer: CustomerRef | None = None
) -> dict[CustomerRef, Method]:
    """Per customer, the method auto-pay charges: the latest active one enrolled for off-session use."""
    query = (
        sa.select(SavedPaymentMethod)
        .where(
            col(SavedPaymentMethod.connection_id).in_(connections),
            col(SavedPaymentMethod.active).is_(True),
            col(SavedPaymentMethod.scope) == "off_session",
        )
        .order_by(col(SavedPaymentMethod.enrolled_at), col(SavedPaymentMethod.id))
    )
    if customer is not None:
        query = query.where(
            col(SavedPaymentMethod.connection_id) == customer[0],
            col(SavedPaymentMethod.customer_external_id) == customer[1],
        )
    methods: dict[CustomerRef, Method] = {}
    for row in session.execute(query).scalars():
        assert row.enrolled_at is not None
        methods[(row.connection_id, row.customer_external_id)] = Method(
            row.processor_customer_id, row.payment_method_id, row.kind, row.funding, row.enrolled_at
        )
    return methods


@dataclass(frozen=True, slots=True)
class CreditApplication:
    invoice: InvoiceRef
    document: tuple[str, str, str]
    """(connection, ``credit_note`` or ``payment``, external id)"""
    amount: Decimal


def unreflected_credit_applications(
    session: Session, tenant: str, invoice: InvoiceRef | None = None
) -> list[CreditApplication]:
    """Credits journaled for application that the synced ledger does not show yet.

    An application not yet posted counts; one posted counts until the credit
    document has been read from the source after the posting (its ``synced_at``
    is later), at which point the ledger's own balances include it.
    """
    query = sa.select(
        col(JournalEntry.status),
        col(JournalEntry.updated_at),
        col(JournalEntry.subject),
        col(JournalEntry.payload),
        col(JournalEntry.external_id),
    ).where(
        col(JournalEntry.tenant_id) == tenant,
        col(JournalEntry.kind) == CREDIT_KIND,
        col(JournalEntry.status) != "failed",
    )
    if invoice is not None:
        query = query.where(col(JournalEntry.subject) == f"invoice:{invoice[0]}:{invoice[1]}")
    found: list[tuple[CreditApplication, str, datetime | None, str | None]] = []
    for status, updated_at, subject, payload, external_id in session.execute(query):
        ref = _subject_invoice(subject)
        if ref is None:
            continue
        p = jsonwire.loads(payload)
        doc = (str(p["connection"]), str(p["source"]), str(p["source_id"]))
        found.append((CreditApplication(ref, doc, Decimal(p["amount"])), status, updated_at, external_id))
    posted = {a.document for a, status, _, _ in found if status == "done" and a.document[1] != PROCESSOR_CREDIT}
    synced = _synced_at(session, posted)
    echoed = _echoed_payments(
        session, {(a.document[0], x) for a, status, _, x in found if a.document[1] == PROCESSOR_CREDIT and x}
    )
    unreflected = []
    for app, status, done_at, external_id in found:
        if app.document[1] == PROCESSOR_CREDIT:
            # Posted as a payment of its own: in the ledger once the sync has read that payment back.
            if status == "done" and (app.document[0], external_id) in echoed:
                continue
        elif status == "done" and done_at is not None and synced.get(app.document, done_at) > done_at:
            continue
        unreflected.append(app)
    return unreflected


def _echoed_payments(session: Session, payments: set[tuple[str, str | None]]) -> set[tuple[str, str | None]]:
    """Of (connection, ledger payment id), those the sync has read back into the ledger store."""
    found = set()
    for connection, external_id in payments:
        exists = session.execute(
            sa.select(col(Payment.id)).where(
                col(Payment.connection_id) == connection, col(Payment.external_id) == external_id
            )
        ).first()
        if exists is not None:
            found.add((connection, external_id))
    return found


def allocated_balance_payments(session: Session, tenant: str) -> dict[tuple[str, str, str], Decimal]:
    """Per balance payment (a processor payment for no one invoice): everything allocated from it so far.

    The ledger never held this cash as unapplied, so an allocation reflected in the ledger still counts. What
    write-back decided to post as the customer's unapplied credit (an ``overpayment`` posting, in any status:
    a parked one waits for a person, it is never spread again) counts too: that money is the ledger's to
    apply once the sync has read it back, never this processor payment's again.
    """
    totals: dict[tuple[str, str, str], Decimal] = defaultdict(Decimal)
    for (payload,) in session.execute(
        sa.select(col(JournalEntry.payload)).where(
            col(JournalEntry.tenant_id) == tenant,
            col(JournalEntry.kind) == POSTING_KIND,
            col(JournalEntry.subject).like(f"{OVERPAYMENT_SUBJECT}%"),
        )
    ):
        p = jsonwire.loads(payload)
        totals[(str(p["connection"]), PROCESSOR_CREDIT, str(p["processor_key"]))] += Decimal(p["amount"])
    for (payload,) in session.execute(
        sa.select(col(JournalEntry.payload)).where(
            col(JournalEntry.tenant_id) == tenant,
            col(JournalEntry.kind) == CREDIT_KIND,
            col(JournalEntry.status) != "failed",
        )
    ):
        p = jsonwire.loads(payload)
        if p.get("source") == PROCESSOR_CREDIT:
            totals[(str(p["connection"]), PROCESSOR_CREDIT, str(p["source_id"]))] += Decimal(p["amount"])
    return dict(totals)


def _synced_at(session: Session, documents: set[tuple[str, str, str]]) -> dict[tuple[str, str, str], datetime]:
    result: dict[tuple[str, str, str], datetime] = {}
    for connection, source, external_id in documents:
        table = CreditNote if source == "credit_note" else Payment
        at = session.execute(
            sa.select(col(table.synced_at)).where(
                col(table.connection_id) == connection, col(table.external_id) == external_id
            )
        ).scalar_one_or_none()
        if at is not None:
            result[(connection, source, external_id)] = at
    return result


def available_credits(
    session: Session, tenant: str, connections: Sequence[str], customers: Iterable[CustomerRef] | None = None
) -> dict[CustomerRef, list[Credit]]:
    """Per customer, open credit notes and unapplied cash, oldest first, less what is journaled to apply.

    Unapplied cash includes payments made at the processor for a customer's whole
    balance (a payment link): until write-back applies them, they are credits to
    apply, so the invoices they pay are not charged again.
    """
    pending: dict[tuple[str, str, str], Decimal] = defaultdict(Decimal)
    for application in unreflected_credit_applications(session, tenant):
        pending[application.document] += application.amount
    wanted = set(customers) if customers is not None else None
    credits: dict[CustomerRef, list[Credit]] = defaultdict(list)
    notes = sa.select(
        col(CreditNote.connection_id),
        col(CreditNote.customer_external_id),
        col(CreditNote.external_id),
        col(CreditNote.currency),
        col(CreditNote.remaining),
        col(CreditNote.issue_date),
    ).where(col(CreditNote.connection_id).in_(connections), col(CreditNote.status) != "void")
    cash = sa.select(
        col(Payment.connection_id),
        col(Payment.customer_external_id),
        col(Payment.external_id),
        col(Payment.currency),
        col(Payment.unapplied),
        col(Payment.payment_date),
    ).where(col(Payment.connection_id).in_(connections), col(Payment.status) != "void")
    for source, query in (("credit_note", notes), ("payment", cash)):
        for connection, customer, external_id, currency, amount, issued in session.execute(query):
            # Money compares in Python: SQLite keeps it as text.
            if amount <= 0 or customer is None or (wanted is not None and (connection, customer) not in wanted):
                continue
            left = amount - pending.get((connection, source, external_id), Decimal(0))
            if left > 0:
                credits[(connection, customer)].append(Credit(source, external_id, currency, left, issued))
    paid_by_link = sa.select(
        col(ProcessorPayment.connection_id),
        col(ProcessorPayment.customer_external_id),
        col(ProcessorPayment.key),
        col(ProcessorPayment.currency),
        col(ProcessorPayment.amount),
        col(ProcessorPayment.created_at),
    ).where(
        col(ProcessorPayment.tenant_id) == tenant,
        col(ProcessorPayment.invoice_external_id).is_(None),
        col(ProcessorPayment.customer_external_id).is_not(None),
        col(ProcessorPayment.state) == "succeeded",
        col(ProcessorPayment.returned).is_(False),
        col(ProcessorPayment.applied_in_ledger_at).is_(None),
    )
    allocated = allocated_balance_payments(session, tenant)
    for link_connection, link_customer, key, currency, amount, created in session.execute(paid_by_link):
        if link_connection is None or link_customer is None:
            continue
        connection, customer = link_connection, link_customer
        if wanted is not None and (connection, customer) not in wanted:
            continue
        left = amount - allocated.get((connection, PROCESSOR_CREDIT, key), Decimal(0))
        if left > 0:
            issued = created.date() if created is not None else None
            credits[(connection, customer)].append(Credit(PROCESSOR_CREDIT, key, currency, left, issued))
    for found in credits.values():
        found.sort(key=lambda c: (c.issued or date.min, c.source, c.external_id))
    return dict(credits)
