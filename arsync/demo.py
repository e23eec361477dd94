"""``arsync demo``: the whole flow against local QuickBooks, Xero and Stripe sandboxes.

Starts the sandboxes on free ports, seeds a realistic company in each
accounting system (two tenants: a landscaping firm on QuickBooks, an IT
services firm on Xero), writes a config pointing at them, authorises through
the sandboxes' OAuth endpoints, runs a full sync into SQLite, changes some
invoices at each source, runs an incremental sync and prints what the ledger
now holds.

Then auto-pay for the landscaping firm, against the local Stripe (localstripe,
a dev dependency; skipped when it is not installed): customers with invoices
due enrol a card through Stripe Checkout, the events are followed, today's
charge plan is printed and run (two cards decline, one asks for 3-D Secure),
run again to show it charges nothing twice, and the events are followed back.
"""

from __future__ import annotations

import importlib.util
from collections import Counter
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
from arsync.cli_collect import print_plan
from arsync.cli_dunning import print_dunning_plan
from arsync.collecting import Collector, RunResult
from arsync.sandboxes import (
    SandboxConnection,
    authorise,
    quickbooks_connection,
    sandbox_dunning,
    stripe_payments,
    write_sandbox_config,
    xero_connection,
)
from arsync.status import render_status
from collect.aging import BUCKETS, aging_report
from collect.autopay import CHARGEABLE, PlanItem
from collect.charging import KIND as CHARGE_KIND
from collect.mail_sandbox import MailSandbox
from collect.processor_events import FollowReport
from connectors.quickbooks import seed as qbo_seed
from connectors.quickbooks.sandbox import QuickBooksSandbox
from connectors.stripe.sandbox import StripeSandbox
from connectors.values import show_money
from connectors.xero import seed as xero_seed
from connectors.xero.sandbox import XeroSandbox
from sync import journal
from sync.db import upgrade
from sync.models import HostedLinkRow, Invoice
from sync.store import TABLES

SITE = "https://landscaping.example.com"
"""The auto-pay tenant's web site: Checkout's success and cancel pages."""
AUTOPAY_CUSTOMERS = 20
"""How many of the QuickBooks tenant's customers with invoices due enrol in auto-pay."""
VISA = "4242424242424242"
DECLINED_ON_CHARGE = "4000000000000341"
"""Saved without trouble; every charge is declined."""
THREE_D_SECURE = "4000002760003184"
"""Authenticated by the customer when saved; every charge asks for authentication again."""
SPECIAL_CARDS = {4: DECLINED_ON_CHARGE, 9: THREE_D_SECURE, 14: DECLINED_ON_CHARGE}
"""The cards some of the enrolling customers (by position) save; the others save :data:`VISA`."""


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


def _stripe(stack: ExitStack, workdir: Path) -> StripeSandbox | None:
    """The local Stripe, launched (it starts while the rest is seeded); None without localstripe."""
    if importlib.util.find_spec("localstripe") is None:
        return None
    sandbox = StripeSandbox(workdir / "localstripe.log")
    sandbox.launch()
    stack.callback(sandbox.stop)
    return sandbox


def _customers_due(app: App, connection: str, today: date, count: int) -> list[str]:
    """``count`` customers with open invoices due by ``today``: those with the fewest first (a short plan)."""
    with app.sessions() as session:
        rows = session.execute(
            sa.select(col(Invoice.customer_external_id))
            .where(
                col(Invoice.connection_id) == connection,
                col(Invoice.status).in_(CHARGEABLE),
                col(Invoice.due_date) <= today,
                col(Invoice.balance) > Decimal(0),
                col(Invoice.customer_external_id).is_not(None),
            )
            .group_by(col(Invoice.customer_external_id))
            .order_by(sa.func.count(), col(Invoice.customer_external_id))
            .limit(count)
        ).scalars()
        return [str(customer) for customer in rows]


