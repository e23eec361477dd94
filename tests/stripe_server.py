"""localstripe for the tests: a subprocess on a free port, used once its HTTP port answers.

localstripe is a third-party, stateful Stripe emulator. The tests run its own
aiohttp application with five documented Stripe parameters it lacks added
(:data:`ADDED_PARAMETERS`, each checked against Stripe's OpenAPI spec by the
tests) and without its persistence to ``/tmp/localstripe.pickle`` (one file shared
by every localstripe on the machine, rewritten on each request):

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

It also lists refunds strictly newest first, as Stripe does: localstripe sorts them
by creation second, leaving refunds made within one second oldest first.

Nothing else is changed: it still ignores ``Idempotency-Key``, declines only the
cards it knows, and reports zero fees.

The listening socket is bound here (``127.0.0.1``, port 0) and handed to the
child, so the port cannot be taken between choosing and binding it; readiness is
the first HTTP answer from ``GET /v1/balance``.

Run as a script (``python tests/stripe_server.py --fd N``), this file is the child.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

API_KEY = "sk_test_arsync_localstripe"
"""localstripe accepts any key that starts with ``sk_``."""

ADDED_PARAMETERS: dict[tuple[str, str], tuple[str, ...]] = {
    ("get", "/v1/payment_intents"): ("customer",),
    ("get", "/v1/payment_methods"): ("type",),
    ("post", "/v1/payment_intents"): ("description", "automatic_payment_methods"),
    ("get", "/v1/events"): ("ending_before",),
}
"""What :func:`_patch_localstripe` teaches localstripe: (method, path) -> parameters."""


@dataclass
class LocalStripe:
    base_url: str
    process: subprocess.Popen[bytes]
    log: Path

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_localstripe(log: Path, *, ready_within: float = 30.0) -> LocalStripe:
    """Start localstripe on a free port; return once it answers HTTP (or raise with its log)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    port = listener.getsockname()[1]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--fd", str(listener.fileno())],
            pass_fds=(listener.fileno(),),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    listener.close()
    server = LocalStripe(f"http://127.0.0.1:{port}", process, log)
    try:
        _wait_until_answering(server, ready_within)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_until_answering(server: LocalStripe, ready_within: float) -> None:
    deadline = time.monotonic() + ready_within
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"localstripe exited with {server.process.returncode}:\n{server.log.read_text(errors='replace')}"
            )
        try:
            # The socket already listens, so this waits in the backlog until the app serves it.
            answer = requests.get(
                server.url("/v1/balance"), headers={"Authorization": f"Bearer {API_KEY}"}, timeout=1.0
            )
        except requests.RequestException as exc:
            last_error = exc
            continue
        if answer.status_code == 200:
            return
        raise RuntimeError(f"localstripe answered {answer.status_code}: {answer.text[:500]}")
    raise RuntimeError(
        f"localstripe did not answer within {ready_within}s ({last_error}):\n{server.log.read_text(errors='replace')}"
    )


# --- the child process ----------------------------------------------------------------


def _patch_localstripe() -> None:
    """Teach localstripe the parameters of :data:`ADDED_PARAMETERS`; keep its store in memory only."""
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

    def in_memory_only(self: Any) -> None:
        return None

    Store.dump_to_disk = in_memory_only
    Store.try_load_from_disk = in_memory_only

    def list_payment_intents(
        cls: Any,
        /,
        url: str,
        customer: str | None = None,
        limit: Any = None,
        starting_after: Any = None,
        **unknown: Any,
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
        cls: Any,
        /,
        url: str,
        customer: str | None = None,
        type: str | None = None,
        limit: Any = None,
        starting_after: Any = None,
        **unknown: Any,
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
        self: Any, *args: Any, description: str | None = None, automatic_payment_methods: Any = None, **kwargs: Any
    ) -> None:
        create_payment_intent(self, *args, **kwargs)
        self.description = description

    list_events_oldest_first = Event._api_list_all

    class Page(List):  # type: ignore[misc]
        """One page cut by the caller, with Stripe's ``has_more``."""

        def __init__(self, url: str, items: list[Any], more: bool) -> None:
            super().__init__(url, limit=max(1, len(items)))
            self._list = items
            self._more = more

        @property
        def has_more(self) -> bool:
            return self._more

    def list_events(
        cls: Any,
        /,
        url: str,
        limit: Any = None,
        starting_after: Any = None,
        ending_before: Any = None,
        **filters: Any,
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
        page = newer[-listing._limit :]
        return Page(url, page, len(newer) > len(page))

    list_refunds_by_second = Refund._api_list_all

    def list_refunds(cls: Any, /, url: str, **params: Any) -> Any:
        listing = list_refunds_by_second(url, **params)
        made = {id(obj): n for n, obj in enumerate(store.values())}  # the store keeps creation order
        listing._list.sort(key=lambda refund: made[id(refund)], reverse=True)
        return listing

    PaymentIntent._api_list_all = classmethod(list_payment_intents)
    PaymentMethod._api_list_all = classmethod(list_payment_methods)
    PaymentIntent.__init__ = payment_intent_init
    Event._api_list_all = classmethod(list_events)
    Refund._api_list_all = classmethod(list_refunds)


def _serve(fd: int) -> None:
    _patch_localstripe()
    from aiohttp import web
    from localstripe.server import app  # type: ignore[import-untyped]

    sock = socket.socket(fileno=fd)
    web.run_app(app, sock=sock, print=None, access_log=None, handle_signals=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fd", type=int, required=True, help="a listening socket inherited from the parent")
    _serve(parser.parse_args().fd)
