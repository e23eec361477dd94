"""QuickBooks Online responses -> :class:`~connectors.http.Classification`.

One table for every response the QuickBooks API sends; the rules are tried
in this order (resolution, then who must act):

1. HTTP 429, or a ``ThrottleExceeded`` fault (code 3001, sent as XML even when
   JSON was asked, often with HTTP 403): RATE_LIMITED, transient, waiting
   ``Retry-After`` or 60 seconds.
2. HTTP 401, or fault 3200 / 100 (AuthenticationFailed) in the upper-case
   ``Fault.Error[]`` or the lower-case ``fault.error[]`` shape:
   REFRESH_TOKEN_THEN_RETRY, config.
3. Any other HTTP 403 (3100 ApplicationAuthorizationFailed, 5020 Permission
   Denied): FAIL, config.
4. Fault 10000 (SystemFault): RETRY, transient.
5. Fault 5010 (Stale Object Error): FAIL, system (write-back re-reads).
6. Fault 6000-6999 (business validation): FAIL, config.
7. Fault 610 (Object Not Found): FAIL, system.
8. Fault 4000-4999 (query validation: our query is wrong): FAIL, system.
9. HTTP 500, 502, 503, 504: RETRY, transient.
10. 2xx JSON, 2xx Intuit XML without a fault, 2xx PDF: SUCCESS.
11. Anything else (another 2xx body, another status or fault): FAIL, system.

A fault inside a 2xx body is classified by its code like any other.
``Retry-After`` is honoured on 429/throttle and on retried 5xx answers; the
clock is injected (:class:`QuickBooksFaults`), never read inside the table.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from xml.etree.ElementTree import Element, ParseError

import requests
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from connectors.base import Actor, Clock
from connectors.http import Classification, Classifier, Resolution, retry_after_seconds

__all__ = [
    "DEFAULT_THROTTLE_WAIT",
    "Fault",
    "FaultError",
    "ItemFate",
    "ItemVerdict",
    "QuickBooksFaults",
    "fault_summary",
    "item_verdict",
    "make_classifier",
    "parse_fault",
]

DEFAULT_THROTTLE_WAIT = 60.0
"""Seconds to wait after a throttle answer that carries no ``Retry-After``."""

THROTTLE_CODE = "3001"
AUTH_CODES = frozenset({"3200", "100"})
SYSTEM_FAULT_CODE = "10000"
STALE_OBJECT_CODE = "5010"
OBJECT_NOT_FOUND_CODE = "610"
RETRY_STATUSES = frozenset({500, 502, 503, 504})
DUPLICATE_REQUEST_CODE = "600"
"""Intuit's "Duplicate Request ID": an item already sent under this requestid."""
CLOSED_PERIOD_CODES = frozenset({"6200", "6210"})
"""Intuit's error-code list: 6200 Account Period Closed, 6210 Account Period Closed (password required);
"Fix common errors" and live traffic show 6210 with "Account Period Closed, Cannot Update Through Services API"."""

_INTUIT_ROOTS = frozenset({"IntuitResponse", "Fault"})
_TOKENISH = re.compile(r"(?<![A-Za-z0-9_\-])(?=[A-Za-z0-9_\-]*\d)(?=[A-Za-z0-9_\-]*[A-Za-z])[A-Za-z0-9_\-]{24,}")
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class FaultError:
    code: str
    """Without leading zeros: ``003200`` -> ``3200``."""
    message: str = ""
    detail: str = ""
    element: str = ""


@dataclass(frozen=True)
class Fault:
    type: str | None
    errors: tuple[FaultError, ...]

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(error.code for error in self.errors)


# --- parsing both fault shapes ---------------------------------------------------


def _normalize_code(raw: object) -> str:
    text = "" if raw is None else str(raw).strip()
    if text.isdigit():
        return text.lstrip("0") or "0"
    return text


def _clean(text: object) -> str:
    return "" if text is None else _SPACES.sub(" ", str(text)).strip()


def _get_ci(mapping: Mapping[str, Any], key: str) -> Any:
    """``mapping[key]`` matching the key case-insensitively (``Fault``/``fault``)."""
    if key in mapping:
        return mapping[key]
    lowered = key.lower()
    for name, value in mapping.items():
        if isinstance(name, str) and name.lower() == lowered:
            return value
    return None


