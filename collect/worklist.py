"""The person-facing side of dunning: the worklist, task outcomes, holds and opt-outs.

The worklist is every open :class:`~sync.models.DunningTask` of a tenant, most
urgent first. Priority is ``risk weight x amount x age``: the customer's risk
weight (low 1, medium 2, high 3, see :mod:`collect.risk`), the amount at stake
(the invoice's balance for an invoice task, the customer's open balance for a
customer task, unconverted) and the age (days past due of the invoice, or of
the customer's oldest overdue invoice; at least 1).

A task's outcome feeds the holds that dunning respects:

- ``promise``: a promise to pay ``amount`` by ``until`` (an ``invoice_hold`` of
  kind ``promise``, with the balance when it was made);
- ``dispute``: the invoice is disputed (kind ``dispute``, until resolved);
- ``paid``: the customer says they paid; a plain hold for
  :data:`PAID_WAIT_DAYS` days so that dunning waits for the payment to reach
  the ledger;
- ``no-answer``: nothing but the record.

A customer task (no invoice) puts a promise or a dispute on the customer's
oldest overdue invoice (else its oldest open one), and ``paid`` on every open
invoice of the customer.

Every mistake raises :class:`WorklistError` (a ``ValueError``) with a message
that names what is wrong.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlmodel import col

from collect.aging import OPEN_STATUSES
from collect.marks import put_hold
from collect.risk import RISK_WEIGHT, RiskAssessment, RiskFacts, format_amount, risk_facts, score
from collect.standing import CustomerRef, InvoiceRef
from connectors.values import minor_unit
from sync.models import (
    ContactBlock,
    Customer,
    DunningMessage,
    DunningTask,
    Invoice,
    InvoiceHold,
    LateFeeWaiver,
)

Outcome = Literal["promise", "dispute", "paid", "no-answer"]
OUTCOMES: tuple[Outcome, ...] = ("promise", "dispute", "paid", "no-answer")
Channel = Literal["email", "sms"]
CHANNELS: tuple[Channel, ...] = ("email", "sms")
PAID_WAIT_DAYS = 7
"""How long a ``paid`` outcome holds dunning back while the payment finds its way into the ledger."""
MESSAGES_SHOWN = 10
CHUNK = 500
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class WorklistError(ValueError):
    """A task, hold or opt-out that cannot be recorded as asked; the message names what is wrong."""


@dataclass(frozen=True, slots=True)
class WorkItem:
    task: DunningTask
    customer: CustomerRef
    customer_name: str | None
    invoice_number: str | None
    amount: Decimal
    currency: str | None
    days_overdue: int
    risk: RiskAssessment
    priority: Decimal


@dataclass(frozen=True, slots=True)
class TaskResult:
    task: DunningTask
    holds: tuple[InvoiceHold, ...]
    """The holds the outcome put on invoices (none for ``no-answer``)."""


@dataclass(frozen=True, slots=True)
class LedgerInvoice:
    """The columns of an invoice the worklist and the holds look at."""

    ref: InvoiceRef
    customer: str | None
    number: str | None
    due: date | None
    currency: str
    balance: Decimal
    status: str


_INVOICE_COLUMNS = (
    col(Invoice.connection_id),
    col(Invoice.external_id),
    col(Invoice.customer_external_id),
    col(Invoice.number),
    col(Invoice.due_date),
    col(Invoice.currency),
    col(Invoice.balance),
    col(Invoice.status),
)


def _as_invoice(row: Any) -> LedgerInvoice:
    connection, external_id, customer, number, due, currency, balance, status = row
    return LedgerInvoice((connection, external_id), customer, number, due, currency, balance, status)


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]


def _invoices(session: Session, refs: set[InvoiceRef]) -> dict[InvoiceRef, LedgerInvoice]:
    found: dict[InvoiceRef, LedgerInvoice] = {}
    by_connection: dict[str, list[str]] = {}
    for connection, external_id in refs:
        by_connection.setdefault(connection, []).append(external_id)
    for connection, ids in by_connection.items():
        for chunk in _chunks(sorted(ids)):
            rows = session.execute(
                sa.select(*_INVOICE_COLUMNS).where(
                    col(Invoice.connection_id) == connection, col(Invoice.external_id).in_(chunk)
                )
            )
            for row in rows:
                invoice = _as_invoice(row)
                found[invoice.ref] = invoice
    return found


def _customer_names(session: Session, refs: set[CustomerRef]) -> dict[CustomerRef, str]:
    found: dict[CustomerRef, str] = {}
    by_connection: dict[str, list[str]] = {}
    for connection, external_id in refs:
        by_connection.setdefault(connection, []).append(external_id)
    for connection, ids in by_connection.items():
        for chunk in _chunks(sorted(ids)):
            rows = session.execute(
                sa.select(col(Customer.external_id), col(Customer.name)).where(
                    col(Customer.connection_id) == connection, col(Customer.external_id).in_(chunk)
                )
            )
            for external_id, name in rows:
                found[(connection, external_id)] = name
    return found


def _invoice(session: Session, ref: InvoiceRef) -> LedgerInvoice:
    row = session.execute(
        sa.select(*_INVOICE_COLUMNS).where(col(Invoice.connection_id) == ref[0], col(Invoice.external_id) == ref[1])
    ).first()
    if row is None:
        raise WorklistError(f"invoice {ref[0]}:{ref[1]} is not in the ledger")
    return _as_invoice(row)


def _open_invoice(session: Session, ref: InvoiceRef) -> LedgerInvoice:
    invoice = _invoice(session, ref)
    if invoice.status not in OPEN_STATUSES or invoice.balance <= 0:
        raise WorklistError(f"invoice {_name(invoice)} owes nothing (status {invoice.status})")
    return invoice


def _name(invoice: LedgerInvoice) -> str:
    return f"{invoice.ref[0]}:{invoice.number or invoice.ref[1]}"


def _customer_open_invoices(session: Session, customer: CustomerRef) -> list[LedgerInvoice]:
    """The customer's open invoices, oldest due first (no due day last)."""
    rows = session.execute(
        sa.select(*_INVOICE_COLUMNS)
        .where(
            col(Invoice.connection_id) == customer[0],
            col(Invoice.customer_external_id) == customer[1],
            col(Invoice.status).in_(OPEN_STATUSES),
        )
        .order_by(col(Invoice.due_date).is_(None), col(Invoice.due_date), col(Invoice.external_id))
    )
    return [i for i in map(_as_invoice, rows) if i.balance > 0]


