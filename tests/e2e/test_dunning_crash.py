"""SIGKILL a dunning sender mid-run: no message is lost, and none goes out twice under two identities.

The SMTP server in the test process kills the worker while it receives the
chosen message: before it accepts it (the worker dies with the message not
taken), or just after (the server has it; the worker dies before recording
that). The restarted worker finishes the run. SMTP offers no way to ask a
server what it took, so in the second case the message is sent again with the
same ``Message-ID``, by which mail clients show it once; in the first, each
message arrives exactly once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from collect.dunning import journal_dunning, plan_dunning
from collect.dunning_policy import DunningPolicy, EmailAction, Policy, Step
from sync.models import CustomerContact, JournalEntry
from tests import collecting as L
from tests.smtp import Received, SmtpServer

pytestmark = pytest.mark.slow
CUSTOMERS = ("c1", "c2", "c3", "c4", "c5")
DUE = date(2026, 11, 1)


class KillingSmtp(SmtpServer):
    def __init__(self, kill_on: int, keep: bool) -> None:
        super().__init__()
        self.kill_on: int | None = kill_on
        self.keep = keep
        self.seen = 0
        self.pid: int | None = None

    def _record(self, received: Received) -> None:
        self.seen += 1
        if self.seen == self.kill_on:
            if self.keep:
                super()._record(received)
            assert self.pid is not None
            os.kill(self.pid, signal.SIGKILL)
            return
        super()._record(received)


def seed(sessions: sessionmaker[Session]) -> set[str]:
    with sessions.begin() as s:
        for name in CUSTOMERS:
            L.customer(s, name, method=None)
            s.flush()
            customer_id = s.execute(sa.text(f"select id from customer where external_id = '{name}'")).scalar_one()
            s.add(CustomerContact(customer_id=customer_id, email=f"ap@{name}.example"))
            L.invoice(s, f"i-{name}", name, "250.00", issued=date(2026, 10, 1), due=DUE)
    rules = DunningPolicy(
        policies=(
            Policy(
                name="p", steps=(Step(name="overdue", days=1, actions=(EmailAction(template="reminder_overdue"),)),)
            ),
        )
    )
    with sessions.begin() as s:
        plan = plan_dunning(s, L.TENANT, [L.CONN], rules, date(2026, 11, 5))
        journal_dunning(s, plan, datetime(2026, 11, 5, 8, tzinfo=UTC))
    return {a.key for a in plan.actions}


@pytest.mark.parametrize("keep", [False, True], ids=["killed-before-accepting", "killed-after-accepting"])
@pytest.mark.parametrize("kill_on", [1, 3])
def test_a_killed_sender_loses_no_message_and_sends_none_under_two_ids(db_url: str, kill_on: int, keep: bool) -> None:
    sessions = L.ledger(db_url)
    planned = seed(sessions)
    assert len(planned) == len(CUSTOMERS)
    server = KillingSmtp(kill_on, keep).start()
    try:
        args = [sys.executable, "-m", "tests.e2e.dunning_worker", db_url, str(server.port)]
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        worker = subprocess.Popen(args, env=env)
        server.pid = worker.pid
        assert worker.wait(timeout=120) == -signal.SIGKILL
        server.kill_on = None
        restarted = subprocess.run(args, env=env, timeout=120, capture_output=True, text=True)
        assert restarted.returncode == 0, restarted.stderr
    finally:
        server.stop()

    copies = Counter(str(m.message["Message-ID"]) for m in server.received)
    recipients = Counter(m.rcpt_tos for m in server.received)
    assert len(copies) == len(CUSTOMERS)  # every message arrived, each under one Message-ID
    assert set(recipients) == {(f"ap@{name}.example",) for name in CUSTOMERS}
    expected = 2 if keep else 1
    assert sorted(copies.values()) == [1] * (len(CUSTOMERS) - 1) + [expected]
    with sessions() as s:
        states = Counter(s.execute(sa.select(JournalEntry.status)).scalars())
    assert states == Counter({"done": len(CUSTOMERS)})
