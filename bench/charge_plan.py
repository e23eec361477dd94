"""Benchmark: the auto-pay planner (``collect.autopay.plan_charges``) over a large ledger.

A ledger is generated from a seed (``random.Random(seed)``) and written in bulk
(``session.execute(sa.insert(Model), [dicts...])`` in chunks, money as
``Decimal``) into a fresh SQLite file or a fresh PostgreSQL schema migrated with
``sync.db.upgrade``. By default: 100,000 customers, 30% of them enrolled for
off-session charges (80% credit cards, 10% debit cards, 10% US bank accounts),
and 1,000,000 open or partly paid invoices issued over the last 90 days, due 30
days later, 10.00 to 5,000.00, 20% from an agreement; credit notes, unapplied
cash, disputes, tags, succeeded charges the ledger has not seen yet and pending
charges from yesterday's plan. Then, with a two-rule policy (on the due date;
on the invoice date for agreement invoices paid by bank debit), a ``no-autopay``
exclusion and a 2.9% + 0.30 card surcharge capped at 3%:

1. ``plan_charges`` is timed (wall and CPU, invoices examined per second, time in
   the garbage collector), with the process's peak RSS (``ru_maxrss``) before and
   after and, with ``--tracemalloc``, the tracemalloc peak of the call alone. The
   data is generated in a separate process, so the high-water mark is the plan's;
2. in another fresh process (unless ``--no-analyse``): the loaders ``plan_charges``
   calls and its invoice stream, each timed alone, the whole plan with the cyclic
   garbage collector on and off and, with ``--profile``, a cProfile of the plan;
3. ``journal_plan`` records the plan in one transaction (unless ``--no-journal``);
4. ``plan_charges`` runs again: it must plan nothing, since everything is now on
   its way. If it plans anything, the script says so and exits with 1 (a
   correctness check; nothing is asserted about timing).

Usage::

    python bench/charge_plan.py                                  # 1M invoices, 100k customers, SQLite
    python bench/charge_plan.py --db postgres
    python bench/charge_plan.py --invoices 20000 --customers 2000    # a quick smoke run
    python bench/charge_plan.py --invoices 100000 --customers 10000 --profile

See ``bench/README.md`` and ``docs/benchmarks.md``. PostgreSQL comes from
``ARSYNC_BENCH_PG_URL`` (default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``);
each run uses a fresh schema and drops it afterwards.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import multiprocessing
import os
import platform
import pstats
import random
import sys
import tempfile
import time
import tracemalloc
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

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
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import SQLModel, col

from collect import autopay
from collect.autopay import ChargePlan, journal_plan, plan_charges
from collect.charging import PlannedCharge
from collect.policy import AutopayPolicy, AutopayRule, SurchargePolicy
from collect.standing import (
    available_credits,
    blocking_holds,
    customer_tags,
    enrolled_methods,
    last_declines,
    outstanding_charges,
)
from connectors import jsonwire
from sync.db import make_engine, upgrade
from sync.models import (
    Connection,
    CreditNote,
    Customer,
    CustomerTag,
    Invoice,
    InvoiceHold,
    JournalEntry,
    Payment,
    ProcessorLink,
    ProcessorPayment,
    SavedPaymentMethod,
    Tenant,
)

TENANT = "bench"
CONN = "bench-qbo"
CONNECTIONS = (CONN,)
TODAY = date(2026, 11, 22)
"""The plan's day. Fixed, so that a seed gives the same ledger and the same plan on any day."""
NOW = datetime(2026, 11, 22, 15, 0, tzinfo=UTC)
SYNCED = datetime(2026, 11, 22, 6, 0, tzinfo=UTC)
YESTERDAY = TODAY - timedelta(days=1)
CHUNK = 10_000
"""Rows per bulk INSERT call (and per transaction) while loading."""

