"""The QuickBooks sandbox behaves like a QuickBooks company: state, time, limits and faults.

Every test talks to the started server over real HTTP (``requests``, and the
``intuit-oauth`` SDK for the OAuth flow). Time is a fake clock the tests move;
nothing sleeps.
"""

from __future__ import annotations

import json
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from intuitlib.client import AuthClient
from intuitlib.enums import Scopes

from connectors.quickbooks.sandbox import QuickBooksSandbox, SandboxFault, parse_wire_time, wire_time
from connectors.quickbooks.seed import AGING_BUCKETS, aging_bucket, mutate_some, seed_bulk, seed_company
from tests.support import FakeClock

START = datetime(2024, 5, 1, 17, 0, tzinfo=UTC)
TODAY = date(2024, 5, 1)


class Api:
    """A bearer-token session on one sandbox company."""

    def __init__(self, box: QuickBooksSandbox, token: str | None = None) -> None:
        self.box = box
        self.session = requests.Session()
        self.session.headers["Accept"] = "application/json"
        self.use(token or box.issue_tokens()["access_token"])
        self.company = f"{box.api_base}/company/{box.realm_id}"

    def use(self, token: str) -> None:
        self.token = token
        self.session.headers["Authorization"] = f"Bearer {token}"

    def get(self, rest: str, timeout: float = 10, **params: str) -> requests.Response:
        return self.session.get(f"{self.company}/{rest}", params=params or None, timeout=timeout)

    def post(self, rest: str, body: Any, timeout: float = 10, **params: str) -> requests.Response:
        return self.session.post(
            f"{self.company}/{rest}",
            data=json.dumps(body, default=str),
            params=params or None,
            headers={"Content-Type": "application/json"},
            timeout=timeout,
        )

    def query(self, text: str) -> requests.Response:
        return self.session.post(
            f"{self.company}/query", data=text, headers={"Content-Type": "application/text"}, timeout=10
        )

    def rows(self, text: str) -> list[dict[str, Any]]:
        answer = self.query(text)
        assert answer.status_code == 200, answer.text
        body = load(answer)["QueryResponse"]
        rows: list[dict[str, Any]] = next((v for v in body.values() if isinstance(v, list)), [])
        return rows

    def cdc(self, entities: str, since: datetime | str) -> requests.Response:
        text = since if isinstance(since, str) else since.isoformat()
        return self.get("cdc", entities=entities, changedSince=text)


def load(response: requests.Response) -> Any:
    return json.loads(response.text, parse_float=Decimal)


def fault_of(response: requests.Response) -> dict[str, Any]:
    error: dict[str, Any] = load(response)["Fault"]["Error"][0]
    return error


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def box(clock: FakeClock) -> Iterator[QuickBooksSandbox]:
    sandbox = QuickBooksSandbox(clock, rate_limits=False)
    sandbox.start()
    yield sandbox
    sandbox.release_stalls()
    sandbox.stop()
    assert sandbox.server_errors == []


@pytest.fixture
def api(box: QuickBooksSandbox) -> Api:
    return Api(box)


def customer(box: QuickBooksSandbox, name: str = "Acme Plumbing", **extra: Any) -> str:
    return str(box.put("Customer", {"DisplayName": name, **extra})["Id"])


def invoice(box: QuickBooksSandbox, customer_id: str, *amounts: str, **extra: Any) -> dict[str, Any]:
    lines = [{"Amount": Decimal(a), "DetailType": "SalesItemLineDetail"} for a in amounts or ("100.00",)]
    return box.put("Invoice", {"CustomerRef": {"value": customer_id}, "Line": lines, **extra})


# --- query: paging, ordering, filters, count ------------------------------------------------------


def test_pages_in_last_updated_order_with_stable_ties(box: QuickBooksSandbox, api: Api, clock: FakeClock) -> None:
    cust = customer(box)
    expected: list[tuple[float, int]] = []
    for index in range(25):
        stamp = START - timedelta(hours=(index * 7) % 11)  # out of Id order, with ties
        made = invoice(box, cust, MetaData={"LastUpdatedTime": stamp.isoformat()})
        expected.append((stamp.timestamp(), int(made["Id"])))
    want = [str(n) for _, n in sorted(expected)]

    pages = []
    for start in (1, 11, 21, 31):
        text = f"SELECT * FROM Invoice ORDERBY Metadata.LastUpdatedTime STARTPOSITION {start} MAXRESULTS 10"
        body = load(api.query(text))["QueryResponse"]
        pages.append(body)

    assert [p.get("maxResults") for p in pages] == [10, 10, 5, None]
    assert [p.get("startPosition") for p in pages[:3]] == [1, 11, 21]
    assert pages[3] == {}  # past the end QBO answers an empty QueryResponse
    got = [row["Id"] for page in pages[:3] for row in page["Invoice"]]
    assert got == want
    newest_first = api.rows("SELECT * FROM Invoice ORDERBY Metadata.LastUpdatedTime DESC MAXRESULTS 1000")
    assert [row["Id"] for row in newest_first] == want[::-1]
    by_id = api.rows("select Id, DocNumber from Invoice orderby Id desc maxresults 3")
    assert [row["Id"] for row in by_id] == sorted(want, key=int, reverse=True)[:3]
    assert set(by_id[0]) == {"domain", "sparse", "Id", "DocNumber"} and by_id[0]["sparse"] is True


