"""Benchmark: the dunning planner (``collect.dunning.plan_dunning``) over a large ledger.

Issue 6's benchmark: ``dunning plan`` over 1,000,000 open invoices and 100,000
customers, time and peak memory. Built on ``bench/charge_plan.py``: the same
loader (seeded ``random.Random``, bulk ``INSERT`` in chunks of 10,000 rows, money
as ``Decimal``, a fresh SQLite file or PostgreSQL schema migrated with
``sync.db.upgrade``), the same enrolment for auto-pay, the same measuring and
printing helpers, imported from it.

The ledger, by default: 100,000 customers (``USD``, one billing contact each; 5%
tagged ``vip``, 0.2% tagged ``credit-hold`` by an earlier suspension; 30%
enrolled for off-session charges as in ``charge_plan.py``) and 1,000,000 open or
partly paid invoices issued over the last 150 days, due 30 days later, so that
every step of the policy below comes due for some of them. Of the open invoices,
1% are disputed, 0.5% carry a promise to pay (half of them past their date, of
those half kept), 0.5% a term extension and 0.5% a payment plan (three
``ChargeInstalment`` rows each); 2% of enrolled customers' invoices have a
declined charge in the last 30 days. For the risk score, half as many invoices
again (500,000) were paid in the last 14 months, each with its ``Payment`` and
``PaymentApplication``, some days late by a per-customer habit; 0.2% of them
carry a broken promise released then.

The policy (``DunningPolicy``, auto-pay on): ``vip`` (customers tagged ``vip``)
emails at +1 and +30 days from the due date; ``standard`` (everyone else) emails
at -3 and +1, charges a late fee (1.5%, 5.00 to 150.00) and emails at +15, opens
a call task at +30, suspends (tag ``credit-hold`` and a webhook) and emails at
+60, and hands over to collections at +90; a broken promise sends an email and
opens a call task; a US send window (9:00 to 17:00 on business days) and pacing
(20,000 a day, 24 h between two messages to a customer). Then:

1. ``plan_dunning`` for 2026-11-22 on the fresh ledger (no dunning state yet:
   every invoice gets its latest step due, the ones passed over are not fired)
   is timed: wall and CPU, invoices examined per second, time in the garbage
   collector, actions by kind, the process's peak RSS (``ru_maxrss``) before and
   after and, with ``--tracemalloc``, the tracemalloc peak of the call alone;
2. in a fresh process (unless ``--no-analyse``): each loader ``plan_dunning``
   calls, and its invoice stream, timed alone (with ``assess_customers`` taken
   apart into its queries), the whole plan with the cyclic garbage collector on
   and off and, with ``--profile``, a cProfile of the plan;
3. ``journal_dunning`` records the plan in one transaction (timed with its
   COMMIT; unless ``--no-journal``);
4. ``plan_dunning`` again on the same day: it must plan no action. If it plans
   any, the script says so and exits with 1 (a correctness check; nothing is
   asserted about timing);
5. ``plan_dunning`` on the next day, against the journaled state: the daily
   case (timed; what it would do is counted, not journaled).

Usage::

    python bench/dunning_plan.py                                  # 1M invoices, 100k customers, SQLite
    python bench/dunning_plan.py --db postgres
    python bench/dunning_plan.py --invoices 20000 --customers 2000    # a quick smoke run
    python bench/dunning_plan.py --invoices 100000 --customers 10000 --profile

See ``bench/README.md`` and ``docs/benchmarks.md``. PostgreSQL comes from
``ARSYNC_BENCH_PG_URL`` (default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``);
each run uses a fresh schema and drops it afterwards.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import os
import platform
import pstats
import random
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock
from decimal import Decimal
from pathlib import Path

import sqlalchemy as sa
from backfill_qbo import (
    cpu_seconds,
    current_rss_kib,
    database,
    db_label,
    maxrss_kib,
    mib,
    num,
    postgres_problem,
    revision,
    table,
    title,
)
from charge_plan import (
    CONN,
    CONNECTIONS,
    ENROLLED,
    NOW,
    SYNCED,
    TENANT,
    TODAY,
    GcTimer,
    Ledger,
    Loader,
    Part,
    add_enrolment,
    cents,
    count,
    customer_id,
    finish_ledger,
    in_own_process,
    invoice_id,
    pick_method,
    print_loading,
    rate,
    seconds,
    start_ledger,
    synced,
    traced,
)
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from collect import dunning, risk
from collect.dunning import DunningPlan, journal_dunning, plan_dunning
from collect.dunning_policy import (
    CallTaskAction,
    CollectionsAction,
    DunningPolicy,
    EmailAction,
    LateFeeAction,
    Policy,
    Segment,
    Step,
    SuspendAction,
)
from collect.risk import assess_customers
from collect.send_window import Pacing, SendWindow
from collect.standing import customer_tags, enrolled_methods, last_declines
from sync.db import make_engine
from sync.models import (
    ChargeInstalment,
    Customer,
    CustomerContact,
    CustomerTag,
    DunningState,
    DunningTask,
    Invoice,
    InvoiceHold,
    JournalEntry,
    Payment,
    PaymentApplication,
    ProcessorPayment,
)

TOMORROW = TODAY + timedelta(days=1)
NEXT_DAY_NOW = NOW + timedelta(days=1)
AUTOPAY = True
"""The tenant charges enrolled customers automatically (``plan_dunning(..., autopay=True)``)."""
SUSPEND_TAG = "credit-hold"

POLICY = DunningPolicy(
    policies=(
        Policy(
            name="vip",
            segment=Segment(tags_any=frozenset({"vip"})),
            steps=(
                Step(name="overdue", days=1, actions=(EmailAction(template="reminder_overdue"),)),
                Step(name="final", days=30, actions=(EmailAction(template="final_notice"),)),
            ),
        ),
        Policy(
            name="standard",
            steps=(
                Step(name="upcoming", days=-3, actions=(EmailAction(template="reminder_upcoming"),)),
                Step(name="overdue", days=1, actions=(EmailAction(template="reminder_overdue"),)),
                Step(
                    name="late-fee",
                    days=15,
                    actions=(
                        LateFeeAction(percent=Decimal("1.5"), minimum=Decimal("5.00"), maximum=Decimal("150.00")),
                        EmailAction(template="late_fee_notice"),
                    ),
                ),
                Step(name="call", days=30, actions=(CallTaskAction(),)),
                Step(
                    name="suspend",
                    days=60,
                    actions=(SuspendAction(tag=SUSPEND_TAG), EmailAction(template="suspension_notice")),
                ),
                Step(name="collections", days=90, actions=(CollectionsAction(),)),
            ),
        ),
    ),
    window=SendWindow(start=clock(9), end=clock(17), business_days_only=True, country="US"),
    pacing=Pacing(daily_cap=20_000, min_gap=timedelta(hours=24)),
    promise_broken=(EmailAction(template="promise_broken"), CallTaskAction(note="Follow up the broken promise")),
)

# Shares of the generated ledger.
OPEN_DAYS = 150
"""Open invoices are issued over this many days before the plan's day, due 30 days after issue."""
PAID_SHARE = 0.5
"""Invoices paid in full in the past, per open invoice (500,000 for 1,000,000)."""
TAGS = (("vip", 0.05), (SUSPEND_TAG, 0.002))
"""Of all customers, drawn independently."""
PARTLY_PAID = 0.20
HOLDS = (("dispute", 0.01), ("promise", 0.005), ("extension", 0.005), ("plan", 0.005))
"""Of open invoices, one at most each."""
DECLINED = 0.02
"""Of enrolled customers' open invoices: a declined charge attempt in the last 30 days."""
DECLINE_CODES = ("insufficient_funds", "card_declined", "expired_card", "do_not_honor")
BROKEN_BEFORE = 0.002
"""Of paid invoices: a promise to pay that was broken, released when the invoice was paid."""
HABITS = ((0.60, -5, 3), (0.25, 5, 6), (0.12, 25, 10), (0.03, 60, 20))
"""How late customers pay: (share of customers, mean days late, spread); early counts as on time."""