POLICY = AutopayPolicy(
    rules=(
        AutopayRule(name="on-due", on_due_date=True),
        AutopayRule(
            name="ach-agreements", days_after_issue=0, agreement_only=True, method_types=frozenset({"us_bank_account"})
        ),
    ),
    excluded_tags=frozenset({"no-autopay"}),
    surcharge=SurchargePolicy(percent=Decimal("2.9"), fixed=Decimal("0.30"), max_percent=Decimal("3")),
)

# Shares of the generated ledger.
ENROLLED = 0.30
METHODS: tuple[tuple[str, str | None, float], ...] = (
    ("card", "credit", 0.80),
    ("card", "debit", 0.10),
    ("us_bank_account", None, 0.10),
)
CREDIT_NOTE = 0.02
"""Of enrolled customers."""
UNAPPLIED_CASH = 0.01
"""Of enrolled customers."""
TAGS = (("msp", 0.05), ("no-autopay", 0.01))
"""Of all customers, drawn independently."""
FROM_AGREEMENT = 0.20
PARTLY_PAID = 0.20
DISPUTED = 0.01
"""Of all invoices."""
SUCCEEDED_UNAPPLIED = 0.01
"""Of enrolled customers' invoices: a charge that succeeded and that the ledger does not show yet."""
PENDING_CHARGE = 0.01
"""Of enrolled customers' invoices: a charge journaled by yesterday's plan, not carried out yet."""


# --- the ledger ---------------------------------------------------------------------------------


def customer_id(index: int) -> str:
    return f"C{index:07d}"


def invoice_id(index: int) -> str:
    return f"I{index:08d}"


def cents(value: int) -> Decimal:
    return Decimal(value).scaleb(-2)


@dataclass
class Ledger:
    """What was generated, and how long it took (in the loading process)."""

    rows: dict[str, int] = field(default_factory=dict)
    insert_seconds: dict[str, float] = field(default_factory=dict)
    generate_seconds: float = 0.0
    """Building the row dicts (Python only)."""
    migrate_seconds: float = 0.0
    analyze_seconds: float = 0.0
    wall: float = 0.0
    """Migration + generation + inserts + ANALYZE."""
    enrolled_customers: int = 0
    enrolled_invoices: int = 0
    """Open invoices of enrolled customers: what the plan examines."""
    loader_rss_kib: int = 0


class Loader:
    """Bulk inserts in chunks, timed per table."""

    def __init__(self, sessions: sessionmaker[Session], ledger: Ledger) -> None:
        self.sessions = sessions
        self.ledger = ledger
        self.pending: dict[type[SQLModel], list[dict[str, Any]]] = defaultdict(list)

    def add(self, model: type[SQLModel], row: dict[str, Any]) -> None:
        rows = self.pending[model]
        rows.append(row)
        if len(rows) >= CHUNK:
            self.flush(model)

    def flush(self, model: type[SQLModel] | None = None) -> None:
        models = [model] if model is not None else list(self.pending)
        for m in models:
            rows = self.pending.pop(m, [])
            if not rows:
                continue
            name = str(m.__tablename__)
            started = time.perf_counter()
            with self.sessions.begin() as session:
                # render_nulls: one batch per call, not a new one whenever the set of None columns changes
                session.execute(sa.insert(m).execution_options(render_nulls=True), rows)
            self.ledger.insert_seconds[name] = self.ledger.insert_seconds.get(name, 0.0) + time.perf_counter() - started
            self.ledger.rows[name] = self.ledger.rows.get(name, 0) + len(rows)


def synced(row: dict[str, Any]) -> dict[str, Any]:
    row.update(source_updated_at=SYNCED, source_version="0", synced_at=SYNCED)
    return row


@dataclass
class Build:
    """A ledger being generated (see :func:`start_ledger`): where it goes and when each phase started."""

    engine: sa.Engine
    load: Loader
    started: float
    generating: float
    """When building the rows started (after the migration)."""
    inserting: float
    """INSERT time counted before building the rows started (the tenant and connection)."""


