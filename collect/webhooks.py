"""Signed outbound webhooks: suspensions, resumptions and collections hand-offs, each delivered once.

The planner journals ``webhook`` entries (payload ``{event, connection, customer,
why, tag, ...}``); :class:`WebhookSender` is their journal handler. Each entry
becomes one POST of a JSON event::

    {"id": "<journal key>", "type": "customer.suspended", "created": 1795000000, "data": {...payload}}

with the headers ``Idempotency-Key: <journal key>`` and
``Arsync-Signature: t=<unix seconds>,v1=<hex>``, where ``v1`` is the
HMAC-SHA256, under the target's secret, of ``f"{t}.".encode() + body`` (the
raw body bytes, exactly as sent).

**How a receiver verifies** (:func:`verify` does all of it):

1. read the raw body before parsing it as JSON;
2. split the header on ``,`` into ``t=`` and one or more ``v1=`` values;
3. compute ``hmac_sha256(secret, f"{t}." + body)`` in hex and compare it with
   each ``v1`` in constant time;
4. refuse a ``t`` further than five minutes from its own clock (a replayed
   request), then
5. deduplicate on ``id`` (the same as ``Idempotency-Key``): a delivery may be
   repeated, never with a different meaning.

**Exactly once.** The sender cannot ask the receiver whether an earlier attempt
arrived, so an entry whose outcome is unknown (a worker died after sending, a
timeout after the request went out) is simply sent again: the id and the
``Idempotency-Key`` are the journal key, the same on every attempt, and the
receiver drops the second copy. Only the signature's timestamp changes between
attempts.

Outcomes: a 2xx answer is ``Done``; 408, 429, 5xx and connection errors or
timeouts are retried later (``RetryAt``) with an exponential backoff, or when
``Retry-After`` says; any other answer (4xx, a redirect) is ``GiveUp`` with the
status and the start of the answer, since sending it again would get the same.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import requests

from collect.dunning_policy import WebhookTarget
from connectors import jsonwire
from connectors.base import Clock
from connectors.http import compute_backoff, retry_after_seconds
from sync.journal import Claimed, Done, GiveUp, Outcome, RetryAt

__all__ = [
    "IDEMPOTENCY_HEADER",
    "KIND",
    "SIGNATURE_HEADER",
    "WebhookSender",
    "event_body",
    "sign",
    "signature_header",
    "verify",
]

KIND = "webhook"
SIGNATURE_HEADER = "Arsync-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
DEFAULT_TOLERANCE = 300
"""Seconds a signature's timestamp may be from the receiver's clock."""
RETRIABLE_STATUSES = frozenset({408, 425, 429})
BODY_SHOWN = 200
"""Characters of a refusing answer kept in the journal's error."""


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 under ``secret`` of ``f"{timestamp}.".encode() + body``."""
    return hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def signature_header(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Arsync-Signature`` value: ``t=<timestamp>,v1=<hex>``."""
    return f"t={timestamp},v1={sign(secret, timestamp, body)}"


def verify(secret: str, header: str, body: bytes, now: datetime | float, tolerance: int = DEFAULT_TOLERANCE) -> bool:
    """True when ``header`` (an ``Arsync-Signature`` value) signs ``body`` under ``secret``, made near ``now``.

    ``now`` is the receiver's time (aware datetime or unix seconds); a timestamp
    more than ``tolerance`` seconds away from it is refused, so a captured
    request cannot be replayed later. Several ``v1`` values are allowed (a
    sender rotating its secret signs with both). Comparison is constant-time.
    """
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            return False
        if name == "t":
            try:
                timestamp = int(value)
            except ValueError:
                return False
        elif name == "v1":
            signatures.append(value)
    if timestamp is None or not signatures:
        return False
    seconds = now.timestamp() if isinstance(now, datetime) else float(now)
    if abs(seconds - timestamp) > tolerance:
        return False
    expected = sign(secret, timestamp, body)
    return any(hmac.compare_digest(expected, candidate) for candidate in signatures)


