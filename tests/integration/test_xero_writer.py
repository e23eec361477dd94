"""The Xero ledger writer against the sandbox over real HTTP: post, refusals, and outcomes left unknown.

``XeroSource.post`` and ``find_posted`` are driven exactly as write-back drives them; the sandbox is started
here and every request the writer sends, with every answer, is validated against Xero's OpenAPI spec when
each test ends. Time is a fake clock: the transport's back-off moves it, nothing sleeps.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import pytest

from connectors.base import OAuthTokens, Posting, PostingKind, RetriableError
from connectors.xero.client import XeroSettings, XeroSource, fee_tag
from connectors.xero.sandbox import DEFAULT_SCOPE, XeroSandbox, parse_ms_date
from tests.support import FakeClock
from tests.xero_spec import validate_exchanges

TODAY = date(2026, 11, 20)
LOCKED = date(2026, 10, 31)
PERIOD_LOCKED = "The document date cannot be before the period lock date, currently set at 31-Oct-2026"
OVER_ALLOCATED = "Credit Note cannot be allocated as amount is greater than amount outstanding"


class MemoryTokens:
    """A TokenStore for one process."""

    def __init__(self, tokens: OAuthTokens) -> None:
        self.tokens = tokens

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
        raise AssertionError(reason)


@dataclass
class Env:
    sandbox: XeroSandbox
    clock: FakeClock
    tenant: str
    source: XeroSource
    customer: str

    def invoice(self, total: str, **extra: Any) -> str:
        created = self.sandbox.put(
            self.tenant,
            "Invoices",
            {
                "Type": "ACCREC",
                "Contact": {"ContactID": self.customer},
                "Status": "AUTHORISED",
                "Date": "2026-10-01",
                "DueDate": "2026-10-31",
                "LineItems": [{"Description": "Services", "Quantity": 1, "UnitAmount": Decimal(total)}],
                **extra,
            },
        )
        return str(created["InvoiceID"])

    def credit_note(self, total: str) -> str:
        created = self.sandbox.put(
            self.tenant,
            "CreditNotes",
            {
                "Type": "ACCRECCREDIT",
                "Contact": {"ContactID": self.customer},
                "Status": "AUTHORISED",
                "Date": "2026-10-15",
                "LineItems": [{"Description": "Credit", "Quantity": 1, "UnitAmount": Decimal(total)}],
            },
        )
        return str(created["CreditNoteID"])

    def cash(self, kind: str, total: str) -> str:
        """Unapplied cash: an overpayment or a prepayment received into the bank."""
        created = self.sandbox.put(
            self.tenant,
            "BankTransactions",
            {
                "Type": f"RECEIVE-{kind.upper()}",
                "Contact": {"ContactID": self.customer},
                "BankAccount": {"Code": "090"},
                "Date": "2026-10-20",
                "LineItems": [{"Description": "Received in advance", "LineAmount": Decimal(total)}],
            },
        )
        return str(created["OverpaymentID" if kind == "overpayment" else "PrepaymentID"])

    def row(self, collection: str, ident: str) -> dict[str, Any]:
        found = self.sandbox.get(self.tenant, collection, ident)
        assert found is not None, (collection, ident)
        return found

    def due(self, invoice: str) -> Decimal:
        return Decimal(self.row("Invoices", invoice)["AmountDue"])

    def by_reference(self, collection: str) -> dict[str, dict[str, Any]]:
        return {str(o["Reference"]): o for o in self.sandbox.all(self.tenant, collection)}

    def calls(self, action: Callable[[], Any]) -> int:
        before = self.source.api_calls()
        action()
        return self.source.api_calls() - before

    def lose_answers(self, path: str) -> None:
        """Xero applies the next calls to ``path`` but every answer is lost, through all the transport's attempts."""
        self.sandbox.inject("drop_after", times=self.source.transport.max_attempts, path_contains=path)


@pytest.fixture
def env(clock: FakeClock) -> Iterator[Env]:
    sandbox = XeroSandbox(clock)
    sandbox.start()
    try:
        tenant = sandbox.tenant_ids[0]
        issued = sandbox.issue_tokens()
        tokens = OAuthTokens(
            access_token=issued["access_token"],
            refresh_token=issued["refresh_token"],
            access_expires_at=clock() + timedelta(seconds=int(issued["expires_in"])),
            account_id=tenant,
        )
        settings = XeroSettings(
            connection="acme-xero",
            client_id=sandbox.client_id,
            client_secret=sandbox.client_secret,
            redirect_uri="http://127.0.0.1/callback",
            api_base=sandbox.api_base,
            identity_base=sandbox.identity_base,
            token_url=sandbox.token_url,
            authorize_url=sandbox.authorize_url,
            scopes=tuple(DEFAULT_SCOPE.split()),
            tenant_id=tenant,
        )
        source = XeroSource(settings, MemoryTokens(tokens), clock, clock.sleep)
        customer = sandbox.put(tenant, "Contacts", {"Name": "Acme Plumbing", "IsCustomer": True})["ContactID"]
        yield Env(sandbox, clock, tenant, source, str(customer))
        exchanges = list(sandbox.requests_and_responses)
        assert exchanges, "the writer sent nothing"
        assert validate_exchanges(exchanges) == len(exchanges)
        assert sandbox.server_errors == []
    finally:
        sandbox.stop()


def payment(key: str, invoice: str, amount: str, day: date = TODAY, **extra: Any) -> Posting:
    payload = {
        "invoice_external_id": invoice,
        "customer_external_id": None,
        "amount": Decimal(amount),
        "currency": "USD",
        "date": day,
        "account": "091",
        **extra,
    }
    return Posting(key, PostingKind.PAYMENT.value, payload)


def fee(key: str, amount: str, day: date = TODAY) -> Posting:
    payload = {
        "amount": Decimal(amount),
        "currency": "USD",
        "date": day,
        "from_account": "091",
        "expense_account": "404",
        "description": "Card processing fees",
        "contact_name": "Stripe",
    }
    return Posting(key, PostingKind.FEE.value, payload)


