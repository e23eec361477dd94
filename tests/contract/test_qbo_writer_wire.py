"""What QuickBooks write-back sends and what the sandbox answers, against Intuit's XSDs and recorded traffic.

The writer's batch items (a payment, a fee, a payout, both kinds of credit application, a reversal's void and a
surcharge's deposit) are captured from the sandbox's request log and every key is checked against the XSD type
it claims to be, every ``operation`` against ``OperationEnum``; the sandbox's answers (the created Purchase and
Deposit, the zero Payment, the updated Payment, the voided Payment, the accounts with their balances, the item
faults for a closed period and a deleted invoice) are checked the same way and against the recorded
``batch/basic.yml`` exchange.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from connectors.base import Posting, PostingKind
from connectors.quickbooks.sandbox import QuickBooksSandbox
from tests.contract.test_qbo_sandbox import XS, XSD_DIR, Xsd, recorded, structure
from tests.integration.test_qbo_writer import connect
from tests.support import FakeClock

D = Decimal
DAY = date(2020, 9, 29)


@pytest.fixture(scope="module")
def xsd() -> Xsd:
    return Xsd(XSD_DIR)


@pytest.fixture
def box() -> Iterator[QuickBooksSandbox]:
    sandbox = QuickBooksSandbox(FakeClock(datetime(2020, 9, 29, 15, 0, tzinfo=UTC)), rate_limits=False)
    sandbox.start()
    yield sandbox
    sandbox.stop()
    assert sandbox.server_errors == []


@pytest.fixture
def sent(box: QuickBooksSandbox) -> dict[str, Any]:
    """Post one of each kind (and three that QuickBooks refuses); return what went over the wire."""
    clock = FakeClock(datetime(2020, 9, 29, 15, 0, tzinfo=UTC))
    customer = str(box.put("Customer", {"DisplayName": "Amy's Bird Sanctuary"})["Id"])
    clearing = str(box.put("Account", {"Name": "Clearing", "AccountType": "Other Current Asset"})["Id"])
    bank = str(box.put("Account", {"Name": "Checking", "AccountType": "Bank"})["Id"])
    fees = str(box.put("Account", {"Name": "Fees", "Classification": "Expense", "AccountType": "Expense"})["Id"])

    def invoice(amount: str) -> str:
        line = {"Amount": D(amount), "DetailType": "SalesItemLineDetail"}
        return str(box.put("Invoice", {"CustomerRef": {"value": customer}, "Line": [line]})["Id"])

    paid, credited, from_cash, gone, closed = (invoice(a) for a in ("100.00", "50.00", "70.00", "10.00", "10.00"))
    memo = box.put(
        "CreditMemo",
        {"CustomerRef": {"value": customer}, "Line": [{"Amount": D("20.00"), "DetailType": "SalesItemLineDetail"}]},
    )
    cash = box.put("Payment", {"CustomerRef": {"value": customer}, "TotalAmt": D("30.00"), "PrivateNote": "Cash"})
    box.delete("Invoice", gone)
    common = {"currency": "USD", "date": DAY}

    def posting(key: str, kind: PostingKind, **payload: Any) -> Posting:
        return Posting(key, kind.value, {**common, **payload})

    postings = [
        posting(
            "p:1",
            PostingKind.PAYMENT,
            invoice_external_id=paid,
            customer_external_id=customer,
            amount=D("60.00"),
            account=clearing,
            currency_rate=D("1"),
        ),
        posting("f:1", PostingKind.FEE, amount=D("1.80"), from_account=clearing, expense_account=fees),
        posting("o:1", PostingKind.PAYOUT, amount=D("58.20"), from_account=clearing, to_account=bank, reference="po_1"),
        posting(
            "c:1",
            PostingKind.CREDIT_APPLICATION,
            invoice_external_id=credited,
            customer_external_id=customer,
            source="credit_note",
            source_id=str(memo["Id"]),
            amount=D("20.00"),
        ),
        posting(
            "c:2",
            PostingKind.CREDIT_APPLICATION,
            invoice_external_id=from_cash,
            customer_external_id=customer,
            source="payment",
            source_id=str(cash["Id"]),
            amount=D("30.00"),
        ),
        posting(
            "p:2",
            PostingKind.PAYMENT,
            invoice_external_id=gone,
            customer_external_id=customer,
            amount=D("5.00"),
            account=clearing,
        ),
        posting(
            "p:3",
            PostingKind.PAYMENT,
            invoice_external_id=closed,
            customer_external_id=customer,
            amount=D("5.00"),
            account=clearing,
            date=date(2020, 6, 30),
        ),
    ]
    box.closing_date = date(2020, 6, 30)
    results = connect(box, clock).post(postings)
    [(_, path, body)] = [entry for entry in box.requests_log if "/batch" in entry[1]]
    return {
        "results": results,
        "path": path,
        "request": json.loads(body),
        "accounts": {name: box.get("Account", i) for name, i in (("clearing", clearing), ("bank", bank))},
        "box": box,
        "payments": box.count("Payment"),
    }


def test_every_key_the_writer_sends_is_declared_by_the_xsd(sent: dict[str, Any], xsd: Xsd) -> None:
    _, _, _, recorded_request = recorded("batch/basic.yml")
    recorded_items = json.loads(recorded_request["body"]["string"])["BatchItemRequest"]
    items = sent["request"]["BatchItemRequest"]
    assert set(sent["request"]) == {"BatchItemRequest"}
    problems: list[str] = []
    for item in items:
        [entity] = set(item) - {"bId", "operation"}
        assert set(item) == {"bId", "operation", entity} == set(recorded_items[0]) - {"Vendor"} | {entity}
        assert item["operation"] in ("create", "update")
        problems += xsd.undeclared(item[entity], entity, f"{entity}[{item['bId']}]")
    assert problems == []
    assert [next(k for k in i if k not in ("bId", "operation")) for i in items] == [
        "Payment",
        "Purchase",
        "Deposit",
        "Payment",
        "Payment",
        "Payment",
        "Payment",
    ]
    update = items[4]
    assert update["operation"] == "update" and update["Payment"]["sparse"] is True
    assert recorded_items[2]["operation"] == "update" and recorded_items[2]["SalesReceipt"]["sparse"] is True


def test_requestid_rides_in_the_query_string_like_the_recording(sent: dict[str, Any]) -> None:
    _, _, _, request = recorded("update/sales_receipt.yml", 1)
    want = parse_qs(urlsplit(request["uri"]).query)
    got = parse_qs(urlsplit(sent["path"]).query)
    assert set(want) == set(got) == {"minorversion", "requestid"}
    assert len(want["requestid"][0]) == 36 and len(got["requestid"][0]) <= 36


def test_the_answers_are_declared_by_the_xsd_and_shaped_like_the_recording(sent: dict[str, Any], xsd: Xsd) -> None:
    _, _, recorded_body, _ = recorded("batch/basic.yml")
    recorded_fault = recorded_body["BatchItemResponse"][1]
    box: QuickBooksSandbox = sent["box"]
    results = sent["results"]
    assert [r.ok for r in results] == [True] * 5 + [False, False]
    problems: list[str] = []
    for result, entity in zip(results[:5], ("Payment", "Purchase", "Deposit", "Payment", "Payment"), strict=True):
        obj = box.get(entity, str(result.external_id))
        assert obj is not None
        problems += xsd.undeclared(obj, entity, f"{entity}[{obj['Id']}]")
    for name, account in sent["accounts"].items():
        problems += xsd.undeclared(account, "Account", f"Account[{name}]")
    assert problems == []
    assert sent["accounts"]["clearing"]["CurrentBalance"] == 0  # 60.00 - 1.80 - 58.20
    assert sent["accounts"]["bank"]["CurrentBalance"] == D("58.20")

    # The same request again (same requestid): the sandbox replays the answer the writer read, unchanged.
    replay = requests.post(
        box.url + sent["path"],
        data=json.dumps(sent["request"]),
        headers={"Authorization": f"Bearer {box.issue_tokens()['access_token']}", "Accept": "application/json"},
        timeout=10,
    )
    assert replay.status_code == 200 and box.count("Payment") == sent["payments"]
    body = json.loads(replay.text, parse_float=Decimal)
    assert set(body) == set(recorded_body) == {"BatchItemResponse", "time"}
    deleted, closed = body["BatchItemResponse"][5:]
    for item in (deleted, closed):
        assert structure(item) == structure(recorded_fault)
        problems += xsd.undeclared(item["Fault"], "Fault", "Fault")
    assert problems == []
    assert deleted["Fault"]["Error"][0] | {"Detail": ""} == recorded_fault["Fault"]["Error"][0] | {"Detail": ""}
    assert deleted["Fault"]["Error"][0]["Detail"] == "Object Not Found : Another user has deleted this transaction."
    error = closed["Fault"]["Error"][0]
    assert (error["code"], error["element"], closed["Fault"]["type"]) == ("6210", "", "ValidationFault")
    assert error["Detail"].startswith("The account period has closed and the account books cannot be updated")


def operations(xsd_dir: Path) -> set[str]:
    """``OperationEnum`` of ``IntuitRestServiceDef.xsd``: what a ``BatchItemRequest``'s ``operation`` may be."""
    root = ET.parse(xsd_dir / "IntuitRestServiceDef.xsd").getroot()
    [enum] = [node for node in root if node.tag == XS + "simpleType" and node.get("name") == "OperationEnum"]
    return {str(value.get("value")) for value in enum.iter(XS + "enumeration")}


