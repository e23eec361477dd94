"""The payment-processor port on Stripe, through the official ``stripe`` SDK.

One :class:`stripe.StripeClient` per processor (no module globals: ``stripe.api_key``
is never set), sending through ``requests`` with an explicit timeout and
``max_network_retries=0``: our journal owns retries, and an answer that never came
is reported as :class:`~connectors.base.RetriableError` (outcome unknown) for the
journal to look up with :meth:`StripeProcessor.find_charge` (or
:meth:`StripeProcessor.find_refund`) before trying again.

Hosted links are Checkout Sessions; the event feed is ``/v1/events`` read oldest first
from a cursor; payout lines are ``/v1/balance_transactions?payout=``.

Every SDK object is turned into a plain dict (``to_dict()``) and mapped by
:mod:`connectors.stripe.mapping`; none leaves this package.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from decimal import Decimal
from typing import Any, ParamSpec, TypeVar

import stripe

from connectors import jsonwire
from connectors.base import (
    Actor,
    BalanceLine,
    ChargeOutcome,
    ChargeRequest,
    ConnectorError,
    Enrolment,
    FatalError,
    HostedLink,
    LinkRequest,
    ProcessorEvent,
    RateLimitedError,
    RetriableError,
    SavedMethod,
)
from connectors.http import Resolution
from connectors.stripe.mapping import (
    CUSTOMER_METADATA,
    KEY_METADATA,
    REFUND_FAILED,
    SAVED_METHOD_TYPES,
    balance_line,
    classify_error,
    enrolment_from_session,
    enrolment_from_setup_intent,
    event_from_payload,
    hosted_link,
    key_of,
    link_params,
    normalize_currency,
    outcome_from_card_error,
    outcome_from_payment_intent,
    pick_attempt,
    refund_summary,
    saved_method,
    to_minor_units,
)
from connectors.values import MappingError

T = TypeVar("T")
P = ParamSpec("P")
S = TypeVar("S", bound=stripe.StripeObject)

DEFAULT_BASE_URL = "https://api.stripe.com"
PAGE_SIZE = 100
"""Stripe's largest page."""


def _plain(obj: Any) -> dict[str, Any]:
    """An SDK object as the plain dict of its JSON."""
    result = obj.to_dict()
    if not isinstance(result, dict):  # pragma: no cover - the SDK always returns a dict
        raise TypeError(f"unexpected SDK value {type(obj).__name__}")
    return result


def _raw_page(page: Any, what: str) -> Mapping[str, Any]:
    """A list page as its response's JSON text says it, numbers as ``Decimal``."""
    response = getattr(page, "last_response", None)
    body = getattr(response, "body", None)
    if not isinstance(body, str | bytes):
        raise FatalError(f"stripe {what}: the SDK kept no response body to read")
    try:
        parsed = jsonwire.loads(body)
    except ValueError as exc:
        raise FatalError(f"stripe {what}: unreadable response: {exc}") from exc
    if not isinstance(parsed, Mapping):
        raise FatalError(f"stripe {what}: the response is not a list")
    return parsed


def _error_body(exc: stripe.StripeError) -> dict[str, Any]:
    body = exc.json_body
    if isinstance(body, Mapping):
        error = body.get("error")
        if isinstance(error, Mapping):
            return dict(error)
    return {}


def _retry_after(exc: stripe.StripeError) -> float | None:
    headers = exc.headers or {}
    for name, value in headers.items():
        if name.lower() == "retry-after":
            try:
                return float(value)
            except ValueError:
                return None
    return None


def translate(exc: stripe.StripeError, what: str) -> ConnectorError:
    """The connector error for a failed SDK call (``what`` names the call in the message)."""
    status = None if isinstance(exc, stripe.APIConnectionError) else exc.http_status
    error = _error_body(exc)
    if status is None and not error.get("message"):
        error["message"] = exc.user_message or type(exc).__name__
    verdict = classify_error(status, error)
    request_id = f" (request {exc.request_id})" if exc.request_id else ""
    message = f"stripe {what}: {verdict.message}{request_id}"
    match verdict.resolution:
        case Resolution.RATE_LIMITED:
            return RateLimitedError(message, _retry_after(exc))
        case Resolution.RETRY:
            return RetriableError(message)
        case _:
            return FatalError(message, actor=verdict.actor)


