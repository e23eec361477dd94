"""Dunning on both stores, day by day on an injected clock, with mail going to a real SMTP server."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from collect.dunning import DunningPlan, journal_dunning, late_fees_charged, plan_dunning
from collect.dunning_policy import (
    CallTaskAction,
    CollectionsAction,
    CollectionsSettings,
    DunningPolicy,
    EmailAction,
    LateFeeAction,
    Policy,
    Segment,
    Step,
    StepConditions,
    SuspendAction,
)
from collect.dunning_send import MessageSender
from collect.mail import Branding, SmtpSender, Templates
from collect.marks import set_locale
from collect.send_window import Pacing, SendWindow
from collect.sms import TwilioSms
from collect.sms_sandbox import TwilioSandbox
from connectors import jsonwire
from sync import journal
from sync.models import (
    ChargeInstalment,
    CollectionsPlacement,
    ContactBlock,
    Customer,
    CustomerContact,
    CustomerTag,
    DunningMessage,
    DunningTask,
    Invoice,
    InvoiceHold,
    JournalEntry,
    LateFeeWaiver,
)
from tests import collecting as L
from tests.smtp import SmtpServer
from tests.support import FakeClock

UTC_ZONE = __import__("zoneinfo").ZoneInfo("UTC")
DUE = date(2026, 12, 2)
START = date(2026, 11, 23)
FEE = LateFeeAction(flat=Decimal("25"), percent=Decimal("1.5"), maximum=Decimal("100"), grace_days=10)
STEPS = (
    Step(name="upcoming", days=-3, actions=(EmailAction(template="reminder_upcoming"),)),
    Step(name="overdue", days=1, actions=(EmailAction(template="reminder_overdue"),)),
    Step(name="fee", days=15, actions=(FEE, EmailAction(template="late_fee_notice"))),
    Step(name="call", days=30, actions=(CallTaskAction(note="Call about the balance", assignee="maria"),)),
    Step(name="final", days=60, actions=(SuspendAction(), EmailAction(template="final_notice"))),
    Step(name="agency", days=30, anchor="previous", actions=(CollectionsAction(),)),
)
STANDARD = Policy(name="standard", segment=Segment(tags_none=frozenset({"vip"})), steps=STEPS)
WINDOW = SendWindow(start=time(9), end=time(17), business_days_only=True)


def policy(**changes: object) -> DunningPolicy:
    values: dict[str, object] = {"policies": (STANDARD,), "window": WINDOW, "pacing": Pacing(min_gap=timedelta(0))}
    values.update(changes)
    return DunningPolicy(**values)  # type: ignore[arg-type]


@pytest.fixture
def sessions(db_url: str) -> sessionmaker[Session]:
    return L.ledger(db_url)


@dataclass(frozen=True)
class Entry:
    key: str
    status: str
    payload: dict[str, Any]


class World:
    """One tenant's ledger, the planner and the sender on a clock that moves a day at a time (10:00 UTC)."""

    def __init__(self, sessions: sessionmaker[Session], server: SmtpServer, rules: DunningPolicy) -> None:
        self.sessions = sessions
        self.server = server
        self.rules = rules
        self.clock = FakeClock(datetime.combine(START, time(10), tzinfo=UTC))
        self.sender = MessageSender(
            sessions,
            L.TENANT,
            UTC_ZONE,
            rules.window,
            rules.pacing,
            Templates(Branding(company_name="Acme Ltd")),
            self.clock,
            mail=SmtpSender(server.settings(), clock=self.clock),
        )
        self.arrivals: list[tuple[date, str]] = []

    def today(self) -> date:
        return self.clock().date()

    def plan(self) -> DunningPlan:
        with self.sessions() as s:
            return plan_dunning(s, L.TENANT, [L.CONN], self.rules, self.today())

    def run(self) -> DunningPlan:
        with self.sessions.begin() as s:
            plan = plan_dunning(s, L.TENANT, [L.CONN], self.rules, self.today())
            journal_dunning(s, plan, self.clock())
        self.send()
        return plan

    def send(self) -> None:
        before = len(self.server.received)
        journal.run_due(self.sessions, "notify", "w1", self.sender.handle, self.clock, limit=100, tenant=L.TENANT)
        for message in self.server.received[before:]:
            self.arrivals.append((self.today(), str(message.message["Subject"])))

    def next_day(self) -> None:
        self.clock.advance(days=1)

    def walk(self, until: date, each: object = None) -> None:
        while self.today() <= until:
            self.run()
            self.next_day()

    def pay(self, invoice: str, amount: str) -> None:
        with self.sessions.begin() as s:
            row = s.execute(sa.select(Invoice).where(col(Invoice.external_id) == invoice)).scalar_one()
            row.balance -= Decimal(amount)
            row.status = "paid" if row.balance == 0 else "partially_paid"

    def entries(self, kind: str) -> list[Entry]:
        with self.sessions() as s:
            rows = s.execute(
                sa.select(JournalEntry).where(col(JournalEntry.kind) == kind).order_by(col(JournalEntry.id))
            ).scalars()
            return [Entry(e.key, e.status, jsonwire.loads(e.payload)) for e in rows]


