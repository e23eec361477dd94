"""``arsync worklist``, ``arsync task done``, ``arsync customer show|opt-out|opt-in`` and the invoice holds.

The ``customer`` and ``invoice`` groups are :mod:`arsync.cli_collect`'s; the
commands here are added to them.
"""

from __future__ import annotations

import json
import re
from datetime import date
from decimal import Decimal
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
import typer
from rich.table import Table
from sqlalchemy.orm import Session
from sqlmodel import col

from arsync.bootstrap import App
from arsync.cli_collect import customer_app, invoice_app
from arsync.cli_support import DEFAULT_CONFIG, ConfigOption, console, fail, ledger_scope
from collect.marks import resolve_customer, resolve_invoice, set_locale
from collect.risk import RiskAssessment, format_amount
from collect.standing import CustomerRef, InvoiceRef
from collect.worklist import (
    OUTCOMES,
    CustomerCard,
    WorkItem,
    assign_task,
    check_amount,
    complete_task,
    customer_card,
    describe_hold,
    dispute,
    extend,
    opt_in,
    opt_out,
    promise,
    resolve_dispute,
    task_invoice,
    waive_late_fees,
    worklist,
)
from sync.models import DunningTask, Invoice

task_app = typer.Typer(no_args_is_help=True, help="Tasks on the worklist: record what came of them.")

TenantOption = Annotated[str | None, typer.Option("--tenant", help="The tenant (default: every tenant).")]
FormatOption = Annotated[str, typer.Option("--format", help="table or json.")]
AsOfOption = Annotated[str | None, typer.Option("--date", help="As of this day (YYYY-MM-DD); default today.")]
InvoiceOption = Annotated[str, typer.Option("--invoice", help="Invoice id or number ([CONNECTION:]ID).")]
CustomerOption = Annotated[str, typer.Option("--customer", help="Ledger customer id ([CONNECTION:]ID).")]
ChannelOption = Annotated[str, typer.Option("--channel", help="email or sms.")]
AddressOption = Annotated[
    str | None, typer.Option("--address", help="One address of the channel (default: all of them).")
]
_AMOUNT = re.compile(r"\d+(\.\d+)?")


def register(app: typer.Typer) -> None:
    app.command("worklist")(worklist_command)
    app.add_typer(task_app, name="task")


# --- shared -----------------------------------------------------------------------------------------------


def _day(text: str | None, option: str) -> date | None:
    if text is None:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise fail(f"{option} {text!r} is not a date (YYYY-MM-DD)") from None


def _required_day(text: str, option: str) -> date:
    day = _day(text, option)
    assert day is not None
    return day


def _money(text: str | None, option: str = "--amount") -> Decimal | None:
    """A positive amount written as digits with an optional decimal point (no sign, no exponent)."""
    if text is None:
        return None
    written = text.strip()
    if written.startswith("-"):
        raise fail(f"{option} {text!r} must not be negative")
    if not _AMOUNT.fullmatch(written):
        raise fail(f"{option} {text!r} is not an amount (write 25.00)")
    value = Decimal(written)
    if value <= 0:
        raise fail(f"{option} {text!r} must be more than zero")
    return value


def _tenant_of(application: App, connection: str) -> tuple[str, ZoneInfo]:
    """The tenant a connection belongs to, and that tenant's time zone."""
    tenant = application.config.tenant(application.config.connection(connection).tenant)
    return tenant.name, tenant.tzinfo


def _today(application: App, connection: str, as_of: date | None) -> date:
    if as_of is not None:
        return as_of
    return application.clock().astimezone(_tenant_of(application, connection)[1]).date()


def _currency(session: Session, ref: InvoiceRef) -> str:
    """The invoice's currency (fails the command when the invoice is not in the ledger)."""
    found = session.execute(
        sa.select(col(Invoice.currency)).where(col(Invoice.connection_id) == ref[0], col(Invoice.external_id) == ref[1])
    ).scalar_one_or_none()
    if found is None:
        raise fail(f"invoice {ref[0]}:{ref[1]} is not in the ledger")
    return found


def _check_format(output: str) -> None:
    if output not in ("table", "json"):
        raise fail(f"--format {output!r}: use table or json")


def _risk_json(risk: RiskAssessment) -> dict[str, Any]:
    return {
        "level": risk.level,
        "score": risk.score,
        "reasons": [{"reason": r, "points": p} for r, p in zip(risk.reasons, risk.points, strict=False)],
    }