def payout(key: str, amount: str, reference: str, day: date = TODAY) -> Posting:
    payload = {
        "amount": Decimal(amount),
        "currency": "USD",
        "date": day,
        "from_account": "091",
        "to_account": "090",
        "reference": reference,
    }
    return Posting(key, PostingKind.PAYOUT.value, payload)


def credit(
    key: str, source: str, source_id: str, invoice: str, amount: str, day: date = TODAY, **extra: Any
) -> Posting:
    payload = {
        "invoice_external_id": invoice,
        "customer_external_id": None,
        "source": source,
        "source_id": source_id,
        "amount": Decimal(amount),
        "currency": "USD",
        "date": day,
        "reference": key,
        **extra,
    }
    return Posting(key, PostingKind.CREDIT_APPLICATION.value, payload)


def reversal(key: str, payment_id: str, amount: str, **extra: Any) -> Posting:
    payload = {
        "payment_external_id": payment_id,
        "amount": Decimal(amount),
        "currency": "USD",
        "date": TODAY + timedelta(days=3),
        "reference": key,
        "reason": "chargeback lost",
        **extra,
    }
    return Posting(key, PostingKind.PAYMENT_REVERSAL.value, payload)


def surcharge(key: str, customer: str, amount: str, day: date = TODAY, **extra: Any) -> Posting:
    payload = {
        "customer_external_id": customer,
        "amount": Decimal(amount),
        "currency": "USD",
        "date": day,
        "account": "091",
        "income_account": "200",
        "reference": key,
        **extra,
    }
    return Posting(key, PostingKind.SURCHARGE.value, payload)


def wire_day(value: str) -> date:
    ms = parse_ms_date(value)
    assert ms is not None, value
    return date(1970, 1, 1) + timedelta(milliseconds=ms)


# --- posting ---------------------------------------------------------------------------------------------


def test_sixty_one_payments_take_two_calls_and_land_to_the_cent(env: Env) -> None:
    invoices = [env.invoice(f"{100 + i}.37") for i in range(61)]
    paid = [Decimal(f"{100 + i}.37") - Decimal(i) / 100 for i in range(61)]
    postings = [payment(f"payment:acme:{inv}:1", inv, str(amount)) for inv, amount in zip(invoices, paid, strict=True)]
    results: list[Any] = []
    assert env.calls(lambda: results.extend(env.source.post(postings))) == 2  # 50 + 11
    assert [r.key for r in results] == [p.key for p in postings]
    assert all(r.ok and r.external_id for r in results), [r for r in results if not r.ok]
    payments = env.by_reference("Payments")
    for i, (posting, result) in enumerate(zip(postings, results, strict=True)):
        made = payments[posting.key]  # the reference carries the key
        assert made["PaymentID"] == result.external_id
        assert Decimal(made["Amount"]) == paid[i]
        assert made["Account"]["Code"] == "091" and wire_day(made["Date"]) == TODAY
        assert env.due(invoices[i]) == Decimal(i) / 100
    assert env.row("Invoices", invoices[0])["Status"] == "PAID"
    again = env.source.post(postings[:50])  # the same batch: the same Idempotency-Key, applied once
    assert [r.external_id for r in again] == [r.external_id for r in results[:50]]
    assert env.sandbox.count(env.tenant, "Payments") == 61


def test_a_payment_in_another_currency_sends_xeros_rate_the_other_way_round(env: Env) -> None:
    inv = env.invoice("100.00", CurrencyCode="EUR", CurrencyRate=Decimal("0.920000"))
    # 1.0837 USD per EUR, as the processor converted it; Xero states EUR per USD: 1 / 1.0837 = 0.922765
    [result] = env.source.post([payment("pay:eur", inv, "100.00", currency="EUR", currency_rate=Decimal("1.0837"))])
    assert result.ok, result
    made = env.by_reference("Payments")["pay:eur"]
    assert (Decimal(made["CurrencyRate"]), Decimal(made["Amount"]), Decimal(made["BankAmount"])) == (
        Decimal("0.922765"),
        Decimal("100.00"),
        Decimal("108.37"),  # the USD the processor paid out for it
    )
    assert env.due(inv) == Decimal("0.00")


def test_fee_and_payout_land_with_their_accounts_and_exact_amounts(env: Env) -> None:
    results = env.source.post([fee("fee:acme:txn_1", "12.34"), payout("payout:acme:po_1", "987.66", "po_1")])
    assert [r.ok for r in results] == [True, True], results
    spend = env.by_reference("BankTransactions")["fee:acme:txn_1"]  # reference: the posting key by default
    assert spend["BankTransactionID"] == results[0].external_id
    assert (spend["Type"], spend["BankAccount"]["Code"], spend["Contact"]["Name"]) == ("SPEND", "091", "Stripe")
    assert Decimal(spend["Total"]) == Decimal("12.34") and wire_day(spend["Date"]) == TODAY
    line = spend["LineItems"][0]
    assert (line["AccountCode"], Decimal(line["UnitAmount"]), line["Description"]) == (
        "404",
        Decimal("12.34"),
        "Card processing fees",
    )
    transfer = env.by_reference("BankTransfers")["po_1"]
    assert transfer["BankTransferID"] == results[1].external_id
    assert (transfer["FromBankAccount"]["Code"], transfer["ToBankAccount"]["Code"]) == ("091", "090")
    assert Decimal(transfer["Amount"]) == Decimal("987.66") and wire_day(transfer["Date"]) == TODAY


def test_a_payout_debit_is_a_bank_transfer_from_the_bank_back_to_clearing_found_by_its_payout_id(env: Env) -> None:
    key = "post:acme:acme-xero:payout_debit:po_debit1"
    debit = Posting(
        key,
        PostingKind.PAYOUT_DEBIT.value,
        {
            "amount": Decimal("37.45"),
            "currency": "USD",
            "date": TODAY,
            "from_account": "090",
            "to_account": "091",
            "reference": "po_debit1",
        },
    )
    [result] = env.source.post([debit])
    assert result.ok, result
    transfer = env.by_reference("BankTransfers")["po_debit1"]
    assert transfer["BankTransferID"] == result.external_id
    assert (transfer["FromBankAccount"]["Code"], transfer["ToBankAccount"]["Code"]) == ("090", "091")
    assert Decimal(transfer["Amount"]) == Decimal("37.45") and wire_day(transfer["Date"]) == TODAY
    assert env.source.find_posted([debit]) == {key: result.external_id}


