"""The Stripe processor over HTTP: flows against localstripe, errors against canned Stripe answers.

* **localstripe** (a stateful Stripe emulator, started once for this module on a free
  port by :mod:`connectors.stripe.sandbox`): enrolment, charges, declines, 3-D Secure, a
  PaymentIntent left ``processing`` then failed (with its signed webhook), refunds,
  zero-decimal currencies, pagination. What it does with a repeated
  ``Idempotency-Key`` is recorded here, not assumed.
* **Canned answers** (a local HTTP server replying with bodies in the shape of
  Stripe's ``error`` object): hard declines with ``decline_code``, 3-D Secure
  refused off session, 5xx, 401, 409, 429, and exactly what the SDK sends
  (one request, our idempotency key, no retry).
* **A silent socket** (accepts, never answers) for a timeout.
"""

from __future__ import annotations

import json
import queue
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests
import stripe

from connectors.base import (
    Actor,
    ChargeOutcome,
    ChargeRequest,
    ChargeState,
    ChargeUpdate,
    Enrolment,
    EventKind,
    FatalError,
    LinkRequest,
    ProcessorEvent,
    RateLimitedError,
    RetriableError,
    SavedMethod,
)
from connectors.stripe import StripeProcessor
from connectors.stripe.sandbox import ADDED_PARAMETERS, API_KEY, start_localstripe
from connectors.stripe.sandbox import StripeSandbox as LocalStripe
from tests.stripe_spec import load_spec, operation, parameter_problems

VISA = "4242424242424242"
DECLINED_ON_CHARGE = "4000000000000341"
"""Attaches, then every charge is declined (localstripe: ``card_declined``, no decline code)."""
THREE_D_SECURE = "4000002760003184"
"""Authentication required on every charge."""
DECLINED_ON_ATTACH = "4000000000000002"
"""Refused when attached (and so when a SetupIntent is confirmed with it): ``card_declined``."""
IBAN_FAILS_LATER = "DE62370400440532013001"
"""SEPA debit that localstripe leaves ``processing``, then fails half a second later."""


