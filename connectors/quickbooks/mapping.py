"""QuickBooks Online v3 JSON payloads -> canonical records. Pure functions.

Payloads are dicts from ``json.loads(text, parse_float=Decimal)``. Amounts may
also arrive as ``int`` or ``str``; they become ``Decimal`` through their text.
A ``float`` amount means the caller parsed JSON without ``parse_float=Decimal``:
that is a bug in our code, not a bad payload, so it raises ``TypeError`` instead
of quarantining every record.

Signals taken from recorded QuickBooks traffic (``refdata/quickbooks``):

* **Void** (invoice, payment, credit memo): QuickBooks keeps the document, sets
  ``TotalAmt`` and ``Balance`` (and every line amount) to 0 and writes
  ``PrivateNote: "Voided"`` (``qbo_api-vcr/void/invoice.yml``). A document is
  void only when both hold: a user may type "Voided..." into a live
  document's private note, and a live document may be worth 0.
* **Delete**: the object disappears; CDC and the delete endpoint return a stub
  ``{"domain": "QBO", "status": "Deleted", "Id": "266"}`` (with
  ``MetaData.LastUpdatedTime`` in CDC), which maps to a :class:`Tombstone`.
* QuickBooks "deletes" a customer by making it inactive and appending
  ``" (deleted)"`` to its name (``deleted_customer.xml``); such a customer maps
  to ``active=False`` with the suffix removed from the name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime
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
    Tombstone,
)
from connectors.values import MappingError, to_decimal

__all__ = [
    "ENTITIES_BY_NAME",
    "ENTITY_NAMES",
    "MappingError",
    "MappingResult",
    "format_qbo_datetime",
    "is_delete_stub",
    "map_cdc_response",
    "map_credit_memo",
    "map_customer",
    "map_invoice",
    "map_object",
    "map_payment",
    "map_query_response",
    "map_tombstone",
    "parse_qbo_datetime",
]

ENTITY_NAMES: Mapping[Entity, str] = MappingProxyType(
    {
        Entity.CUSTOMER: "Customer",
        Entity.INVOICE: "Invoice",
        Entity.PAYMENT: "Payment",
        Entity.CREDIT_NOTE: "CreditMemo",
    }
)
"""The QuickBooks entity name (query ``FROM``, CDC ``entities=``, JSON key)."""

ENTITIES_BY_NAME: Mapping[str, Entity] = MappingProxyType({name: entity for entity, name in ENTITY_NAMES.items()})

MappingResult = tuple[list[Record], list[Quarantined], int]
"""Mapped records, quarantined payloads, and the number of raw objects read."""

VOID_NOTE = "Voided"
DELETED_SUFFIX = " (deleted)"

_CURRENCY = re.compile(r"[A-Z]{3}")
_DATE = re.compile(r"(\d{4}-\d{2}-\d{2})(?:Z|[+-]\d{2}:\d{2})?")
_EMAIL_SPLIT = re.compile(r"[,;]")

# Invoice / credit memo line kinds. SubTotalLineDetail repeats the sum of the
# lines above it and is dropped; a discount line carries a positive amount
# that QuickBooks subtracts, so it is negated to keep sum(lines) == net total.
_SUBTOTAL = "SubTotalLineDetail"
_DISCOUNT = "DiscountLineDetail"
_DESCRIPTION_ONLY = "DescriptionOnly"


# --- scalars -------------------------------------------------------------------


def parse_qbo_datetime(s: str) -> datetime:
    """Parse a QuickBooks timestamp (``2015-10-07T11:42:38-07:00``) into an aware datetime."""
    if not isinstance(s, str):
        raise MappingError(f"timestamp {s!r} is not a string")
    try:
        parsed = datetime.fromisoformat(s.strip())
    except ValueError as exc:
        raise MappingError(f"timestamp {s!r} is not ISO 8601") from exc
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise MappingError(f"timestamp {s!r} has no UTC offset")
    return parsed


def format_qbo_datetime(dt: datetime) -> str:
    """Format an aware datetime the way QuickBooks accepts it (``changedSince``, queries).

    Sub-second precision is dropped (rounded down), which only widens a
    ``>=`` window; the offset of ``dt`` is kept (``+00:00`` for UTC).
    """
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError("format_qbo_datetime needs a timezone-aware datetime")
    return dt.replace(microsecond=0).isoformat(timespec="seconds")


def _where(kind: str, obj: Mapping[str, Any]) -> str:
    ident = _opt_id(obj)
    return f"{kind} {ident}" if ident else kind


def _opt_id(obj: Mapping[str, Any]) -> str | None:
    raw = obj.get("Id")
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        return None
    text = str(raw).strip()
    return text or None


def _require_id(kind: str, obj: Mapping[str, Any]) -> str:
    ident = _opt_id(obj)
    if ident is None:
        problem = "missing" if obj.get("Id") in (None, "") else f"invalid ({obj.get('Id')!r})"
        raise MappingError(f"{kind}: Id {problem}")
    return ident


def _amount(obj: Mapping[str, Any], field: str, where: str, *, negative_ok: bool = False) -> Decimal:
    if obj.get(field) is None:
        raise MappingError(f"{where}: {field} missing")
    value = to_decimal(obj[field], where, field)
    if value < 0 and not negative_ok:
        raise MappingError(f"{where}: {field} is negative ({value})")
    return value


def _opt_amount(obj: Mapping[str, Any], field: str, where: str, *, negative_ok: bool = False) -> Decimal | None:
    if obj.get(field) is None:
        return None
    return _amount(obj, field, where, negative_ok=negative_ok)


def _opt_date(obj: Mapping[str, Any], field: str, where: str) -> date | None:
    raw = obj.get(field)
    if raw is None or raw == "":
        return None
    match = _DATE.fullmatch(raw.strip()) if isinstance(raw, str) else None
    if match is None:
        raise MappingError(f"{where}: {field} is not a date ({raw!r})")
    try:
        return date.fromisoformat(match.group(1))
    except ValueError as exc:
        raise MappingError(f"{where}: {field} is not a date ({raw!r})") from exc


def _updated_at(obj: Mapping[str, Any], where: str) -> datetime | None:
    meta = obj.get("MetaData")
    if meta is None:
        return None
    if not isinstance(meta, Mapping):
        raise MappingError(f"{where}: MetaData is not an object")
    raw = meta.get("LastUpdatedTime")
    if raw is None:
        return None
    try:
        return parse_qbo_datetime(raw)
    except MappingError as exc:
        raise MappingError(f"{where}: MetaData.LastUpdatedTime {exc}") from exc


def _version(obj: Mapping[str, Any]) -> str | None:
    raw = obj.get("SyncToken")
    if raw is None or isinstance(raw, bool):
        return None
    return str(raw)


def _text(obj: Mapping[str, Any], field: str) -> str | None:
    raw = obj.get(field)
    if raw is None:
        return None
    if isinstance(raw, Mapping):  # {"value": "..."} as in CustomerMemo
        raw = raw.get("value")
        if raw is None:
            return None
    text = str(raw).strip()
    return text or None


def _ref(obj: Mapping[str, Any], field: str, where: str, *, prefer_name: bool = False) -> str | None:
    """A ``{"value": id, "name": label}`` reference: its value (or its name first)."""
    raw = obj.get(field)
    if raw is None:
        return None
    if isinstance(raw, str | int) and not isinstance(raw, bool):
        text = str(raw).strip()
        return text or None
    if not isinstance(raw, Mapping):
        raise MappingError(f"{where}: {field} is not a reference ({raw!r})")
    keys = ("name", "value") if prefer_name else ("value",)
    for key in keys:
        value = raw.get(key)
        if value is not None and str(value).strip():
            return str(value).strip()
    return None


def _currency(obj: Mapping[str, Any], where: str, default: str | None) -> str | None:
    code = _ref(obj, "CurrencyRef", where)
    if code is None:
        return default
    if not _CURRENCY.fullmatch(code):
        raise MappingError(f"{where}: CurrencyRef {code!r} is not an ISO 4217 code")
    return code


def _bool(obj: Mapping[str, Any], field: str, where: str, default: bool) -> bool:
    raw = obj.get(field)
    if raw is None:
        return default
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in ("true", "false"):
        return raw.strip().lower() == "true"
    raise MappingError(f"{where}: {field} is not a boolean ({raw!r})")


def _is_void_note(obj: Mapping[str, Any]) -> bool:
    note = obj.get("PrivateNote")
    return isinstance(note, str) and note.strip().startswith(VOID_NOTE)


def _objects(value: object, where: str, field: str) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, Mapping):
        return [value]
    if isinstance(value, list):
        return value
    raise MappingError(f"{where}: {field} is not a list")


# --- lines ---------------------------------------------------------------------


def _lines(obj: Mapping[str, Any], where: str) -> tuple[DocumentLine, ...]:
    result: list[DocumentLine] = []
    for index, raw in enumerate(_objects(obj.get("Line"), where, "Line"), start=1):
        at = f"{where}: Line {index}"
        if not isinstance(raw, Mapping):
            raise MappingError(f"{at} is not an object")
        kind = raw.get("DetailType")
        if kind == _SUBTOTAL:
            continue
        if kind == _DESCRIPTION_ONLY and raw.get("Amount") is None:
            amount = Decimal(0)
        else:
            try:
                # QuickBooks allows negative item lines as long as the total is not.
                amount = _amount(raw, "Amount", where, negative_ok=True)
            except MappingError as exc:
                raise MappingError(f"{at} {str(exc).removeprefix(where + ': ')}") from exc
        if kind == _DISCOUNT:
            amount = -amount
        detail = raw.get(kind) if isinstance(kind, str) else None
        quantity = unit_price = None
        item = None
        if isinstance(detail, Mapping):
            quantity = _opt_amount(detail, "Qty", at, negative_ok=True)
            unit_price = _opt_amount(detail, "UnitPrice", at, negative_ok=True)
            item = _ref(detail, "ItemRef", at)
        result.append(
            DocumentLine(
                line_no=len(result) + 1,
                amount=amount,
                description=_text(raw, "Description"),
                quantity=quantity,
                unit_price=unit_price,
                item_ref=item,
            )
        )
    return tuple(result)


# --- entities ------------------------------------------------------------------


def map_customer(connection: str, obj: Mapping[str, Any]) -> CustomerRecord:
    """A QuickBooks ``Customer`` as a :class:`CustomerRecord`.

    ``PrimaryEmailAddr.Address`` may hold several addresses separated by
    commas; each becomes a :class:`Contact` (the first one carries the
    customer's given and family name). Tokens without an ``@`` are dropped.
    A negative ``Balance`` is kept: it is a credit the customer holds.
    """
    where = _where("Customer", obj)
    external_id = _require_id("Customer", obj)
    name = _text(obj, "DisplayName") or _text(obj, "FullyQualifiedName")
    if name is None:
        raise MappingError(f"{where}: DisplayName missing")
    active = _bool(obj, "Active", where, default=True)
    if not active and name.endswith(DELETED_SUFFIX) and len(name) > len(DELETED_SUFFIX):
        name = name.removesuffix(DELETED_SUFFIX).rstrip()

    contacts: list[Contact] = []
    email_field = obj.get("PrimaryEmailAddr")
    if email_field is not None:
        if not isinstance(email_field, Mapping):
            raise MappingError(f"{where}: PrimaryEmailAddr is not an object")
        person = " ".join(part for part in (_text(obj, "GivenName"), _text(obj, "FamilyName")) if part)
        seen: set[str] = set()
        for token in _EMAIL_SPLIT.split(str(email_field.get("Address") or "")):
            email = token.strip()
            if "@" not in email or email.lower() in seen:
                continue
            seen.add(email.lower())
            contacts.append(Contact(email=email, name=(person or None) if not contacts else None))

    phone_field = obj.get("PrimaryPhone")
    phone = _text(phone_field, "FreeFormNumber") if isinstance(phone_field, Mapping) else None

    return CustomerRecord(
        connection=connection,
        external_id=external_id,
        updated_at=_updated_at(obj, where),
        version=_version(obj),
        name=name,
        currency=_currency(obj, where, None),
        active=active,
        contacts=tuple(contacts),
        company_name=_text(obj, "CompanyName"),
        phone=phone,
        balance=_opt_amount(obj, "Balance", where, negative_ok=True),
        parent_external_id=_ref(obj, "ParentRef", where),
    )


def invoice_status(obj: Mapping[str, Any], total: Decimal, balance: Decimal) -> InvoiceStatus:
    """Status of an invoice from its amounts and the void note.

    QuickBooks has no draft invoices, and deletes arrive only as tombstones.
    A 0 balance is ``PAID`` (nothing left to collect), a 0-total invoice
    included unless it carries the void signal.
    """
    if total == 0 and balance == 0 and _is_void_note(obj):
        return InvoiceStatus.VOID
    if balance == 0:
        return InvoiceStatus.PAID
    if balance < total:
        return InvoiceStatus.PARTIALLY_PAID
    return InvoiceStatus.OPEN


def map_invoice(connection: str, obj: Mapping[str, Any], *, home_currency: str = "USD") -> InvoiceRecord:
    """A QuickBooks ``Invoice`` as an :class:`InvoiceRecord`.

    ``CurrencyRef`` is absent when the company has multicurrency off; the
    amounts are then in ``home_currency``. The memo is ``CustomerMemo``, or
    ``PrivateNote`` when there is no customer memo.
    """
    where = _where("Invoice", obj)
    external_id = _require_id("Invoice", obj)
    total = _amount(obj, "TotalAmt", where)
    balance = _amount(obj, "Balance", where)
    if balance > total:
        raise MappingError(f"{where}: Balance {balance} exceeds TotalAmt {total}")
    currency = _currency(obj, where, home_currency)
    assert currency is not None
    return InvoiceRecord(
        connection=connection,
        external_id=external_id,
        updated_at=_updated_at(obj, where),
        version=_version(obj),
        customer_external_id=_ref(obj, "CustomerRef", where),
        number=_text(obj, "DocNumber"),
        issue_date=_opt_date(obj, "TxnDate", where),
        due_date=_opt_date(obj, "DueDate", where),
        terms=_ref(obj, "SalesTermRef", where, prefer_name=True),
        currency=currency,
        total=total,
        balance=balance,
        status=invoice_status(obj, total, balance),
        lines=_lines(obj, where),
        memo=_text(obj, "CustomerMemo") or _text(obj, "PrivateNote"),
        agreement_ref=_ref(obj, "RecurDataRef", where),
    )


_APPLICATION_TARGETS: Mapping[str, Entity] = MappingProxyType(
    {"Invoice": Entity.INVOICE, "CreditMemo": Entity.CREDIT_NOTE}
)


def _applications(obj: Mapping[str, Any], where: str) -> tuple[PaymentApplication, ...]:
    result: list[PaymentApplication] = []
    for index, line in enumerate(_objects(obj.get("Line"), where, "Line"), start=1):
        at = f"{where}: Line {index}"
        if not isinstance(line, Mapping):
            raise MappingError(f"{at} is not an object")
        targets: list[tuple[Entity, str]] = []
        for linked in _objects(line.get("LinkedTxn"), at, "LinkedTxn"):
            if not isinstance(linked, Mapping):
                raise MappingError(f"{at}: LinkedTxn is not an object")
            entity = _APPLICATION_TARGETS.get(str(linked.get("TxnType")))
            if entity is None:
                continue
            txn_id = linked.get("TxnId")
            if txn_id is None or str(txn_id).strip() == "":
                raise MappingError(f"{at}: LinkedTxn.TxnId missing")
            targets.append((entity, str(txn_id).strip()))
        if not targets:
            continue
        if len(targets) > 1:
            raise MappingError(f"{at}: one Amount linked to {len(targets)} transactions")
        try:
            amount = _amount(line, "Amount", where)
        except MappingError as exc:
            raise MappingError(f"{at} {str(exc).removeprefix(where + ': ')}") from exc
        if amount == 0:
            continue
        entity, txn_id = targets[0]
        result.append(PaymentApplication(entity, txn_id, amount))
    return tuple(result)


def _document_status(obj: Mapping[str, Any], total: Decimal, left: Decimal) -> DocumentStatus:
    """Void (zero total with the "Voided" note), open while money is left to apply, else applied."""
    if total == 0 and _is_void_note(obj):
        return DocumentStatus.VOID
    return DocumentStatus.OPEN if left > 0 else DocumentStatus.APPLIED


def map_payment(connection: str, obj: Mapping[str, Any], *, home_currency: str = "USD") -> PaymentRecord:
    """A QuickBooks ``Payment`` (received from a customer) as a :class:`PaymentRecord`.

    Applications come from ``Line[].LinkedTxn[]`` (``Invoice`` and
    ``CreditMemo``), each for its line's ``Amount``; zero-amount links are
    dropped. A missing ``UnappliedAmt`` is computed from invoice links only
    when no credit memo is involved (credit memo lines offset invoice lines).
    """
    where = _where("Payment", obj)
    external_id = _require_id("Payment", obj)
    total = _amount(obj, "TotalAmt", where)
    applications = _applications(obj, where)
    if obj.get("UnappliedAmt") is not None:
        unapplied = _amount(obj, "UnappliedAmt", where)
    elif all(a.target_entity is Entity.INVOICE for a in applications):
        unapplied = total - sum((a.amount for a in applications), Decimal(0))
        if unapplied < 0:
            raise MappingError(f"{where}: UnappliedAmt missing and lines exceed TotalAmt")
    else:
        raise MappingError(f"{where}: UnappliedAmt missing")
    if unapplied > total:
        raise MappingError(f"{where}: UnappliedAmt {unapplied} exceeds TotalAmt {total}")
    status = _document_status(obj, total, unapplied)
    currency = _currency(obj, where, home_currency)
    assert currency is not None
    return PaymentRecord(
        connection=connection,
        external_id=external_id,
        updated_at=_updated_at(obj, where),
        version=_version(obj),
        customer_external_id=_ref(obj, "CustomerRef", where),
        payment_date=_opt_date(obj, "TxnDate", where),
        currency=currency,
        amount=total,
        unapplied=unapplied,
        status=status,
        reference=_text(obj, "PaymentRefNum"),
        method=_ref(obj, "PaymentMethodRef", where, prefer_name=True),
        applications=applications,
    )


def map_credit_memo(connection: str, obj: Mapping[str, Any], *, home_currency: str = "USD") -> CreditNoteRecord:
    """A QuickBooks ``CreditMemo`` as a :class:`CreditNoteRecord`.

    The credit left to use is ``RemainingCredit`` (``Balance`` when absent).
    Void: total 0 with the "Voided" note; otherwise ``OPEN`` while credit
    remains, ``APPLIED`` once it is used up.
    """
    where = _where("CreditMemo", obj)
    external_id = _require_id("CreditMemo", obj)
    total = _amount(obj, "TotalAmt", where)
    if obj.get("RemainingCredit") is not None:
        remaining = _amount(obj, "RemainingCredit", where)
    elif obj.get("Balance") is not None:
        remaining = _amount(obj, "Balance", where)
    else:
        raise MappingError(f"{where}: RemainingCredit missing")
    _opt_amount(obj, "Balance", where)  # validated even when RemainingCredit wins
    if remaining > total:
        raise MappingError(f"{where}: RemainingCredit {remaining} exceeds TotalAmt {total}")
    status = _document_status(obj, total, remaining)
    currency = _currency(obj, where, home_currency)
    assert currency is not None
    return CreditNoteRecord(
        connection=connection,
        external_id=external_id,
        updated_at=_updated_at(obj, where),
        version=_version(obj),
        customer_external_id=_ref(obj, "CustomerRef", where),
        number=_text(obj, "DocNumber"),
        issue_date=_opt_date(obj, "TxnDate", where),
        currency=currency,
        total=total,
        remaining=remaining,
        status=status,
        lines=_lines(obj, where),
    )


def is_delete_stub(obj: Mapping[str, Any]) -> bool:
    """A CDC / delete-response stub: ``{"status": "Deleted", "Id": ...}``."""
    status = obj.get("status")
    return isinstance(status, str) and status.lower() == "deleted"


def map_tombstone(connection: str, entity: Entity, obj: Mapping[str, Any]) -> Tombstone:
    """A delete stub as a :class:`Tombstone` (``updated_at`` from ``MetaData`` when sent)."""
    kind = ENTITY_NAMES[entity]
    external_id = _require_id(kind, obj)
    return Tombstone(
        connection=connection,
        entity=entity,
        external_id=external_id,
        updated_at=_updated_at(obj, _where(kind, obj)),
    )


def map_object(connection: str, entity: Entity, obj: object, *, home_currency: str = "USD") -> Record | Quarantined:
    """Map one raw object of ``entity``; anything unmappable comes back quarantined."""
    kind = ENTITY_NAMES[entity]
    if not isinstance(obj, Mapping):
        return Quarantined(connection, entity, None, f"{kind}: payload is not an object", {"value": obj})
    try:
        if is_delete_stub(obj):
            return map_tombstone(connection, entity, obj)
        match entity:
            case Entity.CUSTOMER:
                return map_customer(connection, obj)
            case Entity.INVOICE:
                return map_invoice(connection, obj, home_currency=home_currency)
            case Entity.PAYMENT:
                return map_payment(connection, obj, home_currency=home_currency)
            case Entity.CREDIT_NOTE:
                return map_credit_memo(connection, obj, home_currency=home_currency)
    except MappingError as exc:
        return Quarantined(connection, entity, _opt_id(obj), str(exc), obj)
    raise AssertionError(entity)  # pragma: no cover


def _map_all(connection: str, entity: Entity, objects: Iterable[object], home_currency: str) -> MappingResult:
    records: list[Record] = []
    quarantined: list[Quarantined] = []
    count = 0
    for obj in objects:
        count += 1
        mapped = map_object(connection, entity, obj, home_currency=home_currency)
        if isinstance(mapped, Quarantined):
            quarantined.append(mapped)
        else:
            records.append(mapped)
    return records, quarantined, count


def map_query_response(
    connection: str, entity: Entity, body: Mapping[str, Any], home_currency: str = "USD"
) -> MappingResult:
    """Map ``{"QueryResponse": {"Invoice": [...], "startPosition": 1, "maxResults": n}}``.

    An empty page is ``{"QueryResponse": {}}``. A body without a
    ``QueryResponse`` object raises :class:`MappingError`.
    """
    envelope = body.get("QueryResponse") if isinstance(body, Mapping) else None
    if not isinstance(envelope, Mapping):
        raise MappingError("query response: QueryResponse missing")
    name = ENTITY_NAMES[entity]
    objects = _objects(envelope.get(name), "QueryResponse", name)
    return _map_all(connection, entity, objects, home_currency)


def map_cdc_response(
    connection: str,
    body: Mapping[str, Any],
    entities: Sequence[Entity],
    home_currency: str = "USD",
) -> dict[Entity, MappingResult]:
    """Map ``{"CDCResponse": [{"QueryResponse": [{"Invoice": [...]}, ...]}]}``.

    Every entity in ``entities`` gets an entry (empty when the response has
    none); other entities in the response are ignored. Delete stubs become
    tombstones. The count per entity lets the caller see QuickBooks' cap of
    1000 objects per entity per response.
    """
    cdc = body.get("CDCResponse") if isinstance(body, Mapping) else None
    if not isinstance(cdc, list):
        raise MappingError("CDC response: CDCResponse missing")
    wanted = {ENTITY_NAMES[e]: e for e in entities}
    collected: dict[Entity, list[object]] = {e: [] for e in entities}
    for block in cdc:
        if not isinstance(block, Mapping):
            raise MappingError("CDC response: CDCResponse item is not an object")
        for query in _objects(block.get("QueryResponse"), "CDCResponse", "QueryResponse"):
            if not isinstance(query, Mapping):
                raise MappingError("CDC response: QueryResponse item is not an object")
            for name, entity in wanted.items():
                collected[entity].extend(_objects(query.get(name), "QueryResponse", name))
    return {entity: _map_all(connection, entity, objects, home_currency) for entity, objects in collected.items()}
