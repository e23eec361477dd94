"""``arsync demo``: the whole pull flow against local QuickBooks and Xero sandboxes.

Starts both sandboxes on free ports, seeds a realistic company in each (two
tenants: a landscaping firm on QuickBooks, an IT services firm on Xero),
writes a config pointing at them, authorises through the sandboxes' OAuth
endpoints, runs a full sync into SQLite, changes some invoices at each
source, runs an incremental sync and prints what the ledger now holds.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from pathlib import Path

import sqlalchemy as sa
from rich.console import Console
from rich.table import Table
from sqlmodel import col

from arsync.bootstrap import App, bootstrap
from arsync.sandboxes import (
    SandboxConnection,
    authorise,
    quickbooks_connection,
    write_sandbox_config,
    xero_connection,
)
from arsync.status import render_status
from collect.aging import BUCKETS, aging_report
from connectors.quickbooks import seed as qbo_seed
from connectors.quickbooks.sandbox import QuickBooksSandbox
from connectors.xero import seed as xero_seed
from connectors.xero.sandbox import XeroSandbox
from sync.db import upgrade
from sync.models import Invoice
from sync.store import TABLES


@dataclass(frozen=True)
class DemoCompany:
    connection: SandboxConnection
    seeded: str
    change_some: Callable[[int], list[str]]
    balance_at_source: Callable[[str], Decimal | None]


def _quickbooks(stack: ExitStack, customers: int, invoices: int, today: date) -> DemoCompany:
    sandbox = QuickBooksSandbox()
    sandbox.start()
    stack.callback(sandbox.stop)
    s = qbo_seed.seed_company(sandbox, customers=customers, invoices=invoices, today=today)

    def balance(external_id: str) -> Decimal | None:
        obj = sandbox.get("Invoice", external_id)
        return None if obj is None else Decimal(str(obj["Balance"]))

    return DemoCompany(
        quickbooks_connection(sandbox, tenant="landscaping", tenant_name="Demo Landscaping Co", name="demo-qbo"),
        f"QuickBooks sandbox at {sandbox.url}: {s.customers} customers, {s.invoices} invoices ({s.paid_in_full} "
        f"paid, {s.partially_paid} partly paid, {s.voided} voided, {s.deleted} deleted), {s.payments} payments, "
        f"{s.credit_memos} credit memos",
        lambda n: qbo_seed.mutate_some(sandbox, n, seed=11),
        balance,
    )


def _xero(stack: ExitStack, contacts: int, invoices: int, today: date) -> DemoCompany:
    sandbox = XeroSandbox()
    sandbox.start()
    stack.callback(sandbox.stop)
    tenant = sandbox.tenant_ids[0]
    s = xero_seed.seed_organisation(sandbox, tenant, contacts=contacts, invoices=invoices, today=today)

    def balance(external_id: str) -> Decimal | None:
        obj = sandbox.get(tenant, "Invoices", external_id)
        return None if obj is None else Decimal(str(obj["AmountDue"]))

    return DemoCompany(
        xero_connection(sandbox, tenant="itservices", tenant_name="Demo IT Services Ltd", name="demo-xero"),
        f"Xero sandbox at {sandbox.url}: {s.contacts} contacts, {s.invoices} sales invoices ({s.paid_in_full} paid, "
        f"{s.partially_paid} partly paid), {s.bills} bills (not receivables), {s.payments} payments, "
        f"{s.credit_notes} credit notes, {s.overpayments} overpayments, {s.prepayments} prepayments",
        lambda n: xero_seed.mutate_some(sandbox, tenant, n, seed=11),
        balance,
    )


def _aging_table(app: App, company: DemoCompany, today: date) -> Table:
    with app.sessions() as session:
        report = aging_report(session, [company.connection.name], today)
    table = Table(title=f"{company.connection.tenant_name}: open receivables by age on {today}")
    table.add_column("bucket")
    table.add_column("invoices", justify="right")
    for currency in report.currencies():
        table.add_column(currency, justify="right")
    for bucket in BUCKETS:
        table.add_row(
            bucket,
            str(report.counts[bucket]),
            *(f"{report.balances[bucket].get(c, 0):,.2f}" for c in report.currencies()),
        )
    return table


def _counts_table(app: App) -> Table:
    table = Table(title="ledger")
    table.add_column("entity")
    table.add_column("rows", justify="right")
    with app.sessions() as session:
        for entity, model in TABLES.items():
            n = session.execute(sa.select(sa.func.count()).select_from(model)).scalar_one()
            table.add_row(entity.value, str(n))
    return table


def _in_step(app: App, company: DemoCompany, changed: set[str]) -> int:
    """How many of the invoices changed at the source the ledger now holds at the source's balance."""
    with app.sessions() as session:
        rows = session.execute(
            sa.select(col(Invoice.external_id), col(Invoice.balance)).where(
                col(Invoice.connection_id) == company.connection.name, col(Invoice.external_id).in_(changed)
            )
        ).all()
    return sum(1 for external_id, balance in rows if company.balance_at_source(external_id) == balance)


def run_demo(workdir: Path, *, customers: int, invoices: int, console: Console) -> int:
    workdir.mkdir(parents=True, exist_ok=True)
    for stale in workdir.glob("arsync.db*"):
        stale.unlink()
    today = date.today()
    with ExitStack() as stack:
        companies = [
            _quickbooks(stack, customers, invoices, today),
            _xero(stack, customers, invoices, today),
        ]
        for company in companies:
            console.print(company.seeded, highlight=False)
        config = write_sandbox_config(
            workdir, [c.connection for c in companies], database_url="sqlite:///arsync.db", log_format="text"
        )
        app = bootstrap(config)
        stack.callback(app.engine.dispose)
        upgrade(app.engine)
        app.register()
        ok = True
        for company in companies:
            name = company.connection.name
            authorise(app, name)
            first = app.sync_engine(name).sync(app.source(name))
            console.print(first.describe(), highlight=False, markup=False)
            changed = set(company.change_some(25))
            second = app.sync_engine(name).sync(app.source(name))
            console.print(second.describe(), highlight=False, markup=False)
            in_step = _in_step(app, company, changed)
            console.print(
                f"{name}: {first.api_calls} API calls for the full sync, {second.api_calls} for the incremental; "
                f"{len(changed)} invoices changed at the source, {in_step} match the source in the ledger",
                highlight=False,
            )
            ok &= first.status == second.status == "ok" and in_step == len(changed)
        console.print(_counts_table(app))
        for company in companies:
            console.print(_aging_table(app, company, today))
        with app.sessions() as session:
            console.print(render_status(session, app.config, app.clock()))
        return 0 if ok else 1
