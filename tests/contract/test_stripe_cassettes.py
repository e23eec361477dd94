"""The Stripe processor's links, enrolments, events and payout lines replayed from cassettes.

localstripe has no ``charge.*``/refund/dispute/payout events and no fees, and its
Checkout is our test server's emulation (see ``connectors/stripe/sandbox.py``), so these calls
are checked against Stripe's own shapes here:
each test writes a vcrpy cassette to ``tmp_path`` whose response bodies are Stripe's own
example objects from ``fixtures3.json`` (lists around them, paginated with ``has_more``)
and plays it to :class:`StripeProcessor` pointed at ``https://api.stripe.com``, through
the real SDK and ``requests``.

A cassette is the contract for the requests too: vcrpy answers only a request that
matches a recorded one on method, path, query (``expand[0]``, ``limit``, cursors), form
body (compared as parsed pairs, so nothing more and nothing less is sent) and
``Idempotency-Key``; every recorded request must be played once. Before playing, every
recorded request is checked against Stripe's OpenAPI spec (``spec3.yaml``: each
parameter name, and the value where the spec lists an enum).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import pytest
import vcr
import yaml

from connectors import jsonwire
from connectors.base import (
    BalanceLine,
    ChargeState,
    ChargeUpdate,
    Enrolment,
    EventKind,
    FatalError,
    HostedLink,
    LinkRequest,
    PayoutUpdate,
    ProcessorEvent,
    SavedMethod,
)
from connectors.stripe import StripeProcessor
from connectors.stripe.mapping import HANDLED_EVENTS
from tests.refdata import require_refdata
from tests.stripe_spec import load_spec, parameter_problems

FIXTURES = require_refdata("stripe", "fixtures3.json")
API = "https://api.stripe.com"
CREATED = datetime(2009, 2, 13, 23, 31, 30, tzinfo=UTC)
SESSION = "cs_test_a1YS1URlnyQCN5fUUduORoQ7Pw41PJqDWkIVQCpJPqkfIhd6tVY8XB1OLY"
SETUP_INTENT = "seti_1Pgag7B7WZ01zgkWSgwGdb8Z"
PAYMENT_METHOD = "pm_1Pgc75B7WZ01zgkWlHVgdEGJ"
PI = "pi_1PgafyB7WZ01zgkWSjxsAJo3"
CHARGE = "ch_1PgafuB7WZ01zgkWXYmPNZs8"
PAYOUT = "po_1Pgc79B7WZ01zgkWu1KToYf4"
REFUND = "re_1Pgc72B7WZ01zgkWqPvrRrPE"
DISPUTE = "dp_1Pgc71B7WZ01zgkWMevJiAUx"


@cache
def _resources() -> dict[str, Any]:
    resources = jsonwire.loads(FIXTURES.read_text(encoding="utf-8"))["resources"]
    assert isinstance(resources, dict)
    return resources


def fixture(name: str, **changes: Any) -> dict[str, Any]:
    """A fresh copy of Stripe's example ``name`` object, with ``changes`` applied."""
    obj: dict[str, Any] = copy.deepcopy(_resources()[name])
    obj.update(changes)
    return obj


def listing(path: str, data: list[dict[str, Any]], has_more: bool = False) -> dict[str, Any]:
    return {"object": "list", "url": path, "has_more": has_more, "data": data}


# --- cassettes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One recorded exchange: what we must send, and Stripe's answer."""

    method: str
    path: str
    body: dict[str, Any] | list[Any]
    query: Sequence[tuple[str, str]] = ()
    form: Sequence[tuple[str, str]] = ()
    idempotency_key: str | None = None
    status: int = 200

    def interaction(self) -> dict[str, Any]:
        uri = f"{API}{self.path}" + (f"?{urlencode(self.query)}" if self.query else "")
        headers = {"Idempotency-Key": [self.idempotency_key]} if self.idempotency_key else {}
        return {
            "request": {
                "method": self.method,
                "uri": uri,
                "body": urlencode(self.form) if self.form else None,
                "headers": headers,
            },
            "response": {
                "status": {"code": self.status, "message": "OK"},
                "headers": {"Content-Type": ["application/json"], "Request-Id": ["req_cassette"]},
                "body": {"string": jsonwire.dumps(self.body)},
            },
        }


