"""``arsync charge``, ``arsync autopay``, ``arsync payments`` and ``arsync refund``."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from arsync.cli_support import DEFAULT_CONFIG, ConfigOption, console, err, fail, ledger_scope, open_app
from arsync.collecting import CollectingError, Collector, RunResult, parse_day
from collect.autopay import ChargePlan, Selection
from collect.marks import put_hold, release_holds, resolve_customer, resolve_invoice, set_tags
from connectors.base import ConnectorError
from connectors.values import show_money
from sync import journal

charge_app = typer.Typer(no_args_is_help=True, help="Auto-pay: preview and make charges of saved methods.")
autopay_app = typer.Typer(no_args_is_help=True, help="Enrol customers in auto-pay.")
payments_app = typer.Typer(no_args_is_help=True, help="The processor's events: payments, refunds, disputes, payouts.")

TenantOption = Annotated[
    str | None, typer.Option("--tenant", help="The tenant (optional when only one takes payments).")
]
DateOption = Annotated[str | None, typer.Option("--date", help="As of this day (YYYY-MM-DD); default today.")]
FormatOption = Annotated[str, typer.Option("--format", help="table or json.")]


customer_app = typer.Typer(no_args_is_help=True, help="Customers: tags, risk and reasons, opt-outs.")
invoice_app = typer.Typer(no_args_is_help=True, help="Invoices: disputes, holds, promises, extensions, fee waivers.")


def register(app: typer.Typer) -> None:
    app.add_typer(charge_app, name="charge")
    app.add_typer(autopay_app, name="autopay")
    app.add_typer(payments_app, name="payments")
    app.add_typer(customer_app, name="customer")
    app.add_typer(invoice_app, name="invoice")
    app.command("refund")(refund)


@customer_app.command("tag")
def customer_tag(
    customer: Annotated[str, typer.Option("--customer", help="Ledger customer id ([CONNECTION:]ID).")],
    add: Annotated[list[str] | None, typer.Option("--add", help="A tag to add (repeatable).")] = None,
    remove: Annotated[list[str] | None, typer.Option("--remove", help="A tag to remove (repeatable).")] = None,
    config: ConfigOption = DEFAULT_CONFIG,
    tenant: TenantOption = None,
) -> None:
    """Add or remove a customer's tags, and show them."""
    with ledger_scope(config, tenant) as (application, connections), application.sessions.begin() as session:
        ref = resolve_customer(session, connections, customer)
        tags = set_tags(session, ref, [t.strip() for t in add or [] if t.strip()], remove or [])
        console.print(f"{ref[0]}:{ref[1]}: {', '.join(tags) or '(no tags)'}", highlight=False, markup=False)


@invoice_app.command("hold")
def invoice_hold(
    invoice: Annotated[str, typer.Option("--invoice", help="Invoice id or number ([CONNECTION:]ID).")],
    reason: Annotated[str, typer.Option("--reason", help="Why (shown in plans and reports).")],
    dispute: Annotated[bool, typer.Option("--dispute", help="The customer disputes it (else a plain hold).")] = False,
    until: Annotated[str | None, typer.Option("--until", help="Last day of the hold (YYYY-MM-DD).")] = None,
    config: ConfigOption = DEFAULT_CONFIG,
    tenant: TenantOption = None,
) -> None:
    """Stop charging (and chasing) an invoice until it is released."""
    last_day = _day(until, "--until")
    with ledger_scope(config, tenant) as (application, connections), application.sessions.begin() as session:
        ref = resolve_invoice(session, connections, invoice)
        put_hold(session, ref, "dispute" if dispute else "hold", reason, last_day, application.clock())
        console.print(f"{ref[0]}:{ref[1]} on {'dispute' if dispute else 'hold'}", highlight=False)


