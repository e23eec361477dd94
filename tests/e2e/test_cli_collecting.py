"""Collecting from the command line, against localstripe: enrol, plan, charge, retry, 3-D Secure, batch, refund.

Each test runs the real ``arsync`` commands (typer's ``CliRunner``, in process, as
``tests/e2e/test_cli.py`` does) on a config whose tenant ``acme`` takes payments through
its own localstripe (started per test by :mod:`connectors.stripe.sandbox`, so its event feed
holds only this test's events), with a SQLite ledger made by ``arsync db upgrade``.
Customers and invoices are put in the ledger with :mod:`tests.collecting`; each customer
gets a real localstripe customer and saved card by enrolling through the CLI, the
customer's side of the hosted Checkout page being played by the test route of
:mod:`connectors.stripe.sandbox`.

What the commands did is read back over HTTP from localstripe (PaymentIntents, refunds,
Checkout Sessions) and from the ledger's tables (``saved_payment_method``,
``processor_payment``, ``hosted_link``, ``journal``).

The CLI runs on the real clock. The plan's day is pinned with ``--date``; a retry's
``not_before`` is the real time of the decline plus ``retry_days``, so the retry test
moves that journal row's ``next_attempt_at`` in the database to make it due now.

The last tests check the Checkout emulation itself against Stripe's spec and fixtures.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests
import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker
from sqlmodel import col
from typer.testing import CliRunner

from arsync.cli import app
from connectors import jsonwire
from connectors.stripe.sandbox import (
    ADDED_PARAMETERS,
    API_KEY,
    CHECKOUT_METHOD_TYPES,
    CHECKOUT_MODES,
    CHECKOUT_SESSION,
    CHECKOUT_SESSIONS,
    TEST_ROUTES,
    start_localstripe,
)
from connectors.stripe.sandbox import StripeSandbox as LocalStripe
from sync.db import make_engine
from sync.models import (
    Customer,
    CustomerContact,
    HostedLinkRow,
    JournalEntry,
    ProcessorLink,
    ProcessorPayment,
    ProcessorRefund,
    SavedPaymentMethod,
)
from tests import collecting as L
from tests.refdata import require_refdata
from tests.stripe_spec import load_spec, parameter_problems

VISA = "4242424242424242"
DECLINED_ON_CHARGE = "4000000000000341"
"""Attaches (so it can be saved), then every charge is declined: ``card_declined``."""
THREE_D_SECURE = "4000002760003184"
"""Authentication required on every charge (the customer authenticates on a hosted page)."""
DECLINED_ON_ATTACH = "4000000000000002"

DAY = date(2026, 12, 1)
"""The plan's day: the due date of :func:`tests.collecting.invoice`'s invoices (issued 2026-11-01)."""
KEY_ENV = "ARSYNC_TEST_STRIPE_KEY"
QBO_ENV = {"ARSYNC_TEST_QBO_ID": "qbo-client", "ARSYNC_TEST_QBO_SECRET": "qbo-secret"}

runner = CliRunner()
T = TypeVar("T")


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


class LocalStripeHttp:
    """Reading localstripe back over HTTP with the secret key, and the customer's side of a hosted page."""

    def __init__(self, server: LocalStripe) -> None:
        self.server = server
        self.auth = {"Authorization": f"Bearer {API_KEY}"}

    def get(self, path: str, **params: Any) -> dict[str, Any]:
        answer = requests.get(self.server.url(path), headers=self.auth, params=params, timeout=10)
        assert answer.status_code == 200, answer.text
        result: dict[str, Any] = answer.json()
        return result

    def post(self, path: str, data: dict[str, str]) -> requests.Response:
        return requests.post(self.server.url(path), headers=self.auth, data=data, timeout=10)

    def card(self, number: str) -> str:
        """A new card PaymentMethod (what the customer types into the page)."""
        answer = self.post(
            "/v1/payment_methods",
            {
                "type": "card",
                "card[number]": number,
                "card[exp_month]": "12",
                "card[exp_year]": "2034",
                "card[cvc]": "123",
            },
        )
        assert answer.status_code == 200, answer.text
        return str(answer.json()["id"])

    def complete(self, url: str, payment_method: str) -> requests.Response:
        """The customer completes the hosted page at ``url`` (no API key: a customer has none)."""
        return requests.post(f"{url}/complete", data={"payment_method": payment_method}, timeout=10)

    def payment_intents(self, customer: str | None = None) -> list[dict[str, Any]]:
        """Newest first; every PaymentIntent, or the customer's."""
        params: dict[str, Any] = {"limit": 100}
        if customer is not None:
            params["customer"] = customer
        listing = self.get("/v1/payment_intents", **params)
        assert not listing["has_more"]
        return list(listing["data"])

    def refunds(self, payment_intent: str) -> list[dict[str, Any]]:
        listing = self.get("/v1/refunds", payment_intent=payment_intent, limit=100)
        return list(listing["data"])


