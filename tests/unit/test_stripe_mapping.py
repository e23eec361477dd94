"""Stripe payloads -> the payment port's records: money, states, declines, errors.

The objects of Stripe's ``fixtures3.json`` (the examples Stripe generates from its
API definition) are mapped as they are, read with ``parse_float=Decimal``.
"""

from __future__ import annotations

import copy
import json
from decimal import Decimal
from functools import cache
from typing import Any

import pytest

from connectors.base import Actor, ChargeOutcome, ChargeState, SavedMethod
from connectors.http import Resolution
from connectors.stripe.mapping import (
    HARD_DECLINE_CODES,
    SOFT_DECLINE_CODES,
    RefundSummary,
    classify_error,
    currency_exponent,
    decline_state,
    from_minor_units,
    outcome_from_card_error,
    outcome_from_charge,
    outcome_from_payment_intent,
    pick_attempt,
    refund_summary,
    saved_method,
    to_minor_units,
)
from connectors.values import MappingError
from tests.refdata import require_refdata

FIXTURES = require_refdata("stripe", "fixtures3.json")


@cache
def _resources() -> dict[str, Any]:
    document = json.loads(FIXTURES.read_text(encoding="utf-8"), parse_float=Decimal)
    resources = document["resources"]
    assert isinstance(resources, dict)
    return resources


def fixture(name: str) -> dict[str, Any]:
    """A fresh copy of Stripe's example ``name`` object."""
    return copy.deepcopy(_resources()[name])


# --- money ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "currency", "minor"),
    [
        (Decimal("12.34"), "USD", 1234),
        (Decimal("12.34"), "usd", 1234),
        (Decimal("0.01"), "EUR", 1),
        (Decimal("1234567.89"), "GBP", 123456789),
        (Decimal("12"), "USD", 1200),
        (Decimal("1500"), "JPY", 1500),
        (Decimal("1500.000"), "jpy", 1500),
        (Decimal("990"), "KRW", 990),
        (Decimal("1.230"), "KWD", 1230),
        (Decimal("100"), "HUF", 10000),
        (7, "USD", 700),
    ],
)
def test_to_minor_units(amount: Decimal | int, currency: str, minor: int) -> None:
    assert to_minor_units(amount, currency) == minor


@pytest.mark.parametrize(
    ("amount", "currency"),
    [(Decimal("12.345"), "USD"), (Decimal("1500.5"), "JPY"), (Decimal("0.0001"), "KWD"), (Decimal("NaN"), "USD")],
)
def test_to_minor_units_refuses_what_the_minor_unit_cannot_hold(amount: Decimal, currency: str) -> None:
    with pytest.raises(ValueError, match=r"minor unit|finite"):
        to_minor_units(amount, currency)


def test_money_is_never_a_float() -> None:
    with pytest.raises(TypeError, match="Decimal"):
        to_minor_units(12.34, "USD")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="float"):
        from_minor_units(1234.0, "USD")


@pytest.mark.parametrize(
    ("minor", "currency", "text"),
    [(1099, "usd", "10.99"), (1, "USD", "0.01"), (0, "eur", "0.00"), (1500, "jpy", "1500"), (1230, "kwd", "1.230")],
)
def test_from_minor_units_keeps_the_currency_exponent(minor: int, currency: str, text: str) -> None:
    value = from_minor_units(minor, currency)
    assert str(value) == text
    assert to_minor_units(value, currency) == minor


@pytest.mark.parametrize("currency", ["USD", "JPY", "KWD"])
def test_minor_units_round_trip(currency: str) -> None:
    for minor in (*range(0, 2_000, 7), 99_999_999):
        assert to_minor_units(from_minor_units(minor, currency), currency) == minor


def test_currency_exponents_and_bad_codes() -> None:
    assert [currency_exponent(c) for c in ("usd", "EUR", "GBP", "JPY", "BHD", "ISK")] == [2, 2, 2, 0, 3, 2]
    with pytest.raises(MappingError):
        currency_exponent("dollars")
    with pytest.raises(MappingError):
        from_minor_units(True, "USD")
    with pytest.raises(MappingError):
        from_minor_units("12.5", "USD")


