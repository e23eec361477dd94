"""Deciding what to charge: the auto-pay plan, and the vendor's batch.

:func:`plan_charges` streams a tenant's open invoices of enrolled customers
(oldest first per customer, so credits go to the oldest invoice) and decides,
for each, whether it is charged today, how much, with which method and why.
It writes nothing; :func:`journal_plan` records the decisions in the journal,
where :class:`collect.charging.ChargeExecutor` carries them out.

The amount charged is the ledger balance, less money already on its way
(:func:`collect.standing.outstanding_charges`), less credits and unapplied cash
applied first. With an instalment plan, it is what brings the balance down to
what the instalments still to come add up to. So a plan made twice, or after a
crash, finds nothing left to charge for what is already under way.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlmodel import col

from collect.charging import PlannedCharge
from collect.policy import AutopayPolicy, AutopayRule, Candidate
from collect.standing import (
    CHARGE_KIND,
    CREDIT_KIND,
    Credit,
    CustomerRef,
    InvoiceRef,
    LastDecline,
    Method,
    available_credits,
    blocking_holds,
    customer_tags,
    enrolled_methods,
    last_declines,
    outstanding_charges,
)
from connectors.values import minor_unit, show_money
from sync import journal
from sync.models import ChargeInstalment, Invoice, JournalEntry, SavedPaymentMethod

CHARGEABLE = ("open", "partially_paid")
YIELD_PER = 5000
ZERO = Decimal(0)

Mode = Literal["auto", "batch"]


@dataclass(frozen=True, slots=True)
class CreditUse:
    source: str
    source_id: str
    amount: Decimal


@dataclass(frozen=True, slots=True)
class PlanItem:
    charge: PlannedCharge
    number: str | None
    balance: Decimal
    outstanding: Decimal
    credits: tuple[CreditUse, ...]
    why: str

    def credit_intents(self) -> list[journal.Intent]:
        c = self.charge
        return [
            journal.Intent(
                key=f"{CREDIT_KIND}:{c.tenant}:{c.connection}:{c.invoice}:{use.source}:{use.source_id}:{c.part}",
                tenant=c.tenant,
                kind=CREDIT_KIND,
                payload={
                    "connection": c.connection,
                    "invoice": c.invoice,
                    "customer": c.customer,
                    "source": use.source,
                    "source_id": use.source_id,
                    "amount": use.amount,
                    "currency": c.currency,
                },
                subject=f"invoice:{c.connection}:{c.invoice}",
            )
            for use in self.credits
        ]


@dataclass
class ChargePlan:
    tenant: str
    today: date
    mode: Mode
    items: list[PlanItem] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    """Why invoices were not charged: reason -> count."""
    examined: int = 0

    def totals(self) -> dict[str, tuple[Decimal, Decimal, Decimal]]:
        """Per currency: (charged for invoices, surcharges, credits applied)."""
        sums: dict[str, tuple[Decimal, Decimal, Decimal]] = {}
        for item in self.items:
            principal, surcharge, credits = sums.get(item.charge.currency, (Decimal(0), Decimal(0), Decimal(0)))
            sums[item.charge.currency] = (
                principal + item.charge.amount,
                surcharge + item.charge.surcharge,
                credits + sum((u.amount for u in item.credits), Decimal(0)),
            )
        return sums


@dataclass(frozen=True, slots=True)
class Selection:
    """A vendor's batch: invoices or customers to charge now, whatever the rules say."""

    invoices: frozenset[InvoiceRef] = frozenset()
    customers: frozenset[CustomerRef] = frozenset()
    amount: Decimal | None = None
    """A partial amount (only with a single invoice)."""
    reference: str | None = None
    """Names a second batch of the same invoices on the same day (each batch is charged once per day otherwise)."""

    def part(self, today: date) -> str:
        return f"batch-{today.isoformat()}" + (f"-{self.reference}" if self.reference else "")


@dataclass
class _Context:
    tenant: str
    connections: Sequence[str]
    policy: AutopayPolicy
    today: date
    mode: Mode
    outstanding: dict[InvoiceRef, Decimal]
    holds: dict[InvoiceRef, str]
    declines: dict[InvoiceRef, LastDecline]
    tags: dict[CustomerRef, frozenset[str]]
    methods: dict[CustomerRef, Method]
    credits: dict[CustomerRef, list[Credit]]
    instalments: dict[InvoiceRef, list[tuple[int, date, Decimal]]]
    decided: set[tuple[str, str, str]]
    """(connection, invoice, part) of every charge already journaled: one decision is made once."""
    part: str
    """The decision's name in today's keys (``auto-2026-11-22``, ``batch-2026-11-22``)."""
    reasons: dict[str, str] = field(default_factory=dict)

    def why(self, rule: AutopayRule) -> str:
        """The rule's description, made once per plan (items share the string)."""
        if rule.name not in self.reasons:
            self.reasons[rule.name] = rule.describe()
        return self.reasons[rule.name]


