"""Benchmark: a full QuickBooks backfill against the sandbox, and the ledger's write path.

Two measurements, printed as plain-text tables (nothing is asserted):

1. **Backfill through the real connector path.** A seeded QuickBooks sandbox
   runs in its own process (``bench/qbo_sandbox_server.py``) with the realm's
   rate limits on (10 req/s, 500 req/min, 10 concurrent) and a latency added
   to every API call. The sync runs in a second, freshly spawned process:
   config file -> ``bootstrap`` -> ``sync.db.upgrade`` -> ``App.register`` ->
   OAuth through ``arsync.sandboxes.authorise`` -> ``SyncEngine.sync(full=True)``.
   Reported: API calls per entity against the floor (one call per 1000 rows),
   wall time against the floor the latency and the rate limits impose, rows
   per second, and the sync process's own peak memory (``ru_maxrss`` and the
   ``tracemalloc`` peak), which must not grow with the number of rows.
   ``--resync`` adds a second full sync over the unchanged source.
2. **Mapping and upsert without network.** Invoice query pages (1000 realistic
   invoices each, ``bench/qbo_payloads.py``) are parsed with ``Decimal``,
   mapped with ``map_query_response`` and written with ``apply_page`` in one
   transaction per page, on a fresh SQLite file and on a fresh PostgreSQL
   schema; then the same pages again, all unchanged.

Usage::

    python bench/backfill_qbo.py                      # 100k invoices + 20k customers, real limits, 150 ms
    python bench/backfill_qbo.py --scale 100000,1000000 --no-limits --latency 0 --mapping-db none --resync
    python bench/backfill_qbo.py --invoices 5000 --customers 500 --latency 0 --no-limits --mapping-invoices 5000

See ``bench/README.md`` for what each figure means.

PostgreSQL comes from ``ARSYNC_BENCH_PG_URL`` (default
``postgresql+psycopg://postgres@127.0.0.1:5432/test``); each run uses a fresh
schema and drops it afterwards.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, TextIO

import sqlalchemy as sa
from qbo_payloads import PAGE, invoice_page
from sqlalchemy.orm import sessionmaker

from arsync.bootstrap import bootstrap
from arsync.sandboxes import authorise
from connectors.base import Entity
from connectors.quickbooks.mapping import ENTITY_NAMES, map_query_response
from sync.db import make_engine, upgrade
from sync.models import Connection, DocumentLine, Tenant
from sync.store import TABLES, ApplyCounts, apply_page, refresh_statistics, resolve_quarantine

NAME = "bench-qbo"
TENANT = "bench"
PG_URL = os.environ.get("ARSYNC_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
SERVER = Path(__file__).resolve().with_name("qbo_sandbox_server.py")
PULL_ORDER = (Entity.CUSTOMER, Entity.INVOICE, Entity.PAYMENT, Entity.CREDIT_NOTE)
"""The entities ``QuickBooksSource`` pulls, in its order."""


# --- small helpers ------------------------------------------------------------------------


def maxrss_kib() -> int:
    """Peak resident set size of this process so far (KiB on Linux)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def current_rss_kib() -> int:
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return resident_pages * os.sysconf("SC_PAGE_SIZE") // 1024


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return float(usage.ru_utime + usage.ru_stime)


def mib(kib: int) -> str:
    return f"{kib / 1024:,.1f} MiB"


def num(value: float) -> str:
    return f"{value:,.0f}"


def table(rows: Sequence[Sequence[str]], *, header: bool = True, align: str = "", out: TextIO = sys.stdout) -> None:
    """Print rows as aligned columns; ``align`` has an ``l`` or ``r`` per column (default: first left, others right)."""
    columns = max(len(r) for r in rows)
    align = align or "l" + "r" * (columns - 1)
    widths = [max(len(row[i]) for row in rows if i < len(row)) for i in range(columns)]
    for index, row in enumerate(rows):
        cells = [cell.ljust(widths[i]) if align[i] == "l" else cell.rjust(widths[i]) for i, cell in enumerate(row)]
        print("  " + "  ".join(cells).rstrip(), file=out)
        if header and index == 0:
            print("  " + "  ".join("-" * w for w in widths), file=out)