@dataclass
class DunningLedger(Ledger):
    """What was generated: ``charge_plan.Ledger`` and the counts of this ledger's parts."""

    open_invoices: int = 0
    paid_invoices: int = 0
    holds: Counter[str] = field(default_factory=Counter)
    tags: Counter[str] = field(default_factory=Counter)
    declines: int = 0
    instalments: int = 0


def generate(url: str, customers: int, invoices: int, seed: int) -> DunningLedger:
    """Migrate the database at ``url`` and fill it. Runs in its own process (see ``main``)."""
    ledger = DunningLedger()
    build = start_ledger(url, ledger)
    load = build.load
    rng = random.Random(seed)

    enrolled: list[bool] = []
    habits: list[tuple[int, int]] = []
    """Per customer index: mean days late and spread of its payments."""
    for c in range(customers):
        ext = customer_id(c)
        load.add(
            Customer,
            synced(
                {"id": c + 1, "connection_id": CONN, "external_id": ext, "name": f"Customer {c}", "currency": "USD"}
            ),
        )
        load.add(
            CustomerContact,
            {"customer_id": c + 1, "email": f"billing@c{c:07d}.example.com", "name": f"Billing {c}", "role": "billing"},
        )
        for tag, share in TAGS:
            if rng.random() < share:
                load.add(CustomerTag, {"connection_id": CONN, "customer_external_id": ext, "tag": tag})
                ledger.tags[tag] += 1
        pick, habit = rng.random(), HABITS[-1]
        for candidate in HABITS:
            if pick < candidate[0]:
                habit = candidate
                break
            pick -= candidate[0]
        habits.append((habit[1], habit[2]))
        if rng.random() >= ENROLLED:
            enrolled.append(False)
            continue
        enrolled.append(True)
        kind, funding = pick_method(rng)
        add_enrolment(load, c, kind, funding, SYNCED - timedelta(days=rng.randrange(1, 400)))
    ledger.enrolled_customers = sum(enrolled)
    load.flush()  # the customers before their contacts' foreign keys, whatever the chunk sizes

    for i in range(invoices):
        c = rng.randrange(customers)
        ext, customer = invoice_id(i), customer_id(c)
        issued = TODAY - timedelta(days=rng.randrange(OPEN_DAYS))
        due = issued + timedelta(days=30)
        balance = cents(rng.randint(1_000, 500_000))
        partly = rng.random() < PARTLY_PAID
        total = balance + cents(rng.randint(1_000, 200_000)) if partly else balance
        load.add(
            Invoice,
            synced(
                {
                    "connection_id": CONN,
                    "external_id": ext,
                    "customer_external_id": customer,
                    "number": f"INV-{i}",
                    "issue_date": issued,
                    "due_date": due,
                    "terms": "Net 30",
                    "currency": "USD",
                    "total": total,
                    "balance": balance,
                    "status": "partially_paid" if partly else "open",
                    "memo": None,
                    "currency_rate": None,
                    "agreement_ref": None,
                }
            ),
        )
        ledger.open_invoices += 1
        held: str | None
        draw, held = rng.random(), None
        for hold, share in HOLDS:
            if draw < share:
                held = hold
                break
            draw -= share
        if held is not None:
            add_hold(load, ledger, rng, ext, held, due, balance)
        if enrolled[c]:
            ledger.enrolled_invoices += 1
            if rng.random() < DECLINED:
                add_decline(load, ledger, rng, ext, customer, balance)

    for p in range(int(invoices * PAID_SHARE)):
        c = rng.randrange(customers)
        add_paid(load, ledger, rng, p, customer_id(c), habits[c])
    finish_ledger(build)
    return ledger


