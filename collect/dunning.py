"""Deciding what dunning does on a day: messages, fees, tasks, suspensions, each once.

:func:`plan_dunning` streams a tenant's open invoices customer by customer and,
for each, finds the policy the customer is assigned (first segment that
matches), where the invoice stands in that policy's steps (``dunning_state``),
and the step due today, if any: the latest one whose day has come. Steps passed
over while an invoice waited (first seen late, on hold) are not fired late, so a
customer never receives three overdue notices at once. The plan writes nothing;
:func:`journal_dunning` records it in one transaction: journal entries for every
message, fee and webhook (kinds ``notify``, ``posting``, ``webhook``), tasks for
people, tags, and the invoices' new state. Each entry is keyed by (invoice or
customer, policy, step, cycle), so a step never fires twice.

What pauses an invoice: a dispute or hold, a promise to pay until its date, a
payment plan (its instalments are reminded instead, and never late-fee'd), the
tenant's pause. A term extension moves the due date. An invoice auto-pay will
charge gets no overdue step until the charge has had its chance. A partial
payment starts a new cycle counted from the day it was seen (when configured);
a paid invoice leaves the stream, and a suspended customer with nothing overdue
is resumed.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlmodel import col

from collect import collections as agency
from collect.dunning_policy import (
    PER_CUSTOMER_ACTIONS,
    Action,
    CallTaskAction,
    CollectionsAction,
    CollectionsSettings,
    CustomerFacts,
    DunningPolicy,
    EmailAction,
    LateFeeAction,
    Policy,
    SmsAction,
    StatementAction,
    StepFacts,
    SuspendAction,
)
from collect.risk import RiskAssessment, assess_customers
from collect.standing import (
    CustomerRef,
    InvoiceRef,
    LastDecline,
    customer_tags,
    enrolled_methods,
    last_declines,
)
from connectors import jsonwire
from connectors.values import show_money
from sync import journal
from sync.models import (
    ChargeInstalment,
    Customer,
    CustomerTag,
    DunningState,
    DunningTask,
    Invoice,
    InvoiceHold,
    JournalEntry,
    LateFeeWaiver,
)

OPEN = ("open", "partially_paid")
NOTIFY_KIND = "notify"
WEBHOOK_KIND = "webhook"
POSTING_KIND = "posting"
LATE_FEE = "late_fee"
"""The write-back posting kind of a late fee (a charge line on the invoice, or a separate invoice)."""
YIELD_PER = 5000
ZERO = Decimal(0)
CHUNK = 1000


@dataclass(frozen=True, slots=True)
class DunningAction:
    """One thing dunning does: a message, a fee, a task, a suspension or its end."""

    key: str
    kind: str
    """``email``, ``sms``, ``statement``, ``late_fee``, ``call``, ``collections``, ``suspend``, ``resume``,
    ``plan_reminder``, ``promise_broken``."""
    connection: str
    customer: str
    invoice: str | None
    why: str
    """The rule that caused it."""
    policy: str | None = None
    step: str | None = None
    template: str | None = None
    amount: Decimal | None = None
    currency: str | None = None
    note: str | None = None
    detail: tuple[tuple[str, Any], ...] = ()
    """Further payload for the journal entry (a late fee's booking, a suspension's tag)."""


@dataclass(frozen=True, slots=True)
class StateChange:
    connection: str
    invoice: str
    policy: str
    cycle: int
    anchor: date
    last_step: int
    last_balance: Decimal


@dataclass
class DunningPlan:
    tenant: str
    today: date
    actions: list[DunningAction] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    """Why open invoices got nothing today: reason -> count."""
    examined: int = 0
    states: list[StateChange] = field(default_factory=list)
    promises: list[tuple[int, str]] = field(default_factory=list)
    """(hold id, ``kept`` / ``broken``): promises whose day has passed."""
    tags: list[tuple[CustomerRef, str, bool]] = field(default_factory=list)
    """(customer, tag, add?): suspensions put on and taken off."""

    def counts(self) -> Counter[str]:
        return Counter(action.kind for action in self.actions)


@dataclass(frozen=True, slots=True)
class _Hold:
    id: int
    kind: str
    reason: str
    until: date | None
    amount: Decimal | None
    balance_at: Decimal | None


@dataclass
class _Context:
    tenant: str
    policy: DunningPolicy
    today: date
    tags: dict[CustomerRef, frozenset[str]]
    holds: dict[InvoiceRef, list[_Hold]]
    declines: dict[InvoiceRef, LastDecline]
    autopay: frozenset[CustomerRef]
    risk: dict[CustomerRef, RiskAssessment]
    waivers: dict[InvoiceRef, set[str | None]]
    fees: dict[InvoiceRef, FeesCharged]
    instalments: dict[InvoiceRef, list[tuple[int, date, Decimal, str]]]
    plan: DunningPlan
    seen: set[str] = field(default_factory=set)
    offsets: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """Per policy, its steps' days from the due date (computed once, read per invoice)."""

    def add(self, action: DunningAction) -> None:
        if action.key not in self.seen:
            self.seen.add(action.key)
            self.plan.actions.append(action)