def test_where_on_last_updated_time_compares_instants(box: QuickBooksSandbox, api: Api) -> None:
    cust = customer(box)
    stamps = [START - timedelta(minutes=m) for m in (50, 40, 30, 20, 10)]
    ids = [invoice(box, cust, MetaData={"LastUpdatedTime": s.isoformat()})["Id"] for s in stamps]
    edge = stamps[2]

    after = api.rows(f"SELECT * FROM Invoice WHERE Metadata.LastUpdatedTime > '{wire_time(edge.timestamp())}'")
    from_ = api.rows(f"SELECT * FROM Invoice WHERE MetaData.LastUpdatedTime >= '{edge.strftime('%Y-%m-%dT%H:%M:%SZ')}'")
    window = api.rows(
        "SELECT * FROM Invoice WHERE Metadata.LastUpdatedTime >= "
        f"'{stamps[1].isoformat()}' AND Metadata.LastUpdatedTime < '{stamps[3].isoformat()}' ORDERBY Id"
    )

    assert [r["Id"] for r in after] == ids[3:]
    assert [r["Id"] for r in from_] == ids[2:]  # same instant written in UTC
    assert [r["Id"] for r in window] == ids[1:3]
    count = load(api.query(f"SELECT COUNT(*) FROM Invoice WHERE Metadata.LastUpdatedTime > '{edge.isoformat()}'"))
    assert count["QueryResponse"] == {"totalCount": 2}


def test_where_on_ids_dates_and_flags(box: QuickBooksSandbox, api: Api) -> None:
    acme = customer(box)
    other = customer(box, "Other Co")
    customer(box, "Sleepy Co", Active=False)
    made = [invoice(box, acme if n % 2 else other, TxnDate=f"2024-04-{n + 1:02d}") for n in range(12)]

    assert [r["Id"] for r in api.rows("SELECT * FROM Invoice WHERE Id > '9' ORDERBY Id")] == ["10", "11", "12"]
    assert [r["Id"] for r in api.rows("SELECT * FROM Invoice WHERE Id IN ('2', '11', '99')")] == ["2", "11"]
    in_april_first_week = api.rows("SELECT * FROM Invoice WHERE TxnDate <= '2024-04-07' AND TxnDate >= '2024-04-03'")
    assert [r["TxnDate"] for r in in_april_first_week] == [f"2024-04-0{d}" for d in range(3, 8)]
    assert len(api.rows(f"SELECT * FROM Invoice WHERE CustomerRef = '{acme}'")) == 6
    assert [c["DisplayName"] for c in api.rows("SELECT * FROM Customer")] == ["Acme Plumbing", "Other Co"]
    everyone = api.rows("SELECT * FROM Customer WHERE Active IN (true, false)")
    assert [c["DisplayName"] for c in everyone] == ["Acme Plumbing", "Other Co", "Sleepy Co"]
    assert api.rows("SELECT * FROM Customer WHERE DisplayName = 'Other Co'")[0]["Id"] == other
    assert load(api.query("SELECT COUNT(*) FROM Customer"))["QueryResponse"] == {"totalCount": 2}
    assert load(api.get("query", query="select count(*) from Invoice"))["QueryResponse"] == {"totalCount": 12}
    assert len(made) == 12


def test_maxresults_above_1000_is_refused(api: Api) -> None:
    answer = api.query("SELECT * FROM Invoice MAXRESULTS 1001")
    assert answer.status_code == 400
    assert fault_of(answer)["code"] == "4001"
    assert api.query("SELECT * FROM Invoice MAXRESULTS 1000").status_code == 200


# --- CDC ------------------------------------------------------------------------------------------


def test_cdc_reports_changes_and_deletes_since_a_time(box: QuickBooksSandbox, api: Api, clock: FakeClock) -> None:
    cust = customer(box)
    kept, edited, removed = (invoice(box, cust) for _ in range(3))
    clock.advance(minutes=10)
    since = clock()
    clock.advance(minutes=1)
    box.update("Invoice", edited["Id"], {"PrivateNote": "called the customer"})
    clock.advance(minutes=1)
    box.delete("Invoice", removed["Id"])

    body = load(api.cdc("Invoice,Customer,Payment,CreditMemo", since))

    blocks = body["CDCResponse"][0]["QueryResponse"]
    assert len(blocks) == 4
    invoices = blocks[0]["Invoice"]
    assert [(o["Id"], o.get("status")) for o in invoices] == [(edited["Id"], None), (removed["Id"], "Deleted")]
    assert invoices[0]["SyncToken"] == "1" and invoices[0]["PrivateNote"] == "called the customer"
    assert invoices[1]["MetaData"]["LastUpdatedTime"] == wire_time(clock().timestamp())
    assert blocks[1:] == [{}, {}, {}]
    assert kept["Id"] not in {o["Id"] for o in invoices}


