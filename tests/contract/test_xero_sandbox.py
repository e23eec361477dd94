"""The Xero sandbox answers like Xero: checked against Xero's OpenAPI spec and recorded traffic.

A representative session runs over real HTTP (every collection listed paged
and filtered, ``If-Modified-Since``, single reads, payment / spend-money /
transfer batches with partial failures, 400 validation errors, allocations,
a payment deletion, the identity ``/connections``, token refreshes, and the
401 / 403 / 404 / 429 answers). Every exchange the sandbox recorded is then
validated with openapi-core against ``xero_accounting.yaml`` and
``xero-identity.yaml`` (``tests/xero_spec.py``), and its headers, envelopes
and token response are compared with the cassettes Xero's SDK team recorded
(``xero-python-cassettes``).

Where the spec and real traffic disagree, the test says so with the evidence.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import warnings
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, urlencode

import pytest
import requests

from connectors.xero.sandbox import _FIELDS, _SINGULAR, COLLECTIONS, Exchange, XeroSandbox, dumps, parse_ms_date
from connectors.xero.seed import seed_organisation
from tests.refdata import require_refdata
from tests.support import FakeClock
from tests.xero_spec import (
    KNOWN_DEVIATIONS,
    accounting_document,
    accounting_spec,
    exchange_errors,
    identity_spec,
    schema_errors,
    validate_exchange,
    validate_exchanges,
)

CASSETTES = require_refdata("xero", "xero-python-cassettes")
START = datetime(2024, 5, 1, 17, 0, tzinfo=UTC)
TODAY = date(2024, 5, 1)
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
MS_DATE = re.compile(r"^/Date\(\d+\+0000\)/$")
ENVELOPE_TIME = re.compile(r"^/Date\(\d+\)/$")


def cassette(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(json.dumps(_yaml(CASSETTES / name)["interactions"][0]))
    return data


def _yaml(path: Any) -> dict[str, Any]:
    import yaml

    with open(path, encoding="utf-8") as handle:
        loaded: dict[str, Any] = yaml.safe_load(handle)
    return loaded


def recorded_headers(interaction: dict[str, Any]) -> dict[str, str]:
    return {k: v[0] if isinstance(v, list) else v for k, v in interaction["response"]["headers"].items()}


class Api:
    """A bearer-token session on one tenant of the sandbox."""

    def __init__(self, box: XeroSandbox, tenant: str, token: str) -> None:
        self.box = box
        self.session = requests.Session()
        self.session.headers.update(
            {"Authorization": f"Bearer {token}", "xero-tenant-id": tenant, "Accept": "application/json"}
        )

    def get(self, path: str, headers: dict[str, str] | None = None, **params: Any) -> requests.Response:
        return self.session.get(f"{self.box.api_base}/{path}", params=params or None, headers=headers, timeout=10)

    def write(self, method: str, path: str, body: Any, headers: dict[str, str] | None = None, **params: Any) -> Any:
        return self.session.request(
            method,
            f"{self.box.api_base}/{path}",
            data=dumps(body),
            params=params or None,
            headers={"Content-Type": "application/json", **(headers or {})},
            timeout=10,
        )


def load(response: requests.Response) -> Any:
    return json.loads(response.text, parse_float=Decimal)


@pytest.fixture(scope="module")
def session() -> Iterator[tuple[XeroSandbox, dict[str, requests.Response]]]:
    """Run the representative session once; yield the sandbox and the named responses."""
    clock = FakeClock(START)
    box = XeroSandbox(clock, per_minute=10_000, per_day=100_000)
    tenant = box.tenant_ids[0]
    seed_organisation(box, tenant, contacts=60, invoices=300, today=TODAY, seed=11)
    box.start()
    out: dict[str, requests.Response] = {}
    try:
        tokens = box.issue_tokens()
        # token refresh: the recorded request shape (form credentials), then HTTP Basic
        out["refresh_form"] = requests.post(
            box.token_url,
            data={
                "grant_type": "refresh_token",
                "refresh_token": tokens["refresh_token"],
                "client_id": box.client_id,
                "client_secret": box.client_secret,
            },
            timeout=10,
        )
        fresh = out["refresh_form"].json()
        out["refresh_basic"] = requests.post(
            box.token_url,
            data={"grant_type": "refresh_token", "refresh_token": fresh["refresh_token"]},
            auth=(box.client_id, box.client_secret),
            timeout=10,
        )
        out["refresh_bad"] = requests.post(
            box.token_url,
            data={"grant_type": "refresh_token", "refresh_token": "nope"},
            auth=(box.client_id, box.client_secret),
            timeout=10,
        )
        token = out["refresh_basic"].json()["access_token"]
        bearer = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        out["connections"] = requests.get(f"{box.identity_base}/connections", headers=bearer, timeout=10)
        out["Connections"] = requests.get(f"{box.identity_base}/Connections", headers=bearer, timeout=10)
        api = Api(box, tenant, token)

        for name in COLLECTIONS:
            out[f"{name}:page1"] = api.get(name, page=1, pageSize=25)
            out[f"{name}:page2"] = api.get(name, page=2, pageSize=25)
        out["Invoices:where"] = api.get(
            "Invoices",
            page=1,
            pageSize=50,
            where='Type=="ACCREC" && Status=="AUTHORISED" && AmountDue>0',
            order="DueDate DESC",
        )
        out["Invoices:statuses"] = api.get("Invoices", page=1, Statuses="PAID,VOIDED", unitdp=4)
        out["Invoices:unpaged"] = api.get("Invoices", where='Type=="ACCREC" AND Status=="DRAFT"')
        out["Invoices:since"] = api.get(
            "Invoices", headers={"If-Modified-Since": (START - timedelta(days=10)).isoformat()}, page=1
        )
        out["Invoices:ids"] = api.get("Invoices", IDs=",".join(box.ids(tenant, "Invoices")[:3]))
        out["Contacts:customers"] = api.get("Contacts", page=1, where="IsCustomer==true", order="Name")
        out["Contacts:archived"] = api.get("Contacts", page=1, includeArchived="true", pageSize=100)
        out["Payments:since"] = api.get(
            "Payments", headers={"If-Modified-Since": "2024-04-01T00:00:00Z"}, page=1, order="UpdatedDateUTC ASC"
        )
        out["CreditNotes:where"] = api.get("CreditNotes", page=1, where='Type=="ACCRECCREDIT"')
        out["Overpayments:where"] = api.get("Overpayments", page=1, where="RemainingCredit>0")
        out["Accounts:bank"] = api.get("Accounts", where='Type=="BANK"')
        out["Invoices:one"] = api.get(f"Invoices/{box.ids(tenant, 'Invoices')[0]}")
        out["Invoices:missing"] = api.get("Invoices/00000000-0000-0000-0000-000000000001")
        out["Invoices:bad-where"] = api.get("Invoices", page=1, where="Nonsense==1")

        open_invoices = [
            i
            for i in box.all(tenant, "Invoices")
            if i["Type"] == "ACCREC" and i["Status"] == "AUTHORISED" and Decimal(i["AmountDue"]) > 10
        ]
        paid = next(i for i in box.all(tenant, "Invoices") if i["Status"] == "PAID")
        payments = [
            {
                "Invoice": {"InvoiceID": open_invoices[0]["InvoiceID"]},
                "Account": {"Code": "090"},
                "Amount": 5,
                "Date": "2024-05-01",
            },
            {
                "Invoice": {"InvoiceID": open_invoices[1]["InvoiceID"]},
                "Account": {"Code": "999"},
                "Amount": 5,
                "Date": "2024-05-01",
            },
            {
                "Invoice": {"InvoiceID": paid["InvoiceID"]},
                "Account": {"Code": "090"},
                "Amount": 5,
                "Date": "2024-05-01",
            },
            {
                "Invoice": {"InvoiceID": open_invoices[2]["InvoiceID"]},
                "Account": {"AccountID": box.account_id(tenant, "Clearing")},
                "Amount": Decimal(open_invoices[2]["AmountDue"]) + 1,
                "Date": "2024-05-01",
                "Reference": "too much",
            },
        ]
        out["Payments:partial"] = api.write(
            "PUT", "Payments", {"Payments": payments}, {"Idempotency-Key": "batch-1"}, summarizeErrors="false"
        )
        out["Payments:replay"] = api.write(
            "PUT", "Payments", {"Payments": payments}, {"Idempotency-Key": "batch-1"}, summarizeErrors="false"
        )
        out["Payments:summarized"] = api.write("PUT", "Payments", {"Payments": payments[1:]})
        out["Payments:post-one"] = api.write(
            "POST",
            "Payments",
            {
                "Invoice": {"InvoiceID": open_invoices[3]["InvoiceID"]},
                "Account": {"Code": "091"},
                "Amount": 1,
                "Date": "2024-05-01",
            },
        )
        spend = [
            {
                "Type": "SPEND",
                "Contact": {"ContactID": open_invoices[0]["Contact"]["ContactID"]},
                "BankAccount": {"Code": "091"},
                "Date": "2024-05-01",
                "Reference": "Processing fees",
                "LineAmountTypes": "NoTax",
                "LineItems": [{"Description": "Card fees", "Quantity": 1, "UnitAmount": 2.95, "AccountCode": "404"}],
            },
            {
                "Type": "SPEND",
                "Contact": {"ContactID": open_invoices[0]["Contact"]["ContactID"]},
                "BankAccount": {"Code": "091"},
                "LineItems": [{"Description": "Card fees", "Quantity": 1, "UnitAmount": 1.00, "AccountCode": "000"}],
            },
        ]
        out["BankTransactions:partial"] = api.write(
            "PUT", "BankTransactions", {"BankTransactions": spend}, summarizeErrors="false"
        )
        transfers = [
            {
                "FromBankAccount": {"Code": "091"},
                "ToBankAccount": {"Code": "090"},
                "Amount": 120.5,
                "Reference": "Payout po_1",
            },
            {"FromBankAccount": {"Code": "091"}, "ToBankAccount": {"Code": "091"}, "Amount": 3},
        ]
        out["BankTransfers:partial"] = api.write(
            "PUT", "BankTransfers", {"BankTransfers": transfers}, summarizeErrors="false"
        )
        out["BankTransfers:summarized"] = api.write("PUT", "BankTransfers", {"BankTransfers": transfers[1:]})
        out["BankTransfers:list"] = api.get("BankTransfers")
        payment_id = load(out["Payments:partial"])["Payments"][0]["PaymentID"]
        out["Payments:delete"] = api.write("POST", f"Payments/{payment_id}", {"Status": "DELETED"})
        credit = next(
            c
            for c in box.all(tenant, "CreditNotes")
            if Decimal(c["RemainingCredit"]) > 1 and c["Status"] == "AUTHORISED"
        )
        same_customer = [
            i
            for i in open_invoices[4:]
            if i["Contact"]["ContactID"] == credit["Contact"]["ContactID"]
            and i["CurrencyCode"] == credit["CurrencyCode"]
        ]
        target = same_customer[0] if same_customer else None
        if target is None:
            target = box.put(
                tenant,
                "Invoices",
                {
                    "Type": "ACCREC",
                    "Contact": {"ContactID": credit["Contact"]["ContactID"]},
                    "CurrencyCode": credit["CurrencyCode"],
                    "Status": "AUTHORISED",
                    "LineItems": [{"Description": "x", "Quantity": 1, "UnitAmount": 50, "AccountCode": "200"}],
                },
            )
        out["CreditNotes:allocate"] = api.write(
            "PUT",
            f"CreditNotes/{credit['CreditNoteID']}/Allocations",
            {"Allocations": [{"Invoice": {"InvoiceID": target["InvoiceID"]}, "Amount": 1, "Date": "2024-05-01"}]},
        )

        _allocations_and_lookups(box, tenant, api, out)

        box.inject("expire_token")
        out["expired"] = api.get("Invoices", page=1)
        token = box.issue_tokens()["access_token"]
        api = Api(box, tenant, token)
        out["unknown-tenant"] = Api(box, "00000000-0000-0000-0000-000000000000", token).get("Invoices", page=1)
        box.inject("minute_limit")
        out["limited"] = api.get("Contacts", page=1)
        box.inject("day_limit")
        out["day-limited"] = api.get("Contacts", page=1)
        out["after-limit"] = api.get("Contacts", page=1)
        yield box, out
    finally:
        box.stop()
    assert box.server_errors == []


def _allocations_and_lookups(box: XeroSandbox, tenant: str, api: Api, out: dict[str, requests.Response]) -> None:
    """What write-back sends: allocations of every parent, lock-date refusals, lookups by reference."""
    for name in ("Overpayments", "Prepayments"):
        id_field = "OverpaymentID" if name == "Overpayments" else "PrepaymentID"
        cash = next(
            c for c in box.all(tenant, name) if c["Status"] == "AUTHORISED" and Decimal(c["RemainingCredit"]) > 2
        )
        target = box.put(
            tenant,
            "Invoices",
            {
                "Type": "ACCREC",
                "Contact": {"ContactID": cash["Contact"]["ContactID"]},
                "CurrencyCode": cash["CurrencyCode"],
                "Status": "AUTHORISED",
                "LineItems": [{"Description": "x", "Quantity": 1, "UnitAmount": 50, "AccountCode": "200"}],
            },
        )
        allocations = {
            "Allocations": [
                {"Invoice": {"InvoiceID": target["InvoiceID"]}, "Amount": 1, "Date": "2024-05-01"},
                {"Invoice": {"InvoiceID": target["InvoiceID"]}, "Amount": 100_000, "Date": "2024-05-01"},
            ]
        }
        path = f"{name}/{cash[id_field]}/Allocations"
        key = {"Idempotency-Key": f"allocate-{name}"}
        out[f"{name}:allocate"] = api.write("PUT", path, allocations, key, summarizeErrors="false")
        out[f"{name}:allocate-replay"] = api.write("PUT", path, allocations, key, summarizeErrors="false")
        out[f"{name}:one"] = api.get(f"{name}/{cash[id_field]}")
        out[f"{name}:target"] = api.get(f"Invoices/{target['InvoiceID']}")
    note = next(
        c for c in box.all(tenant, "CreditNotes") if c["Status"] == "AUTHORISED" and Decimal(c["RemainingCredit"]) > 2
    )
    out["CreditNotes:one"] = api.get(f"CreditNotes/{note['CreditNoteID']}")

    box.set_lock_dates(tenant, period_lock_date=date(2024, 4, 30))
    invoice = next(
        i
        for i in box.all(tenant, "Invoices")
        if i["Type"] == "ACCREC" and i["Status"] == "AUTHORISED" and Decimal(i["AmountDue"]) > 10
    )
    locked_payments = [
        {"Invoice": {"InvoiceID": invoice["InvoiceID"]}, "Account": {"Code": "091"}, "Amount": 1, "Date": day}
        for day in ("2024-04-30", "2024-05-01")
    ]
    out["Payments:locked"] = api.write("PUT", "Payments", {"Payments": locked_payments}, summarizeErrors="false")
    transfer = {"FromBankAccount": {"Code": "091"}, "ToBankAccount": {"Code": "090"}, "Amount": 2}
    out["BankTransfers:locked"] = api.write(
        "PUT", "BankTransfers", {"BankTransfers": [{**transfer, "Date": "2024-04-01", "Reference": "po_locked"}]}
    )
    out["BankTransfers:unlocked"] = api.write(
        "PUT", "BankTransfers", {"BankTransfers": [{**transfer, "Date": "2024-05-01", "Reference": "po_open"}]}
    )
    owed = box.put(
        tenant,
        "Invoices",
        {
            "Type": "ACCREC",
            "Contact": {"ContactID": note["Contact"]["ContactID"]},
            "CurrencyCode": note["CurrencyCode"],
            "Status": "AUTHORISED",
            "LineItems": [{"Description": "x", "Quantity": 1, "UnitAmount": 50, "AccountCode": "200"}],
        },
    )
    out["CreditNotes:allocate-locked"] = api.write(
        "PUT",
        f"CreditNotes/{note['CreditNoteID']}/Allocations",
        {"Allocations": [{"Invoice": {"InvoiceID": owed["InvoiceID"]}, "Amount": 1, "Date": "2024-04-30"}]},
        summarizeErrors="false",
    )
    box.set_lock_dates(tenant)

    either = (invoice["InvoiceID"], owed["InvoiceID"])  # the second has no payment
    out["Payments:by-invoice"] = api.get(
        "Payments", page=1, pageSize=1000, where=" || ".join(f'Invoice.InvoiceID==Guid("{i}")' for i in either)
    )
    out["BankTransactions:by-date"] = api.get(
        "BankTransactions", page=1, pageSize=1000, where='Type=="SPEND" && Date>=DateTime(2024,05,01)'
    )
    out["BankTransfers:by-reference"] = api.get(
        "BankTransfers", where='Reference=="po_open" || Reference=="po_locked"', includeDeleted="true"
    )


# --- every exchange against the spec ----------------------------------------------------------------


def test_every_exchange_of_the_session_matches_the_spec(session: tuple[XeroSandbox, dict[str, Any]]) -> None:
    box, _ = session
    exchanges = list(box.requests_and_responses)
    statuses = {exchange.status for exchange in exchanges}
    assert {200, 400, 401, 403, 404, 429} <= statuses, statuses
    checked = validate_exchanges(exchanges)
    assert checked == len(exchanges) >= 50
    api_paths = {exchange.url.split("?")[0].split("/api.xro/2.0/")[-1].split("/")[0] for exchange in exchanges}
    assert set(COLLECTIONS) <= api_paths


def test_the_validator_fails_on_a_broken_exchange(session: tuple[XeroSandbox, dict[str, Any]]) -> None:
    """The check can fail: spoil a recorded response and a request, one field at a time."""
    box, _ = session
    good = next(e for e in box.requests_and_responses if "/Invoices?" in e.url and e.status == 200)
    assert exchange_errors(*good) == []

    def spoiled(change: Any) -> Exchange:
        body = json.loads(good.response_body)
        change(body)
        return good._replace(response_body=json.dumps(body).encode())

    cases = {
        "AmountDue as text": lambda b: b["Invoices"][0].update(AmountDue="12.00"),
        "unknown Status": lambda b: b["Invoices"][0].update(Status="OPEN"),
        "Type outside the enum": lambda b: b["Invoices"][0].update(Type="INVOICE"),
        "InvoiceID not a uuid": lambda b: b["Invoices"][0].update(InvoiceID="12"),
        "page as text": lambda b: b["pagination"].update(page="1"),
        "LineItems not an array": lambda b: b["Invoices"][0].update(LineItems={}),
    }
    for label, change in cases.items():
        assert exchange_errors(*spoiled(change)), label
    no_tenant = {k: v for k, v in good.headers.items() if k.lower() != "xero-tenant-id"}
    assert any("xero-tenant-id" in e for e in exchange_errors(*good._replace(headers=no_tenant)))
    no_limits = {k: v for k, v in good.response_headers.items() if not k.startswith("X-MinLimit")}
    assert exchange_errors(*good._replace(response_headers=no_limits))
    with pytest.raises(AssertionError, match="AmountDue"):
        validate_exchange(*spoiled(cases["AmountDue as text"]))


def test_every_item_uses_only_spec_properties_or_keys_the_spec_examples_use(
    session: tuple[XeroSandbox, dict[str, Any]],
) -> None:
    """Strict check: an undeclared key must appear in Xero's own response examples."""
    box, _ = session
    example_keys = _example_keys(accounting_document())
    undeclared: dict[str, set[str]] = {}
    for exchange in box.requests_and_responses:
        if "/api.xro/2.0/" not in exchange.url or exchange.status != 200:
            continue
        body = json.loads(exchange.response_body)
        for name, schema in _SINGULAR.items():
            for item in body.get(name, []):
                for error in schema_errors(accounting_spec(), schema, item, strict=True):
                    if "Additional properties are not allowed" not in error.message:
                        continue
                    declared = set(error.schema.get("properties", {}))
                    for key in set(error.instance) - declared:
                        undeclared.setdefault(key, set()).add(schema)
    assert undeclared, "the strict check found nothing at all: is it running?"
    unexplained = {key: where for key, where in undeclared.items() if key not in example_keys}
    assert unexplained == {}
    # What the spec's examples show but the schemas omit (documented here, emitted by the sandbox):
    assert set(undeclared) <= {"DateString", "DueDateString", "ID", "ValidationErrors", "CreatedDateUTCString"}