# --- reading the ledger -------------------------------------------------------------------------------------


def _holds(session: Session, connections: Sequence[str]) -> dict[InvoiceRef, list[_Hold]]:
    holds: dict[InvoiceRef, list[_Hold]] = defaultdict(list)
    rows = session.execute(
        sa.select(
            col(InvoiceHold.id),
            col(InvoiceHold.connection_id),
            col(InvoiceHold.invoice_external_id),
            col(InvoiceHold.kind),
            col(InvoiceHold.reason),
            col(InvoiceHold.until),
            col(InvoiceHold.amount),
            col(InvoiceHold.balance_at),
        ).where(col(InvoiceHold.connection_id).in_(connections), col(InvoiceHold.released_at).is_(None))
    )
    for ident, connection, invoice, kind, reason, until, amount, balance_at in rows:
        assert ident is not None
        holds[(connection, invoice)].append(_Hold(ident, kind, reason, until, amount, balance_at))
    return holds


def _waivers(session: Session, connections: Sequence[str]) -> dict[InvoiceRef, set[str | None]]:
    waived: dict[InvoiceRef, set[str | None]] = defaultdict(set)
    rows = session.execute(
        sa.select(
            col(LateFeeWaiver.connection_id), col(LateFeeWaiver.invoice_external_id), col(LateFeeWaiver.step)
        ).where(col(LateFeeWaiver.connection_id).in_(connections))
    )
    for connection, invoice, step in rows:
        waived[(connection, invoice)].add(step)
    return waived


@dataclass(frozen=True, slots=True)
class FeesCharged:
    total: Decimal
    """Every late fee journaled on the invoice, posted or not."""
    in_balance: Decimal
    """Those the ledger's balance of the invoice includes: posted as a line on it."""


def late_fees_charged(
    session: Session, tenant: str, invoice: InvoiceRef | None = None
) -> dict[InvoiceRef, FeesCharged]:
    """Late fees journaled per invoice (only ``invoice``'s when given), and how much of them the invoice's
    ledger balance already holds."""
    total: dict[InvoiceRef, Decimal] = defaultdict(Decimal)
    in_balance: dict[InvoiceRef, Decimal] = defaultdict(Decimal)
    rows = session.execute(
        sa.select(
            col(JournalEntry.subject), col(JournalEntry.payload), col(JournalEntry.status), col(JournalEntry.result)
        ).where(
            col(JournalEntry.tenant_id) == tenant,
            col(JournalEntry.kind) == POSTING_KIND,
            col(JournalEntry.subject) == f"{LATE_FEE}:{invoice[0]}:{invoice[1]}"
            if invoice is not None
            else col(JournalEntry.subject).like(f"{LATE_FEE}:%"),
        )
    )
    for subject, payload, status, result in rows:
        _, connection, external_id = str(subject).split(":", 2)
        ref = (connection, external_id)
        body = jsonwire.loads(payload)
        amount = Decimal(str(body["amount"]))
        total[ref] += amount
        # a line the ledger refused (Xero: the invoice has payments) was booked as an invoice of its own
        booked = (jsonwire.loads(result) if result else {}).get("booked_as") or body.get("booking")
        if status == "done" and booked == "line":
            in_balance[ref] += amount
    return {ref: FeesCharged(amount, in_balance[ref]) for ref, amount in total.items()}