def test_cdc_caps_each_entity_at_1000_oldest_first(box: QuickBooksSandbox, api: Api, clock: FakeClock) -> None:
    cust = customer(box)
    since = clock() - timedelta(days=1)
    stamps = [since + timedelta(seconds=10 * n) for n in range(1, 1201)]
    for stamp in reversed(stamps):
        invoice(box, cust, MetaData={"LastUpdatedTime": stamp.isoformat()})

    first = load(api.cdc("Invoice", since))["CDCResponse"][0]["QueryResponse"][0]
    times = [parse_wire_time(o["MetaData"]["LastUpdatedTime"]) for o in first["Invoice"]]
    assert first["maxResults"] == first["totalCount"] == len(first["Invoice"]) == 1000
    assert times == sorted(times) and times[0] == stamps[0].timestamp()
    rest = load(api.cdc("Invoice", datetime.fromtimestamp(times[-1] + 1, UTC)))["CDCResponse"][0]["QueryResponse"][0]
    assert len(rest["Invoice"]) == 200
    assert {o["Id"] for o in first["Invoice"]}.isdisjoint(o["Id"] for o in rest["Invoice"])


def test_cdc_refuses_a_date_beyond_the_horizon(api: Api, clock: FakeClock) -> None:
    too_old = api.cdc("Invoice", clock() - timedelta(days=30, seconds=1))
    assert too_old.status_code == 400
    error = fault_of(too_old)
    assert error["code"] == "4001" and "too old" in error["Detail"]
    assert api.cdc("Invoice", clock() - timedelta(days=29)).status_code == 200
    assert api.get("cdc", entities="Invoice").status_code == 400  # changedSince is required


# --- OAuth ----------------------------------------------------------------------------------------


def test_access_token_expires_by_the_clock(box: QuickBooksSandbox, api: Api, clock: FakeClock) -> None:
    cust = customer(box)
    clock.advance(seconds=3599)
    assert api.get(f"customer/{cust}").status_code == 200
    clock.advance(seconds=1)
    expired = api.get(f"customer/{cust}")
    assert expired.status_code == 401
    assert load(expired)["fault"]["error"][0]["code"] == "3200"
    api.use("not-a-token")
    assert api.get(f"customer/{cust}").status_code == 401
    api.use(box.issue_tokens()["access_token"])
    assert api.get(f"customer/{cust}").status_code == 200


def test_expire_token_fault_expires_the_presented_token(box: QuickBooksSandbox, api: Api) -> None:
    cust = customer(box)
    box.inject("expire_token")
    assert api.get(f"customer/{cust}").status_code == 401
    assert api.get(f"customer/{cust}").status_code == 401  # that token stays expired
    api.use(box.issue_tokens()["access_token"])
    assert api.get(f"customer/{cust}").status_code == 200


def test_authorization_code_flow_and_rotating_refresh_tokens(box: QuickBooksSandbox, clock: FakeClock) -> None:
    redirect = "http://127.0.0.1:8765/callback"
    client = AuthClient(box.client_id, box.client_secret, redirect, box.discovery_url)
    url = client.get_authorization_url([Scopes.ACCOUNTING], state_token="s-1")

    answer = requests.get(url, allow_redirects=False, timeout=10)

    assert answer.status_code == 302
    location = urlsplit(answer.headers["Location"])
    params = {k: v[0] for k, v in parse_qs(location.query).items()}
    assert f"{location.scheme}://{location.netloc}{location.path}" == redirect
    assert params["state"] == "s-1" and params["realmId"] == box.realm_id
    client.get_bearer_token(params["code"], realm_id=params["realmId"])
    first_refresh = client.refresh_token
    assert client.access_token and client.expires_in == 3600
    assert Api(box, client.access_token).get("query", query="SELECT COUNT(*) FROM Invoice").status_code == 200

    client.refresh()
    assert client.refresh_token != first_refresh
    assert box.refresh_count == 1

    def refresh(token: str, auth: tuple[str, str] = (box.client_id, box.client_secret)) -> requests.Response:
        data = {"grant_type": "refresh_token", "refresh_token": token}
        return requests.post(box.token_url, data=data, auth=auth, timeout=10)

    reused = refresh(first_refresh)
    assert (reused.status_code, reused.json()) == (400, {"error": "invalid_grant"})
    assert refresh("made-up").json() == {"error": "invalid_grant"}
    bad_client = refresh(client.refresh_token, ("sandbox-client-id", "wrong"))
    assert (bad_client.status_code, bad_client.json()) == (401, {"error": "invalid_client"})
    code_again = requests.post(
        box.token_url,
        data={"grant_type": "authorization_code", "code": params["code"], "redirect_uri": redirect},
        auth=(box.client_id, box.client_secret),
        timeout=10,
    )
    assert (code_again.status_code, code_again.json()) == (400, {"error": "invalid_grant"})
    assert box.refresh_count == 1
    clock.advance(seconds=box.refresh_token_ttl + 1)
    assert refresh(client.refresh_token).json() == {"error": "invalid_grant"}