def _fault_from_json(body: Mapping[str, Any]) -> Fault | None:
    fault = _get_ci(body, "Fault")
    if not isinstance(fault, Mapping):
        return None
    raw_errors = _get_ci(fault, "Error")
    if isinstance(raw_errors, Mapping):
        raw_errors = [raw_errors]
    errors = tuple(
        FaultError(
            code=_normalize_code(_get_ci(error, "code")),
            message=_clean(_get_ci(error, "Message")),
            detail=_clean(_get_ci(error, "Detail")),
            element=_clean(_get_ci(error, "element")),
        )
        for error in (raw_errors if isinstance(raw_errors, list) else [])
        if isinstance(error, Mapping)
    )
    fault_type = _get_ci(fault, "type")
    return Fault(str(fault_type) if fault_type is not None else None, errors)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child_text(node: Element, name: str) -> str:
    for child in node:
        if _local(child.tag) == name:
            return _clean(child.text)
    return ""


def _fault_from_xml(root: Element) -> Fault | None:
    for node in root.iter():
        if _local(node.tag) != "Fault":
            continue
        errors = tuple(
            FaultError(
                code=_normalize_code(error.get("code")),
                message=_child_text(error, "Message"),
                detail=_child_text(error, "Detail"),
                element=_clean(error.get("element")),
            )
            for error in node
            if _local(error.tag) == "Error"
        )
        return Fault(node.get("type"), errors)
    return None


def _parse_xml(content: bytes) -> Element | None:
    if not content.lstrip().startswith(b"<"):
        return None
    try:
        root = fromstring(content)
    except (ParseError, DefusedXmlException, ValueError):
        return None
    return root if _local(root.tag) in _INTUIT_ROOTS else None


def _parse_json(content: bytes) -> Any:
    if content.lstrip()[:1] not in (b"{", b"["):
        return None
    try:
        return json.loads(content, parse_float=Decimal)
    except ValueError:
        return None


def parse_fault(body: Mapping[str, Any] | str | bytes) -> Fault | None:
    """The fault in a QuickBooks body (parsed JSON, JSON text or XML text), if any."""
    if isinstance(body, Mapping):
        return _fault_from_json(body)
    content = body.encode() if isinstance(body, str) else body
    parsed = _parse_json(content)
    if isinstance(parsed, Mapping):
        return _fault_from_json(parsed)
    root = _parse_xml(content)
    return _fault_from_xml(root) if root is not None else None


def _redact(text: str) -> str:
    """Blank token-like runs: an auth fault's detail can quote the token."""
    return _TOKENISH.sub("[redacted]", text)


def _describe(error: FaultError) -> str:
    head = f"code {error.code}" if error.code else "fault"
    if error.message:
        head += f" {error.message}"
    if error.element:
        head += f" ({error.element})"
    return f"{head}: {_redact(error.detail)}" if error.detail else head


def fault_summary(body: Mapping[str, Any] | str | bytes | Fault | None) -> str:
    """``"code 6240 Duplicate Name Exists Error: <Detail>"`` for either fault shape.

    Several errors are joined with ``"; "``; a body without a fault gives ``""``.
    Token-like strings in the detail are redacted.
    """
    fault = body if isinstance(body, Fault) or body is None else parse_fault(body)
    if fault is None:
        return ""
    if not fault.errors:
        return f"fault {fault.type}" if fault.type else "fault"
    return "; ".join(_describe(error) for error in fault.errors)


# --- the table ------------------------------------------------------------------


def _is_throttle(fault: Fault | None) -> bool:
    return fault is not None and any(e.code == THROTTLE_CODE or "ThrottleExceeded" in e.message for e in fault.errors)


def _is_auth_failure(fault: Fault | None) -> bool:
    return fault is not None and any(e.code in AUTH_CODES or "AuthenticationFailed" in e.message for e in fault.errors)


def _code_number(code: str) -> int | None:
    return int(code) if code.isdigit() else None


