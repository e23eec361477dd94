"""Benchmark: a full Xero backfill against the sandbox with Xero's real rate limits, time-compressed.

The Xero sandbox (``XeroSandbox``) runs in this process with Xero's limits on
(60 calls a minute, 5 in flight and 5,000 a day per organisation; 10,000 a
minute per app), seeded with ``seed_bulk``. The sync runs the product's own
path against it: config file -> ``bootstrap`` -> ``sync.db.upgrade`` ->
``App.register`` -> OAuth through ``arsync.sandboxes.authorise`` ->
``SyncEngine.sync(full=True)``.

**Time compression.** The sandbox and the app share one virtual clock,
``now() = real now + offset``, whose ``sleep(s)`` adds ``s`` to the offset
instead of waiting. The client's rate budgets "wait" by moving virtual time on,
and the sandbox enforces its limits on the same clock, so the limits are real
(a call sent too early gets a 429) but the run only takes its processing time.
Virtual wall time is what the backfill would take against Xero at these
limits; real elapsed time is what the processing costs.

Reported (plain-text tables, nothing asserted): API calls per collection
against the floor (one call per 1000 rows: 120 for 100,000 invoices and
20,000 contacts) and why each extra call was made, the share of the day's
quota used (and ``X-DayLimit-Remaining`` from the last answer), virtual and
real wall time against the floors, rows per second, 429s, and the peak memory
of the process (``ru_maxrss``; it includes the in-process sandbox and its data).

Usage::

    python bench/backfill_xero.py                       # 100k invoices + 20k contacts, SQLite, no latency
    python bench/backfill_xero.py --db postgres         # or --db both: one run each, then a summary
    python bench/backfill_xero.py --invoices 5000 --contacts 500 --latency 0.1

PostgreSQL comes from ``ARSYNC_BENCH_PG_URL`` (default
``postgresql+psycopg://postgres@127.0.0.1:5432/test``); each run uses a fresh
schema and drops it afterwards.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import platform
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
import sqlalchemy as sa
from backfill_qbo import cpu_seconds, current_rss_kib, database, db_label, maxrss_kib, mib, num, table, title

from arsync.bootstrap import bootstrap
from arsync.sandboxes import authorise, write_sandbox_config, xero_connection
from connectors.base import Entity
from connectors.http import CallStats
from connectors.xero.client import PAGE_SIZE, XeroSource
from connectors.xero.faults import RateHeaders
from connectors.xero.mapping import COLLECTIONS
from connectors.xero.sandbox import XeroSandbox
from connectors.xero.seed import SeedSummary, seed_bulk
from sync.db import upgrade
from sync.models import DocumentLine
from sync.store import TABLES

NAME = "bench-xero"
TENANT = "bench"
API_PREFIX = "/api.xro/2.0/"
PULL_ORDER: tuple[tuple[Entity, str], ...] = tuple(
    (entity, collection)
    for entity in (Entity.CUSTOMER, Entity.INVOICE, Entity.PAYMENT, Entity.CREDIT_NOTE)
    for collection in COLLECTIONS[entity]
)
"""``XeroSource``'s pull order: each entity's collections, one after the other."""


# --- the shared virtual clock -------------------------------------------------------------


class VirtualClock:
    """``now() = real now + offset``; ``sleep(s)`` adds ``s`` to the offset instead of waiting.

    One instance is handed to the sandbox and to the app, so the client's waits
    and the sandbox's rate windows move on the same time line. Thread-safe (the
    sandbox answers on its own threads). Every sleeper adds to one offset, so it
    models a single waiting client: the pull sends one call at a time.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._offset = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> datetime:
        with self._lock:
            offset = self._offset
        return datetime.now(UTC) + timedelta(seconds=offset)

    def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            return
        with self._lock:
            self._offset += seconds
            self.sleeps.append(seconds)


# --- seeding --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seeded:
    contacts: int
    invoices: int
    """ACCREC invoices: what the AR pull reads."""
    bills: int
    """ACCPAY bills in the organisation: filtered out server side, never read."""
    by_status: dict[str, int]
    seconds: float


