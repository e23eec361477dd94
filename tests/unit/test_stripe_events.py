"""Stripe events, enrolments, hosted links and balance transactions -> the payment port's records.

Every object is Stripe's own example from ``fixtures3.json`` (read with
``parse_float=Decimal``), changed only where a test says so; events are envelopes
built around them the way Stripe sends them (``{"id", "type", "created", "data": {"object"}}``).
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import cache
from typing import Any

import pytest

from connectors.base import (
    BalanceLine,
    ChargeState,
    ChargeUpdate,
    DisputeUpdate,
    Enrolment,
    EventKind,
    HostedLink,
    LinkRequest,
    PayoutUpdate,
    ProcessorEvent,
    RefundUpdate,
    SavedMethod,
)
from connectors.stripe.mapping import (
    DISPUTE_EVENTS,
    HANDLED_EVENTS,
    PAYMENT_INTENT_EVENTS,
    PAYOUT_EVENTS,
    REFUND_EVENTS,
    balance_line,
    enrolment_from_session,
    enrolment_from_setup_intent,
    event_from_payload,
    hosted_link,
    link_params,
    utc_timestamp,
)
from connectors.values import MappingError
from tests.refdata import require_refdata

FIXTURES = require_refdata("stripe", "fixtures3.json")

CREATED = datetime(2009, 2, 13, 23, 31, 30, tzinfo=UTC)
"""``1234567890``, the time on every example object."""
PI = "pi_1PgafyB7WZ01zgkWSjxsAJo3"
CHARGE = "ch_1PgafuB7WZ01zgkWXYmPNZs8"
REFUND = "re_1Pgc72B7WZ01zgkWqPvrRrPE"
DISPUTE = "dp_1Pgc71B7WZ01zgkWMevJiAUx"
PAYOUT = "po_1Pgc79B7WZ01zgkWu1KToYf4"
SESSION = "cs_test_a1YS1URlnyQCN5fUUduORoQ7Pw41PJqDWkIVQCpJPqkfIhd6tVY8XB1OLY"
SETUP_INTENT = "seti_1Pgag7B7WZ01zgkWSgwGdb8Z"
PAYMENT_METHOD = "pm_1Pgc75B7WZ01zgkWlHVgdEGJ"
TXN = "txn_1PgaxNB7WZ01zgkWEV3TLf40"
KEY = "charge:acme:acme-qbo:130:1"


@cache
def _resources() -> dict[str, Any]:
    document = json.loads(FIXTURES.read_text(encoding="utf-8"), parse_float=Decimal)
    resources = document["resources"]
    assert isinstance(resources, dict)
    return resources


def fixture(name: str, **changes: Any) -> dict[str, Any]:
    """A fresh copy of Stripe's example ``name`` object, with ``changes`` applied."""
    obj: dict[str, Any] = copy.deepcopy(_resources()[name])
    obj.update(changes)
    return obj


def envelope(kind: str, obj: dict[str, Any], event_id: str = "evt_Q1", created: int = 1234567999) -> dict[str, Any]:
    return {
        "id": event_id,
        "object": "event",
        "api_version": "2026-10-28.endive",
        "created": created,
        "livemode": False,
        "pending_webhooks": 0,
        "request": {"id": None, "idempotency_key": None},
        "type": kind,
        "data": {"object": obj},
    }


EVENT_TIME = datetime(2009, 2, 13, 23, 33, 19, tzinfo=UTC)
"""``1234567999``, the envelopes' ``created``."""


def mapped(kind: str, obj: dict[str, Any]) -> ProcessorEvent:
    event = event_from_payload(envelope(kind, obj))
    assert (event.id, event.created, event.type) == ("evt_Q1", EVENT_TIME, kind)
    return event


# --- PaymentIntent events ------------------------------------------------------------------


