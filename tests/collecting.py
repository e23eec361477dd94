"""Building a small ledger for the collecting tests: invoices, enrolled methods, credits, tags, holds."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

from sqlalchemy.orm import Session, sessionmaker

from sync.db import make_engine, upgrade
from sync.models import (
    Connection,
    CreditNote,
    Customer,
    CustomerTag,
    Invoice,
    InvoiceHold,
    Payment,
    ProcessorLink,
    SavedPaymentMethod,
    Tenant,
)

TENANT = "acme"
CONN = "acme-qbo"
SYNCED = datetime(2026, 11, 1, tzinfo=UTC)


def ledger(db_url: str) -> sessionmaker[Session]:
    engine = make_engine(db_url)
    upgrade(engine)
    sessions = sessionmaker(engine, expire_on_commit=False)
    with sessions.begin() as s:
        s.add(Tenant(id=TENANT, display_name="Acme"))
        s.flush()
        s.add(Connection(id=CONN, tenant_id=TENANT, kind="quickbooks"))
    return sessions


def invoice(
    s: Session,
    external_id: str,
    customer: str,
    balance: str,
    *,
    issued: date = date(2026, 11, 1),
    due: date | None = date(2026, 12, 1),
    currency: str = "USD",
    agreement: str | None = None,
    status: str = "open",
) -> None:
    s.add(
        Invoice(
            connection_id=CONN,
            external_id=external_id,
            customer_external_id=customer,
            number=f"INV-{external_id}",
            issue_date=issued,
            due_date=due,
            currency=currency,
            total=Decimal(balance),
            balance=Decimal(balance),
            status=status,
            agreement_ref=agreement,
            synced_at=SYNCED,
        )
    )


def customer(
    s: Session, external_id: str, *, method: str | None = "card", funding: str | None = "credit", pm: str | None = None
) -> None:
    s.add(Customer(connection_id=CONN, external_id=external_id, name=f"Customer {external_id}", synced_at=SYNCED))
    s.add(
        ProcessorLink(
            connection_id=CONN,
            customer_external_id=external_id,
            tenant_id=TENANT,
            processor_customer_id=f"cus_{external_id}",
            created_at=SYNCED,
        )
    )
    if method is not None:
        enrol(s, external_id, method, funding=funding, pm=pm or f"pm_{external_id}")


def enrol(
    s: Session,
    external_id: str,
    kind: str,
    *,
    funding: str | None = None,
    pm: str,
    at: datetime = SYNCED,
    scope: str = "off_session",
) -> None:
    s.add(
        SavedPaymentMethod(
            connection_id=CONN,
            customer_external_id=external_id,
            processor_customer_id=f"cus_{external_id}",
            payment_method_id=pm,
            kind=kind,
            funding=funding,
            scope=scope,
            enrolled_at=at,
        )
    )


def credit_note(s: Session, external_id: str, customer: str, remaining: str, issued: date = date(2026, 10, 1)) -> None:
    s.add(
        CreditNote(
            connection_id=CONN,
            external_id=external_id,
            customer_external_id=customer,
            issue_date=issued,
            currency="USD",
            total=Decimal(remaining),
            remaining=Decimal(remaining),
            status="open",
            synced_at=SYNCED,
        )
    )


def unapplied_cash(s: Session, external_id: str, customer: str, amount: str, paid: date = date(2026, 10, 15)) -> None:
    s.add(
        Payment(
            connection_id=CONN,
            external_id=external_id,
            customer_external_id=customer,
            payment_date=paid,
            currency="USD",
            amount=Decimal(amount),
            unapplied=Decimal(amount),
            status="open",
            synced_at=SYNCED,
        )
    )


def tag(s: Session, customer: str, *tags: str) -> None:
    for t in tags:
        s.add(CustomerTag(connection_id=CONN, customer_external_id=customer, tag=t))


def hold(s: Session, invoice_id: str, kind: str = "dispute", reason: str = "wrong hours billed") -> None:
    s.add(InvoiceHold(connection_id=CONN, invoice_external_id=invoice_id, kind=kind, reason=reason, created_at=SYNCED))
