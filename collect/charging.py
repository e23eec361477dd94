"""Carrying out journaled charges through a payment processor, exactly once.

A charge is journaled (``kind="charge"``) under the key
``charge:{tenant}:{connection}:{invoice}:{attempt}``; the processor receives
the same key as its idempotency key and in its metadata. This module is the
journal handler for those entries:

* an entry whose outcome is unknown (a worker died, or the call timed out) is
  first looked up at the processor by key, and settled from what is found;
* just before charging, the invoice is read again from the ledger: an invoice
  paid, voided, deleted or reduced since the charge was planned is not charged;
* a soft decline ends this attempt and journals the next one on the retry
  schedule (a new key: the processor would replay a declined key's answer);
  a hard decline, or 3-D Secure, ends the charge and hands it to dunning.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from connectors.base import ChargeOutcome, ChargeRequest, ChargeState, Clock, PaymentProcessor
from sync.journal import Claimed, Done, GiveUp, Intent, Outcome
from sync.models import Invoice

KIND = "charge"
CHARGEABLE = ("open", "partially_paid")
DEFAULT_RETRY_DAYS = (1, 3, 7)


def charge_key(tenant: str, connection: str, invoice: str, attempt: int) -> str:
    return f"charge:{tenant}:{connection}:{invoice}:{attempt}"


@dataclass(frozen=True)
class PlannedCharge:
    tenant: str
    connection: str
    invoice: str
    amount: Decimal
    currency: str
    processor_customer_id: str
    payment_method_id: str
    attempt: int = 1
    first_declined_at: datetime | None = None

    @property
    def key(self) -> str:
        return charge_key(self.tenant, self.connection, self.invoice, self.attempt)

    def intent(self, not_before: datetime | None = None) -> Intent:
        payload: dict[str, Any] = {
            "connection": self.connection,
            "invoice": self.invoice,
            "amount": self.amount,
            "currency": self.currency,
            "processor_customer_id": self.processor_customer_id,
            "payment_method_id": self.payment_method_id,
            "attempt": self.attempt,
        }
        if self.first_declined_at is not None:
            payload["first_declined_at"] = self.first_declined_at.isoformat()
        return Intent(self.key, self.tenant, KIND, payload, f"invoice:{self.connection}:{self.invoice}", not_before)

    @classmethod
    def from_entry(cls, entry: Claimed) -> PlannedCharge:
        p: Mapping[str, Any] = entry.payload
        declined = p.get("first_declined_at")
        return cls(
            tenant=entry.tenant,
            connection=str(p["connection"]),
            invoice=str(p["invoice"]),
            amount=Decimal(p["amount"]),
            currency=str(p["currency"]),
            processor_customer_id=str(p["processor_customer_id"]),
            payment_method_id=str(p["payment_method_id"]),
            attempt=int(p["attempt"]),
            first_declined_at=datetime.fromisoformat(declined) if declined else None,
        )


class ChargeExecutor:
    """The journal handler for ``charge`` entries."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        processor: PaymentProcessor,
        clock: Clock,
        retry_days: Sequence[int] = DEFAULT_RETRY_DAYS,
    ) -> None:
        self.sessions = sessions
        self.processor = processor
        self.clock = clock
        self.retry_days = tuple(retry_days)

    def __call__(self, entry: Claimed) -> Outcome:
        planned = PlannedCharge.from_entry(entry)
        if entry.outcome_unknown:
            found = self.processor.find_charge(entry.key, planned.processor_customer_id)
            if found is not None:
                return self._settle(planned, found)
        refusal = self._refusal(planned)
        if refusal is not None:
            return GiveUp(refusal)
        request = ChargeRequest(
            key=entry.key,
            processor_customer_id=planned.processor_customer_id,
            payment_method_id=planned.payment_method_id,
            amount=planned.amount,
            currency=planned.currency,
            description=f"Invoice {planned.invoice}",
            metadata={"arsync_invoice": planned.invoice, "arsync_connection": planned.connection},
        )
        return self._settle(planned, self.processor.charge(request))

    def _refusal(self, planned: PlannedCharge) -> str | None:
        """Why the invoice must not be charged now, read from the ledger just before the call."""
        with self.sessions() as session:
            row = session.execute(
                sa.select(col(Invoice.status), col(Invoice.balance), col(Invoice.currency)).where(
                    col(Invoice.connection_id) == planned.connection, col(Invoice.external_id) == planned.invoice
                )
            ).first()
        if row is None:
            return f"invoice {planned.invoice} is not in the ledger"
        status, balance, currency = row
        if status not in CHARGEABLE:
            return f"invoice {planned.invoice} is {status} in the ledger"
        if currency != planned.currency:
            return f"invoice {planned.invoice} is in {currency}, the charge in {planned.currency}"
        if balance < planned.amount:
            return f"invoice {planned.invoice} owes {balance} {currency} now, less than the {planned.amount} planned"
        return None

    def _settle(self, planned: PlannedCharge, outcome: ChargeOutcome) -> Outcome:
        result = {"state": outcome.state.value, "amount": str(outcome.amount), "currency": outcome.currency}
        match outcome.state:
            case ChargeState.SUCCEEDED | ChargeState.PROCESSING:
                return Done(outcome.processor_id, result)
            case ChargeState.SOFT_DECLINE:
                return GiveUp(f"soft decline: {outcome.decline_code}", follow_up=self._next_attempt(planned))
            case ChargeState.HARD_DECLINE:
                return GiveUp(f"hard decline: {outcome.decline_code}")
            case ChargeState.REQUIRES_ACTION:
                return GiveUp("requires action: the customer must authenticate; send a payment link")
        raise AssertionError(outcome.state)  # pragma: no cover

    def _next_attempt(self, planned: PlannedCharge) -> Intent | None:
        first = planned.first_declined_at or self.clock()
        if planned.attempt > len(self.retry_days):
            return None
        then = PlannedCharge(**{**planned.__dict__, "attempt": planned.attempt + 1, "first_declined_at": first})
        return then.intent(not_before=first + timedelta(days=self.retry_days[planned.attempt - 1]))