def add_hold(
    load: Loader, ledger: DunningLedger, rng: random.Random, ext: str, kind: str, due: date, balance: Decimal
) -> None:
    """A dispute, a promise to pay (half of them past their date, of those half kept), an extension or a plan."""
    until: date | None = None
    amount: Decimal | None = None
    balance_at: Decimal | None = None
    reason = {
        "dispute": "customer disputes the hours billed",
        "promise": "promised on the phone",
        "extension": "terms extended by agreement",
        "plan": "three monthly instalments",
    }[kind]
    if kind == "promise":
        until = TODAY + timedelta(days=rng.randint(-14, 13))
        amount = balance if rng.random() < 0.5 else (balance / 2).quantize(Decimal("0.01"))
        kept = until < TODAY and rng.random() < 0.5
        balance_at = balance + amount if kept else balance
    elif kind == "extension":
        until = due + timedelta(days=rng.randint(14, 45))
    elif kind == "plan":
        first = TODAY + timedelta(days=rng.randint(-30, 10))
        part = (balance / 3).quantize(Decimal("0.01"))
        for seq in range(3):
            load.add(
                ChargeInstalment,
                {
                    "connection_id": CONN,
                    "invoice_external_id": ext,
                    "seq": seq + 1,
                    "due_on": first + timedelta(days=30 * seq),
                    "amount": part if seq < 2 else balance - 2 * part,
                    "currency": "USD",
                    "created_at": SYNCED - timedelta(days=40),
                },
            )
            ledger.instalments += 1
    load.add(InvoiceHold, hold_row(ext, kind, reason, until, amount, balance_at, None, None))
    ledger.holds[kind] += 1


