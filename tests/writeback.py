"""Write-back end to end: one tenant on a QuickBooks or Xero sandbox, collecting through the local Stripe.

Shared by ``tests/e2e/test_writeback_e2e.py`` and ``tests/e2e/test_writeback_crash.py``:

* :class:`QuickBooksBooks` and :class:`XeroBooks` put customers, invoices, credit notes and checks in a
  ledger sandbox the way a bookkeeper would, and read back what write-back made there (payments, fees,
  deposits, credit applications) as :class:`Posted` rows, so both ledgers are asserted the same way.
* :func:`start_world` starts the ledger sandbox and localstripe, writes the config (with the connection's
  ``[writeback]`` section appended: :func:`arsync.sandboxes.write_sandbox_config` does not write it),
  migrates a SQLite or PostgreSQL ledger, registers and authorises: the :class:`World` holds the real
  :class:`arsync.bootstrap.App` on the real clock.
* :func:`make_payout` stands in for the processor's payout (see its docstring for why).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any, Protocol

import requests
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from arsync.bootstrap import App, bootstrap
from arsync.collecting import Collector
from arsync.reconciling import Reconciler
from arsync.sandboxes import (
    SandboxConnection,
    SandboxPayments,
    authorise,
    quickbooks_connection,
    write_sandbox_config,
    xero_connection,
)
from connectors.quickbooks.sandbox import QuickBooksSandbox
from connectors.stripe.sandbox import StripeSandbox
from connectors.xero.sandbox import XeroSandbox, parse_ms_date
from sync.db import upgrade
from sync.models import BalanceLineRow, Payout, ProcessorPayment, ProcessorRefund, SavedPaymentMethod

TENANT = "acme"
VISA = "4242424242424242"
CENT = Decimal("0.01")
FEE_RATE = Decimal("0.029")
FEE_FIXED = Decimal("0.30")
LEDGERS = ("quickbooks", "xero")


def processing_fee(gross: Decimal) -> Decimal:
    """Stripe's US card price, 2.9% + 0.30, rounded half up to the cent."""
    return (gross * FEE_RATE + FEE_FIXED).quantize(CENT, rounding=ROUND_HALF_UP)


# --- what write-back made in a ledger -------------------------------------------------------------------------


@dataclass(frozen=True)
class Posted:
    """One transaction in the ledger, in terms both ledgers share.

    ``kind``: ``payment`` (into ``to_account``, against ``invoice``), ``fee`` (from ``from_account`` to the
    expense ``to_account``), ``deposit`` (the payout: ``from_account`` to ``to_account``; a payout that debited
    the bank goes from the bank back to clearing), ``credit`` (the ``credit_note`` applied to ``invoice``),
    ``refund`` (money given back to the customer from ``from_account``: a QuickBooks RefundReceipt, the
    payment refunding a Xero credit note), ``unapplied`` (the customer's credit received into ``to_account``:
    a QuickBooks Payment linked to nothing, a Xero overpayment). ``reference`` is what carries arsync's key (QuickBooks
    ``PrivateNote``, Xero ``Reference``; a Xero allocation has none)."""

    kind: str
    ident: str
    reference: str
    amount: Decimal
    day: date
    from_account: str | None = None
    to_account: str | None = None
    invoice: str | None = None
    credit_note: str | None = None


class Books(Protocol):
    kind: str
    connection: SandboxConnection
    url: str
    """The sandbox's root URL; ``api_base`` is under it."""
    api_base: str
    clearing: str
    bank: str
    fees: str
    refund_setting: str
    """The ``[writeback]`` line that lets partial refunds be booked (``refund_item`` or ``refund_account``)."""
    income: str
    """An income account (card surcharges are booked to it when the tenant adds them)."""

    def customer(self, name: str, email: str) -> str: ...
    def invoice(self, customer: str, amount: str, due: date, issued: date | None = None) -> str: ...
    def credit_note(self, customer: str, amount: str, issued: date) -> str: ...
    def check(self, customer: str, invoice: str, amount: str, day: date) -> str: ...
    def due(self, invoice: str) -> Decimal: ...
    def paid_in_full(self, invoice: str) -> bool: ...
    def credit_left(self, credit: str) -> Decimal: ...
    def close_books(self, through: date | None) -> None: ...
    def requests(self) -> int: ...
    def posted(self) -> list[Posted]: ...
    def balance(self, account: str) -> Decimal: ...
    def lock_message(self, through: date) -> str: ...


