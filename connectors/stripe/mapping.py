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
* **Links, events, payouts.** :func:`link_params` is the Checkout Session to create for a
  :class:`~connectors.base.LinkRequest`; :func:`enrolment_from_setup_intent` and
  :func:`enrolment_from_session` read what a customer saved; :func:`event_from_payload`
  maps one Event (ACH returns included: see there); :func:`balance_line` one balance
  transaction of a payout. Times are aware UTC datetimes.
* **Errors.** :func:`classify_error` turns an HTTP status and Stripe's
  ``error`` object into a :class:`~connectors.http.Classification`: who must
  act, and whether trying again can help.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from connectors.base import (
    Actor,
    BalanceLine,
    ChargeOutcome,
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
        # Stripe's names for ACH returns (docs.stripe.com/declines/network-codes: R02, R03/R04, R16, R15)
        # and its dispute reason for an ACH failure after success (docs.stripe.com/payments/ach-direct-debit).
        "bank_account_closed",
        "bank_account_invalid_details",
        "bank_account_frozen",
        "recipient_deceased",
        "incorrect_account_details",
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
    key = key or key_of(payment_intent)
    if key is None:
        raise MappingError(f"payment_intent {_text(payment_intent.get('id'))}: no {KEY_METADATA} in metadata")
    return _intent_outcome(payment_intent, key)


def _intent_outcome(payment_intent: Mapping[str, Any], key: str) -> ChargeOutcome:
    """:func:`outcome_from_payment_intent` once the key is settled (events also carry PaymentIntents not ours)."""
    pi_id = _text(payment_intent.get("id"))
    where = f"payment_intent {pi_id}"
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


# --- Time and metadata ------------------------------------------------------------------


def utc_timestamp(value: object, where: str) -> datetime:
    """A Stripe timestamp (whole seconds since the Unix epoch) as an aware UTC ``datetime``."""
    if isinstance(value, bool) or not isinstance(value, int | Decimal) or value != int(value):
        raise MappingError(f"{where}: not a Unix timestamp: {value!r}")
    return datetime.fromtimestamp(int(value), tz=UTC)


def _optional_timestamp(value: object, where: str) -> datetime | None:
    return None if value is None else utc_timestamp(value, where)


def _metadata(obj: Mapping[str, Any]) -> dict[str, str]:
    """An object's metadata (Stripe's values are always strings; anything else is left out)."""
    metadata = obj.get("metadata")
    if not isinstance(metadata, Mapping):
        return {}
    return {str(name): value for name, value in metadata.items() if isinstance(value, str)}


def _required_id(obj: Mapping[str, Any], what: str) -> str:
    found = _text(obj.get("id"))
    if found is None:
        raise MappingError(f"{what}: no id")
    return found


def _money(obj: Mapping[str, Any], where: str, field: str = "amount") -> tuple[Decimal, str]:
    """``(amount, currency)`` of an object: the amount in the currency's unit, the code upper case."""
    currency = _text(obj.get("currency"))
    if currency is None:
        raise MappingError(f"{where}: no currency")
    return from_minor_units(obj.get(field), currency), normalize_currency(currency)


# --- Hosted links and enrolments ----------------------------------------------------------


def link_params(request: LinkRequest) -> dict[str, Any]:
    """The Checkout Session to create for ``request`` (the body of ``POST /v1/checkout/sessions``).

    ``amount is None`` asks for a setup link (``mode=setup``: save a method, charge nothing);
    otherwise a payment link (``mode=payment``) for one line of ``amount`` named by the
    description (``Payment`` without one). Our key goes into the session's metadata and into
    the SetupIntent's or PaymentIntent's (``arsync_key``), beside the request's metadata. A
    payment link does not save the method (``setup_future_usage`` is left unset): saving is
    what setup links are for, with the customer's off-session permission.
    """
    if request.metadata.get(KEY_METADATA, request.key) != request.key:
        raise ValueError(f"metadata[{KEY_METADATA!r}] must be the request's key when given")
    if not request.method_types:
        raise ValueError("a hosted link needs at least one payment method type")
    metadata = {**request.metadata, KEY_METADATA: request.key}
    params: dict[str, Any] = {
        "customer": request.processor_customer_id,
        "payment_method_types": list(request.method_types),
        "success_url": request.success_url,
        "cancel_url": request.cancel_url,
        "metadata": metadata,
    }
    intent_data: dict[str, Any] = {"metadata": dict(metadata)}
    if request.description:
        intent_data["description"] = request.description
    if request.amount is None:
        return {**params, "mode": "setup", "setup_intent_data": intent_data}
    if request.currency is None:
        raise ValueError("a payment link needs a currency")
    currency = normalize_currency(request.currency)
    minor = to_minor_units(request.amount, currency)
    if minor <= 0:
        raise ValueError(f"a payment link needs a positive amount, not {request.amount}")
    line = {
        "quantity": 1,
        "price_data": {
            "currency": currency.lower(),
            "unit_amount": minor,
            "product_data": {"name": request.description or "Payment"},
        },
    }
    return {**params, "mode": "payment", "line_items": [line], "payment_intent_data": intent_data}


def hosted_link(session: Mapping[str, Any]) -> HostedLink:
    """A Checkout Session as the port's :class:`~connectors.base.HostedLink`."""
    session_id = _required_id(session, "checkout.session")
    url = _text(session.get("url"))
    if url is None:
        raise MappingError(f"checkout.session {session_id}: no url")
    return HostedLink(session_id, url, _optional_timestamp(session.get("expires_at"), f"checkout.session {session_id}"))


def enrolment_from_setup_intent(
    setup_intent: Mapping[str, Any],
    payment_method: Mapping[str, Any],
    link_id: str,
    *,
    metadata: Mapping[str, str] | None = None,
) -> Enrolment:
    """The enrolment a succeeded SetupIntent made, with or without Checkout around it.

    ``scope`` is ``off_session`` when the SetupIntent's ``usage`` is ``off_session`` (the
    customer allowed charges while absent), ``on_session`` otherwise. ``enrolled_at`` is the
    SetupIntent's ``created`` (Stripe records no completion time on the SetupIntent or the
    Checkout Session). ``metadata`` defaults to the SetupIntent's own. A SetupIntent that has
    not succeeded, or a method that is neither a card nor a US bank account, raises
    :class:`MappingError`.
    """
    si_id = _required_id(setup_intent, "setup_intent")
    where = f"setup_intent {si_id}"
    status = _text(setup_intent.get("status"))
    if status != "succeeded":
        raise MappingError(f"{where}: status {status!r}, not succeeded")
    pm_id = _required_id(payment_method, f"{where} payment_method")
    named = _id_of(setup_intent.get("payment_method"))
    if named is not None and named != pm_id:
        raise MappingError(f"{where}: saved {named}, not {pm_id}")
    customer = _id_of(setup_intent.get("customer")) or _id_of(payment_method.get("customer"))
    if customer is None:
        raise MappingError(f"{where}: no customer")
    method = saved_method(payment_method, customer)
    if method is None:
        raise MappingError(f"{where}: payment method type {payment_method.get('type')!r} cannot be saved")
    return Enrolment(
        link_id,
        customer,
        method,
        utc_timestamp(setup_intent.get("created"), where),
        "off_session" if setup_intent.get("usage") == "off_session" else "on_session",
        dict(metadata) if metadata is not None else _metadata(setup_intent),
    )


def enrolment_from_session(
    session: Mapping[str, Any],
    setup_intent: Mapping[str, Any] | None = None,
    payment_method: Mapping[str, Any] | None = None,
) -> Enrolment | None:
    """The enrolment a setup-mode Checkout Session made; ``None`` until it is complete and its SetupIntent succeeded.

    ``setup_intent`` and ``payment_method`` default to the session's expanded ones
    (``expand[]=setup_intent.payment_method``); an id where an object is needed raises
    :class:`MappingError`. A payment-mode session saves nothing: ``None``. The session's
    metadata (our key and the link's metadata) is the enrolment's.
    """
    session_id = _required_id(session, "checkout.session")
    if session.get("mode") != "setup" or session.get("status") != "complete":
        return None
    intent = setup_intent if setup_intent is not None else session.get("setup_intent")
    if not isinstance(intent, Mapping):
        raise MappingError(f"checkout.session {session_id}: setup_intent {intent!r} is not expanded")
    if intent.get("status") != "succeeded":
        return None
    method = payment_method if payment_method is not None else intent.get("payment_method")
    if not isinstance(method, Mapping):
        raise MappingError(f"checkout.session {session_id}: payment_method {method!r} is not expanded")
    enrolment = enrolment_from_setup_intent(intent, method, session_id, metadata=_metadata(session))
    customer = _id_of(session.get("customer"))
    return replace(enrolment, processor_customer_id=customer) if customer else enrolment


# --- Events -----------------------------------------------------------------------------

PAYMENT_INTENT_EVENTS: Mapping[str, ChargeState] = {
    "payment_intent.succeeded": ChargeState.SUCCEEDED,
    "payment_intent.processing": ChargeState.PROCESSING,
    "payment_intent.payment_failed": ChargeState.SOFT_DECLINE,
    "payment_intent.canceled": ChargeState.SOFT_DECLINE,
}
"""PaymentIntent events, with the state assumed when the object's own status does not tell
(a failure without ``last_payment_error``). Otherwise the state is read as for a charge's outcome."""
CHARGE_EVENTS = frozenset({"charge.succeeded", "charge.failed", "charge.pending"})
REFUND_EVENTS = frozenset({"refund.created", "refund.updated", "refund.failed", "charge.refund.updated"})
DISPUTE_EVENTS = frozenset(
    {
        "charge.dispute.created",
        "charge.dispute.updated",
        "charge.dispute.closed",
        "charge.dispute.funds_withdrawn",
        "charge.dispute.funds_reinstated",
    }
)
PAYOUT_EVENTS = frozenset({"payout.created", "payout.updated", "payout.paid", "payout.failed", "payout.canceled"})
HANDLED_EVENTS = frozenset(
    {
        *PAYMENT_INTENT_EVENTS,
        *CHARGE_EVENTS,
        "charge.refunded",
        *REFUND_EVENTS,
        *DISPUTE_EVENTS,
        *PAYOUT_EVENTS,
        "checkout.session.completed",
    }
)
"""Every event type :func:`event_from_payload` maps to something other than ``OTHER`` (some payloads still do)."""

ACH_FAILURE_DISPUTE_REASONS = frozenset({"insufficient_funds", "incorrect_account_details", "bank_cannot_process"})
"""The dispute reasons Stripe gives when an ACH debit fails after its PaymentIntent succeeded."""


def _method_type(payment_intent: Mapping[str, Any]) -> str | None:
    """The payment method type of an attempt: the expanded method's, the latest charge's, or the only one allowed."""
    method = payment_intent.get("payment_method")
    if isinstance(method, Mapping) and _text(method.get("type")):
        return _text(method.get("type"))
    charge = payment_intent.get("latest_charge")
    if isinstance(charge, Mapping):
        details = charge.get("payment_method_details")
        if isinstance(details, Mapping) and _text(details.get("type")):
            return _text(details.get("type"))
    types = payment_intent.get("payment_method_types")
    if isinstance(types, list) and len(types) == 1:
        return _text(types[0])
    return None


def charge_update_from_payment_intent(
    payment_intent: Mapping[str, Any], assumed: ChargeState | None = None
) -> ChargeUpdate:
    """A PaymentIntent (ours or not: ``key`` is ``None`` without ``arsync_key``) as a :class:`ChargeUpdate`.

    The state is read as :func:`outcome_from_payment_intent` reads it; when the status is not
    the result of an attempt, ``assumed`` (the event's verdict) is used, else it raises
    :class:`MappingError`.
    """
    pi_id = _required_id(payment_intent, "payment_intent")
    amount, currency = _money(payment_intent, f"payment_intent {pi_id}")
    try:
        outcome = _intent_outcome(payment_intent, "")
        state, decline_code = outcome.state, outcome.decline_code
    except MappingError:
        if assumed is None:
            raise
        state, decline_code = assumed, None
    return ChargeUpdate(
        pi_id,
        key_of(payment_intent),
        state,
        amount,
        currency,
        decline_code=decline_code,
        method_type=_method_type(payment_intent),
        charge_id=_id_of(payment_intent.get("latest_charge")),
    )


def charge_update_from_charge(charge: Mapping[str, Any]) -> ChargeUpdate:
    """A Charge as a :class:`ChargeUpdate` for its PaymentIntent (the charge itself when it has none).

    The state is :func:`outcome_from_charge`'s. The key is the charge's ``arsync_key``, else
    its expanded PaymentIntent's. A failed charge is a decline, never ``returned``: Stripe
    reports a bank debit that fails after it succeeded as a dispute (see :func:`event_from_payload`).
    """
    charge_id = _required_id(charge, "charge")
    intent = charge.get("payment_intent")
    key = key_of(charge) or (key_of(intent) if isinstance(intent, Mapping) else None)
    outcome = outcome_from_charge(charge, key or "")
    details = charge.get("payment_method_details")
    method_type = _text(details.get("type")) if isinstance(details, Mapping) else None
    return ChargeUpdate(
        outcome.processor_id or charge_id,
        key,
        outcome.state,
        outcome.amount,
        outcome.currency,
        decline_code=outcome.decline_code,
        method_type=method_type,
        charge_id=charge_id,
    )


def is_bank_debit_return(dispute: Mapping[str, Any]) -> bool:
    """Whether a dispute is Stripe's record of an ACH debit that failed after it had succeeded.

    Its reason is one of :data:`ACH_FAILURE_DISPUTE_REASONS` and it is not a card's.
    """
    details = dispute.get("payment_method_details")
    kind = _text(details.get("type")) if isinstance(details, Mapping) else None
    return _text(dispute.get("reason")) in ACH_FAILURE_DISPUTE_REASONS and kind in (None, "us_bank_account")


def returned_charge(dispute: Mapping[str, Any]) -> ChargeUpdate:
    """The :class:`ChargeUpdate` (``returned``) for a dispute :func:`is_bank_debit_return` accepts.

    The decline code is the dispute's reason (``insufficient_funds`` is soft; the others are hard).
    """
    dispute_id = _required_id(dispute, "dispute")
    where = f"dispute {dispute_id}"
    intent = dispute.get("payment_intent")
    charge_id = _id_of(dispute.get("charge"))
    processor_id = _id_of(intent) or charge_id
    if processor_id is None:
        raise MappingError(f"{where}: names neither a payment_intent nor a charge")
    amount, currency = _money(dispute, where)
    reason = _text(dispute.get("reason"))
    return ChargeUpdate(
        processor_id,
        key_of(intent) if isinstance(intent, Mapping) else None,
        decline_state(reason),
        amount,
        currency,
        decline_code=reason,
        method_type="us_bank_account",
        charge_id=charge_id,
        returned=True,
    )


def refund_update(refund: Mapping[str, Any]) -> RefundUpdate:
    """A Refund as a :class:`RefundUpdate` (``key`` from its ``arsync_key``)."""
    summary = refund_summary(refund)
    return RefundUpdate(
        summary.refund_id, summary.processor_id, summary.amount, summary.currency, summary.status, key_of(refund)
    )


def _created_or_never(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else -1


def _latest_refund(charge: Mapping[str, Any]) -> Mapping[str, Any] | None:
    refunds = charge.get("refunds")
    data = refunds.get("data") if isinstance(refunds, Mapping) else None
    found = [r for r in data if isinstance(r, Mapping)] if isinstance(data, list) else []
    if not found:
        return None
    # The newest by ``created``; among equals, the first listed (Stripe lists newest first).
    return max(found, key=lambda r: _created_or_never(r.get("created")))


def dispute_update(dispute: Mapping[str, Any]) -> DisputeUpdate:
    """A Dispute as a :class:`DisputeUpdate`; ``payment_processor_id`` is its PaymentIntent, else its charge."""
    dispute_id = _required_id(dispute, "dispute")
    where = f"dispute {dispute_id}"
    amount, currency = _money(dispute, where)
    status = _text(dispute.get("status"))
    if status is None:
        raise MappingError(f"{where}: no status")
    charge_id = _id_of(dispute.get("charge"))
    return DisputeUpdate(
        dispute_id,
        _id_of(dispute.get("payment_intent")) or charge_id,
        amount,
        currency,
        status,
        reason=_text(dispute.get("reason")),
        charge_id=charge_id,
    )


def payout_update(payout: Mapping[str, Any]) -> PayoutUpdate:
    """A Payout as a :class:`PayoutUpdate`; ``arrival_date`` is the UTC date of Stripe's ``arrival_date``."""
    payout_id = _required_id(payout, "payout")
    where = f"payout {payout_id}"
    amount, currency = _money(payout, where)
    status = _text(payout.get("status"))
    if status is None:
        raise MappingError(f"{where}: no status")
    arrival = _optional_timestamp(payout.get("arrival_date"), where)
    return PayoutUpdate(payout_id, amount, currency, status, arrival.date() if arrival else None)


def event_from_payload(event: Mapping[str, Any]) -> ProcessorEvent:
    """One Stripe Event as the port's :class:`~connectors.base.ProcessorEvent`.

    * ``payment_intent.succeeded|processing|payment_failed|canceled``: ``CHARGE``,
      :func:`charge_update_from_payment_intent`.
    * ``charge.succeeded|failed|pending``: ``CHARGE``, :func:`charge_update_from_charge`.
    * ``charge.refunded``: ``REFUND`` for the charge's newest refund; ``OTHER`` when the payload
      has no ``refunds`` (API versions since 2022-11-15 leave them out: ``refund.*`` events follow).
    * ``refund.created|updated|failed``, ``charge.refund.updated``: ``REFUND``, :func:`refund_update`.
    * ``charge.dispute.created`` of an ACH debit that failed after it succeeded
      (:func:`is_bank_debit_return`): ``CHARGE``, :func:`returned_charge` (``returned=True``).
    * ``charge.dispute.created|updated|closed|funds_withdrawn|funds_reinstated``: ``DISPUTE``,
      :func:`dispute_update`.
    * ``payout.created|updated|paid|failed|canceled``: ``PAYOUT``, :func:`payout_update`.
    * ``checkout.session.completed`` in ``setup`` mode: ``ENROLMENT`` with no subject (the event
      names the SetupIntent by id only: read ``link_enrolment(object_id)``), or the enrolment
      when the payload has it all expanded. In ``payment`` mode: ``OTHER`` (the PaymentIntent's
      own events carry the payment).
    * Anything else: ``OTHER``, no subject.

    ``object_id`` is always the id of ``data.object``.

    **ACH returns.** Stripe's documentation (docs.stripe.com/payments/ach-direct-debit, "ACH
    transaction failures") says a debit can fail any time until its PaymentIntent succeeds
    (``payment_intent.payment_failed`` and ``charge.failed``: a decline, not a return) and
    that "in rare situations, Stripe might receive an ACH failure from the bank after a
    PaymentIntent has transitioned to succeeded. If this happens, Stripe creates a dispute with
    a reason of ``insufficient_funds``, ``incorrect_account_details`` or ``bank_cannot_process``"
    and removes the funds from the balance at once (Stripe Support, "Respond to or contest an ACH
    Direct Debit dispute as a merchant", says the same for the Charges API: ACH disputes are
    final). No ``charge.failed`` follows a success, so a failed charge is never mapped as
    ``returned``; the ``charge.dispute.created`` of such a dispute is, as a ``CHARGE`` update
    with ``returned=True``. The same dispute's later events (``funds_withdrawn``, ``closed``) are
    ``DISPUTE`` updates like any other.
    """
    event_id = _required_id(event, "event")
    where = f"event {event_id}"
    kind = _text(event.get("type"))
    if kind is None:
        raise MappingError(f"{where}: no type")
    created = utc_timestamp(event.get("created"), where)
    data = event.get("data")
    obj = data.get("object") if isinstance(data, Mapping) else None
    if not isinstance(obj, Mapping):
        raise MappingError(f"{where}: no data.object")
    other = ProcessorEvent(event_id, created, kind, EventKind.OTHER, None, _id_of(obj))
    try:
        if kind in PAYMENT_INTENT_EVENTS:
            return replace(
                other,
                kind=EventKind.CHARGE,
                subject=charge_update_from_payment_intent(obj, PAYMENT_INTENT_EVENTS[kind]),
            )
        if kind in CHARGE_EVENTS:
            return replace(other, kind=EventKind.CHARGE, subject=charge_update_from_charge(obj))
        if kind == "charge.refunded":
            latest = _latest_refund(obj)
            return other if latest is None else replace(other, kind=EventKind.REFUND, subject=refund_update(latest))
        if kind in REFUND_EVENTS:
            return replace(other, kind=EventKind.REFUND, subject=refund_update(obj))
        if kind == "charge.dispute.created" and is_bank_debit_return(obj):
            return replace(other, kind=EventKind.CHARGE, subject=returned_charge(obj))
        if kind in DISPUTE_EVENTS:
            return replace(other, kind=EventKind.DISPUTE, subject=dispute_update(obj))
        if kind in PAYOUT_EVENTS:
            return replace(other, kind=EventKind.PAYOUT, subject=payout_update(obj))
        if kind == "checkout.session.completed" and obj.get("mode") == "setup":
            return replace(other, kind=EventKind.ENROLMENT, subject=_expanded_enrolment(obj))
    except MappingError as exc:
        raise MappingError(f"{where} ({kind}): {exc}") from exc
    return other


def _expanded_enrolment(session: Mapping[str, Any]) -> Enrolment | None:
    intent = session.get("setup_intent")
    if isinstance(intent, Mapping) and isinstance(intent.get("payment_method"), Mapping):
        return enrolment_from_session(session)
    return None


# --- Balance transactions ----------------------------------------------------------------


def _payment_of_source(source: object) -> str | None:
    """The PaymentIntent behind an expanded balance transaction source (charge, refund, dispute)."""
    if not isinstance(source, Mapping):
        return None
    found = _id_of(source.get("payment_intent"))
    if found is None and isinstance(source.get("charge"), Mapping):
        found = _id_of(source["charge"].get("payment_intent"))
    return found


def balance_line(payload: Mapping[str, Any], payout_id: str) -> BalanceLine:
    """One balance transaction as a :class:`BalanceLine` of ``payout_id``.

    ``source_id`` is the charge, refund or dispute (expanded or not). ``payment_processor_id``
    is the PaymentIntent an expanded source names (a charge's, a refund's or a dispute's own
    ``payment_intent``, or that of its expanded ``charge``); ``None`` when the source is not
    expanded or names none. Amount, fee and net keep their signs (a refund's amount is negative).
    ``exchange_rate`` is kept when Stripe converted the money (a charge in another currency).
    """
    txn_id = _required_id(payload, "balance_transaction")
    where = f"balance_transaction {txn_id}"
    amount, currency = _money(payload, where)
    kind = _text(payload.get("type"))
    if kind is None:
        raise MappingError(f"{where}: no type")
    source = payload.get("source")
    return BalanceLine(
        txn_id,
        payout_id,
        kind,
        _id_of(source),
        _payment_of_source(source),
        amount,
        from_minor_units(payload.get("fee", 0), currency),
        from_minor_units(payload.get("net"), currency),
        currency,
        utc_timestamp(payload.get("created"), where),
        _text(payload.get("reporting_category")),
        _exchange_rate(payload.get("exchange_rate"), where),
    )


def _exchange_rate(value: object, where: str) -> Decimal | None:
    """A balance transaction's ``exchange_rate`` (null when nothing was converted), as parsed from the JSON text
    with ``parse_float=Decimal``; a positive number."""
    if value is None:
        return None
    rate = to_decimal(value, where, "exchange_rate")
    if rate <= 0:
        raise MappingError(f"{where}: exchange_rate {rate} is not positive")
    return rate


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
