"""QuickBooks write-back: postings sent as ``/batch`` items, item faults read as results, postings found again.

What each :class:`~connectors.base.PostingKind` becomes:

* ``payment``: a Payment into the clearing account (``DepositToAccountRef``) with one line linked to the
  invoice; ``PrivateNote`` is the posting's reference, ``PaymentRefNum`` a short form of it (21 characters
  at most).
* ``fee``: a Purchase (``PaymentType`` Cash) paid from the clearing account, one account-based expense line.
* ``payout``: a Deposit into the bank with one line taking the amount out of the clearing account;
  ``PrivateNote`` is the payout id, which the bank feed shows.
* ``payout_debit``: a Transfer (``FromAccountRef`` the bank, ``ToAccountRef`` clearing, ``Amount``), the payout
  id as ``PrivateNote``. Intuit's Transfer moves money between two balance-sheet accounts, which is what a
  processor's debit of the bank is; a Deposit cannot carry a negative total, and a bank-feed withdrawal is
  matched against a transfer out of the bank.
* ``credit_application`` from a credit note: a Payment of zero with two lines, one linked to the invoice and
  one to the CreditMemo (how QuickBooks itself applies a credit memo); from a payment (unapplied cash): a
  sparse update of that Payment adding a line linked to the invoice, the reference appended to its
  ``PrivateNote`` on a line of its own.
* ``payment_reversal``: the Payment voided (``"operation": "void"`` with its ``Id`` and current
  ``SyncToken``, read first), the reversal's reference appended to its ``PrivateNote`` on a line of its own in
  the same sparse body. Intuit voids a payment by "a sparse update operation with include=void": every
  amount is zeroed, the invoices are owed again, and "Voided" is put in front of the existing note
  (``Voided - ...``). A payment already voided is ``ok`` without a request; one that is gone is parked.
* ``surcharge``: a Deposit into the clearing account with one ``DepositLineDetail`` line on the income
  account (``Entity`` the customer), ``PrivateNote`` the reference.
* ``overpayment``: a Payment into the clearing account with no lines: all of it is the customer's unapplied
  credit (``UnappliedAmt``), as QuickBooks records money received that no invoice takes yet; ``PrivateNote``
  the reference.
* ``surcharge_reversal``: the surcharge's Deposit deleted (``"operation": "delete"`` with its ``Id`` and current
  ``SyncToken``, read first): Intuit's Deposit entity can be created, read, updated and deleted, and has no
  void. A Deposit already gone is ``ok`` without a request (our answer lost, or a person deleted it).
* ``refund``: a RefundReceipt (Finance.xsd: "a refund (or credit) of payment or part of a payment for goods or
  services that have been sold") for the customer, paid from the clearing account (``DepositToAccountRef``,
  the account the refund is paid from), one ``SalesItemLineDetail`` line on the configured item
  (``refund_item``: a sales line needs an item, whose income account the refund reduces), ``PrivateNote`` the
  reference. The invoice stays paid; only the money given back is booked.
* ``late_fee`` booked as ``invoice``: an Invoice for the customer, dated the fee's ``date``, one
  ``SalesItemLineDetail`` line on the configured item (``late_fee_item``), ``PrivateNote`` the reference.
* ``late_fee`` booked as ``line``: the overdue invoice read (with its SyncToken; all the fees' invoices in one
  query per 100), then a sparse update sending its lines back with one more ``SalesItemLineDetail`` line on
  ``late_fee_item`` (a sparse update replaces the whole ``Line`` list), the reference appended to its
  ``PrivateNote`` on a line of its own. The invoice's balance rises by the fee. Several fees on one invoice make
  one update; a fee whose reference the invoice already carries is ``ok`` without a request. A stale
  SyncToken (5010) is read again and sent once more; a deleted, voided or closed-period invoice is parked with
  the reason.
* ``collections_fee``: a Bill from the agency (``VendorRef``: ``collections_vendor``), one account-based
  expense line on ``collections_fee_account``, ``PrivateNote`` the reference.

Every request carries ``requestid``: a digest of the batch's posting keys and item bodies, so the same batch
sent again is applied once (Intuit replays the first answer). The I/O is injected (``query`` runs a query
statement, ``send`` posts a batch body under a requestid), so this module holds no HTTP.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from connectors import jsonwire
from connectors.base import Posting, PostingKind, PostingResult, RetriableError
from connectors.quickbooks.faults import ItemFate, item_verdict, parse_fault

__all__ = [
    "BATCH_LIMIT",
    "BatchWriter",
    "PayloadError",
    "bill_body",
    "late_fee_invoice_body",
    "late_fee_update",
    "note_references",
    "payment_ref_num",
    "reference_of",
    "request_id",
    "surcharge_body",
    "void_body",
    "voided",
]

BATCH_LIMIT = 30
"""BatchItemRequest operations per ``/batch`` request (Intuit: "The maximum number of payloads in a single
batch request is 30")."""
PAYMENT_REF_MAX = 21
"""Payment.PaymentRefNum is at most 21 characters."""
NOTE_MAX = 4000
"""PrivateNote is at most 4000 characters."""
QUERY_PAGE = 1000
IDS_PER_QUERY = 100

Query = Callable[[str], Mapping[str, Any]]
"""Runs a query statement, returns the response body (``{"QueryResponse": ...}``)."""
Send = Callable[[Mapping[str, Any], str], Mapping[str, Any]]
"""Posts a ``{"BatchItemRequest": [...]}`` body under a requestid, returns the response body."""

_ENTITY = {
    PostingKind.PAYMENT: "Payment",
    PostingKind.FEE: "Purchase",
    PostingKind.PAYOUT: "Deposit",
    PostingKind.PAYOUT_DEBIT: "Transfer",
    PostingKind.CREDIT_APPLICATION: "Payment",
    PostingKind.PAYMENT_REVERSAL: "Payment",
    PostingKind.SURCHARGE: "Deposit",
    PostingKind.REFUND: "RefundReceipt",
    PostingKind.SURCHARGE_REVERSAL: "Deposit",
    PostingKind.OVERPAYMENT: "Payment",
    PostingKind.LATE_FEE: "Invoice",
    PostingKind.COLLECTIONS_FEE: "Bill",
}
VOID_NOTE = "Voided"
"""What QuickBooks puts in front of a voided transaction's ``PrivateNote`` (``Voided - `` before existing text)."""
_VOID_PREFIX = re.compile(r"^(?:Voided(?:\s*-\s*|\s+|$))+")


class PayloadError(ValueError):
    """A posting whose payload cannot become a QuickBooks transaction (a person must fix it)."""


# --- payload values ---------------------------------------------------------------------------------------


def reference_of(posting: Posting) -> str:
    """The reference the ledger carries for ``posting``: the payload's ``reference``, else the key."""
    return str(posting.payload.get("reference") or posting.key)


def _required(payload: Mapping[str, Any], name: str) -> Any:
    value = payload.get(name)
    if value is None or value == "":
        raise PayloadError(f"the payload lacks {name!r}")
    return value


def _text(payload: Mapping[str, Any], name: str) -> str:
    return str(_required(payload, name))


def _decimal(value: Any, name: str) -> Decimal:
    if isinstance(value, bool | float):
        raise PayloadError(f"{name} {value!r} is not a Decimal (money never passes through a float)")
    if isinstance(value, Decimal):
        number = value
    elif isinstance(value, int | str):
        try:
            number = Decimal(str(value).strip())
        except InvalidOperation:
            raise PayloadError(f"{name} {value!r} is not a number") from None
    else:
        raise PayloadError(f"{name} {value!r} is not a number")
    if not number.is_finite():
        raise PayloadError(f"{name} {value!r} is not a number")
    return number


def _amount(payload: Mapping[str, Any]) -> Decimal:
    amount = _decimal(_required(payload, "amount"), "amount")
    if amount <= 0:
        raise PayloadError(f"amount {amount} must be positive")
    if amount != amount.quantize(Decimal("0.01")):
        raise PayloadError(f"amount {amount} has more than two decimals")
    return amount


def _day(payload: Mapping[str, Any]) -> str:
    value = _required(payload, "date")
    if isinstance(value, datetime):
        return value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    try:
        return date.fromisoformat(str(value)).isoformat()
    except ValueError:
        raise PayloadError(f"date {value!r} is not an ISO date") from None


def _currency(payload: Mapping[str, Any]) -> str:
    return _text(payload, "currency").upper()


def payment_ref_num(reference: str) -> str:
    """A short form of ``reference`` for ``PaymentRefNum`` (21 characters at most): the reference itself or
    its last ``:`` segment when short enough, else ``AR-`` and 18 hex digits of its SHA-256."""
    if len(reference) <= PAYMENT_REF_MAX:
        return reference
    tail = reference.rsplit(":", 1)[-1]
    if 0 < len(tail) <= PAYMENT_REF_MAX:
        return tail
    return "AR-" + hashlib.sha256(reference.encode()).hexdigest()[:18].upper()


def note_references(note: Any) -> set[str]:
    """The lines of a ``PrivateNote``, stripped: a reference is carried when it is one of them.

    A voided transaction's note starts with ``Voided`` (``Voided - `` in front of the text it had): its first
    line counts with and without that prefix, so a payment voided after it was posted is still found.
    """
    lines = {line.strip() for line in str(note or "").splitlines() if line.strip()}
    return lines | {rest for line in lines if (rest := _VOID_PREFIX.sub("", line).strip())}


def voided(txn: Mapping[str, Any]) -> bool:
    """A voided transaction: a zero total and a note starting with ``Voided`` (as ``mapping`` reads a void)."""
    try:
        total = _decimal(txn.get("TotalAmt", 0), "TotalAmt")
    except PayloadError:
        return False
    return total == 0 and str(txn.get("PrivateNote") or "").strip().startswith(VOID_NOTE)


def _ref(value: str) -> dict[str, str]:
    return {"value": value}


# --- bodies -----------------------------------------------------------------------------------------------


def payment_body(payload: Mapping[str, Any], reference: str, customer: str) -> dict[str, Any]:
    amount = _amount(payload)
    invoice = _text(payload, "invoice_external_id")
    body: dict[str, Any] = {
        "CustomerRef": _ref(customer),
        "TotalAmt": amount,
        "CurrencyRef": _ref(_currency(payload)),
    }
    if payload.get("currency_rate") is not None:
        body["ExchangeRate"] = _decimal(payload["currency_rate"], "currency_rate")
    body.update(
        {
            "TxnDate": _day(payload),
            "DepositToAccountRef": _ref(_text(payload, "account")),
            "PaymentRefNum": payment_ref_num(reference),
            "PrivateNote": reference,
            "Line": [{"Amount": amount, "LinkedTxn": [{"TxnId": invoice, "TxnType": "Invoice"}]}],
        }
    )
    return body


def purchase_body(payload: Mapping[str, Any], reference: str) -> dict[str, Any]:
    amount = _amount(payload)
    return {
        "PaymentType": "Cash",
        "AccountRef": _ref(_text(payload, "from_account")),
        "TxnDate": _day(payload),
        "CurrencyRef": _ref(_currency(payload)),
        "PrivateNote": reference,
        "Line": [
            {
                "Amount": amount,
                "DetailType": "AccountBasedExpenseLineDetail",
                "Description": str(payload.get("description") or "Payment processing fees")[:NOTE_MAX],
                "AccountBasedExpenseLineDetail": {"AccountRef": _ref(_text(payload, "expense_account"))},
            }
        ],
    }


def deposit_body(payload: Mapping[str, Any], reference: str) -> dict[str, Any]:
    amount = _amount(payload)
    return {
        "DepositToAccountRef": _ref(_text(payload, "to_account")),
        "TxnDate": _day(payload),
        "CurrencyRef": _ref(_currency(payload)),
        "PrivateNote": reference,
        "Line": [
            {
                "Amount": amount,
                "DetailType": "DepositLineDetail",
                "DepositLineDetail": {"AccountRef": _ref(_text(payload, "from_account"))},
            }
        ],
    }


def transfer_body(payload: Mapping[str, Any], reference: str) -> dict[str, Any]:
    """A Transfer from ``from_account`` to ``to_account`` (both balance-sheet accounts)."""
    source, target = _text(payload, "from_account"), _text(payload, "to_account")
    if source == target:
        raise PayloadError(f"a transfer needs two accounts, not {source} twice")
    return {
        "FromAccountRef": _ref(source),
        "ToAccountRef": _ref(target),
        "Amount": _amount(payload),
        "TxnDate": _day(payload),
        "CurrencyRef": _ref(_currency(payload)),
        "PrivateNote": reference,
    }


def surcharge_body(payload: Mapping[str, Any], reference: str) -> dict[str, Any]:
    """A Deposit into the clearing account whose one line is income (``DepositLineDetail.AccountRef``)."""
    amount = _amount(payload)
    detail: dict[str, Any] = {}
    if payload.get("customer_external_id"):
        detail["Entity"] = _ref(str(payload["customer_external_id"]))
    detail["AccountRef"] = _ref(_text(payload, "income_account"))
    return {
        "DepositToAccountRef": _ref(_text(payload, "account")),
        "TxnDate": _day(payload),
        "CurrencyRef": _ref(_currency(payload)),
        "PrivateNote": reference,
        "Line": [
            {
                "Amount": amount,
                "DetailType": "DepositLineDetail",
                "Description": str(payload.get("description") or "Card surcharge")[:NOTE_MAX],
                "DepositLineDetail": detail,
            }
        ],
    }


def unapplied_payment_body(payload: Mapping[str, Any], reference: str) -> dict[str, Any]:
    """A Payment linked to nothing: the customer's unapplied credit, received into ``account``."""
    body: dict[str, Any] = {
        "CustomerRef": _ref(_text(payload, "customer_external_id")),
        "TotalAmt": _amount(payload),
        "CurrencyRef": _ref(_currency(payload)),
    }
    if payload.get("currency_rate") is not None:
        body["ExchangeRate"] = _decimal(payload["currency_rate"], "currency_rate")
    body.update(
        {
            "TxnDate": _day(payload),
            "DepositToAccountRef": _ref(_text(payload, "account")),
            "PaymentRefNum": payment_ref_num(reference),
            "PrivateNote": reference,
        }
    )
    return body


def refund_receipt_body(payload: Mapping[str, Any], reference: str, customer: str) -> dict[str, Any]:
    """A RefundReceipt paid from ``account`` (clearing), its one line on the ``refund_item``."""
    amount = _amount(payload)
    item = payload.get("refund_item")
    if not item:
        raise PayloadError("no refund_item in [writeback]: a RefundReceipt line needs a QuickBooks item")
    return {
        "CustomerRef": _ref(customer),
        "TxnDate": _day(payload),
        "CurrencyRef": _ref(_currency(payload)),
        "DepositToAccountRef": _ref(_text(payload, "account")),
        "PaymentRefNum": payment_ref_num(str(payload.get("refund_id") or reference)),
        "PrivateNote": reference,
        "Line": [
            {
                "Amount": amount,
                "DetailType": "SalesItemLineDetail",
                "Description": str(payload.get("description") or "Refund")[:NOTE_MAX],
                "SalesItemLineDetail": {"ItemRef": _ref(str(item)), "Qty": Decimal(1), "UnitPrice": amount},
            }
        ],
    }


LATE_FEE_BOOKINGS = ("line", "invoice")


def booking_of(payload: Mapping[str, Any]) -> str:
    """A late fee's booking: ``line`` (on the overdue invoice) or ``invoice`` (one of its own)."""
    booking = str(_required(payload, "booking"))
    if booking not in LATE_FEE_BOOKINGS:
        raise PayloadError(f"a late fee's booking must be 'line' or 'invoice', not {booking!r}")
    return booking


def late_fee_line(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The late fee's sales line on the configured item."""
    amount = _amount(payload)
    item = payload.get("late_fee_item")
    if not item:
        raise PayloadError("no late_fee_item in [writeback]: a late fee's line needs a QuickBooks item")
    return {
        "Amount": amount,
        "DetailType": "SalesItemLineDetail",
        "Description": str(payload.get("description") or "Late fee")[:NOTE_MAX],
        "SalesItemLineDetail": {"ItemRef": _ref(str(item)), "Qty": Decimal(1), "UnitPrice": amount},
    }


def late_fee_invoice_body(payload: Mapping[str, Any], reference: str, customer: str) -> dict[str, Any]:
    """A late-fee invoice of its own for the customer: one line on the late fee item."""
    return {
        "CustomerRef": _ref(customer),
        "TxnDate": _day(payload),
        "CurrencyRef": _ref(_currency(payload)),
        "PrivateNote": reference,
        "Line": [late_fee_line(payload)],
    }


def late_fee_update(
    invoice: Mapping[str, Any], lines: Sequence[Mapping[str, Any]], references: Sequence[str]
) -> dict[str, Any]:
    """A sparse update of ``invoice`` (read fresh, with its SyncToken) adding ``lines``: a sparse update replaces
    the whole ``Line`` list, so every line it has is sent back (the subtotal, which QuickBooks computes, is left
    out); each reference is appended to its ``PrivateNote`` on a line of its own."""
    kept = [
        dict(line)
        for line in invoice.get("Line") or []
        if isinstance(line, Mapping) and line.get("DetailType") != "SubTotalLineDetail"
    ]
    note = str(invoice.get("PrivateNote") or "")
    for reference in references:
        note = f"{note}\n{reference}" if note else reference
    if len(note) > NOTE_MAX:
        raise PayloadError(f"invoice {invoice.get('Id')}'s PrivateNote would pass {NOTE_MAX} characters")
    return {
        "Id": str(invoice["Id"]),
        "SyncToken": str(invoice["SyncToken"]),
        "sparse": True,
        "PrivateNote": note,
        "Line": [*kept, *lines],
    }


def bill_body(payload: Mapping[str, Any], reference: str) -> dict[str, Any]:
    """The collections agency's fee: a Bill from its Vendor, one account-based expense line."""
    amount = _amount(payload)
    vendor = payload.get("collections_vendor")
    if not vendor:
        raise PayloadError("no collections_vendor in [writeback]: the agency's bill needs its QuickBooks vendor")
    account = payload.get("collections_fee_account")
    if not account:
        raise PayloadError("no collections_fee_account in [writeback]: the agency's fee needs an expense account")
    return {
        "VendorRef": _ref(str(vendor)),
        "TxnDate": _day(payload),
        "CurrencyRef": _ref(_currency(payload)),
        "PrivateNote": reference,
        "Line": [
            {
                "Amount": amount,
                "DetailType": "AccountBasedExpenseLineDetail",
                "Description": str(payload.get("description") or "Collections agency fee")[:NOTE_MAX],
                "AccountBasedExpenseLineDetail": {"AccountRef": _ref(str(account))},
            }
        ],
    }


def void_body(payment: Mapping[str, Any], references: Sequence[str]) -> dict[str, Any]:
    """The void of ``payment`` (read fresh, with its SyncToken): a sparse body whose ``PrivateNote`` is the
    payment's note with each reference not yet carried appended on a line of its own."""
    note = str(payment.get("PrivateNote") or "")
    carried = note_references(note)
    for reference in references:
        if reference not in carried:
            note = f"{note}\n{reference}" if note else reference
            carried.add(reference)
    if len(VOID_NOTE) + 3 + len(note) > NOTE_MAX:
        raise PayloadError(f"payment {payment.get('Id')}'s PrivateNote would pass {NOTE_MAX} characters")
    return {"Id": str(payment["Id"]), "SyncToken": str(payment["SyncToken"]), "sparse": True, "PrivateNote": note}


def credit_memo_body(payload: Mapping[str, Any], reference: str, customer: str) -> dict[str, Any]:
    """A zero Payment linking the invoice and the credit memo, each line for the amount applied."""
    amount = _amount(payload)
    return {
        "CustomerRef": _ref(customer),
        "TotalAmt": Decimal("0"),
        "CurrencyRef": _ref(_currency(payload)),
        "TxnDate": _day(payload),
        "PrivateNote": reference,
        "Line": [
            {
                "Amount": amount,
                "LinkedTxn": [{"TxnId": _text(payload, "invoice_external_id"), "TxnType": "Invoice"}],
            },
            {"Amount": amount, "LinkedTxn": [{"TxnId": _text(payload, "source_id"), "TxnType": "CreditMemo"}]},
        ],
    }


def _line_amount(line: Mapping[str, Any]) -> Decimal:
    try:
        return _decimal(line.get("Amount", 0), "Line.Amount")
    except PayloadError:
        return Decimal("0")


def application_update(payment: Mapping[str, Any], applications: Sequence[tuple[str, Decimal, str]]) -> dict[str, Any]:
    """A sparse update of ``payment`` applying ``(invoice, amount, reference)`` from its unapplied cash.

    A sparse update replaces the whole ``Line`` list, so every line the payment has is sent back (its amount
    and links only); an invoice already linked gets its line's amount raised instead of a second line.
    Each reference is appended to ``PrivateNote`` on a line of its own.
    """
    lines: list[dict[str, Any]] = []
    for line in payment.get("Line") or []:
        if not isinstance(line, Mapping):
            continue
        links = [
            {k: str(v) for k, v in link.items() if k in ("TxnId", "TxnType", "TxnLineId")}
            for link in line.get("LinkedTxn") or []
            if isinstance(link, Mapping)
        ]
        lines.append({"Amount": _line_amount(line), "LinkedTxn": links})
    note = str(payment.get("PrivateNote") or "")
    for invoice, amount, reference in applications:
        for line in lines:
            if line["LinkedTxn"] == [{"TxnId": invoice, "TxnType": "Invoice"}]:
                line["Amount"] = line["Amount"] + amount
                break
        else:
            lines.append({"Amount": amount, "LinkedTxn": [{"TxnId": invoice, "TxnType": "Invoice"}]})
        note = f"{note}\n{reference}" if note else reference
    if len(note) > NOTE_MAX:
        raise PayloadError(f"payment {payment.get('Id')}'s PrivateNote would pass {NOTE_MAX} characters")
    return {
        "Id": str(payment["Id"]),
        "SyncToken": str(payment["SyncToken"]),
        "sparse": True,
        "PrivateNote": note,
        "Line": lines,
    }


def request_id(connection: str, keys: Iterable[str], requests: Sequence[Mapping[str, Any]]) -> str:
    """``ar`` and 32 hex digits of a digest of the batch's posting keys and item bodies.

    Deterministic: the same postings always make the same requestid, so a batch sent again is applied
    once. The bodies are in it too, so a changed request (a posting fixed by a person, an update re-read
    with a newer SyncToken) is never answered with the first one's cached reply. 34 characters: Intuit
    allows 36 for a batch's requestid, and 50 with a ``bId`` (ours are at most 2).
    """
    digest = hashlib.sha256("\n".join([connection, *keys, jsonwire.dumps(list(requests))]).encode())
    return "ar" + digest.hexdigest()[:32]


# --- the writer ---------------------------------------------------------------------------------------------


@dataclass
class _Item:
    """One BatchItemRequest, carrying one posting (or several applications from the same payment)."""

    entity: str
    operation: str
    body: dict[str, Any]
    members: list[int]
    source: str | None = None
    """The payment an application update or a void changes, or the invoice a late fee's line is added to
    (re-read on 5010)."""
    again: str = ""
    """How the item is rebuilt from a fresh read on 5010: ``application``, ``reversal`` or ``late_fee_line``."""

    def request(self, bid: str) -> dict[str, Any]:
        return {"bId": bid, "operation": self.operation, self.entity: self.body}


@dataclass
class _Run:
    postings: Sequence[Posting]
    results: list[PostingResult | None]
    stale: list[_Item] = field(default_factory=list)
    duplicates: list[int] = field(default_factory=list)

    def done(self, index: int, result: PostingResult) -> None:
        self.results[index] = result

    def fail(self, index: int, reason: str, *, retry: bool = False) -> None:
        self.results[index] = PostingResult(self.postings[index].key, False, reason=reason, retry=retry)

    def ok(self, index: int, external_id: str) -> None:
        self.results[index] = PostingResult(self.postings[index].key, True, external_id=external_id)


def _kind(posting: Posting) -> PostingKind:
    try:
        return PostingKind(posting.kind)
    except ValueError:
        raise PayloadError(f"QuickBooks cannot post {posting.kind!r}") from None


def _from_payment(posting: Posting) -> bool:
    return posting.kind == PostingKind.CREDIT_APPLICATION.value and posting.payload.get("source") == "payment"


def _on_invoice(posting: Posting) -> bool:
    """A late fee added as a line to its overdue invoice."""
    return posting.kind == PostingKind.LATE_FEE.value and posting.payload.get("booking") == "line"


def _code(ref: Any) -> str:
    return str(ref.get("value") if isinstance(ref, Mapping) else ref or "").upper()


def _chunks(values: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _quoted(values: Iterable[str]) -> str:
    return ", ".join("'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'" for value in values)


class BatchWriter:
    """``LedgerWriter.post`` and ``find_posted`` for one QuickBooks company, over injected I/O."""

    def __init__(self, connection: str, query: Query, send: Send) -> None:
        self.connection = connection
        self.query = query
        self.send = send

    # --- reading ----------------------------------------------------------------------------------------

    def _rows(self, entity: str, where: str) -> Iterator[Mapping[str, Any]]:
        position = 1
        while True:
            body = self.query(
                f"SELECT * FROM {entity} WHERE {where} ORDERBY Id STARTPOSITION {position} MAXRESULTS {QUERY_PAGE}"
            )
            rows = body.get("QueryResponse", {}).get(entity, [])
            yield from (row for row in rows if isinstance(row, Mapping))
            position += len(rows)
            if len(rows) < QUERY_PAGE:
                return

    def _by_id(self, entity: str, ids: Iterable[str]) -> dict[str, Mapping[str, Any]]:
        wanted = sorted({i for i in ids if i.isdigit()}, key=int)
        found: dict[str, Mapping[str, Any]] = {}
        for chunk in _chunks(wanted, IDS_PER_QUERY):
            for row in self._rows(entity, f"Id IN ({_quoted(chunk)})"):
                found[str(row.get("Id"))] = row
        return found

    # --- post ---------------------------------------------------------------------------------------------

    def post(self, postings: Sequence[Posting]) -> list[PostingResult]:
        """One result per posting, in order. Raises ``RetriableError`` when a whole request's outcome is unknown
        (after the transport's own retries): the caller then uses :meth:`find_posted`."""
        run = _Run(postings, [None] * len(postings))
        customers = self._customers(postings)
        items: list[_Item] = []
        applications: dict[str, list[int]] = {}
        reversals: dict[str, list[int]] = {}
        deletions: dict[str, list[int]] = {}
        fee_lines: dict[str, list[int]] = {}
        for index, posting in enumerate(postings):
            try:
                kind = _kind(posting)
                if kind is PostingKind.LATE_FEE and booking_of(posting.payload) == "line":
                    late_fee_line(posting.payload)
                    fee_lines.setdefault(_text(posting.payload, "invoice_external_id"), []).append(index)
                    continue
                if _from_payment(posting):
                    _amount(posting.payload)
                    applications.setdefault(_text(posting.payload, "source_id"), []).append(index)
                    continue
                if kind is PostingKind.PAYMENT_REVERSAL:
                    _amount(posting.payload)
                    reversals.setdefault(_text(posting.payload, "payment_external_id"), []).append(index)
                    continue
                if kind is PostingKind.SURCHARGE_REVERSAL:
                    _amount(posting.payload)
                    deletions.setdefault(_text(posting.payload, "surcharge_external_id"), []).append(index)
                    continue
                item = self._create(posting, kind, customers)
                item.members.append(index)
                items.append(item)
            except PayloadError as exc:
                run.fail(index, f"cannot post: {exc}")
        if applications:
            items.extend(self._applications(run, applications))
        if reversals:
            items.extend(self._reversals(run, reversals))
        if deletions:
            items.extend(self._deletions(run, deletions))
        if fee_lines:
            items.extend(self._fee_lines(run, fee_lines))
        items.sort(key=lambda item: item.members[0])
        self._send(run, items)
        if run.stale:
            again: dict[str, dict[str, list[int]]] = {}
            for item in run.stale:
                again.setdefault(item.again, {})[str(item.source)] = list(item.members)
            retried = self._applications(run, again.get("application", {}))
            retried += self._reversals(run, again.get("reversal", {}))
            retried += self._fee_lines(run, again.get("late_fee_line", {}))
            retried.sort(key=lambda item: item.members[0])
            run.stale = []
            self._send(run, retried)
            for item in run.stale:  # stale twice: somebody keeps changing the payment; try again later
                for index in item.members:
                    if run.results[index] is None:
                        run.fail(
                            index,
                            f"stale object twice in a row (5010): {item.entity.lower()} {item.source} keeps changing",
                            retry=True,
                        )
        if run.duplicates:
            found = self.find_posted([postings[i] for i in run.duplicates])
            for index in run.duplicates:
                external_id = found.get(postings[index].key)
                if external_id is not None:
                    run.ok(index, external_id)
                else:
                    run.fail(index, "QuickBooks reports a duplicate request, yet nothing carries this reference")
        results = [result for result in run.results if result is not None]
        if len(results) != len(postings):  # pragma: no cover - every path above settles each posting
            raise RetriableError(f"{self.connection}: some postings have no outcome: look them up")
        return results

    def _customers(self, postings: Sequence[Posting]) -> dict[str, str]:
        """Customers of the invoices whose postings do not name one (a zero payment needs a CustomerRef)."""
        wanted = {
            str(p.payload["invoice_external_id"])
            for p in postings
            if p.kind
            in (
                PostingKind.PAYMENT.value,
                PostingKind.CREDIT_APPLICATION.value,
                PostingKind.REFUND.value,
                PostingKind.LATE_FEE.value,
            )
            and not _from_payment(p)
            and not _on_invoice(p)
            and not p.payload.get("customer_external_id")
            and p.payload.get("invoice_external_id")
        }
        if not wanted:
            return {}
        invoices = self._by_id("Invoice", wanted)
        out: dict[str, str] = {}
        for ident, invoice in invoices.items():
            customer = invoice.get("CustomerRef")
            value = customer.get("value") if isinstance(customer, Mapping) else customer
            if value:
                out[ident] = str(value)
        return out

    def _create(self, posting: Posting, kind: PostingKind, customers: Mapping[str, str]) -> _Item:
        payload = posting.payload
        reference = reference_of(posting)
        if kind is PostingKind.FEE:
            return _Item("Purchase", "create", purchase_body(payload, reference), [])
        if kind is PostingKind.PAYOUT:
            return _Item("Deposit", "create", deposit_body(payload, reference), [])
        if kind is PostingKind.PAYOUT_DEBIT:
            return _Item("Transfer", "create", transfer_body(payload, reference), [])
        if kind is PostingKind.OVERPAYMENT:
            return _Item("Payment", "create", unapplied_payment_body(payload, reference), [])
        if kind is PostingKind.SURCHARGE:
            return _Item("Deposit", "create", surcharge_body(payload, reference), [])
        if kind is PostingKind.COLLECTIONS_FEE:
            return _Item("Bill", "create", bill_body(payload, reference), [])
        invoice = _text(payload, "invoice_external_id")
        customer = payload.get("customer_external_id") or customers.get(invoice)
        if not customer:
            raise PayloadError(f"invoice {invoice} is not in QuickBooks (deleted?) and no customer is named")
        if kind is PostingKind.PAYMENT:
            return _Item("Payment", "create", payment_body(payload, reference, str(customer)), [])
        if kind is PostingKind.REFUND:
            return _Item("RefundReceipt", "create", refund_receipt_body(payload, reference, str(customer)), [])
        if kind is PostingKind.LATE_FEE:
            return _Item("Invoice", "create", late_fee_invoice_body(payload, reference, str(customer)), [])
        source = payload.get("source")
        if source != "credit_note":
            raise PayloadError(f"a credit application's source must be 'credit_note' or 'payment', not {source!r}")
        return _Item("Payment", "create", credit_memo_body(payload, reference, str(customer)), [])

    def _applications(self, run: _Run, by_source: Mapping[str, list[int]]) -> list[_Item]:
        """Sparse updates applying unapplied cash, one per source payment, read fresh (with its SyncToken)."""
        if not by_source:
            return []
        payments = self._by_id("Payment", by_source)
        items: list[_Item] = []
        for source, members in by_source.items():
            payment = payments.get(source)
            if payment is None:
                for index in members:
                    run.fail(index, f"object not found: payment {source} is not in QuickBooks (deleted?)")
                continue
            carried = note_references(payment.get("PrivateNote"))
            code = _code(payment.get("CurrencyRef"))
            pending: list[int] = []
            wanted: list[tuple[str, Decimal, str]] = []
            for index in members:
                posting = run.postings[index]
                reference = reference_of(posting)
                if reference in carried:
                    run.ok(index, source)  # applied before (an answer lost, or a stale retry that had landed)
                    continue
                try:
                    posted_currency = _currency(posting.payload)
                    if code and posted_currency != code:
                        raise PayloadError(f"payment {source} is in {code}, the application in {posted_currency}")
                    invoice = _text(posting.payload, "invoice_external_id")
                    wanted.append((invoice, _amount(posting.payload), reference))
                    pending.append(index)
                except PayloadError as exc:
                    run.fail(index, f"cannot post: {exc}")
            if not pending:
                continue
            try:
                body = application_update(payment, wanted)
            except PayloadError as exc:
                for index in pending:
                    run.fail(index, f"cannot post: {exc}")
                continue
            items.append(_Item("Payment", "update", body, pending, source, "application"))
        return items

    def _fee_lines(self, run: _Run, by_invoice: Mapping[str, list[int]]) -> list[_Item]:
        """Sparse updates adding late fee lines, one per invoice, read fresh (with its SyncToken): all the
        invoices in one query per 100. A fee whose reference the invoice carries already is ``ok`` as it is."""
        if not by_invoice:
            return []
        invoices = self._by_id("Invoice", by_invoice)
        items: list[_Item] = []
        for ident, members in by_invoice.items():
            invoice = invoices.get(ident)
            if invoice is None:
                for index in members:
                    run.fail(
                        index,
                        f"not found or deleted: code 610 Object Not Found: invoice {ident} is not in QuickBooks "
                        "(deleted by a person?): no invoice to add the late fee to",
                    )
                continue
            carried = note_references(invoice.get("PrivateNote"))
            code = _code(invoice.get("CurrencyRef"))
            pending: list[int] = []
            lines: list[dict[str, Any]] = []
            references: list[str] = []
            for index in members:
                posting = run.postings[index]
                reference = reference_of(posting)
                if reference in carried:
                    run.ok(index, ident)  # added before (an answer lost, or a stale retry that had landed)
                    continue
                try:
                    currency = _currency(posting.payload)
                    if code and currency != code:
                        raise PayloadError(f"invoice {ident} is in {code}, the late fee in {currency}")
                    lines.append(late_fee_line(posting.payload))
                    references.append(reference)
                    pending.append(index)
                except PayloadError as exc:
                    run.fail(index, f"cannot post: {exc}")
            if not pending:
                continue
            try:
                body = late_fee_update(invoice, lines, references)
            except PayloadError as exc:
                for index in pending:
                    run.fail(index, f"cannot post: {exc}")
                continue
            items.append(_Item("Invoice", "update", body, pending, ident, "late_fee_line"))
        return items

    def _reversals(self, run: _Run, by_payment: Mapping[str, list[int]]) -> list[_Item]:
        """Voids, one per payment, read fresh (with its SyncToken); a payment already void is ``ok`` as it is.

        A reversal undoes the whole payment: its amount and currency must be the payment's.
        """
        if not by_payment:
            return []
        payments = self._by_id("Payment", by_payment)
        items: list[_Item] = []
        for ident, members in by_payment.items():
            payment = payments.get(ident)
            if payment is None:
                for index in members:
                    run.fail(
                        index,
                        f"not found or deleted: code 610 Object Not Found: payment {ident} is not in QuickBooks "
                        "(deleted by a person?): nothing to void",
                    )
                continue
            if voided(payment):
                for index in members:
                    run.ok(index, ident)  # voided before (our answer lost, or a person voided it)
                continue
            total = _line_amount({"Amount": payment.get("TotalAmt", 0)})
            code = _code(payment.get("CurrencyRef"))
            pending: list[int] = []
            references: list[str] = []
            for index in members:
                posting = run.postings[index]
                try:
                    amount = _amount(posting.payload)
                    currency = _currency(posting.payload)
                    if code and currency != code:
                        raise PayloadError(f"payment {ident} is in {code}, the reversal in {currency}")
                    if amount != total:
                        raise PayloadError(
                            f"payment {ident} is for {total}, the reversal for {amount}: only a whole payment is voided"
                        )
                    references.append(reference_of(posting))
                    pending.append(index)
                except PayloadError as exc:
                    run.fail(index, f"cannot post: {exc}")
            if not pending:
                continue
            try:
                body = void_body(payment, references)
            except PayloadError as exc:
                for index in pending:
                    run.fail(index, f"cannot post: {exc}")
                continue
            items.append(_Item("Payment", "void", body, pending, ident, "reversal"))
        return items

    def _deletions(self, run: _Run, by_deposit: Mapping[str, list[int]]) -> list[_Item]:
        """Surcharge Deposits deleted, one item per Deposit, read fresh (with its SyncToken); one that is gone is
        ``ok`` as it is. The amount undone must be the Deposit's."""
        deposits = self._by_id("Deposit", by_deposit)
        items: list[_Item] = []
        for ident, members in by_deposit.items():
            deposit = deposits.get(ident)
            if deposit is None:
                for index in members:
                    run.ok(index, ident)  # deleted before (our answer lost, or a person deleted it)
                continue
            total = _line_amount({"Amount": deposit.get("TotalAmt", 0)})
            pending = []
            for index in members:
                amount = _amount(run.postings[index].payload)
                if amount != total:
                    run.fail(index, f"cannot post: deposit {ident} is for {total}, the reversal for {amount}")
                else:
                    pending.append(index)
            if pending:
                body = {"Id": str(deposit["Id"]), "SyncToken": str(deposit["SyncToken"])}
                items.append(_Item("Deposit", "delete", body, pending))
        return items

    def _send(self, run: _Run, items: Sequence[_Item]) -> None:
        for chunk in _chunks(items, BATCH_LIMIT):
            requests = [item.request(str(n)) for n, item in enumerate(chunk)]
            keys = [run.postings[i].identity for item in chunk for i in item.members]
            answer = self.send({"BatchItemRequest": requests}, request_id(self.connection, keys, requests))
            raw = answer.get("BatchItemResponse")
            entries = raw if isinstance(raw, list) else []
            answers = {str(entry.get("bId")): entry for entry in entries if isinstance(entry, dict)}
            missing = [str(n) for n in range(len(chunk)) if str(n) not in answers]
            if missing:
                raise RetriableError(
                    f"{self.connection}: QuickBooks answered no item for bId {', '.join(missing)}: outcome unknown"
                )
            for n, item in enumerate(chunk):
                self._read(run, item, answers[str(n)])

    def _read(self, run: _Run, item: _Item, answer: Mapping[str, Any]) -> None:
        fault = parse_fault(answer)
        if fault is None:
            obj = answer.get(item.entity)
            ident = obj.get("Id") if isinstance(obj, Mapping) else None
            for index in item.members:
                if ident is None:
                    run.fail(index, f"QuickBooks answered no {item.entity} for this item", retry=True)
                else:
                    run.ok(index, str(ident))
            return
        verdict = item_verdict(fault)
        if verdict.fate is ItemFate.STALE and item.source is not None:
            run.stale.append(item)
            return
        for index in item.members:
            if verdict.fate is ItemFate.DUPLICATE:
                run.duplicates.append(index)
            else:
                run.fail(index, verdict.reason, retry=verdict.fate in (ItemFate.RETRY, ItemFate.STALE))

    # --- find_posted ----------------------------------------------------------------------------------------

    def find_posted(self, postings: Sequence[Posting]) -> dict[str, str]:
        """key -> Id of each posting already in QuickBooks, found by the reference it carries.

        QuickBooks' query language cannot filter on ``PrivateNote``, so each entity is read by the
        postings' ``TxnDate`` values (paged, 1000 a page) and the notes are matched here. An application
        from a payment is found on that payment (read by Id), whose note carries the reference. A reversal
        is found when its payment (read by Id) is void: the void carries the reversal's reference in its
        note, and a payment a person voided is reversed all the same (``post`` answers ``ok`` for it). A
        surcharge reversal is found when its Deposit (read by Id) is gone. A late fee added as a line is found on
        its invoice (read by Id), whose note carries the reference; a late-fee invoice of its own and an agency's
        Bill are found by date and note like the others.
        """
        found: dict[str, str] = {}
        by_entity: dict[str, dict[str, dict[str, list[str]]]] = {}
        on_payments: dict[str, dict[str, list[str]]] = {}
        reversed_payments: dict[str, list[str]] = {}
        deleted_deposits: dict[str, list[str]] = {}
        on_invoices: dict[str, dict[str, list[str]]] = {}
        for posting in postings:
            reference = reference_of(posting)
            try:
                kind = _kind(posting)
                if kind is PostingKind.LATE_FEE and booking_of(posting.payload) == "line":
                    invoice = _text(posting.payload, "invoice_external_id")
                    on_invoices.setdefault(invoice, {}).setdefault(reference, []).append(posting.key)
                    continue
                if kind is PostingKind.SURCHARGE_REVERSAL:
                    deleted_deposits.setdefault(_text(posting.payload, "surcharge_external_id"), []).append(posting.key)
                    continue
                if _from_payment(posting):
                    source = _text(posting.payload, "source_id")
                    on_payments.setdefault(source, {}).setdefault(reference, []).append(posting.key)
                    continue
                if kind is PostingKind.PAYMENT_REVERSAL:
                    reversed_payments.setdefault(_text(posting.payload, "payment_external_id"), []).append(posting.key)
                    continue
                day = _day(posting.payload)
            except PayloadError:
                continue  # post() refuses such a posting: it was never sent
            by_day = by_entity.setdefault(_ENTITY[kind], {})
            by_day.setdefault(day, {}).setdefault(reference, []).append(posting.key)
        read = self._by_id("Payment", {*on_payments, *reversed_payments}) if on_payments or reversed_payments else {}
        for source, payment in read.items():
            carried = note_references(payment.get("PrivateNote"))
            for reference, keys in on_payments.get(source, {}).items():
                if reference in carried:
                    for key in keys:
                        found.setdefault(key, source)
            if voided(payment):
                for key in reversed_payments.get(source, []):
                    found.setdefault(key, source)
        for ident, fee_invoice in (self._by_id("Invoice", on_invoices) if on_invoices else {}).items():
            carried = note_references(fee_invoice.get("PrivateNote"))
            for reference, keys in on_invoices.get(ident, {}).items():
                if reference in carried:
                    for key in keys:
                        found.setdefault(key, ident)
        if deleted_deposits:
            still = self._by_id("Deposit", deleted_deposits)
            for ident, keys in deleted_deposits.items():
                if ident not in still:
                    for key in keys:
                        found.setdefault(key, ident)
        for entity, by_day in by_entity.items():
            wanted: dict[str, list[str]] = {}
            for refs in by_day.values():
                for reference, keys in refs.items():
                    wanted.setdefault(reference, []).extend(keys)
            for days in _chunks(sorted(by_day), IDS_PER_QUERY):
                for row in self._rows(entity, f"TxnDate IN ({_quoted(days)})"):
                    for reference in note_references(row.get("PrivateNote")) & wanted.keys():
                        for key in wanted[reference]:
                            found.setdefault(key, str(row.get("Id")))
        return found
