"""``arsync reconcile run`` and ``arsync reconcile report``."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from arsync.cli_support import DEFAULT_CONFIG, ConfigOption, console, err, fail, open_app
from arsync.collecting import CollectingError, parse_day
from arsync.reconciling import Reconciler
from connectors.base import ConnectorError
from reconcile.report import Report
from sync import journal

reconcile_app = typer.Typer(no_args_is_help=True, help="Write-back: payments, fees and payouts in the books.")

TenantOption = Annotated[str | None, typer.Option("--tenant", help="The tenant (optional when only one writes back).")]


def register(app: typer.Typer) -> None:
    app.add_typer(reconcile_app, name="reconcile")


@contextmanager
def _reconciler(config: Path, tenant: str | None) -> Iterator[Reconciler]:
    with open_app(config) as application:
        try:
            reconciler = application.reconciler(tenant)
        except KeyError as exc:
            raise fail(str(exc.args[0])) from None
        try:
            yield reconciler
        except ConnectorError as exc:
            raise fail(f"ledger: {exc}", code=1) from None


@reconcile_app.command("run")
def reconcile_run(config: ConfigOption = DEFAULT_CONFIG, tenant: TenantOption = None) -> None:
    """Post every payment, fee and payout (and credit application) not in the books yet, exactly once."""
    with _reconciler(config, tenant) as reconciler:
        problems = reconciler.account_problems()
        if problems:
            raise fail("write-back accounts do not match the ledger; nothing was posted:\n" + "\n".join(problems))
        result = reconciler.run()
        d = result.derived
        console.print(
            f"{result.echoes} posted payment(s) read back from the ledger; journaled {d.payments} payment(s),"
            f" {d.fees} fee(s), {d.payouts} deposit(s), {d.reversals} reversal(s), {d.refunds} refund(s),"
            f" {d.allocations} allocation(s); outcomes: {result.counts() or 'none'}",
            highlight=False,
        )
        parked = 0
        for key, outcome in result.outcomes:
            if isinstance(outcome, journal.GiveUp):
                parked += 1
                err.print(f"{key}: {outcome.error}", highlight=False, markup=False)
        raise typer.Exit(1 if parked else 0)


@reconcile_app.command("release")
def reconcile_release(
    key: Annotated[list[str] | None, typer.Option("--key", help="A parked posting's key (repeatable).")] = None,
    everything: Annotated[bool, typer.Option("--all", help="Every parked posting of the tenant.")] = False,
    config: ConfigOption = DEFAULT_CONFIG,
    tenant: TenantOption = None,
) -> None:
    """Put parked postings back in the queue once the cause is fixed (run `reconcile run` after)."""
    if bool(key) == everything:
        raise fail("name --key (one or more) or --all")
    with _reconciler(config, tenant) as reconciler:
        released = reconciler.release(None if everything else list(key or []))
        console.print(f"{released} parked posting(s) released", highlight=False)
        raise typer.Exit(0 if released else 1)


@reconcile_app.command("report")
def reconcile_report(
    config: ConfigOption = DEFAULT_CONFIG,
    tenant: TenantOption = None,
    since: Annotated[str | None, typer.Option(help="Payouts arriving on or after (YYYY-MM-DD).")] = None,
    output: Annotated[str, typer.Option("--format", help="table, csv or json.")] = "table",
) -> None:
    """Each payout, its deposit, the payments and fees inside it, and every difference."""
    if output not in ("table", "csv", "json"):
        raise fail(f"--format {output!r}: use table, csv or json")
    try:
        day = parse_day(since)
    except CollectingError:
        raise fail(f"--since {since!r} is not a date (YYYY-MM-DD)") from None
    with _reconciler(config, tenant) as reconciler:
        report = reconciler.report(day)
        {"table": _table, "csv": _csv, "json": _json}[output](report)
        raise typer.Exit(1 if report.problems() else 0)


COLUMNS = ("payout", "arrival", "status", "currency", "amount", "payments", "fees", "refunds", "chargebacks")


def _row(r: object) -> list[str]:
    return [
        str(getattr(r, name))
        for name in (
            "payout_id",
            "arrival",
            "status",
            "currency",
            "amount",
            "payments",
            "fees",
            "refunds",
            "chargebacks",
        )
    ]


def _table(report: Report) -> None:
    table = Table(title=f"{report.tenant}: payouts and their deposits")
    for name in (*COLUMNS, "deposited", "deposits", "problems"):
        table.add_column(name, overflow="fold")
    for r in report.payouts:
        table.add_row(*_row(r), str(r.deposited), "\n".join(r.deposits) or "-", "\n".join(r.problems) or "ok")
    console.print(table)
    for currency, t in sorted(report.totals().items()):
        tied = t["payments"] - t["fees"] - t["refunds"] - t["chargebacks"] + t["other"]
        console.print(
            f"{currency}: payments {t['payments']} - fees {t['fees']} - refunds {t['refunds']} - chargebacks"
            f" {t['chargebacks']} (+ other {t['other']}) = {tied}; payouts {t['amount']}; deposits {t['deposited']}",
            highlight=False,
        )
    for key, reason in report.parked:
        console.print(f"parked {key}: {reason}", highlight=False, markup=False)
    for line in report.other:
        console.print(line, highlight=False, markup=False)
    for fee in report.fees_booked:
        booked = f" as {fee.booked_as}" if fee.booked_as else ""
        console.print(
            f"{fee.kind.replace('_', ' ')} {fee.amount} {fee.currency} on invoice {fee.connection}:{fee.invoice}"
            f"{booked} ({fee.day.isoformat() if fee.day else 'undated'}): {fee.ledger_id or '-'}",
            highlight=False,
            markup=False,
        )
    console.print(f"{report.waiting} posting(s) waiting; {report.problems()} problem(s)", highlight=False)


def _csv(report: Report) -> None:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([*COLUMNS, "deposited", "deposits", "problems"])
    for r in report.payouts:
        writer.writerow([*_row(r), r.deposited, "; ".join(r.deposits), "; ".join(r.problems)])
    console.file.write(out.getvalue())


def _json(report: Report) -> None:
    document = {
        "tenant": report.tenant,
        "payouts": [
            {
                **dict(zip(COLUMNS, _row(r), strict=True)),
                "deposited": str(r.deposited),
                "deposits": r.deposits,
                "problems": r.problems,
            }
            for r in report.payouts
        ],
        "totals": {c: {k: str(v) for k, v in t.items()} for c, t in report.totals().items()},
        "parked": [{"key": k, "reason": v} for k, v in report.parked],
        "other": report.other,
        "fees_booked": [
            {
                "kind": f.kind,
                "key": f.key,
                "connection": f.connection,
                "invoice": f.invoice,
                "date": f.day.isoformat() if f.day else None,
                "amount": str(f.amount),
                "currency": f.currency,
                "ledger_id": f.ledger_id,
                "booked_as": f.booked_as,
            }
            for f in report.fees_booked
        ],
        "waiting": report.waiting,
    }
    console.file.write(json.dumps(document, indent=2) + "\n")
