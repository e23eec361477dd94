"""Carrying out journaled charges through a payment processor, exactly once.

A charge is journaled (``kind="charge"``) under the key
``charge:{tenant}:{connection}:{invoice}:{part}:{attempt}``, where ``part``
names the decision (see :func:`charge_key`); the processor receives the same
key as its idempotency key and in its metadata. This module is the journal
handler for those entries:

* an entry whose outcome is unknown (a worker died, or the call timed out) is
  first looked up at the processor by key, and settled from what is found;
* just before charging, the invoice is read again from the ledger: an invoice
  paid, voided, deleted, put on hold or reduced since the charge was planned
  (counting money already on its way, :mod:`collect.standing`) is not charged;
* every outcome is kept as a ``processor_payment`` row before the entry is
  settled: the planner subtracts what is on its way, and dunning reads declines;
* a soft decline ends this attempt and journals the next one on the retry
  schedule (a new key: the processor would replay a declined key's answer);
  a hard decline ends the charge and hands it to dunning with its code; 3-D
  Secure ends it with a payment link (a hosted page) for the customer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from collect.links import LinkSettings, remember_link
from collect.policy import DEFAULT_RETRY_DAYS
from collect.standing import CHARGE_KIND, blocking_holds, outstanding_charges
from connectors.base import (
    ChargeOutcome,
    ChargeRequest,
    ChargeState,
    Clock,
    ConnectorError,
    HostedLink,
    LinkRequest,
    PaymentProcessor,
)
from sync.journal import Claimed, Done, GiveUp, Intent, Outcome
from sync.models import Invoice, ProcessorPayment

KIND = CHARGE_KIND
NOTIFY_KIND = "notify"
"""A message to a customer, decided here and sent by dunning's sender."""
CHARGEABLE = ("open", "partially_paid")


def charge_key(tenant: str, connection: str, invoice: str, part: str, attempt: int) -> str:
    """``part`` names the decision (``auto-2026-11-22``, ``batch-2026-11-22``, ``i2`` for instalment 2)."""
    return f"charge:{tenant}:{connection}:{invoice}:{part}:{attempt}"