def _instalments(
    session: Session, connections: Sequence[str]
) -> dict[InvoiceRef, list[tuple[int, date, Decimal, str]]]:
    plans: dict[InvoiceRef, list[tuple[int, date, Decimal, str]]] = defaultdict(list)
    rows = session.execute(
        sa.select(
            col(ChargeInstalment.connection_id),
            col(ChargeInstalment.invoice_external_id),
            col(ChargeInstalment.seq),
            col(ChargeInstalment.due_on),
            col(ChargeInstalment.amount),
            col(ChargeInstalment.currency),
        )
        .where(col(ChargeInstalment.connection_id).in_(connections))
        .order_by(col(ChargeInstalment.seq))
    )
    for connection, invoice, seq, due_on, amount, currency in rows:
        plans[(connection, invoice)].append((seq, due_on, amount, currency))
    return plans


COLUMNS: tuple[Any, ...] = (
    col(Invoice.connection_id),
    col(Invoice.external_id),
    col(Invoice.customer_external_id),
    col(Invoice.number),
    col(Invoice.due_date),
    col(Invoice.currency),
    col(Invoice.balance),
    col(Customer.currency).label("customer_currency"),
    col(DunningState.policy).label("state_policy"),
    col(DunningState.cycle),
    col(DunningState.anchor),
    col(DunningState.last_step),
    col(DunningState.last_balance),
)


def _open_invoices(session: Session, connections: Sequence[str]) -> Iterator[Any]:
    query = (
        sa.select(*COLUMNS)
        .join(
            Customer,
            sa.and_(
                col(Customer.connection_id) == col(Invoice.connection_id),
                col(Customer.external_id) == col(Invoice.customer_external_id),
            ),
            isouter=True,
        )
        .join(
            DunningState,
            sa.and_(
                col(DunningState.connection_id) == col(Invoice.connection_id),
                col(DunningState.invoice_external_id) == col(Invoice.external_id),
            ),
            isouter=True,
        )
        .where(col(Invoice.connection_id).in_(connections), col(Invoice.status).in_(OPEN))
        .order_by(
            col(Invoice.connection_id),
            col(Invoice.customer_external_id),
            col(Invoice.due_date),
            col(Invoice.external_id),
        )
    )
    yield from session.execute(query.execution_options(yield_per=YIELD_PER))


def _by_customer(rows: Iterable[Any]) -> Iterator[tuple[CustomerRef, list[Any]]]:
    current: CustomerRef | None = None
    group: list[Any] = []
    for row in rows:
        if row.balance <= ZERO:
            continue  # open with nothing owed (money is text on SQLite: compared here, not in SQL)
        ref: CustomerRef = (row.connection_id, row.customer_external_id or "")
        if ref != current:
            if current is not None:
                yield current, group
            current, group = ref, []
        group.append(row)
    if current is not None:
        yield current, group


# --- planning -----------------------------------------------------------------------------------------------


def plan_dunning(
    session: Session,
    tenant: str,
    connections: Sequence[str],
    policy: DunningPolicy,
    today: date,
    *,
    autopay: bool = False,
) -> DunningPlan:
    """What dunning would do on ``today``. Writes nothing.

    ``autopay``: the tenant charges enrolled customers automatically, so their
    invoices wait for the charge before any overdue step.
    """
    plan = DunningPlan(tenant, today)
    if policy.paused:
        plan.skipped["dunning is paused for the tenant"] += sum(1 for _ in _open_invoices(session, connections))
        return plan
    ctx = _Context(
        tenant=tenant,
        policy=policy,
        today=today,
        tags=customer_tags(session, connections),
        holds=_holds(session, connections),
        declines=last_declines(session, tenant),
        autopay=frozenset(enrolled_methods(session, connections)) if autopay else frozenset(),
        risk=assess_customers(session, tenant, connections, today),
        waivers=_waivers(session, connections),
        fees=late_fees_charged(session, tenant),
        instalments=_instalments(session, connections),
        plan=plan,
    )
    owing: set[CustomerRef] = set()
    overdue: set[CustomerRef] = set()
    for customer, invoices in _by_customer(_open_invoices(session, connections)):
        plan.examined += len(invoices)
        owing.add(customer)
        if any(row.due_date is not None and row.due_date < today for row in invoices):
            overdue.add(customer)
        _plan_customer(ctx, customer, invoices)
    _resume(ctx, owing, overdue)
    _drop_recorded(session, plan)
    return plan


