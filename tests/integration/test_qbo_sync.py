"""QuickBooks pulled end to end: the connector over real HTTP against the sandbox, on both stores."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import col

from arsync.bootstrap import App, bootstrap
from arsync.sandboxes import authorise
from arsync.status import connection_status
from connectors.base import Entity
from connectors.quickbooks.sandbox import QuickBooksSandbox
from connectors.quickbooks.seed import mutate_some, seed_company
from sync.db import upgrade
from sync.engine import RunSummary
from sync.models import Connection, Customer, Invoice, Payment, QuarantinedRecord, SyncCursor
from tests.support import FakeClock, sandbox_config

NAME = "acme-qbo"


@dataclass
class Env:
    app: App
    sandbox: QuickBooksSandbox
    clock: FakeClock

    def sync(self, **kwargs: Any) -> RunSummary:
        return self.app.sync_engine(NAME).sync(self.app.source(NAME), **kwargs)

    def ledger_invoices(self) -> dict[str, tuple[str, Decimal, str | None]]:
        with self.app.sessions() as s:
            rows = s.execute(sa.select(Invoice.external_id, Invoice.status, Invoice.balance, Invoice.source_version))
            return {r[0]: (r[1], r[2], r[3]) for r in rows}

    def assert_converged(self) -> None:
        """The ledger holds exactly the source's invoices, balances and versions; the rest are deleted."""
        source = {o["Id"]: o for o in self.sandbox.all("Invoice")}
        ledger = self.ledger_invoices()
        live = {k: v for k, v in ledger.items() if v[0] != "deleted"}
        assert set(live) == set(source)
        for external_id, obj in source.items():
            _status, balance, version = live[external_id]
            assert balance == Decimal(str(obj["Balance"])), external_id
            assert version == obj["SyncToken"], external_id
        with self.app.sessions() as s:
            customers = set(
                s.execute(sa.select(Customer.external_id).where(col(Customer.deleted).is_(False))).scalars()
            )
            payments = s.execute(sa.select(sa.func.count()).select_from(Payment)).scalar_one()
        assert customers == {o["Id"] for o in self.sandbox.all("Customer")}
        assert payments == len(self.sandbox.all("Payment"))


@pytest.fixture
def env(db_url: str, tmp_path: Path, clock: FakeClock) -> Iterator[Env]:
    sandbox = QuickBooksSandbox(clock)
    sandbox.start()
    try:
        seed_company(sandbox, customers=40, invoices=1200, today=clock().date())
        app = bootstrap(sandbox_config(tmp_path, sandbox, db_url), clock=clock, sleeper=clock.sleep)
        upgrade(app.engine)
        app.register()
        authorise(app, NAME)
        yield Env(app, sandbox, clock)
        app.engine.dispose()
    finally:
        sandbox.stop()


def test_full_then_incremental_writes_nothing_the_second_time(env: Env) -> None:
    first = env.sync()
    assert first.status == "ok", first.error
    assert first.counts[Entity.INVOICE].written == env.sandbox.count("Invoice")
    env.assert_converged()
    env.clock.advance(minutes=10)
    second = env.sync()
    assert second.status == "ok", second.error
    assert second.total().written == 0 and second.total().deleted == 0
    assert second.api_calls == 1  # one CDC call covers every entity


def test_incremental_picks_up_exactly_the_changes(env: Env) -> None:
    env.sync()
    env.clock.advance(minutes=30)
    changed = set(mutate_some(env.sandbox, 15, seed=3))
    victim = next(o["Id"] for o in env.sandbox.all("Invoice") if o["Id"] not in changed)
    env.sandbox.delete("Invoice", victim)
    env.clock.advance(minutes=1)
    summary = env.sync()
    assert summary.status == "ok", summary.error
    assert summary.counts[Entity.INVOICE].written == len(changed)
    assert summary.counts[Entity.INVOICE].deleted == 1
    assert env.ledger_invoices()[victim][0] == "deleted"
    env.assert_converged()


def test_voided_invoice_is_recognised(env: Env) -> None:
    env.sync()
    target = env.sandbox.all("Invoice")[0]["Id"]
    env.clock.advance(minutes=5)
    env.sandbox.void("Invoice", target)
    env.sync()
    status, balance, _ = env.ledger_invoices()[target]
    assert (status, balance) == ("void", Decimal("0"))


