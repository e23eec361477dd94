"""Refunds, exactly once: journaled under a deterministic key, looked up before any retry."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from connectors import jsonwire
from connectors.base import Clock, FatalError, PaymentProcessor
from sync.journal import Claimed, Done, GiveUp, Intent, Outcome, record
from sync.models import JournalEntry, ProcessorPayment, ProcessorRefund

KIND = "refund"


class RefundError(Exception):
    """The refund asked for cannot be made (unknown payment, amount above what is left)."""


def refund_intent(session: Session, processor_id: str, amount: Decimal | None, now: datetime) -> Intent:
    """Decide a refund of ``processor_id`` (a PaymentIntent) in full or of ``amount``, checked against what is left.

    The key counts the refunds already journaled for this payment: asking again
    is a new refund (checked against what is left, counting refunds made
    outside arsync), and the executor's retry of one decision keeps its key.
    """
    payment = session.execute(
        sa.select(ProcessorPayment).where(col(ProcessorPayment.processor_id) == processor_id)
    ).scalar_one_or_none()
    if payment is None:
        raise RefundError(f"payment {processor_id!r} is not one arsync knows (charge it, or follow events first)")
    if payment.state != "succeeded" or payment.returned:
        raise RefundError(f"payment {processor_id!r} is {payment.state}, nothing to refund")
    subject = f"payment:{processor_id}"
    ours = [
        (status, Decimal(jsonwire.loads(payload)["amount"]))
        for status, payload in session.execute(
            sa.select(col(JournalEntry.status), col(JournalEntry.payload)).where(
                col(JournalEntry.kind) == KIND, col(JournalEntry.subject) == subject
            )
        )
    ]
    theirs = session.execute(
        sa.select(col(ProcessorRefund.amount)).where(
            col(ProcessorRefund.payment_processor_id) == processor_id,
            col(ProcessorRefund.key).is_(None),
            col(ProcessorRefund.status).not_in(("failed", "canceled")),
        )
    ).scalars()
    already = sum((a for status, a in ours if status != "failed"), Decimal(0)) + sum(theirs, Decimal(0))
    left = payment.amount + payment.surcharge - already
    wanted = left if amount is None else amount
    if wanted <= 0 or wanted > left:
        raise RefundError(f"refund of {wanted} {payment.currency} asked; {left} {payment.currency} is left to refund")
    asked = len(ours)
    key = f"refund:{payment.tenant_id}:{processor_id}:{asked + 1}"
    return Intent(
        key,
        payment.tenant_id,
        KIND,
        {"processor_id": processor_id, "amount": wanted, "currency": payment.currency},
        subject,
    )


def ask_refund(sessions: sessionmaker[Session], processor_id: str, amount: Decimal | None, clock: Clock) -> Intent:
    with sessions.begin() as session:
        intent = refund_intent(session, processor_id, amount, clock())
        record(session, intent, clock())
    return intent


class RefundExecutor:
    """The journal handler for ``refund`` entries."""

    def __init__(self, sessions: sessionmaker[Session], processor: PaymentProcessor, clock: Clock) -> None:
        self.sessions = sessions
        self.processor = processor
        self.clock = clock

    def __call__(self, entry: Claimed) -> Outcome:
        p: Mapping[str, Any] = entry.payload
        processor_id = str(p["processor_id"])
        amount = Decimal(p["amount"])
        refund_id = self.processor.find_refund(entry.key, processor_id) if entry.outcome_unknown else None
        if refund_id is None:
            try:
                refund_id = self.processor.refund(processor_id, amount, entry.key)
            except FatalError as exc:
                return GiveUp(f"refund refused: {exc}")
        with self.sessions.begin() as session:
            row = session.get(ProcessorRefund, refund_id)
            if row is None:
                session.add(
                    ProcessorRefund(
                        refund_id=refund_id,
                        tenant_id=entry.tenant,
                        payment_processor_id=processor_id,
                        key=entry.key,
                        amount=amount,
                        currency=str(p["currency"]),
                        status="pending",
                        updated_at=self.clock(),
                    )
                )
        return Done(refund_id, {"amount": str(amount), "currency": str(p["currency"])})
