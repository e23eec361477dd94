"""The QuickBooks sandbox answers like QuickBooks Online.

Each response kind the connector relies on is produced by the sandbox over
real HTTP and compared with recorded QBO traffic (``qbo_api-vcr`` cassettes,
``quickbooks-ruby`` XML fixtures, Intuit's OAuth documents): the key structure
of the envelopes, fault codes and messages, what a void or an update changes.
Every entity the sandbox emits is checked, key by key and recursively, against
the types Intuit's XSDs declare.
"""

from __future__ import annotations

import copy
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests

from connectors.quickbooks.sandbox import _ALLOWED_PROPS, QuickBooksSandbox
from connectors.quickbooks.seed import seed_company
from tests.refdata import load_ruby_cassette, qbo_xml_to_dict, require_refdata
from tests.support import FakeClock

QBO = require_refdata("quickbooks")
VCR = QBO / "qbo_api-vcr"
RUBY = QBO / "quickbooks-ruby-fixtures"
XSD_DIR = QBO / "intuit-xsd"
XS = "{http://www.w3.org/2001/XMLSchema}"
NS = "{http://schema.intuit.com/finance/v3}"
WIRE_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d$")
RESPONSE_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d$")


# --- recordings -----------------------------------------------------------------------------------


def recorded(cassette: str, index: int = 0) -> tuple[int, dict[str, str], Any, dict[str, Any]]:
    """``(status, headers, body, request)`` of one recorded interaction."""
    interaction = load_ruby_cassette(VCR / cassette)[index]
    response = interaction["response"]
    headers = {k.lower(): v[0] if isinstance(v, list) else v for k, v in response["headers"].items()}
    body = json.loads(response["body"]["string"], parse_float=Decimal)
    return int(response["status"]["code"]), headers, body, interaction["request"]


def structure(value: Any) -> Any:
    """The key structure of JSON data: dicts keep their keys, lists merge their items."""
    if isinstance(value, dict):
        return {key: structure(inner) for key, inner in value.items()}
    if isinstance(value, list):
        merged: Any = None
        for item in value:
            merged = _merge(merged, structure(item))
        return [] if merged is None else [merged]
    return "."


def _merge(left: Any, right: Any) -> Any:
    if isinstance(left, dict) and isinstance(right, dict):
        out = dict(left)
        for key, value in right.items():
            out[key] = _merge(out.get(key), value)
        return out
    return right if left is None else left


def changed_paths(before: Any, after: Any, prefix: str = "") -> set[str]:
    """Dotted paths whose value differs between two JSON documents (added and removed included)."""
    if isinstance(before, dict) and isinstance(after, dict):
        paths: set[str] = set()
        for key in set(before) | set(after):
            paths |= changed_paths(before.get(key), after.get(key), f"{prefix}{key}.")
        return paths
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        paths = set()
        for index, (left, right) in enumerate(zip(before, after, strict=True)):
            paths |= changed_paths(left, right, f"{prefix}{index}.")
        return paths
    if before == after:
        return set()
    return {prefix.rstrip(".")}


def ruby_xml(name: str) -> ET.Element:
    return ET.parse(RUBY / name).getroot()


def xml_shape(node: ET.Element) -> tuple[str, tuple[str, ...], tuple[Any, ...]]:
    return (
        node.tag.replace(NS, ""),
        tuple(sorted(node.attrib)),
        tuple(xml_shape(child) for child in node),
    )


# --- Intuit's XSDs --------------------------------------------------------------------------------


