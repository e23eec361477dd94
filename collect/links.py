"""Hosted pages for customers: setup links (enrol a method) and payment links (pay an invoice or a balance).

Every link is created under a deterministic key (the processor's idempotency key
and ``arsync_key`` in its metadata) and kept in ``hosted_link``. A payment made
through a link comes back in the processor's events carrying that key, and is
tied to the link's invoice or customer.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from collect.enrolment import CustomerView, link_customer
from collect.standing import CustomerRef, InvoiceRef, outstanding_charges
from connectors.base import Clock, HostedLink, LinkRequest, PaymentProcessor
from sync.models import HostedLinkRow, Invoice

OPEN = ("open", "partially_paid")


class LinkError(Exception):
    """A payment link that cannot be made (nothing owed, several currencies)."""


@dataclass(frozen=True)
class LinkSettings:
    """Where hosted pages send the customer back to."""

    success_url: str
    cancel_url: str


def remember_link(
    session: Session,
    key: str,
    owner: CustomerRef,
    tenant: str,
    link: HostedLink,
    now: datetime,
    *,
    invoice: str | None = None,
    amount: Decimal | None = None,
    currency: str | None = None,
) -> None:
    """Keep a link made under ``key`` for ``owner`` (once: the processor returns the same page for the same key)."""
    if session.execute(sa.select(col(HostedLinkRow.id)).where(col(HostedLinkRow.key) == key)).first() is not None:
        return
    session.add(
        HostedLinkRow(
            key=key,
            tenant_id=tenant,
            connection_id=owner[0],
            customer_external_id=owner[1],
            invoice_external_id=invoice,
            mode="setup" if amount is None else "payment",
            processor_id=link.processor_id,
            url=link.url,
            amount=amount,
            currency=currency,
            created_at=now,
            expires_at=link.expires_at,
        )
    )


def setup_link(
    sessions: sessionmaker[Session],
    processor: PaymentProcessor,
    customer: CustomerView,
    links: LinkSettings,
    clock: Clock,
    *,
    method_types: tuple[str, ...] = ("card", "us_bank_account"),
) -> HostedLink:
    """A hosted page where the customer saves a card or bank account for auto-pay.

    Keyed by customer and day: asking twice on one day returns the same page.
    """
    processor_customer = link_customer(sessions, processor, customer, clock)
    now = clock()
    key = f"setup:{customer.tenant}:{customer.connection}:{customer.external_id}:{now.date().isoformat()}"
    link = processor.create_link(
        LinkRequest(
            key=key,
            processor_customer_id=processor_customer,
            success_url=links.success_url,
            cancel_url=links.cancel_url,
            method_types=method_types,
            metadata={"arsync_customer": f"{customer.connection}:{customer.external_id}"},
        )
    )
    with sessions.begin() as session:
        remember_link(session, key, (customer.connection, customer.external_id), customer.tenant, link, now)
    return link


def amount_owed(session: Session, customer: CustomerView, invoice: str | None) -> tuple[Decimal, str]:
    """What the invoice (or the customer's open invoices) owes now, less what is on its way; and its currency."""
    query = sa.select(col(Invoice.external_id), col(Invoice.balance), col(Invoice.currency)).where(
        col(Invoice.connection_id) == customer.connection, col(Invoice.status).in_(OPEN)
    )
    if invoice is not None:
        query = query.where(col(Invoice.external_id) == invoice)
    else:
        query = query.where(col(Invoice.customer_external_id) == customer.external_id)
    rows = session.execute(query).all()
    if not rows:
        what = f"invoice {invoice}" if invoice else f"customer {customer.external_id}"
        raise LinkError(f"{what} has nothing open to pay")
    currencies = {currency for _, _, currency in rows}
    if len(currencies) > 1:
        raise LinkError(
            f"customer {customer.external_id} owes in several currencies ({', '.join(sorted(currencies))}):"
            " make one link per invoice"
        )
    on_way = outstanding_charges(session, customer.tenant)
    owed = sum(
        (balance - on_way.get((customer.connection, external_id), Decimal(0)) for external_id, balance, _ in rows),
        Decimal(0),
    )
    if owed <= 0:
        raise LinkError("nothing is owed once the payments on their way are counted")
    return owed, currencies.pop()


def payment_link(
    sessions: sessionmaker[Session],
    processor: PaymentProcessor,
    customer: CustomerView,
    links: LinkSettings,
    clock: Clock,
    *,
    invoice: InvoiceRef | None = None,
) -> tuple[HostedLink, Decimal, str]:
    """A hosted page to pay one invoice, or the customer's whole open balance, now.

    Keyed by what is paid, the day and the amount: the same request on the same
    day returns the same page, and a changed balance makes a new one.
    """
    with sessions() as session:
        amount, currency = amount_owed(session, customer, invoice[1] if invoice else None)
    processor_customer = link_customer(sessions, processor, customer, clock)
    now = clock()
    target = f"invoice-{invoice[1]}" if invoice else f"customer-{customer.external_id}"
    key = f"paylink:{customer.tenant}:{customer.connection}:{target}:{now.date().isoformat()}:{amount}"
    metadata = {"arsync_customer": f"{customer.connection}:{customer.external_id}"}
    if invoice is not None:
        metadata |= {"arsync_invoice": invoice[1], "arsync_connection": invoice[0]}
    link = processor.create_link(
        LinkRequest(
            key=key,
            processor_customer_id=processor_customer,
            success_url=links.success_url,
            cancel_url=links.cancel_url,
            amount=amount,
            currency=currency,
            description=f"Invoice {invoice[1]}" if invoice else "Open balance",
            metadata=metadata,
        )
    )
    with sessions.begin() as session:
        remember_link(
            session,
            key,
            (customer.connection, customer.external_id),
            customer.tenant,
            link,
            now,
            invoice=invoice[1] if invoice else None,
            amount=amount,
            currency=currency,
        )
    return link, amount, currency
