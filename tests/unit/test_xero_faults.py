"""The Xero response classification table, row by row.

Headers come from the responses Xero's SDK team recorded
(``refdata/xero/xero-python-cassettes``: ``Xero-Correlation-Id``,
``X-DayLimit-Remaining``, ``X-MinLimit-Remaining``, ``Content-Type``); error
bodies from the spec's 400 examples and, for 401 / 403, the shapes quoted in
``refdata/SOURCES.md`` (the 401 body verified against the live API by
pyxero) and Xero's troubleshooting page. Xero publishes no recorded 429: the
rate-limit rows follow the header set a Xero maintainer describes
(``Retry-After``, ``X-Rate-Limit-Problem``: minute / day / appminute).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from connectors.base import Actor
from connectors.http import Classification, Resolution
from connectors.xero.faults import (
    DAY_LIMIT,
    RateHeaders,
    XeroError,
    XeroFaults,
    is_day_limit,
    make_classifier,
    parse_error,
    rate_problem,
    read_rate_headers,
    validation_messages,
)
from tests.refdata import build_response, require_refdata, response_from_interaction

XERO = require_refdata("xero")
CASSETTES = XERO / "xero-python-cassettes"
SPEC = XERO / "xero_accounting.yaml"
API = "https://api.xero.com/api.xro/2.0/Invoices"

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def clock() -> datetime:
    return NOW


classify = make_classifier(clock)


# --- recordings and the spec -------------------------------------------------------------


def load_cassette(path: Path) -> list[dict[str, Any]]:
    """The interactions of a (Python) vcrpy cassette."""
    with path.open(encoding="utf-8") as handle:
        document = yaml.safe_load(handle)
    interactions = document.get("interactions") if isinstance(document, dict) else None
    if not isinstance(interactions, list):
        raise ValueError(f"{path}: not a vcrpy cassette (no interactions)")
    return interactions


def recorded(name: str, index: int = 0) -> Callable[[], requests.Response]:
    return lambda: response_from_interaction(load_cassette(CASSETTES / name)[index])


@cache
def organisation_headers() -> dict[str, str]:
    """The headers of Xero's recorded ``GET /Organisation`` answer."""
    response = recorded("test_get_organisations.yaml")()
    return {k: v for k, v in response.headers.items() if k not in ("Content-Length", "Date", "Expires")}


def xero_headers(**extra: str) -> dict[str, str]:
    headers = dict(organisation_headers())
    headers.update({k.replace("_", "-"): v for k, v in extra.items()})
    return headers


def synthetic(
    status: int, body: str | bytes = b"", headers: dict[str, str] | None = None
) -> Callable[[], requests.Response]:
    return lambda: build_response(status, body, headers if headers is not None else xero_headers(), url=API)


class _DecimalLoader(yaml.CSafeLoader if hasattr(yaml, "CSafeLoader") else yaml.SafeLoader):  # type: ignore[misc]
    """YAML as JSON would arrive: floats as Decimal, timestamps left as strings."""


_DecimalLoader.add_constructor("tag:yaml.org,2002:float", lambda loader, node: Decimal(loader.construct_scalar(node)))
_DecimalLoader.add_constructor("tag:yaml.org,2002:timestamp", lambda loader, node: loader.construct_scalar(node))


@cache
def spec_examples() -> tuple[tuple[str, int, Any], ...]:
    """``(where, status, body)`` of every ``application/json`` response example of the spec."""
    with SPEC.open(encoding="utf-8") as handle:
        spec = yaml.load(handle, Loader=_DecimalLoader)
    found = []
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if not isinstance(operation, dict):
                continue
            for status, response in (operation.get("responses") or {}).items():
                content = (response.get("content") or {}).get("application/json") or {}
                if "example" in content:
                    body = content["example"]
                    if isinstance(body, str):  # one example is JSON text
                        body = json.loads(body, parse_float=Decimal)
                    found.append((f"{method.upper()} {path} {status}", int(status), body))
    return tuple(found)


def spec_body(where: str) -> Any:
    bodies = [body for w, _, body in spec_examples() if w == where]
    assert len(bodies) == 1, where
    return bodies[0]


def as_json(body: Any) -> str:
    return json.dumps(body, default=str)


def spec_response(where: str, status: int) -> Callable[[], requests.Response]:
    return synthetic(status, as_json(spec_body(where)))


