"""The QuickBooks connector replayed against real recorded traffic.

The recordings in the shared reference data are Ruby-VCR cassettes made by
another client, so each test builds a vcrpy cassette in ``tmp_path`` from
them: the recorded *responses* byte for byte, answering the requests our
connector sends (matched on endpoint, entity and start position). The
connector runs unchanged: python-quickbooks over our transport, intuit-oauth
for the token refresh.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import pytest
import vcr
import yaml

from connectors.base import CustomerRecord, Entity, OAuthTokens, ReauthRequiredError, Window
from connectors.quickbooks.client import QuickBooksSettings, QuickBooksSource
from tests.refdata import load_ruby_cassette, require_refdata
from tests.support import FakeClock

QBO = require_refdata("quickbooks")
API = "https://quickbooks.test/v3"
DISCOVERY = "https://oauth.test/.well-known/openid_configuration"
TOKEN_URL = "https://oauth.test/oauth2/v1/tokens/bearer"
REALM = "4620816365037572"


class MemoryTokens:
    """A TokenStore for one process: enough for replaying exchanges."""

    def __init__(self, tokens: OAuthTokens) -> None:
        self.tokens = tokens
        self.reauth: str | None = None

    def load(self) -> OAuthTokens | None:
        return self.tokens

    def save(self, tokens: OAuthTokens) -> None:
        self.tokens = tokens

    def refresh_locked(self, stale: OAuthTokens | None, refresh: Callable[[OAuthTokens], OAuthTokens]) -> OAuthTokens:
        if stale is not None and stale.access_token != self.tokens.access_token:
            return self.tokens
        self.tokens = refresh(self.tokens)
        return self.tokens

    def mark_needs_reauth(self, reason: str) -> None:
        self.reauth = reason


def recorded(path: str, index: int = 0) -> dict[str, Any]:
    response = load_ruby_cassette(QBO / "qbo_api-vcr" / path)[index]["response"]
    return {
        "status": {"code": response["status"]["code"], "message": response["status"]["message"]},
        "headers": {k: v if isinstance(v, list) else [v] for k, v in response["headers"].items()},
        "body": {"string": response["body"]["string"]},
    }


def raw(status: int, body: str, content_type: str) -> dict[str, Any]:
    return {
        "status": {"code": status, "message": "recorded"},
        "headers": {"Content-Type": [content_type]},
        "body": {"string": body},
    }


def request(method: str, uri: str, body: str | None = None) -> dict[str, Any]:
    return {"method": method, "uri": uri, "body": body, "headers": {}}


def query_request(statement: str) -> dict[str, Any]:
    return request("POST", f"{API}/company/{REALM}/query?minorversion=75", statement)


def write_cassette(tmp_path: Path, interactions: list[tuple[dict[str, Any], dict[str, Any]]]) -> Path:
    path = tmp_path / "cassette.yaml"
    document = {"version": 1, "interactions": [{"request": q, "response": r} for q, r in interactions]}
    path.write_text(yaml.safe_dump(document))
    return path


def qbo_call(r: Any) -> tuple[str, str, str | None, str | None]:
    """What identifies a QuickBooks call: method, endpoint, entity and start position of a query."""
    endpoint = urlparse(r.uri).path.rsplit("/", 1)[-1]
    text = r.body.decode() if isinstance(r.body, bytes) else (r.body or "")
    if not text:
        text = unquote(parse_qs(urlparse(r.uri).query).get("query", [""])[0])
    entity = re.search(r"FROM (\w+)", text)
    start = re.search(r"STARTPOSITION (\d+)", text)
    return (r.method, endpoint, entity and entity.group(1), start and start.group(1))


def replay(cassette: Path) -> Any:
    recorder = vcr.VCR(record_mode="none", match_on=["qbo"])
    recorder.register_matcher("qbo", lambda a, b: qbo_call(a) == qbo_call(b))
    return recorder.use_cassette(str(cassette), allow_playback_repeats=False)


def authorizations(qbo: QuickBooksSource) -> list[str]:
    """Records the Authorization header of every API response the connector receives."""
    seen: list[str] = []

    def hook(response: Any, *args: Any, **kwargs: Any) -> None:
        seen.append(response.request.headers.get("Authorization"))

    qbo.transport.hooks["response"].append(hook)
    return seen


def source(clock: FakeClock, tokens: MemoryTokens) -> QuickBooksSource:
    settings = QuickBooksSettings(
        connection="rec",
        client_id="id",
        client_secret="secret",
        redirect_uri="https://example.test/cb",
        api_base=API,
        discovery=DISCOVERY,
        token_url=TOKEN_URL,
        realm_id=REALM,
    )
    return QuickBooksSource(settings, tokens, clock, clock.sleep)


def fresh_tokens(clock: FakeClock) -> MemoryTokens:
    return MemoryTokens(OAuthTokens("access-0", "refresh-0", clock() + timedelta(hours=1), None, REALM))


def discovery() -> dict[str, Any]:
    doc = json.loads((QBO / "intuit-oauth2" / "discovery.json").read_text(encoding="utf-8-sig"))
    doc["token_endpoint"] = TOKEN_URL
    return raw(200, json.dumps(doc), "application/json")


def token_answer() -> dict[str, Any]:
    """Intuit's token response shape; the id_token is left out as it is for the accounting scope."""
    doc = json.loads((QBO / "intuit-oauth2" / "success_token_response.json").read_text(encoding="utf-8-sig"))
    doc.pop("id_token")
    doc["access_token"], doc["refresh_token"] = "access-1", "refresh-1"
    return raw(200, json.dumps(doc), "application/json")