def seed(sandbox: XeroSandbox, tenant: str, *, contacts: int, invoices: int) -> Seeded:
    """``seed_bulk``, then as many more AUTHORISED ACCREC invoices as it made bills.

    ``seed_bulk`` makes about 2% of its rows ACCPAY bills, which an AR pull
    never reads (``Type=="ACCREC"``); topping up keeps exactly ``invoices``
    receivables to backfill, beside the bills the filter has to skip.
    """
    started = time.perf_counter()
    summary: SeedSummary = seed_bulk(sandbox, tenant, contacts=contacts, invoices=invoices, today=sandbox.today())
    by_status = dict(summary.by_status)
    missing = invoices - summary.invoices
    if missing > 0:
        rng = random.Random(11)
        contact_ids = sandbox.ids(tenant, "Contacts")
        now = sandbox.now()
        today = sandbox.today().toordinal()
        base = sandbox.base_currency

        def rows() -> Iterator[tuple[Any, ...]]:
            for _ in range(missing):
                issued = today - rng.randint(1, 120)
                updated = now - timedelta(days=rng.uniform(0, 90))
                total = Decimal(rng.randint(5_000, 500_000)).scaleb(-2)
                contact = rng.choice(contact_ids)
                ms = int(updated.timestamp() * 1000)
                yield ("", contact, issued, issued + 30, base, Decimal(1), total, ms, "AUTHORISED", "ACCREC", "")

        sandbox.load_compact_invoices(tenant, rows())
        by_status["AUTHORISED"] = by_status.get("AUTHORISED", 0) + missing
    return Seeded(
        contacts=sandbox.count(tenant, "Contacts"),
        invoices=sum(by_status.values()),
        bills=summary.bills,
        by_status=by_status,
        seconds=time.perf_counter() - started,
    )


# --- one backfill run -------------------------------------------------------------------------------


@dataclass
class Arrival:
    """One request as the sandbox received it."""

    method: str
    path: str
    real: float
    """``time.perf_counter()`` at arrival."""


@dataclass
class Run:
    db: str
    latency: float
    seeded: Seeded
    sandbox_limits: dict[str, int]
    status: str
    error: str | None
    api_calls: int
    written: int
    unchanged: int
    quarantined: int
    by_entity: dict[str, int]
    stats: CallStats
    sandbox_throttled: int
    sandbox_requests: int
    last_rate: RateHeaders | None
    real_start: float
    """``time.perf_counter()`` when ``sync()`` was called."""
    answer_seconds: float
    """Sum of ``response.elapsed`` of the API calls: request sent to answer's headers read (the sandbox's part)."""
    real: float
    virtual: float
    cpu: float
    slept: list[float]
    oauth: Counter[str]
    sync_arrivals: list[Arrival]
    ledger: dict[str, int]
    rss_start_kib: int
    rss_seeded_kib: int
    rss_ready_kib: int
    rss_peak_kib: int
    rss_end_kib: int
    server_errors: list[str] = field(default_factory=list)

    @property
    def calls_by_collection(self) -> Counter[str]:
        return Counter(collection_of(a.path) for a in self.sync_arrivals if a.path.startswith(API_PREFIX))

    @property
    def other_sync_requests(self) -> Counter[str]:
        return Counter(kind_of(a.method, a.path) for a in self.sync_arrivals if not a.path.startswith(API_PREFIX))


def collection_of(path: str) -> str:
    return path[len(API_PREFIX) :].split("/", 1)[0]


def kind_of(method: str, path: str) -> str:
    return f"{method} {path}"