def _money(value: Any) -> Decimal:
    return Decimal(str(value))


class QuickBooksBooks:
    """A QuickBooks company: the chart of accounts of :mod:`connectors.quickbooks.seed` (Checking, Undeposited
    Funds, A/R, Services, Merchant Fees), plus a bank-type ``Stripe Clearing`` account, which that chart lacks."""

    kind = "quickbooks"
    refund_setting = 'refund_item = "1"'  # the sandbox's Services item

    def __init__(self, sandbox: QuickBooksSandbox, name: str = "acme-qbo") -> None:
        self.box = sandbox
        self.url, self.api_base = sandbox.url, sandbox.api_base
        self.connection = quickbooks_connection(sandbox, tenant=TENANT, tenant_name="Acme Plumbing", name=name)
        chart = {
            "Checking": ("Asset", "Bank", "Checking"),
            "Undeposited Funds": ("Asset", "Other Current Asset", "UndepositedFunds"),
            "Accounts Receivable (A/R)": ("Asset", "Accounts Receivable", "AccountsReceivable"),
            "Services": ("Revenue", "Income", "ServiceFeeIncome"),
            "Merchant Fees": ("Expense", "Expense", "BankCharges"),
            "Stripe Clearing": ("Asset", "Bank", "Checking"),
        }
        ids = {}
        for account, (classification, kind, sub) in chart.items():
            body = {"Name": account, "Classification": classification, "AccountType": kind, "AccountSubType": sub}
            ids[account] = str(sandbox.put("Account", body)["Id"])
        self.clearing, self.bank, self.fees = ids["Stripe Clearing"], ids["Checking"], ids["Merchant Fees"]
        self.income = ids["Services"]
        self.undeposited = ids["Undeposited Funds"]

    def customer(self, name: str, email: str) -> str:
        return str(self.box.put("Customer", {"DisplayName": name, "PrimaryEmailAddr": {"Address": email}})["Id"])

    def invoice(self, customer: str, amount: str, due: date, issued: date | None = None) -> str:
        body = {
            "CustomerRef": {"value": customer},
            "TxnDate": (issued or due - timedelta(days=30)).isoformat(),
            "DueDate": due.isoformat(),
            "Line": [{"Amount": Decimal(amount), "DetailType": "SalesItemLineDetail", "Description": "Services"}],
        }
        return str(self.box.put("Invoice", body)["Id"])

    def credit_note(self, customer: str, amount: str, issued: date) -> str:
        body = {
            "CustomerRef": {"value": customer},
            "TxnDate": issued.isoformat(),
            "Line": [{"Amount": Decimal(amount), "DetailType": "SalesItemLineDetail", "Description": "Credit"}],
        }
        return str(self.box.put("CreditMemo", body)["Id"])

    def check(self, customer: str, invoice: str, amount: str, day: date) -> str:
        body = {
            "CustomerRef": {"value": customer},
            "TotalAmt": Decimal(amount),
            "TxnDate": day.isoformat(),
            "PaymentRefNum": "CHK1042",
            "PrivateNote": "Check 1042, received at the office",
            "DepositToAccountRef": {"value": self.undeposited},
            "Line": [{"Amount": Decimal(amount), "LinkedTxn": [{"TxnId": invoice, "TxnType": "Invoice"}]}],
        }
        return str(self.box.put("Payment", body)["Id"])

    def _get(self, entity: str, ident: str) -> dict[str, Any]:
        found = self.box.get(entity, ident)
        assert found is not None, (entity, ident)
        return found

    def due(self, invoice: str) -> Decimal:
        return _money(self._get("Invoice", invoice)["Balance"])

    def paid_in_full(self, invoice: str) -> bool:
        return self.due(invoice) == 0

    def credit_left(self, credit: str) -> Decimal:
        return _money(self._get("CreditMemo", credit)["RemainingCredit"])

    def close_books(self, through: date | None) -> None:
        """Close the books through ``through`` (None: reopen them), as the company's admin does."""
        self.box.closing_date = through

    def requests(self) -> int:
        return self.box.request_count

    def lock_message(self, through: date) -> str:
        """What QuickBooks answers for a transaction in the closed period (fault 6210)."""
        return "code 6210 Account Period Closed, Cannot Update Through Services API"

    def posted(self) -> list[Posted]:
        found = []
        for p in self.box.all("Payment"):
            links = [link for line in p["Line"] for link in line.get("LinkedTxn", [])]
            invoices = [link["TxnId"] for link in links if link["TxnType"] == "Invoice"]
            note, day = str(p.get("PrivateNote") or ""), date.fromisoformat(p["TxnDate"])
            if any(link["TxnType"] == "CreditMemo" for link in links):  # a credit memo applied by a zero payment
                [memo] = [line for line in p["Line"] if line["LinkedTxn"][0]["TxnType"] == "CreditMemo"]
                [invoice] = invoices
                amount, credit_note = _money(memo["Amount"]), memo["LinkedTxn"][0]["TxnId"]
                found.append(Posted("credit", p["Id"], note, amount, day, invoice=invoice, credit_note=credit_note))
            elif note.startswith("post:") and not invoices:  # linked to nothing: the customer's unapplied credit
                account = p["DepositToAccountRef"]["value"]
                found.append(Posted("unapplied", p["Id"], note, _money(p["TotalAmt"]), day, None, account))
            elif note.startswith(("post:", "apply_credit:")):  # a share of a balance payment carries its own key
                [invoice] = invoices
                account = p["DepositToAccountRef"]["value"]
                found.append(Posted("payment", p["Id"], note, _money(p["TotalAmt"]), day, None, account, invoice))
        for p in self.box.all("Purchase"):
            [line] = p["Line"]
            expense = line["AccountBasedExpenseLineDetail"]["AccountRef"]["value"]
            found.append(
                Posted(
                    "fee",
                    p["Id"],
                    str(p.get("PrivateNote") or ""),
                    _money(p["TotalAmt"]),
                    date.fromisoformat(p["TxnDate"]),
                    p["AccountRef"]["value"],
                    expense,
                )
            )
        for r in self.box.all("RefundReceipt"):
            found.append(
                Posted(
                    "refund",
                    r["Id"],
                    str(r.get("PrivateNote") or ""),
                    _money(r["TotalAmt"]),
                    date.fromisoformat(r["TxnDate"]),
                    r["DepositToAccountRef"]["value"],
                )
            )
        for t in self.box.all("Transfer"):
            found.append(
                Posted(
                    "deposit",
                    t["Id"],
                    str(t.get("PrivateNote") or ""),
                    _money(t["Amount"]),
                    date.fromisoformat(t["TxnDate"]),
                    t["FromAccountRef"]["value"],
                    t["ToAccountRef"]["value"],
                )
            )
        for d in self.box.all("Deposit"):
            [line] = d["Line"]
            assert _money(line["Amount"]) == _money(d["TotalAmt"])
            found.append(
                Posted(
                    "deposit",
                    d["Id"],
                    str(d.get("PrivateNote") or ""),
                    _money(d["TotalAmt"]),
                    date.fromisoformat(d["TxnDate"]),
                    line["DepositLineDetail"]["AccountRef"]["value"],
                    d["DepositToAccountRef"]["value"],
                )
            )
        return found

    def balance(self, account: str) -> Decimal:
        """Money in less money out of ``account``, from the payments, purchases and deposits themselves
        (checked against the sandbox's own ``CurrentBalance`` of the account)."""
        total = _balance_of(self.posted(), account)
        assert _money(self._get("Account", account)["CurrentBalance"]) == total, account
        return total


