"""Write-back's accounts checked against the ledger's chart of accounts before anything is posted."""

from __future__ import annotations

from collections.abc import Sequence

from connectors.base import AccountType, LedgerAccount
from reconcile.postings import Accounts

NEEDS: tuple[tuple[str, str, AccountType], ...] = (
    ("clearing", "clearing_account", AccountType.BANK),
    ("bank", "bank_account", AccountType.BANK),
    ("fees", "fee_account", AccountType.EXPENSE),
    ("surcharges", "surcharge_account", AccountType.INCOME),
    ("refunds", "refund_account", AccountType.INCOME),
    ("late_fee_account", "late_fee_account", AccountType.INCOME),
    ("collections_fee_account", "collections_fee_account", AccountType.EXPENSE),
)
"""(field of :class:`Accounts`, its config key, the type it must have in the ledger). ``refund_item`` and
``late_fee_item`` are QuickBooks Items and ``collections_vendor`` a Vendor, not accounts: a transaction naming
one QuickBooks does not have is parked with its fault."""


def account_problems(connection: str, accounts: Accounts, chart: Sequence[LedgerAccount]) -> list[str]:
    """What is wrong with ``accounts`` in ``chart``: each message names the config key and the account."""
    by_id = {account.ident: account for account in chart}
    problems = []
    for field_name, key, wanted in NEEDS:
        ident = getattr(accounts, field_name)
        if ident is None:
            continue
        where = f"tenants.*.connections.{connection}.writeback.{key}"
        found = by_id.get(ident)
        if found is None:
            problems.append(f"{where}: the ledger has no account {ident!r}")
        elif not found.active:
            problems.append(f"{where}: account {ident!r} ({found.name}) is inactive in the ledger")
        elif found.type != wanted:
            problems.append(
                f"{where}: account {ident!r} ({found.name}) is {found.type.value}, write-back needs {wanted.value}"
            )
    return problems