TOKEN_EXPIRED = json.dumps(
    {
        "Type": None,
        "Title": "Unauthorized",
        "Status": 401,
        "Detail": "TokenExpired: token expired at 12/31/2025 23:30:00",
        "Instance": "2f3c568c-8d99-40c3-af5e-ba06f76fb23d",
        "Extensions": {},
    }
)
FORBIDDEN = json.dumps(
    {
        "Type": None,
        "Title": "Forbidden",
        "Status": 403,
        "Detail": "AuthenticationUnsuccessful",
        "Instance": "10fa664c-61e3-453e-b7f4-c087cfc82401",
        "Extensions": {},
    }
)
NOT_FILTERING = (
    "Your request is not filtering payments efficiently, given the extremely high volume for this "
    "organisation. Please check https://developer.xero.com/documentation/api/efficient-data-retrieval "
    "for tips on making Payment retrieval more efficient."
)
JWT = (
    "eyJhbGciOiJSUzI1NiIsImtpZCI6IjFDQUY4RTY2NzcyRDZEQzAyOEQ2NzI2RkQwMjYxNTgxNTcwRUZDMTkifQ"
    ".eyJuYmYiOjE1ODQ1ODU4NTF9.c2lnbmF0dXJl"
)


@dataclass(frozen=True)
class Row:
    make: Callable[[], requests.Response]
    resolution: Resolution
    actor: Actor | None = None
    retry_after: float | None = None
    contains: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()


RL, RETRY, FAIL, OK, REFRESH = (
    Resolution.RATE_LIMITED,
    Resolution.RETRY,
    Resolution.FAIL,
    Resolution.SUCCESS,
    Resolution.REFRESH_TOKEN_THEN_RETRY,
)
CORRELATION = "da2106d9-a432-4230-a7b4-eb15ffe09f8b"  # of the recorded GET /Organisation

