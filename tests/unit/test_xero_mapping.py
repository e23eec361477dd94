"""Xero payload mapping, checked against the response examples of Xero's OpenAPI spec.

Every Contact / Invoice / Payment / CreditNote / Overpayment / Prepayment
object that a response example of ``refdata/xero/xero_accounting.yaml`` lists
in its envelope (``{"Invoices": [...]}``) is mapped: each becomes a record,
``None`` (not a receivable: its type says so), or a quarantined payload whose
reason is listed and justified in :data:`EXPECTED_QUARANTINE`. The examples
are read with every YAML float as a ``Decimal`` (and timestamps left as the
strings JSON would carry), the way the connector parses Xero's JSON.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from functools import cache
from typing import Any

import pytest
import yaml

from connectors.base import (
    Contact,
    CreditNoteRecord,
    CustomerRecord,
    DocumentLine,
    DocumentStatus,
    Entity,
    InvoiceRecord,
    InvoiceStatus,
    PaymentApplication,
    PaymentRecord,
    Quarantined,
    Tombstone,
)
from connectors.xero.mapping import (
    COLLECTIONS,
    ENTITY_OF_COLLECTION,
    ID_FIELDS,
    NIL_GUID,
    MappingError,
    format_if_modified_since,
    map_contact,
    map_credit_note,
    map_invoice,
    map_list_response,
    map_object,
    map_overpayment,
    map_payment,
    map_prepayment,
    page_info,
    parse_xero_date,
    parse_xero_datetime,
    xero_version,
)
from tests.refdata import require_refdata

SPEC = require_refdata("xero", "xero_accounting.yaml")
CONN = "xero-test"

RECORD_TYPES: dict[str, type] = {
    "Contacts": CustomerRecord,
    "Invoices": InvoiceRecord,
    "Payments": PaymentRecord,
    "Overpayments": PaymentRecord,
    "Prepayments": PaymentRecord,
    "CreditNotes": CreditNoteRecord,
}

# The document types that are not receivables: these, and only these, map to None.
NOT_RECEIVABLE: dict[str, tuple[str, frozenset[str]]] = {
    "Invoices": ("Type", frozenset({"ACCPAY"})),
    "Payments": ("PaymentType", frozenset({"ACCPAYPAYMENT", "APCREDITPAYMENT", "APOVERPAYMENTPAYMENT"})),
    "Overpayments": ("Type", frozenset({"SPEND-OVERPAYMENT"})),
    "Prepayments": ("Type", frozenset({"SPEND-PREPAYMENT"})),
    "CreditNotes": ("Type", frozenset({"ACCPAYCREDIT"})),
}

EXPECTED_QUARANTINE: dict[tuple[str, str], str] = {
    # The createOrUpdateContacts example answers with the nil GUID as ContactID: the id Xero gives
    # an element it did not save. Storing it would merge every unsaved contact into one row.
    ("POST /Contacts 200", NIL_GUID): f"Contact {NIL_GUID}: ContactID is the nil GUID (an element Xero did not save)",
    # PUT /ContactGroups/{id}/Contacts answers with the group's members as bare {ContactID} stubs,
    # not contacts: no Name. The sync never reads that endpoint; a contact without a name is unusable.
    ("PUT /ContactGroups/{ContactGroupID}/Contacts 200", "a3675fc4-f8dd-4f03-ba5b-f1870566bcd7"): (
        "Contact a3675fc4-f8dd-4f03-ba5b-f1870566bcd7: Name missing"
    ),
    ("PUT /ContactGroups/{ContactGroupID}/Contacts 200", "4e1753b9-018a-4775-b6aa-1bc7871cfee3"): (
        "Contact 4e1753b9-018a-4775-b6aa-1bc7871cfee3: Name missing"
    ),
}


# --- reading the spec's examples ------------------------------------------------------


class _DecimalLoader(yaml.CSafeLoader if hasattr(yaml, "CSafeLoader") else yaml.SafeLoader):  # type: ignore[misc]
    """YAML as JSON would arrive: floats as Decimal, timestamps left as strings."""


_DecimalLoader.add_constructor("tag:yaml.org,2002:float", lambda loader, node: Decimal(loader.construct_scalar(node)))
_DecimalLoader.add_constructor("tag:yaml.org,2002:timestamp", lambda loader, node: loader.construct_scalar(node))


@cache
def spec() -> dict[str, Any]:
    with SPEC.open(encoding="utf-8") as handle:
        loaded = yaml.load(handle, Loader=_DecimalLoader)
    assert isinstance(loaded, dict)
    return loaded


def _example_value(value: object) -> object:
    """An example as a parsed body; the spec holds one example as JSON text."""
    if isinstance(value, str) and value.lstrip().startswith("{"):
        return json.loads(value, parse_float=Decimal)
    return value


def response_examples() -> Iterator[tuple[str, object]]:
    """``(where, body)`` for each ``application/json`` response example, and each ``components.examples`` entry."""
    for path, item in spec()["paths"].items():
        for method, operation in item.items():
            if not isinstance(operation, dict):
                continue
            for status, response in (operation.get("responses") or {}).items():
                content = ((response.get("content") or {}).get("application/json")) or {}
                where = f"{method.upper()} {path} {status}"
                if "example" in content:
                    yield where, _example_value(content["example"])
                for name, example in (content.get("examples") or {}).items():
                    if isinstance(example, dict) and "value" in example:
                        yield f"{where} {name}", _example_value(example["value"])
    for name, example in (spec().get("components", {}).get("examples") or {}).items():
        if isinstance(example, dict) and "value" in example:
            yield f"components.examples.{name}", _example_value(example["value"])


@cache
def spec_objects() -> tuple[tuple[str, str, Mapping[str, Any]], ...]:
    """``(where, collection, object)`` for every object listed in a response envelope."""
    found = []
    for where, body in response_examples():
        if not isinstance(body, dict):
            continue
        for collection in ID_FIELDS:
            for obj in body.get(collection) or ():
                found.append((where, collection, obj))
    return tuple(found)


def example(where: str) -> dict[str, Any]:
    bodies = [body for w, body in response_examples() if w == where]
    assert len(bodies) == 1, where
    assert isinstance(bodies[0], dict)
    return bodies[0]


def one(where: str, collection: str, ident: str) -> Mapping[str, Any]:
    matches = [o for w, c, o in spec_objects() if w == where and c == collection and o[ID_FIELDS[c]] == ident]
    assert len(matches) == 1, (where, ident)
    return matches[0]


def assert_no_float(value: object, where: str = "record") -> None:
    """No float anywhere in a record; every money field is exactly a Decimal."""
    assert not isinstance(value, float), where
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if f.name in {"amount", "total", "balance", "remaining", "unapplied", "unit_price", "currency_rate"}:
                assert item is None or type(item) is Decimal, f"{where}.{f.name}={item!r}"
            assert_no_float(item, f"{where}.{f.name}")
    elif isinstance(value, tuple | list):
        for i, item in enumerate(value):
            assert_no_float(item, f"{where}[{i}]")


def dec(value: object) -> Decimal:
    return Decimal(str(value))


# --- every object of the spec's examples --------------------------------------------------


def test_spec_examples_per_collection() -> None:
    counts = Counter(collection for _, collection, _ in spec_objects())
    assert counts == {
        "Contacts": 9,
        "Invoices": 7,
        "Payments": 6,
        "Overpayments": 6,
        "Prepayments": 2,
        "CreditNotes": 6,
    }
    outcomes = Counter(
        (collection, type(map_object(CONN, collection, obj)).__name__) for _, collection, obj in spec_objects()
    )
    assert outcomes == {
        ("Contacts", "CustomerRecord"): 6,
        ("Contacts", "Quarantined"): 3,
        ("Invoices", "InvoiceRecord"): 7,
        ("Payments", "PaymentRecord"): 5,
        ("Payments", "NoneType"): 1,  # an APCREDITPAYMENT (a supplier refund)
        ("Overpayments", "PaymentRecord"): 3,
        ("Overpayments", "NoneType"): 3,  # SPEND-OVERPAYMENT
        ("Prepayments", "PaymentRecord"): 2,
        ("CreditNotes", "CreditNoteRecord"): 2,
        ("CreditNotes", "NoneType"): 4,  # ACCPAYCREDIT (supplier credits)
    }


def test_spec_has_no_component_examples_but_is_walked() -> None:
    # The walk covers components.examples; this spec version keeps every example inline.
    assert not spec().get("components", {}).get("examples")
    assert sum(1 for _ in response_examples()) > 150


@pytest.mark.parametrize(
    ("where", "collection", "obj"),
    spec_objects(),
    ids=[f"{w} {c} {o.get(ID_FIELDS[c])}" for w, c, o in spec_objects()],
)
def test_every_spec_object_maps(where: str, collection: str, obj: Mapping[str, Any]) -> None:
    mapped = map_object(CONN, collection, obj)
    id_field = ID_FIELDS[collection]
    if mapped is None:
        field, payable = NOT_RECEIVABLE[collection]
        assert obj[field] in payable, f"{obj[field]} skipped"
        return
    if isinstance(mapped, Quarantined):
        assert EXPECTED_QUARANTINE.get((where, obj[id_field])) == mapped.reason
        assert mapped.entity is ENTITY_OF_COLLECTION[collection]
        assert mapped.payload is obj
        return
    assert (where, obj[id_field]) not in EXPECTED_QUARANTINE
    assert isinstance(mapped, RECORD_TYPES[collection])
    assert not isinstance(mapped, Quarantined | Tombstone)
    assert mapped.connection == CONN
    assert mapped.external_id == obj[id_field]
    assert_no_float(mapped)
    assert mapped.updated_at is not None and mapped.updated_at.utcoffset() == timedelta(0)
    assert mapped.version == obj["UpdatedDateUTC"].removeprefix("/Date(").split("+")[0].split(")")[0]
    if "UpdatedDateUTCString" in obj:
        # The /Date(ms)/ value and its ISO twin name the same second.
        assert mapped.updated_at.replace(microsecond=0) == parse_xero_datetime(obj["UpdatedDateUTCString"])
    if isinstance(mapped, CustomerRecord):
        assert mapped.name == obj["Name"]
        assert mapped.active is (obj.get("ContactStatus", "ACTIVE") == "ACTIVE")
        return
    assert mapped.currency == (obj["Invoice"] if collection == "Payments" else obj)["CurrencyCode"]
    assert mapped.currency_rate == (dec(obj["CurrencyRate"]) if "CurrencyRate" in obj else None)
    if isinstance(mapped, InvoiceRecord | CreditNoteRecord):
        assert mapped.customer_external_id == obj["Contact"]["ContactID"]
        assert mapped.issue_date == date.fromisoformat(obj["DateString"][:10])
        assert mapped.total == dec(obj["Total"])
        assert [line.amount for line in mapped.lines] == [dec(x["LineAmount"]) for x in obj["LineItems"]]
        assert sum((line.amount for line in mapped.lines), Decimal(0)) in (Decimal(0), dec(obj["SubTotal"]))
    if isinstance(mapped, InvoiceRecord):
        assert mapped.balance == dec(obj["AmountDue"])
        assert mapped.number == obj["InvoiceNumber"]
        assert mapped.due_date == date.fromisoformat(obj["DueDateString"][:10])
        assert mapped.memo == (obj["Reference"] or None)
    if isinstance(mapped, CreditNoteRecord):
        assert mapped.remaining == dec(obj["RemainingCredit"])
    if isinstance(mapped, PaymentRecord):
        assert mapped.payment_date == parse_xero_date(obj["Date"])
        if collection == "Payments":
            assert mapped.amount == dec(obj["Amount"]) and mapped.unapplied == 0 and mapped.kind == "payment"
            assert mapped.customer_external_id == obj["Invoice"]["Contact"]["ContactID"]
            assert [a.target_external_id for a in mapped.applications] == [obj["Invoice"]["InvoiceID"]]
        else:
            assert mapped.amount == dec(obj["Total"]) and mapped.unapplied == dec(obj["RemainingCredit"])
            assert mapped.kind == collection.removesuffix("s").lower()
            assert mapped.customer_external_id == obj["Contact"]["ContactID"]
            assert [a.amount for a in mapped.applications] == [dec(x["Amount"]) for x in obj["Allocations"]]


def test_every_embedded_contact_maps() -> None:
    """Documents embed their contact; every embedded one that has a name maps too."""
    embedded: list[Mapping[str, Any]] = []

    def walk(value: object, top: bool) -> None:
        if isinstance(value, dict):
            for key, child in value.items():
                if key == "Contact" and isinstance(child, dict) and not top:
                    embedded.append(child)
                walk(child, False)
        elif isinstance(value, list):
            for child in value:
                walk(child, False)

    for _, body in response_examples():
        walk(body, True)
    named = [c for c in embedded if c.get("Name")]
    assert len(named) == 58
    for contact in named:
        record = map_contact(CONN, contact)
        assert record.external_id == contact["ContactID"] and record.name == contact["Name"]


# --- known values from the spec ---------------------------------------------------------------


def test_known_invoices_from_the_list_example() -> None:
    body = example("GET /Invoices 200")
    records, quarantined, count = map_list_response(CONN, "Invoices", body)
    assert (len(records), quarantined, count) == (3, [], 3)
    assert page_info(body) == (1, 1)
    by_number = {r.number: r for r in records if isinstance(r, InvoiceRecord)}

    inv3 = by_number["INV-0003"]
    assert inv3.external_id == "7ef31b20-de17-4312-8382-412f869b1510"
    assert inv3.total == Decimal("115.00") and type(inv3.total) is Decimal
    assert inv3.balance == Decimal("115.00")
    assert inv3.currency == "NZD" and inv3.currency_rate == Decimal("1.000000")
    assert inv3.status is InvoiceStatus.OPEN
    assert inv3.issue_date == date(2018, 11, 2) and inv3.due_date == date(2018, 11, 7)
    assert inv3.customer_external_id == "a3675fc4-f8dd-4f03-ba5b-f1870566bcd7"
    assert inv3.updated_at == datetime(2018, 11, 2, 16, 37, 28, 927000, tzinfo=UTC)
    assert inv3.version == "1541176648927"
    assert inv3.memo is None and inv3.terms is None

    assert by_number["INV-0001"].status is InvoiceStatus.VOID
    assert by_number["INV-0001"].balance == 0 and by_number["INV-0001"].total == Decimal("40.00")
    assert by_number["INV-0002"].status is InvoiceStatus.PAID
    assert by_number["INV-0002"].memo == "Red Fish, Blue Fish"


def test_known_invoice_with_lines_and_validation_errors() -> None:
    # Sent back with StatusAttributeString ERROR and "Invoice # must be unique.": a stored invoice, mapped.
    obj = one("GET /Invoices/{InvoiceID} 200", "Invoices", "a03ffcd2-5d91-4c7e-b483-318584e9e439")
    assert obj["ValidationErrors"] == [{"Message": "Invoice # must be unique."}]
    record = map_invoice(CONN, obj)
    assert isinstance(record, InvoiceRecord)
    assert record.status is InvoiceStatus.PAID
    assert record.total == Decimal("148062.76") and record.balance == 0
    assert record.lines == (
        DocumentLine(
            line_no=1,
            amount=Decimal("148062.76"),
            description="Guitars Fender Strat",
            quantity=Decimal("1.0000"),
            unit_price=Decimal("148062.76"),
            item_ref="123",
        ),
    )


def test_submitted_invoice_is_a_draft() -> None:
    record = map_invoice(
        CONN, one("POST /Invoices/{InvoiceID} 200", "Invoices", "4074292c-09b3-456d-84e7-add864c6c39b")
    )
    assert isinstance(record, InvoiceRecord)
    assert record.status is InvoiceStatus.DRAFT
    assert (record.total, record.balance) == (Decimal("575.00"), Decimal("575.00"))
    assert record.lines[0].amount == Decimal("500.00")  # LineAmountTypes Exclusive: tax is outside the lines


def test_known_contact() -> None:
    record = map_contact(CONN, one("GET /Contacts/{ContactID} 200", "Contacts", "8138a266-fb42-49b2-a104-014b7045753d"))
    assert record.name == "Acme Parts Co."
    assert record.contacts == (
        Contact(email="bk@krave.co", name="Blake Kohler"),
        Contact(email="sue.johnson@krave.com", name="Sue Johnson"),  # IncludeInEmails: true
    )
    assert record.phone == "+1 604 408-0914"
    assert record.currency == "USD"
    assert record.balance == Decimal("118.90")
    assert record.active is True and record.deleted is False
    assert record.updated_at == datetime(2019, 3, 1, 17, 2, 57, 193000, tzinfo=UTC)
    assert record.version == "1551459777193"


def test_contact_person_not_included_in_emails_is_left_out() -> None:
    invoice = one("GET /Invoices/{InvoiceID} 200", "Invoices", "a03ffcd2-5d91-4c7e-b483-318584e9e439")
    assert invoice["Contact"]["ContactPersons"][0]["IncludeInEmails"] is False
    record = map_contact(CONN, invoice["Contact"])
    assert record.contacts == (Contact(email="liam@rockstar.com", name="Liam Gallagher"),)
    assert record.phone == "212 222-2222"


def test_known_payments() -> None:
    records, quarantined, count = map_list_response(CONN, "Payments", example("GET /Payments 200"))
    assert (len(records), quarantined, count) == (2, [], 2)
    by_id = {r.external_id: r for r in records if isinstance(r, PaymentRecord)}

    paid = by_id["99ea7f6b-c513-4066-bc27-b7c65dcd76c2"]
    assert paid.amount == Decimal("46.00") and paid.unapplied == 0
    assert paid.status is DocumentStatus.APPLIED
    assert paid.applications == (
        PaymentApplication(Entity.INVOICE, "046d8a6d-1ae1-4b4d-9340-5601bdf41b87", Decimal("46.00")),
    )
    assert paid.customer_external_id == "a3675fc4-f8dd-4f03-ba5b-f1870566bcd7"
    assert paid.payment_date == date(2018, 11, 29)
    assert paid.currency == "NZD" and paid.currency_rate == Decimal("1.000000")
    assert paid.reference is None

    # ARCREDITPAYMENT: cash refunded out of credit note CN-0005; Xero puts the credit note in "Invoice".
    refund = by_id["6b037c9b-2e5d-4905-84d3-eabfb3438242"]
    assert refund.applications == (
        PaymentApplication(Entity.CREDIT_NOTE, "249f15fa-f2a7-4acc-8769-0984103f2225", Decimal("2.00")),
    )
    assert refund.reference == "Too much"
    credit = map_credit_note(CONN, one("GET /CreditNotes 200", "CreditNotes", "249f15fa-f2a7-4acc-8769-0984103f2225"))
    assert isinstance(credit, CreditNoteRecord)
    assert [p["PaymentID"] for p in one("GET /CreditNotes 200", "CreditNotes", credit.external_id)["Payments"]] == [
        refund.external_id
    ]
    # Total 34.50 less the 2.00 refund leaves 32.50 of credit.
    assert (credit.total, credit.remaining) == (Decimal("34.50"), Decimal("32.50"))
    assert credit.status is DocumentStatus.OPEN and credit.number == "CN-0005"


def test_payment_with_validation_errors_still_maps() -> None:
    obj = one("PUT /Payments 200", "Payments", "61ed71fc-01bf-4eb8-8419-8a18789ff45f")
    assert obj["HasValidationErrors"] is True
    record = map_payment(CONN, obj)
    assert isinstance(record, PaymentRecord)
    assert record.amount == Decimal("1.00")
    assert record.applications[0].target_external_id == "c7c37b83-ac95-45ea-88ba-8ad83a5f22fe"


def test_supplier_payment_is_skipped() -> None:
    obj = one("POST /Payments/{PaymentID} 200", "Payments", "c94c996b-1ab3-4ff3-ad19-1cdc77f30817")
    assert (obj["PaymentType"], obj["Status"]) == ("APCREDITPAYMENT", "DELETED")
    assert map_payment(CONN, obj) is None
    assert map_object(CONN, "Payments", obj) is None


def test_known_overpayments() -> None:
    records, quarantined, count = map_list_response(CONN, "Overpayments", example("GET /Overpayments 200"))
    assert (len(records), quarantined, count) == (3, [], 5)
    first = records[0]
    assert isinstance(first, PaymentRecord)
    assert first.external_id == "2a8bda49-8908-473b-8bcf-1f90990460eb"
    assert (first.kind, first.amount, first.unapplied) == ("overpayment", Decimal("20.00"), Decimal("20.00"))
    assert first.status is DocumentStatus.OPEN and first.applications == ()
    assert first.currency_rate is None  # the list example leaves CurrencyRate out
    assert first.customer_external_id == "430fa14a-f945-44d3-9f97-5df5e28441b8"


def test_known_prepayment_with_an_allocation() -> None:
    record = map_prepayment(
        CONN, one("GET /Prepayments/{PrepaymentID} 200", "Prepayments", "ce0cddef-cf5a-4e59-b638-f225679115a7")
    )
    assert isinstance(record, PaymentRecord)
    assert record.kind == "prepayment"
    assert (record.amount, record.unapplied) == (Decimal("3450.00"), Decimal("3449.00"))
    assert record.applications == (
        PaymentApplication(Entity.INVOICE, "c7c37b83-ac95-45ea-88ba-8ad83a5f22fe", Decimal("1.00")),
    )
    assert record.reference == "INV-0011" and record.status is DocumentStatus.OPEN
    before = map_prepayment(CONN, one("GET /Prepayments 200", "Prepayments", record.external_id))
    assert isinstance(before, PaymentRecord)
    assert before.version is not None and record.version is not None and before.version < record.version


# --- hand-written edge cases ----------------------------------------------------------------


def invoice(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "Type": "ACCREC",
        "InvoiceID": "243f6a88-85a3-08d3-1319-8a2e03707344",
        "InvoiceNumber": "INV-9",
        "Contact": {"ContactID": "c-1", "Name": "Ada"},
        "Date": "/Date(1518134400000+0000)/",
        "DueDate": "/Date(1520553600000+0000)/",
        "Status": "AUTHORISED",
        "LineItems": [
            {
                "Description": "Work",
                "Quantity": Decimal("1"),
                "UnitAmount": Decimal("100"),
                "LineAmount": Decimal("100"),
            }
        ],
        "SubTotal": Decimal("100"),
        "Total": Decimal("100.00"),
        "AmountDue": Decimal("100.00"),
        "AmountPaid": Decimal("0"),
        "AmountCredited": Decimal("0"),
        "CurrencyCode": "GBP",
        "CurrencyRate": Decimal("1.2345"),
        "UpdatedDateUTC": "/Date(1573755038314+0000)/",
    }
    base.update(changes)
    return base


def test_bills_are_ignored_not_quarantined() -> None:
    bill = invoice(Type="ACCPAY")
    assert map_invoice(CONN, bill) is None
    assert map_list_response(CONN, "Invoices", {"Invoices": [bill, invoice()]})[1:] == ([], 2)


@pytest.mark.parametrize(
    ("status", "due", "paid", "credited", "expected"),
    [
        ("DRAFT", "100", "0", "0", InvoiceStatus.DRAFT),
        ("SUBMITTED", "100", "0", "0", InvoiceStatus.DRAFT),
        ("AUTHORISED", "100", "0", "0", InvoiceStatus.OPEN),
        ("AUTHORISED", "60", "40", "0", InvoiceStatus.PARTIALLY_PAID),
        ("AUTHORISED", "90", "0", "10", InvoiceStatus.PARTIALLY_PAID),
        ("PAID", "0", "100", "0", InvoiceStatus.PAID),
        ("VOIDED", "0", "0", "0", InvoiceStatus.VOID),
        ("DELETED", "100", "0", "0", InvoiceStatus.DELETED),
    ],
)
def test_invoice_status(status: str, due: str, paid: str, credited: str, expected: InvoiceStatus) -> None:
    record = map_invoice(
        CONN, invoice(Status=status, AmountDue=Decimal(due), AmountPaid=Decimal(paid), AmountCredited=Decimal(credited))
    )
    assert isinstance(record, InvoiceRecord)
    assert record.status is expected
    assert record.balance == Decimal(due)


def test_invoice_fields() -> None:
    record = map_invoice(CONN, invoice(Reference="PO 7"))
    assert isinstance(record, InvoiceRecord)
    assert record.issue_date == date(2018, 2, 9) and record.due_date == date(2018, 3, 9)
    assert record.currency == "GBP" and record.currency_rate == Decimal("1.2345")
    assert record.memo == "PO 7" and record.customer_external_id == "c-1"
    assert record.version == "1573755038314"
    assert record.updated_at == datetime(2019, 11, 14, 18, 10, 38, 314000, tzinfo=UTC)


def test_amounts_stay_decimal_from_json_numbers() -> None:
    text = json.dumps(invoice(), default=str).replace('"100.00"', "1234.565").replace('"1.2345"', "0.1")
    body = json.loads(text, parse_float=Decimal)
    body["AmountDue"] = body["Total"]
    record = map_invoice(CONN, body)
    assert isinstance(record, InvoiceRecord)
    assert record.total == Decimal("1234.565") and type(record.total) is Decimal
    assert record.currency_rate == Decimal("0.1") and type(record.currency_rate) is Decimal
    assert_no_float(record)


def test_a_float_is_our_bug_not_a_bad_payload() -> None:
    with pytest.raises(TypeError, match="parse_float=Decimal"):
        map_invoice(CONN, invoice(Total=100.0))


INV = "Invoice 243f6a88-85a3-08d3-1319-8a2e03707344"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"Total": None}, f"{INV}: Total missing"),
        ({"AmountDue": None}, f"{INV}: AmountDue missing"),
        ({"Total": "lots"}, f"{INV}: Total is not a number ('lots')"),
        ({"Total": Decimal("-1")}, f"{INV}: Total is negative (-1)"),
        (
            {"AmountDue": Decimal("101")},
            f"{INV}: AmountDue 101 exceeds Total 100.00",
        ),
        (
            {"Status": "PENDING"},
            f"{INV}: Status 'PENDING' is not one Xero documents",
        ),
        ({"Status": None}, f"{INV}: Status missing"),
        ({"Type": None}, f"{INV}: Type missing"),
        ({"CurrencyCode": None}, f"{INV}: CurrencyCode missing"),
        (
            {"CurrencyCode": "pounds"},
            f"{INV}: CurrencyCode 'pounds' is not an ISO 4217 code",
        ),
        ({"CurrencyRate": Decimal("0")}, f"{INV}: CurrencyRate is 0"),
        ({"InvoiceID": None}, "Invoice: InvoiceID missing"),
        ({"InvoiceID": NIL_GUID}, f"Invoice {NIL_GUID}: InvoiceID is the nil GUID (an element Xero did not save)"),
        (
            {"Date": "yesterday"},
            f"{INV}: Date date 'yesterday' is neither /Date(ms)/ nor ISO 8601",
        ),
        (
            {"UpdatedDateUTC": "/Date(x)/"},
            f"{INV}: UpdatedDateUTC timestamp '/Date(x)/' is neither /Date(ms)/ nor ISO 8601",
        ),
        (
            {"LineItems": [{"UnitAmount": Decimal("5")}]},
            f"{INV}: LineItems 1: LineAmount missing",
        ),
        ({"LineItems": {"LineAmount": 1}}, f"{INV}: LineItems is not a list"),
    ],
)
def test_unusable_invoices_are_quarantined_with_the_field(changes: dict[str, Any], reason: str) -> None:
    obj = invoice(**changes)
    mapped = map_object(CONN, "Invoices", obj)
    assert isinstance(mapped, Quarantined)
    assert mapped.reason == reason
    assert mapped.entity is Entity.INVOICE and mapped.payload is obj
    assert mapped.external_id == (obj["InvoiceID"] if obj["InvoiceID"] else None)
    with pytest.raises(MappingError):
        map_invoice(CONN, obj)


def test_invoice_lines() -> None:
    record = map_invoice(
        CONN,
        invoice(
            LineItems=[
                {"Description": "Heading only"},
                {"ItemCode": "GB1", "Quantity": "2.0000", "UnitAmount": "20.00", "LineAmount": "40.00"},
                {"Description": "Discount", "LineAmount": "-5.00"},
            ]
        ),
    )
    assert isinstance(record, InvoiceRecord)
    assert record.lines == (
        DocumentLine(1, Decimal(0), "Heading only"),
        DocumentLine(2, Decimal("40.00"), None, Decimal("2.0000"), Decimal("20.00"), "GB1"),
        DocumentLine(3, Decimal("-5.00"), "Discount"),
    )


def test_date_string_twin_is_used_when_the_date_is_absent() -> None:
    record = map_invoice(CONN, invoice(Date=None, DateString="2019-02-08T00:00:00", DueDate=None))
    assert isinstance(record, InvoiceRecord)
    assert record.issue_date == date(2019, 2, 8) and record.due_date is None


# --- timestamps and dates ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/Date(1573755038314)/", datetime(2019, 11, 14, 18, 10, 38, 314000, tzinfo=UTC)),
        ("/Date(1573755038314+0000)/", datetime(2019, 11, 14, 18, 10, 38, 314000, tzinfo=UTC)),
        # The offset records the sender's zone; the milliseconds are UTC either way.
        ("/Date(1573755038314+1300)/", datetime(2019, 11, 14, 18, 10, 38, 314000, tzinfo=UTC)),
        ("/Date(0)/", datetime(1970, 1, 1, tzinfo=UTC)),
        ("2019-11-14T18:10:38", datetime(2019, 11, 14, 18, 10, 38, tzinfo=UTC)),
        ("2020-03-18T21:20:07.7179250", datetime(2020, 3, 18, 21, 20, 7, 717925, tzinfo=UTC)),
        ("2018-11-02T16:31:30Z", datetime(2018, 11, 2, 16, 31, 30, tzinfo=UTC)),
        ("2019-11-15T07:10:38+13:00", datetime(2019, 11, 14, 18, 10, 38, tzinfo=UTC)),
    ],
)
def test_parse_xero_datetime(value: str, expected: datetime) -> None:
    parsed = parse_xero_datetime(value)
    assert parsed == expected
    assert parsed.tzinfo is UTC


@pytest.mark.parametrize("value", ["", "yesterday", "/Date()/", "/Date(12a)/", 1573755038314, None])
def test_parse_xero_datetime_rejects(value: object) -> None:
    with pytest.raises(MappingError):
        parse_xero_datetime(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/Date(1518134400000+0000)/", date(2018, 2, 9)),
        ("/Date(1518134400000)/", date(2018, 2, 9)),
        ("/Date(1518134400000-0100)/", date(2018, 2, 8)),
        ("2019-02-08T00:00:00", date(2019, 2, 8)),
        ("2019-02-08", date(2019, 2, 8)),
    ],
)
def test_parse_xero_date(value: str, expected: date) -> None:
    assert parse_xero_date(value) == expected


@pytest.mark.parametrize("value", ["2019-02-30T00:00:00", "08/02/2019", "2019-02-08X", None])
def test_parse_xero_date_rejects(value: object) -> None:
    with pytest.raises(MappingError):
        parse_xero_date(value)


def test_format_if_modified_since() -> None:
    assert format_if_modified_since(datetime(2019, 11, 14, 18, 10, 38, 999999, tzinfo=UTC)) == ("2019-11-14T18:10:38Z")
    auckland = timezone(timedelta(hours=13))
    assert format_if_modified_since(datetime(2019, 11, 15, 7, 10, 38, tzinfo=auckland)) == ("2019-11-14T18:10:38Z")
    with pytest.raises(ValueError, match="timezone-aware"):
        format_if_modified_since(datetime(2019, 11, 14, 18, 10, 38))


def test_version_is_epoch_milliseconds() -> None:
    assert xero_version("/Date(1573755038314+0000)/") == "1573755038314"
    assert xero_version("2019-11-14T18:10:38.314") == "1573755038314"
    assert xero_version(None) is None


# --- contacts ---------------------------------------------------------------------------------


def contact(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "ContactID": "c-1",
        "ContactStatus": "ACTIVE",
        "Name": "Ada Ltd",
        "FirstName": "Ada",
        "LastName": "Lovelace",
        "EmailAddress": "ada@example.com",
        "ContactPersons": [
            {"FirstName": "Bo", "EmailAddress": "bo@example.com", "IncludeInEmails": True},
            {"FirstName": "Cy", "EmailAddress": "cy@example.com", "IncludeInEmails": False},
            {"FirstName": "Dup", "EmailAddress": "ADA@example.com", "IncludeInEmails": True},
            {"FirstName": "No at", "EmailAddress": "nobody", "IncludeInEmails": True},
        ],
        "Phones": [{"PhoneType": "DEFAULT", "PhoneNumber": "", "PhoneAreaCode": "", "PhoneCountryCode": ""}],
        "UpdatedDateUTC": "/Date(1551399321043+0000)/",
    }
    base.update(changes)
    return base


def test_contact_emails() -> None:
    record = map_contact(CONN, contact())
    assert record.contacts == (Contact("ada@example.com", "Ada Lovelace"), Contact("bo@example.com", "Bo"))
    assert record.phone is None and record.currency is None and record.balance is None
    no_email = map_contact(CONN, contact(EmailAddress="", ContactPersons=[]))
    assert no_email.contacts == ()


@pytest.mark.parametrize(
    ("status", "active", "deleted"),
    [("ACTIVE", True, False), ("ARCHIVED", False, False), ("GDPRREQUEST", False, True), (None, True, False)],
)
def test_contact_status(status: str | None, active: bool, deleted: bool) -> None:
    record = map_contact(CONN, contact(ContactStatus=status))
    assert (record.active, record.deleted) == (active, deleted)


def test_contact_with_a_null_phone_entry_still_maps() -> None:
    # Xero's own purchase order examples hold "- null" among a contact's Phones.
    record = map_contact(
        CONN, contact(Phones=[None, {"PhoneType": "DEFAULT", "PhoneNumber": "555", "PhoneAreaCode": "09"}])
    )
    assert record.phone == "09 555"


def test_unusable_contacts() -> None:
    assert map_object(CONN, "Contacts", contact(ContactStatus="GONE")) == Quarantined(
        CONN,
        Entity.CUSTOMER,
        "c-1",
        "Contact c-1: ContactStatus 'GONE' is not one Xero documents",
        contact(ContactStatus="GONE"),
    )
    missing_name = map_object(CONN, "Contacts", contact(Name=" "))
    assert isinstance(missing_name, Quarantined) and missing_name.reason == "Contact c-1: Name missing"
    not_an_object = map_object(CONN, "Contacts", ["x"])
    assert isinstance(not_an_object, Quarantined) and not_an_object.external_id is None


# --- payments, overpayments, prepayments, credit notes ------------------------------------------


def payment(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "PaymentID": "p-1",
        "PaymentType": "ACCRECPAYMENT",
        "Status": "AUTHORISED",
        "Date": "/Date(1552348800000+0000)/",
        "Amount": Decimal("25.00"),
        "CurrencyRate": Decimal("1.5"),
        "Invoice": {"InvoiceID": "i-1", "Type": "ACCREC", "CurrencyCode": "AUD", "Contact": {"ContactID": "c-1"}},
        "UpdatedDateUTC": "/Date(1552432238623+0000)/",
    }
    base.update(changes)
    return base


def test_payment_kinds() -> None:
    deleted = map_payment(CONN, payment(Status="DELETED"))
    assert isinstance(deleted, PaymentRecord) and deleted.status is DocumentStatus.DELETED
    assert map_payment(CONN, payment(PaymentType="ACCPAYPAYMENT")) is None
    no_type = map_payment(CONN, payment(Invoice={"InvoiceID": "i-1", "CurrencyCode": "AUD"}))
    assert isinstance(no_type, PaymentRecord)
    assert no_type.applications == (PaymentApplication(Entity.INVOICE, "i-1", Decimal("25.00")),)
    assert no_type.customer_external_id is None and no_type.currency_rate == Decimal("1.5")


def test_refund_out_of_an_overpayment() -> None:
    refund = map_payment(
        CONN,
        payment(
            PaymentType="AROVERPAYMENTPAYMENT",
            Invoice=None,
            Overpayment={"OverpaymentID": "o-1", "CurrencyCode": "NZD", "Contact": {"ContactID": "c-2"}},
        ),
    )
    assert isinstance(refund, PaymentRecord)
    assert refund.applications == (PaymentApplication(Entity.PAYMENT, "o-1", Decimal("25.00")),)
    assert (refund.currency, refund.customer_external_id, refund.kind) == ("NZD", "c-2", "payment")


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"PaymentType": None}, "Payment p-1: PaymentType missing"),
        ({"PaymentType": "GIFT"}, "Payment p-1: PaymentType 'GIFT' is not one Xero documents"),
        ({"Status": "VOIDED"}, "Payment p-1: Status 'VOIDED' is not one Xero documents"),
        ({"Amount": None}, "Payment p-1: Amount missing"),
        ({"Invoice": None}, "Payment p-1: Invoice missing (no Invoice, CreditNote, Overpayment or Prepayment)"),
        (
            {"Invoice": {"InvoiceID": "i-1", "Type": "ACCPAY", "CurrencyCode": "AUD"}},
            "Payment p-1: Invoice.Type 'ACCPAY' is not receivable but PaymentType is ACCRECPAYMENT",
        ),
        ({"Invoice": {"InvoiceID": "i-1", "Type": "ACCREC"}}, "Payment p-1: Invoice: CurrencyCode missing"),
        ({"Invoice": {"Type": "ACCREC", "CurrencyCode": "AUD"}}, "Payment p-1: Invoice.InvoiceID missing"),
    ],
)
def test_unusable_payments(changes: dict[str, Any], reason: str) -> None:
    mapped = map_object(CONN, "Payments", payment(**changes))
    assert isinstance(mapped, Quarantined) and mapped.reason == reason
    assert mapped.entity is Entity.PAYMENT


def overpayment(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "OverpaymentID": "o-1",
        "Type": "RECEIVE-OVERPAYMENT",
        "Status": "AUTHORISED",
        "Contact": {"ContactID": "c-1"},
        "Date": "/Date(1552435200000+0000)/",
        "Total": Decimal("50.00"),
        "RemainingCredit": Decimal("20.00"),
        "Allocations": [
            {"Amount": Decimal("30.00"), "Invoice": {"InvoiceID": "i-1"}},
            {"Amount": Decimal("5.00"), "Invoice": {"InvoiceID": "i-2"}, "IsDeleted": True},
        ],
        "CurrencyCode": "NZD",
        "UpdatedDateUTC": "/Date(1552428568250+0000)/",
    }
    base.update(changes)
    return base


def test_overpayment_states() -> None:
    record = map_overpayment(CONN, overpayment())
    assert isinstance(record, PaymentRecord)
    assert record.applications == (PaymentApplication(Entity.INVOICE, "i-1", Decimal("30.00")),)
    assert (record.status, record.unapplied, record.kind) == (DocumentStatus.OPEN, Decimal("20.00"), "overpayment")
    used_up = map_overpayment(CONN, overpayment(Status="PAID", RemainingCredit=Decimal("0")))
    assert isinstance(used_up, PaymentRecord) and used_up.status is DocumentStatus.APPLIED
    voided = map_overpayment(CONN, overpayment(Status="VOIDED"))
    assert isinstance(voided, PaymentRecord) and voided.status is DocumentStatus.VOID
    assert map_overpayment(CONN, overpayment(Type="SPEND-OVERPAYMENT")) is None
    assert map_object(
        CONN, "Overpayments", overpayment(Allocations=[{"Amount": "1.00", "Invoice": {}}])
    ) == Quarantined(
        CONN,
        Entity.PAYMENT,
        "o-1",
        "Overpayment o-1: Allocations 1: Invoice.InvoiceID missing",
        overpayment(Allocations=[{"Amount": "1.00", "Invoice": {}}]),
    )
    too_much = map_object(CONN, "Overpayments", overpayment(RemainingCredit=Decimal("60")))
    assert isinstance(too_much, Quarantined)
    assert too_much.reason == "Overpayment o-1: RemainingCredit 60 exceeds Total 50.00"


def test_prepayment_types() -> None:
    prepayment = overpayment(OverpaymentID=None, PrepaymentID="pp-1", Type="RECEIVE-PREPAYMENT", Allocations=[])
    record = map_prepayment(CONN, prepayment)
    assert isinstance(record, PaymentRecord) and record.kind == "prepayment" and record.external_id == "pp-1"
    assert map_prepayment(CONN, {**prepayment, "Type": "SPEND-PREPAYMENT"}) is None
    assert isinstance(map_object(CONN, "Prepayments", {**prepayment, "Type": "GIFT"}), Quarantined)


def credit_note(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "CreditNoteID": "cn-1",
        "CreditNoteNumber": "CN-1",
        "Type": "ACCRECCREDIT",
        "Status": "AUTHORISED",
        "Contact": {"ContactID": "c-1"},
        "Date": "/Date(1551744000000+0000)/",
        "Total": Decimal("34.50"),
        "RemainingCredit": Decimal("34.50"),
        "CurrencyCode": "NZD",
        "CurrencyRate": Decimal("1.000000"),
        "UpdatedDateUTC": "/Date(1551812346157+0000)/",
    }
    base.update(changes)
    return base


@pytest.mark.parametrize(
    ("status", "remaining", "expected"),
    [
        ("AUTHORISED", "34.50", DocumentStatus.OPEN),
        ("PAID", "0", DocumentStatus.APPLIED),
        ("VOIDED", "0", DocumentStatus.VOID),
        ("DELETED", "34.50", DocumentStatus.DELETED),
    ],
)
def test_credit_note_status(status: str, remaining: str, expected: DocumentStatus) -> None:
    record = map_credit_note(CONN, credit_note(Status=status, RemainingCredit=Decimal(remaining)))
    assert isinstance(record, CreditNoteRecord)
    assert record.status is expected and record.remaining == Decimal(remaining)
    assert record.currency_rate == Decimal("1.000000") and record.number == "CN-1"


def test_draft_and_supplier_credit_notes_are_skipped() -> None:
    assert map_credit_note(CONN, credit_note(Status="DRAFT")) is None
    assert map_credit_note(CONN, credit_note(Status="SUBMITTED")) is None
    assert map_credit_note(CONN, credit_note(Type="ACCPAYCREDIT")) is None
    missing = map_object(CONN, "CreditNotes", credit_note(RemainingCredit=None))
    assert isinstance(missing, Quarantined) and missing.reason == "CreditNote cn-1: RemainingCredit missing"


# --- envelopes ----------------------------------------------------------------------------------


def test_collections_and_ids() -> None:
    assert COLLECTIONS[Entity.PAYMENT] == ("Payments", "Overpayments", "Prepayments")
    assert {c for cs in COLLECTIONS.values() for c in cs} == set(ID_FIELDS)
    assert ID_FIELDS["CreditNotes"] == "CreditNoteID"


def test_list_response_shapes() -> None:
    assert map_list_response(CONN, "Invoices", {"Invoices": []}) == ([], [], 0)
    with pytest.raises(MappingError, match="Invoices missing"):
        map_list_response(CONN, "Invoices", {"Id": "x", "Status": "OK"})
    with pytest.raises(MappingError, match="not a list"):
        map_list_response(CONN, "Invoices", {"Invoices": {}})
    with pytest.raises(KeyError):
        map_list_response(CONN, "Bills", {"Bills": []})
    with pytest.raises(KeyError):
        map_object(CONN, "Bills", {})
    records, quarantined, count = map_list_response(CONN, "Contacts", {"Contacts": [contact(), contact(Name=None)]})
    assert (len(records), len(quarantined), count) == (1, 1, 2)


def test_page_info() -> None:
    assert page_info(example("GET /Payments 200")) == (1, 1)
    assert page_info(example("GET /Payments/{PaymentID} 200")) is None
    assert page_info({"pagination": {"page": 2, "pageSize": 100, "pageCount": 7, "itemCount": 650}}) == (2, 7)
    assert page_info({"pagination": {"page": "2", "pageCount": 7}}) is None