def _example_keys(document: Any) -> set[str]:
    keys: set[str] = set()

    def collect(value: Any) -> None:
        if isinstance(value, dict):
            keys.update(str(k) for k in value)
            for inner in value.values():
                collect(inner)
        elif isinstance(value, list):
            for inner in value:
                collect(inner)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "example":
                    collect(json.loads(value) if isinstance(value, str) and value.strip()[:1] in "[{" else value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(document["paths"])
    return keys


# Example keys the sandbox does not emit, and why.
_NOT_EMITTED = {
    "Contacts": {
        "Balances": "only on a single-contact GET in Xero; the sandbox does not compute balances",
        "CompanyNumber": "optional; emitted when the contact has one",
        "TaxNumber": "optional; emitted when the contact has one",
        "SalesDefaultLineAmountType": "contact defaults are not modelled",
        "PurchasesDefaultLineAmountType": "contact defaults are not modelled",
        "TaxNumbeType": "a typo in the spec's own example (the schema says TaxNumberType)",
    },
    "Invoices": {"RepeatingInvoiceID": "only on invoices raised from a repeating template"},
    "Payments": {
        "BatchPayment": "batch payments are not modelled",
        "BatchPaymentID": "batch payments are not modelled",
    },
    "BankTransactions": {"BatchPayment": "batch payments are not modelled"},
    "Prepayments": {
        "InvoiceNumber": "set on prepayments raised from an invoice; seeded ones come from bank transactions"
    },
    "Accounts": {"Description": "optional; emitted when the account has one"},
}


def test_list_envelopes_and_item_keys_match_the_spec_examples(session: tuple[XeroSandbox, dict[str, Any]]) -> None:
    _, out = session
    document = accounting_document()
    for name in COLLECTIONS:
        example = document["paths"][f"/{name}"]["get"]["responses"]["200"]["content"]["application/json"]["example"]
        body = load(out[f"{name}:page1"])
        expected_envelope = ["Id", "Status", "ProviderName", "DateTimeUTC", "pagination", name]
        if name in ("Accounts", "BankTransfers"):  # no page parameter in the spec
            expected_envelope.remove("pagination")
        assert list(body) == expected_envelope, name
        assert body["Status"] == "OK"
        assert ENVELOPE_TIME.match(body["DateTimeUTC"]), body["DateTimeUTC"]
        if "pagination" in body:
            assert (
                list(body["pagination"])
                == list(example["pagination"])
                == ["page", "pageSize", "pageCount", "itemCount"]
            )
        ours: set[str] = set()
        for response in (out[f"{name}:page1"], out[f"{name}:page2"], out.get("BankTransfers:list")):
            if response is not None and name in load(response):
                for item in load(response)[name]:
                    ours |= set(item)
        theirs = set().union(*(set(item) for item in example[name]))
        missing = theirs - ours - set(_NOT_EMITTED.get(name, {}))
        assert missing == set(), f"{name}: the spec's example has {sorted(missing)}"


def test_dates_have_the_spec_examples_formats(session: tuple[XeroSandbox, dict[str, Any]]) -> None:
    _, out = session
    invoices = load(out["Invoices:page1"])["Invoices"]
    for invoice in invoices:
        assert MS_DATE.match(invoice["UpdatedDateUTC"])
        assert MS_DATE.match(invoice["Date"])
        ms = parse_ms_date(invoice["Date"])
        assert ms is not None and ms % 86_400_000 == 0, "date-only fields are midnight UTC"
        day = (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)).date()
        assert invoice["DateString"] == f"{day.isoformat()}T00:00:00"
        stamp = parse_ms_date(invoice["UpdatedDateUTC"])
        assert stamp is not None
        moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=stamp)
        assert invoice["UpdatedDateUTCString"] == moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    raw = out["Invoices:page1"].content
    assert b'"\\/Date(' in raw, "Xero escapes the slashes of MS dates, as the recording shows"


