"""A real ``arsync`` process killed with SIGKILL mid-pull resumes with nothing lost and nothing doubled."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pytest
import sqlalchemy as sa

from arsync.bootstrap import bootstrap
from arsync.sandboxes import authorise
from connectors.quickbooks import seed as qbo_seed
from connectors.quickbooks.sandbox import QuickBooksSandbox
from connectors.xero import seed as xero_seed
from connectors.xero.sandbox import XeroSandbox
from sync.db import upgrade
from sync.models import Invoice, PullProgress, SyncCursor
from tests.support import sandbox_config, xero_config

pytestmark = pytest.mark.slow
ARSYNC = [sys.executable, "-m", "arsync.cli"]
INVOICES = 5500


@dataclass
class Vendor:
    name: str
    """The connection's name."""
    config: Path
    invoice_page: Callable[[str, str, str], bool]
    """Whether a request asks for a page of invoices."""
    invoices_at_source: Callable[[], int]
    on_request: Callable[[Callable[[str, str, str], None] | None], None]
    resume_after_three_pages: str
    requests_log: Callable[[], list[tuple[str, str, str]]]


class KillOnPage:
    """Sandbox hook: SIGKILL the client when it asks for the n-th page of invoices."""

    def __init__(self, page: int, is_invoice_page: Callable[[str, str, str], bool]) -> None:
        self.page = page
        self.is_invoice_page = is_invoice_page
        self.seen = 0
        self.pid: int | None = None
        self.killed = threading.Event()

    def __call__(self, method: str, path: str, body: str) -> None:
        if self.killed.is_set() or not self.is_invoice_page(method, path, body):
            return
        self.seen += 1
        if self.seen == self.page and self.pid is not None:
            os.kill(self.pid, signal.SIGKILL)
            self.killed.set()


def _quickbooks(folder: Path, db_url: str) -> Iterator[Vendor]:
    box = QuickBooksSandbox(rate_limits=False)
    box.start()
    try:
        qbo_seed.seed_bulk(box, customers=50, invoices=INVOICES, today=date.today())

        def on_request(hook: Callable[[str, str, str], None] | None) -> None:
            box.on_request = hook

        yield Vendor(
            "acme-qbo",
            sandbox_config(folder, box, db_url),
            lambda method, path, body: "FROM Invoice" in body and "SELECT *" in body,
            lambda: box.count("Invoice"),
            on_request,
            "3001",
            lambda: box.requests_log,
        )
    finally:
        box.stop()


def _xero(folder: Path, db_url: str) -> Iterator[Vendor]:
    box = XeroSandbox(rate_limits=False)
    box.start()
    tenant = box.tenant_ids[0]
    try:
        xero_seed.seed_bulk(box, tenant, contacts=50, invoices=INVOICES, today=date.today())

        def on_request(hook: Callable[[str, str, str], None] | None) -> None:
            box.on_request = hook

        yield Vendor(
            "acme-xero",
            xero_config(folder, box, db_url),
            lambda method, path, body: method == "GET" and "/api.xro/2.0/Invoices?" in path,
            lambda: sum(1 for o in box.all(tenant, "Invoices") if o.get("Type") == "ACCREC"),
            on_request,
            "Invoices:4",
            lambda: box.requests_log,
        )
    finally:
        box.stop()


@pytest.fixture(params=["quickbooks", "xero"])
def vendor(request: pytest.FixtureRequest, tmp_path: Path, db_url: str) -> Iterator[Vendor]:
    yield from (_quickbooks if request.param == "quickbooks" else _xero)(tmp_path, db_url)


def invoice_state(url: str) -> tuple[int, int, list[tuple[str, str, str | None, int]]]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        total = conn.execute(sa.select(sa.func.count()).select_from(Invoice)).scalar_one()
        distinct = conn.execute(sa.select(sa.func.count(sa.distinct(Invoice.external_id)))).scalar_one()
        columns = (PullProgress.entity, PullProgress.kind, PullProgress.resume, PullProgress.rows)
        progress = [(p[0], p[1], p[2], p[3]) for p in conn.execute(sa.select(*columns))]
    engine.dispose()
    return total, distinct, progress


@pytest.mark.parametrize("command", ["sync", "backfill"])
def test_sigkill_mid_pull_then_restart_converges(vendor: Vendor, db_url: str, command: str) -> None:
    app = bootstrap(vendor.config)
    upgrade(app.engine)
    app.register()
    authorise(app, vendor.name)
    app.engine.dispose()

    args = [*ARSYNC, command, "--config", str(vendor.config), "--connection", vendor.name]
    if command == "backfill":
        args += ["--since", "2000-01-01"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    hook = KillOnPage(4, vendor.invoice_page)
    vendor.on_request(hook)
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    hook.pid = proc.pid
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, output.decode()

    total, distinct, progress = invoice_state(db_url)
    assert total == distinct == 3000  # three pages committed, the fourth never answered
    kind = "full" if command == "sync" else "backfill"
    assert ("invoice", kind, vendor.resume_after_three_pages, 3000) in progress

    vendor.on_request(None)
    resumed = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr

    total, distinct, progress = invoice_state(db_url)
    assert total == distinct == vendor.invoices_at_source()
    assert progress == []
    pages = [r for r in vendor.requests_log() if vendor.invoice_page(*r)]
    # 4 asked before the kill (the last unanswered), then only the pages from the fourth on: none re-read
    assert len(pages) == 4 + (vendor.invoices_at_source() - 3000 + 999) // 1000
    engine = sa.create_engine(db_url)
    with engine.connect() as conn:
        cursors = conn.execute(sa.select(sa.func.count()).select_from(SyncCursor)).scalar_one()
    engine.dispose()
    assert cursors == (4 if command == "sync" else 0)