class XeroBooks:
    """A Xero organisation: the sandbox's chart has 091 Clearing (BANK), 090 Checking (BANK) and 404 Fees."""

    kind = "xero"
    clearing, bank, fees = "091", "090", "404"
    refund_setting = 'refund_account = "200"'  # Sales
    income = "200"

    def __init__(self, sandbox: XeroSandbox, name: str = "acme-xero") -> None:
        self.box = sandbox
        self.url, self.api_base = sandbox.url, sandbox.api_base
        self.tenant = sandbox.tenant_ids[0]
        self.connection = xero_connection(sandbox, tenant=TENANT, tenant_name="Acme Plumbing", name=name)

    def customer(self, name: str, email: str) -> str:
        body = {"Name": name, "EmailAddress": email, "IsCustomer": True}
        return str(self.box.put(self.tenant, "Contacts", body)["ContactID"])

    def invoice(self, customer: str, amount: str, due: date, issued: date | None = None) -> str:
        body = {
            "Type": "ACCREC",
            "Contact": {"ContactID": customer},
            "Status": "AUTHORISED",
            "Date": (issued or due - timedelta(days=30)).isoformat(),
            "DueDate": due.isoformat(),
            "LineAmountTypes": "NoTax",
            "LineItems": [{"Description": "Services", "Quantity": 1, "UnitAmount": Decimal(amount)}],
        }
        return str(self.box.put(self.tenant, "Invoices", body)["InvoiceID"])

    def credit_note(self, customer: str, amount: str, issued: date) -> str:
        body = {
            "Type": "ACCRECCREDIT",
            "Contact": {"ContactID": customer},
            "Status": "AUTHORISED",
            "Date": issued.isoformat(),
            "LineAmountTypes": "NoTax",
            "LineItems": [{"Description": "Credit", "Quantity": 1, "UnitAmount": Decimal(amount)}],
        }
        return str(self.box.put(self.tenant, "CreditNotes", body)["CreditNoteID"])

    def check(self, customer: str, invoice: str, amount: str, day: date) -> str:
        body = {
            "Invoice": {"InvoiceID": invoice},
            "Account": {"Code": self.bank},
            "Date": day.isoformat(),
            "Amount": Decimal(amount),
            "Reference": "Check 1042",
        }
        return str(self.box.put(self.tenant, "Payments", body)["PaymentID"])

    def _get(self, collection: str, ident: str) -> dict[str, Any]:
        found = self.box.get(self.tenant, collection, ident)
        assert found is not None, (collection, ident)
        return found

    def due(self, invoice: str) -> Decimal:
        return _money(self._get("Invoices", invoice)["AmountDue"])

    def paid_in_full(self, invoice: str) -> bool:
        row = self._get("Invoices", invoice)
        return _money(row["AmountDue"]) == 0 and row["Status"] == "PAID"

    def credit_left(self, credit: str) -> Decimal:
        return _money(self._get("CreditNotes", credit)["RemainingCredit"])

    def close_books(self, through: date | None) -> None:
        """Set the period lock date (None: clear it), as an adviser does in Financial settings."""
        self.box.set_lock_dates(self.tenant, period_lock_date=through)

    def requests(self) -> int:
        return self.box.request_count

    def lock_message(self, through: date) -> str:
        """What Xero answers for a document dated on or before the lock date."""
        return f"The document date cannot be before the period lock date, currently set at {through:%d-%b-%Y}"

    def posted(self) -> list[Posted]:
        found = []
        for p in self.box.all(self.tenant, "Payments"):
            ours = str(p.get("Reference") or "").startswith(("post:", "apply_credit:"))
            if not ours or p.get("Status") == "DELETED":
                continue
            if p.get("CreditNote"):  # a credit note refunded: money back to the customer
                found.append(
                    Posted(
                        "refund",
                        p["PaymentID"],
                        p["Reference"],
                        _money(p["Amount"]),
                        _day(p["Date"]),
                        p["Account"]["Code"],
                    )
                )
                continue
            found.append(
                Posted(
                    "payment",
                    p["PaymentID"],
                    p["Reference"],
                    _money(p["Amount"]),
                    _day(p["Date"]),
                    None,
                    p["Account"]["Code"],
                    p["Invoice"]["InvoiceID"],
                )
            )
        for t in self.box.all(self.tenant, "BankTransactions"):
            if t["Type"] == "RECEIVE-OVERPAYMENT" and str(t.get("Reference") or "").startswith("post:"):
                found.append(
                    Posted(
                        "unapplied",
                        t["OverpaymentID"],
                        t["Reference"],
                        _money(t["Total"]),
                        _day(t["Date"]),
                        None,
                        t["BankAccount"]["Code"],
                    )
                )
                continue
            ours = str(t.get("Reference") or "").startswith("post:")
            if t["Type"] == "RECEIVE" and ours and t.get("Status") != "DELETED":  # a card surcharge, as income
                [line] = t["LineItems"]
                found.append(
                    Posted(
                        "deposit",
                        t["BankTransactionID"],
                        t["Reference"],
                        _money(t["Total"]),
                        _day(t["Date"]),
                        line["AccountCode"],
                        t["BankAccount"]["Code"],
                    )
                )
                continue
            if t["Type"] != "SPEND":
                continue
            [line] = t["LineItems"]
            found.append(
                Posted(
                    "fee",
                    t["BankTransactionID"],
                    str(t.get("Reference") or ""),
                    _money(t["Total"]),
                    _day(t["Date"]),
                    t["BankAccount"]["Code"],
                    line["AccountCode"],
                )
            )
        for t in self.box.all(self.tenant, "BankTransfers"):
            found.append(
                Posted(
                    "deposit",
                    t["BankTransferID"],
                    str(t.get("Reference") or ""),
                    _money(t["Amount"]),
                    _day(t["Date"]),
                    t["FromBankAccount"]["Code"],
                    t["ToBankAccount"]["Code"],
                )
            )
        for note in self.box.all(self.tenant, "CreditNotes"):
            for allocation in note.get("Allocations") or []:
                found.append(
                    Posted(
                        "credit",
                        allocation["AllocationID"],
                        "",
                        _money(allocation["Amount"]),
                        _day(allocation["Date"]),
                        invoice=allocation["Invoice"]["InvoiceID"],
                        credit_note=note["CreditNoteID"],
                    )
                )
        return found

    def balance(self, account: str) -> Decimal:
        """Money in less money out of ``account`` (a bank account code), from the payments, spend money and
        transfers themselves."""
        return _balance_of(self.posted(), account)


