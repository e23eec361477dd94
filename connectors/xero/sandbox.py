"""A stateful local server speaking the Xero Accounting API wire protocol (JSON).

Standard library only. It serves what the connector, the tests and the
benchmarks need from Xero, with the envelopes, field names, date formats and
error shapes of Xero's OpenAPI spec (``xero_accounting.yaml``,
``xero-identity.yaml``) and of traffic recorded by Xero's own SDK team:

* OAuth 2 (authorize redirect, token endpoint with single-use refresh tokens
  and Xero's 30-minute grace for a reused one, revocation) and the identity
  ``/connections`` list of tenants;
* ``/api.xro/2.0/{Contacts,Invoices,Payments,CreditNotes,Overpayments,
  Prepayments,BankTransactions,BankTransfers,Accounts}`` with ``page`` /
  ``pageSize``, ``If-Modified-Since``, a subset of ``where``, ``Statuses``,
  ``IDs`` and ``order``; single reads; batch writes of payments, spend money
  and bank transfers with ``summarizeErrors`` and ``Idempotency-Key``;
  credit note / overpayment / prepayment allocations; payment deletion
  (``POST /Payments/{PaymentID}``: the invoice is owed the amount again); invoices and bills created in
  arrays (``PUT /Invoices``) and an invoice's line items changed (``POST /Invoices/{InvoiceID}``), refused
  as Xero refuses it once a payment or a credit is applied, or when it is voided, deleted or locked;
  the organisation's lock dates (``set_lock_dates``), which refuse API writes
  dated on or before them with Xero's validation message (a payment's deletion
  included); bank account balances (``bank_balance``) from what is not deleted;
* Xero's rate limits per tenant (60 a minute, 5 in flight, 5000 a day) and per
  app (10,000 a minute), answered with HTTP 429, ``Retry-After`` and
  ``X-Rate-Limit-Problem``, and the ``X-*Limit-Remaining`` headers on every
  API response; fault injection for the failure modes a client must survive.

Money is ``Decimal`` end to end: request bodies are parsed with
``parse_float=Decimal`` and amounts are written as JSON numbers (``40.00``).
Time comes from an injected clock, so tests move time instead of sleeping.

Stored rows are never mutated in place: every change stores a new dict.
A batch written with ``summarizeErrors=true`` runs in a journal that is
rolled back when any item fails, so a failed batch leaves nothing behind.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import contextlib
import dataclasses
import functools
import json
import math
import re
import secrets
import socket
import threading
import traceback
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from email.utils import format_datetime, parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, NamedTuple
from urllib.parse import parse_qs, urlencode, urlsplit

from connectors.base import Clock

__all__ = [
    "COLLECTIONS",
    "DEFAULT_SCOPE",
    "DEFAULT_TENANT",
    "ID_FIELDS",
    "INVOICE_HAS_PAYMENTS",
    "Exchange",
    "XeroSandbox",
    "XeroValidationError",
    "dumps",
    "loads",
    "parse_ms_date",
    "wire_date",
    "wire_time",
]

JsonObj = dict[str, Any]

COLLECTIONS: tuple[str, ...] = (
    "Contacts",
    "Invoices",
    "Payments",
    "CreditNotes",
    "Overpayments",
    "Prepayments",
    "BankTransactions",
    "BankTransfers",
    "Accounts",
)
ID_FIELDS: dict[str, str] = {
    "Contacts": "ContactID",
    "Invoices": "InvoiceID",
    "Payments": "PaymentID",
    "CreditNotes": "CreditNoteID",
    "Overpayments": "OverpaymentID",
    "Prepayments": "PrepaymentID",
    "BankTransactions": "BankTransactionID",
    "BankTransfers": "BankTransferID",
    "Accounts": "AccountID",
}
_SINGULAR = {
    "Contacts": "Contact",
    "Invoices": "Invoice",
    "Payments": "Payment",
    "CreditNotes": "CreditNote",
    "Overpayments": "Overpayment",
    "Prepayments": "Prepayment",
    "BankTransactions": "BankTransaction",
    "BankTransfers": "BankTransfer",
    "Accounts": "Account",
}
_CANONICAL = {name.lower(): name for name in COLLECTIONS}
PAGED = frozenset(
    {"Contacts", "Invoices", "Payments", "CreditNotes", "Overpayments", "Prepayments", "BankTransactions"}
)
"""Collections whose GET takes ``page``/``pageSize`` in the spec (not Accounts, not BankTransfers)."""
WRITABLE = frozenset({"Invoices", "Payments", "BankTransactions", "BankTransfers", "CreditNotes"})
_ALLOCATABLE = frozenset({"CreditNotes", "Overpayments", "Prepayments"})

DEFAULT_TENANT: tuple[str, str] = ("b1f5b5f2-6c3e-4a8e-9b5a-2f0d7c4e8a11", "Demo Company (US)")
DEFAULT_SCOPE = "openid profile email accounting.transactions accounting.contacts accounting.settings offline_access"
PAGE_SIZE_DEFAULT = 100
PAGE_SIZE_MAX = 1000
IDEMPOTENCY_KEY_MAX = 128
PROVIDER_NAME = "arsync sandbox"

_CENT = Decimal("0.01")
_ZERO = Decimal("0.00")
_RATE_PLACES = Decimal("0.000001")
_QTY_PLACES = Decimal("0.0001")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_DAY_MS = 86_400_000

DEFAULT_RATES: dict[str, Decimal] = {
    "USD": Decimal("1"),
    "EUR": Decimal("0.92"),
    "GBP": Decimal("0.79"),
    "AUD": Decimal("1.52"),
    "NZD": Decimal("1.66"),
    "CAD": Decimal("1.36"),
}
"""Units of each currency per unit of the base currency (USD): Xero's ``CurrencyRate``."""


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Top-level properties of each schema in Xero's OpenAPI spec: a ``where`` or
# ``order`` naming anything else is a QueryParseException, as in Xero.
_FIELDS: dict[str, frozenset[str]] = {
    "Contacts": _names(
        """ContactID MergedToContactID ContactNumber AccountNumber ContactStatus Name FirstName
        LastName CompanyNumber EmailAddress ContactPersons BankAccountDetails TaxNumber TaxNumberType
        AccountsReceivableTaxType AccountsPayableTaxType Addresses Phones IsSupplier IsCustomer
        SalesDefaultLineAmountType PurchasesDefaultLineAmountType DefaultCurrency XeroNetworkKey
        SalesDefaultAccountCode PurchasesDefaultAccountCode SalesTrackingCategories
        PurchasesTrackingCategories TrackingCategoryName TrackingCategoryOption PaymentTerms
        UpdatedDateUTC ContactGroups Website BrandingTheme BatchPayments Discount Balances
        Attachments HasAttachments ValidationErrors HasValidationErrors StatusAttributeString"""
    ),
    "Invoices": _names(
        """Type Contact LineItems Date DueDate LineAmountTypes InvoiceNumber Reference BrandingThemeID
        Url CurrencyCode CurrencyRate Status SentToContact ExpectedPaymentDate PlannedPaymentDate
        CISDeduction CISRate SubTotal TotalTax Total TotalDiscount InvoiceID RepeatingInvoiceID
        HasAttachments IsDiscounted Payments Prepayments Overpayments AmountDue AmountPaid
        FullyPaidOnDate AmountCredited UpdatedDateUTC UpdatedDateUTCString CreditNotes Attachments
        HasErrors StatusAttributeString ValidationErrors Warnings InvoiceAddresses"""
    ),
    "Payments": _names(
        """Invoice CreditNote Prepayment Overpayment InvoiceNumber CreditNoteNumber BatchPayment
        Account Code Date CurrencyRate Amount BankAmount Reference IsReconciled Status PaymentType
        UpdatedDateUTC UpdatedDateUTCString PaymentID BatchPaymentID BankAccountNumber Particulars
        Details HasAccount HasValidationErrors StatusAttributeString ValidationErrors Warnings"""
    ),
    "CreditNotes": _names(
        """Type Contact Date DueDate Status LineAmountTypes LineItems SubTotal TotalTax Total
        CISDeduction CISRate UpdatedDateUTC UpdatedDateUTCString CurrencyCode FullyPaidOnDate
        CreditNoteID CreditNoteNumber Reference SentToContact CurrencyRate RemainingCredit
        Allocations AppliedAmount Payments BrandingThemeID StatusAttributeString HasAttachments
        HasErrors ValidationErrors Warnings InvoiceAddresses"""
    ),
    "Overpayments": _names(
        """Type Contact Date Status LineAmountTypes LineItems SubTotal TotalTax Total UpdatedDateUTC
        UpdatedDateUTCString CurrencyCode OverpaymentID CurrencyRate RemainingCredit Allocations
        AppliedAmount Payments HasAttachments Reference Attachments"""
    ),
    "Prepayments": _names(
        """Type Contact Date Status LineAmountTypes LineItems SubTotal TotalTax Total Reference
        InvoiceNumber UpdatedDateUTC UpdatedDateUTCString CurrencyCode PrepaymentID BrandingThemeID
        CurrencyRate RemainingCredit Allocations Payments AppliedAmount HasAttachments
        Attachments"""
    ),
    "BankTransactions": _names(
        """Type Contact LineItems BankAccount IsReconciled Date Reference CurrencyCode CurrencyRate
        Url Status LineAmountTypes SubTotal TotalTax Total BankTransactionID PrepaymentID
        OverpaymentID UpdatedDateUTC HasAttachments StatusAttributeString ValidationErrors"""
    ),
    "BankTransfers": _names(
        """FromBankAccount ToBankAccount Amount Date BankTransferID CurrencyRate FromBankTransactionID
        ToBankTransactionID FromIsReconciled ToIsReconciled Reference HasAttachments CreatedDateUTC
        Status FromTracking ToTracking ValidationErrors"""
    ),
    "Accounts": _names(
        """Code Name AccountID Type BankAccountNumber Status Description BankAccountType CurrencyCode
        TaxType EnablePaymentsToAccount ShowInExpenseClaims Class SystemAccount ReportingCode
        ReportingCodeName HasAttachments UpdatedDateUTC AddToWatchlist ValidationErrors"""
    ),
}
_ORDINAL_DATES = frozenset({"Date", "DueDate", "FullyPaidOnDate", "ExpectedPaymentDate", "PlannedPaymentDate"})
_MS_DATES = frozenset({"UpdatedDateUTC", "CreatedDateUTC"})
_REFS = {
    "Contact": "Contacts",
    "Invoice": "Invoices",
    "CreditNote": "CreditNotes",
    "Overpayment": "Overpayments",
    "Prepayment": "Prepayments",
    "Account": "Accounts",
    "BankAccount": "Accounts",
    "FromBankAccount": "Accounts",
    "ToBankAccount": "Accounts",
}
_REF_KEYS = {
    "Contact": "ContactID",
    "Invoice": "InvoiceID",
    "CreditNote": "CreditNoteID",
    "Overpayment": "OverpaymentID",
    "Prepayment": "PrepaymentID",
    "Account": "AccountID",
    "BankAccount": "AccountID",
    "FromBankAccount": "FromAccountID",
    "ToBankAccount": "ToAccountID",
}

# --- JSON with Decimal -------------------------------------------------------

_DEC_OPEN = "\ue000"
_DEC_CLOSE = "\ue001"
_DEC_RE = re.compile('"' + _DEC_OPEN + r"([-0-9.E+]+)" + _DEC_CLOSE + '"')
_DATE_ESCAPE_RE = re.compile(r'"/Date\(([-0-9+]+)\)/"')


def _json_default(obj: object) -> str:
    if isinstance(obj, Decimal):
        return _DEC_OPEN + format(obj, "f") + _DEC_CLOSE
    if isinstance(obj, date | datetime):
        return obj.isoformat()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def dumps(obj: Any) -> bytes:
    """JSON-encode ``obj``: ``Decimal`` as a JSON number, ``/Date(..)/`` escaped as Xero writes it.

    Xero's ASP.NET serialiser writes Microsoft JSON dates as ``"\\/Date(1584585851967)\\/"``
    (see the recorded ``test_get_organisations.yaml``); the value a JSON parser reads is the same.
    """
    text = json.dumps(obj, default=_json_default, separators=(",", ":"), ensure_ascii=False)
    text = _DEC_RE.sub(_number, text)
    return _DATE_ESCAPE_RE.sub(_escaped_date, text).encode("utf-8")


def _number(match: re.Match[str]) -> str:
    return match.group(1)


def _escaped_date(match: re.Match[str]) -> str:
    return '"\\/Date(' + match.group(1) + ')\\/"'


def loads(data: bytes | str) -> Any:
    """Parse JSON with every non-integer number as ``Decimal``."""
    return json.loads(data, parse_float=Decimal)