def hold_row(
    ext: str,
    kind: str,
    reason: str,
    until: date | None,
    amount: Decimal | None,
    balance_at: Decimal | None,
    released_at: datetime | None,
    outcome: str | None,
) -> dict[str, object]:
    return {
        "connection_id": CONN,
        "invoice_external_id": ext,
        "kind": kind,
        "reason": reason,
        "until": until,
        "created_at": SYNCED - timedelta(days=20),
        "released_at": released_at,
        "amount": amount,
        "balance_at": balance_at,
        "outcome": outcome,
    }


def add_decline(
    load: Loader, ledger: DunningLedger, rng: random.Random, ext: str, customer: str, balance: Decimal
) -> None:
    """A charge attempt on the invoice that the processor declined, 1 to 30 days ago."""
    at = NOW - timedelta(days=rng.randint(1, 30))
    hard = rng.random() < 0.3
    load.add(
        ProcessorPayment,
        {
            "key": f"autopay:declined:{CONN}:{ext}",
            "processor_id": f"pi_d_{ext}",
            "charge_id": f"ch_d_{ext}",
            "tenant_id": TENANT,
            "connection_id": CONN,
            "invoice_external_id": ext,
            "customer_external_id": customer,
            "amount": balance,
            "surcharge": Decimal(0),
            "currency": "USD",
            "method_type": "card",
            "payment_method_id": f"pm_{customer}",
            "state": "hard_decline" if hard else "soft_decline",
            "decline_code": rng.choice(DECLINE_CODES),
            "returned": False,
            "created_at": at,
            "updated_at": at,
            "applied_in_ledger_at": None,
        },
    )
    ledger.declines += 1


def add_paid(
    load: Loader, ledger: DunningLedger, rng: random.Random, p: int, customer: str, habit: tuple[int, int]
) -> None:
    """An invoice paid in full in the past (the payment history risk reads), with its payment."""
    ext = f"H{p:08d}"
    issued = TODAY - timedelta(days=rng.randrange(60, 450))
    due = issued + timedelta(days=30)
    late = max(-10, int(rng.gauss(habit[0], habit[1])))
    paid_on = min(due + timedelta(days=late), TODAY - timedelta(days=1))
    amount = cents(rng.randint(1_000, 500_000))
    load.add(
        Invoice,
        synced(
            {
                "connection_id": CONN,
                "external_id": ext,
                "customer_external_id": customer,
                "number": f"INV-H{p}",
                "issue_date": issued,
                "due_date": due,
                "terms": "Net 30",
                "currency": "USD",
                "total": amount,
                "balance": Decimal(0),
                "status": "paid",
                "memo": None,
                "currency_rate": None,
                "agreement_ref": None,
            }
        ),
    )
    load.add(
        Payment,
        synced(
            {
                "id": p + 1,
                "connection_id": CONN,
                "external_id": f"PH{p:08d}",
                "customer_external_id": customer,
                "payment_date": paid_on,
                "currency": "USD",
                "amount": amount,
                "unapplied": Decimal(0),
                "status": "applied",
                "reference": None,
                "method": "check",
                "currency_rate": None,
                "kind": "payment",
            }
        ),
    )
    load.add(
        PaymentApplication,
        {"payment_id": p + 1, "target_entity": "invoice", "target_external_id": ext, "amount": amount},
    )
    ledger.paid_invoices += 1
    if rng.random() < BROKEN_BEFORE:
        released = datetime.combine(paid_on, clock(12), UTC)
        row = hold_row(
            ext, "promise", "promised on the phone", paid_on - timedelta(days=10), amount, amount, released, "broken"
        )
        load.add(InvoiceHold, row)
        ledger.holds["promise (broken, released)"] += 1


# --- measuring ------------------------------------------------------------------------------------


