"""A real ``arsync`` process killed with SIGKILL mid-pull resumes with nothing lost and nothing doubled."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
import sqlalchemy as sa

from arsync.bootstrap import bootstrap
from arsync.sandboxes import authorise
from connectors.quickbooks.sandbox import QuickBooksSandbox
from connectors.quickbooks.seed import seed_bulk
from sync.db import upgrade
from sync.models import Invoice, PullProgress, SyncCursor
from tests.support import sandbox_config

pytestmark = pytest.mark.slow
NAME = "acme-qbo"
ARSYNC = [sys.executable, "-m", "arsync.cli"]


class KillOnPage:
    """Sandbox hook: SIGKILL the client when it asks for the n-th page of invoices."""

    def __init__(self, page: int) -> None:
        self.page = page
        self.seen = 0
        self.pid: int | None = None
        self.killed = threading.Event()

    def __call__(self, method: str, path: str, body: str) -> None:
        if "FROM Invoice" not in body or "SELECT *" not in body or self.killed.is_set():
            return
        self.seen += 1
        if self.seen == self.page and self.pid is not None:
            os.kill(self.pid, signal.SIGKILL)
            self.killed.set()


@pytest.fixture
def sandbox() -> Iterator[QuickBooksSandbox]:
    box = QuickBooksSandbox(rate_limits=False)
    box.start()
    yield box
    box.stop()


def invoice_state(url: str) -> tuple[int, int, list[tuple[str, str, str, int]]]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        total = conn.execute(sa.select(sa.func.count()).select_from(Invoice)).scalar_one()
        distinct = conn.execute(sa.select(sa.func.count(sa.distinct(Invoice.external_id)))).scalar_one()
        progress = [
            (p.entity, p.kind, p.resume, p.rows)
            for p in conn.execute(
                sa.select(PullProgress.entity, PullProgress.kind, PullProgress.resume, PullProgress.rows)
            )
        ]
    engine.dispose()
    return total, distinct, progress


@pytest.mark.parametrize("command", ["sync", "backfill"])
def test_sigkill_mid_pull_then_restart_converges(
    tmp_path: Path, db_url: str, sandbox: QuickBooksSandbox, command: str
) -> None:
    seed_bulk(sandbox, customers=50, invoices=5500, today=date.today())
    config = sandbox_config(tmp_path, sandbox, db_url)
    app = bootstrap(config)
    upgrade(app.engine)
    app.register()
    authorise(app, NAME)
    app.engine.dispose()

    args = [*ARSYNC, command, "--config", str(config), "--connection", NAME]
    if command == "backfill":
        args += ["--since", "2000-01-01"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    hook = KillOnPage(4)
    sandbox.on_request = hook
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    hook.pid = proc.pid
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, output.decode()

    total, distinct, progress = invoice_state(db_url)
    assert total == distinct == 3000  # three pages committed, the fourth never answered
    assert ("invoice", "full" if command == "sync" else "backfill", "3001", 3000) in progress

    sandbox.on_request = None
    resumed = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr

    total, distinct, progress = invoice_state(db_url)
    assert total == distinct == sandbox.count("Invoice") == 5500
    assert progress == []
    queries = [body for _, _, body in sandbox.requests_log if "FROM Invoice" in body and "SELECT *" in body]
    # 4 asked before the kill (the last unanswered), then only pages 4..6 again: nothing re-read from the start
    assert len(queries) == 4 + 3
    engine = sa.create_engine(db_url)
    with engine.connect() as conn:
        cursors = conn.execute(sa.select(sa.func.count()).select_from(SyncCursor)).scalar_one()
    engine.dispose()
    assert cursors == (4 if command == "sync" else 0)