def seed(sessions: sessionmaker[Session], *, balance: str = "1000.00", email: str = "ap@globex.example") -> None:
    with sessions.begin() as s:
        L.customer(s, "c1", method=None)
        s.flush()
        customer_id = s.execute(sa.text("select id from customer where external_id = 'c1'")).scalar_one()
        s.add(CustomerContact(customer_id=customer_id, email=email, name="Accounts Payable"))
        L.invoice(s, "i1", "c1", balance, issued=date(2026, 11, 2), due=DUE)


def business_day_on_or_after(day: date) -> date:
    while day.weekday() >= 5:
        day += timedelta(days=1)
    return day


def test_an_invoice_walks_through_120_days_of_policy_each_step_once(
    sessions: sessionmaker[Session], smtp_server: SmtpServer
) -> None:
    seed(sessions)
    world = World(sessions, smtp_server, policy())
    world.walk(START + timedelta(days=120))

    offsets = STANDARD.offsets()
    expected = [
        (business_day_on_or_after(DUE + timedelta(days=offsets[0])), "upcoming"),
        (business_day_on_or_after(DUE + timedelta(days=offsets[1])), "overdue"),
        (business_day_on_or_after(DUE + timedelta(days=offsets[2])), "fee"),
        (business_day_on_or_after(DUE + timedelta(days=offsets[4])), "final"),
    ]
    assert [day for day, _ in world.arrivals] == [day for day, _ in expected]
    sent = [e.payload["step"] for e in world.entries("notify")]
    assert sent == [step for _, step in expected]
    assert all(e.status == "done" for e in world.entries("notify"))

    fees = world.entries("posting")
    assert len(fees) == 1
    expected_fee = FEE.amount(Decimal("1000.00"), Decimal(0))
    assert fees[0].payload["amount"] == expected_fee == Decimal("40.00")
    with sessions() as s:
        tasks = s.execute(sa.select(col(DunningTask.kind), col(DunningTask.step), col(DunningTask.assignee))).all()
        assert sorted(tasks, key=str) == [("call", "call", "maria"), ("collections", "agency", None)]
        assert s.execute(sa.select(col(CustomerTag.tag))).scalars().all() == ["credit-hold"]
    suspensions = world.entries("webhook")
    assert [e.payload["event"] for e in suspensions] == ["customer.suspended"]

    # every message carries the invoice and is unique by its Message-ID
    ids = Counter(str(m.message["Message-ID"]) for m in smtp_server.received)
    assert set(ids.values()) == {1}
    assert "INV-i1" in smtp_server.received[1].part("text/plain")


def test_a_second_run_on_the_same_day_plans_and_sends_nothing_new(
    sessions: sessionmaker[Session], smtp_server: SmtpServer
) -> None:
    seed(sessions)
    world = World(sessions, smtp_server, policy())
    world.clock.advance(days=(DUE - START).days + 1)
    first = world.run()
    assert [a.kind for a in first.actions] == ["email"]
    assert world.plan().actions == []
    world.run()
    assert len(smtp_server.received) == 1


def test_a_partial_payment_starts_a_new_cycle_and_the_fee_is_never_charged_twice(
    sessions: sessionmaker[Session], smtp_server: SmtpServer
) -> None:
    seed(sessions)
    world = World(sessions, smtp_server, policy())
    world.walk(DUE + timedelta(days=16))
    assert len(world.entries("posting")) == 1
    paid_on = world.today()
    world.pay("i1", "400.00")
    world.walk(paid_on + timedelta(days=20))
    steps = [(e.payload["step"], e.key.split(":")[-2]) for e in world.entries("notify")]
    # cycle 0: upcoming, overdue, fee; cycle 1 counts again from the payment: overdue (+1), fee (+15)
    assert steps == [("upcoming", "0"), ("overdue", "0"), ("fee", "0"), ("overdue", "1"), ("fee", "1")]
    assert len(world.entries("posting")) == 1