def test_money_is_written_as_json_numbers_with_two_places(session: tuple[XeroSandbox, dict[str, Any]]) -> None:
    _, out = session
    raw = out["Invoices:page1"].text
    assert re.search(r'"AmountDue":\d+\.\d\d[,}]', raw)
    assert re.search(r'"CurrencyRate":\d+\.\d{6}[,}]', raw)
    assert re.search(r'"Quantity":\d+\.\d{4}[,}]', raw)
    assert '"AmountDue":"' not in raw
    assert re.search(r'"UnitAmount":\d+\.\d{4}[,}]', out["Invoices:statuses"].text), "unitdp=4"


def test_the_sandbox_where_fields_are_the_spec_schema_properties() -> None:
    schemas = accounting_document()["components"]["schemas"]
    for name, singular in _SINGULAR.items():
        assert _FIELDS[name] == set(schemas[singular]["properties"]), name


# --- writes: the spec's validation shapes -------------------------------------------------------------


def test_partial_batches_echo_every_item_with_the_spec_validation_shape(
    session: tuple[XeroSandbox, dict[str, Any]],
) -> None:
    _, out = session
    body = load(out["Payments:partial"])
    assert out["Payments:partial"].status_code == 200
    items = body["Payments"]
    assert [item.get("HasValidationErrors") for item in items] == [False, True, True, True]
    assert [item["StatusAttributeString"] for item in items] == ["OK", "ERROR", "ERROR", "ERROR"]
    spec_example = accounting_document()["paths"]["/Payments"]["put"]["responses"]["200"]["content"][
        "application/json"
    ]["example"]["Payments"][0]
    assert items[3]["ValidationErrors"] == spec_example["ValidationErrors"]
    assert set(spec_example["ValidationErrors"][0]) == {"Message"}
    assert all(UUID.match(item["PaymentID"]) for item in items[:1])
    assert "PaymentID" not in items[1]

    transactions = load(out["BankTransactions:partial"])["BankTransactions"]
    assert [t["StatusAttributeString"] for t in transactions] == ["OK", "ERROR"]
    assert transactions[1]["ValidationErrors"]
    transfers = load(out["BankTransfers:partial"])["BankTransfers"]
    assert transfers[0]["ValidationErrors"] == [] and transfers[1]["ValidationErrors"]