def test_a_reversal_is_a_void_item_and_a_surcharge_a_deposit_both_declared_by_the_xsd(
    box: QuickBooksSandbox, xsd: Xsd
) -> None:
    clock = FakeClock(datetime(2020, 9, 29, 15, 0, tzinfo=UTC))
    customer = str(box.put("Customer", {"DisplayName": "Amy's Bird Sanctuary"})["Id"])
    clearing = str(box.put("Account", {"Name": "Clearing", "AccountType": "Other Current Asset"})["Id"])
    income = str(box.put("Account", {"Name": "Surcharges", "Classification": "Revenue", "AccountType": "Income"})["Id"])
    line = {"Amount": D("100.00"), "DetailType": "SalesItemLineDetail"}
    invoice = str(box.put("Invoice", {"CustomerRef": {"value": customer}, "Line": [line]})["Id"])
    common = {"currency": "USD", "date": DAY}
    source = connect(box, clock)
    paid = Posting(
        "p:1",
        PostingKind.PAYMENT.value,
        {
            **common,
            "invoice_external_id": invoice,
            "customer_external_id": customer,
            "amount": D("100.00"),
            "account": clearing,
        },
    )
    [payment] = source.post([paid])
    undo = Posting(
        "r:1",
        PostingKind.PAYMENT_REVERSAL.value,
        {**common, "payment_external_id": payment.external_id, "amount": D("100.00"), "reason": "chargeback"},
    )
    extra = Posting(
        "s:1",
        PostingKind.SURCHARGE.value,
        {
            **common,
            "customer_external_id": customer,
            "amount": D("2.90"),
            "account": clearing,
            "income_account": income,
        },
    )

    results = source.post([undo, extra])

    assert [r.ok for r in results] == [True, True], [r.reason for r in results]
    *_, (_, _, body) = [entry for entry in box.requests_log if "/batch" in entry[1]]
    items = json.loads(body)["BatchItemRequest"]
    assert [(item["operation"], next(k for k in item if k not in ("bId", "operation"))) for item in items] == [
        ("void", "Payment"),
        ("create", "Deposit"),
    ]
    assert {item["operation"] for item in items} <= operations(XSD_DIR)
    problems: list[str] = []
    for item in items:
        [entity] = set(item) - {"bId", "operation"}
        problems += xsd.undeclared(item[entity], entity, f"{entity}[{item['bId']}]")
    voided, deposit = box.get("Payment", str(results[0].external_id)), box.get("Deposit", str(results[1].external_id))
    assert voided is not None and deposit is not None
    problems += xsd.undeclared(voided, "Payment", "Payment")
    problems += xsd.undeclared(deposit, "Deposit", "Deposit")
    assert problems == []
    assert items[0]["Payment"] == {
        "Id": payment.external_id,
        "SyncToken": "0",
        "sparse": True,
        "PrivateNote": "p:1\nr:1",
    }
    assert voided["PrivateNote"] == "Voided - p:1\nr:1" and voided["TotalAmt"] == 0
    assert deposit["Line"][0]["DepositLineDetail"] == {"Entity": {"value": customer}, "AccountRef": {"value": income}}


