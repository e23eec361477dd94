"""Write-back on both stores: postings derived once, posted in bulk, looked up when unknown, parked when refused.

The ledger here is an in-memory implementation of our ``LedgerWriter`` port (the
QuickBooks and Xero writers are tested against their sandboxes). Like a real
ledger, it applies what it is sent even when the answer is lost.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from arsync.config import TenantConfig, load_config
from arsync.reconciling import Reconciler
from collect import standing
from collect.autopay import journal_plan, plan_charges
from collect.policy import AutopayPolicy, AutopayRule
from connectors.base import AccountType, LedgerAccount, Posting, PostingResult, RetriableError
from reconcile.accounts import account_problems
from reconcile.postings import Accounts
from sync import journal
from sync.models import (
    BalanceLineRow,
    DocumentLine,
    Invoice,
    JournalEntry,
    Payment,
    Payout,
    ProcessorDispute,
    ProcessorPayment,
    ProcessorRefund,
)
from tests import collecting as L
from tests.support import FakeClock
from tests.unit.test_config import BASE, write
from tests.unit.test_config_payments import PENV, WRITEBACK

NOW = datetime(2026, 11, 25, 15, 0, tzinfo=UTC)


@dataclass
class MemoryLedger:
    posted: dict[str, Posting] = field(default_factory=dict)
    calls: int = 0
    lose_answer: bool = False
    refuse: set[str] = field(default_factory=set)

    def post(self, postings: Sequence[Posting]) -> list[PostingResult]:
        self.calls += 1
        results = []
        for p in postings:
            if p.key in self.refuse:
                results.append(PostingResult(p.key, False, reason="6140: the books are closed for 2026-11-24"))
                continue
            self.posted.setdefault(p.key, p)  # a real ledger would make a second one: never asked twice here
            results.append(PostingResult(p.key, True, external_id=f"L{list(self.posted).index(p.key) + 1}"))
        if self.lose_answer:
            self.lose_answer = False
            raise RetriableError("read timed out")
        return results

    def find_posted(self, postings: Sequence[Posting]) -> dict[str, str]:
        return {p.key: f"L{list(self.posted).index(p.key) + 1}" for p in postings if p.key in self.posted}

    def by_id(self, external_id: str) -> Posting:
        return list(self.posted.values())[int(external_id.removeprefix("L")) - 1]

    def balance(self, account: str) -> Decimal:
        total = Decimal(0)
        for p in self.posted.values():
            amount = p.payload["amount"]
            if p.kind in ("payment", "surcharge", "overpayment") and p.payload["account"] == account:
                total += amount
            if (
                p.kind == "payment_reversal"
                and self.by_id(p.payload["payment_external_id"]).payload["account"] == account
            ):
                total -= amount
            if p.kind in ("fee", "payout") and p.payload["from_account"] == account:
                total -= amount
            if p.kind == "payout" and p.payload["to_account"] == account:
                total += amount
            if p.kind == "refund" and p.payload["account"] == account:
                total -= amount
            if (
                p.kind == "surcharge_reversal"
                and self.by_id(p.payload["surcharge_external_id"]).payload["account"] == account
            ):
                total -= amount
            if p.kind == "payout_debit":
                total += amount if p.payload["to_account"] == account else Decimal(0)
                total -= amount if p.payload["from_account"] == account else Decimal(0)
        return total


@pytest.fixture
def tenant(tmp_path: Path) -> TenantConfig:
    return load_config(write(tmp_path / "cfg", BASE + WRITEBACK), environ=PENV).tenant("acme")


@pytest.fixture
def sessions(db_url: str) -> sessionmaker[Session]:
    s = L.ledger(db_url)
    with s.begin() as session:
        L.customer(session, "c1")
        L.invoice(session, "i1", "c1", "100.00")
        L.invoice(session, "i2", "c1", "50.00")
        for n, (invoice, amount) in enumerate((("i1", "100.00"), ("i2", "50.00")), start=1):
            session.add(
                ProcessorPayment(
                    key=f"charge:acme:acme-qbo:{invoice}:auto-2026-11-22:1",
                    processor_id=f"pi_{n}",
                    tenant_id=L.TENANT,
                    connection_id=L.CONN,
                    invoice_external_id=invoice,
                    customer_external_id="c1",
                    amount=Decimal(amount),
                    surcharge=Decimal(0),
                    currency="USD",
                    state="succeeded",
                    created_at=NOW - timedelta(days=3),
                    updated_at=NOW,
                )
            )
        session.add(
            Payout(
                payout_id="po_1",
                tenant_id=L.TENANT,
                amount=Decimal("145.05"),
                currency="USD",
                status="paid",
                arrival_date=date(2026, 11, 25),
                lines_loaded_at=NOW,
                updated_at=NOW,
            )
        )
        for txn, pi, gross, fee in (("txn_1", "pi_1", "100.00", "3.20"), ("txn_2", "pi_2", "50.00", "1.75")):
            session.add(
                BalanceLineRow(
                    id=txn,
                    tenant_id=L.TENANT,
                    payout_id="po_1",
                    type="charge",
                    source_id=f"ch_{pi}",
                    payment_processor_id=pi,
                    amount=Decimal(gross),
                    fee=Decimal(fee),
                    net=Decimal(gross) - Decimal(fee),
                    currency="USD",
                    created=NOW - timedelta(days=3),
                )
            )
    return s


def reconciler(
    sessions: sessionmaker[Session], tenant: TenantConfig, ledger: MemoryLedger, clock: FakeClock
) -> Reconciler:
    return Reconciler(sessions, tenant, {L.CONN: ledger}, clock, "w")  # type: ignore[dict-item]


def test_payments_fees_and_the_deposit_are_posted_once_and_clearing_nets_to_zero(
    sessions: sessionmaker[Session], tenant: TenantConfig, clock: FakeClock
) -> None:
    ledger = MemoryLedger()
    before = reconciler(sessions, tenant, ledger, clock).report()
    assert before.payouts[0].problems == [
        "payment not applied: pi_1",
        "fee missing: txn_1 (3.20 USD)",
        "payment not applied: pi_2",
        "fee missing: txn_2 (1.75 USD)",
        "payout with no deposit",
    ]
    run = reconciler(sessions, tenant, ledger, clock).run()
    assert (run.derived.payments, run.derived.fees, run.derived.payouts) == (2, 2, 1)
    assert run.counts() == {"posted": 5} and ledger.calls == 1
    kinds = sorted((p.kind, p.payload["amount"]) for p in ledger.posted.values())
    assert kinds == [
        ("fee", Decimal("1.75")),
        ("fee", Decimal("3.20")),
        ("payment", Decimal("50.00")),
        ("payment", Decimal("100.00")),
        ("payout", Decimal("145.05")),
    ]
    deposit = next(p for p in ledger.posted.values() if p.kind == "payout")
    assert (deposit.payload["reference"], deposit.payload["to_account"], deposit.payload["date"]) == (
        "po_1",
        "36",
        date(2026, 11, 25),
    )
    payment = next(p for p in ledger.posted.values() if p.payload.get("invoice_external_id") == "i1")
    assert (payment.payload["customer_external_id"], payment.payload["account"]) == ("c1", "35")
    assert ledger.balance("35") == 0 and ledger.balance("36") == Decimal("145.05")
    after = reconciler(sessions, tenant, ledger, clock).report()
    assert after.problems() == 0 and after.payouts[0].deposited == Decimal("145.05")
    totals = after.totals()["USD"]
    assert totals["payments"] - totals["fees"] - totals["refunds"] - totals["chargebacks"] == totals["deposited"]
    again = reconciler(sessions, tenant, ledger, clock).run()
    assert (again.derived.total(), again.outcomes, ledger.calls) == (0, [], 1)


def test_a_lost_answer_is_looked_up_before_anything_is_sent_again(
    sessions: sessionmaker[Session], tenant: TenantConfig, clock: FakeClock
) -> None:
    ledger = MemoryLedger(lose_answer=True)
    first = reconciler(sessions, tenant, ledger, clock).run()
    assert first.outcomes == [] and len(ledger.posted) == 5
    with sessions() as s:
        assert {e.status for e in journal.entries(s)} == {"in_flight"}
    clock.advance(minutes=10)  # the lease runs out
    second = reconciler(sessions, tenant, ledger, clock).run()
    assert second.counts() == {"posted": 5}
    assert ledger.calls == 1  # found, not posted again
    with sessions() as s:
        assert {(e.status, e.result) for e in journal.entries(s)} == {("done", '{"found": true}')}


def test_a_refused_posting_is_parked_with_its_reason_and_never_retried(
    sessions: sessionmaker[Session], tenant: TenantConfig, clock: FakeClock
) -> None:
    ledger = MemoryLedger(refuse={"post:acme:acme-qbo:payout:po_1"})
    run = reconciler(sessions, tenant, ledger, clock).run()
    assert run.counts() == {"posted": 4, "parked": 1}
    clock.advance(days=1)
    assert reconciler(sessions, tenant, ledger, clock).run().outcomes == []
    report = reconciler(sessions, tenant, ledger, clock).report()
    assert report.parked == [("post:acme:acme-qbo:payout:po_1", "parked: 6140: the books are closed for 2026-11-24")]
    assert report.payouts[0].problems == ["payout with no deposit"]
    ledger.refuse.clear()  # a person reopened the period
    assert reconciler(sessions, tenant, ledger, clock).release(None) == 1
    assert reconciler(sessions, tenant, ledger, clock).run().counts() == {"posted": 1}
    deposit = ledger.posted["post:acme:acme-qbo:payout:po_1"]
    assert deposit.attempt == 2  # a new idempotency key: the vendor's cached refusal is not replayed
    assert reconciler(sessions, tenant, ledger, clock).report().problems() == 0


def test_posted_payments_read_back_are_recognised_and_stop_counting_as_on_their_way(
    sessions: sessionmaker[Session], tenant: TenantConfig, clock: FakeClock
) -> None:
    ledger = MemoryLedger()
    reconciler(sessions, tenant, ledger, clock).run()
    with sessions.begin() as s:  # the next sync reads the payment back, and the invoice's new balance
        s.add(
            Payment(
                connection_id=L.CONN,
                external_id="L1",
                customer_external_id="c1",
                currency="USD",
                amount=Decimal("100.00"),
                unapplied=Decimal(0),
                status="applied",
                synced_at=NOW,
            )
        )
        s.query(Invoice).filter_by(external_id="i1").one().balance = Decimal(0)
    assert reconciler(sessions, tenant, ledger, clock).run().echoes == 1
    with sessions() as s:
        applied = {p.processor_id: p.applied_in_ledger_at for p in s.query(ProcessorPayment)}
        assert applied == {"pi_1": NOW, "pi_2": None}
        policy = AutopayPolicy(rules=(AutopayRule(name="r", days_after_issue=0),))
        plan = plan_charges(s, L.TENANT, [L.CONN], policy, date(2026, 11, 26))
    assert plan.items == []  # i1 is paid in the ledger; i2's payment is still on its way


def test_credit_applications_from_auto_pay_are_posted(
    sessions: sessionmaker[Session], tenant: TenantConfig, clock: FakeClock
) -> None:
    with sessions.begin() as s:
        L.invoice(s, "i3", "c1", "80.00")
        L.credit_note(s, "cn1", "c1", "30.00")
        plan = plan_charges(
            s, L.TENANT, [L.CONN], AutopayPolicy(rules=(AutopayRule(name="r", days_after_issue=0),)), date(2026, 11, 26)
        )
        journal_plan(s, plan, clock())
    ledger = MemoryLedger()
    run = reconciler(sessions, tenant, ledger, clock).run()
    applied = [p for p in ledger.posted.values() if p.kind == "credit_application"]
    assert [(p.payload["invoice_external_id"], p.payload["source_id"], p.payload["amount"]) for p in applied] == [
        ("i3", "cn1", Decimal("30.00"))
    ]
    assert applied[0].payload["date"] == clock().astimezone(tenant.tzinfo).date()
    assert run.counts()["posted"] == 6


def _events(sessions: sessionmaker[Session], *rows: object) -> None:
    with sessions.begin() as s:
        for row in rows:
            s.merge(row)


def test_returns_chargebacks_and_full_refunds_reverse_the_payment_and_a_won_dispute_applies_it_again(
    sessions: sessionmaker[Session], tenant: TenantConfig, clock: FakeClock
) -> None:
    ledger = MemoryLedger()
    reconciler(sessions, tenant, ledger, clock).run()
    with sessions.begin() as s:
        s.add(
            Invoice(
                connection_id=L.CONN,
                external_id="i3",
                customer_external_id="c1",
                currency="USD",
                total=Decimal("30.00"),
                balance=Decimal("30.00"),
                status="open",
            )
        )
        s.add(
            ProcessorPayment(
                key="k3",
                processor_id="pi_3",
                tenant_id=L.TENANT,
                connection_id=L.CONN,
                invoice_external_id="i3",
                customer_external_id="c1",
                amount=Decimal("30.00"),
                surcharge=Decimal(0),
                currency="USD",
                state="succeeded",
                created_at=NOW,
                updated_at=NOW,
            )
        )
    reconciler(sessions, tenant, ledger, clock).run()
    with sessions.begin() as s:
        s.query(ProcessorPayment).filter_by(processor_id="pi_1").one().returned = True  # ACH return
        s.add(
            ProcessorDispute(
                dispute_id="dp_2",
                tenant_id=L.TENANT,
                payment_processor_id="pi_2",
                amount=Decimal("50.00"),
                currency="USD",
                status="needs_response",
                reason="fraudulent",
                updated_at=NOW,
            )
        )
        s.add(
            ProcessorRefund(
                refund_id="re_3",
                tenant_id=L.TENANT,
                payment_processor_id="pi_3",
                amount=Decimal("30.00"),
                currency="USD",
                status="succeeded",
                updated_at=NOW,
            )
        )
    run = reconciler(sessions, tenant, ledger, clock).run()
    assert (run.derived.reversals, run.derived.payments) == (3, 0)
    reversed_ = {
        p.payload["payment_external_id"]: p.payload["reason"]
        for p in ledger.posted.values()
        if p.kind == "payment_reversal"
    }
    ids = {p.payload.get("invoice_external_id"): key for key, p in ledger.posted.items() if p.kind == "payment"}
    assert set(reversed_.values()) == {
        "bank debit returned (no code)",
        "chargeback dp_2 (fraudulent)",
        "refunded in full (30.00 USD)",
    }
    assert len(reversed_) == 3 and len(ids) == 3
    assert ledger.balance("35") == Decimal("-150.00")  # the money taken back leaves in later payouts
    with sessions.begin() as s:
        s.query(ProcessorDispute).filter_by(dispute_id="dp_2").one().status = "won"
    won = reconciler(sessions, tenant, ledger, clock).run()
    assert (won.derived.payments, won.derived.reversals) == (1, 0)
    assert "post:acme:acme-qbo:payment:pi_2:dp_2-won" in ledger.posted
    assert reconciler(sessions, tenant, ledger, clock).run().derived.total() == 0


def _refund(refund_id: str, pi: str, amount: str) -> ProcessorRefund:
    return ProcessorRefund(
        refund_id=refund_id,
        tenant_id=L.TENANT,
        payment_processor_id=pi,
        amount=Decimal(amount),
        currency="USD",
        status="succeeded",
        updated_at=NOW,
    )


def test_a_partial_refund_is_booked_once_from_clearing_and_later_refunds_of_it_too(
    sessions: sessionmaker[Session], tmp_path: Path, clock: FakeClock
) -> None:
    tenant = load_config(
        write(tmp_path / "cfg", BASE + WRITEBACK + 'refund_account = "48"\nrefund_item = "7"\n'), environ=PENV
    ).tenant("acme")
    ledger = MemoryLedger()
    reconciler(sessions, tenant, ledger, clock).run()
    _events(sessions, _refund("re_1", "pi_1", "10.00"))
    run = reconciler(sessions, tenant, ledger, clock).run()
    assert (run.derived.refunds, run.derived.reversals) == (1, 0)
    refund = ledger.posted["post:acme:acme-qbo:refund:re_1"]
    assert (refund.kind, refund.payload["amount"], refund.payload["account"]) == ("refund", Decimal("10.00"), "35")
    assert (refund.payload["income_account"], refund.payload["refund_item"]) == ("48", "7")
    assert (refund.payload["invoice_external_id"], refund.payload["customer_external_id"]) == ("i1", "c1")
    assert refund.payload["refund_id"] == "re_1"
    assert ledger.balance("35") == Decimal("-10.00")  # netted to zero by the payout, then 10.00 back out
    report = reconciler(sessions, tenant, ledger, clock).report()
    assert (report.other, report.parked) == ([], [])
    assert reconciler(sessions, tenant, ledger, clock).run().derived.total() == 0
    # The rest refunded later: booked the same way, never a reversal on top of the refund already booked.
    _events(sessions, _refund("re_2", "pi_1", "90.00"))
    rest = reconciler(sessions, tenant, ledger, clock).run()
    assert (rest.derived.refunds, rest.derived.reversals) == (1, 0)
    assert ledger.posted["post:acme:acme-qbo:refund:re_2"].payload["amount"] == Decimal("90.00")
    assert ledger.balance("35") == Decimal("-100.00")  # the refunds leave in a later payout's debit


def test_a_partial_refund_without_refund_accounts_is_parked_naming_the_keys(
    sessions: sessionmaker[Session], tenant: TenantConfig, clock: FakeClock
) -> None:
    ledger = MemoryLedger()
    reconciler(sessions, tenant, ledger, clock).run()
    _events(sessions, _refund("re_1", "pi_1", "10.00"))
    assert reconciler(sessions, tenant, ledger, clock).run().counts() == {"parked": 1}
    report = reconciler(sessions, tenant, ledger, clock).report()
    assert report.parked == [
        (
            "post:acme:acme-qbo:refund:re_1",
            "parked: no refund_item (QuickBooks) or refund_account (Xero) in [writeback] of acme-qbo:"
            " a partial refund needs one to be booked",
        )
    ]
    assert report.other == [
        "partial refund of 10.00 USD on pi_1 (invoice i1): not booked (parked); see the parked postings"
    ]


def test_surcharges_are_income_in_clearing_or_parked_without_an_income_account(
    sessions: sessionmaker[Session], tenant: TenantConfig, tmp_path: Path, clock: FakeClock
) -> None:
    with sessions.begin() as s:
        s.query(ProcessorPayment).filter_by(processor_id="pi_1").one().surcharge = Decimal("3.00")
    ledger = MemoryLedger()
    run = reconciler(sessions, tenant, ledger, clock).run()
    assert run.counts() == {"posted": 5, "parked": 1}
    report = reconciler(sessions, tenant, ledger, clock).report()
    assert report.parked == [
        (
            "post:acme:acme-qbo:surcharge:pi_1",
            "parked: no surcharge_account in [writeback] of acme-qbo: card surcharges need an income account",
        )
    ]
    with_income = load_config(
        write(tmp_path / "cfg2", BASE + WRITEBACK + 'surcharge_account = "79"\n'), environ=PENV
    ).tenant("acme")
    with sessions.begin() as s:
        s.query(JournalEntry).filter_by(key="post:acme:acme-qbo:surcharge:pi_1").delete()
    run = reconciler(sessions, with_income, ledger, clock).run()
    surcharge = ledger.posted["post:acme:acme-qbo:surcharge:pi_1"]
    assert (surcharge.payload["amount"], surcharge.payload["income_account"], surcharge.payload["account"]) == (
        Decimal("3.00"),
        "79",
        "35",
    )


def test_a_payment_the_ledger_holds_twice_is_reported(
    sessions: sessionmaker[Session], tenant: TenantConfig, clock: FakeClock
) -> None:
    ledger = MemoryLedger()
    reconciler(sessions, tenant, ledger, clock).run()
    with sessions.begin() as s:  # the sync reads back the payment, and a copy someone made by hand
        for external_id in ("L1", "L99"):
            s.add(
                Payment(
                    connection_id=L.CONN,
                    external_id=external_id,
                    customer_external_id="c1",
                    currency="USD",
                    amount=Decimal("100.00"),
                    unapplied=Decimal(0),
                    status="applied",
                    reference="AR-1234",
                    synced_at=NOW,
                )
            )
    report = reconciler(sessions, tenant, ledger, clock).report()
    assert report.other == [
        "posted twice: post:acme:acme-qbo:payment:pi_1 (2 payments with reference AR-1234 in acme-qbo)"
    ]


def _balance_payment(key: str, pi: str, customer: str, amount: str) -> ProcessorPayment:
    return ProcessorPayment(
        key=key,
        processor_id=pi,
        tenant_id=L.TENANT,
        connection_id=L.CONN,
        customer_external_id=customer,
        amount=Decimal(amount),
        surcharge=Decimal(0),
        currency="USD",
        state="succeeded",
        created_at=NOW,
        updated_at=NOW,
    )


def test_a_balance_payment_auto_pay_applied_is_posted_as_a_payment_once(
    sessions: sessionmaker[Session], tenant: TenantConfig, clock: FakeClock
) -> None:
    with sessions.begin() as s:
        L.invoice(s, "i3", "c1", "80.00")
        s.add(_balance_payment("paylink:acme:acme-qbo:customer-c1:2026-11-20:80.00", "pi_link", "c1", "80.00"))
        policy = AutopayPolicy(rules=(AutopayRule(name="r", days_after_issue=0),))
        journal_plan(s, plan_charges(s, L.TENANT, [L.CONN], policy, date(2026, 11, 26)), clock())
    ledger = MemoryLedger()
    run = reconciler(sessions, tenant, ledger, clock).run()
    assert run.derived.allocations == 0  # auto-pay already applied it: no second allocation
    [share] = [p for p in ledger.posted.values() if p.payload.get("invoice_external_id") == "i3"]
    assert (share.kind, share.payload["amount"], share.payload["account"], share.payload["customer_external_id"]) == (
        "payment",
        Decimal("80.00"),
        "35",
        "c1",
    )
    assert reconciler(sessions, tenant, ledger, clock).report().parked == []


def test_a_balance_payment_is_spread_over_the_oldest_invoices_and_counted_once(
    sessions: sessionmaker[Session], tenant: TenantConfig, clock: FakeClock
) -> None:
    with sessions.begin() as s:
        L.customer(s, "c2", method=None)  # not on auto-pay: paid through a reminder's link
        L.invoice(s, "i5", "c2", "70.00", issued=date(2026, 10, 1))
        L.invoice(s, "i6", "c2", "80.00", issued=date(2026, 10, 15))
        s.add(_balance_payment("paylink:acme:acme-qbo:customer-c2:2026-11-20:120.00", "pi_bal", "c2", "120.00"))
    ledger = MemoryLedger()
    run = reconciler(sessions, tenant, ledger, clock).run()
    assert run.derived.allocations == 2
    shares = sorted(
        (p.payload["invoice_external_id"], p.payload["amount"])
        for p in ledger.posted.values()
        if p.payload.get("customer_external_id") == "c2"
    )
    assert shares == [("i5", Decimal("70.00")), ("i6", Decimal("50.00"))]
    again = reconciler(sessions, tenant, ledger, clock).run()
    assert (again.derived.total(), again.outcomes) == (0, [])
    with sessions() as s:
        assert standing.outstanding_charges(s, L.TENANT)[(L.CONN, "i6")] == Decimal("50.00")
    ids = {
        p.payload["invoice_external_id"]: key for key, p in ledger.posted.items() if "invoice_external_id" in p.payload
    }
    with sessions.begin() as s:  # the sync reads the two payments back, and the invoices' new balances
        for invoice, balance in (("i5", "0.00"), ("i6", "30.00")):
            external_id = f"L{list(ledger.posted).index(ids[invoice]) + 1}"
            s.add(
                Payment(
                    connection_id=L.CONN,
                    external_id=external_id,
                    customer_external_id="c2",
                    currency="USD",
                    amount=Decimal(0),
                    unapplied=Decimal(0),
                    status="applied",
                    synced_at=NOW,
                )
            )
            s.query(Invoice).filter_by(external_id=invoice).one().balance = Decimal(balance)
    with sessions() as s:
        on_way = standing.outstanding_charges(s, L.TENANT)
        assert (on_way.get((L.CONN, "i5")), on_way.get((L.CONN, "i6"))) == (None, None)
        assert standing.available_credits(s, L.TENANT, [L.CONN]).get((L.CONN, "c2")) is None
    assert reconciler(sessions, tenant, ledger, clock).run().derived.total() == 0


def test_a_payout_that_debits_the_bank_moves_the_money_back_to_clearing_and_ties_out(
    sessions: sessionmaker[Session], tenant: TenantConfig, clock: FakeClock
) -> None:
    ledger = MemoryLedger()
    reconciler(sessions, tenant, ledger, clock).run()
    with sessions.begin() as s:  # i1 refunded in full (100.00) and a 15.00 dispute fee; one 20.00 charge
        s.add(
            ProcessorRefund(
                refund_id="re_1",
                tenant_id=L.TENANT,
                payment_processor_id="pi_1",
                amount=Decimal("100.00"),
                currency="USD",
                status="succeeded",
                updated_at=NOW,
            )
        )
        s.add(
            Payout(
                payout_id="po_2",
                tenant_id=L.TENANT,
                amount=Decimal("-95.00"),
                currency="USD",
                status="paid",
                arrival_date=date(2026, 11, 26),
                lines_loaded_at=NOW,
                updated_at=NOW,
            )
        )
        for txn, kind, pi, gross, fee in (
            ("txn_r1", "refund", "pi_1", "-100.00", "0.00"),
            ("txn_a1", "adjustment", None, "0.00", "15.00"),
            ("txn_3", "charge", "pi_2", "20.00", "0.00"),
        ):
            s.add(
                BalanceLineRow(
                    id=txn,
                    tenant_id=L.TENANT,
                    payout_id="po_2",
                    type=kind,
                    source_id=f"src_{txn}",
                    payment_processor_id=pi,
                    amount=Decimal(gross),
                    fee=Decimal(fee),
                    net=Decimal(gross) - Decimal(fee),
                    currency="USD",
                    created=NOW,
                )
            )
    run = reconciler(sessions, tenant, ledger, clock).run()
    debit = ledger.posted["post:acme:acme-qbo:payout_debit:po_2"]
    assert (debit.kind, debit.payload["amount"], debit.payload["from_account"], debit.payload["to_account"]) == (
        "payout_debit",
        Decimal("95.00"),
        "36",
        "35",
    )
    assert (debit.payload["reference"], debit.payload["date"]) == ("po_2", date(2026, 11, 26))
    assert "post:acme:acme-qbo:payout:po_2" not in ledger.posted
    assert run.derived.payouts == 1
    assert ledger.balance("36") == Decimal("145.05") - Decimal("95.00")
    report = reconciler(sessions, tenant, ledger, clock).report()
    row = next(r for r in report.payouts if r.payout_id == "po_2")
    assert (row.amount, row.deposited, row.refunds, row.fees) == (
        Decimal("-95.00"),
        Decimal("-95.00"),
        Decimal("100.00"),
        Decimal("15.00"),
    )
    assert not any("deposit" in problem for problem in row.problems), row.problems
    totals = report.totals()["USD"]
    assert totals["payments"] - totals["fees"] - totals["refunds"] - totals["chargebacks"] == totals["deposited"]
    assert totals["deposited"] == totals["amount"] == Decimal("50.05")
    assert reconciler(sessions, tenant, ledger, clock).run().derived.total() == 0


def test_the_refund_account_is_checked_against_the_chart_of_accounts() -> None:
    chart = [
        LedgerAccount("35", "Stripe Clearing", AccountType.BANK),
        LedgerAccount("36", "Checking", AccountType.BANK),
        LedgerAccount("54", "Merchant Fees", AccountType.EXPENSE),
        LedgerAccount("48", "Refunds", AccountType.EXPENSE),
    ]
    where = "tenants.*.connections.acme-qbo.writeback"
    assert account_problems("acme-qbo", Accounts("35", "36", "54", refunds="48"), chart) == [
        f"{where}.refund_account: account '48' (Refunds) is expense, write-back needs income"
    ]
    assert account_problems("acme-qbo", Accounts("35", "36", "54", refunds="49"), chart) == [
        f"{where}.refund_account: the ledger has no account '49'"
    ]
    assert account_problems("acme-qbo", Accounts("35", "36", "54", refund_item="7"), chart) == []


def test_a_surcharged_payment_refunded_in_full_undoes_its_surcharge_too(
    sessions: sessionmaker[Session], tmp_path: Path, clock: FakeClock
) -> None:
    tenant = load_config(
        write(tmp_path / "cfg", BASE + WRITEBACK + 'surcharge_account = "79"\nrefund_item = "7"\n'), environ=PENV
    ).tenant("acme")
    with sessions.begin() as s:
        for pi in ("pi_1", "pi_2"):
            s.query(ProcessorPayment).filter_by(processor_id=pi).one().surcharge = Decimal("3.00")
    ledger = MemoryLedger()
    assert reconciler(sessions, tenant, ledger, clock).run().derived.surcharges == 2
    surcharge_id = f"L{list(ledger.posted).index('post:acme:acme-qbo:surcharge:pi_1') + 1}"
    # pi_1 refunded in full, surcharge included; pi_2 refunded its amount only: the surcharge is kept.
    _events(sessions, _refund("re_1", "pi_1", "103.00"), _refund("re_2", "pi_2", "50.00"))
    run = reconciler(sessions, tenant, ledger, clock).run()
    assert (run.derived.reversals, run.derived.refunds) == (2, 1)
    undo = ledger.posted["post:acme:acme-qbo:surcharge_reversal:pi_1:refund"]
    assert (undo.kind, undo.payload["surcharge_external_id"], undo.payload["amount"]) == (
        "surcharge_reversal",
        surcharge_id,
        Decimal("3.00"),
    )
    assert undo.payload["reason"] == "refunded in full (103.00 USD)"
    assert "post:acme:acme-qbo:payment_reversal:pi_1:refund" in ledger.posted
    assert not any(key.startswith("post:acme:acme-qbo:surcharge_reversal:pi_2") for key in ledger.posted)
    assert ledger.posted["post:acme:acme-qbo:refund:re_2"].payload["amount"] == Decimal("50.00")
    assert reconciler(sessions, tenant, ledger, clock).run().derived.total() == 0


def test_what_a_balance_payment_leaves_is_unapplied_credit_counted_once_after_its_echo(
    sessions: sessionmaker[Session], tenant: TenantConfig, clock: FakeClock
) -> None:
    with sessions.begin() as s:
        L.customer(s, "c4")  # on auto-pay (a card saved), and paid a link for more than the whole balance
        L.invoice(s, "i8", "c4", "70.00", issued=date(2026, 10, 1))
        L.invoice(s, "i9", "c4", "80.00", issued=date(2026, 10, 15))
        s.add(_balance_payment("paylink:acme:acme-qbo:customer-c4:2026-11-20:200.00", "pi_over", "c4", "200.00"))
    ledger = MemoryLedger()
    run = reconciler(sessions, tenant, ledger, clock).run()
    assert run.derived.allocations == 3  # two shares and the rest
    over = ledger.posted["post:acme:acme-qbo:overpayment:pi_over"]
    assert (over.kind, over.payload["amount"], over.payload["account"], over.payload["customer_external_id"]) == (
        "overpayment",
        Decimal("50.00"),
        "35",
        "c4",
    )
    assert over.payload["reference"] == "post:acme:acme-qbo:overpayment:pi_over"
    assert ledger.balance("35") == Decimal("200.00")  # the whole 200.00 is in clearing, once
    assert reconciler(sessions, tenant, ledger, clock).report().payouts[0].problems == []
    with sessions() as s:  # posted, not read back yet: nothing of it is offered as credit meanwhile
        assert standing.available_credits(s, L.TENANT, [L.CONN]).get((L.CONN, "c4")) is None
    again = reconciler(sessions, tenant, ledger, clock).run()
    assert (again.derived.total(), again.outcomes) == (0, [])  # decided once

    def ledger_id(key: str) -> str:
        return f"L{list(ledger.posted).index(key) + 1}"

    with sessions.begin() as s:  # the sync reads back the two shares, the invoices paid, and the unapplied credit
        for key in ledger.posted:
            payload = ledger.posted[key].payload
            if payload.get("customer_external_id") != "c4":
                continue
            unapplied = payload["amount"] if key == over.key else Decimal(0)
            s.add(
                Payment(
                    connection_id=L.CONN,
                    external_id=ledger_id(key),
                    customer_external_id="c4",
                    currency="USD",
                    amount=payload["amount"],
                    unapplied=unapplied,
                    status="open" if unapplied else "applied",
                    payment_date=date(2026, 11, 25),
                    synced_at=NOW,
                )
            )
        for invoice in ("i8", "i9"):
            s.query(Invoice).filter_by(external_id=invoice).one().balance = Decimal(0)
        L.invoice(s, "i10", "c4", "120.00", issued=date(2026, 11, 20))  # then a new invoice
    assert reconciler(sessions, tenant, ledger, clock).run().echoes == 1
    with sessions() as s:
        assert s.query(ProcessorPayment).filter_by(processor_id="pi_over").one().applied_in_ledger_at == NOW
        [credit] = standing.available_credits(s, L.TENANT, [L.CONN])[(L.CONN, "c4")]
        assert (credit.source, credit.external_id, credit.available) == (
            "payment",
            ledger_id(over.key),
            Decimal("50.00"),
        )
        policy = AutopayPolicy(rules=(AutopayRule(name="r", days_after_issue=0),))
        plan = plan_charges(s, L.TENANT, [L.CONN], policy, date(2026, 11, 26))
    [item] = [i for i in plan.items if i.charge.invoice == "i10"]
    # 50.00 of credit, counted once: 70.00 charged (counted twice, it would be 20.00)
    assert (item.charge.amount, sum(u.amount for u in item.credits)) == (Decimal("70.00"), Decimal("50.00"))
    assert [(u.source, u.source_id) for u in item.credits] == [("payment", ledger_id(over.key))]


def _eur_payment(s: Session, n: int, invoice: str, amount: str) -> None:
    L.invoice(s, invoice, "c1", amount, currency="EUR")
    s.add(
        ProcessorPayment(
            key=f"charge:acme:acme-qbo:{invoice}:auto-2026-11-22:1",
            processor_id=f"pi_eur{n}",
            tenant_id=L.TENANT,
            connection_id=L.CONN,
            invoice_external_id=invoice,
            customer_external_id="c1",
            amount=Decimal(amount),
            surcharge=Decimal(0),
            currency="EUR",
            state="succeeded",
            created_at=NOW - timedelta(days=1),
            updated_at=NOW,
        )
    )


def test_a_payment_in_another_currency_waits_for_its_rate_and_carries_it(
    sessions: sessionmaker[Session], tenant: TenantConfig, clock: FakeClock
) -> None:
    assert tenant.home_currency == "USD"
    with sessions.begin() as s:
        _eur_payment(s, 1, "ie1", "100.00")  # converted to USD by the processor
        _eur_payment(s, 2, "ie2", "40.00")  # kept in EUR by the processor: no rate to USD from it
    ledger = MemoryLedger()
    first = reconciler(sessions, tenant, ledger, clock).run()
    assert first.derived.payments == 2  # the USD ones; the EUR ones wait
    assert not any("pi_eur" in key for key in ledger.posted)
    report = reconciler(sessions, tenant, ledger, clock).report()
    assert report.other == [
        "payment pi_eur1 (100.00 EUR, invoice ie1) not posted: waiting for its exchange rate to USD:"
        " it comes with the payout's balance lines",
        "payment pi_eur2 (40.00 EUR, invoice ie2) not posted: waiting for its exchange rate to USD:"
        " it comes with the payout's balance lines",
    ]
    with sessions.begin() as s:  # the payout's lines arrive: the EUR charge converted at 1.083712345
        s.add(
            Payout(
                payout_id="po_eur",
                tenant_id=L.TENANT,
                amount=Decimal("148.37"),
                currency="USD",
                status="in_transit",
                updated_at=NOW,
            )
        )
        for txn, pi, gross, currency, rate in (
            ("txn_eur1", "pi_eur1", "108.37", "USD", Decimal("1.083712345")),
            ("txn_eur2", "pi_eur2", "40.00", "EUR", None),
        ):
            s.add(
                BalanceLineRow(
                    id=txn,
                    tenant_id=L.TENANT,
                    payout_id="po_eur",
                    type="charge",
                    source_id=f"ch_{pi}",
                    payment_processor_id=pi,
                    amount=Decimal(gross),
                    fee=Decimal(0),
                    net=Decimal(gross),
                    currency=currency,
                    created=NOW,
                    exchange_rate=rate,
                )
            )
    second = reconciler(sessions, tenant, ledger, clock).run()
    assert second.derived.payments == 1
    paid = ledger.posted["post:acme:acme-qbo:payment:pi_eur1"]
    assert (paid.payload["amount"], paid.payload["currency"], paid.payload["currency_rate"]) == (
        Decimal("100.00"),
        "EUR",
        Decimal("1.083712345"),
    )
    assert isinstance(paid.payload["currency_rate"], Decimal)
    assert reconciler(sessions, tenant, ledger, clock).report().other == [
        "payment pi_eur2 (40.00 EUR, invoice ie2) not posted: no exchange rate to USD: the processor kept it in EUR;"
        " post it by hand"
    ]
    assert reconciler(sessions, tenant, ledger, clock).run().derived.total() == 0


def _fee_invoice(s: Session, external_id: str, amount: str, issued: date, *items: str | None) -> None:
    L.invoice(s, external_id, "c5", amount, issued=issued)
    s.flush()
    invoice = s.query(Invoice).filter_by(external_id=external_id).one()
    assert invoice.id is not None
    for n, item in enumerate(items, start=1):
        share = (Decimal(amount) / len(items)).quantize(Decimal("0.01"))
        s.add(DocumentLine(document_type="invoice", document_id=invoice.id, line_no=n, amount=share, item_ref=item))


@pytest.mark.parametrize(
    ("order", "expected"),
    [
        (None, [("i_coll", "15.00"), ("i_late", "10.00"), ("i_old", "35.00")]),
        ('["principal", "late_fees", "collection_fees"]', [("i_old", "50.00"), ("i_mixed", "10.00")]),
    ],
)
def test_a_balance_payment_pays_fees_first_then_principal_by_the_configured_order(
    sessions: sessionmaker[Session],
    tmp_path: Path,
    clock: FakeClock,
    order: str | None,
    expected: list[tuple[str, str]],
) -> None:
    text = WRITEBACK + 'late_fee_items = ["LATE"]\ncollection_fee_items = ["COLL", "AGENCY"]\n'
    if order is not None:
        text += f"allocation_order = {order}\n"
    tenant = load_config(write(tmp_path / "cfg", BASE + text), environ=PENV).tenant("acme")
    with sessions.begin() as s:
        L.customer(s, "c5", method=None)
        _fee_invoice(s, "i_old", "50.00", date(2026, 8, 1), "SERVICES")  # principal, the oldest
        _fee_invoice(s, "i_mixed", "30.00", date(2026, 9, 1), "LATE", "SERVICES")  # a fee and work: principal
        _fee_invoice(s, "i_late", "10.00", date(2026, 10, 1), "LATE")
        _fee_invoice(s, "i_coll", "15.00", date(2026, 11, 1), "COLL", "AGENCY")
        s.add(_balance_payment("paylink:acme:acme-qbo:customer-c5:2026-11-20:60.00", "pi_c5", "c5", "60.00"))
    ledger = MemoryLedger()
    reconciler(sessions, tenant, ledger, clock).run()
    shares = sorted(
        (p.payload["invoice_external_id"], p.payload["amount"])
        for p in ledger.posted.values()
        if p.payload.get("customer_external_id") == "c5"
    )
    # what each invoice got: the order decides who is paid
    assert shares == sorted((invoice, Decimal(amount)) for invoice, amount in expected)


def test_late_fee_and_agency_fee_accounts_are_checked_and_the_late_fee_item_is_a_late_fee_item(
    sessions: sessionmaker[Session], tmp_path: Path, clock: FakeClock
) -> None:
    chart = [
        LedgerAccount("35", "Stripe Clearing", AccountType.BANK),
        LedgerAccount("36", "Checking", AccountType.BANK),
        LedgerAccount("54", "Merchant Fees", AccountType.EXPENSE),
        LedgerAccount("58", "Collection Costs", AccountType.EXPENSE),
        LedgerAccount("60", "Late Fee Income", AccountType.INCOME),
    ]
    where = "tenants.*.connections.acme-qbo.writeback"
    good = Accounts("35", "36", "54", late_fee_account="60", collections_fee_account="58")
    assert account_problems("acme-qbo", good, chart) == []
    swapped = Accounts("35", "36", "54", late_fee_account="58", collections_fee_account="60")
    assert account_problems("acme-qbo", swapped, chart) == [
        f"{where}.late_fee_account: account '58' (Collection Costs) is expense, write-back needs income",
        f"{where}.collections_fee_account: account '60' (Late Fee Income) is income, write-back needs expense",
    ]
    text = BASE + WRITEBACK + 'late_fee_items = ["12"]\nlate_fee_item = "7"\n'
    tenant = load_config(write(tmp_path / "fees", text), environ=PENV).tenant("acme")
    ledgers = reconciler(sessions, tenant, MemoryLedger(), clock).ledgers()
    assert ledgers[L.CONN].allocation.late_fee_items == frozenset({"12", "7"})
    assert ledgers[L.CONN].late_fee_item == "7"


def _agency_fee(s: Session, invoice: str, amount: str, now: datetime) -> str:
    key = f"collections:fee:{L.TENANT}:{L.CONN}:{invoice}:upfront"
    payload = {
        "connection": L.CONN,
        "posting_kind": "collections_fee",
        "reference": key,
        "invoice_external_id": invoice,
        "customer_external_id": "c1",
        "amount": Decimal(amount),
        "currency": "USD",
        "description": "Collections upfront fee",
        "contact_name": "Recovery Partners",
        "date": "2026-11-25",
    }
    journal.record(s, journal.Intent(key, L.TENANT, "posting", payload, f"collections_fee:{L.CONN}:{invoice}"), now)
    return key


def test_an_agency_fee_is_parked_without_its_account_then_posted_with_the_config_once_released(
    sessions: sessionmaker[Session], tenant: TenantConfig, tmp_path: Path, clock: FakeClock
) -> None:
    ledger = MemoryLedger()
    reconciler(sessions, tenant, ledger, clock).run()
    with sessions.begin() as s:
        key = _agency_fee(s, "i1", "1.00", clock())
    assert reconciler(sessions, tenant, ledger, clock).run().counts() == {"parked": 1}
    assert reconciler(sessions, tenant, ledger, clock).report().parked == [
        (
            key,
            "parked: no collections_fee_account in [writeback] of acme-qbo:"
            " a collections agency's fee needs an expense account to be booked",
        )
    ]
    text = BASE + WRITEBACK + 'collections_fee_account = "58"\ncollections_vendor = "61"\n'
    fixed = load_config(write(tmp_path / "fixed", text), environ=PENV).tenant("acme")
    assert reconciler(sessions, fixed, ledger, clock).release([key]) == 1
    assert reconciler(sessions, fixed, ledger, clock).run().counts() == {"posted": 1}
    posted = ledger.posted[key]
    assert (posted.kind, posted.payload["collections_fee_account"], posted.payload["collections_vendor"]) == (
        "collections_fee",
        "58",
        "61",
    )
    assert posted.payload["amount"] == Decimal("1.00") and posted.payload["date"] == date(2026, 11, 25)
    [booked] = reconciler(sessions, fixed, ledger, clock).report().fees_booked
    assert (booked.kind, booked.invoice, booked.amount, booked.ledger_id) == (
        "collections_fee",
        "i1",
        Decimal("1.00"),
        "L6",
    )
    assert reconciler(sessions, fixed, ledger, clock).report(since=date(2026, 11, 26)).fees_booked == []


def mine(ledger: MemoryLedger) -> list[Posting]:
    return [p for p in ledger.posted.values() if p.payload.get("customer_external_id") == "c6"]


def test_a_balance_payment_in_another_currency_posts_its_shares_and_the_rest_with_its_rate(
    sessions: sessionmaker[Session], tenant: TenantConfig, clock: FakeClock
) -> None:
    with sessions.begin() as s:
        L.customer(s, "c6")
        L.invoice(s, "ie6", "c6", "70.00", currency="EUR", issued=date(2026, 10, 1))
        key = "paylink:acme:acme-qbo:customer-c6:2026-11-20:100.00"
        paid = _balance_payment(key, "pi_eur_link", "c6", "100.00")
        paid.currency = "EUR"
        s.add(paid)
    ledger = MemoryLedger()
    first = reconciler(sessions, tenant, ledger, clock).run()
    assert first.derived.allocations == 1  # the share is decided; the rest waits for the rate
    assert not mine(ledger)  # and the share is not posted without it
    with sessions() as s:
        waiting = s.query(JournalEntry).filter_by(kind=standing.CREDIT_KIND).one().error
    assert (
        waiting
        == "waits for the processor's exchange rate of paylink:acme:acme-qbo:customer-c6:2026-11-20:100.00 (EUR to USD)"
    )

    with sessions.begin() as s:  # the payout's lines bring the rate
        s.add(
            BalanceLineRow(
                id="txn_eur_link",
                tenant_id=L.TENANT,
                payout_id="po_link",
                type="charge",
                source_id="ch_link",
                payment_processor_id="pi_eur_link",
                amount=Decimal("108.37"),
                fee=Decimal(0),
                net=Decimal("108.37"),
                currency="USD",
                created=NOW,
                exchange_rate=Decimal("1.0837"),
            )
        )
    clock.advance(minutes=16)
    reconciler(sessions, tenant, ledger, clock).run()
    rates = {p.kind: (p.payload["amount"], p.payload["currency_rate"]) for p in mine(ledger)}
    assert rates == {
        "payment": (Decimal("70.00"), Decimal("1.0837")),
        "overpayment": (Decimal("30.00"), Decimal("1.0837")),
    }