@pytest.mark.parametrize("fault", ["throttle_429", "throttle_403", "500", "503", "drop"])
def test_faults_are_waited_out_and_the_sync_converges(env: Env, fault: str) -> None:
    env.sandbox.inject(fault, times=2)
    summary = env.sync()
    assert summary.status == "ok", summary.error
    env.assert_converged()
    if fault.startswith("throttle"):
        assert 60.0 in env.clock.slept  # no Retry-After from QuickBooks: wait a minute


def test_rate_budget_keeps_under_the_limit(env: Env) -> None:
    """30 calls in a burst: the client paces itself at 10/s, the sandbox never has to throttle."""
    source = env.app.source(NAME)
    started = env.clock()
    for _ in range(30):
        assert sum(len(chunk) for chunk in source.external_ids(Entity.CUSTOMER)) == env.sandbox.count("Customer")
    assert source.api_calls() == 30
    assert source.transport.stats.throttled == 0
    assert env.clock() - started >= timedelta(seconds=2)


def test_expired_access_token_is_refreshed_and_rotated(env: Env) -> None:
    env.sync()
    with env.app.sessions() as s:
        before = s.get(Connection, NAME)
        assert before is not None
        old_refresh = before.refresh_token
    env.clock.advance(hours=2)
    summary = env.sync()
    assert summary.status == "ok", summary.error
    assert env.sandbox.refresh_count == 1
    with env.app.sessions() as s:
        after = s.get(Connection, NAME)
        assert after is not None
        assert after.refresh_token != old_refresh
        assert after.access_expires_at is not None and after.access_expires_at > env.clock()


def test_a_401_mid_sync_refreshes_then_retries(env: Env) -> None:
    env.sandbox.inject("expire_token", times=1)
    summary = env.sync()
    assert summary.status == "ok", summary.error
    assert env.sandbox.refresh_count == 1
    env.assert_converged()


def test_invalid_grant_marks_the_connection_for_reauthorisation(env: Env) -> None:
    env.sync()
    with env.app.sessions.begin() as s:
        row = s.get(Connection, NAME)
        assert row is not None
        row.refresh_token = "revoked-by-the-user"
    env.clock.advance(hours=2)
    summary = env.sync()
    assert summary.status == "failed"
    assert summary.error is not None and "arsync connect acme-qbo" in summary.error
    with env.app.sessions() as s:
        status = connection_status(s, NAME, "acme")
    assert status.state == "needs_reauth" and status.reason is not None and "invalid_grant" in status.reason


def test_cursor_past_the_horizon_repulls_and_detects_deletes(env: Env) -> None:
    env.sync()
    gone = [o["Id"] for o in env.sandbox.all("Invoice")[:3]]
    for external_id in gone:
        env.sandbox.delete("Invoice", external_id)
    env.clock.advance(days=31)
    summary = env.sync()
    assert summary.status == "ok", summary.error
    assert summary.counts[Entity.INVOICE].deleted == 3
    assert {env.ledger_invoices()[g][0] for g in gone} == {"deleted"}
    env.assert_converged()


def test_the_delete_guard_stops_a_repull_that_would_delete_most_records(env: Env) -> None:
    env.sync()
    for obj in env.sandbox.all("Invoice")[:900]:
        env.sandbox.delete("Invoice", obj["Id"])
    env.clock.advance(days=31)
    summary = env.sync()
    assert summary.status == "failed"
    assert summary.error is not None and "DeleteGuardError" in summary.error
    assert not [v for v in env.ledger_invoices().values() if v[0] == "deleted"]


def test_a_capped_change_feed_is_read_again_by_query(env: Env) -> None:
    env.sync()
    env.clock.advance(minutes=10)
    changed = set(mutate_some(env.sandbox, 1100, seed=5))
    victim = next(o["Id"] for o in env.sandbox.all("Invoice") if o["Id"] not in changed)
    env.sandbox.delete("Invoice", victim)
    env.clock.advance(minutes=1)
    summary = env.sync()
    assert summary.status == "ok", summary.error
    assert summary.counts[Entity.INVOICE].written == len(changed)
    assert env.ledger_invoices()[victim][0] == "deleted"
    env.assert_converged()