def _form(request: Any) -> list[tuple[str, str]]:
    body = request.body
    text = body.decode() if isinstance(body, bytes) else (body or "")
    return sorted(parse_qsl(text, keep_blank_values=True))


def _same_form(sent: Any, recorded: Any) -> None:
    assert _form(sent) == _form(recorded), f"form {_form(sent)} != {_form(recorded)}"


def _same_idempotency_key(sent: Any, recorded: Any) -> None:
    ours, theirs = sent.headers.get("Idempotency-Key"), recorded.headers.get("Idempotency-Key")
    assert ours == theirs, f"Idempotency-Key {ours!r} != {theirs!r}"


@contextmanager
def replay(tmp_path: Path, calls: Sequence[Call]) -> Iterator[Any]:
    """Play ``calls`` (checked against Stripe's spec first); on exit, every one must have been played."""
    spec = load_spec()
    for call in calls:
        sent = call.query if call.method == "GET" else call.form
        assert parameter_problems(spec, call.method, call.path, sent) == []
    path = tmp_path / "stripe.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "interactions": [c.interaction() for c in calls]}))
    recorder = vcr.VCR(
        record_mode="none",
        match_on=["method", "scheme", "host", "port", "path", "query", "form", "idempotency_key"],
    )
    recorder.register_matcher("form", _same_form)
    recorder.register_matcher("idempotency_key", _same_idempotency_key)
    with recorder.use_cassette(str(path), allow_playback_repeats=False) as cassette:
        yield cassette
    assert cassette.all_played, f"not every recorded request was sent: {cassette.play_counts}"


def processor(page_size: int = 100) -> StripeProcessor:
    return StripeProcessor("sk_test_cassette", base_url=API, timeout=5, page_size=page_size)


# --- hosted links -----------------------------------------------------------------------------


SETUP_LINK = LinkRequest(
    key="link:acme:acme-qbo:c-1:1",
    processor_customer_id="cus_Q1",
    success_url="https://pay.example.test/done",
    cancel_url="https://pay.example.test/cancel",
    metadata={"arsync_customer": "c-1", "arsync_connection": "acme-qbo"},
)


def test_a_setup_link_is_a_checkout_session_in_setup_mode(tmp_path: Path) -> None:
    session = fixture("checkout.session", mode="setup", customer="cus_Q1", payment_intent=None, expires_at=1234654290)
    form = [
        ("mode", "setup"),
        ("customer", "cus_Q1"),
        ("payment_method_types[0]", "card"),
        ("payment_method_types[1]", "us_bank_account"),
        ("success_url", "https://pay.example.test/done"),
        ("cancel_url", "https://pay.example.test/cancel"),
        ("metadata[arsync_customer]", "c-1"),
        ("metadata[arsync_connection]", "acme-qbo"),
        ("metadata[arsync_key]", SETUP_LINK.key),
        ("setup_intent_data[metadata][arsync_customer]", "c-1"),
        ("setup_intent_data[metadata][arsync_connection]", "acme-qbo"),
        ("setup_intent_data[metadata][arsync_key]", SETUP_LINK.key),
    ]
    call = Call("POST", "/v1/checkout/sessions", session, form=form, idempotency_key=SETUP_LINK.key)

    with replay(tmp_path, [call]):
        link = processor().create_link(SETUP_LINK)

    expires = datetime(2009, 2, 14, 23, 31, 30, tzinfo=UTC)
    assert link == HostedLink(SESSION, f"https://checkout.stripe.com/pay/c/{SESSION}", expires)