def _show(amount: Decimal, currency: str | None) -> str:
    return format_amount(amount, currency) if currency else str(amount)


# --- arsync worklist --------------------------------------------------------------------------------------


def worklist_command(
    config: ConfigOption = DEFAULT_CONFIG,
    tenant: TenantOption = None,
    limit: Annotated[int | None, typer.Option("--limit", help="Show at most this many tasks.")] = None,
    output: FormatOption = "table",
    as_of: AsOfOption = None,
    assignee: Annotated[str | None, typer.Option("--assignee", help="Only this person's tasks.")] = None,
) -> None:
    """Open tasks for a person, most urgent first (risk x amount x days overdue)."""
    _check_format(output)
    if limit is not None and limit < 1:
        raise fail(f"--limit {limit} must be at least 1")
    day = _day(as_of, "--date")
    items: list[tuple[str, WorkItem]] = []
    with ledger_scope(config, tenant) as (application, _), application.sessions() as session:
        chosen = [application.config.tenant(tenant)] if tenant else list(application.config.tenants)
        for t in chosen:
            today = day or application.clock().astimezone(t.tzinfo).date()
            found = worklist(session, t.name, [c.name for c in t.connections], today, limit=limit, assignee=assignee)
            items += [(t.name, item) for item in found]
    items.sort(key=lambda pair: -pair[1].priority)
    if limit is not None:
        items = items[:limit]
    if output == "json":
        console.print_json(json.dumps([_item_json(name, item) for name, item in items]))
        return
    table = Table(title="worklist", title_justify="left")
    for name in ("task", "risk", "customer", "invoice", "amount", "days", "kind", "note"):
        numeric = name in ("task", "amount", "days")
        table.add_column(name, justify="right" if numeric else "left", no_wrap=name != "note", overflow="ellipsis")
    for _, item in items:
        table.add_row(
            str(item.task.id),
            f"{item.risk.level} ({item.risk.score})",
            item.customer_name or f"{item.customer[0]}:{item.customer[1]}",
            item.invoice_number or item.task.invoice_external_id or "-",
            _show(item.amount, item.currency),
            str(item.days_overdue),
            item.task.kind,
            item.task.note,
        )
    console.print(table)
    console.print(f"{len(items)} open task(s)", highlight=False)


def _item_json(tenant: str, item: WorkItem) -> dict[str, Any]:
    task = item.task
    return {
        "id": task.id,
        "tenant": tenant,
        "kind": task.kind,
        "note": task.note,
        "policy": task.policy,
        "step": task.step,
        "created_at": task.created_at.isoformat() if task.created_at else None,
        "connection": item.customer[0],
        "customer": item.customer[1],
        "customer_name": item.customer_name,
        "invoice": task.invoice_external_id,
        "invoice_number": item.invoice_number,
        "amount": str(item.amount),
        "currency": item.currency,
        "days_overdue": item.days_overdue,
        "risk": _risk_json(item.risk),
        "priority": str(item.priority),
    }


# --- arsync task done -------------------------------------------------------------------------------------


@task_app.command("assign")
def task_assign(
    task_id: Annotated[int, typer.Argument(metavar="ID", help="The task's id (as the worklist shows it).")],
    to: Annotated[str | None, typer.Option("--to", help="The person (omit to put it back on everyone's list).")] = None,
    config: ConfigOption = DEFAULT_CONFIG,
) -> None:
    """Put an open task on a person's worklist."""
    with ledger_scope(config, None) as (application, connections), application.sessions.begin() as session:
        task = session.get(DunningTask, task_id)
        if task is None or task.connection_id not in connections:
            raise fail(f"task {task_id} does not exist")
        assign_task(session, task_id, to)
    where = f"assigned to {to}" if to else "back on everyone's list"
    console.print(f"task {task_id}: {where}", highlight=False)


