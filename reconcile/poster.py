"""Carrying out journaled postings in bulk, exactly once, per ledger.

The journal hands out due ``posting`` (and ``apply_credit``) entries; they are
grouped by connection and sent through that ledger's writer in its bulk form
(QuickBooks ``/batch`` of 30, Xero arrays of 50). Before anything whose
outcome is unknown is sent again, the writer looks it up in the ledger by the
reference that carries its key.

A failed item never loops: one that may pass by itself is retried later; one a
person must fix (closed period, deleted invoice, validation) is parked with
its reason, which ``arsync status`` and the reconciliation report show.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from collect.standing import CREDIT_KIND, PROCESSOR_CREDIT
from connectors.base import Clock, ConnectorError, LedgerWriter, Posting, PostingKind, PostingResult
from reconcile.postings import Accounts, rate_of_payment
from sync.journal import Claimed, Done, GiveUp, Outcome, RetryAt
from sync.models import Payment

log = logging.getLogger("arsync.reconcile")

RETRY_AFTER = timedelta(minutes=15)
PARKED = "parked: "


def posting_of(entry: Claimed, source_kind: Callable[[str, str], str | None]) -> Posting:
    """The writer's posting for a journal entry (a ``posting``, or a credit application from auto-pay)."""
    p: dict[str, Any] = dict(entry.payload)
    if entry.kind == CREDIT_KIND:
        payload: dict[str, Any] = {
            "invoice_external_id": p["invoice"],
            "customer_external_id": p.get("customer"),
            "source": p["source"],
            "source_id": p["source_id"],
            "amount": Decimal(p["amount"]),
            "currency": p["currency"],
            "date": date.fromisoformat(str(p["date"])) if p.get("date") else None,
            "reference": entry.key,
        }
        if p["source"] == "payment":
            payload["source_kind"] = source_kind(str(p["connection"]), str(p["source_id"]))
        return Posting(entry.key, PostingKind.CREDIT_APPLICATION.value, payload, entry.attempt)
    kind = str(p.pop("posting_kind"))
    p.pop("connection", None)
    if "date" in p:
        p["date"] = date.fromisoformat(str(p["date"]))
    return Posting(entry.key, kind, p, entry.attempt)


def _booked_as(posting: Posting, external_id: str) -> str | None:
    """How a late fee found in the ledger was booked: ``line`` when it is on its overdue invoice, else ``invoice``
    (asked, or a line the ledger refused: Xero will not edit an invoice with a payment applied). None: not a late
    fee."""
    if posting.kind != PostingKind.LATE_FEE:
        return None
    return "line" if external_id == posting.payload.get("invoice_external_id") else "invoice"