def test_a_payment_link_is_a_checkout_session_for_one_line(tmp_path: Path) -> None:
    request = LinkRequest(
        key="pay:acme:acme-qbo:130:1",
        processor_customer_id="cus_Q1",
        success_url="https://pay.example.test/done",
        cancel_url="https://pay.example.test/cancel",
        method_types=("card",),
        amount=Decimal("1234.56"),
        currency="USD",
        description="Invoice 130",
        metadata={"arsync_invoice": "130"},
    )
    form = [
        ("mode", "payment"),
        ("customer", "cus_Q1"),
        ("payment_method_types[0]", "card"),
        ("success_url", "https://pay.example.test/done"),
        ("cancel_url", "https://pay.example.test/cancel"),
        ("metadata[arsync_invoice]", "130"),
        ("metadata[arsync_key]", request.key),
        ("line_items[0][quantity]", "1"),
        ("line_items[0][price_data][currency]", "usd"),
        ("line_items[0][price_data][unit_amount]", "123456"),
        ("line_items[0][price_data][product_data][name]", "Invoice 130"),
        ("payment_intent_data[metadata][arsync_invoice]", "130"),
        ("payment_intent_data[metadata][arsync_key]", request.key),
        ("payment_intent_data[description]", "Invoice 130"),
    ]  # and no payment_intent_data[setup_future_usage]: the form must be exactly this
    call = Call("POST", "/v1/checkout/sessions", fixture("checkout.session"), form=form, idempotency_key=request.key)

    with replay(tmp_path, [call]):
        link = processor().create_link(request)

    assert link == HostedLink(SESSION, f"https://checkout.stripe.com/pay/c/{SESSION}", CREATED)


def test_a_refused_link_is_a_fatal_error(tmp_path: Path) -> None:
    error = {"error": {"type": "invalid_request_error", "code": "resource_missing", "param": "customer"}}
    form = [("mode", "setup"), ("customer", "cus_Q1"), ("payment_method_types[0]", "card")]
    form += [("success_url", SETUP_LINK.success_url), ("cancel_url", SETUP_LINK.cancel_url)]
    form += [("metadata[arsync_key]", "k1"), ("setup_intent_data[metadata][arsync_key]", "k1")]
    call = Call("POST", "/v1/checkout/sessions", error, form=form, idempotency_key="k1", status=400)
    request = LinkRequest("k1", "cus_Q1", SETUP_LINK.success_url, SETUP_LINK.cancel_url, method_types=("card",))

    with replay(tmp_path, [call]), pytest.raises(FatalError, match="req_cassette"):
        processor().create_link(request)


# --- enrolments -------------------------------------------------------------------------------

ENROLLED = Enrolment(
    SESSION,
    "cus_Q1",
    SavedMethod("cus_Q1", PAYMENT_METHOD, "card", "visa", "4242", "credit"),
    CREATED,
    "off_session",
    {"arsync_key": SETUP_LINK.key, "arsync_customer": "c-1"},
)


def saved_setup_intent(**changes: Any) -> dict[str, Any]:
    saved = {
        "status": "succeeded",
        "last_setup_error": None,
        "next_action": None,
        "customer": "cus_Q1",
        "payment_method": fixture("payment_method", customer="cus_Q1"),
        "metadata": {"arsync_key": SETUP_LINK.key},
    }
    return fixture("setup_intent", **{**saved, **changes})


def completed_session(**changes: Any) -> dict[str, Any]:
    completed = {
        "mode": "setup",
        "status": "complete",
        "customer": "cus_Q1",
        "payment_intent": None,
        "setup_intent": saved_setup_intent(),
        "metadata": {"arsync_key": SETUP_LINK.key, "arsync_customer": "c-1"},
    }
    return fixture("checkout.session", **{**completed, **changes})


def session_read(body: dict[str, Any]) -> Call:
    return Call("GET", f"/v1/checkout/sessions/{SESSION}", body, query=[("expand[0]", "setup_intent.payment_method")])


def test_link_enrolment_reads_the_completed_session_once(tmp_path: Path) -> None:
    with replay(tmp_path, [session_read(completed_session())]):
        assert processor().link_enrolment(SESSION) == ENROLLED