def _require_customer(session: Session, customer: CustomerRef) -> str:
    name = session.execute(
        sa.select(col(Customer.name)).where(
            col(Customer.connection_id) == customer[0], col(Customer.external_id) == customer[1]
        )
    ).scalar_one_or_none()
    if name is None:
        raise WorklistError(f"customer {customer[0]}:{customer[1]} is not in the ledger")
    return name


def _text(value: str | None, what: str) -> str:
    if value is None or not value.strip():
        raise WorklistError(f"{what} is required")
    return value.strip()


# --- the worklist ---------------------------------------------------------------------------------------


def _amount_at_stake(facts: RiskFacts) -> tuple[Decimal, str | None]:
    """A customer task's amount: its open balance in the currency of its oldest overdue invoice (else the largest)."""
    if facts.oldest_overdue_currency is not None:
        currency = facts.oldest_overdue_currency
        return facts.balances.get(currency, Decimal(0)), currency
    if facts.balances:
        currency, balance = max(facts.balances.items(), key=lambda item: (item[1], item[0]))
        return balance, currency
    return Decimal(0), None


def worklist(
    session: Session,
    tenant: str,
    connections: Sequence[str],
    today: date,
    *,
    limit: int | None = None,
    assignee: str | None = None,
) -> list[WorkItem]:
    """The tenant's open tasks, highest priority first (then oldest task first)."""
    if limit is not None and limit < 1:
        raise WorklistError(f"limit must be at least 1, not {limit}")
    query = (
        sa.select(DunningTask)
        .where(
            col(DunningTask.tenant_id) == tenant,
            col(DunningTask.status) == "open",
            col(DunningTask.connection_id).in_(list(connections)),
        )
        .order_by(col(DunningTask.id))
    )
    if assignee is not None:
        query = query.where(col(DunningTask.assignee) == assignee)
    tasks = list(session.execute(query).scalars())
    customers = {(t.connection_id, t.customer_external_id) for t in tasks}
    facts = risk_facts(session, tenant, connections, today, customers=customers)
    risks = {ref: score(f, today) for ref, f in facts.items()}
    names = _customer_names(session, customers)
    invoices = _invoices(session, {(t.connection_id, t.invoice_external_id) for t in tasks if t.invoice_external_id})
    items = []
    for task in tasks:
        ref = (task.connection_id, task.customer_external_id)
        customer_facts = facts.get(ref, RiskFacts())
        risk = risks.get(ref) or score(customer_facts, today)
        number: str | None = None
        if task.invoice_external_id is not None:
            invoice = invoices.get((task.connection_id, task.invoice_external_id))
            number = invoice.number if invoice is not None else None
            amount = invoice.balance if invoice is not None and invoice.status in OPEN_STATUSES else Decimal(0)
            currency = invoice.currency if invoice is not None else None
            due = invoice.due if invoice is not None else None
            days = (today - due).days if due is not None else 0
        else:
            amount, currency = _amount_at_stake(customer_facts)
            days = customer_facts.days_overdue(today)
        amount = max(amount, Decimal(0))
        priority = RISK_WEIGHT[risk.level] * amount * max(days, 1)
        items.append(WorkItem(task, ref, names.get(ref), number, amount, currency, max(days, 0), risk, priority))
    items.sort(key=lambda item: (-item.priority, item.task.created_at or _EPOCH, item.task.id or 0))
    return items[:limit] if limit is not None else items


