"""The collections hand-off: an invoice long past due, sent to an agency once, with its fees booked once.

* :func:`eligible` lists a tenant's open invoices at least
  ``eligible_after_days`` past due that are not placed yet (nor under a
  dispute or hold: a disputed debt is not handed to an agency).
* :func:`submit` creates the :class:`~sync.models.CollectionsPlacement`
  (``submitted``, for the invoice's balance) and journals, in the caller's
  transaction, the package for the agency (kind ``collections``, keyed
  ``collections:{tenant}:{connection}:{invoice}``) and, with an upfront fee, its
  write-back posting (``post:{tenant}:{connection}:collections_fee:{invoice}:upfront``).
  The package records the agency's terms (the percentages) as they were on that
  day; later fees of the placement use them, whatever the configuration says since.
* :class:`CollectionsSender` is the journal handler of ``collections``
  entries: it sends the package by signed webhook (:mod:`collect.webhooks`) or,
  when only an address is configured, by email, and marks the placement ``placed``.
* :func:`record_recovery` books money the agency recovered (the success fee,
  ``...:success:{n}`` for the n-th recovery); :func:`notice_recoveries` finds
  recoveries in the ledger: a placed invoice whose balance fell through
  payments applied to it since it was placed. A balance that falls by a credit
  note or a void is not a recovery and earns no fee. A placement whose invoice has
  nothing left to collect, short of a full recovery, is ``closed``.

Money is ``Decimal`` throughout; fees are rounded half up to the currency's
minor unit (the cent for most currencies).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from collect.dunning_policy import CollectionsSettings
from collect.mail import (
    HardBounce,
    MailConfigError,
    MessageRejected,
    OutgoingMessage,
    SendError,
    SmtpSender,
    TemplateProblem,
    Templates,
    TransientSendError,
)
from collect.standing import InvoiceRef, blocking_holds
from collect.webhooks import WebhookSender
from connectors import jsonwire
from connectors.base import Clock
from connectors.http import compute_backoff
from connectors.values import minor_unit, show_money
from sync import journal
from sync.journal import Claimed, Done, GiveUp, Outcome, RetryAt
from sync.models import CollectionsPlacement as Placement
from sync.models import (
    Connection,
    Customer,
    CustomerContact,
    DunningMessage,
    DunningTask,
    Invoice,
    JournalEntry,
    Payment,
    PaymentApplication,
)

__all__ = [
    "ACTIVE",
    "EVENT_TYPE",
    "FEE_KIND",
    "KIND",
    "TEMPLATE",
    "CollectionsError",
    "CollectionsSender",
    "EligibleInvoice",
    "collections_key",
    "eligible",
    "fee_amount",
    "fee_key",
    "notice_recoveries",
    "placements",
    "record_recovery",
    "submit",
]

KIND = "collections"
POSTING_KIND = "posting"
FEE_KIND = "collections_fee"
EVENT_TYPE = "collections.submitted"
TEMPLATE = "collections_package"
OPEN = ("open", "partially_paid")
ACTIVE = ("submitted", "placed")
"""Placements the agency is (or is about to be) working on."""
DEAD_PAYMENTS = ("void", "deleted")
ZERO = Decimal(0)


class CollectionsError(ValueError):
    """An invoice that cannot be handed over (not eligible, already placed, unknown), or a bad recovery."""


def collections_key(tenant: str, connection: str, invoice: str) -> str:
    return f"{KIND}:{tenant}:{connection}:{invoice}"


def fee_key(tenant: str, connection: str, invoice: str, part: str) -> str:
    """``part``: ``upfront``, or ``success:{n}`` for the n-th recovery."""
    return f"post:{tenant}:{connection}:{FEE_KIND}:{invoice}:{part}"


def fee_amount(base: Decimal, percent: Decimal, currency: str) -> Decimal:
    """``percent`` of ``base``, rounded half up to the currency's minor unit."""
    return (base * percent / 100).quantize(Decimal(1).scaleb(-minor_unit(currency)), rounding=ROUND_HALF_UP)


@dataclass(frozen=True, slots=True)
class EligibleInvoice:
    connection: str
    invoice: str
    number: str | None
    customer: str
    customer_name: str | None
    due_date: date
    days_overdue: int
    balance: Decimal
    currency: str


