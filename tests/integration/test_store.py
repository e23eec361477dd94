"""The ledger store behaves the same on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from connectors.base import (
    Contact,
    CustomerRecord,
    DocumentLine,
    Entity,
    InvoiceRecord,
    InvoiceStatus,
    OAuthTokens,
    Quarantined,
    Tombstone,
)
from sync.db import DatabaseNotMigratedError, make_engine, require_migrated, upgrade
from sync.models import Connection, CustomerContact, Invoice, QuarantinedRecord, Tenant
from sync.models import DocumentLine as LineRow
from sync.store import apply_page, mark_deleted, resolve_quarantine
from sync.tokens import DatabaseTokenStore

T0 = datetime(2026, 11, 1, 9, 30, tzinfo=UTC)


@pytest.fixture
def sessions(db_url: str) -> sessionmaker[Session]:
    engine = make_engine(db_url)
    upgrade(engine)
    factory = sessionmaker(engine, expire_on_commit=False)
    with factory.begin() as session:
        session.add(Tenant(id="acme", display_name="Acme"))
        session.flush()
        session.add(Connection(id="c1", tenant_id="acme", kind="quickbooks"))
    return factory


def invoice(
    external_id: str,
    *,
    version: str = "0",
    total: str = "100.10",
    balance: str = "100.10",
    at: datetime = T0,
    status: InvoiceStatus = InvoiceStatus.OPEN,
) -> InvoiceRecord:
    return InvoiceRecord(
        connection="c1",
        external_id=external_id,
        updated_at=at,
        version=version,
        customer_external_id="7",
        number=f"INV-{external_id}",
        issue_date=date(2026, 10, 1),
        due_date=date(2026, 10, 31),
        terms="Net 30",
        currency="USD",
        total=Decimal(total),
        balance=Decimal(balance),
        status=status,
        lines=(DocumentLine(1, Decimal(total), "Repair", Decimal("1"), Decimal(total), "4"),),
    )


def test_unmigrated_database_is_refused_with_the_fix(tmp_path: object) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/empty.db")
    with pytest.raises(DatabaseNotMigratedError, match="arsync db upgrade"):
        require_migrated(engine)


def test_insert_then_unchanged_then_update(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        counts = apply_page(s, Entity.INVOICE, [invoice("1"), invoice("2")], [], T0)
    assert (counts.written, counts.unchanged) == (2, 0)
    with sessions.begin() as s:
        counts = apply_page(s, Entity.INVOICE, [invoice("1"), invoice("2")], [], T0)
    assert (counts.written, counts.unchanged) == (0, 2)
    later = T0 + timedelta(hours=1)
    with sessions.begin() as s:
        counts = apply_page(
            s,
            Entity.INVOICE,
            [invoice("1", version="1", balance="40.05", at=later, status=InvoiceStatus.PARTIALLY_PAID)],
            [],
            T0,
        )
    assert counts.written == 1
    with sessions() as s:
        row = s.execute(sa.select(Invoice).where(Invoice.external_id == "1")).scalar_one()
        assert row.balance == Decimal("40.05") and type(row.balance) is Decimal
        assert row.total == Decimal("100.10")
        assert row.status == "partially_paid" and row.source_version == "1"
        assert row.source_updated_at == later
        lines = s.execute(sa.select(LineRow).where(LineRow.document_id == row.id)).scalars().all()
        assert [line.amount for line in lines] == [Decimal("100.10")]


def test_an_older_copy_never_overwrites_a_newer_row(sessions: sessionmaker[Session]) -> None:
    newer = T0 + timedelta(hours=2)
    with sessions.begin() as s:
        apply_page(
            s, Entity.INVOICE, [invoice("1", version="3", balance="0.00", at=newer, status=InvoiceStatus.PAID)], [], T0
        )
    with sessions.begin() as s:
        counts = apply_page(s, Entity.INVOICE, [invoice("1", version="2", at=T0)], [], T0)
    assert counts.unchanged == 1
    with sessions() as s:
        assert s.execute(sa.select(Invoice.status)).scalar_one() == "paid"


def test_money_keeps_every_digit(sessions: sessionmaker[Session]) -> None:
    big = "12345678901234.5678"
    with sessions.begin() as s:
        apply_page(s, Entity.INVOICE, [invoice("9", total=big, balance="0.0001")], [], T0)
    with sessions() as s:
        row = s.execute(sa.select(Invoice)).scalar_one()
    assert row.total == Decimal(big) and row.balance == Decimal("0.0001")


def test_float_money_is_refused(sessions: sessionmaker[Session]) -> None:
    bad = invoice("5")
    object.__setattr__(bad, "total", 10.5)
    with pytest.raises(sa.exc.StatementError, match="money must be Decimal"), sessions.begin() as s:
        apply_page(s, Entity.INVOICE, [bad], [], T0)


def test_tombstone_marks_deleted_once(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        apply_page(s, Entity.INVOICE, [invoice("1")], [], T0)
    stone = Tombstone("c1", Entity.INVOICE, "1", T0 + timedelta(minutes=5))
    with sessions.begin() as s:
        first = apply_page(s, Entity.INVOICE, [stone], [], T0)
        second = apply_page(s, Entity.INVOICE, [stone], [], T0)
    assert (first.deleted, second.deleted, second.unchanged) == (1, 0, 1)
    with sessions() as s:
        row = s.execute(sa.select(Invoice)).scalar_one()
    assert row.status == "deleted" and row.balance == Decimal("0")


def test_customer_contacts_are_replaced_on_update(sessions: sessionmaker[Session]) -> None:
    def customer(version: str, emails: tuple[str, ...], at: datetime) -> CustomerRecord:
        return CustomerRecord("c1", "7", at, version, "Acme Plumbing", "USD", True, tuple(Contact(e) for e in emails))

    with sessions.begin() as s:
        apply_page(s, Entity.CUSTOMER, [customer("0", ("a@x.test", "b@x.test"), T0)], [], T0)
        apply_page(s, Entity.CUSTOMER, [customer("1", ("c@x.test",), T0 + timedelta(minutes=1))], [], T0)
    with sessions() as s:
        emails = s.execute(sa.select(CustomerContact.email)).scalars().all()
    assert emails == ["c@x.test"]


def test_quarantine_keeps_the_payload_and_resolves(sessions: sessionmaker[Session]) -> None:
    bad = Quarantined("c1", Entity.INVOICE, "13", "Invoice 13: TotalAmt missing", {"Id": "13", "Balance": "1"})
    with sessions.begin() as s:
        apply_page(s, Entity.INVOICE, [], [bad], T0)
        apply_page(s, Entity.INVOICE, [], [bad], T0 + timedelta(hours=1))
    with sessions() as s:
        rows = s.execute(sa.select(QuarantinedRecord)).scalars().all()
    assert len(rows) == 1
    assert rows[0].reason == "Invoice 13: TotalAmt missing" and '"Balance": "1"' in rows[0].payload
    assert rows[0].last_seen == T0 + timedelta(hours=1)
    with sessions.begin() as s:
        resolve_quarantine(s, "c1", Entity.INVOICE, ["13"], T0)
    with sessions() as s:
        assert s.execute(sa.select(QuarantinedRecord.resolved_at)).scalar_one() == T0


def test_mark_deleted(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        apply_page(s, Entity.INVOICE, [invoice(str(i)) for i in range(5)], [], T0)
        assert mark_deleted(s, "c1", Entity.INVOICE, ["1", "3"], T0) == 2
    with sessions() as s:
        statuses = {k: v for k, v in s.execute(sa.select(Invoice.external_id, Invoice.status))}
    assert statuses == {"0": "open", "1": "deleted", "2": "open", "3": "deleted", "4": "open"}


def test_refresh_under_lock_spends_a_refresh_token_once(sessions: sessionmaker[Session]) -> None:
    """Two runs holding the same expired pair: one refreshes, the other reuses its result."""
    store = DatabaseTokenStore(sessions, "c1")
    stale = OAuthTokens("a0", "r0", T0, None, "realm")
    store.save(stale)
    spent: list[str] = []
    gate = threading.Barrier(2)

    def refresh(tokens: OAuthTokens) -> OAuthTokens:
        spent.append(tokens.refresh_token)
        return OAuthTokens(f"a{len(spent)}", f"r{len(spent)}", T0 + timedelta(hours=1), None, "realm")

    results: list[OAuthTokens] = []

    def worker() -> None:
        gate.wait()
        results.append(DatabaseTokenStore(sessions, "c1").refresh_locked(stale, refresh))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert spent == ["r0"]
    assert [r.access_token for r in results] == ["a1", "a1"]
    assert store.load() == OAuthTokens("a1", "r1", T0 + timedelta(hours=1), None, "realm")


def test_needs_reauth_is_recorded(sessions: sessionmaker[Session]) -> None:
    store = DatabaseTokenStore(sessions, "c1")
    store.mark_needs_reauth("invalid_grant")
    with sessions() as s:
        row = s.get(Connection, "c1")
        assert row is not None and (row.status, row.status_reason) == ("needs_reauth", "invalid_grant")


def test_a_second_run_is_refused_while_the_lease_is_held(sessions: sessionmaker[Session]) -> None:
    from sync import lease

    with sessions.begin() as s:
        lease.acquire(s, "c1", "hostA:1", T0)
    with pytest.raises(lease.LeaseHeldError, match=r"hostA:1"), sessions.begin() as s:
        lease.acquire(s, "c1", "hostB:2", T0 + timedelta(minutes=1))
    with sessions.begin() as s:  # renewed by its owner, then expired
        lease.renew(s, "c1", "hostA:1", T0 + timedelta(minutes=5))
    with pytest.raises(lease.LeaseHeldError), sessions.begin() as s:
        lease.acquire(s, "c1", "hostB:2", T0 + timedelta(minutes=14))
    with sessions.begin() as s:
        lease.acquire(s, "c1", "hostB:2", T0 + timedelta(minutes=16))
    with sessions.begin() as s:
        lease.release(s, "c1", "hostB:2")
        lease.acquire(s, "c1", "hostC:3", T0 + timedelta(minutes=16))


def test_a_lease_held_by_a_dead_process_here_is_taken_over(sessions: sessionmaker[Session]) -> None:
    import socket
    import subprocess
    import sys

    from sync import lease

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    with sessions.begin() as s:
        lease.acquire(s, "c1", f"{socket.gethostname()}:{dead.stdout.strip()}", T0)
    with sessions.begin() as s:
        lease.acquire(s, "c1", lease.this_process(), T0 + timedelta(seconds=1))


def test_the_migrations_build_exactly_the_models(sessions: sessionmaker[Session]) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlmodel import SQLModel

    engine = sessions.kw["bind"]
    with engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    assert differences == []