class Xsd:
    """Element and attribute declarations of the complex types in Intuit's schemas."""

    def __init__(self, folder: Path) -> None:
        self.types: dict[str, ET.Element] = {}
        for path in sorted(folder.glob("*.xsd")):
            for node in ET.parse(path).getroot():
                if node.tag == XS + "complexType" and node.get("name"):
                    self.types[str(node.get("name"))] = node

    @staticmethod
    def _local(name: str | None) -> str:
        return (name or "").split(":")[-1]

    def fields(self, type_name: str) -> dict[str, str | None]:
        """Declared name -> complex type name (None for simple content and attributes)."""
        out: dict[str, str | None] = {}
        name: str | None = type_name
        while name in self.types:
            node = self.types[name]
            name = None
            for child in node.iter():
                if child.tag == XS + "element" and child.get("name"):
                    declared = self._local(child.get("type"))
                    out[str(child.get("name"))] = declared if declared in self.types else None
                elif child.tag == XS + "attribute" and child.get("name"):
                    out[str(child.get("name"))] = None
                elif child.tag == XS + "extension":
                    base = self._local(child.get("base"))
                    if base in self.types:
                        name = base
                    if any(parent.tag == XS + "simpleContent" for parent in node.iter()):
                        out["value"] = None
        return out

    def undeclared(self, value: Any, type_name: str, path: str) -> list[str]:
        """Every key of ``value`` (recursively) that ``type_name`` does not declare."""
        if isinstance(value, list):
            return [p for index, item in enumerate(value) for p in self.undeclared(item, type_name, f"{path}[{index}]")]
        if not isinstance(value, dict):
            return []
        declared = self.fields(type_name)
        problems: list[str] = []
        for key, inner in value.items():
            if key not in declared:
                problems.append(f"{path}.{key} is not declared by {type_name}")
                continue
            inner_type = declared[key]
            if inner_type is not None:
                problems += self.undeclared(inner, inner_type, f"{path}.{key}")
            elif isinstance(inner, dict) and inner:
                problems.append(f"{path}.{key} is an object, {type_name} declares a simple value")
        return problems


@pytest.fixture(scope="module")
def xsd() -> Xsd:
    return Xsd(XSD_DIR)


# --- the sandbox ----------------------------------------------------------------------------------


class Api:
    def __init__(self, box: QuickBooksSandbox) -> None:
        self.box = box
        self.session = requests.Session()
        self.session.headers.update({"Accept": "application/json"})
        self.token = box.issue_tokens()["access_token"]
        self.session.headers["Authorization"] = f"Bearer {self.token}"
        self.company = f"{box.api_base}/company/{box.realm_id}"

    def get(self, rest: str, **params: str) -> requests.Response:
        return self.session.get(f"{self.company}/{rest}", params=params or None, timeout=10)

    def post(self, rest: str, body: Any, **params: str) -> requests.Response:
        return self.session.post(
            f"{self.company}/{rest}",
            data=json.dumps(body, default=str),
            params=params or None,
            headers={"Content-Type": "application/json"},
            timeout=10,
        )

    def query(self, text: str) -> requests.Response:
        return self.session.post(
            f"{self.company}/query",
            data=text,
            headers={"Content-Type": "application/text"},
            timeout=10,
        )


def body_of(response: requests.Response) -> Any:
    return json.loads(response.text, parse_float=Decimal)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2020, 9, 29, 13, 0, tzinfo=UTC))


@pytest.fixture
def box(clock: FakeClock) -> Iterator[QuickBooksSandbox]:
    sandbox = QuickBooksSandbox(clock, rate_limits=False)
    sandbox.start()
    yield sandbox
    sandbox.stop()
    assert sandbox.server_errors == []


@pytest.fixture
def api(box: QuickBooksSandbox) -> Api:
    return Api(box)


AMY = {
    "DisplayName": "Amy's Bird Sanctuary",
    "CompanyName": "Amy's Bird Sanctuary",
    "GivenName": "Amy",
    "FamilyName": "Lauterbach",
    "PrimaryEmailAddr": {"Address": "Birds@Intuit.com"},
    "PrimaryPhone": {"FreeFormNumber": "(650) 555-3311"},
    "BillAddr": {"Line1": "4581 Finch St.", "City": "Bayshore", "CountrySubDivisionCode": "CA", "PostalCode": "94326"},
    "ShipAddr": {"Line1": "4581 Finch St.", "City": "Bayshore", "CountrySubDivisionCode": "CA", "PostalCode": "94326"},
}


# --- query, count ---------------------------------------------------------------------------------