# --- task outcomes --------------------------------------------------------------------------------------


def assign_task(session: Session, task_id: int, assignee: str | None) -> DunningTask:
    """Put an open task on a person's worklist (None: back on everyone's)."""
    task = session.get(DunningTask, task_id)
    if task is None:
        raise WorklistError(f"task {task_id} does not exist")
    if task.status != "open":
        raise WorklistError(f"task {task_id} is already {task.status} ({task.outcome}): only open tasks are assigned")
    if assignee is not None and not assignee.strip():
        raise WorklistError("an assignee must not be blank")
    task.assignee = assignee.strip() if assignee is not None else None
    session.flush()
    return task


def complete_task(
    session: Session,
    task_id: int,
    outcome: str,
    *,
    today: date,
    now: datetime,
    amount: Decimal | None = None,
    until: date | None = None,
    reason: str | None = None,
    note: str | None = None,
) -> TaskResult:
    """Record what came of a task, put the hold its outcome calls for, and close the task."""
    if outcome not in OUTCOMES:
        raise WorklistError(f"outcome {outcome!r} is not one of {', '.join(OUTCOMES)}")
    task = session.get(DunningTask, task_id, with_for_update=True)
    if task is None:
        raise WorklistError(f"task {task_id} does not exist")
    if task.status != "open":
        when = f" on {task.done_at:%Y-%m-%d}" if task.done_at is not None else ""
        raise WorklistError(f"task {task_id} is already {task.status}{when} (outcome {task.outcome or 'none'})")
    if outcome != "promise" and (amount is not None or until is not None):
        raise WorklistError(f"an amount and a date go with the outcome promise, not {outcome}")
    if outcome == "no-answer" and reason is not None:
        raise WorklistError("a reason goes with the outcomes promise, dispute and paid, not no-answer")
    holds: list[InvoiceHold] = []
    if outcome == "promise":
        if until is None:
            raise WorklistError("a promise needs the date the customer will pay by")
        target = task_invoice(session, task)
        holds.append(promise(session, target.ref, until, today=today, now=now, amount=amount, note=reason or note))
    elif outcome == "dispute":
        why = _text(reason, "a dispute's reason")
        holds.append(dispute(session, task_invoice(session, task).ref, why, now))
    elif outcome == "paid":
        # The ledger may already show the payment: an invoice that owes nothing needs no hold.
        said = f"customer says paid: {(reason or note or 'no details given').strip()}"
        if task.invoice_external_id is not None:
            invoice = _invoice(session, (task.connection_id, task.invoice_external_id))
            owing = [invoice] if invoice.status in OPEN_STATUSES and invoice.balance > 0 else []
        else:
            owing = _customer_open_invoices(session, (task.connection_id, task.customer_external_id))
        for invoice in owing:
            holds.append(put_hold(session, invoice.ref, "hold", said, today + timedelta(days=PAID_WAIT_DAYS), now))
    task.status = "done"
    task.outcome = outcome
    task.outcome_note = note.strip() if note and note.strip() else None
    task.done_at = now
    session.add(task)
    session.flush()
    return TaskResult(task, tuple(holds))