def write_config(folder: Path, server: LocalStripe, *, surcharge: bool = False) -> Path:
    """Tenant ``acme`` (QuickBooks connection ``acme-qbo``, never contacted here) takes payments at ``server``;
    tenant ``bare`` takes none. One rule: charge cards from the due date. ``retry_days`` is left at its default."""
    qbo = (
        'kind = "quickbooks"\nenvironment = "sandbox"\nredirect_uri = "http://127.0.0.1:8765/callback"\n'
        'client_id_env = "ARSYNC_TEST_QBO_ID"\nclient_secret_env = "ARSYNC_TEST_QBO_SECRET"\n'
    )
    text = f"""[database]
url = "sqlite:///{folder / "ledger.db"}"

[tenants.acme]
display_name = "Acme Plumbing"
timezone = "America/Los_Angeles"
home_currency = "USD"

[tenants.acme.connections.acme-qbo]
{qbo}
[tenants.acme.payments]
api_key_env = "{KEY_ENV}"
base_url = "{server.base_url}"
success_url = "https://acme.example.com/thanks"
cancel_url = "https://acme.example.com/billing"

[[tenants.acme.payments.rules]]
name = "cards-when-due"
on_due_date = true
method_types = ["card"]

[tenants.bare]
display_name = "Bare Ltd"
timezone = "UTC"
home_currency = "USD"

[tenants.bare.connections.bare-qbo]
{qbo}"""
    if surcharge:
        text += '\n[tenants.acme.payments.surcharge]\npercent = "2.9"\nfixed = "0.30"\nmax_percent = "3"\n'
    path = folder / "arsync.toml"
    path.write_text(text)
    return path


class Ledger:
    """One test's world: its config, its localstripe, its SQLite ledger, and the CLI."""

    def __init__(self, config: Path, stripe: LocalStripeHttp) -> None:
        self.config = config
        self.stripe = stripe
        self.engine = make_engine(f"sqlite:///{config.parent / 'ledger.db'}")
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    def arsync(self, *args: str) -> Run:
        result = runner.invoke(app, [*args, "--config", str(self.config)], env={"COLUMNS": "300"})
        return Run(result.exit_code, result.stdout, result.stderr)

    def customer(self, external_id: str) -> None:
        with self.sessions.begin() as s:
            row = Customer(
                connection_id=L.CONN, external_id=external_id, name=f"Customer {external_id}", synced_at=L.SYNCED
            )
            s.add(row)
            s.flush()
            assert row.id is not None
            s.add(CustomerContact(customer_id=row.id, email=f"{external_id.lower()}@example.com"))

    def invoice(self, external_id: str, customer: str, balance: str, **kwargs: Any) -> None:
        with self.sessions.begin() as s:
            L.invoice(s, external_id, customer, balance, **kwargs)

    def rows(self, model: type[T], *where: Any) -> list[T]:
        with self.sessions() as s:
            return list(s.execute(sa.select(model).where(*where)).scalars())

    def journal(self) -> list[JournalEntry]:
        with self.sessions() as s:
            return list(s.execute(sa.select(JournalEntry).order_by(col(JournalEntry.id))).scalars())

    def processor_customer(self, customer: str) -> str:
        with self.sessions() as s:
            link = s.get(ProcessorLink, (L.CONN, customer))
            assert link is not None, f"{customer} has no processor customer"
            return link.processor_customer_id

    def enrol(self, customer: str, card: str = VISA) -> SavedPaymentMethod:
        """``arsync autopay enroll``, the customer saves ``card`` on the hosted page, ``arsync payments follow``."""
        run = self.arsync("autopay", "enroll", "--customer", customer)
        assert run.code == 0, run.text
        url = url_in(run.out)
        pm = self.stripe.card(card)
        done = self.stripe.complete(url, pm)
        assert done.status_code == 200, done.text
        run = self.arsync("payments", "follow")
        assert run.code == 0, run.text
        [saved] = self.rows(SavedPaymentMethod, col(SavedPaymentMethod.payment_method_id) == pm)
        return saved

    def make_due_now(self, key: str) -> None:
        """Move a journal entry's ``next_attempt_at`` to now. The CLI runs on the real clock, so a retry
        journaled for tomorrow is not due in this test otherwise: editing the row stands in for the day passing."""
        with self.sessions.begin() as s:
            moved = s.execute(
                sa.update(JournalEntry)
                .where(col(JournalEntry.key) == key, col(JournalEntry.status) == "pending")
                .values(next_attempt_at=datetime.now(UTC) - timedelta(seconds=1))
            )
            assert getattr(moved, "rowcount", 0) == 1


def url_in(output: str) -> str:
    [url] = [line.strip() for line in output.splitlines() if line.strip().startswith("http")]
    return url


@pytest.fixture
def localstripe(tmp_path: Path) -> Iterator[LocalStripe]:
    server = start_localstripe(tmp_path / "localstripe.log")
    try:
        yield server
    finally:
        server.stop()


def make_ledger(tmp_path: Path, server: LocalStripe, monkeypatch: pytest.MonkeyPatch, **options: Any) -> Ledger:
    monkeypatch.setenv(KEY_ENV, API_KEY)
    for name, value in QBO_ENV.items():
        monkeypatch.setenv(name, value)
    ledger = Ledger(write_config(tmp_path, server, **options), LocalStripeHttp(server))
    run = ledger.arsync("db", "upgrade")
    assert run.code == 0, run.text
    run = ledger.arsync("charge", "plan", "--date", DAY.isoformat())  # also registers the tenants and connections
    assert run.code == 0, run.text
    assert "0 to charge of 0 open invoices" in run.out
    return ledger