def test_count_has_the_recorded_envelope(box: QuickBooksSandbox, api: Api) -> None:
    status, headers, want, request = recorded("all/customers.yml", 0)
    assert "SELECT%20COUNT(*)%20FROM%20Customer" in request["uri"]
    for index in range(3):
        box.put("Customer", {"DisplayName": f"Customer {index}"})
    box.put("Customer", {"DisplayName": "Gone Fishing", "Active": False})

    answer = api.get("query", query="SELECT COUNT(*) FROM Customer")

    got = body_of(answer)
    assert answer.status_code == status == 200
    assert answer.headers["Content-Type"] == headers["content-type"]
    assert structure(got) == structure(want)
    assert got["QueryResponse"]["totalCount"] == 3  # inactive customers are not counted, as in QBO
    assert RESPONSE_TIME.match(got["time"]) and RESPONSE_TIME.match(want["time"])


def test_select_has_the_recorded_envelope_and_customer_shape(box: QuickBooksSandbox, api: Api) -> None:
    _, headers, want, request = recorded("all/customers.yml", 1)
    assert "MAXRESULTS%201000%20STARTPOSITION%201" in request["uri"]
    box.put("Customer", AMY)
    box.put("Customer", {"DisplayName": "Araborn"})

    answer = api.get("query", query="SELECT * FROM Customer MAXRESULTS 1000 STARTPOSITION 1")

    got = body_of(answer)
    assert answer.headers["Content-Type"] == headers["content-type"]
    assert set(got) == set(want) == {"QueryResponse", "time"}
    assert set(got["QueryResponse"]) == set(want["QueryResponse"])
    recorded_customers = want["QueryResponse"]["Customer"]
    assert want["QueryResponse"]["maxResults"] == len(recorded_customers)
    assert got["QueryResponse"]["maxResults"] == len(got["QueryResponse"]["Customer"]) == 2
    # every key that all recorded customers carry is there, with the same sub-structure
    always = set.intersection(*(set(c) for c in recorded_customers))
    for customer in got["QueryResponse"]["Customer"]:
        assert always <= set(customer), always - set(customer)
        for key in always:
            assert structure(customer[key]) == structure(recorded_customers[0][key]), key
        assert WIRE_TIME.match(customer["MetaData"]["LastUpdatedTime"])
    # QBO lists customers by name
    names = [c["DisplayName"] for c in got["QueryResponse"]["Customer"]]
    assert names == ["Amy's Bird Sanctuary", "Araborn"]
    assert [c["DisplayName"] for c in recorded_customers[:2]] == names


def test_query_validation_error_as_ruby_fixture(api: Api) -> None:
    fixture = ruby_xml("query_validation_error.xml")
    fault = fixture.find(f"{NS}Fault")
    assert fault is not None
    error = fault.find(f"{NS}Error")
    assert error is not None

    answer = api.query("SELECT * FROM Invoice STARTPOSITION 0 MAXRESULTS 10")
    got = body_of(answer)["Fault"]

    assert answer.status_code == 400
    assert got["type"] == fault.get("type") == "ValidationFault"
    assert got["Error"][0]["code"] == error.get("code") == "4001"
    assert got["Error"][0]["Message"] == error.findtext(f"{NS}Message") == "Invalid query"
    assert got["Error"][0]["Detail"] == error.findtext(f"{NS}Detail")

    too_many = body_of(api.query("SELECT * FROM Invoice MAXRESULTS 1001"))["Fault"]["Error"][0]
    assert too_many["code"] == "4001"
    assert too_many["Detail"] == "QueryValidationError: value 1001 is too large. Max allowed value is 1000"


# --- CDC ------------------------------------------------------------------------------------------


def test_cdc_has_the_recorded_envelope(box: QuickBooksSandbox, api: Api, clock: FakeClock, xsd: Xsd) -> None:
    status, headers, want, request = recorded("cdc/basic.yml")
    assert "entities=estimate" in request["uri"]  # QBO takes entity names in any case
    customer = box.put("Customer", AMY)
    box.put(
        "Invoice",
        {"CustomerRef": {"value": customer["Id"]}, "Line": [{"Amount": 10, "DetailType": "SalesItemLineDetail"}]},
    )
    since = (clock() - timedelta(days=1)).isoformat()

    answer = api.get("cdc", entities="invoice", changedSince=since)

    got = body_of(answer)
    assert answer.status_code == status == 200
    assert answer.headers["Content-Type"] == headers["content-type"]
    assert set(got) == set(want) == {"CDCResponse", "time"}
    assert len(got["CDCResponse"]) == len(want["CDCResponse"]) == 1
    assert set(got["CDCResponse"][0]) == set(want["CDCResponse"][0]) == {"QueryResponse"}
    recorded_block = want["CDCResponse"][0]["QueryResponse"][0]
    block = got["CDCResponse"][0]["QueryResponse"][0]
    recorded_keys = {"<entity>" if k == "Estimate" else k for k in recorded_block}
    keys = {"<entity>" if k == "Invoice" else k for k in block}
    # the recording has startPosition/maxResults, the ruby fixtures maxResults/totalCount:
    # the sandbox gives both and nothing the XSD does not declare for QueryResponse
    assert recorded_keys <= keys
    assert (
        keys - recorded_keys
        <= set(xsd.fields("QueryResponse"))
        == {
            "Warnings",
            "Fault",
            "startPosition",
            "maxResults",
            "totalCount",
        }
    )
    assert block["maxResults"] == len(block["Invoice"]) == 1
    assert recorded_block["maxResults"] == len(recorded_block["Estimate"])