def start_ledger(url: str, ledger: Ledger) -> Build:
    """Migrate the database at ``url`` with ``sync.db.upgrade`` and add the tenant and its connection."""
    started = time.perf_counter()
    engine = make_engine(url)
    upgrade(engine)
    ledger.migrate_seconds = time.perf_counter() - started
    sessions = sessionmaker(engine, expire_on_commit=False)
    with sessions.begin() as session:
        session.add(Tenant(id=TENANT, display_name="Benchmark Co"))
        session.flush()
        session.add(Connection(id=CONN, tenant_id=TENANT, kind="quickbooks"))
    load = Loader(sessions, ledger)
    return Build(engine, load, started, time.perf_counter(), sum(ledger.insert_seconds.values()))


def finish_ledger(build: Build) -> None:
    """Insert what is left, ``ANALYZE`` on PostgreSQL, and fill in the ledger's times and peak RSS."""
    ledger = build.load.ledger
    build.load.flush()
    ledger.generate_seconds = (
        time.perf_counter() - build.generating - (sum(ledger.insert_seconds.values()) - build.inserting)
    )
    if build.engine.dialect.name == "postgresql":
        # A sync runs ANALYZE as it loads (sync.store.refresh_statistics); this server's autovacuum may be off.
        analyzing = time.perf_counter()
        with build.engine.begin() as conn:
            conn.execute(sa.text("ANALYZE"))
        ledger.analyze_seconds = time.perf_counter() - analyzing
    build.engine.dispose()
    ledger.wall = time.perf_counter() - build.started
    ledger.loader_rss_kib = maxrss_kib()


def pick_method(rng: random.Random) -> tuple[str, str | None]:
    """An enrolled method's (kind, funding), drawn with the shares of ``METHODS``."""
    pick, method = rng.random(), METHODS[-1]
    for candidate in METHODS:
        if pick < candidate[2]:
            method = candidate
            break
        pick -= candidate[2]
    return method[0], method[1]


def add_enrolment(load: Loader, c: int, kind: str, funding: str | None, enrolled_at: datetime) -> None:
    """Customer ``c`` enrolled for off-session charges: its processor link and its saved method."""
    ext = customer_id(c)
    load.add(
        ProcessorLink,
        {
            "connection_id": CONN,
            "customer_external_id": ext,
            "tenant_id": TENANT,
            "processor_customer_id": f"cus_{ext}",
            "created_at": enrolled_at,
        },
    )
    load.add(
        SavedPaymentMethod,
        {
            "connection_id": CONN,
            "customer_external_id": ext,
            "processor_customer_id": f"cus_{ext}",
            "payment_method_id": f"pm_{ext}",
            "kind": kind,
            "brand": "visa" if kind == "card" else None,
            "last4": f"{c % 10000:04d}",
            "funding": funding,
            "scope": "off_session",
            "enrolled_at": enrolled_at,
            "link_id": None,
            "active": True,
        },
    )