# --------------------------------------------------------------------------- eligibility


def _placed(session: Session, connections: Sequence[str]) -> set[InvoiceRef]:
    rows = session.execute(
        sa.select(col(Placement.connection_id), col(Placement.invoice_external_id)).where(
            col(Placement.connection_id).in_(connections)
        )
    )
    return {(connection, invoice) for connection, invoice in rows}


def eligible(
    session: Session, tenant: str, connections: Sequence[str], settings: CollectionsSettings, today: date
) -> list[EligibleInvoice]:
    """Open invoices of ``connections`` at least ``settings.eligible_after_days`` past due on ``today``,
    not placed yet and not under a dispute or hold; the oldest first."""
    if not connections:
        return []
    cutoff = date.fromordinal(today.toordinal() - settings.eligible_after_days)
    rows = session.execute(
        sa.select(Invoice, col(Customer.name))
        .outerjoin(
            Customer,
            sa.and_(
                col(Customer.connection_id) == col(Invoice.connection_id),
                col(Customer.external_id) == col(Invoice.customer_external_id),
            ),
        )
        .join(Connection, col(Connection.id) == col(Invoice.connection_id))
        .where(
            col(Connection.tenant_id) == tenant,
            col(Invoice.connection_id).in_(connections),
            col(Invoice.status).in_(OPEN),
            col(Invoice.due_date).is_not(None),
            col(Invoice.due_date) <= cutoff,
            col(Invoice.customer_external_id).is_not(None),
        )
        .order_by(col(Invoice.due_date), col(Invoice.connection_id), col(Invoice.external_id))
    )
    placed = _placed(session, connections)
    held = blocking_holds(session, connections, today)
    found = []
    for invoice, name in rows:
        ref = (invoice.connection_id, invoice.external_id)
        # the balance is compared here: SQLite keeps money as text, which does not compare as numbers
        if ref in placed or ref in held or invoice.due_date is None or invoice.balance <= 0:
            continue
        found.append(
            EligibleInvoice(
                connection=invoice.connection_id,
                invoice=invoice.external_id,
                number=invoice.number,
                customer=str(invoice.customer_external_id),
                customer_name=name,
                due_date=invoice.due_date,
                days_overdue=(today - invoice.due_date).days,
                balance=invoice.balance,
                currency=invoice.currency,
            )
        )
    return found


# --------------------------------------------------------------------------- the package


def _payments(session: Session, connection: str, invoice: str) -> list[dict[str, Any]]:
    rows = session.execute(
        sa.select(
            col(Payment.external_id),
            col(Payment.payment_date),
            col(PaymentApplication.amount),
            col(Payment.currency),
            col(Payment.method),
            col(Payment.reference),
            col(Payment.kind),
        )
        .join(Payment, col(Payment.id) == col(PaymentApplication.payment_id))
        .where(
            col(Payment.connection_id) == connection,
            col(Payment.status).not_in(DEAD_PAYMENTS),
            col(PaymentApplication.target_entity) == "invoice",
            col(PaymentApplication.target_external_id) == invoice,
        )
        .order_by(col(Payment.payment_date), col(Payment.external_id))
    )
    return [
        {
            "payment": external_id,
            "date": paid_on.isoformat() if paid_on else None,
            "amount": amount,
            "currency": currency,
            "method": method,
            "reference": reference,
            "kind": kind,
        }
        for external_id, paid_on, amount, currency, method, reference, kind in rows
    ]


def _paid(session: Session, connection: str, invoice: str) -> Decimal:
    total = session.execute(
        sa.select(col(PaymentApplication.amount))
        .join(Payment, col(Payment.id) == col(PaymentApplication.payment_id))
        .where(
            col(Payment.connection_id) == connection,
            col(Payment.status).not_in(DEAD_PAYMENTS),
            col(PaymentApplication.target_entity) == "invoice",
            col(PaymentApplication.target_external_id) == invoice,
        )
    ).scalars()
    return sum(total, ZERO)


