"""Stripe payloads <-> the payment port's records. Pure functions.

Payloads are plain mappings in Stripe's JSON shape (an SDK object's
``to_dict()``, an error body's ``error`` object, or an example from Stripe's
``fixtures3.json``); nothing here imports the SDK.

* **Money.** Stripe amounts are integers in the currency's minor unit. The
  exponent comes from :data:`ZERO_DECIMAL` / :data:`THREE_DECIMAL` (Stripe's
  own lists), 2 otherwise. An amount that does not fit the minor unit exactly
  is refused, never rounded; a ``float`` is refused outright.
* **States.** A PaymentIntent's ``status`` gives the port's
  :class:`~connectors.base.ChargeState`; a failed attempt (a card error, or a
  ``requires_payment_method`` PaymentIntent carrying ``last_payment_error``)
  is classified by :func:`decline_state` from the decline code.
* **Errors.** :func:`classify_error` turns an HTTP status and Stripe's
  ``error`` object into a :class:`~connectors.http.Classification`: who must
  act, and whether trying again can help.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from connectors.base import Actor, ChargeOutcome, ChargeState, SavedMethod
from connectors.http import Classification, Resolution
from connectors.values import MappingError, to_decimal

KEY_METADATA = "arsync_key"
"""The PaymentIntent metadata entry that carries our deterministic key."""
CUSTOMER_METADATA = "arsync_customer"
"""The Customer metadata entry that carries our customer id."""

# --- Money ------------------------------------------------------------------------

ZERO_DECIMAL = frozenset(
    {"BIF", "CLP", "DJF", "GNF", "JPY", "KMF", "KRW", "MGA", "PYG", "RWF", "UGX", "VND", "VUV", "XAF", "XOF", "XPF"}
)
"""Currencies Stripe counts in whole units (``amount=500`` is ¥500)."""
THREE_DECIMAL = frozenset({"BHD", "JOD", "KWD", "OMR", "TND"})
"""Currencies Stripe counts in thousandths (Stripe also wants the last digit to be 0)."""


def currency_exponent(currency: str) -> int:
    """Digits after the decimal point in Stripe's integer amounts for ``currency``.

    Every other currency has two, including ``HUF``, ``ISK`` and ``TWD``, which
    Stripe still counts in hundredths although they settle in whole units.
    """
    code = normalize_currency(currency)
    if code in ZERO_DECIMAL:
        return 0
    if code in THREE_DECIMAL:
        return 3
    return 2


def normalize_currency(currency: str) -> str:
    """The ISO 4217 code in upper case (Stripe sends and takes lower case)."""
    code = currency.strip().upper()
    if len(code) != 3 or not code.isalpha():
        raise MappingError(f"not an ISO 4217 currency code: {currency!r}")
    return code


def to_minor_units(amount: Decimal | int, currency: str) -> int:
    """``amount`` in ``currency`` as Stripe's integer amount. Exact or refused."""
    if isinstance(amount, bool) or not isinstance(amount, Decimal | int):
        raise TypeError(f"money must be a Decimal, not {type(amount).__name__} ({amount!r})")
    value = Decimal(amount)
    if not value.is_finite():
        raise ValueError(f"amount is not a finite number: {amount!r}")
    minor = value.scaleb(currency_exponent(currency))
    if minor != minor.to_integral_value():
        raise ValueError(
            f"{amount} {normalize_currency(currency)} has more decimals than the currency's minor unit "
            f"({currency_exponent(currency)})"
        )
    return int(minor)


def from_minor_units(minor: object, currency: str) -> Decimal:
    """Stripe's integer amount as a ``Decimal`` with the currency's exponent (``1099`` USD -> ``10.99``)."""
    value = to_decimal(minor, "stripe", "amount")
    if value != value.to_integral_value():
        raise MappingError(f"amount is not a whole number of minor units: {minor!r}")
    return Decimal(int(value)).scaleb(-currency_exponent(currency))


# --- Declines -----------------------------------------------------------------------

REQUIRES_ACTION_CODES = frozenset({"authentication_required", "payment_intent_authentication_failure"})
"""The customer must authenticate (3-D Secure): off-session retries cannot succeed."""