def test_summarized_errors_are_the_spec_error_shape(session: tuple[XeroSandbox, dict[str, Any]]) -> None:
    _, out = session
    for key in ("Payments:summarized", "BankTransfers:summarized"):
        response = out[key]
        assert response.status_code == 400
        body = load(response)
        assert list(body) == ["ErrorNumber", "Type", "Message", "Elements"]
        assert (body["ErrorNumber"], body["Type"], body["Message"]) == (
            10,
            "ValidationException",
            "A validation exception occurred",
        )
        assert schema_errors(accounting_spec(), "Error", json.loads(response.text)) == []
    example = accounting_document()["paths"]["/Accounts"]["put"]["responses"]["400"]["content"]["application/json"][
        "example"
    ]
    assert set(example) == set(load(out["Payments:summarized"]))


def test_query_errors_and_not_found_answer_as_xero(session: tuple[XeroSandbox, dict[str, Any]]) -> None:
    _, out = session
    bad = out["Invoices:bad-where"]
    assert bad.status_code == 400
    assert load(bad) == {
        "ErrorNumber": 16,
        "Type": "QueryParseException",
        "Message": "No property or field 'Nonsense' exists in type 'Invoice'",
    }
    missing = out["Invoices:missing"]
    assert missing.status_code == 404
    assert load(missing)["Status"] == 404