def _instalments(session: Session, connections: Sequence[str]) -> dict[InvoiceRef, list[tuple[int, date, Decimal]]]:
    plans: dict[InvoiceRef, list[tuple[int, date, Decimal]]] = {}
    rows = session.execute(
        sa.select(
            col(ChargeInstalment.connection_id),
            col(ChargeInstalment.invoice_external_id),
            col(ChargeInstalment.seq),
            col(ChargeInstalment.due_on),
            col(ChargeInstalment.amount),
        )
        .where(col(ChargeInstalment.connection_id).in_(connections))
        .order_by(col(ChargeInstalment.seq))
    )
    for connection, invoice, seq, due_on, amount in rows:
        plans.setdefault((connection, invoice), []).append((seq, due_on, amount))
    return plans


def _decided(
    session: Session, tenant: str, today: date, instalment_invoices: Iterable[InvoiceRef]
) -> set[tuple[str, str, str]]:
    """Charges journaled for today's parts, and for invoices on instalments (whose parts span days).

    Older keys cannot collide with today's decisions, so they are not read: the
    journal grows by a key per charge, for ever.
    """
    prefix = f"charge:{tenant}:"
    recent = datetime.combine(today - timedelta(days=2), datetime.min.time(), tzinfo=UTC)
    subjects = [f"invoice:{c}:{i}" for c, i in instalment_invoices]
    keys = session.execute(
        sa.select(col(JournalEntry.key)).where(
            col(JournalEntry.kind) == CHARGE_KIND,
            col(JournalEntry.tenant_id) == tenant,
            sa.or_(col(JournalEntry.created_at) >= recent, col(JournalEntry.subject).in_(subjects)),
        )
    ).scalars()
    found = set()
    for key in keys:
        if key.startswith(prefix):
            connection, invoice, part, _attempt = key.removeprefix(prefix).rsplit(":", 3)
            found.add((connection, invoice, part))
    return found


OPEN_COLUMNS = (
    col(Invoice.connection_id),
    col(Invoice.external_id),
    col(Invoice.customer_external_id),
    col(Invoice.number),
    col(Invoice.issue_date),
    col(Invoice.due_date),
    col(Invoice.currency),
    col(Invoice.balance),
    col(Invoice.status),
    col(Invoice.agreement_ref),
)
"""What a decision reads of an invoice: plain rows, not ORM entities (a million of those cost seconds)."""


def _open_invoices(session: Session, connections: Sequence[str], selection: Selection | None) -> Iterator[Any]:
    enrolled = (
        sa.select(sa.literal(1))
        .where(
            col(SavedPaymentMethod.connection_id) == col(Invoice.connection_id),
            col(SavedPaymentMethod.customer_external_id) == col(Invoice.customer_external_id),
            col(SavedPaymentMethod.active).is_(True),
        )
        .exists()
    )
    query = sa.select(*OPEN_COLUMNS).where(col(Invoice.connection_id).in_(connections))
    if selection is None:
        query = query.where(col(Invoice.status).in_(CHARGEABLE), enrolled)
    else:
        # A batch names its invoices: each one not charged gets its reason (paid, not enrolled, ...).
        chosen = [
            sa.and_(col(Invoice.connection_id) == c, col(Invoice.external_id) == i) for c, i in selection.invoices
        ] + [
            sa.and_(col(Invoice.connection_id) == c, col(Invoice.customer_external_id) == k)
            for c, k in selection.customers
        ]
        query = query.where(sa.or_(*chosen) if chosen else sa.false())
    query = query.order_by(
        col(Invoice.connection_id), col(Invoice.customer_external_id), col(Invoice.issue_date), col(Invoice.external_id)
    )
    yield from session.execute(query.execution_options(yield_per=YIELD_PER))


def plan_charges(
    session: Session,
    tenant: str,
    connections: Sequence[str],
    policy: AutopayPolicy,
    today: date,
    *,
    selection: Selection | None = None,
) -> ChargePlan:
    """What auto-pay (or, with ``selection``, the vendor's batch) would charge on ``today``. Writes nothing."""
    mode: Mode = "auto" if selection is None else "batch"
    instalments = _instalments(session, connections)
    ctx = _Context(
        tenant=tenant,
        connections=connections,
        policy=policy,
        today=today,
        mode=mode,
        outstanding=outstanding_charges(session, tenant),
        holds=blocking_holds(session, connections, today),
        declines=last_declines(session, tenant),
        tags=customer_tags(session, connections),
        methods=enrolled_methods(session, connections),
        credits=available_credits(session, tenant, connections) if policy.apply_credits else {},
        instalments=instalments,
        decided=_decided(session, tenant, today, instalments),
        part=selection.part(today) if selection is not None else f"auto-{today.isoformat()}",
    )
    plan = ChargePlan(tenant, today, mode)
    for invoice in _open_invoices(session, connections, selection):
        plan.examined += 1
        decision = _decide(ctx, invoice, selection)
        if isinstance(decision, str):
            plan.skipped[decision] += 1
        else:
            plan.items.append(decision)
    return plan