def _dunning_history(session: Session, connection: str, customer: str, invoice: str) -> list[dict[str, Any]]:
    """The messages about this invoice, and those about the customer's whole account (statements)."""
    rows = session.execute(
        sa.select(DunningMessage)
        .where(
            col(DunningMessage.connection_id) == connection,
            col(DunningMessage.customer_external_id) == customer,
            sa.or_(
                col(DunningMessage.invoice_external_id) == invoice, col(DunningMessage.invoice_external_id).is_(None)
            ),
        )
        .order_by(col(DunningMessage.sent_at), col(DunningMessage.id))
    ).scalars()
    return [
        {
            "sent_at": m.sent_at.isoformat() if m.sent_at else None,
            "channel": m.channel,
            "template": m.template,
            "address": m.address,
            "status": m.status,
            "about": "invoice" if m.invoice_external_id else "account",
        }
        for m in rows
    ]


def _debtor(session: Session, connection: str, customer: str) -> dict[str, Any]:
    row = session.execute(
        sa.select(Customer).where(col(Customer.connection_id) == connection, col(Customer.external_id) == customer)
    ).scalar_one_or_none()
    if row is None:
        return {"id": customer, "name": None, "company_name": None, "phone": None, "contacts": []}
    contacts = session.execute(
        sa.select(CustomerContact).where(col(CustomerContact.customer_id) == row.id).order_by(col(CustomerContact.id))
    ).scalars()
    return {
        "id": customer,
        "name": row.name,
        "company_name": row.company_name,
        "phone": row.phone,
        "contacts": [{"name": c.name, "email": c.email, "role": c.role} for c in contacts],
    }


def _package(
    session: Session,
    tenant: str,
    invoice: Invoice,
    settings: CollectionsSettings,
    notes: str,
    now: datetime,
    today: date,
) -> dict[str, Any]:
    assert invoice.due_date is not None and invoice.customer_external_id is not None
    customer = invoice.customer_external_id
    return {
        "tenant": tenant,
        "connection": invoice.connection_id,
        "invoice": invoice.external_id,
        "customer": customer,
        "agency": settings.agency_name,
        "created": now.isoformat(),
        "notes": notes,
        "amount": invoice.balance,
        "currency": invoice.currency,
        "terms": {"upfront_percent": settings.upfront_percent, "success_percent": settings.success_percent},
        "paid_before": _paid(session, invoice.connection_id, invoice.external_id),
        "details": {
            "number": invoice.number or invoice.external_id,
            "issue_date": invoice.issue_date.isoformat() if invoice.issue_date else None,
            "due_date": invoice.due_date.isoformat(),
            "days_overdue": (today - invoice.due_date).days,
            "total": invoice.total,
            "balance": invoice.balance,
            "currency": invoice.currency,
            "terms": invoice.terms,
            "memo": invoice.memo,
        },
        "debtor": _debtor(session, invoice.connection_id, customer),
        "payments": _payments(session, invoice.connection_id, invoice.external_id),
        "dunning": _dunning_history(session, invoice.connection_id, customer, invoice.external_id),
    }


def _fee_intent(
    tenant: str,
    connection: str,
    invoice: str,
    customer: str,
    part: str,
    amount: Decimal,
    currency: str,
    description: str,
    agency: str,
    today: date,
) -> journal.Intent:
    key = fee_key(tenant, connection, invoice, part)
    payload = {
        "connection": connection,
        "posting_kind": FEE_KIND,
        "reference": key,
        "invoice_external_id": invoice,
        "customer_external_id": customer,
        "amount": amount,
        "currency": currency,
        "description": description,
        "contact_name": agency,
        "date": today.isoformat(),
    }
    return journal.Intent(key, tenant, POSTING_KIND, payload, f"{FEE_KIND}:{connection}:{invoice}")


# --------------------------------------------------------------------------- submit and recover


def _invoice(session: Session, tenant: str, ref: InvoiceRef) -> Invoice:
    connection, external = ref
    row = session.execute(
        sa.select(Invoice)
        .join(Connection, col(Connection.id) == col(Invoice.connection_id))
        .where(
            col(Connection.tenant_id) == tenant,
            col(Invoice.connection_id) == connection,
            col(Invoice.external_id) == external,
        )
    ).scalar_one_or_none()
    if row is None:
        raise CollectionsError(f"invoice {connection}:{external} is not in tenant {tenant}'s ledger")
    return row