@invoice_app.command("release")
def invoice_release(
    invoice: Annotated[str, typer.Option("--invoice", help="Invoice id or number ([CONNECTION:]ID).")],
    config: ConfigOption = DEFAULT_CONFIG,
    tenant: TenantOption = None,
) -> None:
    """Release an invoice's disputes and holds."""
    with ledger_scope(config, tenant) as (application, connections), application.sessions.begin() as session:
        ref = resolve_invoice(session, connections, invoice)
        released = release_holds(session, ref, application.clock())
        console.print(f"{ref[0]}:{ref[1]}: {released} hold(s) released", highlight=False)


def _day(text: str | None, option: str) -> date | None:
    try:
        return parse_day(text)
    except CollectingError:
        raise fail(f"{option} {text!r} is not a date (YYYY-MM-DD)") from None


@contextmanager
def _collector(config: Path, tenant: str | None) -> Iterator[Collector]:
    with open_app(config) as application:
        try:
            collector = application.collector(tenant)
        except KeyError as exc:
            raise fail(str(exc.args[0])) from None
        try:
            yield collector
        except CollectingError as exc:
            raise fail(str(exc)) from None
        except ConnectorError as exc:
            raise fail(f"payment processor: {exc}", code=1) from None


def _amount(text: str | None) -> Decimal | None:
    if text is None:
        return None
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise fail(f"--amount {text!r} is not an amount (write 25.00)") from None
    if not value.is_finite() or value <= 0:
        raise fail(f"--amount {text!r} must be more than zero")
    return value


def _plan_rows(plan: ChargePlan) -> list[dict[str, Any]]:
    return [
        {
            "key": item.charge.key,
            "connection": item.charge.connection,
            "invoice": item.charge.invoice,
            "number": item.number,
            "customer": item.charge.customer,
            "currency": item.charge.currency,
            "balance": str(item.balance),
            "on_its_way": str(item.outstanding),
            "credits": [{"source": u.source, "id": u.source_id, "amount": str(u.amount)} for u in item.credits],
            "charge": str(item.charge.amount),
            "surcharge": str(item.charge.surcharge),
            "total": str(item.charge.total),
            "method": f"{item.charge.method_type} {item.charge.payment_method_id}",
            "why": item.why,
        }
        for item in plan.items
    ]


def print_plan(plan: ChargePlan, output: str, out: Console | None = None) -> None:
    """The plan as a table (fits 120 columns; credits, method ids and all details are in ``--format json``)."""
    out = out or console
    if output == "json":
        document = {
            "tenant": plan.tenant,
            "date": plan.today.isoformat(),
            "mode": plan.mode,
            "examined": plan.examined,
            "charges": _plan_rows(plan),
            "skipped": dict(plan.skipped),
            "totals": {
                currency: {"charge": str(p), "surcharge": str(s), "credits": str(c)}
                for currency, (p, s, c) in plan.totals().items()
            },
        }
        out.print_json(json.dumps(document))
        return
    table = Table(title=f"{plan.tenant}: charges for {plan.today.isoformat()} ({plan.mode})", title_justify="left")
    for name in ("invoice", "customer", "cur", "balance", "less", "charge", "surcharge", "method", "why"):
        numeric = name in ("balance", "less", "charge", "surcharge")
        table.add_column(name, justify="right" if numeric else "left", no_wrap=name != "why", overflow="ellipsis")
    for item in plan.items:
        c = item.charge
        less = item.outstanding + sum((u.amount for u in item.credits), Decimal(0))

        def amount(value: Decimal, currency: str = c.currency) -> str:
            return show_money(value, currency).removesuffix(f" {currency}")

        table.add_row(
            f"{c.connection}:{item.number or c.invoice}",
            c.customer,
            c.currency,
            amount(item.balance),
            amount(less) if less else "-",
            amount(c.amount),
            amount(c.surcharge) if c.surcharge else "-",
            c.method_type or "-",
            item.why.removeprefix("rule "),
        )
    out.print(table)
    out.print("less: money already on its way, and credits applied first", highlight=False)
    for currency, (principal, surcharge, credits) in sorted(plan.totals().items()):
        out.print(
            f"{currency}: charge {show_money(principal, currency)}, surcharges {show_money(surcharge, currency)},"
            f" credits applied {show_money(credits, currency)}",
            highlight=False,
        )
    out.print(f"{len(plan.items)} to charge of {plan.examined} open invoices of enrolled customers", highlight=False)
    for reason, count in plan.skipped.most_common():
        out.print(f"  not charged ({count}): {reason}", highlight=False, markup=False)