def test_a_payout_debit_is_a_transfer_and_a_partial_refund_a_refund_receipt_both_declared_by_the_xsd(
    box: QuickBooksSandbox, xsd: Xsd
) -> None:
    clock = FakeClock(datetime(2020, 9, 29, 15, 0, tzinfo=UTC))
    customer = str(box.put("Customer", {"DisplayName": "Amy's Bird Sanctuary"})["Id"])
    clearing = str(box.put("Account", {"Name": "Clearing", "AccountType": "Other Current Asset"})["Id"])
    bank = str(box.put("Account", {"Name": "Checking", "AccountType": "Bank"})["Id"])
    line = {"Amount": D("100.00"), "DetailType": "SalesItemLineDetail"}
    invoice = str(box.put("Invoice", {"CustomerRef": {"value": customer}, "Line": [line]})["Id"])
    common = {"currency": "USD", "date": DAY}
    debit = Posting(
        "d:1",
        PostingKind.PAYOUT_DEBIT.value,
        {**common, "amount": D("40.00"), "from_account": bank, "to_account": clearing, "reference": "po_1"},
    )
    refund = Posting(
        "f:1",
        PostingKind.REFUND.value,
        {
            **common,
            "refund_id": "re_1",
            "invoice_external_id": invoice,
            "customer_external_id": customer,
            "amount": D("12.50"),
            "account": clearing,
            "refund_item": "1",
        },
    )

    results = connect(box, clock).post([debit, refund])

    assert [r.ok for r in results] == [True, True], [r.reason for r in results]
    *_, (_, _, body) = [entry for entry in box.requests_log if "/batch" in entry[1]]
    items = json.loads(body)["BatchItemRequest"]
    assert [(item["operation"], next(k for k in item if k not in ("bId", "operation"))) for item in items] == [
        ("create", "Transfer"),
        ("create", "RefundReceipt"),
    ]
    problems: list[str] = []
    for item in items:
        [entity] = set(item) - {"bId", "operation"}
        problems += xsd.undeclared(item[entity], entity, f"{entity}[{item['bId']}]")
    transfer = box.get("Transfer", str(results[0].external_id))
    receipt = box.get("RefundReceipt", str(results[1].external_id))
    assert transfer is not None and receipt is not None
    problems += xsd.undeclared(transfer, "Transfer", "Transfer")
    problems += xsd.undeclared(receipt, "RefundReceipt", "RefundReceipt")
    assert problems == []
    assert box.get("Account", bank)["CurrentBalance"] == D("-40.00")  # type: ignore[index]
    assert box.get("Account", clearing)["CurrentBalance"] == D("27.50")  # type: ignore[index]  # 40.00 in, 12.50 out


