"""Benchmark: write-back of payments and fees to QuickBooks and Xero with their real limits, time-compressed.

For each ledger, in a freshly spawned process: the sandbox runs in process with
the vendor's limits on (QuickBooks: 10 requests/s, 500/min, 10 concurrent and
40 ``/batch`` requests a minute per realm; Xero: 60 calls a minute, 5 in flight
and 5,000 a day per organisation, 10,000 a minute per app), seeded with
``--count`` open invoices. Then, not timed either, the product's own set-up:
config file with a ``writeback`` section -> ``bootstrap`` -> ``sync.db.upgrade``
-> ``App.register`` -> OAuth through ``arsync.sandboxes.authorise``, and one
journal ``posting`` entry per payment (paying its invoice in full) and per fee
(a SPEND / Purchase from the clearing account), shaped as
``reconcile.postings.derive_postings`` journals them. What is timed is
``app.reconciler(tenant).run()``: the daemon's write-back loop, which claims
300 due entries at a time and sends them through ``QuickBooksSource.post``
(``/batch`` of 30 with a ``requestid``) or ``XeroSource.post`` (arrays of 50
with an ``Idempotency-Key``), then settles each entry.

**Time compression** is ``backfill_xero.VirtualClock``: ``now() = real now +
offset`` and ``sleep(s)`` adds ``s`` to the offset. The client's rate budgets
sleep on it and the sandbox counts its windows on the same clock, so a call
sent too early gets a real 429, but the run lasts only its processing time.
Virtual time is what the write-back would take against the vendor at these
limits; with ``--latency`` the sandbox really waits that long per API call, so
virtual time includes it too.

Reported per ledger: write requests against the floor (``ceil(2 x count /
batch size)``) and against one record per call, virtual time against the floor
the limits set, real (wall) time and where it went, 429s, postings per second,
peak RSS, and a check read back from the sandbox: every seeded invoice's
balance is 0 and exactly ``count`` fee objects exist, carrying the journal's
references. The exit status is 1 if any check fails.

Usage::

    python bench/writeback.py                        # 10,000 payments + 10,000 fees, QuickBooks then Xero
    python bench/writeback.py --count 300            # a smoke run: seconds
    python bench/writeback.py --ledger xero --latency 150
    python bench/writeback.py --count 300 --profile /tmp/wb   # cProfile of the timed part, per ledger
    python bench/writeback.py --ledger qbo --qbo-margin 1     # what-if: QuickBooks budgets with a 1 s margin
"""

from __future__ import annotations

import argparse
import cProfile
import io
import math
import multiprocessing
import os
import platform
import pstats
import random
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import requests
import sqlalchemy as sa
from backfill_qbo import cpu_seconds, current_rss_kib, maxrss_kib, mib, num, revision, table, title
from backfill_xero import VirtualClock
from sqlmodel import col

from arsync.bootstrap import App, bootstrap
from arsync.reconciling import BATCH, ReconcileRun
from arsync.sandboxes import SandboxConnection, authorise, quickbooks_connection, write_sandbox_config, xero_connection
from connectors.base import LedgerAccount, LedgerWriter, Posting, PostingKind, PostingResult
from connectors.http import CallStats, HttpTransport
from connectors.quickbooks.client import QuickBooksSource
from connectors.quickbooks.sandbox import QuickBooksSandbox
from connectors.quickbooks.writer import BATCH_LIMIT
from connectors.xero.client import BATCH_SIZE, XeroSource
from connectors.xero.sandbox import XeroSandbox
from reconcile.postings import KIND, posting_key
from sync import journal
from sync.db import upgrade
from sync.models import JournalEntry

Ledger = Literal["qbo", "xero"]
LEDGERS: tuple[Ledger, ...] = ("qbo", "xero")
LABEL: Mapping[Ledger, str] = {"qbo": "QuickBooks Online", "xero": "Xero"}
NAME: Mapping[Ledger, str] = {"qbo": "bench-qbo", "xero": "bench-xero"}
TENANT = "bench"
TIMEZONE = "America/Los_Angeles"
OWNER = "bench-writeback"
QBO_API = "/v3/company/"
XERO_API = "/api.xro/2.0/"