@dataclass(frozen=True, slots=True)
class PlannedCharge:
    tenant: str
    connection: str
    invoice: str
    amount: Decimal
    """What the invoice's balance is reduced by; the surcharge is on top of it."""
    currency: str
    processor_customer_id: str
    payment_method_id: str
    customer: str = ""
    surcharge: Decimal = Decimal(0)
    method_type: str | None = None
    part: str = "auto"
    attempt: int = 1
    first_declined_at: datetime | None = None

    @property
    def key(self) -> str:
        return charge_key(self.tenant, self.connection, self.invoice, self.part, self.attempt)

    @property
    def total(self) -> Decimal:
        return self.amount + self.surcharge

    def intent(self, not_before: datetime | None = None) -> Intent:
        payload: dict[str, Any] = {
            "connection": self.connection,
            "invoice": self.invoice,
            "customer": self.customer,
            "amount": self.amount,
            "surcharge": self.surcharge,
            "currency": self.currency,
            "processor_customer_id": self.processor_customer_id,
            "payment_method_id": self.payment_method_id,
            "method_type": self.method_type,
            "part": self.part,
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
            customer=str(p.get("customer") or ""),
            surcharge=Decimal(p.get("surcharge") or 0),
            method_type=p.get("method_type"),
            part=str(p.get("part") or "auto"),
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
        links: LinkSettings | None = None,
    ) -> None:
        self.sessions = sessions
        self.processor = processor
        self.clock = clock
        self.retry_days = tuple(retry_days)
        self.links = links

    def __call__(self, entry: Claimed) -> Outcome:
        planned = PlannedCharge.from_entry(entry)
        if entry.outcome_unknown:
            found = self.processor.find_charge(entry.key, planned.processor_customer_id)
            if found is not None:
                return self._settle(planned, found)
        refusal = self._refusal(planned)
        if refusal is not None:
            return GiveUp(refusal)
        metadata = {
            "arsync_invoice": planned.invoice,
            "arsync_connection": planned.connection,
            "arsync_customer": planned.customer,
        }
        if planned.surcharge:
            metadata["arsync_surcharge"] = str(planned.surcharge)
        request = ChargeRequest(
            key=entry.key,
            processor_customer_id=planned.processor_customer_id,
            payment_method_id=planned.payment_method_id,
            amount=planned.total,
            currency=planned.currency,
            description=self._description(planned),
            metadata=metadata,
        )
        return self._settle(planned, self.processor.charge(request))

    @staticmethod
    def _description(planned: PlannedCharge) -> str:
        text = f"Invoice {planned.invoice}: {planned.amount} {planned.currency}"
        if planned.surcharge:
            text += f" + card surcharge {planned.surcharge} {planned.currency}"
        return text

    def _refusal(self, planned: PlannedCharge) -> str | None:
        """Why the invoice must not be charged now, read from the ledger just before the call."""
        ref = (planned.connection, planned.invoice)
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
            hold = blocking_holds(session, [planned.connection], self.clock().date(), ref).get(ref)
            if hold is not None:
                return f"invoice {planned.invoice} is on hold ({hold})"
            other = outstanding_charges(session, planned.tenant, ref, exclude_key=planned.key).get(ref, Decimal(0))
        owed = balance - other
        if owed < planned.amount:
            on_way = f" ({other} already on its way)" if other else ""
            return (
                f"invoice {planned.invoice} owes {owed} {currency} now{on_way}, less than the {planned.amount} planned"
            )
        return None

    def _settle(self, planned: PlannedCharge, outcome: ChargeOutcome) -> Outcome:
        self._remember(planned, outcome)
        result = {"state": outcome.state.value, "amount": str(outcome.amount), "currency": outcome.currency}
        match outcome.state:
            case ChargeState.SUCCEEDED | ChargeState.PROCESSING:
                return Done(outcome.processor_id, result)
            case ChargeState.SOFT_DECLINE:
                return GiveUp(f"soft decline: {outcome.decline_code}", follow_up=self._next_attempt(planned))
            case ChargeState.HARD_DECLINE:
                return GiveUp(f"hard decline: {outcome.decline_code}")
            case ChargeState.REQUIRES_ACTION:
                try:
                    link = self._payment_link(planned)
                except ConnectorError as exc:
                    # The charge is over either way; the link can be made again when a reminder needs it.
                    return GiveUp(f"requires action: the customer must authenticate; payment link failed: {exc}")
                if link is None:
                    return GiveUp("requires action: the customer must authenticate; send a payment link")
                return GiveUp(
                    f"requires action: the customer must authenticate; payment link {link.url}",
                    follow_up=self._link_notice(planned, link),
                )
        raise AssertionError(outcome.state)  # pragma: no cover

    def _remember(self, planned: PlannedCharge, outcome: ChargeOutcome) -> None:
        """Keep the attempt (its own transaction: a crash before settling finds it again by lookup)."""
        now = self.clock()
        with self.sessions.begin() as session:
            row = session.execute(
                sa.select(ProcessorPayment).where(col(ProcessorPayment.key) == outcome.key)
            ).scalar_one_or_none()
            if row is None:
                row = ProcessorPayment(
                    key=outcome.key,
                    tenant_id=planned.tenant,
                    connection_id=planned.connection,
                    invoice_external_id=planned.invoice,
                    customer_external_id=planned.customer or None,
                    amount=planned.amount,
                    surcharge=planned.surcharge,
                    currency=planned.currency,
                    method_type=planned.method_type,
                    payment_method_id=planned.payment_method_id,
                    state=outcome.state.value,
                    created_at=now,
                    updated_at=now,
                )
                session.add(row)
            row.processor_id = outcome.processor_id or row.processor_id
            row.state = outcome.state.value
            row.decline_code = outcome.decline_code
            row.updated_at = now

    def _payment_link(self, planned: PlannedCharge) -> HostedLink | None:
        """A link to pay the invoice's part (no surcharge: the customer may pay there by bank debit)."""
        if self.links is None:
            return None
        key = f"paylink:{planned.key}"
        link = self.processor.create_link(
            LinkRequest(
                key=key,
                processor_customer_id=planned.processor_customer_id,
                success_url=self.links.success_url,
                cancel_url=self.links.cancel_url,
                amount=planned.amount,
                currency=planned.currency,
                description=f"Invoice {planned.invoice}",
                metadata={"arsync_invoice": planned.invoice, "arsync_connection": planned.connection},
            )
        )
        with self.sessions.begin() as session:
            remember_link(
                session,
                key,
                (planned.connection, planned.customer),
                planned.tenant,
                link,
                self.clock(),
                invoice=planned.invoice,
                amount=planned.amount,
                currency=planned.currency,
            )
        return link

    @staticmethod
    def _link_notice(planned: PlannedCharge, link: HostedLink) -> Intent:
        """The decision to send the customer the link, journaled once with the charge's outcome.

        Dunning's sender carries ``notify`` entries out (its templates, send windows and caps).
        """
        return Intent(
            key=f"{NOTIFY_KIND}:paylink:{planned.key}",
            tenant=planned.tenant,
            kind=NOTIFY_KIND,
            payload={
                "template": "payment_link",
                "reason": "requires_action",
                "connection": planned.connection,
                "invoice": planned.invoice,
                "customer": planned.customer,
                "url": link.url,
                "amount": planned.amount,
                "currency": planned.currency,
            },
            subject=f"invoice:{planned.connection}:{planned.invoice}",
        )

    def _next_attempt(self, planned: PlannedCharge) -> Intent | None:
        first = planned.first_declined_at or self.clock()
        if planned.attempt > len(self.retry_days):
            return None
        then = replace(planned, attempt=planned.attempt + 1, first_declined_at=first)
        return then.intent(not_before=first + timedelta(days=self.retry_days[planned.attempt - 1]))