TABLE: dict[str, Row] = {
    # --- recorded answers (xero-python cassettes) ---
    "recorded 200 GET /Organisation": Row(recorded("test_get_organisations.yaml"), OK),
    "recorded 200 GET /Connections": Row(recorded("test_get_connections.yaml"), OK),
    "recorded 200 token refresh": Row(recorded("test_token_api_refresh_token.yaml"), OK),
    # --- 2xx ---
    "200 items with ValidationErrors (summarizeErrors=false)": Row(spec_response("PUT /Payments 200", 200), OK),
    "200 invoice with StatusAttributeString ERROR": Row(spec_response("GET /Invoices/{InvoiceID} 200", 200), OK),
    "204 no content (invoice emailed)": Row(synthetic(204, b"", {}), OK),
    "200 pdf": Row(synthetic(200, b"%PDF-1.4 ...", {"Content-Type": "application/pdf"}), OK),
    "200 truncated json": Row(
        synthetic(200, '{"Invoices": [{"InvoiceID": '), FAIL, Actor.SYSTEM, contains=("not JSON",)
    ),
    # --- 401: refresh the token, then retry ---
    "401 TokenExpired body": Row(
        synthetic(401, TOKEN_EXPIRED),
        REFRESH,
        Actor.CONFIG,
        contains=("HTTP 401", "Unauthorized: TokenExpired: token expired at", f"xero_correlation_id={CORRELATION}"),
    ),
    "401 WWW-Authenticate invalid_token, no body": Row(
        synthetic(401, b"", {"WWW-Authenticate": 'Bearer error="invalid_token"'}),
        REFRESH,
        Actor.CONFIG,
        contains=("invalid_token",),
    ),
    "401 AuthenticationUnsuccessful": Row(
        synthetic(401, FORBIDDEN.replace("403", "401").replace("Forbidden", "Unauthorized")),
        REFRESH,
        Actor.CONFIG,
        contains=("AuthenticationUnsuccessful",),
    ),
    "401 quoting a token": Row(
        synthetic(401, json.dumps({"Title": "Unauthorized", "Detail": f"TokenExpired: Bearer {JWT}"})),
        REFRESH,
        contains=("[redacted]",),
        excludes=(JWT[:40], JWT[-20:]),
    ),
    # --- 403: the organisation is not reachable with this connection ---
    "403 AuthenticationUnsuccessful (tenant not connected)": Row(
        synthetic(403, FORBIDDEN),
        FAIL,
        Actor.CONFIG,
        contains=("AuthenticationUnsuccessful", "tenant id", "reconnect", "arsync connect"),
    ),
    # --- 429: which limit, and how long ---
    "429 minute, Retry-After": Row(
        synthetic(429, b"", xero_headers(Retry_After="7", X_Rate_Limit_Problem="minute", X_MinLimit_Remaining="0")),
        RL,
        Actor.TRANSIENT,
        7.0,
        ("minute limit",),
        (DAY_LIMIT,),
    ),
    "429 minute, no Retry-After": Row(
        synthetic(429, b"", xero_headers(X_Rate_Limit_Problem="minute")),
        RL,
        Actor.TRANSIENT,
        60.0,
        excludes=(DAY_LIMIT,),
    ),
    "429 appminute": Row(
        synthetic(429, b"", xero_headers(Retry_After="12", X_Rate_Limit_Problem="appminute")),
        RL,
        Actor.TRANSIENT,
        12.0,
        ("app-wide minute limit",),
        (DAY_LIMIT,),
    ),
    "429 appminute, no Retry-After": Row(
        synthetic(429, b"", xero_headers(X_Rate_Limit_Problem="appminute")), RL, Actor.TRANSIENT, 60.0
    ),
    "429 concurrent": Row(
        synthetic(429, b"", xero_headers(X_Rate_Limit_Problem="concurrent")),
        RL,
        Actor.TRANSIENT,
        60.0,
        ("concurrent",),
        (DAY_LIMIT,),
    ),
    "429 day, Retry-After": Row(
        synthetic(429, b"", xero_headers(Retry_After="3600", X_Rate_Limit_Problem="day", X_DayLimit_Remaining="0")),
        RL,
        Actor.TRANSIENT,
        3600.0,
        (DAY_LIMIT,),
    ),
    "429 day, no Retry-After: until UTC midnight": Row(
        synthetic(429, b"", xero_headers(X_Rate_Limit_Problem="day")), RL, Actor.TRANSIENT, 12 * 3600.0, (DAY_LIMIT,)
    ),
    "429 DayLimit spelling": Row(
        synthetic(429, b"", xero_headers(Retry_After="100", X_Rate_Limit_Problem="DayLimit")),
        RL,
        retry_after=100.0,
        contains=(DAY_LIMIT,),
    ),
    "429 Retry-After http-date": Row(
        synthetic(429, b"", xero_headers(Retry_After="Thu, 01 Jan 2026 12:00:45 GMT", X_Rate_Limit_Problem="minute")),
        RL,
        retry_after=45.0,
    ),
    "429 without X-Rate-Limit-Problem": Row(
        synthetic(429, b"", xero_headers()), RL, Actor.TRANSIENT, 60.0, ("no X-Rate-Limit-Problem",), (DAY_LIMIT,)
    ),
    "503 with X-Rate-Limit-Problem": Row(
        synthetic(503, b"", xero_headers(X_Rate_Limit_Problem="minute", Retry_After="5")), RL, Actor.TRANSIENT, 5.0
    ),
    # --- 5xx: try again ---
    "500": Row(synthetic(500, "An error occurred in Xero.", {"Content-Type": "text/plain"}), RETRY, Actor.TRANSIENT),
    "502 html": Row(synthetic(502, "<html><body>Bad Gateway</body></html>", {"Content-Type": "text/html"}), RETRY),
    "503 Retry-After": Row(synthetic(503, b"", {"Retry-After": "30"}), RETRY, Actor.TRANSIENT, retry_after=30.0),
    "504": Row(synthetic(504, b"", {}), RETRY, Actor.TRANSIENT),
    # --- 400: our request is wrong ---
    "400 ValidationException (spec: PUT /Contacts)": Row(
        spec_response("PUT /Contacts 400", 400),
        FAIL,
        Actor.SYSTEM,
        contains=(
            "validation failed",
            "ValidationException (10)",
            "The contact name Buzz Lightyear is already assigned to another contact.",
        ),
    ),
    "400 ValidationException (spec: PUT /Accounts)": Row(
        spec_response("PUT /Accounts 400", 400), FAIL, Actor.SYSTEM, contains=("Please enter a unique Name.",)
    ),
    "400 not filtering efficiently": Row(
        synthetic(400, NOT_FILTERING, {"Content-Type": "text/plain; charset=utf-8"}),
        FAIL,
        Actor.SYSTEM,
        contains=("not filtering efficiently", "narrow it"),
    ),
    "400 QueryParseException": Row(
        synthetic(
            400, json.dumps({"ErrorNumber": 16, "Type": "QueryParseException", "Message": "Expression expected"})
        ),
        FAIL,
        Actor.SYSTEM,
        contains=("invalid query", "QueryParseException (16): Expression expected"),
    ),
    "400 plain text": Row(
        synthetic(
            400, "Supplied parameter 'Ids' cannot be parsed - must be of type UUID.", {"Content-Type": "text/html"}
        ),
        FAIL,
        Actor.SYSTEM,
        contains=("bad request", "cannot be parsed"),
    ),
    # --- everything else fails ---
    "404": Row(
        synthetic(404, "The resource you're looking for cannot be found", {"Content-Type": "text/plain"}),
        FAIL,
        Actor.SYSTEM,
        contains=("not found",),
    ),
    "413 too large": Row(synthetic(413, b"", {}), FAIL, Actor.SYSTEM),
    "501 not retried": Row(synthetic(501, b"", {}), FAIL, Actor.SYSTEM),
    "302 redirect": Row(synthetic(302, b"", {"Location": "https://login.xero.com/"}), FAIL, Actor.SYSTEM),
}