@pytest.mark.parametrize(
    ("fixture", "entity"),
    [
        ("invoice_changes.xml", "Invoice"),
        ("customer_changes.xml", "Customer"),
        ("payment_changes.xml", "Payment"),
        ("credit_memo_changes.xml", "CreditMemo"),
    ],
)
def test_cdc_deleted_stub_as_ruby_fixture(
    box: QuickBooksSandbox, api: Api, clock: FakeClock, fixture: str, entity: str
) -> None:
    root = ruby_xml(fixture)
    query = root.find(f"{NS}CDCResponse/{NS}QueryResponse")
    assert query is not None
    stub_node = query.find(f"{NS}{entity}")
    assert stub_node is not None
    stub = qbo_xml_to_dict(stub_node)
    customer = box.put("Customer", {"DisplayName": "Thrifty Meats"})
    ref = {"CustomerRef": {"value": customer["Id"]}}
    line = {"Amount": 40, "DetailType": "SalesItemLineDetail"}
    clock.advance(minutes=1)
    made = {
        "Invoice": lambda: box.put("Invoice", {**ref, "Line": [line]}),
        "Customer": lambda: box.put("Customer", {"DisplayName": "Neo Pets"}),
        "Payment": lambda: box.put("Payment", {**ref, "TotalAmt": 40}),
        "CreditMemo": lambda: box.put("CreditMemo", {**ref, "Line": [line]}),
    }[entity]()
    since = clock().isoformat()
    clock.advance(minutes=5)
    box.delete(entity, made["Id"])

    got = body_of(api.get("cdc", entities=entity, changedSince=since))
    block = got["CDCResponse"][0]["QueryResponse"][0]

    assert structure(block[entity][0]) == structure(stub)
    assert block[entity][0]["status"] == stub["status"] == "Deleted"
    assert block[entity][0]["domain"] == stub["domain"] == "QBO"
    assert block[entity][0]["Id"] == made["Id"]
    assert set(query.attrib) <= set(block)  # maxResults, totalCount
    assert block["maxResults"] == block["totalCount"] == 1 == int(query.attrib["totalCount"])


def test_cdc_with_no_changes_gives_an_empty_query_response(api: Api, clock: FakeClock) -> None:
    got = body_of(api.get("cdc", entities="Invoice,Payment", changedSince=clock().isoformat()))
    assert got["CDCResponse"] == [{"QueryResponse": [{}, {}]}]


# --- faults ---------------------------------------------------------------------------------------


def test_expired_token_401_is_the_recorded_body_and_header(box: QuickBooksSandbox, api: Api, clock: FakeClock) -> None:
    status, headers, want, request = recorded("error/401.yml")
    assert request["uri"].endswith("/customer/1")
    box.put("Customer", AMY)
    assert api.get("customer/1").status_code == 200
    clock.advance(seconds=3601)

    answer = api.get("customer/1")

    got = body_of(answer)
    assert answer.status_code == status == 401
    assert structure(got) == structure(want)  # the lower-case gateway envelope, every key
    assert answer.headers["WWW-Authenticate"] == headers["www-authenticate"]
    assert answer.headers["Content-Type"] == headers["content-type"] == "application/json"
    error, recorded_error = got["fault"]["error"][0], want["fault"]["error"][0]
    for key in ("message", "code", "element"):
        assert error[key] == recorded_error[key]
    assert got["fault"]["type"] == want["fault"]["type"] == "AUTHENTICATION"
    assert error["detail"].startswith("Token expired: ") and recorded_error["detail"].startswith("Token expired: ")
    assert isinstance(got["time"], int) and isinstance(want["time"], int)
    assert answer.headers["intuit_tid"]


