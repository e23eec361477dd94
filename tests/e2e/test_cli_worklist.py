"""The worklist, task outcomes, customer cards, holds and opt-outs from the command line.

The CLI runs on the real clock: views are pinned with ``--date``, and promised
days are set well after the real today.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col
from typer.testing import CliRunner

from arsync.cli import app
from sync.db import make_engine
from sync.models import ContactBlock, CustomerLocale, DunningMessage, DunningTask, InvoiceHold, LateFeeWaiver
from tests import collecting as L
from tests.unit.test_config import BASE, write
from tests.unit.test_config_payments import MINIMAL, PENV

runner = CliRunner()
DAY = date(2026, 11, 22)
AT = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
LATER = (date.today() + timedelta(days=30)).isoformat()


def arsync(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args), env=PENV)
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes is not None else "")


def task(s: Session, key: str, customer: str, invoice: str | None) -> int:
    row = DunningTask(
        key=key,
        tenant_id=L.TENANT,
        connection_id=L.CONN,
        customer_external_id=customer,
        invoice_external_id=invoice,
        kind="call",
        note=f"call {customer}",
        created_at=AT,
    )
    s.add(row)
    s.flush()
    assert row.id is not None
    return row.id


class Ledger:
    def __init__(self, config: Path, sessions: sessionmaker[Session], tasks: dict[str, int]) -> None:
        self.config = config
        self.sessions = sessions
        self.tasks = tasks

    def run(self, *args: str) -> tuple[int, str]:
        return arsync(*args, "--config", str(self.config))

    def json(self, *args: str) -> Any:
        code, out = self.run(*args, "--format", "json")
        assert code == 0, out
        return json.loads(out)

    def holds(self) -> list[tuple[str, str, str | None]]:
        with self.sessions() as s:
            rows = s.execute(
                sa.select(InvoiceHold).where(col(InvoiceHold.released_at).is_(None)).order_by(col(InvoiceHold.id))
            ).scalars()
            return [(h.invoice_external_id, h.kind, h.until.isoformat() if h.until else None) for h in rows]


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    path = write(tmp_path, BASE + MINIMAL)
    code, out = arsync("db", "upgrade", "--config", str(path))
    assert code == 0, out
    arsync("status", "--config", str(path))  # registers the tenant and its connections
    engine = make_engine(f"sqlite:///{tmp_path / 'arsync.db'}")
    sessions = sessionmaker(engine, expire_on_commit=False)
    with sessions.begin() as s:
        L.customer(s, "big", method=None)
        L.customer(s, "small", method=None)
        L.invoice(s, "b1", "big", "5000.00", due=DAY - timedelta(days=40))
        L.invoice(s, "b2", "big", "700.00", due=DAY - timedelta(days=5))
        L.invoice(s, "s1", "small", "80.00", due=DAY - timedelta(days=3))
        tasks = {"big": task(s, "t-big", "big", "b1"), "small": task(s, "t-small", "small", "s1")}
        tasks["big-customer"] = task(s, "t-big-c", "big", None)
        s.add(
            DunningMessage(
                key="m1",
                tenant_id=L.TENANT,
                connection_id=L.CONN,
                customer_external_id="big",
                invoice_external_id="b1",
                channel="email",
                address="ap@big.example",
                template="overdue-15",
                status="sent",
                sent_at=AT,
            )
        )
    yield Ledger(path, sessions, tasks)
    engine.dispose()


def test_worklist_lists_open_tasks_most_urgent_first(ledger: Ledger) -> None:
    items = ledger.json("worklist", "--date", DAY.isoformat())
    # big owes 5,700 with b1 40 days past due: medium (2 + 1 points); small is low.
    expected = {
        ledger.tasks["big-customer"]: 2 * Decimal("5700.00") * 40,
        ledger.tasks["big"]: 2 * Decimal("5000.00") * 40,
        ledger.tasks["small"]: 1 * Decimal("80.00") * 3,
    }
    assert [i["id"] for i in items] == list(expected)
    assert [Decimal(i["priority"]) for i in items] == list(expected.values())
    first = items[1]
    assert (first["invoice_number"], first["amount"], first["currency"], first["days_overdue"]) == (
        "INV-b1",
        "5000.00",
        "USD",
        40,
    )
    assert first["risk"]["level"] == "medium"
    assert [r["reason"] for r in first["risk"]["reasons"]] == [
        "no payment history",
        "owes USD 5,700.00, 40 days past due",
    ]
    assert len(ledger.json("worklist", "--date", DAY.isoformat(), "--limit", "1")) == 1
    code, out = ledger.run("worklist", "--date", DAY.isoformat())
    assert code == 0, out
    assert "3 open task(s)" in out and "Customer big" in out and "USD 5,700.00" in out


def test_task_outcomes_put_holds_and_close_the_task(ledger: Ledger) -> None:
    code, out = ledger.run(
        "task", "done", str(ledger.tasks["big"]), "--outcome", "promise", "--date", LATER, "--amount", "1500",
        "--note", "CFO promised",
    )  # fmt: skip
    assert code == 0, out
    assert out.splitlines() == [
        f"task {ledger.tasks['big']} done: promise",
        f"  acme-qbo:b1: promise: USD 1,500.00 by {LATER}",
    ]
    code, out = ledger.run("task", "done", str(ledger.tasks["small"]), "--outcome", "paid", "--reason", "cheque posted")
    assert code == 0, out
    code, out = ledger.run("task", "done", str(ledger.tasks["big-customer"]), "--outcome", "no-answer")
    assert (code, out.strip()) == (0, f"task {ledger.tasks['big-customer']} done: no-answer")
    assert [h[:2] for h in ledger.holds()] == [("b1", "promise"), ("s1", "hold")]
    assert ledger.json("worklist", "--date", DAY.isoformat()) == []
    with ledger.sessions() as s:
        done = s.get_one(DunningTask, ledger.tasks["big"])
        assert (done.status, done.outcome, done.outcome_note) == ("done", "promise", "CFO promised")
    code, out = ledger.run("task", "done", str(ledger.tasks["big"]), "--outcome", "no-answer")
    assert code == 2 and f"task {ledger.tasks['big']} is already done" in out


def test_customer_show_prints_risk_invoices_tasks_messages_and_opt_outs(ledger: Ledger) -> None:
    code, out = ledger.run("customer", "opt-out", "--customer", "big", "--channel", "sms", "--reason", "no texts")
    assert (code, out.strip()) == (0, "acme-qbo:big: opted out of sms (every sms address)")
    code, out = ledger.run("invoice", "dispute", "--invoice", "INV-b2", "--reason", "wrong rate")
    assert (code, out.strip()) == (0, "acme-qbo:b2 disputed")
    card = ledger.json("customer", "show", "big", "--date", DAY.isoformat())
    assert card["name"] == "Customer big"
    assert card["risk"]["level"] == "medium"
    assert card["risk"]["score"] == sum(r["points"] for r in card["risk"]["reasons"]) == 3
    assert [(i["number"], i["days_overdue"], i["balance"], i["holds"]) for i in card["invoices"]] == [
        ("INV-b1", 40, "5000.00", []),
        ("INV-b2", 5, "700.00", ["dispute: wrong rate"]),
    ]
    assert [t["id"] for t in card["tasks"]] == [ledger.tasks["big"], ledger.tasks["big-customer"]]
    assert [(m["template"], m["address"]) for m in card["messages"]] == [("overdue-15", "ap@big.example")]
    assert card["blocks"] == [{"channel": "sms", "address": None, "kind": "opt_out", "reason": "no texts"}]
    code, out = ledger.run("customer", "show", "acme-qbo:big", "--date", DAY.isoformat())
    flat = " ".join(out.split())
    assert code == 0, out
    assert "risk: medium (score 3)" in flat
    assert "+3 owes USD 5,700.00, 40 days past due" in flat
    assert "sms every sms address: opt_out (no texts)" in flat
    code, out = ledger.run("customer", "opt-in", "--customer", "big", "--channel", "sms")
    assert (code, out.strip()) == (0, "acme-qbo:big: 1 sms opt-out(s) removed")


def test_invoice_holds_by_hand(ledger: Ledger) -> None:
    code, out = ledger.run("invoice", "promise", "--invoice", "b1", "--date", LATER, "--amount", "250.50")
    assert (code, out.strip()) == (0, f"acme-qbo:b1: promise: USD 250.50 by {LATER}")
    new_due = (DAY + timedelta(days=30)).isoformat()
    code, out = ledger.run("invoice", "extend", "--invoice", "s1", "--to", new_due, "--reason", "new terms")
    assert (code, out.strip()) == (0, f"acme-qbo:s1: due {new_due}")
    code, out = ledger.run("invoice", "dispute", "--invoice", "b2", "--reason", "wrong rate")
    assert code == 0, out
    assert ledger.holds() == [("b1", "promise", LATER), ("s1", "extension", new_due), ("b2", "dispute", None)]
    code, out = ledger.run("invoice", "resolve", "--invoice", "b2")
    assert (code, out.strip()) == (0, "acme-qbo:b2: 1 dispute(s) resolved")
    code, out = ledger.run("invoice", "waive-fees", "--invoice", "b1", "--step", "day-30", "--reason", "goodwill")
    assert (code, out.strip()) == (0, "acme-qbo:b1: step day-30's late fee waived")
    code, out = ledger.run("customer", "opt-out", "--customer", "small", "--channel", "email",
                           "--address", "AP@small.example", "--reason", "asked")  # fmt: skip
    assert (code, out.strip()) == (0, "acme-qbo:small: opted out of email (ap@small.example)")
    with ledger.sessions() as s:
        waiver = s.execute(sa.select(LateFeeWaiver)).scalar_one()
        assert (waiver.invoice_external_id, waiver.step, waiver.reason) == ("b1", "day-30", "goodwill")
        block = s.execute(sa.select(ContactBlock)).scalar_one()
        assert (block.customer_external_id, block.channel, block.address) == ("small", "email", "ap@small.example")
    assert [h[:2] for h in ledger.holds()] == [("b1", "promise"), ("s1", "extension")]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("worklist", "--format", "xml"), "--format 'xml': use table or json"),
        (("worklist", "--limit", "0"), "--limit 0 must be at least 1"),
        (("worklist", "--tenant", "nope"), "no tenant named 'nope'"),
        (("worklist", "--date", "someday"), "--date 'someday' is not a date"),
        (("task", "done", "{big}", "--outcome", "called"), "--outcome 'called': use promise, dispute, paid or"),
        (("task", "done", "{big}", "--outcome", "promise"), "--date is required with --outcome promise"),
        (("task", "done", "{big}", "--outcome", "dispute"), "--reason is required with --outcome dispute"),
        (("task", "done", "{big}", "--outcome", "paid", "--amount", "5"), "--amount and --date go with --outcome"),
        (("task", "done", "{big}", "--outcome", "promise", "--date", "{later}", "--amount", "-5"),
         "--amount '-5' must not be negative"),
        (("task", "done", "{big}", "--outcome", "promise", "--date", "{later}", "--amount", "1.005"),
         "--amount 1.005 has more than 2 decimal places for USD"),
        (("task", "done", "{big}", "--outcome", "promise", "--date", "{later}", "--amount", "1e3"),
         "--amount '1e3' is not an amount"),
        (("task", "done", "{big}", "--outcome", "promise", "--date", "{later}", "--amount", "0"),
         "--amount '0' must be more than zero"),
        (("task", "done", "{big}", "--outcome", "promise", "--date", "{later}", "--amount", "9999"),
         "amount USD 9,999.00 is more than invoice acme-qbo:INV-b1's balance USD 5,000.00"),
        (("task", "done", "{big}", "--outcome", "promise", "--date", "2020-01-01"), "the promised date 2020-01-01"),
        (("task", "done", "999", "--outcome", "no-answer"), "task 999 does not exist"),
        (("customer", "show", "nope"), "customer 'nope' is not in the ledger"),
        (("customer", "opt-out", "--customer", "big", "--channel", "fax", "--reason", "x"),
         "channel 'fax' is not one of email, sms"),
        (("customer", "opt-out", "--customer", "big", "--channel", "email", "--address", "nobody", "--reason", "x"),
         "address 'nobody' is not an email address"),
        (("customer", "opt-out", "--customer", "big", "--channel", "email"), "Missing option '--reason'"),
        (("invoice", "promise", "--invoice", "b1", "--date", "tomorrow"), "--date 'tomorrow' is not a date"),
        (("invoice", "promise", "--invoice", "b1", "--date", "{later}", "--amount", "12.345"),
         "--amount 12.345 has more than 2 decimal places for USD"),
        (("invoice", "extend", "--invoice", "b1", "--to", "2026-10-01", "--reason", "x"),
         "the new due date 2026-10-01 must be after the current one (2026-10-13)"),
        (("invoice", "dispute", "--invoice", "b1", "--reason", " "), "a dispute's reason is required"),
        (("invoice", "resolve", "--invoice", "b1"), "invoice acme-qbo:INV-b1 has no open dispute"),
        (("invoice", "waive-fees", "--invoice", "nope", "--reason", "x"), "invoice 'nope' is not in the ledger"),
    ],
)  # fmt: skip
def test_bad_arguments_say_what_is_wrong(ledger: Ledger, args: tuple[str, ...], message: str) -> None:
    filled = [a.format(big=ledger.tasks["big"], later=LATER) for a in args]
    code, out = ledger.run(*filled)
    assert code == 2 and message in " ".join(out.split()), out
    assert ledger.holds() == []


def test_tasks_are_assigned_and_a_persons_worklist_shows_only_theirs(ledger: Ledger) -> None:
    code, out = ledger.run("task", "assign", str(ledger.tasks["small"]), "--to", "maria")
    assert (code, out.strip()) == (0, f"task {ledger.tasks['small']}: assigned to maria")
    mine = ledger.json("worklist", "--date", DAY.isoformat(), "--assignee", "maria")
    assert [i["id"] for i in mine] == [ledger.tasks["small"]]
    assert ledger.json("worklist", "--date", DAY.isoformat(), "--assignee", "joe") == []
    code, out = ledger.run("task", "assign", str(ledger.tasks["small"]))
    assert code == 0 and "back on everyone's list" in out
    assert ledger.json("worklist", "--date", DAY.isoformat(), "--assignee", "maria") == []
    code, out = ledger.run("task", "assign", "999", "--to", "maria")
    assert code == 2 and "task 999 does not exist" in out


def test_a_customers_locale_is_checked_and_kept(ledger: Ledger) -> None:
    code, out = ledger.run("customer", "locale", "--customer", "big", "--timezone", "Europe/London", "--country", "gb")
    assert (code, out.strip()) == (0, "acme-qbo:big: Europe/London, GB")
    code, out = ledger.run("customer", "locale", "--customer", "big", "--timezone", "Mars/Olympus")
    assert code == 2 and "unknown time zone 'Mars/Olympus'" in out
    code, out = ledger.run("customer", "locale", "--customer", "big", "--country", "XX")
    assert code == 2 and "XX" in out
    code, out = ledger.run("customer", "locale", "--customer", "big")
    assert code == 2 and "name --timezone, --country or --subdivision" in out
    with ledger.sessions() as s:
        row = s.get(CustomerLocale, (L.CONN, "big"))
        assert row is not None and (row.timezone, row.country) == ("Europe/London", "GB")