def _day(wire: str) -> date:
    ms = parse_ms_date(wire)
    assert ms is not None, wire
    return date(1970, 1, 1) + timedelta(milliseconds=ms)


def _balance_of(posted: list[Posted], account: str) -> Decimal:
    total = Decimal(0)
    for p in posted:
        if p.kind in ("payment", "deposit", "unapplied") and p.to_account == account:
            total += p.amount
        if p.kind in ("fee", "deposit", "refund") and p.from_account == account:
            total -= p.amount
    return total


# --- the processor's payout -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    """A balance line of the payout: one charge."""

    id: str
    gross: Decimal
    fee: Decimal
    net: Decimal


@dataclass(frozen=True)
class MadePayout:
    payout_id: str
    amount: Decimal
    lines: dict[str, Line]
    """By PaymentIntent id."""


def make_payout(
    sessions: sessionmaker[Session], tenant: str, arrival: date, *, now: datetime | None = None
) -> MadePayout:
    """A paid payout of every succeeded charge not yet in one, stored as ``EventFollower`` stores a real one.

    localstripe makes no payouts and reports every fee as zero, so following its events never brings a
    payout, and a zero fee would leave nothing to post. This writes what
    ``collect.processor_events.EventFollower`` writes for a Stripe payout once it is paid: the ``payout`` row
    (status ``paid``, ``lines_loaded_at`` set) and one ``balance_line`` per charge, type ``charge``, with gross,
    fee and net, ``source_id`` the charge and ``payment_processor_id`` the real PaymentIntent id. Each fee is
    2.9% + 0.30, rounded to the cent. The follower's own mapping of real payouts and their balance
    transactions is tested from Stripe's fixtures elsewhere (``tests/unit/test_stripe_events.py``,
    ``tests/unit/test_stripe_mapping.py``, ``tests/integration/test_processor_events.py``); here only what
    write-back reads matters.
    """
    now = now or datetime.now(UTC)
    payout_id = "po_" + secrets.token_hex(12)
    lines: dict[str, Line] = {}
    with sessions.begin() as session:
        loaded = sa.select(col(BalanceLineRow.payment_processor_id)).where(
            col(BalanceLineRow.payment_processor_id).is_not(None)
        )
        payments = session.execute(
            sa.select(ProcessorPayment)
            .where(
                col(ProcessorPayment.tenant_id) == tenant,
                col(ProcessorPayment.state) == "succeeded",
                col(ProcessorPayment.returned).is_(False),
                col(ProcessorPayment.processor_id).is_not(None),
                col(ProcessorPayment.processor_id).not_in(loaded),
            )
            .order_by(col(ProcessorPayment.id))
        ).scalars()
        currency = None
        for payment in payments:
            assert payment.processor_id is not None and payment.created_at is not None
            currency = payment.currency
            gross = payment.amount + payment.surcharge
            fee = processing_fee(gross)
            line = Line("txn_" + payment.processor_id.removeprefix("pi_"), gross, fee, gross - fee)
            lines[payment.processor_id] = line
            session.add(
                BalanceLineRow(
                    id=line.id,
                    tenant_id=tenant,
                    payout_id=payout_id,
                    type="charge",
                    source_id=payment.charge_id,
                    payment_processor_id=payment.processor_id,
                    amount=gross,
                    fee=fee,
                    net=gross - fee,
                    currency=payment.currency,
                    created=payment.created_at,
                    reporting_category="charge",
                )
            )
        assert currency is not None, "no charge to pay out"
        amount = sum((line.net for line in lines.values()), Decimal(0))
        session.add(
            Payout(
                payout_id=payout_id,
                tenant_id=tenant,
                amount=amount,
                currency=currency,
                status="paid",
                arrival_date=arrival,
                lines_loaded_at=now,
                updated_at=now,
            )
        )
    return MadePayout(payout_id, amount, lines)


