"""Xero Accounting API responses -> :class:`~connectors.http.Classification`.

One table for every response the Xero API sends; the rules are tried in
this order (resolution, then who must act):

1. HTTP 429, or a 503 carrying ``X-Rate-Limit-Problem``: RATE_LIMITED,
   transient. ``X-Rate-Limit-Problem`` names the limit: ``minute`` (60 calls
   per organisation), ``appminute`` (10,000 calls per app across all
   organisations), ``concurrent`` (5 in flight): wait ``Retry-After``, else
   60 seconds. ``day`` (5,000 calls per organisation): wait ``Retry-After``
   (seconds until the organisation's day resets), else until the next UTC
   midnight by the injected clock; the message says "day limit" so that
   :func:`is_day_limit` can tell the engine to park the connection.
2. HTTP 401 (``{"Title":"Unauthorized","Detail":"TokenExpired: ..."}``, or
   ``WWW-Authenticate: Bearer error="invalid_token"``):
   REFRESH_TOKEN_THEN_RETRY, config.
3. HTTP 403 (``AuthenticationUnsuccessful``: the organisation disconnected
   the app, the organisation is gone, or the ``xero-tenant-id`` is wrong):
   FAIL, config, saying to check the tenant id and reconnect.
4. HTTP 500, 502, 503, 504: RETRY, transient, honouring ``Retry-After``.
5. 2xx: SUCCESS, per-item ``ValidationErrors`` included (with
   ``summarizeErrors=false`` the caller reads each element). Only a 2xx
   that says it is JSON and is not is a FAIL, system (a cut-off body).
6. HTTP 400 ``ValidationException`` (``ErrorNumber`` 10): FAIL, system,
   with the elements' messages summarised (a classifier made with
   ``writes_to_caller=True`` answers IGNORE instead for a PUT / POST: the
   ledger writer reads each element's messages, since nothing of the request
   was applied); a 400 that refuses a query as
   "not filtering efficiently", or a ``QueryParseException``: FAIL, system
   (our query is wrong).
7. HTTP 404 and anything else: FAIL, system.

``Retry-After`` is read with the injected clock; the table never reads the
time itself. :func:`read_rate_headers` reads the remaining-call headers Xero
sends on every response (``X-MinLimit-Remaining`` and friends).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import requests

from connectors.base import Actor, Clock
from connectors.http import Classification, Classifier, Resolution, retry_after_seconds

__all__ = [
    "DAY_LIMIT",
    "DEFAULT_RATE_WAIT",
    "RateHeaders",
    "XeroError",
    "XeroFaults",
    "is_day_limit",
    "make_classifier",
    "parse_error",
    "rate_problem",
    "read_rate_headers",
    "validation_messages",
]

DEFAULT_RATE_WAIT = 60.0
"""Seconds to wait after a minute / app-minute / concurrent limit answer without ``Retry-After``."""

DAY_LIMIT = "day limit"
"""Every day-limit classification's message names it; test with :func:`is_day_limit`."""

RETRY_STATUSES = frozenset({500, 502, 503, 504})
VALIDATION_ERROR_NUMBER = 10
QUERY_PARSE_ERROR_NUMBER = 16
MAX_MESSAGES = 5
"""Validation messages quoted in one classification; the rest are counted."""

_SPACES = re.compile(r"\s+")
_JWT = re.compile(r"eyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*")
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/\-]+=*")
_LETTERS = re.compile(r"[^a-z]")