@task_app.command("done")
def task_done(
    task_id: Annotated[int, typer.Argument(metavar="ID", help="The task's id (as the worklist shows it).")],
    outcome: Annotated[str, typer.Option("--outcome", help="promise, dispute, paid or no-answer.")],
    amount: Annotated[str | None, typer.Option("--amount", help="promise: the amount (default: the balance).")] = None,
    day: Annotated[str | None, typer.Option("--date", help="promise: the day they will pay by (YYYY-MM-DD).")] = None,
    reason: Annotated[
        str | None, typer.Option("--reason", help="dispute: why; promise: a note; paid: how they say they paid.")
    ] = None,
    note: Annotated[str | None, typer.Option("--note", help="What was said (kept with the task).")] = None,
    config: ConfigOption = DEFAULT_CONFIG,
) -> None:
    """Record what came of a task; a promise, dispute or payment puts the matching hold on the invoice."""
    if outcome not in OUTCOMES:
        raise fail(f"--outcome {outcome!r}: use {', '.join(OUTCOMES[:-1])} or {OUTCOMES[-1]}")
    if outcome == "promise" and day is None:
        raise fail("--date is required with --outcome promise (the day the customer will pay by)")
    if outcome == "dispute" and not (reason or "").strip():
        raise fail("--reason is required with --outcome dispute")
    if outcome != "promise" and (amount is not None or day is not None):
        raise fail(f"--amount and --date go with --outcome promise, not {outcome}")
    until = _day(day, "--date")
    money = _money(amount)
    with ledger_scope(config, None) as (application, connections), application.sessions.begin() as session:
        task = session.get(DunningTask, task_id)
        if task is None or task.connection_id not in connections:
            raise fail(f"task {task_id} does not exist")
        today = _today(application, task.connection_id, None)
        if money is not None and task.status == "open":
            target = task_invoice(session, task)
            check_amount(money, target.currency, "--amount")
        result = complete_task(
            session,
            task_id,
            outcome,
            today=today,
            now=application.clock(),
            amount=money,
            until=until,
            reason=reason,
            note=note,
        )
        console.print(f"task {task_id} done: {outcome}", highlight=False)
        for hold in result.holds:
            currency = _currency(session, (hold.connection_id, hold.invoice_external_id))
            console.print(
                f"  {hold.connection_id}:{hold.invoice_external_id}: {describe_hold(hold, currency)}",
                highlight=False,
                markup=False,
            )


# --- arsync customer show | opt-out | opt-in ----------------------------------------------------------------


@customer_app.command("show")
def customer_show(
    customer: Annotated[str, typer.Argument(metavar="ID", help="Ledger customer id ([CONNECTION:]ID).")],
    config: ConfigOption = DEFAULT_CONFIG,
    tenant: TenantOption = None,
    output: FormatOption = "table",
    as_of: AsOfOption = None,
) -> None:
    """A customer's risk level with its reasons, open invoices and holds, tasks, messages and opt-outs."""
    _check_format(output)
    day = _day(as_of, "--date")
    with ledger_scope(config, tenant) as (application, connections), application.sessions() as session:
        ref = resolve_customer(session, connections, customer)
        owner = _tenant_of(application, ref[0])[0]
        owned = [c.name for c in application.config.tenant(owner).connections]
        card = customer_card(session, owner, owned, ref, _today(application, ref[0], day))
    if output == "json":
        console.print_json(json.dumps(_card_json(card)))
    else:
        _print_card(card)


def _card_json(card: CustomerCard) -> dict[str, Any]:
    return {
        "connection": card.ref[0],
        "customer": card.ref[1],
        "name": card.name,
        "risk": _risk_json(card.risk),
        "invoices": [
            {
                "invoice": i.ref[1],
                "number": i.number,
                "due": i.due.isoformat() if i.due else None,
                "days_overdue": i.days_overdue,
                "balance": str(i.balance),
                "currency": i.currency,
                "holds": list(i.holds),
            }
            for i in card.invoices
        ],
        "tasks": [
            {"id": t.id, "kind": t.kind, "invoice": t.invoice_external_id, "note": t.note, "step": t.step}
            for t in card.tasks
        ],
        "messages": [
            {
                "sent_at": m.sent_at.isoformat() if m.sent_at else None,
                "channel": m.channel,
                "address": m.address,
                "template": m.template,
                "invoice": m.invoice_external_id,
                "status": m.status,
            }
            for m in card.messages
        ],
        "blocks": [
            {"channel": b.channel, "address": b.address, "kind": b.kind, "reason": b.reason} for b in card.blocks
        ],
    }