def refund(key: str, customer: str, amount: str, **extra: Any) -> Posting:
    payload = {
        "refund_id": key.rsplit(":", 1)[-1],
        "invoice_external_id": None,
        "customer_external_id": customer,
        "amount": Decimal(amount),
        "currency": "USD",
        "date": TODAY,
        "account": "091",
        "income_account": "200",
        "refund_item": None,
        "reference": key,
        "description": "Refund of a payment",
        **extra,
    }
    return Posting(key, PostingKind.REFUND.value, payload)


def test_a_partial_refund_is_a_credit_note_refunded_from_clearing_made_once(env: Env) -> None:
    inv = env.invoice("100.00")
    [paid] = env.source.post([payment("pay:1", inv, "100.00")])
    assert paid.ok
    first = refund("post:acme:acme-xero:refund:re_1", env.customer, "12.50")
    no_account = refund("post:acme:acme-xero:refund:re_2", env.customer, "5.00", income_account=None)

    results = env.source.post([first, no_account])

    assert results[0].ok, results[0]
    note = env.by_reference("CreditNotes")[first.key]
    assert note["CreditNoteID"] == results[0].external_id
    assert (note["Type"], note["Status"], Decimal(note["Total"]), Decimal(note["RemainingCredit"])) == (
        "ACCRECCREDIT",
        "PAID",
        Decimal("12.50"),
        Decimal("0.00"),
    )
    assert note["LineItems"][0]["AccountCode"] == "200"
    refunded = env.by_reference("Payments")[first.key]
    assert (refunded["PaymentType"], refunded["Account"]["Code"], Decimal(refunded["Amount"])) == (
        "ARCREDITPAYMENT",
        "091",
        Decimal("12.50"),
    )
    assert env.sandbox.bank_balance(env.tenant, "091") == Decimal("87.50")  # 100.00 in, 12.50 back out
    assert env.due(inv) == Decimal("0.00")  # the invoice stays paid
    assert not results[1].ok and "refund_account" in str(results[1].reason)
    assert env.source.find_posted([first, no_account]) == {first.key: results[0].external_id}
    again = env.source.post([first])  # found refunded: nothing is made twice
    assert again[0].ok and again[0].external_id == results[0].external_id
    assert env.sandbox.count(env.tenant, "CreditNotes") == 1


def test_a_refund_reuses_the_credit_note_an_earlier_attempt_made_and_a_lost_answer_is_found(env: Env) -> None:
    made = refund("post:acme:acme-xero:refund:re_8", env.customer, "7.25")
    earlier = env.sandbox.put(  # an earlier attempt made the credit note; its refund never went through
        env.tenant,
        "CreditNotes",
        {
            "Type": "ACCRECCREDIT",
            "Contact": {"ContactID": env.customer},
            "Status": "AUTHORISED",
            "Date": TODAY.isoformat(),
            "Reference": made.key,
            "LineAmountTypes": "NoTax",
            "LineItems": [
                {"Description": "Refund", "Quantity": 1, "UnitAmount": Decimal("7.25"), "AccountCode": "200"}
            ],
        },
    )
    assert env.source.find_posted([made]) == {}  # a credit note with nothing refunded is not posted
    [done] = env.source.post([made])
    assert done.ok and done.external_id == earlier["CreditNoteID"], done
    assert env.sandbox.count(env.tenant, "CreditNotes") == 1

    lost = refund("post:acme:acme-xero:refund:re_9", env.customer, "3.10")
    env.lose_answers("/Payments")
    with pytest.raises(RetriableError):
        env.source.post([lost])
    found = env.source.find_posted([lost])
    assert list(found) == [lost.key]
    assert env.sandbox.count(env.tenant, "CreditNotes") == 2
    assert env.sandbox.bank_balance(env.tenant, "091") == Decimal("-10.35")  # 7.25 and 3.10 refunded, once each


def surcharge_reversal(key: str, transaction: str, amount: str) -> Posting:
    payload = {
        "surcharge_external_id": transaction,
        "amount": Decimal(amount),
        "currency": "USD",
        "date": TODAY + timedelta(days=2),
        "reference": key,
        "reason": "refunded in full",
    }
    return Posting(key, PostingKind.SURCHARGE_REVERSAL.value, payload)


def test_a_refunded_surcharge_deletes_its_receive_money_once(env: Env) -> None:
    made = env.source.post([surcharge(f"surcharge:acme:{n}", env.customer, "1.45") for n in range(2)])
    kept, gone = (str(r.external_id) for r in made)
    assert env.sandbox.bank_balance(env.tenant, "091") == Decimal("2.90")
    undo = surcharge_reversal("undo:1", gone, "1.45")
    wrong = surcharge_reversal("undo:2", kept, "9.99")

    results = env.source.post([undo, wrong])

    assert results[0].ok and results[0].external_id == gone, results[0]
    assert not results[1].ok and "is for 1.45" in str(results[1].reason)
    assert env.row("BankTransactions", gone)["Status"] == "DELETED"
    assert env.row("BankTransactions", kept)["Status"] == "AUTHORISED"
    assert env.sandbox.bank_balance(env.tenant, "091") == Decimal("1.45")
    calls = env.calls(lambda: env.source.post([undo]))  # deleted already: read, nothing sent
    assert calls == 1
    assert env.source.find_posted([undo, wrong]) == {undo.key: gone}


def test_a_surcharge_in_a_locked_period_is_not_deleted_and_is_parked(env: Env) -> None:
    [made] = env.source.post([surcharge("surcharge:acme:1", env.customer, "1.45", day=date(2026, 10, 15))])
    env.sandbox.set_lock_dates(env.tenant, period_lock_date=LOCKED)
    [refused] = env.source.post([surcharge_reversal("undo:1", str(made.external_id), "1.45")])
    assert not refused.ok and not refused.retry and PERIOD_LOCKED in str(refused.reason)
    assert env.row("BankTransactions", str(made.external_id))["Status"] == "AUTHORISED"