def test_the_fixture_payment_intent_failed() -> None:
    """Stripe's example is a failed attempt (``requires_payment_method`` with an error), not one of ours."""
    event = mapped("payment_intent.payment_failed", fixture("payment_intent"))
    assert event.kind is EventKind.CHARGE
    assert event.object_id == PI
    assert event.subject == ChargeUpdate(
        PI, None, ChargeState.SOFT_DECLINE, Decimal("10.99"), "USD", decline_code=None, method_type="card"
    )


def test_a_payment_intent_of_ours_succeeded() -> None:
    intent = fixture(
        "payment_intent",
        status="succeeded",
        last_payment_error=None,
        metadata={"arsync_key": KEY, "arsync_invoice": "130"},
        latest_charge=CHARGE,
        payment_method_types=["card", "us_bank_account", "link"],
        payment_method={"id": "pm_Q1", "object": "payment_method", "type": "us_bank_account"},
    )
    event = mapped("payment_intent.succeeded", intent)
    assert event.subject == ChargeUpdate(
        PI, KEY, ChargeState.SUCCEEDED, Decimal("10.99"), "USD", method_type="us_bank_account", charge_id=CHARGE
    )


def test_payment_intent_processing_and_the_method_of_its_expanded_charge() -> None:
    intent = fixture(
        "payment_intent",
        status="processing",
        last_payment_error=None,
        currency="jpy",
        amount=1500,
        payment_method_types=["card", "us_bank_account"],
        latest_charge=fixture("charge", payment_method_details={"type": "us_bank_account", "us_bank_account": {}}),
    )
    event = mapped("payment_intent.processing", intent)
    assert event.subject == ChargeUpdate(
        PI, None, ChargeState.PROCESSING, Decimal("1500"), "JPY", method_type="us_bank_account", charge_id=CHARGE
    )


@pytest.mark.parametrize(
    ("decline_code", "state"),
    [("insufficient_funds", ChargeState.SOFT_DECLINE), ("lost_card", ChargeState.HARD_DECLINE)],
)
def test_payment_intent_failed_is_classified_by_the_decline_table(decline_code: str, state: ChargeState) -> None:
    error = {"type": "card_error", "code": "card_declined", "decline_code": decline_code, "charge": CHARGE}
    event = mapped("payment_intent.payment_failed", fixture("payment_intent", last_payment_error=error))
    assert event.subject == ChargeUpdate(
        PI, None, state, Decimal("10.99"), "USD", decline_code=decline_code, method_type="card"
    )


def test_payment_intent_canceled_and_a_failure_the_object_does_not_explain() -> None:
    canceled = mapped(
        "payment_intent.canceled",
        fixture("payment_intent", status="canceled", last_payment_error=None, cancellation_reason="abandoned"),
    )
    assert canceled.subject == ChargeUpdate(
        PI, None, ChargeState.SOFT_DECLINE, Decimal("10.99"), "USD", decline_code="canceled", method_type="card"
    )
    # A failure event whose PaymentIntent carries no error: the event's verdict stands.
    bare = mapped("payment_intent.payment_failed", fixture("payment_intent", last_payment_error=None))
    assert bare.subject == ChargeUpdate(PI, None, ChargeState.SOFT_DECLINE, Decimal("10.99"), "USD", method_type="card")


# --- Charge events -------------------------------------------------------------------------


def test_the_fixture_charge_succeeded_is_an_authorisation() -> None:
    """Stripe's example charge is ``succeeded`` but not ``captured``: money held, not yet moved."""
    event = mapped("charge.succeeded", fixture("charge"))
    assert event.kind is EventKind.CHARGE and event.object_id == CHARGE
    assert event.subject == ChargeUpdate(
        CHARGE, None, ChargeState.PROCESSING, Decimal("1.00"), "USD", method_type="card", charge_id=CHARGE
    )