def _print_card(card: CustomerCard) -> None:
    out = console
    out.print(f"{card.ref[0]}:{card.ref[1]}  {card.name}", highlight=False, markup=False)
    out.print(f"risk: {card.risk.level} (score {card.risk.score})", highlight=False)
    for reason, points in zip(card.risk.reasons, card.risk.points, strict=False):
        out.print(f"  +{points}  {reason}", highlight=False, markup=False)
    invoices = Table(title="open invoices", title_justify="left")
    for name in ("invoice", "due", "days overdue", "balance", "holds"):
        invoices.add_column(name, justify="right" if name in ("days overdue", "balance") else "left", overflow="fold")
    for i in card.invoices:
        invoices.add_row(
            i.number or i.ref[1],
            i.due.isoformat() if i.due else "-",
            str(i.days_overdue),
            format_amount(i.balance, i.currency),
            "; ".join(i.holds) or "-",
        )
    out.print(invoices)
    if card.tasks:
        out.print("open tasks:", highlight=False)
        for t in card.tasks:
            on = f" invoice {t.invoice_external_id}" if t.invoice_external_id else ""
            out.print(f"  {t.id}  {t.kind}{on}: {t.note}", highlight=False, markup=False)
    else:
        out.print("open tasks: none", highlight=False)
    if card.messages:
        out.print(f"last {len(card.messages)} message(s):", highlight=False)
        for m in card.messages:
            sent = f"{m.sent_at:%Y-%m-%d %H:%M}" if m.sent_at else "-"
            on = f" invoice {m.invoice_external_id}" if m.invoice_external_id else ""
            out.print(f"  {sent}  {m.channel} {m.address}  {m.template}{on}  {m.status}", highlight=False, markup=False)
    else:
        out.print("messages: none", highlight=False)
    if card.blocks:
        out.print("not to be used:", highlight=False)
        for b in card.blocks:
            what = b.address or f"every {b.channel} address"
            out.print(f"  {b.channel} {what}: {b.kind} ({b.reason})", highlight=False, markup=False)
    else:
        out.print("opt-outs: none", highlight=False)


@customer_app.command("opt-out")
def customer_opt_out(
    customer: CustomerOption,
    channel: ChannelOption,
    reason: Annotated[str, typer.Option("--reason", help="Why (for example: asked on the phone).")],
    address: AddressOption = None,
    config: ConfigOption = DEFAULT_CONFIG,
    tenant: TenantOption = None,
) -> None:
    """Stop sending to a customer on a channel (or to one address of it)."""
    with ledger_scope(config, tenant) as (application, connections), application.sessions.begin() as session:
        ref = resolve_customer(session, connections, customer)
        block = opt_out(session, ref, channel, address, reason, application.clock())
        what = block.address or f"every {channel} address"
        console.print(f"{_customer(ref)}: opted out of {channel} ({what})", highlight=False, markup=False)


@customer_app.command("locale")
def customer_locale(
    customer: CustomerOption,
    timezone: Annotated[str | None, typer.Option("--timezone", help="IANA time zone, e.g. Europe/London.")] = None,
    country: Annotated[str | None, typer.Option("--country", help="ISO country code for public holidays.")] = None,
    subdivision: Annotated[str | None, typer.Option("--subdivision", help="State or region, e.g. NY.")] = None,
    config: ConfigOption = DEFAULT_CONFIG,
    tenant: TenantOption = None,
) -> None:
    """Where the customer reads its mail: reminders go in its working hours, on its business days."""
    if timezone is None and country is None and subdivision is None:
        raise fail("name --timezone, --country or --subdivision")
    with ledger_scope(config, tenant) as (application, connections), application.sessions.begin() as session:
        ref = resolve_customer(session, connections, customer)
        row = set_locale(session, ref, timezone, country, subdivision)
        where = ", ".join(v for v in (row.timezone, row.country, row.subdivision) if v)
        console.print(f"{_customer(ref)}: {where}", highlight=False, markup=False)


@customer_app.command("opt-in")
def customer_opt_in(
    customer: CustomerOption,
    channel: ChannelOption,
    address: AddressOption = None,
    config: ConfigOption = DEFAULT_CONFIG,
    tenant: TenantOption = None,
) -> None:
    """Undo opt-outs of a channel (of one address only, when given)."""
    with ledger_scope(config, tenant) as (application, connections), application.sessions.begin() as session:
        ref = resolve_customer(session, connections, customer)
        removed = opt_in(session, ref, channel, address)
        console.print(f"{_customer(ref)}: {removed} {channel} opt-out(s) removed", highlight=False, markup=False)