def generate(url: str, customers: int, invoices: int, seed: int) -> Ledger:
    """Migrate the database at ``url`` and fill it. Runs in its own process (see ``main``)."""
    ledger = Ledger()
    build = start_ledger(url, ledger)
    load = build.load
    rng = random.Random(seed)

    methods: list[tuple[str, str | None] | None] = []
    """Per customer index, the enrolled method (kind, funding), or None."""
    for c in range(customers):
        ext = customer_id(c)
        load.add(Customer, synced({"connection_id": CONN, "external_id": ext, "name": f"Customer {c}"}))
        for tag, share in TAGS:
            if rng.random() < share:
                load.add(CustomerTag, {"connection_id": CONN, "customer_external_id": ext, "tag": tag})
        if rng.random() >= ENROLLED:
            methods.append(None)
            continue
        kind, funding = pick_method(rng)
        methods.append((kind, funding))
        add_enrolment(load, c, kind, funding, SYNCED - timedelta(days=rng.randrange(1, 400)))
        if rng.random() < CREDIT_NOTE:
            remaining = cents(rng.randint(5_000, 50_000))
            load.add(
                CreditNote,
                synced(
                    {
                        "connection_id": CONN,
                        "external_id": f"CN{c:07d}",
                        "customer_external_id": ext,
                        "number": f"CN-{c}",
                        "issue_date": TODAY - timedelta(days=rng.randrange(1, 120)),
                        "currency": "USD",
                        "total": remaining,
                        "remaining": remaining,
                        "status": "open",
                        "currency_rate": None,
                    }
                ),
            )
        if rng.random() < UNAPPLIED_CASH:
            amount = cents(rng.randint(2_000, 30_000))
            load.add(
                Payment,
                synced(
                    {
                        "connection_id": CONN,
                        "external_id": f"P{c:07d}",
                        "customer_external_id": ext,
                        "payment_date": TODAY - timedelta(days=rng.randrange(1, 60)),
                        "currency": "USD",
                        "amount": amount,
                        "unapplied": amount,
                        "status": "open",
                        "reference": None,
                        "method": "check",
                        "currency_rate": None,
                        "kind": "payment",
                    }
                ),
            )
    ledger.enrolled_customers = sum(1 for m in methods if m is not None)

    for i in range(invoices):
        c = rng.randrange(customers)
        ext, customer = invoice_id(i), customer_id(c)
        issued = TODAY - timedelta(days=rng.randrange(90))
        balance = cents(rng.randint(1_000, 500_000))
        agreement = f"AGR-{c}" if rng.random() < FROM_AGREEMENT else None
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
                    "due_date": issued + timedelta(days=30),
                    "terms": "Net 30",
                    "currency": "USD",
                    "total": total,
                    "balance": balance,
                    "status": "partially_paid" if partly else "open",
                    "memo": None,
                    "currency_rate": None,
                    "agreement_ref": agreement,
                }
            ),
        )
        if rng.random() < DISPUTED:
            load.add(
                InvoiceHold,
                {
                    "connection_id": CONN,
                    "invoice_external_id": ext,
                    "kind": "dispute",
                    "reason": "customer disputes the hours billed",
                    "until": None,
                    "created_at": SYNCED,
                    "released_at": None,
                },
            )
        enrolled = methods[c]
        if enrolled is None:
            continue
        ledger.enrolled_invoices += 1
        draw = rng.random()
        if draw >= SUCCEEDED_UNAPPLIED + PENDING_CHARGE:
            continue
        # half of them for the whole balance, half for part of it
        amount = balance if rng.random() < 0.5 else (balance / 2).quantize(Decimal("0.01"))
        succeeded = draw < SUCCEEDED_UNAPPLIED
        charge = PlannedCharge(
            tenant=TENANT,
            connection=CONN,
            invoice=ext,
            amount=amount,
            currency="USD",
            processor_customer_id=f"cus_{customer}",
            payment_method_id=f"pm_{customer}",
            customer=customer,
            method_type=enrolled[0],
            part=f"auto-{(TODAY - timedelta(days=3 if succeeded else 1)).isoformat()}",
        )
        intent = charge.intent()
        created = NOW - timedelta(days=3 if succeeded else 1)
        load.add(
            JournalEntry,
            {
                "key": intent.key,
                "tenant_id": TENANT,
                "kind": intent.kind,
                "subject": intent.subject,
                "payload": jsonwire.dumps(dict(intent.payload)),
                "status": "done" if succeeded else "pending",
                "attempts": 1 if succeeded else 0,
                "next_attempt_at": created,
                "lease_owner": None,
                "lease_until": None,
                "external_id": f"pi_{ext}" if succeeded else None,
                "result": None,
                "error": None,
                "created_at": created,
                "updated_at": created,
            },
        )
        if succeeded:
            load.add(
                ProcessorPayment,
                {
                    "key": intent.key,
                    "processor_id": f"pi_{ext}",
                    "charge_id": f"ch_{ext}",
                    "tenant_id": TENANT,
                    "connection_id": CONN,
                    "invoice_external_id": ext,
                    "customer_external_id": customer,
                    "amount": amount,
                    "surcharge": Decimal(0),
                    "currency": "USD",
                    "method_type": enrolled[0],
                    "payment_method_id": f"pm_{customer}",
                    "state": "succeeded",
                    "decline_code": None,
                    "returned": False,
                    "created_at": created,
                    "updated_at": created,
                    "applied_in_ledger_at": None,
                },
            )
    finish_ledger(build)
    return ledger


