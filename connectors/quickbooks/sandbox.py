"""A stateful local server speaking the QuickBooks Online v3 wire protocol (JSON).

Standard library only. It serves what the connector, the tests and the
benchmarks need from QBO, with the envelopes, field names and fault shapes of
Intuit's XSDs and of recorded QBO traffic:

* OAuth 2 (discovery document, authorize redirect, token endpoint with
  rotating refresh tokens, revoke);
* ``/v3/company/{realm}/query`` (a subset of the query language), ``/cdc``,
  ``/batch``, read, create, full and sparse update, void and delete, with
  ``SyncToken`` checks and ``requestid`` idempotency;
* per-realm rate limits (10/s, 500/min, 10 concurrent, 40 batches/min) that
  answer HTTP 429 with the XML ``ThrottleExceeded`` body even when JSON was
  asked for, and fault injection for the failure modes a client must survive;
* what write-back relies on: payments that move invoice balances and credit
  memos' remaining credit (a zero payment linking both applies a credit memo),
  purchases and deposits checked against the XSD's properties, account
  balances (``CurrentBalance``) moved by payments, purchases and deposits, a
  settable ``closing_date`` (fault 6210 for anything dated on or before it), 610
  "Another user has deleted this transaction" for a link to a deleted
  transaction, and ``requestid`` length checks; a void (``operation=void``, or
  a batch item's ``"operation": "void"``) zeroes the amounts, gives the
  invoices back what a voided payment took, takes it out of the deposit-to
  account, and puts "Voided" in front of the note (``Voided - ...``; a sparse
  void body's ``PrivateNote`` is applied first).

Money is ``Decimal`` end to end: request bodies are parsed with
``parse_float=Decimal`` and amounts are written as JSON numbers (``250.00``).
Time comes from an injected clock, so tests move time instead of sleeping.

Stored objects are never mutated in place: every change stores a new dict
(nested dicts that did not change may be shared). Readers can therefore take
references under the lock and serialise them outside it.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import contextlib
import dataclasses
import functools
import itertools
import json
import math
import operator
import re
import secrets
import socket
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlencode, urlsplit

from connectors.base import Clock

__all__ = [
    "ENTITIES",
    "QuickBooksSandbox",
    "SandboxFault",
    "dumps",
    "loads",
]

JsonObj = dict[str, Any]

ENTITIES: tuple[str, ...] = (
    "Customer",
    "Invoice",
    "Payment",
    "CreditMemo",
    "Purchase",
    "Deposit",
    "Transfer",
    "RefundReceipt",
    "Account",
    "Vendor",
    "Bill",
)
_CANONICAL = {name.lower(): name for name in ENTITIES}
_TRANSACTIONS = frozenset(
    {"Invoice", "Payment", "CreditMemo", "Purchase", "Deposit", "Transfer", "RefundReceipt", "Bill"}
)
_MOVES_ACCOUNTS = ("Payment", "Purchase", "Deposit", "Transfer", "RefundReceipt")
"""Entities whose amounts move account balances (``CurrentBalance``)."""
_VOIDABLE = frozenset({"Invoice", "Payment"})

PACIFIC = timezone(timedelta(hours=-7))
"""QBO stamps times in the company's zone; the sandbox uses a fixed -07:00."""

CURRENCY_NAMES = {
    "USD": "United States Dollar",
    "CAD": "Canadian Dollar",
    "EUR": "Euro",
    "GBP": "British Pound Sterling",
    "AUD": "Australian Dollar",
}

SALES_TERMS: dict[str, tuple[str, int]] = {
    "1": ("Due on receipt", 0),
    "2": ("Net 15", 15),
    "3": ("Net 30", 30),
    "4": ("Net 60", 60),
}
"""SalesTermRef value -> (name, days). Without a term an invoice is due in 30 days."""

MAX_RESULTS = 1000
CDC_CAP = 1000
VOID_NOTE = "Voided"
BATCH_MAX_ITEMS = 30
_CENT = Decimal("0.01")
_ZERO = Decimal("0")

# Top-level element/attribute names of each type (and its base types) in
# Intuit's Finance.xsd / IntuitNamesTypes.xsd. A create or update naming any
# other property is refused with fault 2010, as QBO does.


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


_COMMON_PROPS = _names("Id SyncToken MetaData CustomField AttachableRef domain status sparse")
_TXN_PROPS = _COMMON_PROPS | _names(
    """DocNumber TxnDate DepartmentRef CurrencyRef ExchangeRate PrivateNote TxnStatus
    LinkedTxn Line TxnTaxDetail TxnSource TaxFormType TaxFormNum TransactionLocationType
    Tag TxnApprovalInfo RecurDataRef RecurringInfo ProjectRef HomeTotalCostAmount
    TotalCostAmount"""
)
_SALES_TXN_PROPS = _TXN_PROPS | _names(
    """AutoDocNumber CustomerRef CustomerMemo BillAddr ShipAddr FreeFormAddress
    ShipFromAddr RemitToRef ClassRef SalesTermRef DueDate SalesRepRef PONumber FOB
    ShipMethodRef ShipDate TrackingNum GlobalTaxCalculation TotalAmt HomeTotalAmt
    ApplyTaxAfterDiscount TemplateRef PrintStatus EmailStatus BillEmail BillEmailCc
    BillEmailBcc ARAccountRef Balance HomeBalance FinanceCharge PaymentMethodRef
    PaymentRefNum PaymentType CheckPayment CreditCardPayment DepositToAccountRef
    DeliveryInfo DiscountRate DiscountAmt GovtTxnRefIdentifier TaxExemptionRef
    ShippingTaxIncludedInTotalTax"""
)
_ALLOWED_PROPS: dict[str, frozenset[str]] = {
    "Invoice": _SALES_TXN_PROPS
    | _names(
        """Deposit AllowIPNPayment AllowOnlinePayment AllowOnlineCreditCardPayment
        AllowOnlineACHPayment AllowOnlinePayPalPayment EInvoiceStatus
        ECloudStatusTimeStamp invoiceStatus callToAction invoiceStatusLog InvoiceEx
        LessCIS InvoiceLink PaymentDetailsMessage ConvenienceFeeDetail
        InvoiceLinkSecurityCode InvoiceLinkExpiryDate AutoPayEligible
        SchedulePayEligible ScheduledPaymentId GratuityEnabled FinancingProductType
        SubscriptionPaymentsSetting EnabledSurchargeInfo CfdiUse Exportation GlobalInfo"""
    ),
    "CreditMemo": _SALES_TXN_PROPS | _names("RemainingCredit InvoiceRef CreditMemoEx"),
    "RefundReceipt": _SALES_TXN_PROPS | _names("RemainingCredit RefundReceiptEx"),
    "Payment": _TXN_PROPS
    | _names(
        """CustomerRef RemitToRef ARAccountRef DepositToAccountRef PaymentMethodRef
        PaymentRefNum PaymentType CheckPayment CreditCardPayment TotalAmt UnappliedAmt
        ProcessPayment PaymentEx PaymentExtendedType"""
    ),
    "Purchase": _TXN_PROPS
    | _names(
        """AccountRef PaymentType EntityRef Credit RemitToAddr TotalAmt IncludeInAnnualTPAR
        PrintStatus PaymentMethodRef PaymentRefNum GlobalTaxCalculation CheckPayment
        CreditCardPayment LessCIS Memo PurchaseEx"""
    ),
    "Deposit": _TXN_PROPS | _names("DepositToAccountRef CashBack GlobalTaxCalculation TotalAmt HomeTotalAmt DepositEx"),
    "Transfer": _TXN_PROPS | _names("FromAccountRef ToAccountRef Amount ClassRef TransferEx"),
    "Bill": _TXN_PROPS
    | _names(
        """VendorRef APAccountRef TotalAmt BillEmail ReplyEmail Memo GlobalTaxCalculation PayerRef
        SalesTermRef DueDate RemitToAddr ShipAddr VendorAddr Balance HomeBalance BillEx LessCIS
        IncludeInAnnualTPAR"""
    ),
    "Vendor": _COMMON_PROPS
    | _names(
        """IntuitId Organization Title GivenName MiddleName FamilyName Suffix FullyQualifiedName
        CompanyName DisplayName PrintOnCheckName UserId Active V4IDPseudonym PrimaryPhone AlternatePhone
        Mobile Fax PrimaryEmailAddr WebAddr OtherContactInfo DefaultTaxCodeRef ContactName AltContactName
        Notes BillAddr ShipAddr OtherAddr TaxCountry TaxIdentifier TaxIdEffectiveDate BusinessNumber
        ParentRef VendorTypeRef TermRef PrefillAccountRef Balance BillRate OpenBalanceDate CreditLimit
        AcctNum Vendor1099 T4AEligible T5018Eligible CurrencyRef TDSEnabled TDSEntityTypeId
        TDSSectionTypeId TDSOverrideThreshold TaxReportingBasis APAccountRef VendorEx GSTIN
        GSTRegistrationType IsSubContractor SubcontractorType CISRate HasTPAR VendorPaymentBankDetail
        Source CostRate AgencyVerificationStatus AgencyVerificationStatusMsg AgencyVerificationTSUTC
        CompanyRegistrationNumber"""
    ),
    "Account": _COMMON_PROPS
    | _names(
        """Name SubAccount ParentRef Description FullyQualifiedName AccountAlias TxnLocationType
        Active Classification AccountType AccountSubType AccountPurposes AcctNum AcctNumExtn
        BankNum OpeningBalance OpeningBalanceDate CurrentBalance CurrentBalanceWithSubAccounts
        CurrencyRef TaxAccount TaxCodeRef OnlineBankingEnabled FIName JournalCodeRef AccountEx"""
    ),
    "Customer": _COMMON_PROPS
    | _names(
        """IntuitId Organization Title GivenName MiddleName FamilyName Suffix
        FullyQualifiedName CompanyName DisplayName PrintOnCheckName UserId Active
        V4IDPseudonym PrimaryPhone AlternatePhone Mobile Fax PrimaryEmailAddr WebAddr
        OtherContactInfo DefaultTaxCodeRef Taxable TaxExemptionReasonId BillAddr
        ShipAddr OtherAddr ContactName AltContactName Notes Job BillWithParent
        RootCustomerRef ParentRef Level CustomerTypeRef SalesTermRef SalesRepRef
        PaymentMethodRef CCDetail PriceLevelRef Balance OpenBalanceDate
        BalanceWithJobs CreditLimit AcctNum CurrencyRef OverDueBalance TotalRevenue
        TotalExpense PreferredDeliveryMethod ResaleNum JobInfo TDSEnabled
        CustomerEx SecondaryTaxIdentifier ARAccountRef PrimaryTaxIdentifier
        TaxRegime BusinessNumber GSTIN GSTRegistrationType IsProject Source
        TaxRateRef TaxGroupCodeRef ClientEntityId ClientCompanyId IsCISContractor"""
    ),
}

_SERVER_FIELDS = frozenset({"Id", "SyncToken", "MetaData", "domain", "sparse", "status"})

_PURCHASE_TYPES = frozenset({"Cash", "Check", "CreditCard"})
_PURCHASE_LINES = frozenset({"AccountBasedExpenseLineDetail", "ItemBasedExpenseLineDetail"})
_BALANCE_SHEET = {"Asset": 1, "Liability": -1, "Equity": -1}
"""Account.Classification -> the sign a debit moves CurrentBalance by (P&L accounts carry no balance)."""
REQUEST_ID_MAX = 50
"""QBO refuses a ``requestid`` (with the item's ``bId`` in front of it, in a batch) longer than this."""


# --- JSON with Decimal -------------------------------------------------------

_DEC_OPEN = "\ue000"
_DEC_CLOSE = "\ue001"
_DEC_RE = re.compile(r'"\\ue000([-0-9.]+)\\ue001"')


def _json_default(obj: object) -> str:
    if isinstance(obj, Decimal):
        return _DEC_OPEN + format(obj, "f") + _DEC_CLOSE
    if isinstance(obj, date | datetime):
        return obj.isoformat()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def dumps(obj: Any) -> bytes:
    """JSON-encode ``obj`` with every ``Decimal`` written as a JSON number."""
    text = json.dumps(obj, default=_json_default, separators=(",", ":"))
    return _DEC_RE.sub(r"\1", text).encode("utf-8")


def loads(data: bytes | str) -> Any:
    """Parse JSON with every non-integer number as ``Decimal``."""
    return json.loads(data, parse_float=Decimal)


# --- time --------------------------------------------------------------------


def _utc_now() -> datetime:
    return datetime.now(UTC)


def wire_time(epoch: float) -> str:
    """``2015-10-07T11:42:38-07:00`` (seconds precision, fixed Pacific offset)."""
    return datetime.fromtimestamp(int(epoch), PACIFIC).strftime("%Y-%m-%dT%H:%M:%S-07:00")


def _wire_time_ms(moment: datetime) -> str:
    local = moment.astimezone(PACIFIC)
    return local.strftime("%Y-%m-%dT%H:%M:%S.") + f"{local.microsecond // 1000:03d}-07:00"