def test_refresh_token_is_revoked(box: QuickBooksSandbox) -> None:
    pair = box.issue_tokens()
    revoked = requests.post(
        box.url + "/oauth2/v1/tokens/revoke",
        json={"token": pair["refresh_token"]},
        auth=(box.client_id, box.client_secret),
        timeout=10,
    )
    assert revoked.status_code == 200
    again = requests.post(
        box.token_url,
        data={"grant_type": "refresh_token", "refresh_token": pair["refresh_token"]},
        auth=(box.client_id, box.client_secret),
        timeout=10,
    )
    assert again.json() == {"error": "invalid_grant"}
    assert Api(box, pair["access_token"]).get("query", query="SELECT COUNT(*) FROM Invoice").status_code == 401


def test_another_realm_is_forbidden(box: QuickBooksSandbox, api: Api) -> None:
    answer = api.session.get(f"{box.api_base}/company/123/query", params={"query": "SELECT * FROM Invoice"}, timeout=10)
    assert answer.status_code == 403
    assert load(answer)["fault"]["error"][0]["code"] == "3100"


# --- rate limits ----------------------------------------------------------------------------------


@pytest.fixture
def limited(clock: FakeClock) -> Iterator[QuickBooksSandbox]:
    sandbox = QuickBooksSandbox(clock, concurrent=2)
    sandbox.start()
    yield sandbox
    sandbox.release_stalls()
    sandbox.stop()


def is_throttle(answer: requests.Response) -> bool:
    if answer.status_code != 429:
        return False
    root = ET.fromstring(answer.content)
    error = root.find("{http://schema.intuit.com/finance/v3}Fault/{http://schema.intuit.com/finance/v3}Error")
    return error is not None and error.get("code") == "3001"


def test_ten_requests_a_second(limited: QuickBooksSandbox, clock: FakeClock) -> None:
    api = Api(limited)
    answers = [api.get("query", query="SELECT COUNT(*) FROM Invoice") for _ in range(11)]
    assert [a.status_code for a in answers[:10]] == [200] * 10
    assert is_throttle(answers[10])
    clock.advance(seconds=0.999)
    assert is_throttle(api.get("query", query="SELECT COUNT(*) FROM Invoice"))
    clock.advance(seconds=0.002)
    assert api.get("query", query="SELECT COUNT(*) FROM Invoice").status_code == 200
    assert limited.throttled_count == 2


def test_five_hundred_requests_a_minute(limited: QuickBooksSandbox, clock: FakeClock) -> None:
    api = Api(limited)
    codes = []
    for _ in range(500):
        codes.append(api.get("query", query="SELECT COUNT(*) FROM Invoice").status_code)
        clock.advance(seconds=0.11)  # 9 a second: under the per-second limit
    assert codes == [200] * 500
    assert is_throttle(api.get("query", query="SELECT COUNT(*) FROM Invoice"))
    clock.advance(seconds=60 - 500 * 0.11 + 0.2)  # the first requests leave the window
    assert api.get("query", query="SELECT COUNT(*) FROM Invoice").status_code == 200


def test_concurrent_requests_beyond_the_limit_are_throttled(limited: QuickBooksSandbox, clock: FakeClock) -> None:
    api = Api(limited)
    limited.inject("stall:30", times=2)
    results: list[int] = []

    def call() -> None:
        results.append(Api(limited, api.token).get("query", query="SELECT COUNT(*) FROM Invoice").status_code)

    threads = [threading.Thread(target=call) for _ in range(2)]
    for thread in threads:
        thread.start()
    assert limited.wait_for_in_flight(2)
    clock.advance(seconds=5)
    third = api.get("query", query="SELECT COUNT(*) FROM Invoice")
    limited.release_stalls()
    for thread in threads:
        thread.join(timeout=10)
    assert is_throttle(third)
    assert results == [200, 200]
    assert limited.in_flight() == 0


def test_forty_batches_a_minute(limited: QuickBooksSandbox, clock: FakeClock) -> None:
    api = Api(limited)
    batch = {"BatchItemRequest": [{"bId": "1", "Query": "SELECT COUNT(*) FROM Invoice"}]}
    codes = []
    for _ in range(41):
        codes.append(api.post("batch", batch).status_code)
        clock.advance(seconds=1)
    assert codes[:40] == [200] * 40 and codes[40] == 429


# --- writes ---------------------------------------------------------------------------------------


