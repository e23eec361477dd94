"""Signed webhooks against a real HTTP server in the test process that verifies every signature."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from collect.dunning_policy import WebhookTarget
from collect.webhooks import SIGNATURE_HEADER, WebhookSender, sign, signature_header, verify
from connectors import jsonwire
from sync import journal
from sync.journal import Claimed, Done, GiveUp, RetryAt
from sync.models import JournalEntry
from tests.collecting import TENANT, ledger
from tests.support import FakeClock

SECRET = "whsec_test_0123456789"


@dataclass(frozen=True)
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes
    verified: bool

    def json(self) -> Any:
        return jsonwire.loads(self.body)


@dataclass
class Answer:
    status: int
    body: str = "{}"
    headers: dict[str, str] = field(default_factory=dict)


class WebhookReceiver:
    """A receiver as a customer would write one: verifies the signature against its clock, dedupes on the
    event id, answers from a script (200 when the script is empty)."""

    def __init__(self, secret: str, clock: Callable[[], datetime]) -> None:
        self.secret = secret
        self.clock = clock
        self.deliveries: list[Delivery] = []
        self.processed: dict[str, Any] = {}
        """Event id -> the event, once each (what the receiver acted on)."""
        self.script: list[Answer] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver._receive(self, body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/hooks/arsync"

    def target(self, secret: str | None = None) -> WebhookTarget:
        return WebhookTarget(url=self.url, secret=secret or self.secret)

    def _receive(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        header = handler.headers.get(SIGNATURE_HEADER, "")
        ok = verify(self.secret, header, body, self.clock())
        with self._lock:
            self.deliveries.append(Delivery(handler.path, dict(handler.headers.items()), body, ok))
            answer = self.script.pop(0) if self.script else Answer(200 if ok else 400, "{}" if ok else "bad signature")
            if ok and 200 <= answer.status < 300:
                event = jsonwire.loads(body)
                self.processed.setdefault(event["id"], event)
        data = answer.body.encode()
        handler.send_response(answer.status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        for name, value in answer.headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(data)

    def start(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


@pytest.fixture
def receiver(clock: FakeClock) -> Iterator[WebhookReceiver]:
    server = WebhookReceiver(SECRET, clock).start()
    yield server
    server.stop()


def claimed(key: str = "webhook:suspend:acme:acme-qbo:C1:standard:s60:0", attempt: int = 1, **payload: Any) -> Claimed:
    body: dict[str, Any] = {
        "event": "customer.suspended",
        "connection": "acme-qbo",
        "customer": "C1",
        "why": "step s60 of policy standard",
        "tag": "credit-hold",
        **payload,
    }
    return Claimed(key, "webhook", TENANT, "customer:acme-qbo:C1", body, attempt, False)


# --------------------------------------------------------------------------- signatures


def test_a_signature_verifies_and_fails_when_the_body_the_secret_or_the_time_changes() -> None:
    body = b'{"id":"k","type":"customer.suspended"}'
    header = signature_header(SECRET, 1_795_000_000, body)
    assert header == f"t=1795000000,v1={sign(SECRET, 1_795_000_000, body)}"
    assert verify(SECRET, header, body, 1_795_000_100)
    assert not verify(SECRET, header, body.replace(b"suspended", b"resumed"), 1_795_000_100)
    assert not verify(SECRET + "x", header, body, 1_795_000_100)
    assert not verify(SECRET, header, body, 1_795_000_000 + 301), "a replay after the tolerance is refused"
    assert not verify(SECRET, header.replace("t=1795000000", "t=1795000001"), body, 1_795_000_100)
    assert not verify(SECRET, "v1=" + sign(SECRET, 1_795_000_000, body), body, 1_795_000_100)
    assert not verify(SECRET, "garbage", body, 1_795_000_100)
    rotated = f"{header},v1={sign('old-secret', 1_795_000_000, body)}"
    assert verify("old-secret", rotated, body, 1_795_000_100) and verify(SECRET, rotated, body, 1_795_000_100)


# --------------------------------------------------------------------------- outcomes


def test_a_2xx_is_done_and_the_receiver_gets_a_signed_event(receiver: WebhookReceiver, clock: FakeClock) -> None:
    sender = WebhookSender(receiver.target(), clock)
    entry = claimed(amount=Decimal("1234.50"))
    outcome = sender.handle(entry)
    assert outcome == Done(result={"status": 200})
    [delivery] = receiver.deliveries
    assert delivery.verified
    assert delivery.path == "/hooks/arsync"
    assert delivery.headers["Idempotency-Key"] == entry.key
    assert delivery.headers["Content-Type"] == "application/json"
    event = delivery.json()
    assert event["id"] == entry.key
    assert event["type"] == "customer.suspended"
    assert event["created"] == int(clock().timestamp())
    assert event["data"]["customer"] == "C1" and event["data"]["tag"] == "credit-hold"
    assert event["data"]["amount"] == Decimal("1234.50")
    assert b'"amount":1234.50' in delivery.body, "Decimal written digit for digit"


def test_a_5xx_with_retry_after_is_retried_when_asked(receiver: WebhookReceiver, clock: FakeClock) -> None:
    receiver.script = [Answer(503, "busy", {"Retry-After": "120"})]
    outcome = WebhookSender(receiver.target(), clock).handle(claimed())
    assert isinstance(outcome, RetryAt)
    assert outcome.when == clock() + timedelta(seconds=120)
    assert "503" in outcome.error


def test_a_5xx_without_retry_after_backs_off_by_attempt(receiver: WebhookReceiver, clock: FakeClock) -> None:
    receiver.script = [Answer(500), Answer(500), Answer(429)]
    sender = WebhookSender(receiver.target(), clock, backoff_base=60)
    first = sender.handle(claimed(attempt=1))
    third = sender.handle(claimed(attempt=3))
    limited = sender.handle(claimed(attempt=1))
    assert isinstance(first, RetryAt) and first.when == clock() + timedelta(seconds=60)
    assert isinstance(third, RetryAt) and third.when == clock() + timedelta(seconds=240)
    assert isinstance(limited, RetryAt) and "429" in limited.error


def test_retries_end_after_max_attempts(receiver: WebhookReceiver, clock: FakeClock) -> None:
    receiver.script = [Answer(500)]
    outcome = WebhookSender(receiver.target(), clock, max_attempts=5).handle(claimed(attempt=5))
    assert isinstance(outcome, GiveUp) and "after 5 attempts" in outcome.error


def test_a_4xx_gives_up_with_the_status_and_the_start_of_the_answer(
    receiver: WebhookReceiver, clock: FakeClock
) -> None:
    receiver.script = [Answer(400, "x" * 150 + "y" * 150)]
    outcome = WebhookSender(receiver.target(), clock).handle(claimed())
    assert isinstance(outcome, GiveUp)
    assert "400" in outcome.error
    assert "x" * 150 + "y" * 50 in outcome.error and "y" * 51 not in outcome.error


def test_a_wrong_secret_is_refused_by_the_receiver(receiver: WebhookReceiver, clock: FakeClock) -> None:
    outcome = WebhookSender(receiver.target(secret="not-the-secret"), clock).handle(claimed())
    assert isinstance(outcome, GiveUp) and "bad signature" in outcome.error
    assert [d.verified for d in receiver.deliveries] == [False]
    assert receiver.processed == {}


def test_a_redirect_is_not_followed(receiver: WebhookReceiver, clock: FakeClock) -> None:
    receiver.script = [Answer(301, "", {"Location": "https://elsewhere.example/hook"})]
    outcome = WebhookSender(receiver.target(), clock).handle(claimed())
    assert isinstance(outcome, GiveUp) and "elsewhere.example" in outcome.error
    assert len(receiver.deliveries) == 1


def test_a_connection_error_is_retried(clock: FakeClock) -> None:
    with socket.socket() as probe:  # a port nobody listens on: the connection is refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    target = WebhookTarget(url=f"http://127.0.0.1:{port}/hook", secret=SECRET)
    outcome = WebhookSender(target, clock, timeout=2).handle(claimed())
    assert isinstance(outcome, RetryAt)
    assert outcome.when > clock()


def test_no_target_is_done_and_skipped(clock: FakeClock) -> None:
    assert WebhookSender(None, clock).handle(claimed()) == Done(result={"skipped": "no webhook configured"})


# --------------------------------------------------------------------------- through the journal


@pytest.fixture
def sessions(db_url: str) -> sessionmaker[Session]:
    return ledger(db_url)


def test_through_the_journal_an_event_is_delivered_once_even_after_a_crash(
    sessions: sessionmaker[Session], receiver: WebhookReceiver, clock: FakeClock
) -> None:
    sender = WebhookSender(receiver.target(), clock)
    first, second = claimed(key="webhook:one"), claimed(key="webhook:two", event="customer.resumed")
    with sessions.begin() as s:
        for entry in (first, second):
            journal.record(s, journal.Intent(entry.key, TENANT, "webhook", entry.payload, entry.subject), clock())
    # A worker claims "one" (the oldest), sends it and dies before settling.
    [claimed_one] = journal.claim(sessions, "webhook", "dead-worker", clock(), limit=1)
    assert claimed_one.key == "webhook:one" and not claimed_one.outcome_unknown
    assert isinstance(sender.handle(claimed_one), Done)
    settled = journal.run_due(sessions, "webhook", "w1", sender, clock, tenant=TENANT)
    assert [key for key, _ in settled] == ["webhook:two"]
    clock.advance(minutes=6)  # the dead worker's lease expires: "one" comes back with its outcome unknown
    settled = journal.run_due(sessions, "webhook", "w2", sender, clock, tenant=TENANT)
    assert [key for key, _ in settled] == ["webhook:one"]
    assert journal.run_due(sessions, "webhook", "w3", sender, clock, tenant=TENANT) == []
    # "one" went out twice with the same id and Idempotency-Key; the receiver acted on it once.
    keys = [d.headers["Idempotency-Key"] for d in receiver.deliveries]
    assert sorted(keys) == ["webhook:one", "webhook:one", "webhook:two"]
    assert all(d.verified for d in receiver.deliveries)
    assert sorted(receiver.processed) == ["webhook:one", "webhook:two"]
    assert receiver.processed["webhook:two"]["type"] == "customer.resumed"
    with sessions() as s:
        rows = {e.key: e for e in journal.entries(s)}
    assert {k: r.status for k, r in rows.items()} == {"webhook:one": "done", "webhook:two": "done"}
    assert json.loads(rows["webhook:one"].result or "{}") == {"status": 200}


def test_through_the_journal_a_refusal_fails_the_entry(
    sessions: sessionmaker[Session], receiver: WebhookReceiver, clock: FakeClock
) -> None:
    receiver.script = [Answer(422, '{"error":"unknown customer"}')]
    entry = claimed(key="webhook:refused")
    with sessions.begin() as s:
        journal.record(s, journal.Intent(entry.key, TENANT, "webhook", entry.payload, entry.subject), clock())
    journal.run_due(sessions, "webhook", "w1", WebhookSender(receiver.target(), clock), clock)
    with sessions() as s:
        row = s.query(JournalEntry).filter_by(key="webhook:refused").one()
    assert row.status == "failed"
    assert row.error is not None and "422" in row.error and "unknown customer" in row.error