def test_a_captured_charge_of_a_payment_intent() -> None:
    charge = fixture("charge", captured=True, payment_intent=PI, metadata={"arsync_key": KEY})
    assert mapped("charge.succeeded", charge).subject == ChargeUpdate(
        PI, KEY, ChargeState.SUCCEEDED, Decimal("1.00"), "USD", method_type="card", charge_id=CHARGE
    )
    # The key can also come from the charge's expanded PaymentIntent.
    charge = fixture("charge", captured=True, payment_intent=fixture("payment_intent", metadata={"arsync_key": KEY}))
    update = mapped("charge.succeeded", charge).subject
    assert isinstance(update, ChargeUpdate) and (update.processor_id, update.key) == (PI, KEY)


def test_an_ach_charge_pending_then_failed_is_a_decline_not_a_return() -> None:
    ach = {"type": "us_bank_account", "us_bank_account": {"bank_name": "STRIPE TEST BANK", "last4": "6789"}}
    pending = fixture("charge", status="pending", paid=False, payment_intent=PI, payment_method_details=ach)
    assert mapped("charge.pending", pending).subject == ChargeUpdate(
        PI, None, ChargeState.PROCESSING, Decimal("1.00"), "USD", method_type="us_bank_account", charge_id=CHARGE
    )
    failed = fixture(
        "charge",
        status="failed",
        paid=False,
        payment_intent=PI,
        payment_method_details=ach,
        failure_code="insufficient_funds",
        failure_message="The account has insufficient funds.",
        failure_balance_transaction="txn_Q1",
    )
    update = mapped("charge.failed", failed).subject
    assert update == ChargeUpdate(
        PI,
        None,
        ChargeState.SOFT_DECLINE,
        Decimal("1.00"),
        "USD",
        decline_code="insufficient_funds",
        method_type="us_bank_account",
        charge_id=CHARGE,
        returned=False,
    )
    closed = mapped("charge.failed", {**failed, "failure_code": "bank_account_closed"}).subject
    assert isinstance(closed, ChargeUpdate) and closed.state is ChargeState.HARD_DECLINE and not closed.returned


# --- ACH returns after success: Stripe's disputes ---------------------------------------------


@pytest.mark.parametrize(
    ("reason", "state"),
    [
        ("insufficient_funds", ChargeState.SOFT_DECLINE),
        ("incorrect_account_details", ChargeState.HARD_DECLINE),
        ("bank_cannot_process", ChargeState.SOFT_DECLINE),
    ],
)
def test_an_ach_failure_after_success_is_a_returned_charge(reason: str, state: ChargeState) -> None:
    """Stripe creates a dispute with one of these reasons when an ACH debit fails after it succeeded."""
    dispute = fixture(
        "dispute",
        reason=reason,
        payment_intent=PI,
        payment_method_details={"type": "us_bank_account"},
        status="lost",
    )
    event = mapped("charge.dispute.created", dispute)
    assert event.kind is EventKind.CHARGE and event.object_id == DISPUTE
    assert event.subject == ChargeUpdate(
        PI,
        None,
        state,
        Decimal("10.00"),
        "USD",
        decline_code=reason,
        method_type="us_bank_account",
        charge_id=CHARGE,
        returned=True,
    )
    # Without payment method details (older API versions) the reason alone tells; the key comes
    # from an expanded PaymentIntent, the charge stands in when no PaymentIntent is named.
    bare = {
        **dispute,
        "payment_method_details": None,
        "payment_intent": fixture("payment_intent", metadata={"arsync_key": KEY}),
    }
    update = mapped("charge.dispute.created", bare).subject
    assert isinstance(update, ChargeUpdate) and (update.key, update.returned) == (KEY, True)
    no_intent = mapped("charge.dispute.created", {**dispute, "payment_intent": None}).subject
    assert isinstance(no_intent, ChargeUpdate) and no_intent.processor_id == CHARGE
    # The same dispute's later events are disputes like any other.
    withdrawn = mapped("charge.dispute.funds_withdrawn", dispute)
    assert withdrawn.kind is EventKind.DISPUTE
    assert withdrawn.subject == DisputeUpdate(DISPUTE, PI, Decimal("10.00"), "USD", "lost", reason, CHARGE)