HARD_DECLINE_CODES = frozenset(
    {
        # The card or account can never be charged again as it is.
        "lost_card",
        "stolen_card",
        "pickup_card",
        "expired_card",
        "incorrect_number",
        "incorrect_cvc",
        "incorrect_zip",
        "incorrect_pin",
        "card_not_supported",
        "currency_not_supported",
        "fraudulent",
        "merchant_blacklist",
        "restricted_card",
        "security_violation",
        "do_not_try_again",
        "new_account_information_available",
        "revocation_of_all_authorizations",
        "revocation_of_authorization",
        "stop_payment_order",
        "transaction_not_allowed",
        "service_not_allowed",
        "not_permitted",
        "pin_try_exceeded",
        "testmode_decline",
        # Bank debits (ACH): the account cannot be debited.
        "account_closed",
        "account_frozen",
        "bank_account_restricted",
        "bank_account_unusable",
        "bank_account_declined",
        "debit_not_authorized",
        "no_account",
    }
)
"""Decline codes never worth retrying: hand the invoice to dunning. Any ``invalid_*`` code is hard too."""

SOFT_DECLINE_CODES = frozenset(
    {
        "insufficient_funds",
        "processing_error",
        "try_again_later",
        "generic_decline",
        "card_declined",
        "do_not_honor",
        "issuer_not_available",
        "reenter_transaction",
        "approve_with_id",
        "call_issuer",
        "card_velocity_exceeded",
        "withdrawal_count_limit_exceeded",
        "no_action_taken",
        "duplicate_transaction",
    }
)
"""Decline codes worth retrying later. Unknown codes are treated as soft too (Stripe adds codes)."""

HARD_ADVICE_CODES = frozenset({"do_not_try_again", "confirm_card_data"})
"""Stripe's ``advice_code`` values that forbid retrying the same card (card networks fine retries of these)."""


def decline_state(code: str | None, decline_code: str | None = None, advice_code: str | None = None) -> ChargeState:
    """The port's state for a failed attempt, from Stripe's ``decline_code`` or, when absent, its ``code``."""
    reason = decline_code or code or ""
    if reason in REQUIRES_ACTION_CODES or code in REQUIRES_ACTION_CODES:
        return ChargeState.REQUIRES_ACTION
    if advice_code in HARD_ADVICE_CODES:
        return ChargeState.HARD_DECLINE
    if reason in HARD_DECLINE_CODES or reason.startswith("invalid_"):
        return ChargeState.HARD_DECLINE
    return ChargeState.SOFT_DECLINE


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _id_of(value: object) -> str | None:
    """An id from a field that is either the id or the expanded object."""
    if isinstance(value, Mapping):
        return _text(value.get("id"))
    return _text(value)


# --- PaymentIntents and charges -------------------------------------------------------

PAYMENT_INTENT_STATES: Mapping[str, ChargeState] = {
    "succeeded": ChargeState.SUCCEEDED,
    "processing": ChargeState.PROCESSING,
    "requires_capture": ChargeState.PROCESSING,
    "requires_action": ChargeState.REQUIRES_ACTION,
}
"""States read from ``status`` alone. ``requires_capture`` is money authorised and held (we capture
automatically, so it is short-lived): not a decline, not yet settled."""


def key_of(payment_intent: Mapping[str, Any]) -> str | None:
    """Our key, from the PaymentIntent's metadata."""
    metadata = payment_intent.get("metadata")
    return _text(metadata.get(KEY_METADATA)) if isinstance(metadata, Mapping) else None