def _placement(session: Session, ref: InvoiceRef, *, lock: bool = False) -> Placement | None:
    query = sa.select(Placement).where(
        col(Placement.connection_id) == ref[0], col(Placement.invoice_external_id) == ref[1]
    )
    if lock and session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    return session.execute(query).scalar_one_or_none()


def submit(
    session: Session,
    tenant: str,
    invoice_ref: InvoiceRef,
    settings: CollectionsSettings,
    notes: str,
    now: datetime,
    today: date | None = None,
) -> Placement:
    """Hand ``invoice_ref`` to the agency: the placement, the package and the upfront fee, in the caller's
    transaction. ``today`` (the tenant's day; default ``now``'s date) decides eligibility.

    Raises :class:`CollectionsError` for an unknown invoice, one already placed, or one not eligible.
    """
    day = today or now.date()
    invoice = _invoice(session, tenant, invoice_ref)
    ref = (invoice.connection_id, invoice.external_id)
    shown = f"{ref[0]}:{invoice.number or ref[1]}"
    existing = _placement(session, ref)
    if existing is not None:
        when = existing.submitted_at.date().isoformat() if existing.submitted_at else "?"
        raise CollectionsError(f"invoice {shown} was already handed to {existing.agency} on {when} ({existing.status})")
    if invoice.status not in OPEN or invoice.balance <= 0:
        raise CollectionsError(
            f"invoice {shown} is {invoice.status} with balance {show_money(invoice.balance, invoice.currency)}: "
            "nothing to collect"
        )
    if invoice.customer_external_id is None:
        raise CollectionsError(f"invoice {shown} has no customer")
    if invoice.due_date is None:
        raise CollectionsError(f"invoice {shown} has no due date")
    overdue = (day - invoice.due_date).days
    if overdue < settings.eligible_after_days:
        raise CollectionsError(
            f"invoice {shown} is {max(overdue, 0)} days past due; collections takes invoices "
            f"{settings.eligible_after_days} days past due "
            f"(from {_plus(invoice.due_date, settings.eligible_after_days)})"
        )
    hold = blocking_holds(session, [ref[0]], day, ref).get(ref)
    if hold is not None:
        raise CollectionsError(f"invoice {shown} is under a {hold}; release it before handing it over")
    package = _package(session, tenant, invoice, settings, notes, now, day)
    key = collections_key(tenant, ref[0], ref[1])
    placement = Placement(
        tenant_id=tenant,
        connection_id=ref[0],
        invoice_external_id=ref[1],
        customer_external_id=invoice.customer_external_id,
        amount=invoice.balance,
        currency=invoice.currency,
        agency=settings.agency_name,
        notes=notes,
        status="submitted",
        recovered=ZERO,
        submitted_at=now,
        updated_at=now,
    )
    try:
        with session.begin_nested():
            session.add(placement)
            session.flush()
    except IntegrityError:
        raise CollectionsError(f"invoice {shown} was handed to collections at the same time") from None
    if not journal.record(session, journal.Intent(key, tenant, KIND, package, f"invoice:{ref[0]}:{ref[1]}"), now):
        raise CollectionsError(f"invoice {shown} was already handed to collections (journal {key})")
    upfront = fee_amount(invoice.balance, settings.upfront_percent, invoice.currency)
    if upfront > 0:
        journal.record(
            session,
            _fee_intent(
                tenant,
                ref[0],
                ref[1],
                invoice.customer_external_id,
                "upfront",
                upfront,
                invoice.currency,
                f"Collections upfront fee ({settings.upfront_percent}% of "
                f"{show_money(invoice.balance, invoice.currency)}), "
                f"invoice {invoice.number or ref[1]}, {settings.agency_name}",
                settings.agency_name,
                day,
            ),
            now,
        )
    _close_tasks(session, ref, now)
    session.flush()
    return placement


def _plus(day: date, days: int) -> str:
    return date.fromordinal(day.toordinal() + days).isoformat()