@dataclass
class Timed:
    plan: DunningPlan
    wall: float
    cpu: float
    gc: GcTimer
    rss_peak_before_kib: int
    rss_peak_after_kib: int
    rss_before_kib: int
    rss_after_kib: int
    traced_peak: int | None = None
    traced_retained: int | None = None
    """What tracemalloc still counted at the end of the call: essentially the plan itself."""


def timed_plan(sessions: sessionmaker[Session], day: date = TODAY, *, trace: bool = False) -> Timed:
    gc.collect()
    peak_before, before = maxrss_kib(), current_rss_kib()
    timer = GcTimer()
    with timer.installed(), sessions() as session:
        if trace:
            tracemalloc.start()
        cpu, started = cpu_seconds(), time.perf_counter()
        plan = plan_dunning(session, TENANT, CONNECTIONS, POLICY, day, autopay=AUTOPAY)
        wall, cpu = time.perf_counter() - started, cpu_seconds() - cpu
        traced_retained, traced_peak = None, None
        if trace:
            traced_retained, traced_peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
    return Timed(
        plan, wall, cpu, timer, peak_before, maxrss_kib(), before, current_rss_kib(), traced_peak, traced_retained
    )


@dataclass
class Analysis:
    """``plan_dunning`` taken apart, in a fresh process (no plan held, so the collector sees only the part)."""

    plan_wall: float
    plan_gc: float
    parts: list[Part]
    inner: set[str]
    """Names of parts that are inside another part (not subtracted again from the whole)."""
    plan_wall_gc_off: float
    profile: str | None


def analyse(url: str, profile_top: int | None) -> Analysis:
    """Each loader of ``plan_dunning`` alone, then its invoice stream, the whole plan with the cyclic garbage
    collector on and off, and optionally a cProfile of the plan. In its own process."""
    engine = make_engine(url)
    sessions = sessionmaker(engine, expire_on_commit=False)
    whole = timed_plan(sessions)
    plan_wall, plan_gc = whole.wall, whole.gc.seconds
    with sessions() as session:
        started = time.perf_counter()
        dunning._drop_recorded(session, whole.plan)
        drop = Part(
            "_drop_recorded: the plan's keys looked up in journal and dunning_task",
            len(whole.plan.actions),
            time.perf_counter() - started,
            0.0,
        )
    del whole
    ids: list[str] | None = None
    conns = list(CONNECTIONS)
    steps: list[tuple[str, Callable[[Session], int]]] = [
        ("customer_tags", lambda s: len(customer_tags(s, CONNECTIONS))),
        ("_holds", lambda s: len(dunning._holds(s, CONNECTIONS))),
        ("last_declines", lambda s: len(last_declines(s, TENANT))),
        ("enrolled_methods", lambda s: len(enrolled_methods(s, CONNECTIONS))),
        ("assess_customers (collect.risk)", lambda s: len(assess_customers(s, TENANT, CONNECTIONS, TODAY))),
        (
            "… customers (SELECT connection_id, external_id)",
            lambda s: len(
                s.execute(
                    sa.select(col(Customer.connection_id), col(Customer.external_id)).where(
                        col(Customer.connection_id).in_(conns), col(Customer.deleted).is_(False)
                    )
                ).all()
            ),
        ),
        ("… _paid_history", lambda s: len(s.execute(risk._paid_history(s, conns, TODAY, ids)).all())),
        ("… _broken_promises", lambda s: len(s.execute(risk._broken_promises(conns, TODAY, ids)).all())),
        ("… _declines", lambda s: len(s.execute(risk._declines(TENANT, conns, TODAY, ids)).all())),
        ("… _open_positions", lambda s: sum(1 for _ in risk._open_positions(s, conns, TODAY, ids))),
        ("_waivers", lambda s: len(dunning._waivers(s, CONNECTIONS))),
        ("late_fees_charged", lambda s: len(dunning.late_fees_charged(s, TENANT))),
        ("_instalments", lambda s: len(dunning._instalments(s, CONNECTIONS))),
        (
            "_open_invoices: the stream of rows, no decisions",
            lambda s: sum(1 for _ in dunning._open_invoices(s, CONNECTIONS)),
        ),
    ]
    inner = {name for name, _ in steps if name.startswith("…")}
    parts: list[Part] = []
    for name, step in steps:
        gc.collect()
        timer = GcTimer()
        with timer.installed(), sessions() as session:
            started = time.perf_counter()
            rows = step(session)
            parts.append(Part(name, rows, time.perf_counter() - started, timer.seconds))
    parts.append(drop)
    gc.collect()
    gc.disable()
    try:
        off = timed_plan(sessions)
    finally:
        gc.enable()
    plan_wall_gc_off = off.wall
    del off
    profile = None
    if profile_top:
        gc.collect()
        profiler = cProfile.Profile()
        with sessions() as session:
            profiler.enable()
            plan_dunning(session, TENANT, CONNECTIONS, POLICY, TODAY, autopay=AUTOPAY)
            profiler.disable()
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("tottime").print_stats(profile_top)
        stats.sort_stats("cumulative").print_stats(profile_top)
        profile = out.getvalue()
    engine.dispose()
    return Analysis(plan_wall, plan_gc, parts, inner, plan_wall_gc_off, profile)