@pytest.mark.parametrize("name", list(TABLE))
def test_classification_table(name: str) -> None:
    row = TABLE[name]
    verdict = classify(row.make())
    assert verdict.resolution is row.resolution, verdict
    if row.actor is not None:
        assert verdict.actor is row.actor, verdict
    if row.resolution is Resolution.RATE_LIMITED or row.retry_after is not None:
        assert verdict.retry_after == row.retry_after, verdict
    for text in row.contains:
        assert text in verdict.message, verdict.message
    for text in row.excludes:
        assert text not in verdict.message, verdict.message
    if row.resolution is Resolution.SUCCESS:
        assert verdict == Classification(Resolution.SUCCESS, Actor.SYSTEM, "")
    else:
        assert verdict.message.startswith(f"HTTP {row.make().status_code}"), verdict.message
    assert is_day_limit(verdict) is (DAY_LIMIT in row.contains)


def test_every_recorded_response_is_success() -> None:
    cassettes = sorted(CASSETTES.glob("*.yaml"))
    assert len(cassettes) == 3
    for path in cassettes:
        for index, _ in enumerate(load_cassette(path)):
            assert classify(recorded(path.name, index)()) == Classification(Resolution.SUCCESS, Actor.SYSTEM, "")


def spec_rows(status: int) -> list[str]:
    return [where for where, code, body in spec_examples() if code == status and isinstance(body, dict)]


@pytest.mark.parametrize("where", spec_rows(200))
def test_every_spec_200_example_is_success(where: str) -> None:
    assert classify(spec_response(where, 200)()) == Classification(Resolution.SUCCESS, Actor.SYSTEM, "")


@pytest.mark.parametrize("where", spec_rows(400))
def test_every_spec_400_example_fails_with_its_messages(where: str) -> None:
    verdict = classify(spec_response(where, 400)())
    assert (verdict.resolution, verdict.actor) == (Resolution.FAIL, Actor.SYSTEM)
    assert verdict.message.startswith("HTTP 400: validation failed: ValidationException (10)")
    messages = validation_messages(spec_body(where))
    assert messages
    for message in messages:
        assert message in verdict.message


def test_spec_example_counts() -> None:
    assert (len(spec_rows(200)), len(spec_rows(400))) == (171, 11)


# --- the injected clock ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (datetime(2026, 1, 1, 23, 59, 0, tzinfo=UTC), 60.0),
        (datetime(2026, 1, 1, 0, 0, 0, tzinfo=UTC), 86400.0),
        (datetime(2026, 1, 1, 13, 30, 0, tzinfo=UTC), 10.5 * 3600),
    ],
)
def test_day_limit_without_retry_after_waits_until_utc_midnight(now: datetime, expected: float) -> None:
    verdict = XeroFaults(lambda: now)(synthetic(429, b"", xero_headers(X_Rate_Limit_Problem="day"))())
    assert verdict.retry_after == expected
    assert is_day_limit(verdict)


def test_retry_after_date_and_default_use_the_injected_clock() -> None:
    later = datetime(2026, 1, 1, 12, 0, 40, tzinfo=UTC)
    dated = synthetic(
        429, b"", xero_headers(Retry_After="Thu, 01 Jan 2026 12:00:45 GMT", X_Rate_Limit_Problem="minute")
    )
    assert XeroFaults(lambda: later).classify(dated()).retry_after == 5.0
    bare = synthetic(429, b"", xero_headers(X_Rate_Limit_Problem="minute"))
    assert XeroFaults(clock, rate_wait=15.0).classify(bare()).retry_after == 15.0