def task_invoice(session: Session, task: DunningTask) -> LedgerInvoice:
    """The invoice a promise or dispute of this task goes on: the task's own, or its customer's oldest
    overdue (else oldest open) invoice."""
    if task.invoice_external_id is not None:
        return _open_invoice(session, (task.connection_id, task.invoice_external_id))
    found = _customer_open_invoices(session, (task.connection_id, task.customer_external_id))
    if not found:
        raise WorklistError(f"customer {task.connection_id}:{task.customer_external_id} has no open invoice")
    return found[0]


# --- holds ----------------------------------------------------------------------------------------------


def check_amount(amount: Decimal, currency: str, what: str = "amount") -> Decimal:
    """A positive amount with no more places than ``currency`` has."""
    if not amount.is_finite() or amount <= 0:
        raise WorklistError(f"{what} {amount} must be more than zero")
    places = minor_unit(currency)
    exponent = amount.normalize().as_tuple().exponent
    assert isinstance(exponent, int)
    if -exponent > places:
        raise WorklistError(f"{what} {amount} has more than {places} decimal places for {currency}")
    return amount


def _release(session: Session, invoice: InvoiceRef, kind: str, outcome: str, now: datetime) -> int:
    result = session.execute(
        sa.update(InvoiceHold)
        .where(
            col(InvoiceHold.connection_id) == invoice[0],
            col(InvoiceHold.invoice_external_id) == invoice[1],
            col(InvoiceHold.kind) == kind,
            col(InvoiceHold.released_at).is_(None),
        )
        .values(released_at=now, outcome=outcome)
    )
    return int(getattr(result, "rowcount", 0))


def promise(
    session: Session,
    invoice: InvoiceRef,
    until: date,
    *,
    today: date,
    now: datetime,
    amount: Decimal | None = None,
    note: str | None = None,
) -> InvoiceHold:
    """A promise to pay ``amount`` (default: the whole balance) by ``until``; it replaces an open promise."""
    row = _open_invoice(session, invoice)
    if until < today:
        raise WorklistError(f"the promised date {until.isoformat()} is before today ({today.isoformat()})")
    if amount is None:
        amount = row.balance
    else:
        check_amount(amount, row.currency)
        if amount > row.balance:
            raise WorklistError(
                f"amount {format_amount(amount, row.currency)} is more than invoice {_name(row)}'s balance"
                f" {format_amount(row.balance, row.currency)}"
            )
    _release(session, invoice, "promise", "released", now)
    reason = (note or "").strip() or f"promised {format_amount(amount, row.currency)} by {until.isoformat()}"
    hold = InvoiceHold(
        connection_id=invoice[0],
        invoice_external_id=invoice[1],
        kind="promise",
        reason=reason,
        until=until,
        amount=amount,
        balance_at=row.balance,
        created_at=now,
    )
    session.add(hold)
    session.flush()
    return hold


def current_due_date(session: Session, invoice: InvoiceRef) -> date | None:
    """The invoice's due date, or the new one an open extension gave it."""
    row = _invoice(session, invoice)
    extended = session.execute(
        sa.select(sa.func.max(col(InvoiceHold.until))).where(
            col(InvoiceHold.connection_id) == invoice[0],
            col(InvoiceHold.invoice_external_id) == invoice[1],
            col(InvoiceHold.kind) == "extension",
            col(InvoiceHold.released_at).is_(None),
        )
    ).scalar_one_or_none()
    if extended is not None and (row.due is None or extended > row.due):
        return extended
    return row.due


