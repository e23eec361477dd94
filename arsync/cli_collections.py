"""``arsync collections``: hand long-overdue invoices to a collections agency, and follow them.

* ``eligible``: the invoices that may be handed over (old enough, open, not disputed, not placed).
* ``submit --invoice ID --notes TEXT``: place one: the placement, the package and the upfront fee are
  journaled together, then the package is sent to the agency (signed webhook, or email).
* ``list``: the tenant's placements and how they stand.
* ``recovered --invoice ID --amount X``: the agency reports money it recovered (books its success fee).
* ``update``: notice recoveries in the ledger's payments and send packages still waiting.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from arsync.bootstrap import App
from arsync.cli_support import DEFAULT_CONFIG, ConfigOption, console, err, fail, open_app
from arsync.config import TenantConfig
from arsync.config_dunning import DunningConfig
from collect.collections import (
    KIND,
    CollectionsError,
    CollectionsSender,
    collections_key,
    eligible,
    notice_recoveries,
    placements,
    record_recovery,
    submit,
)
from collect.dunning_policy import CollectionsSettings
from collect.mail import SmtpSender, Templates
from collect.marks import LedgerRefError, resolve_invoice
from connectors.values import show_money
from sync import journal

collections_app = typer.Typer(
    no_args_is_help=True, help="Collections: hand long-overdue invoices to an agency and follow them."
)

TenantOption = Annotated[
    str | None, typer.Option("--tenant", help="The tenant (optional when only one has a dunning section).")
]
FormatOption = Annotated[str, typer.Option("--format", help="table or json.")]
InvoiceOption = Annotated[str, typer.Option("--invoice", help="Invoice id or number ([CONNECTION:]ID).")]


@dataclass(frozen=True)
class _Context:
    app: App
    tenant: TenantConfig
    dunning: DunningConfig

    @property
    def connections(self) -> list[str]:
        return [c.name for c in self.tenant.connections]

    @property
    def settings(self) -> CollectionsSettings:
        return self.dunning.policy.collections

    def today(self) -> date:
        return self.app.clock().astimezone(self.tenant.tzinfo).date()

    def sender(self) -> CollectionsSender:
        mail = SmtpSender(self.dunning.mail.settings(), clock=self.app.clock) if self.dunning.mail else None
        return CollectionsSender(
            self.app.sessions, self.settings, self.app.clock, mail=mail, templates=Templates(self.dunning.branding)
        )


def _choose(application: App, tenant: str | None) -> tuple[TenantConfig, DunningConfig]:
    """The named tenant, or the only one with a dunning section."""
    if tenant is not None:
        chosen = application.config.tenant(tenant)
        if chosen.dunning is None:
            raise KeyError(f"tenant {tenant!r} has no [tenants.{tenant}.dunning] section: collections is not set up")
        return chosen, chosen.dunning
    duns = [t for t in application.config.tenants if t.dunning is not None]
    if not duns:
        raise KeyError("no tenant has a dunning section: configure [tenants.T.dunning.collections]")
    if len(duns) > 1:
        raise KeyError(f"several tenants dun ({', '.join(t.name for t in duns)}): name one with --tenant")
    assert duns[0].dunning is not None
    return duns[0], duns[0].dunning


@contextmanager
def _collections(config: Path, tenant: str | None) -> Iterator[_Context]:
    with open_app(config) as application:
        try:
            chosen, dunning = _choose(application, tenant)
        except KeyError as exc:
            raise fail(str(exc.args[0])) from None
        try:
            yield _Context(application, chosen, dunning)
        except (CollectionsError, LedgerRefError) as exc:
            raise fail(str(exc)) from None


def _check_format(output: str) -> None:
    if output not in ("table", "json"):
        raise fail(f"--format must be table or json, not {output!r}")


def _amount(value: Decimal, currency: str) -> str:
    return show_money(value, currency).removesuffix(f" {currency}")


def _send(ctx: _Context) -> list[tuple[str, journal.Outcome]]:
    """Send the tenant's packages that are due (the one just submitted among them)."""
    owner = f"cli:{ctx.tenant.name}"
    return journal.run_due(ctx.app.sessions, KIND, owner, ctx.sender(), ctx.app.clock, tenant=ctx.tenant.name)


def _report(outcomes: list[tuple[str, journal.Outcome]]) -> bool:
    """Print each outcome; True when one failed."""
    failed = False
    for key, outcome in outcomes:
        match outcome:
            case journal.Done(_, result):
                channel = (result or {}).get("channel", "")
                console.print(f"{key}: sent to the agency by {channel}", highlight=False, markup=False)
            case journal.RetryAt(when, error):
                console.print(f"{key}: not sent yet, retried at {when:%Y-%m-%d %H:%M} UTC ({error})", markup=False)
            case journal.GiveUp(error, _):
                failed = True
                err.print(f"{key}: failed: {error}", highlight=False, markup=False)
    return failed