def test_link_enrolment_is_none_until_the_customer_completes(tmp_path: Path) -> None:
    calls = [
        session_read(completed_session(status="open", setup_intent=fixture("setup_intent"))),
        session_read(completed_session(setup_intent=saved_setup_intent(status="requires_action"))),
        session_read(fixture("checkout.session", status="complete")),  # a payment link saves nothing
    ]
    with replay(tmp_path, calls):
        assert [processor().link_enrolment(SESSION) for _ in calls] == [None, None, None]


def test_link_enrolment_reads_what_the_server_did_not_expand(tmp_path: Path) -> None:
    calls = [
        session_read(completed_session(setup_intent=SETUP_INTENT)),
        Call(
            "GET",
            f"/v1/setup_intents/{SETUP_INTENT}",
            saved_setup_intent(payment_method=PAYMENT_METHOD),
            query=[("expand[0]", "payment_method")],
        ),
        Call("GET", f"/v1/payment_methods/{PAYMENT_METHOD}", fixture("payment_method", customer="cus_Q1")),
    ]
    with replay(tmp_path, calls):
        assert processor().link_enrolment(SESSION) == ENROLLED


def test_setup_intent_enrolment(tmp_path: Path) -> None:
    read = Call(
        "GET", f"/v1/setup_intents/{SETUP_INTENT}", saved_setup_intent(), query=[("expand[0]", "payment_method")]
    )
    with replay(tmp_path, [read]):
        enrolment = processor().setup_intent_enrolment(SETUP_INTENT)
    assert enrolment == Enrolment(
        SETUP_INTENT, "cus_Q1", ENROLLED.method, CREATED, "off_session", {"arsync_key": SETUP_LINK.key}
    )


# --- events -----------------------------------------------------------------------------------


def envelope(event_id: str, kind: str, obj: dict[str, Any], created: int) -> dict[str, Any]:
    return {"id": event_id, "object": "event", "created": created, "type": kind, "data": {"object": obj}}


KEY = "charge:acme:acme-qbo:130:1"
SUCCEEDED = envelope(
    "evt_B",
    "payment_intent.succeeded",
    fixture("payment_intent", status="succeeded", last_payment_error=None, metadata={"arsync_key": KEY}),
    1234567891,
)
CHARGED = envelope("evt_C", "charge.succeeded", fixture("charge", captured=True, payment_intent=PI), 1234567892)
PAID_OUT = envelope("evt_D", "payout.paid", fixture("payout", status="paid"), 1234567893)
PLAN = fixture("event")  # Stripe's own example event: plan.created, at 1234567890
PLAN["created"] = 1234567894

OLDEST_FIRST = [
    ProcessorEvent(
        "evt_B",
        datetime(2009, 2, 13, 23, 31, 31, tzinfo=UTC),
        "payment_intent.succeeded",
        EventKind.CHARGE,
        ChargeUpdate(PI, KEY, ChargeState.SUCCEEDED, Decimal("10.99"), "USD", method_type="card"),
        PI,
    ),
    ProcessorEvent(
        "evt_C",
        datetime(2009, 2, 13, 23, 31, 32, tzinfo=UTC),
        "charge.succeeded",
        EventKind.CHARGE,
        ChargeUpdate(PI, None, ChargeState.SUCCEEDED, Decimal("1.00"), "USD", method_type="card", charge_id=CHARGE),
        CHARGE,
    ),
    ProcessorEvent(
        "evt_D",
        datetime(2009, 2, 13, 23, 31, 33, tzinfo=UTC),
        "payout.paid",
        EventKind.PAYOUT,
        PayoutUpdate(PAYOUT, Decimal("11.00"), "USD", "paid", date(2009, 2, 13)),
        PAYOUT,
    ),
    ProcessorEvent(
        PLAN["id"],
        datetime(2009, 2, 13, 23, 31, 34, tzinfo=UTC),
        "plan.created",
        EventKind.OTHER,
        None,
        "price_1PgafmB7WZ01zgkW6dKueIc5",
    ),
]