@pytest.fixture
def ledger(tmp_path: Path, localstripe: LocalStripe, monkeypatch: pytest.MonkeyPatch) -> Iterator[Ledger]:
    made = make_ledger(tmp_path, localstripe, monkeypatch)
    yield made
    made.engine.dispose()


def plan_json(ledger: Ledger, day: date = DAY) -> dict[str, Any]:
    run = ledger.arsync("charge", "plan", "--date", day.isoformat(), "--format", "json")
    assert run.code == 0, run.text
    document: dict[str, Any] = json.loads(run.out)
    return document


def charge_key(invoice: str, part: str = f"auto-{DAY.isoformat()}", attempt: int = 1) -> str:
    return f"charge:acme:acme-qbo:{invoice}:{part}:{attempt}"


# --- enrolment -------------------------------------------------------------------------------


def test_enroll_prints_a_checkout_link_and_follow_records_the_saved_card(ledger: Ledger) -> None:
    ledger.customer("C1")

    run = ledger.arsync("autopay", "enroll", "--customer", "C1")

    assert run.code == 0, run.text
    assert "Send this link to the customer (valid until" in run.out
    url = url_in(run.out)
    session_id = url.rsplit("/", 1)[1]
    assert url == ledger.stripe.server.url(f"/_test/checkout/sessions/{session_id}")
    assert requests.get(url, timeout=10).status_code == 200  # the page answers without an API key
    customer = ledger.processor_customer("C1")
    stored_customer = ledger.stripe.get(f"/v1/customers/{customer}")
    assert (stored_customer["name"], stored_customer["email"], stored_customer["metadata"]) == (
        "Customer C1",
        "c1@example.com",
        {"arsync_customer": "acme-qbo:C1"},
    )
    [link] = ledger.rows(HostedLinkRow)
    assert (link.mode, link.processor_id, link.url, link.customer_external_id, link.completed_at) == (
        "setup",
        session_id,
        url,
        "C1",
        None,
    )
    session = ledger.stripe.get(f"/v1/checkout/sessions/{session_id}")
    assert (session["object"], session["mode"], session["status"], session["customer"]) == (
        "checkout.session",
        "setup",
        "open",
        customer,
    )
    assert session["metadata"] == {"arsync_customer": "acme-qbo:C1", "arsync_key": link.key}
    assert link.expires_at == datetime.fromtimestamp(session["expires_at"], UTC)
    assert session["expires_at"] - session["created"] == 24 * 3600
    setup_intent = ledger.stripe.get(f"/v1/setup_intents/{session['setup_intent']}")
    assert (setup_intent["customer"], setup_intent["usage"], setup_intent["status"]) == (
        customer,
        "off_session",
        "requires_payment_method",
    )
    assert setup_intent["metadata"] == session["metadata"]

    # Nothing is saved before the customer completes the page.
    run = ledger.arsync("payments", "follow")
    assert run.code == 0 and "0 enrolment(s) completed" in run.out, run.text
    assert ledger.rows(SavedPaymentMethod) == []

    refused = ledger.stripe.complete(url, ledger.stripe.card(DECLINED_ON_ATTACH))
    assert refused.status_code == 402 and "declined" in refused.text
    assert ledger.stripe.get(f"/v1/checkout/sessions/{session_id}")["status"] == "open"  # the customer may try again
    pm = ledger.stripe.card(VISA)
    assert ledger.stripe.complete(url, pm).status_code == 200

    run = ledger.arsync("payments", "follow")

    assert run.code == 0, run.text
    assert "enrolment 1" in run.out  # from the checkout.session.completed event
    [saved] = ledger.rows(SavedPaymentMethod)
    setup_intent = ledger.stripe.get(f"/v1/setup_intents/{session['setup_intent']}")
    assert setup_intent["status"] == "succeeded" and setup_intent["payment_method"] == pm
    enrolled_at = datetime.fromtimestamp(setup_intent["created"], UTC)
    assert (
        saved.connection_id,
        saved.customer_external_id,
        saved.processor_customer_id,
        saved.payment_method_id,
        saved.kind,
        saved.brand,
        saved.last4,
        saved.funding,
        saved.scope,
        saved.enrolled_at,
        saved.link_id,
        saved.active,
    ) == (
        "acme-qbo",
        "C1",
        customer,
        pm,
        "card",
        "visa",
        "4242",
        "credit",
        "off_session",
        enrolled_at,
        session_id,
        True,
    )
    [link] = ledger.rows(HostedLinkRow)
    assert link.completed_at == enrolled_at
    methods = ledger.stripe.get("/v1/payment_methods", customer=customer, type="card")["data"]
    assert [m["id"] for m in methods] == [pm]  # Checkout attached the card to the customer
    assert ledger.stripe.get(f"/v1/checkout/sessions/{session_id}")["status"] == "complete"

    run = ledger.arsync("payments", "follow")
    assert run.code == 0 and run.out.startswith("0 event(s) applied"), run.text
    assert len(ledger.rows(SavedPaymentMethod)) == 1