# --- printing -------------------------------------------------------------------------------------


def print_ledger(ledger: DunningLedger, customers: int, loading: float) -> None:
    tags = ", ".join(f"{tag} {num(n)}" for tag, n in ledger.tags.items())
    print_loading(
        ledger,
        loading,
        [
            ["customers (one billing contact each)", num(customers)],
            ["… tagged", tags or "none"],
            ["… enrolled for auto-pay", num(ledger.enrolled_customers)],
            ["open invoices (issued over the last 150 days, due 30 days later)", num(ledger.open_invoices)],
            ["… of enrolled customers", num(ledger.enrolled_invoices)],
            *([f"invoice holds: {kind}", num(n)] for kind, n in ledger.holds.items()),
            ["payment-plan instalments", num(ledger.instalments)],
            ["declined charges (last 30 days)", num(ledger.declines)],
            ["invoices paid in the past (payment + application each)", num(ledger.paid_invoices)],
        ],
    )


def top_reasons(plan: DunningPlan, limit: int = 8) -> list[list[str]]:
    rows = [["nothing today because", "invoices"]]
    for reason, n in plan.skipped.most_common(limit):
        rows.append([reason, num(n)])
    rest = sum(plan.skipped.values()) - sum(n for _, n in plan.skipped.most_common(limit))
    if rest:
        rows.append([f"({len(plan.skipped) - limit} other reasons)", num(rest)])
    rows.append(["in all", num(sum(plan.skipped.values()))])
    return rows


def action_rows(plan: DunningPlan) -> list[list[str]]:
    rows = [["actions planned", num(len(plan.actions))]]
    for kind, n in sorted(plan.counts().items(), key=lambda item: -item[1]):
        rows.append([f"… {kind}", num(n)])
    fees = sum((a.amount or Decimal(0) for a in plan.actions if a.kind == dunning.LATE_FEE), Decimal(0))
    if fees:
        rows.append(["late fees in all", f"USD {fees:,.2f}"])
    promises = Counter(outcome for _, outcome in plan.promises)
    rows.append(["invoice states to write (dunning_state)", num(len(plan.states))])
    rows.append(["promises past their day: kept / broken", f"{num(promises['kept'])} / {num(promises['broken'])}"])
    return rows


def print_plan(timed: Timed, open_invoices: int, db: str, heading: str) -> None:
    plan = timed.plan
    traced_run = " (tracemalloc on: slower)" if timed.traced_peak is not None else ""
    title(f"{heading}, {db_label(db)}{traced_run}")
    gen = ", ".join(f"gen{g} {n}" for g, n in sorted(timed.gc.collections.items()))
    table(
        [
            ["open invoices in the ledger (balance > 0)", num(open_invoices)],
            ["invoices examined", num(plan.examined)],
            ["plan_dunning wall time", seconds(timed.wall)],
            ["plan_dunning CPU time (this process)", seconds(timed.cpu)],
            ["invoices examined per second", rate(plan.examined, timed.wall)],
            ["µs per invoice examined", f"{timed.wall / plan.examined * 1e6:,.1f}" if plan.examined else "-"],
            ["in the garbage collector", f"{seconds(timed.gc.seconds)} ({gen or 'no collections'})"],
            *action_rows(plan),
            ["peak RSS before the plan (ru_maxrss)", mib(timed.rss_peak_before_kib)],
            ["peak RSS after the plan (ru_maxrss)", mib(timed.rss_peak_after_kib)],
            ["growth of the peak during the plan", mib(timed.rss_peak_after_kib - timed.rss_peak_before_kib)],
            ["RSS before / after (the plan still held)", f"{mib(timed.rss_before_kib)} / {mib(timed.rss_after_kib)}"],
            ["tracemalloc peak of the plan call", traced(timed.traced_peak)],
            ["tracemalloc at the end of the call (the plan held)", traced(timed.traced_retained)],
            [
                "bytes per action planned (tracemalloc at the end / actions)",
                num(timed.traced_retained / len(plan.actions)) if timed.traced_retained and plan.actions else "-",
            ],
        ],
        header=False,
    )
    print()
    table(top_reasons(plan))