def _plan_customer(ctx: _Context, customer: CustomerRef, invoices: list[Any]) -> None:
    tags = ctx.tags.get(customer, frozenset())
    currency = invoices[0].customer_currency or invoices[0].currency
    balances: dict[str, Decimal] = defaultdict(Decimal)
    unpaid: Counter[str] = Counter()
    for row in invoices:
        balances[row.currency] += row.balance
        unpaid[row.currency] += 1
    risk = ctx.risk.get(customer)
    facts = CustomerFacts(
        tags=tags,
        currency=currency,
        balance=balances.get(currency, ZERO),
        risk=risk.level if risk is not None else "low",
        on_autopay=customer in ctx.autopay,
    )
    policy = ctx.policy.policy_for(facts)
    if ctx.policy.summary != "none" and _summary_day(ctx.policy.summary, ctx.today):
        key = f"{NOTIFY_KIND}:summary:{ctx.tenant}:{customer[0]}:{customer[1]}:{ctx.today.isoformat()}"
        why = f"{ctx.policy.summary} statement"
        ctx.add(DunningAction(key, "statement", customer[0], customer[1], None, why, template="statement"))
    if policy is None:
        ctx.plan.skipped["no policy matches the customer"] += len(invoices)
        return
    for row in invoices:
        step_facts = StepFacts(
            customer_balance=balances[row.currency],
            unpaid_invoices=unpaid[row.currency],
            tags=tags,
            last_decline_code=_decline_code(ctx.declines.get((row.connection_id, row.external_id))),
        )
        reason = _plan_invoice(ctx, customer, policy, row, step_facts)
        if reason is not None:
            ctx.plan.skipped[reason] += 1


def _decline_code(decline: LastDecline | None) -> str | None:
    return decline.decline_code if decline is not None else None


def _summary_day(summary: str, today: date) -> bool:
    return (summary == "weekly" and today.weekday() == 0) or (summary == "monthly" and today.day == 1)


def _plan_invoice(ctx: _Context, customer: CustomerRef, policy: Policy, row: Any, facts: StepFacts) -> str | None:
    """Plans the invoice's step due today, if any; returns why nothing fires (None: something did)."""
    ref: InvoiceRef = (row.connection_id, row.external_id)
    today = ctx.today
    due: date | None = row.due_date
    holds = ctx.holds.get(ref, ())
    for hold in holds:
        if hold.kind in ("dispute", "hold") and (hold.until is None or hold.until >= today):
            return f"on hold ({hold.kind})"
    if ref in ctx.instalments or any(hold.kind == "plan" for hold in holds):
        _plan_reminders(ctx, customer, ref, row)
        return "on a payment plan (its instalments are reminded instead)"
    for hold in holds:
        if hold.kind == "extension" and hold.until is not None and (due is None or hold.until > due):
            due = hold.until
        if hold.kind == "promise" and hold.until is not None:
            if hold.until >= today:
                return "promised to pay"
            _promise_due(ctx, customer, ref, row, hold)
    if due is None:
        return "no due date"
    fresh = row.state_policy != policy.name
    cycle = 0 if fresh else row.cycle
    anchor = due if fresh else row.anchor
    last_step = -1 if fresh else row.last_step
    offsets = ctx.offsets.get(policy.name) or ctx.offsets.setdefault(policy.name, policy.offsets())
    if not fresh and row.cycle == 0 and anchor != due:
        anchor = due  # the due date moved (an extension, an edit in the ledger)
    if not fresh and row.balance < row.last_balance and ctx.policy.reset_on_partial_payment:
        cycle, anchor = cycle + 1, today
        last_step = max((i for i, off in enumerate(offsets) if off <= 0), default=-1)
    elapsed = (today - anchor).days
    came = [i for i, off in enumerate(offsets) if i > last_step and off <= elapsed]
    state = StateChange(row.connection_id, row.external_id, policy.name, cycle, anchor, last_step, row.balance)
    if not came:
        if fresh or state.cycle != row.cycle or row.balance != row.last_balance or anchor != row.anchor:
            ctx.plan.states.append(state)
        return "no step due today"
    index = came[-1]
    step = policy.steps[index]
    overdue = (today - due).days
    if (
        ctx.autopay
        and customer in ctx.autopay
        and offsets[index] > 0
        and ref not in ctx.declines
        and overdue < ctx.policy.autopay_grace_days
    ):
        ctx.plan.states.append(state)
        return "auto-pay has not had its chance yet"
    failing = step.conditions.failing(facts)
    if failing is not None:
        ctx.plan.states.append(state)
        return f"step '{step.name}' waits: {failing}"
    ctx.plan.states.append(
        StateChange(row.connection_id, row.external_id, policy.name, cycle, anchor, index, row.balance)
    )
    origin = "the due date" if cycle == 0 else f"the partial payment seen on {anchor.isoformat()}"
    day = offsets[index] if cycle == 0 else (today - anchor).days
    why = f"policy '{policy.name}', step '{step.name}': day {day:+d} from {origin}"
    if len(came) > 1:
        why += f" (passed over: {', '.join(policy.steps[i].name for i in came[:-1])})"
    base = f"{ctx.tenant}:{row.connection_id}:{row.external_id}:{policy.name}:{step.name}"
    for number, action in enumerate(step.actions):
        _plan_action(ctx, customer, row, action, f"{base}:{cycle}:{number}", base, why, policy.name, step.name, overdue)
    return None


