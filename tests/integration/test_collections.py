"""The collections hand-off on SQLite and PostgreSQL: eligibility, the package and its fees journaled once,
delivery by signed webhook or email, recoveries and their success fees booked once."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from arsync.cli import app
from collect.collections import (
    CollectionsError,
    CollectionsSender,
    collections_key,
    eligible,
    fee_key,
    notice_recoveries,
    placements,
    record_recovery,
    submit,
)
from collect.dunning_policy import CollectionsSettings
from collect.mail import Branding, SmtpSender, Templates
from connectors import jsonwire
from sync import journal
from sync.db import make_engine
from sync.models import (
    CollectionsPlacement,
    Connection,
    CreditNote,
    Customer,
    CustomerContact,
    DunningMessage,
    DunningTask,
    Invoice,
    JournalEntry,
    Payment,
    PaymentApplication,
    Tenant,
)
from tests.collecting import CONN, SYNCED, TENANT, hold, invoice, ledger
from tests.integration.test_webhooks import SECRET, Answer, WebhookReceiver
from tests.support import FakeClock
from tests.unit.test_config import BASE, ENV, write

if TYPE_CHECKING:
    from tests.smtp import SmtpServer

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
TODAY = NOW.date()
AGENCY_EMAIL = "placements@recoveries.example"


def settings(**overrides: object) -> CollectionsSettings:
    values: dict[str, object] = {
        "eligible_after_days": 30,
        "agency_name": "Northwind Recoveries",
        "upfront_percent": Decimal("1"),
        "success_percent": Decimal("25"),
    }
    values.update(overrides)
    return CollectionsSettings(**values)  # type: ignore[arg-type]


def pay(s: Session, external_id: str, invoice_id: str, amount: str, paid: date, method: str = "check") -> None:
    payment = Payment(
        connection_id=CONN,
        external_id=external_id,
        customer_external_id="C1",
        payment_date=paid,
        currency="USD",
        amount=Decimal(amount),
        unapplied=Decimal(0),
        status="closed",
        reference=f"ref-{external_id}",
        method=method,
        synced_at=SYNCED,
    )
    s.add(payment)
    s.flush()
    assert payment.id is not None
    s.add(
        PaymentApplication(
            payment_id=payment.id, target_entity="invoice", target_external_id=invoice_id, amount=Decimal(amount)
        )
    )


def set_balance(s: Session, invoice_id: str, balance: str) -> None:
    row = s.execute(sa.select(Invoice).where(Invoice.external_id == invoice_id)).scalar_one()  # type: ignore[arg-type]
    row.balance = Decimal(balance)
    row.status = "paid" if Decimal(balance) == 0 else "partially_paid"


@pytest.fixture
def sessions(db_url: str) -> sessionmaker[Session]:
    sessions = ledger(db_url)
    with sessions.begin() as s:
        c1 = Customer(connection_id=CONN, external_id="C1", name="Bob's Diner", phone="+14155550123", synced_at=SYNCED)
        s.add(c1)
        s.add(Customer(connection_id=CONN, external_id="C2", name="Carol's Cafe", synced_at=SYNCED))
        s.flush()
        assert c1.id is not None
        s.add(CustomerContact(customer_id=c1.id, email="bob@diner.example", name="Bob", role="billing"))
        s.add(CustomerContact(customer_id=c1.id, email="accounts@diner.example", role="billing"))
        invoice(s, "I1", "C1", "1234.50", issued=date(2026, 9, 1), due=date(2026, 10, 1))
        s.flush()
        row = s.execute(sa.select(Invoice).where(Invoice.external_id == "I1")).scalar_one()  # type: ignore[arg-type]
        row.total = Decimal("1434.50")
        row.status = "partially_paid"
        pay(s, "P1", "I1", "200.00", date(2026, 10, 5))
        invoice(s, "I2", "C1", "300.00", issued=date(2026, 10, 1), due=date(2026, 11, 1))  # 19 days: too young
        invoice(s, "I3", "C2", "80.00", issued=date(2026, 8, 1), due=date(2026, 9, 1))  # disputed
        hold(s, "I3")
        invoice(s, "I4", "C2", "0", issued=date(2026, 8, 1), due=date(2026, 9, 1), status="paid")
        invoice(s, "I5", "C2", "99.99", issued=date(2026, 9, 10), due=date(2026, 10, 10))
        for key, inv, template, at in (
            ("m1", "I1", "reminder_overdue", datetime(2026, 10, 2, 9, tzinfo=UTC)),
            ("m2", None, "statement", datetime(2026, 10, 15, 9, tzinfo=UTC)),
            ("m3", "I2", "reminder_upcoming", datetime(2026, 10, 29, 9, tzinfo=UTC)),
        ):
            s.add(
                DunningMessage(
                    key=key,
                    tenant_id=TENANT,
                    connection_id=CONN,
                    customer_external_id="C1",
                    invoice_external_id=inv,
                    channel="email",
                    address="bob@diner.example",
                    template=template,
                    message_id=f"<{key}@acme.example>",
                    status="sent",
                    sent_at=at,
                )
            )
        s.add(
            DunningTask(
                key="task:collections:I1",
                tenant_id=TENANT,
                connection_id=CONN,
                customer_external_id="C1",
                invoice_external_id="I1",
                kind="collections",
                note="Hand over to collections",
                created_at=NOW,
            )
        )
        s.add(Tenant(id="other", display_name="Other"))
        s.flush()
        s.add(Connection(id="other-qbo", tenant_id="other", kind="quickbooks"))
        s.flush()
        s.add(
            Invoice(
                connection_id="other-qbo",
                external_id="X1",
                customer_external_id="C9",
                currency="USD",
                total=Decimal(500),
                balance=Decimal(500),
                status="open",
                due_date=date(2026, 8, 1),
            )
        )
    return sessions


def entries(sessions: sessionmaker[Session]) -> dict[str, JournalEntry]:
    with sessions() as s:
        return {e.key: e for e in journal.entries(s)}


def placement(sessions: sessionmaker[Session], invoice_id: str = "I1") -> CollectionsPlacement:
    with sessions() as s:
        return s.execute(
            sa.select(CollectionsPlacement).where(
                CollectionsPlacement.invoice_external_id == invoice_id  # type: ignore[arg-type]
            )
        ).scalar_one()


# --------------------------------------------------------------------------- eligibility and submit


def test_eligible_lists_old_open_undisputed_unplaced_invoices(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        found = eligible(s, TENANT, [CONN], settings(), TODAY)
    assert [(e.invoice, e.days_overdue, e.balance, e.customer_name) for e in found] == [
        ("I1", 50, Decimal("1234.50"), "Bob's Diner"),
        ("I5", 41, Decimal("99.99"), "Carol's Cafe"),
    ]
    with sessions() as s:
        assert [e.invoice for e in eligible(s, TENANT, [CONN], settings(eligible_after_days=45), TODAY)] == ["I1"]
        assert eligible(s, TENANT, ["other-qbo"], settings(), TODAY) == [], "another tenant's connection"
    with sessions.begin() as s:
        submit(s, TENANT, (CONN, "I1"), settings(), "", NOW)
    with sessions() as s:
        assert [e.invoice for e in eligible(s, TENANT, [CONN], settings(), TODAY)] == ["I5"]


def test_submit_journals_the_package_and_the_upfront_fee_once(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        placed = submit(s, TENANT, (CONN, "I1"), settings(), "Promised twice, paid nothing.", NOW)
        assert (placed.status, placed.amount, placed.recovered) == ("submitted", Decimal("1234.50"), Decimal(0))
    with sessions.begin() as s, pytest.raises(CollectionsError, match="already handed to Northwind Recoveries"):
        submit(s, TENANT, (CONN, "I1"), settings(), "again", NOW)
    rows = entries(sessions)
    package_key = collections_key(TENANT, CONN, "I1")
    upfront_key = fee_key(TENANT, CONN, "I1", "upfront")
    assert upfront_key == "post:acme:acme-qbo:collections_fee:I1:upfront"
    assert sorted(rows) == sorted([package_key, upfront_key])
    package = jsonwire.loads(rows[package_key].payload)
    assert rows[package_key].kind == "collections"
    assert package["details"]["number"] == "INV-I1"
    assert (package["details"]["issue_date"], package["details"]["due_date"]) == ("2026-09-01", "2026-10-01")
    assert package["details"]["total"] == Decimal("1434.50")
    assert (package["amount"], package["currency"]) == (Decimal("1234.50"), "USD")
    assert package["debtor"]["name"] == "Bob's Diner" and package["debtor"]["phone"] == "+14155550123"
    assert [c["email"] for c in package["debtor"]["contacts"]] == ["bob@diner.example", "accounts@diner.example"]
    assert [(p["payment"], p["amount"], p["date"]) for p in package["payments"]] == [
        ("P1", Decimal("200.00"), "2026-10-05")
    ]
    assert [(m["template"], m["about"]) for m in package["dunning"]] == [
        ("reminder_overdue", "invoice"),
        ("statement", "account"),
    ], "the invoice's messages and the account's, not another invoice's"
    assert package["notes"] == "Promised twice, paid nothing."
    fee = jsonwire.loads(rows[upfront_key].payload)
    assert rows[upfront_key].kind == "posting"
    assert fee["posting_kind"] == "collections_fee" and fee["reference"] == upfront_key
    assert fee["amount"] == Decimal("12.35"), "1% of 1234.50 = 12.345, rounded half up"
    assert (fee["invoice_external_id"], fee["customer_external_id"], fee["currency"]) == ("I1", "C1", "USD")
    assert (fee["connection"], fee["date"]) == (CONN, "2026-11-20")
    assert "Northwind Recoveries" in fee["description"]
    with sessions() as s:
        task = s.execute(sa.select(DunningTask)).scalar_one()
        assert (task.status, task.outcome) == ("done", "submitted")
        assert [p.invoice_external_id for p in placements(s, TENANT)] == ["I1"]


def test_no_upfront_fee_when_the_percent_is_zero(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        submit(s, TENANT, (CONN, "I5"), settings(upfront_percent=Decimal(0)), "", NOW)
    assert sorted(entries(sessions)) == [collections_key(TENANT, CONN, "I5")]


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ((CONN, "I2"), "19 days past due; collections takes invoices 30 days past due"),
        ((CONN, "I3"), "under a dispute: wrong hours billed"),
        ((CONN, "I4"), "is paid with balance 0.00 USD"),
        ((CONN, "NOPE"), "is not in tenant acme's ledger"),
        (("other-qbo", "X1"), "is not in tenant acme's ledger"),
    ],
)
def test_submit_refuses_what_is_not_eligible(
    sessions: sessionmaker[Session], ref: tuple[str, str], message: str
) -> None:
    with sessions.begin() as s, pytest.raises(CollectionsError, match=message):
        submit(s, TENANT, ref, settings(), "", NOW)
    assert entries(sessions) == {}
    with sessions() as s:
        assert placements(s, TENANT) == []


# --------------------------------------------------------------------------- sending the package


@pytest.fixture
def receiver(clock: FakeClock) -> Iterator[WebhookReceiver]:
    server = WebhookReceiver(SECRET, clock).start()
    yield server
    server.stop()


def test_the_package_goes_to_the_agency_webhook_once_and_the_placement_is_placed(
    sessions: sessionmaker[Session], receiver: WebhookReceiver, clock: FakeClock
) -> None:
    terms = settings(webhook=receiver.target())
    with sessions.begin() as s:
        submit(s, TENANT, (CONN, "I1"), terms, "call after 5pm", clock())
    receiver.script = [Answer(500, "down")]
    sender = CollectionsSender(sessions, terms, clock)
    [(key, outcome)] = journal.run_due(sessions, "collections", "w1", sender, clock, tenant=TENANT)
    assert "500" in getattr(outcome, "error", "")
    assert placement(sessions).status == "submitted"
    clock.advance(hours=1)
    [(key, _)] = journal.run_due(sessions, "collections", "w1", sender, clock, tenant=TENANT)
    assert journal.run_due(sessions, "collections", "w1", sender, clock, tenant=TENANT) == []
    assert key == collections_key(TENANT, CONN, "I1")
    assert placement(sessions).status == "placed"
    assert entries(sessions)[key].status == "done"
    assert json.loads(entries(sessions)[key].result or "{}") == {"status": 200, "channel": "webhook"}
    assert [d.verified for d in receiver.deliveries] == [True, True]
    [event] = receiver.processed.values()
    assert (event["id"], event["type"]) == (key, "collections.submitted")
    assert event["data"]["debtor"]["phone"] == "+14155550123"
    assert event["data"]["amount"] == Decimal("1234.50") and event["data"]["notes"] == "call after 5pm"


def test_the_package_goes_by_email_when_only_an_address_is_configured(
    sessions: sessionmaker[Session], smtp_server: SmtpServer, clock: FakeClock
) -> None:
    terms = settings(email=AGENCY_EMAIL)
    with sessions.begin() as s:
        submit(s, TENANT, (CONN, "I1"), terms, "Disputes nothing; just slow.", clock())
    mail = SmtpSender(smtp_server.settings(), clock=clock)
    templates = Templates(Branding(company_name="Acme Plumbing", support_email="ar@acme.example"))
    sender = CollectionsSender(sessions, terms, clock, mail=mail, templates=templates)
    [(key, _)] = journal.run_due(sessions, "collections", "w1", sender, clock, tenant=TENANT)
    assert journal.run_due(sessions, "collections", "w1", sender, clock, tenant=TENANT) == []
    [received] = smtp_server.received
    assert received.rcpt_tos == (AGENCY_EMAIL,)
    assert str(received.message["Subject"]).strip() == (
        "New placement from Acme Plumbing: invoice INV-I1, 1234.50 USD (Bob's Diner)"
    )
    text = received.part("text/plain")
    assert text.startswith("Dear Northwind Recoveries,")
    for expected in (
        "Amount placed: 1234.50 USD",
        "Due: 1 October 2026 (50 days overdue)",
        "Phone: +14155550123",
        "Contact: Bob <bob@diner.example> (billing)",
        "5 October 2026: 200.00 USD by check (ref. ref-P1)",
        'email "reminder_overdue" to bob@diner.example (sent)',
        "Disputes nothing; just slow.",
        key,
    ):
        assert expected in text, expected
    html = received.part("text/html")
    assert "Bob&#39;s Diner" in html and "1234.50 USD" in html
    assert placement(sessions).status == "placed"
    done = entries(sessions)[key]
    assert done.external_id == received.message["Message-ID"]


def test_with_no_way_to_reach_the_agency_the_entry_fails_and_the_placement_waits(
    sessions: sessionmaker[Session], clock: FakeClock
) -> None:
    with sessions.begin() as s:
        submit(s, TENANT, (CONN, "I1"), settings(), "", clock())
    journal.run_due(sessions, "collections", "w1", CollectionsSender(sessions, settings(), clock), clock)
    row = entries(sessions)[collections_key(TENANT, CONN, "I1")]
    assert row.status == "failed" and row.error is not None and "no way to reach Northwind Recoveries" in row.error
    assert placement(sessions).status == "submitted"


def test_an_invoice_paid_before_the_package_leaves_is_not_handed_over(
    sessions: sessionmaker[Session], receiver: WebhookReceiver, clock: FakeClock
) -> None:
    terms = settings(webhook=receiver.target())
    with sessions.begin() as s:
        submit(s, TENANT, (CONN, "I1"), terms, "", clock())
    with sessions.begin() as s:
        set_balance(s, "I1", "0")
    journal.run_due(sessions, "collections", "w1", CollectionsSender(sessions, terms, clock), clock)
    row = entries(sessions)[collections_key(TENANT, CONN, "I1")]
    assert row.status == "failed" and row.error is not None and "is paid with balance 0.00 USD now" in row.error
    assert placement(sessions).status == "closed"
    assert receiver.deliveries == []


# --------------------------------------------------------------------------- recoveries


def success_fees(sessions: sessionmaker[Session]) -> dict[str, Decimal]:
    return {
        key: jsonwire.loads(row.payload)["amount"]
        for key, row in entries(sessions).items()
        if ":collections_fee:" in key and ":success:" in key
    }


def test_recoveries_book_success_fees_once(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        submit(s, TENANT, (CONN, "I1"), settings(), "", NOW)
    # Nothing paid yet: nothing recovered.
    with sessions.begin() as s:
        assert notice_recoveries(s, TENANT, [CONN], NOW) == 0
    # The debtor pays 400 through the agency; the ledger syncs the payment.
    with sessions.begin() as s:
        pay(s, "P2", "I1", "400.00", date(2026, 11, 25))
        set_balance(s, "I1", "834.50")
    with sessions.begin() as s:
        assert notice_recoveries(s, TENANT, [CONN], NOW) == 1
    with sessions.begin() as s:
        assert notice_recoveries(s, TENANT, [CONN], NOW) == 0, "noticed once"
    assert success_fees(sessions) == {fee_key(TENANT, CONN, "I1", "success:1"): Decimal("100.00")}
    assert (placement(sessions).recovered, placement(sessions).status) == (Decimal("400.00"), "submitted")
    # A credit note lowers the balance: not a recovery, no fee.
    with sessions.begin() as s:
        s.add(
            CreditNote(
                connection_id=CONN,
                external_id="CN1",
                customer_external_id="C1",
                currency="USD",
                total=Decimal(100),
                remaining=Decimal(0),
                status="applied",
            )
        )
        set_balance(s, "I1", "734.50")
    with sessions.begin() as s:
        assert notice_recoveries(s, TENANT, [CONN], NOW) == 0
    assert len(success_fees(sessions)) == 1
    # The agency reports 100.01 it collected itself.
    with sessions.begin() as s:
        record_recovery(s, TENANT, (CONN, "I1"), Decimal("100.01"), NOW)
    assert success_fees(sessions)[fee_key(TENANT, CONN, "I1", "success:2")] == Decimal("25.00"), "25.0025 -> 25.00"
    with sessions.begin() as s, pytest.raises(CollectionsError, match=r"more than the 734\.49 USD still outstanding"):
        record_recovery(s, TENANT, (CONN, "I1"), Decimal("734.50"), NOW)
    with sessions.begin() as s, pytest.raises(CollectionsError, match="positive"):
        record_recovery(s, TENANT, (CONN, "I1"), Decimal("-1"), NOW)
    with sessions.begin() as s, pytest.raises(CollectionsError, match="has not been handed to collections"):
        record_recovery(s, TENANT, (CONN, "I5"), Decimal("1"), NOW)
    assert len(success_fees(sessions)) == 2
    # The rest is paid in the ledger: what the agency had not reported is recovered; the credit note's 100 is not.
    with sessions.begin() as s:
        pay(s, "P3", "I1", "734.50", date(2026, 12, 1))
        set_balance(s, "I1", "0")
    with sessions.begin() as s:
        assert notice_recoveries(s, TENANT, [CONN], NOW) == 1
    with sessions.begin() as s:
        assert notice_recoveries(s, TENANT, [CONN], NOW) == 0
    assert success_fees(sessions)[fee_key(TENANT, CONN, "I1", "success:3")] == Decimal("158.62"), "25% of 634.49"
    assert len(success_fees(sessions)) == 3
    final = placement(sessions)
    assert (final.recovered, final.status) == (Decimal("1134.50"), "closed")


def test_the_success_fee_uses_the_terms_of_the_day_of_submission(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        submit(s, TENANT, (CONN, "I5"), settings(success_percent=Decimal("20")), "", NOW)
    with sessions.begin() as s:
        record_recovery(s, TENANT, (CONN, "I5"), Decimal("99.99"), NOW)
    assert success_fees(sessions) == {fee_key(TENANT, CONN, "I5", "success:1"): Decimal("20.00")}
    assert (placement(sessions, "I5").status, placement(sessions, "I5").recovered) == ("recovered", Decimal("99.99"))
    with sessions.begin() as s, pytest.raises(CollectionsError, match="is recovered"):
        record_recovery(s, TENANT, (CONN, "I5"), Decimal("1"), NOW)


# --------------------------------------------------------------------------- the command line


def test_the_command_line_submits_lists_and_follows_a_placement(tmp_path: Path) -> None:
    """``arsync collections`` end to end on the real clock, the agency's webhook a real server."""
    real = WebhookReceiver(SECRET, lambda: datetime.now(UTC)).start()
    today = datetime.now(ZoneInfo("America/Chicago")).date()  # the tenant's day, as the commands count it
    env = {**ENV, "ACME_AGENCY_SECRET": SECRET}
    config = write(
        tmp_path,
        BASE
        + f"""
[tenants.acme.dunning]

[tenants.acme.dunning.collections]
agency_name = "Northwind Recoveries"
eligible_after_days = 30
upfront_percent = "1"
success_percent = "25"

[tenants.acme.dunning.collections.webhook]
url = "{real.url}"
secret_env = "ACME_AGENCY_SECRET"
""",
    )

    def arsync(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(app, [*args, "--config", str(config)], env=env)
        return result.exit_code, result.output + (result.stderr if result.stderr_bytes is not None else "")

    try:
        assert arsync("db", "upgrade")[0] == 0
        code, out = arsync("collections", "list")  # registers the tenant and its connection
        assert code == 0 and "0 placement(s)" in out, out
        engine = make_engine(f"sqlite:///{tmp_path / 'arsync.db'}")
        sessions = sessionmaker(engine, expire_on_commit=False)
        with sessions.begin() as s:
            s.add(Customer(connection_id=CONN, external_id="C1", name="Bob's Diner", synced_at=SYNCED))
            invoice(s, "I1", "C1", "500.00", issued=today - timedelta(days=80), due=today - timedelta(days=50))
            invoice(s, "I2", "C1", "70.00", issued=today - timedelta(days=35), due=today - timedelta(days=5))

        code, out = arsync("collections", "eligible", "--format", "json")
        assert code == 0, out
        listed = json.loads(out)["eligible"]
        assert [(e["number"], e["days_overdue"], e["balance"]) for e in listed] == [("INV-I1", 50, "500.00")]

        code, out = arsync("collections", "submit", "--invoice", "INV-I1", "--notes", "Never answers the phone.")
        assert code == 0, out
        assert "handed to Northwind Recoveries: 500.00 USD" in out and "sent to the agency by webhook" in out
        [delivery] = real.deliveries
        assert delivery.verified and delivery.json()["data"]["notes"] == "Never answers the phone."

        code, out = arsync("collections", "submit", "--invoice", "INV-I1", "--notes", "again")
        assert code == 2 and "already handed to Northwind Recoveries" in out, out
        code, out = arsync("collections", "submit", "--invoice", "I2", "--notes", "too early")
        assert code == 2 and "5 days past due" in out, out
        assert len(real.deliveries) == 1

        code, out = arsync("collections", "list", "--format", "json")
        assert code == 0, out
        [listed_placement] = json.loads(out)["placements"]
        assert (listed_placement["invoice"], listed_placement["status"]) == ("I1", "placed")

        with sessions.begin() as s:
            pay(s, "P9", "I1", "200.00", today)
            set_balance(s, "I1", "300.00")
        code, out = arsync("collections", "update")
        assert code == 0 and "1 placement(s) with new recoveries" in out, out
        code, out = arsync("collections", "update")
        assert code == 0 and "0 placement(s) with new recoveries" in out, out
        code, out = arsync("collections", "recovered", "--invoice", "I1", "--amount", "50.00")
        assert code == 0 and "250.00 USD of 500.00 USD recovered (placed)" in out, out
        fees = {key: jsonwire.loads(row.payload)["amount"] for key, row in entries(sessions).items() if "fee" in key}
        assert fees == {
            fee_key(TENANT, CONN, "I1", "upfront"): Decimal("5.00"),
            fee_key(TENANT, CONN, "I1", "success:1"): Decimal("50.00"),
            fee_key(TENANT, CONN, "I1", "success:2"): Decimal("12.50"),
        }
        engine.dispose()
    finally:
        real.stop()