def events_page(query: list[tuple[str, str]], newest_first: list[dict[str, Any]], has_more: bool) -> Call:
    return Call("GET", "/v1/events", listing("/v1/events", newest_first, has_more), query=query)


def test_events_from_a_cursor_walk_toward_newer_pages(tmp_path: Path) -> None:
    """Stripe lists newest first: from ``ending_before=after`` each page is the next newer one."""
    calls = [
        events_page([("limit", "2"), ("ending_before", "evt_A")], [CHARGED, SUCCEEDED], True),
        events_page([("limit", "2"), ("ending_before", "evt_C")], [PLAN, PAID_OUT], False),
    ]
    with replay(tmp_path, calls):
        events = processor(page_size=2).events("evt_A")
        first = next(events)  # one page is read before anything is handed out
        assert first == OLDEST_FIRST[0]
        assert [first, *events] == OLDEST_FIRST


def test_events_without_a_cursor_read_every_page_then_hand_out_oldest_first(tmp_path: Path) -> None:
    calls = [
        events_page([("limit", "2")], [PLAN, PAID_OUT], True),
        events_page([("limit", "2"), ("starting_after", "evt_D")], [CHARGED, SUCCEEDED], False),
    ]
    with replay(tmp_path, calls):
        assert list(processor(page_size=2).events(None)) == OLDEST_FIRST


def test_no_newer_events(tmp_path: Path) -> None:
    with replay(tmp_path, [events_page([("limit", "100"), ("ending_before", PLAN["id"])], [], False)]):
        assert list(processor().events(PLAN["id"])) == []


def test_an_event_that_cannot_be_mapped_is_a_fatal_error_naming_it(tmp_path: Path) -> None:
    broken = envelope("evt_X", "payout.paid", fixture("payout", currency=None), 1234567895)
    page = events_page([("limit", "100"), ("ending_before", "evt_A")], [broken], False)
    with replay(tmp_path, [page]), pytest.raises(FatalError, match=r"evt_X .*no currency"):
        list(processor().events("evt_A"))


def test_a_cursor_stripe_no_longer_has_is_a_fatal_error(tmp_path: Path) -> None:
    missing = {"error": {"type": "invalid_request_error", "code": "resource_missing", "param": "ending_before"}}
    call = Call("GET", "/v1/events", missing, query=[("limit", "100"), ("ending_before", "evt_gone")], status=404)
    with replay(tmp_path, [call]), pytest.raises(FatalError, match="resource_missing"):
        list(processor().events("evt_gone"))


NOT_IN_THE_SPEC_ENUM = frozenset({"refund.failed"})
"""Event types Stripe sends that the spec's ``enabled_events`` enum does not list yet:
``refund.failed`` is documented by Stripe's changelog (2024-10-28.acacia, "Adds created,
updated, and failed events for all refund types")."""


def test_every_handled_event_type_is_one_stripe_sends() -> None:
    spec = load_spec()
    enabled = spec["paths"]["/v1/webhook_endpoints"]["post"]["requestBody"]["content"][
        "application/x-www-form-urlencoded"
    ]["schema"]["properties"]["enabled_events"]["items"]["enum"]
    assert set(HANDLED_EVENTS) - set(enabled) == NOT_IN_THE_SPEC_ENUM


# --- payout lines -----------------------------------------------------------------------------


def balance_transaction(txn_id: str, **changes: Any) -> dict[str, Any]:
    return fixture("balance_transaction", id=txn_id, **changes)


