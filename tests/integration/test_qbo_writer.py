"""QuickBooks write-back end to end: ``QuickBooksSource.post`` and ``find_posted`` over real HTTP against the sandbox.

The sandbox runs with QuickBooks' rate limits, on a fake clock the client's budget moves (nothing sleeps).
Every check reads the company back from the sandbox: balances, links, notes, account balances.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from connectors.base import OAuthTokens, Posting, PostingKind, PostingResult, RetriableError
from connectors.quickbooks.client import QuickBooksSettings, QuickBooksSource
from connectors.quickbooks.faults import Fault, FaultError, ItemFate, item_verdict
from connectors.quickbooks.sandbox import QuickBooksSandbox
from connectors.quickbooks.writer import BATCH_LIMIT, payment_ref_num, request_id
from tests.support import FakeClock

START = datetime(2026, 11, 20, 17, 0, tzinfo=UTC)
TODAY = date(2026, 11, 20)
D = Decimal


class MemoryTokens:
    """A ``TokenStore`` in memory (the connector's token handling is tested elsewhere)."""

    def __init__(self, tokens: OAuthTokens) -> None:
        self.tokens: OAuthTokens | None = tokens
        self.reauth: str | None = None
        self._lock = threading.Lock()

    def load(self) -> OAuthTokens | None:
        return self.tokens

    def save(self, tokens: OAuthTokens) -> None:
        self.tokens = tokens

    def refresh_locked(self, stale: OAuthTokens | None, refresh: Callable[[OAuthTokens], OAuthTokens]) -> OAuthTokens:
        with self._lock:
            if self.tokens is not None and self.tokens != stale:
                return self.tokens
            assert stale is not None
            self.tokens = refresh(stale)
            return self.tokens

    def mark_needs_reauth(self, reason: str) -> None:
        self.reauth = reason


@dataclass
class Company:
    box: QuickBooksSandbox
    clock: FakeClock
    source: QuickBooksSource
    customer: str
    clearing: str
    bank: str
    fees: str

    def invoice(self, amount: str, customer: str | None = None) -> str:
        body = {
            "CustomerRef": {"value": customer or self.customer},
            "TxnDate": "2026-11-01",
            "Line": [{"Amount": D(amount), "DetailType": "SalesItemLineDetail"}],
        }
        return str(self.box.put("Invoice", body)["Id"])

    def balance(self, entity: str, ident: str, field: str = "Balance") -> Decimal:
        obj = self.box.get(entity, ident)
        assert obj is not None, (entity, ident)
        return D(str(obj[field]))

    def batches(self) -> list[tuple[str, list[dict[str, Any]]]]:
        """``(requestid, items)`` of every /batch request the sandbox received, in order."""
        out = []
        for method, path, body in self.box.requests_log:
            if method == "POST" and urlsplit(path).path.endswith("/batch"):
                query = parse_qs(urlsplit(path).query)
                out.append((query.get("requestid", [""])[0], json.loads(body)["BatchItemRequest"]))
        return out


def payment(company: Company, n: int, invoice: str, amount: str, **extra: Any) -> Posting:
    key = f"post:acme:acme-qbo:payment:pi_{n:04d}_{'x' * 20}"
    payload: dict[str, Any] = {
        "invoice_external_id": invoice,
        "customer_external_id": company.customer,
        "amount": D(amount),
        "currency": "USD",
        "date": TODAY,
        "account": company.clearing,
        "reference": key,
        **extra,
    }
    return Posting(key, PostingKind.PAYMENT.value, payload)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def box(clock: FakeClock) -> Iterator[QuickBooksSandbox]:
    sandbox = QuickBooksSandbox(clock)  # QuickBooks' rate limits: 10/s, 500/min, 40 batches/min
    sandbox.start()
    yield sandbox
    sandbox.stop()
    assert sandbox.server_errors == []


def connect(box: QuickBooksSandbox, clock: FakeClock) -> QuickBooksSource:
    pair = box.issue_tokens()
    tokens = MemoryTokens(
        OAuthTokens(pair["access_token"], pair["refresh_token"], clock() + timedelta(hours=1), account_id=box.realm_id)
    )
    settings = QuickBooksSettings(
        connection="acme-qbo",
        client_id=box.client_id,
        client_secret=box.client_secret,
        redirect_uri="http://127.0.0.1/callback",
        api_base=box.api_base,
        discovery=box.discovery_url,
        token_url=box.token_url,
        realm_id=box.realm_id,
    )
    return QuickBooksSource(settings, tokens, clock, clock.sleep)


@pytest.fixture
def company(box: QuickBooksSandbox, clock: FakeClock) -> Company:
    customer = str(box.put("Customer", {"DisplayName": "Acme Plumbing"})["Id"])
    clearing = box.put(
        "Account",
        {"Name": "Stripe Clearing", "Classification": "Asset", "AccountType": "Other Current Asset"},
    )
    bank = box.put("Account", {"Name": "Checking", "Classification": "Asset", "AccountType": "Bank"})
    fees = box.put("Account", {"Name": "Merchant Fees", "Classification": "Expense", "AccountType": "Expense"})
    return Company(box, clock, connect(box, clock), customer, str(clearing["Id"]), str(bank["Id"]), str(fees["Id"]))


def changed(posting: Posting, **payload: Any) -> Posting:
    return Posting(posting.key, posting.kind, {**posting.payload, **payload})


def ok_ids(results: list[PostingResult]) -> list[str]:
    assert all(r.ok for r in results), [r.reason for r in results if not r.ok]
    return [str(r.external_id) for r in results]


# --- payments ------------------------------------------------------------------------------------------------


def test_31_payments_go_in_two_batches_and_each_invoice_drops_by_its_amount(company: Company) -> None:
    invoices = [company.invoice(f"{100 + n}.00") for n in range(31)]
    postings = [payment(company, n, invoices[n], f"{10 + n}.25") for n in range(31)]

    results = company.source.post(postings)

    ids = ok_ids(results)
    assert [r.key for r in results] == [p.key for p in postings]
    batches = company.batches()
    assert [len(items) for _, items in batches] == [30, 1]
    assert [item["bId"] for item in batches[0][1]] == [str(n) for n in range(30)]
    assert all(len(rid) <= 36 and rid.startswith("ar") for rid, _ in batches)
    for n, (invoice, ident) in enumerate(zip(invoices, ids, strict=True)):
        assert company.balance("Invoice", invoice) == D(f"{100 + n}.00") - D(f"{10 + n}.25")
        paid = company.box.get("Payment", ident)
        assert paid is not None
        assert paid["PrivateNote"] == postings[n].key
        assert paid["PaymentRefNum"] == payment_ref_num(postings[n].key) and len(paid["PaymentRefNum"]) <= 21
        assert paid["DepositToAccountRef"] == {"value": company.clearing}
        assert paid["TotalAmt"] == D(f"{10 + n}.25") and paid["UnappliedAmt"] == 0
        assert paid["TxnDate"] == TODAY.isoformat()
        assert paid["Line"] == [{"Amount": D(f"{10 + n}.25"), "LinkedTxn": [{"TxnId": invoice, "TxnType": "Invoice"}]}]
    assert company.box.throttled_count == 0

    again = company.source.post(postings)

    assert ok_ids(again) == ids  # the replayed answers, not new payments
    assert company.box.count("Payment") == 31
    assert [rid for rid, _ in company.batches()[2:]] == [rid for rid, _ in batches]
    assert company.balance("Invoice", invoices[0]) == D("89.75")
    assert company.source.find_posted(postings) == {p.key: i for p, i in zip(postings, ids, strict=True)}


def test_a_payment_in_another_currency_carries_its_rate(company: Company) -> None:
    invoice = company.invoice("500.00")
    posting = payment(company, 1, invoice, "120.00", currency="cad", currency_rate=D("0.7312"))

    [result] = company.source.post([posting])

    paid = company.box.get("Payment", str(result.external_id))
    assert paid is not None
    assert paid["CurrencyRef"]["value"] == "CAD" and paid["ExchangeRate"] == D("0.7312")


# --- fees, payouts, clearing ---------------------------------------------------------------------------------


def test_fee_is_a_purchase_payout_a_deposit_and_clearing_nets_to_zero(company: Company) -> None:
    first, second = company.invoice("100.00"), company.invoice("80.00")
    fee_key = "post:acme:acme-qbo:fee:txn_1"
    payout_key = "post:acme:acme-qbo:payout:po_1Q2w3E"
    postings = [
        payment(company, 1, first, "100.00"),
        payment(company, 2, second, "50.00"),
        Posting(
            fee_key,
            PostingKind.FEE.value,
            {
                "amount": D("4.65"),
                "currency": "USD",
                "date": TODAY,
                "from_account": company.clearing,
                "expense_account": company.fees,
                "reference": fee_key,
                "description": "Processing fees (charge ch_1)",
                "contact_name": "Stripe",
            },
        ),
        Posting(
            payout_key,
            PostingKind.PAYOUT.value,
            {
                "payout_id": "po_1Q2w3E",
                "amount": D("145.35"),
                "currency": "USD",
                "date": date(2026, 11, 22),
                "from_account": company.clearing,
                "to_account": company.bank,
                "reference": "po_1Q2w3E",
            },
        ),
    ]

    results = company.source.post(postings)

    _, _, purchase_id, deposit_id = ok_ids(results)
    purchase = company.box.get("Purchase", purchase_id)
    deposit = company.box.get("Deposit", deposit_id)
    assert purchase is not None and deposit is not None
    assert (purchase["PaymentType"], purchase["AccountRef"], purchase["TotalAmt"]) == (
        "Cash",
        {"value": company.clearing},
        D("4.65"),
    )
    [line] = purchase["Line"]
    assert line["DetailType"] == "AccountBasedExpenseLineDetail"
    assert line["AccountBasedExpenseLineDetail"] == {"AccountRef": {"value": company.fees}}
    assert (line["Amount"], line["Description"]) == (D("4.65"), "Processing fees (charge ch_1)")
    assert purchase["PrivateNote"] == fee_key
    assert deposit["DepositToAccountRef"] == {"value": company.bank} and deposit["TotalAmt"] == D("145.35")
    [line] = deposit["Line"]
    assert line["DepositLineDetail"] == {"AccountRef": {"value": company.clearing}}
    assert deposit["PrivateNote"] == "po_1Q2w3E"  # the payout id, as the bank statement shows it
    assert deposit["TxnDate"] == "2026-11-22"
    assert company.balance("Account", company.clearing, "CurrentBalance") == 0  # 150.00 - 4.65 - 145.35
    assert company.balance("Account", company.bank, "CurrentBalance") == D("145.35")
    assert company.source.find_posted(postings[2:]) == {fee_key: purchase_id, payout_key: deposit_id}


def test_a_payout_debit_is_a_transfer_from_the_bank_back_to_clearing_found_by_its_payout_id(company: Company) -> None:
    invoice = company.invoice("100.00")
    company.source.post([payment(company, 1, invoice, "100.00")])
    payout = Posting(
        "post:acme:acme-qbo:payout:po_in",
        PostingKind.PAYOUT.value,
        {
            "amount": D("100.00"),
            "currency": "USD",
            "date": TODAY,
            "from_account": company.clearing,
            "to_account": company.bank,
            "reference": "po_in",
        },
    )
    debit_key = "post:acme:acme-qbo:payout_debit:po_debit1"
    debit = Posting(
        debit_key,
        PostingKind.PAYOUT_DEBIT.value,
        {
            "payout_id": "po_debit1",
            "amount": D("37.45"),
            "currency": "USD",
            "date": date(2026, 11, 23),
            "from_account": company.bank,
            "to_account": company.clearing,
            "reference": "po_debit1",
        },
    )

    _, transfer_id = ok_ids(company.source.post([payout, debit]))

    transfer = company.box.get("Transfer", transfer_id)
    assert transfer is not None
    assert (transfer["FromAccountRef"], transfer["ToAccountRef"], transfer["Amount"]) == (
        {"value": company.bank},
        {"value": company.clearing},
        D("37.45"),
    )
    assert (transfer["PrivateNote"], transfer["TxnDate"]) == ("po_debit1", "2026-11-23")
    assert company.balance("Account", company.bank, "CurrentBalance") == D("62.55")  # 100.00 in, 37.45 back out
    assert company.balance("Account", company.clearing, "CurrentBalance") == D("37.45")
    assert company.source.find_posted([debit]) == {debit_key: transfer_id}
    same_account = changed(debit, to_account=company.bank)
    [refused] = company.source.post([same_account])
    assert not refused.ok and "two accounts" in str(refused.reason)


def refund(company: Company, refund_id: str, invoice: str, amount: str, **extra: Any) -> Posting:
    key = f"post:acme:acme-qbo:refund:{refund_id}"
    payload: dict[str, Any] = {
        "refund_id": refund_id,
        "invoice_external_id": invoice,
        "customer_external_id": company.customer,
        "amount": D(amount),
        "currency": "USD",
        "date": TODAY,
        "account": company.clearing,
        "refund_item": "1",
        "income_account": None,
        "reference": key,
        "description": f"Refund {refund_id}",
        **extra,
    }
    return Posting(key, PostingKind.REFUND.value, payload)


def test_a_partial_refund_is_a_refund_receipt_paid_from_clearing_and_the_invoice_stays_paid(company: Company) -> None:
    invoice = company.invoice("100.00")
    ok_ids(company.source.post([payment(company, 1, invoice, "100.00")]))
    posted = refund(company, "re_1AbC", invoice, "12.50")
    no_item = refund(company, "re_2AbC", invoice, "5.00", refund_item=None)

    first, second = company.source.post([posted, no_item])

    assert first.ok, first.reason
    receipt = company.box.get("RefundReceipt", str(first.external_id))
    assert receipt is not None
    assert (receipt["CustomerRef"]["value"], receipt["DepositToAccountRef"], receipt["TotalAmt"]) == (
        company.customer,
        {"value": company.clearing},
        D("12.50"),
    )
    [line, _subtotal] = receipt["Line"]
    assert (line["Amount"], line["SalesItemLineDetail"]["ItemRef"]) == (D("12.50"), {"value": "1"})
    assert (receipt["PrivateNote"], receipt["PaymentRefNum"], receipt["TxnDate"]) == (
        posted.key,
        "re_1AbC",
        TODAY.isoformat(),
    )
    assert company.balance("Account", company.clearing, "CurrentBalance") == D("87.50")  # 100.00 in, 12.50 out
    assert company.balance("Invoice", invoice) == 0  # still paid: only the money given back is booked
    assert not second.ok and "refund_item" in str(second.reason)
    assert company.source.find_posted([posted, no_item]) == {posted.key: first.external_id}


def test_what_a_balance_payment_leaves_is_an_unapplied_payment_into_clearing(company: Company) -> None:
    key = "post:acme:acme-qbo:overpayment:pi_3Over"
    posting = Posting(
        key,
        PostingKind.OVERPAYMENT.value,
        {
            "customer_external_id": company.customer,
            "amount": D("50.00"),
            "currency": "USD",
            "date": TODAY,
            "account": company.clearing,
            "reference": key,
            "processor_key": "paylink:acme:acme-qbo:customer-1:2026-11-20:200.00",
        },
    )
    before = company.box.customer_balance(company.customer)

    [ident] = ok_ids(company.source.post([posting]))

    made = company.box.get("Payment", ident)
    assert made is not None
    assert (made["TotalAmt"], made["UnappliedAmt"], made["Line"]) == (D("50.00"), D("50.00"), [])
    assert (made["DepositToAccountRef"], made["PrivateNote"]) == ({"value": company.clearing}, key)
    assert company.box.customer_balance(company.customer) == before - D("50.00")  # the customer's credit
    assert clearing(company) == D("50.00")
    assert company.source.find_posted([posting]) == {key: ident}


def test_a_lost_answer_leaves_transfers_refund_receipts_and_unapplied_payments_to_find_posted(
    company: Company,
) -> None:
    invoice = company.invoice("100.00")
    ok_ids(company.source.post([payment(company, 1, invoice, "100.00")]))

    def unapplied(n: int) -> Posting:
        key = f"post:acme:acme-qbo:overpayment:pi_{n}"
        payload = {
            "customer_external_id": company.customer,
            "amount": D("20.00"),
            "currency": "USD",
            "date": TODAY,
            "account": company.clearing,
            "reference": key,
        }
        return Posting(key, PostingKind.OVERPAYMENT.value, payload)

    def debit(n: int) -> Posting:
        key = f"post:acme:acme-qbo:payout_debit:po_{n}"
        payload = {
            "amount": D("15.00"),
            "currency": "USD",
            "date": TODAY,
            "from_account": company.bank,
            "to_account": company.clearing,
            "reference": f"po_{n}",
        }
        return Posting(key, PostingKind.PAYOUT_DEBIT.value, payload)

    sent = [debit(1), refund(company, "re_lost1", invoice, "5.00"), unapplied(1)]
    never_sent = [debit(2), refund(company, "re_lost2", invoice, "5.00"), unapplied(2)]
    company.box.inject("drop_after", times=6, path_contains="/batch")  # every attempt's answer is lost

    with pytest.raises(RetriableError):
        company.source.post(sent)

    found = company.source.find_posted([*sent, *never_sent])
    assert set(found) == {p.key for p in sent}
    assert (company.box.count("Transfer"), company.box.count("RefundReceipt")) == (1, 1)
    ok_ids(company.source.post(never_sent))
    assert (company.box.count("Transfer"), company.box.count("RefundReceipt")) == (2, 2)
    assert clearing(company) == D("100.00") + D("30.00") - D("10.00") + D("40.00")


# --- credit applications -------------------------------------------------------------------------------------


def credit(company: Company, invoice: str, source: str, source_id: str, amount: str, **extra: Any) -> Posting:
    key = f"credit:acme:{invoice}:{source}:{source_id}"
    payload = {
        "invoice_external_id": invoice,
        "customer_external_id": company.customer,
        "source": source,
        "source_id": source_id,
        "amount": D(amount),
        "currency": "USD",
        "date": TODAY,
        "reference": key,
        **extra,
    }
    return Posting(key, PostingKind.CREDIT_APPLICATION.value, payload)


def test_a_credit_memo_is_applied_by_a_zero_payment_linking_both(company: Company) -> None:
    invoice = company.invoice("200.00")
    memo = company.box.put(
        "CreditMemo",
        {
            "CustomerRef": {"value": company.customer},
            "Line": [{"Amount": D("80.00"), "DetailType": "SalesItemLineDetail"}],
        },
    )
    posting = credit(company, invoice, "credit_note", str(memo["Id"]), "80.00", customer_external_id=None)

    [ident] = ok_ids(company.source.post([posting]))

    zero = company.box.get("Payment", ident)
    assert zero is not None
    assert (zero["TotalAmt"], zero["UnappliedAmt"], zero["PrivateNote"]) == (0, 0, posting.key)
    assert zero["CustomerRef"]["value"] == company.customer  # read from the invoice: the posting named none
    assert [line["LinkedTxn"] for line in zero["Line"]] == [
        [{"TxnId": invoice, "TxnType": "Invoice"}],
        [{"TxnId": str(memo["Id"]), "TxnType": "CreditMemo"}],
    ]
    assert company.balance("Invoice", invoice) == D("120.00")
    assert company.balance("CreditMemo", str(memo["Id"]), "RemainingCredit") == 0
    assert company.box.customer_balance(company.customer) == D("120.00")
    assert company.source.find_posted([posting]) == {posting.key: ident}


def test_unapplied_cash_is_applied_after_one_stale_sync_token(company: Company) -> None:
    old, new = company.invoice("100.00"), company.invoice("400.00")
    cash = company.box.put(
        "Payment",
        {
            "CustomerRef": {"value": company.customer},
            "TotalAmt": D("300.00"),
            "TxnDate": "2026-11-02",
            "PrivateNote": "Check 1042",
            "Line": [{"Amount": D("100.00"), "LinkedTxn": [{"TxnId": old, "TxnType": "Invoice"}]}],
        },
    )
    pid = str(cash["Id"])
    edits: list[str] = []

    def edit_elsewhere(method: str, path: str, body: str) -> None:
        if "/batch" in path and not edits:  # somebody edits the payment between our read and our update
            edits.append(company.box.update("Payment", pid, {"PaymentRefNum": "1042"})["SyncToken"])

    company.box.on_request = edit_elsewhere
    posting = credit(company, new, "payment", pid, "150.00")

    [result] = company.source.post([posting])

    assert result.ok and result.external_id == pid, result.reason
    batches = company.batches()
    assert len(batches) == 2 and batches[0][0] != batches[1][0]
    assert batches[0][1][0]["Payment"]["SyncToken"] == "0" and batches[1][1][0]["Payment"]["SyncToken"] == edits[0]
    paid = company.box.get("Payment", pid)
    assert paid is not None
    assert [(line["Amount"], line["LinkedTxn"][0]["TxnId"]) for line in paid["Line"]] == [
        (D("100.00"), old),
        (D("150.00"), new),
    ]
    assert (paid["TotalAmt"], paid["UnappliedAmt"], paid["PaymentRefNum"]) == (D("300.00"), D("50.00"), "1042")
    assert paid["PrivateNote"] == f"Check 1042\n{posting.key}"
    assert company.balance("Invoice", new) == D("250.00") and company.balance("Invoice", old) == 0
    assert company.source.find_posted([posting]) == {posting.key: pid}

    token = paid["SyncToken"]
    [again] = company.source.post([posting])  # already carried: nothing is sent

    assert again.ok and again.external_id == pid
    assert len(company.batches()) == 2
    assert company.box.get("Payment", pid)["SyncToken"] == token  # type: ignore[index]


def test_two_applications_from_one_payment_make_one_update(company: Company) -> None:
    first, second = company.invoice("60.00"), company.invoice("70.00")
    cash = company.box.put("Payment", {"CustomerRef": {"value": company.customer}, "TotalAmt": D("200.00")})
    pid = str(cash["Id"])
    postings = [credit(company, first, "payment", pid, "60.00"), credit(company, second, "payment", pid, "30.00")]

    assert ok_ids(company.source.post(postings)) == [pid, pid]

    [(_, items)] = company.batches()
    assert len(items) == 1
    assert company.balance("Payment", pid, "UnappliedAmt") == D("110.00")
    assert company.balance("Invoice", first) == 0 and company.balance("Invoice", second) == D("40.00")


def test_unapplied_cash_short_of_the_amount_is_parked(company: Company) -> None:
    invoice = company.invoice("500.00")
    cash = company.box.put("Payment", {"CustomerRef": {"value": company.customer}, "TotalAmt": D("20.00")})

    [result] = company.source.post([credit(company, invoice, "payment", str(cash["Id"]), "25.00")])

    assert (result.ok, result.retry) == (False, False)
    assert result.reason is not None and "code 6000" in result.reason
    assert company.balance("Invoice", invoice) == D("500.00")


# --- payment reversals and surcharges -----------------------------------------------------------------------


def reversal(company: Company, n: int, payment_id: str, amount: str, **extra: Any) -> Posting:
    key = f"post:acme:acme-qbo:payment_reversal:pi_{n:04d}:returned"
    payload: dict[str, Any] = {
        "payment_external_id": payment_id,
        "amount": D(amount),
        "currency": "USD",
        "date": TODAY + timedelta(days=3),
        "reference": key,
        "reason": "ACH return R01 (insufficient funds)",
        **extra,
    }
    return Posting(key, PostingKind.PAYMENT_REVERSAL.value, payload)


def surcharge(company: Company, n: int, amount: str, income: str, **extra: Any) -> Posting:
    key = f"post:acme:acme-qbo:surcharge:pi_{n:04d}"
    payload: dict[str, Any] = {
        "customer_external_id": company.customer,
        "amount": D(amount),
        "currency": "USD",
        "date": TODAY,
        "account": company.clearing,
        "income_account": income,
        "reference": key,
        "description": f"Card surcharge on invoice {n}",
        **extra,
    }
    return Posting(key, PostingKind.SURCHARGE.value, payload)


def income_account(company: Company) -> str:
    body = {"Name": "Surcharge Income", "Classification": "Revenue", "AccountType": "Income"}
    return str(company.box.put("Account", body)["Id"])


def clearing(company: Company) -> Decimal:
    return company.balance("Account", company.clearing, "CurrentBalance")


def test_reversals_void_the_payments_and_the_invoices_are_owed_again_exactly(company: Company) -> None:
    invoices = [company.invoice(a) for a in ("100.00", "80.00", "60.00")]
    payments = [payment(company, n, invoices[n], a) for n, a in enumerate(("40.00", "80.00", "60.00"))]
    paid = ok_ids(company.source.post(payments))
    assert clearing(company) == D("180.00") and company.box.customer_balance(company.customer) == D("60.00")
    reversals = [reversal(company, 0, paid[0], "40.00"), reversal(company, 1, paid[1], "80.00")]

    results = company.source.post(reversals)

    assert ok_ids(results) == paid[:2]
    assert [company.balance("Invoice", i) for i in invoices] == [D("100.00"), D("80.00"), D("0.00")]
    assert clearing(company) == D("60.00")  # 180.00 - 40.00 - 80.00
    assert company.box.customer_balance(company.customer) == D("180.00")
    [*_, (_, items)] = company.batches()
    assert [(item["operation"], set(item["Payment"])) for item in items] == [
        ("void", {"Id", "SyncToken", "sparse", "PrivateNote"})
    ] * 2
    for posted, undone, ident in zip(payments[:2], reversals, paid[:2], strict=True):
        voided = company.box.get("Payment", ident)
        assert voided is not None
        assert (voided["TotalAmt"], voided["UnappliedAmt"]) == (0, 0)
        assert voided["PrivateNote"] == f"Voided - {posted.key}\n{undone.key}"
    assert company.balance("Payment", paid[2], "TotalAmt") == D("60.00")
    batches = len(company.batches())

    again = company.source.post(reversals)  # already void: nothing is sent, nothing changes

    assert ok_ids(again) == paid[:2] and len(company.batches()) == batches
    assert [company.balance("Invoice", i) for i in invoices] == [D("100.00"), D("80.00"), D("0.00")]
    assert clearing(company) == D("60.00")
    assert company.source.find_posted(reversals) == {r.key: i for r, i in zip(reversals, paid[:2], strict=True)}
    # the payments themselves are still found: "Voided - " in front of their reference is read through
    assert company.source.find_posted(payments) == {p.key: i for p, i in zip(payments, paid, strict=True)}


def test_a_reversal_refused_in_a_closed_period_goes_through_as_a_new_attempt_once_reopened(company: Company) -> None:
    invoice = company.invoice("90.00")
    [ident] = ok_ids(company.source.post([payment(company, 1, invoice, "90.00")]))
    undo = reversal(company, 1, ident, "90.00")
    company.box.closing_date = TODAY

    [refused] = company.source.post([undo])

    assert (refused.ok, refused.retry) == (False, False)
    assert "closed accounting period" in (refused.reason or "") and "code 6210" in (refused.reason or "")
    assert company.balance("Invoice", invoice) == 0 and clearing(company) == D("90.00")

    company.box.closing_date = None  # a person reopens the period
    [replayed] = company.source.post([undo])  # the same attempt: QuickBooks replays its first answer
    [posted] = company.source.post([Posting(undo.key, undo.kind, undo.payload, attempt=2)])

    assert replayed == refused
    assert posted.ok and posted.external_id == ident
    assert company.balance("Invoice", invoice) == D("90.00") and clearing(company) == 0


def test_a_reversal_of_a_payment_that_is_not_there_or_not_whole_is_refused(company: Company) -> None:
    invoice = company.invoice("500.00")
    first, gone = ok_ids(
        company.source.post([payment(company, 1, invoice, "50.00"), payment(company, 2, invoice, "25.00")])
    )
    company.box.delete("Payment", gone)  # a person deleted it
    postings = [
        reversal(company, 1, "999999", "10.00"),
        reversal(company, 2, gone, "25.00"),
        reversal(company, 3, first, "49.99"),
        reversal(company, 4, first, "50.00", currency="CAD"),
    ]

    results = company.source.post(postings)

    assert [(r.ok, r.retry) for r in results] == [(False, False)] * 4
    reasons = [r.reason or "" for r in results]
    assert "code 610" in reasons[0] and "payment 999999 is not in QuickBooks" in reasons[0]
    assert "code 610" in reasons[1] and f"payment {gone} is not in QuickBooks" in reasons[1]
    assert "only a whole payment is voided" in reasons[2] and "in USD, the reversal in CAD" in reasons[3]
    assert company.batches()[1:] == []  # nothing was sent
    assert company.balance("Invoice", invoice) == D("450.00")
    assert company.source.find_posted(postings) == {}


def test_a_void_answered_stale_is_read_again_and_sent_once_more(company: Company) -> None:
    invoice = company.invoice("70.00")
    [ident] = ok_ids(company.source.post([payment(company, 1, invoice, "70.00")]))
    edits: list[str] = []

    def edit_elsewhere(method: str, path: str, body: str) -> None:
        if "/batch" in path and not edits:  # somebody edits the payment between our read and our void
            edits.append(company.box.update("Payment", ident, {"PaymentRefNum": "1042"})["SyncToken"])

    company.box.on_request = edit_elsewhere
    undo = reversal(company, 1, ident, "70.00")

    [result] = company.source.post([undo])

    assert result.ok and result.external_id == ident, result.reason
    stale, fresh = company.batches()[1:]
    assert stale[1][0]["Payment"]["SyncToken"] == "0" and fresh[1][0]["Payment"]["SyncToken"] == edits[0]
    assert company.balance("Invoice", invoice) == D("70.00") and clearing(company) == 0


def test_surcharges_are_deposits_of_income_into_clearing_batched_with_the_rest(company: Company) -> None:
    income = income_account(company)
    invoice = company.invoice("100.00")
    postings = [
        payment(company, 1, invoice, "100.00"),
        surcharge(company, 1, "2.95", income),
        surcharge(company, 2, "0.31", income, customer_external_id=None, description=None),
    ]

    results = company.source.post(postings)

    _, first, second = ok_ids(results)
    [(_, items)] = company.batches()
    assert [next(k for k in item if k not in ("bId", "operation")) for item in items] == [
        "Payment",
        "Deposit",
        "Deposit",
    ]
    assert clearing(company) == D("103.26")  # exactly 100.00 + 2.95 + 0.31
    for ident, posting, amount in ((first, postings[1], D("2.95")), (second, postings[2], D("0.31"))):
        deposit = company.box.get("Deposit", ident)
        assert deposit is not None
        assert deposit["DepositToAccountRef"] == {"value": company.clearing} and deposit["TotalAmt"] == amount
        assert deposit["PrivateNote"] == posting.key and deposit["TxnDate"] == TODAY.isoformat()
        [line] = deposit["Line"]
        assert (line["Amount"], line["DetailType"]) == (amount, "DepositLineDetail")
        assert line["DepositLineDetail"]["AccountRef"] == {"value": income}
    first_line = company.box.get("Deposit", first)["Line"][0]  # type: ignore[index]
    assert first_line["DepositLineDetail"]["Entity"] == {"value": company.customer}
    assert first_line["Description"] == "Card surcharge on invoice 1"
    assert "Entity" not in company.box.get("Deposit", second)["Line"][0]["DepositLineDetail"]  # type: ignore[index]
    assert company.source.find_posted(postings[1:]) == {postings[1].key: first, postings[2].key: second}


def surcharge_reversal(n: int, deposit_id: str, amount: str) -> Posting:
    key = f"post:acme:acme-qbo:surcharge_reversal:pi_{n:04d}:refund"
    payload: dict[str, Any] = {
        "surcharge_external_id": deposit_id,
        "amount": D(amount),
        "currency": "USD",
        "date": TODAY + timedelta(days=2),
        "reference": key,
        "reason": "refunded in full (103.00 USD)",
    }
    return Posting(key, PostingKind.SURCHARGE_REVERSAL.value, payload)


def test_a_refunded_surcharge_deletes_its_deposit_once_and_a_lost_answer_is_found(company: Company) -> None:
    income = income_account(company)
    kept, gone, lost = ok_ids(company.source.post([surcharge(company, n, "2.90", income) for n in range(3)]))
    assert clearing(company) == D("8.70")
    undo = surcharge_reversal(1, gone, "2.90")
    wrong = surcharge_reversal(0, kept, "9.99")

    results = company.source.post([undo, wrong])

    assert results[0].ok and results[0].external_id == gone, results[0]
    assert not results[1].ok and "is for 2.90" in str(results[1].reason)
    assert company.box.get("Deposit", gone) is None and company.box.get("Deposit", kept) is not None
    assert clearing(company) == D("5.80")  # the surcharge is out of clearing again
    [(_, items)] = company.batches()[-1:]
    assert [(item["operation"], item["Deposit"]) for item in items] == [("delete", {"Id": gone, "SyncToken": "0"})]
    requests = company.box.request_count
    [again] = company.source.post([undo])  # gone already: ok without a request beyond the read
    assert again.ok and company.box.request_count == requests + 1
    assert company.source.find_posted([undo, surcharge_reversal(2, lost, "2.90")]) == {undo.key: gone}
    lost_undo = surcharge_reversal(2, lost, "2.90")
    company.box.inject("drop_after", times=6, path_contains="/batch")
    with pytest.raises(RetriableError):
        company.source.post([lost_undo])
    assert company.source.find_posted([lost_undo]) == {lost_undo.key: lost}
    assert clearing(company) == D("2.90")


def test_a_lost_answer_leaves_reversals_and_surcharges_to_find_posted(company: Company) -> None:
    income = income_account(company)
    invoices = [company.invoice("30.00") for _ in range(2)]
    paid = ok_ids(company.source.post([payment(company, n, invoices[n], "30.00") for n in range(2)]))
    sent = [reversal(company, 0, paid[0], "30.00"), surcharge(company, 0, "0.90", income)]
    never_sent = [reversal(company, 1, paid[1], "30.00"), surcharge(company, 1, "0.90", income)]
    company.box.inject("drop_after", times=6, path_contains="/batch")  # every attempt's answer is lost

    with pytest.raises(RetriableError):
        company.source.post(sent)

    assert company.box.count("Deposit") == 1 and company.balance("Invoice", invoices[0]) == D("30.00")
    found = company.source.find_posted([*sent, *never_sent])
    [deposit] = company.box.all("Deposit")
    assert found == {sent[0].key: paid[0], sent[1].key: str(deposit["Id"])}

    results = company.source.post(never_sent)  # only what was not found is posted again

    assert len(ok_ids(results)) == 2
    assert company.box.count("Deposit") == 2 and company.balance("Invoice", invoices[1]) == D("30.00")
    assert clearing(company) == D("1.80")


# --- failures, item by item ----------------------------------------------------------------------------------


def test_refused_items_are_parked_with_their_code_and_the_rest_of_the_batch_lands(company: Company) -> None:
    good, deleted, closed, small = (company.invoice(a) for a in ("100.00", "100.00", "100.00", "10.00"))
    company.box.delete("Invoice", deleted)
    company.box.closing_date = date(2026, 10, 31)
    postings = [
        payment(company, 1, good, "40.00"),
        payment(company, 2, deleted, "40.00"),
        payment(company, 3, closed, "40.00", date=date(2026, 10, 15)),
        payment(company, 4, small, "40.00"),  # more than the invoice's balance
        changed(payment(company, 5, good, "1.00"), amount=40.0),  # a float never reaches the wire
        changed(payment(company, 6, good, "2.00"), account=None),
        payment(company, 7, good, "20.00"),
    ]

    results = company.source.post(postings)

    assert [r.ok for r in results] == [True, False, False, False, False, False, True]
    assert all(not r.retry for r in results)
    reasons = [r.reason or "" for r in results]
    assert "code 610 Object Not Found" in reasons[1] and "deleted this transaction" in reasons[1]
    assert "code 6210" in reasons[2] and "account period has closed" in reasons[2]
    assert "code 6000" in reasons[3] and "exceeds its open balance" in reasons[3]
    assert "not a Decimal" in reasons[4] and "lacks 'account'" in reasons[5]
    [(_, items)] = company.batches()
    assert len(items) == 5  # the two unreadable postings were never sent
    assert company.box.count("Payment") == 2
    assert company.balance("Invoice", good) == D("40.00")
    assert company.balance("Invoice", closed) == D("100.00") and company.balance("Invoice", small) == D("10.00")


def test_a_fee_in_a_closed_period_is_parked_and_posts_once_moved_to_an_open_date(company: Company) -> None:
    company.box.closing_date = TODAY
    fee = Posting(
        "post:acme:acme-qbo:fee:txn_9",
        PostingKind.FEE.value,
        {
            "amount": D("1.20"),
            "currency": "USD",
            "date": TODAY,
            "from_account": company.clearing,
            "expense_account": company.fees,
        },
    )

    [refused] = company.source.post([fee])
    [replayed] = company.source.post([fee])  # the same request again: QuickBooks replays its first answer
    [posted] = company.source.post([changed(fee, date=TODAY + timedelta(days=1))])

    assert (refused.ok, refused.retry) == (False, False) and "6210" in (refused.reason or "")
    assert replayed == refused
    assert posted.ok and company.box.count("Purchase") == 1
    purchase = company.box.get("Purchase", str(posted.external_id))
    assert purchase is not None and purchase["PrivateNote"] == fee.key  # no reference in the payload: the key


# --- outcome unknown -----------------------------------------------------------------------------------------


def test_a_lost_answer_raises_then_find_posted_finds_every_applied_posting(company: Company) -> None:
    invoices = [company.invoice("50.00") for _ in range(35)]
    postings = [payment(company, n, invoices[n], "12.34") for n in range(35)]
    company.box.inject("drop_after", times=6, path_contains="/batch")  # every attempt's answer is lost

    with pytest.raises(RetriableError):
        company.source.post(postings)

    assert company.box.count("Payment") == 30  # the first batch, applied once for its six attempts
    assert len({rid for rid, _ in company.batches()}) == 1
    found = company.source.find_posted(postings)
    assert set(found) == {p.key for p in postings[:30]}
    by_note = {p["PrivateNote"]: p["Id"] for p in company.box.all("Payment")}
    assert found == {key: by_note[key] for key in found}

    missing = [p for p in postings if p.key not in found]
    results = company.source.post(missing)

    assert len(ok_ids(results)) == 5
    assert company.box.count("Payment") == 35
    assert {company.balance("Invoice", i) for i in invoices} == {D("37.66")}
    assert ok_ids(company.source.post(postings))  # the whole lot again: both requestids replay
    assert company.box.count("Payment") == 35


def test_find_posted_pages_through_a_busy_day(company: Company) -> None:
    invoice = company.invoice("99999.00")
    for n in range(1005):  # somebody else's payments on the same day
        company.box.put(
            "Payment",
            {
                "CustomerRef": {"value": company.customer},
                "TotalAmt": D("1.00"),
                "TxnDate": TODAY.isoformat(),
                "PrivateNote": f"cash sale {n}",
            },
        )
    posting = payment(company, 1, invoice, "5.00")
    [ident] = ok_ids(company.source.post([posting]))

    before = len(company.box.requests_log)

    assert company.source.find_posted([posting, payment(company, 2, invoice, "5.00")]) == {posting.key: ident}
    pages = [body for _, _, body in company.box.requests_log[before:]]
    assert [page.split(" STARTPOSITION ")[1] for page in pages] == ["1 MAXRESULTS 1000", "1001 MAXRESULTS 1000"]
    assert all("FROM Payment WHERE TxnDate IN ('2026-11-20')" in page for page in pages)


# --- rate ----------------------------------------------------------------------------------------------------


def test_ninety_postings_respect_the_batch_budget(company: Company) -> None:
    arrivals: list[datetime] = []
    company.box.on_request = lambda method, path, body: arrivals.append(company.clock()) if "/batch" in path else None
    invoices = [company.invoice("1000.00") for _ in range(3)]
    postings = [payment(company, n, invoices[n % 3], "1.00") for n in range(90)]

    results = company.source.post(postings)  # in bulk: three batches
    assert len(ok_ids(results)) == 90 and len(arrivals) == 3

    started = company.clock()
    more = [payment(company, 100 + n, invoices[n % 3], "2.00") for n in range(90)]
    for posting in more:  # one at a time: ninety batches, forty a minute at most
        ok_ids(company.source.post([posting]))

    assert len(arrivals) == 93
    assert company.box.throttled_count == 0
    assert company.clock() - started >= timedelta(seconds=120)
    for n, moment in enumerate(arrivals):
        window = [a for a in arrivals[n:] if a < moment + timedelta(seconds=60)]
        assert len(window) <= 40
    assert company.source.api_calls() == 93
    assert {company.balance("Invoice", i) for i in invoices} == {D("910.00")}


# --- pure parts ----------------------------------------------------------------------------------------------


def fault(code: str, message: str = "m") -> Fault:
    return Fault("ValidationFault", (FaultError(code, message, "detail"),))


@pytest.mark.parametrize(
    ("code", "fate", "words"),
    [
        ("3001", ItemFate.RETRY, "throttled"),
        ("10000", ItemFate.RETRY, "system fault"),
        ("5010", ItemFate.STALE, "stale object"),
        ("600", ItemFate.DUPLICATE, "duplicate request"),
        ("6210", ItemFate.PARK, "closed accounting period"),
        ("6200", ItemFate.PARK, "closed accounting period"),
        ("610", ItemFate.PARK, "not found or deleted"),
        ("6000", ItemFate.PARK, "business validation"),
        ("6240", ItemFate.PARK, "business validation"),
        ("2010", ItemFate.PARK, "request validation"),
        ("2500", ItemFate.PARK, "request validation"),
        ("7777", ItemFate.PARK, "refused"),
    ],
)
def test_item_faults_by_code(code: str, fate: ItemFate, words: str) -> None:
    verdict = item_verdict(fault(code, "Some Message"))
    assert verdict.fate is fate
    assert words in verdict.reason and f"code {code} Some Message" in verdict.reason


def test_a_closed_period_under_another_code_is_parked_not_re_read() -> None:
    reported = Fault(None, (FaultError("5010", "Account Period Closed", "The account period has closed. {1}"),))
    verdict = item_verdict(reported)
    assert verdict.fate is ItemFate.PARK and "closed accounting period: code 5010" in verdict.reason


def test_request_id_is_deterministic_short_and_follows_the_bodies() -> None:
    items = [{"bId": "0", "operation": "create", "Payment": {"TotalAmt": D("1.00")}}]
    first = request_id("acme-qbo", ["k1"], items)
    assert first == request_id("acme-qbo", ["k1"], items) and len(first) == 34
    assert first != request_id("acme-qbo", ["k2"], items)
    assert first != request_id("acme-qbo", ["k1"], [{**items[0], "Payment": {"TotalAmt": D("1.01")}}])
    assert BATCH_LIMIT == 30


def test_payment_ref_num_is_a_short_form() -> None:
    assert payment_ref_num("post:acme:q:payment:pi_1") == "pi_1"
    assert payment_ref_num("short-ref") == "short-ref"
    long = payment_ref_num("post:acme:q:payment:pi_3NxYzAbCdEfGhIjKlMnOpQr")
    assert len(long) == 21 and long.startswith("AR-")


# --- late fees and collections agency fees -------------------------------------------------------------------


def late_fee(company: Company, n: int, invoice: str, amount: str, booking: str = "line", **extra: Any) -> Posting:
    key = f"dunning:acme:acme-qbo:{invoice}:standard:{n}"
    payload: dict[str, Any] = {
        "invoice_external_id": invoice,
        "customer_external_id": company.customer,
        "amount": D(amount),
        "currency": "USD",
        "date": TODAY,
        "reference": key,
        "booking": booking,
        "description": f"Late fee ({n})",
        "late_fee_item": "7",
        **extra,
    }
    return Posting(key, PostingKind.LATE_FEE.value, payload)


def agency_fee(company: Company, n: int, invoice: str, amount: str, vendor: str, expense: str, **extra: Any) -> Posting:
    key = f"collections:fee:acme:acme-qbo:{invoice}:upfront:{n}"
    payload: dict[str, Any] = {
        "invoice_external_id": invoice,
        "customer_external_id": company.customer,
        "amount": D(amount),
        "currency": "USD",
        "date": TODAY,
        "reference": key,
        "description": "Collections upfront fee",
        "contact_name": "Recovery Partners",
        "collections_fee_account": expense,
        "collections_vendor": vendor,
        **extra,
    }
    return Posting(key, PostingKind.COLLECTIONS_FEE.value, payload)


def agency(company: Company) -> tuple[str, str]:
    vendor = str(company.box.put("Vendor", {"DisplayName": "Recovery Partners"})["Id"])
    expense = company.box.put(
        "Account", {"Name": "Collection Costs", "Classification": "Expense", "AccountType": "Expense"}
    )
    return vendor, str(expense["Id"])


def test_a_late_fee_line_raises_the_invoice_by_the_fee_and_two_fees_on_one_invoice_make_one_update(
    company: Company,
) -> None:
    invoice, other = company.invoice("100.00"), company.invoice("40.00")
    fees = [
        late_fee(company, 1, invoice, "5.00"),
        late_fee(company, 2, invoice, "2.50"),
        late_fee(company, 1, other, "1.20"),
    ]

    results = company.source.post(fees)

    assert ok_ids(results) == [invoice, invoice, other]
    [(_, items)] = company.batches()
    assert [(i["operation"], i["Invoice"]["Id"], i["Invoice"]["sparse"]) for i in items] == [
        ("update", invoice, True),
        ("update", other, True),
    ]
    assert company.balance("Invoice", invoice) == D("107.50") and company.balance("Invoice", other) == D("41.20")
    updated = company.box.get("Invoice", invoice)
    assert updated is not None
    assert [(line["Amount"], line["SalesItemLineDetail"]["ItemRef"]["value"]) for line in updated["Line"][:3]] == [
        (D("100.00"), "1"),
        (D("5.00"), "7"),
        (D("2.50"), "7"),
    ]
    assert updated["PrivateNote"] == f"{fees[0].key}\n{fees[1].key}" and updated["TotalAmt"] == D("107.50")
    assert company.box.customer_balance(company.customer) == D("148.70")

    again = company.source.post(fees)  # carried already: nothing is sent
    assert ok_ids(again) == [invoice, invoice, other] and len(company.batches()) == 1
    assert company.source.find_posted(fees) == {fees[0].key: invoice, fees[1].key: invoice, fees[2].key: other}


def test_a_late_fee_invoice_is_an_invoice_of_its_own_on_the_late_fee_item(company: Company) -> None:
    overdue = company.invoice("100.00")
    fee = late_fee(company, 1, overdue, "15.00", booking="invoice", customer_external_id=None)

    [ident] = ok_ids(company.source.post([fee]))

    made = company.box.get("Invoice", ident)
    assert made is not None and ident != overdue
    assert (made["CustomerRef"]["value"], made["TxnDate"], made["PrivateNote"]) == (
        company.customer,
        TODAY.isoformat(),
        fee.key,
    )
    assert [(line["Amount"], line["SalesItemLineDetail"]["ItemRef"]["value"]) for line in made["Line"][:-1]] == [
        (D("15.00"), "7")
    ]
    assert company.balance("Invoice", ident) == D("15.00") and company.balance("Invoice", overdue) == D("100.00")
    assert company.source.find_posted([fee]) == {fee.key: ident}


def test_an_agency_fee_is_a_bill_from_the_vendor_on_the_expense_account(company: Company) -> None:
    invoice = company.invoice("500.00")
    vendor, expense = agency(company)
    fee = agency_fee(company, 1, invoice, "5.00", vendor, expense)

    [ident] = ok_ids(company.source.post([fee]))

    bill = company.box.get("Bill", ident)
    assert bill is not None
    assert (bill["VendorRef"]["value"], bill["TotalAmt"], bill["Balance"], bill["PrivateNote"]) == (
        vendor,
        D("5.00"),
        D("5.00"),
        fee.key,
    )
    assert bill["Line"][0]["AccountBasedExpenseLineDetail"]["AccountRef"] == {"value": expense}
    assert company.balance("Invoice", invoice) == D("500.00")
    assert company.source.find_posted([fee]) == {fee.key: ident}


def test_a_late_fee_or_agency_fee_without_its_config_is_refused_naming_the_key(company: Company) -> None:
    invoice = company.invoice("100.00")
    vendor, expense = agency(company)
    no_item = late_fee(company, 1, invoice, "5.00", late_fee_item=None)
    no_item_invoice = late_fee(company, 2, invoice, "5.00", booking="invoice", late_fee_item=None)
    no_vendor = agency_fee(company, 1, invoice, "5.00", vendor, expense, collections_vendor=None)

    results = company.source.post([no_item, no_item_invoice, no_vendor])

    assert [(r.ok, r.retry) for r in results] == [(False, False)] * 3
    assert "late_fee_item" in str(results[0].reason) and "late_fee_item" in str(results[1].reason)
    assert "collections_vendor" in str(results[2].reason)
    assert company.batches() == [] and company.box.count("Bill") == 0
    assert company.balance("Invoice", invoice) == D("100.00")


def test_a_late_fee_line_answered_stale_is_read_again_and_added_once(company: Company) -> None:
    invoice = company.invoice("100.00")
    edits: list[str] = []

    def edit_elsewhere(method: str, path: str, body: str) -> None:
        if "/batch" in path and not edits:  # somebody edits the invoice between our read and our update
            edits.append(company.box.update("Invoice", invoice, {"CustomerMemo": {"value": "Thanks"}})["SyncToken"])

    company.box.on_request = edit_elsewhere
    fee = late_fee(company, 1, invoice, "5.00")

    [result] = company.source.post([fee])

    assert result.ok and result.external_id == invoice, result.reason
    stale, fresh = company.batches()
    assert stale[1][0]["Invoice"]["SyncToken"] == "0" and fresh[1][0]["Invoice"]["SyncToken"] == edits[0]
    assert company.balance("Invoice", invoice) == D("105.00")
    assert company.box.get("Invoice", invoice)["CustomerMemo"] == {"value": "Thanks"}  # type: ignore[index]


def test_a_late_fee_on_a_deleted_or_closed_period_invoice_is_parked_with_the_reason(company: Company) -> None:
    gone, closed, fine = company.invoice("10.00"), company.invoice("20.00"), company.invoice("30.00")
    company.box.delete("Invoice", gone)
    company.box.closing_date = date(2026, 11, 5)  # the invoices are dated 2026-11-01

    results = company.source.post(
        [late_fee(company, 1, gone, "1.00"), late_fee(company, 1, closed, "1.00"), late_fee(company, 1, fine, "1.00")]
    )

    assert [(r.ok, r.retry) for r in results] == [(False, False), (False, False), (False, False)]
    assert "Object Not Found" in str(results[0].reason) and f"invoice {gone}" in str(results[0].reason)
    assert "closed accounting period" in str(results[1].reason)
    assert "The account period has closed" in str(results[1].reason)
    company.box.closing_date = None
    [ok] = company.source.post([late_fee(company, 1, fine, "1.00")])
    assert ok.ok and company.balance("Invoice", fine) == D("31.00")


def test_a_lost_answer_leaves_late_fees_and_agency_fees_to_find_posted_and_nothing_is_sent_twice(
    company: Company,
) -> None:
    first, second = company.invoice("100.00"), company.invoice("200.00")
    vendor, expense = agency(company)
    sent = [
        late_fee(company, 1, first, "5.00"),
        late_fee(company, 1, second, "9.00", booking="invoice"),
        agency_fee(company, 1, first, "3.00", vendor, expense),
    ]
    never_sent = [
        late_fee(company, 2, first, "5.00"),
        late_fee(company, 2, second, "9.00", booking="invoice"),
        agency_fee(company, 2, first, "3.00", vendor, expense),
    ]
    company.box.inject("drop_after", times=6, path_contains="/batch")  # every attempt's answer is lost

    with pytest.raises(RetriableError):
        company.source.post(sent)

    assert company.balance("Invoice", first) == D("105.00"), "applied once, whatever the transport's retries"
    found = company.source.find_posted([*sent, *never_sent])
    assert set(found) == {p.key for p in sent}
    assert found[sent[0].key] == first and company.box.count("Bill") == 1
    ok_ids(company.source.post(never_sent))
    assert company.balance("Invoice", first) == D("110.00")
    assert (company.box.count("Invoice"), company.box.count("Bill")) == (4, 2)