def revision() -> str:
    """The commit measured, and whether the working tree differs from it."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench", ":!docs"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "commit unknown"
    return f"commit {head}" + (" + uncommitted changes outside bench/ and docs/" if dirty else "")


def title(text: str) -> None:
    print()
    print(text)
    print("=" * len(text))


# --- databases ------------------------------------------------------------------------------


@contextmanager
def database(kind: str, workdir: Path) -> Iterator[str]:
    """A fresh ledger database URL: a SQLite file in ``workdir`` or a new PostgreSQL schema."""
    if kind == "sqlite":
        yield f"sqlite:///{workdir / 'ledger.db'}"
        return
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{PG_URL}{'&' if '?' in PG_URL else '?'}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def postgres_problem() -> str | None:
    """Why PostgreSQL cannot be used, or None when it answers."""
    engine = sa.create_engine(PG_URL)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
    except sa.exc.SQLAlchemyError as exc:
        cause = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
        return f"PostgreSQL is not reachable at {PG_URL} ({type(cause).__name__}); set ARSYNC_BENCH_PG_URL"
    finally:
        engine.dispose()
    return None


def db_label(kind: str) -> str:
    return "SQLite" if kind == "sqlite" else "PostgreSQL"


# --- the sandbox process ----------------------------------------------------------------------


class SandboxProcess:
    """``bench/qbo_sandbox_server.py`` in a subprocess, driven over stdin/stdout."""

    def __init__(self, *, customers: int, invoices: int, latency: float, limits: bool) -> None:
        command = [
            sys.executable,
            str(SERVER),
            "--customers",
            str(customers),
            "--invoices",
            str(invoices),
            "--latency",
            str(latency),
        ]
        if not limits:
            command.append("--no-limits")
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            line = self._stdout().readline()
            if not line:
                raise RuntimeError(f"the sandbox process exited with {self.proc.wait()} before it was ready")
            self.info: dict[str, Any] = json.loads(line)
        except BaseException:
            self.close()
            raise

    def _stdout(self) -> IO[str]:
        assert self.proc.stdout is not None
        return self.proc.stdout

    def command(self, text: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        answer: dict[str, Any] = json.loads(self._stdout().readline())
        return answer

    def close(self) -> None:
        if self.proc.poll() is None and self.proc.stdin is not None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> SandboxProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- the sync process -------------------------------------------------------------------------


@dataclass(frozen=True)
class SyncJob:
    workdir: str
    database_url: str
    sandbox: dict[str, Any]
    limits: bool
    trace: bool
    passes: int = 1
    """1: one full sync into an empty ledger; 2: then a second full sync over the unchanged source (a re-pull)."""


@dataclass
class PassResult:
    """One ``SyncEngine.sync(full=True)`` as the sync process saw it."""

    status: str
    error: str | None
    api_calls: int
    retries: int
    throttled: int
    wall: float
    cpu: float
    written: int
    unchanged: int
    deleted: int
    rss_peak_kib: int
    rss_end_kib: int
    traced_peak: int | None
    invoice_pages: list[tuple[float, int]] = field(default_factory=list)
    """(seconds since the previous page, rows) of each invoice page, to see whether pages slow as the ledger grows."""

    def invoice_rate(self, pages: slice) -> str:
        chosen = self.invoice_pages[pages]
        seconds = sum(t for t, _ in chosen)
        return f"{num(sum(n for _, n in chosen) / seconds)} rows/s" if seconds else "-"


@dataclass
class SyncResult:
    passes: list[PassResult]
    ledger: dict[str, int]
    rss_start_kib: int
    rss_ready_kib: int


def write_config(workdir: Path, sandbox: dict[str, Any], database_url: str, *, limits: bool) -> Path:
    """The config file a user would write for this sandbox (client id and secret in a separate file)."""
    credentials = workdir / "credentials.toml"
    credentials.write_text(
        f'[connections.{NAME}]\nclient_id = "{sandbox["client_id"]}"\nclient_secret = "{sandbox["client_secret"]}"\n'
    )
    credentials.chmod(0o600)
    budget = (
        ""
        if limits
        else (
            f"\n[tenants.{TENANT}.connections.{NAME}.rate_limit]\n"
            "per_second = 1000000\nper_minute = 60000000\nconcurrent = 10\n"
        )
    )
    config = workdir / "arsync.toml"
    config.write_text(
        f"""[database]