# --- time --------------------------------------------------------------------------


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _ms(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def _from_ms(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


def wire_time(ms: int) -> str:
    """``/Date(1541176290160+0000)/``: a timestamp field such as ``UpdatedDateUTC``."""
    return f"/Date({ms}+0000)/"


def wire_date(ordinal: int) -> str:
    """``/Date(1539993600000+0000)/``: a date-only field (``Date``, ``DueDate``), midnight UTC."""
    return f"/Date({(ordinal - _EPOCH_ORDINAL) * _DAY_MS}+0000)/"


def _date_string(ordinal: int) -> str:
    return date.fromordinal(ordinal).isoformat() + "T00:00:00"


def _utc_string(ms: int) -> str:
    return _from_ms(ms).strftime("%Y-%m-%dT%H:%M:%SZ")


def _connection_time(moment: datetime) -> str:
    """``2020-03-18T21:20:07.7179250``: identity timestamps as recorded (7 digits, no offset)."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond:06d}0"


_MS_DATE_RE = re.compile(r"^\s*/Date\((-?\d+)([+-]\d{4})?\)/\s*$")


def parse_ms_date(text: str) -> int | None:
    """Epoch milliseconds of ``/Date(1539993600000+0000)/`` (the offset is informational), or None."""
    match = _MS_DATE_RE.match(text)
    return int(match.group(1)) if match else None


def _parse_instant(value: Any) -> int:
    """Epoch ms of a datetime, ``/Date(..)/``, ISO 8601 (naive = UTC) or RFC 1123 text."""
    if isinstance(value, datetime):
        return _ms(value)
    if isinstance(value, date):
        return (value.toordinal() - _EPOCH_ORDINAL) * _DAY_MS
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    text = str(value).strip()
    ms = parse_ms_date(text)
    if ms is not None:
        return ms
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        try:
            moment = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            raise ValueError(f"not a date-time: {text!r}") from None
    return _ms(moment)


def _parse_day(value: Any) -> int:
    """Ordinal of a date given as ``date``, ``datetime``, ISO text or ``/Date(..)/``."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).date().toordinal() if value.tzinfo else value.date().toordinal()
    if isinstance(value, date):
        return value.toordinal()
    text = str(value).strip()
    ms = parse_ms_date(text)
    if ms is not None:
        return _EPOCH_ORDINAL + ms // _DAY_MS
    try:
        return date.fromisoformat(text[:10]).toordinal()
    except ValueError:
        raise ValueError(f"not a date: {text!r}") from None


# --- errors ------------------------------------------------------------------------


class XeroValidationError(ValueError):
    """One item failed Xero's validation; ``messages`` are its ``ValidationErrors``."""

    def __init__(self, *messages: str) -> None:
        super().__init__("; ".join(messages))
        self.messages = list(messages)


class _HttpError(Exception):
    """A request-level error answered with ``status`` and a JSON ``body``."""

    def __init__(self, status: int, body: Any, headers: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.body = body
        self.headers = list(headers)


def _api_exception(number: int, kind: str, message: str, elements: list[Any] | None = None) -> _HttpError:
    """Xero's ApiException body (``ErrorNumber``/``Type``/``Message``), the spec's ``Error`` schema."""
    body: JsonObj = {"ErrorNumber": number, "Type": kind, "Message": message}
    if elements is not None:
        body["Elements"] = elements
    return _HttpError(400, body)


def _query_error(message: str) -> _HttpError:
    return _api_exception(16, "QueryParseException", message)


def _post_data_error(message: str) -> _HttpError:
    return _api_exception(14, "PostDataInvalidException", message)


# --- helpers -----------------------------------------------------------------------


def _money(value: Any, name: str = "Amount") -> Decimal:
    if isinstance(value, bool) or value is None:
        raise XeroValidationError(f"{name} must be a number")
    try:
        amount = Decimal(str(value).strip()) if not isinstance(value, Decimal) else value
    except InvalidOperation:
        raise XeroValidationError(f"{name} must be a number") from None
    if not amount.is_finite():
        raise XeroValidationError(f"{name} must be a number")
    return amount


def _q2(value: Decimal) -> Decimal:
    return value.quantize(_CENT)


def _new_id() -> str:
    return str(uuid.uuid4())


def _guid(value: Any) -> str:
    """A GUID in its dashed lower-case form (Xero also parses the 32-hex-digit form)."""
    text = str(value).strip()
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return text.lower()


def _ref_id(ref: Any, key: str) -> str | None:
    if isinstance(ref, Mapping):
        value = ref.get(key)
        return _guid(value) if value else None
    return None


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() == "true"
    return bool(value)


def _jwt(claims: JsonObj) -> str:
    def part(payload: JsonObj) -> str:
        raw = json.dumps(payload, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    signature = base64.urlsafe_b64encode(secrets.token_bytes(64)).rstrip(b"=").decode()
    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.{signature}"


# --- where / order ---------------------------------------------------------------------

_WHERE_TOKEN = re.compile(
    r"""\s*(?:
        (?P<str>"(?:[^"\\]|\\.)*")
      | (?P<op>==|!=|>=|<=|>|<|&&|\|\||!|=)
      | (?P<punct>[(),.])
      | (?P<num>-?\d+(?:\.\d+)?)
      | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
    )""",
    re.X,
)


@dataclass(frozen=True)
class _Path:
    parts: tuple[str, ...]
    method: str | None = None
    arg: Any = None


@dataclass(frozen=True)
class _Cmp:
    left: _Path
    op: str | None
    right: Any


@dataclass(frozen=True)
class _Bool:
    op: str
    items: tuple[Any, ...]


@dataclass(frozen=True)
class _Not:
    item: Any


_METHODS = frozenset({"Contains", "StartsWith", "EndsWith"})
_NOOP_METHODS = frozenset({"ToString", "ToUpper", "ToLower", "Trim", "Value"})


def parse_where(text: str, collection: str) -> Any:
    """Parse the subset of Xero's ``where`` (a LINQ expression) that clients send.

    ``Field==value`` with ``== != > >= < <=``; values are ``"text"``, numbers,
    ``true``/``false``/``null``, ``Guid("..")``, ``DateTime(2024,01,01[,h,m,s])``
    and ``DateTime.Parse("..")``; dotted paths (``Contact.ContactID``),
    ``.Contains("..")``/``.StartsWith``/``.EndsWith``; ``&&``/``AND``,
    ``||``/``OR``, ``!``/``NOT`` and parentheses. Anything else is a
    ``QueryParseException`` (HTTP 400, ErrorNumber 16) as Xero answers.
    """
    tokens: list[tuple[str, str]] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        match = _WHERE_TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            if not text[pos:].strip():
                break
            raise _query_error(f"Syntax error '{text[pos]}' at position {pos}")
        kind = match.lastgroup or ""
        tokens.append((kind, match.group(kind)))
        pos = match.end()
    if not tokens:
        raise _query_error("Expression expected")
    index = 0
    singular = _SINGULAR[collection]

    def peek() -> tuple[str, str]:
        return tokens[index] if index < len(tokens) else ("", "")

    def take() -> tuple[str, str]:
        nonlocal index
        if index >= len(tokens):
            raise _query_error("Expression expected")
        token = tokens[index]
        index += 1
        return token

    def is_word(word: str) -> bool:
        kind, value = peek()
        return kind == "word" and value.upper() == word

    def expect(token: tuple[str, str]) -> None:
        if peek() != token:
            raise _query_error(f"'{token[1]}' expected")
        take()

    def literal() -> Any:
        kind, value = take()
        if kind == "str":
            return json.loads(value)
        if kind == "num":
            return Decimal(value)
        if kind == "word":
            upper = value.upper()
            if upper in ("TRUE", "FALSE"):
                return upper == "TRUE"
            if upper == "NULL":
                return None
            if value == "Guid":
                expect(("punct", "("))
                inner = take()
                expect(("punct", ")"))
                if inner[0] != "str":
                    raise _query_error("Guid() takes a string")
                return _guid(json.loads(inner[1]))
            if value == "DateTime":
                if peek() == ("punct", "."):
                    take()
                    if take() != ("word", "Parse"):
                        raise _query_error("DateTime.Parse expected")
                    expect(("punct", "("))
                    inner = take()
                    expect(("punct", ")"))
                    if inner[0] != "str":
                        raise _query_error("DateTime.Parse() takes a string")
                    try:
                        return _from_ms(_parse_instant(json.loads(inner[1])))
                    except ValueError:
                        raise _query_error("String was not recognized as a valid DateTime.") from None
                expect(("punct", "("))
                numbers: list[int] = []
                while True:
                    num_kind, num = take()
                    if num_kind != "num" or not num.lstrip("-").isdigit():
                        raise _query_error("DateTime() takes integers")
                    numbers.append(int(num))
                    sep = take()
                    if sep == ("punct", ")"):
                        break
                    if sep != ("punct", ","):
                        raise _query_error("',' or ')' expected")
                if len(numbers) not in (3, 6):
                    raise _query_error("No applicable constructor exists in type 'DateTime'")
                if len(numbers) == 3:
                    numbers += [0, 0, 0]
                try:
                    year, month, day, hour, minute, second = numbers
                    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)
                except ValueError as exc:
                    raise _query_error(str(exc)) from None
        raise _query_error(f"Expression expected near '{value}'")

    def path() -> _Path:
        kind, first = take()
        if kind != "word":
            raise _query_error(f"Expression expected near '{first}'")
        if first not in _FIELDS[collection]:
            raise _query_error(f"No property or field '{first}' exists in type '{singular}'")
        parts = [first]
        method: str | None = None
        arg: Any = None
        while peek() == ("punct", "."):
            take()
            kind, name = take()
            if kind != "word":
                raise _query_error("Identifier expected")
            if peek() == ("punct", "("):
                take()
                if name in _METHODS:
                    arg = literal()
                    method = name
                elif name not in _NOOP_METHODS:
                    raise _query_error(f"No applicable method '{name}' exists")
                expect(("punct", ")"))
            elif name in _NOOP_METHODS:
                continue
            else:
                parts.append(name)
        return _Path(tuple(parts), method, arg)

    def primary() -> Any:
        if peek() == ("punct", "("):
            take()
            inner = disjunction()
            expect(("punct", ")"))
            return inner
        if peek() == ("op", "!") or is_word("NOT"):
            take()
            return _Not(primary())
        left = path()
        kind, op = peek()
        if kind == "op" and op in ("==", "!=", ">=", "<=", ">", "<", "="):
            take()
            return _Cmp(left, "==" if op == "=" else op, literal())
        return _Cmp(left, None, None)

    def conjunction() -> Any:
        items = [primary()]
        while peek() == ("op", "&&") or is_word("AND"):
            take()
            items.append(primary())
        return items[0] if len(items) == 1 else _Bool("and", tuple(items))

    def disjunction() -> Any:
        items = [conjunction()]
        while peek() == ("op", "||") or is_word("OR"):
            take()
            items.append(conjunction())
        return items[0] if len(items) == 1 else _Bool("or", tuple(items))

    tree = disjunction()
    if index != len(tokens):
        raise _query_error(f"Syntax error near '{tokens[index][1]}'")
    return tree


def _norm(value: Any) -> Any:
    if isinstance(value, str):
        return value.lower()
    if isinstance(value, int) and not isinstance(value, bool):
        return Decimal(value)
    return value


def _compare(left: Any, op: str, right: Any) -> bool:
    if op in ("==", "!="):
        same = _norm(left) == _norm(right)
        return same if op == "==" else not same
    if left is None or right is None:
        return False
    left, right = _norm(left), _norm(right)
    if isinstance(left, datetime) != isinstance(right, datetime):
        return False
    try:
        if op == ">":
            return bool(left > right)
        if op == ">=":
            return bool(left >= right)
        if op == "<":
            return bool(left < right)
        return bool(left <= right)
    except TypeError:
        return False


def _evaluate(tree: Any, get: Callable[[tuple[str, ...]], Any]) -> bool:
    if isinstance(tree, _Bool):
        if tree.op == "and":
            return all(_evaluate(item, get) for item in tree.items)
        return any(_evaluate(item, get) for item in tree.items)
    if isinstance(tree, _Not):
        return not _evaluate(tree.item, get)
    assert isinstance(tree, _Cmp)
    value = get(tree.left.parts)
    if tree.left.method is not None:
        text = "" if value is None else str(value).lower()
        needle = str(tree.left.arg).lower()
        if tree.left.method == "Contains":
            value = needle in text
        elif tree.left.method == "StartsWith":
            value = text.startswith(needle)
        else:
            value = text.endswith(needle)
    if tree.op is None:
        return value is True
    return _compare(value, tree.op, tree.right)


def parse_order(text: str, collection: str) -> list[tuple[tuple[str, ...], bool]]:
    """``UpdatedDateUTC ASC, InvoiceNumber DESC`` -> [(path, descending)]."""
    out: list[tuple[tuple[str, ...], bool]] = []
    for chunk in text.split(","):
        words = chunk.split()
        if not words:
            continue
        if len(words) > 2 or (len(words) == 2 and words[1].upper() not in ("ASC", "DESC")):
            raise _query_error(f"Syntax error in order '{chunk.strip()}'")
        parts = tuple(words[0].split("."))
        if parts[0] not in _FIELDS[collection]:
            raise _query_error(f"No property or field '{parts[0]}' exists in type '{_SINGULAR[collection]}'")
        out.append((parts, len(words) == 2 and words[1].upper() == "DESC"))
    return out


# --- rows --------------------------------------------------------------------------


class _CompactInvoice(NamedTuple):
    """A bulk-seeded one-line invoice without payments, kept small (benchmarks)."""

    InvoiceID: str
    InvoiceNumber: str
    ContactID: str
    Date: int
    DueDate: int
    CurrencyCode: str
    CurrencyRate: Decimal
    Total: Decimal
    UpdatedDateUTC: int
    Status: str
    Type: str
    Reference: str


_Stored = JsonObj | _CompactInvoice


class _Collection:
    """One collection of one tenant: rows in creation order plus an UpdatedDateUTC index."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.rows: dict[str, _Stored] = {}
        self.seq: dict[str, int] = {}
        self.updated: dict[str, int] = {}
        self.next_seq = 0
        self.version = 0
        self._by_updated: list[tuple[int, int, str]] | None = []

    def set(self, ident: str, stored: _Stored, updated_ms: int) -> None:
        if ident not in self.rows:
            self.seq[ident] = self.next_seq
            self.next_seq += 1
        seq = self.seq[ident]
        old = self.updated.get(ident)
        if self._by_updated is not None:
            if old is not None:
                self._unindex(old, seq, ident)
            bisect.insort(self._by_updated, (updated_ms, seq, ident))
        self.rows[ident] = stored
        self.updated[ident] = updated_ms
        self.version += 1

    def remove(self, ident: str) -> None:
        old = self.updated.pop(ident)
        seq = self.seq.pop(ident)
        del self.rows[ident]
        if self._by_updated is not None:
            self._unindex(old, seq, ident)
        self.version += 1

    def _unindex(self, ms: int, seq: int, ident: str) -> None:
        assert self._by_updated is not None
        pos = bisect.bisect_left(self._by_updated, (ms, seq, ident))
        if pos < len(self._by_updated) and self._by_updated[pos] == (ms, seq, ident):
            del self._by_updated[pos]

    def bulk(self, rows: Iterable[tuple[str, _Stored, int]]) -> int:
        self._by_updated = None
        count = 0
        for ident, stored, updated_ms in rows:
            if ident not in self.rows:
                self.seq[ident] = self.next_seq
                self.next_seq += 1
            self.rows[ident] = stored
            self.updated[ident] = updated_ms
            count += 1
        self.version += 1
        return count

    def modified_after(self, ms: int) -> list[str]:
        if self._by_updated is None:
            self._by_updated = sorted((u, self.seq[i], i) for i, u in self.updated.items())
        start = bisect.bisect_right(self._by_updated, (ms, 1 << 62, ""))
        return [entry[2] for entry in self._by_updated[start:]]


@dataclass
class _Limits:
    minute: deque[float] = field(default_factory=deque)
    day: int = -1
    day_count: int = 0
    in_flight: int = 0


@dataclass
class _Tenant:
    id: str
    name: str
    connection_id: str
    connected_at: datetime
    collections: dict[str, _Collection]
    numbers: dict[str, int] = field(default_factory=lambda: {"INV": 1, "CN": 1})
    customers: set[str] = field(default_factory=set)
    suppliers: set[str] = field(default_factory=set)
    accounts_by_code: dict[str, str] = field(default_factory=dict)
    limits: _Limits = field(default_factory=_Limits)
    idempotent: dict[str, _Response] = field(default_factory=dict)
    cache: dict[tuple[Any, ...], tuple[int, list[str]]] = field(default_factory=dict)
    connected: bool = True
    period_lock_date: int | None = None
    """Ordinal of the organisation's period lock date (Financial settings), or None."""
    end_of_year_lock_date: int | None = None
    """Ordinal of the end of year lock date, or None."""


@dataclass
class _Response:
    status: int
    body: bytes
    content_type: str = "application/json; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)
    server: str = "Kestrel"
    drop: bool = False
    drop_after: bool = False


@dataclass
class _Access:
    expires: float
    auth_event: str
    scope: frozenset[str]
    refresh: str | None
    expired: bool = False


@dataclass
class _Refresh:
    auth_event: str
    scope: str
    expires: float
    used_at: float | None = None
    result: JsonObj | None = None


@dataclass
class _Code:
    redirect_uri: str
    scope: str
    expires: float


@dataclass
class _Fault:
    kind: str
    remaining: int
    path_contains: str


class Exchange(NamedTuple):
    """One request and the response the sandbox sent, as seen on the wire."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    status: int
    response_headers: dict[str, str]
    response_body: bytes


_FAULT_KINDS = (
    "500",
    "503",
    "drop",
    "drop_after",
    "minute_limit",
    "day_limit",
    "app_limit",
    "expire_token",
)
_LIMIT_FAULTS = {"minute_limit": "minute", "day_limit": "day", "app_limit": "appminute"}

# Xero's own validation messages (sources in docs/connectors/xero.md):
_LOCK_MESSAGE = "The document date cannot be before the {which} lock date, currently set at {day}"
INVOICE_HAS_PAYMENTS = "This document cannot be edited as it has a payment or credit note allocated to it."
"""What Xero answers an edit of an invoice's line items once a payment or a credit note is applied to it."""
"""``The document date cannot be before the period lock date, currently set at 30-Nov-2018`` and
``... the end of year lock date, currently set at 31-Jul-2013`` (waynerobinson/xeroizer#92)."""
_OVER_ALLOCATED = "{what} cannot be allocated as amount is greater than amount outstanding"
"""``Credit Note cannot be allocated as ...`` (calcinai/xero-php#251, waynerobinson/xeroizer#320),
``Overpayment cannot be allocated as ...`` (calcinai/xero-php#335)."""
_PAID_OFF = "The invoice you are trying to allocate to has already been paid off"
"""waynerobinson/xeroizer#320, calcinai/xero-php#335."""
_ALLOCATION_LABELS = {"CreditNotes": "Credit Note", "Overpayments": "Overpayment", "Prepayments": "Prepayment"}
_NO_CACHE = "max-age=0, no-cache, no-store"


class _Journal:
    """Undo log of one write batch: (collection, id, previous row or None)."""

    def __init__(self) -> None:
        self.entries: list[tuple[_Collection, str, _Stored | None, int | None]] = []
        self.sets: list[tuple[set[str], str]] = []
        self.numbers: dict[str, int] | None = None


# --- HTTP server -----------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], sandbox: XeroSandbox) -> None:
        super().__init__(address, _Handler)
        self.sandbox = sandbox


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    wbufsize = 1 << 16
    server: _Server

    def handle(self) -> None:
        try:
            super().handle()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        sandbox = self.server.sandbox
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        received = {k: v for k, v in self.headers.items()}
        response = sandbox._handle(method, self.path, {k.lower(): v for k, v in received.items()}, body)
        if response.drop or response.drop_after:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        stamp = format_datetime(sandbox.clock().astimezone(UTC), usegmt=True)
        headers: list[tuple[str, str]] = [
            ("Server", response.server),
            ("Date", stamp),
            ("Content-Type", response.content_type),
        ]
        if response.status != 302:
            headers += [("Cache-Control", _NO_CACHE), ("Pragma", "no-cache"), ("Expires", stamp)]
        headers += response.headers
        headers.append(("Content-Length", str(len(response.body))))
        if sandbox.record_exchanges and not self.path.startswith("/_sandbox/"):
            # Recorded before the answer leaves, so a client that has the answer finds the record.
            exchange = Exchange(
                method, sandbox.url + self.path, received, body, response.status, dict(headers), response.body
            )
            with sandbox._lock:
                sandbox.requests_and_responses.append(exchange)
        try:
            self.send_response_only(response.status)
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(response.body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


# --- the sandbox ---------------------------------------------------------------------------


class XeroSandbox:
    """Xero organisations (tenants) behind a local HTTP server speaking the Accounting API."""

    def __init__(
        self,
        clock: Clock | None = None,
        *,
        tenants: Sequence[tuple[str, str]] = (DEFAULT_TENANT,),
        client_id: str = "xero-sandbox-client",
        client_secret: str = "xero-sandbox-secret",
        per_minute: int = 60,
        per_day: int = 5000,
        concurrent: int = 5,
        app_per_minute: int = 10_000,
        rate_limits: bool = True,
        access_token_ttl: int = 1800,
        refresh_grace_seconds: int = 1800,
        refresh_token_ttl: int = 60 * 86_400,
        latency: float = 0.0,
        large_org_invoices: int = 10_000,
        base_currency: str = "USD",
        provider_name: str = PROVIDER_NAME,
        record_exchanges: bool = True,
    ) -> None:
        if not tenants:
            raise ValueError("a sandbox needs at least one tenant")
        self.clock: Clock = clock or _utc_now
        self.client_id = client_id
        self.client_secret = client_secret
        self.per_minute = per_minute
        self.per_day = per_day
        self.concurrent = concurrent
        self.app_per_minute = app_per_minute
        self.rate_limits = rate_limits
        self.access_token_ttl = access_token_ttl
        self.refresh_grace_seconds = refresh_grace_seconds
        self.refresh_token_ttl = refresh_token_ttl
        self.latency = latency
        self.large_org_invoices = large_org_invoices
        self.base_currency = base_currency
        self.provider_name = provider_name
        self.record_exchanges = record_exchanges

        self._lock = threading.RLock()
        self._flight = threading.Condition(self._lock)
        self._wake = threading.Event()
        self._journal: _Journal | None = None
        self._tenants: dict[str, _Tenant] = {}
        now = self.clock()
        for tenant_id, name in tenants:
            ident = _guid(tenant_id)
            tenant = _Tenant(
                ident,
                name,
                str(uuid.uuid5(uuid.NAMESPACE_URL, f"xero-sandbox-connection:{ident}")),
                now,
                {name: _Collection(name) for name in COLLECTIONS},
            )
            self._tenants[ident] = tenant
            self._chart_of_accounts(tenant)
        self._app_minute: deque[float] = deque()
        self._access: dict[str, _Access] = {}
        self._refresh: dict[str, _Refresh] = {}
        self._codes: dict[str, _Code] = {}
        self._faults: list[_Fault] = []
        self.user_id = str(uuid.uuid5(uuid.NAMESPACE_URL, "xero-sandbox-user"))

        self.request_count = 0
        """Requests answered (control endpoints excluded)."""
        self.refresh_count = 0
        """Refresh tokens spent (a grace-period replay of a spent one is not counted)."""
        self.refresh_replay_count = 0
        """Spent refresh tokens presented again within the grace period (answered with the same pair)."""
        self.throttled_count = 0
        self.server_errors: list[str] = []
        """Tracebacks of unexpected errors (answered as HTTP 500)."""
        self.requests_log: list[tuple[str, str, str]] = []
        """``(method, path+query, body text)`` of every request, in arrival order."""
        self.requests_and_responses: list[Exchange] = []
        """Every request with the response sent (``record_exchanges``), for spec validation."""
        self.on_request: Callable[[str, str, str], None] | None = None
        """Called with ``(method, path+query, body text)`` as each request arrives, before it is answered."""

        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""
        self.api_base = ""
        self.identity_base = ""
        self.token_url = ""
        self.authorize_url = ""
        self.revocation_url = ""

    # --- lifecycle ----------------------------------------------------------------

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        if self._server is not None:
            return self.url
        self._wake.clear()
        server = _Server((host, port), self)
        self._server = server
        bound = server.server_address[1]
        self.url = f"http://{host}:{bound}"
        self.api_base = self.url + "/api.xro/2.0"
        self.identity_base = self.url
        self.token_url = self.url + "/connect/token"
        self.authorize_url = self.url + "/identity/connect/authorize"
        self.revocation_url = self.url + "/connect/revocation"
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"xero-sandbox-{bound}", daemon=True
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

    def __enter__(self) -> XeroSandbox:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- time ---------------------------------------------------------------------

    def now(self) -> datetime:
        return self.clock()

    def _now_ms(self) -> int:
        return _ms(self.clock())

    def _epoch(self) -> float:
        return self.clock().timestamp()

    def today(self) -> date:
        return self.clock().astimezone(UTC).date()

    # --- Python API: state ----------------------------------------------------------

    @property
    def tenant_ids(self) -> list[str]:
        return list(self._tenants)

    def tenant_name(self, tenant_id: str) -> str:
        return self._tenant(tenant_id).name

    def _tenant(self, tenant_id: str) -> _Tenant:
        tenant = self._tenants.get(_guid(tenant_id))
        if tenant is None:
            raise KeyError(f"unknown tenant {tenant_id!r}; sandbox tenants: {list(self._tenants)}")
        return tenant

    @staticmethod
    def _collection_name(collection: str) -> str:
        name = _CANONICAL.get(collection.lower())
        if name is None:
            raise ValueError(f"unknown collection {collection!r}; expected one of {COLLECTIONS}")
        return name

    def put(self, tenant_id: str, collection: str, obj: Mapping[str, Any]) -> JsonObj:
        """Create an object as Xero would and return it as GET returns it.

        The id (``ContactID``, ``InvoiceID``, ...) is a new GUID unless given;
        ``UpdatedDateUTC`` comes from the clock unless given (a ``datetime``,
        ISO text or ``/Date(..)/``), so seeds can back-date rows; the effects on
        other rows (a payment on its invoice) carry the same time. Totals,
        ``AmountDue``, numbers and links are derived as Xero derives them.
        Raises :class:`XeroValidationError` where Xero would refuse the item.
        """
        name = self._collection_name(collection)
        with self._lock:
            tenant = self._tenant(tenant_id)
            with self._batch(tenant):
                core = self._create(tenant, name, dict(obj), trusted=True)
            return self._render(tenant, name, core)

    def update(self, tenant_id: str, collection: str, id: str, changes: Mapping[str, Any]) -> JsonObj:
        """Change fields of a row and bump its ``UpdatedDateUTC`` (from the clock unless given).

        ``Status`` VOIDED/DELETED zeroes ``AmountDue``; new ``LineItems``
        recompute the totals; dates are normalised; any other value is stored
        as given (tests can plant malformed rows this way).
        """
        name = self._collection_name(collection)
        with self._lock:
            tenant = self._tenant(tenant_id)
            core = self._core(self._row(tenant, name, str(id)))
            with self._batch(tenant):
                changed = self._apply_changes(tenant, name, core, dict(changes))
            return self._render(tenant, name, changed)

    def void(self, tenant_id: str, id: str, *, at: datetime | None = None) -> JsonObj:
        """Void an invoice (``Status`` VOIDED, ``AmountDue`` 0)."""
        changes: JsonObj = {"Status": "VOIDED"}
        if at is not None:
            changes["UpdatedDateUTC"] = at
        return self.update(tenant_id, "Invoices", id, changes)

    def allocate(
        self,
        tenant_id: str,
        source: str,
        source_id: str,
        invoice_id: str,
        amount: Decimal,
        *,
        on: date | None = None,
        at: datetime | None = None,
    ) -> JsonObj:
        """Allocate credit (a credit note, overpayment or prepayment) to an invoice."""
        name = self._collection_name(source)
        if name not in _ALLOCATABLE:
            raise ValueError(f"{name} cannot be allocated")
        with self._lock:
            tenant = self._tenant(tenant_id)
            stamp = _ms(at) if at is not None else self._now_ms()
            day = on.toordinal() if on is not None else None
            with self._batch(tenant):
                self._allocate(tenant, name, _guid(source_id), _guid(invoice_id), amount, day, stamp)
            return self._render(tenant, name, self._core(self._row(tenant, name, str(source_id))))

    def get(self, tenant_id: str, collection: str, id: str) -> JsonObj | None:
        name = self._collection_name(collection)
        with self._lock:
            tenant = self._tenant(tenant_id)
            stored = tenant.collections[name].rows.get(_guid(id))
            return None if stored is None else self._render(tenant, name, self._core(stored))

    def all(self, tenant_id: str, collection: str) -> list[JsonObj]:
        name = self._collection_name(collection)
        with self._lock:
            tenant = self._tenant(tenant_id)
            return [self._render(tenant, name, self._core(s)) for s in tenant.collections[name].rows.values()]

    def ids(self, tenant_id: str, collection: str) -> list[str]:
        name = self._collection_name(collection)
        with self._lock:
            return list(self._tenant(tenant_id).collections[name].rows)

    def count(self, tenant_id: str, collection: str) -> int:
        name = self._collection_name(collection)
        with self._lock:
            return len(self._tenant(tenant_id).collections[name].rows)

    def account_id(self, tenant_id: str, code_or_name: str) -> str:
        """The AccountID of an account by its code or name (``"090"``, ``"Checking"``)."""
        with self._lock:
            tenant = self._tenant(tenant_id)
            if code_or_name in tenant.accounts_by_code:
                return tenant.accounts_by_code[code_or_name]
            for ident, stored in tenant.collections["Accounts"].rows.items():
                if isinstance(stored, dict) and stored.get("Name") == code_or_name:
                    return ident
        raise KeyError(f"no account {code_or_name!r}")

    def bank_balance(self, tenant_id: str, code_or_name: str) -> Decimal:
        """A bank account's balance, as Xero's Bank Summary report closes it: money received into it (payments
        of sales invoices, RECEIVE bank transactions, transfers in) less money spent from it, counting only
        what is not deleted or voided. A deleted payment drops out of it."""
        with self._lock:
            tenant = self._tenant(tenant_id)
            account = self.account_id(tenant_id, code_or_name)
            total = _ZERO
            for stored in tenant.collections["Payments"].rows.values():
                payment = self._core(stored)
                if payment.get("AccountID") == account and payment.get("Status") == "AUTHORISED":
                    sign = 1 if payment["PaymentType"] in ("ACCRECPAYMENT", "APCREDITPAYMENT") else -1
                    total += sign * payment["BankAmount"]
            for stored in tenant.collections["BankTransactions"].rows.values():
                transaction = self._core(stored)
                if transaction.get("BankAccountID") == account and transaction.get("Status") == "AUTHORISED":
                    sign = 1 if str(transaction["Type"]).startswith("RECEIVE") else -1
                    total += sign * transaction["Total"]
            return total

    def load_compact_invoices(self, tenant_id: str, rows: Iterable[Sequence[Any]]) -> int:
        """Bulk-load one-line invoices without payments (benchmarks).

        Each row is ``(invoice_id_or_empty, contact_id, date_ordinal,
        due_ordinal, currency, currency_rate, total, updated_ms, status, type,
        reference)``; numbers come from the tenant's sequence. Returns the count.
        """
        with self._lock:
            tenant = self._tenant(tenant_id)
            table = tenant.collections["Invoices"]

            def compact() -> Iterator[tuple[str, _Stored, int]]:
                for given, contact, day, due, currency, rate, total, updated, status, kind, ref in rows:
                    ident = _guid(given) if given else _new_id()
                    number = f"INV-{tenant.numbers['INV']:05d}"
                    tenant.numbers["INV"] += 1
                    if kind == "ACCREC":
                        tenant.customers.add(contact)
                    else:
                        tenant.suppliers.add(contact)
                    row = _CompactInvoice(
                        ident, number, contact, day, due, currency, rate, total, updated, status, kind, ref
                    )
                    yield ident, row, int(updated)

            count = table.bulk(compact())
            tenant.cache.clear()
            return count

    # --- Python API: tokens, faults -------------------------------------------------

    def issue_tokens(self, *, scope: str = DEFAULT_SCOPE) -> JsonObj:
        """Mint a token set for a new authorisation of every tenant, as the token endpoint does."""
        with self._lock:
            return self._mint(_new_id(), scope)

    def inject(self, fault: str, times: int = 1, *, path_contains: str = "") -> None:
        """Answer the next ``times`` matching requests with ``fault``.

        Faults: ``500``, ``503``, ``drop`` (close without answering, nothing
        applied), ``drop_after`` (apply, then close without answering),
        ``stall:<seconds>`` (hold a concurrency slot, then answer normally),
        ``minute_limit``, ``day_limit``, ``app_limit`` (HTTP 429 with the
        headers of that limit) and ``expire_token`` (the presented access
        token expires now). Without ``path_contains`` a fault matches API calls
        (``/api.xro/2.0/...``) only.
        """
        kind = fault.strip()
        if kind.startswith("stall:"):
            float(kind.split(":", 1)[1])
        elif kind not in _FAULT_KINDS:
            raise ValueError(f"unknown fault {fault!r}; expected one of {_FAULT_KINDS} or stall:<seconds>")
        if times < 1:
            raise ValueError("times must be at least 1")
        with self._lock:
            self._faults.append(_Fault(kind, times, path_contains))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def in_flight(self, tenant_id: str | None = None) -> int:
        with self._lock:
            return self._tenant(tenant_id or self.tenant_ids[0]).limits.in_flight

    def wait_for_in_flight(self, count: int, *, tenant_id: str | None = None, timeout: float = 5.0) -> bool:
        """Block until ``count`` API calls of the tenant are being served (tests of concurrency)."""
        limits = self._tenant(tenant_id or self.tenant_ids[0]).limits
        with self._flight:
            return self._flight.wait_for(lambda: limits.in_flight >= count, timeout)

    def release_stalls(self) -> None:
        """End the ``stall`` and ``latency`` waits in progress now (tests)."""
        with self._lock:
            waking, self._wake = self._wake, threading.Event()
        waking.set()

    def set_lock_dates(
        self,
        tenant_id: str,
        *,
        period_lock_date: date | None = None,
        end_of_year_lock_date: date | None = None,
    ) -> None:
        """Set (or, with None, clear) the organisation's lock dates, as an adviser does in Financial settings.

        Xero then refuses a payment, bank transaction, bank transfer or allocation sent through the
        API that is dated on or before a lock date, with the validation message Xero sends (quoted in
        ``_LOCK_MESSAGES``). The sandbox has no user roles: both dates bind every API write. The
        Python API (``put``, ``allocate``) is the sandbox's back door and is never refused.
        """
        with self._lock:
            tenant = self._tenant(tenant_id)
            tenant.period_lock_date = period_lock_date.toordinal() if period_lock_date else None
            tenant.end_of_year_lock_date = end_of_year_lock_date.toordinal() if end_of_year_lock_date else None

    def disconnect(self, tenant_id: str) -> None:
        """The user disconnects the app from this organisation: its API calls answer 403."""
        with self._lock:
            self._tenant(tenant_id).connected = False

    # --- internals: storage -------------------------------------------------------------

    def _row(self, tenant: _Tenant, name: str, ident: str) -> _Stored:
        stored = tenant.collections[name].rows.get(_guid(ident))
        if stored is None:
            raise KeyError(f"no {_SINGULAR[name]} {ident!r} in tenant {tenant.id}")
        return stored

    def _store(self, tenant: _Tenant, name: str, core: JsonObj) -> JsonObj:
        table = tenant.collections[name]
        ident = core[ID_FIELDS[name]]
        if self._journal is not None:
            self._journal.entries.append((table, ident, table.rows.get(ident), table.updated.get(ident)))
        stamp = core.get("UpdatedDateUTC") if name != "BankTransfers" else core.get("_updated")
        table.set(ident, core, int(stamp if stamp is not None else self._now_ms()))
        tenant.cache.clear()
        return core

    def _mark(self, names: set[str], ident: str) -> None:
        if ident not in names:
            names.add(ident)
            if self._journal is not None:
                self._journal.sets.append((names, ident))

    def _next_number(self, tenant: _Tenant, prefix: str) -> str:
        if self._journal is not None and self._journal.numbers is None:
            self._journal.numbers = dict(tenant.numbers)
        number = tenant.numbers[prefix]
        tenant.numbers[prefix] = number + 1
        return f"{prefix}-{number:04d}"

    @contextlib.contextmanager
    def _batch(self, tenant: _Tenant) -> Iterator[_Journal]:
        journal = _Journal()
        outer = self._journal
        if outer is not None:  # nested: the outer batch owns the undo log
            yield outer
            return
        self._journal = journal
        try:
            yield journal
        except BaseException:
            self._rollback(tenant, journal)
            raise
        finally:
            self._journal = None

    def _rollback(self, tenant: _Tenant, journal: _Journal, to: tuple[int, int, dict[str, int]] | None = None) -> None:
        """Undo the journal back to a savepoint (``_savepoint``), or entirely."""
        entries, sets, numbers = to if to is not None else (0, 0, journal.numbers)
        for table, ident, previous, updated in reversed(journal.entries[entries:]):
            if previous is None:
                if ident in table.rows:
                    table.remove(ident)
            else:
                table.set(ident, previous, int(updated if updated is not None else 0))
        for names, ident in journal.sets[sets:]:
            names.discard(ident)
        del journal.entries[entries:]
        del journal.sets[sets:]
        if numbers is not None:
            tenant.numbers = dict(numbers)
        tenant.cache.clear()

    @staticmethod
    def _savepoint(tenant: _Tenant, journal: _Journal) -> tuple[int, int, dict[str, int]]:
        return len(journal.entries), len(journal.sets), dict(tenant.numbers)

    def _core(self, stored: _Stored) -> JsonObj:
        if not isinstance(stored, _CompactInvoice):
            return stored
        total = stored.Total
        line = {
            "LineItemID": str(uuid.uuid5(uuid.NAMESPACE_OID, stored.InvoiceID)),
            "Description": "Services",
            "Quantity": Decimal(1),
            "UnitAmount": total,
            "AccountCode": "200",
            "TaxType": "NONE",
            "TaxAmount": _ZERO,
            "LineAmount": total,
        }
        paid = stored.Status == "PAID"
        void = stored.Status in ("VOIDED", "DELETED")
        return {
            "InvoiceID": stored.InvoiceID,
            "Type": stored.Type,
            "InvoiceNumber": stored.InvoiceNumber,
            "Reference": stored.Reference,
            "ContactID": stored.ContactID,
            "Date": stored.Date,
            "DueDate": stored.DueDate,
            "Status": stored.Status,
            "LineAmountTypes": "Exclusive",
            "LineItems": [line],
            "SubTotal": total,
            "TotalTax": _ZERO,
            "Total": total,
            "AmountPaid": total if paid else _ZERO,
            "AmountCredited": _ZERO,
            "AmountDue": _ZERO if paid or void else total,
            "CurrencyCode": stored.CurrencyCode,
            "CurrencyRate": stored.CurrencyRate,
            "SentToContact": False,
            "Payments": [],
            "CreditNotes": [],
            "Overpayments": [],
            "Prepayments": [],
            "FullyPaidOnDate": stored.DueDate if paid else None,
            "UpdatedDateUTC": stored.UpdatedDateUTC,
        }

    # --- internals: the chart of accounts ------------------------------------------------

    _ACCOUNTS: tuple[tuple[str, str, str, str, str], ...] = (
        # code, name, type, class, reporting code
        ("090", "Checking", "BANK", "ASSET", "ASS"),
        ("091", "Clearing", "BANK", "ASSET", "ASS"),
        ("200", "Sales", "REVENUE", "REVENUE", "REV"),
        ("610", "Accounts Receivable", "CURRENT", "ASSET", "ASS"),
        ("800", "Accounts Payable", "CURRLIAB", "LIABILITY", "LIA"),
        ("404", "Fees", "EXPENSE", "EXPENSE", "EXP"),
        ("429", "General Expenses", "EXPENSE", "EXPENSE", "EXP"),
    )

    def _chart_of_accounts(self, tenant: _Tenant) -> None:
        stamp = _ms(tenant.connected_at)
        for index, (code, name, kind, klass, reporting) in enumerate(self._ACCOUNTS):
            ident = str(uuid.uuid5(uuid.NAMESPACE_URL, f"xero-sandbox-account:{tenant.id}:{code}"))
            core: JsonObj = {
                "AccountID": ident,
                "Code": code,
                "Name": name,
                "Status": "ACTIVE",
                "Type": kind,
                "TaxType": "NONE",
                "Class": klass,
                "EnablePaymentsToAccount": False,
                "ShowInExpenseClaims": kind == "EXPENSE",
                "ReportingCode": reporting,
                "UpdatedDateUTC": stamp,
            }
            if kind == "BANK":
                core["BankAccountNumber"] = f"12-3456-{7890123 + index:07d}-00"
                core["BankAccountType"] = "BANK"
                core["CurrencyCode"] = self.base_currency
            if code == "610":
                core["SystemAccount"] = "DEBTORS"
            if code == "800":
                core["SystemAccount"] = "CREDITORS"
            tenant.collections["Accounts"].set(ident, core, stamp)
            tenant.accounts_by_code[code] = ident

    def _account(self, tenant: _Tenant, ref: Any, *, what: str = "Account") -> JsonObj:
        accounts = tenant.collections["Accounts"].rows
        ident = _ref_id(ref, "AccountID")
        code = str(ref.get("Code") or "") if isinstance(ref, Mapping) else ""
        found: _Stored | None = None
        if ident:
            found = accounts.get(ident)
        elif code:
            by_code = tenant.accounts_by_code.get(code)
            found = accounts.get(by_code) if by_code else None
        if not ident and not code:
            raise XeroValidationError(f"{what} code or AccountID must be specified")
        if not isinstance(found, dict) or found.get("Status") != "ACTIVE":
            raise XeroValidationError(f"{what} could not be found")
        return found

    # --- internals: building rows ------------------------------------------------------------

    def _stamp(self, obj: Mapping[str, Any], trusted: bool) -> int:
        given = obj.get("UpdatedDateUTC")
        if trusted and given is not None:
            try:
                return _parse_instant(given)
            except ValueError as exc:
                raise XeroValidationError(str(exc)) from None
        return self._now_ms()

    def _day(self, value: Any, name: str = "Date") -> int:
        try:
            return _parse_day(value)
        except ValueError:
            raise XeroValidationError(f"{name} is not a valid date") from None

    def _contact_of(self, tenant: _Tenant, obj: Mapping[str, Any]) -> str:
        ref = obj.get("Contact")
        ident = _ref_id(ref, "ContactID")
        name = str(ref.get("Name") or "").strip() if isinstance(ref, Mapping) else ""
        if not ident and name:
            # Xero matches a contact given by name, and creates it when there is none
            rows = tenant.collections["Contacts"].rows
            for existing_id, row in rows.items():
                if isinstance(row, dict) and str(row.get("Name", "")).strip().lower() == name.lower():
                    return str(existing_id)
            created = self._create_contact(tenant, {"Name": name}, trusted=False)
            return str(created["ContactID"])
        if not ident:
            raise XeroValidationError("A Contact must be specified for this type of transaction")
        if ident not in tenant.collections["Contacts"].rows:
            raise XeroValidationError("The contact with the specified ContactID could not be found")
        return ident

    def _lines(self, tenant: _Tenant, lines: Any, amount_types: str) -> tuple[list[JsonObj], dict[str, Decimal]]:
        if not isinstance(lines, list):
            lines = []
        out: list[JsonObj] = []
        total_lines = _ZERO
        total_tax = _ZERO
        for raw in lines:
            if not isinstance(raw, Mapping):
                raise XeroValidationError("Line items must be objects")
            quantity = _money(raw.get("Quantity", 1), "Quantity") if raw.get("Quantity") is not None else Decimal(1)
            unit = _money(raw["UnitAmount"], "UnitAmount") if raw.get("UnitAmount") is not None else None
            if raw.get("LineAmount") is not None:
                line_amount = _q2(_money(raw["LineAmount"], "LineAmount"))
            elif unit is not None:
                line_amount = _q2(quantity * unit)
            else:
                line_amount = _ZERO
            if unit is None:
                unit = _q2(line_amount / quantity) if quantity else line_amount
            tax = _ZERO if amount_types == "NoTax" else _q2(_money(raw.get("TaxAmount", 0), "TaxAmount"))
            code = str(raw.get("AccountCode") or "")
            if code and code not in tenant.accounts_by_code:
                raise XeroValidationError(f"Account code '{code}' is not a valid code for this document.")
            line: JsonObj = {"LineItemID": _guid(raw.get("LineItemID") or _new_id())}
            if raw.get("Description") is not None:
                line["Description"] = str(raw["Description"])
            line["Quantity"] = quantity
            line["UnitAmount"] = unit
            if raw.get("ItemCode"):
                line["ItemCode"] = str(raw["ItemCode"])
            if code:
                line["AccountCode"] = code
            line["TaxType"] = str(raw.get("TaxType") or "NONE")
            line["TaxAmount"] = tax
            line["LineAmount"] = line_amount
            out.append(line)
            total_lines += line_amount
            total_tax += tax
        if amount_types == "Inclusive":
            sub_total = total_lines - total_tax
            total = total_lines
        else:
            sub_total = total_lines
            total = total_lines + total_tax
        return out, {"SubTotal": _q2(sub_total), "TotalTax": _q2(total_tax), "Total": _q2(total)}

    def _currency(self, obj: Mapping[str, Any], contact: JsonObj | None) -> tuple[str, Decimal]:
        code = str(obj.get("CurrencyCode") or (contact or {}).get("DefaultCurrency") or self.base_currency).upper()
        if obj.get("CurrencyRate") is not None:
            rate = _money(obj["CurrencyRate"], "CurrencyRate")
            if rate <= 0:
                raise XeroValidationError("CurrencyRate must be greater than zero")
        elif code == self.base_currency:
            rate = Decimal(1)
        elif code in DEFAULT_RATES and self.base_currency == "USD":
            rate = DEFAULT_RATES[code]
        else:
            raise XeroValidationError(f"No exchange rate is available for {code}; supply a CurrencyRate")
        return code, rate

    def _create(self, tenant: _Tenant, name: str, obj: JsonObj, *, trusted: bool) -> JsonObj:
        if name == "Contacts":
            return self._create_contact(tenant, obj, trusted)
        if name in ("Invoices", "CreditNotes"):
            return self._create_document(tenant, name, obj, trusted)
        if name == "Payments":
            return self._create_payment(tenant, obj, trusted)
        if name in ("Overpayments", "Prepayments"):
            kind = "RECEIVE-OVERPAYMENT" if name == "Overpayments" else "RECEIVE-PREPAYMENT"
            given = {"BankAccount": {"Code": "090"}, **obj, "Type": obj.get("Type") or kind}
            transaction = self._create_bank_transaction(tenant, given, trusted)
            link = "OverpaymentID" if name == "Overpayments" else "PrepaymentID"
            return self._core(self._row(tenant, name, transaction[link]))
        if name == "BankTransactions":
            return self._create_bank_transaction(tenant, obj, trusted)
        if name == "BankTransfers":
            return self._create_bank_transfer(tenant, obj, trusted)
        return self._create_account(tenant, obj, trusted)

    def _create_contact(self, tenant: _Tenant, obj: JsonObj, trusted: bool) -> JsonObj:
        name = str(obj.get("Name") or "").strip()
        if not name:
            raise XeroValidationError("The contact name must be specified")
        ident = _guid(obj.get("ContactID") or _new_id())
        core: JsonObj = {k: v for k, v in obj.items() if k not in ("ContactID", "UpdatedDateUTC")}
        core["ContactID"] = ident
        core["Name"] = name
        core.setdefault("ContactStatus", "ACTIVE")
        if core.get("DefaultCurrency"):
            core["DefaultCurrency"] = str(core["DefaultCurrency"]).upper()
        core["UpdatedDateUTC"] = self._stamp(obj, trusted)
        if _truthy(obj.get("IsCustomer")):
            self._mark(tenant.customers, ident)
        if _truthy(obj.get("IsSupplier")):
            self._mark(tenant.suppliers, ident)
        core.pop("IsCustomer", None)
        core.pop("IsSupplier", None)
        return self._store(tenant, "Contacts", core)

    def _create_account(self, tenant: _Tenant, obj: JsonObj, trusted: bool) -> JsonObj:
        code = str(obj.get("Code") or "")
        if not code or not obj.get("Name") or not obj.get("Type"):
            raise XeroValidationError("An account needs a Code, a Name and a Type")
        if code in tenant.accounts_by_code:
            raise XeroValidationError("Please enter a unique Code.")
        ident = _guid(obj.get("AccountID") or _new_id())
        core: JsonObj = {"Status": "ACTIVE", "TaxType": "NONE", **obj, "AccountID": ident}
        core["UpdatedDateUTC"] = self._stamp(obj, trusted)
        tenant.accounts_by_code[code] = ident
        return self._store(tenant, "Accounts", core)

    def _create_document(self, tenant: _Tenant, name: str, obj: JsonObj, trusted: bool) -> JsonObj:
        credit = name == "CreditNotes"
        kind = str(obj.get("Type") or ("ACCRECCREDIT" if credit else "ACCREC"))
        allowed = ("ACCRECCREDIT", "ACCPAYCREDIT") if credit else ("ACCREC", "ACCPAY")
        if kind not in allowed:
            raise XeroValidationError(f"Type must be one of {', '.join(allowed)}")
        contact_id = self._contact_of(tenant, obj)
        contact = self._core(self._row(tenant, "Contacts", contact_id))
        status = str(obj.get("Status") or "DRAFT").upper()
        if status not in ("DRAFT", "SUBMITTED", "AUTHORISED", "PAID", "VOIDED", "DELETED"):
            raise XeroValidationError(f"Status {status} is not valid")
        amount_types = str(obj.get("LineAmountTypes") or "Exclusive")
        if amount_types not in ("Exclusive", "Inclusive", "NoTax"):
            raise XeroValidationError("LineAmountTypes must be Exclusive, Inclusive or NoTax")
        lines, totals = self._lines(tenant, obj.get("LineItems"), amount_types)
        currency, rate = self._currency(obj, contact)
        stamp = self._stamp(obj, trusted)
        day = self._day(obj["Date"]) if obj.get("Date") is not None else _EPOCH_ORDINAL + stamp // _DAY_MS
        if not trusted and status != "DRAFT":
            locked = self._locked(tenant, day)
            if locked:
                raise XeroValidationError(*locked)
        id_field = ID_FIELDS[name]
        ident = _guid(obj.get(id_field) or _new_id())
        number_field = "CreditNoteNumber" if credit else "InvoiceNumber"
        number = obj.get(number_field)
        if not number and kind in ("ACCREC", "ACCRECCREDIT"):
            number = self._next_number(tenant, "CN" if credit else "INV")
        core: JsonObj = {
            id_field: ident,
            "Type": kind,
            number_field: str(number or ""),
            "Reference": str(obj.get("Reference") or ""),
            "ContactID": contact_id,
            "Date": day,
            "DueDate": self._day(obj["DueDate"], "DueDate") if obj.get("DueDate") is not None else None,
            "Status": status,
            "LineAmountTypes": amount_types,
            "LineItems": lines,
            **totals,
            "CurrencyCode": currency,
            "CurrencyRate": rate,
            "SentToContact": _truthy(obj.get("SentToContact")),
            "Payments": [],
            "UpdatedDateUTC": stamp,
        }
        if credit:
            core["RemainingCredit"] = _ZERO if status in ("PAID", "VOIDED", "DELETED") else totals["Total"]
            core["Allocations"] = []
        else:
            paid = status == "PAID"
            core["AmountPaid"] = totals["Total"] if paid else _ZERO
            core["AmountCredited"] = _ZERO
            core["AmountDue"] = _ZERO if paid or status in ("VOIDED", "DELETED") else totals["Total"]
            core["CreditNotes"] = []
            core["Overpayments"] = []
            core["Prepayments"] = []
            core["FullyPaidOnDate"] = day if paid else None
            for extra in ("ExpectedPaymentDate", "PlannedPaymentDate"):
                if obj.get(extra) is not None:
                    core[extra] = self._day(obj[extra], extra)
        if kind in ("ACCREC", "ACCRECCREDIT"):
            self._mark(tenant.customers, contact_id)
        else:
            self._mark(tenant.suppliers, contact_id)
        self._store(tenant, name, core)
        if credit:
            for allocation in obj.get("Allocations") or []:
                invoice_id = _ref_id(allocation.get("Invoice"), "InvoiceID") if isinstance(allocation, dict) else None
                if not invoice_id:
                    raise XeroValidationError("An allocation needs an Invoice")
                on = self._day(allocation["Date"]) if allocation.get("Date") is not None else day
                self._allocate(tenant, name, ident, invoice_id, _money(allocation.get("Amount")), on, stamp)
        return self._core(self._row(tenant, name, ident))

    def _create_bank_transaction(self, tenant: _Tenant, obj: JsonObj, trusted: bool) -> JsonObj:
        kind = str(obj.get("Type") or "")
        allowed = (
            "RECEIVE",
            "SPEND",
            "RECEIVE-OVERPAYMENT",
            "RECEIVE-PREPAYMENT",
            "SPEND-TRANSFER",
            "RECEIVE-TRANSFER",
        )
        errors: list[str] = []
        if kind not in allowed:
            errors.append("Type must be RECEIVE, SPEND, RECEIVE-OVERPAYMENT or RECEIVE-PREPAYMENT")
        try:
            bank = self._account(tenant, obj.get("BankAccount"), what="Bank account")
            if bank.get("Type") != "BANK":
                errors.append("The account must be a bank account")
        except XeroValidationError as exc:
            errors.extend(exc.messages)
            bank = {}
        contact_id: str | None = None
        # Xero requires a Contact on every bank transaction but the legs of a transfer: the spec
        # dropped it from ``required`` only for SPEND-TRANSFER (XeroAPI/Xero-OpenAPI#268).
        if kind.endswith("TRANSFER") and obj.get("Contact") is None:
            contact_id = None
        else:
            try:
                contact_id = self._contact_of(tenant, obj)
            except XeroValidationError as exc:
                errors.extend(exc.messages)
        amount_types = str(obj.get("LineAmountTypes") or ("NoTax" if "PAYMENT" in kind else "Exclusive"))
        try:
            lines, totals = self._lines(tenant, obj.get("LineItems"), amount_types)
            if not lines:
                errors.append("At least one line item must be specified")
            elif totals["Total"] <= 0:
                errors.append("The total of a bank transaction must be greater than zero")
        except XeroValidationError as exc:
            errors.extend(exc.messages)
            lines, totals = [], {}
        if not trusted:
            errors.extend(self._lock_errors(tenant, obj))
        if errors:
            raise XeroValidationError(*errors)
        contact = self._core(self._row(tenant, "Contacts", contact_id)) if contact_id else None
        currency, rate = self._currency(obj, contact)
        stamp = self._stamp(obj, trusted)
        day = self._day(obj["Date"]) if obj.get("Date") is not None else _EPOCH_ORDINAL + stamp // _DAY_MS
        ident = _guid(obj.get("BankTransactionID") or _new_id())
        core: JsonObj = {
            "BankTransactionID": ident,
            "Type": kind,
            "ContactID": contact_id,
            "BankAccountID": bank["AccountID"],
            "IsReconciled": _truthy(obj.get("IsReconciled")),
            "Date": day,
            "Reference": str(obj.get("Reference") or ""),
            "CurrencyCode": currency,
            "CurrencyRate": rate,
            "Status": "AUTHORISED",
            "LineAmountTypes": amount_types,
            "LineItems": lines,
            **totals,
            "UpdatedDateUTC": stamp,
        }
        if kind in ("RECEIVE-OVERPAYMENT", "RECEIVE-PREPAYMENT"):
            name = "Overpayments" if kind == "RECEIVE-OVERPAYMENT" else "Prepayments"
            link = ID_FIELDS[name]
            credit_id = _guid(obj.get(link) or _new_id())
            credit: JsonObj = {
                link: credit_id,
                "Type": kind,
                "ContactID": contact_id,
                "Date": day,
                "Status": "AUTHORISED",
                "LineAmountTypes": amount_types,
                "LineItems": lines,
                **totals,
                "CurrencyCode": currency,
                "CurrencyRate": rate,
                "RemainingCredit": totals["Total"],
                "Allocations": [],
                "Payments": [],
                "Reference": core["Reference"],
                "UpdatedDateUTC": stamp,
            }
            if contact_id:
                self._mark(tenant.customers, contact_id)
            self._store(tenant, name, credit)
            core[link] = credit_id
        return self._store(tenant, "BankTransactions", core)

    def _lock_errors(self, tenant: _Tenant, obj: Mapping[str, Any]) -> list[str]:
        """Lock-date messages for an API write dated ``obj["Date"]`` (today when absent)."""
        try:
            day = self._day(obj["Date"]) if obj.get("Date") is not None else self.today().toordinal()
        except XeroValidationError as exc:
            return exc.messages
        return self._locked(tenant, day)

    def _create_bank_transfer(self, tenant: _Tenant, obj: JsonObj, trusted: bool) -> JsonObj:
        errors: list[str] = []
        ends: dict[str, JsonObj] = {}
        for side in ("FromBankAccount", "ToBankAccount"):
            try:
                account = self._account(tenant, obj.get(side), what=side)
                if account.get("Type") != "BANK":
                    errors.append(f"{side} must be a bank account")
                ends[side] = account
            except XeroValidationError as exc:
                errors.extend(exc.messages)
        if len(ends) == 2 and ends["FromBankAccount"]["AccountID"] == ends["ToBankAccount"]["AccountID"]:
            errors.append("The from and to bank accounts must be different")
        amount = _ZERO
        try:
            amount = _q2(_money(obj.get("Amount")))
            if amount <= 0:
                errors.append("Amount must be greater than zero")
        except XeroValidationError as exc:
            errors.extend(exc.messages)
        if not trusted:
            errors.extend(self._lock_errors(tenant, obj))
        if errors:
            raise XeroValidationError(*errors)
        stamp = self._stamp(obj, trusted)
        day = self._day(obj["Date"]) if obj.get("Date") is not None else _EPOCH_ORDINAL + stamp // _DAY_MS
        reference = str(obj.get("Reference") or "")
        legs: dict[str, str] = {}
        for side, kind in (("FromBankAccount", "SPEND-TRANSFER"), ("ToBankAccount", "RECEIVE-TRANSFER")):
            leg = self._create_bank_transaction(
                tenant,
                {
                    "Type": kind,
                    "BankAccount": {"AccountID": ends[side]["AccountID"]},
                    "Date": date.fromordinal(day).isoformat(),
                    "Reference": reference,
                    "LineAmountTypes": "NoTax",
                    "LineItems": [{"Description": "Bank transfer", "LineAmount": amount}],
                    "UpdatedDateUTC": stamp,
                },
                True,
            )
            legs[side] = leg["BankTransactionID"]
        ident = _guid(obj.get("BankTransferID") or _new_id())
        core: JsonObj = {
            "BankTransferID": ident,
            "CreatedDateUTC": stamp,
            "Date": day,
            "Status": "AUTHORISED",
            "FromAccountID": ends["FromBankAccount"]["AccountID"],
            "ToAccountID": ends["ToBankAccount"]["AccountID"],
            "Amount": amount,
            "FromBankTransactionID": legs["FromBankAccount"],
            "ToBankTransactionID": legs["ToBankAccount"],
            "FromIsReconciled": _truthy(obj.get("FromIsReconciled")),
            "ToIsReconciled": _truthy(obj.get("ToIsReconciled")),
            "Reference": reference,
            "CurrencyRate": Decimal(1),
            "_updated": stamp,
        }
        return self._store(tenant, "BankTransfers", core)

    def _create_payment(self, tenant: _Tenant, obj: JsonObj, trusted: bool) -> JsonObj:
        errors: list[str] = []
        target_name = "Invoices"
        target: JsonObj | None = None
        invoice_ref = obj.get("Invoice")
        credit_ref = obj.get("CreditNote")
        invoices = tenant.collections["Invoices"]
        if invoice_ref is not None or obj.get("InvoiceNumber"):
            ident = _ref_id(invoice_ref, "InvoiceID")
            number = (invoice_ref or {}).get("InvoiceNumber") if isinstance(invoice_ref, Mapping) else None
            number = number or obj.get("InvoiceNumber")
            if ident and ident in invoices.rows:
                target = self._core(invoices.rows[ident])
            elif number:
                target = self._find_number(tenant, "Invoices", "InvoiceNumber", str(number))
            if target is None:
                errors.append("Invoice could not be found")
        elif credit_ref is not None or obj.get("CreditNoteNumber"):
            target_name = "CreditNotes"
            ident = _ref_id(credit_ref, "CreditNoteID")
            notes = tenant.collections["CreditNotes"].rows
            if ident and ident in notes:
                target = self._core(notes[ident])
            elif obj.get("CreditNoteNumber"):
                target = self._find_number(tenant, "CreditNotes", "CreditNoteNumber", str(obj["CreditNoteNumber"]))
            if target is None:
                errors.append("Credit note could not be found")
        else:
            errors.append("An Invoice or CreditNote must be specified")
        account_ref = obj.get("Account")
        if account_ref is None and obj.get("Code"):
            account_ref = {"Code": obj["Code"]}
        account: JsonObj | None = None
        try:
            account = self._account(tenant, account_ref)
            if account.get("Type") != "BANK" and not account.get("EnablePaymentsToAccount"):
                errors.append(
                    "Payments can only be made to bank accounts or accounts with "
                    '"Enable payments to this account" switched on'
                )
        except XeroValidationError as exc:
            errors.extend(exc.messages)
        amount = _ZERO
        try:
            amount = _money(obj.get("Amount"))
            if amount != _q2(amount):
                errors.append("Amount must have at most 2 decimal places")
            elif amount <= 0:
                errors.append("Payment amount must be greater than zero")
        except XeroValidationError as exc:
            errors.extend(exc.messages)
        if target is not None:
            status = target.get("Status")
            outstanding = target.get("AmountDue") if target_name == "Invoices" else target.get("RemainingCredit")
            if status != "AUTHORISED" and not (status == "PAID" and target_name == "Invoices"):
                errors.append("Payments can only be made against Authorised documents")
            elif amount > 0 and amount > (outstanding or _ZERO):
                errors.append("Payment amount exceeds the amount outstanding on this document")
        day: int | None = None
        if obj.get("Date") is not None:
            try:
                day = self._day(obj["Date"])
            except XeroValidationError as exc:
                errors.extend(exc.messages)
        if not trusted:
            errors.extend(self._locked(tenant, day if day is not None else self.today().toordinal()))
        rate = target.get("CurrencyRate", Decimal(1)) if target is not None else Decimal(1)
        if obj.get("CurrencyRate") is not None:
            try:
                rate = _money(obj["CurrencyRate"], "CurrencyRate")
            except XeroValidationError as exc:
                errors.extend(exc.messages)
        if errors or target is None or account is None:
            raise XeroValidationError(*errors)
        stamp = self._stamp(obj, trusted)
        if day is None:
            day = _EPOCH_ORDINAL + stamp // _DAY_MS
        kind = target["Type"]
        payment_type = {
            "ACCREC": "ACCRECPAYMENT",
            "ACCPAY": "ACCPAYPAYMENT",
            "ACCRECCREDIT": "ARCREDITPAYMENT",
            "ACCPAYCREDIT": "APCREDITPAYMENT",
        }[kind]
        ident = _guid(obj.get("PaymentID") or _new_id())
        bank_amount = _q2(amount / rate) if rate else amount
        core: JsonObj = {
            "PaymentID": ident,
            "Date": day,
            "BankAmount": bank_amount,
            "Amount": amount,
            "Reference": str(obj.get("Reference") or ""),
            "CurrencyRate": rate,
            "PaymentType": payment_type,
            "Status": "AUTHORISED",
            "UpdatedDateUTC": stamp,
            "IsReconciled": _truthy(obj.get("IsReconciled")),
            "AccountID": account["AccountID"],
            ID_FIELDS[target_name]: target[ID_FIELDS[target_name]],
        }
        self._store(tenant, "Payments", core)
        summary = {
            "PaymentID": ident,
            "Date": day,
            "Amount": amount,
            "CurrencyRate": rate,
            "Reference": core["Reference"],
        }
        if target_name == "Invoices":
            due = target["AmountDue"] - amount
            changed = {
                **target,
                "AmountPaid": target["AmountPaid"] + amount,
                "AmountDue": due,
                "Payments": [*target["Payments"], summary],
                "UpdatedDateUTC": stamp,
            }
            if due == 0:
                changed["Status"] = "PAID"
                changed["FullyPaidOnDate"] = day
            self._store(tenant, "Invoices", changed)
        else:
            remaining = target["RemainingCredit"] - amount
            changed = {
                **target,
                "RemainingCredit": remaining,
                "Payments": [*target["Payments"], summary],
                "UpdatedDateUTC": stamp,
            }
            if remaining == 0:
                changed["Status"] = "PAID"
                changed["FullyPaidOnDate"] = day
            self._store(tenant, "CreditNotes", changed)
        return core

    def _delete_payment(self, tenant: _Tenant, ident: str) -> JsonObj:
        stored = tenant.collections["Payments"].rows.get(_guid(ident))
        if stored is None:
            raise _not_found()
        payment = self._core(stored)
        if payment["Status"] == "DELETED":
            raise XeroValidationError("This payment has already been deleted")
        locked = self._locked(tenant, payment["Date"])
        if locked:
            # Deleting a payment changes the books on the payment's date: refused on or before a lock date,
            # with the message Xero gives for any document dated there.
            raise XeroValidationError(*locked)
        stamp = self._now_ms()
        for name, id_field, balance in (
            ("Invoices", "InvoiceID", "AmountDue"),
            ("CreditNotes", "CreditNoteID", "RemainingCredit"),
        ):
            target_id = payment.get(id_field)
            if not target_id:
                continue
            target = self._core(self._row(tenant, name, target_id))
            changed = {
                **target,
                balance: target[balance] + payment["Amount"],
                "Payments": [p for p in target["Payments"] if p["PaymentID"] != payment["PaymentID"]],
                "UpdatedDateUTC": stamp,
            }
            if name == "Invoices":
                changed["AmountPaid"] = target["AmountPaid"] - payment["Amount"]
            if changed["Status"] == "PAID":
                changed["Status"] = "AUTHORISED"
                changed["FullyPaidOnDate"] = None
            self._store(tenant, name, changed)
        return self._store(tenant, "Payments", {**payment, "Status": "DELETED", "UpdatedDateUTC": stamp})

    def _find_number(self, tenant: _Tenant, name: str, field_name: str, number: str) -> JsonObj | None:
        for stored in tenant.collections[name].rows.values():
            core = self._core(stored)
            if str(core.get(field_name, "")).lower() == number.lower():
                return core
        return None

    @staticmethod
    def _locked(tenant: _Tenant, day: int) -> list[str]:
        """Xero's messages for a document dated ``day`` on or before the organisation's lock dates."""
        messages = []
        for which, lock in (("period", tenant.period_lock_date), ("end of year", tenant.end_of_year_lock_date)):
            if lock is not None and day <= lock:
                messages.append(_LOCK_MESSAGE.format(which=which, day=date.fromordinal(lock).strftime("%d-%b-%Y")))
        return messages

    def _allocate(
        self,
        tenant: _Tenant,
        name: str,
        source_id: str,
        invoice_id: str,
        amount: Decimal,
        day: int | None,
        stamp: int,
        *,
        api: bool = False,
    ) -> JsonObj:
        source_stored = tenant.collections[name].rows.get(source_id)
        invoice_stored = tenant.collections["Invoices"].rows.get(invoice_id)
        errors: list[str] = []
        if source_stored is None:
            raise XeroValidationError("The document with the supplied id was not found for this endpoint.")
        if invoice_stored is None:
            raise XeroValidationError("Invoice could not be found")
        source = self._core(source_stored)
        invoice = self._core(invoice_stored)
        amount = _money(amount)
        paid_off = invoice["Status"] == "PAID" or (invoice["Status"] == "AUTHORISED" and invoice["AmountDue"] <= 0)
        if amount <= 0:
            errors.append("Allocation amount must be greater than zero")
        if source["Status"] not in ("AUTHORISED", "PAID"):
            errors.append("Only authorised documents can be allocated")
        if paid_off:
            errors.append(_PAID_OFF)
        elif invoice["Status"] != "AUTHORISED":
            errors.append("Allocations can only be made against Authorised invoices")
        if amount > source["RemainingCredit"]:
            errors.append(_OVER_ALLOCATED.format(what=_ALLOCATION_LABELS[name]))
        if not paid_off and amount > invoice["AmountDue"]:
            errors.append("The amount allocated is greater than the amount due on the invoice")
        if source["CurrencyCode"] != invoice["CurrencyCode"]:
            errors.append("The credit and the invoice must be in the same currency")
        if source["ContactID"] != invoice["ContactID"]:
            errors.append("The credit and the invoice must be for the same contact")
        on = day if day is not None else max(source["Date"], invoice["Date"])
        if api:
            errors.extend(self._locked(tenant, on))
        if errors:
            raise XeroValidationError(*errors)
        id_field = ID_FIELDS[name]
        allocation = {
            "AllocationID": _new_id(),
            "InvoiceID": invoice_id,
            "Amount": amount,
            "Date": on,
        }
        remaining = source["RemainingCredit"] - amount
        changed_source = {
            **source,
            "RemainingCredit": remaining,
            "Allocations": [*source["Allocations"], allocation],
            "UpdatedDateUTC": stamp,
        }
        if remaining == 0:
            changed_source["Status"] = "PAID"
            if name == "CreditNotes":
                changed_source["FullyPaidOnDate"] = on
        self._store(tenant, name, changed_source)
        summary = {id_field: source_id, "Date": on, "AppliedAmount": amount, "Total": source["Total"]}
        if name == "CreditNotes":
            summary["CreditNoteNumber"] = source.get("CreditNoteNumber", "")
        due = invoice["AmountDue"] - amount
        changed = {**invoice, "AmountDue": due, name: [*invoice.get(name, []), summary], "UpdatedDateUTC": stamp}
        if name == "CreditNotes":
            changed["AmountCredited"] = invoice["AmountCredited"] + amount
        else:
            changed["AmountPaid"] = invoice["AmountPaid"] + amount
        if due == 0:
            changed["Status"] = "PAID"
            changed["FullyPaidOnDate"] = on
        self._store(tenant, "Invoices", changed)
        return allocation

    def _apply_changes(self, tenant: _Tenant, name: str, core: JsonObj, changes: JsonObj) -> JsonObj:
        changed = dict(core)
        stamp = self._stamp(changes, True) if "UpdatedDateUTC" in changes else self._now_ms()
        for key, value in changes.items():
            if key == "UpdatedDateUTC":
                continue
            if key in _ORDINAL_DATES:
                changed[key] = None if value is None else self._day(value, key)
            elif key == "Contact":
                changed["ContactID"] = self._contact_of(tenant, changes)
            elif key == "LineItems":
                lines, totals = self._lines(tenant, value, str(changed.get("LineAmountTypes") or "Exclusive"))
                changed["LineItems"] = lines
                changed.update(totals)
                if name == "Invoices":
                    changed["AmountDue"] = totals["Total"] - changed["AmountPaid"] - changed["AmountCredited"]
            elif key in ("IsCustomer", "IsSupplier") and name == "Contacts":
                target = tenant.customers if key == "IsCustomer" else tenant.suppliers
                if _truthy(value):
                    self._mark(target, core["ContactID"])
                else:
                    target.discard(core["ContactID"])
            else:
                changed[key] = value
        if name == "Invoices" and changes.get("Status") in ("VOIDED", "DELETED"):
            changed["AmountDue"] = _ZERO
        if name == "BankTransfers":
            changed["_updated"] = stamp
        else:
            changed["UpdatedDateUTC"] = stamp
        return self._store(tenant, name, changed)

    # --- internals: rendering ---------------------------------------------------------------

    @staticmethod
    def _money_out(value: Any) -> Any:
        return _q2(value) if isinstance(value, Decimal) else value

    def _contact_summary(self, tenant: _Tenant, contact_id: str | None) -> JsonObj:
        stored = tenant.collections["Contacts"].rows.get(contact_id or "")
        contact = self._core(stored) if stored is not None else {}
        return {
            "ContactID": contact_id,
            "Name": contact.get("Name", ""),
            "Addresses": [],
            "Phones": [],
            "ContactGroups": [],
            "ContactPersons": [],
            "HasValidationErrors": False,
        }

    def _account_summary(self, tenant: _Tenant, account_id: str | None, *, with_code: bool = True) -> JsonObj:
        stored = tenant.collections["Accounts"].rows.get(account_id or "")
        account = self._core(stored) if stored is not None else {}
        out: JsonObj = {"AccountID": account_id}
        if with_code:
            out["Code"] = account.get("Code", "")
        out["Name"] = account.get("Name", "")
        return out

    def _lines_out(self, lines: list[JsonObj], unit_places: Decimal) -> list[JsonObj]:
        out = []
        for line in lines:
            rendered: JsonObj = {}
            for key, value in line.items():
                if key == "Quantity":
                    rendered[key] = value.quantize(_QTY_PLACES)
                elif key == "UnitAmount":
                    rendered[key] = value.quantize(unit_places)
                else:
                    rendered[key] = self._money_out(value)
            rendered.setdefault("Tracking", [])
            rendered["ValidationErrors"] = []
            out.append(rendered)
        return out

    def _render(self, tenant: _Tenant, name: str, core: JsonObj, *, lines: bool = True, unitdp: int = 2) -> JsonObj:
        unit_places = _QTY_PLACES if unitdp == 4 else _CENT
        if name == "Invoices":
            return self._render_invoice(tenant, core, lines, unit_places)
        if name == "CreditNotes":
            return self._render_credit_note(tenant, core, lines, unit_places)
        if name in ("Overpayments", "Prepayments"):
            return self._render_prepay(tenant, name, core, unit_places)
        if name == "Payments":
            return self._render_payment(tenant, core)
        if name == "Contacts":
            return self._render_contact(tenant, core)
        if name == "BankTransactions":
            return self._render_bank_transaction(tenant, core, unit_places)
        if name == "BankTransfers":
            return self._render_bank_transfer(tenant, core)
        return self._render_account(core)

    def _dates(self, out: JsonObj, core: JsonObj, key: str) -> None:
        value = core.get(key)
        if value is not None:
            out[f"{key}String"] = _date_string(value)
            out[key] = wire_date(value)

    def _updated(self, out: JsonObj, core: JsonObj, *, string: bool = True) -> None:
        out["UpdatedDateUTC"] = wire_time(core["UpdatedDateUTC"])
        if string:
            out["UpdatedDateUTCString"] = _utc_string(core["UpdatedDateUTC"])

    def _payment_refs(self, items: list[JsonObj]) -> list[JsonObj]:
        return [
            {
                "PaymentID": p["PaymentID"],
                "Date": wire_date(p["Date"]),
                "Amount": _q2(p["Amount"]),
                "Reference": p.get("Reference", ""),
                "CurrencyRate": p["CurrencyRate"].quantize(_RATE_PLACES),
                "HasAccount": False,
                "HasValidationErrors": False,
            }
            for p in items
        ]

    def _credit_refs(self, name: str, items: list[JsonObj]) -> list[JsonObj]:
        out = []
        for item in items:
            ref: JsonObj = {ID_FIELDS[name]: item[ID_FIELDS[name]]}
            if name == "CreditNotes":
                ref["CreditNoteNumber"] = item.get("CreditNoteNumber", "")
            ref["AppliedAmount"] = _q2(item["AppliedAmount"])
            ref["DateString"] = _date_string(item["Date"])
            ref["Date"] = wire_date(item["Date"])
            ref["LineItems"] = []
            ref["Total"] = _q2(item["Total"])
            out.append(ref)
        return out

    def _render_invoice(self, tenant: _Tenant, core: JsonObj, lines: bool, unit_places: Decimal) -> JsonObj:
        out: JsonObj = {
            "Type": core["Type"],
            "InvoiceID": core["InvoiceID"],
            "InvoiceNumber": core["InvoiceNumber"],
            "Reference": core.get("Reference", ""),
            "Payments": self._payment_refs(core.get("Payments", [])),
            "CreditNotes": self._credit_refs("CreditNotes", core.get("CreditNotes", [])),
            "Prepayments": self._credit_refs("Prepayments", core.get("Prepayments", [])),
            "Overpayments": self._credit_refs("Overpayments", core.get("Overpayments", [])),
            "AmountDue": self._money_out(core["AmountDue"]),
            "AmountPaid": self._money_out(core["AmountPaid"]),
            "AmountCredited": self._money_out(core["AmountCredited"]),
            "SentToContact": core.get("SentToContact", False),
            "CurrencyRate": core["CurrencyRate"].quantize(_RATE_PLACES),
            "HasErrors": False,
            "IsDiscounted": False,
            "HasAttachments": False,
            "Contact": self._contact_summary(tenant, core["ContactID"]),
        }
        self._dates(out, core, "Date")
        self._dates(out, core, "DueDate")
        for extra in ("ExpectedPaymentDate", "PlannedPaymentDate"):
            if core.get(extra) is not None:
                out[extra] = wire_date(core[extra])
        out["Status"] = core["Status"]
        out["LineAmountTypes"] = core["LineAmountTypes"]
        out["LineItems"] = self._lines_out(core["LineItems"], unit_places) if lines else []
        out["SubTotal"] = self._money_out(core["SubTotal"])
        out["TotalTax"] = self._money_out(core["TotalTax"])
        out["Total"] = self._money_out(core["Total"])
        self._updated(out, core)
        out["CurrencyCode"] = core["CurrencyCode"]
        if core.get("FullyPaidOnDate") is not None:
            out["FullyPaidOnDate"] = wire_date(core["FullyPaidOnDate"])
        return out

    def _render_credit_note(self, tenant: _Tenant, core: JsonObj, lines: bool, unit_places: Decimal) -> JsonObj:
        out: JsonObj = {
            "CreditNoteID": core["CreditNoteID"],
            "CreditNoteNumber": core["CreditNoteNumber"],
            "Payments": self._payment_refs(core.get("Payments", [])),
            "ID": core["CreditNoteID"],
            "CurrencyRate": core["CurrencyRate"].quantize(_RATE_PLACES),
            "Type": core["Type"],
            "Reference": core.get("Reference", ""),
            "RemainingCredit": self._money_out(core["RemainingCredit"]),
            "Allocations": [
                {
                    "AllocationID": a["AllocationID"],
                    "Amount": _q2(a["Amount"]),
                    "Date": wire_date(a["Date"]),
                    "Invoice": self._invoice_ref(tenant, a["InvoiceID"]),
                }
                for a in core.get("Allocations", [])
            ],
            "HasAttachments": False,
            "Contact": self._contact_summary(tenant, core["ContactID"]),
        }
        self._dates(out, core, "Date")
        out["Status"] = core["Status"]
        out["LineAmountTypes"] = core["LineAmountTypes"]
        out["LineItems"] = self._lines_out(core["LineItems"], unit_places) if lines else []
        out["SubTotal"] = self._money_out(core["SubTotal"])
        out["TotalTax"] = self._money_out(core["TotalTax"])
        out["Total"] = self._money_out(core["Total"])
        self._updated(out, core)
        out["CurrencyCode"] = core["CurrencyCode"]
        if core.get("FullyPaidOnDate") is not None:
            out["FullyPaidOnDate"] = wire_date(core["FullyPaidOnDate"])
        return out

    def _invoice_ref(self, tenant: _Tenant, invoice_id: str) -> JsonObj:
        stored = tenant.collections["Invoices"].rows.get(invoice_id)
        invoice = self._core(stored) if stored is not None else {}
        return {
            "InvoiceID": invoice_id,
            "InvoiceNumber": invoice.get("InvoiceNumber", ""),
            "Payments": [],
            "CreditNotes": [],
            "Prepayments": [],
            "Overpayments": [],
            "HasErrors": False,
            "IsDiscounted": False,
            "LineItems": [],
        }

    def _render_prepay(self, tenant: _Tenant, name: str, core: JsonObj, unit_places: Decimal) -> JsonObj:
        id_field = ID_FIELDS[name]
        out: JsonObj = {
            id_field: core[id_field],
            "ID": core[id_field],
            "Type": core["Type"],
            "Reference": core.get("Reference", ""),
            "RemainingCredit": self._money_out(core["RemainingCredit"]),
            "Allocations": [
                {
                    "AllocationID": a["AllocationID"],
                    "Amount": _q2(a["Amount"]),
                    "Date": wire_date(a["Date"]),
                    "Invoice": self._invoice_ref(tenant, a["InvoiceID"]),
                }
                for a in core.get("Allocations", [])
            ],
            "Payments": self._payment_refs(core.get("Payments", [])),
            "HasAttachments": False,
            "Contact": self._contact_summary(tenant, core["ContactID"]),
        }
        self._dates(out, core, "Date")
        out["Status"] = core["Status"]
        out["LineAmountTypes"] = core["LineAmountTypes"]
        out["LineItems"] = self._lines_out(core["LineItems"], unit_places)
        out["SubTotal"] = self._money_out(core["SubTotal"])
        out["TotalTax"] = self._money_out(core["TotalTax"])
        out["Total"] = self._money_out(core["Total"])
        self._updated(out, core)
        out["CurrencyCode"] = core["CurrencyCode"]
        out["CurrencyRate"] = core["CurrencyRate"].quantize(_RATE_PLACES)
        return out

    def _render_payment(self, tenant: _Tenant, core: JsonObj) -> JsonObj:
        out: JsonObj = {
            "PaymentID": core["PaymentID"],
            "Date": wire_date(core["Date"]),
            "BankAmount": _q2(core["BankAmount"]),
            "Amount": _q2(core["Amount"]),
            "Reference": core.get("Reference", ""),
            "CurrencyRate": core["CurrencyRate"].quantize(_RATE_PLACES),
            "PaymentType": core["PaymentType"],
            "Status": core["Status"],
        }
        self._updated(out, core)
        out["HasAccount"] = True
        out["IsReconciled"] = core.get("IsReconciled", False)
        out["Account"] = self._account_summary(tenant, core["AccountID"])
        if core.get("InvoiceID"):
            stored = tenant.collections["Invoices"].rows.get(core["InvoiceID"])
            invoice = self._core(stored) if stored is not None else {}
            out["Invoice"] = {
                "Type": invoice.get("Type", "ACCREC"),
                "InvoiceID": core["InvoiceID"],
                "InvoiceNumber": invoice.get("InvoiceNumber", ""),
                "Payments": [],
                "CreditNotes": [],
                "Prepayments": [],
                "Overpayments": [],
                "HasErrors": False,
                "IsDiscounted": False,
                "Contact": self._contact_summary(tenant, invoice.get("ContactID")),
                "LineItems": [],
                "CurrencyCode": invoice.get("CurrencyCode", self.base_currency),
            }
        if core.get("CreditNoteID"):
            stored = tenant.collections["CreditNotes"].rows.get(core["CreditNoteID"])
            note = self._core(stored) if stored is not None else {}
            out["CreditNote"] = {
                "CreditNoteNumber": note.get("CreditNoteNumber", ""),
                "CreditNoteID": core["CreditNoteID"],
                "Type": note.get("Type", "ACCRECCREDIT"),
                "Contact": self._contact_summary(tenant, note.get("ContactID")),
                "LineItems": [],
                "CurrencyCode": note.get("CurrencyCode", self.base_currency),
            }
        out["HasValidationErrors"] = False
        return out

    def _render_contact(self, tenant: _Tenant, core: JsonObj) -> JsonObj:
        ident = core["ContactID"]
        out: JsonObj = {"ContactID": ident, "ContactStatus": core.get("ContactStatus", "ACTIVE"), "Name": core["Name"]}
        for key in ("ContactNumber", "AccountNumber", "FirstName", "LastName", "CompanyNumber", "EmailAddress"):
            if core.get(key) is not None:
                out[key] = core[key]
        out["BankAccountDetails"] = core.get("BankAccountDetails", "")
        if core.get("TaxNumber"):
            out["TaxNumber"] = core["TaxNumber"]
        out["Addresses"] = list(core.get("Addresses") or [])
        out["Phones"] = list(core.get("Phones") or [])
        out["UpdatedDateUTC"] = wire_time(core["UpdatedDateUTC"])
        out["ContactGroups"] = list(core.get("ContactGroups") or [])
        out["IsSupplier"] = ident in tenant.suppliers
        out["IsCustomer"] = ident in tenant.customers
        if core.get("DefaultCurrency"):
            out["DefaultCurrency"] = core["DefaultCurrency"]
        if core.get("PaymentTerms"):
            out["PaymentTerms"] = core["PaymentTerms"]
        out["SalesTrackingCategories"] = []
        out["PurchasesTrackingCategories"] = []
        out["ContactPersons"] = list(core.get("ContactPersons") or [])
        out["HasAttachments"] = False
        out["HasValidationErrors"] = False
        return out

    def _render_bank_transaction(self, tenant: _Tenant, core: JsonObj, unit_places: Decimal) -> JsonObj:
        out: JsonObj = {
            "BankTransactionID": core["BankTransactionID"],
            "BankAccount": self._account_summary(tenant, core["BankAccountID"]),
            "Type": core["Type"],
            "Reference": core.get("Reference", ""),
            "IsReconciled": core.get("IsReconciled", False),
            "CurrencyRate": core["CurrencyRate"].quantize(_RATE_PLACES),
        }
        for link in ("PrepaymentID", "OverpaymentID"):
            if core.get(link):
                out[link] = core[link]
        out["HasAttachments"] = False
        if core.get("ContactID"):
            out["Contact"] = self._contact_summary(tenant, core["ContactID"])
        self._dates(out, core, "Date")
        out["Status"] = core["Status"]
        out["LineAmountTypes"] = core["LineAmountTypes"]
        out["LineItems"] = self._lines_out(core["LineItems"], unit_places)
        out["SubTotal"] = self._money_out(core["SubTotal"])
        out["TotalTax"] = self._money_out(core["TotalTax"])
        out["Total"] = self._money_out(core["Total"])
        self._updated(out, core, string=False)
        out["CurrencyCode"] = core["CurrencyCode"]
        return out

    def _render_bank_transfer(self, tenant: _Tenant, core: JsonObj) -> JsonObj:
        out: JsonObj = {
            "BankTransferID": core["BankTransferID"],
            "CreatedDateUTCString": _from_ms(core["CreatedDateUTC"]).strftime("%Y-%m-%dT%H:%M:%S"),
            "CreatedDateUTC": wire_time(core["CreatedDateUTC"]),
        }
        self._dates(out, core, "Date")
        out["Status"] = core["Status"]
        out["FromBankAccount"] = self._account_summary(tenant, core["FromAccountID"])
        out["ToBankAccount"] = self._account_summary(tenant, core["ToAccountID"])
        out["Amount"] = _q2(core["Amount"])
        out["FromBankTransactionID"] = core["FromBankTransactionID"]
        out["ToBankTransactionID"] = core["ToBankTransactionID"]
        out["FromIsReconciled"] = core.get("FromIsReconciled", False)
        out["ToIsReconciled"] = core.get("ToIsReconciled", False)
        out["Reference"] = core.get("Reference", "")
        out["CurrencyRate"] = core["CurrencyRate"].quantize(_RATE_PLACES)
        out["HasAttachments"] = False
        out["FromTracking"] = []
        out["ToTracking"] = []
        return out

    @staticmethod
    def _render_account(core: JsonObj) -> JsonObj:
        out: JsonObj = {"AccountID": core["AccountID"], "Code": core["Code"], "Name": core["Name"]}
        out["Status"] = core.get("Status", "ACTIVE")
        out["Type"] = core["Type"]
        out["TaxType"] = core.get("TaxType", "NONE")
        if core.get("Description"):
            out["Description"] = core["Description"]
        out["Class"] = core.get("Class", "")
        if core.get("SystemAccount"):
            out["SystemAccount"] = core["SystemAccount"]
        out["EnablePaymentsToAccount"] = bool(core.get("EnablePaymentsToAccount", False))
        out["ShowInExpenseClaims"] = bool(core.get("ShowInExpenseClaims", False))
        for key in ("BankAccountNumber", "BankAccountType", "CurrencyCode"):
            if core.get(key):
                out[key] = core[key]
        out["ReportingCode"] = core.get("ReportingCode", "")
        out["HasAttachments"] = False
        out["UpdatedDateUTC"] = wire_time(core["UpdatedDateUTC"])
        out["AddToWatchlist"] = False
        return out

    # --- internals: reading lists -----------------------------------------------------------

    def _field(self, tenant: _Tenant, name: str, core: JsonObj, parts: tuple[str, ...]) -> Any:
        head, rest = parts[0], parts[1:]
        if head in _ORDINAL_DATES:
            day = core.get(head)
            return None if day is None else datetime.combine(date.fromordinal(day), datetime.min.time(), UTC)
        if head in _MS_DATES:
            stamp = core.get(head)
            return None if stamp is None else _from_ms(stamp)
        if head in ("IsCustomer", "IsSupplier") and name == "Contacts":
            return core["ContactID"] in (tenant.customers if head == "IsCustomer" else tenant.suppliers)
        if head in _REFS and name not in ("Accounts",):
            target = _REFS[head]
            key = _REF_KEYS[head]
            if name == "BankTransactions" and head == "BankAccount":
                key = "BankAccountID"
            ident = core.get(key)
            if not rest:
                return ident
            if ident is None:
                return None
            stored = tenant.collections[target].rows.get(ident)
            if stored is None:
                return None
            return self._field(tenant, target, self._core(stored), rest)
        value: Any = core.get(head)
        for part in rest:
            value = value.get(part) if isinstance(value, Mapping) else None
        return value

    def _select(self, tenant: _Tenant, name: str, params: Mapping[str, str], since: int | None) -> list[str]:
        table = tenant.collections[name]
        key = (name, since, tuple(sorted(params.items())))
        cached = tenant.cache.get(key)
        if cached is not None and cached[0] == table.version:
            return cached[1]
        where = params.get("where", "").strip()
        tree = parse_where(where, name) if where else None
        order = parse_order(params["order"], name) if params.get("order", "").strip() else []
        if since is not None:
            candidates = table.modified_after(since)
            if not order:
                seq = table.seq
                candidates.sort(key=seq.__getitem__)
        else:
            candidates = list(table.rows)
        statuses = {s.strip().upper() for s in params.get("Statuses", "").split(",") if s.strip()}
        wanted_ids = {_guid(s) for s in params.get("IDs", "").split(",") if s.strip()}
        numbers = {s.strip().lower() for s in params.get("InvoiceNumbers", "").split(",") if s.strip()}
        contacts = {_guid(s) for s in params.get("ContactIDs", "").split(",") if s.strip()}
        search = params.get("searchTerm", "").strip().lower()
        archived = _truthy(params.get("includeArchived", "false"))
        deleted = _truthy(params.get("includeDeleted", "false"))
        id_field = ID_FIELDS[name]
        rows = table.rows
        chosen: list[str] = []
        for ident in candidates:
            core = self._core(rows[ident])
            if statuses and str(core.get("Status") or core.get("ContactStatus")) not in statuses:
                continue
            if wanted_ids and core[id_field] not in wanted_ids:
                continue
            if numbers and str(core.get("InvoiceNumber", "")).lower() not in numbers:
                continue
            if contacts and core.get("ContactID") not in contacts:
                continue
            if name == "Contacts" and not archived and core.get("ContactStatus") == "ARCHIVED" and not wanted_ids:
                continue
            if name == "BankTransfers" and not deleted and core.get("Status") == "DELETED":
                continue
            if search and not any(
                search in str(core.get(k) or "").lower()
                for k in ("InvoiceNumber", "Reference", "Name", "FirstName", "LastName", "EmailAddress")
            ):
                continue
            if tree is not None and not _evaluate(tree, functools.partial(self._field, tenant, name, core)):
                continue
            chosen.append(ident)
        if order:
            for parts, descending in reversed(order):
                keyed = []
                for ident in chosen:
                    value = _norm(self._field(tenant, name, self._core(rows[ident]), parts))
                    keyed.append(((value is None) != descending, value if value is not None else 0, ident))
                try:
                    keyed.sort(key=lambda item: (item[0], item[1]), reverse=descending)
                except TypeError:
                    keyed.sort(key=lambda item: (item[0], str(item[1])), reverse=descending)
                chosen = [item[2] for item in keyed]
        if len(tenant.cache) >= 16:
            tenant.cache.pop(next(iter(tenant.cache)))
        tenant.cache[key] = (table.version, chosen)
        return chosen

    def _list(self, tenant: _Tenant, name: str, params: dict[str, str], headers: Mapping[str, str]) -> _Response:
        since: int | None = None
        raw_since = headers.get("if-modified-since", "").strip()
        if raw_since:
            try:
                since = _parse_instant(raw_since)
            except ValueError:
                raise _api_exception(
                    10, "ValidationException", "The If-Modified-Since header is not a valid date"
                ) from None
        paged = name in PAGED and ("page" in params or "pageSize" in params)
        filters = ("where", "Statuses", "IDs", "InvoiceNumbers", "ContactIDs", "searchTerm")
        unfiltered = since is None and not any(params.get(f, "").strip() for f in filters)
        large = len(tenant.collections["Invoices"].rows) > self.large_org_invoices
        if name == "Invoices" and not paged and unfiltered and large:
            raise _api_exception(
                10,
                "ValidationException",
                "Your request is not filtering Invoices efficiently, given the extremely high volume "
                "for this organisation. Please check "
                "https://developer.xero.com/documentation/api/efficient-data-retrieval for tips on "
                "making Invoice retrieval more efficient.",
            )
        query = {k: v for k, v in params.items() if k in (*filters, "order", "includeArchived", "includeDeleted")}
        chosen = self._select(tenant, name, query, since)
        unitdp = 4 if params.get("unitdp") == "4" else 2
        pagination: JsonObj | None = None
        if paged:
            page = _int_param(params.get("page"), "page", 1)
            size = _int_param(params.get("pageSize"), "pageSize", PAGE_SIZE_DEFAULT)
            page = max(page, 1)
            size = min(max(size, 1), PAGE_SIZE_MAX)
            start = (page - 1) * size
            window = chosen[start : start + size]
            pagination = {
                "page": page,
                "pageSize": size,
                "pageCount": math.ceil(len(chosen) / size),
                "itemCount": len(chosen),
            }
        else:
            window = chosen
        summary = _truthy(params.get("summaryOnly", "false"))
        # Without paging Xero lists invoices and credit notes without their line items.
        with_lines = (paged or name not in ("Invoices", "CreditNotes")) and not summary
        rows = tenant.collections[name].rows
        items = [
            self._render(tenant, name, self._core(rows[ident]), lines=with_lines, unitdp=unitdp) for ident in window
        ]
        return self._envelope(name, items, pagination)

    def _envelope(self, name: str, items: list[JsonObj], pagination: JsonObj | None = None) -> _Response:
        correlation = _new_id()
        body: JsonObj = {
            "Id": correlation,
            "Status": "OK",
            "ProviderName": self.provider_name,
            "DateTimeUTC": f"/Date({self._now_ms()})/",
        }
        if pagination is not None:
            body["pagination"] = pagination
        body[name] = items
        return _Response(200, dumps(body), headers=[("Xero-Correlation-Id", correlation)])

    # --- internals: writing -------------------------------------------------------------------

    def _items(self, name: str, payload: Any, *, single_ok: bool) -> list[Any]:
        if isinstance(payload, dict) and isinstance(payload.get(name), list):
            return list(payload[name])
        if single_ok and isinstance(payload, dict) and name not in payload:
            return [payload]
        raise _post_data_error(f"The request body must be an object with a {name} array")

    def _write(
        self,
        tenant: _Tenant,
        name: str,
        params: dict[str, str],
        body: bytes,
        run: Callable[[JsonObj], JsonObj],
        *,
        single_ok: bool = False,
        summarize_default: bool = True,
    ) -> _Response:
        try:
            payload = loads(body.decode("utf-8")) if body.strip() else None
        except (ValueError, UnicodeDecodeError) as exc:
            raise _post_data_error(f"Invalid JSON in the request body: {exc}") from None
        items = self._items(name, payload, single_ok=single_ok)
        summarize = params.get("summarizeErrors", "true" if summarize_default else "false").strip().lower() != "false"
        results: list[tuple[bool, JsonObj]] = []
        with self._batch(tenant) as journal:
            for item in items:
                if not isinstance(item, dict):
                    raise _post_data_error(f"Each of {name} must be an object")
                savepoint = self._savepoint(tenant, journal)
                try:
                    results.append((True, run(item)))
                except XeroValidationError as exc:
                    self._rollback(tenant, journal, savepoint)  # nothing of a refused item stays
                    echo = {**item, "ValidationErrors": [{"Message": m} for m in exc.messages]}
                    results.append((False, echo))
            failed = any(not ok for ok, _ in results)
            if failed and summarize:
                self._rollback(tenant, journal)
        singular = _SINGULAR.get(name)
        status_field = singular is not None and "StatusAttributeString" in _FIELDS.get(name, frozenset())
        if failed and summarize:
            elements = []
            for (ok, rendered), item in zip(results, items, strict=True):
                elements.append({**item, "ValidationErrors": []} if ok else rendered)
            raise _api_exception(10, "ValidationException", "A validation exception occurred", elements)
        out: list[JsonObj] = []
        for ok, rendered in results:
            if ok:
                if status_field:
                    rendered = {**rendered, "StatusAttributeString": "OK"}
                if name == "BankTransfers":
                    rendered = {**rendered, "ValidationErrors": []}
            else:
                if name in ("Payments",):
                    rendered = {**rendered, "HasValidationErrors": True}
                if status_field:
                    rendered = {**rendered, "StatusAttributeString": "ERROR"}
            out.append(rendered)
        return self._envelope(name, out)

    def _allocations_write(
        self, tenant: _Tenant, name: str, source_id: str, params: dict[str, str], body: bytes
    ) -> _Response:
        source_id = _guid(source_id)
        if source_id not in tenant.collections[name].rows:
            raise _not_found()

        def run(item: JsonObj) -> JsonObj:
            invoice_id = _ref_id(item.get("Invoice"), "InvoiceID")
            if not invoice_id:
                raise XeroValidationError("An allocation needs an Invoice")
            day = self._day(item["Date"]) if item.get("Date") is not None else None
            allocation = self._allocate(
                tenant, name, source_id, invoice_id, _money(item.get("Amount")), day, self._now_ms(), api=True
            )
            return {
                "AllocationID": allocation["AllocationID"],
                "Invoice": self._invoice_ref(tenant, invoice_id),
                "Amount": _q2(allocation["Amount"]),
                "Date": wire_date(allocation["Date"]),
                _SINGULAR[name]: {ID_FIELDS[name]: source_id},
                "IsDeleted": False,
                "StatusAttributeString": "OK",
            }

        return self._write(tenant, "Allocations", params, body, run, single_ok=True)

    # --- tokens ------------------------------------------------------------------------------

    def _mint(self, auth_event: str, scope: str) -> JsonObj:
        now = self._epoch()
        scopes = scope.split()
        access = _jwt(
            {
                "nbf": int(now),
                "exp": int(now + self.access_token_ttl),
                "iss": "https://identity.xero.com",
                "aud": "https://identity.xero.com/resources",
                "client_id": self.client_id,
                "sub": self.user_id.replace("-", ""),
                "auth_time": int(now),
                "xero_userid": self.user_id,
                "global_session_id": secrets.token_hex(16),
                "jti": secrets.token_hex(16),
                "authentication_event_id": auth_event,
                "scope": scopes,
            }
        )
        body: JsonObj = {}
        if "openid" in scopes:
            body["id_token"] = _jwt(
                {
                    "nbf": int(now),
                    "exp": int(now + 300),
                    "iss": "https://identity.xero.com",
                    "aud": self.client_id,
                    "iat": int(now),
                    "sub": self.user_id.replace("-", ""),
                    "xero_userid": self.user_id,
                    "email": "sandbox@example.com",
                }
            )
        refresh: str | None = None
        if "offline_access" in scopes:
            refresh = secrets.token_hex(32)
            self._refresh[refresh] = _Refresh(auth_event, scope, now + self.refresh_token_ttl)
        self._access[access] = _Access(now + self.access_token_ttl, auth_event, frozenset(scopes), refresh)
        body["access_token"] = access
        body["expires_in"] = self.access_token_ttl
        body["token_type"] = "Bearer"
        if refresh is not None:
            body["refresh_token"] = refresh
        body["scope"] = scope
        return body

    def _identity_json(self, status: int, payload: Any) -> _Response:
        return _Response(
            status,
            dumps(payload),
            "application/json; charset=UTF-8",
            [
                ("Vary", "Accept-Encoding"),
                ("Xero-Correlation-Id", secrets.token_hex(16)),
                ("Xero-Origin-Id", "IdentityServer.Web"),
            ],
            server="nginx",
        )

    def _client_ok(self, headers: Mapping[str, str], form: Mapping[str, str]) -> bool:
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

    def _authorize(self, params: Mapping[str, str]) -> _Response:
        redirect = params.get("redirect_uri", "")
        if params.get("client_id") != self.client_id:
            return self._identity_json(400, {"error": "unauthorized_client"})
        if not redirect or params.get("response_type") != "code":
            return self._identity_json(400, {"error": "invalid_request"})
        code = secrets.token_hex(32)
        scope = params.get("scope") or DEFAULT_SCOPE
        with self._lock:
            self._codes[code] = _Code(redirect, scope, self._epoch() + 300)
        query = {"code": code, "scope": scope, "state": params.get("state", ""), "session_state": secrets.token_hex(8)}
        separator = "&" if "?" in redirect else "?"
        return _Response(302, b"", "text/html", [("Location", redirect + separator + urlencode(query))], "nginx")

    def _token(self, headers: Mapping[str, str], body: bytes) -> _Response:
        form = {k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        if not self._client_ok(headers, form):
            return self._identity_json(400, {"error": "invalid_client"})
        grant = form.get("grant_type")
        with self._lock:
            now = self._epoch()
            if grant == "authorization_code":
                code = self._codes.pop(form.get("code", ""), None)
                if code is None or code.expires < now or code.redirect_uri != form.get("redirect_uri"):
                    return self._identity_json(400, {"error": "invalid_grant"})
                return self._identity_json(200, self._mint(_new_id(), code.scope))
            if grant == "refresh_token":
                token = form.get("refresh_token", "")
                refresh = self._refresh.get(token)
                if refresh is None or refresh.expires < now:
                    return self._identity_json(400, {"error": "invalid_grant"})
                if refresh.used_at is not None:
                    if now - refresh.used_at <= self.refresh_grace_seconds and refresh.result is not None:
                        self.refresh_replay_count += 1
                        return self._identity_json(200, refresh.result)
                    return self._identity_json(400, {"error": "invalid_grant"})
                scope = refresh.scope
                if form.get("scope"):
                    asked = set(form["scope"].split())
                    if not asked <= set(scope.split()):
                        return self._identity_json(400, {"error": "invalid_scope"})
                refresh.used_at = now
                refresh.result = self._mint(refresh.auth_event, scope)
                self.refresh_count += 1
                return self._identity_json(200, refresh.result)
        return self._identity_json(400, {"error": "unsupported_grant_type"})

    def _revoke(self, headers: Mapping[str, str], body: bytes) -> _Response:
        form = {k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        if not self._client_ok(headers, form):
            return self._identity_json(400, {"error": "invalid_client"})
        token = form.get("token", "")
        with self._lock:
            refresh = self._refresh.pop(token, None)
            if refresh is not None:
                for access in self._access.values():
                    if access.refresh == token:
                        access.expired = True
        return _Response(200, b"", "text/html", server="nginx")

    # --- HTTP: problems -----------------------------------------------------------------------

    def _problem(self, status: int, title: str, detail: str, headers: Sequence[tuple[str, str]] = ()) -> _Response:
        correlation = _new_id()
        body: JsonObj = {
            "Type": None,
            "Title": title,
            "Status": status,
            "Detail": detail,
            "Instance": correlation,
            "Extensions": {},
        }
        return _Response(status, dumps(body), headers=[("Xero-Correlation-Id", correlation), *headers])

    def _authenticate(self, headers: Mapping[str, str], *, expire: bool) -> _Access | _Response:
        auth = headers.get("authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        with self._lock:
            access = self._access.get(token)
            if access is not None and expire:
                access.expired = True
                access.expires = min(access.expires, self._epoch())
            if access is None:
                return self._problem(
                    401,
                    "Unauthorized",
                    "AuthenticationUnsuccessful",
                    [("WWW-Authenticate", 'Bearer error="invalid_token"')],
                )
            if access.expired or access.expires <= self._epoch():
                moment = datetime.fromtimestamp(access.expires, UTC).strftime("%m/%d/%Y %H:%M:%S")
                return self._problem(
                    401,
                    "Unauthorized",
                    f"TokenExpired: token expired at {moment}",
                    [("WWW-Authenticate", 'Bearer error="invalid_token", error_description="The token expired"')],
                )
        return access

    def _connections(self, method: str, path: str, headers: Mapping[str, str], expire: bool) -> _Response:
        access = self._authenticate(headers, expire=expire)
        if isinstance(access, _Response):
            return access
        segments = [s for s in path.split("/") if s]
        correlation = _new_id()
        if method == "DELETE" and len(segments) == 2:
            with self._lock:
                for tenant in self._tenants.values():
                    if tenant.connection_id == segments[1].lower() and tenant.connected:
                        tenant.connected = False
                        return _Response(204, b"", "text/plain", [("Xero-Correlation-Id", correlation)])
            return self._problem(404, "NotFound", "The resource you're looking for cannot be found")
        if method != "GET" or len(segments) != 1:
            return self._problem(404, "NotFound", "The resource you're looking for cannot be found")
        with self._lock:
            rows = [
                {
                    "id": tenant.connection_id,
                    "authEventId": access.auth_event,
                    "tenantId": tenant.id,
                    "tenantType": "ORGANISATION",
                    "tenantName": tenant.name,
                    "createdDateUtc": _connection_time(tenant.connected_at),
                    "updatedDateUtc": _connection_time(tenant.connected_at),
                }
                for tenant in self._tenants.values()
                if tenant.connected
            ]
        return _Response(200, dumps(rows), "application/json", [("Xero-Correlation-Id", correlation)])

    # --- HTTP: rate limits ----------------------------------------------------------------------

    def _take_slot(self, tenant: _Tenant, forced: str | None) -> tuple[list[tuple[str, str]], _Response | None]:
        """Count one API call; the rate headers, or a 429 when a limit is reached."""
        now = self._epoch()
        limits = tenant.limits
        while limits.minute and limits.minute[0] <= now - 60:
            limits.minute.popleft()
        while self._app_minute and self._app_minute[0] <= now - 60:
            self._app_minute.popleft()
        day = int(now // 86_400)
        if limits.day != day:
            limits.day, limits.day_count = day, 0
        problem = forced
        if problem is None and self.rate_limits:
            if limits.day_count >= self.per_day:
                problem = "day"
            elif len(self._app_minute) >= self.app_per_minute:
                problem = "appminute"
            elif len(limits.minute) >= self.per_minute:
                problem = "minute"
            elif limits.in_flight >= self.concurrent:
                problem = "concurrent"
        if problem is None:
            limits.minute.append(now)
            self._app_minute.append(now)
            limits.day_count += 1
        headers = [
            ("X-DayLimit-Remaining", str(max(0, self.per_day - limits.day_count))),
            ("X-MinLimit-Remaining", str(max(0, self.per_minute - len(limits.minute)))),
            ("X-AppMinLimit-Remaining", str(max(0, self.app_per_minute - len(self._app_minute)))),
        ]
        if problem is None:
            return headers, None
        if problem == "day":
            retry = (day + 1) * 86_400 - now
            headers[0] = ("X-DayLimit-Remaining", "0")
        elif problem == "appminute":
            retry = (self._app_minute[0] + 60 - now) if self._app_minute else 60
            headers[2] = ("X-AppMinLimit-Remaining", "0")
        elif problem == "minute":
            retry = (limits.minute[0] + 60 - now) if limits.minute else 60
            headers[1] = ("X-MinLimit-Remaining", "0")
        else:
            retry = 1
        self.throttled_count += 1
        seconds = max(1, math.ceil(retry))
        response = self._problem(
            429,
            "Too Many Requests",
            f"Rate limit exceeded: {problem}",
            [*headers, ("Retry-After", str(seconds)), ("X-Rate-Limit-Problem", problem)],
        )
        return headers, response

    # --- HTTP: dispatch ---------------------------------------------------------------------------

    def _take_fault(self, path: str) -> str | None:
        is_api = path.startswith("/api.xro/")
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
        params = {k: ",".join(v) for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        text = body.decode("utf-8", "replace")
        control = path.startswith("/_sandbox/")
        with self._lock:
            self.requests_log.append((method, raw_path, text))
            hook = self.on_request
            kind = None
            if not control:
                self.request_count += 1
                kind = self._take_fault(raw_path)
        try:
            if hook is not None:
                hook(method, raw_path, text)
            if control:
                return self._control(method, path, body)
            expire = False
            stall = 0.0
            forced: str | None = None
            if kind is not None:
                if kind.startswith("stall:"):
                    stall = float(kind.split(":", 1)[1])
                    if not path.startswith("/api.xro/"):
                        self._wait(stall)
                elif kind == "500":
                    return self._problem(
                        500,
                        "An error occurred",
                        "An error occurred in Xero. Check the API Status page "
                        "http://status.developer.xero.com for current service status.",
                    )
                elif kind == "503":
                    return _Response(503, b"Service Unavailable", "text/plain", [("Retry-After", "1")])
                elif kind == "drop":
                    return _Response(0, b"", drop=True)
                elif kind == "expire_token":
                    expire = True
                elif kind in _LIMIT_FAULTS:
                    forced = _LIMIT_FAULTS[kind]
            response = self._route(method, path, params, headers, body, expire, stall, forced)
            return dataclasses.replace(response, drop_after=True) if kind == "drop_after" else response
        except _HttpError as error:
            return _Response(
                error.status, dumps(error.body), headers=[("Xero-Correlation-Id", _new_id()), *error.headers]
            )
        except Exception as exc:  # a sandbox bug: answer 500, keep the traceback for the test to show
            with self._lock:
                self.server_errors.append(traceback.format_exc())
            return self._problem(500, "An error occurred", f"{type(exc).__name__}: {exc}")

    def _route(
        self,
        method: str,
        path: str,
        params: dict[str, str],
        headers: dict[str, str],
        body: bytes,
        expire: bool,
        stall: float,
        forced: str | None,
    ) -> _Response:
        lower = path.lower().rstrip("/")
        if lower == "/identity/connect/authorize" and method == "GET":
            return self._authorize(params)
        if lower == "/connect/token" and method == "POST":
            return self._token(headers, body)
        if lower == "/connect/revocation" and method == "POST":
            return self._revoke(headers, body)
        if lower == "/connections" or lower.startswith("/connections/"):
            return self._connections(method, path, headers, expire)
        if lower.startswith("/api.xro/2.0/"):
            return self._api(method, path, params, headers, body, expire, stall, forced)
        return self._problem(404, "NotFound", "The resource you're looking for cannot be found")

    _READ_SCOPES: ClassVar[dict[str, tuple[str, str]]] = {
        "Contacts": ("accounting.contacts", "accounting.contacts.read"),
        "Accounts": ("accounting.settings", "accounting.settings.read"),
    }

    def _scope_ok(self, access: _Access, name: str, method: str) -> bool:
        write, read = self._READ_SCOPES.get(name, ("accounting.transactions", "accounting.transactions.read"))
        return write in access.scope or (method == "GET" and read in access.scope)

    def _api(
        self,
        method: str,
        path: str,
        params: dict[str, str],
        headers: dict[str, str],
        body: bytes,
        expire: bool,
        stall: float,
        forced: str | None,
    ) -> _Response:
        access = self._authenticate(headers, expire=expire)
        if isinstance(access, _Response):
            return access
        tenant_id = _guid(headers.get("xero-tenant-id", ""))
        with self._lock:
            tenant = self._tenants.get(tenant_id)
            if tenant is None or not tenant.connected:
                return self._problem(403, "Forbidden", "AuthenticationUnsuccessful")
        segments = [s for s in path.split("/") if s][2:]
        name = _CANONICAL.get(segments[0].lower()) if segments else None
        if name is not None and not self._scope_ok(access, name, method):
            return self._problem(401, "Unauthorized", "AuthorizationUnsuccessful")
        with self._lock:
            rate_headers, limited = self._take_slot(tenant, forced)
            if limited is not None:
                return limited
            tenant.limits.in_flight += 1
            self._flight.notify_all()
        try:
            self._wait(stall)
            self._wait(self.latency)
            try:
                response = self._dispatch(tenant, method, segments, name, params, headers, body)
            except _HttpError as error:
                response = _Response(
                    error.status, dumps(error.body), headers=[("Xero-Correlation-Id", _new_id()), *error.headers]
                )
        finally:
            with self._lock:
                tenant.limits.in_flight -= 1
                self._flight.notify_all()
        response.headers.extend(rate_headers)
        return response

    def _dispatch(
        self,
        tenant: _Tenant,
        method: str,
        segments: list[str],
        name: str | None,
        params: dict[str, str],
        headers: Mapping[str, str],
        body: bytes,
    ) -> _Response:
        if name is None:
            raise _not_found()
        if "json" not in headers.get("accept", "").lower():
            # Xero answers XML unless JSON is asked for; the sandbox speaks JSON only, so it refuses
            # rather than let a client that forgot the header pass here and fail against Xero.
            return _Response(
                406,
                b"Xero answers XML unless the request has Accept: application/json; the sandbox speaks JSON only.",
                "text/plain",
                [("Xero-Correlation-Id", _new_id())],
            )
        if len(segments) == 1 and method == "GET":
            with self._lock:
                return self._list(tenant, name, params, headers)
        if len(segments) == 2 and method == "GET":
            with self._lock:
                stored = tenant.collections[name].rows.get(_guid(segments[1]))
                if stored is None and name == "Invoices":
                    found = self._find_number(tenant, name, "InvoiceNumber", segments[1])
                    stored = found
                if stored is None:
                    raise _not_found()
                unitdp = 4 if params.get("unitdp") == "4" else 2
                item = self._render(tenant, name, self._core(stored), unitdp=unitdp)
                return self._envelope(name, [item])
        if method in ("PUT", "POST") and len(segments) == 1 and name in WRITABLE:
            return self._idempotent(tenant, headers, lambda: self._write_collection(tenant, name, method, params, body))
        if method == "POST" and len(segments) == 2 and name == "Payments":
            return self._idempotent(tenant, headers, lambda: self._payment_status(tenant, segments[1], body))
        if method == "POST" and len(segments) == 2 and name == "Invoices":
            return self._idempotent(tenant, headers, lambda: self._invoice_update(tenant, segments[1], body))
        if method == "POST" and len(segments) == 2 and name == "BankTransactions":
            return self._idempotent(tenant, headers, lambda: self._bank_transaction_status(tenant, segments[1], body))
        if method in ("PUT", "POST") and len(segments) == 3 and segments[2].lower() == "allocations":
            if name not in _ALLOCATABLE:
                raise _not_found()
            return self._idempotent(
                tenant, headers, lambda: self._allocations_write(tenant, name, segments[1], params, body)
            )
        if method in ("PUT", "POST", "DELETE"):
            return self._problem(
                405, "Method Not Allowed", f"The sandbox does not support {method} {'/'.join(segments)}"
            )
        raise _not_found()

    def _write_collection(
        self, tenant: _Tenant, name: str, method: str, params: dict[str, str], body: bytes
    ) -> _Response:
        if name == "BankTransfers" and method == "POST":
            return self._write(tenant, name, params, body, lambda item: self._transfer_post(tenant, item))
        if name == "Payments" and method == "POST":
            # The spec's POST /Payments takes one Payment (or the Payments array) and no summarizeErrors.
            return self._write(
                tenant,
                name,
                params,
                body,
                lambda item: self._render(tenant, name, self._create_payment(tenant, item, False)),
                single_ok=True,
            )

        def run(item: JsonObj) -> JsonObj:
            return self._render(tenant, name, self._create(tenant, name, item, trusted=False))

        return self._write(tenant, name, params, body, run)

    def _transfer_post(self, tenant: _Tenant, item: JsonObj) -> JsonObj:
        """POST /BankTransfers: ``{"BankTransferID", "Status": "DELETED"}`` deletes; anything else creates."""
        ident = _ref_id(item, "BankTransferID")
        if ident and str(item.get("Status", "")).upper() == "DELETED":
            stored = tenant.collections["BankTransfers"].rows.get(ident)
            if stored is None:
                raise XeroValidationError("The document with the supplied id was not found for this endpoint.")
            core = self._core(stored)
            stamp = self._now_ms()
            for leg in ("FromBankTransactionID", "ToBankTransactionID"):
                transaction = self._core(self._row(tenant, "BankTransactions", core[leg]))
                self._store(tenant, "BankTransactions", {**transaction, "Status": "DELETED", "UpdatedDateUTC": stamp})
            changed = self._store(tenant, "BankTransfers", {**core, "Status": "DELETED", "_updated": stamp})
            return self._render(tenant, "BankTransfers", changed)
        return self._render(tenant, "BankTransfers", self._create_bank_transfer(tenant, item, False))

    def _payment_status(self, tenant: _Tenant, ident: str, body: bytes) -> _Response:
        try:
            payload = loads(body.decode("utf-8")) if body.strip() else None
        except (ValueError, UnicodeDecodeError) as exc:
            raise _post_data_error(f"Invalid JSON in the request body: {exc}") from None
        items = payload.get("Payments") if isinstance(payload, dict) else None
        change = items[0] if isinstance(items, list) and items else payload
        if not isinstance(change, dict) or str(change.get("Status", "")).upper() != "DELETED":
            raise _api_exception(10, "ValidationException", "A payment can only be changed to Status DELETED")
        with self._lock, self._batch(tenant) as journal:
            try:
                core = self._delete_payment(tenant, ident)
            except XeroValidationError as exc:
                self._rollback(tenant, journal)
                raise _api_exception(
                    10,
                    "ValidationException",
                    "A validation exception occurred",
                    [{"PaymentID": ident, "ValidationErrors": [{"Message": m} for m in exc.messages]}],
                ) from None
            return self._envelope("Payments", [self._render(tenant, "Payments", core)])

    def _invoice_update(self, tenant: _Tenant, ident: str, body: bytes) -> _Response:
        """POST /Invoices/{InvoiceID}: the sandbox changes ``LineItems``, ``Reference`` and ``DueDate``. Xero
        refuses to edit an invoice with a payment or a credit applied, one voided or deleted, and one dated on or
        before a lock date (a draft excepted), with its validation messages; nothing changes then."""
        try:
            payload = loads(body.decode("utf-8")) if body.strip() else None
        except (ValueError, UnicodeDecodeError) as exc:
            raise _post_data_error(f"Invalid JSON in the request body: {exc}") from None
        items = payload.get("Invoices") if isinstance(payload, dict) else None
        change = items[0] if isinstance(items, list) and items else payload
        if not isinstance(change, dict):
            raise _post_data_error("The request body must be an object with an Invoices array")
        unsupported = sorted(set(change) - {"InvoiceID", "LineItems", "Reference", "DueDate"})
        if unsupported:
            raise _api_exception(
                10, "ValidationException", f"The sandbox does not change {', '.join(unsupported)} of an invoice"
            )
        with self._lock, self._batch(tenant) as journal:
            stored = tenant.collections["Invoices"].rows.get(_guid(ident))
            if stored is None:
                raise _not_found()
            core = self._core(stored)
            messages: list[str] = []
            if core["Status"] in ("VOIDED", "DELETED"):
                messages.append("Invoice not of valid status for modification")
            elif "LineItems" in change and (core["AmountPaid"] > 0 or core["AmountCredited"] > 0):
                messages.append(INVOICE_HAS_PAYMENTS)
            if core["Status"] != "DRAFT":
                messages += self._locked(tenant, core["Date"])
            changes = {k: v for k, v in change.items() if k != "InvoiceID"}
            try:
                if messages:
                    raise XeroValidationError(*messages)
                changed = self._apply_changes(tenant, "Invoices", core, changes)
                if changed["AmountDue"] < 0:
                    raise XeroValidationError("The invoice total cannot be less than the amount paid or credited")
            except XeroValidationError as exc:
                self._rollback(tenant, journal)
                raise _api_exception(
                    10,
                    "ValidationException",
                    "A validation exception occurred",
                    [
                        {
                            **change,
                            "InvoiceID": core["InvoiceID"],
                            "ValidationErrors": [{"Message": m} for m in exc.messages],
                        }
                    ],
                ) from None
            return self._envelope("Invoices", [self._render(tenant, "Invoices", changed)])

    def _bank_transaction_status(self, tenant: _Tenant, ident: str, body: bytes) -> _Response:
        """POST /BankTransactions/{id} with ``Status`` DELETED: spend or receive money deleted (the sandbox
        supports no other update). A reconciled one, a transfer's leg, an overpayment or prepayment, or one dated
        on or before a lock date is refused as Xero refuses it."""
        try:
            payload = loads(body.decode("utf-8")) if body.strip() else None
        except (ValueError, UnicodeDecodeError) as exc:
            raise _post_data_error(f"Invalid JSON in the request body: {exc}") from None
        items = payload.get("BankTransactions") if isinstance(payload, dict) else None
        change = items[0] if isinstance(items, list) and items else payload
        if not isinstance(change, dict) or str(change.get("Status", "")).upper() != "DELETED":
            raise _api_exception(10, "ValidationException", "The sandbox only changes a bank transaction to DELETED")
        with self._lock, self._batch(tenant):
            stored = tenant.collections["BankTransactions"].rows.get(_guid(ident))
            if stored is None:
                raise _not_found()
            core = self._core(stored)
            messages: list[str] = []
            if core.get("Type") not in ("RECEIVE", "SPEND"):
                messages.append(f"A {core.get('Type')} bank transaction cannot be deleted this way")
            if _truthy(core.get("IsReconciled")):
                messages.append(
                    "This Bank Transaction cannot be edited as it has been reconciled with a Bank Statement."
                )
            messages += self._locked(tenant, core["Date"])
            if messages:
                raise _api_exception(
                    10,
                    "ValidationException",
                    "A validation exception occurred",
                    [
                        {
                            "BankTransactionID": core["BankTransactionID"],
                            "ValidationErrors": [{"Message": m} for m in messages],
                        }
                    ],
                )
            changed = self._store(
                tenant, "BankTransactions", {**core, "Status": "DELETED", "UpdatedDateUTC": self._now_ms()}
            )
            return self._envelope("BankTransactions", [self._render(tenant, "BankTransactions", changed)])

    def _idempotent(self, tenant: _Tenant, headers: Mapping[str, str], call: Callable[[], _Response]) -> _Response:
        key = headers.get("idempotency-key", "")
        if len(key) > IDEMPOTENCY_KEY_MAX:
            raise _api_exception(
                10, "ValidationException", f"The Idempotency-Key must be at most {IDEMPOTENCY_KEY_MAX} characters"
            )
        with self._lock:
            if key:
                cached = tenant.idempotent.get(key)
                if cached is not None:
                    return dataclasses.replace(cached, headers=list(cached.headers))
            try:
                response = call()
            except _HttpError as error:
                response = _Response(
                    error.status, dumps(error.body), headers=[("Xero-Correlation-Id", _new_id()), *error.headers]
                )
            if key and response.status < 500:
                tenant.idempotent[key] = dataclasses.replace(response, headers=list(response.headers))
            return response

    # --- control ----------------------------------------------------------------------------------

    def _control(self, method: str, path: str, body: bytes) -> _Response:
        if path == "/_sandbox/state":
            with self._lock:
                state = {
                    "tenants": {
                        tenant.id: {name: len(table.rows) for name, table in tenant.collections.items()}
                        for tenant in self._tenants.values()
                    },
                    "request_count": self.request_count,
                    "refresh_count": self.refresh_count,
                    "throttled_count": self.throttled_count,
                }
            return _Response(200, dumps(state))
        if path == "/_sandbox/tokens" and method == "POST":
            return _Response(200, dumps(self.issue_tokens()))
        if path == "/_sandbox/inject" and method == "POST":
            payload = loads(body or b"{}")
            try:
                self.inject(
                    str(payload.get("fault", "")),
                    int(payload.get("times", 1)),
                    path_contains=str(payload.get("path_contains", "")),
                )
            except ValueError as exc:
                return _Response(400, dumps({"error": str(exc)}))
            return _Response(200, dumps({"ok": True}))
        return _Response(404, b"Not Found", "text/plain")


def _not_found() -> _HttpError:
    body: JsonObj = {
        "Type": None,
        "Title": "NotFound",
        "Status": 404,
        "Detail": "The resource you're looking for cannot be found",
        "Instance": _new_id(),
        "Extensions": {},
    }
    return _HttpError(404, body)


def _int_param(value: str | None, name: str, default: int) -> int:
    if value is None or not value.strip():
        return default
    try:
        return int(value)
    except ValueError:
        raise _api_exception(10, "ValidationException", f"The {name} parameter must be an integer") from None


def main(argv: list[str] | None = None) -> None:
    """Run a seeded sandbox in the foreground: ``python -m connectors.xero.sandbox``."""
    import argparse

    from connectors.xero.seed import seed_organisation

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--contacts", type=int, default=200)
    parser.add_argument("--invoices", type=int, default=2000)
    parser.add_argument("--no-rate-limits", action="store_true")
    args = parser.parse_args(argv)
    sandbox = XeroSandbox(rate_limits=not args.no_rate_limits, record_exchanges=False)
    tenant = sandbox.tenant_ids[0]
    summary = seed_organisation(sandbox, tenant, contacts=args.contacts, invoices=args.invoices, today=sandbox.today())
    url = sandbox.start(args.host, args.port)
    tokens = sandbox.issue_tokens()
    print(f"Xero sandbox at {url} (tenant {tenant})")
    print(f"token url: {sandbox.token_url}")
    print(f"seeded: {summary}")
    print(f"refresh_token: {tokens['refresh_token']}")
    with contextlib.suppress(KeyboardInterrupt):
        threading.Event().wait()
    sandbox.stop()


if __name__ == "__main__":
    main()
