"""``arsync demo``: the whole pull flow against a local QuickBooks sandbox.

Starts the sandbox on a free port, seeds a realistic company, writes a config
pointing at it, authorises through the sandbox's OAuth endpoints, runs a full
sync into SQLite, changes some invoices at the source, runs an incremental
sync and prints what the ledger now holds.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from dataclasses import replace
from datetime import date
from decimal import Decimal
from pathlib import Path

import requests
import sqlalchemy as sa
from rich.console import Console
from rich.table import Table
from sqlmodel import col

from arsync.bootstrap import App, bootstrap
from arsync.status import render_status
from collect.aging import BUCKETS, aging_report
from connectors.quickbooks.sandbox import QuickBooksSandbox
from connectors.quickbooks.seed import mutate_some, seed_company
from connectors.xero.client import XeroAuth, choose_organisation
from sync.db import upgrade
from sync.models import Invoice
from sync.store import TABLES

CONNECTION = "demo-qbo"


def write_sandbox_config(
    folder: Path,
    sandbox: QuickBooksSandbox,
    *,
    database_url: str,
    connection: str,
    tenant: str,
    display_name: str,
    log_format: str = "json",
    extra: Mapping[str, object] | None = None,
) -> Path:
    """A config (and its credentials file) with one QuickBooks connection pointing at ``sandbox``."""
    credentials = folder / "credentials.toml"
    credentials.write_text(
        f'[connections.{connection}]\nclient_id = "{sandbox.client_id}"\nclient_secret = "{sandbox.client_secret}"\n'
    )
    credentials.chmod(0o600)
    settings = "".join(f"{key} = {json.dumps(value)}\n" for key, value in (extra or {}).items())
    config = folder / "arsync.toml"
    config.write_text(
        f"""# A local QuickBooks sandbox; written by arsync.
[database]
url = "{database_url}"

[daemon]
log_format = "{log_format}"

[credentials]
file = "credentials.toml"

[tenants.{tenant}]
display_name = "{display_name}"
timezone = "America/Los_Angeles"
home_currency = "USD"

[tenants.{tenant}.connections.{connection}]
kind = "quickbooks"
environment = "sandbox"
redirect_uri = "http://127.0.0.1:8765/callback"
base_url = "{sandbox.api_base}"
token_url = "{sandbox.token_url}"
discovery_url = "{sandbox.discovery_url}"
{settings}"""
    )
    return config


def authorise(app: App, name: str) -> None:
    """The authorization-code flow, with the sandbox approving at once."""
    auth = app.auth(name)
    state = secrets.token_urlsafe(16)
    answer = requests.get(auth.authorize_url(state), allow_redirects=False, timeout=10)
    tokens = auth.exchange(answer.headers["Location"], state)
    if isinstance(auth, XeroAuth):
        chosen = choose_organisation(auth.organisations(tokens.access_token), tokens.account_id)
        assert chosen is not None, "the demo authorises exactly one organisation"
        tokens = replace(tokens, account_id=chosen.tenant_id)
    app.tokens(name).save(tokens)


def _matches(sandbox: QuickBooksSandbox, external_id: str, version: str | None, balance: Decimal) -> bool:
    source = sandbox.get("Invoice", external_id)
    return source is not None and source["SyncToken"] == version and Decimal(str(source["Balance"])) == balance


def run_demo(workdir: Path, *, customers: int, invoices: int, console: Console) -> int:
    workdir.mkdir(parents=True, exist_ok=True)
    for stale in workdir.glob("arsync.db*"):
        stale.unlink()
    today = date.today()
    sandbox = QuickBooksSandbox()
    sandbox.start()
    try:
        seeded = seed_company(sandbox, customers=customers, invoices=invoices, today=today)
        console.print(
            f"QuickBooks sandbox at {sandbox.url}: {seeded.customers} customers ({seeded.inactive_customers} "
            f"inactive), {seeded.invoices} invoices ({seeded.paid_in_full} paid, {seeded.partially_paid} partly "
            f"paid, {seeded.voided} voided, {seeded.deleted} deleted), {seeded.payments} payments, "
            f"{seeded.credit_memos} credit memos",
            highlight=False,
        )
        config = write_sandbox_config(
            workdir,
            sandbox,
            database_url="sqlite:///arsync.db",
            connection=CONNECTION,
            tenant="demo",
            display_name="Demo Landscaping Co",
            log_format="text",
        )
        app = bootstrap(config)
        upgrade(app.engine)
        app.register()
        authorise(app, CONNECTION)

        first = app.sync_engine(CONNECTION).sync(app.source(CONNECTION))
        console.print(first.describe(), highlight=False, markup=False)
        changed = set(mutate_some(sandbox, 25, seed=11))
        second = app.sync_engine(CONNECTION).sync(app.source(CONNECTION))
        console.print(second.describe(), highlight=False, markup=False)

        with app.sessions() as session:
            counts = Table(title="ledger")
            counts.add_column("entity")
            counts.add_column("rows", justify="right")
            for entity, table in TABLES.items():
                n = session.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
                counts.add_row(entity.value, str(n))
            console.print(counts)
            report = aging_report(session, [CONNECTION], today)
            aging = Table(title=f"open receivables by age on {today}")
            aging.add_column("bucket")
            aging.add_column("invoices", justify="right")
            for currency in report.currencies():
                aging.add_column(currency, justify="right")
            for bucket in BUCKETS:
                aging.add_row(
                    bucket,
                    str(report.counts[bucket]),
                    *(f"{report.balances[bucket].get(c, 0):,.2f}" for c in report.currencies()),
                )
            console.print(aging)
            rows = session.execute(
                sa.select(col(Invoice.external_id), col(Invoice.source_version), col(Invoice.balance)).where(
                    col(Invoice.connection_id) == CONNECTION,
                    col(Invoice.external_id).in_(changed),
                )
            ).all()
            in_step = sum(
                1 for external_id, version, balance in rows if _matches(sandbox, external_id, version, balance)
            )
            console.print(render_status(session, app.config, app.clock()))
        console.print(
            f"API calls: {first.api_calls} for the full sync, {second.api_calls} for the incremental; "
            f"{len(changed)} invoices changed at the source, {in_step} match the source in the ledger",
            highlight=False,
        )
        app.engine.dispose()
        ok = first.status == second.status == "ok" and in_step == len(changed)
        return 0 if ok else 1
    finally:
        sandbox.stop()