def test_a_card_dispute_with_a_bank_reason_is_not_a_return() -> None:
    dispute = fixture("dispute", reason="insufficient_funds")  # the fixture's details say card
    assert mapped("charge.dispute.created", dispute).kind is EventKind.DISPUTE


@pytest.mark.parametrize("kind", sorted(DISPUTE_EVENTS))
def test_the_fixture_dispute(kind: str) -> None:
    event = mapped(kind, fixture("dispute"))
    assert event.kind is EventKind.DISPUTE and event.object_id == DISPUTE
    assert event.subject == DisputeUpdate(
        DISPUTE, CHARGE, Decimal("10.00"), "USD", "warning_needs_response", reason="general", charge_id=CHARGE
    )


# --- Refunds ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(REFUND_EVENTS))
def test_the_fixture_refund(kind: str) -> None:
    event = mapped(kind, fixture("refund"))
    assert event.kind is EventKind.REFUND and event.object_id == REFUND
    assert event.subject == RefundUpdate(REFUND, CHARGE, Decimal("1.00"), "USD", "succeeded")


def test_a_refund_of_ours_failed() -> None:
    refund = fixture("refund", payment_intent=PI, status="failed", metadata={"arsync_key": "refund:acme:130:1"})
    assert mapped("refund.failed", refund).subject == RefundUpdate(
        REFUND, PI, Decimal("1.00"), "USD", "failed", "refund:acme:130:1"
    )


def test_charge_refunded_names_the_newest_refund_or_nothing() -> None:
    older = fixture("refund", id="re_older", created=1234567000, amount=30)
    newest = fixture("refund", created=1234567890, amount=70, metadata={"arsync_key": "refund:acme:130:2"})
    charge = fixture("charge", amount_refunded=100, refunded=True)
    charge["refunds"]["data"] = [older, newest]
    event = mapped("charge.refunded", charge)
    assert event.kind is EventKind.REFUND and event.object_id == CHARGE
    assert event.subject == RefundUpdate(REFUND, CHARGE, Decimal("0.70"), "USD", "succeeded", "refund:acme:130:2")
    # The fixture lists no refunds; newer API versions leave ``refunds`` out altogether.
    assert mapped("charge.refunded", fixture("charge")) == ProcessorEvent(
        "evt_Q1", EVENT_TIME, "charge.refunded", EventKind.OTHER, None, CHARGE
    )
    without = fixture("charge")
    del without["refunds"]
    assert mapped("charge.refunded", without).kind is EventKind.OTHER


# --- Payouts ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(PAYOUT_EVENTS))
def test_the_fixture_payout(kind: str) -> None:
    event = mapped(kind, fixture("payout"))
    assert event.kind is EventKind.PAYOUT and event.object_id == PAYOUT
    assert event.subject == PayoutUpdate(PAYOUT, Decimal("11.00"), "USD", "in_transit", date(2009, 2, 13))


def test_a_failed_payout_without_arrival_date() -> None:
    event = mapped("payout.failed", fixture("payout", status="failed", arrival_date=None, currency="eur"))
    assert event.subject == PayoutUpdate(PAYOUT, Decimal("11.00"), "EUR", "failed", None)


# --- Checkout and enrolments -------------------------------------------------------------------


def saved_setup_intent(**changes: Any) -> dict[str, Any]:
    """The fixture SetupIntent, succeeded for ``cus_Q1`` with the fixture card expanded."""
    saved: dict[str, Any] = {
        "status": "succeeded",
        "last_setup_error": None,
        "next_action": None,
        "customer": "cus_Q1",
        "payment_method": fixture("payment_method"),
        "metadata": {"arsync_key": "link:acme:cus:1"},
    }
    return fixture("setup_intent", **{**saved, **changes})


VISA = SavedMethod("cus_Q1", PAYMENT_METHOD, "card", "visa", "4242", "credit")