def overpayment(key: str, customer: str, amount: str) -> Posting:
    payload = {
        "customer_external_id": customer,
        "amount": Decimal(amount),
        "currency": "USD",
        "date": TODAY,
        "account": "091",
        "reference": key,
        "processor_key": "paylink:acme:acme-xero:customer-1:2026-11-20:200.00",
    }
    return Posting(key, PostingKind.OVERPAYMENT.value, payload)


def test_what_a_balance_payment_leaves_is_an_overpayment_into_clearing(env: Env) -> None:
    posting = overpayment("post:acme:acme-xero:overpayment:pi_3Over", env.customer, "50.00")

    [result] = env.source.post([posting])

    assert result.ok, result
    made = env.row("Overpayments", str(result.external_id))  # the id is the Overpayment's: what the sync reads
    assert (made["Type"], Decimal(made["RemainingCredit"]), made["Contact"]["ContactID"]) == (
        "RECEIVE-OVERPAYMENT",
        Decimal("50.00"),
        env.customer,
    )
    [spent] = [t for t in env.sandbox.all(env.tenant, "BankTransactions") if t["Reference"] == posting.key]
    assert (spent["Type"], spent["BankAccount"]["Code"], spent["OverpaymentID"]) == (
        "RECEIVE-OVERPAYMENT",
        "091",
        result.external_id,
    )
    assert env.sandbox.bank_balance(env.tenant, "091") == Decimal("50.00")
    assert env.source.find_posted([posting]) == {posting.key: result.external_id}


def test_credit_note_allocations_reduce_exactly_with_one_call_per_credit_note(env: Env) -> None:
    x, y = env.invoice("100.00"), env.invoice("30.00")
    a, b = env.credit_note("40.00"), env.credit_note("15.50")
    postings = [
        credit("apply:1", "credit_note", a, x, "25.00"),
        credit("apply:2", "credit_note", b, x, "15.50"),
        credit("apply:3", "credit_note", a, y, "10.00"),
    ]
    results: list[Any] = []
    assert env.calls(lambda: results.extend(env.source.post(postings))) == 2  # one parent per call
    assert [r.key for r in results] == ["apply:1", "apply:2", "apply:3"]
    assert all(r.ok for r in results), results
    note_a, note_b = env.row("CreditNotes", a), env.row("CreditNotes", b)
    assert Decimal(note_a["RemainingCredit"]) == Decimal("5.00") and note_a["Status"] == "AUTHORISED"
    assert Decimal(note_b["RemainingCredit"]) == Decimal("0.00") and note_b["Status"] == "PAID"
    assert {alloc["AllocationID"] for alloc in note_a["Allocations"]} == {
        results[0].external_id,
        results[2].external_id,
    }
    assert (env.due(x), Decimal(env.row("Invoices", x)["AmountCredited"])) == (Decimal("59.50"), Decimal("40.50"))
    assert env.due(y) == Decimal("20.00")


def test_overpayment_and_prepayment_allocations_reduce_exactly(env: Env) -> None:
    x = env.invoice("100.00")
    over, pre = env.cash("overpayment", "60.00"), env.cash("prepayment", "35.00")
    results = env.source.post(
        [
            credit("apply:over", "payment", over, x, "60.00", source_kind="overpayment"),
            credit("apply:pre", "payment", pre, x, "20.00"),  # no source_kind: looked up in Xero
            credit("apply:plain", "payment", over, x, "1.00", source_kind="payment"),
        ]
    )
    assert [r.ok for r in results] == [True, True, False], results
    assert results[2].retry is False and "overpayment or a prepayment" in (results[2].reason or "")
    overpayment, prepayment = env.row("Overpayments", over), env.row("Prepayments", pre)
    assert (Decimal(overpayment["RemainingCredit"]), overpayment["Status"]) == (Decimal("0.00"), "PAID")
    assert (Decimal(prepayment["RemainingCredit"]), prepayment["Status"]) == (Decimal("15.00"), "AUTHORISED")
    assert results[1].external_id == prepayment["Allocations"][0]["AllocationID"]
    invoice = env.row("Invoices", x)
    assert (Decimal(invoice["AmountDue"]), Decimal(invoice["AmountPaid"])) == (Decimal("20.00"), Decimal("80.00"))
    assert any("/Overpayments/" in e.url and "/Allocations?" in e.url for e in env.sandbox.requests_and_responses)
    assert any("/Prepayments/" in e.url and "/Allocations?" in e.url for e in env.sandbox.requests_and_responses)


# --- payment reversals and surcharges -------------------------------------------------------------------


def test_reversals_delete_the_payments_and_the_invoices_are_owed_again_exactly(env: Env) -> None:
    invoices = [env.invoice(total) for total in ("100.00", "80.00", "60.00")]
    amounts = ("40.00", "80.00", "60.00")
    payments = [payment(f"pay:{n}", inv, amount) for n, (inv, amount) in enumerate(zip(invoices, amounts, strict=True))]
    paid = [r.external_id for r in env.source.post(payments)]
    assert all(paid) and env.sandbox.bank_balance(env.tenant, "091") == Decimal("180.00")
    reversals = [reversal("undo:0", str(paid[0]), "40.00"), reversal("undo:1", str(paid[1]).upper(), "80.00")]
    results: list[Any] = []

    assert env.calls(lambda: results.extend(env.source.post(reversals))) == 3  # one read, one call per payment

    assert [(r.ok, r.external_id) for r in results] == [(True, paid[0]), (True, paid[1])], results
    assert [env.due(i) for i in invoices] == [Decimal("100.00"), Decimal("80.00"), Decimal("0.00")]
    assert [env.row("Invoices", i)["Status"] for i in invoices] == ["AUTHORISED", "AUTHORISED", "PAID"]
    assert [env.row("Payments", str(p))["Status"] for p in paid] == ["DELETED", "DELETED", "AUTHORISED"]
    assert env.sandbox.bank_balance(env.tenant, "091") == Decimal("60.00")  # 180.00 - 40.00 - 80.00
    deletes = [e for e in env.sandbox.requests_and_responses if e.method == "POST" and "/Payments/" in e.url]
    assert [e.status for e in deletes] == [200, 200]

    again: list[Any] = []
    assert env.calls(lambda: again.extend(env.source.post(reversals))) == 1  # already deleted: read, not sent
    assert again == results
    assert [env.due(i) for i in invoices] == [Decimal("100.00"), Decimal("80.00"), Decimal("0.00")]
    assert env.sandbox.bank_balance(env.tenant, "091") == Decimal("60.00")
    assert env.source.find_posted(reversals) == {"undo:0": paid[0], "undo:1": paid[1]}
    assert env.source.find_posted(payments) == {p.key: i for p, i in zip(payments, paid, strict=True)}