def test_invoice_totals_from_lines_exactly(box: QuickBooksSandbox, api: Api) -> None:
    cust = customer(box)
    body = {
        "CustomerRef": {"value": cust},
        "Line": [
            {"Amount": "0.10", "DetailType": "SalesItemLineDetail"},
            {"DetailType": "SalesItemLineDetail", "SalesItemLineDetail": {"Qty": 3, "UnitPrice": "0.10"}},
            {"Amount": "0.05", "DetailType": "DiscountLineDetail"},
        ],
        "SalesTermRef": {"value": "2"},
        "TxnDate": "2024-04-01",
    }
    answer = api.post("invoice", body)
    assert answer.status_code == 200, answer.text
    assert '"TotalAmt":0.35' in answer.text and '"Balance":0.35' in answer.text
    made = load(answer)["Invoice"]
    assert made["DueDate"] == "2024-04-16"  # Net 15
    assert [line["DetailType"] for line in made["Line"]][-1] == "SubTotalLineDetail"
    wrong = api.post(
        "invoice",
        {
            **body,
            "Line": [
                {
                    "Amount": "1.00",
                    "DetailType": "SalesItemLineDetail",
                    "SalesItemLineDetail": {"Qty": 3, "UnitPrice": "0.10"},
                }
            ],
        },
    )
    assert (wrong.status_code, fault_of(wrong)["code"]) == (400, "6070")


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"Line": [{"Amount": 5, "DetailType": "SalesItemLineDetail"}]}, "6000"),
        ({"CustomerRef": {"value": "CUST"}}, "2020"),
        ({"CustomerRef": {"value": "999"}, "Line": [{"Amount": 5, "DetailType": "SalesItemLineDetail"}]}, "2500"),
        ({"CustomerRef": {"value": "SLEEPY"}, "Line": [{"Amount": 5, "DetailType": "SalesItemLineDetail"}]}, "610"),
    ],
)
def test_invoice_validation_faults(box: QuickBooksSandbox, api: Api, body: dict[str, Any], code: str) -> None:
    ids = {"CUST": customer(box), "SLEEPY": customer(box, "Sleepy", Active=False)}
    text = json.dumps(body).replace('"CUST"', f'"{ids["CUST"]}"').replace('"SLEEPY"', f'"{ids["SLEEPY"]}"')
    answer = api.post("invoice", json.loads(text))
    assert answer.status_code == 400
    assert fault_of(answer)["code"] == code
    assert load(answer)["Fault"]["type"] == "ValidationFault"
    assert box.count("Invoice") == 0


def test_stale_sync_token_is_refused(box: QuickBooksSandbox, api: Api) -> None:
    made = invoice(box, customer(box))
    first = api.post("invoice", {"Id": made["Id"], "SyncToken": "0", "sparse": True, "PrivateNote": "one"})
    assert first.status_code == 200 and load(first)["Invoice"]["SyncToken"] == "1"

    stale = api.post("invoice", {"Id": made["Id"], "SyncToken": "0", "sparse": True, "PrivateNote": "two"})

    assert stale.status_code == 400
    error = fault_of(stale)
    assert error["code"] == "5010" and error["Message"] == "Stale Object Error"
    stored = box.get("Invoice", made["Id"])
    assert stored is not None and (stored["PrivateNote"], stored["SyncToken"]) == ("one", "1")


def test_payment_reduces_balances_and_void_or_delete_restores_them(
    box: QuickBooksSandbox, api: Api, clock: FakeClock
) -> None:
    cust = customer(box)
    first = invoice(box, cust, "100.00", "50.00")
    second = invoice(box, cust, "80.00")
    clock.advance(minutes=5)
    payment = {
        "CustomerRef": {"value": cust},
        "TotalAmt": "200.00",
        "Line": [
            {"Amount": "150.00", "LinkedTxn": [{"TxnId": first["Id"], "TxnType": "Invoice"}]},
            {"Amount": "30.00", "LinkedTxn": [{"TxnId": second["Id"], "TxnType": "Invoice"}]},
        ],
    }
    answer = api.post("payment", payment)
    assert answer.status_code == 200, answer.text
    paid = load(answer)["Payment"]
    assert paid["UnappliedAmt"] == Decimal("20.00")

    one, two = box.get("Invoice", first["Id"]), box.get("Invoice", second["Id"])
    assert one is not None and two is not None
    assert (one["Balance"], two["Balance"]) == (Decimal("0.00"), Decimal("50.00"))
    assert one["LinkedTxn"] == [{"TxnId": paid["Id"], "TxnType": "Payment"}]
    assert one["SyncToken"] == "1" and one["MetaData"]["LastUpdatedTime"] == wire_time(clock().timestamp())
    assert box.customer_balance(cust) == Decimal("30.00")  # 50 open - 20 unapplied
    assert load(api.get(f"customer/{cust}"))["Customer"]["Balance"] == Decimal("30.00")

    too_much = api.post(
        "payment",
        {
            "CustomerRef": {"value": cust},
            "TotalAmt": "60",
            "Line": [{"Amount": "60", "LinkedTxn": [{"TxnId": second["Id"], "TxnType": "Invoice"}]}],
        },
    )
    assert (too_much.status_code, fault_of(too_much)["code"]) == (400, "6000")
    assert box.count("Payment") == 1

    voided = api.post("payment", {"Id": paid["Id"], "SyncToken": paid["SyncToken"]}, operation="void")
    assert voided.status_code == 200 and load(voided)["Payment"]["TotalAmt"] == 0
    restored = box.get("Invoice", first["Id"])
    assert restored is not None and restored["Balance"] == Decimal("150.00") and restored["LinkedTxn"] == []
    again = box.put("Payment", {**payment, "TotalAmt": "180.00"})
    box.delete("Payment", again["Id"])
    two_after = box.get("Invoice", second["Id"])
    assert two_after is not None and two_after["Balance"] == Decimal("80.00")
    assert box.customer_balance(cust) == Decimal("230.00")