def test_enrolment_from_a_setup_intent() -> None:
    intent = saved_setup_intent()
    assert enrolment_from_setup_intent(intent, intent["payment_method"], SETUP_INTENT) == Enrolment(
        SETUP_INTENT, "cus_Q1", VISA, CREATED, "off_session", {"arsync_key": "link:acme:cus:1"}
    )
    on_session = saved_setup_intent(usage="on_session", payment_method=PAYMENT_METHOD)
    enrolment = enrolment_from_setup_intent(on_session, fixture("payment_method"), "cs_Q1", metadata={"a": "b"})
    assert (enrolment.link_id, enrolment.scope, enrolment.metadata) == ("cs_Q1", "on_session", {"a": "b"})


def test_a_bank_account_enrolment() -> None:
    bank = fixture(
        "payment_method",
        id="pm_bank",
        type="us_bank_account",
        customer="cus_Q1",
        us_bank_account={"bank_name": "STRIPE TEST BANK", "last4": "6789", "account_type": "checking"},
    )
    enrolment = enrolment_from_setup_intent(saved_setup_intent(payment_method="pm_bank"), bank, SETUP_INTENT)
    assert enrolment.method == SavedMethod("cus_Q1", "pm_bank", "us_bank_account", "STRIPE TEST BANK", "6789")


@pytest.mark.parametrize(
    ("changes", "method", "message"),
    [
        ({"status": "requires_payment_method"}, None, "not succeeded"),
        ({"customer": None}, None, "no customer"),
        ({"payment_method": "pm_other"}, None, "saved pm_other"),
        ({}, {"type": "sepa_debit", "sepa_debit": {}}, "cannot be saved"),
    ],
)
def test_what_is_not_an_enrolment(changes: dict[str, Any], method: dict[str, Any] | None, message: str) -> None:
    intent = saved_setup_intent(**changes)
    payment_method = fixture("payment_method", **(method or {}))
    with pytest.raises(MappingError, match=message):
        enrolment_from_setup_intent(intent, payment_method, SETUP_INTENT)


def completed_setup_session(**changes: Any) -> dict[str, Any]:
    """The fixture session turned into a completed setup link with its SetupIntent and card expanded."""
    completed: dict[str, Any] = {
        "mode": "setup",
        "status": "complete",
        "customer": "cus_Q1",
        "payment_intent": None,
        "setup_intent": saved_setup_intent(),
        "metadata": {"arsync_key": "link:acme:cus:1", "arsync_customer": "c-1"},
    }
    return fixture("checkout.session", **{**completed, **changes})


def test_enrolment_from_a_completed_setup_session() -> None:
    assert enrolment_from_session(completed_setup_session()) == Enrolment(
        SESSION, "cus_Q1", VISA, CREATED, "off_session", {"arsync_key": "link:acme:cus:1", "arsync_customer": "c-1"}
    )
    assert enrolment_from_session(completed_setup_session(status="open")) is None
    assert enrolment_from_session(completed_setup_session(status="expired")) is None
    assert enrolment_from_session(fixture("checkout.session", status="complete")) is None  # payment mode
    waiting = completed_setup_session(setup_intent=saved_setup_intent(status="requires_action"))
    assert enrolment_from_session(waiting) is None
    with pytest.raises(MappingError, match="not expanded"):
        enrolment_from_session(completed_setup_session(setup_intent=SETUP_INTENT))


def test_checkout_session_completed() -> None:
    unexpanded = completed_setup_session(setup_intent=SETUP_INTENT)
    assert mapped("checkout.session.completed", unexpanded) == ProcessorEvent(
        "evt_Q1", EVENT_TIME, "checkout.session.completed", EventKind.ENROLMENT, None, SESSION
    )
    expanded = mapped("checkout.session.completed", completed_setup_session())
    assert expanded.kind is EventKind.ENROLMENT and isinstance(expanded.subject, Enrolment)
    assert expanded.subject.method == VISA
    # A payment link's completion: the PaymentIntent's own events carry the payment.
    paid = mapped("checkout.session.completed", fixture("checkout.session", status="complete"))
    assert (paid.kind, paid.subject, paid.object_id) == (EventKind.OTHER, None, SESSION)