def _customer(ref: CustomerRef) -> str:
    return f"{ref[0]}:{ref[1]}"


# --- arsync invoice promise | extend | dispute | resolve | waive-fees -------------------------------------------


@invoice_app.command("promise")
def invoice_promise(
    invoice: InvoiceOption,
    day: Annotated[str, typer.Option("--date", help="The day the customer will pay by (YYYY-MM-DD).")],
    amount: Annotated[str | None, typer.Option("--amount", help="How much (default: the balance).")] = None,
    note: Annotated[str | None, typer.Option("--note", help="What was said.")] = None,
    config: ConfigOption = DEFAULT_CONFIG,
    tenant: TenantOption = None,
) -> None:
    """Record a promise to pay: dunning pauses until the day, then checks it was kept."""
    until = _required_day(day, "--date")
    money = _money(amount)
    with ledger_scope(config, tenant) as (application, connections), application.sessions.begin() as session:
        ref = resolve_invoice(session, connections, invoice)
        currency = _currency(session, ref)
        if money is not None:
            check_amount(money, currency, "--amount")
        today = _today(application, ref[0], None)
        hold = promise(session, ref, until, today=today, now=application.clock(), amount=money, note=note)
        console.print(f"{ref[0]}:{ref[1]}: {describe_hold(hold, currency)}", highlight=False, markup=False)


@invoice_app.command("extend")
def invoice_extend(
    invoice: InvoiceOption,
    to: Annotated[str, typer.Option("--to", help="The new due date (YYYY-MM-DD).")],
    reason: Annotated[str, typer.Option("--reason", help="Why the terms changed.")],
    config: ConfigOption = DEFAULT_CONFIG,
    tenant: TenantOption = None,
) -> None:
    """Move an invoice's due date later (a term extension); reminders count from the new date."""
    new_due = _required_day(to, "--to")
    with ledger_scope(config, tenant) as (application, connections), application.sessions.begin() as session:
        ref = resolve_invoice(session, connections, invoice)
        extend(session, ref, new_due, reason, application.clock())
        console.print(f"{ref[0]}:{ref[1]}: due {new_due.isoformat()}", highlight=False)


@invoice_app.command("dispute")
def invoice_dispute(
    invoice: InvoiceOption,
    reason: Annotated[str, typer.Option("--reason", help="What the customer disputes.")],
    config: ConfigOption = DEFAULT_CONFIG,
    tenant: TenantOption = None,
) -> None:
    """The customer disputes an invoice: nothing is charged or chased until it is resolved."""
    with ledger_scope(config, tenant) as (application, connections), application.sessions.begin() as session:
        ref = resolve_invoice(session, connections, invoice)
        dispute(session, ref, reason, application.clock())
        console.print(f"{ref[0]}:{ref[1]} disputed", highlight=False)


@invoice_app.command("resolve")
def invoice_resolve(
    invoice: InvoiceOption,
    config: ConfigOption = DEFAULT_CONFIG,
    tenant: TenantOption = None,
) -> None:
    """End an invoice's dispute: collecting resumes."""
    with ledger_scope(config, tenant) as (application, connections), application.sessions.begin() as session:
        ref = resolve_invoice(session, connections, invoice)
        resolved = resolve_dispute(session, ref, application.clock())
        console.print(f"{ref[0]}:{ref[1]}: {resolved} dispute(s) resolved", highlight=False)


@invoice_app.command("waive-fees")
def invoice_waive_fees(
    invoice: InvoiceOption,
    reason: Annotated[str, typer.Option("--reason", help="Why the fee is forgiven.")],
    step: Annotated[str | None, typer.Option("--step", help="Only this step's fee (default: every fee).")] = None,
    config: ConfigOption = DEFAULT_CONFIG,
    tenant: TenantOption = None,
) -> None:
    """Waive an invoice's late fees (one step's, or all from now on)."""
    with ledger_scope(config, tenant) as (application, connections), application.sessions.begin() as session:
        ref = resolve_invoice(session, connections, invoice)
        waiver = waive_late_fees(session, ref, step, reason, application.clock())
        which = f"step {waiver.step}'s late fee" if waiver.step else "every late fee"
        console.print(f"{ref[0]}:{ref[1]}: {which} waived", highlight=False, markup=False)
