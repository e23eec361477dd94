"""Shared HTTP behaviour for every connector.

A response is first *classified* into a :class:`Classification` (what to do,
and who must act), then acted on by :class:`HttpTransport`: retried with a
backoff that honours ``Retry-After``, refreshed-and-retried, or raised as one
of the errors of :mod:`connectors.base`. Each vendor supplies its own
classifier table. Timeouts are always explicit; the clock and the sleeper are
injected so tests move time instead of waiting.
"""

from __future__ import annotations

import enum
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

import requests
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt

from connectors.base import (
    Actor,
    Clock,
    FatalError,
    RateLimitedError,
    ReauthRequiredError,
    RetriableError,
    Sleeper,
)


class Resolution(enum.Enum):
    SUCCESS = "success"
    RETRY = "retry"
    RATE_LIMITED = "rate_limited"
    REFRESH_TOKEN_THEN_RETRY = "refresh_token_then_retry"
    FAIL = "fail"
    IGNORE = "ignore"


@dataclass(frozen=True)
class Classification:
    resolution: Resolution
    actor: Actor = Actor.SYSTEM
    message: str = ""
    retry_after: float | None = None


SUCCESS = Classification(Resolution.SUCCESS, Actor.SYSTEM)

Classifier = Callable[[requests.Response], Classification]


def retry_after_seconds(headers: Mapping[str, str], now: datetime) -> float | None:
    """Parse ``Retry-After`` (seconds or an HTTP date) into seconds from ``now``."""
    value = headers.get("Retry-After")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(int(value))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - now).total_seconds())


def compute_backoff(attempt: int, *, base: float = 1.0, cap: float = 60.0) -> float:
    """Exponential backoff for ``attempt`` (1-based), capped. Pure."""
    return float(min(cap, base * (2 ** max(0, attempt - 1))))


class RateBudget:
    """A per-connection budget: requests per second, per minute and in flight.

    ``acquire`` waits (through the injected sleeper) until a request may be
    sent, then records it. ``release`` ends an in-flight request.
    """

    def __init__(
        self,
        clock: Clock,
        sleeper: Sleeper,
        *,
        per_second: int | None = None,
        per_minute: int | None = None,
        per_day: int | None = None,
        concurrent: int | None = None,
        parent: RateBudget | None = None,
        max_wait: float = 300.0,
        margin: float = 0.0,
    ) -> None:
        self._clock = clock
        self.parent = parent
        """A budget shared with other connections (a vendor's per-app limit), taken after this one."""
        self._sleeper = sleeper
        self._limits: list[tuple[float, int]] = []
        if per_second:
            self._limits.append((1.0, per_second))
        if per_minute:
            self._limits.append((60.0, per_minute))
        if per_day:
            self._limits.append((86400.0, per_day))
        self.max_wait = max_wait
        self.margin = margin
        """Seconds added to each window's wait: our clock stamps a call a little before the vendor's does."""
        """A wait longer than this is not slept: ``acquire`` raises ``RateLimitedError`` for the caller to park."""
        self._sent: deque[float] = deque()
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(concurrent) if concurrent else None
        self._paused_until = 0.0

    def _now(self) -> float:
        return self._clock().timestamp()

    def pause_until(self, timestamp: float) -> None:
        """Hold every request until ``timestamp`` (after a rate-limit answer)."""
        with self._lock:
            self._paused_until = max(self._paused_until, timestamp)

    def wait_needed(self, now: float) -> float:
        """Seconds to wait before one more request fits every window. Caller holds the lock."""
        horizon = max((w for w, _ in self._limits), default=0.0)
        while self._sent and self._sent[0] <= now - horizon:
            self._sent.popleft()
        wait = max(0.0, self._paused_until - now)
        for window, limit in self._limits:
            inside = [t for t in self._sent if t > now - window]
            if len(inside) >= limit:
                wait = max(wait, inside[-limit] + window + self.margin - now)
        return wait

    def seconds_until_free(self) -> float:
        """How long until one more request fits every window (0 when it fits now)."""
        with self._lock:
            return self.wait_needed(self._now())

    def acquire(self) -> None:
        if self._slots is not None:
            self._slots.acquire()
        while True:
            with self._lock:
                now = self._now()
                wait = self.wait_needed(now)
                if wait <= 0:
                    self._sent.append(now)
                    break
            if wait > self.max_wait:
                if self._slots is not None:
                    self._slots.release()
                raise RateLimitedError(f"own budget exhausted for {wait:.0f}s", wait)
            self._sleeper(wait)
        if self.parent is not None:
            self.parent.acquire()

    def release(self) -> None:
        if self.parent is not None:
            self.parent.release()
        if self._slots is not None:
            self._slots.release()