def extend(session: Session, invoice: InvoiceRef, to: date, reason: str, now: datetime) -> InvoiceHold:
    """Move the invoice's due date to ``to`` (which must be later than its current one)."""
    why = _text(reason, "an extension's reason")
    _open_invoice(session, invoice)
    due = current_due_date(session, invoice)
    if due is not None and to <= due:
        raise WorklistError(f"the new due date {to.isoformat()} must be after the current one ({due.isoformat()})")
    _release(session, invoice, "extension", "released", now)
    hold = InvoiceHold(
        connection_id=invoice[0], invoice_external_id=invoice[1], kind="extension", reason=why, until=to, created_at=now
    )
    session.add(hold)
    session.flush()
    return hold


def dispute(session: Session, invoice: InvoiceRef, reason: str, now: datetime) -> InvoiceHold:
    """The customer disputes the invoice: nothing is charged or chased until it is resolved."""
    why = _text(reason, "a dispute's reason")
    _invoice(session, invoice)
    return put_hold(session, invoice, "dispute", why, None, now)


def resolve_dispute(session: Session, invoice: InvoiceRef, now: datetime) -> int:
    """End the invoice's open disputes (outcome ``resolved``); returns how many."""
    row = _invoice(session, invoice)
    resolved = _release(session, invoice, "dispute", "resolved", now)
    if not resolved:
        raise WorklistError(f"invoice {_name(row)} has no open dispute")
    return resolved


def waive_late_fees(
    session: Session, invoice: InvoiceRef, step: str | None, reason: str, now: datetime
) -> LateFeeWaiver:
    """Forgive the late fee of one step (``step`` None: every late fee on the invoice from now on)."""
    why = _text(reason, "a waiver's reason")
    _invoice(session, invoice)
    waiver = LateFeeWaiver(
        connection_id=invoice[0],
        invoice_external_id=invoice[1],
        step=step.strip() if step and step.strip() else None,
        reason=why,
        created_at=now,
    )
    session.add(waiver)
    session.flush()
    return waiver


# --- opt-outs -------------------------------------------------------------------------------------------

_PHONE = re.compile(r"\+?[0-9][0-9 ().-]{4,}[0-9]")


def _address(channel: str, address: str | None) -> str | None:
    if channel not in CHANNELS:
        raise WorklistError(f"channel {channel!r} is not one of {', '.join(CHANNELS)}")
    if address is None or not address.strip():
        return None
    text = address.strip()
    if channel == "email":
        if "@" not in text.strip("@") or " " in text:
            raise WorklistError(f"address {text!r} is not an email address")
        return text.lower()
    if not _PHONE.fullmatch(text):
        raise WorklistError(f"address {text!r} is not a phone number")
    return text


def opt_out(
    session: Session, customer: CustomerRef, channel: str, address: str | None, reason: str, now: datetime
) -> ContactBlock:
    """Stop using a channel (one address of it, or every address when ``address`` is None) for a customer."""
    normalized = _address(channel, address)
    why = _text(reason, "an opt-out's reason")
    _require_customer(session, customer)
    existing = session.execute(
        sa.select(ContactBlock).where(*_block_filter(customer, channel), _same_address(normalized))
    ).scalar_one_or_none()
    if existing is not None:
        return existing
    block = ContactBlock(
        connection_id=customer[0],
        customer_external_id=customer[1],
        channel=channel,
        address=normalized,
        kind="opt_out",
        reason=why,
        created_at=now,
    )
    session.add(block)
    session.flush()
    return block


def opt_in(session: Session, customer: CustomerRef, channel: str, address: str | None = None) -> int:
    """Remove opt-outs of a channel (only that address's when one is given); returns how many."""
    normalized = _address(channel, address)
    _require_customer(session, customer)
    query = sa.delete(ContactBlock).where(*_block_filter(customer, channel))
    if normalized is not None:
        query = query.where(_same_address(normalized))
    return int(getattr(session.execute(query), "rowcount", 0))