# --- plan and run ------------------------------------------------------------------------------


def three_invoices(ledger: Ledger) -> tuple[SavedPaymentMethod, SavedPaymentMethod]:
    """C1 owes two invoices due on DAY, C2 one due later; C3 is not enrolled."""
    for name in ("C1", "C2", "C3"):
        ledger.customer(name)
    first, second = ledger.enrol("C1"), ledger.enrol("C2")
    ledger.invoice("I1", "C1", "120.00")
    ledger.invoice("I2", "C1", "30.50", issued=date(2026, 11, 5))
    ledger.invoice("I3", "C2", "75.25", due=date(2026, 12, 15))
    ledger.invoice("I4", "C3", "10.00")
    return first, second


def test_plan_lists_what_the_rule_picks_and_writes_nothing(ledger: Ledger) -> None:
    c1, _ = three_invoices(ledger)
    journal_before = ledger.journal()

    run = ledger.arsync("charge", "plan", "--date", DAY.isoformat())

    assert run.code == 0, run.text
    lines = {
        line.split("│")[1].strip(): [cell.strip() for cell in line.split("│")[1:-1]]
        for line in run.out.splitlines()
        if "acme-qbo:INV-" in line
    }
    assert sorted(lines) == ["acme-qbo:INV-I1", "acme-qbo:INV-I2"]
    assert lines["acme-qbo:INV-I1"][:8] == ["acme-qbo:INV-I1", "C1", "USD", "120.00", "-", "120.00", "-", "card"]
    assert lines["acme-qbo:INV-I2"][5] == "30.50"
    assert "USD: charge 150.50 USD, surcharges 0.00 USD, credits applied 0.00 USD" in run.out
    assert "2 to charge of 3 open invoices of enrolled customers" in run.out
    assert "not charged (1): no auto-pay rule matches today" in run.out

    document = plan_json(ledger)
    assert (document["tenant"], document["date"], document["mode"], document["examined"]) == (
        "acme",
        DAY.isoformat(),
        "auto",
        3,
    )
    assert [
        (c["key"], c["invoice"], c["customer"], c["charge"], c["surcharge"], c["total"]) for c in document["charges"]
    ] == [
        (charge_key("I1"), "I1", "C1", "120.00", "0", "120.00"),
        (charge_key("I2"), "I2", "C1", "30.50", "0", "30.50"),
    ]
    assert {c["method"] for c in document["charges"]} == {f"card {c1.payment_method_id}"}
    assert {c["why"] for c in document["charges"]} == {"rule 'cards-when-due': on the due date, method card"}
    assert document["skipped"] == {"no auto-pay rule matches today": 1}
    assert document["totals"] == {"USD": {"charge": "150.50", "surcharge": "0", "credits": "0"}}
    # The day before the due date, nothing.
    assert plan_json(ledger, DAY - timedelta(days=1))["charges"] == []

    assert ledger.journal() == journal_before == []
    assert ledger.rows(ProcessorPayment) == []
    assert ledger.stripe.payment_intents() == []


def test_run_charges_once_and_a_second_run_charges_nothing(ledger: Ledger) -> None:
    c1, c2 = three_invoices(ledger)
    customer = c1.processor_customer_id

    run = ledger.arsync("charge", "run", "--date", DAY.isoformat())

    assert run.code == 0, run.text
    assert "2 charge(s) journaled; outcomes: {'succeeded': 2}" in run.out
    intents = {pi["metadata"]["arsync_key"]: pi for pi in ledger.stripe.payment_intents()}
    assert sorted(intents) == [charge_key("I1"), charge_key("I2")]
    for invoice, amount in (("I1", 12000), ("I2", 3050)):
        pi = intents[charge_key(invoice)]
        assert (pi["amount"], pi["currency"], pi["customer"], pi["payment_method"], pi["status"]) == (
            amount,
            "usd",
            customer,
            c1.payment_method_id,
            "succeeded",
        )
        assert pi["metadata"] == {
            "arsync_key": charge_key(invoice),
            "arsync_invoice": invoice,
            "arsync_connection": "acme-qbo",
            "arsync_customer": "C1",
        }
    payments = {p.key: p for p in ledger.rows(ProcessorPayment)}
    assert {
        k: (p.processor_id, p.state, p.amount, p.surcharge, p.invoice_external_id) for k, p in payments.items()
    } == {
        charge_key("I1"): (intents[charge_key("I1")]["id"], "succeeded", Decimal("120.00"), Decimal(0), "I1"),
        charge_key("I2"): (intents[charge_key("I2")]["id"], "succeeded", Decimal("30.50"), Decimal(0), "I2"),
    }
    assert [(e.key, e.status, e.external_id) for e in ledger.journal()] == [
        (charge_key("I1"), "done", intents[charge_key("I1")]["id"]),
        (charge_key("I2"), "done", intents[charge_key("I2")]["id"]),
    ]

    again = ledger.arsync("charge", "run", "--date", DAY.isoformat())
    later = ledger.arsync("charge", "run", "--date", (DAY + timedelta(days=1)).isoformat())

    for run in (again, later):
        assert run.code == 0, run.text
        assert "0 charge(s) journaled; outcomes: none" in run.out
        assert "not charged (2): already charged: payment on its way to the ledger" in run.out
    assert len(ledger.stripe.payment_intents()) == 2
    assert ledger.stripe.payment_intents(c2.processor_customer_id) == []
    assert len(ledger.journal()) == 2