def _close_tasks(session: Session, ref: InvoiceRef, now: datetime) -> None:
    """The open ``collections`` tasks of the invoice are done: it has been handed over."""
    session.execute(
        sa.update(DunningTask)
        .where(
            col(DunningTask.connection_id) == ref[0],
            col(DunningTask.invoice_external_id) == ref[1],
            col(DunningTask.kind) == KIND,
            col(DunningTask.status) == "open",
        )
        .values(status="done", outcome="submitted", outcome_note="handed to collections", done_at=now)
    )


def _terms(session: Session, tenant: str, ref: InvoiceRef) -> Mapping[str, Any]:
    """The package journaled at submission (its ``terms`` and ``paid_before``)."""
    text = session.execute(
        sa.select(col(JournalEntry.payload)).where(col(JournalEntry.key) == collections_key(tenant, ref[0], ref[1]))
    ).scalar_one_or_none()
    if text is None:
        return {}
    package: Mapping[str, Any] = jsonwire.loads(text)
    return package


def _recoveries(session: Session, tenant: str, ref: InvoiceRef) -> int:
    prefix = fee_key(tenant, ref[0], ref[1], "success:")
    found = session.execute(
        sa.select(sa.func.count()).select_from(JournalEntry).where(col(JournalEntry.key).startswith(prefix))
    ).scalar_one()
    return int(found)


def record_recovery(
    session: Session, tenant: str, invoice_ref: InvoiceRef, amount: Decimal, now: datetime
) -> Placement:
    """Book ``amount`` the agency recovered on ``invoice_ref``, and its success fee, in the caller's transaction.

    The fee is the placement's ``success_percent`` (as at submission) of ``amount``, journaled as the
    posting ``...:success:{n}`` (n: this placement's n-th fee). ``amount`` must be positive and at most
    what is still outstanding with the agency.
    """
    if not isinstance(amount, Decimal) or not amount.is_finite() or amount <= 0:
        raise CollectionsError(f"a recovered amount must be a positive Decimal, not {amount!r}")
    ref = (invoice_ref[0], invoice_ref[1])
    placement = _placement(session, ref, lock=True)
    if placement is None or placement.tenant_id != tenant:
        raise CollectionsError(f"invoice {ref[0]}:{ref[1]} has not been handed to collections")
    outstanding = placement.amount - placement.recovered
    if placement.status not in ACTIVE or outstanding <= 0:
        raise CollectionsError(f"the placement of invoice {ref[0]}:{ref[1]} is {placement.status}")
    if amount > outstanding:
        raise CollectionsError(
            f"{show_money(amount, placement.currency)} is more than the "
            f"{show_money(outstanding, placement.currency)} "
            f"still outstanding on invoice {ref[0]}:{ref[1]}"
        )
    terms = _terms(session, tenant, ref).get("terms") or {}
    percent = Decimal(str(terms.get("success_percent", 0)))
    fee = fee_amount(amount, percent, placement.currency)
    if fee > 0:
        n = _recoveries(session, tenant, ref) + 1
        journal.record(
            session,
            _fee_intent(
                tenant,
                ref[0],
                ref[1],
                placement.customer_external_id,
                f"success:{n}",
                fee,
                placement.currency,
                f"Collections success fee ({percent}% of {show_money(amount, placement.currency)} recovered), "
                f"invoice {ref[1]}, {placement.agency}",
                placement.agency,
                now.date(),
            ),
            now,
        )
    placement.recovered = placement.recovered + amount
    if placement.recovered >= placement.amount:
        placement.status = "recovered"
    placement.updated_at = now
    session.flush()
    return placement