def test_a_reversal_refused_in_a_locked_period_goes_through_as_a_new_attempt_once_unlocked(env: Env) -> None:
    inv = env.invoice("75.00")
    [made] = env.source.post([payment("pay:1", inv, "75.00")])
    env.sandbox.set_lock_dates(env.tenant, period_lock_date=TODAY)  # the payment's month is closed
    undo = reversal("undo:1", str(made.external_id), "75.00")

    [refused] = env.source.post([undo])

    assert (refused.ok, refused.retry) == (False, False)
    assert refused.reason == "The document date cannot be before the period lock date, currently set at 20-Nov-2026"
    assert env.due(inv) == Decimal("0.00") and env.sandbox.bank_balance(env.tenant, "091") == Decimal("75.00")

    env.sandbox.set_lock_dates(env.tenant)  # a person unlocks the period
    [replayed] = env.source.post([undo])  # the same attempt: the same Idempotency-Key, Xero's first answer
    [posted] = env.source.post([Posting(undo.key, undo.kind, undo.payload, attempt=2)])

    assert replayed == refused
    assert posted.ok and posted.external_id == made.external_id
    assert env.due(inv) == Decimal("75.00") and env.sandbox.bank_balance(env.tenant, "091") == Decimal("0.00")


def test_a_reversal_of_a_payment_xero_does_not_have_or_not_whole_is_refused(env: Env) -> None:
    inv = env.invoice("100.00")
    [made] = env.source.post([payment("pay:1", inv, "50.00")])
    postings = [
        reversal("undo:unknown", "0f3b3d6e-47a4-4c2a-9d7b-6f1c1b8d2e11", "50.00"),
        reversal("undo:not-a-guid", "12345", "50.00"),
        reversal("undo:part", str(made.external_id), "20.00"),
    ]

    results = env.source.post(postings)

    assert [(r.ok, r.retry) for r in results] == [(False, False)] * 3
    assert results[0].reason == "Xero has no payment 0f3b3d6e-47a4-4c2a-9d7b-6f1c1b8d2e11"
    assert "not a Xero PaymentID" in (results[1].reason or "")
    assert "a payment is deleted whole" in (results[2].reason or "")
    assert not any(e.method == "POST" and "/Payments/" in e.url for e in env.sandbox.requests_and_responses)
    assert env.due(inv) == Decimal("50.00")
    assert env.source.find_posted(postings) == {}


def test_surcharges_are_receive_money_into_clearing_with_the_income_account(env: Env) -> None:
    postings = [
        surcharge("surcharge:acme:pi_1", env.customer, "2.95", description="Card surcharge on invoice INV-1"),
        surcharge("surcharge:acme:pi_2", env.customer, "0.31"),
    ]
    results: list[Any] = []

    assert env.calls(lambda: results.extend(env.source.post(postings))) == 1  # batched, like spend money

    assert all(r.ok for r in results), results
    made = env.by_reference("BankTransactions")
    for posting, result, amount in zip(postings, results, ("2.95", "0.31"), strict=True):
        receive = made[posting.key]
        assert receive["BankTransactionID"] == result.external_id
        assert (receive["Type"], receive["BankAccount"]["Code"], receive["Contact"]["ContactID"]) == (
            "RECEIVE",
            "091",
            env.customer,
        )
        assert Decimal(receive["Total"]) == Decimal(amount) and wire_day(receive["Date"]) == TODAY
        [line] = receive["LineItems"]
        assert (line["AccountCode"], Decimal(line["LineAmount"])) == ("200", Decimal(amount))
    assert made["surcharge:acme:pi_1"]["LineItems"][0]["Description"] == "Card surcharge on invoice INV-1"
    assert made["surcharge:acme:pi_2"]["LineItems"][0]["Description"] == "Card surcharge"
    assert env.sandbox.bank_balance(env.tenant, "091") == Decimal("3.26")
    assert env.source.find_posted(postings) == {p.key: r.external_id for p, r in zip(postings, results, strict=True)}


def test_a_surcharge_in_a_locked_period_or_without_a_customer_is_refused(env: Env) -> None:
    env.sandbox.set_lock_dates(env.tenant, period_lock_date=LOCKED)
    results = env.source.post(
        [
            surcharge("surcharge:locked", env.customer, "1.00", day=LOCKED),
            surcharge("surcharge:nobody", env.customer, "1.00", customer_external_id=None),
            surcharge("surcharge:good", env.customer, "1.00"),
        ]
    )
    assert [(r.ok, r.retry) for r in results] == [(False, False), (False, False), (True, False)]
    assert results[0].reason == PERIOD_LOCKED and "customer_external_id missing" in (results[1].reason or "")
    assert env.sandbox.bank_balance(env.tenant, "091") == Decimal("1.00")


# --- refusals: parked with Xero's message, the rest of the batch applied ---------------------------------