def test_holds_promises_plans_and_extensions_pause_the_steps(
    sessions: sessionmaker[Session], smtp_server: SmtpServer
) -> None:
    seed(sessions)
    with sessions.begin() as s:
        for name in ("disputed", "promised", "planned", "later"):
            L.invoice(s, name, "c1", "300.00", issued=date(2026, 11, 2), due=DUE)
        L.hold(s, "disputed")
        s.add(
            InvoiceHold(
                connection_id=L.CONN,
                invoice_external_id="promised",
                kind="promise",
                reason="will pay Friday",
                until=DUE + timedelta(days=9),
                amount=Decimal("300.00"),
                balance_at=Decimal("300.00"),
                created_at=L.SYNCED,
            )
        )
        s.add(
            InvoiceHold(
                connection_id=L.CONN, invoice_external_id="planned", kind="plan", reason="3 parts", created_at=L.SYNCED
            )
        )
        s.add(
            ChargeInstalment(
                connection_id=L.CONN,
                invoice_external_id="planned",
                seq=1,
                due_on=DUE + timedelta(days=5),
                amount=Decimal("100.00"),
                currency="USD",
                created_at=L.SYNCED,
            )
        )
        s.add(
            InvoiceHold(
                connection_id=L.CONN,
                invoice_external_id="later",
                kind="extension",
                reason="agreed",
                until=DUE + timedelta(days=20),
                created_at=L.SYNCED,
            )
        )
    world = World(sessions, smtp_server, policy(promise_broken=(EmailAction(template="promise_broken"),)))
    world.clock.advance(days=(DUE - START).days + 1)
    plan = world.plan()
    assert {a.invoice: a.step for a in plan.actions} == {"i1": "overdue"}
    assert plan.skipped["on hold (dispute)"] == 1
    assert plan.skipped["promised to pay"] == 1
    assert plan.skipped["on a payment plan (its instalments are reminded instead)"] == 1

    world.clock.advance(days=3)  # the instalment is 2 days away: reminded (plan_reminder_days = 3)
    plan = world.plan()
    assert [(a.kind, a.invoice) for a in plan.actions if a.invoice == "planned"] == [("plan_reminder", "planned")]

    world.clock.advance(days=6)  # the promise's day has passed with nothing paid: broken
    plan = world.plan()
    broken = [a for a in plan.actions if a.invoice == "promised"]
    assert broken[0].template == "promise_broken" and "broken" in broken[0].why
    assert plan.promises and plan.promises[0][1] == "broken"

    # the extension moved the due date 20 days: the overdue step comes the day after the new date
    world.clock.advance(days=(DUE + timedelta(days=21) - world.today()).days)
    assert ("later", "overdue") in {(a.invoice, a.step) for a in world.plan().actions}


def test_conditions_segments_waivers_and_the_tenant_pause(
    sessions: sessionmaker[Session], smtp_server: SmtpServer
) -> None:
    seed(sessions, balance="40.00")
    with sessions.begin() as s:
        L.customer(s, "vip", method=None)
        L.tag(s, "vip", "vip")
        L.invoice(s, "v1", "vip", "900.00", issued=date(2026, 11, 2), due=DUE)
        s.add(
            LateFeeWaiver(
                connection_id=L.CONN, invoice_external_id="i1", step="fee", reason="first time", created_at=L.SYNCED
            )
        )
    gated = Policy(
        name="standard",
        segment=Segment(tags_none=frozenset({"vip"})),
        steps=(
            Step(
                name="overdue",
                days=1,
                conditions=StepConditions(min_balance=Decimal("50")),
                actions=(EmailAction(template="reminder_overdue"),),
            ),
            Step(name="fee", days=15, actions=(FEE,)),
        ),
    )
    world = World(sessions, smtp_server, policy(policies=(gated,)))
    world.clock.advance(days=(DUE - START).days + 1)
    plan = world.plan()
    assert plan.actions == []
    assert plan.skipped["no policy matches the customer"] == 1
    assert plan.skipped["step 'overdue' waits: balance 40.00 is below the step's min_balance 50"] == 1
    world.clock.advance(days=15)
    plan = world.plan()
    assert plan.actions == [] and plan.skipped["late fee waived"] == 1

    paused = World(sessions, smtp_server, policy(policies=(gated,), paused=True))
    paused.clock.advance(days=(DUE - START).days + 20)
    assert paused.plan().actions == []
    assert paused.plan().skipped == {"dunning is paused for the tenant": 2}