def _enrol(collector: Collector, stripe: StripeSandbox, connection: str, customers: list[str]) -> list[str]:
    """Each customer saves a card on its Checkout page; returns the problems (none expected)."""
    problems = []
    for n, customer in enumerate(customers):
        link = collector.enroll(f"{connection}:{customer}")
        answer = stripe.complete_checkout(link.url, stripe.card(SPECIAL_CARDS.get(n, VISA)))
        if answer.status_code != 200:
            problems.append(f"customer {customer}: Checkout answered {answer.status_code}: {answer.text[:200]}")
    return problems


def _follow_line(report: FollowReport, asked: int) -> str:
    kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(report.by_kind.items())) or "none"
    enrolled = asked + report.by_kind.get("enrolment", 0)
    return f"{report.applied} event(s) applied ({kinds}); {enrolled} enrolment(s) completed"


def _outcome_lines(app: App, collector: Collector, result: RunResult) -> list[str]:
    """What the run did: charged per currency, then each charge that did not go through and what happens next."""
    items: dict[str, PlanItem] = {item.charge.key: item for item in result.plan.items}
    charged: dict[str, tuple[int, Decimal, Decimal]] = {}
    others: list[str] = []
    for key, outcome in result.outcomes:
        item = items.get(key)
        if item is None:  # a retry or a refund from an earlier run
            others.append(f"  {key}: {type(outcome).__name__}")
            continue
        c = item.charge
        what = f"{c.connection}:{item.number or c.invoice} (customer {c.customer}, {show_money(c.total, c.currency)})"
        match outcome:
            case journal.Done():
                count, total, surcharges = charged.get(c.currency, (0, Decimal(0), Decimal(0)))
                charged[c.currency] = (count + 1, total + c.total, surcharges + c.surcharge)
            case journal.GiveUp(error, follow_up) if error.startswith("soft decline"):
                retry = "no retry left"
                if follow_up is not None and follow_up.not_before is not None:
                    retry = f"next attempt on {follow_up.not_before.astimezone(collector.tenant.tzinfo):%Y-%m-%d}"
                others.append(f"  {error}: {what}; {retry}")
            case journal.GiveUp(error) if error.startswith("requires action"):
                with app.sessions() as session:
                    link = session.execute(
                        sa.select(col(HostedLinkRow.url)).where(col(HostedLinkRow.key) == f"paylink:{key}")
                    ).scalar_one_or_none()
                sent = f"payment link for the customer: {link}" if link else error
                others.append(f"  requires action (3-D Secure): {what}; {sent}")
            case journal.GiveUp(error) | journal.RetryAt(_, error):
                others.append(f"  {error}: {what}")
    lines = [
        f"charged {count} invoice(s) in {currency}: {show_money(total, currency)}"
        f" (surcharges {show_money(surcharges, currency)} included)"
        for currency, (count, total, surcharges) in sorted(charged.items())
    ]
    return lines + others


def _charge_keys(stripe: StripeSandbox) -> Counter[str]:
    """How many PaymentIntents at the processor carry each charge key."""
    keys = (str(pi.get("metadata", {}).get("arsync_key", "")) for pi in stripe.payment_intents())
    return Counter(key for key in keys if key.startswith(f"{CHARGE_KIND}:"))