def test_an_invoice_with_a_payment_cannot_be_voided_or_deleted_over_http(box: QuickBooksSandbox, api: Api) -> None:
    cust = customer(box)
    made = invoice(box, cust, "100.00")
    box.put(
        "Payment",
        {
            "CustomerRef": {"value": cust},
            "TotalAmt": "10",
            "Line": [{"Amount": "10", "LinkedTxn": [{"TxnId": made["Id"], "TxnType": "Invoice"}]}],
        },
    )
    token = box.get("Invoice", made["Id"])["SyncToken"]  # type: ignore[index]
    for operation in ("void", "delete"):
        answer = api.post("invoice", {"Id": made["Id"], "SyncToken": token}, operation=operation)
        assert (answer.status_code, fault_of(answer)["code"]) == (400, "6000")
    assert box.get("Invoice", made["Id"])["Balance"] == Decimal("90.00")  # type: ignore[index]


def test_requestid_makes_a_write_idempotent(box: QuickBooksSandbox, api: Api) -> None:
    cust = customer(box)
    made = invoice(box, cust, "100.00")
    body = {
        "CustomerRef": {"value": cust},
        "TotalAmt": "25",
        "Line": [{"Amount": "25", "LinkedTxn": [{"TxnId": made["Id"], "TxnType": "Invoice"}]}],
    }

    first = api.post("payment", body, requestid="charge:acme:1")
    again = api.post("payment", body, requestid="charge:acme:1")
    other = api.post("payment", body, requestid="charge:acme:2")

    assert first.status_code == again.status_code == other.status_code == 200
    assert load(first)["Payment"]["Id"] == load(again)["Payment"]["Id"] != load(other)["Payment"]["Id"]
    assert first.content == again.content
    assert box.count("Payment") == 2
    assert box.get("Invoice", made["Id"])["Balance"] == Decimal("50.00")  # type: ignore[index]


def test_a_lost_answer_is_recovered_by_the_same_requestid(box: QuickBooksSandbox, api: Api) -> None:
    cust = customer(box)
    made = invoice(box, cust, "100.00")
    body = {
        "CustomerRef": {"value": cust},
        "TotalAmt": "40",
        "Line": [{"Amount": "40", "LinkedTxn": [{"TxnId": made["Id"], "TxnType": "Invoice"}]}],
    }
    box.inject("drop_after", path_contains="/payment")

    with pytest.raises(requests.ConnectionError):
        api.post("payment", body, requestid="post:1")
    retried = api.post("payment", body, requestid="post:1")

    assert retried.status_code == 200
    assert box.count("Payment") == 1
    assert box.get("Invoice", made["Id"])["Balance"] == Decimal("60.00")  # type: ignore[index]


def test_batch_runs_each_item_and_reports_each_fault(box: QuickBooksSandbox, api: Api) -> None:
    cust = customer(box)
    made = invoice(box, cust, "500.00")
    items = [
        {
            "bId": "a",
            "operation": "create",
            "Invoice": {
                "CustomerRef": {"value": cust},
                "Line": [{"Amount": "12.50", "DetailType": "SalesItemLineDetail"}],
            },
        },
        {
            "bId": "b",
            "operation": "create",
            "Invoice": {"Line": [{"Amount": "1", "DetailType": "SalesItemLineDetail"}]},
        },
        {
            "bId": "c",
            "operation": "update",
            "Invoice": {"Id": made["Id"], "SyncToken": "0", "sparse": True, "DueDate": "2024-06-01"},
        },
        {"bId": "d", "Query": "SELECT * FROM Invoice WHERE TotalAmt > '100.00'"},
        {"bId": "e", "operation": "update", "optionsData": "void", "Invoice": {"Id": made["Id"], "SyncToken": "1"}},
    ]

    body = load(api.post("batch", {"BatchItemRequest": items}))

    got = {item["bId"]: item for item in body["BatchItemResponse"]}
    assert list(got) == ["a", "b", "c", "d", "e"]
    assert got["a"]["Invoice"]["TotalAmt"] == Decimal("12.50")
    assert got["b"]["Fault"]["Error"][0]["code"] == "6000"
    assert got["c"]["Invoice"]["DueDate"] == "2024-06-01"
    assert [i["Id"] for i in got["d"]["QueryResponse"]["Invoice"]] == [made["Id"]]
    assert got["e"]["Invoice"]["PrivateNote"] == "Voided"
    assert box.count("Invoice") == 2

    too_big = api.post(
        "batch", {"BatchItemRequest": [{"bId": str(n), "Query": "SELECT * FROM Invoice"} for n in range(31)]}
    )
    assert too_big.status_code == 400