def backfill(*, invoices: int, contacts: int, db: str, latency: float) -> Run:
    rss_start = maxrss_kib()
    clock = VirtualClock()
    sandbox = XeroSandbox(clock, latency=latency, record_exchanges=False)
    tenant = sandbox.tenant_ids[0]
    seeded = seed(sandbox, tenant, contacts=contacts, invoices=invoices)
    rss_seeded = maxrss_kib()
    arrivals: list[Arrival] = []

    def on_request(method: str, raw_path: str, _body: str) -> None:
        arrivals.append(Arrival(method, urlsplit(raw_path).path, time.perf_counter()))

    sandbox.on_request = on_request
    with (
        tempfile.TemporaryDirectory(prefix="arsync-bench-") as tmp,
        database(db, Path(tmp)) as url,
        sandbox,
    ):
        connection = xero_connection(sandbox, tenant=TENANT, tenant_name="Benchmark Co", name=NAME)
        config = write_sandbox_config(Path(tmp), [connection], database_url=url)
        app = bootstrap(config, clock=clock, sleeper=clock.sleep)
        upgrade(app.engine)
        app.register()
        authorise(app, NAME)
        source = app.source(NAME)
        assert isinstance(source, XeroSource)
        answers: list[float] = []

        def note_answer(response: requests.Response, *args: Any, **kwargs: Any) -> None:
            if API_PREFIX in response.url:
                answers.append(response.elapsed.total_seconds())

        source.transport.hooks["response"].append(note_answer)
        rss_ready = maxrss_kib()
        oauth = Counter(kind_of(a.method, a.path) for a in arrivals)
        first_sync_request = len(arrivals)
        sleeps_before = len(clock.sleeps)
        throttled_before = sandbox.throttled_count
        requests_before = sandbox.request_count
        stats_before = replace(source.transport.stats)

        virtual_start = clock()
        cpu_start = cpu_seconds()
        started = time.perf_counter()
        summary = app.sync_engine(NAME).sync(source, full=True)
        real = time.perf_counter() - started
        cpu = cpu_seconds() - cpu_start
        virtual = (clock() - virtual_start).total_seconds()

        rss_peak, rss_end = maxrss_kib(), current_rss_kib()
        after = source.transport.stats
        stats = CallStats(
            requests=after.requests - stats_before.requests,
            retries=after.retries - stats_before.retries,
            throttled=after.throttled - stats_before.throttled,
            refreshes=after.refreshes - stats_before.refreshes,
        )
        ledger: dict[str, int] = {}
        with app.sessions() as session:
            for entity, model in TABLES.items():
                ledger[entity.value] = session.execute(sa.select(sa.func.count()).select_from(model)).scalar_one()
            ledger["document_line"] = session.execute(sa.select(sa.func.count()).select_from(DocumentLine)).scalar_one()
        app.engine.dispose()
        total = summary.total()
        return Run(
            db=db,
            latency=latency,
            seeded=seeded,
            sandbox_limits={
                "per_minute": sandbox.per_minute,
                "per_day": sandbox.per_day,
                "concurrent": sandbox.concurrent,
                "app_per_minute": sandbox.app_per_minute,
            },
            status=summary.status,
            error=summary.error,
            api_calls=summary.api_calls,
            written=total.written,
            unchanged=total.unchanged,
            quarantined=total.quarantined,
            by_entity={e.value: c.written for e, c in summary.counts.items()},
            stats=stats,
            sandbox_throttled=sandbox.throttled_count - throttled_before,
            sandbox_requests=sandbox.request_count - requests_before,
            last_rate=source.rate.last,
            real_start=started,
            answer_seconds=sum(answers),
            real=real,
            virtual=virtual,
            cpu=cpu,
            slept=clock.sleeps[sleeps_before:],
            oauth=oauth,
            sync_arrivals=arrivals[first_sync_request:],
            ledger=ledger,
            rss_start_kib=rss_start,
            rss_seeded_kib=rss_seeded,
            rss_ready_kib=rss_ready,
            rss_peak_kib=rss_peak,
            rss_end_kib=rss_end,
            server_errors=list(sandbox.server_errors),
        )


# --- floors -----------------------------------------------------------------------------------------


def expected_calls(rows: int) -> int:
    """Pages a collection costs: the pull stops at the first page shorter than 1000."""
    return rows // PAGE_SIZE + 1


def extra_reason(rows: int) -> str:
    if rows == 0:
        return "empty: one call to see that it is"
    if rows % PAGE_SIZE == 0:
        return f"{num(rows)} is a multiple of {PAGE_SIZE}: one more call sees an empty page"
    return ""


