"""Realistic Xero organisations for the sandbox: tests, demos and benchmarks.

``seed_organisation`` builds a small, rich accounts-receivable ledger through
the sandbox's own create logic (so totals, ``AmountDue`` and links are
consistent): customers (a few archived) and suppliers, ACCREC invoices in
several currencies with due dates spread over the aging buckets, a few ACCPAY
bills that an AR client must ignore, full and partial payments, voided,
deleted and draft invoices, credit notes (some allocated), overpayments and
prepayments with remaining credit.

``seed_bulk`` loads compact one-line invoices directly, fast and lean enough
for 100,000 invoices and 20,000 contacts. ``mutate_some`` changes a few
invoices the way an accountant would between two syncs.

Everything is driven by ``random.Random(seed)``: the same arguments give the
same ledger (the GUIDs are drawn from the same generator).
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from connectors.xero.sandbox import DEFAULT_RATES, XeroSandbox, XeroValidationError, parse_ms_date

__all__ = [
    "AGING_BUCKETS",
    "SeedSummary",
    "aging_bucket",
    "mutate_some",
    "seed_bulk",
    "seed_organisation",
]

AGING_BUCKETS: tuple[str, ...] = ("current", "1-30", "31-60", "61-90", "90+")
_BUCKET_WEIGHTS = (35, 25, 15, 10, 15)
_OVERDUE_RANGES = {"1-30": (1, 30), "31-60": (31, 60), "61-90": (61, 90), "90+": (91, 300)}
_TERMS = (14, 30, 60)
_CATALOG: tuple[tuple[str, str, Decimal], ...] = (
    ("SVC", "Professional services", Decimal("150.00")),
    ("HRS", "Consulting hours", Decimal("95.00")),
    ("MSP", "Managed services (monthly)", Decimal("1200.00")),
    ("SUP", "Support plan", Decimal("49.99")),
    ("HW", "Hardware", Decimal("329.00")),
    ("LIC", "Software licences", Decimal("18.50")),
    ("ONB", "Onboarding", Decimal("750.00")),
)
_CENT = Decimal("0.01")
_DAY = 86_400


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


_ADJECTIVES = _words(
    "Blue Ridge Cedar Summit Harbor Granite Maple Silver Redwood Northwind Coastal Prairie Lakeside "
    "Pioneer Golden Ironwood Highland Riverbend Oakmont Bright Evergreen Sterling Copper Willow Falcon"
)
_NOUNS = _words(
    "Dental Logistics Bakery Consulting Robotics Plumbing Analytics Studios Outfitters Builders Foods "
    "Clinics Media Labs Motors Architects Print Farms Legal Pharmacy Realty Fitness Optics Catering"
)
_SUFFIXES = ("Ltd", "Limited", "LLC", "Inc.", "Co.", "Group", "Partners", "Holdings")
_GIVEN = _words("Amy Bill Grace Peter Dylan Kathy Geeta Sonia Marco Priya Liam Noah Emma Olivia Ava Lucas Mia")
_FAMILY = _words("Lauterbach Lucchini Pariente Dukes Sollfrank Paulsen Patel Rossi Nguyen Garcia Kim Novak Silva")
_CITIES: tuple[tuple[str, str, str, str], ...] = (
    ("Portland", "OR", "97205", "USA"),
    ("Austin", "TX", "78701", "USA"),
    ("Denver", "CO", "80202", "USA"),
    ("Madison", "WI", "53703", "USA"),
    ("Dublin", "", "D02 X285", "Ireland"),
    ("Manchester", "", "M1 1AE", "United Kingdom"),
    ("Lyon", "", "69002", "France"),
)


@dataclass(frozen=True)
class SeedSummary:
    contacts: int
    archived_contacts: int
    invoices: int
    """ACCREC invoices created (drafts, voided and deleted ones included)."""
    bills: int
    """ACCPAY bills (an AR client must ignore them)."""
    by_status: Mapping[str, int]
    """ACCREC invoices by final Status."""
    paid_in_full: int
    partially_paid: int
    payments: int
    credit_notes: int
    overpayments: int
    prepayments: int
    open_balance: Mapping[str, Decimal]
    """AmountDue of the AUTHORISED ACCREC invoices, by currency."""
    aging: Mapping[str, int] = field(default_factory=dict)
    """Open ACCREC invoices (AUTHORISED, AmountDue > 0) by days past their due date."""


def aging_bucket(due: date, today: date) -> str:
    overdue = (today - due).days
    if overdue <= 0:
        return "current"
    if overdue <= 30:
        return "1-30"
    if overdue <= 60:
        return "31-60"
    if overdue <= 90:
        return "61-90"
    return "90+"


def _overdue_days(rng: random.Random, bucket: str) -> int:
    if bucket == "current":
        return -rng.randint(0, 30)
    low, high = _OVERDUE_RANGES[bucket]
    return rng.randint(low, high)


def _company_names(rng: random.Random, count: int) -> Iterator[str]:
    seen: set[str] = set()
    while len(seen) < count:
        name = f"{rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)} {rng.choice(_SUFFIXES)}"
        if name in seen:
            name = f"{name} {len(seen) + 1}"
        seen.add(name)
        yield name


def _guid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _slug(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())[:24] or "customer"


def _rate(rng: random.Random, currency: str, base: str) -> Decimal:
    if currency == base:
        return Decimal(1)
    nominal = DEFAULT_RATES.get(currency, Decimal(1)) / DEFAULT_RATES.get(base, Decimal(1))
    return (nominal * Decimal(str(rng.uniform(0.97, 1.03)))).quantize(Decimal("0.000001"))


def _moment(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _contact_payload(
    rng: random.Random, name: str, currency: str, created: float, updated: float, *, archived: bool
) -> dict[str, Any]:
    given, family = rng.choice(_GIVEN), rng.choice(_FAMILY)
    city, region, postal, country = rng.choice(_CITIES)
    return {
        "ContactID": _guid(rng),
        "Name": name,
        "FirstName": given,
        "LastName": family,
        "EmailAddress": f"{given.lower()}.{family.lower()}@{_slug(name)}.example.com",
        "AccountNumber": f"C{rng.randint(10000, 99999)}",
        "ContactStatus": "ARCHIVED" if archived else "ACTIVE",
        "DefaultCurrency": currency,
        "Addresses": [
            {
                "AddressType": "POBOX",
                "AddressLine1": f"{rng.randint(1, 999)} Main Street",
                "City": city,
                "Region": region,
                "PostalCode": postal,
                "Country": country,
            },
            {"AddressType": "STREET", "City": "", "Region": "", "PostalCode": "", "Country": ""},
        ],
        "Phones": [
            {"PhoneType": "DEFAULT", "PhoneNumber": f"{rng.randint(200, 999)}-{rng.randint(1000, 9999)}"},
            {"PhoneType": "MOBILE", "PhoneNumber": ""},
        ],
        "PaymentTerms": {"Sales": {"Day": rng.choice(_TERMS), "Type": "DAYSAFTERBILLDATE"}},
        "UpdatedDateUTC": _moment(updated),
    }


def _between(rng: random.Random, low: float, high: float) -> float:
    return low if high <= low else rng.uniform(low, high)


def _day_start(day: date) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()


def seed_organisation(
    sandbox: XeroSandbox,
    tenant_id: str,
    *,
    contacts: int = 200,
    invoices: int = 2000,
    today: date,
    seed: int = 7,
    currencies: Sequence[str] = ("USD", "EUR", "GBP"),
) -> SeedSummary:
    """Fill one tenant with a realistic AR ledger (see the module docstring)."""
    if contacts < 1:
        raise ValueError("seed_organisation needs at least one contact")
    rng = random.Random(seed)
    base = sandbox.base_currency
    now = sandbox.now().timestamp()
    horizon = now - 90 * _DAY
    checking = {"Code": "090"}
    clearing = {"Code": "091"}

    supplier_count = max(1, contacts // 20) if contacts >= 5 else 0
    archived_count = round(contacts * 0.03) if contacts >= 30 else 0
    customer_ids: list[str] = []
    supplier_ids: list[str] = []
    currency_of: dict[str, str] = {}
    archived = set(rng.sample(range(supplier_count, contacts), archived_count)) if archived_count else set()
    for index, name in enumerate(_company_names(rng, contacts)):
        roll = rng.random()
        others = [c for c in currencies if c != base]
        currency = others[int(roll * 100) % len(others)] if others and roll < 0.15 else base
        created = now - rng.uniform(200, 900) * _DAY
        updated = _between(rng, max(created, horizon), now)
        payload = _contact_payload(rng, name, currency, created, updated, archived=index in archived)
        stored = sandbox.put(tenant_id, "Contacts", payload)
        ident = str(stored["ContactID"])
        currency_of[ident] = currency
        if index < supplier_count:
            supplier_ids.append(ident)
        elif index not in archived:
            customer_ids.append(ident)
    if not customer_ids:
        customer_ids = list(supplier_ids)

    weights = [rng.paretovariate(1.3) for _ in customer_ids]
    paid_full = partial = payments = bills = 0
    open_by_contact: dict[str, list[str]] = {}
    for _ in range(invoices):
        is_bill = bool(supplier_ids) and rng.random() < 0.04
        contact = rng.choice(supplier_ids) if is_bill else rng.choices(customer_ids, weights)[0]
        currency = currency_of[contact]
        bucket = rng.choices(AGING_BUCKETS, _BUCKET_WEIGHTS)[0]
        term = rng.choice(_TERMS)
        due = today - timedelta(days=_overdue_days(rng, bucket))
        issued = due - timedelta(days=term)
        taxed = rng.random() < 0.3
        lines = []
        for _line in range(rng.randint(1, 4)):
            code, description, price = rng.choice(_CATALOG)
            quantity = rng.randint(1, 12)
            amount = (price * quantity).quantize(_CENT)
            line: dict[str, Any] = {
                "ItemCode": code,
                "Description": description,
                "Quantity": Decimal(quantity),
                "UnitAmount": price,
                "AccountCode": "429" if is_bill else "200",
                "TaxType": "OUTPUT" if taxed else "NONE",
                "TaxAmount": (amount * Decimal("0.10")).quantize(_CENT) if taxed else Decimal("0.00"),
            }
            lines.append(line)
        created = min(_day_start(issued) + rng.uniform(8, 18) * 3600, now)
        roll = rng.random()
        status = "DRAFT" if roll < 0.03 else "DELETED" if roll < 0.045 else "AUTHORISED"
        stored = sandbox.put(
            tenant_id,
            "Invoices",
            {
                "InvoiceID": _guid(rng),
                "Type": "ACCPAY" if is_bill else "ACCREC",
                "InvoiceNumber": f"BILL-{rng.randint(10000, 99999)}" if is_bill else None,
                "Contact": {"ContactID": contact},
                "Date": issued,
                "DueDate": due,
                "Status": "DRAFT" if status == "DELETED" else status,
                "LineAmountTypes": "Exclusive",
                "LineItems": lines,
                "CurrencyCode": currency,
                "CurrencyRate": _rate(rng, currency, base),
                "Reference": f"PO-{rng.randint(1000, 9999)}" if rng.random() < 0.4 else "",
                "SentToContact": status == "AUTHORISED",
                "UpdatedDateUTC": _moment(created),
            },
        )
        ident = str(stored["InvoiceID"])
        total = Decimal(stored["Total"])
        if is_bill:
            bills += 1
            continue
        if status == "DELETED":
            sandbox.update(
                tenant_id,
                "Invoices",
                ident,
                {"Status": "DELETED", "UpdatedDateUTC": _moment(_between(rng, created, now))},
            )
            continue
        if status == "DRAFT":
            continue
        roll = rng.random()
        if roll < 0.02:
            sandbox.update(
                tenant_id,
                "Invoices",
                ident,
                {"Status": "VOIDED", "UpdatedDateUTC": _moment(_between(rng, created, now))},
            )
            continue
        if roll < 0.42:
            full = roll < 0.32
            amount = total if full else (total * Decimal(str(rng.uniform(0.2, 0.8)))).quantize(_CENT)
            amount = min(max(amount, _CENT), total)
            latest = min(_day_start(min(today, due + timedelta(days=45))) + 17 * 3600, now)
            paid_at = _between(rng, created, max(latest, created))
            sandbox.put(
                tenant_id,
                "Payments",
                {
                    "PaymentID": _guid(rng),
                    "Invoice": {"InvoiceID": ident},
                    "Account": checking if rng.random() < 0.8 else clearing,
                    "Amount": amount,
                    "Date": _moment(paid_at).date(),
                    "Reference": f"CHQ {rng.randint(1000, 99999)}" if rng.random() < 0.5 else "",
                    "UpdatedDateUTC": _moment(paid_at),
                },
            )
            payments += 1
            if amount == total:
                paid_full += 1
                continue
            partial += 1
        open_by_contact.setdefault(contact, []).append(ident)

    def open_invoice(contact: str, currency: str) -> dict[str, Any] | None:
        for ident in open_by_contact.get(contact, []):
            invoice = sandbox.get(tenant_id, "Invoices", ident)
            if (
                invoice
                and invoice["Status"] == "AUTHORISED"
                and invoice["CurrencyCode"] == currency
                and Decimal(invoice["AmountDue"]) > _CENT
            ):
                return invoice
        return None

    notes = max(1, invoices // 100) if invoices else 0
    for _ in range(notes):
        contact = rng.choice(customer_ids)
        currency = currency_of[contact]
        target = open_invoice(contact, currency)
        at = _between(rng, now - 60 * _DAY, now)
        amount = Decimal(rng.randint(2000, 30000)).scaleb(-2)
        allocations = []
        if target is not None and rng.random() < 0.6:
            due_amount = Decimal(target["AmountDue"])
            amount = min(amount, due_amount)
            applied = amount if rng.random() < 0.5 else (amount / 2).quantize(_CENT)
            allocations.append({"Invoice": {"InvoiceID": target["InvoiceID"]}, "Amount": applied})
        sandbox.put(
            tenant_id,
            "CreditNotes",
            {
                "CreditNoteID": _guid(rng),
                "Type": "ACCRECCREDIT",
                "Contact": {"ContactID": contact},
                "Date": _moment(at).date(),
                "Status": "AUTHORISED",
                "LineAmountTypes": "NoTax",
                "LineItems": [
                    {"Description": "Service credit", "Quantity": 1, "UnitAmount": amount, "AccountCode": "200"}
                ],
                "CurrencyCode": currency,
                "Reference": "Goodwill credit",
                "Allocations": allocations,
                "UpdatedDateUTC": _moment(at),
            },
        )

    extra = {
        "Overpayments": max(1, invoices // 200) if invoices else 0,
        "Prepayments": max(1, invoices // 200) if invoices else 0,
    }
    for name, count in extra.items():
        kind = "RECEIVE-OVERPAYMENT" if name == "Overpayments" else "RECEIVE-PREPAYMENT"
        for _ in range(count):
            contact = rng.choice(customer_ids)
            currency = currency_of[contact]
            at = _between(rng, now - 45 * _DAY, now - _DAY)
            amount = Decimal(rng.randint(5000, 50000)).scaleb(-2)
            transaction = sandbox.put(
                tenant_id,
                "BankTransactions",
                {
                    "BankTransactionID": _guid(rng),
                    "Type": kind,
                    "Contact": {"ContactID": contact},
                    "BankAccount": checking,
                    "Date": _moment(at).date(),
                    "LineAmountTypes": "NoTax",
                    "LineItems": [{"Description": "Payment received in advance", "LineAmount": amount}],
                    "CurrencyCode": currency,
                    "UpdatedDateUTC": _moment(at),
                },
            )
            credit_id = str(transaction["OverpaymentID" if name == "Overpayments" else "PrepaymentID"])
            target = open_invoice(contact, currency)
            if target is not None and rng.random() < 0.5:
                applied = min(amount, Decimal(target["AmountDue"])) / 2
                sandbox.allocate(
                    tenant_id,
                    name,
                    credit_id,
                    target["InvoiceID"],
                    applied.quantize(_CENT),
                    at=_moment(_between(rng, at, now)),
                )

    aging = dict.fromkeys(AGING_BUCKETS, 0)
    open_balance: dict[str, Decimal] = {}
    for invoice in sandbox.all(tenant_id, "Invoices"):
        if invoice["Type"] != "ACCREC" or invoice["Status"] != "AUTHORISED":
            continue
        due_amount = Decimal(invoice["AmountDue"])
        if due_amount <= 0:
            continue
        ms = parse_ms_date(invoice["DueDate"])
        assert ms is not None
        aging[aging_bucket(date(1970, 1, 1) + timedelta(milliseconds=ms), today)] += 1
        open_balance[invoice["CurrencyCode"]] = open_balance.get(invoice["CurrencyCode"], Decimal("0.00")) + due_amount
    final_status = dict.fromkeys(("DRAFT", "AUTHORISED", "PAID", "VOIDED", "DELETED"), 0)
    for invoice in sandbox.all(tenant_id, "Invoices"):
        if invoice["Type"] == "ACCREC":
            final_status[invoice["Status"]] = final_status.get(invoice["Status"], 0) + 1
    return SeedSummary(
        contacts=contacts,
        archived_contacts=len(archived),
        invoices=invoices - bills,
        bills=bills,
        by_status=final_status,
        paid_in_full=paid_full,
        partially_paid=partial,
        payments=payments,
        credit_notes=notes,
        overpayments=extra["Overpayments"],
        prepayments=extra["Prepayments"],
        open_balance=open_balance,
        aging=aging,
    )


def seed_bulk(
    sandbox: XeroSandbox,
    tenant_id: str,
    *,
    contacts: int = 20_000,
    invoices: int = 100_000,
    today: date,
    seed: int = 7,
) -> SeedSummary:
    """Many contacts and compact one-line invoices without payments (benchmarks).

    Invoices go straight into the sandbox's compact store (a few hundred bytes
    each); they read back as ordinary invoices. About 95% are AUTHORISED
    ACCREC, 2% DRAFT, 1% VOIDED and 2% ACCPAY bills.
    """
    if contacts < 1 and invoices:
        raise ValueError("seed_bulk needs at least one contact to invoice")
    rng = random.Random(seed)
    now = sandbox.now().timestamp()
    horizon = now - 90 * _DAY
    base = sandbox.base_currency
    contact_ids: list[str] = []
    for name in _company_names(rng, contacts):
        created = now - rng.uniform(200, 900) * _DAY
        stored = sandbox.put(
            tenant_id,
            "Contacts",
            {
                "ContactID": _guid(rng),
                "Name": name,
                "EmailAddress": f"billing@{_slug(name)}.example.com",
                "UpdatedDateUTC": _moment(_between(rng, max(created, horizon), now)),
            },
        )
        contact_ids.append(str(stored["ContactID"]))

    table: list[tuple[int, int]] = []  # (bucket index, days from issue to due date)
    for _ in range(4096):
        bucket_index = rng.choices(range(len(AGING_BUCKETS)), _BUCKET_WEIGHTS)[0]
        table.append((bucket_index, _overdue_days(rng, AGING_BUCKETS[bucket_index])))
    amounts = [Decimal(rng.randint(5_000, 500_000)).scaleb(-2) for _ in range(4096)]
    today_ordinal = today.toordinal()
    span = max(1, int((now - horizon) * 1000))
    start_ms = int(horizon * 1000)
    now_ms = int(now * 1000)
    aging = [0] * len(AGING_BUCKETS)
    open_total = Decimal("0.00")
    by_status = {"AUTHORISED": 0, "DRAFT": 0, "VOIDED": 0}
    bills = 0
    bits = rng.getrandbits
    one = Decimal(1)

    def rows() -> Iterator[tuple[Any, ...]]:
        nonlocal open_total, bills
        for _ in range(invoices):
            r = bits(64)
            contact = contact_ids[(r & 0xFFFFF) % len(contact_ids)]
            bucket_index, overdue = table[(r >> 20) & 0xFFF]
            total = amounts[(r >> 32) & 0xFFF]
            due = today_ordinal - overdue
            issued = due - _TERMS[(r >> 44) % 3]
            created_ms = min((issued - 719_163) * 86_400_000 + 9 * 3_600_000, now_ms)
            updated = max(created_ms, start_ms + (r >> 20) % span)
            pick = (r >> 50) % 100
            kind = "ACCPAY" if pick < 2 else "ACCREC"
            status = "DRAFT" if pick in (2, 3) else "VOIDED" if pick == 4 else "AUTHORISED"
            if kind == "ACCPAY":
                bills += 1
            else:
                by_status[status] += 1
                if status == "AUTHORISED":
                    aging[bucket_index] += 1
                    open_total += total
            yield ("", contact, issued, due, base, one, total, updated, status, kind, "")

    loaded = sandbox.load_compact_invoices(tenant_id, rows())
    return SeedSummary(
        contacts=contacts,
        archived_contacts=0,
        invoices=loaded - bills,
        bills=bills,
        by_status=by_status,
        paid_in_full=0,
        partially_paid=0,
        payments=0,
        credit_notes=0,
        overpayments=0,
        prepayments=0,
        open_balance={base: open_total},
        aging=dict(zip(AGING_BUCKETS, aging, strict=True)),
    )


def mutate_some(sandbox: XeroSandbox, tenant_id: str, n: int, *, seed: int) -> list[str]:
    """Change ``n`` open ACCREC invoices: a partial payment, a new due date or a new reference.

    Returns the changed InvoiceIDs in the order they were changed.
    """
    rng = random.Random(seed)
    ids = sandbox.ids(tenant_id, "Invoices")
    changed: list[str] = []
    tried: set[str] = set()
    while len(changed) < n and len(tried) < len(ids):
        ident = rng.choice(ids)
        if ident in tried:
            continue
        tried.add(ident)
        invoice = sandbox.get(tenant_id, "Invoices", ident)
        if invoice is None or invoice["Type"] != "ACCREC" or invoice["Status"] != "AUTHORISED":
            continue
        due_amount = Decimal(invoice["AmountDue"])
        if due_amount <= _CENT:
            continue
        action = rng.choice(("payment", "due_date", "reference"))
        try:
            if action == "payment":
                amount = (due_amount * Decimal(str(rng.uniform(0.1, 0.9)))).quantize(_CENT)
                amount = min(max(amount, _CENT), due_amount - _CENT)
                sandbox.put(
                    tenant_id,
                    "Payments",
                    {"Invoice": {"InvoiceID": ident}, "Account": {"Code": "090"}, "Amount": amount},
                )
            elif action == "due_date":
                ms = parse_ms_date(invoice["DueDate"])
                assert ms is not None
                due = date(1970, 1, 1) + timedelta(milliseconds=ms)
                sandbox.update(tenant_id, "Invoices", ident, {"DueDate": due + timedelta(days=rng.choice((7, 14, 30)))})
            else:
                sandbox.update(tenant_id, "Invoices", ident, {"Reference": f"PO-{rng.randint(10000, 99999)}"})
        except XeroValidationError:
            continue
        changed.append(ident)
    return changed