@collections_app.command("eligible")
def collections_eligible(
    config: ConfigOption = DEFAULT_CONFIG, tenant: TenantOption = None, output: FormatOption = "table"
) -> None:
    """Invoices that may be handed to the agency: open, old enough, not disputed, not placed yet."""
    _check_format(output)
    with _collections(config, tenant) as ctx, ctx.app.sessions() as session:
        today = ctx.today()
        found = eligible(session, ctx.tenant.name, ctx.connections, ctx.settings, today)
    if output == "json":
        rows = [
            {
                "connection": e.connection,
                "invoice": e.invoice,
                "number": e.number,
                "customer": e.customer,
                "customer_name": e.customer_name,
                "due_date": e.due_date.isoformat(),
                "days_overdue": e.days_overdue,
                "balance": str(e.balance),
                "currency": e.currency,
            }
            for e in found
        ]
        console.print_json(json.dumps({"tenant": ctx.tenant.name, "date": today.isoformat(), "eligible": rows}))
        return
    title = f"{ctx.tenant.name}: {len(found)} invoice(s) at least {ctx.settings.eligible_after_days} days past due"
    table = Table(title=title, title_justify="left")
    for name in ("invoice", "customer", "due", "days", "cur", "balance"):
        table.add_column(name, justify="right" if name in ("days", "balance") else "left", overflow="ellipsis")
    for e in found:
        table.add_row(
            f"{e.connection}:{e.number or e.invoice}",
            e.customer_name or e.customer,
            e.due_date.isoformat(),
            str(e.days_overdue),
            e.currency,
            _amount(e.balance, e.currency),
        )
    console.print(table)


@collections_app.command("submit")
def collections_submit(
    invoice: InvoiceOption,
    notes: Annotated[str, typer.Option("--notes", help="What the agency should know (sent with the package).")],
    config: ConfigOption = DEFAULT_CONFIG,
    tenant: TenantOption = None,
    send: Annotated[bool, typer.Option("--send/--no-send", help="Send the package now (else the daemon does).")] = True,
) -> None:
    """Hand an invoice to the agency: package, upfront fee and placement, once; then send the package."""
    with _collections(config, tenant) as ctx:
        now = ctx.app.clock()
        with ctx.app.sessions.begin() as session:
            ref = resolve_invoice(session, ctx.connections, invoice)
            placed = submit(session, ctx.tenant.name, ref, ctx.settings, notes, now, ctx.today())
            summary = (
                f"{ref[0]}:{ref[1]} handed to {placed.agency}: {show_money(placed.amount, placed.currency)} "
                f"({collections_key(ctx.tenant.name, ref[0], ref[1])})"
            )
        console.print(summary, highlight=False, markup=False)
        if send:
            failed = _report([o for o in _send(ctx) if o[0] == collections_key(ctx.tenant.name, *ref)])
            raise typer.Exit(1 if failed else 0)


@collections_app.command("list")
def collections_list(
    config: ConfigOption = DEFAULT_CONFIG,
    tenant: TenantOption = None,
    status: Annotated[
        list[str] | None, typer.Option("--status", help="Only submitted, placed, recovered or closed (repeatable).")
    ] = None,
    output: FormatOption = "table",
) -> None:
    """The tenant's placements, newest first: amount handed over, recovered so far, status. Changes nothing."""
    _check_format(output)
    with _collections(config, tenant) as ctx, ctx.app.sessions() as session:
        rows = placements(session, ctx.tenant.name, status)
    if output == "json":
        document = [
            {
                "connection": p.connection_id,
                "invoice": p.invoice_external_id,
                "customer": p.customer_external_id,
                "agency": p.agency,
                "amount": str(p.amount),
                "recovered": str(p.recovered),
                "currency": p.currency,
                "status": p.status,
                "submitted_at": p.submitted_at.isoformat() if p.submitted_at else None,
                "updated_at": p.updated_at.isoformat() if p.updated_at else None,
                "notes": p.notes,
            }
            for p in rows
        ]
        console.print_json(json.dumps({"tenant": ctx.tenant.name, "placements": document}))
        return
    table = Table(title=f"{ctx.tenant.name}: {len(rows)} placement(s)", title_justify="left")
    for name in ("invoice", "customer", "agency", "submitted", "cur", "amount", "recovered", "status"):
        table.add_column(name, justify="right" if name in ("amount", "recovered") else "left", overflow="ellipsis")
    for p in rows:
        table.add_row(
            f"{p.connection_id}:{p.invoice_external_id}",
            p.customer_external_id,
            p.agency,
            p.submitted_at.date().isoformat() if p.submitted_at else "",
            p.currency,
            _amount(p.amount, p.currency),
            _amount(p.recovered, p.currency),
            p.status,
        )
    console.print(table)


@collections_app.command("recovered")
def collections_recovered(
    invoice: InvoiceOption,
    amount: Annotated[str, typer.Option("--amount", help="What the agency recovered (e.g. 250.00).")],
    config: ConfigOption = DEFAULT_CONFIG,
    tenant: TenantOption = None,
) -> None:
    """Record money the agency reports it recovered; its success fee is booked through write-back."""
    try:
        value = Decimal(amount)
    except InvalidOperation:
        raise fail(f"--amount {amount!r} is not an amount (write 250.00)") from None
    with _collections(config, tenant) as ctx, ctx.app.sessions.begin() as session:
        ref = resolve_invoice(session, ctx.connections, invoice)
        placed = record_recovery(session, ctx.tenant.name, ref, value, ctx.app.clock())
        line = (
            f"{ref[0]}:{ref[1]}: {show_money(placed.recovered, placed.currency)} of "
            f"{show_money(placed.amount, placed.currency)} recovered ({placed.status})"
        )
    console.print(line, highlight=False, markup=False)


@collections_app.command("update")
def collections_update(config: ConfigOption = DEFAULT_CONFIG, tenant: TenantOption = None) -> None:
    """Notice recoveries in the ledger's payments (booking success fees once) and send packages still due."""
    with _collections(config, tenant) as ctx:
        with ctx.app.sessions.begin() as session:
            noticed = notice_recoveries(session, ctx.tenant.name, ctx.connections, ctx.app.clock())
        console.print(f"{noticed} placement(s) with new recoveries", highlight=False)
        failed = _report(_send(ctx))
        raise typer.Exit(1 if failed else 0)