def rate_floor(calls: int, per_minute: int) -> float:
    """Seconds the per-minute limit imposes: calls 1..60 at 0 s, 61..120 at 60 s, ..."""
    return 60.0 * ((calls - 1) // per_minute) if calls > 0 else 0.0


def rolling_window_estimate(run: Run, per_minute: int) -> float:
    """Virtual wall time of a client that waited only as long as the rolling minute requires.

    Replays the measured work around each call (real time from one call's
    arrival at the sandbox to the next; before the first, from the start of the
    sync; after the last, to its end) and sends each call at the later of "its
    work is done" and "the call ``per_minute`` before it, plus 60 s".
    """
    calls = [a.real for a in run.sync_arrivals if a.path.startswith(API_PREFIX)]
    if not calls:
        return run.real
    sent: list[float] = []
    for index, arrival in enumerate(calls):
        ready = sent[-1] + (arrival - calls[index - 1]) if index else arrival - run.real_start
        window = sent[index - per_minute] + 60.0 if index >= per_minute else 0.0
        sent.append(max(ready, window))
    return sent[-1] + (run.real_start + run.real - calls[-1])


# --- printing ---------------------------------------------------------------------------------------


def print_run(run: Run) -> None:
    limits = run.sandbox_limits
    seeded = run.seeded
    title(
        f"Xero backfill: {num(seeded.invoices)} invoices + {num(seeded.contacts)} contacts, {db_label(run.db)}, "
        f"latency {run.latency * 1000:.0f} ms, limits {limits['per_minute']}/min, {limits['concurrent']} concurrent, "
        f"{num(limits['per_day'])}/day per tenant, {num(limits['app_per_minute'])}/min per app, time-compressed"
    )
    print(f"sync status: {run.status}" + (f" ({run.error})" if run.error else ""))
    statuses = ", ".join(f"{num(n)} {s}" for s, n in sorted(seeded.by_status.items()))
    print(
        f"sandbox (in this process) seeded in {seeded.seconds:.1f} s, not timed: {num(seeded.contacts)} contacts, "
        f"{num(seeded.invoices)} ACCREC invoices ({statuses}), {num(seeded.bills)} ACCPAY bills "
        '(skipped by the Type=="ACCREC" filter, never read)'
    )

    rows_of = {"Contacts": seeded.contacts, "Invoices": seeded.invoices}
    used_by = run.calls_by_collection
    print(f"\nAPI calls (floor: one call per {PAGE_SIZE} rows, pageSize={PAGE_SIZE}; sandbox requests_log by path)")
    lines = [["entity", "collection", "rows", "floor", "expected", "used", "why more than the floor"]]
    floor_total = expected_total = used_total = 0
    for entity, collection in PULL_ORDER:
        count = rows_of.get(collection, 0)
        floor, expected, used = math.ceil(count / PAGE_SIZE), expected_calls(count), used_by.get(collection, 0)
        floor_total, expected_total, used_total = floor_total + floor, expected_total + expected, used_total + used
        lines.append(
            [
                entity.value,
                collection,
                num(count),
                str(floor),
                str(expected),
                str(used),
                extra_reason(count),
            ]
        )
    known = {c for _, c in PULL_ORDER}
    for other, used in sorted(used_by.items()):
        if other not in known:
            lines.append(["", other, "", "0", "0", str(used), "not part of a full pull"])
            used_total += used
    lines.append(
        [
            "total",
            "",
            num(seeded.contacts + seeded.invoices),
            str(floor_total),
            str(expected_total),
            str(used_total),
            "",
        ]
    )
    table(lines, align="llrrrrl")
    oauth = ", ".join(f"{k} x{v}" for k, v in sorted(run.oauth.items()))
    print(
        f"  RunSummary.api_calls {run.api_calls} (client attempts); the sandbox logged {used_total} API calls "
        f"during the sync. Above the floor: {used_total - floor_total} "
        f"({expected_total - floor_total} expected from the table)."
    )
    print(f"  OAuth before the sync, not API calls and not rate limited: {sum(run.oauth.values())} ({oauth})")
    others = run.other_sync_requests
    if others:
        print("  other requests during the sync: " + ", ".join(f"{k} x{v}" for k, v in sorted(others.items())))

    print("\nRate limits")
    day_share = used_total / limits["per_day"]
    last = run.last_rate
    day_left = "not sent" if last is None or last.day_remaining is None else num(last.day_remaining)
    minute_left = "not sent" if last is None or last.minute_remaining is None else str(last.minute_remaining)
    table(
        [
            ["day quota used", f"{used_total} / {num(limits['per_day'])}", f"{day_share:.2%}"],
            ["X-DayLimit-Remaining of the last answer", "XeroSource.rate.last", day_left],
            ["X-MinLimit-Remaining of the last answer", "", minute_left],
            ["429 answers (sandbox)", "", str(run.sandbox_throttled)],
            ["throttled (client: transport.stats.throttled)", "", str(run.stats.throttled)],
            ["retries / token refreshes during the sync", "", f"{run.stats.retries} / {run.stats.refreshes}"],
            [
                "client waits on its budgets (virtual sleeps)",
                f"{len(run.slept)} waits",
                f"{sum(run.slept):.1f} s",
            ],
        ],
        header=False,
    )

    print("\nWall time (sync(full=True) only; seeding, bootstrap, migration and OAuth not timed)")
    calls = used_total
    floor_rate = rate_floor(calls, limits["per_minute"])
    floor_latency = calls * run.latency
    time_floor = max(floor_rate, floor_latency)
    estimate = rolling_window_estimate(run, limits["per_minute"])
    rows_total = run.written
    table(
        [
            [
                "rate floor",
                f"60 s x (({calls} - 1) // {limits['per_minute']})",
                f"{floor_rate:.1f} s",
            ],
            ["sequential latency floor", f"{calls} x {run.latency:.3f} s", f"{floor_latency:.1f} s"],
            [
                "virtual wall time (what it takes against Xero)",
                f"{run.virtual / time_floor:.2f} x floor" if time_floor else "",
                f"{run.virtual:.1f} s",
            ],
            ["  of which waiting for the rate budgets", "", f"{sum(run.slept):.1f} s"],
            ["  of which work (real elapsed)", "", f"{run.virtual - sum(run.slept):.1f} s"],
            [
                "virtual wall with rolling-window pacing (estimate)",
                "same work, waits only as the window requires",
                f"{estimate:.1f} s",
            ],
            [
                "real elapsed (time-compressed run)",
                f"{run.real / max(run.virtual, 1e-9):.1%} of virtual",
                f"{run.real:.1f} s",
            ],
            ["  in the sandbox: request sent to answer (response.elapsed)", "", f"{run.answer_seconds:.1f} s"],
            [
                "  in the sync: read, parse, map, upsert, commit (the rest)",
                "",
                f"{run.real - run.answer_seconds:.1f} s",
            ],
            [
                "process CPU (sync and sandbox)",
                f"{run.cpu / run.real:.0%} of real" if run.real else "",
                f"{run.cpu:.1f} s",
            ],
            ["rows/s (rows written / real elapsed)", f"{num(rows_total)} rows", num(rows_total / run.real)],
            ["rows/s against Xero (rows written / virtual wall)", "", num(rows_total / run.virtual)],
        ],
        header=False,
    )
    print(
        f"  written {num(run.written)} ({', '.join(f'{num(v)} {k}' for k, v in run.by_entity.items())}), "
        f"unchanged {num(run.unchanged)}, quarantined {num(run.quarantined)}"
    )

    print("\nMemory (this process: the sync AND the in-process sandbox with its seeded data)")
    table(
        [
            ["peak RSS after imports", mib(run.rss_start_kib)],
            ["peak RSS after seeding the sandbox", mib(run.rss_seeded_kib)],
            ["peak RSS after bootstrap, migration, OAuth", mib(run.rss_ready_kib)],
            ["peak RSS at the end of the sync (ru_maxrss)", mib(run.rss_peak_kib)],
            ["growth during the sync", mib(run.rss_peak_kib - run.rss_ready_kib)],
            ["RSS after the sync", mib(run.rss_end_kib)],
        ],
        header=False,
    )
    ledger = ", ".join(f"{num(v)} {k}" for k, v in run.ledger.items())
    print(f"  ledger at the end: {ledger}")
    if run.server_errors:
        print(f"  sandbox errors (HTTP 500): {len(run.server_errors)}; first:\n{run.server_errors[0]}")


def print_summary(runs: Sequence[Run]) -> None:
    title("Summary")
    lines = [
        ["ledger", "rows", "API calls", "floor", "day quota", "429s", "virtual wall", "real", "rows/s", "peak RSS"]
    ]
    for run in runs:
        used = sum(run.calls_by_collection.values())
        floor = math.ceil(run.seeded.invoices / PAGE_SIZE) + math.ceil(run.seeded.contacts / PAGE_SIZE)
        lines.append(
            [
                db_label(run.db),
                num(run.written),
                str(used),
                str(floor),
                f"{used / run.sandbox_limits['per_day']:.2%}",
                str(run.sandbox_throttled),
                f"{run.virtual:.1f} s",
                f"{run.real:.1f} s",
                num(run.written / run.real),
                mib(run.rss_peak_kib),
            ]
        )
    table(lines)


# --- command line -------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Backfill Xero invoices and contacts from the in-process sandbox, time-compressed."
    )
    parser.add_argument("--invoices", type=int, default=100_000, help="ACCREC invoices to backfill (default 100000)")
    parser.add_argument("--contacts", type=int, default=20_000, help="contacts in the sandbox (default 20000)")
    parser.add_argument(
        "--db", choices=("sqlite", "postgres", "both"), default="sqlite", help="ledger database (default sqlite)"
    )
    parser.add_argument(
        "--latency", type=float, default=0.0, help="real seconds the sandbox adds to every API call (default 0)"
    )
    args = parser.parse_args(argv)
    if args.invoices < 0 or args.contacts < 0:
        parser.error("--invoices and --contacts must not be negative")
    if args.invoices and not args.contacts:
        parser.error("invoices need at least one contact")
    if args.latency < 0:
        parser.error("--latency must not be negative")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    print(
        f"arsync Xero backfill benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, {platform.platform()}, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    runs: list[Run] = []
    for db in ("sqlite", "postgres") if args.db == "both" else (args.db,):
        # each run in a fresh process, so its memory figures are its own
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            run = pool.submit(
                backfill, invoices=args.invoices, contacts=args.contacts, db=db, latency=args.latency
            ).result()
        print_run(run)
        runs.append(run)
        sys.stdout.flush()
    if len(runs) > 1:
        print_summary(runs)
    return 0 if all(r.status == "ok" for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