def settle_refunds(sessions: sessionmaker[Session], stripe: StripeSandbox, tenant: str) -> dict[str, str]:
    """Each refund arsync made, with the status localstripe gives it, as the follower stores a refund event.

    localstripe makes a refund ``succeeded`` at once but emits no ``refund.*`` event, so following its events
    leaves arsync's row ``pending``. This reads each refund back from localstripe (``GET /v1/refunds/{id}``)
    and stores its status on the row, which is what ``EventFollower`` does for ``refund.updated`` (tested from
    Stripe's fixtures in ``tests/integration/test_processor_events.py``). Returns refund id -> status."""
    found: dict[str, str] = {}
    with sessions.begin() as session:
        for row in session.execute(
            sa.select(ProcessorRefund).where(col(ProcessorRefund.tenant_id) == tenant)
        ).scalars():
            answer = requests.get(stripe.url(f"/v1/refunds/{row.refund_id}"), headers=stripe_auth(stripe), timeout=10)
            answer.raise_for_status()
            refund = answer.json()
            assert Decimal(refund["amount"]) / 100 == row.amount, (refund, row.amount)
            row.status = str(refund["status"])
            found[row.refund_id] = row.status
    return found


def stripe_auth(stripe: StripeSandbox) -> dict[str, str]:
    return {"Authorization": f"Bearer {stripe.api_key}"}