def test_a_surcharge_is_added_to_the_payment_intent(
    tmp_path: Path, localstripe: LocalStripe, monkeypatch: pytest.MonkeyPatch
) -> None:
    """2.9% + 0.30, capped at 3%: 100.00 pays 3.00 (the cap, not 3.20); 500.00 pays 14.80 (under the cap of 15.00)."""
    ledger = make_ledger(tmp_path, localstripe, monkeypatch, surcharge=True)
    try:
        ledger.customer("C1")
        saved = ledger.enrol("C1")
        ledger.invoice("I1", "C1", "100.00")
        ledger.invoice("I2", "C1", "500.00", issued=date(2026, 11, 2))

        planned = plan_json(ledger)["charges"]
        assert [(c["charge"], c["surcharge"], c["total"]) for c in planned] == [
            ("100.00", "3.00", "103.00"),
            ("500.00", "14.80", "514.80"),
        ]
        run = ledger.arsync("charge", "run", "--date", DAY.isoformat())

        assert run.code == 0, run.text
        intents = {
            pi["metadata"]["arsync_key"]: pi for pi in ledger.stripe.payment_intents(saved.processor_customer_id)
        }
        assert {k: (pi["amount"], pi["metadata"]["arsync_surcharge"]) for k, pi in intents.items()} == {
            charge_key("I1"): (10300, "3.00"),
            charge_key("I2"): (51480, "14.80"),
        }
        assert intents[charge_key("I1")]["description"] == "Invoice I1: 100.00 USD + card surcharge 3.00 USD"
        payments = {p.key: (p.amount, p.surcharge, p.state) for p in ledger.rows(ProcessorPayment)}
        assert payments == {
            charge_key("I1"): (Decimal("100.00"), Decimal("3.00"), "succeeded"),
            charge_key("I2"): (Decimal("500.00"), Decimal("14.80"), "succeeded"),
        }
    finally:
        ledger.engine.dispose()


# --- declines and 3-D Secure ---------------------------------------------------------------------


def test_a_soft_decline_is_tried_again_the_next_day(ledger: Ledger) -> None:
    ledger.customer("C2")
    saved = ledger.enrol("C2", DECLINED_ON_CHARGE)
    ledger.invoice("I7", "C2", "20.00")
    customer = saved.processor_customer_id

    before = datetime.now(UTC)
    run = ledger.arsync("charge", "run", "--date", DAY.isoformat())
    after = datetime.now(UTC)

    assert run.code == 1, run.text
    first, retry = ledger.journal()
    assert (first.key, first.status, first.error) == (charge_key("I7"), "failed", "soft decline: card_declined")
    payload = jsonwire.loads(retry.payload)
    declined_at = datetime.fromisoformat(payload["first_declined_at"])
    assert before <= declined_at <= after
    assert (retry.key, retry.status, payload["attempt"], payload["amount"]) == (
        charge_key("I7", attempt=2),
        "pending",
        2,
        Decimal("20.00"),
    )
    assert retry.next_attempt_at == declined_at + timedelta(days=1)  # retry_days defaults to [1, 3, 7]
    assert (
        f"{charge_key('I7')}: soft decline: card_declined; next attempt {declined_at + timedelta(days=1):%Y-%m-%d}"
        in run.err
    )
    [pi] = ledger.stripe.payment_intents(customer)
    assert (pi["amount"], pi["status"], pi["metadata"]["arsync_key"]) == (
        2000,
        "requires_payment_method",
        charge_key("I7"),
    )
    [payment] = ledger.rows(ProcessorPayment)
    assert (payment.key, payment.processor_id, payment.state, payment.decline_code) == (
        charge_key("I7"),
        pi["id"],
        "soft_decline",
        "card_declined",
    )

    # The next day's plan leaves it to the retry; the retry is not due until a day after the decline.
    tomorrow = (DAY + timedelta(days=1)).isoformat()
    run = ledger.arsync("charge", "run", "--date", tomorrow)
    assert run.code == 0, run.text
    assert "last charge soft_decline on this method" in run.out
    assert len(ledger.stripe.payment_intents(customer)) == 1

    ledger.make_due_now(charge_key("I7", attempt=2))
    run = ledger.arsync("charge", "run", "--date", tomorrow)

    assert run.code == 1, run.text
    assert f"{charge_key('I7', attempt=2)}: soft decline: card_declined" in run.err
    second, first_again = ledger.stripe.payment_intents(customer)
    assert first_again["id"] == pi["id"]
    assert (second["amount"], second["customer"], second["metadata"]["arsync_key"]) == (
        2000,
        customer,
        charge_key("I7", attempt=2),
    )
    entries = {e.key: e for e in ledger.journal()}
    assert entries[charge_key("I7", attempt=2)].status == "failed"
    third = entries[charge_key("I7", attempt=3)]
    assert (third.status, third.next_attempt_at) == ("pending", declined_at + timedelta(days=3))