class PostingExecutor:
    """The journal's batch handler for postings: ``writers`` maps a connection to its ledger writer."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        writers: Mapping[str, LedgerWriter],
        clock: Clock,
        today: Callable[[], date],
        clearing: Mapping[str, str] | None = None,
        ledgers: Mapping[str, Accounts] | None = None,
        home_currency: str | None = None,
    ) -> None:
        self.sessions = sessions
        self.writers = writers
        self.clock = clock
        self.today = today
        self.clearing = dict(clearing or {})
        """Per connection, its clearing account (where shares of balance payments are received)."""
        self.ledgers = dict(ledgers or {})
        """Per connection, its write-back accounts: late fees and agency fees take theirs from here when posted."""
        self.home_currency = home_currency
        """The tenant's: a share of a payment in another currency carries the processor's rate, or waits for it."""

    def __call__(self, claimed: list[Claimed]) -> dict[str, Outcome]:
        outcomes: dict[str, Outcome] = {}
        by_connection: dict[str, list[Claimed]] = {}
        for entry in claimed:
            by_connection.setdefault(str(entry.payload["connection"]), []).append(entry)
        for connection, entries in by_connection.items():
            writer = self.writers.get(connection)
            if writer is None:
                for entry in entries:
                    outcomes[entry.key] = GiveUp(f"{PARKED}connection {connection} has no write-back configured")
                continue
            try:
                outcomes |= self._post(writer, entries)
            except ConnectorError as exc:
                # The whole request's outcome is unknown: these entries stay in flight and are looked up next time.
                log.warning("posting to %s failed: %s", connection, exc)
        return outcomes

    def _post(self, writer: LedgerWriter, entries: list[Claimed]) -> dict[str, Outcome]:
        outcomes: dict[str, Outcome] = {}
        postings = []
        for entry in entries:
            posting = self._dated(posting_of(entry, self._source_kind))
            if posting.kind == PostingKind.CREDIT_APPLICATION and posting.payload.get("source") == PROCESSOR_CREDIT:
                share = self._balance_payment_share(entry, posting)
                if share is None:
                    outcomes[entry.key] = RetryAt(
                        self.clock() + RETRY_AFTER,
                        f"waits for the processor's exchange rate of {posting.payload['source_id']}"
                        f" ({posting.payload['currency']} to {self.home_currency})",
                    )
                    continue
                posting = share
            if posting.kind == PostingKind.SURCHARGE and not posting.payload.get("income_account"):
                outcomes[entry.key] = GiveUp(
                    f"{PARKED}no surcharge_account in [writeback] of {entry.payload['connection']}:"
                    " card surcharges need an income account"
                )
                continue
            posting = self._configured(str(entry.payload["connection"]), posting)
            parked = self._unconfigured(str(entry.payload["connection"]), posting)
            if parked is not None:
                outcomes[entry.key] = GiveUp(f"{PARKED}{parked}")
                continue
            if posting.kind == PostingKind.REFUND and not (
                posting.payload.get("refund_item") or posting.payload.get("income_account")
            ):
                outcomes[entry.key] = GiveUp(
                    f"{PARKED}no refund_item (QuickBooks) or refund_account (Xero) in [writeback] of"
                    f" {entry.payload['connection']}: a partial refund needs one to be booked"
                )
                continue
            postings.append(posting)
        entries = [e for e in entries if e.key not in outcomes]
        unknown = [p for p, e in zip(postings, entries, strict=True) if e.outcome_unknown]
        if unknown:
            by_key = {p.key: p for p in unknown}
            for key, external_id in writer.find_posted(unknown).items():
                booking = _booked_as(by_key[key], external_id)
                found: dict[str, object] = {"found": True} if booking is None else {"found": True, "booked_as": booking}
                outcomes[key] = Done(external_id, found)
        todo = [p for p in postings if p.key not in outcomes]
        if todo:
            for result in writer.post(todo):
                outcomes[result.key] = self._outcome(result)
        return outcomes

    def _configured(self, connection: str, posting: Posting) -> Posting:
        """A late fee or an agency's fee with the connection's write-back accounts for it (those the journaled
        payload names win): they are read when the fee is posted, so a parked fee released after the config
        was fixed is booked with the fixed config."""
        accounts = self.ledgers.get(connection)
        if accounts is None:
            return posting
        if posting.kind == PostingKind.LATE_FEE:
            extra = {"late_fee_item": accounts.late_fee_item, "late_fee_account": accounts.late_fee_account}
        elif posting.kind == PostingKind.COLLECTIONS_FEE:
            extra = {
                "collections_fee_account": accounts.collections_fee_account,
                "collections_vendor": accounts.collections_vendor,
            }
        else:
            return posting
        payload = {**posting.payload}
        for name, value in extra.items():
            if not payload.get(name) and value:
                payload[name] = value
        return Posting(posting.key, posting.kind, payload, posting.attempt)

    @staticmethod
    def _unconfigured(connection: str, posting: Posting) -> str | None:
        """Why a late fee or an agency's fee cannot be booked with this config (None: it can be tried). Each
        ledger's writer refuses, naming the key, what its own ledger lacks (QuickBooks needs ``late_fee_item``
        and ``collections_vendor``, Xero ``late_fee_account``)."""
        p = posting.payload
        if posting.kind == PostingKind.LATE_FEE and not (p.get("late_fee_item") or p.get("late_fee_account")):
            return (
                f"no late_fee_item (QuickBooks) or late_fee_account (Xero) in [writeback] of {connection}:"
                " a late fee needs one to be booked"
            )
        if posting.kind == PostingKind.COLLECTIONS_FEE and not p.get("collections_fee_account"):
            return (
                f"no collections_fee_account in [writeback] of {connection}:"
                " a collections agency's fee needs an expense account to be booked"
            )
        return None

    def _balance_payment_share(self, entry: Claimed, posting: Posting) -> Posting | None:
        """A share of a payment made for a customer's whole balance: in the ledger it is a payment of its own,
        into clearing (the ledger never held this cash, so there is no credit there to apply). In another
        currency than the tenant's it carries the processor's rate; None while that rate is not known."""
        p = posting.payload
        rate: Decimal | None = None
        home = self.home_currency
        if home is not None and str(p["currency"]).upper() != home.upper():
            with self.sessions() as session:
                rate = rate_of_payment(session, entry.tenant, str(p["source_id"]), home)
            if rate is None:
                return None
        payload = {
            "invoice_external_id": p["invoice_external_id"],
            "customer_external_id": p["customer_external_id"],
            "amount": p["amount"],
            "currency": p["currency"],
            "date": p["date"],
            "account": self.clearing.get(str(entry.payload["connection"])),
            "reference": posting.key,
        }
        if rate is not None:
            payload["currency_rate"] = rate
        return Posting(posting.key, PostingKind.PAYMENT.value, payload, posting.attempt)

    def _dated(self, posting: Posting) -> Posting:
        if posting.payload.get("date") is not None:
            return posting
        return Posting(posting.key, posting.kind, {**posting.payload, "date": self.today()}, posting.attempt)

    def _outcome(self, result: PostingResult) -> Outcome:
        if result.ok:
            if result.booked_as:
                return Done(result.external_id, {"posted": True, "booked_as": result.booked_as})
            return Done(result.external_id, {"posted": True})
        reason = result.reason or "refused"
        if result.retry:
            return RetryAt(self.clock() + RETRY_AFTER, reason)
        return GiveUp(f"{PARKED}{reason}")

    def _source_kind(self, connection: str, external_id: str) -> str | None:
        """Unapplied cash in the ledger: a payment, or (Xero) an overpayment or a prepayment."""
        with self.sessions() as session:
            kind = session.execute(
                sa.select(col(Payment.kind)).where(
                    col(Payment.connection_id) == connection, col(Payment.external_id) == external_id
                )
            ).scalar_one_or_none()
        return kind