class StripeProcessor:
    """:class:`~connectors.base.PaymentProcessor` on Stripe (or anything speaking its API at ``base_url``)."""

    def __init__(
        self, api_key: str, *, base_url: str = DEFAULT_BASE_URL, timeout: float = 30.0, page_size: int = PAGE_SIZE
    ) -> None:
        if not api_key:
            raise FatalError("stripe: no API key configured", actor=Actor.CONFIG)
        if not 1 <= page_size <= PAGE_SIZE:
            raise ValueError(f"page_size must be 1..{PAGE_SIZE}")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.page_size = page_size
        self._client = stripe.StripeClient(
            api_key,
            base_addresses={"api": self.base_url},
            http_client=stripe.RequestsClient(timeout=timeout),
            max_network_retries=0,
        )

    def __repr__(self) -> str:
        return f"StripeProcessor(base_url={self.base_url!r}, timeout={self.timeout})"

    def _call(self, what: str, call: Callable[[], T]) -> T:
        try:
            return call()
        except stripe.StripeError as exc:
            raise translate(exc, what) from exc

    def _each(self, what: str, first_page: Callable[[], stripe.ListObject[S]]) -> Iterator[dict[str, Any]]:
        """Every item of a list as a plain dict, page after page (``starting_after``), errors translated."""
        try:
            for item in first_page().auto_paging_iter():
                yield _plain(item)
        except stripe.StripeError as exc:
            raise translate(exc, what) from exc

    # --- customers and saved methods ---------------------------------------------------

    def ensure_customer(self, our_customer_id: str, email: str | None, name: str | None) -> str:
        """The Stripe customer whose ``metadata.arsync_customer`` is ours, created if there is none.

        Looks among the customers with ``email`` when one is given (all customers otherwise).
        Creation uses the idempotency key ``customer:{our_customer_id}``, so a retried
        creation within Stripe's 24 hours returns the same customer.
        """
        params: dict[str, Any] = {"limit": self.page_size}
        if email:
            params["email"] = email
        for customer in self._each("list customers", lambda: self._client.v1.customers.list(params=params)):  # type: ignore[arg-type]
            metadata = customer.get("metadata") or {}
            if metadata.get(CUSTOMER_METADATA) == our_customer_id:
                return str(customer["id"])
        create: dict[str, Any] = {"metadata": {CUSTOMER_METADATA: our_customer_id}}
        if email:
            create["email"] = email
        if name:
            create["name"] = name
        created = self._call(
            "create customer",
            lambda: self._client.v1.customers.create(
                params=create,  # type: ignore[arg-type]
                options={"idempotency_key": f"customer:{our_customer_id}"},
            ),
        )
        return str(created.id)

    def saved_methods(self, processor_customer_id: str) -> list[SavedMethod]:
        """The customer's cards and US bank accounts (other payment method types are left out)."""
        methods: list[SavedMethod] = []
        for pm in self._each(
            "list payment methods",
            lambda: self._client.v1.payment_methods.list(
                params={"customer": processor_customer_id, "limit": self.page_size}
            ),
        ):
            if pm.get("type") not in SAVED_METHOD_TYPES:
                continue
            method = saved_method(pm, processor_customer_id)
            if method is not None:
                methods.append(method)
        return methods

    # --- charges -----------------------------------------------------------------------

    def charge(self, request: ChargeRequest) -> ChargeOutcome:
        """One off-session PaymentIntent, created and confirmed at once under ``request.key``.

        Declines come back as outcomes (with the PaymentIntent's id); an unknown outcome
        (timeout, connection lost, 5xx, 409) raises :class:`RetriableError`.
        """
        if request.metadata.get(KEY_METADATA, request.key) != request.key:
            raise ValueError(f"metadata[{KEY_METADATA!r}] must be the request's key when given")
        currency = normalize_currency(request.currency)
        params: dict[str, Any] = {
            "amount": to_minor_units(request.amount, currency),
            "currency": currency.lower(),
            "customer": request.processor_customer_id,
            "payment_method": request.payment_method_id,
            "confirm": True,
            "off_session": True,
            # Server-side confirmation without a return_url: only methods that never redirect.
            "automatic_payment_methods": {"enabled": True, "allow_redirects": "never"},
            "metadata": {**request.metadata, KEY_METADATA: request.key},
        }
        if request.description:
            params["description"] = request.description
        try:
            intent = self._client.v1.payment_intents.create(
                params=params,  # type: ignore[arg-type]
                options={"idempotency_key": request.key},
            )
        except stripe.CardError as exc:
            return self._declined(request, exc)
        except stripe.StripeError as exc:
            raise translate(exc, f"charge {request.key}") from exc
        try:
            return outcome_from_payment_intent(_plain(intent), request.key)
        except MappingError as exc:
            raise FatalError(f"stripe charge {request.key}: {exc}") from exc

    def _declined(self, request: ChargeRequest, exc: stripe.CardError) -> ChargeOutcome:
        error = _error_body(exc)
        if not error:
            error = {"code": exc.code, "message": exc.user_message}
        outcome = outcome_from_card_error(request.key, error, request.amount, request.currency)
        charge_id = error.get("charge")
        if outcome.processor_id is None and isinstance(charge_id, str) and charge_id:
            # Stripe names the PaymentIntent in the error; a server that only names the
            # charge gets one more read. The decline is certain either way: if that read
            # fails, the outcome goes back without the id rather than as "unknown".
            try:
                charge = _plain(self._client.v1.charges.retrieve(charge_id))
            except stripe.StripeError:
                return outcome
            pi = charge.get("payment_intent")
            pi_id = pi.get("id") if isinstance(pi, Mapping) else pi
            if isinstance(pi_id, str) and pi_id:
                outcome = replace(outcome, processor_id=pi_id)
        return outcome

    def find_charge(self, key: str, processor_customer_id: str) -> ChargeOutcome | None:
        """The attempt made under ``key``: the customer's PaymentIntent whose ``metadata.arsync_key`` is ``key``.

        Reads every page of the customer's PaymentIntents (newest first). If several carry
        the key, the one whose money moved wins, then the first made.
        """
        intents = list(
            self._each(
                "list payment intents",
                lambda: self._client.v1.payment_intents.list(
                    params={"customer": processor_customer_id, "limit": self.page_size}
                ),
            )
        )
        found: list[ChargeOutcome] = []
        for intent in reversed(intents):
            if key_of(intent) != key:
                continue
            try:
                found.append(outcome_from_payment_intent(intent, key))
            except MappingError as exc:
                raise FatalError(f"stripe find_charge {key}: {exc}") from exc
        return pick_attempt(found)

    # --- refunds -----------------------------------------------------------------------

    def refund(self, processor_id: str, amount: Decimal | None, key: str) -> str:
        """Refund a PaymentIntent (or a ``ch_`` charge), in full or ``amount`` in its currency.

        Sent under the idempotency key ``key``, which the refund also keeps in its metadata
        (``arsync_key``) so it can be found again. Returns the refund's id; a refund Stripe
        reports ``failed`` or ``canceled`` at once raises :class:`FatalError`.
        """
        target = "charge" if processor_id.startswith("ch_") else "payment_intent"
        params: dict[str, Any] = {target: processor_id, "metadata": {KEY_METADATA: key}}
        if amount is not None:
            paid = self._call(
                f"retrieve {processor_id}",
                lambda: _plain(
                    self._client.v1.charges.retrieve(processor_id)
                    if target == "charge"
                    else self._client.v1.payment_intents.retrieve(processor_id)
                ),
            )
            params["amount"] = to_minor_units(amount, str(paid["currency"]))
        created = self._call(
            f"refund {key}",
            lambda: self._client.v1.refunds.create(
                params=params,  # type: ignore[arg-type]
                options={"idempotency_key": key},
            ),
        )
        summary = refund_summary(_plain(created))
        if summary.status in REFUND_FAILED:
            raise FatalError(f"stripe refund {key}: refund {summary.refund_id} is {summary.status}")
        return summary.refund_id

    def find_refund(self, key: str, processor_id: str) -> str | None:
        """The refund made under ``key`` for the PaymentIntent (or ``ch_`` charge) ``processor_id``, if any.

        Reads every page of the payment's refunds (``GET /v1/refunds?payment_intent=`` or
        ``?charge=``) for the one whose ``metadata.arsync_key`` is ``key``. If several carry it
        (a server that ignores idempotency keys), the first made that is not ``failed`` or
        ``canceled`` wins, else the first made.
        """
        target = "charge" if processor_id.startswith("ch_") else "payment_intent"
        params: dict[str, Any] = {target: processor_id, "limit": self.page_size}
        found = [
            refund
            for refund in self._each(
                f"list refunds of {processor_id}",
                lambda: self._client.v1.refunds.list(params=params),  # type: ignore[arg-type]
            )
            if key_of(refund) == key
        ]
        oldest_first = list(reversed(found))
        live = [refund for refund in oldest_first if refund.get("status") not in REFUND_FAILED]
        chosen = (live or oldest_first or [None])[0]
        return None if chosen is None else str(chosen["id"])

    # --- hosted links and enrolments ---------------------------------------------------

    def create_link(self, request: LinkRequest) -> HostedLink:
        """A Stripe Checkout Session (``POST /v1/checkout/sessions``) under the idempotency key ``request.key``.

        Setup mode when ``request.amount`` is None, payment mode otherwise: see
        :func:`~connectors.stripe.mapping.link_params` for what is sent.
        """
        params = link_params(request)
        created = self._call(
            f"create link {request.key}",
            lambda: self._client.v1.checkout.sessions.create(
                params=params,  # type: ignore[arg-type]
                options={"idempotency_key": request.key},
            ),
        )
        return self._mapped(f"create link {request.key}", hosted_link, _plain(created))

    def link_enrolment(self, link_id: str) -> Enrolment | None:
        """The method saved through the setup link ``link_id`` (a Checkout Session), once it is complete.

        One read (``expand[]=setup_intent.payment_method``); a server that leaves the
        SetupIntent or its payment method as ids gets one more read for each. ``None`` while
        the session is not ``complete`` or its SetupIntent has not ``succeeded``, and for a
        payment link. Mapped by :func:`~connectors.stripe.mapping.enrolment_from_session`.
        """
        session = self._call(
            f"retrieve link {link_id}",
            lambda: _plain(
                self._client.v1.checkout.sessions.retrieve(link_id, params={"expand": ["setup_intent.payment_method"]})
            ),
        )
        if session.get("mode") != "setup" or session.get("status") != "complete":
            return None
        intent = session.get("setup_intent")
        if isinstance(intent, str) and intent:
            intent = self._setup_intent(intent)
        if not isinstance(intent, Mapping):
            raise FatalError(f"stripe link {link_id}: complete, but names no setup_intent")
        if intent.get("status") != "succeeded":
            return None
        method = self._payment_method(intent)
        return self._mapped(f"link {link_id}", enrolment_from_session, session, intent, method)

    def setup_intent_enrolment(self, setup_intent_id: str) -> Enrolment | None:
        """The method a SetupIntent saved without Checkout (the enrolment's ``link_id`` is the SetupIntent's id).

        ``None`` until the SetupIntent has ``succeeded``. Mapped by
        :func:`~connectors.stripe.mapping.enrolment_from_setup_intent`: ``off_session`` scope
        when the SetupIntent's ``usage`` is ``off_session``.
        """
        intent = self._setup_intent(setup_intent_id)
        if intent.get("status") != "succeeded":
            return None
        method = self._payment_method(intent)
        return self._mapped(
            f"setup_intent {setup_intent_id}", enrolment_from_setup_intent, intent, method, setup_intent_id
        )

    def _setup_intent(self, setup_intent_id: str) -> dict[str, Any]:
        return self._call(
            f"retrieve setup_intent {setup_intent_id}",
            lambda: _plain(
                self._client.v1.setup_intents.retrieve(setup_intent_id, params={"expand": ["payment_method"]})
            ),
        )

    def _payment_method(self, setup_intent: Mapping[str, Any]) -> dict[str, Any]:
        """The SetupIntent's payment method, read when it came as an id."""
        method = setup_intent.get("payment_method")
        if isinstance(method, Mapping):
            return dict(method)
        if not isinstance(method, str) or not method:
            raise FatalError(f"stripe setup_intent {setup_intent.get('id')}: succeeded without a payment_method")
        return self._call(
            f"retrieve payment method {method}", lambda: _plain(self._client.v1.payment_methods.retrieve(method))
        )

    # --- events and payouts --------------------------------------------------------------

    def events(self, after: str | None) -> Iterator[ProcessorEvent]:
        """Events strictly newer than the event ``after``, oldest first, each mapped by
        :func:`~connectors.stripe.mapping.event_from_payload` (a payload it cannot map raises
        :class:`FatalError` naming the event; types it does not handle come as ``OTHER``, so
        the caller's cursor can move past them).

        Stripe lists events newest first. With a cursor, the list starts at
        ``ending_before=after`` and the SDK walks toward newer events: each page is the
        ``page_size`` events just newer than the last seen, reversed to oldest first, and
        the next page is asked with ``ending_before`` = the newest so far, until
        ``has_more`` is false. One page is held at a time; one request per ``page_size``
        new events. A cursor Stripe no longer has (it keeps events 30 days) is refused
        (``FatalError``): read again from ``None``.

        Without a cursor there is nothing to start ``ending_before`` from: every page is
        read newest first (``starting_after``) and the mapped events, not their payloads,
        are held, then yielded oldest first. That happens once per account, on the first
        read. (Walking to the oldest page holding one page, then back with
        ``ending_before``, would bound memory at twice the requests.)
        """
        params: dict[str, Any] = {"limit": self.page_size}
        if after is None:
            newest_first = [
                self._event(payload)
                for payload in self._each(
                    "list events",
                    lambda: self._client.v1.events.list(params=params),  # type: ignore[arg-type]
                )
            ]
            yield from reversed(newest_first)
            return
        params["ending_before"] = after
        for payload in self._each(
            f"list events after {after}",
            lambda: self._client.v1.events.list(params=params),  # type: ignore[arg-type]
        ):
            yield self._event(payload)

    def _event(self, payload: Mapping[str, Any]) -> ProcessorEvent:
        return self._mapped(f"event {payload.get('id')}", event_from_payload, payload)

    def payout_lines(self, payout_id: str) -> Iterator[BalanceLine]:
        """The balance transactions paid out by ``payout_id`` (every page), the payout's own line left out.

        ``GET /v1/balance_transactions?payout=po_...&expand[]=data.source``: the expanded
        source names the PaymentIntent behind a charge, refund or dispute line (Stripe lists
        a payout's transactions this way for automatic payouts only). Mapped by
        :func:`~connectors.stripe.mapping.balance_line`.

        Each page is read from the response's own JSON text, parsed with ``Decimal`` numbers: the SDK parses
        ``exchange_rate`` as a float, and a rate never passes through one.
        """
        params: dict[str, Any] = {"payout": payout_id, "limit": self.page_size, "expand": ["data.source"]}
        what = f"list balance transactions of {payout_id}"
        while True:
            try:
                page = self._client.v1.balance_transactions.list(params=params)  # type: ignore[arg-type]
            except stripe.StripeError as exc:
                raise translate(exc, what) from exc
            body = _raw_page(page, what)
            items = [item for item in body.get("data") or [] if isinstance(item, Mapping)]
            for payload in items:
                if payload.get("type") == "payout":
                    continue
                yield self._mapped(f"balance transaction {payload.get('id')}", balance_line, payload, payout_id)
            if not body.get("has_more") or not items:
                return
            params = {**params, "starting_after": str(items[-1].get("id"))}

    def _mapped(self, what: str, mapping: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``mapping(*args, **kwargs)``, a payload it cannot map raised as :class:`FatalError` naming ``what``."""
        try:
            return mapping(*args, **kwargs)
        except MappingError as exc:
            raise FatalError(f"stripe {what}: {exc}") from exc