def test_refused_items_are_parked_with_xeros_message_and_the_rest_is_applied(env: Env) -> None:
    env.sandbox.set_lock_dates(env.tenant, period_lock_date=LOCKED)
    good, locked, small, voided, good_too = (
        env.invoice(total) for total in ("50.00", "50.00", "5.00", "9.00", "70.00")
    )
    env.sandbox.void(env.tenant, voided)
    note, old_note = env.credit_note("40.00"), env.credit_note("10.00")
    open_x, open_y = env.invoice("100.00"), env.invoice("100.00")
    postings = [
        payment("pay:good", good, "50.00"),
        payment("pay:locked", locked, "50.00", day=LOCKED),  # on the lock date: refused
        payment("pay:over", small, "5.01"),
        payment("pay:voided", voided, "9.00"),
        payment("pay:good-too", good_too, "20.00", day=LOCKED + timedelta(days=1)),
        fee("fee:good", "3.10"),
        fee("fee:locked", "2.90", day=LOCKED - timedelta(days=30)),
        payout("payout:locked", "100.00", "po_locked", day=LOCKED),
        payout("payout:good", "250.00", "po_good"),
        credit("apply:good", "credit_note", note, open_x, "30.00"),
        credit("apply:over", "credit_note", note, open_y, "20.00"),  # only 10.00 left on the credit note
        credit("apply:locked", "credit_note", old_note, open_y, "10.00", day=LOCKED),
    ]
    results = {r.key: r for r in env.source.post(postings)}
    assert {k for k, r in results.items() if r.ok} == {
        "pay:good",
        "pay:good-too",
        "fee:good",
        "payout:good",
        "apply:good",
    }
    expected = {
        "pay:locked": PERIOD_LOCKED,
        "pay:over": "Payment amount exceeds the amount outstanding on this document",
        "pay:voided": "Payments can only be made against Authorised documents",
        "fee:locked": PERIOD_LOCKED,
        "payout:locked": PERIOD_LOCKED,
        "apply:over": OVER_ALLOCATED,
        "apply:locked": PERIOD_LOCKED,
    }
    for key, message in expected.items():
        assert results[key].retry is False, key
        assert results[key].reason == message, (key, results[key].reason)
    # The refused left nothing behind; the rest is in the books.
    assert (env.due(good), env.due(locked), env.due(small), env.due(good_too)) == (
        Decimal("0.00"),
        Decimal("50.00"),
        Decimal("5.00"),
        Decimal("50.00"),
    )
    assert set(env.by_reference("Payments")) == {"pay:good", "pay:good-too"}
    assert set(env.by_reference("BankTransactions")) >= {"fee:good"}
    assert "fee:locked" not in env.by_reference("BankTransactions")
    assert set(env.by_reference("BankTransfers")) == {"po_good"}
    # PUT /BankTransfers takes no summarizeErrors: Xero refused that batch whole, the good one went again alone.
    transfers = [
        e.status for e in env.sandbox.requests_and_responses if e.method == "PUT" and "/BankTransfers" in e.url
    ]
    assert transfers == [400, 200]
    assert Decimal(env.row("CreditNotes", note)["RemainingCredit"]) == Decimal("10.00")
    assert Decimal(env.row("CreditNotes", old_note)["RemainingCredit"]) == Decimal("10.00")
    assert (env.due(open_x), env.due(open_y)) == (Decimal("70.00"), Decimal("100.00"))


def test_the_locked_period_refusal_is_xeros_exact_message_for_both_lock_dates(env: Env) -> None:
    env.sandbox.set_lock_dates(env.tenant, period_lock_date=LOCKED, end_of_year_lock_date=date(2026, 6, 30))
    inv = env.invoice("10.00")
    [result] = env.source.post([payment("pay:june", inv, "10.00", day=date(2026, 6, 30))])
    assert (result.ok, result.retry) == (False, False)
    assert result.reason == (
        f"{PERIOD_LOCKED}; The document date cannot be before the end of year lock date, currently set at 30-Jun-2026"
    )
    env.sandbox.set_lock_dates(env.tenant)  # a person unlocks the period
    [replayed] = env.source.post([payment("pay:june", inv, "10.00", day=date(2026, 6, 30))])
    assert replayed == result, "the same postings make the same Idempotency-Key: Xero replays its first answer"
    [again] = env.source.post([payment("pay:june", inv, "10.00", day=date(2026, 7, 1))])  # corrected: another key
    assert again.ok and env.due(inv) == Decimal("0.00")


# --- outcomes left unknown --------------------------------------------------------------------------------


def test_a_lost_answer_raises_then_find_posted_finds_every_key_and_nothing_posts_twice(env: Env) -> None:
    invoices = [env.invoice(f"{20 + i}.00") for i in range(61)]
    postings = [payment(f"payment:acme:{inv}:1", inv, f"{20 + i}.00") for i, inv in enumerate(invoices)]
    env.lose_answers("/Payments")
    with pytest.raises(RetriableError):
        env.source.post(postings)
    assert env.sandbox.count(env.tenant, "Payments") == 50, "the first batch was applied once, whatever the retries"
    found = env.source.find_posted(postings)
    made = env.by_reference("Payments")
    assert found == {p.key: made[p.key]["PaymentID"] for p in postings[:50]}
    missing = [p for p in postings if p.key not in found]
    assert len(missing) == 11
    assert all(r.ok for r in env.source.post(missing))
    assert env.sandbox.count(env.tenant, "Payments") == 61
    assert all(env.due(inv) == Decimal("0.00") for inv in invoices)
    assert set(env.source.find_posted(postings)) == {p.key for p in postings}