def test_backfill_rereads_a_window_without_moving_the_cursor(env: Env) -> None:
    env.sync()
    with env.app.sessions() as s:
        cursors = dict(s.execute(sa.select(SyncCursor.entity, SyncCursor.synced_through)).all())
    since = env.clock() - timedelta(days=400)
    summary = env.app.sync_engine(NAME).backfill(env.app.source(NAME), since, None)
    assert summary.status == "ok", summary.error
    assert summary.total().written == 0 and summary.total().unchanged > 0
    with env.app.sessions() as s:
        assert dict(s.execute(sa.select(SyncCursor.entity, SyncCursor.synced_through)).all()) == cursors


def test_a_malformed_record_is_quarantined_and_the_rest_syncs(env: Env) -> None:
    bad = env.sandbox.all("Invoice")[5]["Id"]
    env.sandbox.update("Invoice", bad, {"TotalAmt": "twelve"})
    summary = env.sync()
    assert summary.status == "ok", summary.error
    assert summary.counts[Entity.INVOICE].quarantined == 1
    with env.app.sessions() as s:
        row = s.execute(sa.select(QuarantinedRecord)).scalar_one()
    assert row.external_id == bad and "TotalAmt" in row.reason and "twelve" in row.payload
    assert bad not in env.ledger_invoices()
    assert len(env.ledger_invoices()) == env.sandbox.count("Invoice") - 1


def test_seeded_company_has_every_aging_bucket(env: Env) -> None:
    from collect.aging import BUCKETS, aging_report

    env.sync()
    with env.app.sessions() as s:
        report = aging_report(s, [NAME], env.clock().date())
    assert all(report.counts[b] > 0 for b in BUCKETS)
    open_total = sum(
        (
            Decimal(str(o["Balance"]))
            for o in env.sandbox.all("Invoice")
            if o.get("CurrencyRef", {}).get("value", "USD") == "USD"
        ),
        Decimal(0),
    )
    assert report.total("USD") == open_total


def test_a_request_that_times_out_is_retried(env: Env, tmp_path: Path, db_url: str) -> None:
    """The sandbox holds one answer past the client's read timeout; the call is retried and the sync converges."""
    (tmp_path / "short").mkdir()
    config = sandbox_config(tmp_path / "short", env.sandbox, db_url, timeout_seconds=0.3)
    app = bootstrap(config, clock=env.clock, sleeper=env.clock.sleep)
    env.sandbox.inject("stall:30", times=1, path_contains="/query")
    source = app.source(NAME)
    try:
        summary = app.sync_engine(NAME).sync(source)
    finally:
        env.sandbox.release_stalls()
        app.engine.dispose()
    assert summary.status == "ok", summary.error
    assert source.transport.stats.retries == 1
    env.assert_converged()


def test_one_run_per_connection_at_a_time(env: Env) -> None:
    with env.app.sessions.begin() as s:
        row = s.get(Connection, NAME)
        assert row is not None
        row.run_owner, row.run_lease_until = "worker-2.internal:4242", env.clock() + timedelta(minutes=3)
    summary = env.sync()
    assert summary.status == "skipped" and summary.error is not None and "worker-2.internal:4242" in summary.error
    assert summary.api_calls == 0
    env.clock.advance(minutes=4)
    assert env.sync().status == "ok"
    with env.app.sessions() as s:
        row = s.get(Connection, NAME)
        assert row is not None and row.run_owner is None


def test_only_the_configured_entities_are_pulled(env: Env, tmp_path: Path, db_url: str) -> None:
    (tmp_path / "some").mkdir()
    config = sandbox_config(tmp_path / "some", env.sandbox, db_url, entities=["customer", "invoice"])
    app = bootstrap(config, clock=env.clock, sleeper=env.clock.sleep)
    summary = app.sync_engine(NAME).sync(app.source(NAME))
    app.engine.dispose()
    assert summary.status == "ok", summary.error
    assert set(summary.counts) == {Entity.CUSTOMER, Entity.INVOICE}
    with env.app.sessions() as s:
        assert s.execute(sa.select(sa.func.count()).select_from(Payment)).scalar_one() == 0