def parse_wire_time(text: str) -> float:
    """Epoch seconds of an ISO date or date-time; a naive value is company (Pacific) time."""
    value = text.strip()
    if len(value) == 10:
        moment = datetime.combine(date.fromisoformat(value), datetime.min.time())
    else:
        moment = datetime.fromisoformat(value.replace(" ", "T"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=PACIFIC)
    return moment.timestamp()


# --- faults --------------------------------------------------------------------


class SandboxFault(Exception):
    """A QBO ``Fault``: raised by the Python API, answered as JSON over HTTP."""

    def __init__(
        self,
        code: str,
        message: str,
        detail: str,
        *,
        element: str | None = None,
        status: int = 400,
        fault_type: str = "ValidationFault",
    ) -> None:
        super().__init__(f"{code} {message}: {detail}")
        self.code = code
        self.message = message
        self.detail = detail
        self.element = element
        self.status = status
        self.fault_type = fault_type

    def fault(self) -> JsonObj:
        error: JsonObj = {"Message": self.message, "Detail": self.detail, "code": self.code}
        if self.element is not None:
            error["element"] = self.element
        return {"Error": [error], "type": self.fault_type}


def _query_fault(detail: str) -> SandboxFault:
    return SandboxFault("4001", "Invalid query", f"QueryValidationError: {detail}")


def _not_found() -> SandboxFault:
    return SandboxFault(
        "610",
        "Object Not Found",
        "Object Not Found : Something you're trying to use has been made inactive. "
        "Check the fields with accounts, customers, items, vendors or employees.",
        element="",
    )


def _stale() -> SandboxFault:
    return SandboxFault(
        "5010",
        "Stale Object Error",
        "Stale Object Error : You and Sandbox User were working on this at the same time. "
        "Sandbox User finished before you did, so your work was not saved.",
        element="",
    )


def _closed_period() -> SandboxFault:
    # Intuit, "Fix common QuickBooks Online Accounting API errors" (6210 Account Period Closed); the
    # Message as QBO sends it in live traffic quoted by integrators.
    return SandboxFault(
        "6210",
        "Account Period Closed, Cannot Update Through Services API",
        "The account period has closed and the account books cannot be updated through the QBO Services API. "
        "Please use the QBO website to make these changes.",
        element="",
    )


def _deleted_txn() -> SandboxFault:
    # Intuit, "Fix common QuickBooks Online Accounting API errors": 610, variant 2 (a deleted transaction).
    return SandboxFault(
        "610",
        "Object Not Found",
        "Object Not Found : Another user has deleted this transaction.",
        element="",
    )


def _long_request_id(value: str) -> SandboxFault:
    return _business(
        f"You cannot enter more than {REQUEST_ID_MAX} characters in the request_id field. "
        f"You tried entering {value}, which is {len(value)} characters."
    )


def _required(name: str) -> SandboxFault:
    return SandboxFault(
        "2020",
        "Required param missing, need to supply the required value for the API",
        f"Required parameter {name} is missing in the request",
        element=name,
    )


def _business(detail: str, element: str = "") -> SandboxFault:
    return SandboxFault(
        "6000",
        "A business validation error has occurred while processing your request",
        f"Business Validation Error: {detail}",
        element=element,
    )


def _invalid_ref(name: str) -> SandboxFault:
    return SandboxFault("2500", "Invalid Reference Id", f"Invalid Reference Id : {name}", element=name)


def _unsupported(path: str) -> SandboxFault:
    return SandboxFault(
        "500",
        "Unsupported Operation",
        f"Operation Could not find resource for relative : {path} is not supported.",
    )


def _bad_property(entity: str, name: str) -> SandboxFault:
    known = ", ".join(f'"{p}"' for p in sorted(_ALLOWED_PROPS.get(entity, ()))[:40])
    return SandboxFault(
        "2010",
        "Request has invalid or unsupported property",
        f'Property Name:Unrecognized field "{name}" (class com.intuit.schema.finance.v3.'
        f"{entity}), not marked as ignorable (known properties: {known} [truncated]])\n"
        " specified is unsupported or invalid",
    )


# --- helpers ---------------------------------------------------------------------


def _money(value: Any, name: str = "Amount") -> Decimal:
    if isinstance(value, bool):
        raise _bad_number(name, value)
    if isinstance(value, Decimal):
        amount = value
    elif isinstance(value, int | str):
        try:
            amount = Decimal(str(value).strip())
        except InvalidOperation:
            raise _bad_number(name, value) from None
    elif isinstance(value, float):
        amount = Decimal(repr(value))
    else:
        raise _bad_number(name, value)
    if not amount.is_finite():
        raise _bad_number(name, value)
    return amount.quantize(_CENT)


def _bad_number(name: str, value: Any) -> SandboxFault:
    return SandboxFault(
        "2080",
        "Illegal number format",
        f"{name} should be a valid number. Supplied value:{value}",
        element=name,
    )


def _number(value: Any, name: str) -> Decimal:
    if isinstance(value, bool) or value is None:
        raise _bad_number(name, value)
    try:
        number = value if isinstance(value, Decimal) else Decimal(str(value))
    except InvalidOperation:
        raise _bad_number(name, value) from None
    if not number.is_finite():
        raise _bad_number(name, value)
    return number


def _void_note(note: Any) -> str:
    """The note of a voided transaction: Intuit injects "Voided" into ``PrivateNote``, "prepended to existing
    text if present" (Payment, Invoice and BillPayment void docs); integrators' captures show ``Voided - ...``."""
    text = str(note or "").strip()
    return f"{VOID_NOTE} - {text}" if text else VOID_NOTE


def _is_void(obj: Mapping[str, Any]) -> bool:
    """Voided: the note starts with "Voided" and the total is zero (a live document may carry such a note)."""
    if not str(obj.get("PrivateNote") or "").startswith(VOID_NOTE):
        return False
    try:
        return _money(obj.get("TotalAmt", 0), "TotalAmt") == 0
    except SandboxFault:
        return False


def _clone(value: Any) -> Any:
    """A deep copy of JSON-like data (much faster than ``copy.deepcopy``)."""
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clone(v) for v in value]
    return value


def _copy(obj: JsonObj) -> JsonObj:
    copied: JsonObj = _clone(obj)
    return copied


def _ref_value(ref: Any) -> str | None:
    if isinstance(ref, dict):
        inner = ref.get("value")
        return None if inner is None else str(inner)
    if ref is None:
        return None
    return str(ref)


def _currency_ref(code: str) -> JsonObj:
    return {"value": code, "name": CURRENCY_NAMES.get(code, code)}


def _tid(now: float) -> str:
    return f"1-{int(now):08x}-{secrets.token_hex(12)}"


def _id_number(value: Any, element: str = "Id") -> int:
    text = str(value).strip()
    if not text.isdigit():
        raise SandboxFault(
            "2030",
            "Invalid ID",
            f"Id should be a valid number. Supplied value:{value}",
            element=element,
        )
    return int(text)


class _CompactInvoice(NamedTuple):
    """A bulk-seeded invoice with one line and no payments, kept small."""

    id: str
    create: int
    lut: int
    doc: str
    txn_date: str
    due_date: str
    customer: str
    amount: Decimal
    currency: str


_Stored = JsonObj | _CompactInvoice

_ITEM_REF = {"value": "1", "name": "Services"}


class _IdView:
    """Ids in result order over a slice of a sorted index, without copying the index."""

    def __init__(
        self, entries: list[Any], lo: int, hi: int, *, reverse: bool = False, pick: Callable[[Any], int] = int
    ) -> None:
        self.entries, self.lo, self.hi = entries, lo, max(lo, hi)
        self.reverse, self.pick = reverse, pick

    def __len__(self) -> int:
        return self.hi - self.lo

    def reversed(self) -> _IdView:
        return _IdView(self.entries, self.lo, self.hi, reverse=not self.reverse, pick=self.pick)

    def window(self, offset: int, count: int) -> list[int]:
        end = min(len(self), offset + count)
        if offset >= end:
            return []
        if self.reverse:
            part = self.entries[self.hi - end : self.hi - offset][::-1]
        else:
            part = self.entries[self.lo + offset : self.lo + end]
        return [self.pick(entry) for entry in part]

    def __iter__(self) -> Iterator[int]:
        positions = range(self.hi - 1, self.lo - 1, -1) if self.reverse else range(self.lo, self.hi)
        return (self.pick(self.entries[i]) for i in positions)


# --- tables ------------------------------------------------------------------------