def test_unknown_entity_in_a_query_is_the_recorded_400(api: Api) -> None:
    status, headers, want, request = recorded("error/400.yml", 1)
    assert "Custmoer" in request["uri"]

    answer = api.get("query", query="SELECT * FROM Custmoer")

    got = body_of(answer)
    assert answer.status_code == status == 400
    assert answer.headers["Content-Type"] == headers["content-type"]
    assert structure(got) == structure(want)
    assert got["Fault"]["Error"] == want["Fault"]["Error"]
    assert got["Fault"]["type"] == want["Fault"]["type"]


def test_duplicate_name_is_the_recorded_validation_fault(box: QuickBooksSandbox, api: Api) -> None:
    status, headers, want, request = recorded("error/validation.yml")
    sent = json.loads(request["body"]["string"])
    box.put("Customer", {"DisplayName": sent["DisplayName"]})

    answer = api.post("customer", sent)

    got = body_of(answer)
    assert answer.status_code == status == 400
    assert answer.headers["Content-Type"] == headers["content-type"]
    assert structure(got) == structure(want)
    assert got["Fault"] == want["Fault"]


def test_invalid_id_and_unknown_resource_are_the_recorded_faults(api: Api) -> None:
    _, _, unsupported, _ = recorded("error/500.yml", 0)
    _, _, invalid_id, _ = recorded("error/500.yml", 1)

    bad_id = body_of(api.get("customer/1.5"))
    assert bad_id["Fault"] == invalid_id["Fault"]

    no_resource = body_of(api.get("customer/1/5"))
    error, want = no_resource["Fault"]["Error"][0], unsupported["Fault"]["Error"][0]
    assert (error["Message"], error["code"]) == (want["Message"], want["code"]) == ("Unsupported Operation", "500")
    assert error["Detail"].startswith("Operation Could not find resource for relative : ")
    assert no_resource["Fault"]["type"] == unsupported["Fault"]["type"]


def test_unknown_property_is_the_recorded_2010(box: QuickBooksSandbox, api: Api) -> None:
    status, _, want, request = recorded("error/400_json.yml")

    answer = api.post("invoice", json.loads(request["body"]["string"]))

    got = body_of(answer)
    assert answer.status_code == status == 400
    error, recorded_error = got["Fault"]["Error"][0], want["Fault"]["Error"][0]
    assert (error["Message"], error["code"]) == (recorded_error["Message"], recorded_error["code"])
    prefix = 'Property Name:Unrecognized field "BadJson" (class com.intuit.schema.finance.v3.Invoice)'
    assert error["Detail"].startswith(prefix) and recorded_error["Detail"].startswith(prefix)
    assert structure(got) == structure(want)
    assert box.count("Invoice") == 0


@pytest.mark.parametrize(
    ("fault", "fixture", "status"),
    [("throttle_429", "too_many_requests_error.xml", 429), ("throttle_403", "throttle_exceeded_error.xml", 403)],
)
def test_throttle_is_the_xml_body_of_the_ruby_fixtures(
    api: Api, box: QuickBooksSandbox, fault: str, fixture: str, status: int
) -> None:
    want = ruby_xml(fixture)
    box.inject(fault)

    answer = api.get("query", query="SELECT * FROM Invoice")  # JSON asked for, XML given

    assert answer.status_code == status
    assert answer.headers["Content-Type"].startswith("text/xml")
    got = ET.fromstring(answer.content)
    assert xml_shape(got) == xml_shape(want)
    assert got.tag == want.tag == f"{NS}IntuitResponse"
    for path in (f"{NS}Fault/{NS}Error/{NS}Message", f"{NS}Fault/{NS}Error/{NS}Detail"):
        assert got.findtext(path) == want.findtext(path)
    assert got.find(f"{NS}Fault/{NS}Error").get("code") == "3001"  # type: ignore[union-attr]