def test_a_hard_bounce_marks_the_contact_and_the_message_goes_to_the_next_one(
    sessions: sessionmaker[Session], smtp_server: SmtpServer
) -> None:
    seed(sessions, email="gone@globex.example")
    with sessions.begin() as s:
        customer_id = s.execute(sa.text("select id from customer where external_id = 'c1'")).scalar_one()
        s.add(CustomerContact(customer_id=customer_id, email="ar@globex.example", name="AR"))
    smtp_server.refuse["gone@globex.example"] = 550
    world = World(sessions, smtp_server, policy())
    world.clock.advance(days=(DUE - START).days + 1)
    world.run()
    assert [m.rcpt_tos for m in smtp_server.received] == [("ar@globex.example",)]
    world.clock.advance(days=15)
    world.run()
    assert smtp_server.received[-1].rcpt_tos == ("ar@globex.example",)  # the bounced contact is not tried again


def test_a_collections_step_with_submit_hands_the_invoice_over_once(
    sessions: sessionmaker[Session], smtp_server: SmtpServer
) -> None:
    seed(sessions)
    agency = Policy(
        name="standard",
        steps=(Step(name="agency", days=45, actions=(CollectionsAction(submit=True),)),),
    )
    terms = CollectionsSettings(eligible_after_days=30, email="intake@agency.example", upfront_percent=Decimal("1"))
    world = World(sessions, smtp_server, policy(policies=(agency,), collections=terms))
    world.clock.advance(days=(DUE - START).days + 45)
    for _ in range(2):
        with sessions.begin() as s:
            plan = plan_dunning(s, L.TENANT, [L.CONN], world.rules, world.today())
            journal_dunning(s, plan, world.clock(), terms)
    with sessions() as s:
        placements = s.execute(sa.select(CollectionsPlacement)).scalars().all()
        tasks = s.execute(sa.select(DunningTask)).scalars().all()
    assert [(p.invoice_external_id, p.amount, p.status) for p in placements] == [
        ("i1", Decimal("1000.00"), "submitted")
    ]
    assert tasks == []
    handed = world.entries("collections")
    assert [e.key for e in handed] == [f"collections:{L.TENANT}:{L.CONN}:i1"]
    fees = [e.payload for e in world.entries("posting")]
    assert [(f["posting_kind"], f["amount"]) for f in fees] == [("collections_fee", Decimal("10.00"))]


def test_auto_pays_3ds_notice_goes_out_through_the_dunning_sender_with_its_link(
    sessions: sessionmaker[Session], smtp_server: SmtpServer
) -> None:
    seed(sessions)
    world = World(sessions, smtp_server, policy())
    world.clock.advance(days=(DUE - START).days)
    notice = journal.Intent(
        key="notify:paylink:charge:acme:acme-qbo:i1:auto-2026-12-02:1",
        tenant=L.TENANT,
        kind="notify",
        payload={
            "template": "payment_link",
            "reason": "requires_action",
            "connection": L.CONN,
            "invoice": "i1",
            "customer": "c1",
            "url": "https://checkout.example/pay/cs_test_123",
            "amount": Decimal("1000.00"),
            "currency": "USD",
        },
        subject=f"invoice:{L.CONN}:i1",
    )
    with sessions.begin() as s:
        journal.record(s, notice, world.clock())
    world.send()
    world.send()
    assert len(smtp_server.received) == 1
    assert "https://checkout.example/pay/cs_test_123" in smtp_server.received[0].part("text/plain")


def test_a_fee_line_the_ledger_booked_as_an_invoice_is_not_counted_in_the_invoice_balance(
    sessions: sessionmaker[Session],
) -> None:
    seed(sessions)
    now = datetime(2026, 12, 20, 10, tzinfo=UTC)
    with sessions.begin() as s:
        for n, booked_as in enumerate((None, "invoice")):
            key = f"posting:late_fee:acme:{L.CONN}:i1:standard:fee-{n}"
            payload = {"amount": Decimal("25.00"), "booking": "line", "posting_kind": "late_fee"}
            journal.record(s, journal.Intent(key, L.TENANT, "posting", payload, f"late_fee:{L.CONN}:i1"), now)
            result = {"posted": True} if booked_as is None else {"posted": True, "booked_as": booked_as}
            s.execute(  # as the poster settles it
                sa.update(JournalEntry)
                .where(col(JournalEntry.key) == key)
                .values(status="done", external_id="x", result=jsonwire.dumps(result))
            )
    with sessions() as s:
        fees = late_fees_charged(s, L.TENANT)[(L.CONN, "i1")]
    assert (fees.total, fees.in_balance) == (Decimal("50.00"), Decimal("25.00"))


