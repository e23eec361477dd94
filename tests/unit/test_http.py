"""The shared HTTP behaviour: pacing, backoff, Retry-After, and acting on a classification."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import ClassVar

import pytest
import requests

from connectors.base import Actor, FatalError, RateLimitedError, ReauthRequiredError, RetriableError
from connectors.http import (
    SUCCESS,
    Classification,
    HttpTransport,
    RateBudget,
    Resolution,
    compute_backoff,
    retry_after_seconds,
)
from tests.support import FakeClock


def test_backoff_doubles_and_is_capped() -> None:
    assert [compute_backoff(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert compute_backoff(20) == 60.0


def test_retry_after_in_seconds_and_as_a_date() -> None:
    now = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
    assert retry_after_seconds({"Retry-After": "17"}, now) == 17.0
    assert retry_after_seconds({"Retry-After": "Fri, 20 Nov 2026 12:00:30 GMT"}, now) == 30.0
    assert retry_after_seconds({}, now) is None
    assert retry_after_seconds({"Retry-After": "soon"}, now) is None


def test_budget_paces_per_second_and_per_minute(clock: FakeClock) -> None:
    budget = RateBudget(clock, clock.sleep, per_second=10, per_minute=25)
    sent = []
    for _ in range(30):
        budget.acquire()
        sent.append(clock())
        budget.release()
    for i, at in enumerate(sent):
        assert sum(1 for t in sent[: i + 1] if t > at - timedelta(seconds=1)) <= 10
        assert sum(1 for t in sent[: i + 1] if t > at - timedelta(seconds=60)) <= 25
    assert sent[-1] - sent[0] >= timedelta(seconds=60)


def test_budget_pause_holds_every_request(clock: FakeClock) -> None:
    budget = RateBudget(clock, clock.sleep, per_second=10)
    budget.pause_until((clock() + timedelta(seconds=42)).timestamp())
    start = clock()
    budget.acquire()
    assert clock() - start == timedelta(seconds=42)


class _Handler(http.server.BaseHTTPRequestHandler):
    script: ClassVar[list[tuple[int, dict[str, str]]]] = []
    seen_auth: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.seen_auth.append(self.headers.get("Authorization", ""))
        status, headers = self.script.pop(0) if self.script else (200, {})
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    _Handler.script = []
    _Handler.seen_auth = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def by_status(response: requests.Response) -> Classification:
    if response.status_code == 200:
        return SUCCESS
    if response.status_code == 429:
        return Classification(Resolution.RATE_LIMITED, Actor.TRANSIENT, "slow down", retry_after=30.0)
    if response.status_code == 401:
        return Classification(Resolution.REFRESH_TOKEN_THEN_RETRY, Actor.CONFIG, "expired")
    if response.status_code >= 500:
        return Classification(Resolution.RETRY, Actor.TRANSIENT, "server error")
    return Classification(Resolution.FAIL, Actor.CONFIG, "bad request")


def transport(clock: FakeClock, **kwargs: object) -> HttpTransport:
    return HttpTransport(
        classifier=by_status,
        budget=RateBudget(clock, clock.sleep, per_second=10),
        clock=clock,
        sleeper=clock.sleep,
        timeout=(1.0, 5.0),
        max_attempts=4,
        **kwargs,  # type: ignore[arg-type]
    )


def test_retries_server_errors_with_backoff(server: str, clock: FakeClock) -> None:
    _Handler.script = [(503, {}), (500, {})]
    t = transport(clock)
    assert t.get(server).status_code == 200
    assert t.stats.requests == 3 and t.stats.retries == 2
    assert clock.slept == [1.0, 2.0]


def test_rate_limited_waits_retry_after(server: str, clock: FakeClock) -> None:
    _Handler.script = [(429, {})]
    start = clock()
    assert transport(clock).get(server).status_code == 200
    assert clock() - start >= timedelta(seconds=30)


def test_gives_up_after_max_attempts_with_the_last_error(server: str, clock: FakeClock) -> None:
    _Handler.script = [(429, {})] * 4
    with pytest.raises(RateLimitedError):
        transport(clock).get(server)
    _Handler.script = [(500, {})] * 4
    with pytest.raises(RetriableError):
        transport(clock).get(server)


def test_fatal_is_raised_at_once_with_the_actor(server: str, clock: FakeClock) -> None:
    _Handler.script = [(400, {})]
    with pytest.raises(FatalError) as caught:
        transport(clock).get(server)
    assert caught.value.actor is Actor.CONFIG
    assert len(_Handler.seen_auth) == 1


def test_refresh_then_retry_uses_the_new_token(server: str, clock: FakeClock) -> None:
    token = ["old"]

    def refresh() -> None:
        token[0] = "new"

    _Handler.script = [(401, {})]
    t = transport(clock, authorize=lambda: f"Bearer {token[0]}", refresh=refresh)
    assert t.get(server).status_code == 200
    assert _Handler.seen_auth == ["Bearer old", "Bearer new"]


def test_refresh_needed_without_a_refresher_needs_reauth(server: str, clock: FakeClock) -> None:
    _Handler.script = [(401, {})]
    with pytest.raises(ReauthRequiredError):
        transport(clock).get(server)


def test_connection_refused_is_retried(clock: FakeClock) -> None:
    t = transport(clock)
    with pytest.raises(RetriableError):
        t.get("http://127.0.0.1:9/")
    assert t.stats.requests == 4


def test_a_long_rate_limit_is_raised_at_once_for_the_caller_to_park(server: str, clock: FakeClock) -> None:
    _Handler.script = [(429, {})]
    t = transport(clock)
    t.max_wait = 10.0
    with pytest.raises(RateLimitedError) as caught:
        t.get(server)
    assert caught.value.retry_after == 30.0
    assert clock.slept == [] and len(_Handler.seen_auth) == 1


def test_a_shared_app_budget_paces_every_connection(clock: FakeClock) -> None:
    app = RateBudget(clock, clock.sleep, per_minute=5)
    first = RateBudget(clock, clock.sleep, per_minute=60, parent=app)
    second = RateBudget(clock, clock.sleep, per_minute=60, parent=app)
    start = clock()
    for budget in (first, second, first, second, first, second):
        budget.acquire()
        budget.release()
    assert clock() - start >= timedelta(seconds=60)


def test_a_day_budget_raises_instead_of_sleeping_for_hours(clock: FakeClock) -> None:
    budget = RateBudget(clock, clock.sleep, per_minute=60, per_day=3)
    for _ in range(3):
        budget.acquire()
        budget.release()
    with pytest.raises(RateLimitedError) as caught:
        budget.acquire()
    assert caught.value.retry_after is not None and caught.value.retry_after > 80000
    assert sum(clock.slept) < 60