def test_a_surcharge_undone_is_a_delete_item_and_unapplied_credit_a_payment_both_declared_by_the_xsd(
    box: QuickBooksSandbox, xsd: Xsd
) -> None:
    clock = FakeClock(datetime(2020, 9, 29, 15, 0, tzinfo=UTC))
    customer = str(box.put("Customer", {"DisplayName": "Amy's Bird Sanctuary"})["Id"])
    clearing = str(box.put("Account", {"Name": "Clearing", "AccountType": "Other Current Asset"})["Id"])
    income = str(box.put("Account", {"Name": "Surcharges", "Classification": "Revenue", "AccountType": "Income"})["Id"])
    common = {"currency": "USD", "date": DAY}
    source = connect(box, clock)
    extra = Posting(
        "s:1",
        PostingKind.SURCHARGE.value,
        {
            **common,
            "customer_external_id": customer,
            "amount": D("2.90"),
            "account": clearing,
            "income_account": income,
        },
    )
    [made] = source.post([extra])
    undo = Posting(
        "u:1",
        PostingKind.SURCHARGE_REVERSAL.value,
        {**common, "surcharge_external_id": made.external_id, "amount": D("2.90"), "reason": "refunded in full"},
    )
    credit = Posting(
        "o:1",
        PostingKind.OVERPAYMENT.value,
        {**common, "customer_external_id": customer, "amount": D("70.00"), "account": clearing},
    )

    results = source.post([undo, credit])

    assert [r.ok for r in results] == [True, True], [r.reason for r in results]
    *_, (_, _, body) = [entry for entry in box.requests_log if "/batch" in entry[1]]
    items = json.loads(body)["BatchItemRequest"]
    assert [(item["operation"], next(k for k in item if k not in ("bId", "operation"))) for item in items] == [
        ("delete", "Deposit"),
        ("create", "Payment"),
    ]
    assert {item["operation"] for item in items} <= operations(XSD_DIR)
    problems: list[str] = []
    for item in items:
        [entity] = set(item) - {"bId", "operation"}
        problems += xsd.undeclared(item[entity], entity, f"{entity}[{item['bId']}]")
    unapplied = box.get("Payment", str(results[1].external_id))
    assert unapplied is not None
    problems += xsd.undeclared(unapplied, "Payment", "Payment")
    assert problems == []
    assert (unapplied["UnappliedAmt"], unapplied["Line"]) == (D("70.00"), [])
    assert box.get("Deposit", str(made.external_id)) is None