def test_a_real_rate_limit_gives_the_429_fixture(clock: FakeClock) -> None:
    sandbox = QuickBooksSandbox(clock)
    sandbox.start()
    try:
        api = Api(sandbox)
        answers = [api.get("query", query="SELECT COUNT(*) FROM Invoice") for _ in range(11)]
    finally:
        sandbox.stop()
    assert [a.status_code for a in answers] == [200] * 10 + [429]
    assert xml_shape(ET.fromstring(answers[-1].content)) == xml_shape(ruby_xml("too_many_requests_error.xml"))


# --- writes ---------------------------------------------------------------------------------------


def test_created_invoice_has_the_recorded_keys(box: QuickBooksSandbox, api: Api) -> None:
    _, _, want, request = recorded("create/invoice.yml")
    customer = box.put("Customer", AMY)
    sent = json.loads(request["body"]["string"], parse_float=Decimal)
    sent["CustomerRef"] = {"value": customer["Id"]}

    got = body_of(api.post("invoice", sent))

    invoice, recorded_invoice = got["Invoice"], want["Invoice"]
    assert set(got) == set(want) == {"Invoice", "time"}
    # CustomField is the recording company's custom field definition
    assert set(invoice) == set(recorded_invoice) - {"CustomField"}
    for key in set(invoice) - {"CustomField"}:
        assert structure(invoice[key]) == structure(recorded_invoice[key]), key
    assert invoice["TotalAmt"] == invoice["Balance"] == recorded_invoice["TotalAmt"] == Decimal("100.0")
    assert invoice["CustomerRef"] == {"value": customer["Id"], "name": "Amy's Bird Sanctuary"}
    for inv in (invoice, recorded_invoice):  # no term: due in 30 days
        txn = datetime.fromisoformat(inv["TxnDate"])
        assert datetime.fromisoformat(inv["DueDate"]) - txn == timedelta(days=30)
    assert '"TotalAmt":100.00' in api.get(f"invoice/{invoice['Id']}").text  # money as a JSON number


def test_void_changes_what_qbo_changes(box: QuickBooksSandbox, api: Api, clock: FakeClock) -> None:
    _, _, recorded_before, _ = recorded("void/invoice.yml", 0)
    _, _, recorded_after, void_request = recorded("void/invoice.yml", 1)
    assert void_request["uri"].endswith("?operation=void")
    customer = box.put("Customer", AMY)
    created = body_of(
        api.post(
            "invoice",
            {"CustomerRef": {"value": customer["Id"]}, "Line": [{"Amount": 100, "DetailType": "SalesItemLineDetail"}]},
        )
    )
    clock.advance(minutes=3)
    before = body_of(api.get(f"invoice/{created['Invoice']['Id']}"))

    after = body_of(api.post("invoice", {"Id": created["Invoice"]["Id"], "SyncToken": "0"}, operation="void"))

    want = changed_paths(recorded_before["Invoice"], recorded_after["Invoice"])
    assert want == {
        "SyncToken",
        "MetaData.LastUpdatedTime",
        "PrivateNote",
        "Line.0.Amount",
        "Line.1.Amount",
        "TotalAmt",
        "Balance",
    }
    assert changed_paths(before["Invoice"], after["Invoice"]) == want
    assert set(after["Invoice"]) == set(recorded_after["Invoice"]) - {"CustomField"}
    for voided in (after["Invoice"], recorded_after["Invoice"]):
        assert voided["PrivateNote"] == "Voided"
        assert voided["TotalAmt"] == voided["Balance"] == 0
        assert voided["SyncToken"] == "1"


def test_delete_answers_like_the_recording_and_the_ruby_fixture(box: QuickBooksSandbox, api: Api) -> None:
    _, _, want, request = recorded("delete/invoice.yml", 1)
    assert request["uri"].endswith("?operation=delete")
    ruby = qbo_xml_to_dict(ruby_xml("invoice_delete_success_response.xml").find(f"{NS}Invoice"))  # type: ignore[arg-type]
    customer = box.put("Customer", AMY)
    invoice = box.put(
        "Invoice",
        {"CustomerRef": {"value": customer["Id"]}, "Line": [{"Amount": 100, "DetailType": "SalesItemLineDetail"}]},
    )

    got = body_of(api.post("invoice", {"Id": invoice["Id"], "SyncToken": "0"}, operation="delete"))

    assert structure(got) == structure(want)
    assert set(got["Invoice"]) == set(ruby) == {"domain", "status", "Id"}
    assert got["Invoice"] == {"domain": "QBO", "status": "Deleted", "Id": invoice["Id"]}
    assert want["Invoice"]["status"] == ruby["status"] == "Deleted"
    assert box.get("Invoice", invoice["Id"]) is None


