"""Xero Accounting API JSON payloads -> canonical records. Pure functions.

Payloads are dicts from ``json.loads(text, parse_float=Decimal)``. Xero sends
amounts as JSON numbers; its published examples quote them (``"40.00"``), so
``str`` and ``int`` amounts are read through their text too. A ``float``
amount means our caller parsed JSON without ``parse_float=Decimal``: that is a
bug in our code, not a bad payload, so it raises ``TypeError`` instead of
quarantining every record.

What is read, and why (checked against the response examples of Xero's
OpenAPI spec, ``refdata/xero/xero_accounting.yaml``):

* **Receivables only.** ``Invoices`` also lists bills (``Type: ACCPAY``),
  ``CreditNotes`` supplier credits (``ACCPAYCREDIT``), ``Payments`` bill
  payments (``ACCPAYPAYMENT``, ``APCREDITPAYMENT``, ...), ``Overpayments`` /
  ``Prepayments`` money paid out (``SPEND-*``). Those map to ``None``: not
  receivable, skipped, never quarantined.
* **Timestamps** come in two shapes: ``/Date(1573755038314+0000)/`` (epoch
  milliseconds, UTC, with an optional offset that only records the sender's
  zone) and ISO ``2019-11-14T18:10:38`` without an offset (UTC).
* **Version.** Xero has no version counter; a record's version is its
  ``UpdatedDateUTC`` in epoch milliseconds (exact digits of the ``/Date()/``
  value), so the store can tell an echo from a change.
* **Status.** Xero keeps voided and deleted documents and says so in
  ``Status`` (``VOIDED``, ``DELETED``); there are no delete stubs, so no
  :class:`~connectors.base.Tombstone` comes from here.
* **Draft credit notes** (``DRAFT`` / ``SUBMITTED``) map to ``None``: they
  are not credit the customer holds yet, and canonical credit notes have no
  draft status. Draft *invoices* map, with status ``draft``.
* **Elements with validation errors** (``HasValidationErrors: true``, or
  ``ValidationErrors`` in a 200 answer with ``summarizeErrors=false``) still
  map when their fields are usable; an element Xero did not save carries the
  nil GUID as its id and is quarantined.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from types import MappingProxyType
from typing import Any

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
    Record,
)
from connectors.values import MappingError, to_decimal

__all__ = [
    "COLLECTIONS",
    "ENTITY_OF_COLLECTION",
    "ID_FIELDS",
    "NIL_GUID",
    "MappingError",
    "MappingResult",
    "format_if_modified_since",
    "map_contact",
    "map_credit_note",
    "map_invoice",
    "map_list_response",
    "map_object",
    "map_overpayment",
    "map_payment",
    "map_prepayment",
    "page_info",
    "parse_xero_date",
    "parse_xero_datetime",
    "xero_version",
]

COLLECTIONS: Mapping[Entity, tuple[str, ...]] = MappingProxyType(
    {
        Entity.CUSTOMER: ("Contacts",),
        Entity.INVOICE: ("Invoices",),
        Entity.PAYMENT: ("Payments", "Overpayments", "Prepayments"),
        Entity.CREDIT_NOTE: ("CreditNotes",),
    }
)
"""The Xero collections (endpoint and JSON key) read for each entity, in pull order."""

ID_FIELDS: Mapping[str, str] = MappingProxyType(
    {
        "Contacts": "ContactID",
        "Invoices": "InvoiceID",
        "Payments": "PaymentID",
        "Overpayments": "OverpaymentID",
        "Prepayments": "PrepaymentID",
        "CreditNotes": "CreditNoteID",
    }
)
"""The id field of each collection's objects."""

ENTITY_OF_COLLECTION: Mapping[str, Entity] = MappingProxyType(
    {collection: entity for entity, collections in COLLECTIONS.items() for collection in collections}
)

MappingResult = tuple[list[Record], list[Quarantined], int]
"""Mapped records, quarantined payloads, and the number of raw objects read."""

NIL_GUID = "00000000-0000-0000-0000-000000000000"
"""The id Xero puts on an element it did not save (validation failure)."""

_KIND = MappingProxyType(
    {
        "Contacts": "Contact",
        "Invoices": "Invoice",
        "Payments": "Payment",
        "Overpayments": "Overpayment",
        "Prepayments": "Prepayment",
        "CreditNotes": "CreditNote",
    }
)