def _plan_action(
    ctx: _Context,
    customer: CustomerRef,
    row: Any,
    action: Action,
    key: str,
    base: str,
    why: str,
    policy: str,
    step: str,
    overdue: int,
) -> None:
    connection, invoice = row.connection_id, row.external_id
    ref: InvoiceRef = (connection, invoice)
    common: dict[str, Any] = {"policy": policy, "step": step}
    if action.kind in PER_CUSTOMER_ACTIONS:
        day = ctx.today.isoformat()
        key = f"{ctx.tenant}:{connection}:customer:{customer[1]}:{policy}:{step}:{day}"
    match action:
        case EmailAction() | SmsAction():
            ctx.add(
                DunningAction(
                    f"{NOTIFY_KIND}:dun:{key}",
                    action.kind,
                    connection,
                    customer[1],
                    invoice,
                    why,
                    template=action.template,
                    amount=row.balance,
                    currency=row.currency,
                    **common,
                )
            )
        case StatementAction():
            ctx.add(
                DunningAction(
                    f"{NOTIFY_KIND}:dun:{key}",
                    "statement",
                    connection,
                    customer[1],
                    None,
                    why,
                    template=action.template,
                    **common,
                )
            )
        case CallTaskAction():
            ctx.add(
                DunningAction(
                    f"task:{key}",
                    "call",
                    connection,
                    customer[1],
                    invoice,
                    why,
                    note=action.note,
                    amount=row.balance,
                    currency=row.currency,
                    detail=(("assignee", action.assignee),),
                    **common,
                )
            )
        case CollectionsAction():
            eligible = ctx.policy.collections.eligible_after_days
            if overdue < eligible:
                ctx.plan.skipped[f"not yet eligible for collections ({eligible} days past due)"] += 1
                return
            note = "Hand over to collections" + (" (submitted automatically)" if action.submit else "")
            ctx.add(
                DunningAction(
                    f"task:{key}",
                    "collections",
                    connection,
                    customer[1],
                    invoice,
                    why,
                    note=note,
                    amount=row.balance,
                    currency=row.currency,
                    detail=(("submit", action.submit), ("assignee", action.assignee)),
                    **common,
                )
            )
        case SuspendAction():
            if action.tag in ctx.tags.get(customer, frozenset()):
                return
            ctx.add(
                DunningAction(
                    f"{WEBHOOK_KIND}:suspend:{key}",
                    "suspend",
                    connection,
                    customer[1],
                    None,
                    why,
                    detail=(("tag", action.tag),),
                    **common,
                )
            )
        case LateFeeAction():
            waived = ctx.waivers.get(ref, set())
            if None in waived or step in waived:
                ctx.plan.skipped["late fee waived"] += 1
                return
            if overdue < action.grace_days:
                ctx.plan.skipped[f"late fee within its {action.grace_days} grace days"] += 1
                return
            earlier = ctx.fees.get(ref, FeesCharged(ZERO, ZERO))
            principal = max(row.balance - earlier.in_balance, ZERO)
            amount = action.amount(principal, earlier.total)
            if amount <= 0:
                return
            ctx.add(
                DunningAction(
                    f"{POSTING_KIND}:{LATE_FEE}:{base}",
                    LATE_FEE,
                    connection,
                    customer[1],
                    invoice,
                    why + f" ({_fee_terms(action)})",
                    amount=amount,
                    currency=row.currency,
                    detail=(("booking", action.booking), ("description", action.description)),
                    **common,
                )
            )