def notice_recoveries(session: Session, tenant: str, connections: Sequence[str], now: datetime) -> int:
    """Book, for every active placement of ``connections``, what payments in the ledger recovered since the
    last look; returns how many placements had a recovery. Running it again books nothing new.

    A recovery is the fall of the invoice's balance below what is still outstanding with the agency
    (``amount - recovered``), up to the payments applied to it since submission: a credit note or a void
    lowers the balance without recovering anything.
    """
    if not connections:
        return 0
    rows = session.execute(
        sa.select(Placement, col(Invoice.balance), col(Invoice.status))
        .outerjoin(
            Invoice,
            sa.and_(
                col(Invoice.connection_id) == col(Placement.connection_id),
                col(Invoice.external_id) == col(Placement.invoice_external_id),
            ),
        )
        .where(
            col(Placement.tenant_id) == tenant,
            col(Placement.connection_id).in_(connections),
            col(Placement.status).in_(ACTIVE),
        )
        .order_by(col(Placement.id))
    )
    noticed = 0
    for placement, balance, status in list(rows):
        ref = (placement.connection_id, placement.invoice_external_id)
        outstanding = placement.amount - placement.recovered
        if balance is None or outstanding <= 0:
            continue
        drop = outstanding - max(balance, ZERO)
        if drop > 0:
            package = _terms(session, tenant, ref)
            paid_before = Decimal(str(package.get("paid_before", 0)))
            paid_since = _paid(session, ref[0], ref[1]) - paid_before - placement.recovered
            recovered = min(drop, paid_since)
            if recovered > 0:
                record_recovery(session, tenant, ref, recovered, now)
                noticed += 1
        if placement.status in ACTIVE and (balance <= 0 or status not in OPEN):
            # Nothing is left to collect (paid off partly by credit, or voided): the placement ends.
            placement.status = "closed"
            placement.updated_at = now
    session.flush()
    return noticed


def placements(session: Session, tenant: str, statuses: Sequence[str] | None = None) -> list[Placement]:
    """A tenant's placements, the newest first."""
    query = sa.select(Placement).where(col(Placement.tenant_id) == tenant)
    if statuses:
        query = query.where(col(Placement.status).in_(list(statuses)))
    return list(session.execute(query.order_by(col(Placement.submitted_at).desc(), col(Placement.id).desc())).scalars())


# --------------------------------------------------------------------------- sending the package


def _day(value: object) -> date | None:
    return date.fromisoformat(value) if isinstance(value, str) and value else None


def _money(value: object) -> Decimal:
    return value if isinstance(value, Decimal) else Decimal(str(value))


def package_context(package: Mapping[str, Any], agency: str) -> dict[str, object]:
    """The ``collections_package`` template's context from a journaled package."""
    details = dict(package["details"])
    currency = str(package["currency"])
    invoice = {
        "number": details["number"],
        "issue_date": _day(details.get("issue_date")),
        "due_date": _day(details.get("due_date")),
        "total": _money(details["total"]),
        "balance": _money(package["amount"]),
        "currency": currency,
        "days_overdue": int(details.get("days_overdue") or 0),
        "terms": details.get("terms"),
        "pdf_url": None,
        "pay_url": None,
    }
    payments = [{**p, "date": _day(p.get("date")), "amount": _money(p["amount"])} for p in package.get("payments", [])]
    history = [
        {**m, "sent_at": datetime.fromisoformat(m["sent_at"]) if m.get("sent_at") else None}
        for m in package.get("dunning", [])
    ]
    return {
        "customer": agency,
        "agency": agency,
        "invoice": invoice,
        "debtor": package["debtor"],
        "payments": payments,
        "history": history,
        "notes": package.get("notes") or "",
        "reference": package.get("reference", ""),
    }


