"""``arsync dunning plan|run|send`` end to end: config file, ledger, a real SMTP server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker
from typer.testing import CliRunner

from arsync.cli import app
from sync.db import make_engine
from sync.models import CustomerContact
from tests import collecting as L
from tests.smtp import SmtpServer
from tests.unit.test_config import BASE, write
from tests.unit.test_config_payments import PENV

runner = CliRunner()
DUNNING = """
[tenants.acme.dunning]
pdf_url = "https://billing.acme.example/{{connection}}/{{invoice}}.pdf"
[tenants.acme.dunning.window]
start = "00:00"
end = "23:59"
business_days_only = false
[tenants.acme.dunning.pacing]
min_gap_hours = 0
[tenants.acme.dunning.mail]
host = "127.0.0.1"
port = {port}
security = "none"
sender = "Acme Billing <billing@acme.example>"
[[tenants.acme.dunning.policies]]
name = "standard"
[[tenants.acme.dunning.policies.steps]]
name = "overdue"
days = 1
actions = [{{ kind = "email", template = "reminder_overdue" }}]
[[tenants.acme.dunning.policies.steps]]
name = "call"
days = 14
actions = [{{ kind = "call", note = "Ring the accounts team" }}]
"""


def arsync(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args), env=PENV)
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes is not None else "")


@pytest.fixture
def config(tmp_path: Path, smtp_server: SmtpServer) -> Iterator[Path]:
    path = write(tmp_path, BASE + DUNNING.format(port=smtp_server.port))
    code, out = arsync("db", "upgrade", "--config", str(path))
    assert code == 0, out
    code, out = arsync("status", "--config", str(path))  # registers the tenant and its connections
    assert code == 0, out
    engine = make_engine(f"sqlite:///{tmp_path / 'arsync.db'}")
    sessions = sessionmaker(engine)
    with sessions.begin() as s:
        for name in ("c1", "c2"):
            L.customer(s, name, method=None)
            s.flush()
            ident = s.execute(sa.text(f"select id from customer where external_id = '{name}'")).scalar_one()
            s.add(CustomerContact(customer_id=ident, email=f"ap@{name}.example"))
        L.invoice(s, "i1", "c1", "100.00", due=date(2026, 11, 1))
        L.invoice(s, "i2", "c2", "50.00", due=date(2026, 11, 20))
    engine.dispose()
    yield path


def test_plan_shows_each_action_with_its_rule_and_run_sends_it_once(config: Path, smtp_server: SmtpServer) -> None:
    code, out = arsync("dunning", "plan", "--config", str(config), "--date", "2026-11-21", "--format", "json")
    assert code == 0, out
    document = json.loads(out)
    actions = {(a["invoice"], a["kind"], a["step"]): a["why"] for a in document["actions"]}
    assert set(actions) == {("i1", "call", "call"), ("i2", "email", "overdue")}
    assert actions[("i1", "call", "call")].startswith("policy 'standard', step 'call': day +14 from the due date")
    assert "passed over: overdue" in actions[("i1", "call", "call")]
    assert smtp_server.received == []  # a plan changes nothing

    code, out = arsync("dunning", "run", "--config", str(config), "--date", "2026-11-21")
    assert code == 0, out
    assert [m.rcpt_tos for m in smtp_server.received] == [("ap@c2.example",)]
    text = smtp_server.received[0].part("text/plain")
    assert "INV-i2" in text and "https://billing.acme.example/acme-qbo/i2.pdf" in text

    code, out = arsync("dunning", "run", "--config", str(config), "--date", "2026-11-21")
    assert code == 0, out
    assert "0 new action(s)" in out and len(smtp_server.received) == 1
    code, out = arsync("status", "--config", str(config))
    assert "1 sent today" in out or "1 done" in out
    assert "1 (see `arsync worklist`)" in out


def test_bad_arguments_are_named(config: Path) -> None:
    code, out = arsync("dunning", "plan", "--config", str(config), "--date", "21/11/2026")
    assert code != 0 and "'21/11/2026' is not a date (YYYY-MM-DD)" in out
    code, out = arsync("dunning", "plan", "--config", str(config), "--format", "xml")
    assert code != 0 and "--format must be table or json" in out
    code, out = arsync("dunning", "plan", "--config", str(config), "--tenant", "nobody")
    assert code != 0 and "nobody" in out
