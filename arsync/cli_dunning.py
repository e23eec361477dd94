"""``arsync dunning plan``, ``arsync dunning run`` and ``arsync dunning send``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from arsync.cli_support import DEFAULT_CONFIG, ConfigOption, console, err, fail, open_app
from arsync.collecting import CollectingError, parse_day
from arsync.dunning import Dunner
from collect.dunning import DunningPlan
from connectors.values import show_money
from sync import journal

dunning_app = typer.Typer(no_args_is_help=True, help="Dunning: reminders, late fees, tasks and suspensions.")

TenantOption = Annotated[str | None, typer.Option("--tenant", help="The tenant (optional when only one duns).")]
DateOption = Annotated[str | None, typer.Option("--date", help="As of this day (YYYY-MM-DD); default today.")]
FormatOption = Annotated[str, typer.Option("--format", help="table or json.")]


def register(app: typer.Typer) -> None:
    app.add_typer(dunning_app, name="dunning")


@contextmanager
def _dunner(config: Path, tenant: str | None) -> Iterator[Dunner]:
    with open_app(config) as application:
        try:
            yield application.dunner(tenant)
        except KeyError as exc:
            raise fail(str(exc.args[0])) from None


@dunning_app.command("plan")
def dunning_plan(
    config: ConfigOption = DEFAULT_CONFIG,
    tenant: TenantOption = None,
    day: DateOption = None,
    output: FormatOption = "table",
) -> None:
    """Every message, fee and task a run would make on that day, with the rule that caused it. Changes nothing."""
    if output not in ("table", "json"):
        raise fail(f"--format must be table or json, not {output!r}")
    with _dunner(config, tenant) as dunner:
        try:
            plan = dunner.plan(parse_day(day))
        except CollectingError as exc:
            raise fail(str(exc)) from None
        print_dunning_plan(plan, output)


@dunning_app.command("run")
def dunning_run(config: ConfigOption = DEFAULT_CONFIG, tenant: TenantOption = None, day: DateOption = None) -> None:
    """Journal the day's plan, then send what is due (in the send window, within the caps), each once."""
    with _dunner(config, tenant) as dunner:
        try:
            result = dunner.run(parse_day(day))
        except CollectingError as exc:
            raise fail(str(exc)) from None
        counts = result.plan.counts()
        console.print(
            f"{result.recorded} new action(s) journaled ({', '.join(f'{n} {k}' for k, n in sorted(counts.items()))}"
            f" planned); messages and webhooks: {dict(result.counts()) or 'none due'}",
            highlight=False,
        )
        failed = _report_failures(result.outcomes)
        raise typer.Exit(1 if failed else 0)


@dunning_app.command("send")
def dunning_send(config: ConfigOption = DEFAULT_CONFIG, tenant: TenantOption = None) -> None:
    """Send the messages and webhooks already decided that are due now (the daemon does this on its own)."""
    with _dunner(config, tenant) as dunner:
        outcomes = dunner.send()
        console.print(f"{len(outcomes)} message(s) and webhook(s) settled", highlight=False)
        raise typer.Exit(1 if _report_failures(outcomes) else 0)


def _report_failures(outcomes: list[tuple[str, journal.Outcome]]) -> int:
    failed = 0
    for key, outcome in outcomes:
        if isinstance(outcome, journal.GiveUp):
            failed += 1
            err.print(f"{key}: {outcome.error}", highlight=False, markup=False)
    return failed


def print_dunning_plan(plan: DunningPlan, output: str, out: Console | None = None, *, limit: int | None = None) -> None:
    """The plan as a table (``limit``: its first rows only) or JSON, then counts and the reasons for nothing."""
    out = out or console
    if output == "json":
        document = {
            "tenant": plan.tenant,
            "date": plan.today.isoformat(),
            "examined": plan.examined,
            "actions": [
                {
                    "key": a.key,
                    "kind": a.kind,
                    "connection": a.connection,
                    "customer": a.customer,
                    "invoice": a.invoice,
                    "policy": a.policy,
                    "step": a.step,
                    "template": a.template,
                    "amount": str(a.amount) if a.amount is not None else None,
                    "currency": a.currency,
                    "why": a.why,
                }
                for a in plan.actions
            ],
            "skipped": dict(plan.skipped),
            "promises": [{"hold": hold, "outcome": outcome} for hold, outcome in plan.promises],
        }
        out.print_json(json.dumps(document))
        return
    table = Table(title=f"{plan.tenant}: dunning for {plan.today.isoformat()}", title_justify="left")
    for name in ("action", "invoice", "customer", "what", "amount", "why"):
        table.add_column(name, justify="right" if name == "amount" else "left", no_wrap=name != "why")
    shown = plan.actions if limit is None else plan.actions[:limit]
    for a in shown:
        amount = show_money(a.amount, a.currency) if a.amount is not None and a.currency else "-"
        table.add_row(
            a.kind,
            f"{a.connection}:{a.invoice}" if a.invoice else "-",
            a.customer,
            a.template or a.note or "-",
            amount if a.kind in ("late_fee", "plan_reminder") else (amount if a.invoice else "-"),
            a.why,
        )
    out.print(table)
    if len(shown) < len(plan.actions):
        out.print(f"... and {len(plan.actions) - len(shown)} more (`arsync dunning plan` lists them all)")
    counts = plan.counts()
    summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "nothing"
    out.print(f"{summary} on {plan.examined} open invoices", highlight=False)
    for reason, count in plan.skipped.most_common():
        out.print(f"  nothing today ({count}): {reason}", highlight=False, markup=False)
