"""QuickBooks payload mapping, checked against recorded QuickBooks traffic.

Every Customer / Invoice / Payment / CreditMemo object in every recorded JSON
response of ``refdata/quickbooks/qbo_api-vcr`` is mapped; the recordings hold
no JSON payment or credit memo, so those are also read from the XML fixtures
of ``quickbooks-ruby-fixtures`` (converted to QuickBooks' JSON shape), and from
hand-written edge payloads.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from connectors.base import (
    Contact,
    CreditNoteRecord,
    CustomerRecord,
    DocumentStatus,
    Entity,
    InvoiceRecord,
    InvoiceStatus,
    PaymentApplication,
    PaymentRecord,
    Quarantined,
    Record,
    Tombstone,
)
from connectors.quickbooks.mapping import (
    ENTITIES_BY_NAME,
    ENTITY_NAMES,
    MappingError,
    format_qbo_datetime,
    map_cdc_response,
    map_credit_memo,
    map_customer,
    map_invoice,
    map_object,
    map_payment,
    map_query_response,
    map_tombstone,
    parse_qbo_datetime,
)
from tests.refdata import (
    iter_entities,
    iter_json_bodies,
    load_ruby_cassette,
    qbo_xml_entities,
    require_refdata,
)

QBO = require_refdata("quickbooks")
VCR = QBO / "qbo_api-vcr"
XML = QBO / "quickbooks-ruby-fixtures"
CASSETTES = sorted(VCR.rglob("*.yml"))
CONN = "qbo-test"
NAMES = tuple(ENTITY_NAMES.values())
PACIFIC_DST = timezone(timedelta(hours=-7))

EXPECTED_TYPES: dict[Entity, type] = {
    Entity.CUSTOMER: CustomerRecord,
    Entity.INVOICE: InvoiceRecord,
    Entity.PAYMENT: PaymentRecord,
    Entity.CREDIT_NOTE: CreditNoteRecord,
}


def body_of(cassette: str, index: int) -> Any:
    interaction = load_ruby_cassette(VCR / cassette)[index]
    return json.loads(interaction["response"]["body"]["string"], parse_float=Decimal)


def recorded_objects() -> list[tuple[str, int, str, Any]]:
    """``(cassette, interaction, entity name, object)`` for every recorded entity object."""
    found = []
    for path, index, body in iter_json_bodies(CASSETTES):
        for name, obj in iter_entities(body, NAMES):
            found.append((str(path.relative_to(VCR)), index, name, obj))
    return found


def assert_no_float(value: object, where: str = "record") -> None:
    """No float anywhere in a record; every money field is exactly a Decimal."""
    assert not isinstance(value, float), where
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if f.name in {"amount", "total", "balance", "remaining", "unapplied", "unit_price"}:
                assert item is None or type(item) is Decimal, f"{where}.{f.name}={item!r}"
            assert_no_float(item, f"{where}.{f.name}")
    elif isinstance(value, tuple | list):
        for i, item in enumerate(value):
            assert_no_float(item, f"{where}[{i}]")


# --- every recorded object ------------------------------------------------------------


def test_refdata_has_cassettes() -> None:
    assert len(CASSETTES) >= 30


@pytest.mark.parametrize("cassette", CASSETTES, ids=lambda p: str(p.relative_to(VCR)))
def test_every_recorded_object_maps(cassette: Path) -> None:
    for _, index, body in iter_json_bodies([cassette]):
        for name, obj in iter_entities(body, NAMES):
            entity = ENTITIES_BY_NAME[name]
            mapped = map_object(CONN, entity, obj)
            assert not isinstance(mapped, Quarantined), (index, mapped.reason)
            assert mapped.external_id == obj["Id"]
            assert mapped.connection == CONN
            if isinstance(mapped, Tombstone):
                assert obj["status"] == "Deleted"
                assert mapped.entity is entity
                continue
            assert isinstance(mapped, EXPECTED_TYPES[entity])
            assert mapped.version == obj["SyncToken"]
            assert mapped.updated_at is not None and mapped.updated_at.utcoffset() is not None
            assert mapped.updated_at == parse_qbo_datetime(obj["MetaData"]["LastUpdatedTime"])
            assert_no_float(mapped)
            if isinstance(mapped, InvoiceRecord):
                assert mapped.total == obj["TotalAmt"]
                assert mapped.balance == obj["Balance"]
                assert mapped.customer_external_id == obj["CustomerRef"]["value"]
                assert mapped.currency == obj["CurrencyRef"]["value"]
                kept = [x for x in obj["Line"] if x["DetailType"] != "SubTotalLineDetail"]
                assert [line.amount for line in mapped.lines] == [x["Amount"] for x in kept]
            if isinstance(mapped, CustomerRecord):
                assert mapped.name == obj["DisplayName"]
                assert mapped.active is obj["Active"]
                assert mapped.balance == obj["Balance"]
                email = obj.get("PrimaryEmailAddr", {}).get("Address")
                assert [c.email for c in mapped.contacts] == ([email] if email else [])


def test_recorded_object_counts_per_entity() -> None:
    objects = recorded_objects()
    counts = Counter(name for _, _, name, _ in objects)
    assert counts == {"Customer": 93, "Invoice": 5}
    mapped = [map_object(CONN, ENTITIES_BY_NAME[n], o) for _, _, n, o in objects]
    kinds = Counter(type(m).__name__ for m in mapped)
    assert kinds == {"CustomerRecord": 93, "InvoiceRecord": 4, "Tombstone": 1}


def test_report_header_customer_key_is_not_an_entity() -> None:
    body = body_of("reports/profit_and_loss.yml", 0)
    assert body["Header"]["Customer"] == "1"
    assert list(iter_entities(body, NAMES)) == []


# --- known recorded values -------------------------------------------------------------


def test_known_customer_from_query_page() -> None:
    records, quarantined, count = map_query_response(CONN, Entity.CUSTOMER, body_of("all/customers.yml", 1))
    assert (len(records), quarantined, count) == (41, [], 41)
    by_id = {r.external_id: r for r in records}
    amy = by_id["1"]
    assert isinstance(amy, CustomerRecord)
    assert amy.name == "Amy's Bird Sanctuary"
    assert amy.company_name == "Amy's Bird Sanctuary"
    assert amy.contacts == (Contact(email="Birds@Intuit.com", name="Amy Lauterbach"),)
    assert amy.phone == "(650) 555-3311"
    assert amy.currency == "USD"
    assert amy.active is True
    assert amy.balance == Decimal("639.00") and type(amy.balance) is Decimal
    assert amy.version == "0"
    assert amy.updated_at == datetime(2020, 9, 29, 6, 2, 35, tzinfo=PACIFIC_DST)
    assert amy.parent_external_id is None
    twin_lane = by_id["9"]
    assert isinstance(twin_lane, CustomerRecord)
    assert twin_lane.parent_external_id == "7"
    assert twin_lane.balance == Decimal("85.00")
    assert twin_lane.contacts == (Contact(email="Sporting_goods@intuit.com", name="Amelia"),)


def test_empty_and_count_only_query_pages() -> None:
    assert map_query_response(CONN, Entity.CUSTOMER, body_of("all/alt_select.yml", 4)) == (
        [],
        [],
        0,
    )
    assert body_of("all/customers.yml", 0)["QueryResponse"] == {"totalCount": 41}
    assert map_query_response(CONN, Entity.CUSTOMER, body_of("all/customers.yml", 0)) == (
        [],
        [],
        0,
    )
    with pytest.raises(MappingError):
        map_query_response(CONN, Entity.CUSTOMER, {"time": "2020-09-29T06:03:53.438-07:00"})


def test_recorded_invoice_before_and_after_void() -> None:
    before = map_object(CONN, Entity.INVOICE, body_of("void/invoice.yml", 0)["Invoice"])
    assert isinstance(before, InvoiceRecord)
    assert before.external_id == "264"
    assert before.number == "1041"
    assert before.customer_external_id == "1"
    assert before.total == Decimal("100.00") and type(before.total) is Decimal
    assert before.balance == Decimal("100.00")
    assert before.status is InvoiceStatus.OPEN
    assert before.issue_date == date(2020, 9, 29)
    assert before.due_date == date(2020, 10, 29)
    assert before.currency == "USD"
    assert before.memo is None
    assert len(before.lines) == 1
    assert before.lines[0].amount == Decimal("100.00")
    assert before.lines[0].item_ref == "1"
    assert before.lines[0].line_no == 1

    after = map_object(CONN, Entity.INVOICE, body_of("void/invoice.yml", 1)["Invoice"])
    assert isinstance(after, InvoiceRecord)
    assert after.status is InvoiceStatus.VOID
    assert (after.total, after.balance) == (Decimal(0), Decimal(0))
    assert type(after.total) is Decimal
    assert after.version == "1"
    assert after.memo == "Voided"
    assert after.updated_at == datetime(2022, 9, 2, 5, 58, 56, tzinfo=PACIFIC_DST)


def test_recorded_delete_response_is_a_tombstone() -> None:
    stub = body_of("delete/invoice.yml", 1)["Invoice"]
    assert stub == {"domain": "QBO", "status": "Deleted", "Id": "266"}
    mapped = map_object(CONN, Entity.INVOICE, stub)
    assert mapped == Tombstone(CONN, Entity.INVOICE, "266", None)


def test_recorded_cdc_without_our_entities_maps_to_empty() -> None:
    body = body_of("cdc/basic.yml", 0)
    estimates = [o for n, o in iter_entities(body, ["Estimate"]) if n == "Estimate"]
    assert estimates, "the recording holds Estimates"
    mapped = map_cdc_response(CONN, body, list(Entity))
    assert mapped == {entity: ([], [], 0) for entity in Entity}


# --- XML fixtures, converted to the JSON shape ------------------------------------------


def xml_object(filename: str, name: str) -> dict[str, Any]:
    found = [obj for n, obj in qbo_xml_entities(XML / filename, [name]) if n == name]
    assert len(found) == 1, filename
    return found[0]


def test_xml_payment_unapplied() -> None:
    payment = map_payment(CONN, xml_object("payment.xml", "Payment"), home_currency="USD")
    assert payment.external_id == "8748"
    assert payment.customer_external_id == "25342"
    assert payment.amount == Decimal("40.00") and type(payment.amount) is Decimal
    assert payment.unapplied == Decimal("40.00")
    assert payment.status is DocumentStatus.OPEN
    assert payment.applications == ()
    assert payment.currency == "USD"
    assert payment.payment_date == date(2013, 7, 11)


def test_xml_payment_applied_to_invoice() -> None:
    payment = map_payment(CONN, xml_object("payment_with_line_extras.xml", "Payment"))
    assert payment.applications == (PaymentApplication(Entity.INVOICE, "68", Decimal("2400.00")),)
    assert payment.unapplied == Decimal(0)
    assert payment.status is DocumentStatus.APPLIED


def test_xml_credit_memo() -> None:
    memo = map_credit_memo(CONN, xml_object("fetch_credit_memo.xml", "CreditMemo"))
    assert memo.external_id == "52"
    assert memo.number == "R3454653464"
    assert memo.currency == "BRL"
    assert memo.customer_external_id == "2"
    assert (memo.total, memo.remaining) == (Decimal("10.00"), Decimal("10.00"))
    assert memo.status is DocumentStatus.OPEN
    assert [(line.amount, line.quantity, line.unit_price) for line in memo.lines] == [
        (Decimal("10.00"), Decimal(1), Decimal(10))
    ]
    assert_no_float(memo)


def test_xml_invoice_discount_line_is_negative() -> None:
    invoice = map_invoice(CONN, xml_object("invoice_with_discount_line_item_response.xml", "Invoice"))
    assert [line.amount for line in invoice.lines] == [Decimal("50.00"), Decimal("-5.00")]
    assert sum(line.amount for line in invoice.lines) == invoice.total == Decimal("45.00")
    assert invoice.currency == "USD"  # no CurrencyRef: the home currency


def test_xml_void_note_alone_is_not_void() -> None:
    # This third-party fixture carries the "Voided" note but keeps its amounts
    # (the real recording in void/invoice.yml zeroes them). The note alone is
    # not trusted: a live invoice with money on it stays collectable.
    invoice = map_invoice(CONN, xml_object("invoice_void_success_response.xml", "Invoice"))
    assert invoice.total == Decimal("50.00")
    assert invoice.status is InvoiceStatus.OPEN
    assert invoice.memo == "Message to Customer"
    assert invoice.terms == "2"


def test_xml_deleted_customer_is_inactive() -> None:
    customer = map_customer(CONN, xml_object("deleted_customer.xml", "Customer"))
    assert customer.active is False
    assert customer.name == "Thrifty Meats"
    assert customer.company_name == "Neo Pets"
    assert customer.contacts == (Contact(email="info@thriftymeats.com", name="John Doe"),)


@pytest.mark.parametrize(
    ("filename", "entity"),
    [
        ("invoice_changes.xml", Entity.INVOICE),
        ("payment_changes.xml", Entity.PAYMENT),
        ("customer_changes.xml", Entity.CUSTOMER),
        ("credit_memo_changes.xml", Entity.CREDIT_NOTE),
    ],
)
def test_xml_cdc_delete_stubs(filename: str, entity: Entity) -> None:
    stub = xml_object(filename, ENTITY_NAMES[entity])
    assert stub["status"] == "Deleted"
    mapped = map_object(CONN, entity, stub)
    assert mapped == Tombstone(
        CONN, entity, "39", datetime(2014, 12, 8, 19, 36, 24, tzinfo=timezone(timedelta(hours=-8)))
    )


# --- hand-written edge payloads -----------------------------------------------------------


def invoice(**overrides: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "Id": "130",
        "SyncToken": "2",
        "MetaData": {"LastUpdatedTime": "2024-03-01T10:00:00-08:00"},
        "DocNumber": "1037",
        "TxnDate": "2024-02-01",
        "DueDate": "2024-03-02",
        "SalesTermRef": {"value": "3", "name": "Net 30"},
        "CurrencyRef": {"value": "USD", "name": "United States Dollar"},
        "CustomerRef": {"value": "24", "name": "Sonnenschein Family Store"},
        "Line": [
            {
                "Id": "1",
                "LineNum": 1,
                "Description": "Rock Fountain",
                "Amount": Decimal("275.00"),
                "DetailType": "SalesItemLineDetail",
                "SalesItemLineDetail": {
                    "ItemRef": {"value": "5"},
                    "UnitPrice": 275,
                    "Qty": 1,
                },
            },
            {"Amount": Decimal("275.00"), "DetailType": "SubTotalLineDetail"},
        ],
        "TotalAmt": Decimal("275.00"),
        "Balance": Decimal("275.00"),
    }
    payload.update(overrides)
    return payload


def quarantined(entity: Entity, obj: object) -> Quarantined:
    result = map_object(CONN, entity, obj)
    assert isinstance(result, Quarantined), result
    return result


def test_missing_total_is_quarantined_naming_the_field() -> None:
    payload = invoice()
    del payload["TotalAmt"]
    result = quarantined(Entity.INVOICE, payload)
    assert result.reason == "Invoice 130: TotalAmt missing"
    assert result.external_id == "130"
    assert result.entity is Entity.INVOICE
    assert result.payload is payload


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"TotalAmt": "12,50"}, "TotalAmt"),
        ({"TotalAmt": "NaN"}, "TotalAmt"),
        ({"TotalAmt": True}, "TotalAmt"),
        ({"Balance": Decimal("-1.00")}, "Balance"),
        ({"Balance": Decimal("300.00")}, "Balance"),
        ({"TxnDate": "01/02/2024"}, "TxnDate"),
        ({"DueDate": "2024-02-30"}, "DueDate"),
        ({"MetaData": {"LastUpdatedTime": "2024-03-01T10:00:00"}}, "LastUpdatedTime"),
        ({"MetaData": {"LastUpdatedTime": "yesterday"}}, "LastUpdatedTime"),
        ({"CurrencyRef": {"value": "usd"}}, "CurrencyRef"),
        ({"CurrencyRef": {"value": "US Dollar"}}, "CurrencyRef"),
        ({"Line": [{"DetailType": "SalesItemLineDetail", "SalesItemLineDetail": {}}]}, "Amount"),
        ({"Line": "not a list"}, "Line"),
    ],
)
def test_bad_invoice_fields_are_quarantined(overrides: dict[str, Any], field: str) -> None:
    result = quarantined(Entity.INVOICE, invoice(**overrides))
    assert result.reason.startswith("Invoice 130: ")
    assert field in result.reason


def test_missing_id_and_non_object() -> None:
    payload = invoice()
    del payload["Id"]
    result = quarantined(Entity.INVOICE, payload)
    assert (result.external_id, result.reason) == (None, "Invoice: Id missing")
    other = quarantined(Entity.PAYMENT, ["not", "an", "object"])
    assert other.external_id is None
    assert "not an object" in other.reason
    assert other.payload == {"value": ["not", "an", "object"]}


def test_float_amount_is_a_caller_bug() -> None:
    with pytest.raises(TypeError, match="parse_float=Decimal"):
        map_object(CONN, Entity.INVOICE, invoice(TotalAmt=275.0))


def test_open_invoice_fields() -> None:
    mapped = map_invoice(CONN, invoice(CustomerMemo={"value": "Thanks!"}, PrivateNote="internal"))
    assert mapped.status is InvoiceStatus.OPEN
    assert mapped.terms == "Net 30"
    assert mapped.memo == "Thanks!"
    assert mapped.number == "1037"
    assert mapped.lines[0].description == "Rock Fountain"
    assert mapped.lines[0].unit_price == Decimal(275)
    assert_no_float(mapped)


@pytest.mark.parametrize(
    ("total", "balance", "note", "status"),
    [
        ("275.00", "275.00", None, InvoiceStatus.OPEN),
        ("275.00", "75.00", None, InvoiceStatus.PARTIALLY_PAID),
        ("275.00", "0", None, InvoiceStatus.PAID),
        ("0", "0", "Voided", InvoiceStatus.VOID),
        ("0", "0", "Voided - was 1037", InvoiceStatus.VOID),
        ("0", "0", None, InvoiceStatus.PAID),
        ("275.00", "275.00", "Voided per phone call", InvoiceStatus.OPEN),
    ],
)
def test_invoice_status(total: str, balance: str, note: str | None, status: InvoiceStatus) -> None:
    extra = {"PrivateNote": note} if note else {}
    mapped = map_invoice(CONN, invoice(TotalAmt=Decimal(total), Balance=Decimal(balance), **extra))
    assert mapped.status is status
    assert mapped.memo == note


def test_amounts_as_int_and_str_become_decimal() -> None:
    mapped = map_invoice(CONN, invoice(TotalAmt=300, Balance="120.50"))
    assert type(mapped.total) is Decimal and mapped.total == Decimal(300)
    assert type(mapped.balance) is Decimal and mapped.balance == Decimal("120.50")
    assert mapped.status is InvoiceStatus.PARTIALLY_PAID


def test_currency_defaults_to_home_currency() -> None:
    payload = invoice()
    del payload["CurrencyRef"]
    assert map_invoice(CONN, payload).currency == "USD"
    assert map_invoice(CONN, payload, home_currency="CAD").currency == "CAD"
    result = map_object(CONN, Entity.INVOICE, payload, home_currency="GBP")
    assert isinstance(result, InvoiceRecord) and result.currency == "GBP"


def test_terms_fall_back_to_the_reference_value() -> None:
    assert map_invoice(CONN, invoice(SalesTermRef={"value": "3"})).terms == "3"


def test_comma_separated_emails_become_contacts() -> None:
    customer = map_customer(
        CONN,
        {
            "Id": "7",
            "SyncToken": "3",
            "DisplayName": "Freeman Sporting Goods",
            "GivenName": "Kirby",
            "FamilyName": "Freeman",
            "Active": True,
            "PrimaryEmailAddr": {"Address": "ar@freeman.example, kirby@freeman.example,ap@freeman.example"},
            "Balance": Decimal("-20.00"),
        },
    )
    assert customer.contacts == (
        Contact(email="ar@freeman.example", name="Kirby Freeman"),
        Contact(email="kirby@freeman.example"),
        Contact(email="ap@freeman.example"),
    )
    assert customer.balance == Decimal("-20.00")  # a credit the customer holds
    assert customer.currency is None
    assert customer.updated_at is None


def test_customer_without_name_is_quarantined() -> None:
    result = quarantined(Entity.CUSTOMER, {"Id": "8", "Active": True})
    assert result.reason == "Customer 8: DisplayName missing"


def payment(**overrides: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "Id": "501",
        "SyncToken": "0",
        "MetaData": {"LastUpdatedTime": "2024-03-05T09:30:00-08:00"},
        "TxnDate": "2024-03-05",
        "CurrencyRef": {"value": "USD"},
        "CustomerRef": {"value": "24"},
        "PaymentRefNum": "10264",
        "PaymentMethodRef": {"value": "2", "name": "Check"},
        "TotalAmt": Decimal("300.00"),
        "UnappliedAmt": Decimal("25.00"),
        "Line": [
            {
                "Amount": Decimal("325.00"),
                "LinkedTxn": [{"TxnId": "130", "TxnType": "Invoice"}],
            },
            {
                "Amount": Decimal("50.00"),
                "LinkedTxn": [{"TxnId": "77", "TxnType": "CreditMemo"}],
            },
        ],
    }
    payload.update(overrides)
    return payload


def test_payment_with_invoice_and_credit_memo() -> None:
    mapped = map_payment(CONN, payment())
    assert mapped.applications == (
        PaymentApplication(Entity.INVOICE, "130", Decimal("325.00")),
        PaymentApplication(Entity.CREDIT_NOTE, "77", Decimal("50.00")),
    )
    assert mapped.status is DocumentStatus.OPEN
    assert mapped.unapplied == Decimal("25.00")
    assert mapped.reference == "10264"
    assert mapped.method == "Check"
    assert mapped.payment_date == date(2024, 3, 5)
    assert_no_float(mapped)


def test_voided_payment() -> None:
    mapped = map_payment(
        CONN,
        payment(
            TotalAmt=0,
            UnappliedAmt=0,
            PrivateNote="Voided",
            Line=[{"Amount": 0, "LinkedTxn": [{"TxnId": "130", "TxnType": "Invoice"}]}],
        ),
    )
    assert mapped.status is DocumentStatus.VOID
    assert mapped.applications == ()
    assert type(mapped.amount) is Decimal


def test_fully_applied_payment_and_computed_unapplied() -> None:
    mapped = map_payment(
        CONN,
        payment(
            TotalAmt="325.00",
            UnappliedAmt=None,
            Line=[{"Amount": "325.00", "LinkedTxn": [{"TxnId": "130", "TxnType": "Invoice"}]}],
        ),
    )
    assert mapped.unapplied == Decimal(0)
    assert mapped.status is DocumentStatus.APPLIED


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"TotalAmt": None}, "TotalAmt"),
        ({"UnappliedAmt": Decimal("-1")}, "UnappliedAmt"),
        ({"UnappliedAmt": Decimal("301")}, "UnappliedAmt"),
        ({"UnappliedAmt": None}, "UnappliedAmt"),  # credit memo lines: cannot compute
        ({"Line": [{"LinkedTxn": [{"TxnId": "1", "TxnType": "Invoice"}]}]}, "Amount"),
        ({"Line": [{"Amount": 1, "LinkedTxn": [{"TxnType": "Invoice"}]}]}, "TxnId"),
        ({"TxnDate": "2024-13-01"}, "TxnDate"),
    ],
)
def test_bad_payments_are_quarantined(overrides: dict[str, Any], field: str) -> None:
    result = quarantined(Entity.PAYMENT, payment(**overrides))
    assert result.reason.startswith("Payment 501: ")
    assert field in result.reason


def credit_memo(**overrides: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "Id": "77",
        "SyncToken": "1",
        "DocNumber": "CM-9",
        "TxnDate": "2024-02-10",
        "CustomerRef": {"value": "24"},
        "Line": [
            {
                "Amount": Decimal("50.00"),
                "DetailType": "SalesItemLineDetail",
                "SalesItemLineDetail": {"ItemRef": {"value": "5"}, "Qty": 1, "UnitPrice": 50},
            }
        ],
        "TotalAmt": Decimal("50.00"),
        "Balance": Decimal("0"),
        "RemainingCredit": Decimal("0"),
    }
    payload.update(overrides)
    return payload


@pytest.mark.parametrize(
    ("overrides", "status", "remaining"),
    [
        ({}, DocumentStatus.APPLIED, "0"),
        ({"RemainingCredit": Decimal("20.00"), "Balance": Decimal("20.00")}, DocumentStatus.OPEN, "20.00"),
        ({"RemainingCredit": None, "Balance": Decimal("5.00")}, DocumentStatus.OPEN, "5.00"),
        ({"TotalAmt": 0, "PrivateNote": "Voided"}, DocumentStatus.VOID, "0"),
    ],
)
def test_credit_memo_status(overrides: dict[str, Any], status: DocumentStatus, remaining: str) -> None:
    mapped = map_credit_memo(CONN, credit_memo(**overrides), home_currency="EUR")
    assert mapped.status is status
    assert mapped.remaining == Decimal(remaining) and type(mapped.remaining) is Decimal
    assert mapped.currency == "EUR"
    assert mapped.number == "CM-9"


def test_credit_memo_without_remaining_is_quarantined() -> None:
    result = quarantined(Entity.CREDIT_NOTE, credit_memo(RemainingCredit=None, Balance=None))
    assert result.reason == "CreditMemo 77: RemainingCredit missing"


def test_map_tombstone_directly() -> None:
    stub = {
        "domain": "QBO",
        "status": "Deleted",
        "Id": "39",
        "MetaData": {"LastUpdatedTime": "2014-12-08T19:36:24-08:00"},
    }
    tomb = map_tombstone(CONN, Entity.PAYMENT, stub)
    assert tomb.entity is Entity.PAYMENT
    assert tomb.updated_at == datetime(2014, 12, 9, 3, 36, 24, tzinfo=UTC)


def test_cdc_response_with_changes_deletes_and_bad_objects() -> None:
    body = {
        "CDCResponse": [
            {
                "QueryResponse": [
                    {"Invoice": [invoice(), {"Id": "131", "status": "Deleted"}]},
                    {"Payment": [payment(TotalAmt=None)]},
                    {"Estimate": [{"Id": "48"}]},
                ]
            }
        ],
        "time": "2024-03-06T00:00:00-08:00",
    }
    mapped = map_cdc_response(CONN, body, [Entity.INVOICE, Entity.PAYMENT, Entity.CUSTOMER])
    assert set(mapped) == {Entity.INVOICE, Entity.PAYMENT, Entity.CUSTOMER}
    records, bad, count = mapped[Entity.INVOICE]
    assert count == 2 and bad == []
    assert isinstance(records[0], InvoiceRecord)
    assert records[1] == Tombstone(CONN, Entity.INVOICE, "131", None)
    records, bad, count = mapped[Entity.PAYMENT]
    assert (records, count) == ([], 1)
    assert bad[0].reason == "Payment 501: TotalAmt missing"
    assert mapped[Entity.CUSTOMER] == ([], [], 0)
    with pytest.raises(MappingError):
        map_cdc_response(CONN, {"QueryResponse": {}}, [Entity.INVOICE])


def test_query_response_mixes_records_and_quarantine() -> None:
    good = invoice()
    bad = invoice(Id="132", TotalAmt="lots")
    records, quarantine, count = map_query_response(
        CONN,
        Entity.INVOICE,
        {"QueryResponse": {"Invoice": [good, bad], "startPosition": 1, "maxResults": 2}},
    )
    assert count == 2
    assert [r.external_id for r in records] == ["130"]
    assert [(q.external_id, q.reason) for q in quarantine] == [
        ("132", "Invoice 132: TotalAmt is not a number ('lots')")
    ]


# --- names and timestamps -------------------------------------------------------------------


def test_entity_names_both_ways() -> None:
    assert dict(ENTITY_NAMES) == {
        Entity.CUSTOMER: "Customer",
        Entity.INVOICE: "Invoice",
        Entity.PAYMENT: "Payment",
        Entity.CREDIT_NOTE: "CreditMemo",
    }
    assert {ENTITIES_BY_NAME[name] for name in ENTITY_NAMES.values()} == set(Entity)
    assert ENTITIES_BY_NAME["CreditMemo"] is Entity.CREDIT_NOTE


def test_parse_and_format_qbo_datetime() -> None:
    parsed = parse_qbo_datetime("2015-10-07T11:42:38-07:00")
    assert parsed == datetime(2015, 10, 7, 18, 42, 38, tzinfo=UTC)
    assert format_qbo_datetime(parsed) == "2015-10-07T11:42:38-07:00"
    assert format_qbo_datetime(datetime(2024, 1, 2, 3, 4, 5, 999999, tzinfo=UTC)) == ("2024-01-02T03:04:05+00:00")
    assert parse_qbo_datetime("2022-09-02T05:58:56.017-07:00").microsecond == 17000
    with pytest.raises(MappingError):
        parse_qbo_datetime("2015-10-07T11:42:38")
    with pytest.raises(ValueError):
        format_qbo_datetime(datetime(2024, 1, 2, 3, 4, 5))


def test_records_are_typed_as_records() -> None:
    mapped: Record | Quarantined = map_object(CONN, Entity.INVOICE, invoice())
    assert isinstance(mapped, InvoiceRecord)