# --- measuring ------------------------------------------------------------------------------------


@dataclass
class GcTimer:
    """Time spent in the cyclic garbage collector while installed (``gc.callbacks``)."""

    seconds: float = 0.0
    collections: Counter[int] = field(default_factory=Counter)
    _started: float = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started
            self.collections[info["generation"]] += 1

    @contextmanager
    def installed(self) -> Iterator[GcTimer]:
        gc.callbacks.append(self)
        try:
            yield self
        finally:
            gc.callbacks.remove(self)


@dataclass
class Timed:
    plan: ChargePlan
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


def timed_plan(sessions: sessionmaker[Session], *, trace: bool = False) -> Timed:
    gc.collect()
    peak_before, before = maxrss_kib(), current_rss_kib()
    timer = GcTimer()
    with timer.installed(), sessions() as session:
        if trace:
            tracemalloc.start()
        cpu, started = cpu_seconds(), time.perf_counter()
        plan = plan_charges(session, TENANT, CONNECTIONS, POLICY, TODAY)
        wall, cpu = time.perf_counter() - started, cpu_seconds() - cpu
        traced_retained, traced_peak = None, None
        if trace:
            traced_retained, traced_peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
    return Timed(
        plan, wall, cpu, timer, peak_before, maxrss_kib(), before, current_rss_kib(), traced_peak, traced_retained
    )


@dataclass
class Part:
    name: str
    rows: int
    wall: float
    gc: float


@dataclass
class Analysis:
    """``plan_charges`` taken apart, in a fresh process (no plan held, so the collector sees only the part)."""

    plan_wall: float
    plan_gc: float
    parts: list[Part]
    plan_wall_gc_off: float
    profile: str | None


def analyse(url: str, profile_top: int | None) -> Analysis:
    """Each part of ``plan_charges`` alone (the loaders it calls first, then its invoice stream), the whole plan
    with the cyclic garbage collector on and off, and optionally a cProfile of the plan. In its own process."""
    engine = make_engine(url)
    sessions = sessionmaker(engine, expire_on_commit=False)
    whole = timed_plan(sessions)
    plan_wall, plan_gc = whole.wall, whole.gc.seconds
    del whole
    steps: list[tuple[str, Callable[[Session], int]]] = [
        ("outstanding_charges", lambda s: len(outstanding_charges(s, TENANT))),
        ("blocking_holds", lambda s: len(blocking_holds(s, CONNECTIONS, TODAY))),
        ("last_declines", lambda s: len(last_declines(s, TENANT))),
        ("customer_tags", lambda s: len(customer_tags(s, CONNECTIONS))),
        ("enrolled_methods", lambda s: len(enrolled_methods(s, CONNECTIONS))),
        ("available_credits", lambda s: len(available_credits(s, TENANT, CONNECTIONS))),
        ("_instalments", lambda s: len(autopay._instalments(s, CONNECTIONS))),
        (
            "_decided: charges journaled for today's parts",
            lambda s: len(autopay._decided(s, TENANT, TODAY, autopay._instalments(s, CONNECTIONS))),
        ),
        (
            "_open_invoices: the stream of ORM Invoice rows, no decisions",
            lambda s: sum(1 for _ in autopay._open_invoices(s, CONNECTIONS, None)),
        ),
    ]
    parts: list[Part] = []
    for name, step in steps:
        gc.collect()
        timer = GcTimer()
        with timer.installed(), sessions() as session:
            started = time.perf_counter()
            rows = step(session)
            parts.append(Part(name, rows, time.perf_counter() - started, timer.seconds))
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
            plan_charges(session, TENANT, CONNECTIONS, POLICY, TODAY)
            profiler.disable()
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("tottime").print_stats(profile_top)
        stats.sort_stats("cumulative").print_stats(profile_top)
        profile = out.getvalue()
    engine.dispose()
    return Analysis(plan_wall, plan_gc, parts, plan_wall_gc_off, profile)


