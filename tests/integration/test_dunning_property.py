"""Property: no interleaving of runs, restarts, crashes, payments and holds sends a step twice
or charges an invoice's late fee twice.

Mail goes to a real SMTP server in the test process. A "crash" is a worker that
claimed the due messages and died: before sending (nothing went), or after
sending and recording but before settling its journal entries (the message
went). Either way the entries stay in flight until their lease runs out, as
when a worker is killed (the SIGKILL tests do that with real processes).
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from tempfile import TemporaryDirectory

import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from collect.dunning import journal_dunning, plan_dunning
from collect.dunning_policy import DunningPolicy, EmailAction, LateFeeAction, Policy, Step
from collect.dunning_send import MessageSender
from collect.mail import Branding, SmtpSender, Templates
from collect.send_window import Pacing, SendWindow
from connectors import jsonwire
from sync import journal
from sync.models import CustomerContact, Invoice, InvoiceHold, JournalEntry
from tests import collecting as L
from tests.smtp import SmtpServer, running_smtp_server
from tests.support import FakeClock

DUE = date(2026, 12, 1)
START = datetime(2026, 11, 29, 10, tzinfo=UTC)
"""The first step is due on the first day."""
INVOICES = {"i1": "c1", "i2": "c1", "i3": "c2"}
RULES = DunningPolicy(
    policies=(
        Policy(
            name="p",
            steps=(
                Step(name="soon", days=-2, actions=(EmailAction(template="reminder_upcoming"),)),
                Step(name="late", days=1, actions=(EmailAction(template="reminder_overdue"),)),
                Step(name="fee", days=7, actions=(LateFeeAction(percent=Decimal("2")),)),
                Step(name="final", days=14, actions=(EmailAction(template="final_notice"),)),
            ),
        ),
    ),
    window=SendWindow(start=time(0), end=time(23, 59), business_days_only=False),
    pacing=Pacing(min_gap=timedelta(0)),
)

operations = st.lists(
    st.sampled_from(
        [
            "decide",
            "send",
            "run",
            "day",
            "days",
            "crash-before-send",
            "crash-after-send",
            "lease-expires",
            "pay-part",
            "hold",
            "release",
        ]
    ),
    min_size=1,
    max_size=60,
)


class Trial:
    def __init__(self, sessions: sessionmaker[Session], server: SmtpServer) -> None:
        self.sessions = sessions
        self.clock = FakeClock(START)
        self.server = server
        self.sender = MessageSender(
            sessions,
            L.TENANT,
            __import__("zoneinfo").ZoneInfo("UTC"),
            RULES.window,
            RULES.pacing,
            Templates(Branding(company_name="Acme")),
            self.clock,
            mail=SmtpSender(server.settings(), clock=self.clock),
        )
        self.target = 0

    def decide(self) -> None:
        with self.sessions.begin() as s:
            plan = plan_dunning(s, L.TENANT, [L.CONN], RULES, self.clock().date())
            journal_dunning(s, plan, self.clock())

    def send(self) -> None:
        journal.run_due(self.sessions, "notify", "w", self.sender.handle, self.clock, limit=100, tenant=L.TENANT)

    def crash(self, after_send: bool) -> None:
        for entry in journal.claim(self.sessions, "notify", "dying", self.clock(), limit=100, tenant=L.TENANT):
            if after_send:
                self.sender.handle(entry)  # sent and recorded; the worker dies before settling

    def act(self, operation: str) -> None:
        match operation:
            case "decide":
                self.decide()
            case "send":
                self.send()
            case "run":
                self.decide()
                self.send()
            case "day":
                self.clock.advance(days=1)
            case "days":
                self.clock.advance(days=6)
            case "crash-before-send":
                self.crash(after_send=False)
            case "crash-after-send":
                self.crash(after_send=True)
            case "lease-expires":
                self.clock.advance(minutes=6)
            case "pay-part":
                self.target = (self.target + 1) % len(INVOICES)
                with self.sessions.begin() as s:
                    row = s.execute(
                        sa.select(Invoice).where(col(Invoice.external_id) == list(INVOICES)[self.target])
                    ).scalar_one()
                    if row.balance > Decimal("10.00"):
                        row.balance -= Decimal("10.00")
                        row.status = "partially_paid"
            case "hold":
                with self.sessions.begin() as s:
                    L.hold(s, list(INVOICES)[self.target])
            case "release":
                with self.sessions.begin() as s:
                    s.execute(sa.update(InvoiceHold).values(released_at=self.clock()))


@given(operations)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_no_interleaving_sends_a_step_twice_or_charges_a_fee_twice(ops: list[str]) -> None:
    with TemporaryDirectory() as folder, running_smtp_server() as server:
        sessions = L.ledger(f"sqlite:///{Path(folder) / 'ledger.db'}")
        with sessions.begin() as s:
            for customer in sorted(set(INVOICES.values())):
                L.customer(s, customer, method=None)
                s.flush()
                ident = s.execute(sa.text(f"select id from customer where external_id = '{customer}'")).scalar_one()
                s.add(CustomerContact(customer_id=ident, email=f"ap@{customer}.example"))
            for invoice, customer in INVOICES.items():
                L.invoice(s, invoice, customer, "120.00", issued=date(2026, 11, 1), due=DUE)
        trial = Trial(sessions, server)
        for operation in [*ops, "lease-expires", "send"]:
            trial.act(operation)

        copies = Counter(str(m.message["Message-ID"]) for m in server.received)
        assert all(n == 1 for n in copies.values()), copies
        with sessions() as s:
            entries = s.execute(
                sa.select(col(JournalEntry.key), col(JournalEntry.kind), col(JournalEntry.payload))
            ).all()
        steps = Counter(
            (p["invoice"], p["step"], key.split(":")[-2])
            for key, kind, payload in entries
            if kind == "notify" and (p := jsonwire.loads(payload))
        )
        assert all(n == 1 for n in steps.values()), steps
        fees = Counter(
            (p["invoice"], p["step"])
            for _, kind, payload in entries
            if kind == "posting" and (p := jsonwire.loads(payload))
        )
        assert all(n == 1 for n in fees.values()), fees
        assert len(server.received) <= len(steps)