def outcome_from_payment_intent(payment_intent: Mapping[str, Any], key: str | None = None) -> ChargeOutcome:
    """The port's outcome for a PaymentIntent (``key`` defaults to the one in its metadata).

    ``requires_payment_method`` after a failed attempt is a decline classified from
    ``last_payment_error``; ``canceled`` is a soft decline coded ``canceled`` (no money
    moved; a new attempt needs a new key). A PaymentIntent that was never confirmed is
    not an attempt and raises :class:`MappingError`.
    """
    pi_id = _text(payment_intent.get("id"))
    where = f"payment_intent {pi_id}"
    key = key or key_of(payment_intent)
    if key is None:
        raise MappingError(f"{where}: no {KEY_METADATA} in metadata")
    currency = _text(payment_intent.get("currency"))
    if currency is None:
        raise MappingError(f"{where}: no currency")
    amount = from_minor_units(payment_intent.get("amount"), currency)
    status = _text(payment_intent.get("status"))
    error = payment_intent.get("last_payment_error")
    base = ChargeOutcome(key, ChargeState.SUCCEEDED, pi_id, amount, normalize_currency(currency))
    if status is not None and status in PAYMENT_INTENT_STATES:
        return replace(base, state=PAYMENT_INTENT_STATES[status])
    if isinstance(error, Mapping) and status in ("requires_payment_method", "canceled"):
        return _declined(base, error)
    if status == "canceled":
        reason = _text(payment_intent.get("cancellation_reason"))
        return replace(
            base, state=ChargeState.SOFT_DECLINE, decline_code="canceled", message=f"canceled ({reason or 'no reason'})"
        )
    raise MappingError(f"{where}: status {status!r} is not the result of a confirmed attempt")


def outcome_from_card_error(
    key: str, error: Mapping[str, Any], amount: Decimal, currency: str, processor_id: str | None = None
) -> ChargeOutcome:
    """The port's outcome for a 402 card error on a charge.

    The PaymentIntent id comes from ``error.payment_intent`` when Stripe sends it;
    ``processor_id`` is what the caller found otherwise.
    """
    pi = error.get("payment_intent")
    pi_id = _id_of(pi) or processor_id
    if isinstance(pi, Mapping) and _text(pi.get("currency")) and pi.get("amount") is not None:
        currency = str(pi["currency"])
        amount = from_minor_units(pi["amount"], currency)
    base = ChargeOutcome(key, ChargeState.SOFT_DECLINE, pi_id, amount, normalize_currency(currency))
    return _declined(base, error)


def _declined(base: ChargeOutcome, error: Mapping[str, Any]) -> ChargeOutcome:
    code = _text(error.get("code"))
    decline_code = _text(error.get("decline_code"))
    advice = _text(error.get("advice_code"))
    return replace(
        base,
        state=decline_state(code, decline_code, advice),
        decline_code=decline_code or code,
        message=_text(error.get("message")),
    )


def outcome_from_charge(charge: Mapping[str, Any], key: str) -> ChargeOutcome:
    """The port's outcome for a Charge object (the attempt inside a PaymentIntent).

    Its ``processor_id`` is the PaymentIntent's id when it has one. A ``succeeded`` charge
    that is not yet ``captured`` is an authorisation: ``PROCESSING``. A failed charge is
    classified by ``outcome.reason`` (the decline code) or ``failure_code``.
    """
    charge_id = _text(charge.get("id"))
    where = f"charge {charge_id}"
    currency = _text(charge.get("currency"))
    if currency is None:
        raise MappingError(f"{where}: no currency")
    amount = from_minor_units(charge.get("amount"), currency)
    base = ChargeOutcome(
        key,
        ChargeState.SUCCEEDED,
        _id_of(charge.get("payment_intent")) or charge_id,
        amount,
        normalize_currency(currency),
    )
    status = _text(charge.get("status"))
    if status == "succeeded":
        return base if charge.get("captured", True) else replace(base, state=ChargeState.PROCESSING)
    if status == "pending":
        return replace(base, state=ChargeState.PROCESSING)
    if status == "failed":
        outcome = charge.get("outcome")
        outcome = outcome if isinstance(outcome, Mapping) else {}
        return _declined(
            base,
            {
                "code": charge.get("failure_code"),
                "decline_code": outcome.get("reason"),
                "advice_code": outcome.get("advice_code"),
                "message": charge.get("failure_message"),
            },
        )
    raise MappingError(f"{where}: unknown status {status!r}")


_STATE_RANK = {
    ChargeState.SUCCEEDED: 0,
    ChargeState.PROCESSING: 0,
    ChargeState.REQUIRES_ACTION: 1,
    ChargeState.HARD_DECLINE: 2,
    ChargeState.SOFT_DECLINE: 2,
}