def make_refund_payout(
    sessions: sessionmaker[Session], tenant: str, arrival: date, *, now: datetime | None = None
) -> MadePayout:
    """A paid payout of every succeeded refund not yet in one: its lines net below zero, so the processor
    debited the bank (stored as :func:`make_payout` stores charges: one ``refund`` line per refund, its amount
    negative, no fee). ``lines`` is keyed by refund id."""
    now = now or datetime.now(UTC)
    payout_id = "po_" + secrets.token_hex(12)
    lines: dict[str, Line] = {}
    with sessions.begin() as session:
        loaded = sa.select(col(BalanceLineRow.source_id)).where(col(BalanceLineRow.type) == "refund")
        refunds = session.execute(
            sa.select(ProcessorRefund)
            .where(
                col(ProcessorRefund.tenant_id) == tenant,
                col(ProcessorRefund.status) == "succeeded",
                col(ProcessorRefund.refund_id).not_in(loaded),
            )
            .order_by(col(ProcessorRefund.refund_id))
        ).scalars()
        currency = None
        for refund in refunds:
            currency = refund.currency
            line = Line("txn_" + refund.refund_id.removeprefix("re_"), -refund.amount, Decimal(0), -refund.amount)
            lines[refund.refund_id] = line
            session.add(
                BalanceLineRow(
                    id=line.id,
                    tenant_id=tenant,
                    payout_id=payout_id,
                    type="refund",
                    source_id=refund.refund_id,
                    payment_processor_id=refund.payment_processor_id,
                    amount=line.gross,
                    fee=Decimal(0),
                    net=line.net,
                    currency=refund.currency,
                    created=now,
                    reporting_category="refund",
                )
            )
        assert currency is not None, "no refund to pay out"
        amount = sum((line.net for line in lines.values()), Decimal(0))
        session.add(
            Payout(
                payout_id=payout_id,
                tenant_id=tenant,
                amount=amount,
                currency=currency,
                status="paid",
                arrival_date=arrival,
                lines_loaded_at=now,
                updated_at=now,
            )
        )
    return MadePayout(payout_id, amount, lines)