_MS_DATE = re.compile(r"/Date\((-?\d+)([+-])?(\d{2})?(\d{2})?\)/")
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_CURRENCY = re.compile(r"[A-Z]{3}")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Document types. Receivable ones map; payable ones are skipped (None).
_INVOICE_AR, _INVOICE_AP = frozenset({"ACCREC"}), frozenset({"ACCPAY"})
_CREDIT_AR, _CREDIT_AP = frozenset({"ACCRECCREDIT"}), frozenset({"ACCPAYCREDIT"})
_PAYMENT_AR = frozenset({"ACCRECPAYMENT", "ARCREDITPAYMENT", "AROVERPAYMENTPAYMENT", "ARPREPAYMENTPAYMENT"})
_PAYMENT_AP = frozenset({"ACCPAYPAYMENT", "APCREDITPAYMENT", "APOVERPAYMENTPAYMENT", "APPREPAYMENTPAYMENT"})
# The spec lists AROVERPAYMENT / ARPREPAYMENT (and APPREPAYMENT) beside the
# RECEIVE-/SPEND- types; the AR/AP prefix says which side they are on.
_OVERPAYMENT_AR = frozenset({"RECEIVE-OVERPAYMENT", "AROVERPAYMENT"})
_OVERPAYMENT_AP = frozenset({"SPEND-OVERPAYMENT", "APOVERPAYMENT"})
_PREPAYMENT_AR = frozenset({"RECEIVE-PREPAYMENT", "ARPREPAYMENT"})
_PREPAYMENT_AP = frozenset({"SPEND-PREPAYMENT", "APPREPAYMENT"})

_INVOICE_STATUS = MappingProxyType(
    {
        "DRAFT": InvoiceStatus.DRAFT,
        "SUBMITTED": InvoiceStatus.DRAFT,
        "PAID": InvoiceStatus.PAID,
        "VOIDED": InvoiceStatus.VOID,
        "DELETED": InvoiceStatus.DELETED,
    }
)
_DRAFT_STATUSES = frozenset({"DRAFT", "SUBMITTED"})
_LIVE_STATUSES = frozenset({"AUTHORISED", "PAID"})

# What a Payment's document is, by the Type Xero gives that document.
_PAYMENT_TARGETS: Mapping[str, Entity] = MappingProxyType(
    {
        "ACCREC": Entity.INVOICE,
        "ACCRECCREDIT": Entity.CREDIT_NOTE,
        "AROVERPAYMENT": Entity.PAYMENT,
        "ARPREPAYMENT": Entity.PAYMENT,
    }
)
# The document a receivable payment type settles when the Invoice carries no Type.
_DEFAULT_TARGET: Mapping[str, Entity] = MappingProxyType(
    {
        "ACCRECPAYMENT": Entity.INVOICE,
        "ARCREDITPAYMENT": Entity.CREDIT_NOTE,
        "AROVERPAYMENTPAYMENT": Entity.PAYMENT,
        "ARPREPAYMENTPAYMENT": Entity.PAYMENT,
    }
)


# --- scalars -------------------------------------------------------------------


def _ms_datetime(millis: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=millis)


def parse_xero_datetime(value: object) -> datetime:
    """A Xero timestamp as an aware UTC datetime.

    ``/Date(1573755038314)/`` and ``/Date(1573755038314+0000)/``: epoch
    milliseconds, which are UTC whatever the offset says (the offset only
    records the sender's zone). ISO strings (``2019-11-14T18:10:38``, with
    optional fraction) without an offset are UTC; one with an offset
    (``...Z``, ``...+13:00``) is converted to UTC.
    """
    if not isinstance(value, str):
        raise MappingError(f"timestamp {value!r} is not a string")
    text = value.strip()
    match = _MS_DATE.fullmatch(text)
    if match is not None:
        return _ms_datetime(int(match.group(1)))
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as exc:
        raise MappingError(f"timestamp {value!r} is neither /Date(ms)/ nor ISO 8601") from exc
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def parse_xero_date(value: object) -> date:
    """A Xero date (``Date``, ``DueDate``): ``/Date(1518134400000+0000)/`` or ``2019-02-08T00:00:00``.

    Xero sends a date as midnight UTC of that day. The rare ``/Date()/``
    value with a non-zero offset is read as the date in that offset.
    """
    if not isinstance(value, str):
        raise MappingError(f"date {value!r} is not a string")
    text = value.strip()
    match = _MS_DATE.fullmatch(text)
    if match is not None:
        instant = _ms_datetime(int(match.group(1)))
        sign, hours, minutes = match.group(2), match.group(3), match.group(4)
        if sign and hours:
            offset = timedelta(hours=int(hours), minutes=int(minutes or 0))
            instant += offset if sign == "+" else -offset
        return instant.date()
    head = text[:10]
    if _ISO_DATE.fullmatch(head) and (len(text) == 10 or text[10] in "T "):
        try:
            return date.fromisoformat(head)
        except ValueError as exc:
            raise MappingError(f"date {value!r} is not a calendar date") from exc
    raise MappingError(f"date {value!r} is neither /Date(ms)/ nor ISO 8601")