# --- declines -------------------------------------------------------------------------


@pytest.mark.parametrize("code", sorted(SOFT_DECLINE_CODES))
def test_soft_declines(code: str) -> None:
    assert decline_state("card_declined", code) is ChargeState.SOFT_DECLINE


@pytest.mark.parametrize("code", sorted(HARD_DECLINE_CODES))
def test_hard_declines(code: str) -> None:
    assert decline_state("card_declined", code) is ChargeState.HARD_DECLINE


@pytest.mark.parametrize(
    ("code", "decline_code", "advice_code", "state"),
    [
        # Stripe's own examples of the kinds of card error.
        ("card_declined", "insufficient_funds", None, ChargeState.SOFT_DECLINE),
        ("card_declined", "generic_decline", None, ChargeState.SOFT_DECLINE),
        ("card_declined", "lost_card", None, ChargeState.HARD_DECLINE),
        ("card_declined", "stolen_card", None, ChargeState.HARD_DECLINE),
        ("expired_card", "expired_card", None, ChargeState.HARD_DECLINE),
        ("incorrect_number", None, None, ChargeState.HARD_DECLINE),
        ("invalid_expiry_year", None, None, ChargeState.HARD_DECLINE),
        ("card_declined", "invalid_account", None, ChargeState.HARD_DECLINE),
        ("processing_error", None, None, ChargeState.SOFT_DECLINE),
        # No decline code (localstripe sends only ``code``): the code decides.
        ("card_declined", None, None, ChargeState.SOFT_DECLINE),
        (None, None, None, ChargeState.SOFT_DECLINE),
        # 3-D Secure needed off session.
        ("authentication_required", "authentication_required", None, ChargeState.REQUIRES_ACTION),
        ("payment_intent_authentication_failure", None, None, ChargeState.REQUIRES_ACTION),
        # A network's advice not to try again overrides a soft code.
        ("card_declined", "do_not_honor", "do_not_try_again", ChargeState.HARD_DECLINE),
        ("card_declined", "generic_decline", "confirm_card_data", ChargeState.HARD_DECLINE),
        ("card_declined", "insufficient_funds", "try_again_later", ChargeState.SOFT_DECLINE),
        # A code Stripe adds later is retried, not abandoned.
        ("card_declined", "some_future_code", None, ChargeState.SOFT_DECLINE),
    ],
)
def test_decline_table(code: str | None, decline_code: str | None, advice_code: str | None, state: ChargeState) -> None:
    assert decline_state(code, decline_code, advice_code) is state


# --- PaymentIntents -------------------------------------------------------------------


def intent(status: str, **fields: Any) -> dict[str, Any]:
    """Stripe's example PaymentIntent, with our key in its metadata and ``fields`` over it."""
    pi = fixture("payment_intent")
    pi.update(status=status, last_payment_error=None, metadata={"arsync_key": "charge:t:c:130:1"})
    pi.update(fields)
    return pi


@pytest.mark.parametrize(
    ("status", "state"),
    [
        ("succeeded", ChargeState.SUCCEEDED),
        ("processing", ChargeState.PROCESSING),
        ("requires_capture", ChargeState.PROCESSING),
        ("requires_action", ChargeState.REQUIRES_ACTION),
    ],
)
def test_payment_intent_states(status: str, state: ChargeState) -> None:
    pi = intent(status)
    assert outcome_from_payment_intent(pi) == ChargeOutcome(
        "charge:t:c:130:1", state, pi["id"], Decimal("10.99"), "USD"
    )