# --- localstripe ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def localstripe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStripe]:
    server = start_localstripe(tmp_path_factory.mktemp("localstripe") / "localstripe.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def processor(localstripe: LocalStripe) -> StripeProcessor:
    return StripeProcessor(API_KEY, base_url=localstripe.base_url, timeout=10.0)


@pytest.fixture(scope="module")
def admin(localstripe: LocalStripe) -> stripe.StripeClient:
    """The SDK itself, for what the port does not do: card entry, and reading raw objects back."""
    return stripe.StripeClient(API_KEY, base_addresses={"api": localstripe.base_url}, max_network_retries=0)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@dataclass(frozen=True)
class Enrolled:
    customer: str
    method: str


def enrol(processor: StripeProcessor, admin: stripe.StripeClient, card: str = VISA) -> Enrolled:
    """What enrolment does: link our customer, save a card on it, make it the default."""
    ours = unique("cust")
    customer = processor.ensure_customer(ours, f"{ours}@example.com", "Acme Ltd")
    pm = admin.v1.payment_methods.create(
        params={"type": "card", "card": {"number": card, "exp_month": 12, "exp_year": 2034, "cvc": "123"}}
    )
    admin.v1.payment_methods.attach(pm.id, params={"customer": customer})
    admin.v1.customers.update(customer, params={"invoice_settings": {"default_payment_method": pm.id}})
    return Enrolled(customer, pm.id)


def request_for(
    enrolled: Enrolled, amount: str, currency: str = "USD", key: str | None = None, **extra: Any
) -> ChargeRequest:
    return ChargeRequest(
        key=key or unique("charge:acme:acme-qbo:130"),
        processor_customer_id=enrolled.customer,
        payment_method_id=enrolled.method,
        amount=Decimal(amount),
        currency=currency,
        description="Invoice 130",
        metadata={"arsync_invoice": "130", "arsync_connection": "acme-qbo"},
        **extra,
    )


def raw_intent(admin: stripe.StripeClient, pi_id: str | None) -> dict[str, Any]:
    assert pi_id is not None
    result: dict[str, Any] = admin.v1.payment_intents.retrieve(pi_id).to_dict()
    return result


def test_enrolment_links_one_customer_per_our_id(processor: StripeProcessor, admin: stripe.StripeClient) -> None:
    ours = unique("cust")
    email = f"{ours}@example.com"
    customer = processor.ensure_customer(ours, email, "Acme Ltd")
    assert processor.ensure_customer(ours, email, "Acme Ltd") == customer
    assert processor.ensure_customer(ours, None, None) == customer  # found without the email: every customer read
    # Another of our customers sharing the billing address is another Stripe customer.
    sibling = processor.ensure_customer(unique("cust"), email, "Acme Subsidiary")
    assert sibling != customer
    stored = admin.v1.customers.retrieve(customer).to_dict()
    assert (stored["email"], stored["name"], stored["metadata"]) == (email, "Acme Ltd", {"arsync_customer": ours})


def test_ensure_customer_reads_every_page(localstripe: LocalStripe) -> None:
    small_pages = StripeProcessor(API_KEY, base_url=localstripe.base_url, page_size=2)
    email = f"{unique('shared')}@example.com"
    ours = [unique("cust") for _ in range(5)]
    made = [small_pages.ensure_customer(o, email, None) for o in ours]
    assert len(set(made)) == 5
    assert [small_pages.ensure_customer(o, email, None) for o in ours] == made


def test_saved_methods_are_the_cards_and_bank_accounts(processor: StripeProcessor, admin: stripe.StripeClient) -> None:
    enrolled = enrol(processor, admin)
    second = admin.v1.payment_methods.create(
        params={"type": "card", "card": {"number": "5555555555554444", "exp_month": 1, "exp_year": 2031, "cvc": "321"}}
    )
    admin.v1.payment_methods.attach(second.id, params={"customer": enrolled.customer})
    sepa = admin.v1.payment_methods.create(
        params={"type": "sepa_debit", "sepa_debit": {"iban": "DE89370400440532013000"}}
    )
    admin.v1.payment_methods.attach(sepa.id, params={"customer": enrolled.customer})

    methods = processor.saved_methods(enrolled.customer)

    # localstripe calls every card a credit Visa; the last four digits are the card's own.
    assert sorted(methods, key=lambda m: m.last4 or "") == [
        SavedMethod(enrolled.customer, enrolled.method, "card", "visa", "4242", "credit"),
        SavedMethod(enrolled.customer, second.id, "card", "visa", "4444", "credit"),
    ]
    assert processor.saved_methods(processor.ensure_customer(unique("cust"), None, None)) == []


def test_a_successful_charge(processor: StripeProcessor, admin: stripe.StripeClient) -> None:
    enrolled = enrol(processor, admin)
    request = request_for(enrolled, "1234.56")

    outcome = processor.charge(request)

    assert outcome.state is ChargeState.SUCCEEDED
    assert (outcome.key, outcome.amount, outcome.currency) == (request.key, Decimal("1234.56"), "USD")
    stored = raw_intent(admin, outcome.processor_id)
    assert (stored["amount"], stored["currency"], stored["customer"]) == (123456, "usd", enrolled.customer)
    assert stored["metadata"] == {
        "arsync_key": request.key,
        "arsync_invoice": "130",
        "arsync_connection": "acme-qbo",
    }
    assert stored["description"] == "Invoice 130"
    assert processor.find_charge(request.key, enrolled.customer) == outcome
    assert processor.find_charge(unique("charge:never-made"), enrolled.customer) is None


def test_a_repeated_key_localstripe_charges_twice_and_find_charge_finds_the_first(
    processor: StripeProcessor, admin: stripe.StripeClient
) -> None:
    """Real Stripe answers a repeated Idempotency-Key with the first PaymentIntent; localstripe
    ignores the header and charges again. Exactly-once rests on the journal looking up the key
    (find_charge) before charging when an outcome is unknown."""
    enrolled = enrol(processor, admin)
    request = request_for(enrolled, "75.00")

    first = processor.charge(request)
    second = processor.charge(request)

    assert first.state is second.state is ChargeState.SUCCEEDED
    assert second.processor_id != first.processor_id, "localstripe now honours Idempotency-Key: update the docs"
    assert processor.find_charge(request.key, enrolled.customer) == first


def test_find_charge_reads_every_page(localstripe: LocalStripe, admin: stripe.StripeClient) -> None:
    small_pages = StripeProcessor(API_KEY, base_url=localstripe.base_url, page_size=2)
    enrolled = enrol(small_pages, admin)
    made = [small_pages.charge(request_for(enrolled, f"{n}.00")) for n in range(1, 6)]
    # Newest first, two a page: the first charge is on the third page.
    assert small_pages.find_charge(made[0].key, enrolled.customer) == made[0]
    assert small_pages.find_charge(made[4].key, enrolled.customer) == made[4]


def test_a_soft_decline(processor: StripeProcessor, admin: stripe.StripeClient) -> None:
    enrolled = enrol(processor, admin, DECLINED_ON_CHARGE)
    request = request_for(enrolled, "20.00")

    outcome = processor.charge(request)

    assert outcome.state is ChargeState.SOFT_DECLINE
    assert (outcome.decline_code, outcome.message) == ("card_declined", "Your card was declined.")
    assert (outcome.amount, outcome.currency) == (Decimal("20.00"), "USD")
    stored = raw_intent(admin, outcome.processor_id)
    assert stored["status"] == "requires_payment_method"
    assert stored["metadata"]["arsync_key"] == request.key
    assert processor.find_charge(request.key, enrolled.customer) == outcome


def test_three_d_secure_requires_action(processor: StripeProcessor, admin: stripe.StripeClient) -> None:
    enrolled = enrol(processor, admin, THREE_D_SECURE)
    request = request_for(enrolled, "99.99")

    outcome = processor.charge(request)

    assert outcome.state is ChargeState.REQUIRES_ACTION
    assert raw_intent(admin, outcome.processor_id)["status"] == "requires_action"
    assert processor.find_charge(request.key, enrolled.customer) == outcome


@dataclass
class WebhookInbox:
    url: str
    secret: str
    received: queue.Queue[tuple[bytes, str]] = field(default_factory=queue.Queue)


@pytest.fixture
def webhooks(localstripe: LocalStripe) -> Iterator[WebhookInbox]:
    """A local endpoint registered with localstripe for ``payment_intent.*`` events."""
    inbox: queue.Queue[tuple[bytes, str]] = queue.Queue()

    class Receive(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            inbox.put((body, self.headers.get("Stripe-Signature", "")))
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receive)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    box = WebhookInbox(f"http://127.0.0.1:{server.server_address[1]}/stripe", "whsec_arsync_test", inbox)
    answer = requests.post(
        localstripe.url(f"/_config/webhooks/{unique('hook')}"),
        json={"url": box.url, "secret": box.secret, "events": ["payment_intent.payment_failed"]},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    try:
        yield box
    finally:
        server.shutdown()
        server.server_close()


def test_processing_then_failed_later_comes_as_a_signed_event(
    processor: StripeProcessor, admin: stripe.StripeClient, webhooks: WebhookInbox
) -> None:
    """The asynchronous path (what ACH does for days): the charge answers ``processing``; the
    failure arrives later as an event, and find_charge then reports the decline."""
    enrolled = enrol(processor, admin)
    sepa = admin.v1.payment_methods.create(params={"type": "sepa_debit", "sepa_debit": {"iban": IBAN_FAILS_LATER}})
    admin.v1.payment_methods.attach(sepa.id, params={"customer": enrolled.customer})
    request = request_for(Enrolled(enrolled.customer, sepa.id), "310.00", "EUR")

    outcome = processor.charge(request)
    assert outcome.state is ChargeState.PROCESSING

    while True:  # events for other tests' intents may arrive too
        payload, signature = webhooks.received.get(timeout=30)
        event = json.loads(payload)
        if event["data"]["object"]["id"] == outcome.processor_id:
            break
    assert stripe.WebhookSignature.verify_header(payload.decode(), signature, webhooks.secret, tolerance=600)
    assert event["type"] == "payment_intent.payment_failed"
    assert event["data"]["object"]["metadata"]["arsync_key"] == request.key

    later = processor.find_charge(request.key, enrolled.customer)
    assert later == ChargeOutcome(
        request.key,
        ChargeState.SOFT_DECLINE,
        outcome.processor_id,
        Decimal("310.00"),
        "EUR",
        "card_declined",
        "Your card was declined.",
    )


def test_refunds_full_and_partial(processor: StripeProcessor, admin: stripe.StripeClient) -> None:
    enrolled = enrol(processor, admin)
    paid = processor.charge(request_for(enrolled, "50.00"))
    assert paid.processor_id is not None

    partial = processor.refund(paid.processor_id, Decimal("20.00"), unique("refund"))
    refund = admin.v1.refunds.retrieve(partial).to_dict()
    assert (refund["amount"], refund["currency"], refund["status"]) == (2000, "usd", "succeeded")
    assert refund["metadata"]["arsync_key"].startswith("refund-")
    charge_id = raw_intent(admin, paid.processor_id)["latest_charge"]["id"]
    assert admin.v1.charges.retrieve(charge_id).to_dict()["amount_refunded"] == 2000

    other = processor.charge(request_for(enrolled, "12.34"))
    assert other.processor_id is not None
    full = processor.refund(other.processor_id, None, unique("refund"))
    assert admin.v1.refunds.retrieve(full).to_dict()["amount"] == 1234

    with pytest.raises(ValueError, match="minor unit"):
        processor.refund(other.processor_id, Decimal("0.001"), unique("refund"))


def test_a_declined_charge_cannot_be_refunded(processor: StripeProcessor, admin: stripe.StripeClient) -> None:
    declined = processor.charge(request_for(enrol(processor, admin, DECLINED_ON_CHARGE), "5.00"))
    assert declined.processor_id is not None
    with pytest.raises(FatalError, match="Cannot refund a failed payment") as caught:
        processor.refund(declined.processor_id, None, unique("refund"))
    assert caught.value.actor is Actor.SYSTEM


def test_zero_decimal_currency(processor: StripeProcessor, admin: stripe.StripeClient) -> None:
    enrolled = enrol(processor, admin)
    request = request_for(enrolled, "1500", "JPY")

    outcome = processor.charge(request)

    assert (outcome.state, outcome.amount, outcome.currency) == (ChargeState.SUCCEEDED, Decimal("1500"), "JPY")
    assert raw_intent(admin, outcome.processor_id)["amount"] == 1500
    assert outcome.processor_id is not None
    refund = processor.refund(outcome.processor_id, Decimal("500"), unique("refund"))
    assert admin.v1.refunds.retrieve(refund).to_dict()["amount"] == 500

    fractional = request_for(enrolled, "1500.5", "JPY")
    with pytest.raises(ValueError, match="minor unit"):
        processor.charge(fractional)
    assert processor.find_charge(fractional.key, enrolled.customer) is None


def test_zero_fees_in_localstripe(processor: StripeProcessor, admin: stripe.StripeClient) -> None:
    """Recorded: localstripe's balance transactions have no fee. Fee and payout shapes are
    checked against Stripe's fixtures instead (tests/unit/test_stripe_mapping.py)."""
    outcome = processor.charge(request_for(enrol(processor, admin), "100.00"))
    charge = raw_intent(admin, outcome.processor_id)["latest_charge"]
    txn = admin.v1.balance_transactions.retrieve(charge["balance_transaction"]).to_dict()
    assert (txn["amount"], txn["fee"], txn["net"], txn["fee_details"]) == (10000, 0, 10000, [])


def test_a_wrong_key_is_a_config_error(localstripe: LocalStripe) -> None:
    wrong = StripeProcessor("rk_not_a_secret_key", base_url=localstripe.base_url)
    with pytest.raises(FatalError) as caught:
        wrong.ensure_customer(unique("cust"), None, None)
    assert caught.value.actor is Actor.CONFIG
    assert "rk_not_a_secret_key" not in str(caught.value)


def test_no_module_globals(processor: StripeProcessor) -> None:
    assert stripe.api_key is None
    assert API_KEY not in repr(processor)


def charge_event(events: list[ProcessorEvent], processor_id: str | None) -> tuple[int, ProcessorEvent]:
    """The position and the event of the charge update for ``processor_id`` (exactly one)."""
    found = [
        (i, e)
        for i, e in enumerate(events)
        if isinstance(e.subject, ChargeUpdate) and e.subject.processor_id == processor_id
    ]
    assert len(found) == 1, found
    return found[0]


def test_events_come_oldest_first_and_from_a_cursor(
    processor: StripeProcessor, admin: stripe.StripeClient, localstripe: LocalStripe
) -> None:
    """localstripe records ``payment_intent.succeeded`` and ``payment_intent.payment_failed`` (and
    customer events, which come as ``OTHER``); the harness lists them newest first with
    ``ending_before``, as Stripe does. It records no ``charge.*``, refund, dispute, payout or
    Checkout events: those are played from cassettes (tests/contract/test_stripe_cassettes.py)."""
    paid_request = request_for(enrol(processor, admin), "42.00")
    paid = processor.charge(paid_request)
    declined_request = request_for(enrol(processor, admin, DECLINED_ON_CHARGE), "7.50")
    declined = processor.charge(declined_request)

    everything = list(processor.events(None))

    assert len({e.id for e in everything}) == len(everything)
    assert [e.created for e in everything] == sorted(e.created for e in everything)
    at_paid, paid_event = charge_event(everything, paid.processor_id)
    at_declined, declined_event = charge_event(everything, declined.processor_id)
    assert at_paid < at_declined
    assert (paid_event.type, paid_event.kind, paid_event.object_id) == (
        "payment_intent.succeeded",
        EventKind.CHARGE,
        paid.processor_id,
    )
    assert paid.processor_id is not None and declined.processor_id is not None
    assert paid_event.subject == ChargeUpdate(
        paid.processor_id,
        paid_request.key,
        ChargeState.SUCCEEDED,
        Decimal("42.00"),
        "USD",
        charge_id=raw_intent(admin, paid.processor_id)["latest_charge"]["id"],
    )
    assert declined_event.type == "payment_intent.payment_failed"
    assert declined_event.subject == ChargeUpdate(
        declined.processor_id,
        declined_request.key,
        ChargeState.SOFT_DECLINE,
        Decimal("7.50"),
        "USD",
        decline_code="card_declined",
        charge_id=raw_intent(admin, declined.processor_id)["latest_charge"]["id"],
    )
    assert {e.kind for e in everything[at_paid + 1 : at_declined]} == {EventKind.OTHER}  # the second customer

    small_pages = StripeProcessor(API_KEY, base_url=localstripe.base_url, page_size=2)
    after_paid = list(small_pages.events(paid_event.id))
    assert after_paid == everything[at_paid + 1 :]
    assert list(small_pages.events(everything[-1].id)) == []
    assert list(small_pages.events(None)) == everything
    with pytest.raises(FatalError, match="No such event"):
        list(small_pages.events("evt_never_made"))


def test_find_refund_by_key(processor: StripeProcessor, admin: stripe.StripeClient) -> None:
    paid = processor.charge(request_for(enrol(processor, admin), "50.00"))
    assert paid.processor_id is not None
    key = unique("refund:acme:130")
    refund_id = processor.refund(paid.processor_id, Decimal("5.00"), key)
    other = processor.refund(paid.processor_id, Decimal("1.00"), unique("refund:acme:130"))
    charge_id = raw_intent(admin, paid.processor_id)["latest_charge"]["id"]

    assert processor.find_refund(key, paid.processor_id) == refund_id
    assert processor.find_refund(key, charge_id) == refund_id
    assert processor.find_refund(unique("refund:never-made"), paid.processor_id) is None
    assert other != refund_id

    # localstripe ignores Idempotency-Key: the same key refunds again. The first made is the one found.
    again = processor.refund(paid.processor_id, Decimal("5.00"), key)
    assert again != refund_id
    small_pages = StripeProcessor(API_KEY, base_url=processor.base_url, page_size=1)
    assert small_pages.find_refund(key, paid.processor_id) == refund_id


def test_a_setup_intent_enrolment(processor: StripeProcessor, admin: stripe.StripeClient) -> None:
    """Saving a card without Checkout (localstripe has none): a SetupIntent for the customer, off
    session, confirmed with the card."""
    customer = processor.ensure_customer(unique("cust"), None, "Acme Ltd")
    key = unique("link:acme")
    intent = admin.v1.setup_intents.create(
        params={"customer": customer, "usage": "off_session", "metadata": {"arsync_key": key}}
    )
    assert processor.setup_intent_enrolment(intent.id) is None  # nothing saved yet

    card = admin.v1.payment_methods.create(
        params={"type": "card", "card": {"number": VISA, "exp_month": 12, "exp_year": 2034, "cvc": "123"}}
    )
    admin.v1.setup_intents.confirm(intent.id, params={"payment_method": card.id})
    enrolment = processor.setup_intent_enrolment(intent.id)

    stored = admin.v1.setup_intents.retrieve(intent.id).to_dict()
    assert enrolment == Enrolment(
        intent.id,
        customer,
        SavedMethod(customer, card.id, "card", "visa", "4242", "credit"),
        datetime.fromtimestamp(stored["created"], UTC),
        "off_session",
        {"arsync_key": key},
    )
    on_session = admin.v1.setup_intents.create(params={"customer": customer, "usage": "on_session"})
    admin.v1.setup_intents.confirm(on_session.id, params={"payment_method": card.id})
    later = processor.setup_intent_enrolment(on_session.id)
    assert later is not None and (later.scope, later.metadata) == ("on_session", {})


def test_a_declined_setup_saves_nothing(processor: StripeProcessor, admin: stripe.StripeClient) -> None:
    customer = processor.ensure_customer(unique("cust"), None, None)
    intent = admin.v1.setup_intents.create(params={"customer": customer, "usage": "off_session"})
    card = admin.v1.payment_methods.create(
        params={"type": "card", "card": {"number": DECLINED_ON_ATTACH, "exp_month": 12, "exp_year": 2034, "cvc": "123"}}
    )
    with pytest.raises(stripe.CardError):
        admin.v1.setup_intents.confirm(intent.id, params={"payment_method": card.id})
    assert admin.v1.setup_intents.retrieve(intent.id).status == "canceled"
    assert processor.setup_intent_enrolment(intent.id) is None


def test_localstripe_cannot_list_a_payouts_transactions(processor: StripeProcessor) -> None:
    """Recorded: localstripe refuses ``payout=`` on ``GET /v1/balance_transactions`` (and has no
    payout or fee lines). Payout lines are played from cassettes instead
    (tests/contract/test_stripe_cassettes.py)."""
    with pytest.raises(FatalError, match="Unexpected payout"):
        list(processor.payout_lines("po_none"))


def test_a_link_for_an_unknown_customer_is_refused(processor: StripeProcessor) -> None:
    """localstripe itself has no Checkout; the test server adds it (connectors/stripe/sandbox.py), answering
    an unknown customer with 404 where Stripe answers 400: a fatal error either way."""
    request = LinkRequest(unique("link"), "cus_none", "https://x.test/ok", "https://x.test/no")
    with pytest.raises(FatalError, match="404"):
        processor.create_link(request)


# --- canned Stripe answers --------------------------------------------------------------


@dataclass
class Exchange:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    form: dict[str, str]


class CannedStripe:
    """A local server answering each request with the next scripted (status, body, headers)."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, dict[str, Any], dict[str, str]]] = []
        self.seen: list[Exchange] = []
        canned = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length).decode() if length else ""
                url = urlsplit(self.path)
                canned.seen.append(
                    Exchange(
                        self.command,
                        url.path,
                        dict(parse_qsl(url.query)),
                        {k.lower(): v for k, v in self.headers.items()},
                        dict(parse_qsl(body)),
                    )
                )
                status, payload, headers = (
                    canned.answers.pop(0) if canned.answers else (500, {"error": {"message": "nothing scripted"}}, {})
                )
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            do_GET = _answer
            do_POST = _answer

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def canned() -> Iterator[CannedStripe]:
    server = CannedStripe()
    try:
        yield server
    finally:
        server.close()


def canned_request(key: str = "charge:acme:acme-qbo:130:1") -> ChargeRequest:
    return request_for(Enrolled("cus_Q1", "pm_Q1"), "1234.56", key=key)


def declined_intent(pi_id: str, code: str, decline_code: str | None) -> dict[str, Any]:
    error = {"type": "card_error", "code": code, "decline_code": decline_code, "message": "Your card was declined."}
    return {
        "id": pi_id,
        "object": "payment_intent",
        "amount": 123456,
        "currency": "usd",
        "status": "requires_payment_method",
        "customer": "cus_Q1",
        "metadata": {"arsync_key": "charge:acme:acme-qbo:130:1"},
        "last_payment_error": error,
    }


def card_error(pi_id: str, code: str, decline_code: str | None) -> dict[str, Any]:
    return {
        "error": {
            "type": "card_error",
            "code": code,
            "decline_code": decline_code,
            "message": "Your card was declined.",
            "charge": "ch_Q1",
            "doc_url": f"https://stripe.com/docs/error-codes/{code}",
            "payment_intent": declined_intent(pi_id, code, decline_code),
        }
    }


@pytest.mark.parametrize(
    ("code", "decline_code", "state"),
    [
        ("card_declined", "lost_card", ChargeState.HARD_DECLINE),
        ("card_declined", "stolen_card", ChargeState.HARD_DECLINE),
        ("expired_card", None, ChargeState.HARD_DECLINE),
        ("incorrect_number", None, ChargeState.HARD_DECLINE),
        ("card_declined", "fraudulent", ChargeState.HARD_DECLINE),
        ("card_declined", "insufficient_funds", ChargeState.SOFT_DECLINE),
        ("processing_error", None, ChargeState.SOFT_DECLINE),
        ("authentication_required", "authentication_required", ChargeState.REQUIRES_ACTION),
    ],
)
def test_card_errors_as_stripe_sends_them(
    canned: CannedStripe, code: str, decline_code: str | None, state: ChargeState
) -> None:
    canned.answers.append((402, card_error("pi_Q1", code, decline_code), {"Request-Id": "req_1"}))
    processor = StripeProcessor("sk_test_canned", base_url=canned.base_url, timeout=5)

    outcome = processor.charge(canned_request())

    assert outcome == ChargeOutcome(
        "charge:acme:acme-qbo:130:1",
        state,
        "pi_Q1",
        Decimal("1234.56"),
        "USD",
        decline_code or code,
        "Your card was declined.",
    )
    assert len(canned.seen) == 1, "the PaymentIntent named in the error needs no second read"


def test_what_a_charge_sends(canned: CannedStripe) -> None:
    canned.answers.append(
        (200, {**declined_intent("pi_Q2", "x", None), "status": "succeeded", "last_payment_error": None}, {})
    )
    processor = StripeProcessor("sk_test_canned", base_url=canned.base_url, timeout=5)

    assert processor.charge(canned_request()).state is ChargeState.SUCCEEDED

    [sent] = canned.seen
    assert (sent.method, sent.path) == ("POST", "/v1/payment_intents")
    assert sent.headers["idempotency-key"] == "charge:acme:acme-qbo:130:1"
    assert sent.headers["authorization"] == "Bearer sk_test_canned"
    assert sent.form == {
        "amount": "123456",
        "currency": "usd",
        "customer": "cus_Q1",
        "payment_method": "pm_Q1",
        "confirm": "true",
        "off_session": "true",
        "automatic_payment_methods[enabled]": "true",
        "automatic_payment_methods[allow_redirects]": "never",
        "description": "Invoice 130",
        "metadata[arsync_invoice]": "130",
        "metadata[arsync_connection]": "acme-qbo",
        "metadata[arsync_key]": "charge:acme:acme-qbo:130:1",
    }


def test_our_key_cannot_be_overridden_by_metadata(canned: CannedStripe) -> None:
    processor = StripeProcessor("sk_test_canned", base_url=canned.base_url, timeout=5)
    request = ChargeRequest("k1", "cus_Q1", "pm_Q1", Decimal("1.00"), "USD", metadata={"arsync_key": "k2"})
    with pytest.raises(ValueError, match="arsync_key"):
        processor.charge(request)
    assert canned.seen == []


@pytest.mark.parametrize(
    ("status", "body", "headers", "error", "actor"),
    [
        (500, {"error": {"type": "api_error", "message": "An unknown error occurred"}}, {}, RetriableError, None),
        (503, {"error": {"type": "api_error"}}, {"Stripe-Should-Retry": "true"}, RetriableError, None),
        (
            409,
            {"error": {"type": "idempotency_error", "code": "idempotency_key_in_use", "message": "in use"}},
            {},
            RetriableError,
            None,
        ),
        (
            429,
            {"error": {"type": "invalid_request_error", "code": "rate_limit", "message": "Too many requests"}},
            {"Retry-After": "2"},
            RateLimitedError,
            None,
        ),
        (401, {"error": {"type": "invalid_request_error", "message": "Invalid API Key"}}, {}, FatalError, Actor.CONFIG),
        (
            400,
            {"error": {"type": "idempotency_error", "message": "Keys for idempotent requests can only be used ..."}},
            {},
            FatalError,
            Actor.SYSTEM,
        ),
        (
            400,
            {"error": {"type": "invalid_request_error", "code": "resource_missing", "param": "payment_method"}},
            {},
            FatalError,
            Actor.SYSTEM,
        ),
    ],
)
def test_failed_charges_are_raised_once_never_retried_by_the_sdk(
    canned: CannedStripe,
    status: int,
    body: dict[str, Any],
    headers: dict[str, str],
    error: type[Exception],
    actor: Actor | None,
) -> None:
    canned.answers.append((status, body, {"Request-Id": "req_9", **headers}))
    processor = StripeProcessor("sk_test_canned", base_url=canned.base_url, timeout=5)

    with pytest.raises(error) as caught:
        processor.charge(canned_request())

    assert len(canned.seen) == 1, "the journal owns retries; the SDK must not retry"
    assert "req_9" in str(caught.value)
    if actor is not None:
        assert isinstance(caught.value, FatalError) and caught.value.actor is actor
    if isinstance(caught.value, RateLimitedError):
        assert caught.value.retry_after == 2.0


def test_a_decline_naming_only_the_charge_reads_its_payment_intent(canned: CannedStripe) -> None:
    """localstripe's shape: the error names the failed charge, not the PaymentIntent."""
    body = {"error": {"type": "card_error", "code": "card_declined", "charge": "ch_Q3", "message": "declined"}}
    canned.answers.append((402, body, {}))
    canned.answers.append((200, {"id": "ch_Q3", "object": "charge", "payment_intent": "pi_Q3"}, {}))
    processor = StripeProcessor("sk_test_canned", base_url=canned.base_url, timeout=5)

    outcome = processor.charge(canned_request())

    assert (outcome.state, outcome.processor_id) == (ChargeState.SOFT_DECLINE, "pi_Q3")
    assert [(s.method, s.path) for s in canned.seen] == [("POST", "/v1/payment_intents"), ("GET", "/v1/charges/ch_Q3")]


def test_a_refund_stripe_reports_failed_is_raised(canned: CannedStripe) -> None:
    canned.answers.append((200, {"id": "pi_Q4", "object": "payment_intent", "currency": "eur", "amount": 900}, {}))
    canned.answers.append(
        (200, {"id": "re_Q4", "object": "refund", "amount": 450, "currency": "eur", "status": "failed"}, {})
    )
    processor = StripeProcessor("sk_test_canned", base_url=canned.base_url, timeout=5)

    with pytest.raises(FatalError, match="re_Q4 is failed"):
        processor.refund("pi_Q4", Decimal("4.50"), "refund:acme:130:1")

    refund = canned.seen[1]
    assert refund.form == {"payment_intent": "pi_Q4", "amount": "450", "metadata[arsync_key]": "refund:acme:130:1"}
    assert refund.headers["idempotency-key"] == "refund:acme:130:1"


# --- no answer at all -----------------------------------------------------------------


def test_a_timeout_is_an_unknown_outcome_sent_once() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes connections; nobody ever reads or answers
        processor = StripeProcessor(
            "sk_test_silent", base_url=f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=0.3
        )

        with pytest.raises(RetriableError) as caught:
            processor.charge(canned_request())

        assert caught.value.actor is Actor.TRANSIENT
        assert not isinstance(caught.value, RateLimitedError)
        silent.setblocking(False)
        connections = []
        while True:
            try:
                connections.append(silent.accept()[0])
            except BlockingIOError:
                break
        for connection in connections:
            connection.close()
        assert len(connections) == 1, "one attempt: no retry inside the SDK"


def test_nothing_listening_is_retriable() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    processor = StripeProcessor("sk_test_none", base_url=f"http://127.0.0.1:{port}", timeout=2)
    with pytest.raises(RetriableError):
        processor.find_charge("k", "cus_1")


# --- the test harness itself ----------------------------------------------------------


def test_what_the_harness_adds_to_localstripe_is_stripe_api() -> None:
    """Every parameter connectors/stripe/sandbox.py teaches localstripe is in Stripe's OpenAPI spec."""
    spec = load_spec()
    for (method, path), names in ADDED_PARAMETERS.items():
        assert parameter_problems(spec, method, path, [(name, None) for name in names]) == []
    pm_type = next(p for p in operation(spec, "get", "/v1/payment_methods")["parameters"] if p["name"] == "type")
    assert not pm_type.get("required") and "us_bank_account" in pm_type["schema"]["enum"]