def test_hosted_link_from_the_fixture_session() -> None:
    assert hosted_link(fixture("checkout.session")) == HostedLink(
        SESSION, "https://checkout.stripe.com/pay/c/" + SESSION, CREATED
    )
    assert hosted_link(fixture("checkout.session", expires_at=None)).expires_at is None
    with pytest.raises(MappingError, match="no url"):
        hosted_link(fixture("checkout.session", url=None))


def test_link_params_setup_and_payment() -> None:
    setup = LinkRequest("link:acme:cus:1", "cus_Q1", "https://x.test/ok", "https://x.test/no", metadata={"c": "1"})
    metadata = {"c": "1", "arsync_key": "link:acme:cus:1"}
    assert link_params(setup) == {
        "mode": "setup",
        "customer": "cus_Q1",
        "payment_method_types": ["card", "us_bank_account"],
        "success_url": "https://x.test/ok",
        "cancel_url": "https://x.test/no",
        "metadata": metadata,
        "setup_intent_data": {"metadata": metadata},
    }
    payment = LinkRequest(
        "pay:acme:130",
        "cus_Q1",
        "https://x.test/ok",
        "https://x.test/no",
        method_types=("card",),
        amount=Decimal("1500"),
        currency="JPY",
    )
    params = link_params(payment)
    assert params["mode"] == "payment"
    assert params["line_items"] == [
        {"quantity": 1, "price_data": {"currency": "jpy", "unit_amount": 1500, "product_data": {"name": "Payment"}}}
    ]
    assert params["payment_intent_data"] == {"metadata": {"arsync_key": "pay:acme:130"}}
    assert "setup_future_usage" not in params["payment_intent_data"] and "setup_intent_data" not in params


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"metadata": {"arsync_key": "other"}}, ValueError, "arsync_key"),
        ({"method_types": ()}, ValueError, "payment method type"),
        ({"amount": Decimal("10")}, ValueError, "currency"),
        ({"amount": Decimal("10.001"), "currency": "USD"}, ValueError, "minor unit"),
        ({"amount": Decimal("0"), "currency": "USD"}, ValueError, "positive"),
        ({"amount": 10.5, "currency": "USD"}, TypeError, "Decimal"),
    ],
)
def test_link_params_refuse(changes: dict[str, Any], error: type[Exception], message: str) -> None:
    request = LinkRequest("k", "cus_Q1", "https://x.test/ok", "https://x.test/no", **changes)
    with pytest.raises(error, match=message):
        link_params(request)


# --- Other events and malformed ones ------------------------------------------------------------


def test_the_fixture_event_is_other() -> None:
    """Stripe's example event is ``plan.created``: kept, unmapped, so the cursor moves past it."""
    assert event_from_payload(fixture("event")) == ProcessorEvent(
        "evt_1Pgc76B7WZ01zgkWwyRHS12y",
        CREATED,
        "plan.created",
        EventKind.OTHER,
        None,
        "price_1PgafmB7WZ01zgkW6dKueIc5",
    )


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        ("setup_intent.succeeded", "setup_intent"),
        ("payment_intent.created", "payment_intent"),
        ("payment_intent.requires_action", "payment_intent"),
        ("charge.captured", "charge"),
        ("charge.updated", "charge"),
        ("balance.available", "balance"),
        ("payment_method.attached", "payment_method"),
        ("customer.created", "customer"),
        ("something.new_next_year", "charge"),
    ],
)
def test_unknown_and_unhandled_events_are_other(kind: str, name: str) -> None:
    event = mapped(kind, fixture(name))
    assert (event.kind, event.subject) == (EventKind.OTHER, None)
    assert event.object_id == fixture(name).get("id")


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ({"type": "charge.succeeded", "created": 1, "data": {"object": {}}}, "event: no id"),
        ({"id": "evt_1", "created": 1, "data": {"object": {}}}, "no type"),
        ({"id": "evt_1", "type": "x", "created": "yesterday", "data": {"object": {}}}, "Unix timestamp"),
        ({"id": "evt_1", "type": "x", "created": 1}, "no data.object"),
        ({"id": "evt_1", "type": "payout.paid", "created": 1, "data": {"object": {"id": "po_1"}}}, "po_1: no currency"),
        (
            {
                "id": "evt_1",
                "type": "charge.succeeded",
                "created": 1,
                "data": {"object": {"id": "ch_1", "amount": 1.5}},
            },
            "charge ch_1: no currency",
        ),
    ],
)
def test_malformed_events_raise(event: dict[str, Any], message: str) -> None:
    with pytest.raises(MappingError, match=message):
        event_from_payload(event)


