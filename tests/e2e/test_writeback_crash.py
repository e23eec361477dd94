"""SIGKILL a write-back worker in the middle of a bulk posting: every posting lands in the ledger exactly once.

71 postings are journaled (35 charges made through localstripe, their 35 fees, and the payout's deposit),
then a real worker process (:mod:`tests.e2e.writeback_worker`) posts them in bulk: QuickBooks ``/batch``
requests of 30 (30, 30, 11), Xero one call per kind (35 payments, 35 spend money, 1 transfer). A proxy
between the worker and the ledger sandbox kills the worker at the chosen write request: before the
sandbox receives it, or after the sandbox applied it but before the answer gets back. Either way the
journal still holds every posting in flight, so the restarted worker must look them up in the ledger
(``find_posted``, by the reference each carries) and send only what is missing.

Follows ``tests/e2e/test_charge_crash.py``; the world (sandboxes, config, ledger) is :mod:`tests.writeback`'s.
"""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
import sqlalchemy as sa
from sqlmodel import col

from reconcile.postings import KIND, derive_postings
from sync.models import JournalEntry
from tests.writeback import TENANT, World, make_payout, start_world, write_config

pytestmark = pytest.mark.slow
CHARGES = 35
WRITES = {"quickbooks": (30, 30, 11), "xero": (35, 35, 1)}
"""Postings each write request carries, in order: claimed in one go (journal order: payments, fees, the
deposit), QuickBooks sends them in batches of 30; Xero sends one call per kind (up to 50 items)."""
HOP_BY_HOP = {"host", "content-length", "connection", "transfer-encoding", "content-encoding", "keep-alive"}


class KillingProxy(http.server.ThreadingHTTPServer):
    """Forwards everything to ``upstream``; kills ``pid`` at write request number ``kill_on``."""

    def __init__(self, upstream: str, is_write: Callable[[str, str], bool]) -> None:
        super().__init__(("127.0.0.1", 0), _Proxy)
        self.upstream = upstream
        self.is_write = is_write
        self.writes = 0
        self.kill_on: int | None = None
        self.after_ledger = False
        self.pid: int | None = None
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Proxy(http.server.BaseHTTPRequestHandler):
    server: KillingProxy

    def log_message(self, *args: object) -> None:
        pass

    def _forward(self) -> None:
        method = self.command
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        dying = False
        if self.server.is_write(method, self.path):
            with self.server.lock:
                self.server.writes += 1
                dying = self.server.writes == self.server.kill_on
        if dying and not self.server.after_ledger:
            self._kill()
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        answer = requests.request(method, self.server.upstream + self.path, headers=headers, data=body, timeout=30)
        if dying:
            self._kill()
            return
        self.send_response(answer.status_code)
        for name, value in answer.headers.items():
            if name.lower() not in HOP_BY_HOP:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer.content)))
        self.end_headers()
        self.wfile.write(answer.content)

    def _kill(self) -> None:
        assert self.server.pid is not None
        os.kill(self.server.pid, signal.SIGKILL)
        self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = _forward


def is_write(kind: str) -> Callable[[str, str], bool]:
    if kind == "quickbooks":
        return lambda method, path: method == "POST" and urlsplit(path).path.endswith("/batch")
    return lambda method, path: method in ("PUT", "POST") and urlsplit(path).path.startswith("/api.xro/2.0/")


def end(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(timeout=10)


def journal(world: World) -> list[JournalEntry]:
    with world.sessions() as session:
        return list(session.execute(sa.select(JournalEntry).where(col(JournalEntry.kind) == KIND)).scalars())


@pytest.mark.parametrize("after_ledger", [False, True], ids=["killed-before-the-ledger", "killed-after-the-ledger"])
@pytest.mark.parametrize(("kind", "on_write"), [("quickbooks", 2), ("quickbooks", 3), ("xero", 2), ("xero", 3)])
def test_a_killed_writeback_worker_posts_everything_exactly_once(
    db_url: str, tmp_path: Path, kind: str, on_write: int, after_ledger: bool
) -> None:
    with ExitStack() as stack:
        world = start_world(kind, tmp_path, stack, db_url)
        books, today = world.books, world.today()
        customer = books.customer("Harbor Dental", "ap@harbordental.example.com")
        invoices = [books.invoice(customer, f"{100 + n}.{n:02d}", today) for n in range(CHARGES)]
        world.sync()
        world.enrol(customer)
        assert world.collector().run().counts() == {"succeeded": CHARGES}
        payout = make_payout(world.sessions, TENANT, today)
        reconciler = world.reconciler()
        with world.sessions.begin() as session:  # what the worker's run() journals first, journaled here
            derived = derive_postings(session, TENANT, reconciler.ledgers(), world.timezone, datetime.now(UTC))
        assert (derived.payments, derived.fees, derived.payouts) == (CHARGES, CHARGES, 1)
        entries = journal(world)
        assert len(entries) == sum(WRITES[kind]) == 71
        # The deposit carries the payout id; every other posting carries its key.
        reference = {e.key: payout.payout_id if ":payout:" in e.key else e.key for e in entries}

        proxy = KillingProxy(books.url, is_write(kind))
        threading.Thread(target=proxy.serve_forever, daemon=True).start()
        stack.callback(proxy.shutdown)
        (tmp_path / "worker").mkdir()
        config = write_config(
            tmp_path / "worker", books, world.stripe, db_url, base_url=books.api_base.replace(books.url, proxy.url)
        )
        args = [sys.executable, "-m", "tests.e2e.writeback_worker", db_url, str(config)]
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}

        proxy.kill_on, proxy.after_ledger = on_write, after_ledger
        worker = subprocess.Popen(args, env=env)
        stack.callback(end, worker)  # only if the test fails while it runs
        proxy.pid = worker.pid
        assert worker.wait(timeout=120) == -signal.SIGKILL

        applied = sum(WRITES[kind][: on_write if after_ledger else on_write - 1])
        assert len(books.posted()) == applied  # the kill came where it was meant to
        assert Counter(e.status for e in journal(world)) == Counter({"in_flight": 71})
        # The dead worker's lease (5 minutes) has not run out: move it into the past rather than wait for it.
        with world.sessions.begin() as session:
            session.execute(
                sa.update(JournalEntry)
                .where(col(JournalEntry.status) == "in_flight")
                .values(lease_until=datetime.now(UTC) - timedelta(seconds=1))
            )

        proxy.kill_on = None
        restarted = subprocess.run(args, env=env, timeout=120, capture_output=True, text=True)

        assert restarted.returncode == 0, restarted.stderr
        posted = books.posted()
        assert Counter(p.reference for p in posted) == Counter(reference.values())  # each once, none missing
        settled = journal(world)
        assert Counter(e.status for e in settled) == Counter({"done": 71})
        assert Counter(e.result for e in settled) == Counter(
            {'{"found": true}': applied, '{"posted": true}': 71 - applied}
        )
        assert {p.reference: p.ident for p in posted} == {reference[e.key]: e.external_id for e in settled}
        assert all(books.paid_in_full(invoice) for invoice in invoices)
        assert books.balance(books.clearing) == 0
        assert books.balance(books.bank) == payout.amount > Decimal(0)