def _autopay(app: App, stripe: StripeSandbox, company: DemoCompany, console: Console) -> bool:
    """Enrol, follow, plan, run, run again, follow again; True when every check holds."""
    stripe.ready()
    tenant, connection = company.connection.tenant, company.connection.name
    collector = app.collector(tenant)
    customers = _customers_due(app, connection, collector.today(), AUTOPAY_CUSTOMERS)
    problems = _enrol(collector, stripe, connection, customers)
    report, asked = collector.follow()
    enrolled = asked + report.by_kind.get("enrolment", 0)
    special = sum(1 for n in SPECIAL_CARDS if n < len(customers))
    console.print(
        f"auto-pay for {company.connection.tenant_name}, Stripe sandbox at {stripe.base_url}: {len(customers)}"
        f" customers with invoices due saved a card through Checkout ({special} of them cards that"
        " decline or ask for 3-D Secure when charged)",
        highlight=False,
    )
    console.print(f"follow: {_follow_line(report, asked)}", highlight=False, markup=False)
    for problem in problems:
        console.print(f"  {problem}", highlight=False, markup=False)

    print_plan(collector.plan(), "table", console)  # as `arsync charge plan` prints it
    first = collector.run()
    console.print(
        f"run: {first.recorded} charge(s) journaled and carried out: {first.counts() or 'none'}", highlight=False
    )
    for line in _outcome_lines(app, collector, first):
        console.print(line, highlight=False, markup=False)
    after_first = _charge_keys(stripe)

    second = collector.run()
    after_second = _charge_keys(stripe)
    skipped = "; ".join(f"{reason} ({n})" for reason, n in second.plan.skipped.most_common()) or "nothing"
    console.print(
        f"run again: {second.recorded} charge(s) journaled, {len(second.outcomes)} carried out,"
        f" {after_second.total() - after_first.total()} new PaymentIntent(s); not charged: {skipped}",
        highlight=False,
        markup=False,
    )
    report, asked = collector.follow()
    console.print(f"follow: {_follow_line(report, asked)}", highlight=False, markup=False)
    for warning in report.warnings:
        console.print(f"  warning: {warning}", highlight=False, markup=False)

    twice = sorted(key for key, n in after_second.items() if n > 1)
    console.print(
        f"Stripe holds {after_second.total()} PaymentIntent(s) for {len(after_second)} charge key(s)"
        + (f"; more than one for {', '.join(twice)}" if twice else ": each key once"),
        highlight=False,
        markup=False,
    )
    return (
        not problems
        and enrolled == len(customers)
        and not twice
        and after_second == after_first
        and len(after_first) == first.recorded
        and second.recorded == 0
        and not second.outcomes
    )


def _dunning(app: App, mail: MailSandbox, company: DemoCompany, console: Console) -> bool:
    """Plan, run, run again: the second run decides and sends nothing new; True when that holds."""
    dunner = app.dunner(company.connection.tenant)
    plan = dunner.plan()
    console.print(
        f"dunning for {company.connection.tenant_name}, mail to a local SMTP server on port {mail.port}:",
        highlight=False,
    )
    print_dunning_plan(plan, "table", console, limit=8)  # as `arsync dunning plan` prints it
    first = dunner.run()
    counts = first.counts()
    console.print(
        f"run: {first.recorded} action(s) journaled; messages: {counts['sent']} sent,"
        f" {counts['waiting']} waiting a day for the gap between two messages to one customer,"
        f" {counts['failed']} failed; {len(mail.caught)} message(s) in the SMTP server",
        highlight=False,
    )
    caught = len(mail.caught)
    second = dunner.run()
    console.print(
        f"run again: {second.recorded} new action(s), {second.counts()['sent']} sent;"
        f" the SMTP server holds {len(mail.caught)} message(s)",
        highlight=False,
    )
    return second.recorded == 0 and len(mail.caught) == caught and counts["failed"] == 0


def run_demo(workdir: Path, *, customers: int, invoices: int, console: Console) -> int:
    workdir.mkdir(parents=True, exist_ok=True)
    for stale in workdir.glob("arsync.db*"):
        stale.unlink()
    today = date.today()
    with ExitStack() as stack:
        stripe = _stripe(stack, workdir)
        mail = stack.enter_context(MailSandbox())
        companies = [
            _quickbooks(stack, customers, invoices, today),
            _xero(stack, customers, invoices, today),
        ]
        autopay = companies[0]
        for company in companies:
            console.print(company.seeded, highlight=False)
        payments = {} if stripe is None else {autopay.connection.tenant: stripe_payments(stripe, site=SITE)}
        dunned = companies[1]
        config = write_sandbox_config(
            workdir,
            [c.connection for c in companies],
            database_url="sqlite:///arsync.db",
            log_format="text",
            payments=payments,
            dunning={dunned.connection.tenant: sandbox_dunning(dunned.connection.tenant, mail.port)},
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
        if stripe is None:
            console.print("auto-pay: skipped (localstripe, a dev dependency, is not installed)", highlight=False)
        else:
            ok &= _autopay(app, stripe, autopay, console)
        ok &= _dunning(app, mail, dunned, console)
        with app.sessions() as session:
            console.print(render_status(session, app.config, app.clock()))
        return 0 if ok else 1
