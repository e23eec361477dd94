"""What a person says about customers and invoices: tags, and holds (a dispute, a hold) with their reason.

Auto-pay rules and dunning select customers by tag; an invoice under an open
dispute or hold is never charged (and, with dunning, never chased) until it
is released or its ``until`` day has passed.
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Sequence
from datetime import date, datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlmodel import col

from collect.send_window import SendWindow
from collect.standing import BLOCKING_HOLDS, CustomerRef, InvoiceRef
from sync.models import Customer, CustomerLocale, CustomerTag, Invoice, InvoiceHold


class LedgerRefError(ValueError):
    """A customer or invoice named on the command line that is not (or not only once) in the ledger."""


def resolve_invoice(session: Session, connections: Sequence[str], text: str) -> InvoiceRef:
    """``CONNECTION:ID``, or an invoice id or number found in exactly one of ``connections``."""
    connection, sep, external = text.rpartition(":")
    if sep and connection in connections:
        return connection, external
    rows = session.execute(
        sa.select(col(Invoice.connection_id), col(Invoice.external_id)).where(
            col(Invoice.connection_id).in_(connections),
            sa.or_(col(Invoice.external_id) == text, col(Invoice.number) == text),
        )
    ).all()
    return _one("invoice", text, [(c, i) for c, i in rows])


def resolve_customer(session: Session, connections: Sequence[str], text: str) -> CustomerRef:
    """``CONNECTION:ID``, or a customer id found in exactly one of ``connections``."""
    connection, sep, external = text.rpartition(":")
    if sep and connection in connections:
        return connection, external
    rows = session.execute(
        sa.select(col(Customer.connection_id), col(Customer.external_id)).where(
            col(Customer.connection_id).in_(connections), col(Customer.external_id) == text
        )
    ).all()
    return _one("customer", text, [(c, i) for c, i in rows])


def _one(what: str, text: str, found: list[tuple[str, str]]) -> tuple[str, str]:
    if not found:
        raise LedgerRefError(f"{what} {text!r} is not in the ledger (sync first, or write CONNECTION:ID)")
    if len(found) > 1:
        listing = ", ".join(f"{c}:{i}" for c, i in found)
        raise LedgerRefError(f"{what} {text!r} is ambiguous ({listing}); write CONNECTION:ID")
    return found[0]


def set_tags(session: Session, customer: CustomerRef, add: Sequence[str], remove: Sequence[str]) -> list[str]:
    """Add and remove tags; returns the customer's tags after."""
    for tag in add:
        if session.get(CustomerTag, (customer[0], customer[1], tag)) is None:
            session.add(CustomerTag(connection_id=customer[0], customer_external_id=customer[1], tag=tag))
    for tag in remove:
        row = session.get(CustomerTag, (customer[0], customer[1], tag))
        if row is not None:
            session.delete(row)
    session.flush()
    return sorted(
        session.execute(
            sa.select(col(CustomerTag.tag)).where(
                col(CustomerTag.connection_id) == customer[0], col(CustomerTag.customer_external_id) == customer[1]
            )
        ).scalars()
    )


def put_hold(
    session: Session, invoice: InvoiceRef, kind: str, reason: str, until: date | None, now: datetime
) -> InvoiceHold:
    if kind not in BLOCKING_HOLDS:
        raise ValueError(f"hold kind must be one of {', '.join(BLOCKING_HOLDS)}, not {kind!r}")
    if not reason.strip():
        raise ValueError("a hold needs a reason")
    hold = InvoiceHold(
        connection_id=invoice[0], invoice_external_id=invoice[1], kind=kind, reason=reason, until=until, created_at=now
    )
    session.add(hold)
    session.flush()
    return hold


def release_holds(session: Session, invoice: InvoiceRef, now: datetime) -> int:
    """Release every open hold on the invoice; returns how many."""
    result = session.execute(
        sa.update(InvoiceHold)
        .where(
            col(InvoiceHold.connection_id) == invoice[0],
            col(InvoiceHold.invoice_external_id) == invoice[1],
            col(InvoiceHold.released_at).is_(None),
        )
        .values(released_at=now)
    )
    return int(getattr(result, "rowcount", 0))


def set_locale(
    session: Session, customer: CustomerRef, timezone: str | None, country: str | None, subdivision: str | None
) -> CustomerLocale:
    """Where the customer reads its mail: dunning's send window opens in its time zone, on its country's
    business days. None leaves a value as it is; raises ValueError naming an unknown zone or country."""
    if timezone is not None:
        try:
            zoneinfo.ZoneInfo(timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {timezone!r} (an IANA name such as Europe/London)") from None
    row = session.get(CustomerLocale, customer) or CustomerLocale(
        connection_id=customer[0], customer_external_id=customer[1]
    )
    row.timezone = timezone or row.timezone
    if country is not None:
        row.country, row.subdivision = country.upper(), subdivision
    elif subdivision is not None:
        row.subdivision = subdivision
    if row.country is not None:
        SendWindow(country=row.country, subdivision=row.subdivision)  # names an unknown country or subdivision
    session.add(row)
    session.flush()
    return row
