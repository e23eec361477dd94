"""The auto-pay plan on both stores: which invoices are charged, how much, and why not the others."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from sqlalchemy.orm import Session, sessionmaker

from collect.autopay import ChargePlan, Selection, journal_plan, plan_charges
from collect.policy import AutopayPolicy, AutopayRule, SurchargePolicy
from sync import journal
from sync.models import ChargeInstalment, Invoice, ProcessorPayment
from tests import collecting as L

TODAY = date(2026, 11, 22)
NOW = datetime(2026, 11, 22, 15, 0, tzinfo=UTC)
ON_ISSUE = AutopayRule(name="on-issue", days_after_issue=0)
ON_DUE = AutopayRule(name="on-due", on_due_date=True)


@pytest.fixture
def sessions(db_url: str) -> sessionmaker[Session]:
    return L.ledger(db_url)


def plan(
    sessions: sessionmaker[Session], policy: AutopayPolicy, today: date = TODAY, selection: Selection | None = None
) -> ChargePlan:
    with sessions() as s:
        return plan_charges(s, L.TENANT, [L.CONN], policy, today, selection=selection)


def charged(p: ChargePlan) -> dict[str, Decimal]:
    return {item.charge.invoice: item.charge.amount for item in p.items}


def test_rules_choose_by_timing_and_or_across_rules(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        L.customer(s, "c1")
        L.invoice(s, "due-today", "c1", "100.00", issued=date(2026, 10, 23), due=TODAY)
        L.invoice(s, "due-later", "c1", "50.00", issued=date(2026, 11, 20), due=date(2026, 12, 20))
        L.invoice(s, "agreement", "c1", "75.00", issued=TODAY, due=date(2026, 12, 22), agreement="recur-9")
    policy = AutopayPolicy(rules=(ON_DUE, AutopayRule(name="msp", days_after_issue=0, agreement_only=True)))
    p = plan(sessions, policy)
    assert charged(p) == {"agreement": Decimal("75.00"), "due-today": Decimal("100.00")}
    assert p.skipped == {"no auto-pay rule matches today": 1}
    reasons = {i.charge.invoice: i.why for i in p.items}
    assert reasons["due-today"] == "rule 'on-due': on the due date"
    assert reasons["agreement"] == "rule 'msp': 0 days after the invoice date, from an agreement"
    assert charged(plan(sessions, policy, today=date(2026, 12, 20)))["due-later"] == Decimal("50.00")


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (AutopayRule(name="r", days_after_issue=0, max_amount=Decimal("100")), {"small", "euro", "ach"}),
        (AutopayRule(name="r", days_after_issue=0, min_amount=Decimal("100.01")), {"big"}),
        (AutopayRule(name="r", days_after_issue=0, currencies=frozenset({"EUR"})), {"euro"}),
        (AutopayRule(name="r", days_after_issue=0, tags_any=frozenset({"msp"})), {"small", "big", "euro"}),
        (AutopayRule(name="r", days_after_issue=0, tags_none=frozenset({"msp"})), {"ach"}),
        (AutopayRule(name="r", days_after_issue=0, method_types=frozenset({"us_bank_account"})), {"ach"}),
        (AutopayRule(name="r", days_after_issue=5), set()),
    ],
)
def test_rule_limits(sessions: sessionmaker[Session], rule: AutopayRule, expected: set[str]) -> None:
    with sessions.begin() as s:
        L.customer(s, "c1")
        L.tag(s, "c1", "msp")
        L.customer(s, "c2", method="us_bank_account", funding=None)
        L.invoice(s, "small", "c1", "100.00", issued=TODAY)
        L.invoice(s, "big", "c1", "100.01", issued=TODAY)
        L.invoice(s, "euro", "c1", "20.00", issued=TODAY, currency="EUR")
        L.invoice(s, "ach", "c2", "30.00", issued=TODAY)
    assert set(charged(plan(sessions, AutopayPolicy(rules=(rule,))))) == expected


def test_only_enrolled_customers_on_open_invoices_without_holds(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        L.customer(s, "enrolled")
        L.customer(s, "not-enrolled", method=None)
        L.customer(s, "on-session-only", method=None)
        L.enrol(s, "on-session-only", "card", pm="pm_x", scope="on_session")
        L.customer(s, "opted-out")
        L.tag(s, "opted-out", "no-autopay")
        L.invoice(s, "ok", "enrolled", "10.00")
        L.invoice(s, "paid", "enrolled", "0.00", status="paid")
        L.invoice(s, "void", "enrolled", "0.00", status="void")
        L.invoice(s, "disputed", "enrolled", "20.00")
        L.hold(s, "disputed")
        L.invoice(s, "nobody", "not-enrolled", "10.00")
        L.invoice(s, "on-session", "on-session-only", "10.00")
        L.invoice(s, "excluded", "opted-out", "10.00")
    p = plan(sessions, AutopayPolicy(rules=(ON_ISSUE,), excluded_tags=frozenset({"no-autopay"})))
    assert charged(p) == {"ok": Decimal("10.00")}
    assert p.skipped == {
        "on hold (dispute)": 1,
        "no payment method enrolled for charges while the customer is absent": 1,
        "customer excluded from auto-pay by tag": 1,
    }


def test_credits_and_unapplied_cash_go_first_oldest_invoice_first(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        L.customer(s, "c1")
        L.invoice(s, "older", "c1", "100.00", issued=date(2026, 10, 1))
        L.invoice(s, "newer", "c1", "100.00", issued=date(2026, 11, 1))
        L.credit_note(s, "cn1", "c1", "60.00")
        L.unapplied_cash(s, "pay1", "c1", "70.00")
    policy = AutopayPolicy(rules=(ON_ISSUE,))
    p = plan(sessions, policy)
    assert charged(p) == {"older": Decimal("0.00"), "newer": Decimal("70.00")}
    uses = {i.charge.invoice: [(u.source_id, u.amount) for u in i.credits] for i in p.items}
    assert uses == {
        "older": [("cn1", Decimal("60.00")), ("pay1", Decimal("40.00"))],
        "newer": [("pay1", Decimal("30.00"))],
    }
    with sessions.begin() as s:
        assert journal_plan(s, p, NOW) == 1  # "older" is paid by credits alone: no charge
    again = plan(sessions, policy)
    assert again.items == []
    assert again.skipped == {"already charged: payment on its way to the ledger": 2}


def test_a_journaled_plan_is_not_charged_again_until_the_ledger_catches_up(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        L.customer(s, "c1")
        L.invoice(s, "i1", "c1", "100.00")
    policy = AutopayPolicy(rules=(ON_ISSUE,))
    first = plan(sessions, policy)
    with sessions.begin() as s:
        journal_plan(s, first, NOW)
        journal_plan(s, first, NOW)
    with sessions() as s:
        assert [e.key for e in journal.entries(s)] == ["charge:acme:acme-qbo:i1:auto-2026-11-22:1"]
    # The charge succeeded at the processor; the ledger has not seen it yet.
    with sessions.begin() as s:
        entry = journal.entries(s)[0]
        entry.status = "done"
        s.add(
            ProcessorPayment(
                key=entry.key,
                tenant_id=L.TENANT,
                connection_id=L.CONN,
                invoice_external_id="i1",
                amount=Decimal("100.00"),
                surcharge=Decimal(0),
                currency="USD",
                state="succeeded",
                created_at=NOW,
                updated_at=NOW,
            )
        )
    assert plan(sessions, policy, today=date(2026, 11, 23)).items == []
    with sessions.begin() as s:
        payment = s.query(ProcessorPayment).one()
        payment.returned = True  # an ACH return: the money came back, the invoice is owed again
    assert charged(plan(sessions, policy, today=date(2026, 11, 23))) == {"i1": Decimal("100.00")}


def test_a_declined_method_is_not_charged_again_until_a_new_one_is_enrolled(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        L.customer(s, "c1", pm="pm_old")
        L.invoice(s, "i1", "c1", "100.00")
        s.add(
            ProcessorPayment(
                key="charge:acme:acme-qbo:i1:auto-2026-11-21:1",
                tenant_id=L.TENANT,
                connection_id=L.CONN,
                invoice_external_id="i1",
                amount=Decimal("100.00"),
                surcharge=Decimal(0),
                currency="USD",
                payment_method_id="pm_old",
                state="hard_decline",
                decline_code="stolen_card",
                created_at=NOW,
                updated_at=NOW,
            )
        )
    policy = AutopayPolicy(rules=(ON_ISSUE,))
    assert plan(sessions, policy).skipped == {
        "last charge hard_decline on this method: waiting for a new one (dunning has it)": 1
    }
    with sessions.begin() as s:
        L.enrol(s, "c1", "card", funding="credit", pm="pm_new", at=NOW)
    p = plan(sessions, policy)
    assert [(i.charge.invoice, i.charge.payment_method_id) for i in p.items] == [("i1", "pm_new")]


def test_surcharge_on_credit_cards_only_capped_and_its_own_amount(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        L.customer(s, "credit", funding="credit")
        L.customer(s, "debit", funding="debit")
        L.customer(s, "ach", method="us_bank_account", funding=None)
        for c in ("credit", "debit", "ach"):
            L.invoice(s, f"inv-{c}", c, "1000.00")
    surcharge = SurchargePolicy(percent=Decimal("2.9"), fixed=Decimal("0.30"), max_percent=Decimal("3"))
    p = plan(sessions, AutopayPolicy(rules=(ON_ISSUE,), surcharge=surcharge))
    got = {i.charge.invoice: (i.charge.amount, i.charge.surcharge) for i in p.items}
    # 2.9% of 1000 + 0.30 = 29.30, under the 3% cap of 30.00
    assert got == {
        "inv-credit": (Decimal("1000.00"), Decimal("29.30")),
        "inv-debit": (Decimal("1000.00"), Decimal(0)),
        "inv-ach": (Decimal("1000.00"), Decimal(0)),
    }
    assert p.totals() == {"USD": (Decimal("3000.00"), Decimal("29.30"), Decimal(0))}


def test_instalments_charge_what_brings_the_balance_to_the_schedule(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        L.customer(s, "c1")
        L.invoice(s, "i1", "c1", "300.00")
        for seq, on in enumerate((date(2026, 11, 22), date(2026, 12, 22), date(2027, 1, 22)), start=1):
            s.add(
                ChargeInstalment(
                    connection_id=L.CONN,
                    invoice_external_id="i1",
                    seq=seq,
                    due_on=on,
                    amount=Decimal("100.00"),
                    currency="USD",
                    created_at=NOW,
                )
            )
    policy = AutopayPolicy(rules=())  # instalments do not need a rule
    assert plan(sessions, policy, today=date(2026, 11, 21)).skipped == {"instalment plan: nothing due yet": 1}
    p = plan(sessions, policy)
    assert [(i.charge.part, i.charge.amount, i.why) for i in p.items] == [
        ("i1", Decimal("100.00"), "instalment 1 of 3")
    ]
    with sessions.begin() as s:
        invoice = s.query(Invoice).one()
        invoice.balance = Decimal("200.00")  # instalment 1 reached the ledger
        invoice.status = "partially_paid"
    assert plan(sessions, policy).skipped == {"instalment plan: instalment already paid": 1}
    late = plan(sessions, policy, today=date(2027, 1, 30))  # both remaining instalments are due
    assert [(i.charge.part, i.charge.amount) for i in late.items] == [("i3", Decimal("200.00"))]


def test_a_vendor_batch_charges_now_with_a_partial_amount(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        L.customer(s, "c1")
        L.invoice(s, "i1", "c1", "100.00", issued=TODAY, due=date(2027, 1, 1))
        L.invoice(s, "i2", "c1", "40.00", issued=TODAY, due=date(2027, 1, 1))
    policy = AutopayPolicy(rules=(ON_DUE,))
    assert plan(sessions, policy).items == []
    batch = plan(sessions, policy, selection=Selection(invoices=frozenset({(L.CONN, "i1")}), amount=Decimal("25.00")))
    assert [(i.charge.invoice, i.charge.amount, i.charge.part) for i in batch.items] == [
        ("i1", Decimal("25.00"), "batch-2026-11-22")
    ]
    too_much = plan(sessions, policy, selection=Selection(invoices=frozenset({(L.CONN, "i1")}), amount=Decimal("101")))
    assert too_much.skipped == {"amount asked exceeds what is owed (100.00 USD)": 1}
    whole = plan(sessions, policy, selection=Selection(customers=frozenset({(L.CONN, "c1")})))
    assert charged(whole) == {"i1": Decimal("100.00"), "i2": Decimal("40.00")}


def test_a_balance_paid_through_a_link_counts_as_cash_to_apply(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        L.customer(s, "c1")
        L.invoice(s, "older", "c1", "100.00", issued=date(2026, 10, 1))
        L.invoice(s, "newer", "c1", "100.00", issued=date(2026, 11, 1))
        s.add(
            ProcessorPayment(
                key="paylink:acme:acme-qbo:customer-c1:2026-11-20:150.00",
                processor_id="pi_link",
                tenant_id=L.TENANT,
                connection_id=L.CONN,
                customer_external_id="c1",
                amount=Decimal("150.00"),
                surcharge=Decimal(0),
                currency="USD",
                state="succeeded",
                created_at=NOW,
                updated_at=NOW,
            )
        )
    policy = AutopayPolicy(rules=(ON_ISSUE,))
    p = plan(sessions, policy)
    assert charged(p) == {"older": Decimal("0.00"), "newer": Decimal("50.00")}
    with sessions.begin() as s:
        journal_plan(s, p, NOW)
    assert plan(sessions, policy).items == []
    with sessions.begin() as s:
        link_payment = s.query(ProcessorPayment).filter_by(processor_id="pi_link").one()
        link_payment.applied_in_ledger_at = NOW  # write-back applied it: the ledger's balances now show it
        for invoice, balance in (("older", "0.00"), ("newer", "50.00")):
            row = s.query(Invoice).filter_by(external_id=invoice).one()
            row.balance = Decimal(balance)
            row.status = "paid" if balance == "0.00" else "partially_paid"
    # The 50.00 charge journaled above is still on its way: nothing more is charged.
    assert plan(sessions, policy).items == []


def test_a_second_batch_on_the_same_day_needs_a_reference(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        L.customer(s, "c1")
        L.invoice(s, "i1", "c1", "100.00", issued=TODAY, due=date(2027, 1, 1))
    policy = AutopayPolicy(rules=(ON_DUE,))
    one = Selection(invoices=frozenset({(L.CONN, "i1")}), amount=Decimal("10.00"))
    with sessions.begin() as s:
        journal_plan(s, plan(sessions, policy, selection=one), NOW)
    assert plan(sessions, policy, selection=one).skipped == {
        "already charged in a batch today (give the batch a reference to charge again)": 1
    }
    again = Selection(invoices=one.invoices, amount=Decimal("10.00"), reference="phone-call")
    assert [i.charge.key for i in plan(sessions, policy, selection=again).items] == [
        "charge:acme:acme-qbo:i1:batch-2026-11-22-phone-call:1"
    ]
    # The 10.00 journaled is on its way: 90.00 is all a batch may still take.
    big = Selection(invoices=one.invoices, amount=Decimal("90.01"), reference="x")
    assert plan(sessions, policy, selection=big).skipped == {"amount asked exceeds what is owed (90.00 USD)": 1}
    assert plan(sessions, policy, today=date(2026, 11, 23), selection=one).items != []


def test_a_batch_says_why_it_charges_nothing(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        L.customer(s, "c1")
        L.customer(s, "c2", method=None)
        L.invoice(s, "paid", "c1", "0.00", status="paid")
        L.invoice(s, "not-enrolled", "c2", "10.00")
    chosen = Selection(invoices=frozenset({(L.CONN, "paid"), (L.CONN, "not-enrolled")}))
    p = plan(sessions, AutopayPolicy(rules=(ON_ISSUE,)), selection=chosen)
    assert (p.items, p.examined) == ([], 2)
    assert p.skipped == {
        "invoice is paid": 1,
        "no payment method enrolled for charges while the customer is absent": 1,
    }