url = "{database_url}"

[credentials]
file = "credentials.toml"

[tenants.{TENANT}]
display_name = "Benchmark Co"
timezone = "America/Los_Angeles"
home_currency = "USD"

[tenants.{TENANT}.connections.{NAME}]
kind = "quickbooks"
environment = "sandbox"
redirect_uri = "http://127.0.0.1:8765/callback"
base_url = "{sandbox["api_base"]}"
token_url = "{sandbox["token_url"]}"
discovery_url = "{sandbox["discovery_url"]}"
{budget}"""
    )
    return config


class PageTimer:
    """A ``SyncEngine`` page observer: the time from one committed page to the next, for invoice pages."""

    def __init__(self) -> None:
        self.last = time.perf_counter()
        self.invoice_pages: list[tuple[float, int]] = []

    def __call__(self, entity: Entity, counts: ApplyCounts) -> None:
        now = time.perf_counter()
        if entity is Entity.INVOICE and counts.deleted == 0:  # the deletion check reports its own counts
            self.invoice_pages.append((now - self.last, counts.written + counts.unchanged + counts.quarantined))
        self.last = now


def run_sync(job: SyncJob) -> SyncResult:
    """The sync side, in its own process: bootstrap, migrate, authorise, then full syncs."""
    rss_start = maxrss_kib()
    config = write_config(Path(job.workdir), job.sandbox, job.database_url, limits=job.limits)
    app = bootstrap(config)
    upgrade(app.engine)
    app.register()
    authorise(app, NAME)
    source = app.source(NAME)
    rss_ready = maxrss_kib()
    passes: list[PassResult] = []
    for _ in range(job.passes):
        before = replace(source.transport.stats)
        timer = PageTimer()
        if job.trace:
            tracemalloc.start()
        cpu_before = cpu_seconds()
        started = timer.last = time.perf_counter()
        summary = app.sync_engine(NAME, on_page=timer).sync(source, full=True)
        wall = time.perf_counter() - started
        cpu = cpu_seconds() - cpu_before
        traced_peak = None
        if job.trace:
            traced_peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        total, stats = summary.total(), source.transport.stats
        passes.append(
            PassResult(
                status=summary.status,
                error=summary.error,
                api_calls=summary.api_calls,
                retries=stats.retries - before.retries,
                throttled=stats.throttled - before.throttled,
                wall=wall,
                cpu=cpu,
                written=total.written,
                unchanged=total.unchanged,
                deleted=total.deleted,
                rss_peak_kib=maxrss_kib(),
                rss_end_kib=current_rss_kib(),
                traced_peak=traced_peak,
                invoice_pages=timer.invoice_pages,
            )
        )
        if summary.status != "ok":
            break
    ledger: dict[str, int] = {}
    with app.sessions() as session:
        for entity, model in TABLES.items():
            ledger[entity.value] = session.execute(sa.select(sa.func.count()).select_from(model)).scalar_one()
        ledger["document_line"] = session.execute(sa.select(sa.func.count()).select_from(DocumentLine)).scalar_one()
    app.engine.dispose()
    return SyncResult(passes=passes, ledger=ledger, rss_start_kib=rss_start, rss_ready_kib=rss_ready)


# --- floors -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Floors:
    calls: int
    latency: float
    per_second: int | None
    per_minute: int | None
    concurrent: int

    @property
    def sequential(self) -> float:
        """One call at a time (our pull is sequential per entity): calls x latency."""
        return self.calls * self.latency

    @property
    def parallel(self) -> float:
        """The latency floor if every allowed concurrent slot were used."""
        return self.latency * self.calls / self.concurrent

    @property
    def per_second_floor(self) -> float:
        return self.calls / self.per_second if self.per_second else 0.0

    @property
    def per_minute_floor(self) -> float:
        return 60.0 * (self.calls // self.per_minute) if self.per_minute else 0.0

    @property
    def rate(self) -> float:
        return max(self.per_second_floor, self.per_minute_floor)

    @property
    def floor(self) -> float:
        return max(self.sequential, self.rate)

    @property
    def binds(self) -> str:
        if self.floor == 0:
            return "nothing (no latency, no limits)"
        if self.sequential >= self.rate:
            return "latency (sequential calls)"
        return "per-second limit" if self.per_second_floor >= self.per_minute_floor else "per-minute limit"


def pull_calls(rows: int) -> int:
    """Calls a paged pull makes: it stops at the first page shorter than 1000, so a multiple of 1000 costs one more."""
    return rows // PAGE + 1


def extra_reason(rows: int) -> str:
    if rows == 0:
        return "no rows: one call to see the entity is empty"
    if rows % PAGE == 0:
        return f"{num(rows)} is a multiple of {PAGE}: one more call sees an empty page"
    return ""


# --- one backfill run ---------------------------------------------------------------------------


@dataclass
class BackfillReport:
    customers: int
    invoices: int
    db: str
    latency: float
    limits: bool
    trace: bool
    sandbox: dict[str, Any]
    result: SyncResult
    stats: dict[str, Any]
    rows: dict[Entity, int] = field(default_factory=dict)

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())

    @property
    def first(self) -> PassResult:
        return self.result.passes[0]

    @property
    def second(self) -> PassResult | None:
        return self.result.passes[1] if len(self.result.passes) > 1 else None

    def pass_calls(self, index: int) -> Counter[str]:
        """API calls per kind of pass ``index``, from the sandbox's log split by each pass's count."""
        calls: list[str] = self.stats["calls"]
        start = sum(p.api_calls for p in self.result.passes[:index])
        return Counter(calls[start : start + self.result.passes[index].api_calls])

    def floors(self, calls: int) -> Floors:
        limits = self.limits
        return Floors(
            calls=calls,
            latency=self.latency,
            per_second=int(self.sandbox["per_second"]) if limits else None,
            per_minute=int(self.sandbox["per_minute"]) if limits else None,
            concurrent=int(self.sandbox["concurrent"]),
        )


def backfill(
    *, customers: int, invoices: int, latency: float, limits: bool, db: str, trace: bool, resync: bool
) -> BackfillReport:
    with (
        tempfile.TemporaryDirectory(prefix="arsync-bench-") as tmp,
        SandboxProcess(customers=customers, invoices=invoices, latency=latency, limits=limits) as sandbox,
        database(db, Path(tmp)) as url,
    ):
        job = SyncJob(
            workdir=tmp, database_url=url, sandbox=sandbox.info, limits=limits, trace=trace, passes=2 if resync else 1
        )
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            result = pool.submit(run_sync, job).result()
        stats = sandbox.command("stats")
    return BackfillReport(
        customers=customers,
        invoices=invoices,
        db=db,
        latency=latency,
        limits=limits,
        trace=trace,
        sandbox=sandbox.info,
        result=result,
        stats=stats,
        rows={Entity.CUSTOMER: customers, Entity.INVOICE: invoices, Entity.PAYMENT: 0, Entity.CREDIT_NOTE: 0},
    )


def traced(value: int | None) -> str:
    return f"{value / 1048576:,.1f} MiB" if value is not None else "off"


def print_times(report: BackfillReport, result: PassResult) -> None:
    floors = report.floors(result.api_calls)
    if report.trace:
        print("  tracemalloc was on during this sync: its CPU-bound part runs about 2.5x slower than without")
    rate_text = (
        f"max({floors.calls}/{floors.per_second}, 60 x ({floors.calls} // {floors.per_minute}))"
        if report.limits
        else "no limits"
    )
    over = result.wall - floors.floor
    rows = report.total_rows
    table(
        [
            [
                "sequential floor: calls x latency",
                f"{floors.calls} x {floors.latency:.3f} s",
                f"{floors.sequential:.1f} s",
            ],
            ["rate floor", rate_text, f"{floors.rate:.1f} s"],
            [
                f"parallel floor at {floors.concurrent} concurrent",
                f"{floors.calls} x {floors.latency:.3f} / {floors.concurrent}",
                f"{floors.parallel:.1f} s",
            ],
            ["floor that binds", floors.binds, f"{floors.floor:.1f} s"],
            ["measured", f"{result.wall / floors.floor:.2f} x floor" if floors.floor else "", f"{result.wall:.1f} s"],
            ["above the floor", f"{over / max(1, floors.calls) * 1000:.0f} ms per call", f"{over:.1f} s"],
            ["sync-process CPU", f"{result.cpu / result.wall:.0%} of wall", f"{result.cpu:.1f} s"],
            ["rows/s, whole sync", f"{num(rows)} rows", num(rows / result.wall)],
            ["rows/s per sync CPU second", "", num(rows / result.cpu) if result.cpu else "-"],
        ],
        header=False,
    )
    if len(result.invoice_pages) >= 20:
        print(
            f"  invoice pages, fetch to commit: the first 10 {result.invoice_rate(slice(0, 10))}, "
            f"the last 10 {result.invoice_rate(slice(-11, -1))} (the empty last page left out)"
        )


def print_backfill(report: BackfillReport) -> None:
    result, stats, first = report.result, report.stats, report.first
    limits = (
        f"limits {report.sandbox['per_second']}/s, {report.sandbox['per_minute']}/min, "
        f"{report.sandbox['concurrent']} concurrent"
        if report.limits
        else "no rate limits"
    )
    title(
        f"Backfill: {num(report.invoices)} invoices + {num(report.customers)} customers, "
        f"{db_label(report.db)}, latency {report.latency * 1000:.0f} ms, {limits}"
    )
    print(f"sync status: {first.status}" + (f" ({first.error})" if first.error else ""))
    print(f"sandbox seeded in {report.sandbox['seed_seconds']:.1f} s (in its own process, not timed)")

    print("\nAPI calls (floor: one call per 1000 rows, MAXRESULTS 1000)")
    by_kind = report.pass_calls(0)
    rows = [["entity", "rows", "floor", "expected", "used", "extra calls"]]
    floor_total = expected_total = used_total = 0
    names = {ENTITY_NAMES[e] for e in PULL_ORDER}
    for entity in PULL_ORDER:
        name = ENTITY_NAMES[entity]
        count = report.rows[entity]
        floor, expected, used = math.ceil(count / PAGE), pull_calls(count), by_kind.get(name, 0)
        floor_total, expected_total, used_total = floor_total + floor, expected_total + expected, used_total + used
        rows.append([name, num(count), str(floor), str(expected), str(used), extra_reason(count)])
    for other, used in sorted(by_kind.items()):
        if other not in names:
            rows.append([other, "", "0", "0", str(used), "not part of a first full pull"])
            used_total += used
    rows.append(["total", num(report.total_rows), str(floor_total), str(expected_total), str(used_total), ""])
    table(rows, align="lrrrrl")
    print(
        f"  RunSummary.api_calls {first.api_calls}; the sandbox logged {used_total} API calls for this sync "
        f"(+{stats['other_requests']} OAuth/discovery requests in the run, not API calls); "
        f"throttled {stats['throttled']} (client saw {first.throttled}), retries {first.retries}"
    )

    print("\nWall time (sync.sync(full=True) only; bootstrap, migration and OAuth not timed)")
    print_times(report, first)

    print("\nMemory (the sync process only; the sandbox runs in its own process)")
    table(
        [
            ["peak RSS after imports", mib(result.rss_start_kib)],
            ["peak RSS after bootstrap, migration, OAuth", mib(result.rss_ready_kib)],
            ["peak RSS at the end of the sync (ru_maxrss)", mib(first.rss_peak_kib)],
            ["growth during the sync", mib(first.rss_peak_kib - result.rss_ready_kib)],
            ["RSS after the sync", mib(first.rss_end_kib)],
            ["tracemalloc peak during the sync", traced(first.traced_peak)],
        ],
        header=False,
    )
    second = report.second
    if second is not None:
        title("Second full sync over the unchanged source (a re-pull: every page again, then the id comparison)")
        print(
            f"sync status: {second.status}"
            + (f" ({second.error})" if second.error else "")
            + f"; {num(second.written)} written, {num(second.unchanged)} unchanged, {num(second.deleted)} deleted"
        )
        calls = report.pass_calls(1)
        call_rows = [["calls", "used", "what for"]]
        order = [ENTITY_NAMES[e] for e in PULL_ORDER]

        def pull_position(kind: str) -> tuple[int, str]:
            name = kind.removesuffix(" ids")
            return (order.index(name) if name in order else len(order), kind)

        for kind, used in sorted(calls.items(), key=lambda item: pull_position(item[0])):
            what = "SELECT Id listing for the deletion check, 1000 ids a call" if kind.endswith(" ids") else "pages"
            call_rows.append([kind, str(used), what])
        call_rows.append(["total", str(second.api_calls), ""])
        table(call_rows, align="lrl")
        print()
        print_times(report, second)
        print()
        table(
            [
                ["peak RSS at the end of the re-pull (ru_maxrss)", mib(second.rss_peak_kib)],
                ["growth over the first sync's peak", mib(second.rss_peak_kib - first.rss_peak_kib)],
                ["RSS after the re-pull", mib(second.rss_end_kib)],
                ["tracemalloc peak during the re-pull", traced(second.traced_peak)],
            ],
            header=False,
        )
    ledger = ", ".join(f"{num(v)} {k}" for k, v in result.ledger.items())
    print(f"  ledger at the end: {ledger}")


def print_scale(reports: Sequence[BackfillReport]) -> None:
    title("Scale: memory of the sync process against the number of invoices")
    resync = any(r.second is not None for r in reports)
    header = [
        "ledger",
        "invoices",
        "customers",
        "API calls",
        "floor",
        "wall",
        "rows/s",
        "RSS ready",
        "RSS peak",
        "growth",
        "tracemalloc peak",
    ]
    if resync:
        header += ["re-pull calls", "re-pull wall", "re-pull RSS peak", "re-pull tracemalloc peak"]
    rows = [header]
    for report in reports:
        first, second = report.first, report.second
        row = [
            db_label(report.db),
            num(report.invoices),
            num(report.customers),
            str(first.api_calls),
            f"{report.floors(first.api_calls).floor:.1f} s",
            f"{first.wall:.1f} s",
            num(report.total_rows / first.wall),
            mib(report.result.rss_ready_kib),
            mib(first.rss_peak_kib),
            mib(first.rss_peak_kib - report.result.rss_ready_kib),
            traced(first.traced_peak),
        ]
        if second is not None:
            row += [str(second.api_calls), f"{second.wall:.1f} s", mib(second.rss_peak_kib), traced(second.traced_peak)]
        elif resync:
            row += ["", "", "", ""]
        rows.append(row)
    table(rows)


# --- mapping and upsert without network ---------------------------------------------------------


@dataclass
class PassTimes:
    rows: int = 0
    parse: float = 0.0
    map: float = 0.0
    apply: float = 0.0
    transaction: float = 0.0
    written: int = 0
    unchanged: int = 0
    quarantined: int = 0
    pages: list[tuple[int, float]] = field(default_factory=list)
    """(rows, apply_page seconds) of each page, to show whether the upsert slows as the table grows."""

    def apply_rate(self, pages: slice) -> str:
        chosen = self.pages[pages]
        seconds = sum(t for _, t in chosen)
        return f"{num(sum(n for n, _ in chosen) / seconds)} rows/s" if seconds else "-"


@dataclass
class MappingReport:
    db: str
    invoices: int
    passes: list[PassTimes]
    ledger_invoices: int
    ledger_lines: int
    rss_peak_kib: int


def mapping_bench(db: str, invoices: int, customers: int) -> MappingReport:
    """Parse, map and upsert ``invoices`` in pages of 1000, twice, on a fresh database."""
    today = date.today()
    pages = math.ceil(invoices / PAGE)
    with tempfile.TemporaryDirectory(prefix="arsync-bench-") as tmp, database(db, Path(tmp)) as url:
        engine = make_engine(url)
        upgrade(engine)
        sessions = sessionmaker(engine, expire_on_commit=False)
        with sessions.begin() as session:
            session.add(Tenant(id=TENANT, display_name="Benchmark Co"))
            session.flush()
            session.add(Connection(id=NAME, tenant_id=TENANT, kind="quickbooks"))
        passes: list[PassTimes] = []
        for _ in range(2):
            times = PassTimes()
            for page in range(pages):
                size = min(PAGE, invoices - page * PAGE)
                text = invoice_page(page, customers=customers, today=today, size=size)
                now = datetime.now(UTC)
                t0 = time.perf_counter()
                body = json.loads(text, parse_float=Decimal)
                t1 = time.perf_counter()
                records, quarantined, raw = map_query_response(NAME, Entity.INVOICE, body)
                t2 = time.perf_counter()
                with sessions.begin() as session:
                    t3 = time.perf_counter()
                    counts = apply_page(session, Entity.INVOICE, records, quarantined, now)
                    t4 = time.perf_counter()
                    resolve_quarantine(session, NAME, Entity.INVOICE, counts.written_ids, now)
                    number = page + 1
                    if number & (number - 1) == 0:  # as SyncEngine._pull does at pages 1, 2, 4, 8, ...
                        refresh_statistics(session, Entity.INVOICE)
                t5 = time.perf_counter()
                times.rows += raw
                times.parse += t1 - t0
                times.map += t2 - t1
                times.apply += t4 - t3
                times.pages.append((raw, t4 - t3))
                times.transaction += t5 - t2
                times.written += counts.written
                times.unchanged += counts.unchanged
                times.quarantined += counts.quarantined
            passes.append(times)
        with sessions() as session:
            ledger_invoices = session.execute(
                sa.select(sa.func.count()).select_from(TABLES[Entity.INVOICE])
            ).scalar_one()
            ledger_lines = session.execute(sa.select(sa.func.count()).select_from(DocumentLine)).scalar_one()
        engine.dispose()
    return MappingReport(db, invoices, passes, ledger_invoices, ledger_lines, maxrss_kib())


def print_mapping(report: MappingReport) -> None:
    title(
        f"Mapping and upsert: {num(report.invoices)} invoices in pages of {PAGE}, "
        f"{db_label(report.db)}, in process, no network"
    )
    first, second = report.passes

    def rate(rows: int, seconds: float) -> str:
        return f"{num(rows / seconds)} rows/s" if seconds else "-"

    def cells(times: PassTimes, seconds: float) -> list[str]:
        return [f"{seconds:.2f} s", rate(times.rows, seconds)]

    rows = [
        ["step", "pass 1: all new", "", "pass 2: all unchanged", ""],
        ["json.loads(parse_float=Decimal)", *cells(first, first.parse), *cells(second, second.parse)],
        ["map_query_response", *cells(first, first.map), *cells(second, second.map)],
        ["apply_page (upsert)", *cells(first, first.apply), *cells(second, second.apply)],
        [
            "page transaction (apply_page + resolve_quarantine [+ ANALYZE] + commit)",
            *cells(first, first.transaction),
            *cells(second, second.transaction),
        ],
        [
            "map + page transaction",
            *cells(first, first.map + first.transaction),
            *cells(second, second.map + second.transaction),
        ],
        [
            "parse + map + page transaction",
            *cells(first, first.parse + first.map + first.transaction),
            *cells(second, second.parse + second.map + second.transaction),
        ],
    ]
    table(rows, align="lrrrr")
    print(
        f"  pass 1 wrote {num(first.written)} ({num(first.unchanged)} unchanged, {first.quarantined} quarantined); "
        f"pass 2 wrote {num(second.written)} ({num(second.unchanged)} unchanged); "
        f"ledger: {num(report.ledger_invoices)} invoices, {num(report.ledger_lines)} lines"
    )
    if len(first.pages) >= 20:
        print(
            f"  apply_page over the first 10 pages / the last 10 pages: pass 1 {first.apply_rate(slice(0, 10))} / "
            f"{first.apply_rate(slice(-10, None))}; pass 2 {second.apply_rate(slice(0, 10))} / "
            f"{second.apply_rate(slice(-10, None))}"
        )


# --- command line ---------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Backfill QuickBooks invoices and customers from the sandbox and print the figures."
    )
    parser.add_argument("--invoices", type=int, default=100_000, help="invoices in the sandbox (default 100000)")
    parser.add_argument("--customers", type=int, default=20_000, help="customers in the sandbox (default 20000)")
    parser.add_argument("--latency", type=float, default=0.15, help="seconds added to every API call (default 0.15)")
    parser.add_argument(
        "--db", choices=("sqlite", "postgres", "both"), default="sqlite", help="ledger for the backfill runs"
    )
    parser.add_argument(
        "--scale",
        default=None,
        help="comma-separated invoice counts: one backfill per count, then a memory table (e.g. 100000,1000000)",
    )
    parser.add_argument("--no-limits", action="store_true", help="turn the rate limits off (sandbox and client)")
    parser.add_argument(
        "--tracemalloc",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="trace allocations during the sync (default: on for --scale runs only; it slows the sync about 2.5x)",
    )
    parser.add_argument(
        "--mapping-db",
        choices=("sqlite", "postgres", "both", "none"),
        default="both",
        help="databases for the in-process mapping/upsert measurement (default both)",
    )
    parser.add_argument(
        "--mapping-invoices", type=int, default=100_000, help="invoices for the mapping/upsert measurement"
    )
    parser.add_argument(
        "--resync",
        action="store_true",
        help="after the backfill, a second full sync over the unchanged source (re-pull and deletion check)",
    )
    parser.add_argument("--skip-backfill", action="store_true", help="only the mapping/upsert measurement")
    args = parser.parse_args(argv)
    if args.scale is not None:
        try:
            args.scale = [int(n.replace("_", "")) for n in args.scale.split(",") if n.strip()]
        except ValueError:
            parser.error("--scale takes invoice counts separated by commas, e.g. 100000,1000000")
        if not args.scale or min(args.scale) < 0:
            parser.error("--scale takes invoice counts separated by commas, e.g. 100000,1000000")
    for name in ("invoices", "customers", "mapping_invoices"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must not be negative")
    if args.invoices and not args.customers:
        parser.error("invoices need at least one customer")
    if args.latency < 0:
        parser.error("--latency must not be negative")
    return args


def kinds(choice: str) -> list[str]:
    return ["sqlite", "postgres"] if choice == "both" else [] if choice == "none" else [choice]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    print(
        f"arsync backfill benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, {platform.platform()}, "
        f"load average {os.getloadavg()[0]:.2f}, {revision()}"
    )
    limits = not args.no_limits
    trace = bool(args.scale) if args.tracemalloc is None else bool(args.tracemalloc)
    counts: list[int] = args.scale or [args.invoices]
    wanted = ([] if args.skip_backfill else kinds(args.db)) + kinds(args.mapping_db)
    problem = postgres_problem() if "postgres" in wanted else None
    if problem:
        print(f"\n{problem}: the PostgreSQL runs are skipped")

    def usable(choice: str) -> list[str]:
        return [db for db in kinds(choice) if db != "postgres" or problem is None]

    reports: list[BackfillReport] = []
    if not args.skip_backfill:
        for db in usable(args.db):
            for invoices in counts:
                report = backfill(
                    customers=args.customers,
                    invoices=invoices,
                    latency=args.latency,
                    limits=limits,
                    db=db,
                    trace=trace,
                    resync=args.resync,
                )
                print_backfill(report)
                reports.append(report)
                sys.stdout.flush()
        if args.scale:
            print_scale(reports)
    for db in usable(args.mapping_db):
        print_mapping(mapping_bench(db, args.mapping_invoices, max(1, args.customers)))
        sys.stdout.flush()
    failed = [r for r in reports if any(p.status != "ok" for p in r.result.passes)]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