class CollectionsSender:
    """The journal handler for ``collections`` entries of one tenant: the package to the agency, then
    the placement marked ``placed``.

    With ``settings.webhook``, the package is the ``data`` of a signed ``collections.submitted`` event
    (:class:`~collect.webhooks.WebhookSender`; sent again after an unknown outcome, the agency
    deduplicating on its id). Otherwise, with ``settings.email``, ``mail`` and ``templates``, it is an
    email from the ``collections_package`` template whose Message-ID derives from the journal key, so a
    resend after a crash carries the same Message-ID. Neither configured: the entry fails with the reason.
    An invoice paid, credited or voided since it was submitted is not handed over (the placement is
    ``closed``), unless an earlier attempt may already have delivered it.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        settings: CollectionsSettings,
        clock: Clock,
        *,
        webhooks: WebhookSender | None = None,
        mail: SmtpSender | None = None,
        templates: Templates | None = None,
        backoff_base: float = 300.0,
        max_attempts: int = 20,
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.clock = clock
        self.webhooks = webhooks or (WebhookSender(settings.webhook, clock) if settings.webhook else None)
        self.mail = mail
        self.templates = templates
        self.backoff_base = backoff_base
        self.max_attempts = max_attempts

    def __call__(self, entry: Claimed) -> Outcome:
        return self.handle(entry)

    def handle(self, entry: Claimed) -> Outcome:
        package = dict(entry.payload)
        ref = (str(package["connection"]), str(package["invoice"]))
        if not entry.outcome_unknown:
            settled = self._settled(entry.tenant, ref)
            if settled is not None:
                return GiveUp(f"not handed over: {settled}")
        if self.settings.webhook is not None and self.webhooks is not None:
            outcome = self.webhooks.deliver(entry.key, EVENT_TYPE, package, attempt=entry.attempt)
            channel = "webhook"
        elif self.settings.email is not None and self.mail is not None and self.templates is not None:
            outcome = self._email(entry, package)
            channel = "email"
        else:
            return GiveUp(
                f"no way to reach {self.settings.agency_name}: configure collections.webhook or "
                "collections.email (with dunning.mail)"
            )
        if isinstance(outcome, Done):
            self._placed(entry.tenant, ref)
            return Done(outcome.external_id, {**dict(outcome.result or {}), "channel": channel})
        return outcome

    def _email(self, entry: Claimed, package: Mapping[str, Any]) -> Outcome:
        assert self.mail is not None and self.templates is not None and self.settings.email is not None
        try:
            context = package_context({**package, "reference": entry.key}, self.settings.agency_name)
            subject, text, html = self.templates.render(TEMPLATE, context)
        except (TemplateProblem, KeyError, ValueError, ArithmeticError) as exc:
            return GiveUp(f"collections package for {self.settings.agency_name}: {exc}")
        message = OutgoingMessage(key=entry.key, to=(self.settings.email,), subject=subject, text=text, html=html)
        try:
            result = self.mail.send(message)
        except TransientSendError as exc:
            if entry.attempt >= self.max_attempts:
                return GiveUp(f"{exc} (after {entry.attempt} attempts)")
            wait = compute_backoff(entry.attempt, base=self.backoff_base, cap=6 * 3600.0)
            return RetryAt(self.clock() + timedelta(seconds=wait), str(exc))
        except (HardBounce, MailConfigError, MessageRejected) as exc:
            return GiveUp(f"collections email to {self.settings.email}: {exc}")
        except (SendError, ValueError) as exc:
            return GiveUp(f"collections email to {self.settings.email}: {exc}")
        return Done(result.message_id, {"to": self.settings.email})

    def _settled(self, tenant: str, ref: InvoiceRef) -> str | None:
        """Why the package must not leave (the invoice was paid, credited or voided since it was submitted);
        the placement is then ``closed``. None: send it."""
        now = self.clock()
        with self.sessions.begin() as session:
            row = session.execute(
                sa.select(col(Invoice.status), col(Invoice.balance), col(Invoice.currency)).where(
                    col(Invoice.connection_id) == ref[0], col(Invoice.external_id) == ref[1]
                )
            ).first()
            if row is None:
                why = f"invoice {ref[0]}:{ref[1]} is no longer in the ledger"
            elif row[0] not in OPEN or row[1] <= 0:
                why = f"invoice {ref[0]}:{ref[1]} is {row[0]} with balance {show_money(row[1], row[2])} now"
            else:
                return None
            session.execute(
                sa.update(Placement)
                .where(
                    col(Placement.tenant_id) == tenant,
                    col(Placement.connection_id) == ref[0],
                    col(Placement.invoice_external_id) == ref[1],
                    col(Placement.status) == "submitted",
                )
                .values(status="closed", updated_at=now)
            )
        return why

    def _placed(self, tenant: str, ref: InvoiceRef) -> None:
        now = self.clock()
        with self.sessions.begin() as session:
            session.execute(
                sa.update(Placement)
                .where(
                    col(Placement.tenant_id) == tenant,
                    col(Placement.connection_id) == ref[0],
                    col(Placement.invoice_external_id) == ref[1],
                    col(Placement.status) == "submitted",
                )
                .values(status="placed", updated_at=now)
            )