def _fee_terms(fee: LateFeeAction) -> str:
    parts = []
    if fee.flat:
        parts.append(f"{fee.flat} flat")
    if fee.percent:
        parts.append(f"{fee.percent}% of {'the balance' if fee.compound else 'the principal'}")
    if fee.minimum is not None:
        parts.append(f"at least {fee.minimum}")
    if fee.maximum is not None:
        parts.append(f"at most {fee.maximum}")
    return ", ".join(parts)


def _plan_reminders(ctx: _Context, customer: CustomerRef, ref: InvoiceRef, row: Any) -> None:
    lead = timedelta(days=ctx.policy.plan_reminder_days)
    for seq, due_on, amount, currency in ctx.instalments.get(ref, ()):
        if due_on - lead <= ctx.today <= due_on:
            key = f"{NOTIFY_KIND}:plan:{ctx.tenant}:{ref[0]}:{ref[1]}:{seq}"
            why = f"instalment {seq} of the payment plan falls due on {due_on.isoformat()}"
            ctx.add(
                DunningAction(
                    key,
                    "plan_reminder",
                    ref[0],
                    customer[1],
                    ref[1],
                    why,
                    template="plan_reminder",
                    amount=amount,
                    currency=currency,
                    detail=(("due_on", due_on.isoformat()), ("seq", seq)),
                )
            )


def _promise_due(ctx: _Context, customer: CustomerRef, ref: InvoiceRef, row: Any, hold: _Hold) -> None:
    """A promise whose day has passed: kept when the balance fell by the amount promised."""
    promised = hold.amount or ZERO
    start = hold.balance_at if hold.balance_at is not None else row.balance
    kept = row.balance <= start - promised
    ctx.plan.promises.append((hold.id, "kept" if kept else "broken"))
    if kept:
        return
    assert hold.until is not None
    paid = max(start - row.balance, ZERO)
    why = (
        f"promise to pay {show_money(promised, row.currency)} by {hold.until.isoformat()} broken"
        f" ({show_money(paid, row.currency)} paid)"
    )
    base = f"{ctx.tenant}:{ref[0]}:{ref[1]}:promise:{hold.id}"
    for number, action in enumerate(ctx.policy.promise_broken):
        if isinstance(action, EmailAction | SmsAction):
            ctx.add(
                DunningAction(
                    f"{NOTIFY_KIND}:dun:{base}:{number}",
                    action.kind,
                    ref[0],
                    customer[1],
                    ref[1],
                    why,
                    template=action.template,
                    amount=row.balance,
                    currency=row.currency,
                    detail=(("promise_until", hold.until.isoformat()), ("promise_amount", promised)),
                )
            )
        elif isinstance(action, SuspendAction):
            if action.tag not in ctx.tags.get(customer, frozenset()):
                ctx.add(
                    DunningAction(
                        f"{WEBHOOK_KIND}:suspend:{base}:{number}",
                        "suspend",
                        ref[0],
                        customer[1],
                        None,
                        why,
                        detail=(("tag", action.tag),),
                    )
                )
        elif isinstance(action, CallTaskAction | CollectionsAction):
            kind = "call" if isinstance(action, CallTaskAction) else "collections"
            note = action.note if isinstance(action, CallTaskAction) else "Hand over to collections"
            ctx.add(
                DunningAction(
                    f"task:{base}:{number}",
                    kind,
                    ref[0],
                    customer[1],
                    ref[1],
                    why,
                    note=note,
                    amount=row.balance,
                    currency=row.currency,
                )
            )


def suspend_tags(policy: DunningPolicy) -> set[str]:
    """Every tag a suspension in the policy puts on a customer."""
    tags = {a.tag for a in policy.promise_broken if isinstance(a, SuspendAction)}
    for p in policy.policies:
        for step in p.steps:
            tags |= {a.tag for a in step.actions if isinstance(a, SuspendAction)}
    return tags