@pytest.mark.parametrize(
    "kind",
    [
        "fee",
        "payout",
        "payout_debit",
        "credit_note",
        "overpayment",
        "surcharge",
        "reversal",
        "surcharge_reversal",
        "unapplied",
    ],
)
def test_lost_answers_of_every_kind_are_found_by_find_posted(env: Env, kind: str) -> None:
    inv = env.invoice("100.00")
    if kind == "reversal":
        first, second = (r.external_id for r in env.source.post([payment(f"pay:{n}", inv, "10.00") for n in (1, 2)]))
        posting, path = reversal("undo:1", str(first), "10.00"), f"/Payments/{first}"
        other = reversal("undo:2", str(second), "10.00")
    elif kind == "surcharge":
        posting, path = surcharge("surcharge:acme:1", env.customer, "1.45"), "/BankTransactions"
        other = surcharge("surcharge:acme:2", env.customer, "1.45")
    elif kind == "fee":
        posting, path, other = fee("fee:acme:1", "4.20"), "/BankTransactions", fee("fee:acme:2", "4.20")
    elif kind == "payout":
        posting, path = payout("payout:acme:po_9", "400.00", "po_9"), "/BankTransfers"
        other = payout("payout:acme:po_10", "400.00", "po_10")
    elif kind == "unapplied":
        posting, path = overpayment("overpayment:acme:1", env.customer, "9.00"), "/BankTransactions"
        other = overpayment("overpayment:acme:2", env.customer, "9.00")
    elif kind == "surcharge_reversal":
        first, second = (
            str(r.external_id)
            for r in env.source.post([surcharge(f"surcharge:acme:{n}", env.customer, "1.45") for n in (1, 2)])
        )
        posting, path = surcharge_reversal("undo:1", first, "1.45"), f"/BankTransactions/{first}"
        other = surcharge_reversal("undo:2", second, "1.45")
    elif kind == "payout_debit":

        def debit(po: str) -> Posting:
            moved = payout(f"payout_debit:acme:{po}", "40.00", po)
            swapped = {**moved.payload, "from_account": "090", "to_account": "091"}
            return Posting(moved.key, PostingKind.PAYOUT_DEBIT.value, swapped)

        posting, path, other = debit("po_d1"), "/BankTransfers", debit("po_d2")
    elif kind == "credit_note":
        note = env.credit_note("50.00")
        env.sandbox.allocate(env.tenant, "CreditNotes", note, inv, Decimal("5.00"), on=TODAY)  # not ours
        posting, path = credit("apply:1", "credit_note", note, inv, "12.00"), "/Allocations"
        other = credit("apply:2", "credit_note", note, inv, "13.00")
    else:
        cash = env.cash("overpayment", "50.00")
        posting = credit("apply:1", "payment", cash, inv, "12.00", source_kind="overpayment")
        path, other = "/Allocations", credit("apply:2", "payment", cash, inv, "12.00", source_kind="overpayment")
    env.lose_answers(path)
    with pytest.raises(RetriableError):
        env.source.post([posting])
    before = env.due(inv), env.sandbox.count(env.tenant, "BankTransactions")
    found = env.source.find_posted([posting, other])
    assert list(found) == [posting.key], "found once; the one never sent is not found"
    if kind in ("credit_note", "overpayment"):
        collection = "CreditNotes" if kind == "credit_note" else "Overpayments"
        parent = env.row(collection, str(posting.payload["source_id"]))
        ours = [a for a in parent["Allocations"] if Decimal(a["Amount"]) == Decimal("12.00")]
        assert [a["AllocationID"] for a in ours] == [found[posting.key]]
    [result] = env.source.post([other])  # the one never sent goes through; the found one is not sent again
    assert result.ok
    assert env.source.find_posted([posting, other]).keys() == {posting.key, other.key}
    if kind in ("fee", "surcharge"):
        assert env.sandbox.count(env.tenant, "BankTransactions") == before[1] + 1
    if kind == "reversal":
        assert (before[0], env.due(inv)) == (Decimal("90.00"), Decimal("100.00"))
        assert env.sandbox.bank_balance(env.tenant, "091") == Decimal("0.00")
    if kind in ("credit_note", "overpayment"):
        assert env.due(inv) == before[0] - Decimal(str(other.payload["amount"]))


# --- late fees and collections agency fees -------------------------------------------------------------------


def late_fee(key: str, invoice: str, customer: str, amount: str, booking: str = "line", **extra: Any) -> Posting:
    payload = {
        "invoice_external_id": invoice,
        "customer_external_id": customer,
        "amount": Decimal(amount),
        "currency": "USD",
        "date": TODAY,
        "reference": key,
        "booking": booking,
        "description": "Late fee: 30 days overdue",
        "late_fee_account": "200",
        **extra,
    }
    return Posting(key, PostingKind.LATE_FEE.value, payload)


def agency_fee(key: str, invoice: str, customer: str, amount: str, **extra: Any) -> Posting:
    payload = {
        "invoice_external_id": invoice,
        "customer_external_id": customer,
        "amount": Decimal(amount),
        "currency": "USD",
        "date": TODAY,
        "reference": key,
        "description": "Collections upfront fee (1%)",
        "contact_name": "Recovery Partners",
        "collections_fee_account": "429",
        **extra,
    }
    return Posting(key, PostingKind.COLLECTIONS_FEE.value, payload)


def test_a_late_fee_line_is_added_to_the_invoice_with_its_lines_kept_and_found_by_its_tag(env: Env) -> None:
    inv = env.invoice("100.00")
    fees = [
        late_fee("dunning:acme:1", inv, env.customer, "5.00"),
        late_fee("dunning:acme:2", inv, env.customer, "2.50"),
    ]

    results = env.source.post(fees)

    assert [(r.ok, r.external_id, r.booked_as) for r in results] == [(True, inv, None), (True, inv, None)]
    row = env.row("Invoices", inv)
    assert [(line["Description"], Decimal(line["LineAmount"])) for line in row["LineItems"]] == [
        ("Services", Decimal("100.00")),
        (f"Late fee: 30 days overdue [{fee_tag('dunning:acme:1')}]", Decimal("5.00")),
        (f"Late fee: 30 days overdue [{fee_tag('dunning:acme:2')}]", Decimal("2.50")),
    ]
    assert env.due(inv) == Decimal("107.50") and row["LineItems"][2]["AccountCode"] == "200"
    assert env.source.find_posted(fees) == {fees[0].key: inv, fees[1].key: inv}
    assert env.calls(lambda: env.source.post(fees)) == 1, "read once; both carried already: nothing is sent"
    assert env.due(inv) == Decimal("107.50")