def test_three_d_secure_ends_with_a_payment_link(ledger: Ledger) -> None:
    ledger.customer("C5")
    saved = ledger.enrol("C5", THREE_D_SECURE)  # the customer authenticated while saving it
    ledger.invoice("I5", "C5", "99.99")
    customer = saved.processor_customer_id

    run = ledger.arsync("charge", "run", "--date", DAY.isoformat())

    assert run.code == 1, run.text
    [pi] = ledger.stripe.payment_intents(customer)
    assert (pi["amount"], pi["status"], pi["metadata"]["arsync_key"]) == (9999, "requires_action", charge_key("I5"))
    [link] = ledger.rows(HostedLinkRow, col(HostedLinkRow.mode) == "payment")
    assert (link.key, link.customer_external_id, link.invoice_external_id, link.amount, link.currency) == (
        f"paylink:{charge_key('I5')}",
        "C5",
        "I5",
        Decimal("99.99"),
        "USD",
    )
    assert f"requires action: the customer must authenticate; payment link {link.url}" in run.err
    [notice] = [e for e in ledger.journal() if e.kind == "notify"]  # dunning's sender sends it
    assert (notice.key, notice.status) == (f"notify:paylink:{charge_key('I5')}", "pending")
    assert jsonwire.loads(notice.payload)["url"] == link.url
    session = ledger.stripe.get(f"/v1/checkout/sessions/{link.processor_id}")
    assert (
        session["mode"],
        session["status"],
        session["payment_status"],
        session["amount_total"],
        session["currency"],
        session["customer"],
        session["payment_intent"],
    ) == ("payment", "open", "unpaid", 9999, "usd", customer, None)
    assert session["metadata"] == {"arsync_key": link.key, "arsync_invoice": "I5", "arsync_connection": "acme-qbo"}
    assert session["url"] == link.url

    # The customer pays through the link, authenticating on the page; the event feed brings the payment in.
    paid = ledger.stripe.complete(link.url, saved.payment_method_id)
    assert paid.status_code == 200, paid.text
    run = ledger.arsync("payments", "follow")
    assert run.code == 0, run.text

    session = ledger.stripe.get(f"/v1/checkout/sessions/{link.processor_id}", **{"expand[0]": "payment_intent"})
    paid_pi = session["payment_intent"]
    assert (session["status"], session["payment_status"]) == ("complete", "paid")
    assert (paid_pi["amount"], paid_pi["status"], paid_pi["customer"], paid_pi["metadata"]) == (
        9999,
        "succeeded",
        customer,
        {"arsync_key": link.key, "arsync_invoice": "I5", "arsync_connection": "acme-qbo"},
    )
    [by_link] = ledger.rows(ProcessorPayment, col(ProcessorPayment.key) == link.key)
    assert (by_link.processor_id, by_link.invoice_external_id, by_link.state, by_link.amount) == (
        paid_pi["id"],
        "I5",
        "succeeded",
        Decimal("99.99"),
    )
    document = plan_json(ledger, DAY + timedelta(days=1))
    assert (document["examined"], document["charges"]) == (1, [])