# --- the world ------------------------------------------------------------------------------------------------


SURCHARGE = {"percent": "2.9", "fixed": "0.30", "max_percent": "3", "exempt": ["us_bank_account", "debit"]}
"""A card surcharge of 2.9% + 0.30, capped at 3% (as ``arsync.sandboxes.stripe_payments`` configures it)."""


def autopay(stripe: StripeSandbox, *, surcharge: bool = False) -> SandboxPayments:
    """Cards charged from the due date; with ``surcharge``, the card surcharge above (booked as income into
    clearing: the ``[writeback]`` section then names a ``surcharge_account``)."""
    settings = {
        "base_url": stripe.base_url,
        "success_url": "https://acme.example.com/autopay/thanks",
        "cancel_url": "https://acme.example.com/autopay",
    }
    rules = ({"name": "due-date", "on_due_date": True},)
    return SandboxPayments(stripe.api_key, settings, rules, SURCHARGE if surcharge else None)


def writeback_section(books: Books, *, surcharge: bool = False) -> str:
    return (
        f"\n[tenants.{TENANT}.connections.{books.connection.name}.writeback]\n"
        f'clearing_account = "{books.clearing}"\nbank_account = "{books.bank}"\nfee_account = "{books.fees}"\n'
        f"{books.refund_setting}\n" + (f'surcharge_account = "{books.income}"\n' if surcharge else "")
    )


