"""Enrolling a customer in auto-pay: link to the processor, send a setup link, record the saved method.

The ledger customer is linked to one processor customer (whose metadata carries
our id, so the link can be found again). ``arsync autopay enroll`` creates a
hosted setup page; once the customer completes it, the method is recorded with
the time and the permission (``off_session``) they gave, either from the
processor's event or by asking the processor about the link.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from connectors.base import Clock, Enrolment, PaymentProcessor
from sync.models import Customer, CustomerContact, HostedLinkRow, ProcessorLink, SavedPaymentMethod


class EnrolmentError(Exception):
    """The customer cannot be enrolled (not in the ledger, say)."""


@dataclass(frozen=True)
class CustomerView:
    tenant: str
    connection: str
    external_id: str
    name: str
    email: str | None


def customer_view(session: Session, tenant: str, customer: tuple[str, str]) -> CustomerView:
    """The customer's name and first contact email, for the processor's customer record."""
    row = session.execute(
        sa.select(col(Customer.id), col(Customer.name)).where(
            col(Customer.connection_id) == customer[0], col(Customer.external_id) == customer[1]
        )
    ).first()
    if row is None:
        raise EnrolmentError(f"customer {customer[0]}:{customer[1]} is not in the ledger; sync first")
    row_id, name = row
    email = session.execute(
        sa.select(col(CustomerContact.email)).where(col(CustomerContact.customer_id) == row_id).limit(1)
    ).scalar_one_or_none()
    return CustomerView(tenant, customer[0], customer[1], name, email)


def link_customer(
    sessions: sessionmaker[Session], processor: PaymentProcessor, customer: CustomerView, clock: Clock
) -> str:
    """The processor customer for ``customer``, found or created, and stored."""
    with sessions() as session:
        row = session.get(ProcessorLink, (customer.connection, customer.external_id))
        if row is not None:
            return row.processor_customer_id
    processor_id = processor.ensure_customer(
        f"{customer.connection}:{customer.external_id}", customer.email, customer.name
    )
    with sessions.begin() as session:
        if session.get(ProcessorLink, (customer.connection, customer.external_id)) is None:
            session.add(
                ProcessorLink(
                    connection_id=customer.connection,
                    customer_external_id=customer.external_id,
                    tenant_id=customer.tenant,
                    processor_customer_id=processor_id,
                    created_at=clock(),
                )
            )
    return processor_id


def record_enrolment(session: Session, enrolment: Enrolment) -> SavedPaymentMethod | None:
    """Store a saved method against the customer linked to its processor customer (idempotent).

    Returns None when no ledger customer is linked to the processor customer.
    """
    link = session.execute(
        sa.select(ProcessorLink).where(col(ProcessorLink.processor_customer_id) == enrolment.processor_customer_id)
    ).scalar_one_or_none()
    if link is None:
        return None
    method = enrolment.method
    row = session.execute(
        sa.select(SavedPaymentMethod).where(col(SavedPaymentMethod.payment_method_id) == method.payment_method_id)
    ).scalar_one_or_none()
    if row is None:
        row = SavedPaymentMethod(
            connection_id=link.connection_id,
            customer_external_id=link.customer_external_id,
            processor_customer_id=enrolment.processor_customer_id,
            payment_method_id=method.payment_method_id,
            kind=method.kind,
            scope=enrolment.scope,
            enrolled_at=enrolment.enrolled_at,
        )
        session.add(row)
    row.brand = method.brand
    row.last4 = method.last4
    row.funding = method.funding
    row.scope = enrolment.scope
    row.link_id = enrolment.link_id or row.link_id
    row.active = True
    hosted = session.execute(
        sa.select(HostedLinkRow).where(col(HostedLinkRow.processor_id) == enrolment.link_id)
    ).scalar_one_or_none()
    if hosted is not None and hosted.completed_at is None:
        hosted.completed_at = enrolment.enrolled_at
    session.flush()
    return row


def complete_pending_links(sessions: sessionmaker[Session], processor: PaymentProcessor, tenant: str) -> int:
    """Ask the processor about setup links not completed yet; record what was saved. Returns how many."""
    with sessions() as session:
        pending = list(
            session.execute(
                sa.select(col(HostedLinkRow.processor_id)).where(
                    col(HostedLinkRow.tenant_id) == tenant,
                    col(HostedLinkRow.mode) == "setup",
                    col(HostedLinkRow.completed_at).is_(None),
                )
            ).scalars()
        )
    done = 0
    for link_id in pending:
        enrolment = processor.link_enrolment(link_id)
        if enrolment is None:
            continue
        with sessions.begin() as session:
            if record_enrolment(session, enrolment) is not None:
                done += 1
    return done