def test_full_update_of_a_customer_changes_what_qbo_changes(box: QuickBooksSandbox, api: Api, clock: FakeClock) -> None:
    _, _, recorded_before, _ = recorded("update/customer.yml", 0)
    _, _, recorded_after, request = recorded("update/customer.yml", 1)
    sent = json.loads(request["body"]["string"])
    created = body_of(api.post("customer", {"DisplayName": recorded_before["Customer"]["DisplayName"]}))["Customer"]
    clock.advance(minutes=1)
    before = body_of(api.get(f"customer/{created['Id']}"))

    after = body_of(api.post("customer", {**sent, "Id": created["Id"], "SyncToken": created["SyncToken"]}))

    want = changed_paths(recorded_before["Customer"], recorded_after["Customer"])
    assert want == {
        "SyncToken",
        "MetaData.LastUpdatedTime",
        "DisplayName",
        "FullyQualifiedName",
        "PrintOnCheckName",
        "PrimaryPhone",
    }
    assert changed_paths(before["Customer"], after["Customer"]) == want
    # DefaultTaxCodeRef comes from the recording company's sales-tax setup
    assert set(before["Customer"]) == set(recorded_before["Customer"]) - {"DefaultTaxCodeRef"}


def test_batch_answers_like_the_recording(box: QuickBooksSandbox, api: Api) -> None:
    _, _, want, request = recorded("batch/basic.yml")
    sent = json.loads(request["body"]["string"])
    assert [item.get("operation", "query") for item in sent["BatchItemRequest"]] == [
        "create",
        "delete",
        "update",
        "query",
    ]
    customer = box.put("Customer", AMY)
    invoice = box.put(
        "Invoice",
        {"CustomerRef": {"value": customer["Id"]}, "Line": [{"Amount": 350, "DetailType": "SalesItemLineDetail"}]},
    )
    box.update("Invoice", invoice["Id"], {"PrivateNote": "edited elsewhere"})  # SyncToken 0 is now stale
    ours = {
        "BatchItemRequest": [
            {"bId": "bid1", "operation": "create", "Customer": {"DisplayName": "Boraski Family Store"}},
            {"bId": "bid2", "operation": "delete", "Invoice": {"Id": "129", "SyncToken": "0"}},
            {
                "bId": "bid3",
                "operation": "update",
                "Invoice": {"sparse": True, "Id": invoice["Id"], "SyncToken": "0", "PrivateNote": "A private note."},
            },
            {"bId": "bid4", "Query": "select * from Invoice where TotalAmt > '300.00'"},
        ]
    }

    got = body_of(api.post("batch", ours))

    def normal(item: dict[str, Any]) -> Any:
        return structure({("<entity>" if k in ("Vendor", "Customer") else k): v for k, v in item.items()})

    assert set(got) == set(want) == {"BatchItemResponse", "time"}
    items, recorded_items = got["BatchItemResponse"], want["BatchItemResponse"]
    assert [i["bId"] for i in items] == [i["bId"] for i in recorded_items]
    assert set(items[0]) == {"Customer", "bId"} and set(recorded_items[0]) == {"Vendor", "bId"}
    assert structure(items[1]) == structure(recorded_items[1])
    assert items[1]["Fault"] == recorded_items[1]["Fault"]  # 610 Object Not Found, word for word
    assert structure(items[2]) == structure(recorded_items[2])
    for key in ("Message", "code", "element"):
        assert items[2]["Fault"]["Error"][0][key] == recorded_items[2]["Fault"]["Error"][0][key]
    assert items[2]["Fault"]["Error"][0]["Detail"].startswith("Stale Object Error : ")
    assert set(items[3]) == set(recorded_items[3]) == {"QueryResponse", "bId"}
    assert {k for k in items[3]["QueryResponse"] if k != "Invoice"} == {
        k for k in recorded_items[3]["QueryResponse"] if k != "SalesReceipt"
    }
    assert [i["Id"] for i in items[3]["QueryResponse"]["Invoice"]] == [invoice["Id"]]
    assert normal(items[0])["<entity>"].keys() >= {"Id", "SyncToken", "MetaData", "DisplayName", "Active"}