def test_payout_lines_skip_the_payout_and_keep_fees_exact(tmp_path: Path) -> None:
    payout_line = balance_transaction(
        "txn_payout",
        type="payout",
        reporting_category="payout",
        amount=-1100,
        net=-1100,
        source=fixture("payout"),
    )
    charge_line = balance_transaction(
        "txn_charge",
        amount=10000,
        fee=320,
        net=9680,
        fee_details=[{"amount": 320, "currency": "usd", "description": "Stripe processing fees", "type": "stripe_fee"}],
        source=fixture("charge", captured=True, payment_intent=PI),
    )
    refund_line = balance_transaction(
        "txn_refund",
        type="refund",
        reporting_category="refund",
        amount=-2500,
        net=-2500,
        source=fixture("refund", payment_intent="pi_refunded"),
    )
    dispute_line = balance_transaction(
        "txn_dispute",
        type="adjustment",
        reporting_category="dispute",
        amount=-1000,
        fee=1500,
        net=-2500,
        source=fixture("dispute"),
    )
    query = [("payout", PAYOUT), ("limit", "2"), ("expand[0]", "data.source")]
    path = "/v1/balance_transactions"
    calls = [
        Call("GET", path, listing(path, [payout_line, charge_line], True), query=query),
        Call(
            "GET",
            path,
            listing(path, [refund_line, dispute_line], False),
            query=[*query, ("starting_after", "txn_charge")],
        ),
    ]
    with replay(tmp_path, calls):
        lines = list(processor(page_size=2).payout_lines(PAYOUT))

    def line(
        txn: str, kind: str, source: str, payment: str | None, amount: str, fee: str, net: str, cat: str
    ) -> BalanceLine:
        return BalanceLine(
            txn, PAYOUT, kind, source, payment, Decimal(amount), Decimal(fee), Decimal(net), "USD", CREATED, cat
        )

    assert lines == [
        line("txn_charge", "charge", CHARGE, PI, "100.00", "3.20", "96.80", "charge"),
        line("txn_refund", "refund", REFUND, "pi_refunded", "-25.00", "0.00", "-25.00", "refund"),
        line("txn_dispute", "adjustment", DISPUTE, None, "-10.00", "15.00", "-25.00", "dispute"),
    ]
    assert sum(x.net for x in lines) == Decimal("46.80")


def test_a_converted_charge_keeps_stripes_exchange_rate_exactly(tmp_path: Path) -> None:
    converted = balance_transaction(
        "txn_eur",
        amount=10837,
        fee=344,
        net=10493,
        exchange_rate=Decimal("1.083712345"),
        source=fixture("charge", captured=True, payment_intent=PI, amount=10000, currency="eur"),
    )
    plain = balance_transaction("txn_usd", amount=500, fee=45, net=455, exchange_rate=None)
    query = [("payout", PAYOUT), ("limit", "2"), ("expand[0]", "data.source")]
    path = "/v1/balance_transactions"
    with replay(tmp_path, [Call("GET", path, listing(path, [converted, plain], False), query=query)]):
        lines = list(processor(page_size=2).payout_lines(PAYOUT))
    assert [(line.id, line.amount, line.exchange_rate) for line in lines] == [
        ("txn_eur", Decimal("108.37"), Decimal("1.083712345")),
        ("txn_usd", Decimal("5.00"), None),
    ]
    assert isinstance(lines[0].exchange_rate, Decimal)


# --- refunds ----------------------------------------------------------------------------------


def test_find_refund_reads_every_page_for_the_key(tmp_path: Path) -> None:
    ours = {"arsync_key": "refund:acme:130:1"}
    path = "/v1/refunds"
    newest = fixture("refund", id="re_retried", payment_intent=PI, metadata=ours, status="failed")
    other = fixture("refund", id="re_other", payment_intent=PI, metadata={"arsync_key": "refund:acme:130:2"})
    first = fixture("refund", payment_intent=PI, metadata=ours)
    calls = [
        Call("GET", path, listing(path, [newest, other], True), query=[("payment_intent", PI), ("limit", "2")]),
        Call(
            "GET",
            path,
            listing(path, [first], False),
            query=[("payment_intent", PI), ("limit", "2"), ("starting_after", "re_other")],
        ),
        Call("GET", path, listing(path, [], False), query=[("charge", CHARGE), ("limit", "2")]),
    ]
    with replay(tmp_path, calls):
        small_pages = processor(page_size=2)
        assert small_pages.find_refund("refund:acme:130:1", PI) == REFUND
        assert small_pages.find_refund("refund:acme:130:1", CHARGE) is None