def test_allocations_of_every_parent_reduce_both_sides_and_refuse_with_xeros_message(
    session: tuple[XeroSandbox, dict[str, Any]],
) -> None:
    _, out = session
    for name, label in (("Overpayments", "Overpayment"), ("Prepayments", "Prepayment")):
        answer = out[f"{name}:allocate"]
        assert answer.status_code == 200, answer.text
        done, refused = load(answer)["Allocations"]
        assert UUID.match(done["AllocationID"]) and done["Amount"] == Decimal("1.00")
        assert refused["ValidationErrors"] == [
            {"Message": f"{label} cannot be allocated as amount is greater than amount outstanding"},
            {"Message": "The amount allocated is greater than the amount due on the invoice"},
        ]
        assert load(out[f"{name}:allocate-replay"]) == load(answer), "the Idempotency-Key replays the first answer"
        parent = load(out[f"{name}:one"])[name][0]
        assert [a["AllocationID"] for a in parent["Allocations"]][-1] == done["AllocationID"]
        target = load(out[f"{name}:target"])["Invoices"][0]
        assert (target["AmountDue"], target["AmountPaid"]) == (Decimal("49.00"), Decimal("1.00")), "applied once"


def test_lock_dates_refuse_writes_on_or_before_them_with_xeros_message(
    session: tuple[XeroSandbox, dict[str, Any]],
) -> None:
    """Xero's message (waynerobinson/xeroizer#92): ``The document date cannot be before the period lock date,
    currently set at 30-Nov-2018``; Xero refuses a document dated on the lock date too."""
    _, out = session
    message = "The document date cannot be before the period lock date, currently set at 30-Apr-2024"
    locked, open_ = load(out["Payments:locked"])["Payments"]
    assert locked["ValidationErrors"] == [{"Message": message}] and open_["StatusAttributeString"] == "OK"
    refused = out["BankTransfers:locked"]
    assert refused.status_code == 400
    assert load(refused)["Elements"][0]["ValidationErrors"] == [{"Message": message}]
    assert out["BankTransfers:unlocked"].status_code == 200
    [allocation] = load(out["CreditNotes:allocate-locked"])["Allocations"]
    assert allocation["ValidationErrors"] == [{"Message": message}]