def test_the_fixture_payment_intent_as_stripe_gives_it() -> None:
    pi = fixture("payment_intent")
    # requires_payment_method after an attempt whose error has no code: a decline of unknown reason.
    assert pi["status"] == "requires_payment_method" and pi["last_payment_error"] == {"type": "idempotency_error"}
    outcome = outcome_from_payment_intent(pi, key="k")
    assert outcome == ChargeOutcome(
        "k", ChargeState.SOFT_DECLINE, "pi_1PgafyB7WZ01zgkWSjxsAJo3", Decimal("10.99"), "USD"
    )
    with pytest.raises(MappingError, match="arsync_key"):
        outcome_from_payment_intent(pi)


def test_a_failed_attempt_is_classified_from_last_payment_error() -> None:
    error = {"type": "card_error", "code": "card_declined", "decline_code": "stolen_card", "message": "declined"}
    outcome = outcome_from_payment_intent(intent("requires_payment_method", last_payment_error=error))
    assert (outcome.state, outcome.decline_code, outcome.message) == (
        ChargeState.HARD_DECLINE,
        "stolen_card",
        "declined",
    )
    auth = {"type": "card_error", "code": "authentication_required", "decline_code": "authentication_required"}
    assert outcome_from_payment_intent(intent("requires_payment_method", last_payment_error=auth)).state is (
        ChargeState.REQUIRES_ACTION
    )


def test_a_canceled_intent_is_a_soft_decline_and_an_unconfirmed_one_is_no_attempt() -> None:
    canceled = outcome_from_payment_intent(intent("canceled", cancellation_reason="abandoned"))
    assert (canceled.state, canceled.decline_code) == (ChargeState.SOFT_DECLINE, "canceled")
    for status in ("requires_confirmation", "requires_payment_method"):
        with pytest.raises(MappingError, match="not the result of a confirmed attempt"):
            outcome_from_payment_intent(intent(status))


def test_zero_decimal_payment_intent() -> None:
    outcome = outcome_from_payment_intent(intent("succeeded", amount=1500, currency="jpy"))
    assert (outcome.amount, outcome.currency) == (Decimal("1500"), "JPY")


def test_card_error_with_and_without_the_payment_intent() -> None:
    pi = intent("requires_payment_method", amount=5000, currency="eur")
    error = {"type": "card_error", "code": "card_declined", "decline_code": "insufficient_funds", "payment_intent": pi}
    outcome = outcome_from_card_error("k", error, Decimal("1"), "USD")
    assert outcome == ChargeOutcome(
        "k", ChargeState.SOFT_DECLINE, pi["id"], Decimal("50.00"), "EUR", "insufficient_funds", None
    )
    bare = outcome_from_card_error("k", {"code": "card_declined"}, Decimal("12.30"), "usd", processor_id="pi_x")
    assert bare == ChargeOutcome("k", ChargeState.SOFT_DECLINE, "pi_x", Decimal("12.30"), "USD", "card_declined")


def test_pick_attempt_prefers_money_that_moved_then_the_first() -> None:
    def attempt(pi: str, state: ChargeState) -> ChargeOutcome:
        return ChargeOutcome("k", state, pi, Decimal("1.00"), "USD")

    assert pick_attempt([]) is None
    first, second = attempt("pi_1", ChargeState.SUCCEEDED), attempt("pi_2", ChargeState.SUCCEEDED)
    assert pick_attempt([first, second]) is first
    declined, paid = attempt("pi_1", ChargeState.SOFT_DECLINE), attempt("pi_2", ChargeState.SUCCEEDED)
    assert pick_attempt([declined, paid]) is paid
    action = attempt("pi_3", ChargeState.REQUIRES_ACTION)
    assert pick_attempt([declined, action]) is action


# --- charges, refunds, payment methods (Stripe's examples) -----------------------------