def format_if_modified_since(dt: datetime) -> str:
    """``If-Modified-Since`` for ``dt`` as Xero's spec types it: an RFC 3339 date-time in UTC.

    ``2019-11-14T18:10:38Z``. Sub-seconds are dropped (rounded down), which only widens the window.
    """
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError("format_if_modified_since needs a timezone-aware datetime")
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def xero_version(value: object) -> str | None:
    """``UpdatedDateUTC`` as epoch milliseconds (the record's version), or ``None``."""
    if not isinstance(value, str) or not value.strip():
        return None
    match = _MS_DATE.fullmatch(value.strip())
    if match is not None:
        return str(int(match.group(1)))
    delta = parse_xero_datetime(value) - _EPOCH
    return str(delta // timedelta(milliseconds=1))


# --- field helpers ---------------------------------------------------------------


def _id_text(raw: object) -> str | None:
    if not isinstance(raw, str):
        return None
    text = raw.strip()
    return text or None


def _where(kind: str, obj: Mapping[str, Any], id_field: str) -> str:
    ident = _id_text(obj.get(id_field))
    return f"{kind} {ident}" if ident else kind


def _require_id(obj: Mapping[str, Any], id_field: str, where: str) -> str:
    raw = obj.get(id_field)
    ident = _id_text(raw)
    if ident is None:
        problem = "missing" if raw in (None, "") else f"invalid ({raw!r})"
        raise MappingError(f"{where}: {id_field} {problem}")
    if ident == NIL_GUID:
        raise MappingError(f"{where}: {id_field} is the nil GUID (an element Xero did not save)")
    return ident


def _amount(obj: Mapping[str, Any], field: str, where: str, *, negative_ok: bool = False) -> Decimal:
    if obj.get(field) is None or obj.get(field) == "":
        raise MappingError(f"{where}: {field} missing")
    value = to_decimal(obj[field], where, field)
    if value < 0 and not negative_ok:
        raise MappingError(f"{where}: {field} is negative ({value})")
    return value


def _opt_amount(obj: Mapping[str, Any], field: str, where: str, *, negative_ok: bool = False) -> Decimal | None:
    if obj.get(field) is None or obj.get(field) == "":
        return None
    return _amount(obj, field, where, negative_ok=negative_ok)


def _rate(obj: Mapping[str, Any], where: str) -> Decimal | None:
    rate = _opt_amount(obj, "CurrencyRate", where)
    if rate is not None and rate == 0:
        raise MappingError(f"{where}: CurrencyRate is 0")
    return rate


def _text(obj: Mapping[str, Any], field: str) -> str | None:
    raw = obj.get(field)
    if raw is None or isinstance(raw, Mapping | list):
        return None
    text = str(raw).strip()
    return text or None


def _guid_or_none(value: str | None) -> str | None:
    """Xero writes the all-zero GUID where a reference is absent."""
    return None if value == NIL_GUID else value


def _object(obj: Mapping[str, Any], field: str, where: str) -> Mapping[str, Any] | None:
    raw = obj.get(field)
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise MappingError(f"{where}: {field} is not an object")
    return raw


def _objects(obj: Mapping[str, Any], field: str, where: str) -> list[Mapping[str, Any]]:
    raw = obj.get(field)
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise MappingError(f"{where}: {field} is not a list")
    for index, item in enumerate(raw, start=1):
        if not isinstance(item, Mapping):
            raise MappingError(f"{where}: {field} {index} is not an object")
    return raw


def _loose_objects(obj: Mapping[str, Any], field: str) -> list[Mapping[str, Any]]:
    """The objects of an optional detail list (``Phones``, ``ContactPersons``); other entries are skipped.

    Xero's own examples hold a ``null`` among a contact's ``Phones``: a
    detail entry like that must not quarantine the customer.
    """
    raw = obj.get(field)
    if not isinstance(raw, list):
        return []
    return [item for item in raw if isinstance(item, Mapping)]


def _opt_date(obj: Mapping[str, Any], field: str, where: str) -> date | None:
    """``field`` (``/Date()/``), or its ``<field>String`` twin (ISO) when it is absent."""
    for name in (field, f"{field}String"):
        raw = obj.get(name)
        if raw is None or raw == "":
            continue
        try:
            return parse_xero_date(raw)
        except MappingError as exc:
            raise MappingError(f"{where}: {name} {exc}") from exc
    return None


def _updated_at(obj: Mapping[str, Any], where: str) -> datetime | None:
    raw = obj.get("UpdatedDateUTC")
    if raw is None or raw == "":
        return None
    try:
        return parse_xero_datetime(raw)
    except MappingError as exc:
        raise MappingError(f"{where}: UpdatedDateUTC {exc}") from exc


def _currency(obj: Mapping[str, Any], field: str, where: str, *, required: bool) -> str | None:
    code = _text(obj, field)
    if code is None:
        if required:
            raise MappingError(f"{where}: {field} missing")
        return None
    if not _CURRENCY.fullmatch(code):
        raise MappingError(f"{where}: {field} {code!r} is not an ISO 4217 code")
    return code


def _contact_id(obj: Mapping[str, Any], where: str) -> str | None:
    contact = _object(obj, "Contact", where)
    if contact is None:
        return None
    return _id_text(contact.get("ContactID"))


def _type(obj: Mapping[str, Any], field: str, where: str) -> str:
    kind = _text(obj, field)
    if kind is None:
        raise MappingError(f"{where}: {field} missing")
    return kind


def _status(obj: Mapping[str, Any], where: str) -> str:
    status = _text(obj, "Status")
    if status is None:
        raise MappingError(f"{where}: Status missing")
    return status


def _unknown(where: str, field: str, value: str) -> MappingError:
    return MappingError(f"{where}: {field} {value!r} is not one Xero documents")


def _full_name(obj: Mapping[str, Any]) -> str | None:
    name = " ".join(part for part in (_text(obj, "FirstName"), _text(obj, "LastName")) if part)
    return name or None


# --- lines ---------------------------------------------------------------------


def _lines(obj: Mapping[str, Any], where: str) -> tuple[DocumentLine, ...]:
    """``LineItems`` as lines. ``LineAmount`` may be negative (discount lines).

    A line with neither ``LineAmount`` nor ``UnitAmount`` is a description-only
    line worth 0; one with a unit amount but no line amount is unusable.
    """
    result: list[DocumentLine] = []
    for index, raw in enumerate(_objects(obj, "LineItems", where), start=1):
        at = f"{where}: LineItems {index}"
        if raw.get("LineAmount") in (None, "") and raw.get("UnitAmount") in (None, ""):
            amount = Decimal(0)
        else:
            amount = _amount(raw, "LineAmount", at, negative_ok=True)
        result.append(
            DocumentLine(
                line_no=index,
                amount=amount,
                description=_text(raw, "Description"),
                quantity=_opt_amount(raw, "Quantity", at, negative_ok=True),
                unit_price=_opt_amount(raw, "UnitAmount", at, negative_ok=True),
                item_ref=_text(raw, "ItemCode"),
            )
        )
    return tuple(result)


# --- contacts --------------------------------------------------------------------


def _phone(obj: Mapping[str, Any]) -> str | None:
    """The ``DEFAULT`` phone as ``+<country> <area> <number>``, or ``None`` when it has no number."""
    for phone in _loose_objects(obj, "Phones"):
        if _text(phone, "PhoneType") != "DEFAULT":
            continue
        number = _text(phone, "PhoneNumber")
        if number is None:
            return None
        country = _text(phone, "PhoneCountryCode")
        if country is not None and not country.startswith("+"):
            country = f"+{country}"
        return " ".join(part for part in (country, _text(phone, "PhoneAreaCode"), number) if part)
    return None


def _receivable_balance(obj: Mapping[str, Any], where: str) -> Decimal | None:
    balances = _object(obj, "Balances", where)
    if balances is None:
        return None
    receivable = _object(balances, "AccountsReceivable", f"{where}: Balances")
    if receivable is None:
        return None
    return _opt_amount(receivable, "Outstanding", f"{where}: Balances.AccountsReceivable", negative_ok=True)


def map_contact(connection: str, obj: Mapping[str, Any]) -> CustomerRecord:
    """A Xero ``Contact`` as a :class:`CustomerRecord`.

    Contacts: ``EmailAddress`` (named with ``FirstName LastName``), then each
    of ``ContactPersons`` with ``IncludeInEmails`` true; an address without
    ``@`` or seen before (ignoring case) is dropped. ``ContactStatus``:
    ``ACTIVE`` (or absent) is active, ``ARCHIVED`` inactive, ``GDPRREQUEST``
    (the contact's personal data was erased on request) inactive and deleted.
    ``balance`` is ``Balances.AccountsReceivable.Outstanding`` when sent
    (Xero sends it only when asked for one contact or with ``summaryOnly``).
    """
    where = _where("Contact", obj, "ContactID")
    external_id = _require_id(obj, "ContactID", where)
    name = _text(obj, "Name")
    if name is None:
        raise MappingError(f"{where}: Name missing")
    status = _text(obj, "ContactStatus") or "ACTIVE"
    if status not in ("ACTIVE", "ARCHIVED", "GDPRREQUEST"):
        raise _unknown(where, "ContactStatus", status)

    contacts: list[Contact] = []
    seen: set[str] = set()

    def add(email: str | None, person: str | None) -> None:
        if email is None or "@" not in email or email.lower() in seen:
            return
        seen.add(email.lower())
        contacts.append(Contact(email=email, name=person))

    add(_text(obj, "EmailAddress"), _full_name(obj))
    for person in _loose_objects(obj, "ContactPersons"):
        if person.get("IncludeInEmails") is True:
            add(_text(person, "EmailAddress"), _full_name(person))

    return CustomerRecord(
        connection=connection,
        external_id=external_id,
        updated_at=_updated_at(obj, where),
        version=xero_version(obj.get("UpdatedDateUTC")),
        name=name,
        currency=_currency(obj, "DefaultCurrency", where, required=False),
        active=status == "ACTIVE",
        contacts=tuple(contacts),
        phone=_phone(obj),
        balance=_receivable_balance(obj, where),
        deleted=status == "GDPRREQUEST",
    )


# --- invoices --------------------------------------------------------------------


def invoice_status(status: str, amount_due: Decimal, settled: Decimal) -> InvoiceStatus | None:
    """The canonical status of a receivable invoice (``None``: not a status Xero documents).

    ``AUTHORISED`` is ``partially_paid`` when something was paid or credited
    (``settled`` = ``AmountPaid + AmountCredited``) and something is still
    due; otherwise ``open``.
    """
    if status == "AUTHORISED":
        return InvoiceStatus.PARTIALLY_PAID if settled > 0 and amount_due > 0 else InvoiceStatus.OPEN
    return _INVOICE_STATUS.get(status)


def map_invoice(connection: str, obj: Mapping[str, Any]) -> InvoiceRecord | None:
    """A Xero sales ``Invoice`` (``Type: ACCREC``) as an :class:`InvoiceRecord`; a bill is ``None``.

    ``balance`` is ``AmountDue``; ``memo`` is ``Reference``; Xero has no
    payment terms on an invoice (they live on the contact), so ``terms`` is
    ``None``.
    """
    where = _where("Invoice", obj, "InvoiceID")
    kind = _type(obj, "Type", where)
    if kind in _INVOICE_AP:
        return None
    if kind not in _INVOICE_AR:
        raise _unknown(where, "Type", kind)
    external_id = _require_id(obj, "InvoiceID", where)
    total = _amount(obj, "Total", where)
    due = _amount(obj, "AmountDue", where)
    if due > total:
        raise MappingError(f"{where}: AmountDue {due} exceeds Total {total}")
    paid = _opt_amount(obj, "AmountPaid", where) or Decimal(0)
    credited = _opt_amount(obj, "AmountCredited", where) or Decimal(0)
    raw_status = _status(obj, where)
    status = invoice_status(raw_status, due, paid + credited)
    if status is None:
        raise _unknown(where, "Status", raw_status)
    currency = _currency(obj, "CurrencyCode", where, required=True)
    assert currency is not None
    return InvoiceRecord(
        connection=connection,
        external_id=external_id,
        updated_at=_updated_at(obj, where),
        version=xero_version(obj.get("UpdatedDateUTC")),
        customer_external_id=_contact_id(obj, where),
        number=_text(obj, "InvoiceNumber"),
        issue_date=_opt_date(obj, "Date", where),
        due_date=_opt_date(obj, "DueDate", where),
        terms=None,
        currency=currency,
        total=total,
        balance=due,
        status=status,
        lines=_lines(obj, where),
        memo=_text(obj, "Reference"),
        currency_rate=_rate(obj, where),
        agreement_ref=_guid_or_none(_text(obj, "RepeatingInvoiceID")),
    )


# --- payments --------------------------------------------------------------------


def _payment_document(
    obj: Mapping[str, Any], payment_type: str, where: str
) -> tuple[Entity, str, str, Mapping[str, Any]]:
    """The document a payment settles: its entity, its id, the field it sits in and the object."""
    invoice = _object(obj, "Invoice", where)
    if invoice is not None and (invoice.get("InvoiceID") or invoice.get("Type")):
        doc_type = _text(invoice, "Type")
        if doc_type is None:
            entity = _DEFAULT_TARGET[payment_type]
        else:
            found = _PAYMENT_TARGETS.get(doc_type)
            if found is None:
                raise MappingError(
                    f"{where}: Invoice.Type {doc_type!r} is not receivable but PaymentType is {payment_type}"
                )
            entity = found
        ident = _id_text(invoice.get("InvoiceID"))
        if ident is None:
            raise MappingError(f"{where}: Invoice.InvoiceID missing")
        return entity, ident, "Invoice", invoice
    for field, id_field, entity in (
        ("CreditNote", "CreditNoteID", Entity.CREDIT_NOTE),
        ("Overpayment", "OverpaymentID", Entity.PAYMENT),
        ("Prepayment", "PrepaymentID", Entity.PAYMENT),
    ):
        document = _object(obj, field, where)
        if document is None:
            continue
        ident = _id_text(document.get(id_field))
        if ident is None:
            raise MappingError(f"{where}: {field}.{id_field} missing")
        return entity, ident, field, document
    raise MappingError(f"{where}: Invoice missing (no Invoice, CreditNote, Overpayment or Prepayment)")


def map_payment(connection: str, obj: Mapping[str, Any]) -> PaymentRecord | None:
    """A Xero receivable ``Payment`` as a :class:`PaymentRecord`; a payable one is ``None``.

    A Xero payment settles exactly one document for its whole ``Amount``
    (in that document's currency), so it has one application and nothing
    unapplied. The document is ``Invoice`` (whose ``Type`` says what it is:
    ``ACCREC`` an invoice, ``ACCRECCREDIT`` a credit note, ``AROVERPAYMENT``
    / ``ARPREPAYMENT`` an overpayment / prepayment), else ``CreditNote``,
    ``Overpayment`` or ``Prepayment``. ``ARCREDITPAYMENT``,
    ``AROVERPAYMENTPAYMENT`` and ``ARPREPAYMENTPAYMENT`` are *refunds*: cash
    paid back to the customer out of a credit note, overpayment or
    prepayment; they map the same way, their application naming the credit
    they drew on. Customer and currency come from the settled document.
    ``Status``: ``AUTHORISED`` is applied, ``DELETED`` deleted.
    """
    where = _where("Payment", obj, "PaymentID")
    payment_type = _type(obj, "PaymentType", where)
    if payment_type in _PAYMENT_AP:
        return None
    if payment_type not in _PAYMENT_AR:
        raise _unknown(where, "PaymentType", payment_type)
    external_id = _require_id(obj, "PaymentID", where)
    amount = _amount(obj, "Amount", where)
    raw_status = _status(obj, where)
    if raw_status == "AUTHORISED":
        status = DocumentStatus.APPLIED
    elif raw_status == "DELETED":
        status = DocumentStatus.DELETED
    else:
        raise _unknown(where, "Status", raw_status)
    entity, target, label, document = _payment_document(obj, payment_type, where)
    currency = _currency(document, "CurrencyCode", f"{where}: {label}", required=True)
    assert currency is not None
    return PaymentRecord(
        connection=connection,
        external_id=external_id,
        updated_at=_updated_at(obj, where),
        version=xero_version(obj.get("UpdatedDateUTC")),
        customer_external_id=_contact_id(document, f"{where}: {label}"),
        payment_date=_opt_date(obj, "Date", where),
        currency=currency,
        amount=amount,
        unapplied=Decimal(0),
        status=status,
        reference=_text(obj, "Reference"),
        applications=(PaymentApplication(entity, target, amount),) if amount > 0 else (),
        currency_rate=_rate(obj, where),
        kind="payment",
    )


def _remaining(obj: Mapping[str, Any], total: Decimal, where: str) -> Decimal:
    remaining = _amount(obj, "RemainingCredit", where)
    if remaining > total:
        raise MappingError(f"{where}: RemainingCredit {remaining} exceeds Total {total}")
    return remaining


def _credit_status(raw_status: str, remaining: Decimal, where: str) -> DocumentStatus:
    if raw_status in _LIVE_STATUSES:
        return DocumentStatus.OPEN if remaining > 0 else DocumentStatus.APPLIED
    if raw_status == "VOIDED":
        return DocumentStatus.VOID
    if raw_status == "DELETED":
        return DocumentStatus.DELETED
    raise _unknown(where, "Status", raw_status)


def _allocations(obj: Mapping[str, Any], total: Decimal, where: str) -> tuple[PaymentApplication, ...]:
    """``Allocations`` (to invoices) as applications; deleted and zero allocations are dropped."""
    result: list[PaymentApplication] = []
    for index, allocation in enumerate(_objects(obj, "Allocations", where), start=1):
        at = f"{where}: Allocations {index}"
        if allocation.get("IsDeleted") is True:
            continue
        invoice = _object(allocation, "Invoice", at)
        ident = _id_text(invoice.get("InvoiceID")) if invoice is not None else None
        if ident is None:
            raise MappingError(f"{at}: Invoice.InvoiceID missing")
        amount = _amount(allocation, "Amount", at)
        if amount > 0:
            result.append(PaymentApplication(Entity.INVOICE, ident, amount))
    allocated = sum((a.amount for a in result), Decimal(0))
    if allocated > total:
        raise MappingError(f"{where}: Allocations add up to {allocated}, more than Total {total}")
    return tuple(result)


def _unallocated_cash(
    connection: str,
    obj: Mapping[str, Any],
    *,
    kind: str,
    label: str,
    id_field: str,
    receivable: frozenset[str],
    payable: frozenset[str],
) -> PaymentRecord | None:
    where = _where(label, obj, id_field)
    doc_type = _type(obj, "Type", where)
    if doc_type in payable:
        return None
    if doc_type not in receivable:
        raise _unknown(where, "Type", doc_type)
    external_id = _require_id(obj, id_field, where)
    total = _amount(obj, "Total", where)
    remaining = _remaining(obj, total, where)
    status = _credit_status(_status(obj, where), remaining, where)
    currency = _currency(obj, "CurrencyCode", where, required=True)
    assert currency is not None
    return PaymentRecord(
        connection=connection,
        external_id=external_id,
        updated_at=_updated_at(obj, where),
        version=xero_version(obj.get("UpdatedDateUTC")),
        customer_external_id=_contact_id(obj, where),
        payment_date=_opt_date(obj, "Date", where),
        currency=currency,
        amount=total,
        unapplied=remaining,
        status=status,
        reference=_text(obj, "Reference"),
        applications=_allocations(obj, total, where),
        currency_rate=_rate(obj, where),
        kind=kind,
    )


def map_overpayment(connection: str, obj: Mapping[str, Any]) -> PaymentRecord | None:
    """A received ``Overpayment`` as a :class:`PaymentRecord` of kind ``overpayment``; a spent one is ``None``.

    ``amount`` is ``Total``, ``unapplied`` is ``RemainingCredit`` (refunds
    reduce it too, so ``Total - RemainingCredit`` may exceed the
    allocations), applications are the ``Allocations`` to invoices. Status:
    ``open`` while credit remains, ``applied`` at 0, ``VOIDED`` void.
    """
    return _unallocated_cash(
        connection,
        obj,
        kind="overpayment",
        label="Overpayment",
        id_field="OverpaymentID",
        receivable=_OVERPAYMENT_AR,
        payable=_OVERPAYMENT_AP,
    )


def map_prepayment(connection: str, obj: Mapping[str, Any]) -> PaymentRecord | None:
    """A received ``Prepayment`` as a :class:`PaymentRecord` of kind ``prepayment``; a spent one is ``None``.

    Read like :func:`map_overpayment`.
    """
    return _unallocated_cash(
        connection,
        obj,
        kind="prepayment",
        label="Prepayment",
        id_field="PrepaymentID",
        receivable=_PREPAYMENT_AR,
        payable=_PREPAYMENT_AP,
    )


# --- credit notes ----------------------------------------------------------------


def map_credit_note(connection: str, obj: Mapping[str, Any]) -> CreditNoteRecord | None:
    """A customer ``CreditNote`` (``Type: ACCRECCREDIT``) as a :class:`CreditNoteRecord`.

    A supplier credit (``ACCPAYCREDIT``) is ``None``, and so is a draft
    (``DRAFT`` / ``SUBMITTED``): it is not credit the customer holds until
    it is authorised. ``remaining`` is ``RemainingCredit``; ``AUTHORISED`` /
    ``PAID`` are ``open`` while credit remains and ``applied`` at 0;
    ``VOIDED`` is void, ``DELETED`` deleted.
    """
    where = _where("CreditNote", obj, "CreditNoteID")
    kind = _type(obj, "Type", where)
    if kind in _CREDIT_AP:
        return None
    if kind not in _CREDIT_AR:
        raise _unknown(where, "Type", kind)
    raw_status = _status(obj, where)
    if raw_status in _DRAFT_STATUSES:
        return None
    external_id = _require_id(obj, "CreditNoteID", where)
    total = _amount(obj, "Total", where)
    remaining = _remaining(obj, total, where)
    currency = _currency(obj, "CurrencyCode", where, required=True)
    assert currency is not None
    return CreditNoteRecord(
        connection=connection,
        external_id=external_id,
        updated_at=_updated_at(obj, where),
        version=xero_version(obj.get("UpdatedDateUTC")),
        customer_external_id=_contact_id(obj, where),
        number=_text(obj, "CreditNoteNumber"),
        issue_date=_opt_date(obj, "Date", where),
        currency=currency,
        total=total,
        remaining=remaining,
        status=_credit_status(raw_status, remaining, where),
        lines=_lines(obj, where),
        currency_rate=_rate(obj, where),
    )


# --- dispatch and list responses ---------------------------------------------------


def map_object(connection: str, collection: str, obj: object) -> Record | Quarantined | None:
    """Map one raw object of ``collection`` (``"Invoices"``, ...).

    ``None``: not a receivable (a bill, a supplier credit, money paid out,
    a draft credit note): skip it. Anything unmappable comes back
    quarantined with the reason. An unknown ``collection`` is our bug and
    raises ``KeyError``.
    """
    entity = ENTITY_OF_COLLECTION[collection]
    id_field = ID_FIELDS[collection]
    if not isinstance(obj, Mapping):
        return Quarantined(connection, entity, None, f"{_KIND[collection]}: payload is not an object", {"value": obj})
    try:
        match collection:
            case "Contacts":
                return map_contact(connection, obj)
            case "Invoices":
                return map_invoice(connection, obj)
            case "Payments":
                return map_payment(connection, obj)
            case "Overpayments":
                return map_overpayment(connection, obj)
            case "Prepayments":
                return map_prepayment(connection, obj)
            case "CreditNotes":
                return map_credit_note(connection, obj)
    except MappingError as exc:
        return Quarantined(connection, entity, _id_text(obj.get(id_field)), str(exc), obj)
    raise AssertionError(collection)  # pragma: no cover


def _map_all(connection: str, collection: str, objects: Iterable[object]) -> MappingResult:
    records: list[Record] = []
    quarantined: list[Quarantined] = []
    count = 0
    for obj in objects:
        count += 1
        mapped = map_object(connection, collection, obj)
        if isinstance(mapped, Quarantined):
            quarantined.append(mapped)
        elif mapped is not None:
            records.append(mapped)
    return records, quarantined, count


def map_list_response(connection: str, collection: str, body: Mapping[str, Any]) -> MappingResult:
    """Map ``{"Id": ..., "Status": "OK", "pagination": {...}, "Invoices": [...]}``.

    The count is every raw item of the page (skipped and quarantined ones
    included): a page with fewer items than the page size is the last. A
    body without the collection's list raises :class:`MappingError`.
    """
    if not isinstance(body, Mapping):
        raise MappingError(f"{collection} response: body is not an object")
    if collection not in ID_FIELDS:
        raise KeyError(collection)
    items = body.get(collection)
    if not isinstance(items, list):
        problem = "missing" if items is None else "not a list"
        raise MappingError(f"{collection} response: {collection} {problem}")
    return _map_all(connection, collection, items)


def page_info(body: Mapping[str, Any]) -> tuple[int, int] | None:
    """``(page, pageCount)`` from a list response's ``pagination`` block, if it has one."""
    block = body.get("pagination") if isinstance(body, Mapping) else None
    if not isinstance(block, Mapping):
        return None
    page, count = block.get("page"), block.get("pageCount")
    if isinstance(page, bool) or isinstance(count, bool) or not isinstance(page, int) or not isinstance(count, int):
        return None
    return page, count