def test_where_finds_what_write_back_looks_up(session: tuple[XeroSandbox, dict[str, Any]]) -> None:
    _, out = session
    _, open_ = load(out["Payments:locked"])["Payments"]
    found = load(out["Payments:by-invoice"])["Payments"]
    assert open_["PaymentID"] in {p["PaymentID"] for p in found}
    assert {p["Invoice"]["InvoiceID"] for p in found} == {open_["Invoice"]["InvoiceID"]}
    spend = load(out["BankTransactions:by-date"])["BankTransactions"]
    assert spend and {t["Type"] for t in spend} == {"SPEND"}
    assert all((parse_ms_date(t["Date"]) or 0) >= 1714521600000 for t in spend), "on or after 2024-05-01"
    transfers = load(out["BankTransfers:by-reference"])["BankTransfers"]
    assert [t["Reference"] for t in transfers] == ["po_open"], "the refused transfer was never stored"


# --- recorded headers ------------------------------------------------------------------------------


def test_api_response_headers_match_the_recorded_ones(session: tuple[XeroSandbox, dict[str, Any]]) -> None:
    _, out = session
    interaction = cassette("test_get_organisations.yaml")
    recorded = recorded_headers(interaction)
    ours = out["Invoices:page1"].headers
    transport_only = {"Connection", "Content-Length", "X-Client-TLS-ver", "X-N"}
    assert set(recorded) - transport_only <= set(ours)
    for name in ("Content-Type", "Cache-Control", "Pragma", "Server"):
        assert ours[name] == recorded[name], name
    for name in ("X-DayLimit-Remaining", "X-MinLimit-Remaining", "X-AppMinLimit-Remaining"):
        assert ours[name].isdigit(), name
    assert recorded["X-DayLimit-Remaining"].isdigit() and recorded["X-MinLimit-Remaining"].isdigit()
    assert UUID.match(ours["Xero-Correlation-Id"]) and UUID.match(recorded["Xero-Correlation-Id"])
    # In the recording the envelope Id is the correlation id; the sandbox does the same.
    recorded_body = json.loads(interaction["response"]["body"]["string"])
    assert recorded_body["Id"] == recorded["Xero-Correlation-Id"]
    assert load(out["Invoices:page1"])["Id"] == ours["Xero-Correlation-Id"]
    assert set(recorded_body) - {"Organisations"} == set(load(out["Invoices:page1"])) - {"Invoices", "pagination"}
    assert ENVELOPE_TIME.match(recorded_body["DateTimeUTC"])
    assert ours["Date"] == "Wed, 01 May 2024 17:00:00 GMT", "the Date header follows the injected clock"


def test_connections_match_the_recording_and_the_identity_spec(session: tuple[XeroSandbox, dict[str, Any]]) -> None:
    box, out = session
    interaction = cassette("test_get_connections.yaml")
    recorded = json.loads(interaction["response"]["body"]["string"])
    ours = out["connections"].json()
    assert out["Connections"].json() == ours, "Xero routes ignore case: the SDK calls /Connections"
    assert len(ours) == 1 and ours[0]["tenantId"] == box.tenant_ids[0]
    assert set(recorded[0]) <= set(ours[0])
    assert list(ours[0]) == [
        "id",
        "authEventId",
        "tenantId",
        "tenantType",
        "tenantName",
        "createdDateUtc",
        "updatedDateUtc",
    ]
    timestamp = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}$")
    assert timestamp.match(recorded[0]["createdDateUtc"]) and timestamp.match(ours[0]["createdDateUtc"])
    assert out["connections"].headers["Content-Type"] == recorded_headers(interaction)["Content-Type"]
    assert UUID.match(ours[0]["authEventId"])


def test_recorded_connections_break_the_identity_spec_date_time_format() -> None:
    """Spec vs. reality: ``format: date-time`` against Xero's offset-less seven-digit timestamps.

    Evidence: ``test_get_connections.yaml`` (recorded by Xero's SDK team) and the spec's own
    example both carry ``2020-03-18T21:20:07.7179250``. The raw spec rejects it; the helper
    tolerates exactly this (``KNOWN_DEVIATIONS``) and nothing else.
    """
    interaction = cassette("test_get_connections.yaml")
    body = json.loads(interaction["response"]["body"]["string"])
    raw_errors = [
        e for item in body for e in schema_errors(identity_spec(), "Connection", item) if e.validator == "format"
    ]
    assert {tuple(e.absolute_path) for e in raw_errors} == {("createdDateUtc",), ("updatedDateUtc",)}
    assert [d.name for d in KNOWN_DEVIATIONS] == ["connections-local-timestamps", "if-modified-since-forms"]
    headers = recorded_headers(interaction)
    validate_exchange(
        "GET",
        interaction["request"]["uri"],
        {"Authorization": "Bearer x", "Accept": "application/json"},
        b"",
        200,
        headers,
        interaction["response"]["body"]["string"],
    )
    spoiled = json.dumps([{**body[0], "createdDateUtc": "18/03/2020"}])
    assert exchange_errors("GET", "https://api.xero.com/Connections", {}, b"", 200, headers, spoiled)