def _resume(ctx: _Context, owing: set[CustomerRef], overdue: set[CustomerRef]) -> None:
    """Suspended customers who no longer owe anything past due are resumed (``owing``: customers with an open
    balance; ``overdue``: those with some of it past due, both from the plan's own read of the open invoices)."""
    tags = suspend_tags(ctx.policy)
    if not tags:
        return
    for customer, held in ctx.tags.items():
        for tag in sorted(held & tags):
            if customer in overdue:
                continue
            key = f"{WEBHOOK_KIND}:resume:{ctx.tenant}:{customer[0]}:{customer[1]}:{tag}:{ctx.today.isoformat()}"
            why = "nothing is past due any more" + ("" if customer in owing else " (nothing owed)")
            ctx.add(DunningAction(key, "resume", customer[0], customer[1], None, why, detail=(("tag", tag),)))


def _drop_recorded(session: Session, plan: DunningPlan) -> None:
    """Leave out what was decided already (a second plan on the same day shows nothing new)."""
    journal_keys = [a.key for a in plan.actions if not a.key.startswith("task:")]
    task_keys = [a.key for a in plan.actions if a.key.startswith("task:")]
    done: set[str] = set()
    for column, keys in ((col(JournalEntry.key), journal_keys), (col(DunningTask.key), task_keys)):
        for start in range(0, len(keys), CHUNK):
            done |= set(session.execute(sa.select(column).where(column.in_(keys[start : start + CHUNK]))).scalars())
    if done:
        plan.actions = [a for a in plan.actions if a.key not in done]


# --- recording ----------------------------------------------------------------------------------------------


def journal_dunning(
    session: Session, plan: DunningPlan, now: datetime, collecting: CollectionsSettings | None = None
) -> int:
    """Record the plan in the caller's transaction; returns how many actions were new.

    A collections action with ``submit`` hands the invoice over at once (``collecting``: the agency's
    terms); one that cannot be (already placed) becomes a task for a person like the others.
    """
    intents: list[journal.Intent] = []
    tasks: list[dict[str, Any]] = []
    submitted = 0
    for action in plan.actions:
        submit = action.kind == "collections" and collecting is not None and dict(action.detail).get("submit")
        if submit and collecting is not None and _submit(session, plan, action, collecting, now):
            submitted += 1
            continue
        if action.key.startswith("task:"):
            tasks.append(_task(plan.tenant, action, now))
        else:
            intents.append(_intent(plan.tenant, action, plan.today))
        if action.kind in ("suspend", "resume"):
            tag = str(dict(action.detail)["tag"])
            plan.tags.append(((action.connection, action.customer), tag, action.kind == "suspend"))
    recorded = submitted + len(journal.record_many(session, intents, now))
    recorded += _add_tasks(session, tasks)
    _save_states(session, plan.states, now)
    for outcome in ("kept", "broken"):
        closing = [hold for hold, result in plan.promises if result == outcome]
        for start in range(0, len(closing), CHUNK):
            session.execute(
                sa.update(InvoiceHold)
                .where(col(InvoiceHold.id).in_(closing[start : start + CHUNK]), col(InvoiceHold.released_at).is_(None))
                .values(outcome=outcome, released_at=now)
                .execution_options(synchronize_session=False)
            )
    _save_tags(session, plan.tags)
    session.flush()
    return recorded


def _submit(
    session: Session, plan: DunningPlan, action: DunningAction, collecting: CollectionsSettings, now: datetime
) -> bool:
    """Hand the invoice to the agency in this transaction (False: it cannot be, a person looks at it)."""
    assert action.invoice is not None
    try:
        with session.begin_nested():
            agency.submit(
                session, plan.tenant, (action.connection, action.invoice), collecting, action.why, now, plan.today
            )
    except agency.CollectionsError:
        return False
    return True


def _intent(tenant: str, action: DunningAction, today: date) -> journal.Intent:
    payload: dict[str, Any] = {
        "connection": action.connection,
        "customer": action.customer,
        "invoice": action.invoice,
        "policy": action.policy,
        "step": action.step,
        "why": action.why,
        **dict(action.detail),
    }
    if action.kind == LATE_FEE:
        payload.update(
            posting_kind=LATE_FEE,
            date=today.isoformat(),
            reference=action.key,
            invoice_external_id=action.invoice,
            customer_external_id=action.customer,
            amount=action.amount,
            currency=action.currency,
        )
        return journal.Intent(
            action.key, tenant, POSTING_KIND, payload, f"{LATE_FEE}:{action.connection}:{action.invoice}"
        )
    if action.kind in ("suspend", "resume"):
        payload["event"] = "customer.suspended" if action.kind == "suspend" else "customer.resumed"
        return journal.Intent(
            action.key, tenant, WEBHOOK_KIND, payload, f"customer:{action.connection}:{action.customer}"
        )
    payload.update(
        template=action.template,
        channel="sms" if action.kind == "sms" else "email",
        amount=action.amount,
        currency=action.currency,
    )
    subject = (
        f"invoice:{action.connection}:{action.invoice}"
        if action.invoice
        else f"customer:{action.connection}:{action.customer}"
    )
    return journal.Intent(action.key, tenant, NOTIFY_KIND, payload, subject)


