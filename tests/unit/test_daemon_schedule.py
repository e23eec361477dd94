"""The daemon's schedule: syncs per connection, and per paying tenant its events and its daily auto-pay run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from arsync.bootstrap import build
from arsync.config import load_config
from arsync.daemon import SEND_INTERVAL_MINUTES, build_scheduler, reload_config
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


DUNNING = """
[tenants.acme.dunning]
run_hour = 6
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


def test_a_dunning_tenant_gets_a_daily_run_in_its_time_zone_and_a_regular_send(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE + DUNNING), environ=PENV)
    tenant = config.tenant("acme")
    app = build(config, clock=lambda: datetime(2026, 11, 22, 12, tzinfo=UTC))
    try:
        jobs = {job.id: job for job in build_scheduler(app).get_jobs()}
    finally:
        app.engine.dispose()
    run = jobs["dunning:acme"].trigger
    assert isinstance(run, CronTrigger)
    first = run.get_next_fire_time(None, datetime(2026, 11, 22, 12, tzinfo=UTC))
    assert first is not None and first.astimezone(tenant.tzinfo).hour == 6
    send = jobs["send:acme"].trigger
    assert isinstance(send, IntervalTrigger) and send.interval == timedelta(minutes=SEND_INTERVAL_MINUTES)


def test_a_reload_swaps_in_a_valid_config_and_refuses_an_invalid_one(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    app = build(load_config(path, environ=PENV), clock=lambda: datetime(2026, 11, 22, 12, tzinfo=UTC))
    scheduler = build_scheduler(app)
    try:
        assert not any(job.id.startswith("dunning:") for job in scheduler.get_jobs())
        path.write_text(BASE + DUNNING)
        assert reload_config(app, scheduler, lambda: load_config(path, environ=PENV))
        assert app.config.tenant("acme").dunning is not None
        assert {"dunning:acme", "send:acme"} <= {job.id for job in scheduler.get_jobs()}

        path.write_text(BASE + DUNNING.replace("days = 1", 'days = "soon"'))
        before = app.config
        assert not reload_config(app, scheduler, lambda: load_config(path, environ=PENV))
        assert app.config is before
        assert {"dunning:acme", "send:acme"} <= {job.id for job in scheduler.get_jobs()}
    finally:
        app.engine.dispose()