def test_late_fees_and_an_agency_bill_are_items_declared_by_the_xsd(box: QuickBooksSandbox, xsd: Xsd) -> None:
    """A late fee's line is a sparse Invoice update, its invoice of its own an Invoice create, the agency's fee a
    Bill create: every key sent and every key of the sandbox's answers is declared by Intuit's types."""
    clock = FakeClock(datetime(2020, 9, 29, 15, 0, tzinfo=UTC))
    customer = str(box.put("Customer", {"DisplayName": "Amy's Bird Sanctuary"})["Id"])
    vendor = str(box.put("Vendor", {"DisplayName": "Recovery Partners"})["Id"])
    expense = str(box.put("Account", {"Name": "Collection Costs", "Classification": "Expense"})["Id"])
    line = {"Amount": D("100.00"), "DetailType": "SalesItemLineDetail"}
    invoice = str(box.put("Invoice", {"CustomerRef": {"value": customer}, "Line": [line]})["Id"])
    common = {"currency": "USD", "date": DAY, "invoice_external_id": invoice, "customer_external_id": customer}
    fee_line = Posting(
        "l:1", PostingKind.LATE_FEE.value, {**common, "amount": D("5.00"), "booking": "line", "late_fee_item": "7"}
    )
    fee_invoice = Posting(
        "l:2", PostingKind.LATE_FEE.value, {**common, "amount": D("9.00"), "booking": "invoice", "late_fee_item": "7"}
    )
    bill = Posting(
        "c:1",
        PostingKind.COLLECTIONS_FEE.value,
        {
            **common,
            "amount": D("1.00"),
            "contact_name": "Recovery Partners",
            "collections_fee_account": expense,
            "collections_vendor": vendor,
        },
    )

    results = connect(box, clock).post([fee_line, fee_invoice, bill])

    assert [r.ok for r in results] == [True, True, True], [r.reason for r in results]
    *_, (_, _, body) = [entry for entry in box.requests_log if "/batch" in entry[1]]
    items = json.loads(body, parse_float=Decimal)["BatchItemRequest"]
    assert [(item["operation"], next(k for k in item if k not in ("bId", "operation"))) for item in items] == [
        ("update", "Invoice"),
        ("create", "Invoice"),
        ("create", "Bill"),
    ]
    assert {item["operation"] for item in items} <= operations(XSD_DIR)
    problems: list[str] = []
    for item in items:
        [entity] = set(item) - {"bId", "operation"}
        problems += xsd.undeclared(item[entity], entity, f"{entity}[{item['bId']}]")
    answers = [
        ("Invoice", box.get("Invoice", invoice)),
        ("Invoice", box.get("Invoice", str(results[1].external_id))),
        ("Bill", box.get("Bill", str(results[2].external_id))),
        ("Vendor", box.get("Vendor", vendor)),
    ]
    for entity, obj in answers:
        assert obj is not None
        problems += xsd.undeclared(obj, entity, entity)
    assert problems == []
    update = items[0]["Invoice"]
    assert (update["sparse"], update["SyncToken"], update["PrivateNote"]) == (True, "0", "l:1")
    # every line sent back, the subtotal left out
    assert [x["Amount"] for x in update["Line"]] == [D("100.00"), D("5.00")]
    assert box.get("Invoice", invoice)["Balance"] == D("105.00")  # type: ignore[index]
