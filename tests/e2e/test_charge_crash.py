"""SIGKILL a charge worker around the call to Stripe: every invoice is charged exactly once.

localstripe ignores ``Idempotency-Key`` (a repeated key charges again), so
only the journal's look-up-before-retry keeps each charge single here. A
proxy between the worker and localstripe kills the worker at the chosen
PaymentIntent creation: before it reaches Stripe, or after Stripe made it but
before the answer gets back.
"""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa
import stripe
from sqlalchemy.orm import sessionmaker

from collect.charging import PlannedCharge
from connectors.base import Entity, InvoiceRecord, InvoiceStatus
from connectors.stripe import StripeProcessor
from connectors.stripe.sandbox import API_KEY, start_localstripe
from connectors.stripe.sandbox import StripeSandbox as LocalStripe
from sync import journal
from sync.db import make_engine, upgrade
from sync.models import Connection, JournalEntry, Tenant
from sync.store import apply_page

pytestmark = pytest.mark.slow
INVOICES = ("101", "102", "103", "104")


class KillingProxy(http.server.ThreadingHTTPServer):
    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _Proxy)
        self.upstream = upstream
        self.creates = 0
        self.kill_on: int | None = None
        self.after_stripe = False
        self.pid: int | None = None
        self.lock = threading.Lock()


class _Proxy(http.server.BaseHTTPRequestHandler):
    server: KillingProxy

    def log_message(self, *args: object) -> None:
        pass

    def _forward(self, method: str) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        dying = False
        if method == "POST" and self.path.startswith("/v1/payment_intents") and self.path.count("/") == 2:
            with self.server.lock:
                self.server.creates += 1
                dying = self.server.creates == self.server.kill_on
        if dying and not self.server.after_stripe:
            self._kill()
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
        answer = requests.request(method, self.server.upstream + self.path, headers=headers, data=body, timeout=30)
        if dying:
            self._kill()
            return
        self.send_response(answer.status_code)
        for name in ("Content-Type", "Request-Id", "Idempotency-Key"):
            if name in answer.headers:
                self.send_header(name, answer.headers[name])
        self.send_header("Content-Length", str(len(answer.content)))
        self.end_headers()
        self.wfile.write(answer.content)

    def _kill(self) -> None:
        assert self.server.pid is not None
        os.kill(self.server.pid, signal.SIGKILL)
        self.close_connection = True

    def do_GET(self) -> None:
        self._forward("GET")

    def do_POST(self) -> None:
        self._forward("POST")


@pytest.fixture(scope="module")
def localstripe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStripe]:
    server = start_localstripe(tmp_path_factory.mktemp("localstripe") / "localstripe.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def proxy(localstripe: LocalStripe) -> Iterator[KillingProxy]:
    server = KillingProxy(localstripe.base_url)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


def enrolled_customer(localstripe: LocalStripe, ours: str) -> tuple[str, str]:
    processor = StripeProcessor(API_KEY, base_url=localstripe.base_url)
    customer = processor.ensure_customer(ours, f"{ours}@example.com", "Acme Ltd")
    admin = stripe.StripeClient(API_KEY, base_addresses={"api": localstripe.base_url}, max_network_retries=0)
    card = {"number": "4242424242424242", "exp_month": 12, "exp_year": 2034, "cvc": "123"}
    method = admin.v1.payment_methods.create(params={"type": "card", "card": card})
    admin.v1.payment_methods.attach(method.id, params={"customer": customer})
    return customer, method.id


@pytest.mark.parametrize("after_stripe", [False, True], ids=["killed-before-stripe", "killed-after-stripe"])
@pytest.mark.parametrize("on_create", [1, 3])
def test_a_killed_charge_worker_never_charges_twice_or_forgets(
    db_url: str,
    localstripe: LocalStripe,
    proxy: KillingProxy,
    after_stripe: bool,
    on_create: int,
    request: pytest.FixtureRequest,
) -> None:
    ours = f"cust-{request.node.callspec.id}-{db_url[:5]}"
    customer, method = enrolled_customer(localstripe, ours)
    engine = make_engine(db_url)
    upgrade(engine)
    sessions = sessionmaker(engine, expire_on_commit=False)
    now = datetime.now(UTC)
    with sessions.begin() as s:
        s.add(Tenant(id="acme", display_name="Acme"))
        s.flush()
        s.add(Connection(id="acme-qbo", tenant_id="acme", kind="quickbooks"))
        s.flush()
        records = [
            InvoiceRecord(
                "acme-qbo",
                n,
                now,
                "0",
                "7",
                f"INV-{n}",
                date(2026, 10, 1),
                date(2026, 10, 31),
                "Net 30",
                "USD",
                Decimal("120.50"),
                Decimal("120.50"),
                InvoiceStatus.OPEN,
            )
            for n in INVOICES
        ]
        apply_page(s, Entity.INVOICE, records, [], now)
        for n in INVOICES:
            journal.record(
                s, PlannedCharge("acme", "acme-qbo", n, Decimal("120.50"), "USD", customer, method).intent(), now
            )

    url = f"http://127.0.0.1:{proxy.server_address[1]}"
    args = [sys.executable, "-m", "tests.e2e.charge_worker", db_url, url]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proxy.kill_on, proxy.after_stripe = on_create, after_stripe
    worker = subprocess.Popen(args, env=env)
    proxy.pid = worker.pid
    assert worker.wait(timeout=120) == -signal.SIGKILL

    proxy.kill_on = None
    restarted = subprocess.run(args, env=env, timeout=120, capture_output=True, text=True)
    assert restarted.returncode == 0, restarted.stderr

    admin = stripe.StripeClient(API_KEY, base_addresses={"api": localstripe.base_url}, max_network_retries=0)
    intents = admin.v1.payment_intents.list(params={"customer": customer, "limit": 100}).data
    charged = Counter(pi.metadata["arsync_invoice"] for pi in intents if pi.status == "succeeded")
    assert charged == Counter(dict.fromkeys(INVOICES, 1))
    assert {pi.amount for pi in intents} == {12050}
    with engine.connect() as conn:
        states = Counter(conn.execute(sa.select(JournalEntry.status)).scalars())
    engine.dispose()
    assert states == Counter({"done": len(INVOICES)})