def test_a_float_amount_in_an_event_is_refused() -> None:
    """Money is never a float: a payload parsed without ``parse_float=Decimal`` is a bug, not data."""
    with pytest.raises(TypeError, match="float"):
        event_from_payload(envelope("payout.paid", fixture("payout", amount=11.5)))


def test_utc_timestamps() -> None:
    assert utc_timestamp(0, "x") == datetime(1970, 1, 1, tzinfo=UTC)
    assert utc_timestamp(Decimal("1234567890"), "x") == CREATED
    for bad in (True, 1.5, "1", None, Decimal("1.5")):
        with pytest.raises(MappingError):
            utc_timestamp(bad, "x")


def test_every_handled_type_is_tested_above() -> None:
    """The event types the tests above map are all that is handled (a new type needs its own test)."""
    covered = {*PAYMENT_INTENT_EVENTS, "charge.succeeded", "charge.failed", "charge.pending", "charge.refunded"}
    covered |= REFUND_EVENTS | DISPUTE_EVENTS | PAYOUT_EVENTS | {"checkout.session.completed"}
    assert covered == HANDLED_EVENTS


# --- Balance transactions ------------------------------------------------------------------------


def test_the_fixture_balance_transaction() -> None:
    assert balance_line(fixture("balance_transaction"), PAYOUT) == BalanceLine(
        TXN, PAYOUT, "charge", CHARGE, None, Decimal("1.00"), Decimal("0.00"), Decimal("1.00"), "USD", CREATED, "charge"
    )


def test_balance_lines_with_fees_and_expanded_sources() -> None:
    charge = fixture(
        "balance_transaction",
        amount=10000,
        fee=320,
        net=9680,
        fee_details=[{"amount": 320, "currency": "usd", "description": "Stripe processing fees", "type": "stripe_fee"}],
        source=fixture("charge", payment_intent=PI),
    )
    assert balance_line(charge, PAYOUT) == BalanceLine(
        TXN,
        PAYOUT,
        "charge",
        CHARGE,
        PI,
        Decimal("100.00"),
        Decimal("3.20"),
        Decimal("96.80"),
        "USD",
        CREATED,
        "charge",
    )
    refund = fixture(
        "balance_transaction",
        id="txn_refund",
        type="refund",
        reporting_category="refund",
        amount=-100,
        net=-100,
        source=fixture("refund", charge=fixture("charge", payment_intent="pi_refunded")),
    )
    line = balance_line(refund, PAYOUT)
    assert (line.type, line.source_id, line.payment_processor_id, line.amount, line.net) == (
        "refund",
        REFUND,
        "pi_refunded",
        Decimal("-1.00"),
        Decimal("-1.00"),
    )
    dispute = fixture(
        "balance_transaction",
        id="txn_dispute",
        type="adjustment",
        reporting_category="dispute",
        amount=-1000,
        fee=1500,
        net=-2500,
        source=fixture("dispute"),
    )
    line = balance_line(dispute, PAYOUT)
    assert (line.source_id, line.payment_processor_id, line.fee, line.net) == (
        DISPUTE,
        None,
        Decimal("15.00"),
        Decimal("-25.00"),
    )