def write_config(
    folder: Path, books: Books, stripe: StripeSandbox, db_url: str, *, surcharge: bool = False, **settings: object
) -> Path:
    """The tenant's config, its connection pointed at the sandbox (``settings`` override its keys: a proxy's
    ``base_url``), taking payments at ``stripe``, with the connection's ``[writeback]`` section appended."""
    connection = books.connection
    if settings:
        connection = SandboxConnection(
            connection.tenant,
            connection.tenant_name,
            connection.name,
            connection.client_id,
            connection.client_secret,
            {**connection.settings, **settings},
        )
    payments = {TENANT: autopay(stripe, surcharge=surcharge)}
    path = write_sandbox_config(folder, [connection], database_url=db_url, payments=payments)
    with path.open("a") as out:
        out.write(writeback_section(books, surcharge=surcharge))
    return path


@dataclass
class World:
    app: App
    books: Books
    stripe: StripeSandbox
    config: Path
    db_url: str
    calls: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.books.connection.name

    @property
    def sessions(self) -> sessionmaker[Session]:
        return self.app.sessions

    @property
    def timezone(self) -> str:
        return self.app.config.tenant(TENANT).timezone

    def today(self) -> date:
        """The tenant's day (America/Los_Angeles), as the planner and write-back count days."""
        return self.collector().today()

    def collector(self) -> Collector:
        return self.app.collector(TENANT)

    def reconciler(self) -> Reconciler:
        return self.app.reconciler(TENANT)

    def sync(self) -> None:
        summary = self.app.sync_engine(self.name).sync(self.app.source(self.name))
        assert summary.status == "ok", summary.describe()

    def enrol(self, customer: str) -> SavedPaymentMethod:
        """The customer saves a Visa card on the Checkout page; the events bring the saved method in."""
        collector = self.collector()
        link = collector.enroll(f"{self.name}:{customer}")
        answer = self.stripe.complete_checkout(link.url, self.stripe.card(VISA))
        assert answer.status_code == 200, answer.text
        collector.follow()
        with self.sessions() as session:
            [saved] = session.execute(
                sa.select(SavedPaymentMethod).where(col(SavedPaymentMethod.customer_external_id) == customer)
            ).scalars()
        return saved

    def processor_payments(self) -> list[ProcessorPayment]:
        with self.sessions() as session:
            return list(session.execute(sa.select(ProcessorPayment).order_by(col(ProcessorPayment.id))).scalars())


def start_books(kind: str, stack: ExitStack) -> Books:
    books: Books
    if kind == "quickbooks":
        qbo = QuickBooksSandbox()
        qbo.start()
        stack.callback(qbo.stop)
        books = QuickBooksBooks(qbo)
    else:
        xero = XeroSandbox()
        xero.start()
        stack.callback(xero.stop)
        books = XeroBooks(xero)
    return books


def start_world(
    kind: str,
    folder: Path,
    stack: ExitStack,
    db_url: str | None = None,
    *,
    before_ready: Callable[[Books], None] | None = None,
    surcharge: bool = False,
) -> World:
    """localstripe (launched first: it starts while the rest is set up), the ledger sandbox, the config,
    a migrated ledger database (SQLite in ``folder`` unless ``db_url``), tokens from the sandbox's OAuth."""
    stripe = StripeSandbox(folder / "localstripe.log")
    stripe.launch()
    stack.callback(stripe.stop)
    books = start_books(kind, stack)
    if before_ready is not None:
        before_ready(books)
    stripe.ready()
    url = db_url or f"sqlite:///{folder / 'ledger.db'}"
    config = write_config(folder, books, stripe, url, surcharge=surcharge)
    app = bootstrap(config)
    stack.callback(app.engine.dispose)
    upgrade(app.engine)
    app.register()
    authorise(app, books.connection.name)
    return World(app, books, stripe, config, url)