# --- OAuth ----------------------------------------------------------------------------------------


def test_discovery_document_has_intuits_keys(box: QuickBooksSandbox) -> None:
    want = json.loads((QBO / "intuit-oauth2" / "discovery.json").read_text(encoding="utf-8-sig"))

    got = requests.get(box.discovery_url, timeout=10).json()

    assert set(got) == set(want)
    for key, value in want.items():
        if isinstance(value, list):
            assert got[key] == value, key
    assert got["token_endpoint"] == box.token_url
    assert got["authorization_endpoint"] == box.url + "/connect/oauth2"
    assert got["revocation_endpoint"] == box.url + "/oauth2/v1/tokens/revoke"


def test_token_response_has_intuits_keys(box: QuickBooksSandbox) -> None:
    want = json.loads((QBO / "intuit-oauth2" / "success_token_response.json").read_text(encoding="utf-8-sig"))
    pair = box.issue_tokens()

    answer = requests.post(
        box.token_url,
        data={"grant_type": "refresh_token", "refresh_token": pair["refresh_token"]},
        auth=(box.client_id, box.client_secret),
        timeout=10,
    )

    got = answer.json()
    assert answer.status_code == 200
    assert list(got) == [k for k in want if k != "id_token"]  # no id_token without the openid scope
    assert got["token_type"] == want["token_type"] == "bearer"
    assert got["expires_in"] == want["expires_in"] == 3600


# --- Intuit's XSDs --------------------------------------------------------------------------------


def test_every_emitted_key_is_declared_by_the_xsd(box: QuickBooksSandbox, api: Api, clock: FakeClock, xsd: Xsd) -> None:
    seed_company(box, customers=30, invoices=150, today=clock().date(), seed=3)
    problems: list[str] = []
    seen: dict[str, int] = {}
    for entity in ("Invoice", "Customer", "Payment", "CreditMemo"):
        objects = body_of(api.query(f"SELECT * FROM {entity} MAXRESULTS 1000"))["QueryResponse"][entity]
        assert objects
        seen[entity] = len(objects)
        for obj in objects:
            problems += xsd.undeclared(obj, entity, f"{entity}[{obj['Id']}]")
    changes = body_of(api.get("cdc", entities="Invoice", changedSince=(clock() - timedelta(days=29)).isoformat()))
    for obj in changes["CDCResponse"][0]["QueryResponse"][0]["Invoice"]:
        problems += xsd.undeclared(obj, "Invoice", f"cdc Invoice[{obj['Id']}]")
    assert any(o.get("status") == "Deleted" for o in changes["CDCResponse"][0]["QueryResponse"][0]["Invoice"])
    fault = body_of(api.query("SELECT * FROM Nothing"))["Fault"]
    problems += xsd.undeclared(fault, "Fault", "Fault")
    assert problems == []
    assert seen["Customer"] == 30 - 2  # inactive ones are not listed without an Active filter


def test_writable_properties_are_exactly_the_xsds(xsd: Xsd) -> None:
    for entity, allowed in _ALLOWED_PROPS.items():
        assert allowed == set(xsd.fields(entity)), entity


def test_the_checker_finds_an_undeclared_key(xsd: Xsd) -> None:
    invoice = {"Id": "1", "Line": [{"Amount": 1, "SalesItemLineDetail": {"ItemRef": {"value": "1"}, "Bogus": 1}}]}
    assert xsd.undeclared(invoice, "Invoice", "Invoice") == [
        "Invoice.Line[0].SalesItemLineDetail.Bogus is not declared by SalesItemLineDetail"
    ]
    assert xsd.undeclared({"BalanceDue": 1}, "Invoice", "x") == ["x.BalanceDue is not declared by Invoice"]
    assert xsd.undeclared(copy.deepcopy({"CustomerRef": {"value": "1", "nom": "x"}}), "Invoice", "x") == [
        "x.CustomerRef.nom is not declared by ReferenceType"
    ]