class _Retry(Exception):
    def __init__(self, error: RetriableError, wait: float | None) -> None:
        super().__init__(str(error))
        self.error = error
        self.wait = wait


@dataclass
class CallStats:
    requests: int = 0
    retries: int = 0
    throttled: int = 0
    refreshes: int = 0


class HttpTransport(requests.Session):
    """A ``requests.Session`` that classifies, retries and paces every call.

    SDKs that accept a session (python-quickbooks does) send through it, so
    their requests get our timeouts, rate budget and retry policy.
    ``authorize`` returns the current ``Authorization`` header value;
    ``refresh`` is called when a response asks for a new token.
    """

    def __init__(
        self,
        *,
        classifier: Classifier,
        budget: RateBudget,
        clock: Clock,
        sleeper: Sleeper,
        timeout: tuple[float, float] = (10.0, 60.0),
        max_attempts: int = 6,
        authorize: Callable[[], str] | None = None,
        refresh: Callable[[], None] | None = None,
        max_wait: float = 300.0,
    ) -> None:
        super().__init__()
        self.classifier = classifier
        self.budget = budget
        self.clock = clock
        self.sleeper = sleeper
        self.default_timeout = timeout
        self.max_attempts = max_attempts
        self.authorize = authorize
        self.refresh = refresh
        self.max_wait = max_wait
        """A rate limit asking for a longer wait is raised at once: the caller parks instead of sleeping."""
        self.stats = CallStats()
        self._stats_lock = threading.Lock()

    @property
    def access_token(self) -> str:
        """python-quickbooks reads this to build its own header; ours wins."""
        return ""

    def _wait(self, state: RetryCallState) -> float:
        outcome = state.outcome
        error = outcome.exception() if outcome is not None else None
        if isinstance(error, _Retry) and error.wait is not None:
            return error.wait
        return compute_backoff(state.attempt_number)

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self.default_timeout)
        retrying = Retrying(
            sleep=self.sleeper,
            wait=self._wait,
            stop=stop_after_attempt(self.max_attempts),
            retry=retry_if_exception_type(_Retry),
            reraise=True,
        )
        try:
            return retrying(self._attempt, method, url, *args, **kwargs)
        except _Retry as exhausted:
            raise exhausted.error from None

    def _count(self, field: str) -> None:
        with self._stats_lock:
            setattr(self.stats, field, getattr(self.stats, field) + 1)

    def _attempt(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        if self.authorize is not None:
            headers = dict(kwargs.get("headers") or {})
            headers["Authorization"] = self.authorize()
            kwargs["headers"] = headers
        self.budget.acquire()
        self._count("requests")
        try:
            response = super().request(method, url, *args, **kwargs)
        except (requests.Timeout, requests.ConnectionError) as exc:
            self._count("retries")
            raise _Retry(RetriableError(f"{method!r} {url!r}: {exc}"), None) from exc
        finally:
            self.budget.release()
        verdict = self.classifier(response)
        return self._act(verdict, response)

    def _act(self, verdict: Classification, response: requests.Response) -> requests.Response:
        where = f"{response.request.method} {response.url}"
        match verdict.resolution:
            case Resolution.SUCCESS | Resolution.IGNORE:
                return response
            case Resolution.RETRY:
                self._count("retries")
                error = RetriableError(f"{where}: {verdict.message}")
                raise _Retry(error, verdict.retry_after)
            case Resolution.RATE_LIMITED:
                self._count("throttled")
                wait = verdict.retry_after
                if wait is None:
                    wait = 60.0
                limited = RateLimitedError(f"{where}: {verdict.message}", wait)
                if wait > self.max_wait:
                    raise limited
                self.budget.pause_until(self.clock().timestamp() + wait)
                raise _Retry(limited, 0.0)
            case Resolution.REFRESH_TOKEN_THEN_RETRY:
                if self.refresh is None:
                    raise ReauthRequiredError(f"{where}: {verdict.message}")
                self._count("refreshes")
                self.refresh()
                raise _Retry(RetriableError(f"{where}: {verdict.message}"), 0.0)
            case Resolution.FAIL:
                raise FatalError(f"{where}: {verdict.message}", actor=verdict.actor)
        raise AssertionError(verdict)  # pragma: no cover