def _print_outcomes(result: RunResult | list[tuple[str, journal.Outcome]]) -> int:
    outcomes = result.outcomes if isinstance(result, RunResult) else result
    failed = 0
    for key, outcome in outcomes:
        match outcome:
            case journal.Done(external_id, details):
                state = (details or {}).get("state", "done")
                console.print(f"{key}: {state} ({external_id})", highlight=False, markup=False)
            case journal.GiveUp(error, follow_up):
                failed += 1
                then = f"; next attempt {follow_up.not_before:%Y-%m-%d}" if follow_up and follow_up.not_before else ""
                err.print(f"{key}: {error}{then}", highlight=False, markup=False)
            case journal.RetryAt(when, error):
                err.print(f"{key}: {error}; again at {when:%Y-%m-%d %H:%M}", highlight=False, markup=False)
    return failed


@charge_app.command("plan")
def charge_plan(
    config: ConfigOption = DEFAULT_CONFIG,
    tenant: TenantOption = None,
    day: DateOption = None,
    output: FormatOption = "table",
) -> None:
    """Preview exactly which invoices auto-pay would charge, how much and why. Changes nothing."""
    if output not in ("table", "json"):
        raise fail(f"--format {output!r}: use table or json")
    with _collector(config, tenant) as collector:
        print_plan(collector.plan(_day(day, "--date")), output)


@charge_app.command("run")
def charge_run(
    config: ConfigOption = DEFAULT_CONFIG,
    tenant: TenantOption = None,
    day: DateOption = None,
) -> None:
    """Charge what the plan says, then carry out every charge that is due (retries included)."""
    with _collector(config, tenant) as collector:
        result = collector.run(_day(day, "--date"))
        print_plan(result.plan, "table")
        failed = _print_outcomes(result)
        console.print(f"{result.recorded} charge(s) journaled; outcomes: {result.counts() or 'none'}", highlight=False)
        raise typer.Exit(1 if failed else 0)