def test_a_surcharged_charge_needing_3ds_gets_a_link_for_the_invoice_part_only(
    tmp_path: Path, localstripe: LocalStripe, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = make_ledger(tmp_path, localstripe, monkeypatch, surcharge=True)
    try:
        ledger.customer("C5")
        saved = ledger.enrol("C5", THREE_D_SECURE)
        ledger.invoice("I5", "C5", "100.00")
        assert ledger.arsync("charge", "run", "--date", DAY.isoformat()).code == 1
        [declined] = ledger.rows(ProcessorPayment)
        assert (declined.state, declined.amount, declined.surcharge) == (
            "requires_action",
            Decimal("100.00"),
            Decimal("3.00"),
        )
        # The customer may pay on the page by bank debit, which is never surcharged: the link asks for the invoice.
        [link] = ledger.rows(HostedLinkRow, col(HostedLinkRow.mode) == "payment")
        assert link.amount == Decimal("100.00")
        assert ledger.stripe.complete(link.url, saved.payment_method_id).status_code == 200
        assert ledger.arsync("payments", "follow").code == 0

        [by_link] = ledger.rows(ProcessorPayment, col(ProcessorPayment.key) == link.key)
        assert (by_link.state, by_link.amount, by_link.surcharge) == ("succeeded", Decimal("100.00"), Decimal(0))
        assert (by_link.invoice_external_id, by_link.connection_id) == ("I5", "acme-qbo")
    finally:
        ledger.engine.dispose()


# --- the vendor's batch ------------------------------------------------------------------------------


def test_batch_charges_a_partial_amount_of_one_invoice(ledger: Ledger) -> None:
    ledger.customer("C1")
    saved = ledger.enrol("C1")
    ledger.invoice("I1", "C1", "40.00", due=date(2027, 1, 31))  # no rule picks it: the vendor asks
    ledger.invoice("I2", "C1", "15.00", due=date(2027, 1, 31))

    run = ledger.arsync("charge", "batch", "--invoice", "INV-I1", "--amount", "10.00")

    assert run.code == 0, run.text
    [entry] = ledger.journal()
    assert re.fullmatch(r"charge:acme:acme-qbo:I1:batch-\d{4}-\d{2}-\d{2}:1", entry.key), entry.key
    [pi] = ledger.stripe.payment_intents(saved.processor_customer_id)
    assert (pi["amount"], pi["status"], pi["customer"], pi["metadata"]["arsync_key"]) == (
        1000,
        "succeeded",
        saved.processor_customer_id,
        entry.key,
    )
    [payment] = ledger.rows(ProcessorPayment)
    assert (payment.amount, payment.invoice_external_id, payment.processor_id) == (Decimal("10.00"), "I1", pi["id"])

    refused = ledger.arsync("charge", "batch", "--invoice", "I1", "--invoice", "I2", "--amount", "10.00")
    assert refused.code == 2, refused.text
    assert "--amount needs exactly one --invoice and no --customer" in refused.err
    too_much = ledger.arsync("charge", "batch", "--invoice", "I1", "--amount", "30.01")
    assert too_much.code == 0, too_much.text
    assert "amount asked exceeds what is owed (30.00 USD)" in too_much.out
    assert len(ledger.stripe.payment_intents()) == 1
    assert len(ledger.journal()) == 1


# --- refunds ---------------------------------------------------------------------------------------


def test_refunds_are_made_once_each_and_never_more_than_was_paid(ledger: Ledger) -> None:
    ledger.customer("C1")
    ledger.enrol("C1")
    ledger.invoice("I1", "C1", "12.00")
    assert ledger.arsync("charge", "run", "--date", DAY.isoformat()).code == 0
    [payment] = ledger.rows(ProcessorPayment)
    pi = payment.processor_id
    assert pi is not None and pi.startswith("pi_")

    first = ledger.arsync("refund", "--payment", pi, "--amount", "5.00")

    assert first.code == 0, first.text
    [refund] = ledger.stripe.refunds(pi)
    assert (refund["amount"], refund["status"], refund["metadata"]) == (
        500,
        "succeeded",
        {"arsync_key": f"refund:acme:{pi}:1"},
    )
    assert f"refund:acme:{pi}:1: done ({refund['id']})" in first.out

    second = ledger.arsync("refund", "--payment", pi, "--amount", "5.00")

    assert second.code == 0, second.text
    refunds = ledger.stripe.refunds(pi)
    assert [(r["amount"], r["metadata"]["arsync_key"]) for r in refunds] == [
        (500, f"refund:acme:{pi}:2"),
        (500, f"refund:acme:{pi}:1"),
    ]

    too_much = ledger.arsync("refund", "--payment", pi, "--amount", "5.00")

    assert too_much.code == 2, too_much.text
    assert "refund of 5.00 USD asked; 2.00 USD is left to refund" in too_much.err
    assert len(ledger.stripe.refunds(pi)) == 2

    rest = ledger.arsync("refund", "--payment", pi)
    assert rest.code == 0, rest.text
    assert ledger.stripe.refunds(pi)[0]["amount"] == 200
    nothing_left = ledger.arsync("refund", "--payment", pi)
    assert nothing_left.code == 2 and "0.00 USD is left to refund" in nothing_left.err
    assert sum(r["amount"] for r in ledger.stripe.refunds(pi)) == 1200
    assert sorted((r.key, r.amount) for r in ledger.rows(ProcessorRefund)) == [
        (f"refund:acme:{pi}:1", Decimal("5.00")),
        (f"refund:acme:{pi}:2", Decimal("5.00")),
        (f"refund:acme:{pi}:3", Decimal("2.00")),
    ]
    unknown = ledger.arsync("refund", "--payment", "pi_never_made")
    assert unknown.code == 2 and "payment 'pi_never_made' is not one arsync knows" in unknown.err


# --- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--tenant", "nope"), "no tenant named 'nope'; known tenants: acme, bare"),
        (("--date", "2026-13-01"), "--date '2026-13-01' is not a date (YYYY-MM-DD)"),
        (("--tenant", "bare"), "tenant 'bare' has no [tenants.bare.payments] section: it takes no payments"),
        (("--tenant", "bare", "--date", "2026-13-01"), "tenant 'bare' has no"),
        (("--format", "xml"), "--format 'xml': use table or json"),
    ],
)
def test_plan_errors_say_what_is_wrong(ledger: Ledger, args: tuple[str, ...], message: str) -> None:
    run = ledger.arsync("charge", "plan", *args)
    assert run.code == 2, run.text
    assert message in " ".join(run.err.split()), run.err
    assert run.out == ""


# --- the Checkout emulation itself ------------------------------------------------------------------


def test_the_checkout_emulation_takes_only_values_in_stripes_spec() -> None:
    spec = load_spec()
    values = [("mode", mode) for mode in CHECKOUT_MODES]
    values += [(f"payment_method_types[{n}]", kind) for n, kind in enumerate(CHECKOUT_METHOD_TYPES)]
    assert parameter_problems(spec, "post", CHECKOUT_SESSIONS, values) == []
    assert ("post", CHECKOUT_SESSIONS) in ADDED_PARAMETERS and ("get", CHECKOUT_SESSION) in ADDED_PARAMETERS
    for method, path in TEST_ROUTES:
        assert not path.startswith("/v1/") and path not in spec["paths"], (method, path)


