"""The daemon's schedule: syncs per connection, and per paying tenant its events and its daily auto-pay run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from arsync.bootstrap import build
from arsync.config import load_config
from arsync.daemon import build_scheduler
from tests.unit.test_config import BASE, write
from tests.unit.test_config_payments import MINIMAL, PENV


def test_a_paying_tenant_gets_event_reads_and_a_daily_charge_run_in_its_time_zone(tmp_path: Path) -> None:
    text = BASE + MINIMAL + "charge_hour = 7\nfollow_interval_minutes = 5\n"
    config = load_config(write(tmp_path, text), environ=PENV)
    tenant = config.tenant("acme")
    app = build(config, clock=lambda: datetime(2026, 11, 22, 12, tzinfo=UTC))
    try:
        jobs = {job.id: job for job in build_scheduler(app).get_jobs()}
    finally:
        app.engine.dispose()
    follow = jobs["payments:acme"].trigger
    assert isinstance(follow, IntervalTrigger) and follow.interval == timedelta(minutes=5)
    charge = jobs["charge:acme"].trigger
    assert isinstance(charge, CronTrigger) and str(charge.timezone) == tenant.timezone
    first = charge.get_next_fire_time(None, datetime(2026, 11, 22, 12, tzinfo=UTC))
    assert first is not None and first.astimezone(tenant.tzinfo).hour == 7
    assert {j for j in jobs if j.startswith("sync:")} == {f"sync:{c.name}" for c in config.connections()}


def test_tenants_without_payments_get_no_collecting_jobs(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE), environ=PENV)
    app = build(config)
    try:
        ids = {job.id for job in build_scheduler(app).get_jobs()}
    finally:
        app.engine.dispose()
    assert not any(i.startswith(("payments:", "charge:")) for i in ids)