# --- what the vendor allows -------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """The limits that bind a write-back, as the sandbox enforces them (the vendors' published ones)."""

    batch: int
    """Records per write request: QuickBooks ``/batch`` items (30), Xero array items (50)."""
    writes_per_minute: int
    """Write requests a minute: QuickBooks ``/batch`` 40 per realm, Xero 60 calls per organisation."""
    per_minute: int
    """Any API call, per minute: QuickBooks 500 per realm, Xero 60 per organisation."""
    per_second: int | None
    per_day: int | None
    concurrent: int

    def floor_requests(self, postings: int) -> int:
        return math.ceil(postings / self.batch)

    def floor_seconds(self, requests: int) -> float:
        """Requests at the write rate, as a throughput: ``requests / writes_per_minute`` minutes."""
        return 60.0 * requests / self.writes_per_minute

    def strict_floor_seconds(self, requests: int) -> float:
        """A rolling minute that starts empty sends its first ``writes_per_minute`` at once: 60 s x ((n - 1) // r)."""
        return 60.0 * ((requests - 1) // self.writes_per_minute) if requests else 0.0

    def one_per_call_seconds(self, postings: int) -> float:
        """Posting one record per call: each a plain API call under the per-second and per-minute limits."""
        seconds = 60.0 * ((postings - 1) // self.per_minute) if postings else 0.0
        if self.per_second:
            seconds = max(seconds, (postings - 1) / self.per_second)
        return seconds


# --- one ledger's run -------------------------------------------------------------------------


@dataclass
class Check:
    invoices: int = 0
    invoices_unpaid: int = 0
    payments: int = 0
    fees: int = 0
    fee_references_missing: int = 0
    fee_references_unexpected: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class Result:
    ledger: Ledger
    count: int
    latency: float
    limits: Limits
    customers: int
    seed_seconds: float
    journal_seconds: float
    requests: Counter[str]
    """API requests the sandbox received during the timed run, by method and collection/endpoint."""
    write_requests: int
    client_calls: int
    stats: CallStats
    sandbox_throttled: int
    outcomes: dict[str, int]
    failures: list[str]
    journal_status: dict[str, int]
    real: float
    virtual: float
    slept: list[float]
    in_writer: float
    writer_calls: int
    answer_seconds: float
    cpu: float
    rss_start_kib: int
    rss_seeded_kib: int
    rss_ready_kib: int
    rss_peak_kib: int
    rss_end_kib: int
    check: Check
    server_errors: list[str]
    qbo_margin: float | None = None
    profile: str | None = None

    @property
    def postings(self) -> int:
        return 2 * self.count

    @property
    def ok(self) -> bool:
        return (
            self.check.ok
            and not self.server_errors
            and self.outcomes.get("posted", 0) == self.postings
            and self.journal_status == {"done": self.postings}
        )


class TimedWriter:
    """The connection's ``LedgerWriter``, timing each ``post`` (the rest of the loop is the journal's)."""

    def __init__(self, inner: LedgerWriter) -> None:
        self.inner = inner
        self.seconds = 0.0
        self.calls = 0

    def post(self, postings: Sequence[Posting]) -> list[PostingResult]:
        started = time.perf_counter()
        try:
            return self.inner.post(postings)
        finally:
            self.seconds += time.perf_counter() - started
            self.calls += 1

    def find_posted(self, postings: Sequence[Posting]) -> dict[str, str]:
        return self.inner.find_posted(postings)

    def accounts(self) -> list[LedgerAccount]:
        return self.inner.accounts()


@dataclass(frozen=True)
class Invoice:
    ident: str
    customer: str
    amount: Decimal


@dataclass(frozen=True)
class Accounts:
    clearing: str
    bank: str
    fees: str


def amounts(rng: random.Random, count: int) -> list[Decimal]:
    return [Decimal(rng.randint(5_000, 500_000)).scaleb(-2) for _ in range(count)]


def fee_of(amount: Decimal) -> Decimal:
    """A card fee: 2.9% + 0.30."""
    return (amount * Decimal("0.029") + Decimal("0.30")).quantize(Decimal("0.01"))


def seed_qbo(sandbox: QuickBooksSandbox, *, count: int, customers: int, rng: random.Random) -> list[Invoice]:
    """``customers`` customers and ``count`` open one-line invoices (the sandbox's compact store)."""
    ids = [str(sandbox.put("Customer", {"DisplayName": f"Customer {n:05d}"})["Id"]) for n in range(customers)]
    now = int(sandbox.now().timestamp())
    today = sandbox.now().astimezone(ZoneInfo(TIMEZONE)).date()
    rows = []
    for amount in amounts(rng, count):
        customer = rng.choice(ids)
        issued = today - timedelta(days=rng.randint(1, 90))
        due = issued + timedelta(days=30)
        rows.append((customer, now - 86_400 * 100, now - 3_600, "", issued.isoformat(), due.isoformat(), "USD", amount))
    before = set(sandbox.ids("Invoice"))
    sandbox.load_compact_invoices((*row, "") for row in rows)
    new = [i for i in sandbox.ids("Invoice") if i not in before]
    if len(new) != count:
        raise RuntimeError(f"the sandbox holds {len(new)} new invoices, not {count}")
    return [Invoice(ident, row[0], row[7]) for ident, row in zip(new, rows, strict=True)]


def qbo_accounts(sandbox: QuickBooksSandbox) -> Accounts:
    def account(name: str, classification: str, kind: str) -> str:
        return str(sandbox.put("Account", {"Name": name, "Classification": classification, "AccountType": kind})["Id"])

    return Accounts(
        clearing=account("Stripe Clearing", "Asset", "Other Current Asset"),
        bank=account("Checking", "Asset", "Bank"),
        fees=account("Merchant Fees", "Expense", "Expense"),
    )


def seed_xero(sandbox: XeroSandbox, tenant: str, *, count: int, customers: int, rng: random.Random) -> list[Invoice]:
    """``customers`` contacts and ``count`` AUTHORISED ACCREC one-line invoices (the sandbox's compact store)."""
    ids = [
        str(sandbox.put(tenant, "Contacts", {"Name": f"Customer {n:05d}", "IsCustomer": True})["ContactID"])
        for n in range(customers)
    ]
    now_ms = int(sandbox.now().timestamp() * 1000) - 3_600_000
    today = sandbox.today().toordinal()
    one = Decimal(1)
    invoices: list[Invoice] = []
    rows: list[tuple[Any, ...]] = []
    for amount in amounts(rng, count):
        ident = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        contact = rng.choice(ids)
        issued = today - rng.randint(1, 90)
        rows.append((ident, contact, issued, issued + 30, sandbox.base_currency, one, amount, now_ms, "AUTHORISED"))
        invoices.append(Invoice(ident, contact, amount))
    loaded = sandbox.load_compact_invoices(tenant, ((*row, "ACCREC", "") for row in rows))
    if loaded != count:
        raise RuntimeError(f"the sandbox loaded {loaded} invoices, not {count}")
    return invoices


XERO_ACCOUNTS = Accounts(clearing="091", bank="090", fees="404")
"""The Xero sandbox's chart of accounts: Clearing and Checking (BANK), Fees (EXPENSE), by code."""


def journal_postings(app: App, name: str, invoices: Sequence[Invoice], accounts: Accounts, day: date) -> None:
    """One ``posting`` entry per payment and per fee, as ``derive_postings`` journals them (payments first)."""
    iso = day.isoformat()
    with app.sessions.begin() as session:
        now = app.clock()
        for n, invoice in enumerate(invoices):
            ident = f"pi_bench{n:07d}"
            key = posting_key(TENANT, name, PostingKind.PAYMENT, ident)
            payload = {
                "connection": name,
                "posting_kind": PostingKind.PAYMENT.value,
                "reference": key,
                "processor_key": f"autopay:{ident}",
                "invoice_external_id": invoice.ident,
                "customer_external_id": invoice.customer,
                "amount": invoice.amount,
                "currency": "USD",
                "date": iso,
                "account": accounts.clearing,
            }
            journal.record(session, journal.Intent(key, TENANT, KIND, payload, f"payment:{ident}"), now)
        for n, invoice in enumerate(invoices):
            ident = f"txn_bench{n:07d}"
            key = posting_key(TENANT, name, PostingKind.FEE, ident)
            payload = {
                "connection": name,
                "posting_kind": PostingKind.FEE.value,
                "reference": key,
                "amount": fee_of(invoice.amount),
                "currency": "USD",
                "date": iso,
                "from_account": accounts.clearing,
                "expense_account": accounts.fees,
                "description": f"Processing fee (charge {ident})",
                "contact_name": "Payment processor",
            }
            journal.record(session, journal.Intent(key, TENANT, KIND, payload, f"fee:{ident}"), now)


def with_writeback(config: Path, name: str, accounts: Accounts) -> None:
    with config.open("a") as out:
        out.write(
            f"\n[tenants.{TENANT}.connections.{name}.writeback]\n"
            f'clearing_account = "{accounts.clearing}"\nbank_account = "{accounts.bank}"\n'
            f'fee_account = "{accounts.fees}"\n'
        )


def fee_references(name: str, count: int) -> set[str]:
    return {posting_key(TENANT, name, PostingKind.FEE, f"txn_bench{n:07d}") for n in range(count)}


def check_qbo(sandbox: QuickBooksSandbox, name: str, invoices: Sequence[Invoice]) -> Check:
    check = Check(invoices=len(invoices))
    for invoice in invoices:
        obj = sandbox.get("Invoice", invoice.ident)
        if obj is None or Decimal(str(obj["Balance"])) != 0:
            check.invoices_unpaid += 1
    check.payments = sandbox.count("Payment")
    purchases = sandbox.all("Purchase")
    check.fees = len(purchases)
    return finish_check(check, {str(p.get("PrivateNote")) for p in purchases}, name, len(invoices))


def check_xero(sandbox: XeroSandbox, tenant: str, name: str, invoices: Sequence[Invoice]) -> Check:
    check = Check(invoices=len(invoices))
    for invoice in invoices:
        obj = sandbox.get(tenant, "Invoices", invoice.ident)
        if obj is None or Decimal(str(obj["AmountDue"])) != 0 or obj.get("Status") != "PAID":
            check.invoices_unpaid += 1
    check.payments = sandbox.count(tenant, "Payments")
    spends = [t for t in sandbox.all(tenant, "BankTransactions") if t.get("Type") == "SPEND"]
    check.fees = len(spends)
    return finish_check(check, {str(t.get("Reference")) for t in spends}, name, len(invoices))


def finish_check(check: Check, references: set[str], name: str, count: int) -> Check:
    expected = fee_references(name, count)
    check.fee_references_missing = len(expected - references)
    check.fee_references_unexpected = len(references - expected)
    if check.invoices_unpaid:
        check.problems.append(f"{num(check.invoices_unpaid)} of {num(count)} invoices still have a balance")
    if check.payments != count:
        check.problems.append(f"{num(check.payments)} payments in the ledger, not {num(count)}")
    if check.fees != count:
        check.problems.append(f"{num(check.fees)} fee objects in the ledger, not {num(count)}")
    if check.fee_references_missing or check.fee_references_unexpected:
        check.problems.append(
            f"fee references: {check.fee_references_missing} missing, {check.fee_references_unexpected} unexpected"
        )
    return check


def request_kind(ledger: Ledger, method: str, raw_path: str) -> str | None:
    """``METHOD endpoint`` of an API request (``None`` for OAuth and the like)."""
    path = urlsplit(raw_path).path
    if ledger == "qbo":
        if not path.startswith(QBO_API):
            return None
        return f"{method} {path[len(QBO_API) :].split('/', 1)[-1]}"
    if not path.startswith(XERO_API):
        return None
    return f"{method} {path[len(XERO_API) :]}"


def is_write(ledger: Ledger, kind: str) -> bool:
    return kind == "POST batch" if ledger == "qbo" else kind.split(" ", 1)[0] in ("PUT", "POST")


def transports(source: QuickBooksSource | XeroSource) -> list[HttpTransport]:
    if isinstance(source, QuickBooksSource):
        return [source.transport, source.batch_transport]
    return [source.transport]


def total_stats(source: QuickBooksSource | XeroSource) -> CallStats:
    total = CallStats()
    for transport in transports(source):
        s = transport.stats
        total = CallStats(
            total.requests + s.requests,
            total.retries + s.retries,
            total.throttled + s.throttled,
            total.refreshes + s.refreshes,
        )
    return total


def run_ledger(
    ledger: Ledger, *, count: int, latency: float, seed: int, profile: str | None, qbo_margin: float | None = None
) -> Result:
    rss_start = maxrss_kib()
    rng = random.Random(seed)
    clock = VirtualClock()
    customers = max(1, min(500, count // 20))
    name = NAME[ledger]
    started = time.perf_counter()
    sandbox: QuickBooksSandbox | XeroSandbox
    if ledger == "qbo":
        qbo = sandbox = QuickBooksSandbox(clock, latency=latency)
        accounts = qbo_accounts(qbo)
        invoices = seed_qbo(qbo, count=count, customers=customers, rng=rng)
        limits = Limits(
            batch=BATCH_LIMIT,
            writes_per_minute=qbo.batch_per_minute,
            per_minute=qbo.per_minute,
            per_second=qbo.per_second,
            per_day=None,
            concurrent=qbo.concurrent,
        )
    else:
        xero = sandbox = XeroSandbox(clock, latency=latency, record_exchanges=False)
        tenant = xero.tenant_ids[0]
        accounts = XERO_ACCOUNTS
        invoices = seed_xero(xero, tenant, count=count, customers=customers, rng=rng)
        limits = Limits(
            batch=BATCH_SIZE,
            writes_per_minute=xero.per_minute,
            per_minute=xero.per_minute,
            per_second=None,
            per_day=xero.per_day,
            concurrent=xero.concurrent,
        )
    seed_seconds = time.perf_counter() - started
    rss_seeded = maxrss_kib()

    with tempfile.TemporaryDirectory(prefix="arsync-bench-") as tmp, sandbox:
        connection: SandboxConnection
        if isinstance(sandbox, QuickBooksSandbox):
            connection = quickbooks_connection(sandbox, tenant=TENANT, tenant_name="Benchmark Co", name=name)
        else:
            connection = xero_connection(sandbox, tenant=TENANT, tenant_name="Benchmark Co", name=name)
        config = write_sandbox_config(Path(tmp), [connection], database_url=f"sqlite:///{Path(tmp) / 'ledger.db'}")
        with_writeback(config, name, accounts)
        app = bootstrap(config, clock=clock, sleeper=clock.sleep)
        upgrade(app.engine)
        app.register()
        authorise(app, name)
        source = app.source(name)
        if qbo_margin is not None and isinstance(source, QuickBooksSource):
            # what-if, not the product's setting: XeroSource's budget has margin=1.0, QuickBooksSource's none
            source.transport.budget.margin = qbo_margin
            source.batch_transport.budget.margin = qbo_margin
        started = time.perf_counter()
        journal_postings(app, name, invoices, accounts, clock().astimezone(ZoneInfo(TIMEZONE)).date())
        journal_seconds = time.perf_counter() - started

        answers: list[float] = []

        def note_answer(response: requests.Response, *args: Any, **kwargs: Any) -> None:
            answers.append(response.elapsed.total_seconds())

        for transport in transports(source):
            transport.hooks["response"].append(note_answer)
        reconciler = app.reconciler(TENANT)
        writer = TimedWriter(reconciler.writers[name])
        reconciler.writers = {name: writer}
        rss_ready = maxrss_kib()

        log_before = len(sandbox.requests_log)
        throttled_before = sandbox.throttled_count
        sleeps_before = len(clock.sleeps)
        stats_before = total_stats(source)
        calls_before = source.api_calls()
        profiler = cProfile.Profile() if profile else None
        virtual_start = clock()
        cpu_start = cpu_seconds()
        started = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        run: ReconcileRun = reconciler.run()
        if profiler is not None:
            profiler.disable()
        real = time.perf_counter() - started
        cpu = cpu_seconds() - cpu_start
        virtual = (clock() - virtual_start).total_seconds()
        rss_peak, rss_end = maxrss_kib(), current_rss_kib()

        after = total_stats(source)
        stats = CallStats(
            requests=after.requests - stats_before.requests,
            retries=after.retries - stats_before.retries,
            throttled=after.throttled - stats_before.throttled,
            refreshes=after.refreshes - stats_before.refreshes,
        )
        requests_seen: Counter[str] = Counter()
        for method, raw_path, _ in sandbox.requests_log[log_before:]:
            kind = request_kind(ledger, method, raw_path)
            requests_seen[kind or f"{method} {urlsplit(raw_path).path} (not an API call)"] += 1
        failures = [
            f"{key}: {type(outcome).__name__} {getattr(outcome, 'error', '')}"
            for key, outcome in run.outcomes
            if not isinstance(outcome, journal.Done)
        ]
        with app.sessions() as session:
            status = dict(
                session.execute(
                    sa.select(col(JournalEntry.status), sa.func.count()).group_by(col(JournalEntry.status))
                ).all()
            )
        app.engine.dispose()

        if isinstance(sandbox, QuickBooksSandbox):
            check = check_qbo(sandbox, name, invoices)
        else:
            check = check_xero(sandbox, sandbox.tenant_ids[0], name, invoices)

        profile_text = None
        if profiler is not None and profile:
            path = f"{profile}.{ledger}.prof"
            profiler.dump_stats(path)
            out = io.StringIO()
            out.write(f"cProfile of the timed part (this thread only; the sandbox answers on its own): {path}\n")
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
            profile_text = out.getvalue()

        return Result(
            ledger=ledger,
            count=count,
            latency=latency,
            limits=limits,
            customers=customers,
            seed_seconds=seed_seconds,
            journal_seconds=journal_seconds,
            requests=requests_seen,
            write_requests=sum(n for k, n in requests_seen.items() if is_write(ledger, k)),
            client_calls=source.api_calls() - calls_before,
            stats=stats,
            sandbox_throttled=sandbox.throttled_count - throttled_before,
            outcomes=run.counts(),
            failures=failures[:5],
            journal_status={str(k): int(v) for k, v in status.items()},
            real=real,
            virtual=virtual,
            slept=clock.sleeps[sleeps_before:],
            in_writer=writer.seconds,
            writer_calls=writer.calls,
            answer_seconds=sum(answers),
            cpu=cpu,
            rss_start_kib=rss_start,
            rss_seeded_kib=rss_seeded,
            rss_ready_kib=rss_ready,
            rss_peak_kib=rss_peak,
            rss_end_kib=rss_end,
            check=check,
            server_errors=list(sandbox.server_errors),
            qbo_margin=qbo_margin if ledger == "qbo" else None,
            profile=profile_text,
        )


# --- printing -----------------------------------------------------------------------------------


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


def duration(seconds: float) -> str:
    if seconds >= 86_400:
        return f"{seconds / 86_400:.1f} days"
    if seconds >= 3_600:
        return f"{seconds / 3_600:.1f} h"
    return minutes(seconds)


def print_result(r: Result) -> None:
    lim = r.limits
    write_limit = "/batch requests" if r.ledger == "qbo" else "calls"
    extra = (
        f"{lim.per_second}/s and {lim.per_minute}/min per realm, {lim.concurrent} concurrent"
        if r.ledger == "qbo"
        else f"{num(lim.per_day or 0)}/day per organisation, {lim.concurrent} in flight"
    )
    title(
        f"{LABEL[r.ledger]} write-back: {num(r.count)} payments + {num(r.count)} fees, "
        f"limits {lim.writes_per_minute} {write_limit} a minute ({extra}), latency {r.latency * 1000:.0f} ms, "
        "time-compressed"
        + (f", WHAT-IF: client budgets with a {r.qbo_margin:g} s margin" if r.qbo_margin is not None else "")
    )
    print(
        f"seeded in {r.seed_seconds:.1f} s and journaled in {r.journal_seconds:.1f} s, not timed: "
        f"{num(r.count)} open invoices of {num(r.customers)} customers; "
        f"{num(r.postings)} journal entries (payments first, then fees, as derive_postings writes them)"
    )
    outcomes = ", ".join(f"{num(v)} {k}" for k, v in sorted(r.outcomes.items())) or "none"
    status = ", ".join(f"{num(v)} {k}" for k, v in sorted(r.journal_status.items()))
    print(f"timed: Reconciler.run() -> {outcomes}; journal afterwards: {status}")
    for failure in r.failures:
        print(f"  not posted: {failure}")

    floor = lim.floor_requests(r.postings)
    print(f"\nRequests (sandbox requests_log during the run; floor: ceil({num(r.postings)} / {lim.batch}))")
    lines = [["request", "count"]]
    lines += [[kind, num(n)] for kind, n in sorted(r.requests.items())]
    table(lines)
    other = sum(r.requests.values()) - r.write_requests
    table(
        [
            [
                "write requests used / floor",
                f"{num(r.write_requests)} / {num(floor)}",
                f"{r.write_requests / floor:.3f}",
            ],
            [
                "against one record per call",
                f"{num(r.write_requests)} / {num(r.postings)}",
                f"{r.write_requests / r.postings:.2%}",
            ],
            ["  of which answered 429 and sent again", "", num(r.sandbox_throttled)],
            ["other API requests (reads)", "", num(other)],
            ["client attempts (transport.stats.requests)", "", num(r.client_calls)],
            ["Reconciler claims -> writer.post calls", f"{BATCH} entries a claim", num(r.writer_calls)],
        ],
        header=False,
    )

    print("\nRate limits")
    day = f"{r.write_requests + other} / {num(lim.per_day)}" if lim.per_day else ""
    rows = [
        ["429 answers (sandbox throttled_count)", "", str(r.sandbox_throttled)],
        ["throttled / retries (client transport.stats)", "", f"{r.stats.throttled} / {r.stats.retries}"],
        ["token refreshes during the run", "", str(r.stats.refreshes)],
        ["client waits on its budgets (virtual sleeps)", f"{len(r.slept)} waits", f"{sum(r.slept):.1f} s"],
    ]
    if lim.per_day:
        rows.insert(0, ["day quota used", day, f"{(r.write_requests + other) / lim.per_day:.2%}"])
    table(rows, header=False)

    print("\nTime")
    throughput_floor = lim.floor_seconds(floor)
    strict = lim.strict_floor_seconds(floor)
    latency_floor = r.write_requests * r.latency
    one_per_call = lim.one_per_call_seconds(r.postings)
    table(
        [
            [
                "floor set by the limits",
                f"{num(floor)} requests at {lim.writes_per_minute}/min",
                minutes(throughput_floor),
            ],
            [
                "  strict (a rolling minute that starts empty)",
                f"60 s x (({num(floor)} - 1) // {lim.writes_per_minute})",
                minutes(strict),
            ],
            ["  sequential latency", f"{num(r.write_requests)} x {r.latency * 1000:.0f} ms", minutes(latency_floor)],
            [
                "virtual time (what it takes against the vendor)",
                f"{r.virtual / throughput_floor:.3f} x floor" if throughput_floor else "",
                minutes(r.virtual),
            ],
            ["  of which the budgets' waits", "", minutes(sum(r.slept))],
            ["  of which work (= real elapsed)", "", minutes(r.virtual - sum(r.slept))],
            ["real elapsed (wall)", f"{r.real / max(r.virtual, 1e-9):.1%} of virtual", f"{r.real:.1f} s"],
            ["  in writer.post", f"{r.writer_calls} calls", f"{r.in_writer:.1f} s"],
            ["    waiting for answers (response.elapsed: the sandbox)", "", f"{r.answer_seconds:.1f} s"],
            ["    the writer and the HTTP client (the rest)", "", f"{r.in_writer - r.answer_seconds:.1f} s"],
            ["  journal: claim, settle, derive, echoes (the rest)", "", f"{r.real - r.in_writer:.1f} s"],
            ["process CPU (client and sandbox)", f"{r.cpu / r.real:.0%} of real" if r.real else "", f"{r.cpu:.1f} s"],
            ["postings/s of wall time", f"{num(r.postings)} postings", num(r.postings / r.real) if r.real else "-"],
            ["postings/s against the vendor (virtual)", "", num(r.postings / r.virtual) if r.virtual else "-"],
            [
                "one record per call would need (the limits alone)",
                f"{num(r.postings)} calls at {lim.per_minute}/min"
                + (f" and {lim.per_second}/s" if lim.per_second else ""),
                duration(one_per_call),
            ],
        ],
        header=False,
    )
    if lim.per_day and r.postings > lim.per_day:
        print(
            f"  (and {num(r.postings)} calls are {r.postings / lim.per_day:.1f} days "
            f"of the {num(lim.per_day)}/day quota)"
        )

    print("\nMemory (this process: the client AND the in-process sandbox with its data)")
    table(
        [
            ["peak RSS after imports", mib(r.rss_start_kib)],
            ["peak RSS after seeding the sandbox", mib(r.rss_seeded_kib)],
            ["peak RSS after bootstrap, OAuth, journal", mib(r.rss_ready_kib)],
            ["peak RSS at the end (ru_maxrss)", mib(r.rss_peak_kib)],
            ["growth during the run", mib(r.rss_peak_kib - r.rss_ready_kib)],
            ["RSS after the run", mib(r.rss_end_kib)],
        ],
        header=False,
    )

    c = r.check
    print("\nCheck (read back from the sandbox)")
    table(
        [
            ["invoices with a balance left", f"of {num(c.invoices)}", num(c.invoices_unpaid)],
            ["payments in the ledger", f"expected {num(r.count)}", num(c.payments)],
            ["fee objects in the ledger", f"expected {num(r.count)}", num(c.fees)],
            ["fee references missing / unexpected", "", f"{c.fee_references_missing} / {c.fee_references_unexpected}"],
        ],
        header=False,
    )
    verdict = "OK" if r.ok else "FAILED: " + "; ".join(c.problems or ["not every entry was posted"])
    print(f"  {verdict}")
    if r.server_errors:
        print(f"  sandbox errors (HTTP 500): {len(r.server_errors)}; first:\n{r.server_errors[0]}")
    if r.profile:
        print()
        print(r.profile)


def print_summary(results: Sequence[Result]) -> None:
    title("Summary")
    lines = [
        [
            "ledger",
            "postings",
            "requests",
            "floor",
            "per-record ratio",
            "429s",
            "virtual",
            "floor (time)",
            "wall",
            "postings/s",
            "peak RSS",
            "check",
        ]
    ]
    for r in results:
        floor = r.limits.floor_requests(r.postings)
        lines.append(
            [
                LABEL[r.ledger],
                num(r.postings),
                num(r.write_requests),
                num(floor),
                f"{r.write_requests / r.postings:.2%}",
                str(r.sandbox_throttled),
                minutes(r.virtual),
                minutes(r.limits.floor_seconds(floor)),
                f"{r.real:.1f} s",
                num(r.postings / r.real) if r.real else "-",
                mib(r.rss_peak_kib),
                "ok" if r.ok else "FAILED",
            ]
        )
    table(lines)


# --- command line -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Write back payments and fees to the QuickBooks and Xero sandboxes, time-compressed."
    )
    parser.add_argument("--count", type=int, default=10_000, help="payments, and as many fees (default 10000)")
    parser.add_argument("--ledger", choices=("qbo", "xero", "both"), default="both", help="default both")
    parser.add_argument(
        "--latency", type=float, default=0.0, help="milliseconds the sandbox adds to every API call (default 0)"
    )
    parser.add_argument("--seed", type=int, default=7, help="random seed of the invoices' amounts (default 7)")
    parser.add_argument(
        "--profile", metavar="PREFIX", help="cProfile the timed part; stats to PREFIX.<ledger>.prof, top 25 printed"
    )
    parser.add_argument(
        "--qbo-margin",
        type=float,
        metavar="SECONDS",
        help="what-if: give the QuickBooks client's rate budgets this margin (XeroSource's has 1 s; the default none)",
    )
    args = parser.parse_args(argv)
    if args.qbo_margin is not None and args.qbo_margin < 0:
        parser.error("--qbo-margin must not be negative")
    if args.count < 1:
        parser.error("--count must be at least 1")
    if args.latency < 0:
        parser.error("--latency must not be negative")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    print(
        f"arsync write-back benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, {platform.platform()}, "
        f"load average {os.getloadavg()[0]:.2f}, {revision()}"
    )
    results: list[Result] = []
    for ledger in LEDGERS if args.ledger == "both" else (args.ledger,):
        # each ledger in a fresh process, so its memory figures are its own
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            result = pool.submit(
                run_ledger,
                ledger,
                count=args.count,
                latency=args.latency / 1000,
                seed=args.seed,
                profile=args.profile,
                qbo_margin=args.qbo_margin,
            ).result()
        print_result(result)
        results.append(result)
        sys.stdout.flush()
    if len(results) > 1:
        print_summary(results)
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