def test_a_checkout_session_has_stripes_shape(localstripe: LocalStripe) -> None:
    """Every field the emulation answers is a field of Stripe's example ``checkout.session``, of the same JSON type."""
    example = json.loads(require_refdata("stripe", "fixtures3.json").read_text(encoding="utf-8"))["resources"][
        "checkout.session"
    ]
    stripe = LocalStripeHttp(localstripe)
    customer = stripe.post("/v1/customers", {"name": "Shape Ltd"}).json()["id"]
    common = {"customer": customer, "success_url": "https://x.test/ok", "cancel_url": "https://x.test/no"}
    setup = stripe.post(CHECKOUT_SESSIONS, {**common, "mode": "setup", "payment_method_types[0]": "card"}).json()
    payment = stripe.post(
        CHECKOUT_SESSIONS,
        {
            **common,
            "mode": "payment",
            "line_items[0][quantity]": "2",
            "line_items[0][price_data][currency]": "usd",
            "line_items[0][price_data][unit_amount]": "1250",
            "line_items[0][price_data][product_data][name]": "Invoice 7",
        },
    ).json()
    assert (payment["amount_total"], payment["currency"], payment["payment_method_types"]) == (2500, "usd", ["card"])
    for session in (setup, payment):
        assert set(session) <= set(example), set(session) - set(example)
        for field, value in session.items():
            if value is not None and example[field] is not None:
                assert type(value) is type(example[field]), field
        assert re.fullmatch(r"cs_test_[A-Za-z0-9]{58}", session["id"])


@pytest.mark.parametrize(
    ("form", "status", "message"),
    [
        ({"mode": "setup", "locale": "fr"}, 400, "Received unknown parameter: locale"),
        ({"mode": "setup", "payment_intent_data[metadata][k]": "v"}, 400, "`payment_intent_data` in `payment` mode"),
        ({"mode": "payment"}, 400, "Missing required param: line_items"),
        ({"mode": "subscription"}, 400, "Invalid mode"),
        ({"mode": "setup", "payment_method_types[0]": "ideal"}, 400, "Invalid payment_method_types"),
        ({"mode": "setup", "success_url": "ftp://x.test/"}, 400, "Invalid URL"),
        ({"mode": "setup", "customer": "cus_never_made"}, 404, "Not Found"),
    ],
)
def test_the_checkout_emulation_refuses_what_stripe_refuses(
    localstripe: LocalStripe, form: dict[str, str], status: int, message: str
) -> None:
    answer = LocalStripeHttp(localstripe).post(CHECKOUT_SESSIONS, {"success_url": "https://x.test/ok", **form})
    assert answer.status_code == status, answer.text
    assert message in answer.json()["error"]["message"]
    assert requests.post(localstripe.url(CHECKOUT_SESSIONS), data={"mode": "setup"}, timeout=10).status_code == 401


def test_a_declined_payment_leaves_the_session_open_and_a_completed_one_is_an_event(localstripe: LocalStripe) -> None:
    stripe = LocalStripeHttp(localstripe)
    customer = stripe.post("/v1/customers", {"name": "Pay Ltd"}).json()["id"]
    session = stripe.post(
        CHECKOUT_SESSIONS,
        {
            "customer": customer,
            "success_url": "https://x.test/ok",
            "mode": "payment",
            "line_items[0][quantity]": "1",
            "line_items[0][price_data][currency]": "eur",
            "line_items[0][price_data][unit_amount]": "4200",
            "line_items[0][price_data][product_data][name]": "Invoice 9",
            "payment_intent_data[metadata][arsync_key]": "paylink:9",
            "payment_intent_data[description]": "Invoice 9",
        },
    ).json()

    declined = stripe.complete(session["url"], stripe.card(DECLINED_ON_CHARGE))

    assert declined.status_code == 402, declined.text
    again = stripe.get(f"/v1/checkout/sessions/{session['id']}")
    assert (again["status"], again["payment_status"], again["payment_intent"]) == ("open", "unpaid", None)
    assert [e["type"] for e in stripe.get("/v1/events", type="checkout.session.completed")["data"]] == []

    paid = stripe.complete(session["url"], stripe.card(VISA))

    assert paid.status_code == 200, paid.text
    [event] = stripe.get("/v1/events", type="checkout.session.completed")["data"]
    assert event["data"]["object"]["id"] == session["id"] and event["data"]["object"]["status"] == "complete"
    pi = stripe.get(f"/v1/payment_intents/{event['data']['object']['payment_intent']}")
    assert (pi["amount"], pi["currency"], pi["customer"], pi["status"], pi["description"], pi["metadata"]) == (
        4200,
        "eur",
        customer,
        "succeeded",
        "Invoice 9",
        {"arsync_key": "paylink:9"},
    )
    assert stripe.complete(session["url"], stripe.card(VISA)).status_code == 400  # complete: no second payment
