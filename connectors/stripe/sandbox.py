"""A local Stripe: localstripe, patched, in a child process on a free local port.

localstripe is a third-party, stateful Stripe emulator (a dev dependency). The
sandbox runs its own aiohttp application with documented Stripe parameters and a
minimal Checkout it lacks added (:data:`ADDED_PARAMETERS`, each name checked
against Stripe's OpenAPI spec by the tests) and without its persistence to
``/tmp/localstripe.pickle`` (one file shared by every localstripe on the machine,
rewritten on each request):

* ``GET /v1/payment_intents?customer=``: localstripe refuses the filter; Stripe
  lists a customer's PaymentIntents with it, newest first.
* ``GET /v1/payment_methods`` with ``type`` absent or any documented type
  (``us_bank_account``): localstripe accepts only ``type=card``.
* ``POST /v1/payment_intents`` with ``description`` (kept on the object) and
  ``automatic_payment_methods`` (accepted; localstripe has no payment method
  settings to apply it to).
* ``GET /v1/events`` listed newest first, as Stripe lists them (localstripe lists
  oldest first), with ``ending_before``: the ``limit`` events just newer than the
  cursor, newest first, ``has_more`` while newer ones remain. A cursor it does not
  have is a 404 ``No such event``.

* ``POST /v1/checkout/sessions`` and ``GET /v1/checkout/sessions/{session}``
  (localstripe has no Checkout): the ``checkout.session`` object in Stripe's shape
  (a subset of the fields of the example in Stripe's ``fixtures3.json``), for exactly
  the parameters ``connectors.stripe.mapping.link_params`` sends: ``mode`` (one of
  :data:`CHECKOUT_MODES`), ``customer``, ``success_url``, ``cancel_url``,
  ``payment_method_types[]`` (of :data:`CHECKOUT_METHOD_TYPES`), ``metadata[...]``,
  ``setup_intent_data[metadata|description]`` (setup mode), and in payment mode
  ``line_items[n][quantity]``, ``line_items[n][price_data][currency|unit_amount]``,
  ``line_items[n][price_data][product_data][name]`` and
  ``payment_intent_data[metadata|description]``; ``GET`` takes ``expand[]``
  (``setup_intent``, ``setup_intent.payment_method``, ``payment_intent``). Any other
  parameter is refused (400 ``parameter_unknown``), as Stripe refuses a parameter it
  does not document (this emulation also refuses documented ones it does not model,
  rather than ignore what they ask). An unknown ``customer`` is a 404 ``Not Found``,
  as localstripe answers for any unknown object (Stripe: 400 ``resource_missing``).
  A session is ``open`` for 24 hours (``expires_at``); its ``url`` is a page on this
  server. Setup mode makes a real SetupIntent for the customer at once (``usage``
  ``off_session``, the ``setup_intent_data`` metadata and description); payment mode
  has ``amount_total``/``currency`` from its line items and ``payment_intent`` null
  until paid. Idempotency keys are ignored here too: the same key twice makes two
  sessions.

It also lists refunds strictly newest first, as Stripe does: localstripe sorts them
by creation second, leaving refunds made within one second oldest first.

Outside ``/v1``, :data:`TEST_ROUTES` stand in for the customer on the hosted page
(no API key needed, as a customer has none):

* ``GET /_test/checkout/sessions/{session}``: the session's ``url``, a small HTML page.
* ``POST /_test/checkout/sessions/{session}/complete`` with ``payment_method=pm_...``:
  what the customer does in Checkout. Setup mode confirms the session's SetupIntent
  with the method and attaches the method to the customer; payment mode creates and
  confirms (on session) a PaymentIntent for ``amount_total`` in the session's currency
  for its customer, with ``payment_intent_data``'s metadata and description. A card
  that asks for 3-D Secure is authenticated by the customer on the page. A card
  refused on attach, or a declined payment, answers 402 and leaves the session
  ``open`` (a declined payment's PaymentIntent stays, unnamed by the session).
  Otherwise the session becomes ``complete`` (``payment_status`` ``paid``, or
  ``no_payment_required`` in setup mode) and a ``checkout.session.completed`` Event is
  recorded (listed by ``GET /v1/events``; sent to registered webhooks), after the
  PaymentIntent's own ``payment_intent.succeeded``.

Nothing else is changed: it still ignores ``Idempotency-Key``, declines only the
cards it knows, and reports zero fees.

The listening socket is bound here (``127.0.0.1``, port 0) and handed to the
child, so the port cannot be taken between choosing and binding it; readiness is
the first HTTP answer from ``GET /v1/balance``.

:class:`StripeSandbox` (``start``/``stop``, as the QuickBooks and Xero sandboxes)
is what the demo and the tests use. This module imports neither localstripe nor
aiohttp: only the child does, started as ``python -m connectors.stripe.sandbox --fd N``.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import requests

if TYPE_CHECKING:
    from aiohttp import web
    from aiohttp.typedefs import Handler

__all__ = [
    "ADDED_PARAMETERS",
    "API_KEY",
    "CHECKOUT_LIFETIME_SECONDS",
    "CHECKOUT_METHOD_TYPES",
    "CHECKOUT_MODES",
    "CHECKOUT_SESSION",
    "CHECKOUT_SESSIONS",
    "TEST_ROUTES",
    "StripeSandbox",
    "start_localstripe",
]

API_KEY = "sk_test_arsync_localstripe"
"""localstripe accepts any key that starts with ``sk_``."""

CHECKOUT_SESSIONS = "/v1/checkout/sessions"
CHECKOUT_SESSION = "/v1/checkout/sessions/{session}"

ADDED_PARAMETERS: dict[tuple[str, str], tuple[str, ...]] = {
    ("get", "/v1/payment_intents"): ("customer",),
    ("get", "/v1/payment_methods"): ("type",),
    ("post", "/v1/payment_intents"): ("description", "automatic_payment_methods"),
    ("get", "/v1/events"): ("ending_before",),
    ("post", CHECKOUT_SESSIONS): (
        "mode",
        "customer",
        "success_url",
        "cancel_url",
        "payment_method_types[0]",
        "metadata[arsync_key]",
        "setup_intent_data[description]",
        "setup_intent_data[metadata][arsync_key]",
        "line_items[0][quantity]",
        "line_items[0][price_data][currency]",
        "line_items[0][price_data][unit_amount]",
        "line_items[0][price_data][product_data][name]",
        "payment_intent_data[description]",
        "payment_intent_data[metadata][arsync_key]",
    ),
    ("get", CHECKOUT_SESSION): ("expand[0]",),
}
"""What :func:`_patch_localstripe` teaches localstripe: (method, path) -> parameters.