CUSTOMERS_PAGE = "SELECT * FROM Customer WHERE Active IN (true, false) ORDERBY Id STARTPOSITION 1 MAXRESULTS 1000"


def test_a_recorded_customer_page_maps_through_the_sdk(tmp_path: Path, clock: FakeClock) -> None:
    cassette = write_cassette(tmp_path, [(query_request(CUSTOMERS_PAGE), recorded("all/customers.yml", 1))])
    qbo = source(clock, fresh_tokens(clock))
    sent = authorizations(qbo)
    with replay(cassette) as played:
        pages = list(qbo.pull(Entity.CUSTOMER, Window(), None))
    assert played.play_count == 1 and qbo.api_calls() == 1
    records = [r for p in pages for r in p.records]
    assert len(records) == 41 and not pages[0].quarantined
    assert all(isinstance(r, CustomerRecord) for r in records)
    amy = next(r for r in records if isinstance(r, CustomerRecord) and r.name == "Amy's Bird Sanctuary")
    assert amy.external_id == "1" and amy.contacts[0].email == "Birds@Intuit.com"
    assert type(amy.balance) is Decimal and amy.updated_at is not None and amy.updated_at.tzinfo is not None
    assert sent == ["Bearer access-0"]


def test_a_recorded_401_refreshes_the_token_and_retries(tmp_path: Path, clock: FakeClock) -> None:
    cassette = write_cassette(
        tmp_path,
        [
            (query_request(CUSTOMERS_PAGE), recorded("error/401.yml")),
            (request("GET", DISCOVERY), discovery()),
            (request("POST", TOKEN_URL), token_answer()),
            (query_request(CUSTOMERS_PAGE), recorded("all/customers.yml", 1)),
        ],
    )
    tokens = fresh_tokens(clock)
    qbo = source(clock, tokens)
    sent = authorizations(qbo)
    with replay(cassette) as played:
        records = [r for p in qbo.pull(Entity.CUSTOMER, Window(), None) for r in p.records]
    assert played.all_played and len(records) == 41
    assert tokens.tokens.refresh_token == "refresh-1"
    assert tokens.tokens.access_expires_at == clock() + timedelta(seconds=3600)
    assert sent == ["Bearer access-0", "Bearer access-1"]


def test_invalid_grant_on_refresh_needs_reauthorisation(tmp_path: Path, clock: FakeClock) -> None:
    failure = json.loads((QBO / "intuit-oauth2" / "failure_token_response.json").read_text(encoding="utf-8-sig"))
    failure["error"] = "invalid_grant"
    cassette = write_cassette(
        tmp_path,
        [
            (request("GET", DISCOVERY), discovery()),
            (request("POST", TOKEN_URL), raw(400, json.dumps(failure), "application/json")),
        ],
    )
    expired = MemoryTokens(OAuthTokens("access-0", "refresh-0", clock() - timedelta(minutes=1), None, REALM))
    qbo = source(clock, expired)
    with replay(cassette), pytest.raises(ReauthRequiredError, match="arsync connect rec"):
        list(qbo.pull(Entity.CUSTOMER, Window(), None))
    assert expired.reauth is not None and "invalid_grant" in expired.reauth


@pytest.mark.parametrize(
    ("fixture", "status"), [("too_many_requests_error.xml", 429), ("throttle_exceeded_error.xml", 403)]
)
def test_a_recorded_xml_throttle_is_waited_out(tmp_path: Path, clock: FakeClock, fixture: str, status: int) -> None:
    xml = (QBO / "quickbooks-ruby-fixtures" / fixture).read_text()
    cassette = write_cassette(
        tmp_path,
        [
            (query_request(CUSTOMERS_PAGE), raw(status, xml, "application/xml")),
            (query_request(CUSTOMERS_PAGE), recorded("all/customers.yml", 1)),
        ],
    )
    qbo = source(clock, fresh_tokens(clock))
    start = clock()
    with replay(cassette) as played:
        records = [r for p in qbo.pull(Entity.CUSTOMER, Window(), None) for r in p.records]
    assert played.all_played and len(records) == 41
    assert clock() - start >= timedelta(seconds=60)
    assert qbo.transport.stats.throttled == 1


def test_a_recorded_query_fault_fails_with_the_fault(tmp_path: Path, clock: FakeClock) -> None:
    from connectors.base import FatalError

    cassette = write_cassette(tmp_path, [(query_request(CUSTOMERS_PAGE), recorded("error/400.yml", 1))])
    with replay(cassette), pytest.raises(FatalError) as caught:
        list(source(clock, fresh_tokens(clock)).pull(Entity.CUSTOMER, Window(), None))
    assert "400" in str(caught.value) or "4000" in str(caught.value)


def test_dates_in_queries_are_what_quickbooks_expects(clock: FakeClock) -> None:
    qbo = source(clock, fresh_tokens(clock))
    since = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert qbo._where(Entity.INVOICE, Window(since, None)) == (
        " WHERE Metadata.LastUpdatedTime >= '2026-01-02T03:04:05+00:00'"
    )
