"""Risk levels with their reasons, the worklist's order, task outcomes and the holds they make, on both stores.

Expected figures are worked out here from the seeded history (days late, counts,
balances) with the thresholds of ``collect/risk.py``'s table written out again,
so a change of the code or of the table shows.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from collect.risk import assess_customers
from collect.worklist import (
    PAID_WAIT_DAYS,
    WorklistError,
    complete_task,
    customer_card,
    dispute,
    extend,
    opt_in,
    opt_out,
    promise,
    resolve_dispute,
    waive_late_fees,
    worklist,
)
from sync.models import (
    ContactBlock,
    DunningMessage,
    DunningTask,
    InvoiceHold,
    LateFeeWaiver,
    Payment,
    PaymentApplication,
    ProcessorPayment,
)
from tests import collecting as L

TODAY = date(2026, 11, 22)
NOW = datetime(2026, 11, 22, 15, 0, tzinfo=UTC)
C = L.CONN


@pytest.fixture
def sessions(db_url: str) -> sessionmaker[Session]:
    return L.ledger(db_url)


# --- seeding ---------------------------------------------------------------------------------------------

_payments = 0


def paid(s: Session, invoice: str, customer: str, due: date, *paid_on: date, amount: str = "100.00") -> None:
    """An invoice paid in full by one payment per day in ``paid_on``."""
    global _payments
    L.invoice(s, invoice, customer, "0.00", due=due, status="paid")
    for day in paid_on:
        _payments += 1
        payment = Payment(
            connection_id=C,
            external_id=f"pay-{_payments}",
            customer_external_id=customer,
            payment_date=day,
            currency="USD",
            amount=Decimal(amount),
            unapplied=Decimal(0),
            status="applied",
            synced_at=L.SYNCED,
        )
        s.add(payment)
        s.flush()
        assert payment.id is not None
        s.add(
            PaymentApplication(
                payment_id=payment.id, target_entity="invoice", target_external_id=invoice, amount=Decimal(amount)
            )
        )


def broken_promise(s: Session, invoice: str, released: datetime) -> None:
    s.add(
        InvoiceHold(
            connection_id=C,
            invoice_external_id=invoice,
            kind="promise",
            reason="will pay Friday",
            until=released.date() - timedelta(days=1),
            amount=Decimal("10.00"),
            balance_at=Decimal("10.00"),
            created_at=released - timedelta(days=10),
            released_at=released,
            outcome="broken",
        )
    )


def decline(s: Session, invoice: str, at: datetime, n: int, customer: str | None = None) -> None:
    s.add(
        ProcessorPayment(
            key=f"charge:{invoice}:{n}",
            tenant_id=L.TENANT,
            connection_id=C,
            invoice_external_id=invoice,
            customer_external_id=customer,
            amount=Decimal("10.00"),
            surcharge=Decimal(0),
            currency="USD",
            state="soft_decline",
            decline_code="insufficient_funds",
            created_at=at,
            updated_at=at,
        )
    )


def task(s: Session, key: str, customer: str, invoice: str | None = None, *, at: datetime = NOW) -> int:
    row = DunningTask(
        key=key,
        tenant_id=L.TENANT,
        connection_id=C,
        customer_external_id=customer,
        invoice_external_id=invoice,
        kind="call",
        note="Call about the overdue balance",
        created_at=at,
    )
    s.add(row)
    s.flush()
    assert row.id is not None
    return row.id


# --- the table of collect/risk.py, written out again -------------------------------------------------------


def late_points(days: int) -> int:
    return 4 if days >= 60 else 3 if days >= 30 else 2 if days >= 15 else 1 if days >= 1 else 0


def overdue_points(days: int) -> int:
    return 4 if days >= 91 else 3 if days >= 61 else 2 if days >= 31 else 1 if days >= 1 else 0


def balance_points(amount: Decimal) -> int:
    return 3 if amount >= 50_000 else 2 if amount >= 10_000 else 1 if amount >= 1_000 else 0


def level(points: int) -> str:
    return "high" if points >= 6 else "medium" if points >= 3 else "low"


def rounded_average(days: list[int]) -> int:
    return int((Decimal(sum(days)) / len(days)).quantize(Decimal(1), rounding=ROUND_HALF_UP))


# --- risk --------------------------------------------------------------------------------------------------

# (due, paid on) of "late"'s invoices in the window; the last one is paid in two parts, the later day counts.
LATE_HISTORY = [
    (date(2026, 3, 1), (date(2026, 3, 11),)),
    (date(2026, 5, 1), (date(2026, 5, 31),)),
    (date(2026, 7, 1), (date(2026, 7, 20), date(2026, 8, 15))),
    (date(2026, 9, 1), (date(2026, 8, 25),)),  # early: counts as on time
]
LATE_OPEN = ("12400.00", date(2026, 9, 21))  # 62 days past due


def seed_risk(s: Session) -> None:
    for name in ("good", "late", "fresh", "middle"):
        L.customer(s, name, method=None)
    # good: always on time; one very late payment more than a year ago does not count.
    paid(s, "g1", "good", date(2026, 6, 1), date(2026, 6, 1))
    paid(s, "g2", "good", date(2026, 8, 1), date(2026, 7, 30))
    paid(s, "g-old", "good", date(2025, 1, 1), date(2025, 6, 1))
    # late: history, broken promises, declines, a big overdue balance.
    for n, (due, days) in enumerate(LATE_HISTORY):
        paid(s, f"l{n}", "late", due, *days)
    L.invoice(s, "l-open", "late", LATE_OPEN[0], due=LATE_OPEN[1])
    L.invoice(s, "l-partial", "late", "50.00", due=date(2026, 12, 10), status="partially_paid")
    broken_promise(s, "l-open", NOW - timedelta(days=20))
    broken_promise(s, "l0", NOW - timedelta(days=200))
    broken_promise(s, "l1", NOW - timedelta(days=400))  # too long ago
    decline(s, "l-open", NOW - timedelta(days=2), 1, customer="late")
    decline(s, "l-open", NOW - timedelta(days=30), 2)  # no customer on the charge: its invoice's
    decline(s, "l-partial", NOW - timedelta(days=89), 3, customer="late")
    decline(s, "l-open", NOW - timedelta(days=91), 4, customer="late")  # too long ago
    # middle: no history, one invoice 40 days overdue, one not due yet.
    L.invoice(s, "m1", "middle", "5000.00", due=TODAY - timedelta(days=40))
    L.invoice(s, "m2", "middle", "250.50", due=TODAY + timedelta(days=5))


def test_risk_levels_and_reasons_follow_the_history(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        seed_risk(s)
    with sessions() as s:
        risk = assess_customers(s, L.TENANT, [C], TODAY)

    assert set(risk) == {(C, "good"), (C, "late"), (C, "fresh"), (C, "middle")}

    good = risk[(C, "good")]
    assert (good.level, good.score, good.reasons) == ("low", 0, ("paid on time on average over 2 invoices",))

    fresh = risk[(C, "fresh")]
    assert (fresh.level, fresh.score, fresh.reasons) == ("low", 0, ("no payment history",))

    late_days = [max(0, (days[-1] - due).days) for due, days in LATE_HISTORY]
    average = rounded_average(late_days)
    open_days = (TODAY - LATE_OPEN[1]).days
    expected = [
        (f"paid {average} days late on average over {len(LATE_HISTORY)} invoices", late_points(average)),
        ("2 broken promises this year", 2 * 2),
        ("3 declined charges in 90 days", 3),
        (
            f"owes USD {Decimal(LATE_OPEN[0]) + 50:,.2f}, {open_days} days past due",
            overdue_points(open_days) + balance_points(Decimal(LATE_OPEN[0]) + 50),
        ),
    ]
    late = risk[(C, "late")]
    assert late.reasons == tuple(r for r, _ in expected)
    assert late.points == tuple(p for _, p in expected)
    assert late.score == sum(p for _, p in expected)
    assert late.level == level(late.score) == "high"
    assert late.reasons[-1] == "owes USD 12,450.00, 62 days past due"

    middle = risk[(C, "middle")]
    owed = Decimal("5000.00") + Decimal("250.50")
    middle_points = overdue_points(40) + balance_points(owed)
    assert middle.reasons == ("no payment history", f"owes USD {owed:,.2f}, 40 days past due")
    assert (middle.score, middle.level) == (middle_points, level(middle_points))
    assert middle.level == "medium"


def test_risk_for_chosen_customers_only(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        seed_risk(s)
    with sessions() as s:
        everyone = assess_customers(s, L.TENANT, [C], TODAY)
        chosen = assess_customers(s, L.TENANT, [C], TODAY, customers={(C, "late"), (C, "nobody"), ("x", "late")})
        elsewhere = assess_customers(s, L.TENANT, ["other-conn"], TODAY)
    assert set(chosen) == {(C, "late"), (C, "nobody")}
    assert chosen[(C, "late")] == everyone[(C, "late")]
    assert chosen[(C, "nobody")].reasons == ("no payment history",)
    assert elsewhere == {}


def test_an_amount_not_yet_due_adds_no_points(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        L.customer(s, "big", method=None)
        L.invoice(s, "b1", "big", "99999.00", due=TODAY)  # due today: not past due
        L.invoice(s, "b2", "big", "1.00", due=None)
        L.invoice(s, "b3", "big", "0.00", due=TODAY - timedelta(days=100))  # open, but owes nothing
    with sessions() as s:
        big = assess_customers(s, L.TENANT, [C], TODAY)[(C, "big")]
    assert (big.level, big.score) == ("low", 0)
    assert big.reasons == ("no payment history", "owes USD 100,000.00, nothing past due")


# --- the worklist ------------------------------------------------------------------------------------------


def test_worklist_is_ordered_by_risk_times_amount_times_age(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        seed_risk(s)
        L.customer(s, "small", method=None)
        L.invoice(s, "s1", "small", "80.00", due=TODAY + timedelta(days=3))  # not due: age counts as 1
        ids = {
            "late-invoice": task(s, "t1", "late", "l-open"),
            "late-customer": task(s, "t2", "late"),
            "middle-invoice": task(s, "t3", "middle", "m1"),
            "small-invoice": task(s, "t4", "small", "s1"),
            "fresh-customer": task(s, "t5", "fresh"),
        }
        done = task(s, "t6", "middle", "m2")
        s.get_one(DunningTask, done).status = "done"
    with sessions() as s:
        risk = assess_customers(s, L.TENANT, [C], TODAY)
        items = worklist(s, L.TENANT, [C], TODAY)
    weight = {"low": 1, "medium": 2, "high": 3}
    open_days = (TODAY - LATE_OPEN[1]).days
    late_balance = Decimal(LATE_OPEN[0]) + 50
    expected = {
        ids["late-invoice"]: weight[risk[(C, "late")].level] * Decimal(LATE_OPEN[0]) * open_days,
        ids["late-customer"]: weight[risk[(C, "late")].level] * late_balance * open_days,
        ids["middle-invoice"]: weight[risk[(C, "middle")].level] * Decimal("5000.00") * 40,
        ids["small-invoice"]: weight[risk[(C, "small")].level] * Decimal("80.00") * 1,
        ids["fresh-customer"]: Decimal(0),
    }
    assert {i.task.id: i.priority for i in items} == expected
    assert [i.task.id for i in items] == sorted(expected, key=lambda t: -expected[t])
    first = items[0]
    assert (first.customer_name, first.invoice_number, first.currency) == ("Customer late", None, "USD")
    assert (first.amount, first.days_overdue, first.risk) == (late_balance, open_days, risk[(C, "late")])
    second = items[1]
    assert (second.invoice_number, second.amount, second.days_overdue) == ("INV-l-open", Decimal("12400.00"), 62)
    with sessions() as s:
        assert [i.task.id for i in worklist(s, L.TENANT, [C], TODAY, limit=2)] == [i.task.id for i in items[:2]]
        assert worklist(s, "another-tenant", [C], TODAY) == []
        with pytest.raises(WorklistError, match="limit must be at least 1"):
            worklist(s, L.TENANT, [C], TODAY, limit=0)


# --- task outcomes -----------------------------------------------------------------------------------------


def open_holds(s: Session) -> list[InvoiceHold]:
    return list(
        s.execute(
            sa.select(InvoiceHold).where(col(InvoiceHold.released_at).is_(None)).order_by(col(InvoiceHold.id))
        ).scalars()
    )


@pytest.fixture
def tasks(sessions: sessionmaker[Session]) -> dict[str, int]:
    with sessions.begin() as s:
        L.customer(s, "c1", method=None)
        L.invoice(s, "older", "c1", "300.00", due=TODAY - timedelta(days=45))
        L.invoice(s, "newer", "c1", "200.00", due=TODAY - timedelta(days=10))
        L.invoice(s, "later", "c1", "100.00", due=TODAY + timedelta(days=20))
        return {
            "invoice": task(s, "t-inv", "c1", "newer"),
            "customer": task(s, "t-cust", "c1"),
        }


def test_promise_on_an_invoice_task(sessions: sessionmaker[Session], tasks: dict[str, int]) -> None:
    until = TODAY + timedelta(days=5)
    with sessions.begin() as s:
        result = complete_task(
            s, tasks["invoice"], "promise", today=TODAY, now=NOW, until=until, amount=Decimal("150.00"), note="CFO"
        )
        assert [h.invoice_external_id for h in result.holds] == ["newer"]
    with sessions() as s:
        [hold] = open_holds(s)
        assert (hold.kind, hold.amount, hold.until, hold.balance_at) == (
            "promise",
            Decimal("150.00"),
            until,
            Decimal("200.00"),
        )
        done = s.get_one(DunningTask, tasks["invoice"])
        assert (done.status, done.outcome, done.outcome_note, done.done_at) == ("done", "promise", "CFO", NOW)


def test_promise_on_a_customer_task_goes_on_the_oldest_overdue_invoice(
    sessions: sessionmaker[Session], tasks: dict[str, int]
) -> None:
    with sessions.begin() as s:
        complete_task(s, tasks["customer"], "promise", today=TODAY, now=NOW, until=TODAY)
    with sessions() as s:
        [hold] = open_holds(s)
        assert (hold.invoice_external_id, hold.amount, hold.balance_at) == ("older", Decimal("300"), Decimal("300"))


def test_a_new_promise_replaces_the_open_one(sessions: sessionmaker[Session], tasks: dict[str, int]) -> None:
    with sessions.begin() as s:
        first = promise(s, (C, "older"), TODAY + timedelta(days=3), today=TODAY, now=NOW)
        promise(s, (C, "older"), TODAY + timedelta(days=9), today=TODAY, now=NOW, amount=Decimal("100"))
        first_id = first.id
    with sessions() as s:
        assert [(h.amount, h.until) for h in open_holds(s)] == [(Decimal("100"), TODAY + timedelta(days=9))]
        assert s.get_one(InvoiceHold, first_id).outcome == "released"


def test_dispute_outcome(sessions: sessionmaker[Session], tasks: dict[str, int]) -> None:
    with sessions.begin() as s:
        complete_task(s, tasks["invoice"], "dispute", today=TODAY, now=NOW, reason="hours billed twice")
    with sessions() as s:
        assert [(h.invoice_external_id, h.kind, h.reason, h.until) for h in open_holds(s)] == [
            ("newer", "dispute", "hours billed twice", None)
        ]
    with sessions.begin() as s:
        assert resolve_dispute(s, (C, "newer"), NOW) == 1
    with sessions() as s:
        assert open_holds(s) == []
        assert s.execute(sa.select(col(InvoiceHold.outcome))).scalar_one() == "resolved"


def test_paid_outcome_holds_every_open_invoice_of_a_customer_task(
    sessions: sessionmaker[Session], tasks: dict[str, int]
) -> None:
    with sessions.begin() as s:
        complete_task(s, tasks["customer"], "paid", today=TODAY, now=NOW, reason="wire sent Monday")
    with sessions() as s:
        holds = open_holds(s)
    assert sorted(h.invoice_external_id for h in holds) == ["later", "newer", "older"]
    assert {(h.kind, h.reason, h.until) for h in holds} == {
        ("hold", "customer says paid: wire sent Monday", TODAY + timedelta(days=PAID_WAIT_DAYS))
    }


def test_no_answer_records_only_the_task(sessions: sessionmaker[Session], tasks: dict[str, int]) -> None:
    with sessions.begin() as s:
        result = complete_task(s, tasks["invoice"], "no-answer", today=TODAY, now=NOW, note="voicemail")
        assert result.holds == ()
    with sessions() as s:
        assert open_holds(s) == []
        done = s.get_one(DunningTask, tasks["invoice"])
        assert (done.status, done.outcome, done.outcome_note) == ("done", "no-answer", "voicemail")
        assert worklist(s, L.TENANT, [C], TODAY)[0].task.id == tasks["customer"]


@pytest.mark.parametrize(
    ("task_name", "outcome", "options", "message"),
    [
        ("invoice", "promise", {}, "a promise needs the date the customer will pay by"),
        ("invoice", "promise", {"until": TODAY - timedelta(days=1)}, "the promised date 2026-11-21 is before today"),
        ("invoice", "promise", {"until": TODAY, "amount": Decimal("200.01")}, "more than invoice acme-qbo:INV-newer"),
        ("invoice", "promise", {"until": TODAY, "amount": Decimal("1.005")}, "more than 2 decimal places for USD"),
        ("invoice", "promise", {"until": TODAY, "amount": Decimal("-1")}, "must be more than zero"),
        ("invoice", "dispute", {}, "a dispute's reason is required"),
        ("invoice", "dispute", {"reason": "  "}, "a dispute's reason is required"),
        ("invoice", "no-answer", {"amount": Decimal(5)}, "an amount and a date go with the outcome promise"),
        ("invoice", "no-answer", {"reason": "x"}, "a reason goes with the outcomes promise, dispute and paid"),
        ("invoice", "called", {}, "outcome 'called' is not one of promise, dispute, paid, no-answer"),
        ("missing", "no-answer", {}, "task 999 does not exist"),
    ],
)
def test_task_errors_name_what_is_wrong(
    sessions: sessionmaker[Session],
    tasks: dict[str, int],
    task_name: str,
    outcome: str,
    options: dict[str, object],
    message: str,
) -> None:
    task_id = tasks.get(task_name, 999)
    with sessions.begin() as s, pytest.raises(WorklistError) as caught:
        complete_task(s, task_id, outcome, today=TODAY, now=NOW, **options)  # type: ignore[arg-type]
    assert message in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_a_task_is_done_only_once(sessions: sessionmaker[Session], tasks: dict[str, int]) -> None:
    with sessions.begin() as s:
        complete_task(s, tasks["invoice"], "no-answer", today=TODAY, now=NOW)
    with sessions.begin() as s, pytest.raises(WorklistError, match=r"task \d+ is already done on 2026-11-22"):
        complete_task(s, tasks["invoice"], "dispute", today=TODAY, now=NOW, reason="x")


def test_tasks_on_a_customer_who_owes_nothing(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        L.customer(s, "c1", method=None)
        paid(s, "p1", "c1", TODAY, TODAY)
        task_id = task(s, "t", "c1", "p1")
        empty = task(s, "t2", "c1")
    with sessions.begin() as s, pytest.raises(WorklistError, match="invoice acme-qbo:INV-p1 owes nothing"):
        complete_task(s, task_id, "promise", today=TODAY, now=NOW, until=TODAY)
    with sessions.begin() as s, pytest.raises(WorklistError, match="customer acme-qbo:c1 has no open invoice"):
        complete_task(s, empty, "dispute", today=TODAY, now=NOW, reason="x")
    with sessions.begin() as s:  # the ledger already shows the payment: nothing to hold
        assert complete_task(s, task_id, "paid", today=TODAY, now=NOW).holds == ()
        assert complete_task(s, empty, "paid", today=TODAY, now=NOW).holds == ()
    with sessions() as s:
        assert open_holds(s) == []
        assert s.get_one(DunningTask, empty).outcome == "paid"


# --- holds and opt-outs by hand ----------------------------------------------------------------------------


def test_extension_moves_the_due_date_forward_only(sessions: sessionmaker[Session], tasks: dict[str, int]) -> None:
    due = TODAY - timedelta(days=10)  # "newer"
    with sessions.begin() as s, pytest.raises(WorklistError, match="must be after the current one"):
        extend(s, (C, "newer"), due, "new terms", NOW)
    with sessions.begin() as s:
        first = extend(s, (C, "newer"), due + timedelta(days=30), "new terms", NOW)
        assert (first.kind, first.until) == ("extension", due + timedelta(days=30))
    with sessions.begin() as s, pytest.raises(WorklistError, match=r"current one \(2026-12-12\)"):
        extend(s, (C, "newer"), due + timedelta(days=20), "shorter", NOW)
    with sessions.begin() as s:
        extend(s, (C, "newer"), due + timedelta(days=60), "longer", NOW)
    with sessions() as s:
        assert [(h.kind, h.until) for h in open_holds(s)] == [("extension", due + timedelta(days=60))]
    with sessions.begin() as s, pytest.raises(WorklistError, match="an extension's reason is required"):
        extend(s, (C, "older"), TODAY + timedelta(days=60), "", NOW)


def test_dispute_resolve_and_waive_errors(sessions: sessionmaker[Session], tasks: dict[str, int]) -> None:
    with sessions.begin() as s, pytest.raises(WorklistError, match="invoice acme-qbo:nope is not in the ledger"):
        dispute(s, (C, "nope"), "why", NOW)
    with sessions.begin() as s, pytest.raises(WorklistError, match="has no open dispute"):
        resolve_dispute(s, (C, "older"), NOW)
    with sessions.begin() as s, pytest.raises(WorklistError, match="a waiver's reason is required"):
        waive_late_fees(s, (C, "older"), None, " ", NOW)
    with sessions.begin() as s:
        waive_late_fees(s, (C, "older"), "day-15", "goodwill", NOW)
        waive_late_fees(s, (C, "older"), None, "all of them", NOW)
    with sessions() as s:
        rows = s.execute(sa.select(LateFeeWaiver).order_by(col(LateFeeWaiver.id))).scalars().all()
        assert [(w.invoice_external_id, w.step, w.reason) for w in rows] == [
            ("older", "day-15", "goodwill"),
            ("older", None, "all of them"),
        ]


def test_opt_out_and_opt_in(sessions: sessionmaker[Session], tasks: dict[str, int]) -> None:
    customer = (C, "c1")
    with sessions.begin() as s:
        opt_out(s, customer, "email", "AP@Example.com", "asked by phone", NOW)
        opt_out(s, customer, "email", "ap@example.com", "asked again", NOW)  # the same opt-out: not doubled
        opt_out(s, customer, "sms", None, "no texts", NOW)
    with sessions() as s:
        blocks = s.execute(sa.select(ContactBlock).order_by(col(ContactBlock.id))).scalars().all()
        assert [(b.channel, b.address, b.kind, b.reason) for b in blocks] == [
            ("email", "ap@example.com", "opt_out", "asked by phone"),
            ("sms", None, "opt_out", "no texts"),
        ]
    with sessions.begin() as s:
        assert opt_in(s, customer, "email", "someone@example.com") == 0
        assert opt_in(s, customer, "email", "ap@example.com") == 1
        assert opt_in(s, customer, "sms") == 1
    with sessions() as s:
        assert s.execute(sa.select(sa.func.count()).select_from(ContactBlock)).scalar_one() == 0
    for args, message in [
        (("fax", None, "x"), "channel 'fax' is not one of email, sms"),
        (("email", "not-an-address", "x"), "'not-an-address' is not an email address"),
        (("sms", "call me", "x"), "'call me' is not a phone number"),
        (("email", None, ""), "an opt-out's reason is required"),
    ]:
        with sessions.begin() as s, pytest.raises(WorklistError, match=message):
            opt_out(s, customer, args[0], args[1], args[2], NOW)
    with sessions.begin() as s, pytest.raises(WorklistError, match="customer acme-qbo:c9 is not in the ledger"):
        opt_out(s, (C, "c9"), "email", None, "x", NOW)


def test_customer_card_brings_everything_together(sessions: sessionmaker[Session], tasks: dict[str, int]) -> None:
    with sessions.begin() as s:
        promise(s, (C, "older"), TODAY + timedelta(days=3), today=TODAY, now=NOW, amount=Decimal("50"))
        opt_out(s, (C, "c1"), "sms", None, "no texts", NOW)
        for n in range(12):
            s.add(
                DunningMessage(
                    key=f"m{n}",
                    tenant_id=L.TENANT,
                    connection_id=C,
                    customer_external_id="c1",
                    invoice_external_id="older",
                    channel="email",
                    address="ap@example.com",
                    template="reminder",
                    status="sent",
                    sent_at=NOW - timedelta(days=n),
                )
            )
    with sessions() as s:
        card = customer_card(s, L.TENANT, [C], (C, "c1"), TODAY)
    assert card.name == "Customer c1"
    assert [(i.ref[1], i.days_overdue, i.balance) for i in card.invoices] == [
        ("older", 45, Decimal("300.00")),
        ("newer", 10, Decimal("200.00")),
        ("later", 0, Decimal("100.00")),
    ]
    assert card.invoices[0].holds == (f"promise: USD 50.00 by {(TODAY + timedelta(days=3)).isoformat()}",)
    assert [t.id for t in card.tasks] == [tasks["invoice"], tasks["customer"]]
    assert [m.key for m in card.messages] == [f"m{n}" for n in range(10)]
    assert [(b.channel, b.reason) for b in card.blocks] == [("sms", "no texts")]
    assert card.risk.reasons == ("no payment history", "owes USD 600.00, 45 days past due")
