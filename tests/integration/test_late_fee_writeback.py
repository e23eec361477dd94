"""A dunning late fee, end to end: journaled by the dunning run, posted by write-back to the QuickBooks sandbox.

Dunning decides the fee once (a ``posting`` journal entry); the reconcile run posts it through the QuickBooks
writer over real HTTP as a line on the overdue invoice, whose balance in the sandbox rises by exactly the fee.
Running either again changes nothing. Both stores; time is a fake clock.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from arsync.config import TenantConfig, load_config
from arsync.reconciling import Reconciler
from collect.dunning import journal_dunning, plan_dunning
from collect.dunning_policy import DunningPolicy, LateFeeAction, Policy, Step
from collect.send_window import Pacing
from connectors import jsonwire
from connectors.base import PostingKind
from connectors.quickbooks.sandbox import QuickBooksSandbox
from reconcile.postings import KIND
from sync import journal
from tests import collecting as L
from tests.integration.test_qbo_writer import connect
from tests.support import FakeClock
from tests.unit.test_config import BASE, write
from tests.unit.test_config_payments import PENV, WRITEBACK

DUE = date(2026, 12, 1)
FEE_DAY = DUE + timedelta(days=15)
FEE = LateFeeAction(flat=Decimal("25"), percent=Decimal("1.5"), maximum=Decimal("100"), booking="line")
RULES = DunningPolicy(
    policies=(Policy(name="standard", steps=(Step(name="fee", days=15, actions=(FEE,)),)),),
    pacing=Pacing(min_gap=timedelta(0)),
)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime.combine(FEE_DAY, time(10), tzinfo=UTC))


@pytest.fixture
def box(clock: FakeClock) -> Iterator[QuickBooksSandbox]:
    sandbox = QuickBooksSandbox(clock, rate_limits=False)
    sandbox.start()
    yield sandbox
    sandbox.stop()
    assert sandbox.server_errors == []


@pytest.fixture
def tenant(tmp_path: Path) -> TenantConfig:
    text = BASE + WRITEBACK + 'late_fee_item = "7"\n'
    return load_config(write(tmp_path / "cfg", text), environ=PENV).tenant("acme")


def test_a_dunning_late_fee_is_posted_once_as_a_line_and_the_invoice_rises_by_exactly_the_fee(
    db_url: str, box: QuickBooksSandbox, clock: FakeClock, tenant: TenantConfig
) -> None:
    customer = str(box.put("Customer", {"DisplayName": "Acme Plumbing"})["Id"])
    line = {"Amount": Decimal("1234.56"), "DetailType": "SalesItemLineDetail"}
    body = {"CustomerRef": {"value": customer}, "TxnDate": "2026-11-01", "DueDate": DUE.isoformat(), "Line": [line]}
    invoice = str(box.put("Invoice", body)["Id"])
    sessions: sessionmaker[Session] = L.ledger(db_url)
    with sessions.begin() as s:
        L.customer(s, customer, method=None)
        L.invoice(s, invoice, customer, "1234.56", due=DUE)

    with sessions.begin() as s:
        plan = plan_dunning(s, L.TENANT, [L.CONN], RULES, FEE_DAY)
        assert journal_dunning(s, plan, clock()) == 1
    with sessions() as s:
        [entry] = [e for e in journal.entries(s) if e.kind == KIND]
    fee = Decimal("43.52")  # 25 + 1.5% of 1234.56 = 25 + 18.5184, to the cent
    payload = jsonwire.loads(entry.payload)
    assert (payload["posting_kind"], payload["booking"]) == (PostingKind.LATE_FEE.value, "line")
    assert Decimal(str(payload["amount"])) == fee

    reconciler = Reconciler(sessions, tenant, {L.CONN: connect(box, clock)}, clock, "w")
    run = reconciler.run()

    assert run.counts() == {"posted": 1}
    updated = box.get("Invoice", invoice)
    assert updated is not None
    assert Decimal(str(updated["Balance"])) == Decimal("1234.56") + fee
    assert Decimal(str(updated["TotalAmt"])) == Decimal("1234.56") + fee
    assert [line["SalesItemLineDetail"]["ItemRef"]["value"] for line in updated["Line"][:-1]] == ["1", "7"]
    with sessions() as s:
        [done] = [e for e in journal.entries(s) if e.kind == KIND]
    assert (done.status, done.external_id) == ("done", invoice)
    [booked] = reconciler.report().fees_booked
    assert (booked.kind, booked.invoice, booked.amount, booked.booked_as) == ("late_fee", invoice, fee, "line")

    with sessions.begin() as s:  # dunning again the same day: the step fired already
        assert journal_dunning(s, plan_dunning(s, L.TENANT, [L.CONN], RULES, FEE_DAY), clock()) == 0
    requests = len(box.requests_log)
    assert reconciler.run().outcomes == [] and len(box.requests_log) == requests
    assert Decimal(str(box.get("Invoice", invoice)["Balance"])) == Decimal("1234.56") + fee  # type: ignore[index]


def test_a_late_fee_without_a_late_fee_item_is_parked_naming_the_key(
    db_url: str, box: QuickBooksSandbox, clock: FakeClock, tmp_path: Path
) -> None:
    tenant = load_config(write(tmp_path / "bare", BASE + WRITEBACK), environ=PENV).tenant("acme")
    customer = str(box.put("Customer", {"DisplayName": "Acme Plumbing"})["Id"])
    line = {"Amount": Decimal("100.00"), "DetailType": "SalesItemLineDetail"}
    invoice = str(box.put("Invoice", {"CustomerRef": {"value": customer}, "Line": [line]})["Id"])
    sessions: sessionmaker[Session] = L.ledger(db_url)
    with sessions.begin() as s:
        L.customer(s, customer, method=None)
        L.invoice(s, invoice, customer, "100.00", due=DUE)
    with sessions.begin() as s:
        journal_dunning(s, plan_dunning(s, L.TENANT, [L.CONN], RULES, FEE_DAY), clock())

    reconciler = Reconciler(sessions, tenant, {L.CONN: connect(box, clock)}, clock, "w")

    assert reconciler.run().counts() == {"parked": 1}
    [(_, reason)] = reconciler.report().parked
    assert "no late_fee_item (QuickBooks) or late_fee_account (Xero) in [writeback] of acme-qbo" in reason
    assert not any("/batch" in path for _, path, _ in box.requests_log)
    assert Decimal(str(box.get("Invoice", invoice)["Balance"])) == Decimal("100.00")  # type: ignore[index]


def test_a_late_fee_whose_answer_was_lost_is_found_on_its_invoice_and_not_added_twice(
    db_url: str, box: QuickBooksSandbox, clock: FakeClock, tenant: TenantConfig
) -> None:
    customer = str(box.put("Customer", {"DisplayName": "Acme Plumbing"})["Id"])
    line = {"Amount": Decimal("200.00"), "DetailType": "SalesItemLineDetail"}
    invoice = str(box.put("Invoice", {"CustomerRef": {"value": customer}, "Line": [line]})["Id"])
    sessions: sessionmaker[Session] = L.ledger(db_url)
    with sessions.begin() as s:
        L.customer(s, customer, method=None)
        L.invoice(s, invoice, customer, "200.00", due=DUE)
    with sessions.begin() as s:
        journal_dunning(s, plan_dunning(s, L.TENANT, [L.CONN], RULES, FEE_DAY), clock())
    source = connect(box, clock)
    box.inject("drop_after", times=source.transport.max_attempts, path_contains="/batch")
    reconciler = Reconciler(sessions, tenant, {L.CONN: source}, clock, "w")

    assert reconciler.run().outcomes == []  # applied, but every answer lost: the entry stays in flight
    clock.advance(minutes=10)  # its lease runs out
    assert reconciler.run().counts() == {"posted": 1}

    with sessions() as s:
        [done] = [e for e in journal.entries(s) if e.kind == KIND]
    assert (done.status, done.external_id) == ("done", invoice)
    assert jsonwire.loads(str(done.result)) == {"found": True, "booked_as": "line"}
    fee = Decimal("28.00")  # 25 + 1.5% of 200.00
    assert Decimal(str(box.get("Invoice", invoice)["Balance"])) == Decimal("200.00") + fee  # type: ignore[index]
    assert sum(1 for _, path, _ in box.requests_log if "/batch" in path) == source.transport.max_attempts