# --- fault injection ------------------------------------------------------------------------------


def test_injected_faults_hit_the_next_matching_calls(box: QuickBooksSandbox, api: Api) -> None:
    cust = customer(box)
    box.inject("500")
    box.inject("503", times=2, path_contains="/customer/")

    server_error = api.get("query", query="SELECT * FROM Invoice")
    unavailable = [api.get(f"customer/{cust}") for _ in range(2)]
    fine = api.get(f"customer/{cust}")

    assert server_error.status_code == 500 and fault_of(server_error)["code"] == "10000"
    assert [a.status_code for a in unavailable] == [503, 503]
    assert fine.status_code == 200
    box.inject("drop")
    with pytest.raises(requests.ConnectionError):
        api.get(f"customer/{cust}")
    assert api.get(f"customer/{cust}").status_code == 200
    token_calls_are_not_hit = box.issue_tokens()
    box.inject("500")
    refreshed = requests.post(
        box.token_url,
        data={"grant_type": "refresh_token", "refresh_token": token_calls_are_not_hit["refresh_token"]},
        auth=(box.client_id, box.client_secret),
        timeout=10,
    )
    assert refreshed.status_code == 200
    assert api.get(f"customer/{cust}").status_code == 500


def test_a_stalled_write_times_out_the_client_and_is_applied_later(box: QuickBooksSandbox, api: Api) -> None:
    cust = customer(box)
    box.inject("stall:30", path_contains="/invoice")
    with pytest.raises(requests.ReadTimeout):
        api.post(
            "invoice",
            {"CustomerRef": {"value": cust}, "Line": [{"Amount": 5, "DetailType": "SalesItemLineDetail"}]},
            timeout=0.2,
        )
    assert box.wait_for_in_flight(1)
    box.release_stalls()
    done = threading.Event()
    while not done.wait(0.01):  # the server finishes the write after the client gave up
        if box.in_flight() == 0:
            done.set()
    assert box.count("Invoice") == 1


def test_deposits_purchases_and_accounts_are_stored_with_totals(box: QuickBooksSandbox, api: Api) -> None:
    bank = box.put("Account", {"Name": "Checking", "AccountType": "Bank"})
    fees = box.put("Account", {"Name": "Merchant Fees", "AccountType": "Expense", "Classification": "Expense"})
    body = {
        "DepositToAccountRef": {"value": bank["Id"]},
        "Line": [
            {"Amount": "97.10", "DetailType": "DepositLineDetail", "DepositLineDetail": {"AccountRef": {"value": "4"}}},
            {
                "Amount": "-2.90",
                "DetailType": "DepositLineDetail",
                "DepositLineDetail": {"AccountRef": {"value": fees["Id"]}},
            },
        ],
    }
    answer = api.post("deposit", body, requestid="payout:po_1")
    assert answer.status_code == 200, answer.text
    deposit = load(answer)["Deposit"]
    assert deposit["TotalAmt"] == Decimal("94.20") and [line["LineNum"] for line in deposit["Line"]] == [1, 2]
    assert api.post("deposit", body, requestid="payout:po_1").content == answer.content
    purchase = load(api.post("purchase", {"PaymentType": "Cash", "Line": [{"Amount": "2.90"}]}))["Purchase"]
    assert purchase["TotalAmt"] == Decimal("2.90")
    assert [a["Name"] for a in api.rows("SELECT * FROM Account ORDERBY Id")] == ["Checking", "Merchant Fees"]
    assert box.count("Deposit") == 1


def test_request_log_and_count(box: QuickBooksSandbox, api: Api) -> None:
    requests.get(box.discovery_url, timeout=10)
    api.query("SELECT * FROM Invoice")
    api.get("query", query="SELECT COUNT(*) FROM Invoice")
    assert box.request_count == 2
    assert box.requests_log[-2:] == [
        ("POST", f"/v3/company/{box.realm_id}/query", "SELECT * FROM Invoice"),
        ("GET", f"/v3/company/{box.realm_id}/query?query=SELECT+COUNT%28%2A%29+FROM+Invoice", ""),
    ]


def test_python_api_matches_what_http_serves(box: QuickBooksSandbox, api: Api) -> None:
    made = invoice(box, customer(box), "10.00")
    assert load(api.get(f"invoice/{made['Id']}"))["Invoice"] == made
    with pytest.raises(SandboxFault) as refused:
        box.put("Invoice", {"Line": [{"Amount": 1, "DetailType": "SalesItemLineDetail"}]})
    assert refused.value.code == "6000"
    planted = box.update("Invoice", made["Id"], {"TotalAmt": "twelve"})
    assert planted["TotalAmt"] == "twelve" and planted["SyncToken"] == "1"
    assert load(api.get(f"invoice/{made['Id']}"))["Invoice"]["TotalAmt"] == "twelve"