def _fault_rule(code: str) -> tuple[Resolution, Actor, str] | None:
    """The row for one fault code, or ``None`` when the status decides."""
    number = _code_number(code)
    if code == SYSTEM_FAULT_CODE:
        return Resolution.RETRY, Actor.TRANSIENT, "QuickBooks system fault"
    if code == STALE_OBJECT_CODE:
        # Somebody changed the object after we read it (our SyncToken is old).
        # Resending the same body can never succeed: write-back re-reads the
        # object, re-checks its journal, and sends again with the new SyncToken.
        return Resolution.FAIL, Actor.SYSTEM, "stale object (5010): re-read and resend"
    if number is not None and 6000 <= number <= 6999:
        return Resolution.FAIL, Actor.CONFIG, "business validation error"
    if code == OBJECT_NOT_FOUND_CODE:
        return Resolution.FAIL, Actor.SYSTEM, "object not found or inactive"
    if number is not None and 4000 <= number <= 4999:
        return Resolution.FAIL, Actor.SYSTEM, "invalid query"
    return None


@dataclass(frozen=True)
class _Parsed:
    kind: str  # "json" | "xml" | "pdf" | "empty" | "other"
    fault: Fault | None


def _parse_response(response: requests.Response) -> _Parsed:
    content = response.content or b""
    if not content.strip():
        return _Parsed("empty", None)
    parsed = _parse_json(content)
    if parsed is not None:
        fault = _fault_from_json(parsed) if isinstance(parsed, Mapping) else None
        return _Parsed("json", fault)
    root = _parse_xml(content)
    if root is not None:
        return _Parsed("xml", _fault_from_xml(root))
    content_type = response.headers.get("Content-Type", "").lower()
    if content_type.startswith("application/pdf") and content.startswith(b"%PDF"):
        return _Parsed("pdf", None)
    return _Parsed("other", None)


def _plain_json_success(content: bytes) -> bool:
    """A whole JSON object that does not open with a fault: cheap, without decoding the body."""
    body = content.strip()
    if body[:1] != b"{" or body[-1:] != b"}":
        return False
    head = body[1:40].lstrip().lower()
    return not (head.startswith(b'"fault"') or head.startswith(b'"warnings"'))


class QuickBooksFaults:
    """The QuickBooks classification table, with an injected clock for ``Retry-After``.

    Stale Object Error (5010) is a FAIL for the system, not a RETRY: the same
    request will fail the same way, because its ``SyncToken`` is out of date.
    Write-back handles it by re-reading the object and sending again.
    """

    def __init__(self, clock: Clock, *, throttle_wait: float = DEFAULT_THROTTLE_WAIT) -> None:
        self._clock = clock
        self._throttle_wait = throttle_wait

    def __call__(self, response: requests.Response) -> Classification:
        return self.classify(response)

    def _retry_after(self, response: requests.Response) -> float | None:
        return retry_after_seconds(response.headers, self._clock())

    def classify(self, response: requests.Response) -> Classification:
        status = response.status_code
        if 200 <= status < 300 and _plain_json_success(response.content or b""):
            # The caller decodes a success once; a Fault in a 200 starts the body, so it is not missed.
            return Classification(Resolution.SUCCESS, Actor.SYSTEM, "")
        parsed = _parse_response(response)
        fault = parsed.fault
        message = _message(response, fault, parsed.kind)

        if status == 429 or _is_throttle(fault):
            wait = self._retry_after(response)
            return Classification(
                Resolution.RATE_LIMITED,
                Actor.TRANSIENT,
                message,
                self._throttle_wait if wait is None else wait,
            )
        if status == 401 or _is_auth_failure(fault):
            return Classification(Resolution.REFRESH_TOKEN_THEN_RETRY, Actor.CONFIG, message)
        if status == 403:
            return Classification(Resolution.FAIL, Actor.CONFIG, f"permission denied: {message}")
        if fault is not None:
            for code in fault.codes:
                rule = _fault_rule(code)
                if rule is None:
                    continue
                resolution, actor, what = rule
                retry_after = self._retry_after(response) if resolution is Resolution.RETRY else None
                return Classification(resolution, actor, f"{what}: {message}", retry_after)
        if status in RETRY_STATUSES:
            return Classification(Resolution.RETRY, Actor.TRANSIENT, message, self._retry_after(response))
        if 200 <= status < 300:
            if fault is not None:
                return Classification(Resolution.FAIL, Actor.SYSTEM, message)
            if parsed.kind in ("json", "xml", "pdf"):
                return Classification(Resolution.SUCCESS, Actor.SYSTEM, "")
            return Classification(Resolution.FAIL, Actor.SYSTEM, f"unexpected {parsed.kind} body: {message}")
        return Classification(Resolution.FAIL, Actor.SYSTEM, message)