@charge_app.command("batch")
def charge_batch(
    config: ConfigOption = DEFAULT_CONFIG,
    tenant: TenantOption = None,
    invoice: Annotated[list[str] | None, typer.Option("--invoice", help="Invoice id or number (repeatable).")] = None,
    customer: Annotated[list[str] | None, typer.Option("--customer", help="All open invoices of a customer.")] = None,
    amount: Annotated[str | None, typer.Option(help="A partial amount (one invoice only).")] = None,
    reference: Annotated[
        str | None, typer.Option(help="Names a second batch of the same invoices on the same day.")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the batch; charge nothing.")] = False,
) -> None:
    """Charge chosen invoices now with the customers' saved methods (their permission must be on record)."""
    if not invoice and not customer:
        raise fail("name at least one --invoice or --customer")
    partial = _amount(amount)
    if reference is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", reference):
        raise fail(f"--reference {reference!r}: use 1 to 40 letters, digits, '-' or '_'")
    if partial is not None and (customer or len(invoice or []) != 1):
        raise fail("--amount needs exactly one --invoice and no --customer")
    with _collector(config, tenant) as collector:
        selection = Selection(
            invoices=frozenset(collector.invoice_ref(i) for i in invoice or []),
            customers=frozenset(collector.customer_ref(c) for c in customer or []),
            amount=partial,
            reference=reference,
        )
        if dry_run:
            print_plan(collector.plan(selection=selection), "table")
            return
        result = collector.run(selection=selection)
        print_plan(result.plan, "table")
        raise typer.Exit(1 if _print_outcomes(result) else 0)


@charge_app.command("instalments")
def charge_instalments(
    invoice: Annotated[str, typer.Option("--invoice", help="Invoice id or number.")],
    count: Annotated[int, typer.Option("--count", help="How many instalments.")],
    every_days: Annotated[int, typer.Option("--every-days", help="Days between instalments.")] = 30,
    first: Annotated[str | None, typer.Option("--first", help="Day of the first (YYYY-MM-DD); default today.")] = None,
    config: ConfigOption = DEFAULT_CONFIG,
    tenant: TenantOption = None,
) -> None:
    """Put an invoice on an instalment plan: auto-pay charges each instalment on its day."""
    with _collector(config, tenant) as collector:
        ref = collector.invoice_ref(invoice)
        created = collector.instalments(ref, count, every_days, _day(first, "--first") or collector.today())
        for item in created:
            console.print(
                f"{item.seq}. {item.due_on.isoformat()}  {show_money(item.amount, item.currency)}", highlight=False
            )


@autopay_app.command("enroll")
def autopay_enroll(
    customer: Annotated[str, typer.Option("--customer", help="Ledger customer id ([CONNECTION:]ID).")],
    config: ConfigOption = DEFAULT_CONFIG,
    tenant: TenantOption = None,
) -> None:
    """Create a hosted page where the customer saves a card or bank account for auto-pay; print its URL."""
    with _collector(config, tenant) as collector:
        link = collector.enroll(customer)
        until = f" (valid until {link.expires_at:%Y-%m-%d %H:%M} UTC)" if link.expires_at else ""
        console.print(f"Send this link to the customer{until}:", highlight=False)
        console.print(link.url, highlight=False, soft_wrap=True)


@payments_app.command("follow")
def payments_follow(config: ConfigOption = DEFAULT_CONFIG, tenant: TenantOption = None) -> None:
    """Read the processor's events since last time: charges settled, refunds, disputes, payouts, enrolments."""
    with _collector(config, tenant) as collector:
        report, asked = collector.follow()
        enrolled = asked + report.by_kind.get("enrolment", 0)
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(report.by_kind.items())) or "none"
        console.print(
            f"{report.applied} event(s) applied ({kinds}); {enrolled} enrolment(s) completed", highlight=False
        )
        if report.payouts_loaded:
            console.print(f"payout lines loaded: {', '.join(report.payouts_loaded)}", highlight=False)
        for warning in report.warnings:
            err.print(f"warning: {warning}", highlight=False, markup=False)


@payments_app.command("link")
def payments_link(
    invoice: Annotated[
        str | None, typer.Option("--invoice", help="Pay this invoice ([CONNECTION:]ID or number).")
    ] = None,
    customer: Annotated[str | None, typer.Option("--customer", help="Pay this customer's open balance.")] = None,
    config: ConfigOption = DEFAULT_CONFIG,
    tenant: TenantOption = None,
) -> None:
    """A hosted page where the customer pays an invoice or their open balance; print its URL."""
    with _collector(config, tenant) as collector:
        link, amount, currency = collector.payment_link(invoice, customer)
        console.print(f"Payment link for {show_money(amount, currency)}:", highlight=False)
        console.print(link.url, highlight=False, soft_wrap=True)


def refund(
    payment: Annotated[str, typer.Option("--payment", help="The processor's payment id (pi_...).")],
    amount: Annotated[str | None, typer.Option(help="Refund only this much (default: what is left).")] = None,
    config: ConfigOption = DEFAULT_CONFIG,
    tenant: TenantOption = None,
) -> None:
    """Refund a payment in full or in part, exactly once."""
    with _collector(config, tenant) as collector:
        outcomes = collector.refund(payment, _amount(amount))
        raise typer.Exit(1 if _print_outcomes(outcomes) or not outcomes else 0)