def print_analysis(analysis: Analysis) -> None:
    title("The parts of plan_dunning, each alone (in a fresh process)")
    wall = analysis.plan_wall
    rows = [["part", "rows", "time", "of which GC", "share of the plan"]]
    rows.append(["plan_dunning, whole", "", seconds(wall), seconds(analysis.plan_gc), "100%"])
    for part in analysis.parts:
        rows.append([part.name, num(part.rows), seconds(part.wall), seconds(part.gc), f"{part.wall / wall:.0%}"])
    rest = wall - sum(part.wall for part in analysis.parts if part.name not in analysis.inner)
    rows.append(["decisions and actions (the whole less the parts)", "", seconds(rest), "", f"{rest / wall:.0%}"])
    rows.append(["plan_dunning with the cyclic GC off (gc.disable())", "", seconds(analysis.plan_wall_gc_off), "", ""])
    table(rows, align="lrrrr")
    print("  (… rows are the queries of assess_customers, each alone: inside its figure, not added again)")
    if analysis.profile:
        title("cProfile of one more plan_dunning in that process (top functions by own time, then cumulative)")
        print(analysis.profile)


# --- command line ---------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Time the dunning planner over a generated ledger.")
    parser.add_argument("--invoices", type=int, default=1_000_000, help="open invoices (default 1000000)")
    parser.add_argument("--customers", type=int, default=100_000, help="customers (default 100000)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the generated ledger (default 1)")
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite", help="the ledger's database")
    parser.add_argument(
        "--tracemalloc", action="store_true", help="trace allocations during the first plan call (slower; marked)"
    )
    parser.add_argument(
        "--journal",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="journal the plan, plan again (must plan nothing), then plan the next day (default on)",
    )
    parser.add_argument(
        "--profile",
        type=int,
        nargs="?",
        const=25,
        default=None,
        metavar="N",
        help="in the analysis process, plan once more under cProfile and print the top N functions (default 25)",
    )
    parser.add_argument(
        "--analyse",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="time each part of plan_dunning alone, and the plan with the GC off, in a fresh process (default on)",
    )
    args = parser.parse_args(argv)
    if args.profile is not None and not args.analyse:
        parser.error("--profile runs in the analysis process: drop --no-analyse")
    if args.invoices < 0 or args.customers < 1:
        parser.error("--invoices must not be negative and --customers must be at least 1")
    return args