def test_the_fixture_charge() -> None:
    charge = fixture("charge")
    # Stripe's example is an authorisation not yet captured: money held, not settled.
    assert (charge["status"], charge["captured"]) == ("succeeded", False)
    assert outcome_from_charge(charge, "k") == ChargeOutcome(
        "k", ChargeState.PROCESSING, "ch_1PgafuB7WZ01zgkWXYmPNZs8", Decimal("1.00"), "USD"
    )
    charge.update(captured=True, payment_intent="pi_1")
    assert outcome_from_charge(charge, "k").state is ChargeState.SUCCEEDED
    assert outcome_from_charge(charge, "k").processor_id == "pi_1"


def test_a_failed_charge_uses_the_outcome_reason() -> None:
    charge = fixture("charge")
    charge.update(status="failed", failure_code="card_declined", failure_message="Your card was declined.")
    charge["outcome"].update(type="issuer_declined", reason="lost_card")
    outcome = outcome_from_charge(charge, "k")
    assert (outcome.state, outcome.decline_code) == (ChargeState.HARD_DECLINE, "lost_card")
    charge["outcome"].update(reason=None)
    assert outcome_from_charge(charge, "k").state is ChargeState.SOFT_DECLINE
    charge["status"] = "pending"
    assert outcome_from_charge(charge, "k").state is ChargeState.PROCESSING


def test_the_fixture_refund() -> None:
    assert refund_summary(fixture("refund")) == RefundSummary(
        "re_1Pgc72B7WZ01zgkWqPvrRrPE", "ch_1PgafuB7WZ01zgkWXYmPNZs8", Decimal("1.00"), "USD", "succeeded"
    )


def test_the_fixture_payment_method() -> None:
    pm = fixture("payment_method")
    method = saved_method(pm, "cus_1")
    assert method is not None
    assert pm["customer"] is None  # the example is not attached; the customer we listed it under stands in
    assert method == SavedMethod("cus_1", "pm_1Pgc75B7WZ01zgkWlHVgdEGJ", "card", "visa", "4242", "credit")
    bank = {
        "id": "pm_bank",
        "type": "us_bank_account",
        "customer": "cus_2",
        "us_bank_account": {"bank_name": "STRIPE TEST BANK", "last4": "6789", "account_type": "checking"},
    }
    assert saved_method(bank) == SavedMethod("cus_2", "pm_bank", "us_bank_account", "STRIPE TEST BANK", "6789")
    assert saved_method({"id": "pm_s", "type": "sepa_debit", "customer": "cus_3"}) is None


# --- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error", "resolution", "actor"),
    [
        (None, {}, Resolution.RETRY, Actor.TRANSIENT),
        (500, {"type": "api_error"}, Resolution.RETRY, Actor.TRANSIENT),
        (502, {}, Resolution.RETRY, Actor.TRANSIENT),
        (503, {}, Resolution.RETRY, Actor.TRANSIENT),
        (409, {"type": "idempotency_error", "code": "idempotency_key_in_use"}, Resolution.RETRY, Actor.TRANSIENT),
        (429, {"type": "invalid_request_error", "code": "rate_limit"}, Resolution.RATE_LIMITED, Actor.TRANSIENT),
        (400, {"code": "rate_limit"}, Resolution.RATE_LIMITED, Actor.TRANSIENT),
        (401, {"type": "invalid_request_error"}, Resolution.FAIL, Actor.CONFIG),
        (403, {"type": "invalid_request_error"}, Resolution.FAIL, Actor.CONFIG),
        (400, {"type": "idempotency_error"}, Resolution.FAIL, Actor.SYSTEM),
        (400, {"type": "invalid_request_error", "code": "parameter_missing"}, Resolution.FAIL, Actor.SYSTEM),
        (404, {"type": "invalid_request_error", "code": "resource_missing"}, Resolution.FAIL, Actor.SYSTEM),
        (402, {"type": "card_error", "code": "card_declined"}, Resolution.FAIL, Actor.SYSTEM),
    ],
)
def test_error_table(status: int | None, error: dict[str, Any], resolution: Resolution, actor: Actor) -> None:
    verdict = classify_error(status, error)
    assert (verdict.resolution, verdict.actor) == (resolution, actor)
