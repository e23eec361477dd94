"""Synthetic QuickBooks Online invoice query pages, shaped like the real API's.

Each page is the JSON text of a ``/query`` answer holding ``PAGE`` invoices
(``{"QueryResponse": {"Invoice": [...], "startPosition": ..., "maxResults": ...}}``),
with what a real invoice carries: 1 to 3 ``SalesItemLineDetail`` lines and
the ``SubTotalLineDetail`` line QuickBooks appends, ``CurrencyRef``,
``CustomerRef``, ``SalesTermRef``, ``TxnDate``/``DueDate``, ``BillEmail``,
``BillAddr``, ``MetaData``, ``SyncToken``, a balance that is open, partly paid
or paid (with the payment in ``LinkedTxn``), now and then a customer memo.

Pages are generated from a seed and the page number alone, so the same page
can be built again for a second pass without keeping every page in memory.
Amounts are written as JSON numbers (``250.00``), as QuickBooks writes them.
"""

from __future__ import annotations

import random
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from connectors.quickbooks.sandbox import dumps

PAGE = 1000
_CENT = Decimal("0.01")
_CATALOG: tuple[tuple[str, str, Decimal], ...] = (
    ("1", "Services", Decimal("125.00")),
    ("2", "Hours", Decimal("95.00")),
    ("3", "Materials", Decimal("42.50")),
    ("4", "Support plan", Decimal("49.99")),
    ("5", "Hardware", Decimal("329.00")),
    ("6", "Licenses", Decimal("18.50")),
    ("7", "Onboarding", Decimal("750.00")),
)
_TERMS: tuple[tuple[str, str, int], ...] = (
    ("1", "Due on receipt", 0),
    ("2", "Net 15", 15),
    ("3", "Net 30", 30),
    ("4", "Net 60", 60),
)
_CURRENCIES: tuple[tuple[str, str], ...] = (
    ("USD", "United States Dollar"),
    ("USD", "United States Dollar"),
    ("USD", "United States Dollar"),
    ("CAD", "Canadian Dollar"),
    ("EUR", "Euro"),
)
_STREETS = ("Main St.", "Channing Ave.", "Finch St.", "Harbor Blvd.", "Oak Ln.", "Pine Rd.")
_CITIES = (("Boise", "ID", "83702"), ("Bayshore", "CA", "94326"), ("Austin", "TX", "78701"), ("Denver", "CO", "80202"))


def _stamp(day: date, seconds: int) -> str:
    return f"{day.isoformat()}T{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}-07:00"


def invoice(rng: random.Random, ident: int, customers: int, today: date) -> dict[str, Any]:
    """One QuickBooks invoice object (``Id`` = ``ident``)."""
    customer = rng.randint(1, customers)
    currency, currency_name = _CURRENCIES[customer % len(_CURRENCIES)]
    term_id, term_name, term_days = rng.choice(_TERMS)
    txn = today - timedelta(days=rng.randint(0, 400))
    due = txn + timedelta(days=term_days)
    created = rng.randint(8 * 3600, 18 * 3600)
    updated_day = min(today, txn + timedelta(days=rng.randint(0, 60)))
    lines: list[dict[str, Any]] = []
    total = Decimal("0.00")
    for number in range(1, rng.randint(1, 3) + 1):
        item_id, item_name, price = rng.choice(_CATALOG)
        qty = rng.randint(1, 12)
        amount = (price * qty).quantize(_CENT)
        total += amount
        lines.append(
            {
                "Id": str(number),
                "LineNum": number,
                "Description": item_name,
                "Amount": amount,
                "DetailType": "SalesItemLineDetail",
                "SalesItemLineDetail": {
                    "ItemRef": {"value": item_id, "name": item_name},
                    "UnitPrice": price,
                    "Qty": qty,
                    "TaxCodeRef": {"value": "NON"},
                },
            }
        )
    lines.append({"Amount": total, "DetailType": "SubTotalLineDetail", "SubTotalLineDetail": {}})
    roll = rng.random()
    linked: list[dict[str, str]] = []
    if roll < 0.25:
        balance = Decimal("0.00")
    elif roll < 0.35:
        balance = (total * Decimal(rng.randint(20, 80)) / 100).quantize(_CENT)
    else:
        balance = total
    if balance < total:
        linked.append({"TxnId": str(500_000 + ident), "TxnType": "Payment"})
    city, state, postal = rng.choice(_CITIES)
    obj: dict[str, Any] = {
        "AllowIPNPayment": False,
        "AllowOnlinePayment": False,
        "AllowOnlineCreditCardPayment": False,
        "AllowOnlineACHPayment": False,
        "domain": "QBO",
        "sparse": False,
        "Id": str(ident),
        "SyncToken": str(rng.randint(0, 3)),
        "MetaData": {"CreateTime": _stamp(txn, created), "LastUpdatedTime": _stamp(updated_day, created)},
        "DocNumber": str(1000 + ident),
        "TxnDate": txn.isoformat(),
        "CurrencyRef": {"value": currency, "name": currency_name},
        "LinkedTxn": linked,
        "Line": lines,
        "TxnTaxDetail": {"TotalTax": 0},
        "CustomerRef": {"value": str(customer), "name": f"Customer {customer} LLC"},
        "BillEmail": {"Address": f"billing@customer{customer}.example.com"},
        "BillAddr": {
            "Id": str(customer),
            "Line1": f"{rng.randint(10, 9999)} {rng.choice(_STREETS)}",
            "City": city,
            "CountrySubDivisionCode": state,
            "PostalCode": postal,
        },
        "SalesTermRef": {"value": term_id, "name": term_name},
        "DueDate": due.isoformat(),
        "TotalAmt": total,
        "ApplyTaxAfterDiscount": False,
        "PrintStatus": "NeedToPrint",
        "EmailStatus": "EmailSent" if rng.random() < 0.6 else "NotSet",
        "Balance": balance,
    }
    if rng.random() < 0.2:
        obj["CustomerMemo"] = {"value": "Thank you for your business."}
    return obj


def invoice_page(page: int, *, customers: int, today: date, seed: int = 7, size: int = PAGE) -> bytes:
    """The JSON text of query answer ``page`` (0-based): invoices ``page*size+1`` onwards."""
    rng = random.Random(seed * 1_000_003 + page)
    first = page * size + 1
    objects = [invoice(rng, first + n, customers, today) for n in range(size)]
    body = {
        "QueryResponse": {"Invoice": objects, "startPosition": first, "maxResults": len(objects)},
        "time": f"{today.isoformat()}T12:00:00.000-07:00",
    }
    return dumps(body)