def open_count(sessions: sessionmaker[Session]) -> int:
    return count(
        sessions,
        sa.select(sa.func.count())
        .select_from(Invoice)
        .where(col(Invoice.status).in_(dunning.OPEN), col(Invoice.balance) > Decimal(0)),
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    print(
        f"arsync dunning plan benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, {platform.platform()}, "
        f"load average {os.getloadavg()[0]:.2f}, {revision()}"
    )
    print(
        f"{db_label(args.db)}, {num(args.invoices)} open invoices, {num(args.customers)} customers, "
        f"seed {args.seed}, plan day {TODAY.isoformat()}, auto-pay on"
    )
    if args.db == "postgres" and (problem := postgres_problem()):
        print(problem)
        return 2
    with tempfile.TemporaryDirectory(prefix="arsync-bench-") as tmp, database(args.db, Path(tmp)) as url:
        started = time.perf_counter()
        # Loading and the analysis each run in their own process: this process's ru_maxrss is the plan's.
        ledger: DunningLedger = in_own_process(generate, url, args.customers, args.invoices, args.seed)
        print_ledger(ledger, args.customers, time.perf_counter() - started)
        sys.stdout.flush()

        engine = make_engine(url)
        sessions = sessionmaker(engine, expire_on_commit=False)
        open_invoices = open_count(sessions)
        timed = timed_plan(sessions, trace=args.tracemalloc)
        print_plan(timed, open_invoices, args.db, f"plan_dunning on {TODAY.isoformat()}, no dunning state yet")
        sys.stdout.flush()
        if args.analyse:
            print_analysis(in_own_process(analyse, url, args.profile))
            sys.stdout.flush()
        failed = False
        if args.journal:
            journaled = journal(sessions, timed.plan)
            del timed  # the plans below are measured without the first one held
            sys.stdout.flush()
            failed = not journaled or plan_again(sessions)
            if journaled:
                sys.stdout.flush()
                next_day = timed_plan(sessions, TOMORROW)
                print_plan(
                    next_day,
                    open_invoices,
                    args.db,
                    f"plan_dunning on the next day, {TOMORROW.isoformat()}, after journaling (not journaled)",
                )
        engine.dispose()
    return 1 if failed else 0


def journal(sessions: sessionmaker[Session], plan: DunningPlan) -> bool:
    """Record ``plan`` with ``journal_dunning`` in one transaction, and say what it wrote and how fast.
    False if it failed (the database refused a statement: a bug, reported without the statement's text)."""
    tasks = sum(1 for a in plan.actions if a.key.startswith("task:"))
    states, promises = len(plan.states), len(plan.promises)
    title("journal_dunning, one transaction")
    started = time.perf_counter()
    try:
        with sessions.begin() as session:
            recorded = journal_dunning(session, plan, NOW)
            inside = time.perf_counter() - started
    except sa.exc.DBAPIError as exc:
        statement = " ".join(str(exc.statement or "").split()[:12])
        print(
            f"  FAILED after {seconds(time.perf_counter() - started)}: {type(exc.orig).__name__}: {exc.orig}\n"
            f"  in: {statement} …\n  (rolled back; the plans after journaling are skipped)"
        )
        return False
    wall = time.perf_counter() - started
    table(
        [
            ["actions recorded (journal entries + tasks)", num(recorded)],
            ["… journal entries (notify, posting, webhook)", num(len(plan.actions) - tasks)],
            ["… tasks (dunning_task)", num(tasks)],
            ["invoice states written (dunning_state, upserted)", num(states)],
            ["promises closed (kept or broken)", num(promises)],
            ["customer tags put on or taken off", num(len(plan.tags))],
            ["journal_dunning (inside the transaction)", seconds(inside)],
            ["journal_dunning + COMMIT", seconds(wall)],
            ["actions recorded per second", rate(recorded, wall)],
            ["rows written per second (actions + states)", rate(recorded + states, wall)],
            ["peak RSS after journaling (ru_maxrss)", mib(maxrss_kib())],
        ],
        header=False,
    )
    table(
        [
            ["rows now in", "journal", "dunning_task", "dunning_state"],
            [
                "",
                num(count(sessions, sa.select(sa.func.count()).select_from(JournalEntry))),
                num(count(sessions, sa.select(sa.func.count()).select_from(DunningTask))),
                num(count(sessions, sa.select(sa.func.count()).select_from(DunningState))),
            ],
        ],
        header=False,
    )
    return True


def plan_again(sessions: sessionmaker[Session]) -> bool:
    """Plan the same day again after journaling. True if it planned any action (a bug)."""
    again = timed_plan(sessions)
    plan = again.plan
    title("plan_dunning again on the same day, after journaling (must plan no action)")
    table(
        [
            ["invoices examined", num(plan.examined)],
            ["plan_dunning wall time", seconds(again.wall)],
            ["plan_dunning CPU time", seconds(again.cpu)],
            ["in the garbage collector", seconds(again.gc.seconds)],
            ["invoices examined per second", rate(plan.examined, again.wall)],
            *action_rows(plan),
            ["peak RSS after (ru_maxrss) / RSS after", f"{mib(again.rss_peak_after_kib)} / {mib(again.rss_after_kib)}"],
        ],
        header=False,
    )
    print()
    table(top_reasons(plan))
    if not plan.actions:
        print("  OK: no action planned twice")
        return False
    print(
        f"\nFAILED: the plan after journaling planned {len(plan.actions)} actions, e.g. "
        + ", ".join(f"{a.key} ({a.why})" for a in plan.actions[:5])
    )
    return True


if __name__ == "__main__":
    raise SystemExit(main())