def _block_filter(customer: CustomerRef, channel: str) -> tuple[sa.ColumnElement[bool], ...]:
    return (
        col(ContactBlock.connection_id) == customer[0],
        col(ContactBlock.customer_external_id) == customer[1],
        col(ContactBlock.channel) == channel,
        col(ContactBlock.kind) == "opt_out",
    )


def _same_address(address: str | None) -> sa.ColumnElement[bool]:
    return col(ContactBlock.address).is_(None) if address is None else col(ContactBlock.address) == address


# --- one customer, for a person -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OpenInvoice:
    ref: InvoiceRef
    number: str | None
    due: date | None
    days_overdue: int
    balance: Decimal
    currency: str
    holds: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CustomerCard:
    ref: CustomerRef
    name: str
    risk: RiskAssessment
    invoices: tuple[OpenInvoice, ...]
    tasks: tuple[DunningTask, ...]
    messages: tuple[DunningMessage, ...]
    """The last :data:`MESSAGES_SHOWN`, newest first."""
    blocks: tuple[ContactBlock, ...]
    """Opt-outs and undeliverable addresses."""


def describe_hold(hold: InvoiceHold, currency: str) -> str:
    """One line for a person: ``promise: USD 500.00 by 2026-12-05``."""
    match hold.kind:
        case "promise":
            amount = format_amount(hold.amount, currency) if hold.amount is not None else "the balance"
            by = f" by {hold.until.isoformat()}" if hold.until else ""
            return f"promise: {amount}{by}"
        case "extension":
            return f"extension: due {hold.until.isoformat() if hold.until else '?'} ({hold.reason})"
        case _:
            until = f" until {hold.until.isoformat()}" if hold.until else ""
            return f"{hold.kind}: {hold.reason}{until}"


def customer_card(
    session: Session, tenant: str, connections: Sequence[str], customer: CustomerRef, today: date
) -> CustomerCard:
    """Everything a person needs before calling a customer."""
    name = _require_customer(session, customer)
    facts = risk_facts(session, tenant, connections, today, customers={customer})
    risk = score(facts.get(customer, RiskFacts()), today)
    open_invoices = _customer_open_invoices(session, customer)
    holds: dict[str, list[InvoiceHold]] = {}
    for chunk in _chunks([i.ref[1] for i in open_invoices]):
        for hold in session.execute(
            sa.select(InvoiceHold)
            .where(
                col(InvoiceHold.connection_id) == customer[0],
                col(InvoiceHold.invoice_external_id).in_(chunk),
                col(InvoiceHold.released_at).is_(None),
            )
            .order_by(col(InvoiceHold.created_at), col(InvoiceHold.id))
        ).scalars():
            holds.setdefault(hold.invoice_external_id, []).append(hold)
    invoices = tuple(
        OpenInvoice(
            i.ref,
            i.number,
            i.due,
            max((today - i.due).days, 0) if i.due is not None else 0,
            i.balance,
            i.currency,
            tuple(describe_hold(h, i.currency) for h in holds.get(i.ref[1], [])),
        )
        for i in open_invoices
    )
    tasks = tuple(
        session.execute(
            sa.select(DunningTask)
            .where(
                col(DunningTask.connection_id) == customer[0],
                col(DunningTask.customer_external_id) == customer[1],
                col(DunningTask.status) == "open",
            )
            .order_by(col(DunningTask.created_at), col(DunningTask.id))
        ).scalars()
    )
    messages = tuple(
        session.execute(
            sa.select(DunningMessage)
            .where(
                col(DunningMessage.connection_id) == customer[0],
                col(DunningMessage.customer_external_id) == customer[1],
            )
            .order_by(col(DunningMessage.sent_at).desc(), col(DunningMessage.id).desc())
            .limit(MESSAGES_SHOWN)
        ).scalars()
    )
    blocks = tuple(
        session.execute(
            sa.select(ContactBlock)
            .where(
                col(ContactBlock.connection_id) == customer[0],
                col(ContactBlock.customer_external_id) == customer[1],
            )
            .order_by(col(ContactBlock.channel), col(ContactBlock.created_at), col(ContactBlock.id))
        ).scalars()
    )
    return CustomerCard(customer, name, risk, invoices, tasks, messages, blocks)