def test_a_late_fee_on_an_invoice_with_a_payment_is_booked_as_an_invoice_of_its_own(env: Env) -> None:
    inv = env.invoice("100.00")
    [paid] = env.source.post([payment("pay:1", inv, "40.00")])
    assert paid.ok
    fee = late_fee("dunning:acme:paid", inv, env.customer, "5.00")

    [result] = env.source.post([fee])

    assert result.ok and result.booked_as == "invoice" and result.external_id != inv
    made = env.row("Invoices", str(result.external_id))
    assert (made["Type"], made["Status"], made["Reference"], made["Contact"]["ContactID"]) == (
        "ACCREC",
        "AUTHORISED",
        fee.key,
        env.customer,
    )
    assert env.due(str(result.external_id)) == Decimal("5.00") and env.due(inv) == Decimal("60.00")
    assert env.source.find_posted([fee]) == {fee.key: result.external_id}
    [again] = env.source.post([late_fee("dunning:acme:other", inv, env.customer, "1.00", booking="invoice")])
    assert again.ok and again.booked_as is None


def test_xeros_refusal_to_edit_a_paid_invoice_moves_the_late_fee_to_an_invoice_of_its_own(env: Env) -> None:
    inv = env.invoice("100.00")
    paid: list[str] = []

    def pay_between_read_and_write(method: str, path: str, body: str) -> None:
        if method == "POST" and f"/Invoices/{inv}" in path and not paid:  # a payment lands after our read
            made = env.sandbox.put(
                env.tenant,
                "Payments",
                {"Invoice": {"InvoiceID": inv}, "Account": {"Code": "090"}, "Date": "2026-11-19", "Amount": 30},
            )
            paid.append(str(made["PaymentID"]))

    env.sandbox.on_request = pay_between_read_and_write
    fee = late_fee("dunning:acme:race", inv, env.customer, "5.00")

    [result] = env.source.post([fee])

    assert paid and result.ok and result.booked_as == "invoice", result.reason
    refused = [
        json.loads(text) for method, path, text in env.sandbox.requests_log if method == "POST" and "/Invoices/" in path
    ]
    assert len(refused) == 1 and len(refused[0]["Invoices"][0]["LineItems"]) == 2
    assert env.due(inv) == Decimal("70.00") and env.due(str(result.external_id)) == Decimal("5.00")
    assert len(env.row("Invoices", inv)["LineItems"]) == 1


def test_a_late_fee_in_a_locked_period_or_without_its_account_is_parked_with_the_reason(env: Env) -> None:
    inv, gone = env.invoice("100.00"), env.invoice("10.00")
    env.sandbox.update(env.tenant, "Invoices", gone, {"Status": "DELETED"})
    env.sandbox.set_lock_dates(env.tenant, period_lock_date=LOCKED)  # the invoices are dated 2026-10-01

    results = env.source.post(
        [
            late_fee("dunning:acme:locked", inv, env.customer, "5.00"),
            late_fee("dunning:acme:noacct", inv, env.customer, "5.00", booking="invoice", late_fee_account=None),
            late_fee("dunning:acme:gone", gone, env.customer, "1.00"),
        ]
    )

    assert [(r.ok, r.retry) for r in results] == [(False, False)] * 3
    assert results[0].reason == PERIOD_LOCKED
    assert "late_fee_account" in str(results[1].reason)
    assert "not of valid status" in str(results[2].reason)
    assert env.due(inv) == Decimal("100.00")


def test_an_agency_fee_is_a_bill_to_the_agency_contact_found_or_made_by_name(env: Env) -> None:
    inv = env.invoice("500.00")
    fees = [
        agency_fee("collections:fee:1", inv, env.customer, "5.00"),
        agency_fee("collections:fee:2", inv, env.customer, "95.00"),
    ]

    results = env.source.post(fees)

    assert all(r.ok for r in results), [r.reason for r in results]
    bills = [env.row("Invoices", str(r.external_id)) for r in results]
    assert [(b["Type"], b["Status"], b["InvoiceNumber"], Decimal(b["Total"])) for b in bills] == [
        ("ACCPAY", "AUTHORISED", "collections:fee:1", Decimal("5.00")),
        ("ACCPAY", "AUTHORISED", "collections:fee:2", Decimal("95.00")),
    ]
    agencies = [c for c in env.sandbox.all(env.tenant, "Contacts") if c["Name"] == "Recovery Partners"]
    assert len(agencies) == 1 and {b["Contact"]["ContactID"] for b in bills} == {agencies[0]["ContactID"]}
    assert bills[0]["LineItems"][0]["AccountCode"] == "429" and env.due(inv) == Decimal("500.00")
    assert env.source.find_posted(fees) == {r.key: r.external_id for r in results}
    [refused] = env.source.post(
        [agency_fee("collections:fee:3", inv, env.customer, "1.00", collections_fee_account=None)]
    )
    assert not refused.ok and "collections_fee_account" in str(refused.reason)


@pytest.mark.parametrize("kind", ["line", "invoice", "collections_fee"])
def test_lost_answers_of_late_fees_and_agency_fees_are_found_and_not_sent_twice(env: Env, kind: str) -> None:
    inv = env.invoice("100.00")
    if kind == "collections_fee":
        posting, other = (agency_fee(f"collections:fee:{n}", inv, env.customer, "5.00") for n in (1, 2))
        path = "/Invoices"
    else:
        posting, other = (late_fee(f"dunning:acme:{n}", inv, env.customer, "5.00", booking=kind) for n in (1, 2))
        path = f"/Invoices/{inv}" if kind == "line" else "/Invoices"
    env.lose_answers(path)
    with pytest.raises(RetriableError):
        env.source.post([posting])
    count = env.sandbox.count(env.tenant, "Invoices")
    found = env.source.find_posted([posting, other])
    assert list(found) == [posting.key], "found once; the one never sent is not found"
    assert (found[posting.key] == inv) is (kind == "line")
    [result] = env.source.post([other])
    assert result.ok
    assert env.source.find_posted([posting, other]).keys() == {posting.key, other.key}
    assert env.sandbox.count(env.tenant, "Invoices") == count + (0 if kind == "line" else 1)
    if kind == "line":
        assert env.due(inv) == Decimal("110.00")
