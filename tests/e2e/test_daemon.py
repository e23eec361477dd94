"""``arsync run``: the daemon syncs on schedule and stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest
import sqlalchemy as sa

from arsync.bootstrap import bootstrap
from arsync.sandboxes import authorise
from connectors.quickbooks.sandbox import QuickBooksSandbox
from connectors.quickbooks.seed import seed_bulk
from sync.db import upgrade
from sync.models import Invoice, PullProgress, SyncRun
from tests.support import sandbox_config

pytestmark = pytest.mark.slow
NAME = "acme-qbo"


class SignalOnPage:
    def __init__(self, page: int) -> None:
        self.page, self.seen, self.pid = page, 0, 0

    def __call__(self, method: str, path: str, body: str) -> None:
        if "FROM Invoice" in body and "SELECT *" in body:
            self.seen += 1
            if self.seen == self.page:
                os.kill(self.pid, signal.SIGTERM)


def test_sigterm_finishes_the_current_page_then_exits_cleanly(tmp_path: Path) -> None:
    with QuickBooksSandbox(rate_limits=False) as sandbox:
        sandbox.start()
        seed_bulk(sandbox, customers=20, invoices=4500, today=date.today())
        url = f"sqlite:///{tmp_path / 'ledger.db'}"
        config = sandbox_config(tmp_path, sandbox, url)
        app = bootstrap(config)
        upgrade(app.engine)
        app.register()
        authorise(app, NAME)
        app.engine.dispose()

        hook = SignalOnPage(2)
        sandbox.on_request = hook
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        proc = subprocess.Popen(
            [sys.executable, "-m", "arsync.cli", "run", "--config", str(config)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        hook.pid = proc.pid
        _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    messages = [line["msg"] for line in lines]
    assert messages[0] == "started" and "stopping" in messages and messages[-1] == "stopped"
    run_line = next(line for line in lines if line["msg"].startswith("sync "))
    assert run_line["connection"] == NAME and run_line["status"] == "interrupted"

    engine = sa.create_engine(url)
    with engine.connect() as conn:
        invoices = conn.execute(sa.select(sa.func.count()).select_from(Invoice)).scalar_one()
        progress = conn.execute(sa.select(PullProgress.resume).where(PullProgress.entity == "invoice")).scalar_one()
        status = conn.execute(sa.select(SyncRun.status)).scalar_one()
    engine.dispose()
    # the page being read when SIGTERM came was committed; nothing after it was asked for
    assert (invoices, progress, status) == (2000, "2001", "interrupted")


RELOADED_DUNNING = """
[tenants.acme.dunning]
[tenants.acme.dunning.mail]
host = "127.0.0.1"
port = 2525
security = "none"
sender = "Acme <ar@acme.example>"
[[tenants.acme.dunning.policies]]
name = "standard"
[[tenants.acme.dunning.policies.steps]]
name = "overdue"
days = 1
actions = [{ kind = "email", template = "reminder_overdue" }]
"""


def test_sighup_reloads_a_valid_config_and_keeps_running_on_an_invalid_one(tmp_path: Path) -> None:
    with QuickBooksSandbox(rate_limits=False) as sandbox:
        sandbox.start()
        url = f"sqlite:///{tmp_path / 'ledger.db'}"
        config = sandbox_config(tmp_path, sandbox, url)
        app = bootstrap(config)
        upgrade(app.engine)
        app.register()
        authorise(app, NAME)
        app.engine.dispose()
        original = config.read_text()
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        proc = subprocess.Popen(
            [sys.executable, "-m", "arsync.cli", "run", "--config", str(config)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stderr is not None
        try:

            def next_message(*wanted: str) -> dict[str, object]:
                assert proc.stderr is not None
                for raw in proc.stderr:
                    if raw.startswith("{"):
                        line = json.loads(raw)
                        if line["msg"] in wanted:
                            return dict(line)
                raise AssertionError(f"the daemon exited before logging {wanted}")

            next_message("started")
            config.write_text(original + "\n[tenants.acme.dunning\n")  # broken TOML
            proc.send_signal(signal.SIGHUP)
            refused = next_message("config reload refused; the running config stays")
            assert refused["problems"]
            config.write_text(original + RELOADED_DUNNING)
            proc.send_signal(signal.SIGHUP)
            reloaded = next_message("config reloaded")
            jobs = reloaded["jobs"]
            assert isinstance(jobs, list) and {"dunning:acme", "send:acme"} <= set(jobs)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
    assert proc.returncode == 0