# --- seeds ----------------------------------------------------------------------------------------


def test_seeded_company_is_aged_paid_and_consistent(clock: FakeClock) -> None:
    box = QuickBooksSandbox(clock, rate_limits=False)
    summary = seed_company(box, customers=60, invoices=1000, today=TODAY, seed=11)

    invoices = box.all("Invoice")
    payments = box.all("Payment")
    memos = box.all("CreditMemo")
    assert summary.invoices == 1000 and len(invoices) == 1000 - summary.deleted
    assert summary.voided == summary.deleted == 10
    assert 0.20 < summary.paid_in_full / 1000 < 0.30 and 0.06 < summary.partially_paid / 1000 < 0.14
    assert len(payments) == summary.payments == summary.paid_in_full + summary.partially_paid
    assert len(memos) == summary.credit_memos >= 1
    assert summary.inactive_customers == 3
    assert len({c["DisplayName"] for c in box.all("Customer")}) == 60

    applied: dict[str, Decimal] = {}
    for payment in payments:
        for line in payment["Line"]:
            for link in line["LinkedTxn"]:
                applied[link["TxnId"]] = applied.get(link["TxnId"], Decimal(0)) + line["Amount"]
    aging = dict.fromkeys(AGING_BUCKETS, 0)
    horizon = START - timedelta(days=90)
    for inv in invoices:
        lines = [line for line in inv["Line"] if line["DetailType"] == "SalesItemLineDetail"]
        assert 1 <= len(lines) <= 4
        assert inv["TotalAmt"] == sum(line["Amount"] for line in lines) or inv["PrivateNote"] == "Voided"
        assert inv["Balance"] == inv["TotalAmt"] - applied.get(inv["Id"], Decimal(0))
        assert inv["Balance"] >= 0
        if inv.get("PrivateNote") != "Voided":
            assert isinstance(inv["TotalAmt"], Decimal) and inv["TotalAmt"].as_tuple().exponent == -2
        assert horizon.timestamp() <= parse_wire_time(inv["MetaData"]["LastUpdatedTime"]) <= START.timestamp()
        if inv["Balance"] > 0:
            aging[aging_bucket(date.fromisoformat(inv["DueDate"]), TODAY)] += 1
    assert aging == dict(summary.aging)
    assert all(count >= 40 for count in aging.values()), aging
    assert summary.open_balance == sum(inv["Balance"] for inv in invoices)

    for cust in box.all("Customer"):
        own = [i for i in invoices if i["CustomerRef"]["value"] == cust["Id"]]
        credit = sum((m["RemainingCredit"] for m in memos if m["CustomerRef"]["value"] == cust["Id"]), Decimal(0))
        unapplied = sum((p["UnappliedAmt"] for p in payments if p["CustomerRef"]["value"] == cust["Id"]), Decimal(0))
        assert cust["Balance"] == sum((i["Balance"] for i in own), Decimal(0)) - credit - unapplied
        if not cust["Active"]:
            assert own == []


def test_seed_is_deterministic(clock: FakeClock) -> None:
    one, two = QuickBooksSandbox(clock), QuickBooksSandbox(clock)
    assert seed_company(one, customers=10, invoices=60, today=TODAY, seed=5) == seed_company(
        two, customers=10, invoices=60, today=TODAY, seed=5
    )
    assert one.all("Invoice") == two.all("Invoice")


def test_bulk_seed_reads_back_as_ordinary_invoices(clock: FakeClock) -> None:
    box = QuickBooksSandbox(clock, rate_limits=False)
    summary = seed_bulk(box, customers=30, invoices=5000, today=TODAY)
    box.start()
    try:
        api = Api(box)
        assert box.count("Invoice") == summary.invoices == 5000
        assert sum(summary.aging.values()) == 5000 and all(summary.aging[b] > 0 for b in AGING_BUCKETS)
        page = api.rows("SELECT * FROM Invoice ORDERBY Metadata.LastUpdatedTime STARTPOSITION 4001 MAXRESULTS 1000")
        assert len(page) == 1000
        first = page[0]
        assert first["TotalAmt"] == first["Balance"] == first["Line"][0]["Amount"]
        assert first["CustomerRef"]["name"] and first["DocNumber"].isdigit()
        assert sum((i["Balance"] for i in box.all("Invoice")), Decimal(0)) == summary.open_balance
        changed = mutate_some(box, 12, seed=2)
        assert len(set(changed)) == 12
        for ident in changed:
            after = box.get("Invoice", ident)
            assert after is not None and after["SyncToken"] != "0"
        cdc = load(api.cdc("Invoice,Payment", clock()))["CDCResponse"][0]["QueryResponse"]
        assert {o["Id"] for o in cdc[0]["Invoice"]} == set(changed)
    finally:
        box.stop()
