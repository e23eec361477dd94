"""Journaled charges carried out against a processor, on SQLite and PostgreSQL.

The processor here is an in-memory implementation of our own port (not a
mock of any SDK): it records every charge made and answers by script.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy.orm import Session, sessionmaker

from collect.charging import ChargeExecutor, PlannedCharge
from connectors.base import (
    ChargeOutcome,
    ChargeRequest,
    ChargeState,
    Entity,
    InvoiceRecord,
    InvoiceStatus,
    RetriableError,
    SavedMethod,
)
from sync import journal
from sync.db import make_engine, upgrade
from sync.models import Connection, JournalEntry, Tenant
from sync.store import apply_page
from tests.support import FakeClock

T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


@dataclass
class ScriptedProcessor:
    answers: list[ChargeState | str] = field(default_factory=list)
    """What each charge call does: a state, or "timeout-after-charging"."""
    made: dict[str, ChargeOutcome] = field(default_factory=dict)

    def ensure_customer(self, our_customer_id: str, email: str | None, name: str | None) -> str:
        return f"cus_{our_customer_id}"

    def saved_methods(self, processor_customer_id: str) -> list[SavedMethod]:
        return []

    def charge(self, request: ChargeRequest) -> ChargeOutcome:
        answer = self.answers.pop(0) if self.answers else ChargeState.SUCCEEDED
        state = ChargeState.SUCCEEDED if answer == "timeout-after-charging" else ChargeState(answer)
        code = {"soft_decline": "insufficient_funds", "hard_decline": "stolen_card"}.get(state.value)
        outcome = ChargeOutcome(request.key, state, f"pi_{len(self.made) + 1}", request.amount, request.currency, code)
        self.made[request.key] = outcome
        if answer == "timeout-after-charging":
            raise RetriableError("read timed out")
        return outcome

    def find_charge(self, key: str, processor_customer_id: str) -> ChargeOutcome | None:
        return self.made.get(key)

    def refund(self, processor_id: str, amount: Decimal | None, key: str) -> str:
        return "re_1"


@pytest.fixture
def sessions(db_url: str) -> sessionmaker[Session]:
    engine = make_engine(db_url)
    upgrade(engine)
    factory = sessionmaker(engine, expire_on_commit=False)
    with factory.begin() as s:
        s.add(Tenant(id="acme", display_name="Acme"))
        s.flush()
        s.add(Connection(id="acme-qbo", tenant_id="acme", kind="quickbooks"))
    return factory


def put_invoice(sessions: sessionmaker[Session], balance: str, status: InvoiceStatus, version: str = "0") -> None:
    record = InvoiceRecord(
        "acme-qbo",
        "130",
        T0 + timedelta(minutes=int(version)),
        version,
        "7",
        "1037",
        date(2026, 10, 1),
        date(2026, 10, 31),
        "Net 30",
        "USD",
        Decimal("250.00"),
        Decimal(balance),
        status,
    )
    with sessions.begin() as s:
        apply_page(s, Entity.INVOICE, [record], [], T0)


def plan(sessions: sessionmaker[Session], amount: str = "250.00") -> PlannedCharge:
    planned = PlannedCharge("acme", "acme-qbo", "130", Decimal(amount), "USD", "cus_7", "pm_card")
    with sessions.begin() as s:
        journal.record(s, planned.intent(), T0)
    return planned


def run(sessions: sessionmaker[Session], executor: ChargeExecutor, clock: FakeClock) -> list[tuple[str, object]]:
    return journal.run_due(sessions, "charge", "w", executor, clock, lease=timedelta(0))


def statuses(sessions: sessionmaker[Session]) -> dict[str, tuple[str, str | None]]:
    with sessions() as s:
        return {r.key: (r.status, r.error) for r in journal.entries(s)}


def test_a_planned_charge_is_made_once(sessions: sessionmaker[Session], clock: FakeClock) -> None:
    put_invoice(sessions, "250.00", InvoiceStatus.OPEN)
    planned = plan(sessions)
    processor = ScriptedProcessor()
    executor = ChargeExecutor(sessions, processor, clock)
    run(sessions, executor, clock)
    run(sessions, executor, clock)
    assert list(processor.made) == [planned.key] == ["charge:acme:acme-qbo:130:auto:1"]
    assert processor.made[planned.key].amount == Decimal("250.00")
    assert statuses(sessions) == {planned.key: ("done", None)}


def test_an_unknown_outcome_is_looked_up_not_charged_again(sessions: sessionmaker[Session], clock: FakeClock) -> None:
    put_invoice(sessions, "250.00", InvoiceStatus.OPEN)
    planned = plan(sessions)
    processor = ScriptedProcessor(["timeout-after-charging"])
    executor = ChargeExecutor(sessions, processor, clock)
    assert run(sessions, executor, clock) == []
    assert statuses(sessions)[planned.key][0] == "in_flight"
    run(sessions, executor, clock)
    assert len(processor.made) == 1
    with sessions() as s:
        row = journal.entries(s)[0]
    assert (row.status, row.external_id, row.attempts) == ("done", "pi_1", 2)


@pytest.mark.parametrize(
    ("status", "balance", "reason"),
    [
        (InvoiceStatus.PAID, "0.00", "paid"),
        (InvoiceStatus.VOID, "0.00", "void"),
        (InvoiceStatus.PARTIALLY_PAID, "100.00", "less than the 250.00 planned"),
    ],
)
def test_the_ledger_is_read_again_just_before_charging(
    sessions: sessionmaker[Session], clock: FakeClock, status: InvoiceStatus, balance: str, reason: str
) -> None:
    put_invoice(sessions, "250.00", InvoiceStatus.OPEN)
    planned = plan(sessions)
    put_invoice(sessions, balance, status, version="1")  # paid by hand, say, and synced since the plan
    processor = ScriptedProcessor()
    run(sessions, ChargeExecutor(sessions, processor, clock), clock)
    assert processor.made == {}
    state, error = statuses(sessions)[planned.key]
    assert state == "failed" and error is not None and reason in error


def test_soft_declines_follow_the_retry_schedule_then_stop(sessions: sessionmaker[Session], clock: FakeClock) -> None:
    put_invoice(sessions, "250.00", InvoiceStatus.OPEN)
    plan(sessions)
    clock.advance((T0 - clock()).total_seconds())
    processor = ScriptedProcessor([ChargeState.SOFT_DECLINE] * 4)
    executor = ChargeExecutor(sessions, processor, clock, retry_days=(1, 3, 7))
    attempts_at: list[datetime] = []
    for _ in range(20):  # ten days, twice a day
        before = len(processor.made)
        run(sessions, executor, clock)
        if len(processor.made) > before:
            attempts_at.append(clock())
        clock.advance(hours=12)
    assert [a - T0 for a in attempts_at] == [timedelta(0), timedelta(days=1), timedelta(days=3), timedelta(days=7)]
    result = statuses(sessions)
    assert [k.rsplit(":", 1)[1] for k in result] == ["1", "2", "3", "4"]
    assert all(state == "failed" and "insufficient_funds" in (error or "") for state, error in result.values())


@pytest.mark.parametrize(
    ("answer", "reason"),
    [(ChargeState.HARD_DECLINE, "hard decline: stolen_card"), (ChargeState.REQUIRES_ACTION, "payment link")],
)
def test_hard_declines_and_3ds_stop_and_hand_over(
    sessions: sessionmaker[Session], clock: FakeClock, answer: ChargeState, reason: str
) -> None:
    put_invoice(sessions, "250.00", InvoiceStatus.OPEN)
    planned = plan(sessions)
    run(sessions, ChargeExecutor(sessions, ScriptedProcessor([answer]), clock), clock)
    clock.advance(days=30)
    run(sessions, ChargeExecutor(sessions, ScriptedProcessor(), clock), clock)
    assert statuses(sessions) == {planned.key: ("failed", statuses(sessions)[planned.key][1])}
    assert reason in (statuses(sessions)[planned.key][1] or "")
    with sessions() as s:
        assert s.query(JournalEntry).count() == 1
