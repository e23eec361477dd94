"""The Xero sandbox behaves like a Xero organisation: state, time, limits, tokens and faults.

Every test talks to the started server over real HTTP (``requests``). Time is
a fake clock the tests move; nothing sleeps. Rate limits are off except in the
tests about them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from connectors.xero.sandbox import XeroSandbox, XeroValidationError, dumps, loads, parse_ms_date
from connectors.xero.seed import AGING_BUCKETS, aging_bucket, mutate_some, seed_bulk, seed_organisation
from tests.support import FakeClock

START = datetime(2024, 5, 1, 17, 0, tzinfo=UTC)
TODAY = date(2024, 5, 1)
SECOND_TENANT = ("7d8e6f4a-2b1c-4d3e-9f5a-6b7c8d9e0f12", "Demo Company (UK)")


class Api:
    """A bearer-token session on one tenant."""

    def __init__(self, box: XeroSandbox, tenant: str | None = None, token: str | None = None) -> None:
        self.box = box
        self.session = requests.Session()
        self.session.headers["Accept"] = "application/json"
        self.session.headers["xero-tenant-id"] = tenant or box.tenant_ids[0]
        self.use(token or box.issue_tokens()["access_token"])

    def use(self, token: str) -> None:
        self.session.headers["Authorization"] = f"Bearer {token}"

    def get(self, path: str, headers: dict[str, str] | None = None, **params: Any) -> requests.Response:
        return self.session.get(f"{self.box.api_base}/{path}", params=params or None, headers=headers, timeout=10)

    def put(self, path: str, body: Any, headers: dict[str, str] | None = None, **params: Any) -> requests.Response:
        return self.write("PUT", path, body, headers, **params)

    def write(
        self, method: str, path: str, body: Any, headers: dict[str, str] | None = None, **params: Any
    ) -> requests.Response:
        return self.session.request(
            method,
            f"{self.box.api_base}/{path}",
            data=dumps(body),
            params=params or None,
            headers={"Content-Type": "application/json", **(headers or {})},
            timeout=10,
        )

    def items(self, path: str, **params: Any) -> list[dict[str, Any]]:
        response = self.get(path, **params)
        assert response.status_code == 200, response.text
        collection = path.split("/")[0]
        found: list[dict[str, Any]] = load(response)[collection]
        return found


def load(response: requests.Response) -> Any:
    return loads(response.content)


def day_of(wire: str) -> date:
    ms = parse_ms_date(wire)
    assert ms is not None, wire
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)).date()


def moment_of(wire: str) -> datetime:
    ms = parse_ms_date(wire)
    assert ms is not None, wire
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def box(clock: FakeClock) -> Iterator[XeroSandbox]:
    sandbox = XeroSandbox(
        clock, rate_limits=False, tenants=[("b1f5b5f2-6c3e-4a8e-9b5a-2f0d7c4e8a11", "Demo"), SECOND_TENANT]
    )
    sandbox.start()
    yield sandbox
    sandbox.release_stalls()
    sandbox.stop()
    assert sandbox.server_errors == []


@pytest.fixture
def tenant(box: XeroSandbox) -> str:
    return box.tenant_ids[0]


@pytest.fixture
def api(box: XeroSandbox) -> Api:
    return Api(box)


def contact(box: XeroSandbox, tenant: str, name: str = "Acme Plumbing", **extra: Any) -> str:
    return str(box.put(tenant, "Contacts", {"Name": name, **extra})["ContactID"])


def invoice(box: XeroSandbox, tenant: str, contact_id: str, amount: str = "100.00", **extra: Any) -> dict[str, Any]:
    body = {
        "Type": "ACCREC",
        "Contact": {"ContactID": contact_id},
        "Status": "AUTHORISED",
        "Date": TODAY - timedelta(days=10),
        "DueDate": TODAY + timedelta(days=20),
        "LineItems": [{"Description": "Work", "Quantity": 1, "UnitAmount": Decimal(amount), "AccountCode": "200"}],
        **extra,
    }
    return box.put(tenant, "Invoices", body)


def row(box: XeroSandbox, tenant: str, collection: str, ident: str) -> dict[str, Any]:
    found = box.get(tenant, collection, ident)
    assert found is not None, f"no {collection} {ident}"
    return found


def payment(invoice_id: str, amount: str, code: str = "090", **extra: Any) -> dict[str, Any]:
    return {"Invoice": {"InvoiceID": invoice_id}, "Account": {"Code": code}, "Amount": Decimal(amount), **extra}


# --- paging ------------------------------------------------------------------------------------------


def test_pages_cover_every_invoice_once_with_xero_pagination(box: XeroSandbox, tenant: str, api: Api) -> None:
    cust = contact(box, tenant)
    ids = {invoice(box, tenant, cust)["InvoiceID"] for _ in range(250)}
    seen: list[str] = []
    for page in (1, 2, 3):
        body = load(api.get("Invoices", page=page))
        assert body["pagination"] == {"page": page, "pageSize": 100, "pageCount": 3, "itemCount": 250}
        seen += [i["InvoiceID"] for i in body["Invoices"]]
        assert all(i["LineItems"] for i in body["Invoices"]), "paged invoices carry their lines"
    assert len(seen) == len(set(seen)) == 250 and set(seen) == ids
    beyond = load(api.get("Invoices", page=4))
    assert beyond["Invoices"] == [] and beyond["pagination"]["itemCount"] == 250
    assert load(api.get("Invoices", page=1, pageSize=5000))["pagination"]["pageSize"] == 1000
    assert [i["InvoiceID"] for i in load(api.get("Invoices", page=2, pageSize=40))["Invoices"]] == seen[40:80]


def test_unpaged_lists_return_everything_without_invoice_lines(box: XeroSandbox, tenant: str, api: Api) -> None:
    cust = contact(box, tenant)
    for _ in range(130):
        invoice(box, tenant, cust)
    body = load(api.get("Invoices"))
    assert "pagination" not in body
    assert len(body["Invoices"]) == 130, "without page, Xero does not cut the list at 100"
    assert all(i["LineItems"] == [] for i in body["Invoices"])
    single = load(api.get(f"Invoices/{body['Invoices'][0]['InvoiceID']}"))["Invoices"]
    assert len(single) == 1 and single[0]["LineItems"][0]["Description"] == "Work"
    by_number = load(api.get(f"Invoices/{single[0]['InvoiceNumber']}"))["Invoices"]
    assert by_number[0]["InvoiceID"] == single[0]["InvoiceID"]


def test_a_large_organisation_refuses_an_unfiltered_unpaged_invoice_list(clock: FakeClock) -> None:
    with XeroSandbox(clock, rate_limits=False, large_org_invoices=50) as box:
        tenant = box.tenant_ids[0]
        cust = contact(box, tenant)
        for _ in range(51):
            invoice(box, tenant, cust)
        api = Api(box)
        refused = api.get("Invoices")
        assert refused.status_code == 400
        body = load(refused)
        assert body["Type"] == "ValidationException"
        assert "not filtering Invoices efficiently" in body["Message"]
        assert api.get("Invoices", page=1).status_code == 200
        assert api.get("Invoices", where='Status=="AUTHORISED"').status_code == 200
        assert api.get("Invoices", Statuses="AUTHORISED").status_code == 200
        assert api.get("Invoices", headers={"If-Modified-Since": "2024-01-01T00:00:00Z"}).status_code == 200
        assert api.get("Contacts").status_code == 200


# --- If-Modified-Since ----------------------------------------------------------------------------------


def test_if_modified_since_returns_rows_updated_strictly_after(
    box: XeroSandbox, tenant: str, api: Api, clock: FakeClock
) -> None:
    cust = contact(box, tenant)
    first = invoice(box, tenant, cust)
    mark = clock()
    clock.advance(0.5)
    second = invoice(box, tenant, cust)
    clock.advance(60)
    third = invoice(box, tenant, cust)

    def since(value: str) -> list[str]:
        return [i["InvoiceID"] for i in api.items("Invoices", headers={"If-Modified-Since": value}, page=1)]

    assert since(mark.isoformat()) == [second["InvoiceID"], third["InvoiceID"]]
    assert since(mark.strftime("%Y-%m-%dT%H:%M:%S")) == [second["InvoiceID"], third["InvoiceID"]], "naive is UTC"
    assert since(format_datetime(mark + timedelta(seconds=1), usegmt=True)) == [third["InvoiceID"]]
    assert since((clock() + timedelta(seconds=1)).isoformat()) == []
    clock.advance(60)
    api.put("Payments", {"Payments": [payment(first["InvoiceID"], "10.00")]})
    changed = since((clock() - timedelta(seconds=1)).isoformat())
    assert changed == [first["InvoiceID"]], "a payment moves its invoice's UpdatedDateUTC"
    assert moment_of(row(box, tenant, "Invoices", first["InvoiceID"])["UpdatedDateUTC"]) == clock()
    bad = api.get("Invoices", headers={"If-Modified-Since": "yesterday"}, page=1)
    assert bad.status_code == 400


# --- where / Statuses / order ------------------------------------------------------------------------------


def test_where_statuses_and_order(box: XeroSandbox, tenant: str, api: Api, clock: FakeClock) -> None:
    alice = contact(box, tenant, "Alice Ltd")
    bob = contact(box, tenant, "Bob Ltd")
    clock.advance(-86_400 * 200)
    old = invoice(box, tenant, alice, "10.00")
    clock.advance(86_400 * 200)
    open_a = invoice(box, tenant, alice, "20.00")
    open_b = invoice(box, tenant, bob, "30.00")
    draft = invoice(box, tenant, bob, "40.00", Status="DRAFT")
    bill = invoice(box, tenant, bob, "50.00", Type="ACCPAY", InvoiceNumber="SUP-1")
    api.put("Payments", {"Payments": [payment(open_b["InvoiceID"], "30.00")]})

    def ids(**params: Any) -> set[str]:
        return {i["InvoiceID"] for i in api.items("Invoices", page=1, **params)}

    accrec = {old["InvoiceID"], open_a["InvoiceID"], open_b["InvoiceID"], draft["InvoiceID"]}
    assert ids(where='Type=="ACCREC"') == accrec
    assert bill["InvoiceID"] not in ids(where='Type=="ACCREC"')
    assert ids(where='Type=="ACCREC" && Status=="AUTHORISED"') == {old["InvoiceID"], open_a["InvoiceID"]}
    assert ids(where='Type=="ACCREC" AND Status=="AUTHORISED" AND AmountDue>15') == {open_a["InvoiceID"]}
    assert ids(where='Status=="DRAFT" OR Status=="PAID"') == {draft["InvoiceID"], open_b["InvoiceID"]}
    assert ids(where=f'Contact.ContactID==Guid("{alice.upper()}")') == {old["InvoiceID"], open_a["InvoiceID"]}
    since = START - timedelta(days=1)
    assert old["InvoiceID"] not in ids(where=f"UpdatedDateUTC>=DateTime({since:%Y,%m,%d})")
    assert ids(where=f"UpdatedDateUTC<DateTime({since:%Y,%m,%d,%H,%M,%S})") == {old["InvoiceID"]}
    assert ids(where='Contact.Name.Contains("bob")', Statuses="DRAFT") == {draft["InvoiceID"]}
    assert ids(Statuses="PAID,DRAFT") == {open_b["InvoiceID"], draft["InvoiceID"]}
    dashless = ",".join(i.replace("-", "") for i in (old["InvoiceID"], bill["InvoiceID"]))
    assert ids(IDs=dashless) == {old["InvoiceID"], bill["InvoiceID"]}, "pyxero sends IDs as 32 hex digits"
    assert ids(ContactIDs=alice) == {old["InvoiceID"], open_a["InvoiceID"]}
    ordered = api.items("Invoices", page=1, where='Type=="ACCREC"', order="Total DESC")
    assert [i["Total"] for i in ordered] == [Decimal("40.00"), Decimal("30.00"), Decimal("20.00"), Decimal("10.00")]
    by_update = api.items("Invoices", page=1, order="UpdatedDateUTC ASC")
    stamps = [moment_of(i["UpdatedDateUTC"]) for i in by_update]
    assert stamps == sorted(stamps) and by_update[0]["InvoiceID"] == old["InvoiceID"]
    customers = {c["ContactID"] for c in api.items("Contacts", page=1, where="IsCustomer==true")}
    assert customers == {alice, bob}
    assert {c["ContactID"] for c in api.items("Contacts", page=1, where="IsSupplier==true")} == {bob}


def test_where_errors_are_query_parse_exceptions(api: Api) -> None:
    for where, message in (
        ('Colour=="red"', "No property or field 'Colour' exists in type 'Invoice'"),
        ('Status=="PAID" AND', "Expression expected"),
        ("Status==", "Expression expected"),
        ('(Status=="PAID"', "')' expected"),
    ):
        response = api.get("Invoices", page=1, where=where)
        assert response.status_code == 400, where
        assert load(response) == {"ErrorNumber": 16, "Type": "QueryParseException", "Message": message}
    assert api.get("Invoices", page=1, order="Colour").status_code == 400


def test_archived_contacts_only_with_include_archived(box: XeroSandbox, tenant: str, api: Api) -> None:
    active = contact(box, tenant, "Active Co")
    archived = contact(box, tenant, "Gone Co", ContactStatus="ARCHIVED")
    assert {c["ContactID"] for c in api.items("Contacts", page=1)} == {active}
    assert {c["ContactID"] for c in api.items("Contacts", page=1, includeArchived="true")} == {active, archived}


# --- rate limits ---------------------------------------------------------------------------------------


def limited_box(clock: FakeClock, **limits: Any) -> XeroSandbox:
    box = XeroSandbox(clock, tenants=[("b1f5b5f2-6c3e-4a8e-9b5a-2f0d7c4e8a11", "Demo"), SECOND_TENANT], **limits)
    box.start()
    return box


def test_minute_limit_answers_429_with_retry_after_until_the_window_frees(clock: FakeClock) -> None:
    box = limited_box(clock, per_minute=5)
    try:
        api = Api(box)
        remaining = []
        for _ in range(5):
            response = api.get("Accounts")
            assert response.status_code == 200
            remaining.append(int(response.headers["X-MinLimit-Remaining"]))
            clock.advance(10)
        assert remaining == [4, 3, 2, 1, 0]
        limited = api.get("Accounts")
        assert limited.status_code == 429
        assert limited.headers["X-Rate-Limit-Problem"] == "minute"
        assert limited.headers["Retry-After"] == "10", "the first call of the window leaves it 10 s from now"
        assert limited.headers["X-MinLimit-Remaining"] == "0"
        assert int(limited.headers["X-DayLimit-Remaining"]) == 4995, "a refused call is not counted"
        clock.advance(9)
        assert api.get("Accounts").status_code == 429
        clock.advance(1)
        assert api.get("Accounts").status_code == 200
        assert Api(box, SECOND_TENANT[0]).get("Accounts").status_code == 200, "limits are per tenant"
    finally:
        box.stop()


def test_day_limit_resets_at_utc_midnight(clock: FakeClock) -> None:
    box = limited_box(clock, per_day=3, access_token_ttl=86_400)
    try:
        api = Api(box)
        assert [api.get("Accounts").headers["X-DayLimit-Remaining"] for _ in range(3)] == ["2", "1", "0"]
        limited = api.get("Accounts")
        assert limited.status_code == 429 and limited.headers["X-Rate-Limit-Problem"] == "day"
        midnight = datetime(2024, 5, 2, tzinfo=UTC)
        assert int(limited.headers["Retry-After"]) == int((midnight - clock()).total_seconds()) == 7 * 3600
        clock.advance(7 * 3600 - 1)
        assert api.get("Accounts").status_code == 429
        clock.advance(1)
        response = api.get("Accounts")
        assert response.status_code == 200 and response.headers["X-DayLimit-Remaining"] == "2"
    finally:
        box.stop()


def test_app_minute_limit_spans_tenants(clock: FakeClock) -> None:
    box = limited_box(clock, app_per_minute=4)
    try:
        first, second = Api(box), Api(box, SECOND_TENANT[0])
        answers = [(first if n % 2 else second).get("Accounts") for n in range(4)]
        assert [a.headers["X-AppMinLimit-Remaining"] for a in answers] == ["3", "2", "1", "0"]
        limited = first.get("Accounts")
        assert limited.status_code == 429
        assert limited.headers["X-Rate-Limit-Problem"] == "appminute"
        assert limited.headers["Retry-After"] == "60"
        assert int(limited.headers["X-MinLimit-Remaining"]) > 0, "the tenant's own minute is not the problem"
    finally:
        box.stop()


def test_concurrency_limit_counts_calls_in_flight(clock: FakeClock) -> None:
    box = limited_box(clock, concurrent=2)
    try:
        token = box.issue_tokens()["access_token"]
        api = Api(box, token=token)
        box.inject("stall:30", times=2)
        results: list[int] = []

        def call() -> None:
            results.append(Api(box, token=token).get("Accounts").status_code)

        threads = [threading.Thread(target=call) for _ in range(2)]
        for thread in threads:
            thread.start()
        assert box.wait_for_in_flight(2)
        limited = api.get("Accounts")
        assert limited.status_code == 429
        assert limited.headers["X-Rate-Limit-Problem"] == "concurrent"
        assert limited.headers["Retry-After"] == "1"
        box.release_stalls()
        for thread in threads:
            thread.join(timeout=5)
        assert results == [200, 200]
        assert box.in_flight() == 0
        assert api.get("Accounts").status_code == 200
    finally:
        box.stop()


def test_json_must_be_asked_for(box: XeroSandbox, api: Api) -> None:
    no_accept = api.session.get(f"{box.api_base}/Accounts", headers={"Accept": "*/*"}, timeout=10)
    assert no_accept.status_code == 406, "Xero would answer XML"
    assert api.get("Accounts").status_code == 200


def test_every_api_response_carries_the_rate_headers(box: XeroSandbox, api: Api) -> None:
    for response in (
        api.get("Accounts"),
        api.get("Invoices", page=1),
        api.get("Invoices/" + "0" * 8 + "-0000-0000-0000-000000000000"),
    ):
        assert {"X-MinLimit-Remaining", "X-DayLimit-Remaining", "X-AppMinLimit-Remaining"} <= set(response.headers)
        assert response.headers["Xero-Correlation-Id"]


# --- tokens ------------------------------------------------------------------------------------------


def test_access_tokens_expire_after_30_minutes_with_xeros_401(box: XeroSandbox, api: Api, clock: FakeClock) -> None:
    tokens = box.issue_tokens()
    api.use(tokens["access_token"])
    assert tokens["expires_in"] == 1800
    clock.advance(1799)
    assert api.get("Accounts").status_code == 200
    clock.advance(1)
    expired = api.get("Accounts")
    assert expired.status_code == 401
    body = expired.json()
    assert body["Type"] is None and body["Title"] == "Unauthorized" and body["Status"] == 401
    assert body["Detail"] == "TokenExpired: token expired at 05/01/2024 17:30:00"
    assert set(body) == {"Type", "Title", "Status", "Detail", "Instance", "Extensions"}
    assert body["Extensions"] == {}
    assert expired.headers["WWW-Authenticate"].startswith("Bearer")
    assert "X-MinLimit-Remaining" not in expired.headers, "refused before the tenant's limits"
    garbage = Api(box, token="not-a-token").get("Accounts")
    assert garbage.status_code == 401 and garbage.json()["Detail"] == "AuthenticationUnsuccessful"


def refresh(box: XeroSandbox, token: str) -> requests.Response:
    return requests.post(
        box.token_url,
        data={"grant_type": "refresh_token", "refresh_token": token},
        auth=(box.client_id, box.client_secret),
        timeout=10,
    )


def test_refresh_tokens_are_single_use_with_a_30_minute_grace(box: XeroSandbox, clock: FakeClock) -> None:
    original = box.issue_tokens()
    first = refresh(box, original["refresh_token"])
    assert first.status_code == 200
    pair = first.json()
    assert pair["refresh_token"] != original["refresh_token"]
    clock.advance(1799)
    again = refresh(box, original["refresh_token"])
    assert again.status_code == 200
    assert again.json() == pair, "within the grace a spent token returns the same new pair"
    assert (box.refresh_count, box.refresh_replay_count) == (1, 1)
    clock.advance(2)
    late = refresh(box, original["refresh_token"])
    assert late.status_code == 400 and late.json() == {"error": "invalid_grant"}
    assert Api(box, token=pair["access_token"]).get("Accounts").status_code == 401, "the pair is 1801 s old"
    rotated = refresh(box, pair["refresh_token"])
    assert rotated.status_code == 200 and box.refresh_count == 2
    assert Api(box, token=rotated.json()["access_token"]).get("Accounts").status_code == 200
    assert refresh(box, "unknown").json() == {"error": "invalid_grant"}
    wrong_client = requests.post(
        box.token_url,
        data={"grant_type": "refresh_token", "refresh_token": rotated.json()["refresh_token"]},
        auth=(box.client_id, "wrong"),
        timeout=10,
    )
    assert wrong_client.status_code == 400 and wrong_client.json() == {"error": "invalid_client"}
    assert refresh(box, rotated.json()["refresh_token"]).status_code == 200, "a refused call did not spend it"


def test_refresh_tokens_expire_after_60_days_unused(box: XeroSandbox, clock: FakeClock) -> None:
    tokens = box.issue_tokens()
    clock.advance(86_400 * 60 + 1)
    assert refresh(box, tokens["refresh_token"]).json() == {"error": "invalid_grant"}


def test_authorization_code_flow_and_connections(box: XeroSandbox) -> None:
    redirect = "http://localhost:8080/callback"
    answer = requests.get(
        box.authorize_url,
        params={
            "response_type": "code",
            "client_id": box.client_id,
            "redirect_uri": redirect,
            "scope": "offline_access accounting.transactions accounting.contacts accounting.settings",
            "state": "xyz",
        },
        allow_redirects=False,
        timeout=10,
    )
    assert answer.status_code == 302
    location = urlsplit(answer.headers["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == redirect
    query = {k: v[0] for k, v in parse_qs(location.query).items()}
    assert query["state"] == "xyz"
    form = {"grant_type": "authorization_code", "code": query["code"], "redirect_uri": redirect}
    tokens = requests.post(box.token_url, data=form, auth=(box.client_id, box.client_secret), timeout=10)
    assert tokens.status_code == 200
    body = tokens.json()
    assert "id_token" not in body, "no openid scope, no id_token"
    assert list(body) == ["access_token", "expires_in", "token_type", "refresh_token", "scope"]
    reused = requests.post(box.token_url, data=form, auth=(box.client_id, box.client_secret), timeout=10)
    assert reused.json() == {"error": "invalid_grant"}
    connections = requests.get(
        f"{box.identity_base}/connections", headers={"Authorization": f"Bearer {body['access_token']}"}, timeout=10
    ).json()
    assert [c["tenantId"] for c in connections] == box.tenant_ids
    assert {c["tenantName"] for c in connections} == {"Demo", SECOND_TENANT[1]}
    assert len({c["authEventId"] for c in connections}) == 1
    box.disconnect(SECOND_TENANT[0])
    assert Api(box, SECOND_TENANT[0], body["access_token"]).get("Accounts").status_code == 403
    after = requests.get(
        f"{box.identity_base}/connections", headers={"Authorization": f"Bearer {body['access_token']}"}, timeout=10
    ).json()
    assert [c["tenantId"] for c in after] == [box.tenant_ids[0]]


def test_unknown_tenant_is_403_and_missing_scope_is_401(box: XeroSandbox) -> None:
    forbidden = Api(box, "00000000-0000-0000-0000-000000000000").get("Accounts")
    assert forbidden.status_code == 403
    assert forbidden.json()["Title"] == "Forbidden" and forbidden.json()["Status"] == 403
    narrow = box.issue_tokens(scope="offline_access accounting.transactions.read")
    api = Api(box, token=narrow["access_token"])
    assert api.get("Invoices", page=1).status_code == 200
    assert api.get("Contacts", page=1).status_code == 401
    assert api.put("Payments", {"Payments": []}).status_code == 401, "read scope cannot write"


# --- writes: idempotency, partial success, payments ------------------------------------------------------


def test_idempotency_key_replays_the_first_answer_without_applying_again(
    box: XeroSandbox, tenant: str, api: Api
) -> None:
    inv = invoice(box, tenant, contact(box, tenant))
    body = {"Payments": [payment(inv["InvoiceID"], "25.00")]}
    first = api.put("Payments", body, {"Idempotency-Key": "pay:inv-1:1"})
    second = api.put("Payments", body, {"Idempotency-Key": "pay:inv-1:1"})
    assert first.status_code == second.status_code == 200
    assert load(first) == load(second)
    assert box.count(tenant, "Payments") == 1
    assert row(box, tenant, "Invoices", inv["InvoiceID"])["AmountDue"] == Decimal("75.00")
    third = api.put("Payments", body, {"Idempotency-Key": "pay:inv-1:2"})
    assert load(third)["Payments"][0]["PaymentID"] != load(first)["Payments"][0]["PaymentID"]
    assert row(box, tenant, "Invoices", inv["InvoiceID"])["AmountDue"] == Decimal("50.00")
    keys_are_per_tenant = Api(box, SECOND_TENANT[0]).put("Payments", body, {"Idempotency-Key": "pay:inv-1:1"})
    assert keys_are_per_tenant.status_code == 400, "the invoice is not in the other tenant"
    too_long = api.put("Payments", body, {"Idempotency-Key": "k" * 129})
    assert too_long.status_code == 400 and box.count(tenant, "Payments") == 2


def test_summarize_errors_false_applies_the_good_items(box: XeroSandbox, tenant: str, api: Api) -> None:
    cust = contact(box, tenant)
    a, b, c = (invoice(box, tenant, cust, "100.00") for _ in range(3))
    items = [payment(a["InvoiceID"], "40.00"), payment(b["InvoiceID"], "100.01"), payment(c["InvoiceID"], "100.00")]
    response = api.put("Payments", {"Payments": items}, summarizeErrors="false")
    assert response.status_code == 200
    echoed = load(response)["Payments"]
    assert [e["HasValidationErrors"] for e in echoed] == [False, True, False]
    assert echoed[1]["ValidationErrors"] == [
        {"Message": "Payment amount exceeds the amount outstanding on this document"}
    ]
    assert echoed[1]["Amount"] == Decimal("100.01"), "a failed item is echoed as sent"
    assert row(box, tenant, "Invoices", a["InvoiceID"])["AmountDue"] == Decimal("60.00")
    assert row(box, tenant, "Invoices", b["InvoiceID"])["AmountDue"] == Decimal("100.00")
    assert row(box, tenant, "Invoices", c["InvoiceID"])["Status"] == "PAID"


def test_summarize_errors_true_refuses_the_whole_batch(box: XeroSandbox, tenant: str, api: Api) -> None:
    cust = contact(box, tenant)
    a, b = invoice(box, tenant, cust, "100.00"), invoice(box, tenant, cust, "100.00")
    before = box.all(tenant, "Invoices")
    items = [payment(a["InvoiceID"], "100.00"), payment(b["InvoiceID"], "5.00", code="404")]
    response = api.put("Payments", {"Payments": items})
    assert response.status_code == 400
    body = load(response)
    assert (body["ErrorNumber"], body["Type"]) == (10, "ValidationException")
    assert body["Elements"][0]["ValidationErrors"] == []
    assert "bank accounts" in body["Elements"][1]["ValidationErrors"][0]["Message"]
    assert box.all(tenant, "Invoices") == before, "nothing of a refused batch is kept"
    assert box.count(tenant, "Payments") == 0


def test_items_of_one_batch_see_each_other(box: XeroSandbox, tenant: str, api: Api) -> None:
    inv = invoice(box, tenant, contact(box, tenant), "50.00")
    items = [payment(inv["InvoiceID"], "30.00"), payment(inv["InvoiceID"], "30.00")]
    echoed = load(api.put("Payments", {"Payments": items}, summarizeErrors="false"))["Payments"]
    assert [e["HasValidationErrors"] for e in echoed] == [False, True]


def test_a_payment_reduces_amount_due_and_the_last_one_marks_paid(
    box: XeroSandbox, tenant: str, api: Api, clock: FakeClock
) -> None:
    inv = invoice(box, tenant, contact(box, tenant), "100.00")
    first = api.put(
        "Payments", {"Payments": [payment(inv["InvoiceID"], "30.00", Date="2024-04-28", Reference="chq 1")]}
    )
    paid = load(first)["Payments"][0]
    assert (paid["Amount"], paid["PaymentType"], paid["Status"]) == (Decimal("30.00"), "ACCRECPAYMENT", "AUTHORISED")
    assert paid["Account"]["Code"] == "090" and paid["Invoice"]["InvoiceID"] == inv["InvoiceID"]
    after = row(box, tenant, "Invoices", inv["InvoiceID"])
    assert (after["AmountPaid"], after["AmountDue"], after["Status"]) == (
        Decimal("30.00"),
        Decimal("70.00"),
        "AUTHORISED",
    )
    assert [p["PaymentID"] for p in after["Payments"]] == [paid["PaymentID"]]
    assert day_of(after["Payments"][0]["Date"]) == date(2024, 4, 28)
    clock.advance(600)
    api.put("Payments", {"Payments": [payment(inv["InvoiceID"], "70.00", Date="2024-05-01")]})
    done = row(box, tenant, "Invoices", inv["InvoiceID"])
    assert (done["AmountDue"], done["Status"]) == (Decimal("0.00"), "PAID")
    assert day_of(done["FullyPaidOnDate"]) == date(2024, 5, 1)
    again = load(api.put("Payments", {"Payments": [payment(inv["InvoiceID"], "1.00")]}, summarizeErrors="false"))
    assert again["Payments"][0]["ValidationErrors"][0]["Message"] == (
        "Payment amount exceeds the amount outstanding on this document"
    )
    deleted = api.write("POST", f"Payments/{paid['PaymentID']}", {"Status": "DELETED"})
    assert deleted.status_code == 200 and load(deleted)["Payments"][0]["Status"] == "DELETED"
    reopened = row(box, tenant, "Invoices", inv["InvoiceID"])
    assert (reopened["AmountDue"], reopened["Status"]) == (Decimal("30.00"), "AUTHORISED")
    assert "FullyPaidOnDate" not in reopened


@pytest.mark.parametrize(
    ("status", "message"),
    [
        ("VOIDED", "Payments can only be made against Authorised documents"),
        ("DELETED", "Payments can only be made against Authorised documents"),
        ("DRAFT", "Payments can only be made against Authorised documents"),
    ],
)
def test_payments_on_documents_that_are_not_authorised_fail(
    box: XeroSandbox, tenant: str, api: Api, status: str, message: str
) -> None:
    inv = invoice(box, tenant, contact(box, tenant), Status="DRAFT")
    if status != "DRAFT":
        box.update(tenant, "Invoices", inv["InvoiceID"], {"Status": status})
    echoed = load(api.put("Payments", {"Payments": [payment(inv["InvoiceID"], "1.00")]}, summarizeErrors="false"))
    assert echoed["Payments"][0]["ValidationErrors"] == [{"Message": message}]


def test_payment_validation_messages(box: XeroSandbox, tenant: str, api: Api) -> None:
    inv = invoice(box, tenant, contact(box, tenant))
    cases = [
        (payment(inv["InvoiceID"], "1.00", code="999"), "Account could not be found"),
        (payment(inv["InvoiceID"], "1.00", code="404"), "bank accounts"),
        (payment(inv["InvoiceID"], "1.001"), "at most 2 decimal places"),
        (payment(inv["InvoiceID"], "0.00"), "greater than zero"),
        (payment("00000000-0000-0000-0000-000000000000", "1.00"), "Invoice could not be found"),
        ({"Account": {"Code": "090"}, "Amount": 1}, "An Invoice or CreditNote must be specified"),
    ]
    echoed = load(api.put("Payments", {"Payments": [c[0] for c in cases]}, summarizeErrors="false"))["Payments"]
    for (_, message), item in zip(cases, echoed, strict=True):
        assert any(message in m["Message"] for m in item["ValidationErrors"]), (message, item["ValidationErrors"])
    assert row(box, tenant, "Invoices", inv["InvoiceID"])["AmountDue"] == Decimal("100.00")


def test_a_foreign_currency_payment_records_its_bank_amount(box: XeroSandbox, tenant: str, api: Api) -> None:
    cust = contact(box, tenant, "Euro GmbH", DefaultCurrency="EUR")
    inv = invoice(box, tenant, cust, "92.00")
    assert (inv["CurrencyCode"], inv["CurrencyRate"]) == ("EUR", Decimal("0.920000"))
    paid = load(api.put("Payments", {"Payments": [payment(inv["InvoiceID"], "92.00")]}))["Payments"][0]
    assert (paid["Amount"], paid["BankAmount"], paid["CurrencyRate"]) == (
        Decimal("92.00"),
        Decimal("100.00"),
        Decimal("0.920000"),
    )


def test_spend_money_and_bank_transfers_are_stored_and_listed(box: XeroSandbox, tenant: str, api: Api) -> None:
    stripe = contact(box, tenant, "Stripe")
    spend = {
        "Type": "SPEND",
        "Contact": {"ContactID": stripe},
        "BankAccount": {"Code": "091"},
        "Date": "2024-05-01",
        "Reference": "fees po_123",
        "LineAmountTypes": "NoTax",
        "LineItems": [{"Description": "Card fees", "Quantity": 1, "UnitAmount": Decimal("3.20"), "AccountCode": "404"}],
    }
    no_contact = {k: v for k, v in spend.items() if k != "Contact"}
    echoed = load(api.put("BankTransactions", {"BankTransactions": [spend, no_contact]}, summarizeErrors="false"))
    created, refused = echoed["BankTransactions"]
    assert (created["Total"], created["Type"], created["BankAccount"]["Name"]) == (Decimal("3.20"), "SPEND", "Clearing")
    assert refused["ValidationErrors"][0]["Message"] == "A Contact must be specified for this type of transaction"
    listed = api.items("BankTransactions", page=1, where='Type=="SPEND"')
    assert [t["BankTransactionID"] for t in listed] == [created["BankTransactionID"]]

    transfer = {
        "FromBankAccount": {"Code": "091"},
        "ToBankAccount": {"Code": "090"},
        "Amount": Decimal("96.80"),
        "Reference": "po_123",
    }
    made = load(api.put("BankTransfers", {"BankTransfers": [transfer]}))["BankTransfers"][0]
    assert (made["Amount"], made["FromBankAccount"]["Name"], made["ToBankAccount"]["Name"]) == (
        Decimal("96.80"),
        "Clearing",
        "Checking",
    )
    legs = {t["BankTransactionID"]: t["Type"] for t in api.items("BankTransactions", page=1)}
    assert legs[made["FromBankTransactionID"]] == "SPEND-TRANSFER"
    assert legs[made["ToBankTransactionID"]] == "RECEIVE-TRANSFER"
    assert [t["BankTransferID"] for t in api.items("BankTransfers")] == [made["BankTransferID"]]
    gone = api.write(
        "POST", "BankTransfers", {"BankTransfers": [{"BankTransferID": made["BankTransferID"], "Status": "DELETED"}]}
    )
    assert load(gone)["BankTransfers"][0]["Status"] == "DELETED"
    assert api.items("BankTransfers") == []
    assert [t["Status"] for t in api.items("BankTransfers", includeDeleted="true")] == ["DELETED"]


def test_credit_note_allocation_reduces_amount_due(box: XeroSandbox, tenant: str, api: Api) -> None:
    cust = contact(box, tenant)
    inv = invoice(box, tenant, cust, "100.00")
    note = box.put(
        tenant,
        "CreditNotes",
        {
            "Type": "ACCRECCREDIT",
            "Contact": {"ContactID": cust},
            "Status": "AUTHORISED",
            "LineItems": [{"Description": "Credit", "Quantity": 1, "UnitAmount": 40, "AccountCode": "200"}],
        },
    )
    response = api.put(
        f"CreditNotes/{note['CreditNoteID']}/Allocations",
        {
            "Allocations": [
                {"Invoice": {"InvoiceID": inv["InvoiceID"]}, "Amount": Decimal("25.00"), "Date": "2024-05-01"}
            ]
        },
    )
    assert response.status_code == 200, response.text
    after = row(box, tenant, "Invoices", inv["InvoiceID"])
    assert (after["AmountDue"], after["AmountCredited"], after["AmountPaid"]) == (
        Decimal("75.00"),
        Decimal("25.00"),
        Decimal("0.00"),
    )
    assert after["CreditNotes"][0]["CreditNoteID"] == note["CreditNoteID"]
    assert row(box, tenant, "CreditNotes", note["CreditNoteID"])["RemainingCredit"] == Decimal("15.00")
    too_much = api.put(
        f"CreditNotes/{note['CreditNoteID']}/Allocations",
        {"Allocations": [{"Invoice": {"InvoiceID": inv["InvoiceID"]}, "Amount": Decimal("16.00")}]},
    )
    assert too_much.status_code == 400
    assert row(box, tenant, "CreditNotes", note["CreditNoteID"])["RemainingCredit"] == Decimal("15.00")


# --- fault injection ------------------------------------------------------------------------------------


def test_injected_server_errors(box: XeroSandbox, api: Api) -> None:
    box.inject("500")
    box.inject("503")
    failed = api.get("Accounts")
    assert failed.status_code == 500 and failed.json()["Status"] == 500
    assert api.get("Accounts").status_code == 503
    assert api.get("Accounts").status_code == 200
    with pytest.raises(ValueError, match="unknown fault"):
        box.inject("teapot")


def test_a_dropped_write_is_not_applied_and_drop_after_is(box: XeroSandbox, tenant: str, api: Api) -> None:
    inv = invoice(box, tenant, contact(box, tenant))
    body = {"Payments": [payment(inv["InvoiceID"], "10.00")]}
    box.inject("drop", path_contains="/Payments")
    with pytest.raises(requests.ConnectionError):
        api.put("Payments", body, {"Idempotency-Key": "k1"})
    assert row(box, tenant, "Invoices", inv["InvoiceID"])["AmountDue"] == Decimal("100.00")
    box.inject("drop_after", path_contains="/Payments")
    with pytest.raises(requests.ConnectionError):
        api.put("Payments", body, {"Idempotency-Key": "k1"})
    assert row(box, tenant, "Invoices", inv["InvoiceID"])["AmountDue"] == Decimal("90.00"), "applied, answer lost"
    retried = api.put("Payments", body, {"Idempotency-Key": "k1"})
    assert retried.status_code == 200
    assert row(box, tenant, "Invoices", inv["InvoiceID"])["AmountDue"] == Decimal("90.00"), "the key holds"
    assert box.count(tenant, "Payments") == 1


def test_injected_limits_and_token_expiry(box: XeroSandbox, api: Api) -> None:
    for fault, problem in (("minute_limit", "minute"), ("day_limit", "day"), ("app_limit", "appminute")):
        box.inject(fault)
        limited = api.get("Accounts")
        assert limited.status_code == 429 and limited.headers["X-Rate-Limit-Problem"] == problem
        assert int(limited.headers["Retry-After"]) >= 1
    box.inject("expire_token")
    expired = api.get("Accounts")
    assert expired.status_code == 401 and expired.json()["Detail"].startswith("TokenExpired")
    assert api.get("Accounts").status_code == 401, "the token stays expired"


def test_faults_match_their_path_and_the_hook_sees_every_request(box: XeroSandbox, api: Api) -> None:
    seen: list[tuple[str, str]] = []
    box.on_request = lambda method, path, body: seen.append((method, path))
    box.inject("500", path_contains="/connect/token")
    assert api.get("Accounts").status_code == 200
    tokens = box.issue_tokens()
    assert refresh(box, tokens["refresh_token"]).status_code == 500
    assert refresh(box, tokens["refresh_token"]).status_code == 200
    assert [m for m, _ in seen] == ["GET", "POST", "POST"]
    assert box.requests_log[-1][0] == "POST" and "refresh_token=" in box.requests_log[-1][2]
    assert box.request_count == 3


def test_concurrent_writers_never_overpay(box: XeroSandbox, tenant: str) -> None:
    inv = invoice(box, tenant, contact(box, tenant), "5.00")
    token = box.issue_tokens()["access_token"]
    codes: list[int] = []

    def pay() -> None:
        response = Api(box, token=token).put("Payments", {"Payments": [payment(inv["InvoiceID"], "1.00")]})
        codes.append(response.status_code)

    threads = [threading.Thread(target=pay) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert sorted(codes) == [200] * 5 + [400] * 3
    assert row(box, tenant, "Invoices", inv["InvoiceID"])["Status"] == "PAID"


# --- the Python API ---------------------------------------------------------------------------------------


def test_python_api_put_update_get(box: XeroSandbox, tenant: str) -> None:
    cust = contact(box, tenant)
    inv = invoice(box, tenant, cust, "10.00", InvoiceNumber="INV-X")
    assert inv["InvoiceNumber"] == "INV-X" and inv["Total"] == Decimal("10.00")
    assert box.count(tenant, "Invoices") == 1 and box.ids(tenant, "Invoices") == [inv["InvoiceID"]]
    voided = box.void(tenant, inv["InvoiceID"])
    assert (voided["Status"], voided["AmountDue"]) == ("VOIDED", Decimal("0.00"))
    with pytest.raises(XeroValidationError, match="contact"):
        box.put(tenant, "Invoices", {"Contact": {"ContactID": "00000000-0000-0000-0000-000000000000"}})
    with pytest.raises(KeyError):
        box.put("not-a-tenant", "Contacts", {"Name": "x"})
    with pytest.raises(ValueError, match="unknown collection"):
        box.count(tenant, "Widgets")
    assert box.count(SECOND_TENANT[0], "Invoices") == 0, "tenants do not share rows"
    assert box.get(tenant, "Invoices", "00000000-0000-0000-0000-000000000000") is None


def test_a_refused_put_leaves_nothing_behind(box: XeroSandbox, tenant: str) -> None:
    cust = contact(box, tenant)
    inv = invoice(box, tenant, cust, "10.00")
    note = {
        "Type": "ACCRECCREDIT",
        "Contact": {"ContactID": cust},
        "Status": "AUTHORISED",
        "LineItems": [{"Description": "Credit", "Quantity": 1, "UnitAmount": 30, "AccountCode": "200"}],
    }
    with pytest.raises(XeroValidationError, match="greater than the amount due"):
        box.put(
            tenant, "CreditNotes", {**note, "Allocations": [{"Invoice": {"InvoiceID": inv["InvoiceID"]}, "Amount": 20}]}
        )
    assert box.count(tenant, "CreditNotes") == 0
    assert row(box, tenant, "Invoices", inv["InvoiceID"]) == inv
    assert box.put(tenant, "CreditNotes", note)["CreditNoteNumber"] == "CN-0001", "the number was not spent"


# --- seeds ------------------------------------------------------------------------------------------------


def test_seed_organisation_is_a_realistic_ar_ledger(clock: FakeClock) -> None:
    box = XeroSandbox(clock, rate_limits=False)
    tenant = box.tenant_ids[0]
    summary = seed_organisation(box, tenant, contacts=120, invoices=900, today=TODAY, seed=3)
    invoices = box.all(tenant, "Invoices")
    accrec = [i for i in invoices if i["Type"] == "ACCREC"]
    assert summary.bills == sum(1 for i in invoices if i["Type"] == "ACCPAY") > 0
    assert {i["Status"] for i in accrec} == {"DRAFT", "AUTHORISED", "PAID", "VOIDED", "DELETED"}
    assert {i["CurrencyCode"] for i in accrec} >= {"USD", "EUR", "GBP"}
    assert all(i["CurrencyRate"] != 1 for i in accrec if i["CurrencyCode"] != "USD")
    open_invoices = [i for i in accrec if i["Status"] == "AUTHORISED" and i["AmountDue"] > 0]
    assert any(i["AmountPaid"] > 0 for i in open_invoices), "partial payments"
    for i in accrec:
        assert i["AmountDue"] == i["Total"] - i["AmountPaid"] - i["AmountCredited"] or i["Status"] in (
            "VOIDED",
            "DELETED",
        )
    aging = dict.fromkeys(AGING_BUCKETS, 0)
    for i in open_invoices:
        aging[aging_bucket(day_of(i["DueDate"]), TODAY)] += 1
    assert aging == dict(summary.aging)
    assert all(count >= len(open_invoices) // 20 for count in aging.values()), aging
    notes = box.all(tenant, "CreditNotes")
    assert notes and all(n["Type"] == "ACCRECCREDIT" for n in notes)
    assert any(n["Allocations"] for n in notes) and any(n["RemainingCredit"] > 0 for n in notes)
    for name, kind in (("Overpayments", "RECEIVE-OVERPAYMENT"), ("Prepayments", "RECEIVE-PREPAYMENT")):
        rows = box.all(tenant, name)
        assert rows and {r["Type"] for r in rows} == {kind}
        assert any(r["RemainingCredit"] > 0 for r in rows)
    assert (
        summary.archived_contacts == sum(1 for c in box.all(tenant, "Contacts") if c["ContactStatus"] == "ARCHIVED") > 0
    )
    assert summary.payments == box.count(tenant, "Payments")
    again = XeroSandbox(clock, rate_limits=False)
    seed_organisation(again, tenant, contacts=120, invoices=900, today=TODAY, seed=3)
    assert again.ids(tenant, "Invoices") == box.ids(tenant, "Invoices"), "the same seed gives the same ledger"


def test_seed_bulk_reads_back_as_ordinary_invoices(clock: FakeClock) -> None:
    with XeroSandbox(clock, rate_limits=False, large_org_invoices=1000) as box:
        tenant = box.tenant_ids[0]
        summary = seed_bulk(box, tenant, contacts=300, invoices=5000, today=TODAY)
        api = Api(box)
        first = load(api.get("Invoices", page=1, pageSize=1000))
        assert first["pagination"]["itemCount"] == 5000 == summary.invoices + summary.bills
        accrec = load(api.get("Invoices", page=1, pageSize=1000, where='Type=="ACCREC" && Status=="AUTHORISED"'))
        assert accrec["pagination"]["itemCount"] == sum(summary.aging.values())
        sample = first["Invoices"][0]
        assert sample["LineItems"][0]["LineAmount"] == sample["Total"] and sample["Contact"]["Name"]
        assert api.get("Invoices").status_code == 400, "5000 invoices is a large organisation here"
        open_one = accrec["Invoices"][0]
        paid = api.put("Payments", {"Payments": [payment(open_one["InvoiceID"], "1.00")]})
        assert paid.status_code == 200
        assert row(box, tenant, "Invoices", open_one["InvoiceID"])["AmountDue"] == open_one["AmountDue"] - 1


def test_mutate_some_changes_what_if_modified_since_then_finds(clock: FakeClock) -> None:
    with XeroSandbox(clock, rate_limits=False) as box:
        tenant = box.tenant_ids[0]
        seed_organisation(box, tenant, contacts=40, invoices=200, today=TODAY)
        clock.advance(3600)
        mark = clock()
        clock.advance(1)
        changed = mutate_some(box, tenant, 12, seed=5)
        assert len(changed) == len(set(changed)) == 12
        api = Api(box)
        found = {i["InvoiceID"] for i in api.items("Invoices", headers={"If-Modified-Since": mark.isoformat()}, page=1)}
        assert found == set(changed)