def test_the_recorded_organisation_response_passes_the_validator() -> None:
    interaction = cassette("test_get_organisations.yaml")
    request_headers = {"Authorization": "Bearer x", "xero-tenant-id": "a46fcb6f-2773-40c4-a119-8aa08bca1e8e"}
    validate_exchange(
        "GET",
        interaction["request"]["uri"],
        request_headers,
        b"",
        200,
        recorded_headers(interaction),
        interaction["response"]["body"]["string"],
    )


# --- the token endpoint ------------------------------------------------------------------------------


def test_token_response_matches_the_recorded_refresh(session: tuple[XeroSandbox, dict[str, Any]]) -> None:
    _, out = session
    interaction = cassette("test_token_api_refresh_token.yaml")
    recorded = json.loads(interaction["response"]["body"]["string"])
    recorded_h = recorded_headers(interaction)
    for key in ("refresh_form", "refresh_basic"):
        response = out[key]
        assert response.status_code == 200
        body = response.json()
        assert list(body) == list(recorded), "same keys in the same order as the recording"
        assert body["expires_in"] == recorded["expires_in"] == 1800
        assert body["token_type"] == recorded["token_type"] == "Bearer"
        assert set(body["scope"].split()) >= {"offline_access"}
        assert response.headers["Content-Type"] == recorded_h["Content-Type"]
        assert response.headers["Cache-Control"] == recorded_h["Cache-Control"]
        assert re.match(r"^[0-9a-f]{32}$", response.headers["Xero-Correlation-Id"])
        assert re.match(r"^[0-9a-f]{32}$", recorded_h["Xero-Correlation-Id"])
        assert response.headers["Server"] == recorded_h["Server"] == "nginx"
        assert body["access_token"].count(".") == 2, "Xero access tokens are JWTs"
    assert out["refresh_bad"].status_code == 400 and out["refresh_bad"].json() == {"error": "invalid_grant"}