def event_body(event_id: str, event_type: str, created: int, data: Mapping[str, Any]) -> bytes:
    """The JSON body of an event (``Decimal`` amounts written digit for digit, never as floats)."""
    return jsonwire.dumps({"id": event_id, "type": event_type, "created": created, "data": dict(data)}).encode()


class WebhookSender:
    """The journal handler for ``webhook`` entries: signs and POSTs each to one target.

    ``target`` None (no webhook configured) settles entries as done and skipped.
    One sender serves one tenant's target: run it with ``run_due(..., tenant=T)``
    so it never sends another tenant's events. Re-sending after an unknown
    outcome is safe: the receiver deduplicates on ``Idempotency-Key`` / ``id``
    (see the module's docstring), so this handler never looks anything up first.
    ``max_attempts`` retriable failures in a row end in ``GiveUp``.
    """

    def __init__(
        self,
        target: WebhookTarget | None,
        clock: Clock,
        *,
        session: requests.Session | None = None,
        timeout: float | tuple[float, float] = (10.0, 30.0),
        backoff_base: float = 60.0,
        backoff_cap: float = 6 * 3600.0,
        max_attempts: int = 20,
    ) -> None:
        self.target = target
        self.clock = clock
        self.session = session or requests.Session()
        self.timeout = timeout
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.max_attempts = max_attempts

    def __call__(self, entry: Claimed) -> Outcome:
        return self.handle(entry)

    def handle(self, entry: Claimed) -> Outcome:
        if self.target is None:
            return Done(result={"skipped": "no webhook configured"})
        payload = dict(entry.payload)
        event_type = str(payload.get("event") or entry.kind)
        return self.deliver(entry.key, event_type, payload, attempt=entry.attempt)

    def deliver(self, event_id: str, event_type: str, data: Mapping[str, Any], *, attempt: int = 1) -> Outcome:
        """POST one event (``id`` = ``event_id``) to the target and classify the answer.

        ``data["created"]`` (unix seconds, or an ISO datetime), when present, is
        the event's ``created``; otherwise the time of this attempt.
        """
        if self.target is None:
            return Done(result={"skipped": "no webhook configured"})
        now = self.clock()
        timestamp = int(now.timestamp())
        body = event_body(event_id, event_type, _created(data.get("created"), timestamp), data)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "arsync-webhooks/1",
            IDEMPOTENCY_HEADER: event_id,
            SIGNATURE_HEADER: signature_header(self.target.secret, timestamp, body),
        }
        try:
            response = self.session.post(
                self.target.url, data=body, headers=headers, timeout=self.timeout, allow_redirects=False
            )
        except (requests.ConnectionError, requests.Timeout) as exc:
            return self._later(attempt, now, None, f"webhook {self._where()}: {type(exc).__name__}")
        except requests.RequestException as exc:
            return GiveUp(f"webhook {self._where()}: {type(exc).__name__}")
        status = response.status_code
        if 200 <= status < 300:
            return Done(result={"status": status})
        shown = response.text[:BODY_SHOWN]
        error = f"webhook {self._where()} answered {status}: {shown}"
        if status in RETRIABLE_STATUSES or status >= 500:
            return self._later(attempt, now, retry_after_seconds(response.headers, now), error)
        if 300 <= status < 400:
            where = response.headers.get("Location", "?")
            return GiveUp(f"webhook {self._where()} answered {status}, redirecting to {where}: configure that URL")
        return GiveUp(error)

    def _where(self) -> str:
        """The target without its query or credentials (a URL may carry a token): safe for the journal."""
        assert self.target is not None
        parts = urlsplit(self.target.url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{host}{port}{parts.path}"

    def _later(self, attempt: int, now: datetime, retry_after: float | None, error: str) -> Outcome:
        if attempt >= self.max_attempts:
            return GiveUp(f"{error} (after {attempt} attempts)")
        wait = retry_after if retry_after is not None else self._backoff(attempt)
        return RetryAt(now + timedelta(seconds=wait), error)

    def _backoff(self, attempt: int) -> float:
        return compute_backoff(attempt, base=self.backoff_base, cap=self.backoff_cap)


def _created(value: object, default: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(datetime.fromisoformat(value).timestamp())
        except ValueError:
            return default
    return default