def _decide(ctx: _Context, invoice: Any, selection: Selection | None) -> PlanItem | str:
    """The plan item for one invoice, or the reason it is not charged (a short, countable phrase)."""
    ref: InvoiceRef = (invoice.connection_id, invoice.external_id)
    customer: CustomerRef = (invoice.connection_id, invoice.customer_external_id or "")
    if invoice.status not in CHARGEABLE:
        return f"invoice is {invoice.status}"
    method = ctx.methods.get(customer)
    if method is None:
        return "no payment method enrolled for charges while the customer is absent"
    if ctx.policy.excluded_tags & ctx.tags.get(customer, frozenset()):
        return "customer excluded from auto-pay by tag"
    if ref in ctx.holds:
        return f"on hold ({ctx.holds[ref].split(':', 1)[0]})"
    decline = ctx.declines.get(ref)
    if decline is not None and decline.payment_method_id == method.payment_method_id:
        return f"last charge {decline.state} on this method: waiting for a new one (dunning has it)"
    outstanding = ctx.outstanding.get(ref, ZERO)
    due = invoice.balance - outstanding
    if due <= 0:
        return "already charged: payment on its way to the ledger"
    part = ctx.part
    why = ""
    schedule = ctx.instalments.get(ref)
    if selection is not None:
        if selection.amount is not None:
            if selection.amount > due:
                return f"amount asked exceeds what is owed ({show_money(due, invoice.currency)})"
            due = selection.amount
        why = "vendor batch (customer's permission to charge while absent on record)"
    elif schedule is not None:
        instalment = _due_instalment(schedule, ctx.today)
        if instalment is None:
            return "instalment plan: nothing due yet"
        seq, still_to_come = instalment
        due = due - still_to_come
        if due <= 0:
            return "instalment plan: instalment already paid"
        part, why = f"i{seq}", f"instalment {seq} of {len(schedule)}"
    if (ref[0], ref[1], part) in ctx.decided:
        if selection is not None:
            return "already charged in a batch today (give the batch a reference to charge again)"
        return "already decided today"
    uses = _credits_for(ctx.credits.get(customer, []), invoice.currency, due)
    net = due - sum((u.amount for u in uses), Decimal(0))
    if not why:
        candidate = Candidate(
            issue_date=invoice.issue_date,
            due_date=invoice.due_date,
            amount=net,
            currency=invoice.currency,
            from_agreement=invoice.agreement_ref is not None,
            tags=ctx.tags.get(customer, frozenset()),
            method_type=method.kind,
        )
        rule, _ = ctx.policy.matching_rule(candidate, ctx.today)
        if rule is None:
            return "no auto-pay rule matches today"
        why = ctx.why(rule)
    _consume(ctx.credits.get(customer, []), uses)
    surcharge = Decimal(0)
    if ctx.policy.surcharge is not None and net > 0:
        surcharge = ctx.policy.surcharge.amount(net, method.kind, method.funding, minor_unit(invoice.currency))
    charge = PlannedCharge(
        tenant=ctx.tenant,
        connection=invoice.connection_id,
        invoice=invoice.external_id,
        amount=net,
        currency=invoice.currency,
        processor_customer_id=method.processor_customer_id,
        payment_method_id=method.payment_method_id,
        customer=customer[1],
        surcharge=surcharge,
        method_type=method.kind,
        part=part,
    )
    return PlanItem(charge, invoice.number, invoice.balance, outstanding, tuple(uses), why)


def _due_instalment(schedule: list[tuple[int, date, Decimal]], today: date) -> tuple[int, Decimal] | None:
    """The latest instalment due by ``today`` and what the instalments after it add up to."""
    due = [(seq, amount) for seq, on, amount in schedule if on <= today]
    if not due:
        return None
    seq = due[-1][0]
    return seq, sum((amount for s, _, amount in schedule if s > seq), Decimal(0))


def _credits_for(credits: list[Credit], currency: str, due: Decimal) -> list[CreditUse]:
    uses = []
    left = due
    for credit in credits:
        if left <= 0:
            break
        if credit.currency != currency or credit.available <= 0:
            continue
        take = min(credit.available, left)
        uses.append(CreditUse(credit.source, credit.external_id, take))
        left -= take
    return uses


def _consume(credits: list[Credit], uses: list[CreditUse]) -> None:
    for use in uses:
        for i, credit in enumerate(credits):
            if (credit.source, credit.external_id) == (use.source, use.source_id):
                credits[i] = Credit(
                    credit.source, credit.external_id, credit.currency, credit.available - use.amount, credit.issued
                )


def journal_plan(session: Session, plan: ChargePlan, now: datetime) -> int:
    """Record the plan's charges and credit applications (in the caller's transaction). Returns charges recorded."""

    def intents() -> Iterator[journal.Intent]:
        for item in plan.items:
            yield from item.credit_intents()
            if item.charge.amount > 0:
                yield item.charge.intent()

    recorded = journal.record_many(session, intents(), now)
    return sum(1 for key in recorded if key.startswith("charge:"))