def test_the_recorded_refresh_request_is_accepted_as_sent(session: tuple[XeroSandbox, dict[str, Any]]) -> None:
    """Replay the recorded form body (credentials in the form, scope included) with live values."""
    box, _ = session
    interaction = cassette("test_token_api_refresh_token.yaml")
    form = {k: v[-1] for k, v in parse_qs(interaction["request"]["body"]).items()}
    tokens = box.issue_tokens(scope=form["scope"])
    form.update(refresh_token=tokens["refresh_token"], client_id=box.client_id, client_secret=box.client_secret)
    response = requests.post(
        box.token_url,
        data=urlencode(form),
        headers={k: v[0] for k, v in interaction["request"]["headers"].items()},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    assert response.json()["scope"] == form["scope"]
    assert "id_token" in response.json(), "openid was asked for"
    validate_exchange(
        "POST",
        box.token_url,
        dict(response.request.headers),
        form_body(form),
        200,
        dict(response.headers),
        response.content,
    )


def form_body(form: dict[str, str]) -> bytes:
    return urlencode(form).encode()


def test_token_endpoint_checks(session: tuple[XeroSandbox, dict[str, Any]]) -> None:
    box, _ = session
    basic = "Basic " + base64.b64encode(f"{box.client_id}:wrong".encode()).decode()
    response = requests.post(
        box.token_url,
        data={"grant_type": "refresh_token", "refresh_token": "x"},
        headers={"Authorization": basic},
        timeout=10,
    )
    assert response.status_code == 400 and response.json() == {"error": "invalid_client"}
    errors = exchange_errors(
        "POST", box.token_url, {}, b"grant_type=password", 400, dict(response.headers), response.content
    )
    assert any("grant_type" in e for e in errors) and any("client credentials" in e for e in errors)


# --- what the spec and real clients disagree on ------------------------------------------------------


def test_if_modified_since_forms_the_spec_refuses_but_xero_documents(
    session: tuple[XeroSandbox, dict[str, Any]],
) -> None:
    """Spec vs. reality: ``If-Modified-Since`` is ``format: date-time`` (RFC 3339) in the spec.

    Xero's documentation gives the form ``2009-11-12T00:00:00`` (UTC, no offset) and pyxero sends
    an RFC 1123 HTTP-date; the raw spec refuses both, the helper tolerates exactly these two
    (``KNOWN_DEVIATIONS``, with the evidence) and the sandbox answers all three the same way.
    """
    box, _ = session
    good = next(e for e in box.requests_and_responses if "If-Modified-Since" in e.headers and e.status == 200)
    assert exchange_errors(*good) == []
    api = Api(box, box.tenant_ids[0], box.issue_tokens()["access_token"])

    def count(value: str) -> int:
        answer = api.get("Invoices", headers={"If-Modified-Since": value}, page=1)
        assert answer.status_code == 200, answer.text
        found: int = load(answer)["pagination"]["itemCount"]
        return found

    rfc3339 = count("2024-04-22T17:00:00+00:00")
    assert 0 < rfc3339 < box.count(box.tenant_ids[0], "Invoices")
    for value in ("Mon, 22 Apr 2024 17:00:00 GMT", "2024-04-22T17:00:00"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw = [
                e
                for e in accounting_spec().iter_request_errors(_as_spec_request(good, value))
                if "If-Modified-Since" in str(e)
            ]
        assert raw, f"the spec itself accepts {value!r}: the deviation is no longer needed"
        assert exchange_errors(*good._replace(headers={**good.headers, "If-Modified-Since": value})) == []
        assert count(value) == rfc3339
    for value in ("yesterday", "22/04/2024", "2024-04-22"):
        flagged = exchange_errors(*good._replace(headers={**good.headers, "If-Modified-Since": value}))
        assert any("If-Modified-Since" in e for e in flagged), value


def _as_spec_request(exchange: Exchange, if_modified_since: str) -> Any:
    from tests.xero_spec import _Request

    path = "/api.xro/2.0/Invoices"
    query = exchange.url.split("?", 1)[1] if "?" in exchange.url else ""
    headers = {**exchange.headers, "If-Modified-Since": if_modified_since}
    return _Request("GET", "https://api.xero.com", path, query, headers, b"")


def test_spec_examples_send_what_the_spec_schema_refuses() -> None:
    """The spec's own PUT /BankTransfers request example fails the spec's request schema.

    It sends ``Amount: "50.00"`` (a string where the schema says number) and read-only Account
    properties (``Class``, ``ReportingCodeName``, ``UpdatedDateUTC``). The sandbox accepts
    numeric strings like Xero's example implies; a client should send numbers and only
    writable fields, which is what the validator enforces.
    """
    document = accounting_document()
    example = copy.deepcopy(
        document["paths"]["/BankTransfers"]["put"]["requestBody"]["content"]["application/json"]["example"]
    )
    errors = exchange_errors(
        "PUT",
        "https://api.xero.com/api.xro/2.0/BankTransfers",
        {"xero-tenant-id": "x", "Content-Type": "application/json"},
        json.dumps(example, default=str),
        200,
        {"Content-Type": "application/json; charset=utf-8", "Xero-Correlation-Id": "x"},
        json.dumps({"BankTransfers": []}),
    )
    assert any("'50.00' is not of type 'number'" in e for e in errors)
    assert any("read-only" in e for e in errors)


def test_spec_delete_payment_example_does_not_match_its_schema() -> None:
    """POST /Payments/{PaymentID}: the schema is ``PaymentDelete`` (``{"Status": "DELETED"}``, Status
    required) but the spec's example wraps it as ``{"Payments": [{"Status": "DELETED"}]}``.

    The sandbox accepts both; the validator (following the schema) accepts only the bare form,
    which is what xero-python's ``PaymentDelete`` model serialises to.
    """
    document = accounting_document()
    operation = document["paths"]["/Payments/{PaymentID}"]["post"]
    example = operation["requestBody"]["content"]["application/json"]["example"]
    assert example == {"Payments": [{"Status": "DELETED"}]}
    url = "https://api.xero.com/api.xro/2.0/Payments/7d0d7ab0-b8d5-4c32-9c32-7a7a9a1e4b6a"
    headers = {"xero-tenant-id": "x", "Content-Type": "application/json"}
    response = ({"Content-Type": "application/json; charset=utf-8", "Xero-Correlation-Id": "x"}, b'{"Payments":[]}')
    wrapped = exchange_errors("POST", url, headers, json.dumps(example), 200, *response)
    assert any("'Status' is a required property" in e for e in wrapped)
    bare = exchange_errors("POST", url, headers, json.dumps({"Status": "DELETED"}), 200, *response)
    assert not any("request" in e for e in bare), bare


def test_a_payment_deletion_gives_the_invoice_back_its_amount_and_respects_lock_dates() -> None:
    """``POST /Payments/{PaymentID}`` ``{"Status": "DELETED"}``: the invoice is owed the amount again and
    the bank account no longer holds it. Refused on or before a lock date with the lock-date message
    Xero gives any document dated there (the sandbox's assumption for a deletion: the payment's date is
    the document date); every exchange matches the spec, the 400 included."""
    box = XeroSandbox(FakeClock(START), rate_limits=False)
    with box:
        tenant = box.tenant_ids[0]
        contact = box.put(tenant, "Contacts", {"Name": "Acme Plumbing", "IsCustomer": True})["ContactID"]
        invoice = box.put(
            tenant,
            "Invoices",
            {
                "Type": "ACCREC",
                "Contact": {"ContactID": contact},
                "Status": "AUTHORISED",
                "Date": "2024-04-01",
                "LineItems": [
                    {"Description": "x", "Quantity": 1, "UnitAmount": Decimal("90.00"), "AccountCode": "200"}
                ],
            },
        )["InvoiceID"]
        api = Api(box, tenant, box.issue_tokens()["access_token"])
        paid = api.write(
            "PUT",
            "Payments",
            {
                "Payments": [
                    {"Invoice": {"InvoiceID": invoice}, "Account": {"Code": "091"}, "Amount": 90, "Date": "2024-04-30"}
                ]
            },
        )
        payment_id = load(paid)["Payments"][0]["PaymentID"]
        assert box.bank_balance(tenant, "091") == Decimal("90.00")
        box.set_lock_dates(tenant, period_lock_date=date(2024, 4, 30))

        refused = api.write("POST", f"Payments/{payment_id}", {"Status": "DELETED"})

        assert refused.status_code == 400
        [element] = load(refused)["Elements"]
        message = "The document date cannot be before the period lock date, currently set at 30-Apr-2024"
        assert element["ValidationErrors"] == [{"Message": message}]
        assert box.get(tenant, "Payments", payment_id)["Status"] == "AUTHORISED"  # type: ignore[index]
        assert box.get(tenant, "Invoices", invoice)["AmountDue"] == 0  # type: ignore[index]

        box.set_lock_dates(tenant)
        deleted = api.write("POST", f"Payments/{payment_id}", {"Status": "DELETED"})

        assert deleted.status_code == 200 and load(deleted)["Payments"][0]["Status"] == "DELETED"
        owed = box.get(tenant, "Invoices", invoice)
        assert owed is not None and (owed["AmountDue"], owed["AmountPaid"], owed["Status"]) == (90, 0, "AUTHORISED")
        assert box.bank_balance(tenant, "091") == 0
        listed = load(api.get("Payments", where=f'PaymentID==Guid("{payment_id}")'))["Payments"]
        assert [p["Status"] for p in listed] == ["DELETED"], "a deleted payment is still listed, as DELETED"
        again = api.write("POST", f"Payments/{payment_id}", {"Status": "DELETED"})
        assert again.status_code == 400
        exchanges = list(box.requests_and_responses)
    assert validate_exchanges(exchanges) == len(exchanges) == 5