# --- rate headers -------------------------------------------------------------------


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """``headers[name]``, case-insensitively (``requests`` headers or a plain dict)."""
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        value = next((v for k, v in headers.items() if isinstance(k, str) and k.lower() == lowered), None)
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    value = _header(headers, name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def rate_problem(value: str | None) -> str | None:
    """``X-Rate-Limit-Problem`` as ``minute``, ``appminute``, ``day`` or ``concurrent``.

    Xero documents the lower-case words; spellings seen in the wild
    (``Minute limit``, ``DayLimit``, ``daily``) are folded to them. Anything
    else comes back lower-cased as it is.
    """
    if value is None or not value.strip():
        return None
    word = _LETTERS.sub("", value.lower()).removesuffix("limit")
    if word in ("day", "daily"):
        return "day"
    if word in ("appminute", "app"):
        return "appminute"
    if word in ("minute", "min"):
        return "minute"
    if word == "concurrent":
        return "concurrent"
    return value.strip().lower()


@dataclass(frozen=True)
class RateHeaders:
    """What Xero says is left of each limit (``None``: not sent)."""

    minute_remaining: int | None = None
    """``X-MinLimit-Remaining``: calls left this minute for the organisation."""
    day_remaining: int | None = None
    """``X-DayLimit-Remaining``: calls left today for the organisation."""
    app_minute_remaining: int | None = None
    """``X-AppMinLimit-Remaining``: calls left this minute for the app, all organisations."""
    problem: str | None = None
    """``X-Rate-Limit-Problem`` (on a 429), folded by :func:`rate_problem`."""


def read_rate_headers(headers: Mapping[str, str]) -> RateHeaders:
    """The rate headers of any response; a missing or non-numeric header is ``None``."""
    return RateHeaders(
        minute_remaining=_int_header(headers, "X-MinLimit-Remaining"),
        day_remaining=_int_header(headers, "X-DayLimit-Remaining"),
        app_minute_remaining=_int_header(headers, "X-AppMinLimit-Remaining"),
        problem=rate_problem(_header(headers, "X-Rate-Limit-Problem")),
    )


# --- error bodies -------------------------------------------------------------------


def _clean(value: object) -> str:
    return "" if value is None else _SPACES.sub(" ", str(value)).strip()


def _redact(text: str) -> str:
    """Blank bearer tokens and JWTs: an auth answer may quote the token."""
    return _BEARER.sub(r"\1[redacted]", _JWT.sub("[redacted]", text))


def _walk_validation(value: object) -> Iterator[str]:
    if isinstance(value, Mapping):
        own = value.get("ValidationErrors")
        if isinstance(own, list):
            for error in own:
                if isinstance(error, Mapping):
                    message = _clean(error.get("Message"))
                    if message:
                        yield message
        for key, child in value.items():
            if key != "ValidationErrors":
                yield from _walk_validation(child)
    elif isinstance(value, list):
        for child in value:
            yield from _walk_validation(child)


def validation_messages(item_or_body: object) -> list[str]:
    """Every ``ValidationErrors[].Message`` in an element or a whole body, in order, once each.

    Reads an element's own errors and those of its children (``LineItems``,
    ``Phones``, ...), so it serves a 200 element sent back with
    ``summarizeErrors=false`` and a 400 ``ValidationException`` body
    (``Elements[].ValidationErrors``) alike.
    """
    seen: dict[str, None] = {}
    for message in _walk_validation(item_or_body):
        seen.setdefault(message, None)
    return list(seen)


@dataclass(frozen=True)
class XeroError:
    """A Xero error body, in either shape.

    The API exception shape ``{"ErrorNumber": 10, "Type": "ValidationException",
    "Message": ..., "Elements": [...]}`` and the problem-details shape of the
    gateway ``{"Type": null, "Title": "Unauthorized", "Status": 401,
    "Detail": "TokenExpired: ..."}`` (any key case).
    """

    title: str
    """``Type`` of an API exception, or ``Title`` of a problem-details body."""
    detail: str
    """``Message`` of an API exception, or ``Detail`` of a problem-details body."""
    error_number: int | None = None
    messages: tuple[str, ...] = ()
    """Validation messages of the elements."""


def _get_ci(mapping: Mapping[str, Any], key: str) -> Any:
    if key in mapping:
        return mapping[key]
    lowered = key.lower()
    return next((v for k, v in mapping.items() if isinstance(k, str) and k.lower() == lowered), None)


def _parse_json(content: bytes) -> Any:
    if content.lstrip()[:1] not in (b"{", b"["):
        return None
    try:
        return json.loads(content, parse_float=Decimal)
    except ValueError:
        return None


def parse_error(body: Mapping[str, Any] | str | bytes) -> XeroError | None:
    """The error in a Xero body (parsed JSON or its text), or ``None`` when it is not one."""
    if isinstance(body, Mapping):
        parsed: Any = body
    else:
        parsed = _parse_json(body.encode() if isinstance(body, str) else body)
    if not isinstance(parsed, Mapping):
        return None
    number = _get_ci(parsed, "ErrorNumber")
    title = _clean(_get_ci(parsed, "Title")) or _clean(_get_ci(parsed, "Type"))
    detail = _clean(_get_ci(parsed, "Detail")) or _clean(_get_ci(parsed, "Message"))
    if not (title or detail or number is not None):
        return None
    elements = _get_ci(parsed, "Elements")
    return XeroError(
        title=title,
        detail=detail,
        error_number=number if isinstance(number, int) and not isinstance(number, bool) else None,
        messages=tuple(validation_messages(elements)) if isinstance(elements, list) else (),
    )


def _summary(error: XeroError) -> str:
    head = error.title
    if error.error_number is not None:
        head = f"{head} ({error.error_number})" if head else f"error {error.error_number}"
    text = f"{head}: {error.detail}" if head and error.detail else head or error.detail
    if error.messages:
        quoted = "; ".join(error.messages[:MAX_MESSAGES])
        more = len(error.messages) - MAX_MESSAGES
        text += f": {quoted}" + (f" (and {more} more)" if more > 0 else "")
    return _redact(text)


# --- the table ----------------------------------------------------------------------


def is_day_limit(classification: Classification) -> bool:
    """Whether ``classification`` is Xero's day limit (a long wait: park the connection)."""
    return classification.resolution is Resolution.RATE_LIMITED and _DAY_LIMIT_REACHED in classification.message


@dataclass(frozen=True)
class _Parsed:
    kind: str  # "json" | "empty" | "text" | "html" | "binary"
    error: XeroError | None
    text: str


def _parse_response(response: requests.Response) -> _Parsed:
    content = response.content or b""
    if not content.strip():
        return _Parsed("empty", None, "")
    parsed = _parse_json(content)
    if parsed is not None:
        return _Parsed("json", parse_error(parsed) if isinstance(parsed, Mapping) else None, "")
    content_type = (_header(response.headers, "Content-Type") or "").lower()
    if content_type.startswith(("application/pdf", "image/", "application/octet-stream")):
        return _Parsed("binary", None, "")
    text = _clean(content[:2000].decode("utf-8", errors="replace"))
    # Xero labels some plain-text errors text/html: only markup counts as HTML.
    kind = "html" if text.startswith("<") else "text"
    return _Parsed(kind, None, text)


_NOT_JSON = "a JSON answer that is not JSON"


def _looks_like_json(content: bytes) -> bool:
    """Whether a body is whole JSON by its ends (an empty body counts): cheap, and enough to catch truncation."""
    body = content.strip()
    return not body or (body[:1] in (b"{", b"[") and body[-1:] in (b"}", b"]"))


def _says_json(response: requests.Response) -> bool:
    return "json" in (_header(response.headers, "Content-Type") or "").lower()


class XeroFaults:
    """The Xero classification table, with an injected clock for ``Retry-After`` and the day limit."""

    def __init__(self, clock: Clock, *, rate_wait: float = DEFAULT_RATE_WAIT, writes_to_caller: bool = False) -> None:
        self._clock = clock
        self._rate_wait = rate_wait
        self._writes_to_caller = writes_to_caller

    def __call__(self, response: requests.Response) -> Classification:
        return self.classify(response)

    def _retry_after(self, response: requests.Response) -> float | None:
        return retry_after_seconds(response.headers, self._clock())

    def _until_utc_midnight(self) -> float:
        now = self._clock().astimezone(UTC)
        midnight = datetime.combine(now.date() + timedelta(days=1), time(0), tzinfo=UTC)
        return (midnight - now).total_seconds()

    def classify(self, response: requests.Response) -> Classification:
        status = response.status_code
        if 200 <= status < 300:
            # A success is parsed once, by the caller; here only its shape is checked.
            if _says_json(response) and not _looks_like_json(response.content or b""):
                return Classification(
                    Resolution.FAIL, Actor.SYSTEM, _message(response, _parse_response(response), _NOT_JSON)
                )
            return Classification(Resolution.SUCCESS, Actor.SYSTEM, "")
        parsed = _parse_response(response)
        rate = read_rate_headers(response.headers)

        def say(what: str = "") -> str:
            return _message(response, parsed, what)

        if status == 429 or (status == 503 and rate.problem is not None):
            return self._rate_limited(response, rate.problem, say)
        if status == 401:
            challenge = _header(response.headers, "WWW-Authenticate") or ""
            what = "access token rejected (WWW-Authenticate: invalid_token)" if "invalid_token" in challenge else ""
            return Classification(Resolution.REFRESH_TOKEN_THEN_RETRY, Actor.CONFIG, say(what))
        if status == 403:
            return Classification(Resolution.FAIL, Actor.CONFIG, say(_FORBIDDEN))
        if status in RETRY_STATUSES:
            return Classification(Resolution.RETRY, Actor.TRANSIENT, say(), self._retry_after(response))
        if status == 400:
            if self._writes_to_caller and _is_validation(parsed.error) and _method(response) in ("PUT", "POST"):
                return Classification(Resolution.IGNORE, Actor.SYSTEM, say("validation failed"))
            return Classification(Resolution.FAIL, Actor.SYSTEM, say(_bad_request(parsed)))
        if status == 404:
            return Classification(Resolution.FAIL, Actor.SYSTEM, say("not found"))
        return Classification(Resolution.FAIL, Actor.SYSTEM, say())

    def _rate_limited(
        self, response: requests.Response, problem: str | None, say: Callable[[str], str]
    ) -> Classification:
        wait = self._retry_after(response)
        if problem == "day":
            if wait is None:
                wait = self._until_utc_midnight()
            what = _DAY_LIMIT_REACHED
        else:
            if wait is None:
                wait = self._rate_wait
            what = _RATE_LIMITS.get(problem or "", f"Xero rate limit reached ({problem or 'no X-Rate-Limit-Problem'})")
        return Classification(Resolution.RATE_LIMITED, Actor.TRANSIENT, say(what), wait)


_DAY_LIMIT_REACHED = f"Xero {DAY_LIMIT} reached (5,000 calls per organisation per day)"
_RATE_LIMITS: Mapping[str, str] = {
    "appminute": "Xero app-wide minute limit reached (10,000 calls for all organisations of this app)",
    "concurrent": "Xero concurrent-call limit reached (5 in flight per organisation)",
    "minute": "Xero minute limit reached (60 calls per organisation)",
}
_FORBIDDEN = (
    "Xero refused access to the organisation (the app was disconnected from it, the organisation is gone, "
    "or xero_tenant_id is wrong): check the tenant id and reconnect with `arsync connect`"
)


def _is_validation(error: XeroError | None) -> bool:
    return error is not None and (error.error_number == VALIDATION_ERROR_NUMBER or error.title == "ValidationException")


def _method(response: requests.Response) -> str:
    request = getattr(response, "request", None)
    return str(getattr(request, "method", "") or "").upper()


def _bad_request(parsed: _Parsed) -> str:
    error = parsed.error
    if _is_validation(error):
        return "validation failed"
    text = " ".join(part for part in (parsed.text, error.detail if error else "") if part).lower()
    if "filter" in text:
        return "Xero refused the query as not filtering efficiently: narrow it (where, If-Modified-Since, page)"
    if error is not None and (error.error_number == QUERY_PARSE_ERROR_NUMBER or error.title == "QueryParseException"):
        return "invalid query"
    return "bad request"


def _message(response: requests.Response, parsed: _Parsed, what: str = "") -> str:
    """``HTTP <status>[: what][: body summary][ (xero_correlation_id=...)]``."""
    parts = [f"HTTP {response.status_code}"]
    if what:
        parts.append(what)
    if parsed.error is not None:
        parts.append(_summary(parsed.error))
    elif parsed.kind == "text" and parsed.text:
        parts.append(_redact(parsed.text[:300]))
    elif parsed.kind == "html":
        parts.append("HTML body")
    text = ": ".join(parts)
    correlation = _header(response.headers, "Xero-Correlation-Id")
    return f"{text} (xero_correlation_id={correlation})" if correlation else text


def make_classifier(
    clock: Clock, *, rate_wait: float = DEFAULT_RATE_WAIT, writes_to_caller: bool = False
) -> Classifier:
    """The Xero classifier for :class:`connectors.http.HttpTransport`.

    ``writes_to_caller``: a write refused whole with a 400 ``ValidationException`` is handed back
    (IGNORE) instead of raised, for a caller that reads the refusal element by element.
    """
    return XeroFaults(clock, rate_wait=rate_wait, writes_to_caller=writes_to_caller).classify