def _message(response: requests.Response, fault: Fault | None, kind: str) -> str:
    parts = [f"HTTP {response.status_code}"]
    summary = fault_summary(fault)
    if summary:
        parts.append(summary)
    elif kind == "other":
        content_type = response.headers.get("Content-Type")
        parts.append(f"non-JSON body ({content_type or 'no Content-Type'})")
    tid = response.headers.get("Intuit-Tid")
    if tid:
        parts.append(f"intuit_tid={tid}")
    return " ".join(parts)


def make_classifier(clock: Clock, *, throttle_wait: float = DEFAULT_THROTTLE_WAIT) -> Classifier:
    """The QuickBooks classifier for :class:`connectors.http.HttpTransport`."""
    return QuickBooksFaults(clock, throttle_wait=throttle_wait).classify


# --- one item of a /batch answer -------------------------------------------------


class ItemFate(enum.Enum):
    """What write-back does with a ``Fault`` inside one ``BatchItemResponse``."""

    RETRY = "retry"
    """May pass by itself (a throttle, a system fault): retried later by the journal."""
    PARK = "park"
    """A person must act (validation, closed period, deleted or missing object): never retried in a loop."""
    STALE = "stale"
    """5010: the SyncToken sent is out of date: re-read the object and send once more."""
    DUPLICATE = "duplicate"
    """600 Duplicate Request ID: already applied under this requestid: look the object up."""


@dataclass(frozen=True)
class ItemVerdict:
    fate: ItemFate
    reason: str
    """What happened, naming QuickBooks' code, message and detail."""


def _item_rule(code: str) -> tuple[ItemFate, str] | None:
    number = _code_number(code)
    if code == THROTTLE_CODE:
        return ItemFate.RETRY, "throttled"
    if code in AUTH_CODES:
        return ItemFate.RETRY, "authentication failed"
    if number is not None and number >= 10000:
        return ItemFate.RETRY, "QuickBooks system fault"
    if code == STALE_OBJECT_CODE:
        return ItemFate.STALE, "stale object"
    if code == DUPLICATE_REQUEST_CODE:
        return ItemFate.DUPLICATE, "duplicate request"
    if code in CLOSED_PERIOD_CODES:
        return ItemFate.PARK, "closed accounting period"
    if code == OBJECT_NOT_FOUND_CODE:
        return ItemFate.PARK, "object not found or deleted"
    if number is not None and 6000 <= number <= 6999:
        return ItemFate.PARK, "business validation error"
    if number is not None and 2000 <= number <= 2999:
        return ItemFate.PARK, "request validation error"
    if number is not None and 4000 <= number <= 4999:
        return ItemFate.PARK, "invalid query"
    return None


def _is_closed_period(error: FaultError) -> bool:
    text = f"{error.message} {error.detail}".lower()
    return error.code in CLOSED_PERIOD_CODES or "account period closed" in text or "account period has closed" in text


def item_verdict(fault: Fault) -> ItemVerdict:
    """The fate of a batch item that carries ``fault``: the first error code with a rule decides.

    Throttles, authentication and system faults (10000 and up) may pass by themselves; 5010 is re-read
    and sent once more; 600 is looked up; everything else (6000-series validation, 6200/6210 closed
    period, 610 not found or deleted, 2000-series request errors, unknown codes) waits for a person.
    """
    summary = fault_summary(fault) or "fault without an error"
    if _is_throttle(fault):
        return ItemVerdict(ItemFate.RETRY, f"throttled: {summary}")
    if any(_is_closed_period(error) for error in fault.errors):
        # By its words too: a closed period has been reported under other codes (5010 in
        # routablehq/python-quickbooks#208), and re-reading the object would not help.
        return ItemVerdict(ItemFate.PARK, f"closed accounting period: {summary}")
    for code in fault.codes:
        rule = _item_rule(code)
        if rule is not None:
            fate, what = rule
            return ItemVerdict(fate, f"{what}: {summary}")
    return ItemVerdict(ItemFate.PARK, f"refused: {summary}")