def test_instalments_set_up_for_auto_pay_put_the_invoice_on_its_plan(
    sessions: sessionmaker[Session], smtp_server: SmtpServer
) -> None:
    seed(sessions)
    with sessions.begin() as s:
        for seq, days in ((1, 10), (2, 40)):
            s.add(
                ChargeInstalment(
                    connection_id=L.CONN,
                    invoice_external_id="i1",
                    seq=seq,
                    due_on=DUE + timedelta(days=days),
                    amount=Decimal("500.00"),
                    currency="USD",
                    created_at=L.SYNCED,
                )
            )
    world = World(sessions, smtp_server, policy())
    world.clock.advance(days=(DUE - START).days + 8)
    plan = world.plan()
    assert [(a.kind, dict(a.detail)["seq"]) for a in plan.actions] == [("plan_reminder", 1)]
    assert plan.skipped == {"on a payment plan (its instalments are reminded instead)": 1}
    world.clock.advance(days=7)  # past the fee step's day: never late-fee'd while on the plan
    assert all(a.kind != "late_fee" for a in world.plan().actions)


def test_a_customer_abroad_gets_its_reminder_in_its_own_working_hours(
    sessions: sessionmaker[Session], smtp_server: SmtpServer
) -> None:
    seed(sessions)
    with sessions.begin() as s:
        set_locale(s, (L.CONN, "c1"), "Asia/Tokyo", "JP", None)
    world = World(sessions, smtp_server, policy())
    world.clock.advance(days=(DUE - START).days + 1)  # Thursday 10:00 UTC: 19:00 in Tokyo, after hours
    world.run()
    assert smtp_server.received == []
    [entry] = [e for e in world.entries("notify")]
    with sessions() as s:
        waiting = s.execute(sa.select(JournalEntry).where(col(JournalEntry.key) == entry.key)).scalar_one()
    friday_9_tokyo = datetime(2026, 12, 4, 0, 0, tzinfo=UTC)
    assert (waiting.status, waiting.next_attempt_at) == ("pending", friday_9_tokyo)
    world.clock.advance(hours=14, minutes=30)  # Friday 00:30 UTC: 09:30 in Tokyo
    world.send()
    assert [m.rcpt_tos for m in smtp_server.received] == [("ap@globex.example",)]


def test_when_every_address_bounces_the_reminder_goes_by_text(
    sessions: sessionmaker[Session], smtp_server: SmtpServer
) -> None:
    seed(sessions, email="gone@globex.example")
    with sessions.begin() as s:
        s.execute(sa.update(Customer).where(col(Customer.external_id) == "c1").values(phone="+14155550123"))
    smtp_server.refuse["gone@globex.example"] = 550
    sid, token, sender = "AC" + "1234abcd" * 4, "tok_3f9a0c1d2e4b5a6978", "+15005550006"
    with TwilioSandbox(sid, token, (sender,)) as twilio:
        world = World(sessions, smtp_server, policy())
        world.sender.sms = TwilioSms(sid, token, sender, base_url=twilio.base_url, timeout=5, clock=world.clock)
        world.clock.advance(days=(DUE - START).days + 1)
        world.run()
        [text] = twilio.messages
    assert smtp_server.received == []
    assert text.to == "+14155550123" and "INV-i1" in text.body
    with sessions() as s:
        blocked = s.execute(sa.select(col(ContactBlock.address), col(ContactBlock.kind))).all()
        [sent] = s.execute(sa.select(DunningMessage)).scalars().all()
    assert blocked == [("gone@globex.example", "bounce")]
    assert (sent.channel, sent.address) == ("sms", "+14155550123")


def test_a_suspended_customer_is_resumed_once_nothing_is_past_due(
    sessions: sessionmaker[Session], smtp_server: SmtpServer
) -> None:
    seed(sessions)
    with sessions.begin() as s:
        L.tag(s, "c1", "credit-hold")
        L.customer(s, "c2", method=None)
        L.tag(s, "c2", "credit-hold")
        L.invoice(s, "i2", "c2", "10.00", issued=date(2026, 11, 2), due=date(2027, 1, 31))  # owes, nothing late
    world = World(sessions, smtp_server, policy())
    world.clock.advance(days=(DUE - START).days + 5)  # c1's invoice is 5 days past due
    plan = world.plan()
    assert [(a.kind, a.customer, a.why) for a in plan.actions if a.kind == "resume"] == [
        ("resume", "c2", "nothing is past due any more")
    ]
    world.pay("i1", "1000.00")
    resumed = [(a.customer, a.why) for a in world.plan().actions if a.kind == "resume"]
    assert resumed == [("c1", "nothing is past due any more (nothing owed)"), ("c2", "nothing is past due any more")]
