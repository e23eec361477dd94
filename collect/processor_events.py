"""Following the processor's event feed into the ledger store, with a persisted cursor.

Each event is applied and the cursor moved past it in one transaction, so a
crash re-applies at most the event it was on, and applying is idempotent
(every row is upserted by the processor's id). Stripe keeps events for 30
days: a tenant whose cursor is older than that has lost events, which
``follow`` reports instead of skipping silently.

What each event does:

* charge: the attempt's row (``processor_payment``) takes the new state; an
  ACH debit that goes from ``processing`` to ``succeeded`` or ``failed`` is
  settled here, and a return after success marks the payment ``returned``
  (write-back reverses it). An attempt we did not make (a payment link paid
  in Checkout) is added under its PaymentIntent id.
* refund, dispute: upserted, linked to the payment by its PaymentIntent. A new
  dispute (a chargeback) puts the invoice on hold: the customer who disputes a
  payment is not charged again until a person releases it.
* payout: upserted; once ``paid``, its balance transactions (gross, fee and
  net per charge, refund and dispute) are loaded, so reconciliation can build
  the deposit that matches the bank line.
* enrolment (a setup link completed): the saved method is recorded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from collect.enrolment import record_enrolment
from collect.marks import put_hold
from connectors.base import (
    ChargeUpdate,
    Clock,
    DisputeUpdate,
    Enrolment,
    EventKind,
    PaymentProcessor,
    PayoutUpdate,
    ProcessorEvent,
    RefundUpdate,
)
from sync.models import (
    BalanceLineRow,
    HostedLinkRow,
    Payout,
    ProcessorCursor,
    ProcessorDispute,
    ProcessorPayment,
    ProcessorRefund,
)

CLOSED_DISPUTE = ("won", "lost", "warning_closed", "charge_refunded")
RETENTION = timedelta(days=30)
"""How long Stripe keeps events."""


@dataclass
class FollowReport:
    applied: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    payouts_loaded: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class EventFollower:
    def __init__(self, sessions: sessionmaker[Session], processor: PaymentProcessor, tenant: str, clock: Clock) -> None:
        self.sessions = sessions
        self.processor = processor
        self.tenant = tenant
        self.clock = clock

    def cursor(self) -> tuple[str | None, datetime | None]:
        with self.sessions() as session:
            row = session.get(ProcessorCursor, self.tenant)
            return (row.last_event_id, row.last_event_created) if row is not None else (None, None)

    def follow(self, *, stop: Callable[[], bool] = lambda: False) -> FollowReport:
        """Apply every event after the cursor, oldest first, then load the lines of paid payouts."""
        report = FollowReport()
        after, after_created = self.cursor()
        if after_created is not None and self.clock() - after_created > RETENTION:
            report.warnings.append(
                f"the last event read ({after}, {after_created.isoformat()}) is older than the processor keeps"
                " events (30 days): changes in between may be missing; payouts are re-read from the payout list"
            )
        for event in self.processor.events(after):
            with self.sessions.begin() as session:
                self._apply(session, event)
                self._advance(session, event)
            report.applied += 1
            report.by_kind[event.kind.value] = report.by_kind.get(event.kind.value, 0) + 1
            if stop():
                break
        report.payouts_loaded = self.load_payout_lines()
        return report

    def _advance(self, session: Session, event: ProcessorEvent) -> None:
        row = session.get(ProcessorCursor, self.tenant)
        if row is None:
            row = ProcessorCursor(tenant_id=self.tenant)
            session.add(row)
        row.last_event_id = event.id
        row.last_event_created = event.created
        row.updated_at = self.clock()

    def _apply(self, session: Session, event: ProcessorEvent) -> None:
        subject = event.subject
        match event.kind, subject:
            case EventKind.CHARGE, ChargeUpdate():
                self._charge(session, subject, event.created)
            case EventKind.REFUND, RefundUpdate():
                self._refund(session, subject)
            case EventKind.DISPUTE, DisputeUpdate():
                self._dispute(session, subject)
            case EventKind.PAYOUT, PayoutUpdate():
                self._payout(session, subject)
            case EventKind.ENROLMENT, Enrolment():
                record_enrolment(session, subject)
            case EventKind.ENROLMENT, None if event.object_id:
                enrolment = self.processor.link_enrolment(event.object_id)
                if enrolment is not None:
                    record_enrolment(session, enrolment)
            case _:
                pass

    def _charge(self, session: Session, update: ChargeUpdate, created: datetime) -> None:
        row = None
        if update.key is not None:
            row = session.execute(
                sa.select(ProcessorPayment).where(col(ProcessorPayment.key) == update.key)
            ).scalar_one_or_none()
        if row is None:
            row = session.execute(
                sa.select(ProcessorPayment).where(col(ProcessorPayment.processor_id) == update.processor_id)
            ).scalar_one_or_none()
        now = self.clock()
        if row is None:
            link = None
            if update.key is not None:
                link = session.execute(
                    sa.select(HostedLinkRow).where(col(HostedLinkRow.key) == update.key)
                ).scalar_one_or_none()
            row = ProcessorPayment(
                key=update.key or f"pi:{update.processor_id}",
                tenant_id=self.tenant,
                connection_id=link.connection_id if link else None,
                invoice_external_id=link.invoice_external_id if link else None,
                customer_external_id=link.customer_external_id if link else None,
                amount=update.amount,
                surcharge=update.amount * 0,
                currency=update.currency,
                state=update.state.value,
                created_at=created,
                updated_at=now,
            )
            session.add(row)
        row.processor_id = update.processor_id
        row.charge_id = update.charge_id or row.charge_id
        row.method_type = update.method_type or row.method_type
        if update.returned:
            row.returned = True
            row.decline_code = update.decline_code or row.decline_code
        elif not (row.state == "succeeded" and update.state.value == "processing"):
            # Events can arrive out of order: a late "processing" never undoes "succeeded".
            row.state = update.state.value
            row.decline_code = update.decline_code
        row.updated_at = now

    def _refund(self, session: Session, update: RefundUpdate) -> None:
        values = {
            "tenant_id": self.tenant,
            "payment_processor_id": update.payment_processor_id,
            "key": update.key,
            "amount": update.amount,
            "currency": update.currency,
            "status": update.status,
            "updated_at": self.clock(),
        }
        _upsert(session, ProcessorRefund, update.refund_id, {"refund_id": update.refund_id, **values})

    def _dispute(self, session: Session, update: DisputeUpdate) -> None:
        if session.get(ProcessorDispute, update.dispute_id) is None:
            self._hold_for_chargeback(session, update)
        values = {
            "tenant_id": self.tenant,
            "payment_processor_id": update.payment_processor_id,
            "charge_id": update.charge_id,
            "amount": update.amount,
            "currency": update.currency,
            "status": update.status,
            "reason": update.reason,
            "updated_at": self.clock(),
        }
        _upsert(session, ProcessorDispute, update.dispute_id, {"dispute_id": update.dispute_id, **values})

    def _hold_for_chargeback(self, session: Session, update: DisputeUpdate) -> None:
        """A customer who disputes a payment must not be charged again for the invoice: hold it for a person."""
        if update.payment_processor_id is None or update.status in CLOSED_DISPUTE:
            return
        paid = session.execute(
            sa.select(col(ProcessorPayment.connection_id), col(ProcessorPayment.invoice_external_id)).where(
                col(ProcessorPayment.processor_id) == update.payment_processor_id
            )
        ).first()
        if paid is None or paid[0] is None or paid[1] is None:
            return
        reason = f"chargeback {update.dispute_id}" + (f": {update.reason}" if update.reason else "")
        put_hold(session, (paid[0], paid[1]), "dispute", reason, None, self.clock())

    def _payout(self, session: Session, update: PayoutUpdate) -> None:
        values = {
            "payout_id": update.payout_id,
            "tenant_id": self.tenant,
            "amount": update.amount,
            "currency": update.currency,
            "status": update.status,
            "arrival_date": update.arrival_date,
            "updated_at": self.clock(),
        }
        _upsert(session, Payout, update.payout_id, values, keep=())

    def load_payout_lines(self) -> list[str]:
        """Store the balance transactions of every paid payout not loaded yet (one transaction per payout)."""
        with self.sessions() as session:
            todo = list(
                session.execute(
                    sa.select(col(Payout.payout_id)).where(
                        col(Payout.tenant_id) == self.tenant,
                        col(Payout.status) == "paid",
                        col(Payout.lines_loaded_at).is_(None),
                    )
                ).scalars()
            )
        for payout_id in todo:
            lines = list(self.processor.payout_lines(payout_id))
            with self.sessions.begin() as session:
                for line in lines:
                    values: dict[str, Any] = {
                        "id": line.id,
                        "tenant_id": self.tenant,
                        "payout_id": payout_id,
                        "type": line.type,
                        "source_id": line.source_id,
                        "payment_processor_id": line.payment_processor_id,
                        "amount": line.amount,
                        "fee": line.fee,
                        "net": line.net,
                        "currency": line.currency,
                        "created": line.created,
                        "reporting_category": line.reporting_category,
                        "exchange_rate": line.exchange_rate,
                    }
                    _upsert(session, BalanceLineRow, line.id, values, keep=())
                payout = session.get(Payout, payout_id)
                assert payout is not None
                payout.lines_loaded_at = self.clock()
        return todo


Row = TypeVar("Row", ProcessorRefund, ProcessorDispute, Payout, BalanceLineRow)


def _upsert(
    session: Session,
    model: type[Row],
    ident: str,
    values: dict[str, Any],
    keep: tuple[str, ...] = ("payment_processor_id", "charge_id", "key"),
) -> Row:
    """Insert the row, or update it; a later event that lacks a field in ``keep`` leaves the known value."""
    row = session.get(model, ident)
    if row is None:
        row = model(**values)
        session.add(row)
        return row
    for name, value in values.items():
        if value is None and name in keep:
            continue
        setattr(row, name, value)
    return row