def pick_attempt(oldest_first: Iterable[ChargeOutcome]) -> ChargeOutcome | None:
    """The attempt to report for a key that several PaymentIntents carry.

    Real Stripe makes one PaymentIntent per idempotency key (for 24 hours); more than
    one means a key reused later, or a processor that ignores the key. Money that
    moved (or is moving) wins over a decline; among equals, the first attempt.
    """
    best: ChargeOutcome | None = None
    for outcome in oldest_first:
        if best is None or _STATE_RANK[outcome.state] < _STATE_RANK[best.state]:
            best = outcome
    return best


# --- Payment methods ------------------------------------------------------------------

SAVED_METHOD_TYPES = ("card", "us_bank_account")


def saved_method(payment_method: Mapping[str, Any], processor_customer_id: str | None = None) -> SavedMethod | None:
    """A card or US bank account PaymentMethod as a :class:`SavedMethod`; other types map to ``None``."""
    pm_id = _text(payment_method.get("id"))
    if pm_id is None:
        raise MappingError("payment_method: no id")
    customer = _id_of(payment_method.get("customer")) or processor_customer_id
    if customer is None:
        raise MappingError(f"payment_method {pm_id}: attached to no customer")
    kind = _text(payment_method.get("type"))
    details = payment_method.get(kind) if kind else None
    details = details if isinstance(details, Mapping) else {}
    if kind == "card":
        return SavedMethod(
            customer,
            pm_id,
            "card",
            brand=_text(details.get("brand")),
            last4=_text(details.get("last4")),
            funding=_text(details.get("funding")),
        )
    if kind == "us_bank_account":
        return SavedMethod(
            customer, pm_id, "us_bank_account", brand=_text(details.get("bank_name")), last4=_text(details.get("last4"))
        )
    return None


# --- Refunds --------------------------------------------------------------------------


@dataclass(frozen=True)
class RefundSummary:
    refund_id: str
    processor_id: str | None
    """The PaymentIntent refunded (or the charge, for a charge made without one)."""
    amount: Decimal
    currency: str
    status: str
    """``pending``, ``requires_action``, ``succeeded``, ``failed`` or ``canceled``."""


REFUND_FAILED = frozenset({"failed", "canceled"})


def refund_summary(refund: Mapping[str, Any]) -> RefundSummary:
    refund_id = _text(refund.get("id"))
    if refund_id is None:
        raise MappingError("refund: no id")
    currency = _text(refund.get("currency"))
    if currency is None:
        raise MappingError(f"refund {refund_id}: no currency")
    status = _text(refund.get("status"))
    if status is None:
        raise MappingError(f"refund {refund_id}: no status")
    return RefundSummary(
        refund_id,
        _id_of(refund.get("payment_intent")) or _id_of(refund.get("charge")),
        from_minor_units(refund.get("amount"), currency),
        normalize_currency(currency),
        status,
    )


# --- Errors ---------------------------------------------------------------------------


def classify_error(status: int | None, error: Mapping[str, Any] | None = None) -> Classification:
    """What a failed Stripe call means: retry, wait, or fail (and who must act).

    ``status`` is ``None`` when no HTTP answer came (connection refused, timeout): the
    outcome of a write is then unknown and the caller must look it up before retrying.
    Card errors (402) are declines on a charge; anywhere else they fail.
    """
    error = error or {}
    code = _text(error.get("code"))
    kind = _text(error.get("type"))
    message = _text(error.get("message")) or ""
    detail = f"{status or 'no answer'} {kind or ''} {code or ''} {message}".strip()
    if status is None:
        return Classification(Resolution.RETRY, Actor.TRANSIENT, f"no answer: {message}")
    if status == 429 or code == "rate_limit":
        return Classification(Resolution.RATE_LIMITED, Actor.TRANSIENT, detail)
    if status in (401, 403):
        return Classification(Resolution.FAIL, Actor.CONFIG, detail)
    if status == 409 or status >= 500:
        # 409: the same idempotency key is in use by a request still running, or a lock timed out.
        return Classification(Resolution.RETRY, Actor.TRANSIENT, detail)
    return Classification(Resolution.FAIL, Actor.SYSTEM, detail)