For the Checkout paths (new altogether) these are the only parameters accepted, as
flattened form names: an index (``[0]``) stands for any index, a ``metadata`` key for
any key."""

CHECKOUT_MODES = ("payment", "setup")
"""The ``mode`` values the Checkout emulation takes (Stripe also has ``subscription``)."""
CHECKOUT_METHOD_TYPES = ("card", "sepa_debit", "us_bank_account")
"""The ``payment_method_types[]`` values it takes (localstripe makes ``card`` and ``sepa_debit`` methods)."""
CHECKOUT_LIFETIME_SECONDS = 24 * 3600
"""A session's ``expires_at`` is its ``created`` plus this (Stripe's default)."""

TEST_ROUTES: dict[tuple[str, str], tuple[str, ...]] = {
    ("get", "/_test/checkout/sessions/{session}"): (),
    ("post", "/_test/checkout/sessions/{session}/complete"): ("payment_method",),
}
"""Not Stripe's API (never under ``/v1``): the customer's side of a hosted Checkout page, with its form fields."""

_PACKAGE_ROOT = Path(__file__).resolve().parents[2]
"""The folder holding the ``connectors`` package, put on the child's ``PYTHONPATH``."""


class StripeSandbox:
    """localstripe, patched as this module describes, in a child process on a free local port.

    ``start`` returns once it answers HTTP; ``launch`` and ``ready`` are its two halves, for
    a caller with other work to do while the child starts. The child's output goes to ``log``.
    """

    def __init__(self, log: Path, *, ready_within: float = 30.0) -> None:
        self.log = log
        self.ready_within = ready_within
        self.process: subprocess.Popen[bytes] | None = None
        self.base_url = ""
        """``http://127.0.0.1:PORT``; empty until launched."""
        self.api_key = API_KEY

    # --- lifecycle ----------------------------------------------------------------

    def start(self) -> str:
        """Launch the child (unless launched) and return its base URL once it answers (or raise with its log)."""
        self.launch()
        return self.ready()

    def launch(self) -> None:
        """Start the child on a socket bound here; return at once."""
        if self.process is not None:
            return
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", 0))
            listener.listen(128)
            port: int = listener.getsockname()[1]
            path = os.environ.get("PYTHONPATH")
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(_PACKAGE_ROOT), *([path] if path else [])])}
            with self.log.open("wb") as out:
                self.process = subprocess.Popen(
                    [sys.executable, "-m", "connectors.stripe.sandbox", "--fd", str(listener.fileno())],
                    pass_fds=(listener.fileno(),),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
        finally:
            listener.close()
        self.base_url = f"http://127.0.0.1:{port}"

    def ready(self) -> str:
        """Wait until the launched child answers HTTP; return its base URL. Stops it and raises if it does not."""
        try:
            self._wait_until_answering()
        except BaseException:
            self.stop()
            raise
        return self.base_url

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def __enter__(self) -> StripeSandbox:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- HTTP -----------------------------------------------------------------------

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def card(self, number: str) -> str:
        """A new card PaymentMethod (what the customer types into a hosted page); its id."""
        answer = requests.post(
            self.url("/v1/payment_methods"),
            headers=self._auth(),
            data={
                "type": "card",
                "card[number]": number,
                "card[exp_month]": "12",
                "card[exp_year]": "2034",
                "card[cvc]": "123",
            },
            timeout=10,
        )
        answer.raise_for_status()
        return str(answer.json()["id"])

    def complete_checkout(self, url: str, payment_method: str) -> requests.Response:
        """The customer completes the hosted Checkout page at ``url`` with ``payment_method`` (no API key: a
        customer has none). 200, or 402 when the card is declined (the session stays open)."""
        return requests.post(f"{url}/complete", data={"payment_method": payment_method}, timeout=10)

    def payment_intents(self) -> list[dict[str, Any]]:
        """Every PaymentIntent, newest first."""
        found: list[dict[str, Any]] = []
        params = {"limit": "100"}
        while True:
            answer = requests.get(self.url("/v1/payment_intents"), headers=self._auth(), params=params, timeout=10)
            answer.raise_for_status()
            listing = answer.json()
            found.extend(listing["data"])
            if not listing["has_more"] or not listing["data"]:
                return found
            params["starting_after"] = str(listing["data"][-1]["id"])

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def _wait_until_answering(self) -> None:
        process = self.process
        if process is None:
            raise RuntimeError("localstripe was not launched")
        deadline = time.monotonic() + self.ready_within
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(
                    f"localstripe exited with {process.returncode}:\n{self.log.read_text(errors='replace')}"
                )
            try:
                # The socket already listens, so this waits in the backlog until the app serves it.
                answer = requests.get(self.url("/v1/balance"), headers=self._auth(), timeout=1.0)
            except requests.RequestException as exc:
                last_error = exc
                continue
            if answer.status_code == 200:
                return
            raise RuntimeError(f"localstripe answered {answer.status_code}: {answer.text[:500]}")
        raise RuntimeError(
            f"localstripe did not answer within {self.ready_within}s ({last_error}):\n"
            f"{self.log.read_text(errors='replace')}"
        )


def start_localstripe(log: Path, *, ready_within: float = 30.0) -> StripeSandbox:
    """Start localstripe on a free port; return once it answers HTTP (or raise with its log)."""
    sandbox = StripeSandbox(log, ready_within=ready_within)
    sandbox.start()
    return sandbox


# --- the child process ----------------------------------------------------------------
# localstripe is untyped: its objects are ``Any`` here. Its classes are subclassed with
# ``type()``, as mypy refuses a class statement deriving from ``Any`` under --strict.


def _patch_localstripe() -> None:
    """Teach localstripe the parameters of :data:`ADDED_PARAMETERS` outside Checkout; keep its store in memory only."""
    from localstripe.errors import UserError  # type: ignore[import-untyped]
    from localstripe.resources import (  # type: ignore[import-untyped]
        Customer,
        Event,
        List,
        PaymentIntent,
        PaymentMethod,
        Refund,
        Store,
        store,
    )

    def in_memory_only(self: object) -> None:
        return None

    Store.dump_to_disk = in_memory_only
    Store.try_load_from_disk = in_memory_only

    def list_payment_intents(
        cls: type,
        /,
        url: str,
        customer: str | None = None,
        limit: str | None = None,
        starting_after: str | None = None,
        **unknown: object,
    ) -> Any:
        if unknown:
            raise UserError(400, "Unexpected " + ", ".join(unknown))
        if customer is not None:
            Customer._api_retrieve(customer)  # 404 for an unknown customer, as Stripe answers
        listing = super(PaymentIntent, cls)._api_list_all(url, limit=limit, starting_after=starting_after)
        # Stripe lists newest first; localstripe's store keeps creation order.
        listing._list = [pi for pi in reversed(listing._list) if customer is None or pi.customer == customer]
        return listing

    def list_payment_methods(
        cls: type,
        /,
        url: str,
        customer: str | None = None,
        type: str | None = None,
        limit: str | None = None,
        starting_after: str | None = None,
        **unknown: object,
    ) -> Any:
        if unknown:
            raise UserError(400, "Unexpected " + ", ".join(unknown))
        if not isinstance(customer, str) or not customer.startswith("cus_"):
            raise UserError(400, "Bad request")
        Customer._api_retrieve(customer)
        listing = super(PaymentMethod, cls)._api_list_all(url, limit=limit, starting_after=starting_after)
        listing._list = [pm for pm in listing._list if pm.customer == customer and type in (None, pm.type)]
        return listing

    create_payment_intent = PaymentIntent.__init__

    def payment_intent_init(
        self: Any,
        *args: object,
        description: str | None = None,
        automatic_payment_methods: object = None,
        **kwargs: object,
    ) -> None:
        create_payment_intent(self, *args, **kwargs)
        self.description = description

    list_events_oldest_first = Event._api_list_all

    def has_more(self: Any) -> bool:
        return bool(self._more)

    # One page cut by the caller, with Stripe's ``has_more``.
    Page: Any = type("Page", (List,), {"has_more": property(has_more)})

    def page(url: str, items: list[Any], more: bool) -> Any:
        listing = Page(url, limit=max(1, len(items)))
        listing._list = items
        listing._more = more
        return listing

    def list_events(
        cls: type,
        /,
        url: str,
        limit: str | None = None,
        starting_after: str | None = None,
        ending_before: str | None = None,
        **filters: object,
    ) -> Any:
        listing = list_events_oldest_first(url, limit=limit, starting_after=starting_after, **filters)
        listing._list = list(reversed(listing._list))  # Stripe lists newest first
        if ending_before is None:
            return listing
        if starting_after is not None:
            raise UserError(400, "starting_after and ending_before are exclusive")
        ids = [event.id for event in listing._list]
        if ending_before not in ids:
            raise UserError(404, f"No such event: '{ending_before}'")
        newer = listing._list[: ids.index(ending_before)]
        cut = newer[-listing._limit :]
        return page(url, cut, len(newer) > len(cut))

    list_refunds_by_second = Refund._api_list_all

    def list_refunds(cls: type, /, url: str, **params: object) -> Any:
        listing = list_refunds_by_second(url, **params)
        made = {id(obj): n for n, obj in enumerate(store.values())}  # the store keeps creation order
        listing._list.sort(key=lambda refund: made[id(refund)], reverse=True)
        return listing

    PaymentIntent._api_list_all = classmethod(list_payment_intents)
    PaymentMethod._api_list_all = classmethod(list_payment_methods)
    PaymentIntent.__init__ = payment_intent_init
    Event._api_list_all = classmethod(list_events)
    Refund._api_list_all = classmethod(list_refunds)


def _name_shape(name: str) -> tuple[str, ...]:
    """A flattened form name with indices as ``#`` and metadata keys as ``*``: ``line_items[3][quantity]`` ->
    ``("line_items", "#", "quantity")``."""
    head, _, rest = name.partition("[")
    parts = [head, *re.findall(r"([^\[\]]*)\]", "[" + rest)] if rest else [head]
    shape: list[str] = []
    for n, part in enumerate(parts):
        if n and parts[n - 1] == "metadata":
            shape.append("*")
        elif n and (part.isdigit() or part == ""):
            shape.append("#")
        else:
            shape.append(part)
    return tuple(shape)


def _accepted(method: str, path: str) -> frozenset[tuple[str, ...]]:
    return frozenset(_name_shape(name) for name in ADDED_PARAMETERS[(method, path)])


class _IntentData(TypedDict):
    """A session's ``setup_intent_data`` or ``payment_intent_data``, checked."""

    metadata: dict[str, str]
    description: str | None


def _checkout_routes() -> list[tuple[str, str, Handler]]:
    """The Checkout Session resource and its hosted page (see the module's docstring): (method, path, handler)."""
    from html import escape

    from aiohttp import web
    from localstripe.errors import UserError
    from localstripe.resources import (
        Customer,
        Event,
        PaymentIntent,
        PaymentMethod,
        SetupIntent,
        StripeObject,
        random_id,
        try_convert_to_int,
    )
    from localstripe.server import json_response, unflatten_data  # type: ignore[import-untyped]
    from localstripe.webhooks import schedule_webhook  # type: ignore[import-untyped]

    def refuse_unknown(names: Iterable[str], accepted: frozenset[tuple[str, ...]]) -> None:
        for name in names:
            if _name_shape(name) not in accepted:
                raise UserError(
                    400,
                    f"Received unknown parameter: {name}",
                    {"code": "parameter_unknown", "param": name},
                )

    def invalid(param: str, message: str) -> Exception:
        error: Exception = UserError(400, message, {"code": "parameter_invalid", "param": param})
        return error

    def text(data: Mapping[str, object], key: str, param: str, *, required: bool = False) -> str | None:
        value = data.get(key)
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value:
            if value is None:
                raise UserError(400, f"Missing required param: {param}.", {"code": "parameter_missing", "param": param})
            raise invalid(param, f"Invalid {param}: must be a string")
        return value

    def url(data: Mapping[str, object], key: str, *, required: bool) -> str | None:
        value = text(data, key, key, required=required)
        if value is not None and not re.match(r"^https?://[^\s/]+", value):
            raise invalid(key, f"Invalid URL: {value}. URLs must begin with http:// or https://")
        return value

    def strings(value: object, param: str) -> dict[str, str]:
        if value is None:
            return {}
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise invalid(param, f"Invalid {param}: must be a hash of strings")
        return dict(value)

    def intent_data(data: Mapping[str, object], key: str) -> _IntentData:
        value = data.get(key) or {}
        if not isinstance(value, dict):
            raise invalid(key, f"Invalid {key}: must be a hash")
        return {
            "metadata": strings(value.get("metadata"), f"{key}[metadata]"),
            "description": text(value, "description", f"{key}[description]"),
        }

    def line_items(value: object) -> tuple[int, str]:
        """``(amount_total, currency)`` of the line items."""
        if not isinstance(value, list) or not value:
            raise UserError(
                400,
                "Missing required param: line_items. You must specify line_items in payment mode.",
                {"code": "parameter_missing", "param": "line_items"},
            )
        total, currencies = 0, set[str]()
        for n, item in enumerate(value):
            where = f"line_items[{n}]"
            price = item.get("price_data") if isinstance(item, dict) else None
            product = price.get("product_data") if isinstance(price, dict) else None
            if not isinstance(price, dict) or not isinstance(product, dict):
                raise UserError(400, f"Missing required param: {where}[price_data].", {"param": where})
            quantity: object = try_convert_to_int(item.get("quantity"))
            amount: object = try_convert_to_int(price.get("unit_amount"))
            currency = text(price, "currency", f"{where}[price_data][currency]", required=True)
            text(product, "name", f"{where}[price_data][product_data][name]", required=True)
            if not isinstance(quantity, int) or quantity < 1:
                raise invalid(f"{where}[quantity]", f"Invalid {where}[quantity]: must be a positive integer")
            if not isinstance(amount, int) or amount < 0:
                raise invalid(f"{where}[price_data][unit_amount]", "Invalid integer")
            if currency is None or not re.fullmatch(r"[a-z]{3}", currency):
                raise invalid(f"{where}[price_data][currency]", f"Invalid currency: {currency}")
            total += amount * quantity
            currencies.add(currency)
        if len(currencies) > 1:
            raise invalid("line_items", "All line items must be in the same currency")
        return total, currencies.pop()

    # --- the checkout.session object: CheckoutSession(origin, form data) ---

    def session_init(self: Any, origin: str, data: Mapping[str, object]) -> None:
        mode = data.get("mode")
        if mode is None:
            raise UserError(400, "Missing required param: mode.", {"code": "parameter_missing", "param": "mode"})
        if mode not in CHECKOUT_MODES:
            raise invalid("mode", f"Invalid mode: must be one of {', '.join(CHECKOUT_MODES)}")
        success_url = url(data, "success_url", required=True)
        cancel_url = url(data, "cancel_url", required=False)
        customer = text(data, "customer", "customer")
        if customer is not None:
            Customer._api_retrieve(customer)  # 404 for an unknown customer, as localstripe answers elsewhere
        types = data.get("payment_method_types", ["card"])
        if not isinstance(types, list) or not types or any(t not in CHECKOUT_METHOD_TYPES for t in types):
            raise invalid(
                "payment_method_types",
                f"Invalid payment_method_types: must be one of {', '.join(CHECKOUT_METHOD_TYPES)}",
            )
        metadata = strings(data.get("metadata"), "metadata")
        other = "payment" if mode == "setup" else "setup"
        for key in (f"{other}_intent_data", *(("line_items",) if mode == "setup" else ())):
            if key in data:
                raise invalid(key, f"You can only specify `{key}` in `{other}` mode.")
        own = intent_data(data, f"{mode}_intent_data")
        amount_total, currency = line_items(data.get("line_items")) if mode == "payment" else (None, None)

        # All exceptions must be raised before this point.
        setup_intent = None
        if mode == "setup":
            setup_intent = SetupIntent(customer=customer, usage="off_session", metadata=own["metadata"])
            setup_intent.payment_method_types = list(types)
            setup_intent.description = own["description"]
        StripeObject.__init__(self, id=self._id_prefix + random_id(58))
        self.mode = mode
        self.status = "open"
        self.payment_status = "unpaid" if mode == "payment" else "no_payment_required"
        self.url = f"{origin}/_test/checkout/sessions/{self.id}"
        self.expires_at = self.created + CHECKOUT_LIFETIME_SECONDS
        self.customer = customer
        self.metadata = metadata
        self.setup_intent = setup_intent.id if setup_intent is not None else None
        self.payment_intent = None
        self.amount_subtotal = amount_total
        self.amount_total = amount_total
        self.currency = currency
        self.success_url = success_url
        self.cancel_url = cancel_url
        self.payment_method_types = list(types)
        self._payment_intent_data = own if mode == "payment" else {}

    def session_save(self: Any, pm: Any) -> None:
        """Setup mode: the customer saves ``pm`` (authenticating if the card asks)."""
        if pm._attaching_is_declined():
            raise UserError(402, "Your card was declined.", {"code": "card_declined"})
        intent = SetupIntent._api_confirm(self.setup_intent, payment_method=pm.id)
        if intent.status == "requires_action":  # 3-D Secure, done by the customer on the page
            intent.status, intent.next_action = "succeeded", None
        if self.customer is not None:
            PaymentMethod._api_attach(pm.id, customer=self.customer)

    def session_pay(self: Any, pm: Any) -> None:
        """Payment mode: the customer pays ``amount_total`` with ``pm`` (authenticating if the card asks)."""
        data: _IntentData = self._payment_intent_data
        intent = PaymentIntent._api_create(
            amount=self.amount_total,
            currency=self.currency,
            customer=self.customer,
            payment_method=pm.id,
            payment_method_types=[pm.type],
            metadata=dict(data["metadata"]),
            description=data["description"],
        )
        intent._confirm(on_failure_now=intent._report_failure)  # a decline raises 402 here
        if intent.status == "requires_action":  # 3-D Secure, done by the customer on the page
            intent.next_action = None
            intent._create_charge(on_failure_now=intent._report_failure)
        self.payment_intent = intent.id
        self.payment_status = "paid" if intent.status == "succeeded" else "unpaid"

    CheckoutSession: Any = type(
        "CheckoutSession",
        (StripeObject,),
        {
            "object": "checkout.session",
            "_id_prefix": "cs_test_",
            "__init__": session_init,
            "_save": session_save,
            "_pay": session_pay,
        },
    )

    # --- the routes ---

    async def create(request: web.Request) -> web.StreamResponse:
        form = await request.post()
        refuse_unknown(form.keys(), _accepted("post", CHECKOUT_SESSIONS))
        session = CheckoutSession(str(request.url.origin()), unflatten_data(form) if form else {})
        answer: web.StreamResponse = json_response(session._export())
        return answer

    async def retrieve(request: web.Request) -> web.StreamResponse:
        refuse_unknown(request.query.keys(), _accepted("get", CHECKOUT_SESSION))
        expand = unflatten_data(request.query).get("expand")
        session = CheckoutSession._api_retrieve(request.match_info["session"])
        answer: web.StreamResponse = json_response(session._export(expand=expand))
        return answer

    async def page(request: web.Request) -> web.StreamResponse:
        session = CheckoutSession._api_retrieve(request.match_info["session"])
        what = "Save a payment method" if session.mode == "setup" else f"Pay {session.amount_total} {session.currency}"
        return web.Response(
            text=f"<!doctype html><title>Checkout</title><h1>{escape(what)}</h1><p>{escape(session.status)}</p>",
            content_type="text/html",
        )

    async def complete(request: web.Request) -> web.StreamResponse:
        session = CheckoutSession._api_retrieve(request.match_info["session"])
        form = await request.post()
        refuse_unknown(form.keys(), frozenset({("payment_method",)}))
        pm_id = form.get("payment_method")
        if not isinstance(pm_id, str) or not pm_id:
            raise UserError(400, "Missing required param: payment_method.", {"param": "payment_method"})
        if session.status != "open":
            raise UserError(400, f"This Checkout Session is {session.status}: it can no longer be completed.")
        pm = PaymentMethod._api_retrieve(pm_id)
        if pm.type not in session.payment_method_types:
            raise invalid("payment_method", f"This Checkout Session does not take {pm.type} payment methods.")
        if session.mode == "setup":
            session._save(pm)
        else:
            session._pay(pm)
        session.status = "complete"
        schedule_webhook(Event("checkout.session.completed", session))
        answer: web.StreamResponse = json_response(session._export())
        return answer

    return [
        ("POST", CHECKOUT_SESSIONS, create),
        ("GET", CHECKOUT_SESSION, retrieve),
        ("GET", "/_test/checkout/sessions/{session}", page),
        ("POST", "/_test/checkout/sessions/{session}/complete", complete),
    ]


def _serve(fd: int) -> None:
    _patch_localstripe()
    from aiohttp import web
    from localstripe.server import app, auth_middleware

    for method, path, handler in _checkout_routes():
        app.router.add_route(method, path, handler)

    @web.middleware
    async def hosted_pages_take_no_key(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/_test/checkout/"):
            return await handler(request)  # the customer's side: no API key
        answer: web.StreamResponse = await auth_middleware(request, handler)
        return answer

    app.middlewares[app.middlewares.index(auth_middleware)] = hosted_pages_take_no_key

    sock = socket.socket(fileno=fd)
    web.run_app(app, sock=sock, print=None, access_log=None, handle_signals=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Serve the patched localstripe on an inherited listening socket.")
    parser.add_argument("--fd", type=int, required=True, help="a listening socket inherited from the parent")
    _serve(parser.parse_args().fd)