def test_is_day_limit_needs_a_rate_limit() -> None:
    assert not is_day_limit(Classification(Resolution.FAIL, Actor.SYSTEM, f"HTTP 400: Xero {DAY_LIMIT} reached"))
    assert not is_day_limit(Classification(Resolution.RATE_LIMITED, Actor.TRANSIENT, "HTTP 429: Xero minute limit"))


# --- rate headers ------------------------------------------------------------------------------


def test_rate_headers_of_the_recorded_answer() -> None:
    headers = read_rate_headers(recorded("test_get_organisations.yaml")().headers)
    assert headers == RateHeaders(minute_remaining=58, day_remaining=4983, app_minute_remaining=None, problem=None)


def test_rate_headers_from_a_plain_dict() -> None:
    headers = read_rate_headers(
        {
            "x-minlimit-remaining": "0",
            "X-DAYLIMIT-REMAINING": "12",
            "X-AppMinLimit-Remaining": "9999",
            "X-Rate-Limit-Problem": "Minute limit",
        }
    )
    assert headers == RateHeaders(0, 12, 9999, "minute")
    assert read_rate_headers({"X-MinLimit-Remaining": "lots", "X-DayLimit-Remaining": ""}) == RateHeaders()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("minute", "minute"),
        ("Minute limit", "minute"),
        ("day", "day"),
        ("DayLimit", "day"),
        ("Daily limit", "day"),
        ("appminute", "appminute"),
        ("AppMinuteLimit", "appminute"),
        ("concurrent", "concurrent"),
        ("Something New", "something new"),
        ("", None),
        (None, None),
    ],
)
def test_rate_problem(raw: str | None, expected: str | None) -> None:
    assert rate_problem(raw) == expected


# --- error bodies ------------------------------------------------------------------------------


def test_validation_messages_of_an_element_and_of_a_body() -> None:
    payment = spec_body("PUT /Payments 200")["Payments"][0]
    assert validation_messages(payment) == ["Payment amount exceeds the amount outstanding on this document"]
    assert validation_messages(spec_body("PUT /Payments 200")) == validation_messages(payment)
    assert validation_messages(spec_body("PUT /Contacts 400")) == [
        "The contact name Buzz Lightyear is already assigned to another contact. "
        "The contact name must be unique across all active contacts."
    ]
    # The one example the spec keeps as JSON text reads the same.
    assert validation_messages(spec_body("PUT /Prepayments/{PrepaymentID}/History 400")) == [
        "The document with the supplied id was not found for this endpoint."
    ]


def test_validation_messages_of_children_in_order_once() -> None:
    item = {
        "InvoiceID": "x",
        "LineItems": [{"ValidationErrors": [{"Message": "Account code '999' is not a valid code."}]}],
        "ValidationErrors": [{"Message": "Invoice # must be unique."}, {"Message": "Invoice # must be unique."}],
    }
    assert validation_messages(item) == ["Invoice # must be unique.", "Account code '999' is not a valid code."]
    assert validation_messages({"Invoices": [{"ValidationErrors": []}]}) == []
    assert validation_messages("text") == []


def test_many_validation_messages_are_counted() -> None:
    body = {
        "ErrorNumber": 10,
        "Type": "ValidationException",
        "Message": "A validation exception occurred",
        "Elements": [{"ValidationErrors": [{"Message": f"problem {i}"}]} for i in range(8)],
    }
    verdict = classify(synthetic(400, json.dumps(body))())
    assert "problem 4" in verdict.message and "problem 5" not in verdict.message
    assert "(and 3 more)" in verdict.message


def test_parse_error_shapes() -> None:
    assert parse_error(TOKEN_EXPIRED) == XeroError("Unauthorized", "TokenExpired: token expired at 12/31/2025 23:30:00")
    assert parse_error(spec_body("PUT /Accounts 400")) == XeroError(
        "ValidationException", "A validation exception occurred", 10, ("Please enter a unique Name.",)
    )
    assert parse_error(b'{"title": "Forbidden", "status": 403, "detail": "AuthenticationUnsuccessful"}') == XeroError(
        "Forbidden", "AuthenticationUnsuccessful"
    )
    assert parse_error(as_json(spec_body("GET /Invoices 200"))) is None
    assert parse_error("not json") is None


def test_classifier_forms_agree() -> None:
    response = synthetic(401, TOKEN_EXPIRED)()
    faults = XeroFaults(clock)
    assert faults(response) == faults.classify(response) == classify(response)