class _Table:
    """One entity's rows plus the indexes the query planner uses."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.rows: dict[str, _Stored] = {}
        self.lut: dict[str, int] = {}
        self.tomb: dict[str, int] = {}
        self.next_id = 1
        self.id_index: list[int] | None = []
        self.lut_index: list[tuple[int, int]] | None = []

    def new_id(self) -> str:
        ident = str(self.next_id)
        self.next_id += 1
        return ident

    def set(self, ident: str, obj: _Stored, lut: int) -> None:
        number = int(ident)
        old_lut = self.lut.get(ident)
        if ident not in self.rows:
            self.tomb.pop(ident, None)
            if number >= self.next_id:
                self.next_id = number + 1
            if self.id_index is not None:
                if not self.id_index or self.id_index[-1] < number:
                    self.id_index.append(number)
                else:
                    bisect.insort(self.id_index, number)
        self.rows[ident] = obj
        self.lut[ident] = lut
        if self.lut_index is not None:
            if old_lut is not None:
                self._lut_remove(old_lut, number)
            bisect.insort(self.lut_index, (lut, number))

    def bulk_set(self, rows: Iterable[tuple[str, _Stored, int]]) -> None:
        self.id_index = None
        self.lut_index = None
        for ident, obj, lut in rows:
            self.rows[ident] = obj
            self.lut[ident] = lut
            number = int(ident)
            if number >= self.next_id:
                self.next_id = number + 1

    def remove(self, ident: str, at: int) -> None:
        self.rows.pop(ident)
        lut = self.lut.pop(ident)
        number = int(ident)
        if self.id_index is not None:
            pos = bisect.bisect_left(self.id_index, number)
            if pos < len(self.id_index) and self.id_index[pos] == number:
                del self.id_index[pos]
        if self.lut_index is not None:
            self._lut_remove(lut, number)
        self.tomb[ident] = at

    def _lut_remove(self, lut: int, number: int) -> None:
        assert self.lut_index is not None
        pos = bisect.bisect_left(self.lut_index, (lut, number))
        if pos < len(self.lut_index) and self.lut_index[pos] == (lut, number):
            del self.lut_index[pos]

    def ids(self) -> list[int]:
        if self.id_index is None:
            self.id_index = sorted(int(k) for k in self.rows)
        return self.id_index

    def luts(self) -> list[tuple[int, int]]:
        if self.lut_index is None:
            self.lut_index = sorted((lut, int(k)) for k, lut in self.lut.items())
        return self.lut_index


# --- query language ----------------------------------------------------------------

_TOKEN_RE = re.compile(
    r"""\s*(?:
        (?P<str>'(?:[^'\\]|\\.|'')*')
      | (?P<op><=|>=|<>|!=|=|<|>)
      | (?P<punct>[(),*])
      | (?P<num>-?\d+(?:\.\d+)?(?![A-Za-z_]))
      | (?P<word>[A-Za-z_][A-Za-z0-9_.]*)
    )""",
    re.X,
)
_LUT = "metadata.lastupdatedtime"
_CREATE = "metadata.createtime"
_INF = 1 << 62


@dataclass
class _Cond:
    path: str
    op: str
    values: list[str]
    quoted: list[bool]

    @property
    def key(self) -> str:
        return self.path.lower()


@dataclass
class _Query:
    entity: str
    count: bool = False
    fields: list[str] | None = None
    conds: list[_Cond] = field(default_factory=list)
    order: list[tuple[str, bool]] = field(default_factory=list)
    start: int = 1
    max: int = 100


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    text = text.strip().rstrip(";")
    while pos < len(text):
        match = _TOKEN_RE.match(text, pos)
        if match is None or match.end() == pos:
            if text[pos:].strip() == "":
                break
            raise _query_fault(f'Encountered " "{text[pos]}" at line 1, column {pos + 1}.')
        kind = match.lastgroup or ""
        tokens.append((kind, match.group(kind)))
        pos = match.end()
    return tokens


def _unquote(token: str) -> str:
    inner = token[1:-1]
    return re.sub(r"\\(.)|''", lambda m: m.group(1) or "'", inner)


def parse_query(text: str) -> _Query:
    """Parse the supported subset of the QBO query language."""
    tokens = _tokenize(text)
    pos = 0

    def peek(offset: int = 0) -> tuple[str, str]:
        index = pos + offset
        return tokens[index] if index < len(tokens) else ("", "")

    def take() -> tuple[str, str]:
        nonlocal pos
        if pos >= len(tokens):
            raise _query_fault("unexpected end of query")
        token = tokens[pos]
        pos += 1
        return token

    def keyword(word: str) -> bool:
        kind, value = peek()
        return kind == "word" and value.upper() == word

    def expect_word(word: str) -> None:
        kind, value = take()
        if kind != "word" or value.upper() != word:
            raise _query_fault(f'Encountered "{value}" where {word} was expected')

    def number() -> int:
        kind, value = take()
        if kind != "num" or not value.lstrip("-").isdigit():
            raise _query_fault(f'Encountered "{value}" where a number was expected')
        return int(value)

    def value() -> tuple[str, bool]:
        kind, raw = take()
        if kind == "str":
            return _unquote(raw), True
        if kind in ("num", "word"):
            return raw, False
        raise _query_fault(f'Encountered "{raw}" where a value was expected')

    expect_word("SELECT")
    query = _Query(entity="")
    if peek() == ("punct", "*"):
        take()
    elif keyword("COUNT") and peek(1) == ("punct", "("):
        take()
        take()
        if take() != ("punct", "*") or take() != ("punct", ")"):
            raise _query_fault("only COUNT(*) is supported")
        query.count = True
    else:
        fields: list[str] = []
        while True:
            kind, name = take()
            if kind != "word":
                raise _query_fault(f'Encountered "{name}" where a property was expected')
            fields.append(name)
            if peek() != ("punct", ","):
                break
            take()
        query.fields = fields
    expect_word("FROM")
    kind, entity = take()
    canonical = _CANONICAL.get(entity.lower()) if kind == "word" else None
    if canonical is None:
        raise _query_fault(f"invalid context declaration: {entity}")
    query.entity = canonical

    while pos < len(tokens):
        if keyword("WHERE"):
            take()
            while True:
                kind, path = take()
                if kind != "word":
                    raise _query_fault(f'Encountered "{path}" where a property was expected')
                op_kind, op = take()
                if op_kind == "word" and op.upper() in ("IN", "LIKE"):
                    op = op.upper()
                elif op_kind != "op":
                    raise _query_fault(f'Encountered "{op}" where an operator was expected')
                values: list[str] = []
                quoted: list[bool] = []
                if op == "IN":
                    if take() != ("punct", "("):
                        raise _query_fault("IN needs a parenthesised list")
                    while True:
                        item, was_quoted = value()
                        values.append(item)
                        quoted.append(was_quoted)
                        sep = take()
                        if sep == ("punct", ")"):
                            break
                        if sep != ("punct", ","):
                            raise _query_fault(f'Encountered "{sep[1]}" in IN list')
                else:
                    item, was_quoted = value()
                    values.append(item)
                    quoted.append(was_quoted)
                query.conds.append(_Cond(path, "!=" if op == "<>" else op, values, quoted))
                if not keyword("AND"):
                    break
                take()
        elif keyword("ORDERBY") or (keyword("ORDER") and peek(1)[1].upper() == "BY"):
            if take()[1].upper() == "ORDER":
                take()
            while True:
                kind, path = take()
                if kind != "word":
                    raise _query_fault(f'Encountered "{path}" where a property was expected')
                desc = False
                if keyword("DESC") or keyword("ASC"):
                    desc = take()[1].upper() == "DESC"
                query.order.append((path, desc))
                if peek() != ("punct", ","):
                    break
                take()
        elif keyword("STARTPOSITION"):
            take()
            query.start = number()
            if query.start < 1:
                raise _query_fault(f"value {query.start} is too small. Min allowed value is 1")
        elif keyword("MAXRESULTS"):
            take()
            query.max = number()
            if query.max < 1:
                raise _query_fault(f"value {query.max} is too small. Min allowed value is 1")
            if query.max > MAX_RESULTS:
                raise _query_fault(f"value {query.max} is too large. Max allowed value is {MAX_RESULTS}")
        else:
            raise _query_fault(f'Encountered "{peek()[1]}" at position {pos + 1}')
    return query


def _dig(obj: Any, parts: list[str]) -> Any:
    current = obj
    for part in parts:
        if not isinstance(current, dict):
            return None
        if part in current:
            current = current[part]
            continue
        lowered = part.lower()
        for key, inner in current.items():
            if key.lower() == lowered:
                current = inner
                break
        else:
            return None
    if isinstance(current, dict) and "value" in current:
        return current["value"]
    return current


@functools.lru_cache(maxsize=256)
def _like(pattern: str) -> re.Pattern[str]:
    regex = "".join(".*" if ch == "%" else re.escape(ch) for ch in pattern)
    return re.compile(f"^{regex}$", re.IGNORECASE | re.DOTALL)


def _compare(left: Any, op: str, right: Any) -> bool:
    if op == "=":
        return bool(left == right)
    if op == "!=":
        return bool(left != right)
    if op == "<":
        return bool(left < right)
    if op == ">":
        return bool(left > right)
    if op == "<=":
        return bool(left <= right)
    if op == ">=":
        return bool(left >= right)
    raise _query_fault(f"unsupported operator {op}")


def _coerce(stored: Any, raw: str) -> Any:
    """The query literal ``raw`` as the type of the stored value, or None."""
    if isinstance(stored, bool):
        return raw.lower() == "true"
    if isinstance(stored, int | Decimal):
        try:
            return Decimal(raw)
        except InvalidOperation:
            return None
    return raw


def _matches(stored: Any, cond: _Cond) -> bool:
    if stored is None:
        return False
    if isinstance(stored, str) and stored.isdigit() and all(v.isdigit() for v in cond.values):
        # Reference ids compare as numbers, as QBO compares ids.
        left: Any = int(stored)
        rights: list[Any] = [int(v) for v in cond.values]
    elif cond.op == "LIKE":
        return bool(_like(cond.values[0]).match(str(stored)))
    else:
        left = stored
        rights = [_coerce(stored, v) for v in cond.values]
    if cond.op == "IN":
        return any(r is not None and left == r for r in rights)
    if rights[0] is None:
        return False
    try:
        return _compare(left, cond.op, rights[0])
    except TypeError:
        return False


# --- responses -----------------------------------------------------------------------


@dataclass
class _Response:
    status: int
    body: bytes
    content_type: str = "application/json;charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)
    drop: bool = False
    drop_after: bool = False


@dataclass
class _Access:
    realm: str
    expires: float
    tid: str
    refresh: str | None
    expired: bool = False


@dataclass
class _Refresh:
    realm: str
    expires: float
    used: bool = False


@dataclass
class _Code:
    client_id: str
    redirect_uri: str
    realm: str
    expires: float


@dataclass
class _Fault:
    kind: str
    remaining: int
    path_contains: str


@dataclass
class _Limits:
    second: deque[float] = field(default_factory=deque)
    minute: deque[float] = field(default_factory=deque)
    batch_minute: deque[float] = field(default_factory=deque)
    in_flight: int = 0


_FAULT_KINDS = ("500", "503", "drop", "drop_after", "throttle_429", "throttle_403", "expire_token")

_THROTTLE_XML = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
    '<IntuitResponse time="{time}" xmlns="http://schema.intuit.com/finance/v3">\n'
    '  <Fault type="SERVICE">\n'
    '    <Error code="3001">\n'
    "      <Message>message=ThrottleExceeded; errorCode=003001; statusCode={status}</Message>\n"
    "      <Detail>The request limit was reached.  Try again later</Detail>\n"
    "    </Error>\n"
    "  </Fault>\n"
    "</IntuitResponse>\n"
)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], sandbox: QuickBooksSandbox) -> None:
        super().__init__(address, _Handler)
        self.sandbox = sandbox


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "nginx"
    sys_version = ""
    disable_nagle_algorithm = True
    wbufsize = 1 << 16  # headers and body leave in one write (flushed after each request)
    server: _Server

    def handle(self) -> None:
        try:
            super().handle()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client went away (a timeout, a killed process)

    def log_message(self, format: str, *args: Any) -> None:
        return

    def version_string(self) -> str:
        return "nginx"

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        response = self.server.sandbox._handle(method, self.path, headers, body)
        if response.drop or response.drop_after:
            self._drop()
            return
        try:
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            for name, value in response.headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            self.wfile.write(response.body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


# --- the sandbox --------------------------------------------------------------------------


class QuickBooksSandbox:
    """A QuickBooks Online company (one realm) behind a local HTTP server."""

    def __init__(
        self,
        clock: Clock | None = None,
        *,
        realm_id: str = "9341453050000000",
        client_id: str = "sandbox-client-id",
        client_secret: str = "sandbox-client-secret",
        access_token_ttl: int = 3600,
        refresh_token_ttl: int = 8726400,
        per_minute: int = 500,
        per_second: int = 10,
        concurrent: int = 10,
        batch_per_minute: int = 40,
        rate_limits: bool = True,
        latency: float = 0.0,
        cdc_horizon_days: int = 30,
        closing_date: date | None = None,
    ) -> None:
        self.clock: Clock = clock or _utc_now
        self.realm_id = realm_id
        self.client_id = client_id
        self.client_secret = client_secret
        self.access_token_ttl = access_token_ttl
        self.refresh_token_ttl = refresh_token_ttl
        self.per_minute = per_minute
        self.per_second = per_second
        self.concurrent = concurrent
        self.batch_per_minute = batch_per_minute
        self.rate_limits = rate_limits
        self.latency = latency
        self.cdc_horizon_days = cdc_horizon_days
        self.closing_date = closing_date
        """The company's "close the books" date: a transaction dated on or before it cannot be created,
        changed, voided or deleted through the API (fault 6210). Settable at any time; None: books open."""

        self._lock = threading.RLock()
        self._flight = threading.Condition(self._lock)
        self._wake = threading.Event()
        self._tables = {name: _Table(name) for name in ENTITIES}
        self._customer_names: dict[str, str] = {}
        self._address_seq = 1
        self._customer_balance: dict[str, Decimal] = {}
        self._account_debits: dict[str, Decimal] = {}
        """Account id -> debits minus credits posted to it by payments, purchases and deposits."""
        self._doc_numbers = {"Invoice": 1001, "CreditMemo": 1001}
        self._access: dict[str, _Access] = {}
        self._refresh: dict[str, _Refresh] = {}
        self._codes: dict[str, _Code] = {}
        self._faults: list[_Fault] = []
        self._limits: dict[str, _Limits] = {}
        self._idempotent: dict[tuple[str, str], _Response] = {}
        self.request_count = 0
        self.refresh_count = 0
        self.throttled_count = 0
        self.server_errors: list[str] = []
        """Tracebacks of unexpected errors (answered as HTTP 500 SystemFault)."""
        self.requests_log: list[tuple[str, str, str]] = []
        """``(method, path+query, body text)`` of every request, in arrival order."""
        self.on_request: Callable[[str, str, str], None] | None = None
        """Called with ``(method, path+query, body text)`` as each request arrives, before
        it is answered (tests use it to kill or signal a client at a chosen request)."""

        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""
        self.api_base = ""
        self.discovery_url = ""
        self.token_url = ""
        self.authorization_url = ""
        self.revocation_url = ""

    # --- lifecycle ----------------------------------------------------------------

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        if self._server is not None:
            return self.url
        self._wake.clear()
        server = _Server((host, port), self)
        self._server = server
        bound_port = server.server_address[1]
        self.url = f"http://{host}:{bound_port}"
        self.api_base = self.url + "/v3"
        self.discovery_url = self.url + "/.well-known/openid_configuration"
        self.token_url = self.url + "/oauth2/v1/tokens/bearer"
        self.authorization_url = self.url + "/connect/oauth2"
        self.revocation_url = self.url + "/oauth2/v1/tokens/revoke"
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"qbo-sandbox-{bound_port}",
            daemon=True,
        )
        self._thread.start()
        return self.url

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        self._wake.set()
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> QuickBooksSandbox:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- time ---------------------------------------------------------------------

    def now(self) -> datetime:
        return self.clock()

    def _epoch(self) -> float:
        return self.clock().timestamp()

    def _today(self) -> date:
        return self.clock().astimezone(PACIFIC).date()

    # --- Python API: state ----------------------------------------------------------

    def _table(self, entity: str) -> _Table:
        canonical = _CANONICAL.get(entity.lower())
        if canonical is None:
            raise ValueError(f"unknown entity {entity!r}; expected one of {ENTITIES}")
        return self._tables[canonical]

    def put(self, entity: str, obj: Mapping[str, Any]) -> JsonObj:
        """Create an object as QBO would (defaults, totals, payment links).

        ``Id``, ``SyncToken`` and ``MetaData`` are kept when given, so seeds can
        back-date objects; otherwise they come from the id sequence and the clock.
        Raises ``SandboxFault`` where QBO would answer with a fault.
        """
        table = self._table(entity)
        with self._lock:
            stored = self._create(table.name, _clone(dict(obj)), trusted=True)
            return _copy(self._render(table.name, stored))

    def update(self, entity: str, id: str, changes: Mapping[str, Any]) -> JsonObj:
        """Merge ``changes`` into the object; bumps SyncToken and LastUpdatedTime.

        Derived fields (totals, balances, line ids) are recomputed as QBO would,
        but a scalar value given in ``changes`` is stored as given even when QBO
        would refuse or recompute it (``{"TotalAmt": "twelve"}``), so tests can
        plant malformed records. No SyncToken check.
        """
        table = self._table(entity)
        ident = str(id)
        with self._lock:
            current = self._current(table, ident)
            body = _clone(dict(changes))
            body.update({"Id": ident, "SyncToken": current["SyncToken"], "sparse": True})
            try:
                base: JsonObj | None = self._update(table.name, body, trusted=True)
            except SandboxFault:
                base = None
            given = {k: v for k, v in _clone(dict(changes)).items() if k not in _SERVER_FIELDS}
            if base is None:
                merged = {**current, **given}
                merged["SyncToken"] = str(int(current["SyncToken"]) + 1)
                merged["MetaData"] = {
                    "CreateTime": current["MetaData"]["CreateTime"],
                    "LastUpdatedTime": wire_time(self._epoch()),
                }
                base = self._store(table.name, merged)
            else:
                planted = {k: v for k, v in given.items() if not isinstance(v, dict | list) and base.get(k) != v}
                if planted:
                    base = self._store(table.name, {**base, **planted})
            return _copy(self._render(table.name, base))

    def delete(self, entity: str, id: str, *, at: datetime | None = None) -> None:
        """Remove an object; it is reported as deleted by CDC from then on."""
        table = self._table(entity)
        with self._lock:
            self._current(table, str(id))
            self._delete(table.name, str(id), None, checks=False, at=at)

    def void(self, entity: str, id: str, *, at: datetime | None = None) -> JsonObj:
        """Void as QBO does: amounts to 0, Balance 0, "Voided" in front of the PrivateNote."""
        table = self._table(entity)
        with self._lock:
            self._current(table, str(id))
            stored = self._void(table.name, str(id), None, checks=False, at=at)
            return _copy(self._render(table.name, stored))

    def get(self, entity: str, id: str) -> JsonObj | None:
        table = self._table(entity)
        with self._lock:
            stored = table.rows.get(str(id))
            return None if stored is None else _copy(self._render(table.name, stored))

    def all(self, entity: str) -> list[JsonObj]:
        table = self._table(entity)
        with self._lock:
            return [_copy(self._render(table.name, table.rows[str(n)])) for n in table.ids()]

    def ids(self, entity: str) -> list[str]:
        """Ids of the live objects of ``entity``, in numeric order."""
        table = self._table(entity)
        with self._lock:
            return [str(n) for n in table.ids()]

    def count(self, entity: str) -> int:
        table = self._table(entity)
        with self._lock:
            return len(table.rows)

    def deleted_ids(self, entity: str) -> list[str]:
        table = self._table(entity)
        with self._lock:
            return sorted(table.tomb, key=int)

    def customer_balance(self, customer_id: str) -> Decimal:
        with self._lock:
            return self._customer_balance.get(str(customer_id), _ZERO)

    def load_compact_invoices(
        self,
        rows: Iterable[tuple[str, int, int, str, str, str, str, Decimal, str]],
    ) -> int:
        """Bulk-load one-line invoices without payments (benchmarks).

        Each row is ``(customer_id, create_epoch, lut_epoch, doc_number_or_empty,
        txn_date, due_date, currency, amount, id_or_empty)``. Returns the count.
        """
        with self._lock:
            table = self._tables["Invoice"]
            balances = self._customer_balance
            loaded = 0

            def compact() -> Iterator[tuple[str, _Stored, int]]:
                nonlocal loaded
                for cust, created, lut, doc, txn, due, currency, amount, given in rows:
                    ident = given or table.new_id()
                    if not doc:
                        doc = str(self._doc_numbers["Invoice"])
                        self._doc_numbers["Invoice"] += 1
                    balances[cust] = balances.get(cust, _ZERO) + amount
                    loaded += 1
                    yield ident, _CompactInvoice(ident, created, lut, doc, txn, due, cust, amount, currency), lut

            table.bulk_set(compact())
            return loaded

    # --- Python API: tokens and faults ------------------------------------------------

    def issue_tokens(self) -> JsonObj:
        """Mint an access + refresh token pair for this realm, as the token endpoint does."""
        with self._lock:
            return self._mint(self.realm_id)

    def inject(self, fault: str, times: int = 1, *, path_contains: str = "") -> None:
        """Answer the next ``times`` matching requests with ``fault``.

        Faults: ``500``, ``503``, ``drop`` (close without answering, nothing
        applied), ``drop_after`` (apply, then close without answering),
        ``stall:<seconds>`` (wait, then answer normally), ``throttle_429``,
        ``throttle_403`` and ``expire_token``. Without ``path_contains`` a fault
        matches API calls (``/v3/...``) only.
        """
        kind = fault.strip()
        if kind.startswith("stall:"):
            float(kind.split(":", 1)[1])
        elif kind not in _FAULT_KINDS:
            raise ValueError(f"unknown fault {fault!r}")
        if times < 1:
            raise ValueError("times must be at least 1")
        with self._lock:
            self._faults.append(_Fault(kind, times, path_contains))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def in_flight(self) -> int:
        with self._lock:
            return self._limits_for(self.realm_id).in_flight

    def wait_for_in_flight(self, count: int, timeout: float = 5.0) -> bool:
        """Block until ``count`` API calls are being served (tests of concurrency)."""
        with self._flight:
            return self._flight.wait_for(lambda: self._limits_for(self.realm_id).in_flight >= count, timeout)

    def release_stalls(self) -> None:
        """End the ``stall`` and ``latency`` waits in progress now (tests)."""
        with self._lock:
            waking, self._wake = self._wake, threading.Event()
        waking.set()

    # --- internals: rows -------------------------------------------------------------------

    def _current(self, table: _Table, ident: str) -> JsonObj:
        stored = table.rows.get(ident)
        if stored is None:
            raise _not_found()
        return self._materialize(stored)

    def _materialize(self, stored: _Stored) -> JsonObj:
        if not isinstance(stored, _CompactInvoice):
            return stored
        customer = self._tables["Customer"].rows.get(stored.customer)
        name = customer.get("DisplayName") if isinstance(customer, dict) else None
        customer_ref: JsonObj = {"value": stored.customer}
        if name is not None:
            customer_ref["name"] = name
        amount = stored.amount
        return {
            "AllowIPNPayment": False,
            "AllowOnlinePayment": False,
            "AllowOnlineCreditCardPayment": False,
            "AllowOnlineACHPayment": False,
            "domain": "QBO",
            "sparse": False,
            "Id": stored.id,
            "SyncToken": "0",
            "MetaData": {
                "CreateTime": wire_time(stored.create),
                "LastUpdatedTime": wire_time(stored.lut),
            },
            "DocNumber": stored.doc,
            "TxnDate": stored.txn_date,
            "CurrencyRef": _currency_ref(stored.currency),
            "LinkedTxn": [],
            "Line": [
                {
                    "Id": "1",
                    "LineNum": 1,
                    "Amount": amount,
                    "DetailType": "SalesItemLineDetail",
                    "SalesItemLineDetail": {
                        "ItemRef": dict(_ITEM_REF),
                        "TaxCodeRef": {"value": "NON"},
                    },
                },
                {"Amount": amount, "DetailType": "SubTotalLineDetail", "SubTotalLineDetail": {}},
            ],
            "TxnTaxDetail": {"TotalTax": 0},
            "CustomerRef": customer_ref,
            "DueDate": stored.due_date,
            "TotalAmt": amount,
            "ApplyTaxAfterDiscount": False,
            "PrintStatus": "NeedToPrint",
            "EmailStatus": "NotSet",
            "Balance": amount,
        }

    def _render(self, entity: str, stored: _Stored) -> JsonObj:
        obj = self._materialize(stored)
        if entity == "Customer":
            balance = self._customer_balance.get(obj["Id"], _ZERO)
            if obj.get("Balance") != balance or obj.get("BalanceWithJobs") != balance:
                obj = {**obj, "Balance": balance, "BalanceWithJobs": balance}
        elif entity == "Account":
            debits = self._account_debits.get(obj["Id"])
            sign = _BALANCE_SHEET.get(str(obj.get("Classification")), 0)
            if debits and sign:
                try:
                    opening = _money(obj.get("CurrentBalance", 0), "CurrentBalance")
                except SandboxFault:
                    opening = _ZERO
                obj = {**obj, "CurrentBalance": opening + sign * debits}
        return obj

    def _postings(self, entity: str, stored: _Stored | None) -> list[tuple[str, Decimal]]:
        """``(account id, debit)`` moves of a payment, purchase or deposit (a credit is a negative debit).

        A payment debits its deposit-to account; a purchase credits the account it is paid from and debits
        its expense lines' accounts; a deposit debits its deposit-to account and credits each line's account
        (lines carrying a LinkedTxn move undeposited funds, which the sandbox does not track).
        """
        if not isinstance(stored, dict) or entity not in _MOVES_ACCOUNTS:
            return []
        moves: list[tuple[str, Decimal]] = []

        def amount(value: Any) -> Decimal:
            try:
                return _money(value if value is not None else 0)
            except SandboxFault:
                return _ZERO

        if entity == "RefundReceipt":  # money paid back out of the account it names; its lines are P&L
            account = _ref_value(stored.get("DepositToAccountRef"))
            return [(account, -amount(stored.get("TotalAmt")))] if account else []
        if entity == "Transfer":
            value = amount(stored.get("Amount"))
            source, target = _ref_value(stored.get("FromAccountRef")), _ref_value(stored.get("ToAccountRef"))
            return [(a, v) for a, v in ((source, -value), (target, value)) if a]
        total = amount(stored.get("TotalAmt"))
        if entity == "Payment":
            account = _ref_value(stored.get("DepositToAccountRef"))
            if account:
                moves.append((account, total))
            return moves
        head = _ref_value(stored.get("AccountRef" if entity == "Purchase" else "DepositToAccountRef"))
        if head:
            moves.append((head, -total if entity == "Purchase" else total))
        for line in stored.get("Line") or []:
            if not isinstance(line, dict) or line.get("LinkedTxn"):
                continue
            detail = line.get("AccountBasedExpenseLineDetail" if entity == "Purchase" else "DepositLineDetail")
            account = _ref_value(detail.get("AccountRef")) if isinstance(detail, dict) else None
            if account:
                value = amount(line.get("Amount"))
                moves.append((account, value if entity == "Purchase" else -value))
        return moves

    def _move_accounts(self, moves: list[tuple[str, Decimal]], sign: int) -> None:
        for account, debit in moves:
            self._account_debits[account] = self._account_debits.get(account, _ZERO) + sign * debit

    def _contribution(self, entity: str, stored: _Stored | None) -> tuple[str, Decimal] | None:
        """What a document adds to its customer's open balance."""
        if stored is None:
            return None
        if isinstance(stored, _CompactInvoice):
            return stored.customer, stored.amount
        customer = _ref_value(stored.get("CustomerRef"))
        if customer is None:
            return None
        field_name, sign = {
            "Invoice": ("Balance", 1),
            "CreditMemo": ("RemainingCredit", -1),
            "Payment": ("UnappliedAmt", -1),
        }.get(entity, ("", 0))
        if not sign:
            return None
        try:
            return customer, sign * _money(stored.get(field_name, 0))
        except SandboxFault:
            return customer, _ZERO  # a planted malformed amount counts for nothing

    def _store(self, entity: str, obj: JsonObj) -> JsonObj:
        table = self._tables[entity]
        ident = obj["Id"]
        old = table.rows.get(ident)
        if entity in ("Invoice", "CreditMemo", "Payment"):
            self._shift_balance(self._contribution(entity, old), -1)
            self._shift_balance(self._contribution(entity, obj), 1)
        if entity in _MOVES_ACCOUNTS:
            self._move_accounts(self._postings(entity, old), -1)
            self._move_accounts(self._postings(entity, obj), 1)
        if entity == "Customer":
            if isinstance(old, dict):
                self._customer_names.pop(str(old.get("DisplayName", "")).casefold(), None)
            self._customer_names[str(obj.get("DisplayName", "")).casefold()] = ident
        table.set(ident, obj, int(parse_wire_time(obj["MetaData"]["LastUpdatedTime"])))
        return obj

    def _shift_balance(self, contribution: tuple[str, Decimal] | None, sign: int) -> None:
        if contribution is None:
            return
        customer, amount = contribution
        self._customer_balance[customer] = self._customer_balance.get(customer, _ZERO) + sign * amount

    def _stamp(self, body: JsonObj, *, trusted: bool, table: _Table, at: float) -> None:
        """Server fields of a new object (a trusted caller may preset them)."""
        if trusted and body.get("Id") is not None:
            ident = str(_id_number(body["Id"]))
            if ident in table.rows:
                raise SandboxFault("6140", "Duplicate Document Number Error", f"Id {ident} already exists")
        else:
            ident = table.new_id()
        body["Id"] = ident
        meta = body.get("MetaData") if trusted else None
        stamp = wire_time(at)
        if isinstance(meta, dict):
            created = meta.get("CreateTime") or meta.get("LastUpdatedTime") or stamp
            updated = meta.get("LastUpdatedTime") or created
            body["MetaData"] = {
                "CreateTime": wire_time(parse_wire_time(str(created))),
                "LastUpdatedTime": wire_time(parse_wire_time(str(updated))),
            }
        else:
            body["MetaData"] = {"CreateTime": stamp, "LastUpdatedTime": stamp}
        if not (trusted and isinstance(body.get("SyncToken"), str)):
            body["SyncToken"] = "0"

    def _check_props(self, entity: str, body: JsonObj) -> None:
        allowed = _ALLOWED_PROPS.get(entity)
        if allowed is None:
            return
        for name in body:
            if name not in allowed:
                raise _bad_property(entity, name)

    # --- internals: create / update / void / delete -------------------------------------

    def _create(self, entity: str, body: JsonObj, *, trusted: bool = False) -> JsonObj:
        if not isinstance(body, dict):
            raise SandboxFault("2010", "Request has invalid or unsupported property", "body is not an object")
        self._check_props(entity, body)
        for name in ("status", "sparse", "domain"):
            body.pop(name, None)
        if not trusted:
            for name in ("Id", "SyncToken", "MetaData"):
                body.pop(name, None)
        table = self._tables[entity]
        at = self._epoch()
        if not trusted:
            self._check_open(entity, body.get("TxnDate") or self._today().isoformat())
        obj = self._build(entity, body, None)
        self._stamp(obj, trusted=trusted, table=table, at=at)
        ordered = self._order(obj)
        if entity == "Payment":
            self._apply_links(ordered, None, ordered)
        return self._store(entity, ordered)

    def _update(self, entity: str, body: JsonObj, *, trusted: bool = False) -> JsonObj:
        self._check_props(entity, body)
        table = self._tables[entity]
        ident = str(_id_number(body.get("Id")))
        old = self._current(table, ident)
        token = body.get("SyncToken")
        if token is None:
            raise _required("SyncToken")
        if str(token) != old["SyncToken"]:
            raise _stale()
        if _is_void(old) and entity in _VOIDABLE and not trusted:
            raise _business("This transaction is void and cannot be changed.")
        sparse = body.get("sparse") is True
        incoming = {k: v for k, v in body.items() if k not in _SERVER_FIELDS}
        if sparse:
            merged = {k: v for k, v in old.items() if k not in _SERVER_FIELDS}
            merged.update(incoming)
        else:
            merged = incoming
        if not trusted:
            self._check_open(entity, old.get("TxnDate"))
            self._check_open(entity, merged.get("TxnDate"))
        obj = self._build(entity, merged, old)
        at = self._epoch()
        obj["Id"] = ident
        obj["SyncToken"] = str(int(old["SyncToken"]) + 1)
        obj["MetaData"] = {
            "CreateTime": old["MetaData"]["CreateTime"],
            "LastUpdatedTime": wire_time(at),
        }
        ordered = self._order(obj)
        if entity == "Payment":
            self._apply_links(ordered, old, ordered)
        return self._store(entity, ordered)

    def _void(
        self,
        entity: str,
        ident: str,
        token: str | None,
        *,
        checks: bool = True,
        at: datetime | None = None,
        note: str | None = None,
    ) -> JsonObj:
        """Void ``ident``. ``note``: the ``PrivateNote`` a sparse void body sent (Intuit voids a payment by "a
        sparse update operation with include=void"), which "Voided" is then put in front of."""
        if entity not in _VOIDABLE:
            raise _unsupported(f"/v3/company/{self.realm_id}/{entity.lower()}?operation=void")
        table = self._tables[entity]
        old = self._current(table, ident)
        if token is not None and str(token) != old["SyncToken"]:
            raise _stale()
        if checks and _is_void(old):
            raise _business("This transaction has already been voided.")
        if checks:
            self._check_open(entity, old.get("TxnDate"))
        stamp = at.timestamp() if at is not None else self._epoch()
        obj = dict(old)
        if entity == "Invoice":
            paid = _money(old.get("TotalAmt", 0)) - _money(old.get("Balance", 0))
            if checks and paid != 0:
                raise _business(
                    "This transaction has payments applied to it. Delete or unlink the payments before voiding it."
                )
            obj["Line"] = [
                {**line, "Amount": 0} if isinstance(line, dict) and "Amount" in line else line
                for line in old.get("Line", [])
            ]
            obj["TotalAmt"] = 0
            obj["Balance"] = 0
        else:
            obj["Line"] = [
                {**line, "Amount": 0} if isinstance(line, dict) and "Amount" in line else line
                for line in old.get("Line", [])
            ]
            obj["TotalAmt"] = 0
            obj["UnappliedAmt"] = 0
        obj["PrivateNote"] = _void_note(old.get("PrivateNote") if note is None else note)
        obj["SyncToken"] = str(int(old["SyncToken"]) + 1)
        obj["MetaData"] = {
            "CreateTime": old["MetaData"]["CreateTime"],
            "LastUpdatedTime": wire_time(max(stamp, parse_wire_time(old["MetaData"]["CreateTime"]))),
        }
        ordered = self._order(obj)
        if entity == "Payment":
            self._apply_links(ordered, old, None)
        return self._store(entity, ordered)

    def _delete(
        self,
        entity: str,
        ident: str,
        token: str | None,
        *,
        checks: bool = True,
        at: datetime | None = None,
    ) -> None:
        if checks and entity not in _TRANSACTIONS:
            raise _unsupported(f"/v3/company/{self.realm_id}/{entity.lower()}?operation=delete")
        table = self._tables[entity]
        old = self._current(table, ident)
        if token is not None and str(token) != old["SyncToken"]:
            raise _stale()
        if checks:
            self._check_open(entity, old.get("TxnDate"))
        if checks and entity in ("Invoice", "CreditMemo"):
            linked = [
                link
                for link in old.get("LinkedTxn") or []
                if isinstance(link, dict) and link.get("TxnType") == "Payment"
            ]
            if linked:
                raise _business(
                    "This transaction is linked to a payment. Delete or unlink the payment before deleting it."
                )
        if entity == "Payment":
            self._apply_links(old, old, None)
        if entity in ("Invoice", "CreditMemo", "Payment"):
            self._shift_balance(self._contribution(entity, table.rows[ident]), -1)
        self._move_accounts(self._postings(entity, table.rows[ident]), -1)
        stamp = at.timestamp() if at is not None else self._epoch()
        table.remove(ident, int(stamp))

    # --- builders -------------------------------------------------------------------------------

    @staticmethod
    def _order(obj: JsonObj) -> JsonObj:
        """Key order as QBO writes it: flags, domain/sparse/Id/SyncToken/MetaData, then data."""
        head = (
            "AllowIPNPayment",
            "AllowOnlinePayment",
            "AllowOnlineCreditCardPayment",
            "AllowOnlineACHPayment",
            "Taxable",
            "BillAddr",
            "ShipAddr",
            "Job",
            "BillWithParent",
            "Balance",
            "BalanceWithJobs",
            "CurrencyRef",
            "PreferredDeliveryMethod",
        )
        ordered: JsonObj = {}
        is_customer = "DisplayName" in obj and "Job" in obj
        if is_customer:
            for key in head[4:]:
                if key in obj:
                    ordered[key] = obj[key]
        else:
            for key in head[:4]:
                if key in obj:
                    ordered[key] = obj[key]
        ordered["domain"] = "QBO"
        ordered["sparse"] = False
        for key in ("Id", "SyncToken", "MetaData"):
            if key in obj:
                ordered[key] = obj[key]
        for key, value in obj.items():
            if key not in ordered and key not in ("domain", "sparse"):
                ordered[key] = value
        return ordered

    def _address(self, value: Any) -> Any:
        """QBO gives every stored address an Id and geocodes it (``INVALID`` when it cannot)."""
        if not isinstance(value, dict) or not value:
            return value
        address = {"Id": value.get("Id"), **value}
        if address["Id"] is None:
            address["Id"] = str(self._address_seq)
            self._address_seq += 1
        address.setdefault("Lat", "INVALID")
        address.setdefault("Long", "INVALID")
        return address

    def _build_customer(self, body: JsonObj, old: JsonObj | None) -> JsonObj:
        display = body.get("DisplayName")
        if not display:
            parts = [str(body[k]) for k in ("Title", "GivenName", "MiddleName", "FamilyName", "Suffix") if body.get(k)]
            display = " ".join(parts) or body.get("CompanyName")
        if not display:
            raise _required("DisplayName")
        display = str(display).strip()
        owner = self._customer_names.get(display.casefold())
        if owner is not None and (old is None or owner != old["Id"]):
            raise SandboxFault(
                "6240",
                "Duplicate Name Exists Error",
                "The name supplied already exists. : null",
            )
        currency = _ref_value(body.get("CurrencyRef")) or (_ref_value(old.get("CurrencyRef")) if old else None) or "USD"
        if old is not None and currency != _ref_value(old.get("CurrencyRef")):
            raise _business("You can't change the currency of a customer.", "CurrencyRef")
        obj: JsonObj = {
            "Taxable": bool(body.get("Taxable", False)),
            "Job": bool(body.get("Job", False)),
            "BillWithParent": bool(body.get("BillWithParent", False)),
            "Balance": _ZERO,
            "BalanceWithJobs": _ZERO,
            "CurrencyRef": _currency_ref(currency),
            "PreferredDeliveryMethod": body.get("PreferredDeliveryMethod", "Print"),
        }
        for key in ("BillAddr", "ShipAddr"):
            if key in body:
                obj[key] = self._address(body[key])
        for key, value in body.items():
            if key not in obj and key not in ("Balance", "BalanceWithJobs"):
                obj[key] = value
        obj["DisplayName"] = display
        obj["FullyQualifiedName"] = display
        obj["PrintOnCheckName"] = body.get("PrintOnCheckName") or body.get("CompanyName") or display
        if old is not None and not body.get("PrintOnCheckName"):
            obj["PrintOnCheckName"] = display
        obj["Active"] = body.get("Active", True) is not False
        return obj

    def _sales_lines(self, lines: Any) -> tuple[list[JsonObj], Decimal]:
        if not isinstance(lines, list) or not lines:
            raise _required("Line")
        out: list[JsonObj] = []
        total = _ZERO
        number = 0
        for raw in lines:
            if not isinstance(raw, dict):
                raise _required("Line")
            kind = raw.get("DetailType")
            if kind == "SubTotalLineDetail":
                continue
            if kind not in ("SalesItemLineDetail", "DiscountLineDetail", "DescriptionOnly"):
                if kind is None:
                    raise _required("Line.DetailType")
                raise SandboxFault(
                    "2010",
                    "Request has invalid or unsupported property",
                    f"Property Name:DetailType {kind} specified is unsupported or invalid",
                    element="Line.DetailType",
                )
            number += 1
            line = {"Id": str(number), "LineNum": number, **raw}
            line["Id"] = str(number)
            line["LineNum"] = number
            if kind == "DescriptionOnly":
                line.setdefault("DescriptionLineDetail", {})
                line["DetailType"] = "DescriptionOnly"
                out.append(line)
                continue
            if kind == "SalesItemLineDetail":
                detail = dict(line.get("SalesItemLineDetail") or {})
                if "ItemRef" not in detail:
                    detail["ItemRef"] = dict(_ITEM_REF)
                detail.setdefault("TaxCodeRef", {"value": "NON"})
                qty, price = detail.get("Qty"), detail.get("UnitPrice")
                if line.get("Amount") is None:
                    if qty is None or price is None:
                        raise _required("Line.Amount")
                    line["Amount"] = (_number(qty, "Qty") * _number(price, "UnitPrice")).quantize(_CENT)
                amount = _money(line["Amount"])
                if qty is not None and price is not None:
                    expected = (_number(qty, "Qty") * _number(price, "UnitPrice")).quantize(_CENT)
                    if expected != amount:
                        raise SandboxFault(
                            "6070",
                            "Amount calculation incorrect in the request",
                            "Business Validation Error: Amount is not equal to UnitPrice * Qty. "
                            f"Supplied value:{amount}",
                            element="Line.Amount",
                        )
                line["Amount"] = amount
                line["SalesItemLineDetail"] = detail
                total += amount
            else:
                if line.get("Amount") is None:
                    raise _required("Line.Amount")
                amount = _money(line["Amount"])
                line["Amount"] = amount
                line.setdefault("DiscountLineDetail", {"PercentBased": False})
                total -= amount
            out.append(line)
        if not out:
            raise _required("Line")
        out.append({"Amount": total, "DetailType": "SubTotalLineDetail", "SubTotalLineDetail": {}})
        return out, total

    def _customer_ref(self, body: JsonObj) -> tuple[JsonObj, JsonObj]:
        customer_id = _ref_value(body.get("CustomerRef"))
        if not customer_id:
            raise _business("You must select a customer for this transaction.", "CustomerRef")
        stored = self._tables["Customer"].rows.get(customer_id)
        if not isinstance(stored, dict):
            raise _invalid_ref("CustomerRef")
        if stored.get("Active") is False:
            raise _not_found()
        return {"value": customer_id, "name": stored.get("DisplayName", "")}, stored

    def _build_sales(self, entity: str, body: JsonObj, old: JsonObj | None) -> JsonObj:
        customer_ref, customer = self._customer_ref(body)
        lines, subtotal = self._sales_lines(body.get("Line"))
        tax_detail = body.get("TxnTaxDetail")
        total_tax = _ZERO
        if isinstance(tax_detail, dict) and tax_detail.get("TotalTax") not in (None, 0):
            total_tax = _money(tax_detail["TotalTax"], "TotalTax")
        total = subtotal + total_tax
        if total < 0:
            raise _business("Transaction total can not be negative.", "TotalAmt")
        txn_date = body.get("TxnDate") or (old or {}).get("TxnDate") or self._today().isoformat()
        try:
            txn_day = date.fromisoformat(str(txn_date))
        except ValueError:
            raise SandboxFault("2080", "Illegal date format", f"TxnDate: {txn_date}", element="TxnDate") from None
        currency = _ref_value(body.get("CurrencyRef")) or _ref_value(customer.get("CurrencyRef"))
        obj: JsonObj = {}
        if entity == "Invoice":
            for flag in (
                "AllowIPNPayment",
                "AllowOnlinePayment",
                "AllowOnlineCreditCardPayment",
                "AllowOnlineACHPayment",
            ):
                obj[flag] = bool(body.get(flag, False))
        doc = body.get("DocNumber")
        if not doc:
            doc = str(self._doc_numbers[entity])
            self._doc_numbers[entity] += 1
        obj["DocNumber"] = str(doc)
        obj["TxnDate"] = txn_day.isoformat()
        obj["CurrencyRef"] = _currency_ref(currency or "USD")
        if body.get("PrivateNote") is not None:
            obj["PrivateNote"] = body["PrivateNote"]
        obj["LinkedTxn"] = list((old or {}).get("LinkedTxn") or [])
        obj["Line"] = lines
        obj["TxnTaxDetail"] = {"TotalTax": total_tax if total_tax else 0}
        obj["CustomerRef"] = customer_ref
        for key in ("CustomerMemo", "BillEmail"):
            if body.get(key) is not None:
                obj[key] = body[key]
        for key in ("BillAddr", "ShipAddr"):
            value = body.get(key, customer.get(key))
            if value is not None:
                obj[key] = self._address(value)
        if body.get("SalesTermRef") is not None:
            term = _ref_value(body["SalesTermRef"]) or ""
            name = SALES_TERMS.get(term, ("", 30))[0]
            obj["SalesTermRef"] = {"value": term, "name": name} if name else {"value": term}
        if entity == "Invoice":
            due = body.get("DueDate")
            if not due:
                days = SALES_TERMS.get(_ref_value(obj.get("SalesTermRef")) or "", ("", 30))[1]
                due = (txn_day + timedelta(days=days)).isoformat()
            obj["DueDate"] = str(due)
        obj["TotalAmt"] = total
        obj["ApplyTaxAfterDiscount"] = bool(body.get("ApplyTaxAfterDiscount", False))
        obj["PrintStatus"] = body.get("PrintStatus", "NeedToPrint")
        obj["EmailStatus"] = body.get("EmailStatus", "NotSet")
        if entity == "Invoice":
            paid = _ZERO
            if old is not None:
                paid = _money(old.get("TotalAmt", 0)) - _money(old.get("Balance", 0))
            if total < paid:
                raise _business("The invoice total is less than the payments applied to it.", "TotalAmt")
            obj["Balance"] = total - paid
        else:
            used = _ZERO
            if old is not None:
                used = _money(old.get("TotalAmt", 0)) - _money(old.get("RemainingCredit", 0))
            if total < used:
                raise _business("The credit total is less than the credit already used.")
            obj["Balance"] = total - used
            obj["RemainingCredit"] = total - used
        for key, value in body.items():
            if key not in obj and key not in ("Balance", "RemainingCredit", "TotalAmt"):
                obj[key] = value
        return obj

    def _build_payment(self, body: JsonObj, old: JsonObj | None) -> JsonObj:
        customer_ref, customer = self._customer_ref(body)
        if body.get("TotalAmt") is None:
            raise _required("TotalAmt")
        total = _money(body["TotalAmt"], "TotalAmt")
        if total < 0:
            raise _business("The payment amount can not be negative.", "TotalAmt")
        lines: list[JsonObj] = []
        applied = _ZERO
        for raw in body.get("Line") or []:
            if not isinstance(raw, dict) or raw.get("Amount") is None:
                raise _required("Line.Amount")
            amount = _money(raw["Amount"])
            links = raw.get("LinkedTxn") or []
            if not isinstance(links, list) or not links:
                raise _required("Line.LinkedTxn")
            kinds = {str(link.get("TxnType")) for link in links if isinstance(link, dict)}
            if not kinds <= {"Invoice", "CreditMemo"}:
                raise _business(f"Unsupported linked transaction type {sorted(kinds)}.")
            applied += -amount if kinds == {"CreditMemo"} else amount
            lines.append({**raw, "Amount": amount, "LinkedTxn": [dict(x) for x in links]})
        unapplied = total - applied
        if unapplied < 0:
            raise _business(
                "The payment amount must be greater than or equal to the sum of the amounts applied to transactions.",
                "TotalAmt",
            )
        txn_date = body.get("TxnDate") or (old or {}).get("TxnDate") or self._today().isoformat()
        currency = _ref_value(body.get("CurrencyRef")) or _ref_value(customer.get("CurrencyRef"))
        obj: JsonObj = {
            "TxnDate": str(txn_date),
            "CurrencyRef": _currency_ref(currency or "USD"),
        }
        if body.get("PrivateNote") is not None:
            obj["PrivateNote"] = body["PrivateNote"]
        obj["Line"] = lines
        obj["CustomerRef"] = customer_ref
        for key in ("DepositToAccountRef", "PaymentMethodRef", "PaymentRefNum"):
            if body.get(key) is not None:
                obj[key] = body[key]
        obj["TotalAmt"] = total
        obj["UnappliedAmt"] = unapplied
        obj["ProcessPayment"] = bool(body.get("ProcessPayment", False))
        for key, value in body.items():
            if key not in obj and key not in ("UnappliedAmt",):
                obj[key] = value
        return obj

    def _apply_links(self, payment: JsonObj, old: JsonObj | None, new: JsonObj | None) -> None:
        """Move invoice balances and credit memo remaining credit from ``old`` to ``new`` lines.

        Validates everything before changing anything, so a refused payment
        leaves no trace.
        """
        pay_id = payment["Id"]
        customer = _ref_value(payment.get("CustomerRef"))
        deltas: dict[tuple[str, str], Decimal] = {}
        keep_link: dict[tuple[str, str], bool] = {}

        def walk(doc: JsonObj | None, sign: int, linked: bool) -> None:
            if doc is None:
                return
            for line in doc.get("Line") or []:
                amount = _money(line.get("Amount", 0))
                for link in line.get("LinkedTxn") or []:
                    kind = str(link.get("TxnType"))
                    if kind not in ("Invoice", "CreditMemo"):
                        continue
                    key = (kind, str(link.get("TxnId")))
                    deltas[key] = deltas.get(key, _ZERO) + sign * amount
                    if linked:
                        keep_link[key] = True
                    else:
                        keep_link.setdefault(key, False)

        walk(old, 1, False)  # undo what the old lines took
        walk(new, -1, True)  # take what the new lines ask
        changes: list[tuple[str, JsonObj]] = []
        at = parse_wire_time(payment["MetaData"]["LastUpdatedTime"])
        for (kind, txn_id), delta in deltas.items():
            table = self._tables[kind]
            stored = table.rows.get(txn_id)
            if stored is None:
                if delta >= 0:
                    continue  # undoing a link to a document that is gone
                if txn_id in table.tomb:
                    raise _deleted_txn()
                raise _invalid_ref("Line.LinkedTxn.TxnId")
            doc = self._materialize(stored)
            if _ref_value(doc.get("CustomerRef")) != customer:
                raise _business(f"The {kind.lower()} {txn_id} belongs to another customer.", "LinkedTxn")
            if _is_void(doc) and delta < 0:
                raise _business(f"The {kind.lower()} {txn_id} is void.", "LinkedTxn")
            field_name = "Balance" if kind == "Invoice" else "RemainingCredit"
            current = _money(doc.get(field_name, 0))
            updated = current + delta
            if updated < 0:
                raise _business(
                    f"The amount applied to {kind.lower()} {txn_id} ({-delta}) exceeds its open balance ({current}).",
                    "Line.Amount",
                )
            if updated > _money(doc.get("TotalAmt", 0)):
                updated = _money(doc.get("TotalAmt", 0))
            links = [
                link
                for link in doc.get("LinkedTxn") or []
                if not (link.get("TxnType") == "Payment" and str(link.get("TxnId")) == pay_id)
            ]
            if keep_link.get((kind, txn_id)):
                links.append({"TxnId": pay_id, "TxnType": "Payment"})
            if updated == current and links == (doc.get("LinkedTxn") or []):
                continue
            obj = dict(doc)
            obj["LinkedTxn"] = links
            obj[field_name] = updated
            if kind == "CreditMemo":
                obj["Balance"] = updated
            obj["SyncToken"] = str(int(doc["SyncToken"]) + 1)
            previous = parse_wire_time(doc["MetaData"]["LastUpdatedTime"])
            obj["MetaData"] = {
                "CreateTime": doc["MetaData"]["CreateTime"],
                "LastUpdatedTime": wire_time(max(previous, at)),
            }
            changes.append((kind, self._order(obj)))
        for kind, obj in changes:
            self._store(kind, obj)

    def _build_account(self, body: JsonObj, old: JsonObj | None) -> JsonObj:
        name = body.get("Name")
        if not name:
            raise _required("Name")
        obj = dict(body)
        obj["Name"] = str(name)
        obj.setdefault("SubAccount", False)
        obj["FullyQualifiedName"] = str(name)
        obj["Active"] = body.get("Active", True) is not False
        obj.setdefault("Classification", "Asset")
        obj.setdefault("AccountType", "Bank")
        obj["CurrentBalance"] = _money(body.get("CurrentBalance", 0), "CurrentBalance")
        obj.setdefault("CurrencyRef", _currency_ref("USD"))
        return obj

    def _build(self, entity: str, body: JsonObj, old: JsonObj | None) -> JsonObj:
        if entity == "Customer":
            return self._build_customer(body, old)
        if entity in ("Invoice", "CreditMemo"):
            return self._build_sales(entity, body, old)
        if entity == "Payment":
            return self._build_payment(body, old)
        if entity == "Account":
            return self._build_account(body, old)
        if entity == "Purchase":
            return self._build_purchase(body, old)
        if entity == "Deposit":
            return self._build_deposit(body, old)
        if entity == "Transfer":
            return self._build_transfer(body, old)
        if entity == "RefundReceipt":
            return self._build_refund_receipt(body, old)
        if entity == "Bill":
            return self._build_bill(body, old)
        if entity == "Vendor":
            return self._build_vendor(body, old)
        return self._build_generic(body, old)

    def _check_open(self, entity: str, txn_date: Any) -> None:
        """Refuse (6210) a change to a transaction dated on or before the closing date."""
        if self.closing_date is None or entity not in _TRANSACTIONS or not txn_date:
            return
        try:
            day = date.fromisoformat(str(txn_date))
        except ValueError:
            return  # the builder answers an unreadable date
        if day <= self.closing_date:
            raise _closed_period()

    @staticmethod
    def _detail_lines(body: JsonObj, allowed: frozenset[str], detail_required: str) -> None:
        """Line checks shared by purchases and deposits: a known DetailType whose detail names an account."""
        lines = body.get("Line")
        if not isinstance(lines, list) or not lines:
            raise _required("Line")
        for line in lines:
            if not isinstance(line, dict):
                raise _required("Line")
            if line.get("Amount") is None:
                raise _required("Line.Amount")
            kind = line.get("DetailType")
            if kind is None:
                continue
            if kind not in allowed:
                raise SandboxFault(
                    "2010",
                    "Request has invalid or unsupported property",
                    f"Property Name:DetailType {kind} specified is unsupported or invalid",
                    element="Line.DetailType",
                )
            detail = line.get(str(kind))
            named = isinstance(detail, dict) and _ref_value(detail.get("AccountRef"))
            if kind == detail_required and not named and not line.get("LinkedTxn"):
                raise _required(f"Line.{kind}.AccountRef")

    def _build_purchase(self, body: JsonObj, old: JsonObj | None) -> JsonObj:
        kind = body.get("PaymentType")
        if kind is None:
            raise _required("PaymentType")
        if kind not in _PURCHASE_TYPES:
            raise SandboxFault("2170", "Invalid Enumeration", f"Invalid Enumeration : {kind}", element="PaymentType")
        self._detail_lines(body, _PURCHASE_LINES, "AccountBasedExpenseLineDetail")
        return self._build_generic(body, old)

    def _build_deposit(self, body: JsonObj, old: JsonObj | None) -> JsonObj:
        if not _ref_value(body.get("DepositToAccountRef")):
            raise _required("DepositToAccountRef")
        self._detail_lines(body, frozenset({"DepositLineDetail"}), "DepositLineDetail")
        for line in body["Line"]:
            detail = line.get("DepositLineDetail")
            entity = _ref_value(detail.get("Entity")) if isinstance(detail, dict) else None
            if entity is not None and entity not in self._tables["Customer"].rows:
                # the sandbox keeps customers only: a line's Entity (a customer, vendor or employee) must be one
                raise _invalid_ref("Line.DepositLineDetail.Entity")
        return self._build_generic(body, old)

    def _build_refund_receipt(self, body: JsonObj, old: JsonObj | None) -> JsonObj:
        """A refund paid to a customer from ``DepositToAccountRef`` (required: the account the money leaves),
        its sales lines totalled like an invoice's; it is paid in full when made (``Balance`` 0)."""
        customer_ref, _customer = self._customer_ref(body)
        account = _ref_value(body.get("DepositToAccountRef"))
        if not account:
            raise _required("DepositToAccountRef")
        if not isinstance(self._tables["Account"].rows.get(account), dict):
            raise _invalid_ref("DepositToAccountRef")
        lines, total = self._sales_lines(body.get("Line"))
        if total <= 0:
            raise _business("Transaction total must be greater than zero.", "TotalAmt")
        obj = {k: v for k, v in body.items() if k not in ("Balance", "TotalAmt", "RemainingCredit")}
        if not obj.get("DocNumber"):
            obj["DocNumber"] = str(self._doc_numbers.setdefault("RefundReceipt", 1001))
            self._doc_numbers["RefundReceipt"] += 1
        obj["TxnDate"] = str(body.get("TxnDate") or (old or {}).get("TxnDate") or self._today().isoformat())
        obj["CurrencyRef"] = _currency_ref(_ref_value(body.get("CurrencyRef")) or "USD")
        obj["CustomerRef"] = customer_ref
        obj["Line"] = lines
        obj["TotalAmt"] = total
        obj["Balance"] = _ZERO
        return obj

    def _build_vendor(self, body: JsonObj, old: JsonObj | None) -> JsonObj:
        """A vendor: a ``DisplayName`` (required), active unless told otherwise, no balance of its own here."""
        display = str(body.get("DisplayName") or body.get("CompanyName") or "").strip()
        if not display:
            raise _required("DisplayName")
        obj = dict(body)
        obj["DisplayName"] = display
        obj.setdefault("PrintOnCheckName", display)
        obj["Active"] = body.get("Active", True) is not False
        obj["Balance"] = _money(body.get("Balance", 0), "Balance")
        obj.setdefault("CurrencyRef", _currency_ref("USD"))
        return obj

    def _build_bill(self, body: JsonObj, old: JsonObj | None) -> JsonObj:
        """A bill from a vendor (Finance.xsd: "an AP transaction representing a request-for-payment from a third
        party for goods/services rendered"): ``VendorRef`` an active vendor, expense lines naming accounts
        (account-based) the sandbox knows; ``TotalAmt`` their sum, owed in full (``Balance``), due on
        ``DueDate`` (the transaction date when none is given)."""
        vendor = _ref_value(body.get("VendorRef"))
        if not vendor:
            raise _required("VendorRef")
        stored = self._tables["Vendor"].rows.get(vendor)
        if not isinstance(stored, dict):
            raise _invalid_ref("VendorRef")
        if stored.get("Active") is False:
            raise _not_found()
        self._detail_lines(body, _PURCHASE_LINES, "AccountBasedExpenseLineDetail")
        for line in body["Line"]:
            detail = line.get("AccountBasedExpenseLineDetail")
            account = _ref_value(detail.get("AccountRef")) if isinstance(detail, dict) else None
            if account is not None and not isinstance(self._tables["Account"].rows.get(account), dict):
                raise _invalid_ref("Line.AccountBasedExpenseLineDetail.AccountRef")
        obj = self._build_generic({k: v for k, v in body.items() if k not in ("TotalAmt", "Balance")}, old)
        if obj["TotalAmt"] <= 0:
            raise _business("Transaction total must be greater than zero.", "TotalAmt")
        obj["VendorRef"] = {"value": vendor, "name": stored.get("DisplayName", "")}
        obj.setdefault("CurrencyRef", _currency_ref("USD"))
        obj.setdefault("DueDate", obj["TxnDate"])
        paid = _ZERO
        if old is not None:
            paid = _money(old.get("TotalAmt", 0)) - _money(old.get("Balance", 0))
        obj["Balance"] = obj["TotalAmt"] - paid
        return obj

    def _build_transfer(self, body: JsonObj, old: JsonObj | None) -> JsonObj:
        """A transfer between two balance-sheet accounts (Finance.xsd: FromAccountRef and ToAccountRef "Must be a
        Balance Sheet account"), for a positive ``Amount``."""
        refs: list[str] = []
        for name in ("FromAccountRef", "ToAccountRef"):
            ident = _ref_value(body.get(name))
            if not ident:
                raise _required(name)
            account = self._tables["Account"].rows.get(ident)
            if not isinstance(account, dict):
                raise _invalid_ref(name)
            if str(account.get("Classification")) not in _BALANCE_SHEET:
                raise _business(f"{name} must be a balance sheet account.", name)
            refs.append(ident)
        if refs[0] == refs[1]:
            raise _business("You can't transfer money from an account to itself.", "ToAccountRef")
        if body.get("Amount") is None:
            raise _required("Amount")
        value = _money(body["Amount"])
        if value <= 0:
            raise _business("The transfer amount must be greater than zero.", "Amount")
        obj = dict(body)
        obj["Amount"] = value
        obj.setdefault("CurrencyRef", _currency_ref("USD"))
        if "TxnDate" not in obj:
            obj["TxnDate"] = self._today().isoformat()
        return obj

    def _build_generic(self, body: JsonObj, old: JsonObj | None) -> JsonObj:
        obj = dict(body)
        lines = obj.get("Line")
        if isinstance(lines, list):
            total = _ZERO
            normalized: list[Any] = []
            for number, line in enumerate(lines, start=1):
                if isinstance(line, dict) and line.get("Amount") is not None:
                    amount = _money(line["Amount"])
                    total += amount
                    line = {"Id": str(number), "LineNum": number, **line, "Amount": amount}
                normalized.append(line)
            obj["Line"] = normalized
            obj["TotalAmt"] = total
        if "TxnDate" not in obj:
            obj["TxnDate"] = self._today().isoformat()
        return obj

    # --- query ------------------------------------------------------------------------------

    def _run_query(self, text: str) -> JsonObj:
        query = parse_query(text)
        table = self._tables[query.entity]
        conds = list(query.conds)
        if query.entity == "Customer" and not any(c.key == "active" for c in conds):
            conds.append(_Cond("Active", "=", ["true"], [False]))
        for cond in conds:
            if cond.key == "id":
                for raw in cond.values:
                    if not raw.lstrip("-").isdigit():
                        raise _query_fault(f"Id should be a valid number. Supplied value:{raw}")
            if cond.key in (_LUT, _CREATE):
                for raw in cond.values:
                    try:
                        parse_wire_time(raw)
                    except ValueError:
                        raise _query_fault(f"invalid date time value {raw}") from None
        order = query.order or ([("DisplayName", False)] if query.entity == "Customer" else [("Id", False)])
        if query.count:
            lut_only = conds and all(c.key == _LUT for c in conds)
            order = [(_LUT, False)] if lut_only else [("Id", False)]
        ids, covered = self._ordered_ids(table, conds, order)
        if covered:
            if query.count:
                return {"totalCount": len(ids)}
            page = [str(n) for n in ids.window(query.start - 1, query.max)]
        else:
            predicate = self._predicate(table, conds)
            matching = (ident for ident in map(str, ids) if predicate(ident))
            if query.count:
                return {"totalCount": sum(1 for _ in matching)}
            page = list(itertools.islice(matching, query.start - 1, query.start - 1 + query.max))
        if not page:
            return {}
        rendered = [self._render(table.name, table.rows[ident]) for ident in page]
        if query.fields is not None:
            rendered = [self._project(obj, query.fields) for obj in rendered]
        return {query.entity: rendered, "startPosition": query.start, "maxResults": len(page)}

    @staticmethod
    def _project(obj: JsonObj, fields: list[str]) -> JsonObj:
        out: JsonObj = {"domain": "QBO", "sparse": True}
        for path in fields:
            parts = path.split(".")
            source: Any = obj
            target = out
            for depth, part in enumerate(parts):
                if not isinstance(source, dict):
                    break
                key = next((k for k in source if k.lower() == part.lower()), None)
                if key is None:
                    break
                source = source[key]
                if depth == len(parts) - 1:
                    target[key] = source
                else:
                    target = target.setdefault(key, {})
        return out

    def _predicate(self, table: _Table, conds: list[_Cond]) -> Callable[[str], bool]:
        checks: list[Callable[[str], bool]] = []
        for cond in conds:
            checks.append(self._check(table, cond))

        def predicate(ident: str) -> bool:
            return all(check(ident) for check in checks)

        return predicate

    def _check(self, table: _Table, cond: _Cond) -> Callable[[str], bool]:
        key = cond.key
        if key == "id":
            numbers = [int(v) for v in cond.values]
            if cond.op == "IN":
                wanted = set(numbers)
                return lambda ident: int(ident) in wanted
            return lambda ident: _compare(int(ident), cond.op, numbers[0])
        if key in (_LUT, _CREATE):
            stamps = [parse_wire_time(v) for v in cond.values]

            def stamp_of(ident: str) -> float:
                if key == _LUT:
                    return table.lut[ident]
                stored = table.rows[ident]
                if isinstance(stored, _CompactInvoice):
                    return stored.create
                return parse_wire_time(stored["MetaData"]["CreateTime"])

            if cond.op == "IN":
                return lambda ident: stamp_of(ident) in stamps
            return lambda ident: _compare(stamp_of(ident), cond.op, stamps[0])
        parts = cond.path.split(".")
        compact_field = {
            "docnumber": "doc",
            "txndate": "txn_date",
            "duedate": "due_date",
            "customerref": "customer",
            "totalamt": "amount",
            "balance": "amount",
            "currencyref": "currency",
        }.get(key)

        def value_of(ident: str) -> Any:
            stored = table.rows[ident]
            if isinstance(stored, _CompactInvoice):
                if compact_field is not None:
                    return getattr(stored, compact_field)
                return _dig(self._materialize(stored), parts)
            if table.name == "Customer" and key in ("balance", "balancewithjobs"):
                return self._customer_balance.get(ident, _ZERO)
            return _dig(stored, parts)

        return lambda ident: _matches(value_of(ident), cond)

    def _ordered_ids(self, table: _Table, conds: list[_Cond], order: list[tuple[str, bool]]) -> tuple[_IdView, bool]:
        """Candidate ids in result order, and whether they all match already.

        Ordering by Id or by LastUpdatedTime (then Id) walks an index narrowed
        by the conditions on that key; any other order filters and sorts.
        """
        keys = [(path.lower(), desc) for path, desc in order]
        directions = {desc for _, desc in keys}
        ranges = ("=", "<", ">", "<=", ">=")
        if keys[0][0] == "id" and len(directions) == 1:
            numbers = self._id_range(table, conds)
            covered = all(c.key == "id" and (c.op in ranges or c.op == "IN") for c in conds)
            return (numbers.reversed() if keys[0][1] else numbers), covered
        if [k for k, _ in keys] in ([_LUT], [_LUT, "id"]) and len(directions) == 1:
            entries = self._lut_range(table, conds)
            covered = all(c.key == _LUT and c.op in ranges for c in conds)
            return (entries.reversed() if keys[0][1] else entries), covered
        predicate = self._predicate(table, conds)
        matching = [str(n) for n in self._id_range(table, conds) if predicate(str(n))]
        for path, desc in reversed(keys):
            matching.sort(key=self._sort_key(table, path), reverse=desc)
        ordered = [int(ident) for ident in matching]
        return _IdView(ordered, 0, len(ordered)), True

    def _sort_key(self, table: _Table, path: str) -> Callable[[str], tuple[int, Any]]:
        if path == "id":
            return lambda ident: (1, int(ident))
        if path == _LUT:
            return lambda ident: (1, table.lut[ident])
        parts = path.split(".")

        def key(ident: str) -> tuple[int, Any]:
            value = _dig(self._materialize(table.rows[ident]), parts)
            if value is None:
                return (0, "")
            if isinstance(value, str):
                return (1, value.casefold())
            if isinstance(value, bool | int | Decimal):
                return (2, Decimal(value))
            return (3, str(value))

        return key

    @staticmethod
    def _id_range(table: _Table, conds: list[_Cond]) -> _IdView:
        """Ids in order, narrowed by the Id conditions (a superset of the matches)."""
        numbers = table.ids()
        lo, hi = 0, len(numbers)
        for cond in conds:
            if cond.key != "id":
                continue
            if cond.op == "IN":
                wanted = sorted({int(v) for v in cond.values})
                present = [n for n in wanted if str(n) in table.rows]
                return _IdView(present, 0, len(present))
            target = int(cond.values[0])
            if cond.op == ">":
                lo = max(lo, bisect.bisect_right(numbers, target))
            elif cond.op == ">=":
                lo = max(lo, bisect.bisect_left(numbers, target))
            elif cond.op == "<":
                hi = min(hi, bisect.bisect_left(numbers, target))
            elif cond.op == "<=":
                hi = min(hi, bisect.bisect_right(numbers, target))
            elif cond.op == "=":
                lo = max(lo, bisect.bisect_left(numbers, target))
                hi = min(hi, bisect.bisect_right(numbers, target))
        return _IdView(numbers, lo, hi)

    @staticmethod
    def _lut_range(table: _Table, conds: list[_Cond]) -> _IdView:
        entries = table.luts()
        lo, hi = 0, len(entries)
        for cond in conds:
            if cond.key != _LUT or cond.op not in ("=", "<", ">", "<=", ">="):
                continue
            stamp = parse_wire_time(cond.values[0])
            if cond.op in (">", "="):
                edge = (
                    bisect.bisect_right(entries, (math.floor(stamp), _INF))
                    if cond.op == ">"
                    else bisect.bisect_left(entries, (math.ceil(stamp), -1))
                )
                lo = max(lo, edge)
            if cond.op == ">=":
                lo = max(lo, bisect.bisect_left(entries, (math.ceil(stamp), -1)))
            if cond.op in ("<", "="):
                edge = (
                    bisect.bisect_left(entries, (math.ceil(stamp), -1))
                    if cond.op == "<"
                    else bisect.bisect_right(entries, (math.floor(stamp), _INF))
                )
                hi = min(hi, edge)
            if cond.op == "<=":
                hi = min(hi, bisect.bisect_right(entries, (math.floor(stamp), _INF)))
        return _IdView(entries, lo, hi, pick=operator.itemgetter(1))

    # --- CDC ---------------------------------------------------------------------------------

    def _run_cdc(self, entities: str | None, changed_since: str | None) -> JsonObj:
        if not entities:
            raise _required("entities")
        if not changed_since:
            raise _required("changedSince")
        try:
            since = parse_wire_time(changed_since)
        except ValueError:
            raise SandboxFault(
                "4001",
                "Invalid query",
                f"QueryValidationError: changedSince {changed_since} is not a valid date time",
                element="changedSince",
            ) from None
        horizon = self._epoch() - self.cdc_horizon_days * 86400
        if since < horizon:
            raise SandboxFault(
                "4001",
                "Invalid query",
                f"QueryValidationError: changedSince {changed_since} is too old: "
                f"changes are kept for {self.cdc_horizon_days} days only",
                element="changedSince",
            )
        responses: list[JsonObj] = []
        for name in entities.split(","):
            canonical = _CANONICAL.get(name.strip().lower())
            if canonical is None:
                raise SandboxFault(
                    "4001",
                    "Invalid query",
                    f"QueryValidationError: invalid context declaration: {name.strip()}",
                )
            table = self._tables[canonical]
            live = table.luts()
            start = bisect.bisect_left(live, (math.ceil(since), -1))
            head: list[tuple[int, int, bool]] = [
                (lut, n, False) for lut, n in itertools.islice(live, start, start + CDC_CAP)
            ]
            head.extend((at, int(i), True) for i, at in table.tomb.items() if at >= since)
            head.sort()
            head = head[:CDC_CAP]
            objects: list[JsonObj] = []
            for lut, n, deleted in head:
                ident = str(n)
                if deleted:
                    objects.append(
                        {
                            "domain": "QBO",
                            "status": "Deleted",
                            "Id": ident,
                            "MetaData": {"LastUpdatedTime": wire_time(lut)},
                        }
                    )
                else:
                    objects.append(self._render(canonical, table.rows[ident]))
            if objects:
                responses.append(
                    {
                        canonical: objects,
                        "startPosition": 1,
                        "maxResults": len(objects),
                        "totalCount": len(objects),
                    }
                )
            else:
                responses.append({})
        return {"CDCResponse": [{"QueryResponse": responses}]}

    # --- tokens -----------------------------------------------------------------------------------

    def _mint(self, realm: str) -> JsonObj:
        now = self._epoch()
        access = "eyJ" + secrets.token_urlsafe(48)
        refresh = "AB1" + secrets.token_urlsafe(36)
        self._refresh[refresh] = _Refresh(realm, now + self.refresh_token_ttl)
        self._access[access] = _Access(
            realm, now + self.access_token_ttl, f"AB01{int(now)}{secrets.token_hex(16)}", refresh
        )
        return {
            "token_type": "bearer",
            "expires_in": self.access_token_ttl,
            "refresh_token": refresh,
            "x_refresh_token_expires_in": self.refresh_token_ttl,
            "access_token": access,
        }

    def _limits_for(self, realm: str) -> _Limits:
        limits = self._limits.get(realm)
        if limits is None:
            limits = self._limits[realm] = _Limits()
        return limits

    # --- HTTP ------------------------------------------------------------------------------------

    def _json(self, status: int, payload: Any, *, fault: bool = False) -> _Response:
        content_type = "application/json" if fault else "application/json;charset=utf-8"
        return _Response(
            status,
            dumps(payload),
            content_type,
            [("intuit_tid", _tid(time.time()))],
        )

    def _fault_response(self, fault: SandboxFault) -> _Response:
        body = {"Fault": fault.fault(), "time": _wire_time_ms(self.clock())}
        return self._json(fault.status, body, fault=True)

    def _gateway_fault(self, status: int, message: str, code: str, detail: str | None, kind: str) -> _Response:
        body: JsonObj = {
            "warnings": None,
            "intuitObject": None,
            "fault": {
                "error": [{"message": message, "detail": detail, "code": code, "element": None}],
                "type": kind,
            },
            "report": None,
            "queryResponse": None,
            "batchItemResponse": [],
            "attachableResponse": [],
            "syncErrorResponse": None,
            "requestId": None,
            "time": int(self._epoch() * 1000),
            "status": None,
            "cdcresponse": [],
        }
        response = self._json(status, body, fault=True)
        if status == 401:
            response.headers.append(("WWW-Authenticate", 'Bearer realm="Intuit", error="invalid_token"'))
        return response

    def _throttle(self, status: int) -> _Response:
        body = _THROTTLE_XML.format(time=_wire_time_ms(self.clock()), status=status)
        return _Response(status, body.encode("utf-8"), "text/xml", [("intuit_tid", _tid(time.time()))])

    def _oauth_error(self, status: int, error: str) -> _Response:
        return self._json(status, {"error": error}, fault=True)

    def _take_fault(self, path: str) -> str | None:
        is_api = path.startswith("/v3/")
        for fault in self._faults:
            if fault.path_contains:
                if fault.path_contains not in path:
                    continue
            elif not is_api:
                continue
            fault.remaining -= 1
            if fault.remaining <= 0:
                self._faults.remove(fault)
            return fault.kind
        return None

    def _wait(self, seconds: float) -> None:
        if seconds > 0:
            with self._lock:
                wake = self._wake
            wake.wait(seconds)

    def _handle(self, method: str, raw_path: str, headers: dict[str, str], body: bytes) -> _Response:
        parts = urlsplit(raw_path)
        path = parts.path
        params = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        text = body.decode("utf-8", "replace")
        with self._lock:
            self.requests_log.append((method, raw_path, text))
            hook = self.on_request
            if path.startswith("/_sandbox/") or path.startswith("/.well-known/"):
                kind = None
            else:
                self.request_count += 1
                kind = self._take_fault(raw_path)
        try:
            if hook is not None:
                hook(method, raw_path, text)
            if path.startswith("/_sandbox/"):
                return self._control(method, path, body)
            if path.rstrip("/") == "/.well-known/openid_configuration":
                return self._json(200, self._discovery())
            expire = False
            stall = 0.0
            if kind is not None:
                if kind.startswith("stall:"):
                    stall = float(kind.split(":", 1)[1])
                    if not path.startswith("/v3/"):
                        self._wait(stall)
                elif kind == "500":
                    return self._fault_response(
                        SandboxFault(
                            "10000",
                            "An application error has occurred while processing your request",
                            "System Failure Error: An unexpected error occurred",
                            status=500,
                            fault_type="SystemFault",
                        )
                    )
                elif kind == "503":
                    html = b"<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>"
                    return _Response(503, html, "text/html")
                elif kind == "drop":
                    return _Response(0, b"", drop=True)
                elif kind == "throttle_429":
                    return self._throttle(429)
                elif kind == "throttle_403":
                    return self._throttle(403)
                elif kind == "expire_token":
                    expire = True
            response = self._route(method, path, params, headers, body, expire, stall)
            return dataclasses.replace(response, drop_after=True) if kind == "drop_after" else response
        except SandboxFault as fault:
            return self._fault_response(fault)
        except Exception as exc:  # a sandbox bug: answer as QBO's SystemFault, keep the traceback
            with self._lock:
                self.server_errors.append(traceback.format_exc())
            return self._fault_response(
                SandboxFault(
                    "10000",
                    "An application error has occurred while processing your request",
                    f"System Failure Error: {type(exc).__name__}: {exc}",
                    status=500,
                    fault_type="SystemFault",
                )
            )

    def _route(
        self,
        method: str,
        path: str,
        params: dict[str, str],
        headers: dict[str, str],
        body: bytes,
        expire: bool,
        stall: float = 0.0,
    ) -> _Response:
        if path == "/connect/oauth2":
            return self._authorize(params)
        if path == "/oauth2/v1/tokens/bearer" and method == "POST":
            return self._token(headers, body)
        if path == "/oauth2/v1/tokens/revoke" and method == "POST":
            return self._revoke(headers, body)
        if path == "/v1/openid_connect/userinfo":
            return self._userinfo(headers)
        if path == "/op/v1/jwks":
            return self._json(200, {"keys": []})
        if path.startswith("/v3/"):
            return self._api(method, path, params, headers, body, expire, stall)
        return _Response(404, b"Not Found", "text/plain")

    # --- HTTP: OAuth -------------------------------------------------------------------------------

    def _discovery(self) -> JsonObj:
        return {
            "issuer": self.url + "/op/v1",
            "authorization_endpoint": self.authorization_url,
            "token_endpoint": self.token_url,
            "userinfo_endpoint": self.url + "/v1/openid_connect/userinfo",
            "revocation_endpoint": self.revocation_url,
            "jwks_uri": self.url + "/op/v1/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid", "email", "profile", "address", "phone"],
            "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
            "claims_supported": ["aud", "exp", "iat", "iss", "realmid", "sub"],
        }

    def _authorize(self, params: dict[str, str]) -> _Response:
        redirect = params.get("redirect_uri")
        if params.get("client_id") != self.client_id:
            return self._oauth_error(400, "invalid_client")
        if not redirect or params.get("response_type") != "code":
            return self._oauth_error(400, "invalid_request")
        code = "AB" + secrets.token_urlsafe(30)
        with self._lock:
            self._codes[code] = _Code(self.client_id, redirect, self.realm_id, self._epoch() + 300)
        query = {"code": code, "state": params.get("state", ""), "realmId": self.realm_id}
        separator = "&" if "?" in redirect else "?"
        location = redirect + separator + urlencode(query)
        return _Response(302, b"", "text/plain", [("Location", location)])

    def _client_ok(self, headers: dict[str, str], form: dict[str, str]) -> bool:
        auth = headers.get("authorization", "")
        client_id = form.get("client_id")
        client_secret = form.get("client_secret")
        if auth.lower().startswith("basic "):
            try:
                decoded = base64.b64decode(auth[6:].strip()).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return False
            client_id, _, client_secret = decoded.partition(":")
        return client_id == self.client_id and client_secret == self.client_secret

    def _token(self, headers: dict[str, str], body: bytes) -> _Response:
        form = {k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        if not self._client_ok(headers, form):
            return self._oauth_error(401, "invalid_client")
        grant = form.get("grant_type")
        with self._lock:
            now = self._epoch()
            if grant == "authorization_code":
                code = self._codes.pop(form.get("code", ""), None)
                if code is None or code.expires < now or code.redirect_uri != form.get("redirect_uri"):
                    return self._oauth_error(400, "invalid_grant")
                return self._json(200, self._mint(code.realm))
            if grant == "refresh_token":
                token = form.get("refresh_token", "")
                refresh = self._refresh.get(token)
                if refresh is None or refresh.used or refresh.expires < now:
                    return self._oauth_error(400, "invalid_grant")
                refresh.used = True
                self.refresh_count += 1
                return self._json(200, self._mint(refresh.realm))
        return self._oauth_error(400, "unsupported_grant_type")

    def _revoke(self, headers: dict[str, str], body: bytes) -> _Response:
        token = ""
        text = body.decode("utf-8", "replace")
        form = {k: v[-1] for k, v in parse_qs(text).items()}
        try:
            payload = loads(text) if text.strip().startswith("{") else {}
        except ValueError:
            payload = {}
        token = str(payload.get("token") or form.get("token") or "")
        if not self._client_ok(headers, form):
            return self._oauth_error(401, "invalid_client")
        with self._lock:
            refresh = self._refresh.get(token)
            if refresh is not None:
                refresh.used = True
                for access in self._access.values():
                    if access.refresh == token:
                        access.expired = True
            access_token = self._access.get(token)
            if access_token is not None:
                access_token.expired = True
                if access_token.refresh in self._refresh:
                    self._refresh[access_token.refresh].used = True
        return _Response(200, b"", "application/json;charset=utf-8")

    def _userinfo(self, headers: dict[str, str]) -> _Response:
        problem = self._authenticate(headers, expire=False)
        if problem is not None:
            return problem
        return self._json(
            200,
            {
                "sub": "sandbox-user",
                "email": "sandbox@example.com",
                "emailVerified": True,
                "givenName": "Sandbox",
                "familyName": "User",
            },
        )

    def _authenticate(self, headers: dict[str, str], *, expire: bool) -> _Response | None:
        auth = headers.get("authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        with self._lock:
            access = self._access.get(token)
            if access is not None and expire:
                access.expired = True
            if access is None:
                return self._gateway_fault(
                    401,
                    "message=AuthenticationFailed; errorCode=003200; statusCode=401",
                    "3200",
                    "Token invalid",
                    "AUTHENTICATION",
                )
            if access.expired or access.expires <= self._epoch():
                return self._gateway_fault(
                    401,
                    "message=AuthenticationFailed; errorCode=003200; statusCode=401",
                    "3200",
                    f"Token expired: {access.tid}",
                    "AUTHENTICATION",
                )
        return None

    # --- HTTP: API ----------------------------------------------------------------------------------

    def _api(
        self,
        method: str,
        path: str,
        params: dict[str, str],
        headers: dict[str, str],
        body: bytes,
        expire: bool,
        stall: float = 0.0,
    ) -> _Response:
        problem = self._authenticate(headers, expire=expire)
        if problem is not None:
            return problem
        match = re.fullmatch(r"/v3/company/([^/]+)/(.+)", path)
        if match is None:
            raise _unsupported(path)
        realm, rest = match.group(1), match.group(2).rstrip("/")
        auth = headers.get("authorization", "")[7:].strip()
        with self._lock:
            token_realm = self._access[auth].realm
        if realm != self.realm_id or token_realm != realm:
            return self._gateway_fault(
                403,
                "message=ApplicationAuthorizationFailed; errorCode=003100; statusCode=403",
                "3100",
                None,
                "SERVICE",
            )
        is_batch = rest == "batch"
        with self._lock:
            limits = self._limits_for(realm)
            if self.rate_limits:
                now = self._epoch()
                while limits.minute and limits.minute[0] <= now - 60:
                    limits.minute.popleft()
                while limits.second and limits.second[0] <= now - 1:
                    limits.second.popleft()
                while limits.batch_minute and limits.batch_minute[0] <= now - 60:
                    limits.batch_minute.popleft()
                if (
                    len(limits.second) >= self.per_second
                    or len(limits.minute) >= self.per_minute
                    or limits.in_flight >= self.concurrent
                    or (is_batch and len(limits.batch_minute) >= self.batch_per_minute)
                ):
                    self.throttled_count += 1
                    return self._throttle(429)
                limits.second.append(now)
                limits.minute.append(now)
                if is_batch:
                    limits.batch_minute.append(now)
            limits.in_flight += 1
            self._flight.notify_all()
        try:
            self._wait(stall)  # a stalled call is in flight: it holds a concurrency slot
            self._wait(self.latency)
            return self._dispatch(method, rest, params, body)
        finally:
            with self._lock:
                limits.in_flight -= 1
                self._flight.notify_all()

    def _dispatch(self, method: str, rest: str, params: dict[str, str], body: bytes) -> _Response:
        segments = rest.split("/")
        head = segments[0].lower()
        if head == "query" and len(segments) == 1:
            if method == "GET":
                text = params.get("query", "")
            else:
                text = body.decode("utf-8", "replace")
                if text.lower().startswith("query="):
                    text = parse_qs(text).get("query", [""])[-1]
            if not text.strip():
                raise _required("query")
            with self._lock:
                result = self._run_query(text)
                stamp = self._time()
            return self._json(200, {"QueryResponse": result, "time": stamp})
        if head == "cdc" and len(segments) == 1 and method == "GET":
            with self._lock:
                result = self._run_cdc(params.get("entities"), params.get("changedSince"))
                result["time"] = self._time()
            return self._json(200, result)
        if head == "batch" and len(segments) == 1 and method == "POST":
            return self._idempotent_call(params, lambda: self._batch(body, params.get("requestid") or ""), batch=True)
        entity = _CANONICAL.get(head)
        if entity is None:
            raise _unsupported(f"/v3/company/{self.realm_id}/{rest}")
        if method == "GET" and len(segments) == 2:
            ident = str(_id_number(segments[1]))
            with self._lock:
                stored = self._tables[entity].rows.get(ident)
                if stored is None:
                    raise _not_found()
                obj = self._render(entity, stored)
                stamp = self._time()
            return self._json(200, {entity: obj, "time": stamp})
        if method == "POST" and len(segments) == 1:
            return self._idempotent_call(params, lambda: self._write(entity, params, body))
        raise _unsupported(f"/v3/company/{self.realm_id}/{rest}")

    def _time(self) -> str:
        return _wire_time_ms(self.clock())

    def _idempotent_call(
        self, params: dict[str, str], call: Callable[[], JsonObj], *, batch: bool = False
    ) -> _Response:
        """Run ``call`` once per ``requestid``: the same requestid answers the first answer again, applying
        nothing (Intuit: "the service sends the same response as it did for the original request")."""
        request_id = params.get("requestid") or ""
        if not batch and len(request_id) > REQUEST_ID_MAX:
            raise _long_request_id(request_id)
        with self._lock:
            if request_id:
                cached = self._idempotent.get((self.realm_id, request_id))
                if cached is not None:
                    return _Response(
                        cached.status,
                        cached.body,
                        cached.content_type,
                        [("intuit_tid", _tid(time.time()))],
                    )
            payload = call()
            response = self._json(200, payload)
            if request_id:
                self._idempotent[(self.realm_id, request_id)] = response
            return response

    def _parse_body(self, entity: str, body: bytes) -> JsonObj:
        try:
            payload = loads(body.decode("utf-8")) if body.strip() else None
        except (ValueError, UnicodeDecodeError) as exc:
            raise SandboxFault(
                "2010",
                "Request has invalid or unsupported property",
                f"Property Name:Can not deserialize the request body: {exc}",
            ) from None
        if isinstance(payload, dict) and set(payload) == {entity} and isinstance(payload[entity], dict):
            payload = payload[entity]
        if not isinstance(payload, dict):
            raise SandboxFault(
                "2010",
                "Request has invalid or unsupported property",
                "Property Name:the request body must be a JSON object",
            )
        return payload

    def _write(self, entity: str, params: dict[str, str], body: bytes) -> JsonObj:
        payload = self._parse_body(entity, body)
        operation = (params.get("operation") or "").lower()
        include = (params.get("include") or "").lower()
        return self._operation(entity, operation, include, payload)

    def _operation(self, entity: str, operation: str, include: str, payload: JsonObj) -> JsonObj:
        if operation == "delete":
            ident = str(_id_number(payload.get("Id")))
            if payload.get("SyncToken") is None:
                raise _required("SyncToken")
            self._delete(entity, ident, str(payload["SyncToken"]))
            return {entity: {"domain": "QBO", "status": "Deleted", "Id": ident}, "time": self._time()}
        if operation == "void" or (operation == "update" and include == "void"):
            ident = str(_id_number(payload.get("Id")))
            if payload.get("SyncToken") is None:
                raise _required("SyncToken")
            note = payload.get("PrivateNote")
            obj = self._void(entity, ident, str(payload["SyncToken"]), note=note if isinstance(note, str) else None)
            return {entity: self._render(entity, obj), "time": self._time()}
        if operation not in ("", "create", "update"):
            raise _unsupported(f"/v3/company/{self.realm_id}/{entity.lower()}?operation={operation}")
        if payload.get("Id") is not None:
            obj = self._update(entity, payload)
        else:
            if operation == "update":
                raise _required("Id")
            obj = self._create(entity, payload)
        return {entity: self._render(entity, obj), "time": self._time()}

    def _batch(self, body: bytes, request_id: str = "") -> JsonObj:
        try:
            payload = loads(body.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            payload = None
        items = payload.get("BatchItemRequest") if isinstance(payload, dict) else None
        if not isinstance(items, list) or not items:
            raise _required("BatchItemRequest")
        if len(items) > BATCH_MAX_ITEMS:
            raise SandboxFault(
                "4001",
                "Batch request exceeds the limit",
                f"Number of items in a batch request ({len(items)}) exceeds the maximum of {BATCH_MAX_ITEMS}",
            )
        out: list[JsonObj] = []
        for item in items:
            if not isinstance(item, dict):
                continue
            bid = str(item.get("bId", ""))
            try:
                if request_id and len(bid + request_id) > REQUEST_ID_MAX:
                    raise _long_request_id(bid + request_id)
                out.append({**self._batch_item(item), "bId": bid})
            except SandboxFault as fault:
                if fault.element is None:
                    fault.element = ""
                out.append({"Fault": fault.fault(), "bId": bid})
        return {"BatchItemResponse": out, "time": self._time()}

    def _batch_item(self, item: JsonObj) -> JsonObj:
        if "Query" in item:
            return {"QueryResponse": self._run_query(str(item["Query"]))}
        names = [k for k in item if k not in ("bId", "operation", "optionsData")]
        if len(names) != 1:
            raise _required("entity")
        entity = _CANONICAL.get(names[0].lower())
        if entity is None or not isinstance(item[names[0]], dict):
            raise _unsupported(f"batch {names[0]}")
        operation = str(item.get("operation", "create")).lower()
        options = str(item.get("optionsData", "")).lower()
        payload = _clone(item[names[0]])
        if operation == "update" and options == "void":
            operation = "void"
        result = self._operation(entity, operation, "", payload)
        result.pop("time", None)
        return result

    def _control(self, method: str, path: str, body: bytes) -> _Response:
        if path == "/_sandbox/state":
            with self._lock:
                state = {
                    "realm_id": self.realm_id,
                    "request_count": self.request_count,
                    "refresh_count": self.refresh_count,
                    "throttled_count": self.throttled_count,
                    "counts": {name: len(t.rows) for name, t in self._tables.items()},
                }
            return self._json(200, state)
        if path == "/_sandbox/tokens" and method == "POST":
            return self._json(200, self.issue_tokens())
        if path == "/_sandbox/inject" and method == "POST":
            payload = loads(body or b"{}")
            try:
                self.inject(
                    str(payload.get("fault", "")),
                    int(payload.get("times", 1)),
                    path_contains=str(payload.get("path_contains", "")),
                )
            except ValueError as exc:
                return self._json(400, {"error": str(exc)}, fault=True)
            return self._json(200, {"ok": True})
        return _Response(404, b"Not Found", "text/plain")


def main(argv: list[str] | None = None) -> None:
    """Run a seeded sandbox in the foreground: ``python -m connectors.quickbooks.sandbox``."""
    import argparse

    from connectors.quickbooks.seed import seed_company

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--customers", type=int, default=200)
    parser.add_argument("--invoices", type=int, default=2000)
    parser.add_argument("--no-rate-limits", action="store_true")
    args = parser.parse_args(argv)
    sandbox = QuickBooksSandbox(rate_limits=not args.no_rate_limits)
    summary = seed_company(sandbox, customers=args.customers, invoices=args.invoices, today=sandbox._today())
    url = sandbox.start(args.host, args.port)
    tokens = sandbox.issue_tokens()
    print(f"QuickBooks sandbox at {url} (realm {sandbox.realm_id})")
    print(f"discovery: {sandbox.discovery_url}")
    print(f"seeded: {summary}")
    print(f"refresh_token: {tokens['refresh_token']}")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        sandbox.stop()


if __name__ == "__main__":
    main()