def count(sessions: sessionmaker[Session], query: sa.Select[int]) -> int:
    with sessions() as session:
        return int(session.execute(query).scalar_one())


def in_own_process(function: Callable[..., Any], *args: Any) -> Any:
    """Run ``function(*args)`` in a freshly spawned process, so its memory and its objects are its own."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


# --- printing -------------------------------------------------------------------------------------


def seconds(value: float) -> str:
    return f"{value:,.2f} s"


def traced(value: int | None) -> str:
    return f"{value / 1048576:,.1f} MiB" if value is not None else "off (--tracemalloc)"


def rate(rows: int, wall: float) -> str:
    return f"{num(rows / wall)}/s" if wall else "-"


def print_ledger(ledger: Ledger, loading: float) -> None:
    print_loading(
        ledger,
        loading,
        [
            ["enrolled customers", num(ledger.enrolled_customers)],
            ["open invoices of enrolled customers (what the plan streams)", num(ledger.enrolled_invoices)],
        ],
    )


def print_loading(ledger: Ledger, loading: float, facts: Sequence[list[str]]) -> None:
    """The rows and INSERT time per table, the phases of the loading process, then ``facts``."""
    title("Ledger (generated in a separate process)")
    rows = [["table", "rows", "INSERT time", "rows/s"]]
    for name, n in sorted(ledger.rows.items(), key=lambda item: -item[1]):
        spent = ledger.insert_seconds.get(name, 0.0)
        rows.append([name, num(n), seconds(spent), rate(n, spent)])
    inserted = sum(ledger.insert_seconds.values())
    rows.append(
        ["all tables", num(sum(ledger.rows.values())), seconds(inserted), rate(sum(ledger.rows.values()), inserted)]
    )
    table(rows)
    table(
        [
            ["migration (sync.db.upgrade)", seconds(ledger.migrate_seconds)],
            ["building the rows (Python, random.Random)", seconds(ledger.generate_seconds)],
            ["bulk INSERTs, chunks of 10,000 rows, one transaction each", seconds(inserted)],
            ["ANALYZE (PostgreSQL only)", seconds(ledger.analyze_seconds)],
            ["data generation in all (the loading process)", seconds(ledger.wall)],
            ["… with process start and imports", seconds(loading)],
            ["peak RSS of the loading process", mib(ledger.loader_rss_kib)],
            *facts,
        ],
        header=False,
    )


def top_reasons(plan: ChargePlan, limit: int = 5) -> list[list[str]]:
    rows = [["skipped because", "invoices"]]
    for reason, n in plan.skipped.most_common(limit):
        rows.append([reason, num(n)])
    rest = sum(plan.skipped.values()) - sum(n for _, n in plan.skipped.most_common(limit))
    if rest:
        rows.append([f"({len(plan.skipped) - limit} other reasons)", num(rest)])
    rows.append(["skipped in all", num(sum(plan.skipped.values()))])
    return rows


def print_plan(timed: Timed, open_invoices: int, db: str) -> None:
    plan = timed.plan
    traced_run = " (tracemalloc on: slower)" if timed.traced_peak is not None else ""
    title(f"plan_charges on {TODAY.isoformat()}, {db_label(db)}{traced_run}")
    charges = sum(1 for i in plan.items if i.charge.amount > 0)
    with_credit = sum(1 for i in plan.items if i.credits)
    gen = ", ".join(f"gen{g} {n}" for g, n in sorted(timed.gc.collections.items()))
    table(
        [
            ["open invoices in the ledger", num(open_invoices)],
            ["invoices examined (open, of enrolled customers)", num(plan.examined)],
            ["plan_charges wall time", seconds(timed.wall)],
            ["plan_charges CPU time (this process)", seconds(timed.cpu)],
            ["invoices examined per second", rate(plan.examined, timed.wall)],
            ["µs per invoice examined", f"{timed.wall / plan.examined * 1e6:,.1f}" if plan.examined else "-"],
            ["in the garbage collector", f"{seconds(timed.gc.seconds)} ({gen or 'no collections'})"],
            ["items planned", num(len(plan.items))],
            ["… charges (amount > 0)", num(charges)],
            ["… with credits applied first", num(with_credit)],
            ["peak RSS before the plan (ru_maxrss)", mib(timed.rss_peak_before_kib)],
            ["peak RSS after the plan (ru_maxrss)", mib(timed.rss_peak_after_kib)],
            ["growth of the peak during the plan", mib(timed.rss_peak_after_kib - timed.rss_peak_before_kib)],
            ["RSS before / after (the plan still held)", f"{mib(timed.rss_before_kib)} / {mib(timed.rss_after_kib)}"],
            ["tracemalloc peak of the plan call", traced(timed.traced_peak)],
            ["tracemalloc at the end of the call (the plan held)", traced(timed.traced_retained)],
            [
                "bytes per item planned (tracemalloc at the end / items)",
                num(timed.traced_retained / len(plan.items)) if timed.traced_retained and plan.items else "-",
            ],
        ],
        header=False,
    )
    print()
    table(top_reasons(plan))
    print()
    rows = [["currency", "charged for invoices", "surcharges", "credits applied"]]
    for currency, (principal, surcharge, credits) in sorted(plan.totals().items()):
        rows.append([currency, f"{principal:,.2f}", f"{surcharge:,.2f}", f"{credits:,.2f}"])
    table(rows)


def print_analysis(analysis: Analysis) -> None:
    title("The parts of plan_charges, each alone (in a fresh process)")
    wall = analysis.plan_wall
    rows = [["part", "rows", "time", "of which GC", "share of the plan"]]
    rows.append(["plan_charges, whole", "", seconds(wall), seconds(analysis.plan_gc), "100%"])
    for part in analysis.parts:
        rows.append([part.name, num(part.rows), seconds(part.wall), seconds(part.gc), f"{part.wall / wall:.0%}"])
    rest = wall - sum(part.wall for part in analysis.parts)
    rows.append(["decisions and plan items (the whole less the parts)", "", seconds(rest), "", f"{rest / wall:.0%}"])
    rows.append(["plan_charges with the cyclic GC off (gc.disable())", "", seconds(analysis.plan_wall_gc_off), "", ""])
    table(rows, align="lrrrr")
    if analysis.profile:
        title("cProfile of one more plan_charges in that process (top functions by own time, then cumulative)")
        print(analysis.profile)


# --- command line ---------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Time the auto-pay planner over a generated ledger.")
    parser.add_argument("--invoices", type=int, default=1_000_000, help="open invoices (default 1000000)")
    parser.add_argument("--customers", type=int, default=100_000, help="customers (default 100000)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the generated ledger (default 1)")
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite", help="the ledger's database")
    parser.add_argument(
        "--tracemalloc", action="store_true", help="trace allocations during the plan call (slower; marked)"
    )
    parser.add_argument(
        "--journal",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="journal the plan, then plan again, which must plan nothing (default on; --no-journal to skip)",
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
        help="time each part of plan_charges alone, and the plan with the GC off, in a fresh process (default on)",
    )
    args = parser.parse_args(argv)
    if args.profile is not None and not args.analyse:
        parser.error("--profile runs in the analysis process: drop --no-analyse")
    if args.invoices < 0 or args.customers < 1:
        parser.error("--invoices must not be negative and --customers must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    print(
        f"arsync charge plan benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, {platform.platform()}, "
        f"load average {os.getloadavg()[0]:.2f}, {revision()}"
    )
    print(
        f"{db_label(args.db)}, {num(args.invoices)} invoices, {num(args.customers)} customers, seed {args.seed}, "
        f"plan day {TODAY.isoformat()}"
    )
    if args.db == "postgres" and (problem := postgres_problem()):
        print(problem)
        return 2
    with tempfile.TemporaryDirectory(prefix="arsync-bench-") as tmp, database(args.db, Path(tmp)) as url:
        started = time.perf_counter()
        # Loading and the analysis each run in their own process: this process's ru_maxrss is the plan's.
        ledger: Ledger = in_own_process(generate, url, args.customers, args.invoices, args.seed)
        print_ledger(ledger, time.perf_counter() - started)
        sys.stdout.flush()

        engine = make_engine(url)
        sessions = sessionmaker(engine, expire_on_commit=False)
        open_invoices = count(
            sessions,
            sa.select(sa.func.count()).select_from(Invoice).where(col(Invoice.status).in_(autopay.CHARGEABLE)),
        )
        timed = timed_plan(sessions, trace=args.tracemalloc)
        print_plan(timed, open_invoices, args.db)
        sys.stdout.flush()
        if args.analyse:
            print_analysis(in_own_process(analyse, url, args.profile))
            sys.stdout.flush()
        failed = False
        if args.journal:
            failed = journal_and_plan_again(sessions, timed.plan)
        engine.dispose()
    return 1 if failed else 0


def journal_and_plan_again(sessions: sessionmaker[Session], plan: ChargePlan) -> bool:
    """Journal ``plan`` in one transaction, then plan again. True if the second plan planned anything (a bug)."""
    credit_intents = sum(len(i.credits) for i in plan.items)
    with sessions.begin() as session:
        started = time.perf_counter()
        recorded = journal_plan(session, plan, NOW)
        inside = time.perf_counter() - started
    wall = time.perf_counter() - started
    title("journal_plan, one transaction")
    table(
        [
            ["charges recorded", num(recorded)],
            ["credit applications recorded", num(credit_intents)],
            ["journal_plan (inside the transaction)", seconds(inside)],
            ["journal_plan + COMMIT", seconds(wall)],
            ["journal entries per second", rate(recorded + credit_intents, wall)],
            ["peak RSS after journaling (ru_maxrss)", mib(maxrss_kib())],
        ],
        header=False,
    )
    with sessions() as session:
        started = time.perf_counter()
        on_its_way = len(outstanding_charges(session, TENANT))
        loading = time.perf_counter() - started
    again = timed_plan(sessions)
    title("plan_charges again, after journaling (must plan nothing)")
    table(
        [
            ["invoices examined", num(again.plan.examined)],
            ["plan_charges wall time (the first plan still held)", seconds(again.wall)],
            ["in the garbage collector", seconds(again.gc.seconds)],
            ["invoices examined per second", rate(again.plan.examined, again.wall)],
            ["outstanding_charges alone (invoices with money on its way)", f"{seconds(loading)} ({num(on_its_way)})"],
            ["items planned", num(len(again.plan.items))],
        ],
        header=False,
    )
    print()
    table(top_reasons(again.plan))
    if not again.plan.items:
        print("  OK: nothing planned twice")
        return False
    print(
        f"\nFAILED: the plan after journaling planned {len(again.plan.items)} items, e.g. "
        + ", ".join(f"{i.charge.invoice} {i.charge.amount} ({i.why})" for i in again.plan.items[:5])
    )
    return True


if __name__ == "__main__":
    raise SystemExit(main())
