"""Realistic QuickBooks companies for the sandbox: tests, demos and benchmarks.

``seed_company`` builds a small, rich company through the sandbox's own
create logic (so totals, balances and payment links are consistent).
``seed_bulk`` loads compact one-line invoices directly, fast and lean enough
for a million invoices. ``mutate_some`` changes a few invoices the way an
accountant would between two syncs.

Everything is driven by ``random.Random(seed)``: the same arguments give the
same company.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal

from connectors.quickbooks.sandbox import (
    PACIFIC,
    QuickBooksSandbox,
    SandboxFault,
    wire_time,
)

__all__ = [
    "AGING_BUCKETS",
    "SeedSummary",
    "aging_bucket",
    "mutate_some",
    "seed_bulk",
    "seed_company",
]

AGING_BUCKETS: tuple[str, ...] = ("current", "1-30", "31-60", "61-90", "90+")
_BUCKET_WEIGHTS = (35, 25, 15, 10, 15)
_OVERDUE_RANGES = {
    "1-30": (1, 30),
    "31-60": (31, 60),
    "61-90": (61, 90),
    "90+": (91, 300),
}
_TERMS: tuple[tuple[str, str, int], ...] = (
    ("2", "Net 15", 15),
    ("3", "Net 30", 30),
    ("4", "Net 60", 60),
)
_CATALOG: tuple[tuple[str, str, Decimal], ...] = (
    ("1", "Services", Decimal("150.00")),
    ("2", "Hours", Decimal("95.00")),
    ("3", "Managed services", Decimal("1200.00")),
    ("4", "Support plan", Decimal("49.99")),
    ("5", "Hardware", Decimal("329.00")),
    ("6", "Licenses", Decimal("18.50")),
    ("7", "Onboarding", Decimal("750.00")),
)
_CENT = Decimal("0.01")
_DAY = 86400


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


_ADJECTIVES = _words(
    "Blue Ridge Cedar Summit Harbor Granite Maple Silver Redwood Northwind Coastal Prairie "
    "Lakeside Pioneer Golden Ironwood Highland Riverbend Oakmont Bright Evergreen Sterling "
    "Copper Willow Falcon Bayview Meadow Canyon Beacon Orchard"
)
_NOUNS = _words(
    "Dental Logistics Bakery Consulting Robotics Plumbing Analytics Studios Outfitters "
    "Builders Foods Clinics Media Labs Motors Architects Print Farms Legal Pharmacy Realty "
    "Fitness Optics Catering Marine Software Textiles Brewing Energy Veterinary"
)
_SUFFIXES = ("LLC", "Inc.", "Co.", "Group", "Partners", "Ltd.", "& Sons", "Holdings")
_GIVEN = _words(
    "Amy Bill Grace Peter Dylan Kathy Geeta Sonia Marco Priya Liam Noah Emma Olivia Ava "
    "Lucas Mia Ethan Zoe Omar Hana Ivan Chen Rosa"
)
_FAMILY = _words(
    "Lauterbach Lucchini Pariente Dukes Sollfrank Paulsen Kalapatapu Patel Rossi Nguyen "
    "Garcia Kim Novak Silva Okafor Tanaka Schmidt Moreau Jensen Murphy"
)
_CITIES: tuple[tuple[str, str, str], ...] = (
    ("Bayshore", "CA", "94326"),
    ("Half Moon Bay", "CA", "94213"),
    ("Middlefield", "CA", "94303"),
    ("Tucson", "AZ", "85719"),
    ("Portland", "OR", "97205"),
    ("Austin", "TX", "78701"),
    ("Denver", "CO", "80202"),
    ("Madison", "WI", "53703"),
    ("Raleigh", "NC", "27601"),
    ("Boise", "ID", "83702"),
)
_STREETS = ("Finch St.", "Ocean Dr.", "Main St.", "Court St.", "Easy St.", "Channing Ave.", "Elm Rd.")


@dataclass(frozen=True)
class SeedSummary:
    customers: int
    inactive_customers: int
    invoices: int
    """Invoices created (the deleted ones included)."""
    paid_in_full: int
    partially_paid: int
    voided: int
    deleted: int
    payments: int
    credit_memos: int
    open_balance: Decimal
    """Sum of the open balances of the live invoices."""
    aging: Mapping[str, int] = field(default_factory=dict)
    """Open invoices (Balance > 0) by days past their due date."""
    aging_amounts: Mapping[str, Decimal] = field(default_factory=dict)


def aging_bucket(due: date, today: date) -> str:
    """``current`` (not yet due), ``1-30``, ``31-60``, ``61-90`` or ``90+`` days overdue."""
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


def _company_names(rng: random.Random, count: int) -> Iterator[str]:
    seen: set[str] = set()
    for index in range(count):
        name = f"{rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)} {rng.choice(_SUFFIXES)}"
        if name.casefold() in seen:
            name = f"{name} #{index + 1}"
        seen.add(name.casefold())
        yield name


def _slug(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())[:24] or "customer"


def _day_start(day: date) -> float:
    return datetime.combine(day, time(0, 0), PACIFIC).timestamp()


def _between(rng: random.Random, low: float, high: float) -> float:
    return low if high <= low else rng.uniform(low, high)


def _overdue_days(rng: random.Random, bucket: str, terms: int) -> int:
    if bucket == "current":
        return -rng.randint(0, terms)
    low, high = _OVERDUE_RANGES[bucket]
    return rng.randint(low, high)


def _customer_payload(
    rng: random.Random, name: str, *, currency: str, created: float, updated: float
) -> dict[str, object]:
    given, family = rng.choice(_GIVEN), rng.choice(_FAMILY)
    city, region, postal = rng.choice(_CITIES)
    return {
        "DisplayName": name,
        "CompanyName": name,
        "GivenName": given,
        "FamilyName": family,
        "PrimaryEmailAddr": {"Address": f"billing@{_slug(name)}.example.com"},
        "PrimaryPhone": {"FreeFormNumber": f"({rng.randint(201, 989)}) 555-{rng.randint(1000, 9999)}"},
        "BillAddr": {
            "Line1": f"{rng.randint(1, 9999)} {rng.choice(_STREETS)}",
            "City": city,
            "CountrySubDivisionCode": region,
            "PostalCode": postal,
        },
        "CurrencyRef": {"value": currency},
        "MetaData": {"CreateTime": wire_time(created), "LastUpdatedTime": wire_time(updated)},
    }


def _ensure_accounts(sandbox: QuickBooksSandbox) -> str:
    """A minimal chart of accounts; returns the Undeposited Funds account id."""
    for account in sandbox.all("Account"):
        if account.get("Name") == "Undeposited Funds":
            return str(account["Id"])
    chart = (
        ("Checking", "Asset", "Bank", "Checking"),
        ("Undeposited Funds", "Asset", "Other Current Asset", "UndepositedFunds"),
        ("Accounts Receivable (A/R)", "Asset", "Accounts Receivable", "AccountsReceivable"),
        ("Services", "Revenue", "Income", "ServiceFeeIncome"),
        ("Merchant Fees", "Expense", "Expense", "BankCharges"),
    )
    undeposited = ""
    for name, classification, kind, sub in chart:
        stored = sandbox.put(
            "Account",
            {"Name": name, "Classification": classification, "AccountType": kind, "AccountSubType": sub},
        )
        if name == "Undeposited Funds":
            undeposited = str(stored["Id"])
    return undeposited


def seed_company(
    sandbox: QuickBooksSandbox,
    *,
    customers: int = 200,
    invoices: int = 2000,
    today: date,
    seed: int = 7,
) -> SeedSummary:
    """A realistic company: customers, aged invoices, payments, credit memos, voids and deletes.

    Invoices are spread over the due-date aging buckets relative to ``today``;
    about 25% are paid in full and 10% partially, by Payment objects linked
    to them, so every Balance is consistent. Object times are spread over the
    90 days before the sandbox clock's now.
    """
    rng = random.Random(seed)
    now = sandbox.now().timestamp()
    horizon = now - 90 * _DAY
    undeposited = _ensure_accounts(sandbox)

    inactive_count = round(customers * 0.05) if customers >= 10 else 0
    inactive = set(rng.sample(range(customers), inactive_count))
    active_ids: list[str] = []
    currencies: dict[str, str] = {}
    emails: dict[str, object] = {}
    for index, name in enumerate(_company_names(rng, customers)):
        roll = rng.random()
        currency = "CAD" if roll < 0.04 else "EUR" if roll < 0.07 else "USD"
        created = now - rng.uniform(120, 720) * _DAY
        updated = _between(rng, max(created, horizon), now)
        payload = _customer_payload(rng, name, currency=currency, created=created, updated=updated)
        if index in inactive:
            payload["Active"] = False
        stored = sandbox.put("Customer", payload)
        if index not in inactive:
            active_ids.append(str(stored["Id"]))
            currencies[str(stored["Id"])] = currency
            emails[str(stored["Id"])] = stored["PrimaryEmailAddr"]
    if not active_ids and invoices:
        raise ValueError("seed_company needs at least one active customer to invoice")

    weights = [rng.paretovariate(1.3) for _ in active_ids]
    invoice_ids: list[str] = []
    created_at: dict[str, float] = {}
    paid_full = partial = payments = 0
    open_ids: list[str] = []
    for _ in range(invoices):
        customer = rng.choices(active_ids, weights)[0]
        bucket = rng.choices(AGING_BUCKETS, _BUCKET_WEIGHTS)[0]
        term_id, term_name, term_days = rng.choice(_TERMS)
        due = today - timedelta(days=_overdue_days(rng, bucket, term_days))
        txn = due - timedelta(days=term_days)
        lines = []
        for _line in range(rng.randint(1, 4)):
            item_id, item_name, price = rng.choice(_CATALOG)
            qty = rng.randint(1, 12)
            lines.append(
                {
                    "Description": item_name,
                    "Amount": (price * qty).quantize(_CENT),
                    "DetailType": "SalesItemLineDetail",
                    "SalesItemLineDetail": {
                        "ItemRef": {"value": item_id, "name": item_name},
                        "UnitPrice": price,
                        "Qty": qty,
                    },
                }
            )
        created = min(_day_start(txn) + rng.uniform(8, 18) * 3600, now)
        updated = _between(rng, max(created, horizon), now)
        stored = sandbox.put(
            "Invoice",
            {
                "CustomerRef": {"value": customer},
                "CurrencyRef": {"value": currencies[customer]},
                "TxnDate": txn.isoformat(),
                "DueDate": due.isoformat(),
                "SalesTermRef": {"value": term_id, "name": term_name},
                "BillEmail": emails[customer],
                "Line": lines,
                "MetaData": {"CreateTime": wire_time(created), "LastUpdatedTime": wire_time(updated)},
            },
        )
        ident = str(stored["Id"])
        invoice_ids.append(ident)
        created_at[ident] = created
        total = Decimal(stored["TotalAmt"])
        roll = rng.random()
        if roll < 0.35:
            amount = total if roll < 0.25 else (total * Decimal(str(rng.uniform(0.2, 0.8)))).quantize(_CENT)
            amount = min(max(amount, _CENT), total)
            latest = min(_day_start(min(today, due + timedelta(days=45))) + 17 * 3600, now)
            paid_at = _between(rng, max(created, horizon), max(latest, created))
            paid_day = datetime.fromtimestamp(paid_at, PACIFIC).date()
            sandbox.put(
                "Payment",
                {
                    "CustomerRef": {"value": customer},
                    "CurrencyRef": {"value": currencies[customer]},
                    "TotalAmt": amount,
                    "TxnDate": paid_day.isoformat(),
                    "PaymentRefNum": f"CHK{rng.randint(1000, 99999)}",
                    "DepositToAccountRef": {"value": undeposited, "name": "Undeposited Funds"},
                    "Line": [{"Amount": amount, "LinkedTxn": [{"TxnId": ident, "TxnType": "Invoice"}]}],
                    "MetaData": {"CreateTime": wire_time(paid_at), "LastUpdatedTime": wire_time(paid_at)},
                },
            )
            payments += 1
            if amount == total:
                paid_full += 1
            else:
                partial += 1
        else:
            open_ids.append(ident)

    rng.shuffle(open_ids)
    special = round(invoices * 0.01) if invoices >= 50 else 0
    voided_ids, deleted_ids = open_ids[:special], open_ids[special : 2 * special]
    for ident in voided_ids:
        sandbox.void("Invoice", ident, at=_moment(_between(rng, max(created_at[ident], horizon), now)))
    for ident in deleted_ids:
        sandbox.delete("Invoice", ident, at=_moment(_between(rng, max(created_at[ident], horizon), now)))

    memos = max(1, invoices // 100) if invoices and active_ids else 0
    for _ in range(memos):
        customer = rng.choice(active_ids)
        created = now - rng.uniform(1, 80) * _DAY
        sandbox.put(
            "CreditMemo",
            {
                "CustomerRef": {"value": customer},
                "CurrencyRef": {"value": currencies[customer]},
                "TxnDate": datetime.fromtimestamp(created, PACIFIC).date().isoformat(),
                "Line": [
                    {
                        "Description": "Service credit",
                        "Amount": Decimal(rng.randint(2000, 30000)).scaleb(-2),
                        "DetailType": "SalesItemLineDetail",
                        "SalesItemLineDetail": {"ItemRef": {"value": "1", "name": "Services"}},
                    }
                ],
                "MetaData": {"CreateTime": wire_time(created), "LastUpdatedTime": wire_time(created)},
            },
        )

    aging = dict.fromkeys(AGING_BUCKETS, 0)
    amounts = dict.fromkeys(AGING_BUCKETS, Decimal("0.00"))
    open_balance = Decimal("0.00")
    for invoice in sandbox.all("Invoice"):
        balance = Decimal(invoice["Balance"])
        if balance > 0:
            bucket = aging_bucket(date.fromisoformat(invoice["DueDate"]), today)
            aging[bucket] += 1
            amounts[bucket] += balance
            open_balance += balance
    return SeedSummary(
        customers=customers,
        inactive_customers=len(inactive),
        invoices=invoices,
        paid_in_full=paid_full,
        partially_paid=partial,
        voided=len(voided_ids),
        deleted=len(deleted_ids),
        payments=payments,
        credit_memos=memos,
        open_balance=open_balance,
        aging=aging,
        aging_amounts=amounts,
    )


def _moment(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, PACIFIC)


def seed_bulk(
    sandbox: QuickBooksSandbox,
    *,
    customers: int,
    invoices: int,
    today: date,
    seed: int = 7,
) -> SeedSummary:
    """Many customers and compact one-line invoices without payments (benchmarks).

    Invoices go straight into the sandbox's compact store (well over 50,000 a
    second, a few hundred bytes each); they read back as ordinary invoices.
    """
    rng = random.Random(seed)
    now = sandbox.now().timestamp()
    horizon = now - 90 * _DAY
    customer_ids: list[str] = []
    currencies: list[str] = []
    for name in _company_names(rng, customers):
        created = now - rng.uniform(120, 720) * _DAY
        updated = _between(rng, max(created, horizon), now)
        stored = sandbox.put(
            "Customer",
            {
                "DisplayName": name,
                "CompanyName": name,
                "PrimaryEmailAddr": {"Address": f"billing@{_slug(name)}.example.com"},
                "CurrencyRef": {"value": "USD"},
                "MetaData": {"CreateTime": wire_time(created), "LastUpdatedTime": wire_time(updated)},
            },
        )
        customer_ids.append(str(stored["Id"]))
        currencies.append("USD")
    if invoices and not customer_ids:
        raise ValueError("seed_bulk needs at least one customer to invoice")

    # Tables indexed by random bits keep the per-invoice work to a few lookups.
    overdue_table: list[tuple[int, int, int]] = []  # (bucket index, overdue days, term days)
    for _ in range(4096):
        bucket_index = rng.choices(range(len(AGING_BUCKETS)), _BUCKET_WEIGHTS)[0]
        term_days = rng.choice(_TERMS)[2]
        overdue_table.append((bucket_index, _overdue_days(rng, AGING_BUCKETS[bucket_index], term_days), term_days))
    amounts = [Decimal(rng.randint(5_000, 500_000)).scaleb(-2) for _ in range(4096)]
    day_text: dict[int, str] = {}
    day_epoch: dict[int, int] = {}
    today_ordinal = today.toordinal()
    span = max(1, int(now - horizon))
    aging = [0] * len(AGING_BUCKETS)
    aging_amounts = [Decimal("0.00")] * len(AGING_BUCKETS)
    count_customers = len(customer_ids)
    bits = rng.getrandbits
    now_int = int(now)

    def text(ordinal: int) -> str:
        value = day_text.get(ordinal)
        if value is None:
            value = day_text[ordinal] = date.fromordinal(ordinal).isoformat()
            day_epoch[ordinal] = int(_day_start(date.fromordinal(ordinal))) + 9 * 3600
        return value

    def rows() -> Iterator[tuple[str, int, int, str, str, str, str, Decimal, str]]:
        for _ in range(invoices):
            r = bits(64)
            customer_index = (r & 0xFFFFF) % count_customers
            bucket_index, overdue, term_days = overdue_table[(r >> 20) & 0xFFF]
            amount = amounts[(r >> 32) & 0xFFF]
            due_ordinal = today_ordinal - overdue
            txn_ordinal = due_ordinal - term_days
            txn = text(txn_ordinal)
            due = text(due_ordinal)
            created = min(day_epoch[txn_ordinal], now_int)
            lut = int(horizon) + ((r >> 44) % span)
            if lut < created:
                lut = created
            aging[bucket_index] += 1
            aging_amounts[bucket_index] += amount
            yield (
                customer_ids[customer_index],
                created,
                lut,
                "",
                txn,
                due,
                currencies[customer_index],
                amount,
                "",
            )

    loaded = sandbox.load_compact_invoices(rows())
    return SeedSummary(
        customers=customers,
        inactive_customers=0,
        invoices=loaded,
        paid_in_full=0,
        partially_paid=0,
        voided=0,
        deleted=0,
        payments=0,
        credit_memos=0,
        open_balance=sum(aging_amounts, Decimal("0.00")),
        aging=dict(zip(AGING_BUCKETS, aging, strict=True)),
        aging_amounts=dict(zip(AGING_BUCKETS, aging_amounts, strict=True)),
    )


def mutate_some(sandbox: QuickBooksSandbox, n: int, *, seed: int) -> list[str]:
    """Change ``n`` open invoices (a partial payment, a new due date or an edited line).

    Returns the changed invoice Ids, in the order they were changed.
    """
    rng = random.Random(seed)
    ids = sandbox.ids("Invoice")
    changed: list[str] = []
    tried: set[str] = set()
    while len(changed) < n and len(tried) < len(ids):
        ident = rng.choice(ids)
        if ident in tried:
            continue
        tried.add(ident)
        invoice = sandbox.get("Invoice", ident)
        if invoice is None or invoice.get("PrivateNote") == "Voided":
            continue
        balance = Decimal(invoice["Balance"])
        if balance <= 0:
            continue
        action = rng.choice(("payment", "due_date", "line"))
        try:
            if action == "payment" and balance > _CENT:
                amount = (balance * Decimal(str(rng.uniform(0.1, 0.9)))).quantize(_CENT)
                amount = min(max(amount, _CENT), balance - _CENT)
                sandbox.put(
                    "Payment",
                    {
                        "CustomerRef": {"value": invoice["CustomerRef"]["value"]},
                        "CurrencyRef": invoice.get("CurrencyRef"),
                        "TotalAmt": amount,
                        "Line": [{"Amount": amount, "LinkedTxn": [{"TxnId": ident, "TxnType": "Invoice"}]}],
                    },
                )
            elif action == "due_date":
                due = date.fromisoformat(invoice["DueDate"]) + timedelta(days=rng.choice((7, 14, 30)))
                sandbox.update("Invoice", ident, {"DueDate": due.isoformat()})
            else:
                lines = [line for line in invoice["Line"] if line.get("DetailType") != "SubTotalLineDetail"]
                first = dict(lines[0])
                amount = Decimal(first["Amount"]) + Decimal(rng.randint(1000, 20000)).scaleb(-2)
                detail = dict(first.get("SalesItemLineDetail") or {})
                detail.pop("Qty", None)
                detail.pop("UnitPrice", None)
                first.update({"Amount": amount, "SalesItemLineDetail": detail})
                sandbox.update("Invoice", ident, {"Line": [first, *lines[1:]]})
        except SandboxFault:
            continue
        changed.append(ident)
    return changed