def _task(tenant: str, action: DunningAction, now: datetime) -> dict[str, Any]:
    """A ``dunning_task`` row (plain values: a plan can hold hundreds of thousands)."""
    note = action.note or action.kind
    if dict(action.detail).get("submit"):
        note += "; submit with `arsync collections submit`"
    return {
        "key": action.key,
        "tenant_id": tenant,
        "connection_id": action.connection,
        "customer_external_id": action.customer,
        "invoice_external_id": action.invoice,
        "kind": action.kind,
        "note": f"{note} ({action.why})",
        "policy": action.policy,
        "step": action.step,
        "assignee": dict(action.detail).get("assignee"),
        "status": "open",
        "outcome": None,
        "outcome_note": None,
        "created_at": now,
        "done_at": None,
    }


def _add_tasks(session: Session, tasks: list[dict[str, Any]]) -> int:
    """Insert the tasks not there yet: per chunk, one look-up of the keys and one bulk insert."""
    added = 0
    for start in range(0, len(tasks), CHUNK):
        chunk = tasks[start : start + CHUNK]
        present = set(
            session.execute(
                sa.select(col(DunningTask.key)).where(col(DunningTask.key).in_([t["key"] for t in chunk]))
            ).scalars()
        )
        rows = []
        for task in chunk:
            if task["key"] not in present:
                present.add(task["key"])
                rows.append(task)
        if rows:
            session.execute(sa.insert(DunningTask).execution_options(render_nulls=True), rows)
            added += len(rows)
    return added


def _save_tags(session: Session, changes: list[tuple[CustomerRef, str, bool]]) -> None:
    """Suspensions put on (add) and taken off: per chunk, one look-up and one bulk insert or delete."""
    for start in range(0, len(changes), CHUNK):
        chunk = changes[start : start + CHUNK]
        triple = sa.tuple_(col(CustomerTag.connection_id), col(CustomerTag.customer_external_id), col(CustomerTag.tag))
        wanted = [(c, k, tag) for (c, k), tag, _ in chunk]
        columns = (col(CustomerTag.connection_id), col(CustomerTag.customer_external_id), col(CustomerTag.tag))
        present = {(c, k, t) for c, k, t in session.execute(sa.select(*columns).where(triple.in_(wanted)))}
        added = {(c, k, tag) for (c, k), tag, add in chunk if add} - present
        removed = [(c, k, tag) for (c, k), tag, add in chunk if not add and (c, k, tag) in present]
        if added:
            session.execute(
                sa.insert(CustomerTag),
                [{"connection_id": c, "customer_external_id": k, "tag": tag} for c, k, tag in sorted(added)],
            )
        if removed:
            session.execute(sa.delete(CustomerTag).where(triple.in_(removed)))


def _save_states(session: Session, states: list[StateChange], now: datetime) -> None:
    """Upsert each invoice's place in its schedule, a chunk per statement (the store's own upsert)."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    for start in range(0, len(states), CHUNK):
        chunk = states[start : start + CHUNK]
        statement = insert(DunningState).values(
            [
                {
                    "connection_id": s.connection,
                    "invoice_external_id": s.invoice,
                    "policy": s.policy,
                    "cycle": s.cycle,
                    "anchor": s.anchor,
                    "last_step": s.last_step,
                    "last_balance": s.last_balance,
                    "updated_at": now,
                }
                for s in chunk
            ]
        )
        excluded = statement.excluded
        session.execute(
            statement.on_conflict_do_update(
                index_elements=["connection_id", "invoice_external_id"],
                set_={
                    "policy": excluded.policy,
                    "cycle": excluded.cycle,
                    "anchor": excluded.anchor,
                    "last_step": excluded.last_step,
                    "last_balance": excluded.last_balance,
                    "updated_at": excluded.updated_at,
                },
            )
        )
