"""Xero pulled end to end: the connector over real HTTP against the sandbox, on both stores.

Every request the connector sends, and every answer, is validated against
Xero's own OpenAPI spec when each test ends. Writing (the ledger writer) is
tested in ``test_xero_writer.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import requests
import sqlalchemy as sa

from arsync.bootstrap import App, bootstrap
from arsync.sandboxes import authorise
from arsync.status import connection_status
from connectors.base import Entity
from connectors.xero.client import XeroSource
from connectors.xero.sandbox import XeroSandbox
from connectors.xero.seed import mutate_some, seed_organisation
from sync.db import upgrade
from sync.engine import RunSummary
from sync.models import Connection, Customer, Invoice, Payment
from tests.support import FakeClock, xero_config
from tests.xero_spec import validate_exchange

NAME = "acme-xero"


@dataclass
class Env:
    app: App
    sandbox: XeroSandbox
    clock: FakeClock
    tenant: str
    validate: bool = True
    """Check every exchange against the spec at the end (off where a test plants malformed data)."""

    def source(self) -> XeroSource:
        source = self.app.source(NAME)
        assert isinstance(source, XeroSource)
        return source

    def sync(self, **kwargs: Any) -> RunSummary:
        return self.app.sync_engine(NAME).sync(self.app.source(NAME), **kwargs)

    def ledger_invoices(self) -> dict[str, tuple[str, Decimal, Decimal | None]]:
        with self.app.sessions() as s:
            rows = s.execute(sa.select(Invoice.external_id, Invoice.status, Invoice.balance, Invoice.currency_rate))
            return {r[0]: (r[1], r[2], r[3]) for r in rows}

    def source_invoices(self) -> dict[str, dict[str, Any]]:
        return {o["InvoiceID"]: o for o in self.sandbox.all(self.tenant, "Invoices") if o.get("Type") == "ACCREC"}

    def assert_converged(self) -> None:
        source = self.source_invoices()
        ledger = self.ledger_invoices()
        assert set(ledger) == set(source)
        for invoice_id, obj in source.items():
            status, balance, rate = ledger[invoice_id]
            assert balance == Decimal(str(obj["AmountDue"])), invoice_id
            expected = {"VOIDED": "void", "DELETED": "deleted", "PAID": "paid"}.get(obj["Status"])
            if expected:
                assert status == expected, invoice_id
            if obj.get("CurrencyRate") is not None:
                assert rate == Decimal(str(obj["CurrencyRate"])), invoice_id


@pytest.fixture
def env(db_url: str, tmp_path: Path, clock: FakeClock) -> Iterator[Env]:
    sandbox = XeroSandbox(clock)
    sandbox.start()
    try:
        tenant = sandbox.tenant_ids[0]
        seed_organisation(sandbox, tenant, contacts=40, invoices=1200, today=clock().date())
        app = bootstrap(xero_config(tmp_path, sandbox, db_url), clock=clock, sleeper=clock.sleep)
        upgrade(app.engine)
        app.register()
        authorise(app, NAME)
        env = Env(app, sandbox, clock, tenant)
        yield env
        app.engine.dispose()
        for exchange in sandbox.requests_and_responses if env.validate else ():
            validate_exchange(*exchange)
    finally:
        sandbox.stop()


def test_full_then_again_writes_nothing(env: Env) -> None:
    first = env.sync()
    assert first.status == "ok", first.error
    env.assert_converged()
    bills = [o for o in env.sandbox.all(env.tenant, "Invoices") if o.get("Type") == "ACCPAY"]
    assert bills and not set(o["InvoiceID"] for o in bills) & set(env.ledger_invoices())
    with env.app.sessions() as s:
        kinds = set(s.execute(sa.select(Payment.kind)).scalars())
        customers = s.execute(sa.select(sa.func.count()).select_from(Customer)).scalar_one()
    assert {"payment", "overpayment", "prepayment"} <= kinds
    assert customers == env.sandbox.count(env.tenant, "Contacts")
    env.clock.advance(minutes=10)
    second = env.sync()
    assert second.status == "ok", second.error
    assert second.total().written == 0
    # If-Modified-Since with paging: one call per collection when nothing changed
    assert second.api_calls == 6


def test_incremental_picks_up_exactly_the_changes(env: Env) -> None:
    env.sync()
    env.clock.advance(minutes=30)
    changed = set(mutate_some(env.sandbox, env.tenant, 12, seed=3))
    env.clock.advance(minutes=1)
    summary = env.sync()
    assert summary.status == "ok", summary.error
    assert summary.counts[Entity.INVOICE].written == len(changed)
    env.assert_converged()
    sent = [path for _, path, _ in env.sandbox.requests_log if "/Invoices" in path]
    assert any("pageSize=1000" in path and "page=1" in path for path in sent)


def test_voided_and_deleted_invoices_are_recognised(env: Env) -> None:
    env.sync()
    invoices = [o for o in env.source_invoices().values() if o["Status"] == "AUTHORISED"]
    env.clock.advance(minutes=5)
    env.sandbox.update(env.tenant, "Invoices", invoices[0]["InvoiceID"], {"Status": "VOIDED"})
    env.sandbox.update(env.tenant, "Invoices", invoices[1]["InvoiceID"], {"Status": "DELETED"})
    env.clock.advance(minutes=1)
    env.sync()
    ledger = env.ledger_invoices()
    assert ledger[invoices[0]["InvoiceID"]][0] == "void"
    assert ledger[invoices[1]["InvoiceID"]][0] == "deleted"


def test_minute_limit_429_is_waited_out(env: Env) -> None:
    env.sandbox.inject("minute_limit", times=2)
    summary = env.sync()
    assert summary.status == "ok", summary.error
    assert env.source().transport.stats.throttled == 2
    env.assert_converged()


def test_day_limit_parks_the_connection_and_says_so(env: Env) -> None:
    env.sandbox.inject("day_limit", times=1)
    summary = env.sync()
    assert summary.status == "parked", summary.error
    with env.app.sessions() as s:
        status = connection_status(s, NAME, "acme")
    assert status.parked_until is not None and status.parked_until > env.clock() + timedelta(minutes=30)
    again = env.sync()
    assert again.status == "parked" and again.api_calls == 0
    env.clock.advance(days=1)
    assert env.sync().status == "ok"
    env.assert_converged()


def test_the_client_paces_itself_under_60_a_minute(env: Env) -> None:
    start = env.clock()
    source = env.source()
    for _ in range(70):
        list(source.external_ids(Entity.CREDIT_NOTE))
    assert source.transport.stats.throttled == 0
    assert env.clock() - start >= timedelta(seconds=60)


def test_expired_token_is_refreshed_and_the_single_use_refresh_token_rotates(env: Env) -> None:
    env.sync()
    with env.app.sessions() as s:
        row = s.get(Connection, NAME)
        assert row is not None
        old = row.refresh_token
    env.clock.advance(minutes=45)
    summary = env.sync()
    assert summary.status == "ok", summary.error
    assert env.sandbox.refresh_count == 1
    with env.app.sessions() as s:
        row = s.get(Connection, NAME)
        assert row is not None and row.refresh_token != old


def test_a_refresh_whose_answer_was_lost_is_retried_with_the_same_token(env: Env) -> None:
    """The first refresh is applied by Xero but never answered; the grace period lets us ask again."""
    env.sync()
    env.sandbox.inject("drop_after", times=1, path_contains="/connect/token")
    env.clock.advance(minutes=45)
    summary = env.sync()
    assert summary.status == "ok", summary.error
    refreshes = [body for method, path, body in env.sandbox.requests_log if path.startswith("/connect/token")]
    spent = [parse_qs(body)["refresh_token"][0] for body in refreshes if "grant_type=refresh_token" in body]
    assert len(spent) == 2 and spent[0] == spent[1]  # the same token, asked twice inside the grace period


def test_invalid_grant_needs_reauthorisation(env: Env) -> None:
    with env.app.sessions.begin() as s:
        row = s.get(Connection, NAME)
        assert row is not None
        row.refresh_token = "revoked"
    env.clock.advance(hours=1)
    summary = env.sync()
    assert summary.status == "failed"
    with env.app.sessions() as s:
        assert connection_status(s, NAME, "acme").state == "needs_reauth"


def test_a_401_mid_sync_refreshes_then_retries(env: Env) -> None:
    env.sandbox.inject("expire_token", times=1)
    summary = env.sync()
    assert summary.status == "ok", summary.error
    assert env.sandbox.refresh_count == 1


@pytest.mark.parametrize("fault", ["500", "503", "drop"])
def test_server_faults_are_retried(env: Env, fault: str) -> None:
    env.sandbox.inject(fault, times=2)
    summary = env.sync()
    assert summary.status == "ok", summary.error
    env.assert_converged()


def test_backfill_rereads_a_window_without_moving_the_cursor(env: Env) -> None:
    from sync.models import SyncCursor

    env.sync()
    with env.app.sessions() as s:
        cursors = {c.entity: c.synced_through for c in s.execute(sa.select(SyncCursor)).scalars()}
    summary = env.app.sync_engine(NAME).backfill(
        env.app.source(NAME), env.clock() - timedelta(days=400), env.clock() - timedelta(days=1)
    )
    assert summary.status == "ok", summary.error
    assert summary.total().written == 0 and summary.total().unchanged > 0
    with env.app.sessions() as s:
        assert {c.entity: c.synced_through for c in s.execute(sa.select(SyncCursor)).scalars()} == cursors
    assert any("UpdatedDateUTC" in path for _, path, _ in env.sandbox.requests_log)


def test_a_malformed_invoice_is_quarantined_and_the_rest_syncs(env: Env) -> None:
    from sync.models import QuarantinedRecord

    env.validate = False  # the planted value breaks the spec on purpose
    bad = next(iter(env.source_invoices()))
    env.sandbox.update(env.tenant, "Invoices", bad, {"Total": "lots"})
    summary = env.sync()
    assert summary.status == "ok", summary.error
    assert summary.counts[Entity.INVOICE].quarantined == 1
    with env.app.sessions() as s:
        row = s.execute(sa.select(QuarantinedRecord)).scalar_one()
    assert row.external_id == bad and "Total" in row.reason
    assert bad not in env.ledger_invoices()


def test_a_quota_spent_by_another_app_is_waited_out_before_a_429(env: Env) -> None:
    """Another client spends the organisation's minute; the rate headers tell us, and we wait instead of erring."""
    with env.app.sessions() as s:
        row = s.get(Connection, NAME)
        assert row is not None and row.access_token is not None
        token = row.access_token
    headers = {"Authorization": f"Bearer {token}", "xero-tenant-id": env.tenant, "Accept": "application/json"}
    for _ in range(59):
        other = requests.get(f"{env.sandbox.api_base}/Accounts", headers=headers, timeout=10)
        assert other.status_code == 200
    summary = env.sync()
    assert summary.status == "ok", summary.error
    assert 60.0 in env.clock.slept
    assert env.source().transport.stats.throttled == 0
