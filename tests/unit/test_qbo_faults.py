"""The QuickBooks response classification table, row by row.

Bodies come from recorded QuickBooks traffic (``qbo_api-vcr`` cassettes and
``quickbooks-ruby-fixtures``) wherever a recording exists; the remaining rows
(gateway errors, Retry-After, odd bodies) are synthetic.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests

from connectors.base import Actor
from connectors.http import Classification, Resolution
from connectors.quickbooks.faults import (
    QuickBooksFaults,
    fault_summary,
    make_classifier,
    parse_fault,
)
from tests.refdata import (
    build_response,
    load_ruby_cassette,
    refdata_dir,
    require_refdata,
    response_from_interaction,
)

QBO = require_refdata("quickbooks")
VCR = QBO / "qbo_api-vcr"
XML = QBO / "quickbooks-ruby-fixtures"

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
XML_TYPE = {"Content-Type": "application/xml"}
JSON_TYPE = {"Content-Type": "application/json;charset=utf-8"}
HTML_TYPE = {"Content-Type": "text/html"}


def clock() -> datetime:
    return NOW


classify = make_classifier(clock)


def recorded(cassette: str, index: int) -> Callable[[], requests.Response]:
    return lambda: response_from_interaction(load_ruby_cassette(VCR / cassette)[index])


def fixture(filename: str, status: int, headers: dict[str, str] | None = None) -> Callable[[], requests.Response]:
    content_type = JSON_TYPE if filename.endswith(".json") else XML_TYPE
    return lambda: build_response(status, (XML / filename).read_bytes(), {**content_type, **(headers or {})})


def synthetic(status: int, body: str | bytes, headers: dict[str, str] | None = None) -> Callable[[], requests.Response]:
    return lambda: build_response(status, body, headers if headers is not None else JSON_TYPE)


def batch_fault(bid: str, status: int = 400) -> Callable[[], requests.Response]:
    """A per-item fault recorded in ``batch/basic.yml``, sent as a whole response."""

    def make() -> requests.Response:
        body = json.loads(load_ruby_cassette(VCR / "batch/basic.yml")[0]["response"]["body"]["string"])
        item = next(i for i in body["BatchItemResponse"] if i["bId"] == bid)
        return build_response(status, json.dumps({"Fault": item["Fault"]}), JSON_TYPE)

    return make


def json_fault(code: str, message: str, detail: str = "", lower: bool = False) -> str:
    if lower:
        error = {"message": message, "detail": detail, "code": code, "element": None}
        return json.dumps({"fault": {"error": [error], "type": "AUTHENTICATION"}})
    error = {"Message": message, "Detail": detail, "code": code, "element": ""}
    return json.dumps({"Fault": {"Error": [error], "type": "ValidationFault"}})


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

TABLE: dict[str, Row] = {
    # --- recorded JSON error cassettes (qbo_api-vcr/error/*.yml) ---
    "vcr 400 unknown entity (4001)": Row(
        recorded("error/400.yml", 1), FAIL, Actor.SYSTEM, contains=("4001", "Custmoer")
    ),
    "vcr 400 first call succeeded": Row(recorded("error/400.yml", 0), OK),
    "vcr 400_json invalid property (2010)": Row(
        recorded("error/400_json.yml", 0), FAIL, Actor.SYSTEM, contains=("code 2010",)
    ),
    "vcr 401 lower-case fault (3200)": Row(
        recorded("error/401.yml", 0),
        REFRESH,
        Actor.CONFIG,
        contains=("3200", "Token expired"),
        excludes=("AB01601390262kxzxOlnHYdhtEVRXISU7piPqQrCmmbDN35Yjd",),
    ),
    "vcr 500.yml unsupported operation (HTTP 400)": Row(
        recorded("error/500.yml", 0), FAIL, Actor.SYSTEM, contains=("code 500",)
    ),
    "vcr 500.yml invalid id 2030 (HTTP 400)": Row(
        recorded("error/500.yml", 1), FAIL, Actor.SYSTEM, contains=("code 2030 Invalid ID (Id)",)
    ),
    "vcr validation 6240": Row(recorded("error/validation.yml", 0), FAIL, Actor.CONFIG, contains=("6240",)),
    # --- recorded XML / JSON fault fixtures ---
    "xml throttle 403": Row(fixture("throttle_exceeded_error.xml", 403), RL, Actor.TRANSIENT, 60.0, ("3001",)),
    "xml throttle 403 Retry-After seconds": Row(
        fixture("throttle_exceeded_error.xml", 403, {"Retry-After": "7"}), RL, retry_after=7.0
    ),
    "xml throttle inside a 200": Row(fixture("throttle_exceeded_error.xml", 200), RL, retry_after=60.0),
    "xml too many requests 429": Row(
        fixture("too_many_requests_error.xml", 429), RL, Actor.TRANSIENT, 60.0, ("ThrottleExceeded",)
    ),
    "xml 429 Retry-After http-date": Row(
        fixture("too_many_requests_error.xml", 429, {"Retry-After": "Thu, 01 Jan 2026 12:00:45 GMT"}),
        RL,
        retry_after=45.0,
    ),
    "xml generic SystemFault 10000 as 500": Row(
        fixture("generic_error.xml", 500), RETRY, Actor.TRANSIENT, contains=("10000",)
    ),
    "xml generic SystemFault 10000 as 200": Row(fixture("generic_error.xml", 200), RETRY, Actor.TRANSIENT),
    "xml generic SystemFault 10000 as 400": Row(fixture("generic_error.xml", 400), RETRY, Actor.TRANSIENT),
    "xml query validation 4001": Row(
        fixture("query_validation_error.xml", 400), FAIL, Actor.SYSTEM, contains=("code 4001",)
    ),
    "xml customer duplicate 6240": Row(
        fixture("customer_duplicate_error.xml", 400), FAIL, Actor.CONFIG, contains=("6240",)
    ),
    "xml customer duplicate 6240 inside a 200": Row(fixture("customer_duplicate_error.xml", 200), FAIL, Actor.CONFIG),
    "json tax service duplicate 6240": Row(
        fixture("json/tax_service_error_dup.json", 400), FAIL, Actor.CONFIG, contains=("6240",)
    ),
    "json tax service duplicate 6240 inside a 200": Row(
        fixture("json/tax_service_error_dup.json", 200), FAIL, Actor.CONFIG
    ),
    "batch item 5010 stale object": Row(
        batch_fault("bid3"), FAIL, Actor.SYSTEM, contains=("5010", "Stale Object Error")
    ),
    "batch item 610 object not found": Row(batch_fault("bid2"), FAIL, Actor.SYSTEM, contains=("610",)),
    "recorded pdf download": Row(recorded("get_pdf/invoice.yml", 0), OK),
    # --- synthetic ---
    "200 json query": Row(synthetic(200, '{"QueryResponse":{},"time":"x"}'), OK),
    "200 intuit xml": Row(
        synthetic(200, '<IntuitResponse xmlns="http://schema.intuit.com/finance/v3"/>', XML_TYPE),
        OK,
    ),
    "200 html": Row(synthetic(200, "<html><body>hi</body></html>", HTML_TYPE), FAIL, Actor.SYSTEM),
    "200 plain text": Row(synthetic(200, "OK", {"Content-Type": "text/plain"}), FAIL, Actor.SYSTEM),
    "200 empty": Row(synthetic(200, b""), FAIL, Actor.SYSTEM),
    "200 truncated json": Row(synthetic(200, '{"QueryResponse":{'), FAIL, Actor.SYSTEM),
    "200 upper-case fault 3200": Row(
        synthetic(200, json_fault("3200", "message=AuthenticationFailed; errorCode=003200")),
        REFRESH,
        Actor.CONFIG,
    ),
    "200 lower-case fault 100": Row(
        synthetic(200, json_fault("100", "General Authentication Error", lower=True)),
        REFRESH,
        Actor.CONFIG,
    ),
    "401 no body": Row(synthetic(401, b"", {}), REFRESH, Actor.CONFIG),
    "403 ApplicationAuthorizationFailed 003100": Row(
        synthetic(403, json_fault("003100", "message=ApplicationAuthorizationFailed")),
        FAIL,
        Actor.CONFIG,
        contains=("code 3100",),
    ),
    "403 permission denied 5020": Row(
        synthetic(403, json_fault("5020", "Permission Denied Error")), FAIL, Actor.CONFIG
    ),
    "403 html": Row(synthetic(403, "<html>Forbidden</html>", HTML_TYPE), FAIL, Actor.CONFIG),
    "429 no body": Row(synthetic(429, b"", {}), RL, Actor.TRANSIENT, 60.0),
    "400 stale object 5010": Row(
        synthetic(400, json_fault("5010", "Stale Object Error")), FAIL, Actor.SYSTEM, contains=("5010",)
    ),
    "400 business validation 6000": Row(
        synthetic(400, json_fault("6000", "A business validation error has occurred")),
        FAIL,
        Actor.CONFIG,
    ),
    "400 unknown fault code": Row(synthetic(400, json_fault("2500", "Invalid Reference Id")), FAIL, Actor.SYSTEM),
    "404 html": Row(synthetic(404, "<html>Not found</html>", HTML_TYPE), FAIL, Actor.SYSTEM),
    "500 html": Row(synthetic(500, "<html>oops</html>", HTML_TYPE), RETRY, Actor.TRANSIENT),
    "502": Row(synthetic(502, "Bad Gateway", {"Content-Type": "text/plain"}), RETRY, Actor.TRANSIENT),
    "503 Retry-After": Row(synthetic(503, b"", {"Retry-After": "30"}), RETRY, Actor.TRANSIENT, retry_after=30.0),
    "504": Row(synthetic(504, b"", {}), RETRY, Actor.TRANSIENT),
    "501 not retried": Row(synthetic(501, b"", {}), FAIL, Actor.SYSTEM),
    "500 with business fault 6240": Row(
        synthetic(500, json_fault("6240", "Duplicate Name Exists Error")), FAIL, Actor.CONFIG
    ),
    "302 redirect": Row(synthetic(302, b"", {"Location": "https://example.invalid/"}), FAIL, Actor.SYSTEM),
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
    if row.resolution is not Resolution.SUCCESS:
        assert verdict.message.startswith("HTTP ") or "HTTP " in verdict.message


def successful_interactions() -> list[tuple[str, int]]:
    found = []
    for path in sorted(VCR.rglob("*.yml")):
        for index, interaction in enumerate(load_ruby_cassette(path)):
            if 200 <= int(interaction["response"]["status"]["code"]) < 300:
                found.append((str(path.relative_to(VCR)), index))
    return found


@pytest.mark.parametrize(("cassette", "index"), successful_interactions())
def test_every_recorded_2xx_is_success(cassette: str, index: int) -> None:
    verdict = classify(recorded(cassette, index)())
    assert verdict == Classification(Resolution.SUCCESS, Actor.SYSTEM, "")


def test_every_recorded_error_is_a_row() -> None:
    rows = {
        (str(path.relative_to(VCR)), index)
        for path in sorted((VCR / "error").glob("*.yml"))
        for index, interaction in enumerate(load_ruby_cassette(path))
        if int(interaction["response"]["status"]["code"]) >= 400
    }
    assert rows == {
        ("error/400.yml", 1),
        ("error/400_json.yml", 0),
        ("error/401.yml", 0),
        ("error/500.yml", 0),
        ("error/500.yml", 1),
        ("error/validation.yml", 0),
    }


def test_retry_after_uses_the_injected_clock() -> None:
    later = datetime(2026, 1, 1, 12, 0, 40, tzinfo=UTC)
    response = fixture("too_many_requests_error.xml", 429, {"Retry-After": "Thu, 01 Jan 2026 12:00:45 GMT"})()
    assert QuickBooksFaults(lambda: later).classify(response).retry_after == 5.0
    assert QuickBooksFaults(lambda: later)(response).retry_after == 5.0
    assert (
        QuickBooksFaults(clock, throttle_wait=15.0).classify(fixture("throttle_exceeded_error.xml", 403)()).retry_after
        == 15.0
    )


def test_intuit_tid_is_quoted_for_support() -> None:
    verdict = classify(recorded("error/validation.yml", 0)())
    assert "intuit_tid=" in verdict.message


# --- fault_summary ------------------------------------------------------------------


def cassette_body(cassette: str, index: int) -> str:
    text = load_ruby_cassette(VCR / cassette)[index]["response"]["body"]["string"]
    assert isinstance(text, str)
    return text


def test_fault_summary_upper_case_json() -> None:
    assert fault_summary(json.loads(cassette_body("error/validation.yml", 0))) == (
        "code 6240 Duplicate Name Exists Error: The name supplied already exists. : null"
    )
    assert fault_summary(cassette_body("error/validation.yml", 0)) == fault_summary(
        json.loads(cassette_body("error/validation.yml", 0))
    )


def test_fault_summary_lower_case_json_redacts_the_token() -> None:
    summary = fault_summary(cassette_body("error/401.yml", 0))
    assert summary == (
        "code 3200 message=AuthenticationFailed; errorCode=003200; statusCode=401: Token expired: [redacted]"
    )


def test_fault_summary_xml() -> None:
    assert fault_summary((XML / "customer_duplicate_error.xml").read_bytes()) == (
        "code 6240 Duplicate Name Exists Error: The name supplied already exists. : "
        "Another $$customer$$ is already using this name. Please use a different name."
    )
    assert fault_summary((XML / "fault.xml").read_text()) == (
        "code 2050 Length exceeds limit (firstname): Length of the field exceeds 21 chars; "
        "code 2080 Illegal number format (postalcode): "
        "ZipCode should be a number with at least 5 digits"
    )
    assert fault_summary((XML / "json/tax_service_error_dup.json").read_text()) == (
        "code 6240 Duplicate Name Exists Error: The name supplied already exists. : "
        "Another tax rate is already using this name. Please use a different name."
    )


def test_fault_summary_without_fault() -> None:
    assert fault_summary('{"QueryResponse": {}}') == ""
    assert fault_summary(b"<html/>") == ""
    assert fault_summary({"Invoice": {"Id": "1"}}) == ""
    assert parse_fault("not json at all") is None


def test_parse_fault_normalizes_codes() -> None:
    fault = parse_fault(cassette_body("error/401.yml", 0))
    assert fault is not None
    assert fault.type == "AUTHENTICATION"
    assert fault.codes == ("3200",)
    xml = parse_fault((XML / "throttle_exceeded_error.xml").read_bytes())
    assert xml is not None and xml.codes == ("3001",) and xml.type == "SERVICE"


def test_refdata_dir_points_beside_the_repository() -> None:
    assert refdata_dir() == (Path(__file__).resolve().parents[2] / ".." / "shared" / "refdata").resolve()
    assert (refdata_dir() / "SOURCES.md").is_file()


def test_missing_refdata_skips_locally_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="reference recordings not found"):
        require_refdata("no-such-vendor")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must have them"):
        require_refdata("no-such-vendor")
